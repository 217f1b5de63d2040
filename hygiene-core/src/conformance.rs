//! The conformance suite every [`LoadBalancer`] must pass (feature
//! `conformance`). Each `check_*` panics with a message naming the broken
//! rule; [`check_all`] runs them all, directly and through
//! `Arc<dyn LoadBalancer>`.

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::LoadBalancer;
use crate::error::Error;
use crate::target::{TargetId, TargetState, TargetStatus};

/// What a backend's test gives the suite.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// A target in service, distinct from `b`.
    pub a: TargetId,
    /// Another target in service.
    pub b: TargetId,
    /// An id the balancer does not know (but a valid one for the backend).
    pub unknown: TargetId,
    /// How long a change may take to show (0 for in-memory; a few seconds
    /// for real balancers whose health checks must run).
    pub settle: Duration,
}

async fn status_of(lb: &dyn LoadBalancer, id: &TargetId) -> TargetStatus {
    let st = lb
        .status(std::slice::from_ref(id))
        .await
        .unwrap_or_else(|e| panic!("status of {id} failed: {e}"));
    assert_eq!(st.len(), 1, "status must return one entry per id");
    st[0].clone()
}

/// Polls until `pred` holds for `id`, or panics after `fx.settle` (+1 s).
async fn wait_for(
    lb: &dyn LoadBalancer,
    fx: &Fixture,
    id: &TargetId,
    what: &str,
    pred: impl Fn(&TargetStatus) -> bool,
) {
    let deadline = tokio::time::Instant::now() + fx.settle + Duration::from_secs(1);
    loop {
        let s = status_of(lb, id).await;
        if pred(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never became {what} within {:?}: last status {s:?}",
            fx.settle
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn restore(lb: &dyn LoadBalancer, fx: &Fixture, ids: &[TargetId]) {
    lb.enable(ids)
        .await
        .unwrap_or_else(|e| panic!("enable {ids:?} failed: {e}"));
    for id in ids {
        wait_for(lb, fx, id, "in service", |s| {
            s.state == TargetState::InService
        })
        .await;
    }
}

/// The pool lists both fixture targets, in service.
pub async fn check_list(lb: &dyn LoadBalancer, fx: &Fixture) {
    let listed = lb
        .list()
        .await
        .unwrap_or_else(|e| panic!("list failed: {e}"));
    for id in [&fx.a, &fx.b] {
        let t = listed
            .iter()
            .find(|l| &l.target.id == id)
            .unwrap_or_else(|| panic!("list does not contain {id}"));
        assert_eq!(
            t.status.state,
            TargetState::InService,
            "{id} must be listed in service"
        );
    }
    assert!(
        !listed.iter().any(|l| l.target.id == fx.unknown),
        "list contains the unknown id"
    );
    let st = lb
        .status(&[fx.a.clone(), fx.b.clone()])
        .await
        .unwrap_or_else(|e| panic!("status failed: {e}"));
    assert_eq!(st.len(), 2, "status must return one entry per id, in order");
}

/// Drain and enable are idempotent, and a drained target leaves service.
pub async fn check_drain_enable_idempotent(lb: &dyn LoadBalancer, fx: &Fixture) {
    let a = std::slice::from_ref(&fx.a);
    lb.drain(a)
        .await
        .unwrap_or_else(|e| panic!("drain failed: {e}"));
    lb.drain(a)
        .await
        .unwrap_or_else(|e| panic!("second drain must succeed (idempotent): {e}"));
    wait_for(lb, fx, &fx.a, "out of rotation", |s| {
        s.state != TargetState::InService
    })
    .await;
    lb.enable(a)
        .await
        .unwrap_or_else(|e| panic!("enable failed: {e}"));
    lb.enable(a)
        .await
        .unwrap_or_else(|e| panic!("second enable must succeed (idempotent): {e}"));
    wait_for(lb, fx, &fx.a, "in service", |s| {
        s.state == TargetState::InService
    })
    .await;
}

/// Draining A leaves B in service.
pub async fn check_drain_is_isolated(lb: &dyn LoadBalancer, fx: &Fixture) {
    lb.drain(std::slice::from_ref(&fx.a))
        .await
        .unwrap_or_else(|e| panic!("drain failed: {e}"));
    wait_for(lb, fx, &fx.a, "out of rotation", |s| {
        s.state != TargetState::InService
    })
    .await;
    let b = status_of(lb, &fx.b).await;
    assert_eq!(
        b.state,
        TargetState::InService,
        "draining {} changed {}: {b:?}",
        fx.a,
        fx.b
    );
    restore(lb, fx, std::slice::from_ref(&fx.a)).await;
}

/// An unknown target gives `NotFound`, and a call naming it changes nothing.
pub async fn check_unknown_target(lb: &dyn LoadBalancer, fx: &Fixture) {
    let unknown = std::slice::from_ref(&fx.unknown);
    let e = lb
        .status(unknown)
        .await
        .expect_err("status of an unknown target must fail");
    assert!(
        matches!(e, Error::NotFound { .. }),
        "status of an unknown target: expected NotFound, got {e:?}"
    );
    let e = lb
        .drain(&[fx.a.clone(), fx.unknown.clone()])
        .await
        .expect_err("drain naming an unknown target must fail");
    assert!(
        matches!(e, Error::NotFound { .. }),
        "drain of an unknown target: expected NotFound, got {e:?}"
    );
    assert!(
        e.to_string().contains(fx.unknown.as_str()),
        "the error must name the target: {e}"
    );
    let a = status_of(lb, &fx.a).await;
    assert_eq!(
        a.state,
        TargetState::InService,
        "a failed drain naming an unknown target changed {}: {a:?}",
        fx.a
    );
    let e = lb
        .enable(unknown)
        .await
        .expect_err("enable of an unknown target must fail");
    assert!(
        matches!(e, Error::NotFound { .. }),
        "enable of an unknown target: expected NotFound, got {e:?}"
    );
}

/// Connection counts are given exactly when the capabilities say so.
pub async fn check_connection_counts_honest(lb: &dyn LoadBalancer, fx: &Fixture) {
    let counts = lb.capabilities().counts_connections;
    for s in lb
        .status(&[fx.a.clone(), fx.b.clone()])
        .await
        .unwrap_or_else(|e| panic!("status failed: {e}"))
    {
        assert_eq!(
            s.connections.is_some(),
            counts,
            "connections {:?} disagree with capabilities.counts_connections = {counts}",
            s.connections
        );
    }
    if !lb.capabilities().hard_disable {
        let e = lb
            .disable(std::slice::from_ref(&fx.a))
            .await
            .expect_err("disable must fail without hard_disable");
        assert!(
            matches!(e, Error::NotSupported { .. }),
            "expected NotSupported, got {e:?}"
        );
    }
}

/// Two targets drained concurrently both leave service, and both come back.
pub async fn check_concurrent_drain(lb: &dyn LoadBalancer, fx: &Fixture) {
    let (ra, rb) = tokio::join!(
        lb.drain(std::slice::from_ref(&fx.a)),
        lb.drain(std::slice::from_ref(&fx.b))
    );
    ra.unwrap_or_else(|e| panic!("concurrent drain of {} failed: {e}", fx.a));
    rb.unwrap_or_else(|e| panic!("concurrent drain of {} failed: {e}", fx.b));
    for id in [&fx.a, &fx.b] {
        wait_for(lb, fx, id, "out of rotation", |s| {
            s.state != TargetState::InService
        })
        .await;
    }
    restore(lb, fx, &[fx.a.clone(), fx.b.clone()]).await;
}

/// Disable takes a target out hard, where the backend has it.
pub async fn check_disable(lb: &dyn LoadBalancer, fx: &Fixture) {
    if !lb.capabilities().hard_disable {
        return;
    }
    lb.disable(std::slice::from_ref(&fx.a))
        .await
        .unwrap_or_else(|e| panic!("disable failed: {e}"));
    lb.disable(std::slice::from_ref(&fx.a))
        .await
        .unwrap_or_else(|e| panic!("second disable must succeed: {e}"));
    wait_for(lb, fx, &fx.a, "out of service", |s| {
        s.state == TargetState::OutOfService
    })
    .await;
    restore(lb, fx, std::slice::from_ref(&fx.a)).await;
}

async fn run_all(lb: &dyn LoadBalancer, fx: &Fixture) {
    check_list(lb, fx).await;
    check_drain_enable_idempotent(lb, fx).await;
    check_drain_is_isolated(lb, fx).await;
    check_unknown_target(lb, fx).await;
    check_connection_counts_honest(lb, fx).await;
    check_concurrent_drain(lb, fx).await;
    check_disable(lb, fx).await;
}

/// Every check, on `lb` and on the same balancer as `Arc<dyn LoadBalancer>`.
pub async fn check_all<L: LoadBalancer + Clone>(lb: &L, fx: &Fixture) {
    run_all(lb, fx).await;
    let dynamic: Arc<dyn LoadBalancer> = Arc::new(lb.clone());
    run_all(&dynamic, fx).await;
}

/// Whether a real component an integration test needs (HAProxy, moto, …) is
/// there. When it is missing the test should return early: this prints a
/// loud message, and panics instead when `HYGIENE_REQUIRE_INTEGRATION=1`
/// (the test script and CI), so a missing component fails the run there.
pub fn integration_available(component: &str, available: bool, how_to_install: &str) -> bool {
    if available {
        return true;
    }
    let required = std::env::var("HYGIENE_REQUIRE_INTEGRATION").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{component} is required (HYGIENE_REQUIRE_INTEGRATION=1) but missing: {how_to_install}"
    );
    eprintln!("SKIPPED: {component} is missing, integration test not run. {how_to_install}");
    false
}
