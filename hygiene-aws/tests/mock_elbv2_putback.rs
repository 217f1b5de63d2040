//! Putting back a target whose deregistration has not ended (a cancel
//! during its drain, the undo of a failed drain): ELBv2 shows `draining`,
//! which moto never does, so `aws-smithy-mocks` plays ELBv2.
//!
//! The registration must really happen — the engine reads status once
//! after such a put-back (or not at all), so `enable` waits (bounded) for
//! `unused` and registers; and a status read while still draining says
//! `Draining`, never "in service".

mod fake;

use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::{
    TargetHealthReasonEnum as Reason, TargetHealthStateEnum as State,
};
use fake::{client, id, Fake, TG};
use hygiene_aws::Elbv2Balancer;
use hygiene_core::testing::ScriptedExecutor;
use hygiene_core::{
    Amount, CancellationToken, Health, LoadBalancer, Rollout, RolloutConfig, TargetResult,
    TargetState,
};

fn balancer_waiting(
    fake: &std::sync::Arc<std::sync::Mutex<Fake>>,
    wait: Duration,
) -> Elbv2Balancer {
    Elbv2Balancer::builder()
        .with_client(client(fake))
        .with_target_group(TG)
        .with_poll_interval(Duration::from_secs(5))
        .with_enable_wait(wait)
        .build()
        .expect("builds")
}

fn config() -> RolloutConfig {
    RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(0))
        .poll_interval(Duration::from_secs(5))
        .build()
        .expect("config")
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_the_drain_registers_the_target_again() {
    let fake = Fake::new(&["i-0a"]);
    // Draining for drain's own check, the engine's quick looks, enable's
    // look and two of its polls; then unused.
    fake.lock().expect("fake").draining_polls = 8;
    let lb = balancer_waiting(&fake, Duration::from_secs(60));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.cancel();
    });
    let exec = ScriptedExecutor::new();
    let report = Rollout::new(lb.clone(), exec.clone(), config())
        .with_cancellation(cancel)
        .run()
        .await
        .expect("runs");
    assert!(
        exec.records().is_empty(),
        "cancelled before its maintenance"
    );
    assert!(
        matches!(report.targets[0].result, TargetResult::Restored { .. }),
        "{}",
        report.to_json_pretty()
    );
    {
        let f = fake.lock().expect("fake");
        assert_eq!(
            f.registered,
            vec![("i-0a".to_owned(), Some(8080))],
            "registered again, with its port: {}",
            report.to_json_pretty()
        );
        assert_eq!(
            f.registered_while_draining, 0,
            "never registered while draining (it would come back on a stale healthy)"
        );
        assert_ne!(
            f.targets["i-0a"].current.0,
            State::Unused,
            "back in the group"
        );
    }
    // One status read after the put-back shows it in service.
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert_eq!(st.state, TargetState::InService, "{st:?}");
}

#[tokio::test(start_paused = true)]
async fn the_undo_of_a_failed_drain_registers_the_target_again() {
    let fake = Fake::new(&["i-0a"]);
    {
        let mut f = fake.lock().expect("fake");
        f.draining_polls = 5;
        // DeregisterTargets applies, then is refused: the engine reads the
        // target back (draining) and undoes the drain.
        f.dereg_error = Some("AccessDenied");
    }
    let lb = balancer_waiting(&fake, Duration::from_secs(60));
    let exec = ScriptedExecutor::new();
    let report = Rollout::new(lb.clone(), exec.clone(), config())
        .run()
        .await
        .expect("runs");
    assert!(
        exec.records().is_empty(),
        "no maintenance after a failed drain"
    );
    {
        let f = fake.lock().expect("fake");
        assert_eq!(f.deregistered, vec![("i-0a".to_owned(), Some(8080))]);
        assert_eq!(
            f.registered,
            vec![("i-0a".to_owned(), Some(8080))],
            "the undo registered it again: {}",
            report.to_json_pretty()
        );
        assert_eq!(f.registered_while_draining, 0);
    }
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert_eq!(st.state, TargetState::InService, "{st:?}");
}

#[tokio::test(start_paused = true)]
async fn enable_waits_for_the_end_of_the_drain_within_its_bound() {
    let fake = Fake::new(&["i-0a"]);
    // Draining for drain's check, enable's look and two of its polls:
    // unused at the third poll (15 s at 5 s a poll).
    fake.lock().expect("fake").draining_polls = 5;
    let lb = balancer_waiting(&fake, Duration::from_secs(30));
    lb.drain(&[id("i-0a")]).await.expect("drain");
    let started = tokio::time::Instant::now();
    lb.enable(&[id("i-0a")]).await.expect("enable");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(15) && took <= Duration::from_secs(25),
        "waited {took:?}"
    );
    let f = fake.lock().expect("fake");
    assert_eq!(f.registered, vec![("i-0a".to_owned(), Some(8080))]);
    assert_eq!(f.registered_while_draining, 0);
}

#[tokio::test(start_paused = true)]
async fn past_the_wait_status_says_draining_then_registers_once_unused() {
    let fake = Fake::new(&["i-0a"]);
    fake.lock().expect("fake").draining_polls = 1000;
    let wait = Duration::from_secs(20);
    let lb = balancer_waiting(&fake, wait);
    lb.drain(&[id("i-0a")]).await.expect("drain");
    let started = tokio::time::Instant::now();
    lb.enable(&[id("i-0a")]).await.expect("enable");
    let took = started.elapsed();
    assert!(
        took >= wait && took <= wait + Duration::from_secs(1),
        "waited {took:?}"
    );
    assert!(fake.lock().expect("fake").registered.is_empty());
    // The one status read after the put-back tells the truth.
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert_eq!(
        (st.state, st.health),
        (TargetState::Draining, Health::Unknown),
        "not in service while deregistered"
    );
    assert!(
        st.reason
            .as_deref()
            .is_some_and(|r| r.contains("registered again once")),
        "{st:?}"
    );
    // The deregistration ends: the next status registers it.
    {
        let mut f = fake.lock().expect("fake");
        let t = f.targets.get_mut("i-0a").expect("i-0a");
        t.upcoming.clear();
        t.upcoming
            .push_back((State::Unused, Some(Reason::NotRegistered)));
    }
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert_eq!(
        (st.state, st.health),
        (TargetState::InService, Health::Unknown)
    );
    let f = fake.lock().expect("fake");
    assert_eq!(f.registered, vec![("i-0a".to_owned(), Some(8080))]);
    assert_eq!(f.registered_while_draining, 0);
}

#[tokio::test(start_paused = true)]
async fn a_zero_wait_leaves_the_registration_to_status() {
    let fake = Fake::new(&["i-0a"]);
    fake.lock().expect("fake").draining_polls = 3;
    let lb = balancer_waiting(&fake, Duration::ZERO);
    lb.drain(&[id("i-0a")]).await.expect("drain");
    let started = tokio::time::Instant::now();
    lb.enable(&[id("i-0a")]).await.expect("enable");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(fake.lock().expect("fake").registered.is_empty());
    let st = lb.status(&[id("i-0a")]).await.expect("status")[0].clone();
    assert_eq!(st.state, TargetState::InService, "unused now: registered");
    assert_eq!(fake.lock().expect("fake").registered.len(), 1);
}
