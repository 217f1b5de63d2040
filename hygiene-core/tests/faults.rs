//! The engine under the faults a careful read of the first engine found
//! (issue "Engine v2"), each on the in-memory balancer and paused time.
//! Every test here failed on the first engine.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{ids_of, pool, Tampered};
use hygiene_core::testing::{
    DrainProfile, HealthScript, InMemoryBalancer, Operation, Script, ScriptedExecutor,
};
use hygiene_core::{
    AbortReason, Amount, Error, EventKind, ExecOutcome, Executor, Health, Location, OnFailure,
    Outcome, Pacing, Preflight, Probe, ProbeVerdict, Rollout, RolloutConfig, Stage, Target,
    TargetId, TargetResult, TargetState,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn base() -> hygiene_core::RolloutConfigBuilder {
    RolloutConfig::builder()
        .poll_interval(Duration::from_millis(100))
        .health_timeout(Duration::from_secs(30))
}

fn result<'a>(r: &'a hygiene_core::Report, id: &TargetId) -> &'a TargetResult {
    &r.target(id).expect("target in report").result
}

fn state(lb: &InMemoryBalancer, id: &TargetId) -> Option<TargetState> {
    lb.status_of(id).map(|s| s.state)
}

type Seen = Arc<Mutex<Vec<(TargetId, Option<TargetState>)>>>;

/// A probe that records the balancer's state of each target it checks,
/// and fails its first `fail_first` checks.
#[derive(Debug, Clone)]
struct RecordingProbe {
    lb: InMemoryBalancer,
    seen: Seen,
    fail_first: Arc<Mutex<usize>>,
}

#[async_trait]
impl Probe for RecordingProbe {
    async fn check(&self, target: &Target) -> hygiene_core::Result<ProbeVerdict> {
        self.seen
            .lock()
            .expect("lock")
            .push((target.id.clone(), state(&self.lb, &target.id)));
        let mut left = self.fail_first.lock().expect("lock");
        if *left > 0 {
            *left -= 1;
            return Ok(ProbeVerdict::Fail("connection refused".into()));
        }
        Ok(ProbeVerdict::Pass)
    }
}

// 1. The probe runs after the maintenance, before the enable, while the
//    target is out of rotation; it is tried again until it passes.
#[tokio::test(start_paused = true)]
async fn the_probe_runs_while_the_target_is_still_out_of_rotation() {
    let (lb, ids) = pool(2);
    let probe = RecordingProbe {
        lb: lb.clone(),
        seen: Arc::default(),
        fail_first: Arc::new(Mutex::new(3)),
    };
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .with_probe(probe.clone())
    .run()
    .await
    .expect("run");
    assert!(r.is_success(), "{r:#?}");
    let seen = probe.seen.lock().expect("lock").clone();
    assert_eq!(
        seen.len(),
        5,
        "3 failed checks, then one pass per target: {seen:?}"
    );
    for (id, st) in &seen {
        assert_ne!(
            *st,
            Some(TargetState::InService),
            "{id} was probed while in rotation"
        );
    }
    let t = r.target(&ids[0]).expect("reported");
    assert_eq!(
        t.timings.probe,
        Some(Duration::from_millis(300)),
        "probed again every poll interval"
    );
}

// 2. An enable that fails after it was applied is verified and reported as
//    what it is: in service.
#[tokio::test(start_paused = true)]
async fn an_enable_that_failed_but_applied_is_verified_not_reported_kept_out() {
    let (inner, ids) = pool(2);
    let lb = Tampered::new(inner.clone());
    lb.enable_applies_then_fails
        .lock()
        .expect("lock")
        .push(Error::rejected("node b", "Permission denied"));
    let r = Rollout::new(lb, ScriptedExecutor::new(), base().build().expect("config"))
        .run()
        .await
        .expect("run");
    let t = r.target(&ids[0]).expect("reported");
    assert_eq!(t.location, Location::InService, "{r:#?}");
    assert!(!t.is_kept_out());
    assert!(
        t.notes.iter().any(|n| n.contains("shows it in service")),
        "{:?}",
        t.notes
    );
    assert!(
        t.timings.health.is_some(),
        "its health was verified after the enable"
    );
    assert_eq!(state(&inner, &ids[0]), Some(TargetState::InService));
    assert_eq!(r.kept_out().count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_enable_that_failed_and_did_not_apply_is_kept_out_by_name() {
    let (lb, ids) = pool(2);
    lb.fail_next(
        Operation::Enable,
        Error::rejected("lb", "Permission denied"),
    );
    let r = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .run()
    .await
    .expect("run");
    let t = r.target(&ids[0]).expect("reported");
    assert_eq!(t.location, Location::KeptOut);
    assert!(matches!(
        &t.result,
        TargetResult::Failed { kept_out: true, restore_hint: Some(h), .. } if h.contains("t000")
    ));
    assert!(matches!(
        r.outcome,
        Outcome::Aborted {
            reason: AbortReason::Balancer { .. }
        }
    ));
}

// 3. A call that never returns: cancellation still puts drained targets
//    back at once, and without cancellation the call's time limit ends it.
#[tokio::test(start_paused = true)]
async fn cancel_puts_drained_targets_back_at_once_even_when_a_status_call_hangs() {
    let (inner, ids) = pool(3);
    inner
        .set_drain_profile(
            &ids[0],
            DrainProfile {
                initial: 2,
                duration: Duration::from_secs(60),
            },
        )
        .expect("set");
    let mut lb = Tampered::new(inner.clone());
    // The status read right before the drain answers; every poll after hangs.
    lb.hang = vec![(Operation::Status, 1)];
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.cancel();
    });
    let started = Instant::now();
    let r = Rollout::new(lb, ScriptedExecutor::new(), base().build().expect("config"))
        .with_cancellation(token)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    // Every put-back is verified by a status read; this balancer's reads
    // hang, so the report cannot say "back": it names the target and says
    // its state is unknown (it is in fact in service).
    let t = r.target(&ids[0]).expect("reported");
    assert!(
        matches!(
            &t.result,
            TargetResult::Failed {
                phase: Stage::Restored,
                kept_out: true,
                restore_hint: Some(_),
                ..
            }
        ),
        "{t:?}"
    );
    assert_eq!(t.location, Location::Unknown);
    let enabled_at = inner
        .calls()
        .iter()
        .find(|c| c.op == Operation::Enable && c.ok)
        .map(|c| c.at)
        .expect("put back");
    assert!(
        enabled_at - started <= Duration::from_secs(2),
        "put back {:?} after the start, cancel was at 2 s",
        enabled_at - started
    );
    assert_eq!(state(&inner, &ids[0]), Some(TargetState::InService));
}

#[tokio::test(start_paused = true)]
async fn cancel_during_a_hanging_drain_call_puts_the_target_back() {
    let (inner, ids) = pool(2);
    let mut lb = Tampered::new(inner.clone());
    lb.hang = vec![(Operation::Drain, 0)];
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.cancel();
    });
    let r = Rollout::new(lb, ScriptedExecutor::new(), base().build().expect("config"))
        .with_cancellation(token)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    // Whether the drain applied is unknown: the target is enabled anyway.
    assert_eq!(ids_of(&inner, Operation::Enable), vec![ids[0].clone()]);
    assert!(matches!(result(&r, &ids[0]), TargetResult::Restored { .. }));
    assert_eq!(result(&r, &ids[1]), &TargetResult::NotStarted);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_balancer_call_is_ended_by_its_time_limit() {
    let (inner, ids) = pool(2);
    let mut lb = Tampered::new(inner.clone());
    lb.hang = vec![(Operation::Status, 1)];
    let cfg = base()
        .call_timeout(Duration::from_secs(5))
        .build()
        .expect("config");
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(3600),
        Rollout::new(lb, ScriptedExecutor::new(), cfg).run(),
    )
    .await
    .expect("the run ends on its own")
    .expect("run");
    match &r.outcome {
        Outcome::Aborted {
            reason: AbortReason::Balancer { operation, message },
        } => {
            assert_eq!(operation, "status");
            assert!(message.contains("timed out"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    // The drained target could not be watched: it was put back unmaintained,
    // and, the balancer's reads hanging, the put-back could not be verified:
    // reported by name, its state unknown.
    assert_eq!(state(&inner, &ids[0]), Some(TargetState::InService));
    assert!(matches!(
        result(&r, &ids[0]),
        TargetResult::Failed {
            phase: Stage::Draining,
            kept_out: true,
            ..
        }
    ));
    assert_eq!(r.target(&ids[0]).expect("t0").location, Location::Unknown);
}

// 4. A target removed from the pool mid-run fails alone, as vanished.
#[tokio::test(start_paused = true)]
async fn a_target_removed_while_draining_vanishes_alone_and_the_rest_go_on() {
    let (lb, ids) = pool(4);
    lb.set_drain_profile(
        &ids[1],
        DrainProfile {
            initial: 3,
            duration: Duration::from_secs(10),
        },
    )
    .expect("set");
    let cfg = base().batch_size(Amount::Count(2)).build().expect("config");
    let remover = lb.clone();
    let gone = ids[1].clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        remover.remove_target(&gone).expect("remove");
    });
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg)
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert!(
        matches!(
            result(&r, &ids[1]),
            TargetResult::Vanished {
                phase: Stage::Draining,
                ..
            }
        ),
        "{:?}",
        result(&r, &ids[1])
    );
    for id in [&ids[0], &ids[2], &ids[3]] {
        assert_eq!(result(&r, id), &TargetResult::Done, "{id}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_target_removed_before_its_turn_vanishes_without_a_drain() {
    let (lb, ids) = pool(3);
    let exec = ScriptedExecutor::new();
    exec.set_duration_all(&ids, Duration::from_secs(5));
    let remover = lb.clone();
    let gone = ids[2].clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        remover.remove_target(&gone).expect("remove");
    });
    let r = Rollout::new(lb.clone(), exec, base().build().expect("config"))
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed);
    assert!(matches!(result(&r, &ids[2]), TargetResult::Vanished { .. }));
    assert!(!ids_of(&lb, Operation::Drain).contains(&ids[2]));
    assert_eq!(result(&r, &ids[1]), &TargetResult::Done);
}

// 5. A target someone takes out during preflight is not drained.
#[derive(Debug, Clone)]
struct MeddlingPreflight {
    lb: InMemoryBalancer,
    victim: TargetId,
    inner: ScriptedExecutor,
}

#[async_trait]
impl Executor for MeddlingPreflight {
    fn name(&self) -> String {
        "meddling".into()
    }
    async fn preflight(&self, targets: &[Target]) -> hygiene_core::Result<Vec<Preflight>> {
        // An operator puts the victim into maintenance while the executor
        // checks it.
        if targets.iter().any(|t| t.id == self.victim) {
            self.lb
                .set_status(&self.victim, TargetState::OutOfService, Health::Unknown)?;
        }
        self.inner.preflight(targets).await
    }
    async fn execute(&self, targets: &[Target]) -> hygiene_core::Result<Vec<ExecOutcome>> {
        self.inner.execute(targets).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_target_taken_out_during_preflight_is_skipped_and_never_enabled() {
    let (lb, ids) = pool(3);
    let exec = MeddlingPreflight {
        lb: lb.clone(),
        victim: ids[1].clone(),
        inner: ScriptedExecutor::new(),
    };
    let r = Rollout::new(lb.clone(), exec.clone(), base().build().expect("config"))
        .run()
        .await
        .expect("run");
    assert!(matches!(result(&r, &ids[1]), TargetResult::Skipped { .. }));
    assert!(!ids_of(&lb, Operation::Drain).contains(&ids[1]));
    assert!(!ids_of(&lb, Operation::Enable).contains(&ids[1]));
    assert!(exec.inner.records().iter().all(|rec| rec.id != ids[1]));
    assert_eq!(state(&lb, &ids[1]), Some(TargetState::OutOfService));
    assert_eq!(r.outcome, Outcome::Completed);
    assert_eq!(r.found_out, vec![ids[1].clone()], "listed as found out");
}

// 6. min_healthy as a percent follows the pool as it is now.
#[tokio::test(start_paused = true)]
async fn min_healthy_percent_is_recomputed_after_a_scale_out() {
    let (lb, ids) = pool(4);
    let exec = ScriptedExecutor::new();
    exec.set_duration_all(&ids, Duration::from_secs(1));
    // 75% of 4 = 3 must stay healthy: one target at a time. After the
    // first batch, four new targets join, still unhealthy: 75% of 8 = 6,
    // and only 4 are healthy, so nothing more may be taken out.
    let cfg = base()
        .batch_size(Amount::Count(2))
        .min_healthy(Amount::Percent(75))
        .capacity_timeout(Duration::from_secs(10))
        .build()
        .expect("config");
    let grower = lb.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for k in 0..4 {
            let id = TargetId::new(format!("new{k}")).expect("id");
            grower.add_target(Target::new(id.clone()));
            grower
                .set_status(&id, TargetState::InService, Health::Unhealthy)
                .expect("set");
        }
    });
    let r = Rollout::new(lb.clone(), exec, cfg)
        .run()
        .await
        .expect("run");
    assert_eq!(result(&r, &ids[0]), &TargetResult::Done);
    match &r.outcome {
        Outcome::Aborted {
            reason: AbortReason::Capacity {
                required, healthy, ..
            },
        } => {
            assert_eq!(*required, 6, "75% of the pool of 8 now");
            assert_eq!(*healthy, 4);
        }
        other => panic!("{other:?}: {r:#?}"),
    }
    assert_eq!(
        ids_of(&lb, Operation::Drain),
        vec![ids[0].clone()],
        "no drain after the scale-out"
    );
}

// 7. The canary is the first target actually maintained.
#[tokio::test(start_paused = true)]
async fn a_canary_whose_preflight_failed_is_no_canary() {
    let (lb, ids) = pool(7);
    let exec = ScriptedExecutor::new();
    exec.script(
        &ids[0],
        Script {
            not_ready: Some("agent offline".into()),
            ..Script::default()
        },
    );
    let cfg = base()
        .batch_size(Amount::Count(3))
        .max_failures(Amount::Count(1))
        .canary(true)
        .build()
        .expect("config");
    let rollout = Rollout::new(lb.clone(), exec, cfg);
    let mut events = rollout.subscribe();
    let r = rollout.run().await.expect("run");
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    let mut sizes = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::BatchStarted { targets, .. } = e.kind {
            sizes.push(targets.len());
        }
    }
    assert_eq!(
        sizes,
        vec![1, 1, 3, 2],
        "the second single target is the canary"
    );
}

// 9. Restore waits for fresh health and reports it.
#[tokio::test(start_paused = true)]
async fn restore_waits_for_fresh_health_and_reports_it() {
    let (lb, ids) = pool(3);
    let exec = ScriptedExecutor::new();
    for id in &ids[..2] {
        exec.script(
            id,
            Script {
                fail: Some("patch failed".into()),
                ..Script::default()
            },
        );
    }
    lb.set_health_after_enable(
        &ids[1],
        HealthScript {
            delay: Duration::from_secs(1),
            health: Health::Unhealthy,
        },
    )
    .expect("set");
    lb.set_health_after_enable(
        &ids[0],
        HealthScript {
            delay: Duration::from_secs(2),
            health: Health::Healthy,
        },
    )
    .expect("set");
    let cfg = base()
        .on_failure(OnFailure::Restore)
        .max_failures(Amount::Count(5))
        .health_timeout(Duration::from_secs(10))
        .build()
        .expect("config");
    let started = Instant::now();
    let r = Rollout::new(lb.clone(), exec, cfg)
        .run()
        .await
        .expect("run");
    match result(&r, &ids[0]) {
        TargetResult::Failed {
            put_back: Some(p),
            kept_out: false,
            ..
        } => assert!(p.healthy, "{p:?}"),
        other => panic!("{other:?}"),
    }
    match result(&r, &ids[1]) {
        TargetResult::Failed {
            put_back: Some(p),
            kept_out: false,
            ..
        } => {
            assert!(!p.healthy);
            assert!(p.detail.contains("Unhealthy"), "{}", p.detail);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_secs(12),
        "waited for health: {:?}",
        started.elapsed()
    );
    assert_eq!(result(&r, &ids[2]), &TargetResult::Done);
}

// Pacing: a window starts the next target as soon as one finishes.
#[tokio::test(start_paused = true)]
async fn a_window_starts_the_next_target_when_one_finishes() {
    let (lb, ids) = pool(4);
    let exec = ScriptedExecutor::new();
    for (id, secs) in ids.iter().zip([10, 1, 1, 1]) {
        exec.script(
            id,
            Script {
                duration: Duration::from_secs(secs),
                ..Script::default()
            },
        );
    }
    let run = |pacing| {
        let lb = lb.clone();
        let exec = exec.clone();
        async move {
            let cfg = base()
                .batch_size(Amount::Count(2))
                .pacing(pacing)
                .build()
                .expect("config");
            let t = Instant::now();
            let r = Rollout::new(lb, exec, cfg).run().await.expect("run");
            assert!(r.is_success(), "{r:#?}");
            t.elapsed()
        }
    };
    let window = run(Pacing::Window).await;
    let window_calls = lb.calls();
    let batches = run(Pacing::Batches).await;
    // Window: t000 runs 10 s while t001..t003 go through the other place.
    assert!(window < Duration::from_secs(11), "{window:?}");
    assert!(batches >= Duration::from_secs(11), "{batches:?}");
    // Counted from the balancer's own mutation calls: a target is out from
    // its first drain or disable to its enable. Never more than 2 at once,
    // and the window did keep 2 out at once (it moved on without t000).
    let mut out = std::collections::BTreeSet::new();
    let mut most = 0;
    for c in window_calls.iter().filter(|c| c.ok) {
        match c.op {
            Operation::Drain | Operation::Disable => out.extend(c.ids.iter().cloned()),
            Operation::Enable => c.ids.iter().for_each(|i| {
                out.remove(i);
            }),
            Operation::List | Operation::Status => {}
        }
        assert!(out.len() <= 2, "{} out at once: {out:?}", out.len());
        most = most.max(out.len());
    }
    assert_eq!(most, 2, "the window never had two targets out at once");
    assert!(out.is_empty(), "left out: {out:?}");
}

// Events: time, batch, several subscribers; the handle cancels and joins.
#[tokio::test(start_paused = true)]
async fn events_reach_every_subscriber_with_time_and_batch() {
    let (lb, _) = pool(3);
    let rollout = Rollout::new(
        lb,
        ScriptedExecutor::new(),
        base().batch_size(Amount::Count(2)).build().expect("config"),
    );
    let mut a = rollout.subscribe();
    let mut b = rollout.subscribe();
    let r = rollout.run().await.expect("run");
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    while let Ok(e) = a.try_recv() {
        ea.push(e);
    }
    while let Ok(e) = b.try_recv() {
        eb.push(e);
    }
    assert_eq!(ea, eb);
    assert!(matches!(
        ea.first().map(|e| &e.kind),
        Some(EventKind::Started { .. })
    ));
    assert!(matches!(
        ea.last().map(|e| &e.kind),
        Some(EventKind::Finished { .. })
    ));
    for e in &ea {
        assert!(e.at.parse::<jiff::Timestamp>().is_ok(), "{}", e.at);
        if let EventKind::Phase { .. } | EventKind::BatchStarted { .. } = e.kind {
            assert!(e.batch.is_some(), "{e:?}");
        }
    }
    assert!(ea.iter().any(|e| e.batch == Some(1)));
    assert!(!r.run_id.is_empty());
    assert!(r.started_at.parse::<jiff::Timestamp>().is_ok());
    assert_eq!(r.config.batch_size(), Amount::Count(2));
}

#[tokio::test(start_paused = true)]
async fn a_spawned_rollout_is_cancelled_and_joined_through_its_handle() {
    let (lb, ids) = pool(3);
    lb.set_drain_profile(
        &ids[0],
        DrainProfile {
            initial: 1,
            duration: Duration::from_secs(100),
        },
    )
    .expect("set");
    let handle = Rollout::new(
        lb.clone(),
        ScriptedExecutor::new(),
        base().build().expect("config"),
    )
    .spawn();
    let mut events = handle.subscribe();
    // Wait until the first target drains, then cancel.
    while let Some(e) = events.recv().await {
        if matches!(
            e.kind,
            EventKind::Phase {
                stage: Stage::Draining,
                ..
            }
        ) {
            break;
        }
    }
    handle.cancel();
    let r = handle.join().await.expect("run");
    assert_eq!(r.outcome, Outcome::Cancelled);
    // Put back without maintenance: it never shows as enabling.
    let mut stages = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::Phase { id, stage, .. } = e.kind {
            if id == ids[0] {
                stages.push(stage);
            }
        }
    }
    assert_eq!(stages, vec![Stage::Restored], "after draining: {stages:?}");
    assert!(matches!(result(&r, &ids[0]), TargetResult::Restored { .. }));
    assert_eq!(state(&lb, &ids[0]), Some(TargetState::InService));
}

// Events carry the words of a skip and of a failure.
#[tokio::test(start_paused = true)]
async fn phase_events_carry_the_reason() {
    let (lb, ids) = pool(3);
    lb.set_status(&ids[2], TargetState::OutOfService, Health::Unknown)
        .expect("set");
    let exec = ScriptedExecutor::new();
    exec.script(
        &ids[0],
        Script {
            fail: Some("patch exploded".into()),
            ..Script::default()
        },
    );
    let rollout = Rollout::new(
        lb,
        exec,
        base()
            .max_failures(Amount::Count(1))
            .build()
            .expect("config"),
    );
    let mut events = rollout.subscribe();
    rollout.run().await.expect("run");
    let mut details = std::collections::HashMap::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::Phase {
            id,
            stage,
            detail: Some(d),
        } = e.kind
        {
            details.insert((id, stage), d);
        }
    }
    assert!(
        details
            .get(&(ids[0].clone(), Stage::Failed))
            .is_some_and(|d| d.contains("patch exploded")),
        "{details:?}"
    );
    assert!(
        details
            .get(&(ids[2].clone(), Stage::Skipped))
            .is_some_and(|d| d.contains("OutOfService")),
        "{details:?}"
    );
}

// With min_healthy, the pool listing before a batch already skips a target
// someone took out, before its preflight.
#[tokio::test(start_paused = true)]
async fn a_target_out_when_its_batch_is_due_is_skipped_at_the_listing() {
    let (lb, ids) = pool(3);
    let exec = ScriptedExecutor::new();
    exec.set_duration_all(&ids, Duration::from_secs(2));
    let meddler = lb.clone();
    let victim = ids[1].clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        meddler
            .set_status(&victim, TargetState::OutOfService, Health::Unknown)
            .expect("set");
    });
    let r = Rollout::new(
        lb.clone(),
        exec.clone(),
        base()
            .min_healthy(Amount::Count(1))
            .build()
            .expect("config"),
    )
    .run()
    .await
    .expect("run");
    match result(&r, &ids[1]) {
        TargetResult::Skipped { reason } => {
            assert!(reason.contains("when its batch was due"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        exec.preflight_calls(),
        2,
        "no preflight for the skipped target"
    );
    assert_eq!(result(&r, &ids[2]), &TargetResult::Done);
    assert_eq!(r.outcome, Outcome::Completed);
}

// A window's place frees only after its target's warmup, whatever else
// happens meanwhile.
#[tokio::test(start_paused = true)]
async fn a_window_place_frees_after_the_warmup() {
    let (lb, ids) = pool(3);
    let exec = ScriptedExecutor::new();
    for (id, secs) in ids.iter().zip([1, 3, 1]) {
        exec.script(
            id,
            Script {
                duration: Duration::from_secs(secs),
                ..Script::default()
            },
        );
    }
    let started = Instant::now();
    let r = Rollout::new(
        lb.clone(),
        exec,
        base()
            .batch_size(Amount::Count(2))
            .pacing(Pacing::Window)
            .warmup(Duration::from_secs(5))
            .build()
            .expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert!(r.is_success(), "{r:#?}");
    // t000 is healthy at ~1 s and warms up until ~6 s; t001's maintenance
    // ends at ~3 s meanwhile. t002 takes t000's place only at ~6 s.
    let t2_drained = lb
        .calls()
        .iter()
        .find(|c| c.op == Operation::Drain && c.ids.contains(&ids[2]))
        .map(|c| c.at - started)
        .expect("t002 drained");
    assert!(t2_drained >= Duration::from_secs(6), "{t2_drained:?}");
}

// A drained target may still take sticky sessions (HAProxy `DRAIN` with
// persistence, NGINX `drain`): where the balancer can, it is disabled hard
// before its maintenance starts; where the disable fails, the maintenance
// goes ahead on the drain alone, with a note.
#[tokio::test(start_paused = true)]
async fn a_drained_target_is_disabled_before_its_maintenance() {
    let (lb, ids) = common::pool(2);
    let exec = hygiene_core::testing::ScriptedExecutor::new().observe(&lb);
    lb.pass_next(hygiene_core::testing::Operation::Disable);
    lb.fail_next(
        hygiene_core::testing::Operation::Disable,
        hygiene_core::Error::rejected("lb", "refused"),
    );
    let r = hygiene_core::Rollout::new(
        lb.clone(),
        exec.clone(),
        hygiene_core::RolloutConfig::builder()
            .poll_interval(Duration::from_millis(100))
            .build()
            .expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert!(r.is_success(), "{r:#?}");
    let at_start: Vec<_> = exec
        .records()
        .iter()
        .map(|x| (x.id.clone(), x.status_at_start.as_ref().map(|s| s.state)))
        .collect();
    assert_eq!(
        at_start,
        vec![
            (
                ids[0].clone(),
                Some(hygiene_core::TargetState::OutOfService)
            ),
            (ids[1].clone(), Some(hygiene_core::TargetState::Draining)),
        ]
    );
    let t1 = r.target(&ids[1]).expect("t001");
    assert!(
        t1.notes.iter().any(|n| n.contains("on the drain alone")),
        "{t1:?}"
    );
}
