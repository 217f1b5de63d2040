//! Gates through the driver, on paused tokio time: a gate that says no
//! holds the rollout (nothing is drained), its answers are events and
//! journal records, a gate that hangs counts as no after `call_timeout`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{all_in_service, ids_of, pool};
use hygiene_core::journal::{Journal, MemoryJournal, Record};
use hygiene_core::testing::{Operation, ScriptedExecutor};
use hygiene_core::{
    AbortReason, EventKind, Gate, GateCheck, GatePolicy, GateVerdict, GateWhen, Notification,
    Notifier, Outcome, Rollout, RolloutConfig,
};

/// A gate whose answer the test sets; it counts its asks.
#[derive(Debug, Clone, Default)]
struct Switch {
    go: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    asks: Arc<AtomicUsize>,
}

#[async_trait]
impl Gate for Switch {
    fn name(&self) -> String {
        "switch".into()
    }
    async fn check(&self, _at: &GateCheck) -> hygiene_core::Result<GateVerdict> {
        self.asks.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(if self.go.load(Ordering::SeqCst) {
            GateVerdict::Go
        } else {
            GateVerdict::Hold("error rate 5% > 1%".into())
        })
    }
}

fn cfg() -> RolloutConfig {
    RolloutConfig::builder()
        .poll_interval(Duration::from_millis(100))
        .call_timeout(Duration::from_secs(5))
        .build()
        .expect("config")
}

fn policy() -> GatePolicy {
    GatePolicy::new(Duration::from_secs(30), Duration::from_secs(600)).expect("policy")
}

#[tokio::test(start_paused = true)]
async fn a_gate_holds_the_rollout_until_it_says_go_and_every_answer_is_journaled() {
    let (lb, ids) = pool(2);
    let gate = Switch::default();
    let journal = MemoryJournal::new();
    let rollout = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg())
        .with_gate(gate.clone(), policy())
        .with_journal(journal.clone());
    let mut events = rollout.subscribe();
    let handle = tokio::spawn(rollout.run());
    // Five minutes of no: asked at 0 s, 30 s, …, nothing drained.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(
        ids_of(&lb, Operation::Drain).is_empty(),
        "drained while held"
    );
    let asks = gate.asks.load(Ordering::SeqCst);
    assert!((10..=12).contains(&asks), "asked {asks} times in 300 s");
    gate.go.store(true, Ordering::SeqCst);
    let report = handle.await.expect("task").expect("run");
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(ids_of(&lb, Operation::Drain), ids);
    assert!(all_in_service(&lb));

    let mut holding = 0;
    let mut checked = 0;
    while let Ok(e) = events.try_recv() {
        match e.kind {
            EventKind::GateHolding {
                gate, when, reason, ..
            } => {
                assert_eq!((gate.as_str(), when), ("switch", GateWhen::Before));
                assert!(reason.contains("error rate"));
                assert_eq!(e.batch, Some(0));
                holding += 1;
            }
            EventKind::GateChecked { .. } => checked += 1,
            _ => {}
        }
    }
    assert_eq!(holding, 1, "one hold event for the first batch");
    let records = journal.records().expect("records");
    let gate_records: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r, Record::Gate { .. }))
        .collect();
    assert_eq!(gate_records.len(), checked, "every answer journaled");
    assert!(matches!(
        gate_records[0],
        Record::Gate { go: false, batch: 0, when: GateWhen::Before, detail: Some(d), .. } if d.contains("error rate")
    ));
    assert!(gate_records
        .iter()
        .any(|r| matches!(r, Record::Gate { go: true, .. })));
}

#[tokio::test(start_paused = true)]
async fn a_gate_that_hangs_counts_as_no_and_the_timeout_aborts_with_nothing_out() {
    let (lb, _ids) = pool(3);
    let gate = Switch::default();
    gate.hang.store(true, Ordering::SeqCst);
    let journal = MemoryJournal::new();
    let report = Rollout::new(lb.clone(), ScriptedExecutor::new(), cfg())
        .with_gate(
            gate.clone(),
            GatePolicy::new(Duration::from_secs(10), Duration::from_secs(60)).expect("policy"),
        )
        .with_journal(journal.clone())
        .run()
        .await
        .expect("run");
    match &report.outcome {
        Outcome::Aborted {
            reason: AbortReason::Gate { gate, reason, .. },
        } => {
            assert_eq!(gate, "switch");
            assert!(reason.contains("could not be asked"), "{reason}");
            assert!(
                reason.contains("timed out") || reason.contains("timeout"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(ids_of(&lb, Operation::Drain).is_empty());
    assert!(all_in_service(&lb));
    assert!(journal.records().expect("records").iter().any(|r| matches!(
        r,
        Record::Gate {
            timed_out: true,
            go: false,
            ..
        }
    )));
    // The journal ends: a new run may start.
    assert!(matches!(
        journal.records().expect("records").last(),
        Some(Record::End { .. })
    ));
}

/// Records every notification; fails the first `fail_first` attempts.
#[derive(Debug, Clone, Default)]
struct Inbox {
    got: Arc<std::sync::Mutex<Vec<Notification>>>,
    attempts: Arc<AtomicUsize>,
    fail_first: usize,
    always_fail: bool,
}

#[async_trait]
impl Notifier for Inbox {
    fn name(&self) -> String {
        "inbox".into()
    }
    async fn notify(&self, n: &Notification) -> hygiene_core::Result<()> {
        let k = self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.always_fail || k < self.fail_first {
            return Err(hygiene_core::Error::unavailable("inbox", "503"));
        }
        self.got.lock().expect("lock").push(n.clone());
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn notifications_say_start_failure_hold_and_end_with_the_way_back_and_a_failing_notifier_changes_nothing(
) {
    let (lb, ids) = pool(3);
    let exec = ScriptedExecutor::new();
    exec.script(
        &ids[1],
        hygiene_core::testing::Script {
            fail: Some("patch failed: exit 1".into()),
            ..Default::default()
        },
    );
    let gate = Switch::default();
    let inbox = Inbox {
        fail_first: 2,
        ..Inbox::default()
    };
    let broken = Inbox {
        always_fail: true,
        ..Inbox::default()
    };
    let cfg = RolloutConfig::builder()
        .poll_interval(Duration::from_millis(100))
        .max_failures(hygiene_core::Amount::Count(1))
        .build()
        .expect("config");
    let rollout = Rollout::new(lb.clone(), exec, cfg)
        .with_gate(gate.clone(), policy())
        .with_notifier(broken.clone())
        .with_notifier(inbox.clone());
    let run = tokio::spawn(rollout.run());
    tokio::time::sleep(Duration::from_secs(45)).await;
    gate.go.store(true, Ordering::SeqCst);
    let report = run.await.expect("task").expect("run");
    // The broken notifier changed nothing: every target was handled.
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(ids_of(&lb, Operation::Drain), ids);
    assert!(broken.attempts.load(Ordering::SeqCst) > 4, "retried");

    let got = inbox.got.lock().expect("lock").clone();
    let kinds: Vec<&str> = got
        .iter()
        .map(|n| match n {
            Notification::Started { .. } => "started",
            Notification::TargetFailed { .. } => "failed",
            Notification::GateHeld { .. } => "held",
            Notification::Finished { .. } => "finished",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["started", "held", "failed", "finished"], "{got:#?}");
    let Notification::Finished {
        summary, kept_out, ..
    } = &got[3]
    else {
        unreachable!()
    };
    assert_eq!((summary.done, summary.failed, summary.kept_out), (2, 1, 1));
    assert_eq!(kept_out[0].id, ids[1]);
    let hint = kept_out[0].restore_hint.clone().expect("the way back");
    assert!(hint.contains(ids[1].as_str()), "{hint}");
    assert!(got[3].text().contains(&hint), "{}", got[3].text());
}
