//! Integration tests of hygiene-nginx against a spec-faithful NGINX Plus API
//! server on 127.0.0.1 (`hygiene_nginx::testing`, feature `test-support`).
//! Socket tests use real (short) time: a paused clock would fire the
//! client's timeouts while it waits on real I/O.

mod behaviour;
mod conformance;
mod errors;
mod hosts;
mod rollout;
mod schema;
mod tls;

use std::time::Duration;

use hygiene_core::TargetId;
use hygiene_nginx::testing::FakeNginx;
use hygiene_nginx::{NginxBalancer, NginxBuilder};

pub(crate) fn id(s: &str) -> TargetId {
    TargetId::new(s).expect("valid target id")
}

/// A builder for the given servers, with short timeouts and a fast poll.
pub(crate) fn builder<'a>(servers: impl IntoIterator<Item = &'a FakeNginx>) -> NginxBuilder {
    NginxBalancer::builder()
        .instances(servers.into_iter().map(|s| s.url()))
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(20))
}
