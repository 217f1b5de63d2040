//! What the etcd tests share.

#![allow(dead_code, unreachable_pub)]

use hygiene_core::conformance::integration_available;
use hygiene_etcd::server::{find_etcd, EtcdServer};

/// A real etcd of this test's own, or `None` (after a loud skip message;
/// a failure with `HYGIENE_REQUIRE_INTEGRATION=1`) without etcd.
pub async fn etcd() -> Option<EtcdServer> {
    if !integration_available(
        "etcd",
        find_etcd().is_some(),
        "run ./scripts/test, which installs Debian's etcd-server, or set HYGIENE_ETCD_BIN",
    ) {
        return None;
    }
    Some(EtcdServer::start().await.expect("etcd starts"))
}

/// A client of `etcd` with leases of `secs` seconds.
pub async fn store(etcd: &EtcdServer, secs: u64) -> hygiene_etcd::EtcdLeaseStore {
    hygiene_etcd::EtcdLeaseStore::builder([etcd.endpoint()])
        .with_lease_duration(std::time::Duration::from_secs(secs))
        .with_request_timeout(std::time::Duration::from_millis(500))
        .connect()
        .await
        .expect("connect")
}
