//! The invariants of the rolling engine (DESIGN §3), checked through the
//! whole engine (machine and driver) against the in-memory balancer's call
//! log, over random pools, settings, pacings and failures. The machine alone
//! is property-tested under injected faults in `src/engine/sim.rs`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::pool;
use hygiene_core::testing::{
    DrainProfile, HealthScript, InMemoryBalancer, Operation, Script, ScriptedExecutor,
};
use hygiene_core::{
    Amount, Error, Health, OnDrainTimeout, OnFailure, Outcome, Pacing, Report, Rollout,
    RolloutConfig, TargetId, TargetResult, TargetState,
};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
struct TargetPlan {
    conns: u64,
    drain_ms: u64,
    exec_fails: bool,
    unhealthy_after_enable: bool,
    health_delay_ms: u64,
    out_at_start: bool,
}

#[derive(Debug, Clone)]
struct Plan {
    targets: Vec<TargetPlan>,
    batch: Amount,
    min_healthy: Amount,
    max_failures: Amount,
    canary: bool,
    on_failure: OnFailure,
    on_drain_timeout: OnDrainTimeout,
    drain_timeout_ms: u64,
    cancel_at_ms: Option<u64>,
    pacing: Pacing,
    /// A reload of the balancer (every target out is back in service).
    reload_at_ms: Option<u64>,
}

fn amount(max_count: usize, max_pct: u8, min: usize) -> impl Strategy<Value = Amount> {
    prop_oneof![
        (min..=max_count).prop_map(Amount::Count),
        (min as u8..=max_pct).prop_map(Amount::Percent)
    ]
}

fn target_plan() -> impl Strategy<Value = TargetPlan> {
    (
        0u64..6,
        0u64..4000,
        prop::bool::weighted(0.06),
        prop::bool::weighted(0.05),
        0u64..2500,
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(
                conns,
                drain_ms,
                exec_fails,
                unhealthy_after_enable,
                health_delay_ms,
                out_at_start,
            )| TargetPlan {
                conns,
                drain_ms,
                exec_fails,
                unhealthy_after_enable,
                health_delay_ms,
                out_at_start,
            },
        )
}

fn plan() -> impl Strategy<Value = Plan> {
    (1usize..=200).prop_flat_map(|n| {
        (
            prop::collection::vec(target_plan(), n),
            amount(n.min(40), 100, 1),
            amount(n, 99, 0),
            amount(6, 50, 0),
            any::<bool>(),
            prop_oneof![Just(OnFailure::KeepOut), Just(OnFailure::Restore)],
            prop_oneof![Just(OnDrainTimeout::Fail), Just(OnDrainTimeout::Proceed)],
            1000u64..6000,
            prop::option::weighted(0.3, 0u64..60_000),
            prop_oneof![Just(Pacing::Batches), Just(Pacing::Window)],
            prop::option::weighted(0.25, 0u64..60_000),
        )
            .prop_map(
                |(
                    targets,
                    batch,
                    min_healthy,
                    max_failures,
                    canary,
                    on_failure,
                    on_drain_timeout,
                    drain_timeout_ms,
                    cancel_at_ms,
                    pacing,
                    reload_at_ms,
                )| Plan {
                    targets,
                    batch,
                    min_healthy,
                    max_failures,
                    canary,
                    on_failure,
                    on_drain_timeout,
                    drain_timeout_ms,
                    cancel_at_ms,
                    pacing,
                    reload_at_ms,
                },
            )
    })
}

fn setup(p: &Plan) -> (InMemoryBalancer, Vec<TargetId>, ScriptedExecutor) {
    let (lb, ids) = pool(p.targets.len());
    let exec = ScriptedExecutor::new().observe(&lb);
    for (id, t) in ids.iter().zip(&p.targets) {
        lb.set_drain_profile(
            id,
            DrainProfile {
                initial: t.conns,
                duration: Duration::from_millis(t.drain_ms),
            },
        )
        .expect("set");
        let health = if t.unhealthy_after_enable {
            Health::Unhealthy
        } else {
            Health::Healthy
        };
        lb.set_health_after_enable(
            id,
            HealthScript {
                delay: Duration::from_millis(t.health_delay_ms),
                health,
            },
        )
        .expect("set");
        if t.out_at_start {
            lb.set_status(id, TargetState::OutOfService, Health::Unknown)
                .expect("set");
        }
        exec.script(
            id,
            Script {
                duration: Duration::from_millis(500),
                fail: t.exec_fails.then(|| "scripted failure".to_owned()),
                not_ready: None,
            },
        );
    }
    (lb, ids, exec)
}

fn config(p: &Plan) -> RolloutConfig {
    RolloutConfig::builder()
        .batch_size(p.batch)
        .min_healthy(p.min_healthy)
        .max_failures(p.max_failures)
        .canary(p.canary)
        .on_failure(p.on_failure)
        .on_drain_timeout(p.on_drain_timeout)
        .drain_timeout(Duration::from_millis(p.drain_timeout_ms))
        .health_timeout(Duration::from_secs(5))
        .capacity_timeout(Duration::from_secs(10))
        .poll_interval(Duration::from_millis(250))
        .pacing(p.pacing)
        .build()
        .expect("valid config")
}

fn run(
    p: &Plan,
    lb: &InMemoryBalancer,
    exec: &ScriptedExecutor,
    cancel_at: Option<u64>,
) -> Result<Report, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let token = CancellationToken::new();
        // The first run only (a second run must find the pool as it is).
        let reload = p
            .reload_at_ms
            .filter(|_| lb.call_count() == 0)
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        lb.reload_at(reload);
        if let Some(ms) = cancel_at {
            let t = token.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                t.cancel();
            });
        }
        Rollout::new(lb.clone(), exec.clone(), config(p))
            .with_cancellation(token)
            .run()
            .await
    })
}

fn check_invariants(
    p: &Plan,
    lb: &InMemoryBalancer,
    exec: &ScriptedExecutor,
    report: &Report,
) -> Result<(), TestCaseError> {
    let pool_size = p.targets.len();
    let cfg = config(p);
    let min_h = cfg.min_healthy_of(pool_size);
    let selected = pool_size;
    let batch_len = cfg.batch_len(selected);
    let calls = lb.calls();
    let kept_out: BTreeSet<TargetId> = report.kept_out().map(|t| t.id.clone()).collect();

    // 1. Healthy in-service targets never drop below min_healthy because of a drain.
    let mut healthy_before = calls.first().map_or(0, |_| {
        pool_size - p.targets.iter().filter(|t| t.out_at_start).count()
    });
    for c in &calls {
        if matches!(
            c.op,
            Operation::Drain | Operation::Disable | Operation::Enable
        ) {
            if c.op == Operation::Drain && c.ok {
                prop_assert!(
                    c.serving_healthy_after >= min_h.min(healthy_before),
                    "invariant 1: drain of {:?} left {} healthy, min_healthy {min_h}, before {healthy_before}",
                    c.ids,
                    c.serving_healthy_after
                );
            }
            healthy_before = c.serving_healthy_after;
        }
    }

    // 2. Never more than batch_size targets in progress. Out of rotation
    //    because of the run is a subset of in progress, except for targets
    //    kept out after a failure: those are bounded by max_failures, and
    //    min_healthy protects capacity against both.
    let reload = lb.reloaded_before_call();
    let mut out: BTreeSet<TargetId> = BTreeSet::new();
    for (n, c) in calls.iter().enumerate() {
        if reload == Some(n) {
            // The reload put every target back in service.
            out.clear();
        }
        if !c.ok {
            continue;
        }
        match c.op {
            Operation::Drain | Operation::Disable => out.extend(c.ids.iter().cloned()),
            Operation::Enable => c.ids.iter().for_each(|id| {
                out.remove(id);
            }),
            _ => {}
        }
        let working = out.iter().filter(|id| !kept_out.contains(*id)).count();
        prop_assert!(
            working <= batch_len,
            "invariant 2: {working} out of rotation, batch size {batch_len}"
        );
    }

    // 3. execute only after drained (or after the drain timeout with Proceed).
    let timings: HashMap<&TargetId, _> =
        report.targets.iter().map(|t| (&t.id, t.timings)).collect();
    let reloaded_at = reload.and_then(|n| calls.get(n)).map(|c| c.at);
    for rec in exec.records() {
        if reloaded_at == Some(rec.started) {
            // Started in the very instant the reload put it back, before
            // any status could show it: a race no one can close.
            continue;
        }
        let st = rec.status_at_start.expect("observed status");
        let forced = p.on_drain_timeout == OnDrainTimeout::Proceed
            && st.state != TargetState::InService
            && timings[&rec.id]
                .drain
                .is_some_and(|d| d >= Duration::from_millis(p.drain_timeout_ms));
        prop_assert!(
            st.is_drained() || forced,
            "invariant 3: {} executed while {st:?}",
            rec.id
        );
    }

    // 4. enable only after a successful execute, or to put back a failed
    //    target with on_failure = Restore, or a drained one on cancellation.
    let records = exec.records();
    let results: HashMap<&TargetId, &TargetResult> =
        report.targets.iter().map(|t| (&t.id, &t.result)).collect();
    for c in calls.iter().filter(|c| c.op == Operation::Enable && c.ok) {
        for id in &c.ids {
            let executed_ok = records
                .iter()
                .any(|r| &r.id == id && r.success && r.ended <= c.at);
            let restored_failure = p.on_failure == OnFailure::Restore
                && matches!(results.get(id), Some(TargetResult::Failed { .. }));
            let cancelled = report.outcome == Outcome::Cancelled
                && matches!(results.get(id), Some(TargetResult::Restored { .. }));
            // A target drained and put back without any maintenance (its
            // drain could not be watched) is restored as it was found.
            let never_executed = !records.iter().any(|r| &r.id == id);
            prop_assert!(
                executed_ok || restored_failure || cancelled || never_executed,
                "invariant 4: {id} enabled without a successful execute: {:?}",
                results.get(id)
            );
        }
    }

    // 5. Every drained target ends in service, or is reported kept out.
    let drained: BTreeSet<TargetId> = calls
        .iter()
        .filter(|c| c.op == Operation::Drain && c.ok)
        .flat_map(|c| c.ids.clone())
        .collect();
    for id in &drained {
        let st = lb.status_of(id).expect("known");
        if kept_out.contains(id) {
            // A reload at the run's very last look may have put it back
            // after the guard's last poll (nothing watches once the run
            // ends); if the run polled again after the reload, the guard
            // must have taken it out again.
            let seen_after_reload = reload.is_some_and(|r| {
                calls[r].ids.contains(id)
                    || calls[r + 1..].iter().any(|c| c.op == Operation::Status)
            });
            prop_assert!(
                st.state != TargetState::InService || (reload.is_some() && !seen_after_reload),
                "{id} reported kept out but in service (reload before call {reload:?})"
            );
        } else {
            prop_assert_eq!(
                st.state,
                TargetState::InService,
                "invariant 5: {} lost out of rotation",
                id
            );
        }
    }
    // max_failures: "more than N" aborts; a completed run has at most N.
    let failed = report.failed().count();
    if report.outcome == Outcome::Completed {
        prop_assert!(
            failed <= cfg.failures_allowed(selected),
            "completed with {failed} failures, {} allowed",
            cfg.failures_allowed(selected)
        );
    }
    // Canary: the first drain names one target.
    if p.canary {
        if let Some(first) = calls.iter().find(|c| c.op == Operation::Drain && c.ok) {
            prop_assert_eq!(first.ids.len(), 1, "the canary batch is one target");
        }
    }
    // Fresh health: a target done was seen healthy after its enable, so no
    // sooner than its health check's delay.
    for (t, tp) in report.targets.iter().zip(&p.targets) {
        if t.result == TargetResult::Done {
            let h = t.timings.health.expect("health timing");
            prop_assert!(
                h >= Duration::from_millis(tp.health_delay_ms),
                "{} counted healthy {h:?} after its enable, before its first check at {} ms",
                t.id,
                tp.health_delay_ms
            );
        }
    }
    // Cancellation puts back what was drained and not maintained.
    if report.outcome == Outcome::Cancelled {
        for t in &report.targets {
            if matches!(t.result, TargetResult::Restored { .. }) {
                prop_assert_eq!(
                    lb.status_of(&t.id).map(|s| s.state),
                    Some(TargetState::InService),
                    "{} restored but out",
                    &t.id
                );
            }
        }
    }
    Ok(())
}

proptest! {
    // A fixed seed, so that CI runs the same cases every time; explore
    // with other seeds and more cases, e.g.
    // `PROPTEST_RNG_SEED=$RANDOM PROPTEST_CASES=100000 cargo test …`.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_206),
        ..ProptestConfig::default()
    })]

    #[test]
    fn rolling_invariants_hold(p in plan()) {
        let (lb, ids, exec) = setup(&p);
        match run(&p, &lb, &exec, p.cancel_at_ms) {
            Ok(report) => {
                check_invariants(&p, &lb, &exec, &report)?;
                // Skipped targets are never enabled, nor touched at all.
                for (id, t) in ids.iter().zip(&p.targets) {
                    if t.out_at_start {
                        prop_assert!(lb.calls().iter().filter(|c| c.op != Operation::Status && c.op != Operation::List).all(|c| !c.ids.contains(id)));
                    }
                }
                // 6. Re-running on a finished pool changes nothing but the maintenance.
                // (Not after a reload: it may have put back a target the run
                // kept out after a failure, which a second run maintains.)
                if report.outcome == Outcome::Completed && lb.reloaded_before_call().is_none() {
                    let before: Vec<_> = lb.snapshot().into_iter().map(|(id, s)| (id, s.state)).collect();
                    let exec2 = ScriptedExecutor::new().observe(&lb);
                    for (id, t) in ids.iter().zip(&p.targets) {
                        exec2.script(id, Script { duration: Duration::from_millis(500), fail: t.exec_fails.then(|| "scripted failure".to_owned()), not_ready: None });
                    }
                    let calls_before = lb.call_count();
                    let second = run(&p, &lb, &exec2, None);
                    let after: Vec<_> = lb.snapshot().into_iter().map(|(id, s)| (id, s.state)).collect();
                    prop_assert_eq!(before, after, "invariant 6: the second run changed the pool: {:?}", second.map(|r| r.outcome));
                    let not_in_service: BTreeSet<TargetId> = lb.snapshot().into_iter().filter(|(_, s)| s.state != TargetState::InService).map(|(id, _)| id).collect();
                    for c in lb.calls().iter().skip(calls_before).filter(|c| c.op == Operation::Enable) {
                        prop_assert!(c.ids.iter().all(|id| !not_in_service.contains(id)), "second run enabled a target it found out of service");
                    }
                }
            }
            Err(Error::InvalidConfig { field: "min_healthy", .. }) => {
                // Refused before anything was touched.
                prop_assert!(lb.calls().iter().all(|c| matches!(c.op, Operation::List | Operation::Status)));
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
