//! What the moto tests share.

#![allow(dead_code, unreachable_pub)]

use hygiene_aws::moto::{find_moto_server, MotoServer};
use hygiene_core::conformance::integration_available;
use hygiene_core::TargetId;

/// A moto server of this test's own, or `None` (after a loud skip
/// message; a failure with `HYGIENE_REQUIRE_INTEGRATION=1`) without moto.
pub async fn moto() -> Option<MotoServer> {
    if !integration_available(
        "moto",
        find_moto_server().is_some(),
        "run ./scripts/test, which installs moto[server] into .venv",
    ) {
        return None;
    }
    Some(MotoServer::start().await.expect("moto starts"))
}

pub fn id(s: &str) -> TargetId {
    TargetId::new(s).expect("valid id")
}
