//! The conformance suite against the in-memory balancer, directly and
//! through `Arc<dyn LoadBalancer>`.

mod common;

use std::time::Duration;

use common::Tampered;

use hygiene_core::conformance::{self, Fixture};
use hygiene_core::testing::InMemoryBalancer;
use hygiene_core::TargetId;

fn fixture() -> Fixture {
    Fixture {
        a: TargetId::new("web-1").expect("id"),
        b: TargetId::new("web-2").expect("id"),
        unknown: TargetId::new("web-9").expect("id"),
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
