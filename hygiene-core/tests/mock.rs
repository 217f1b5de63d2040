//! Exact call sequences the real parts cannot be made to produce on cue,
//! scripted with the `mock` feature's mockall mocks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hygiene_core::mock::{MockExecutor, MockLoadBalancer};
use hygiene_core::{
    Capabilities, Error, ExecOutcome, Health, ListedTarget, Preflight, Rollout, RolloutConfig,
    Target, TargetId, TargetResult, TargetState, TargetStatus,
};
use mockall::Sequence;

fn throttled(op: &str) -> Error {
    Error::Throttled {
        location: format!("mock {op}"),
        message: "Rate exceeded".into(),
        source: None,
    }
}

fn config() -> RolloutConfig {
    RolloutConfig::builder()
        .poll_interval(Duration::from_millis(100))
        .health_timeout(Duration::from_secs(5))
        .build()
        .expect("config")
}

/// One target whose state follows the calls made on it.
fn balancer(state: Arc<Mutex<TargetState>>) -> MockLoadBalancer {
    let mut lb = MockLoadBalancer::new();
    lb.expect_name().return_const("mock".to_owned());
    lb.expect_capabilities().returning(|| {
        Capabilities::none()
            .with_counts_connections(true)
            .with_graceful_drain(true)
            .with_health_checks(true)
    });
    lb.expect_default_poll_interval()
        .return_const(Duration::from_millis(100));
    lb.expect_enable_hint()
        .returning(|id| format!("enable {id}"));
    lb.expect_adopt().returning(|_| Ok(()));
    let st = Arc::clone(&state);
    lb.expect_list().returning(move || {
        Ok(vec![ListedTarget {
            target: Target::new(TargetId::new("web-1").expect("id")),
            status: TargetStatus::new(*st.lock().expect("state"), Health::Healthy, Some(0)),
        }])
    });
    let st = Arc::clone(&state);
    lb.expect_status().returning(move |ids| {
        Ok(ids
            .iter()
            .map(|_| TargetStatus::new(*st.lock().expect("state"), Health::Healthy, Some(0)))
            .collect())
    });
    lb
}

// A throttled drain is retried; a throttled maintenance (refused by the
// executor, so never run) is retried; the target is enabled once, after
// the one maintenance that ran.
#[tokio::test(start_paused = true)]
async fn throttled_calls_are_retried_in_order_and_the_maintenance_runs_once() {
    let state = Arc::new(Mutex::new(TargetState::InService));
    let mut lb = balancer(Arc::clone(&state));
    let mut seq = Sequence::new();
    lb.expect_drain()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Err(throttled("drain")));
    let st = Arc::clone(&state);
    lb.expect_drain()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| {
            *st.lock().expect("state") = TargetState::Draining;
            Ok(())
        });
    let st = Arc::clone(&state);
    lb.expect_enable()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| {
            *st.lock().expect("state") = TargetState::InService;
            Ok(())
        });
    lb.expect_disable().never();

    let mut exec = MockExecutor::new();
    exec.expect_name().return_const("mock executor".to_owned());
    exec.expect_preflight()
        .returning(|t| Ok(vec![Preflight::Ready; t.len()]));
    let mut eseq = Sequence::new();
    exec.expect_execute_tracked()
        .times(1)
        .in_sequence(&mut eseq)
        .returning(|_, _| Err(throttled("execute")));
    exec.expect_execute_tracked()
        .times(1)
        .in_sequence(&mut eseq)
        .returning(|t, _| {
            Ok(t.iter()
                .map(|t| ExecOutcome::success(t.id.clone(), Duration::from_secs(1)))
                .collect())
        });
    exec.expect_execute().never();

    let report = Rollout::new(lb, exec, config()).run().await.expect("run");
    assert!(report.is_success(), "{report:#?}");
    assert_eq!(report.targets[0].result, TargetResult::Done);
    assert_eq!(*state.lock().expect("state"), TargetState::InService);
}

// A maintenance call that fails in a way that is not a refusal (it may have
// started) is never sent again: the target is kept out, named.
#[tokio::test(start_paused = true)]
async fn a_maintenance_that_may_have_run_is_never_sent_twice() {
    let state = Arc::new(Mutex::new(TargetState::InService));
    let mut lb = balancer(Arc::clone(&state));
    let st = Arc::clone(&state);
    lb.expect_drain().times(1).returning(move |_| {
        *st.lock().expect("state") = TargetState::Draining;
        Ok(())
    });
    lb.expect_enable().never();
    lb.expect_disable().returning(|_| Ok(()));
    let mut exec = MockExecutor::new();
    exec.expect_name().return_const("mock executor".to_owned());
    exec.expect_preflight()
        .returning(|t| Ok(vec![Preflight::Ready; t.len()]));
    exec.expect_execute_tracked()
        .times(1)
        .returning(|_, _| Err(Error::unavailable("mock executor", "connection reset")));
    let report = Rollout::new(lb, exec, config()).run().await.expect("run");
    let t = &report.targets[0];
    assert!(t.is_kept_out(), "{t:?}");
    assert!(
        matches!(&t.result, TargetResult::Failed { reason, .. } if reason.contains("connection reset")),
        "{t:?}"
    );
}

/// An executor whose maintenance and recovery never end: the process dies
/// (its future is dropped) or its time limit ends them.
#[derive(Debug)]
struct Wedged;

#[async_trait::async_trait]
impl hygiene_core::Executor for Wedged {
    fn name(&self) -> String {
        "wedged".into()
    }
    async fn preflight(&self, targets: &[Target]) -> hygiene_core::Result<Vec<Preflight>> {
        Ok(vec![Preflight::Ready; targets.len()])
    }
    async fn execute(&self, _: &[Target]) -> hygiene_core::Result<Vec<ExecOutcome>> {
        std::future::pending().await
    }
    async fn execute_tracked(
        &self,
        targets: &[Target],
        sink: &hygiene_core::HandleSink,
    ) -> hygiene_core::Result<Vec<ExecOutcome>> {
        for t in targets {
            sink.started(
                &t.id,
                hygiene_core::ExecHandle(serde_json::json!({"pid": 4242})),
            );
        }
        std::future::pending().await
    }
    async fn recover(
        &self,
        _: &Target,
        _: &hygiene_core::ExecHandle,
    ) -> hygiene_core::Result<hygiene_core::Recovered> {
        std::future::pending().await
    }
}

/// A maintenance a dead run started, whose recovery hangs (the executor
/// never answers): waited for once, within `execute_timeout` in all — not
/// once per retry — and then kept out with its handle, the journal left
/// open for a later resume or restore.
#[tokio::test(start_paused = true)]
async fn a_wedged_recovery_waits_one_limit_and_keeps_the_target_out() {
    use hygiene_core::journal::{Journal, MemoryJournal, Record};
    use hygiene_core::testing::InMemoryBalancer;

    let limit = Duration::from_secs(600);
    let cfg = || {
        RolloutConfig::builder()
            .poll_interval(Duration::from_millis(100))
            .execute_timeout(limit)
            .build()
            .expect("config")
    };
    let lb = InMemoryBalancer::with_targets(["web-1", "web-2"]).expect("lb");
    let journal = MemoryJournal::new();
    // The first run dies (its future dropped) while the maintenance runs.
    let run = Rollout::new(lb.clone(), Wedged, cfg())
        .with_journal(journal.clone())
        .run();
    assert!(tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .is_err());
    assert!(journal
        .records()
        .expect("records")
        .iter()
        .any(|r| matches!(r, Record::Started { .. })));
    let t = tokio::time::Instant::now();
    let report = Rollout::new(lb.clone(), Wedged, cfg())
        .with_journal(journal.clone())
        .resume()
        .await
        .expect("resume");
    let took = t.elapsed();
    assert!(
        took >= limit && took < limit + Duration::from_secs(60),
        "a wedged recovery took {took:?} with execute_timeout = {limit:?}"
    );
    let r = report
        .targets
        .iter()
        .find(|r| r.id.as_str() == "web-1")
        .expect("web-1");
    match &r.result {
        TargetResult::Failed {
            kept_out: true,
            reason,
            ..
        } => assert!(reason.contains("may still be running"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        !journal
            .records()
            .expect("records")
            .iter()
            .any(|r| matches!(r, Record::End { .. })),
        "the journal stays open while the maintenance may run"
    );
}

/// A dead run's maintenance (started by [`Wedged`]) recovered by a
/// scripted executor: returns the resumed run's report and how many times
/// `recover` was called.
async fn resume_with_recoveries(
    answers: Vec<hygiene_core::Result<hygiene_core::Recovered>>,
) -> (
    hygiene_core::Report,
    usize,
    hygiene_core::testing::InMemoryBalancer,
) {
    use hygiene_core::journal::MemoryJournal;
    use hygiene_core::testing::InMemoryBalancer;

    let cfg = || {
        RolloutConfig::builder()
            .poll_interval(Duration::from_millis(100))
            .health_timeout(Duration::from_secs(5))
            .execute_timeout(Duration::from_secs(600))
            .build()
            .expect("config")
    };
    let lb = InMemoryBalancer::with_targets(["web-1"]).expect("lb");
    let journal = MemoryJournal::new();
    let run = Rollout::new(lb.clone(), Wedged, cfg())
        .with_journal(journal.clone())
        .run();
    assert!(tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .is_err());
    let answers = Arc::new(Mutex::new(answers));
    let calls = Arc::new(Mutex::new(0usize));
    let mut exec = MockExecutor::new();
    exec.expect_name().return_const("wedged".to_owned());
    exec.expect_preflight()
        .returning(|t| Ok(vec![Preflight::Ready; t.len()]));
    let (a, c) = (Arc::clone(&answers), Arc::clone(&calls));
    exec.expect_recover().returning(move |_, _| {
        *c.lock().expect("calls") += 1;
        let mut a = a.lock().expect("answers");
        if a.is_empty() {
            Err(Error::unavailable("mock executor", "no more answers"))
        } else {
            a.remove(0)
        }
    });
    let report = Rollout::new(lb.clone(), exec, cfg())
        .with_journal(journal)
        .resume()
        .await
        .expect("resume");
    let n = *calls.lock().expect("calls");
    (report, n, lb)
}

/// A recovery read that fails for a moment (throttled) is asked again, and
/// the maintenance's outcome it then gets is the target's.
#[tokio::test(start_paused = true)]
async fn a_recovery_throttled_once_is_asked_again() {
    let id = TargetId::new("web-1").expect("id");
    let (report, calls, lb) = resume_with_recoveries(vec![
        Err(throttled("recover")),
        Ok(hygiene_core::Recovered::Finished(ExecOutcome::success(
            id.clone(),
            Duration::from_secs(3),
        ))),
    ])
    .await;
    assert_eq!(calls, 2, "asked again after the throttled read");
    assert!(report.is_success(), "{report:#?}");
    assert_eq!(
        lb.status_of(&id).map(|s| s.state),
        Some(TargetState::InService)
    );
}

/// A recovery refused for good (permission denied) is not asked again:
/// the target stays out, named, with its handle kept for a later try.
#[tokio::test(start_paused = true)]
async fn a_recovery_refused_for_good_is_not_retried_and_keeps_the_target_out() {
    let id = TargetId::new("web-1").expect("id");
    let (report, calls, lb) = resume_with_recoveries(vec![
        Err(Error::PermissionDenied {
            location: "mock executor".into(),
            message: "not allowed to read the command".into(),
            source: None,
        }),
        Ok(hygiene_core::Recovered::Finished(ExecOutcome::success(
            id.clone(),
            Duration::from_secs(3),
        ))),
    ])
    .await;
    assert_eq!(calls, 1, "a permission error is not retried");
    let t = report.target(&id).expect("web-1");
    assert!(t.is_kept_out(), "{t:?}");
    assert_ne!(
        lb.status_of(&id).map(|s| s.state),
        Some(TargetState::InService)
    );
}
