//! The core conformance suite through this backend: http, stream, an HA
//! pair, and passive health.

use std::time::Duration;

use hygiene_core::conformance::{self, check_all, Fixture};
use hygiene_core::LoadBalancer;
use hygiene_nginx::HealthChecks;

use crate::{builder, id};
use hygiene_nginx::testing::{FakeNginx, Kind, State};

fn fixture(a: &str, b: &str, unknown: &str) -> Fixture {
    // A target id needs a server after the upstream name.
    let upstream = a.split_once('/').map_or(a, |(u, _)| u);
    Fixture {
        a: id(a),
        b: id(b),
        unknown: id(unknown),
        invalid: Some(id(&format!("{upstream}/"))),
        settle: Duration::from_secs(1),
    }
}

/// A fake server whose active health checks run (a passing round before
/// each read of an upstream, the fake's clockless model of nginx's periodic
/// checks): without it no check ever follows an enable, and the balancer
/// rightly keeps the server's health `Unknown`.
async fn checking(state: State) -> FakeNginx {
    let srv = FakeNginx::start(state).await;
    srv.with(|s| s.auto_check = Some(true));
    srv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream() {
    let srv = checking(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    assert!(
        lb.capabilities().graceful_drain
            && lb.capabilities().counts_connections
            && lb.capabilities().hard_disable
    );
    check_all(&lb, &fixture("backend/0", "backend/1", "backend/99")).await;
    // The suite left every server as it found it.
    for i in 0..3 {
        let p = srv.peer(Kind::Http, "backend", i);
        assert!(!p.down && !p.drain, "peer {i} left out: {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_by_address() {
    let srv = checking(State::standard()).await;
    let lb = builder([&srv]).upstream("backend").build().expect("valid");
    // `list` gives numeric ids, so check_list does not apply; the rest does.
    let fx = fixture(
        "backend/10.0.0.1:8080",
        "backend/10.0.0.2:8080",
        "backend/10.9.9.9:8080",
    );
    conformance::check_status_order(&lb, &fx).await;
    conformance::check_drain_enable_idempotent(&lb, &fx).await;
    conformance::check_drain_visible(&lb, &fx).await;
    conformance::check_drain_is_isolated(&lb, &fx).await;
    conformance::check_unknown_target(&lb, &fx).await;
    conformance::check_enable_disable_unknown(&lb, &fx).await;
    conformance::check_invalid_name(&lb, &fx).await;
    conformance::check_connection_counts_honest(&lb, &fx).await;
    conformance::check_concurrent_drain(&lb, &fx).await;
    conformance::check_disable(&lb, &fx).await;
    conformance::check_fresh_health_after_enable(&lb, &fx).await;
    assert!(
        srv.patches().iter().any(|l| l.path.ends_with("/servers/1")),
        "addresses resolve to server ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_upstream() {
    let srv = checking(State::standard()).await;
    let lb = builder([&srv])
        .stream_upstream("tcp")
        .build()
        .expect("valid");
    assert!(
        !lb.capabilities().graceful_drain,
        "stream upstreams have no graceful drain"
    );
    check_all(&lb, &fixture("tcp/0", "tcp/1", "tcp/7")).await;
    for log in srv.patches() {
        assert!(
            !log.body.contains("drain"),
            "a stream PATCH must not carry drain: {log:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_pair_with_different_ids() {
    let a = checking(State::standard()).await;
    let mut second = State::standard();
    // The same servers, numbered differently on the second instance.
    for (i, p) in second
        .upstream_mut(Kind::Http, "backend")
        .peers
        .iter_mut()
        .enumerate()
    {
        p.id = 10 + 2 - i as u64;
    }
    let b = checking(second).await;
    let lb = builder([&a, &b])
        .upstream("backend")
        .build()
        .expect("valid");
    check_all(&lb, &fixture("backend/0", "backend/1", "backend/99")).await;
    assert!(
        !a.patches().is_empty() && a.patches().len() == b.patches().len(),
        "every mutation goes to both instances"
    );
    assert!(
        b.patches()
            .iter()
            .all(|l| l.path.ends_with("/servers/12") || l.path.ends_with("/servers/11")),
        "second instance addressed by its own ids: {:?}",
        b.patches()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health() {
    let srv = FakeNginx::start(State::standard()).await;
    let lb = builder([&srv])
        .upstream("nohc")
        .health_checks(HealthChecks::Passive)
        .build()
        .expect("valid");
    assert!(!lb.capabilities().health_checks);
    check_all(&lb, &fixture("nohc/0", "nohc/1", "nohc/5")).await;
}
