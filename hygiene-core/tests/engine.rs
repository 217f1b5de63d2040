//! Engine behaviour on the in-memory balancer, on paused tokio time.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::{all_in_service, ids_of, mutations, pool, Tampered};
use hygiene_core::testing::{DrainProfile, HealthScript, Operation, Script, ScriptedExecutor};
use hygiene_core::{
    Amount, Error, EventKind, Health, OnDrainTimeout, OnFailure, Outcome, Probe, ProbeVerdict,
    Rollout, RolloutConfig, Selection, Stage, Target, TargetId, TargetResult, TargetState,
};
use tokio_util::sync::CancellationToken;

fn base() -> hygiene_core::RolloutConfigBuilder {
    RolloutConfig::builder()
        .poll_interval(Duration::from_millis(100))
        .health_timeout(Duration::from_secs(30))
}

fn fail(exec: &ScriptedExecutor, id: &TargetId) {
    exec.script(
        id,
        Script {
            fail: Some("patch failed: exit 1".into()),
            ..Script::default()
        },
    );
}

fn result<'a>(r: &'a hygiene_core::Report, id: &TargetId) -> &'a TargetResult {
    &r.targets
        .iter()
        .find(|t| &t.id == id)
        .expect("target in report")
        .result
}

#[tokio::test(start_paused = true)]
async fn completes_every_target_in_batches() {
    let (lb, ids) = pool(5);
    let exec = ScriptedExecutor::new().observe(&lb);
    let cfg = base().batch_size(Amount::Count(2)).build().expect("config");
    let r = Rollout::new(lb.clone(), exec.clone(), cfg)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(r.is_success());
    assert_eq!(r.batches, 3);
    assert_eq!(exec.records().len(), 5);
    assert!(all_in_service(&lb), "every target back in service");
    assert_eq!(ids_of(&lb, Operation::Drain).len(), 5);
    assert_eq!(
        r.targets
            .iter()
            .filter(|t| t.result == TargetResult::Done)
            .count(),
        ids.len()
    );
    assert!(
        r.balancer_calls as usize >= lb.call_count()
            && r.balancer_calls as usize == lb.call_count()
    );
    let json = serde_json::to_string(&r).expect("json");
    let back: hygiene_core::Report = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, r);
}

#[tokio::test(start_paused = true)]
async fn max_failures_zero_aborts_on_first_failure_and_keeps_it_out() {
    let (lb, ids) = pool(6);
    let exec = ScriptedExecutor::new();
    fail(&exec, &ids[1]);
    let r = Rollout::new(lb.clone(), exec, base().build().expect("config"))
        .run()
        .await
        .expect("run");
    assert!(
        matches!(&r.outcome, Outcome::Aborted { reason } if reason.to_string().contains("1 target(s) failed")),
        "{:?}",
        r.outcome
    );
    assert_eq!(result(&r, &ids[0]), &TargetResult::Done);
    match result(&r, &ids[1]) {
        TargetResult::Failed {
            phase: Stage::Executing,
            kept_out: true,
            restore_hint: Some(hint),
            reason,
            ..
        } => {
            assert!(hint.contains(ids[1].as_str()));
            assert!(reason.contains("patch failed"));
        }
        other => panic!("{other:?}"),
    }
    for id in &ids[2..] {
        assert_eq!(result(&r, id), &TargetResult::NotStarted);
    }
    // Drained, then disabled before its maintenance (the seal): it stays so.
    assert_eq!(
        lb.status_of(&ids[1]).map(|s| s.state),
        Some(TargetState::OutOfService)
    );
    assert_eq!(r.kept_out().count(), 1);
    assert!(
        !ids_of(&lb, Operation::Enable).contains(&ids[1]),
        "a failed target is never enabled with KeepOut"
    );
}

#[tokio::test(start_paused = true)]
async fn max_failures_one_tolerates_one_then_aborts() {
    let (lb, ids) = pool(6);
    let exec = ScriptedExecutor::new();
    fail(&exec, &ids[1]);
    fail(&exec, &ids[3]);
    let cfg = base()
        .max_failures(Amount::Count(1))
        .build()
        .expect("config");
    let r = Rollout::new(lb, exec, cfg).run().await.expect("run");
    assert!(matches!(r.outcome, Outcome::Aborted { .. }));
    assert_eq!(
        result(&r, &ids[2]),
        &TargetResult::Done,
        "the first failure is tolerated"
    );
    assert_eq!(
        result(&r, &ids[4]),
        &TargetResult::NotStarted,
        "the second failure aborts"
    );
    assert_eq!(r.failed().count(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_failures_percent_rounds_down() {
    // 15% of 10 = 1.5 → 1 failure tolerated.
    let (lb, ids) = pool(10);
    let exec = ScriptedExecutor::new();
    fail(&exec, &ids[0]);
    let cfg = base()
        .max_failures(Amount::Percent(15))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), exec.clone(), cfg.clone())
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    // 9% of 10 = 0.9 → 0: the first failure aborts.
    let (lb, ids) = pool(10);
    let exec = ScriptedExecutor::new();
    fail(&exec, &ids[0]);
    let cfg = base()
        .max_failures(Amount::Percent(9))
        .build()
        .expect("config");
    let r = Rollout::new(lb, exec, cfg).run().await.expect("run");
    assert!(matches!(r.outcome, Outcome::Aborted { .. }));
}

#[tokio::test(start_paused = true)]
async fn canary_first_batch_is_one_target() {
    let (lb, _) = pool(7);
    let cfg = base()
        .batch_size(Amount::Count(3))
        .canary(true)
        .build()
        .expect("config");
    let rollout = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg);
    let mut events = rollout.subscribe();
    let r = rollout.run().await.expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    let mut sizes = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::BatchStarted { targets, .. } = e.kind {
            sizes.push(targets.len());
        }
    }
    assert_eq!(sizes, vec![1, 3, 3]);
    let drains: Vec<usize> = lb
        .calls()
        .iter()
        .filter(|c| c.op == Operation::Drain)
        .map(|c| c.ids.len())
        .collect();
    assert_eq!(drains, vec![1, 3, 3]);
}

#[tokio::test(start_paused = true)]
async fn skipped_targets_are_never_enabled() {
    let (lb, ids) = pool(4);
    lb.set_status(&ids[2], TargetState::OutOfService, Health::Unknown)
        .expect("set");
    lb.set_status(&ids[3], TargetState::Draining, Health::Healthy)
        .expect("set");
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(matches!(result(&r, &ids[2]), TargetResult::Skipped { .. }));
    assert!(matches!(result(&r, &ids[3]), TargetResult::Skipped { .. }));
    let touched: Vec<TargetId> = lb
        .calls()
        .into_iter()
        .filter(|c| c.op != Operation::Status && c.op != Operation::List)
        .flat_map(|c| c.ids)
        .collect();
    assert!(
        !touched.contains(&ids[2]) && !touched.contains(&ids[3]),
        "{touched:?}"
    );
    assert_eq!(
        lb.status_of(&ids[2]).map(|s| s.state),
        Some(TargetState::OutOfService)
    );
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_connections_and_detects_within_one_poll() {
    let (lb, ids) = pool(1);
    lb.set_drain_profile(
        &ids[0],
        DrainProfile {
            initial: 4,
            duration: Duration::from_millis(2050),
        },
    )
    .expect("set");
    let exec = ScriptedExecutor::new().observe(&lb);
    let r = Rollout::new(lb.clone(), exec.clone(), base().build().expect("config"))
        .run()
        .await
        .expect("run");
    assert!(r.is_success());
    let drain = r.targets[0].timings.drain.expect("drain timing");
    assert!(
        drain >= Duration::from_millis(2050) && drain <= Duration::from_millis(2150),
        "{drain:?}"
    );
    let rec = &exec.records()[0];
    assert!(rec.status_at_start.as_ref().expect("observed").is_drained());
}

/// Two targets, the first with 3 requests that never end; drain timeout 10 s.
async fn run_with_a_stuck_drain(
    on_timeout: OnDrainTimeout,
) -> (Vec<TargetId>, ScriptedExecutor, hygiene_core::Report) {
    let (lb, ids) = pool(2);
    let stuck = DrainProfile {
        initial: 3,
        duration: Duration::from_secs(3600),
    };
    lb.set_drain_profile(&ids[0], stuck).expect("set");
    let exec = ScriptedExecutor::new();
    let cfg = base()
        .drain_timeout(Duration::from_secs(10))
        .on_drain_timeout(on_timeout)
        .build()
        .expect("config");
    let r = Rollout::new(lb, exec.clone(), cfg)
        .run()
        .await
        .expect("run");
    (ids, exec, r)
}

#[tokio::test(start_paused = true)]
async fn drain_timeout_with_proceed_executes_anyway() {
    let (_, exec, r) = run_with_a_stuck_drain(OnDrainTimeout::Proceed).await;
    assert!(r.is_success(), "{r:?}");
    assert_eq!(exec.records().len(), 2);
    assert!(
        r.targets[0].drain_cut_short,
        "the report says in-flight work was cut"
    );
    assert!(!r.targets[1].drain_cut_short);
    let d = r.targets[0].timings.drain.expect("drain");
    assert!(
        d >= Duration::from_secs(10) && d < Duration::from_secs(11),
        "{d:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn drain_timeout_with_fail_keeps_out_without_executing() {
    let (ids, exec, r) = run_with_a_stuck_drain(OnDrainTimeout::Fail).await;
    assert!(matches!(r.outcome, Outcome::Aborted { .. }));
    match result(&r, &ids[0]) {
        TargetResult::Failed {
            phase: Stage::Draining,
            kept_out: true,
            reason,
            ..
        } => assert!(reason.contains("connection"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        exec.records().is_empty(),
        "nothing runs on a target that did not drain"
    );
}

#[tokio::test(start_paused = true)]
async fn restore_policy_puts_failed_targets_back() {
    let (lb, ids) = pool(3);
    let exec = ScriptedExecutor::new();
    fail(&exec, &ids[0]);
    let cfg = base()
        .on_failure(OnFailure::Restore)
        .max_failures(Amount::Count(5))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), exec, cfg)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(matches!(
        result(&r, &ids[0]),
        TargetResult::Failed {
            kept_out: false,
            ..
        }
    ));
    assert!(all_in_service(&lb), "every target back in service");
}

#[tokio::test(start_paused = true)]
async fn unhealthy_after_enable_is_taken_out_again() {
    let (lb, ids) = pool(3);
    lb.set_health_after_enable(
        &ids[0],
        HealthScript {
            delay: Duration::from_secs(1),
            health: Health::Unhealthy,
        },
    )
    .expect("set");
    let cfg = base()
        .health_timeout(Duration::from_secs(5))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect("run");
    assert!(matches!(r.outcome, Outcome::Aborted { .. }));
    match result(&r, &ids[0]) {
        TargetResult::Failed {
            phase: Stage::Enabling,
            kept_out: true,
            reason,
            ..
        } => assert!(reason.contains("Unhealthy"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::OutOfService)
    );
    // Sealed after its drain, then taken out again after its failed health.
    assert_eq!(
        ids_of(&lb, Operation::Disable),
        vec![ids[0].clone(), ids[0].clone()]
    );
}

#[tokio::test(start_paused = true)]
async fn health_is_only_counted_after_the_enable() {
    // Health Unknown for 3 s after the enable: the engine must wait.
    let (lb, ids) = pool(1);
    lb.set_health_after_enable(
        &ids[0],
        HealthScript {
            delay: Duration::from_secs(3),
            health: Health::Healthy,
        },
    )
    .expect("set");
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert!(r.is_success());
    let h = r.targets[0].timings.health.expect("health timing");
    assert!(h >= Duration::from_secs(3), "{h:?}");
}

#[derive(Debug)]
struct FailingProbe(TargetId);

#[async_trait]
impl Probe for FailingProbe {
    async fn check(&self, target: &Target) -> hygiene_core::Result<ProbeVerdict> {
        Ok(if target.id == self.0 {
            ProbeVerdict::Fail("connection refused".into())
        } else {
            ProbeVerdict::Pass
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_probe_keeps_a_target_from_counting_healthy() {
    let (lb, ids) = pool(2);
    let cfg = base()
        .health_timeout(Duration::from_secs(3))
        .max_failures(Amount::Count(1))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .with_probe(FailingProbe(ids[0].clone()))
        .run()
        .await
        .expect("run");
    // The probe runs while the target is still out of rotation: a target
    // that never passes it is never enabled, and is reported in its words.
    match result(&r, &ids[0]) {
        TargetResult::Failed {
            phase: Stage::Probing,
            reason,
            kept_out: true,
            ..
        } => assert!(reason.contains("connection refused"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        !ids_of(&lb, Operation::Enable).contains(&ids[0]),
        "a target whose probe fails is never put back"
    );
    assert_ne!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::InService)
    );
    assert_eq!(result(&r, &ids[1]), &TargetResult::Done);
}

#[tokio::test(start_paused = true)]
async fn retryable_balancer_error_is_retried() {
    let (lb, _) = pool(2);
    lb.fail_next(
        Operation::Drain,
        Error::unavailable("lb", "connection refused"),
    );
    lb.fail_next(
        Operation::Drain,
        Error::unavailable("lb", "connection refused"),
    );
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert!(r.is_success());
    let failed_drains = lb
        .calls()
        .iter()
        .filter(|c| c.op == Operation::Drain && !c.ok)
        .count();
    assert_eq!(failed_drains, 2);
    assert_eq!(r.balancer_calls as usize, lb.call_count());
}

#[tokio::test(start_paused = true)]
async fn non_retryable_balancer_error_aborts_and_restores() {
    let (lb, ids) = pool(2);
    lb.fail_next(Operation::Status, Error::rejected("lb", "bad request"));
    // The status before the batch fails: nothing has been touched.
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert!(
        matches!(&r.outcome, Outcome::Aborted { reason } if reason.to_string().contains("bad request"))
    );
    assert_eq!(
        lb.calls()
            .iter()
            .filter(|c| c.op == Operation::Status)
            .count(),
        1,
        "no retry of a non-retryable error"
    );
    assert_eq!(mutations(&lb), 0);

    // A drain that fails for good: the targets are put back, the run aborts.
    lb.fail_next(Operation::Drain, Error::rejected("lb", "no"));
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert!(matches!(r.outcome, Outcome::Aborted { .. }));
    assert!(matches!(
        result(&r, &ids[0]),
        TargetResult::Failed {
            phase: Stage::Draining,
            kept_out: false,
            ..
        }
    ));
    assert!(all_in_service(&lb), "every target back in service");
}

#[tokio::test(start_paused = true)]
async fn status_failure_while_draining_puts_targets_back() {
    let (lb, ids) = pool(2);
    lb.set_drain_profile(
        &ids[0],
        DrainProfile {
            initial: 2,
            duration: Duration::from_secs(2),
        },
    )
    .expect("set");
    let exec = ScriptedExecutor::new();
    let cfg = base().build().expect("config");
    // First status (before the batch) passes, the one after the drain fails.
    let lb2 = lb.clone();
    let failer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lb2.fail_next(
            Operation::Status,
            Error::PermissionDenied {
                location: "lb".into(),
                message: "revoked".into(),
                source: None,
            },
        );
    });
    let r = Rollout::new(lb.clone(), exec.clone(), cfg)
        .run()
        .await
        .expect("run");
    failer.await.expect("join");
    assert!(matches!(r.outcome, Outcome::Aborted { .. }), "{r:#?}");
    assert!(exec.records().is_empty());
    assert_eq!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::InService),
        "never lose a target"
    );
}

#[tokio::test(start_paused = true)]
async fn executor_error_fails_the_batch() {
    let (lb, ids) = pool(2);
    let exec = ScriptedExecutor::new();
    exec.fail_next(Error::Executor {
        executor: "ssm".into(),
        message: "AccessDenied".into(),
        source: None,
    });
    let r = Rollout::new(lb.clone(), exec, base().build().expect("config"))
        .run()
        .await
        .expect("run");
    assert!(matches!(r.outcome, Outcome::Aborted { .. }));
    assert!(matches!(
        result(&r, &ids[0]),
        TargetResult::Failed {
            phase: Stage::Executing,
            kept_out: true,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn preflight_not_ready_is_never_drained() {
    let (lb, ids) = pool(2);
    let exec = ScriptedExecutor::new();
    exec.script(
        &ids[0],
        Script {
            not_ready: Some("SSM agent ConnectionLost".into()),
            ..Script::default()
        },
    );
    let cfg = base()
        .max_failures(Amount::Count(1))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), exec, cfg)
        .run()
        .await
        .expect("run");
    match result(&r, &ids[0]) {
        TargetResult::Failed {
            phase: Stage::Preflight,
            kept_out: false,
            reason,
            ..
        } => assert!(reason.contains("ConnectionLost")),
        other => panic!("{other:?}"),
    }
    assert!(!ids_of(&lb, Operation::Drain).contains(&ids[0]));
    assert_eq!(result(&r, &ids[1]), &TargetResult::Done);
}

#[tokio::test(start_paused = true)]
async fn unknown_selected_target_fails_before_any_change() {
    let (lb, ids) = pool(2);
    let cfg = base()
        .selection(Selection::Named(vec![
            ids[0].clone(),
            TargetId::new("nope").expect("id"),
        ]))
        .build()
        .expect("config");
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect_err("unknown target");
    assert!(
        matches!(&e, Error::NotFound { name, .. } if name == "nope"),
        "{e:?}"
    );
    assert_eq!(mutations(&lb), 0);
}

#[tokio::test(start_paused = true)]
async fn named_selection_only_touches_named_targets_in_order() {
    let (lb, ids) = pool(4);
    let cfg = base()
        .selection(Selection::Named(vec![ids[3].clone(), ids[1].clone()]))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect("run");
    assert!(r.is_success());
    assert_eq!(
        ids_of(&lb, Operation::Drain),
        vec![ids[3].clone(), ids[1].clone()]
    );
}

#[tokio::test(start_paused = true)]
async fn min_healthy_that_no_batch_can_meet_is_rejected_before_any_change() {
    let (lb, _) = pool(4);
    let cfg = base()
        .min_healthy(Amount::Count(4))
        .build()
        .expect("config");
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect_err("unsatisfiable");
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "min_healthy",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(mutations(&lb), 0);
}

#[tokio::test(start_paused = true)]
async fn min_healthy_shrinks_batches() {
    let (lb, _) = pool(6);
    let cfg = base()
        .batch_size(Amount::Count(4))
        .min_healthy(Amount::Count(4))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect("run");
    assert!(r.is_success());
    let sizes: Vec<usize> = lb
        .calls()
        .iter()
        .filter(|c| c.op == Operation::Drain)
        .map(|c| c.ids.len())
        .collect();
    assert_eq!(sizes, vec![2, 2, 2]);
    assert!(lb
        .calls()
        .iter()
        .filter(|c| c.op == Operation::Drain)
        .all(|c| c.serving_healthy_after >= 4));
}

#[tokio::test(start_paused = true)]
async fn no_capacity_waits_then_aborts() {
    let (lb, ids) = pool(4);
    lb.set_status(&ids[3], TargetState::InService, Health::Unhealthy)
        .expect("set");
    lb.set_status(&ids[2], TargetState::InService, Health::Unhealthy)
        .expect("set");
    let cfg = base()
        .min_healthy(Amount::Count(2))
        .capacity_timeout(Duration::from_secs(20))
        .build()
        .expect("config");
    let start = tokio::time::Instant::now();
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect("run");
    match &r.outcome {
        Outcome::Aborted { reason } => assert!(
            reason.to_string().contains("min_healthy") && reason.to_string().contains("capacity"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_secs(20));
    assert_eq!(mutations(&lb), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_before_start_touches_nothing() {
    let (lb, ids) = pool(3);
    let token = CancellationToken::new();
    token.cancel();
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .with_cancellation(token)
    .run()
    .await
    .expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert_eq!(result(&r, &ids[0]), &TargetResult::NotStarted);
    assert_eq!(mutations(&lb), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_while_draining_puts_back_at_once() {
    let (lb, ids) = pool(3);
    lb.set_drain_profile(
        &ids[0],
        DrainProfile {
            initial: 5,
            duration: Duration::from_secs(60),
        },
    )
    .expect("set");
    let exec = ScriptedExecutor::new();
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        t.cancel();
    });
    let start = tokio::time::Instant::now();
    let r = Rollout::new(lb.clone(), exec.clone(), base().build().expect("config"))
        .with_cancellation(token)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert!(matches!(result(&r, &ids[0]), TargetResult::Restored { .. }));
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "put back at once, not after the drain"
    );
    assert!(exec.records().is_empty());
    assert!(all_in_service(&lb), "every target back in service");
}

#[tokio::test(start_paused = true)]
async fn cancelled_while_executing_finishes_and_verifies() {
    let (lb, ids) = pool(3);
    let exec = ScriptedExecutor::new();
    exec.script(
        &ids[0],
        Script {
            duration: Duration::from_secs(10),
            ..Script::default()
        },
    );
    lb.set_health_after_enable(
        &ids[0],
        HealthScript {
            delay: Duration::from_secs(2),
            health: Health::Healthy,
        },
    )
    .expect("set");
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        t.cancel();
    });
    let r = Rollout::new(lb.clone(), exec.clone(), base().build().expect("config"))
        .with_cancellation(token)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert_eq!(
        result(&r, &ids[0]),
        &TargetResult::Done,
        "the running maintenance finishes and is verified"
    );
    assert!(r.targets[0].timings.health.expect("health") >= Duration::from_secs(2));
    assert_eq!(result(&r, &ids[1]), &TargetResult::NotStarted);
    assert_eq!(exec.records().len(), 1);
    assert!(all_in_service(&lb), "every target back in service");
}

#[tokio::test(start_paused = true)]
async fn cancelled_while_waiting_for_health_still_verifies() {
    let (lb, ids) = pool(2);
    lb.set_health_after_enable(
        &ids[0],
        HealthScript {
            delay: Duration::from_secs(8),
            health: Health::Unhealthy,
        },
    )
    .expect("set");
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.cancel();
    });
    let cfg = base()
        .health_timeout(Duration::from_secs(10))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .with_cancellation(token)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert!(matches!(
        result(&r, &ids[0]),
        TargetResult::Failed {
            phase: Stage::Enabling,
            kept_out: true,
            ..
        }
    ));
    assert_eq!(result(&r, &ids[1]), &TargetResult::NotStarted);
}

#[tokio::test(start_paused = true)]
async fn cancelled_during_warmup_stops_early() {
    let (lb, ids) = pool(2);
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        t.cancel();
    });
    let cfg = base()
        .warmup(Duration::from_secs(600))
        .build()
        .expect("config");
    let start = tokio::time::Instant::now();
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .with_cancellation(token)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(result(&r, &ids[0]), &TargetResult::Done);
    assert_eq!(result(&r, &ids[1]), &TargetResult::NotStarted);
}

#[tokio::test(start_paused = true)]
async fn warmup_waits_between_batches() {
    let (lb, _) = pool(3);
    let cfg = base()
        .warmup(Duration::from_secs(30))
        .build()
        .expect("config");
    let start = tokio::time::Instant::now();
    let r = Rollout::new(lb, ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect("run");
    assert!(r.is_success());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(60) && took < Duration::from_secs(90),
        "warmup between batches only: {took:?}"
    );
    assert_eq!(r.targets[0].timings.warmup, Some(Duration::from_secs(30)));
    assert_eq!(
        r.targets[2].timings.warmup, None,
        "no warmup after the last batch"
    );
}

#[tokio::test(start_paused = true)]
async fn events_report_each_phase() {
    let (lb, ids) = pool(1);
    let rollout = Rollout::new(lb, ScriptedExecutor::new(), base().build().expect("config"));
    let mut rx = rollout.subscribe();
    rollout.run().await.expect("run");
    let mut stages = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let EventKind::Phase { id, stage, .. } = e.kind {
            assert_eq!(id, ids[0]);
            stages.push(stage);
        }
    }
    assert_eq!(
        stages,
        vec![
            Stage::Preflight,
            Stage::Draining,
            Stage::Drained,
            Stage::Executing,
            Stage::Enabling,
            Stage::Healthy,
            Stage::Done
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_never_takes_effect_runs_nothing_even_with_proceed() {
    let (lb, ids) = pool(2);
    let exec = ScriptedExecutor::new();
    let cfg = base()
        .drain_timeout(Duration::from_secs(5))
        .on_drain_timeout(OnDrainTimeout::Proceed)
        .build()
        .expect("config");
    let r = Rollout::new(
        Tampered {
            ignore_drain: true,
            ..Tampered::new(lb.clone())
        },
        exec.clone(),
        cfg,
    )
    .run()
    .await
    .expect("run");
    assert!(
        exec.records().is_empty(),
        "no maintenance on a target still in service"
    );
    match result(&r, &ids[0]) {
        TargetResult::Failed {
            phase: Stage::Draining,
            kept_out: false,
            reason,
            ..
        } => assert!(reason.contains("did not take effect"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.kept_out().count(),
        0,
        "the report matches the balancer: nothing is out"
    );
}

#[derive(Debug, Clone)]
struct SlowPreflight(ScriptedExecutor);

#[async_trait]
impl hygiene_core::Executor for SlowPreflight {
    fn name(&self) -> String {
        "slow preflight".into()
    }
    async fn preflight(
        &self,
        targets: &[Target],
    ) -> hygiene_core::Result<Vec<hygiene_core::Preflight>> {
        tokio::time::sleep(Duration::from_secs(10)).await;
        self.0.preflight(targets).await
    }
    async fn execute(
        &self,
        targets: &[Target],
    ) -> hygiene_core::Result<Vec<hygiene_core::ExecOutcome>> {
        self.0.execute(targets).await
    }
}

#[tokio::test(start_paused = true)]
async fn cancelled_during_preflight_drains_nothing() {
    let (lb, ids) = pool(3);
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.cancel();
    });
    let r = Rollout::new(
        lb.clone(),
        SlowPreflight(ScriptedExecutor::new()),
        base().build().expect("config"),
    )
    .with_cancellation(token)
    .run()
    .await
    .expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert_eq!(mutations(&lb), 0, "start nothing new");
    assert_eq!(result(&r, &ids[0]), &TargetResult::NotStarted);
}

/// A run of two targets where t000 is unhealthy after its enable: the
/// first disable (the seal after its drain) passes, the next `refused`
/// ones (taking it out again) are refused.
async fn unhealthy_after_enable_with_refused_take_outs(
    refused: usize,
) -> (
    hygiene_core::Report,
    hygiene_core::testing::InMemoryBalancer,
    Vec<hygiene_core::TargetId>,
) {
    let (lb, ids) = pool(2);
    lb.set_health_after_enable(
        &ids[0],
        HealthScript {
            delay: Duration::ZERO,
            health: Health::Unhealthy,
        },
    )
    .expect("set");
    lb.pass_next(Operation::Disable);
    for _ in 0..refused {
        lb.fail_next(Operation::Disable, Error::rejected("lb", "refused"));
    }
    let cfg = base()
        .health_timeout(Duration::from_secs(2))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect("run");
    (r, lb, ids)
}

#[tokio::test(start_paused = true)]
async fn a_failed_take_out_again_is_reported_as_in_service() {
    // Refused every time: after its failed health, and at the run's last
    // looks.
    let (r, lb, ids) = unhealthy_after_enable_with_refused_take_outs(5).await;
    assert!(
        matches!(
            result(&r, &ids[0]),
            TargetResult::Failed {
                phase: Stage::Enabling,
                kept_out: false,
                ..
            }
        ),
        "{r:#?}"
    );
    let t = r.target(&ids[0]).expect("reported");
    assert_eq!(t.location, hygiene_core::Location::InService);
    assert!(
        t.notes.iter().any(|n| n.contains("IN SERVICE")),
        "{:?}",
        t.notes
    );
    assert_eq!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::InService)
    );
}

/// A take-out refused once is tried again at the run's last look: the
/// target the run keeps out is out when the run ends.
#[tokio::test(start_paused = true)]
async fn a_refused_take_out_is_tried_again_before_the_run_ends() {
    let (r, lb, ids) = unhealthy_after_enable_with_refused_take_outs(1).await;
    let t = r.target(&ids[0]).expect("reported");
    assert!(
        matches!(
            t.result,
            TargetResult::Failed {
                phase: Stage::Enabling,
                kept_out: true,
                ..
            }
        ),
        "{r:#?}"
    );
    assert_eq!(t.location, hygiene_core::Location::KeptOut, "{r:#?}");
    assert_ne!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::InService)
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_refused_as_not_found_changed_nothing() {
    let (lb, ids) = pool(2);
    lb.fail_next(Operation::Drain, Error::target_not_found("t000", None));
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert!(matches!(r.outcome, Outcome::Aborted { .. }));
    assert!(matches!(
        result(&r, &ids[0]),
        TargetResult::Failed {
            phase: Stage::Draining,
            kept_out: false,
            ..
        }
    ));
    assert_eq!(
        ids_of(&lb, Operation::Enable),
        Vec::<TargetId>::new(),
        "nothing to put back"
    );
}

#[tokio::test(start_paused = true)]
async fn execute_is_not_retried_after_an_ambiguous_error() {
    let (lb, ids) = pool(1);
    let exec = ScriptedExecutor::new();
    exec.fail_next(Error::Timeout {
        operation: "SendCommand".into(),
        after: Duration::from_secs(30),
    });
    let r = Rollout::new(lb.clone(), exec.clone(), base().build().expect("config"))
        .run()
        .await
        .expect("run");
    assert!(matches!(
        result(&r, &ids[0]),
        TargetResult::Failed {
            phase: Stage::Executing,
            ..
        }
    ));
    assert_eq!(
        r.executor_calls, 2,
        "one preflight, one execute: a maintenance is not run twice"
    );
    assert!(exec.records().is_empty());
    // Throttling means the command was not accepted: that one is retried.
    let (lb, _) = pool(1);
    let exec = ScriptedExecutor::new();
    exec.fail_next(Error::Throttled {
        location: "ssm".into(),
        message: "slow down".into(),
        source: None,
    });
    let r = Rollout::new(lb, exec.clone(), base().build().expect("config"))
        .run()
        .await
        .expect("run");
    assert!(r.is_success());
    assert_eq!(exec.records().len(), 1);
}

#[derive(Debug, Clone)]
struct Swapped;

#[async_trait]
impl hygiene_core::Executor for Swapped {
    fn name(&self) -> String {
        "swapping executor".into()
    }
    async fn preflight(
        &self,
        targets: &[Target],
    ) -> hygiene_core::Result<Vec<hygiene_core::Preflight>> {
        Ok(vec![hygiene_core::Preflight::Ready; targets.len()])
    }
    async fn execute(
        &self,
        targets: &[Target],
    ) -> hygiene_core::Result<Vec<hygiene_core::ExecOutcome>> {
        let mut out: Vec<_> = targets
            .iter()
            .map(|t| hygiene_core::ExecOutcome::success(t.id.clone(), Duration::ZERO))
            .collect();
        out.reverse();
        Ok(out)
    }
}

#[tokio::test(start_paused = true)]
async fn outcomes_for_the_wrong_target_are_not_trusted() {
    let (lb, ids) = pool(2);
    let cfg = base().batch_size(Amount::Count(2)).build().expect("config");
    let r = Rollout::new(lb.clone(), Swapped, cfg)
        .run()
        .await
        .expect("run");
    match result(&r, &ids[0]) {
        TargetResult::Failed {
            phase: Stage::Executing,
            reason,
            ..
        } => assert!(reason.contains("not trusted"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(ids_of(&lb, Operation::Enable).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_empty_pool_is_a_config_error() {
    let lb = hygiene_core::testing::InMemoryBalancer::new();
    let e = Rollout::new(lb, ScriptedExecutor::new(), base().build().expect("config"))
        .run()
        .await
        .expect_err("empty");
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "selection",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_unknown_id_at_enable_does_not_keep_the_whole_batch_out() {
    let (lb, ids) = pool(3);
    // The batch enable fails as NotFound (nothing changed), then the first
    // target alone fails too; the second is enabled and verified.
    lb.fail_next(Operation::Enable, Error::target_not_found("t000", None));
    lb.fail_next(Operation::Enable, Error::target_not_found("t000", None));
    let cfg = base()
        .batch_size(Amount::Count(2))
        .max_failures(Amount::Count(5))
        .build()
        .expect("config");
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect("run");
    // One refused id is that target's failure, not the balancer's: the run
    // goes on, and the status read back says where t000 really is.
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert!(matches!(
        result(&r, &ids[0]),
        TargetResult::Failed {
            phase: Stage::Enabling,
            kept_out: true,
            ..
        }
    ));
    assert_eq!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::OutOfService)
    );
    assert_eq!(result(&r, &ids[1]), &TargetResult::Done);
    assert_eq!(
        lb.status_of(&ids[1]).map(|s| s.state),
        Some(TargetState::InService)
    );
    assert_eq!(result(&r, &ids[2]), &TargetResult::Done);
}
