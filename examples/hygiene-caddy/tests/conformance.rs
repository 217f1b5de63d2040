//! hygiene-core's conformance suite, unchanged, against a real Caddy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{caddy_bin, id, proxy, Backend, Caddy};
use hygiene_caddy::CaddyBalancer;
use hygiene_core::conformance::{check_all, check_shared_host, Fixture, SharedHost};
use hygiene_core::LoadBalancer;
use serde_json::json;

/// `web` (every request) over b1..b3, b2 with options; `api` (`/api/*`)
/// over b1 and b4: b1 is one host in two routes.
async fn setup(bin: &std::path::Path) -> (Vec<Backend>, Caddy) {
    let mut b = Vec::new();
    for n in ["b1", "b2", "b3", "b4"] {
        b.push(Backend::start(n).await);
    }
    let routes = json!([
        {"match": [{"path": ["/api/*"]}],
         "handle": [proxy("api", json!([{"dial": b[0].dial()}, {"dial": b[3].dial()}]), true)]},
        {"handle": [proxy("web", json!([
            {"dial": b[0].dial()},
            {"dial": b[1].dial(), "max_requests": 100},
            {"dial": b[2].dial()}]), true)]}
    ]);
    let caddy = Caddy::start(bin, routes).await;
    (b, caddy)
}

fn balancer(caddy: &Caddy, handler: &str) -> CaddyBalancer {
    CaddyBalancer::builder()
        .admin(&caddy.admin)
        .handler(handler)
        .poll_interval(Duration::from_millis(100))
        .build()
        .expect("valid")
}

// Health after an enable waits for Caddy's gauge (10 s period) to hold a
// check made after the change: settle covers it.
const SETTLE: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_against_caddy() {
    let Some(bin) = caddy_bin() else { return };
    let (b, caddy) = setup(&bin).await;
    let before = caddy.config().await;
    let lb = balancer(&caddy, "web");
    let caps = lb.capabilities();
    assert!(
        caps.counts_connections && caps.hard_disable && caps.health_checks && caps.cheap_status
    );
    let fx = Fixture {
        a: id(&b[1].dial()),
        b: id(&b[2].dial()),
        unknown: id("127.0.0.1:1"),
        invalid: Some(id("{http.request.host}:80")),
        settle: SETTLE,
    };
    check_all(&lb, &fx).await;
    // Everything back exactly as it was: positions, options, no parked route.
    assert_eq!(caddy.config().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_in_two_routes_is_drained_from_both() {
    let Some(bin) = caddy_bin() else { return };
    let (b, caddy) = setup(&bin).await;
    let before = caddy.config().await;
    let lb = balancer(&caddy, "web");
    let shared = SharedHost {
        id: id(&b[0].dial()),
        other: Arc::new(balancer(&caddy, "api")),
        other_id: id(&b[0].dial()),
        settle: SETTLE,
    };
    check_shared_host(&lb, &shared).await;
    assert_eq!(caddy.config().await, before);
}
