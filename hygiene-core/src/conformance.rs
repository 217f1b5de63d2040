//! The conformance suite every [`LoadBalancer`] must pass (feature
//! `conformance`). Each `check_*` panics with a message naming the broken
//! rule; [`check_all`] runs them all, directly and through
//! `Arc<dyn LoadBalancer>`. The rules are those of the trait's contract
//! (see [`LoadBalancer`]).
//!
//! # Use from a backend's tests
//!
//! A backend's integration test builds its balancer against the real
//! server (or a faithful fake), and gives the suite a [`Fixture`]: two
//! targets in service (and a third one in the pool, since the suite drains
//! both at once and a backend may rightly refuse to empty a pool), an id
//! the balancer does not know, an id the backend
//! must refuse when it has stricter naming rules than [`TargetId::new`]
//! (HAProxy: `web/s1;shutdown`), and how long a change may take to show.
//! The checks leave every target as they found it (in service).
//!
//! ```
//! use std::time::Duration;
//!
//! use hygiene_core::conformance::{check_all, Fixture};
//! use hygiene_core::testing::InMemoryBalancer;
//! use hygiene_core::TargetId;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> hygiene_core::Result<()> {
//! let lb = InMemoryBalancer::with_targets(["web-1", "web-2", "web-3"])?;
//! let fx = Fixture {
//!     a: TargetId::new("web-1")?,
//!     b: TargetId::new("web-2")?,
//!     unknown: TargetId::new("web-9")?,
//!     // The in-memory balancer takes every id `TargetId::new` accepts.
//!     invalid: None,
//!     // Changes show at once in memory; a few seconds for real balancers.
//!     settle: Duration::ZERO,
//! };
//! check_all(&lb, &fx).await; // panics naming the broken rule
//! assert!(lb.snapshot().iter().all(|(_, s)| s.is_serving_healthy()));
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::LoadBalancer;
use crate::error::{Error, Result};
use crate::target::{Health, TargetId, TargetState, TargetStatus};

/// What a backend's test gives the suite.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// A target in service, distinct from `b`. The pool must hold at least
    /// one more target in service than `a` and `b`:
    /// [`check_concurrent_drain`] drains both together, and a backend that
    /// refuses to take the last entry out of a pool (Caddy's, whose route
    /// would then fail every request) would rightly refuse that drain.
    pub a: TargetId,
    /// Another target in service.
    pub b: TargetId,
    /// An id the balancer does not know (but a valid one for the backend).
    pub unknown: TargetId,
    /// An id [`TargetId::new`] accepts but the backend must refuse with
    /// [`Error::InvalidName`] (HAProxy: `web/s1;shutdown`, since its names
    /// are `[A-Za-z0-9._:-]`). `None`: the backend has no stricter rule.
    pub invalid: Option<TargetId>,
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

/// Drains `id` and waits until it is out of rotation.
async fn drain_out(lb: &dyn LoadBalancer, fx: &Fixture, id: &TargetId) {
    lb.drain(std::slice::from_ref(id))
        .await
        .unwrap_or_else(|e| panic!("drain of {id} failed: {e}"));
    wait_for(lb, fx, id, "out of rotation", |s| {
        s.state != TargetState::InService
    })
    .await;
}

/// Asserts `r` is a `NotFound` naming `unknown`.
fn expect_not_found<T: std::fmt::Debug>(r: Result<T>, call: &str, unknown: &TargetId) {
    let e = r.expect_err(&format!(
        "all-or-nothing rule: {call} naming the unknown target {unknown} must fail"
    ));
    assert!(
        matches!(e, Error::NotFound { .. }),
        "all-or-nothing rule: {call} naming the unknown target {unknown}: expected NotFound, got {e:?}"
    );
    assert!(
        e.to_string().contains(unknown.as_str()),
        "all-or-nothing rule: the NotFound of {call} must name {unknown}: {e}"
    );
}

/// Asserts `r` is an `InvalidName` naming `invalid`.
fn expect_invalid<T: std::fmt::Debug>(r: Result<T>, call: &str, invalid: &TargetId) {
    let e = r.expect_err(&format!(
        "invalid-name rule: {call} naming the invalid id {invalid:?} must fail"
    ));
    assert!(
        matches!(e, Error::InvalidName { .. }),
        "invalid-name rule: {call} naming the invalid id {invalid:?}: expected InvalidName, got {e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains(invalid.as_str()) || text.contains(&format!("{:?}", invalid.as_str())),
        "invalid-name rule: the InvalidName of {call} must name {invalid:?}: {e}"
    );
}

/// Asserts `id` is (still) in service after a call that must not change it.
async fn assert_in_service(lb: &dyn LoadBalancer, id: &TargetId, rule: &str, after: &str) {
    let s = status_of(lb, id).await;
    assert_eq!(
        s.state,
        TargetState::InService,
        "{rule}: {after} changed {id}, which must stay in service: {s:?}"
    );
}

/// Asserts `id` is (still) out of rotation after a call that must not
/// change it.
async fn assert_still_out(lb: &dyn LoadBalancer, id: &TargetId, rule: &str, after: &str) {
    let s = status_of(lb, id).await;
    assert_ne!(
        s.state,
        TargetState::InService,
        "{rule}: {after} put {id} back in service: {s:?}"
    );
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

/// Order rule: `status(&[b, a])` returns exactly two entries, b's then
/// a's. To make the order observable, `a` is drained first (so the two
/// differ in `state`); each entry is compared with `status(&[b])` and
/// `status(&[a])` on `state`, which does not change between the calls.
/// `a` is restored after.
pub async fn check_status_order(lb: &dyn LoadBalancer, fx: &Fixture) {
    drain_out(lb, fx, &fx.a).await;
    let a = status_of(lb, &fx.a).await;
    let b = status_of(lb, &fx.b).await;
    assert_eq!(
        b.state,
        TargetState::InService,
        "order rule: {} must stay in service while {} is drained (to tell them apart): {b:?}",
        fx.b,
        fx.a
    );
    let both = lb
        .status(&[fx.b.clone(), fx.a.clone()])
        .await
        .unwrap_or_else(|e| panic!("status of [{}, {}] failed: {e}", fx.b, fx.a));
    assert_eq!(
        both.len(),
        2,
        "order rule: status(&[{}, {}]) must return exactly two entries: {both:?}",
        fx.b,
        fx.a
    );
    assert_eq!(
        (both[0].state, both[1].state),
        (b.state, a.state),
        "order rule: status(&[{b_id}, {a_id}]) must give {b_id}'s status first, then {a_id}'s: got {both:?}, alone they are {b:?} and {a:?}",
        b_id = fx.b,
        a_id = fx.a
    );
    restore(lb, fx, std::slice::from_ref(&fx.a)).await;
}

/// All-or-nothing rule for `enable` and `disable` (the latter only with
/// `capabilities().hard_disable`): a call naming `fx.a` together with
/// `fx.unknown` gives [`Error::NotFound`] naming the unknown id, and leaves
/// `a` as it was: in service after a failed `disable`, in service after a
/// failed `enable` and, when `a` was drained before, still out after it.
pub async fn check_enable_disable_unknown(lb: &dyn LoadBalancer, fx: &Fixture) {
    const RULE: &str = "all-or-nothing rule";
    let mixed = [fx.a.clone(), fx.unknown.clone()];
    expect_not_found(lb.enable(&mixed).await, "enable", &fx.unknown);
    assert_in_service(lb, &fx.a, RULE, "a failed enable naming an unknown target").await;
    if lb.capabilities().hard_disable {
        expect_not_found(lb.disable(&mixed).await, "disable", &fx.unknown);
        assert_in_service(lb, &fx.a, RULE, "a failed disable naming an unknown target").await;
    }
    drain_out(lb, fx, &fx.a).await;
    expect_not_found(lb.enable(&mixed).await, "enable", &fx.unknown);
    assert_still_out(lb, &fx.a, RULE, "a failed enable naming an unknown target").await;
    restore(lb, fx, std::slice::from_ref(&fx.a)).await;
}

/// Invalid-name rule, when the backend has one (`fx.invalid`): `status`,
/// `drain`, `enable` (and `disable` with `capabilities().hard_disable`)
/// naming the invalid id, alone or with `fx.a`, give
/// [`Error::InvalidName`] naming it, and change nothing: `a` stays in
/// service after a failed drain or disable, and out after a failed enable.
pub async fn check_invalid_name(lb: &dyn LoadBalancer, fx: &Fixture) {
    const RULE: &str = "invalid-name rule";
    let Some(invalid) = &fx.invalid else {
        return;
    };
    let alone = std::slice::from_ref(invalid);
    let mixed = [fx.a.clone(), invalid.clone()];
    expect_invalid(lb.status(alone).await, "status", invalid);
    expect_invalid(lb.status(&mixed).await, "status", invalid);
    expect_invalid(lb.drain(alone).await, "drain", invalid);
    expect_invalid(lb.drain(&mixed).await, "drain", invalid);
    assert_in_service(lb, &fx.a, RULE, "a failed drain naming an invalid id").await;
    if lb.capabilities().hard_disable {
        expect_invalid(lb.disable(&mixed).await, "disable", invalid);
        assert_in_service(lb, &fx.a, RULE, "a failed disable naming an invalid id").await;
    }
    expect_invalid(lb.enable(alone).await, "enable", invalid);
    drain_out(lb, fx, &fx.a).await;
    expect_invalid(lb.enable(&mixed).await, "enable", invalid);
    assert_still_out(lb, &fx.a, RULE, "a failed enable naming an invalid id").await;
    restore(lb, fx, std::slice::from_ref(&fx.a)).await;
}

/// Drain-visibility rule: once `drain(a)` has returned, `status(a).state`
/// is `Draining` or `OutOfService` within `fx.settle` (at once when it is
/// zero), and from then on never `InService` again (read for the rest of
/// `fx.settle`, at least three times) until `a` is enabled. `a` is
/// restored after.
pub async fn check_drain_visible(lb: &dyn LoadBalancer, fx: &Fixture) {
    const RULE: &str = "drain-visibility rule";
    lb.drain(std::slice::from_ref(&fx.a))
        .await
        .unwrap_or_else(|e| panic!("drain of {} failed: {e}", fx.a));
    let start = tokio::time::Instant::now();
    let deadline = start + fx.settle;
    let mut first_out: Option<TargetStatus> = None;
    let mut reads = 0u32;
    loop {
        let s = status_of(lb, &fx.a).await;
        let now = tokio::time::Instant::now();
        reads += 1;
        match (&first_out, s.state) {
            (Some(out), TargetState::InService) => panic!(
                "{RULE}: drained {} read {s:?} after it had read {out:?}: a drained target must not come back in service until enabled",
                fx.a
            ),
            (None, TargetState::InService) => assert!(
                now < deadline,
                "{RULE}: {} still in service {:?} after drain returned (settle {:?}): {s:?}",
                fx.a,
                now - start,
                fx.settle
            ),
            (None, _) => first_out = Some(s),
            (Some(_), _) => {}
        }
        if first_out.is_some() && now >= deadline && reads >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    restore(lb, fx, std::slice::from_ref(&fx.a)).await;
}

/// Fresh-health-after-enable rule (only with `capabilities().health_checks`),
/// as far as a test can see it from outside.
///
/// `a` is taken out (disabled where the backend has a hard disable, else
/// drained), and once out, enabled. From the first status read after
/// `enable` returns, statuses are read until `a` is `InService` and
/// `Healthy`:
///
/// - it must come back: `InService` and `Healthy` within `fx.settle` + 1 s;
/// - a `Healthy` read is never followed by an `Unknown` one: a result from
///   a check made after the enable does not turn back into "no fresh
///   result", so a `Healthy` that does was the stale one the contract
///   forbids (a backend that can see staleness reports `Unknown` until a
///   check after the enable has run).
///
/// What it cannot check: that the first `Healthy` came from a check made
/// after the enable. While the target is healthy, a backend that checks at
/// once and one that shows the result from before look the same from
/// outside; backends prove it in their own tests against a target that
/// fails its checks once back.
pub async fn check_fresh_health_after_enable(lb: &dyn LoadBalancer, fx: &Fixture) {
    const RULE: &str = "fresh-health-after-enable rule";
    if !lb.capabilities().health_checks {
        return;
    }
    let a = std::slice::from_ref(&fx.a);
    if lb.capabilities().hard_disable {
        lb.disable(a)
            .await
            .unwrap_or_else(|e| panic!("disable of {} failed: {e}", fx.a));
        wait_for(lb, fx, &fx.a, "out of service", |s| {
            s.state == TargetState::OutOfService
        })
        .await;
    } else {
        drain_out(lb, fx, &fx.a).await;
    }
    lb.enable(a)
        .await
        .unwrap_or_else(|e| panic!("enable of {} failed: {e}", fx.a));
    let start = tokio::time::Instant::now();
    let deadline = start + fx.settle + Duration::from_secs(1);
    let mut reads: Vec<TargetStatus> = Vec::new();
    loop {
        let s = status_of(lb, &fx.a).await;
        let now = tokio::time::Instant::now();
        if s.health == Health::Unknown {
            if let Some(healthy) = reads.iter().find(|r| r.health == Health::Healthy) {
                panic!(
                    "{RULE}: {} read {healthy:?} after enable, then {s:?}: that Healthy was stale (reads since enable: {reads:?})",
                    fx.a
                );
            }
        }
        let back = s.is_serving_healthy();
        reads.push(s);
        if back {
            break;
        }
        assert!(
            now < deadline,
            "{RULE}: {} was not in service and Healthy within {:?} of enable (settle {:?}): {} reads, the first {:?}, the last {:?}",
            fx.a,
            now - start,
            fx.settle,
            reads.len(),
            reads.first(),
            reads.last()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One more read: a fresh Healthy does not fall back to Unknown.
    let s = status_of(lb, &fx.a).await;
    assert!(
        s.state == TargetState::InService && s.health != Health::Unknown,
        "{RULE}: {} read {s:?} right after it was in service and Healthy: that Healthy was stale (reads since enable: {reads:?})",
        fx.a
    );
}

async fn run_all(lb: &dyn LoadBalancer, fx: &Fixture) {
    check_list(lb, fx).await;
    check_status_order(lb, fx).await;
    check_drain_enable_idempotent(lb, fx).await;
    check_drain_visible(lb, fx).await;
    check_drain_is_isolated(lb, fx).await;
    check_unknown_target(lb, fx).await;
    check_enable_disable_unknown(lb, fx).await;
    check_invalid_name(lb, fx).await;
    check_connection_counts_honest(lb, fx).await;
    check_concurrent_drain(lb, fx).await;
    check_disable(lb, fx).await;
    check_fresh_health_after_enable(lb, fx).await;
}

/// A host that serves two pools, for [`check_shared_host`]: `id` in the
/// pool of the balancer under test, and the same host seen through
/// `other`, a balancer over the second pool only (HAProxy: the other
/// backend, built with `HostScope::PoolBackendsOnly`), as `other_id`.
#[derive(Debug, Clone)]
pub struct SharedHost {
    /// The host in the tested balancer's pool.
    pub id: TargetId,
    /// A balancer over the other pool only.
    pub other: Arc<dyn LoadBalancer>,
    /// The host there.
    pub other_id: TargetId,
    /// How long a change may take to show.
    pub settle: Duration,
}

/// A host shared by two pools is one target: once `drain` of it reports
/// it drained (status `Draining` with 0 connections, or out of service),
/// the other pool no longer sends it new requests either; `enable` puts it
/// back in both. Run it for backends that drain a host from every pool
/// holding it (HAProxy by default; NGINX across upstreams; ELBv2 with the
/// option to drain other target groups).
pub async fn check_shared_host(lb: &dyn LoadBalancer, sh: &SharedHost) {
    const RULE: &str = "a host in two pools is drained from both";
    let fx = Fixture {
        a: sh.id.clone(),
        b: sh.id.clone(),
        unknown: sh.id.clone(),
        invalid: None,
        settle: sh.settle,
    };
    let before = status_of(&*sh.other, &sh.other_id).await;
    assert_eq!(
        before.state,
        TargetState::InService,
        "{RULE}: {} must start in service in the other pool",
        sh.other_id
    );
    lb.drain(std::slice::from_ref(&sh.id))
        .await
        .unwrap_or_else(|e| panic!("{RULE}: drain of {} failed: {e}", sh.id));
    wait_for(lb, &fx, &sh.id, "drained", |s| {
        s.state == TargetState::OutOfService
            || (s.state == TargetState::Draining && s.connections == Some(0))
    })
    .await;
    let other = status_of(&*sh.other, &sh.other_id).await;
    assert_ne!(
        other.state,
        TargetState::InService,
        "{RULE}: {} reported drained while the other pool still sends {} requests",
        sh.id,
        sh.other_id
    );
    lb.enable(std::slice::from_ref(&sh.id))
        .await
        .unwrap_or_else(|e| panic!("{RULE}: enable of {} failed: {e}", sh.id));
    let fx_other = Fixture {
        a: sh.other_id.clone(),
        b: sh.other_id.clone(),
        unknown: sh.other_id.clone(),
        invalid: None,
        settle: sh.settle,
    };
    wait_for(
        &*sh.other,
        &fx_other,
        &sh.other_id,
        "back in the other pool",
        |s| s.state == TargetState::InService,
    )
    .await;
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
