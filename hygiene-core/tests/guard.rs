//! The guard while maintenance runs: a balancer that puts a target back in
//! rotation on its own (a reload forgets runtime state) gets it taken out
//! again within one poll interval, and the report says so.

mod common;

use std::time::Duration;

use common::{ids_of, pool};
use hygiene_core::testing::{Operation, ScriptedExecutor};
use hygiene_core::{EventKind, Health, Rollout, RolloutConfig, TargetResult, TargetState};

#[tokio::test(start_paused = true)]
async fn a_target_put_back_during_its_maintenance_is_drained_again_at_once() {
    let (lb, ids) = pool(2);
    let exec = ScriptedExecutor::new().observe(&lb);
    exec.set_duration_all(&ids, Duration::from_secs(10));
    let reloader = lb.clone();
    let victim = ids[0].clone();
    tokio::spawn(async move {
        // 3 s into t000's maintenance, a "reload" puts it back.
        tokio::time::sleep(Duration::from_millis(3050)).await;
        reloader
            .set_status(&victim, TargetState::InService, Health::Healthy)
            .expect("set");
    });
    let poll = Duration::from_millis(200);
    let rollout = Rollout::new(
        lb.clone(),
        exec,
        RolloutConfig::builder()
            .poll_interval(poll)
            .build()
            .expect("config"),
    );
    let mut events = rollout.subscribe();
    let r = rollout.run().await.expect("run");
    assert!(r.is_success(), "{r:#?}");
    let t = r.target(&ids[0]).expect("reported");
    assert_eq!(t.result, TargetResult::Done);
    assert_eq!(t.drain_lost.len(), 1, "{t:#?}");
    let lost = t.drain_lost[0];
    assert!(
        lost.seen_in_service - Duration::from_millis(3050) <= poll,
        "seen {:?} after the reload",
        lost.seen_in_service - Duration::from_millis(3050)
    );
    let at_most = lost.in_service_at_most().expect("drained again");
    assert!(at_most <= 2 * poll, "in service for up to {at_most:?}");
    // Drained once, disabled (sealed) before its maintenance, disabled
    // again when the reload put it back (out hard, as it was), and the
    // event was published.
    let count = |op| ids_of(&lb, op).iter().filter(|id| **id == ids[0]).count();
    assert_eq!(count(Operation::Drain), 1);
    assert_eq!(count(Operation::Disable), 2);
    let mut seen = false;
    while let Ok(e) = events.try_recv() {
        seen |= matches!(e.kind, EventKind::DrainLost { ref id, .. } if *id == ids[0]);
    }
    assert!(seen, "a DrainLost event");
    assert!(r.target(&ids[1]).expect("t001").drain_lost.is_empty());
}

// A node restarted (or reloaded) while its target drains has it back in
// rotation: seen draining, then in service, it is drained again at once —
// never maintained on the strength of the other node's empty count.
#[tokio::test(start_paused = true)]
async fn a_target_put_back_while_it_drains_is_drained_again() {
    let (lb, ids) = pool(2);
    lb.set_drain_profile(
        &ids[0],
        hygiene_core::testing::DrainProfile {
            initial: 3,
            duration: Duration::from_secs(4),
        },
    )
    .expect("profile");
    let exec = ScriptedExecutor::new().observe(&lb);
    let reloader = lb.clone();
    let victim = ids[0].clone();
    tokio::spawn(async move {
        // 1 s into t000's drain, a restarted node has it back.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        reloader
            .set_status(&victim, TargetState::InService, Health::Healthy)
            .expect("set");
    });
    let r = Rollout::new(
        lb.clone(),
        exec.clone(),
        RolloutConfig::builder()
            .poll_interval(Duration::from_millis(200))
            .build()
            .expect("config"),
    )
    .run()
    .await
    .expect("run");
    assert!(r.is_success(), "{r:#?}");
    let t = r.target(&ids[0]).expect("t000");
    assert_eq!(t.drain_lost.len(), 1, "{t:#?}");
    let count = |op| ids_of(&lb, op).iter().filter(|id| **id == ids[0]).count();
    assert_eq!(count(Operation::Drain), 2, "drained again");
    let started = exec.records();
    let at = started
        .iter()
        .find(|x| x.id == ids[0])
        .and_then(|x| x.status_at_start.clone())
        .expect("t000 maintained");
    assert_ne!(
        at.state,
        TargetState::InService,
        "maintained while in service"
    );
}
