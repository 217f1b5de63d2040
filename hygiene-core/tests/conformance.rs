//! The conformance suite against the in-memory balancer, directly and
//! through `Arc<dyn LoadBalancer>`.

mod common;

use std::time::Duration;

use common::Tampered;

use hygiene_core::conformance::{self, Fixture};
use hygiene_core::testing::{HealthScript, InMemoryBalancer};
use hygiene_core::{Health, TargetId};

fn fixture() -> Fixture {
    Fixture {
        a: TargetId::new("web-1").expect("id"),
        b: TargetId::new("web-2").expect("id"),
        unknown: TargetId::new("web-9").expect("id"),
        // The in-memory balancer accepts every id `TargetId::new` does.
        invalid: None,
        settle: Duration::ZERO,
    }
}

#[tokio::test(start_paused = true)]
async fn in_memory_balancer_passes_the_suite() {
    let lb = InMemoryBalancer::with_targets(["web-1", "web-2", "web-3"]).expect("pool");
    conformance::check_all(&lb, &fixture()).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "disagree with capabilities")]
async fn the_suite_catches_a_dishonest_balancer() {
    // A balancer that claims not to count connections but reports Some(0)
    // must fail: the suite can fail.
    let lb = Tampered {
        capabilities: Some(
            hygiene_core::Capabilities::none()
                .with_graceful_drain(true)
                .with_hard_disable(true)
                .with_health_checks(true),
        ),
        ..Tampered::new(InMemoryBalancer::with_targets(["web-1", "web-2"]).expect("pool"))
    };
    conformance::check_connection_counts_honest(&lb, &fixture()).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "invalid-name rule")]
async fn the_suite_catches_a_balancer_accepting_an_invalid_name() {
    // The in-memory balancer has no rule of its own: told that `web-3` is
    // invalid, it serves it, and the check must say so.
    let lb = InMemoryBalancer::with_targets(["web-1", "web-2", "web-3"]).expect("pool");
    let fx = Fixture {
        invalid: Some(TargetId::new("web-3").expect("id")),
        ..fixture()
    };
    conformance::check_invalid_name(&lb, &fx).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "fresh-health-after-enable rule")]
async fn the_suite_catches_a_target_that_never_comes_back_healthy() {
    let lb = InMemoryBalancer::with_targets(["web-1", "web-2"]).expect("pool");
    let fx = fixture();
    lb.set_health_after_enable(
        &fx.a,
        HealthScript {
            delay: Duration::from_millis(200),
            health: Health::Unhealthy,
        },
    )
    .expect("known target");
    conformance::check_fresh_health_after_enable(&lb, &fx).await;
}

#[tokio::test(start_paused = true)]
async fn health_unknown_until_a_check_after_enable_passes() {
    // Unknown for a while after enable, then Healthy: what a backend that
    // hides a stale result shows.
    let lb = InMemoryBalancer::with_targets(["web-1", "web-2"]).expect("pool");
    let fx = fixture();
    lb.set_health_after_enable(
        &fx.a,
        HealthScript {
            delay: Duration::from_millis(300),
            health: Health::Healthy,
        },
    )
    .expect("known target");
    conformance::check_fresh_health_after_enable(&lb, &fx).await;
}
