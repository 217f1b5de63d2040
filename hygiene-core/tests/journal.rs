//! Crash safety: the journal, a run killed at every record boundary and
//! resumed or restored, and the start-up guard.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ids_of, pool, Tampered};
use hygiene_core::journal::{Journal, MemoryJournal, Op, Record};
use hygiene_core::testing::{InMemoryBalancer, Operation, Script, ScriptedExecutor};
use hygiene_core::{
    Amount, Error, Location, OnInterrupted, Outcome, Report, Rollout, RolloutConfig, TargetId,
    TargetResult, TargetState,
};

fn config(batch: usize) -> RolloutConfig {
    RolloutConfig::builder()
        .batch_size(Amount::Count(batch))
        .max_failures(Amount::Count(1))
        .poll_interval(Duration::from_millis(100))
        .health_timeout(Duration::from_secs(5))
        .build()
        .expect("config")
}

/// A journal whose process dies (the run's task panics, so nothing after
/// that point runs) when it is about to write its `at`-th record: records
/// before it are durable, a call whose intent was the last one may or may
/// not have been made.
#[derive(Debug, Clone)]
struct Dying {
    inner: MemoryJournal,
    at: usize,
    count: Arc<Mutex<usize>>,
}

impl Journal for Dying {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn append(&self, record: &Record) -> hygiene_core::Result<()> {
        let mut n = self.count.lock().expect("lock");
        *n += 1;
        assert!(*n < self.at, "the process dies before record {}", self.at);
        self.inner.append(record)
    }
    fn records(&self) -> hygiene_core::Result<Vec<Record>> {
        self.inner.records()
    }
}

fn executor(ids: &[TargetId], fail: Option<&TargetId>) -> ScriptedExecutor {
    let exec = ScriptedExecutor::new();
    exec.set_duration_all(ids, Duration::from_secs(2));
    if let Some(f) = fail {
        exec.script(
            f,
            Script {
                duration: Duration::from_secs(2),
                fail: Some("patch failed".into()),
                ..Script::default()
            },
        );
    }
    exec
}

/// Runs until the `at`-th journal record, then drops the run (the
/// process dies); returns the journal left behind, or None when the run
/// finished first.
async fn run_and_kill(
    lb: &InMemoryBalancer,
    ids: &[TargetId],
    fail: Option<&TargetId>,
    batch: usize,
    at: usize,
) -> (MemoryJournal, bool) {
    let journal = Dying {
        inner: MemoryJournal::new(),
        at,
        count: Arc::default(),
    };
    let run = Rollout::new(lb.clone(), executor(ids, fail), config(batch))
        .with_journal(journal.clone())
        .run();
    let killed = match tokio::spawn(run).await {
        Ok(r) => {
            r.expect("run");
            false
        }
        Err(e) => {
            assert!(e.is_panic(), "{e}");
            true
        }
    };
    (journal.inner, killed)
}

fn check_every_target_back_or_named(lb: &InMemoryBalancer, r: &Report) {
    for t in &r.targets {
        let st = lb.status_of(&t.id).map(|s| s.state);
        if t.is_kept_out() {
            assert_ne!(
                st,
                Some(TargetState::InService),
                "{} reported out: {t:?}",
                t.id
            );
            assert!(
                matches!(
                    &t.result,
                    TargetResult::Failed {
                        restore_hint: Some(_),
                        ..
                    }
                ),
                "{}: a kept-out target comes with the way back: {t:?}",
                t.id
            );
        } else {
            assert_eq!(
                st,
                Some(TargetState::InService),
                "{} lost: {t:?}\\n{r:#?}",
                t.id
            );
        }
    }
}

// Invariant 7: killed at every record boundary, then resumed, every target
// ends in service with fresh health, or kept out and named.
#[tokio::test(start_paused = true)]
async fn killed_at_every_record_and_resumed_nothing_is_lost() {
    for (batch, fail) in [(1, None), (2, None), (1, Some(1usize)), (2, Some(2))] {
        let mut at = 1;
        loop {
            let (lb, ids) = pool(4);
            let failing = fail.map(|k| ids[k].clone());
            let (journal, killed) = run_and_kill(&lb, &ids, failing.as_ref(), batch, at).await;
            if !killed {
                break; // the run finished before its `at`-th record
            }
            if journal.records().expect("records").is_empty() {
                // Died before its header: it changed nothing, and a new run
                // may start.
                assert_eq!(common::mutations(&lb), 0);
                at += 1;
                continue;
            }
            // A new run refuses to start over the unfinished journal.
            let calls = lb.call_count();
            let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), config(batch))
                .with_journal(journal.clone())
                .run()
                .await
                .expect_err("a new run over an unfinished journal");
            assert!(
                matches!(&e, Error::Journal { message, .. } if message.contains("resume")),
                "{e}"
            );
            assert!(
                lb.calls()[calls..]
                    .iter()
                    .all(|c| matches!(c.op, Operation::List | Operation::Status)),
                "the refused run changed something"
            );
            let r = Rollout::new(lb.clone(), executor(&ids, failing.as_ref()), config(batch))
                .with_journal(journal.clone())
                .resume()
                .await
                .unwrap_or_else(|e| panic!("resume after record {at}: {e}"));
            check_every_target_back_or_named(&lb, &r);
            // Resumed to the end: no target left mid-way or not started
            // unless the failure budget stopped the run.
            if r.outcome == Outcome::Completed {
                assert!(
                    r.targets
                        .iter()
                        .all(|t| t.result != TargetResult::NotStarted),
                    "{r:#?}"
                );
            }
            assert!(matches!(
                journal.records().expect("records").last(),
                Some(Record::End { .. })
            ));
            at += 1;
        }
        assert!(at > 10, "the runs wrote too few records: {at}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_maintenance_interrupted_is_kept_out_or_run_again_as_configured() {
    for policy in [OnInterrupted::Fail, OnInterrupted::Rerun] {
        let (lb, ids) = pool(2);
        let exec = executor(&ids, None);
        let journal = MemoryJournal::new();
        // The process dies 1 s into t000's maintenance (a dropped future).
        let run = Rollout::new(lb.clone(), exec.clone(), config(1))
            .with_journal(journal.clone())
            .run();
        assert!(tokio::time::timeout(Duration::from_secs(1), run)
            .await
            .is_err());
        assert_eq!(
            lb.status_of(&ids[0]).map(|s| s.state),
            Some(TargetState::OutOfService),
            "drained, then sealed before its maintenance"
        );
        let records = journal.records().expect("records");
        assert!(records.iter().any(|r| matches!(
            r,
            Record::Intent {
                op: Op::Execute,
                ..
            }
        )));
        let cfg = RolloutConfig::builder()
            .poll_interval(Duration::from_millis(100))
            .on_interrupted(policy)
            .max_failures(Amount::Count(1))
            .build()
            .expect("config");
        let r = Rollout::new(lb.clone(), exec.clone(), cfg)
            .with_journal(journal.clone())
            .resume()
            .await
            .expect("resume");
        let t0 = r.target(&ids[0]).expect("t000");
        match policy {
            OnInterrupted::Fail => {
                assert_eq!(t0.location, Location::KeptOut, "{r:#?}");
                assert!(
                    matches!(&t0.result, TargetResult::Failed { reason, restore_hint: Some(_), .. } if reason.contains("interrupted")),
                    "{t0:?}"
                );
            }
            _ => {
                assert_eq!(t0.result, TargetResult::Done, "{r:#?}");
                let runs = exec.records().iter().filter(|x| x.id == ids[0]).count();
                assert_eq!(
                    runs, 1,
                    "run again once after the crash (the first never ended)"
                );
            }
        }
        assert_eq!(r.target(&ids[1]).expect("t001").result, TargetResult::Done);
        check_every_target_back_or_named(&lb, &r);
    }
}

#[tokio::test(start_paused = true)]
async fn restore_puts_back_everything_the_dead_run_took_out() {
    let (lb, ids) = pool(4);
    let journal = MemoryJournal::new();
    let run = Rollout::new(lb.clone(), executor(&ids, Some(&ids[0])), config(2))
        .with_journal(journal.clone())
        .run();
    // Dies during the second batch's maintenance; t000's failed patch kept
    // it out.
    let _ = tokio::time::timeout(Duration::from_millis(2500), run).await;
    let out: Vec<TargetId> = lb
        .snapshot()
        .into_iter()
        .filter(|(_, s)| s.state != TargetState::InService)
        .map(|(id, _)| id)
        .collect();
    assert!(!out.is_empty(), "the dead run left targets out");
    let r = Rollout::new(lb.clone(), ScriptedExecutor::new(), config(2))
        .with_journal(journal.clone())
        .restore()
        .await
        .expect("restore");
    for (id, s) in lb.snapshot() {
        assert_eq!(s.state, TargetState::InService, "{id} still out: {r:#?}");
    }
    for id in &out {
        let t = r.target(id).expect("reported");
        assert!(t.notes.iter().any(|n| n.contains("restore")), "{t:?}");
    }
    assert!(ids_of(&lb, Operation::Enable).len() >= out.len());
    // The journal is finished: a new run may start.
    let again = Rollout::new(lb.clone(), ScriptedExecutor::new(), config(2))
        .with_journal(journal)
        .run()
        .await
        .expect("a new run after the restore");
    assert!(again.is_success(), "{again:#?}");
}

// A balancer that does not list what is out (ELBv2 lists registered
// targets only): restore asks for the status of each target the dead run
// may have taken out, and puts it back.
#[tokio::test(start_paused = true)]
async fn restore_finds_targets_the_listing_does_not_show_and_puts_them_back() {
    let (lb, ids) = pool(4);
    let mut hiding = Tampered::new(lb.clone());
    hiding.list_in_service_only = true;
    let journal = MemoryJournal::new();
    let run = Rollout::new(hiding.clone(), executor(&ids, None), config(2))
        .with_journal(journal.clone())
        .run();
    // Dies during the first batch's maintenance.
    let _ = tokio::time::timeout(Duration::from_millis(1500), run).await;
    let out: Vec<TargetId> = lb
        .snapshot()
        .into_iter()
        .filter(|(_, s)| s.state != TargetState::InService)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(out.len(), 2, "the dead run left its batch out");
    let r = Rollout::new(hiding, ScriptedExecutor::new(), config(2))
        .with_journal(journal)
        .restore()
        .await
        .expect("restore");
    for (id, s) in lb.snapshot() {
        assert_eq!(s.state, TargetState::InService, "{id} still out: {r:#?}");
    }
    for id in &out {
        let t = r.target(id).expect("reported");
        assert!(!t.is_kept_out(), "{t:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_found_on_resume_is_handled_and_reported() {
    let (lb, ids) = pool(2);
    let journal = MemoryJournal::new();
    let run = Rollout::new(lb.clone(), executor(&ids, None), config(1))
        .with_journal(journal.clone())
        .run();
    // Dies 1 s into t000's maintenance; then a reload puts it back.
    let _ = tokio::time::timeout(Duration::from_secs(1), run).await;
    lb.set_status(
        &ids[0],
        TargetState::InService,
        hygiene_core::Health::Healthy,
    )
    .expect("set");
    let r = Rollout::new(lb.clone(), executor(&ids, None), config(1))
        .with_journal(journal)
        .resume()
        .await
        .expect("resume");
    let t0 = r.target(&ids[0]).expect("t000");
    assert!(t0.notes.iter().any(|n| n.contains("reload")), "{t0:?}");
    // Its maintenance outcome is unknown (fail): taken out again, named.
    assert_eq!(t0.location, Location::KeptOut, "{r:#?}");
    assert_ne!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::InService)
    );
    check_every_target_back_or_named(&lb, &r);
}

#[tokio::test(start_paused = true)]
async fn a_journal_that_cannot_be_written_stops_drains_not_put_backs() {
    let (inner, ids) = pool(2);
    let lb = Tampered::new(inner.clone());
    let journal = MemoryJournal::new();
    let j = journal.clone();
    let probe = inner.clone();
    let victim = ids[0].clone();
    tokio::spawn(async move {
        // The disk fills up while t000 is maintained.
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let out = probe.status_of(&victim).map(|s| s.state);
            if out.is_some_and(|s| s != TargetState::InService) {
                j.set_failing(true);
                break;
            }
        }
    });
    let r = Rollout::new(lb, executor(&ids, None), config(1))
        .with_journal(journal)
        .run()
        .await
        .expect("run");
    // t000 still goes back (an enable needs no journal to be safe); t001
    // is never drained without its intent on record.
    assert_eq!(
        inner.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::InService)
    );
    assert!(
        !ids_of(&inner, Operation::Drain).contains(&ids[1]),
        "{r:#?}"
    );
    assert!(
        matches!(r.outcome, Outcome::Aborted { .. }),
        "{:?}",
        r.outcome
    );
}

/// A journal that cannot record a maintenance's intent (and writes
/// everything else).
#[derive(Debug, Clone)]
struct NoExecuteIntent(MemoryJournal);

impl Journal for NoExecuteIntent {
    fn location(&self) -> String {
        self.0.location()
    }
    fn append(&self, record: &Record) -> hygiene_core::Result<()> {
        if matches!(
            record,
            Record::Intent {
                op: Op::Execute,
                ..
            }
        ) {
            return Err(Error::journal("memory journal", "disk full"));
        }
        self.0.append(record)
    }
    fn records(&self) -> hygiene_core::Result<Vec<Record>> {
        self.0.records()
    }
}

// A maintenance whose intent cannot be recorded is not started: the
// target, drained, fails with the journal's error and goes back.
#[tokio::test(start_paused = true)]
async fn a_maintenance_whose_intent_cannot_be_recorded_is_not_started() {
    let (lb, ids) = pool(1);
    let exec = executor(&ids, None);
    let journal = MemoryJournal::new();
    let r = tokio::time::timeout(
        Duration::from_secs(3600),
        Rollout::new(lb.clone(), exec.clone(), config(1))
            .with_journal(NoExecuteIntent(journal.clone()))
            .run(),
    )
    .await
    .expect("the run ends")
    .expect("run");
    assert!(exec.records().is_empty(), "no maintenance started");
    let t = r.target(&ids[0]).expect("reported");
    assert!(
        matches!(&t.result, TargetResult::Failed { reason, .. } if reason.contains("disk full")),
        "{t:?}"
    );
    check_every_target_back_or_named(&lb, &r);
    // The journal misses a record: the run does not close it over the gap
    // (the records after the failed one are written), so restore or resume
    // reconcile it with the balancer before a new run.
    assert_eq!(r.journal_records_lost, 1, "{r:#?}");
    let records = journal.records().expect("records");
    assert!(
        records.iter().any(|r| matches!(r, Record::Finished { .. })),
        "{records:#?}"
    );
    assert!(
        !records.iter().any(|r| matches!(r, Record::End { .. })),
        "{records:#?}"
    );
}

/// A journal that cannot record a maintenance's handle (and writes
/// everything else).
#[derive(Debug, Clone)]
struct NoHandle(MemoryJournal);

impl Journal for NoHandle {
    fn location(&self) -> String {
        self.0.location()
    }
    fn append(&self, record: &Record) -> hygiene_core::Result<()> {
        if matches!(record, Record::Started { .. }) {
            return Err(Error::journal("memory journal", "disk full"));
        }
        self.0.append(record)
    }
    fn records(&self) -> hygiene_core::Result<Vec<Record>> {
        self.0.records()
    }
}

/// An executor that reports a handle for each maintenance it starts.
fn handled() -> hygiene_core::mock::MockExecutor {
    let mut exec = hygiene_core::mock::MockExecutor::new();
    exec.expect_name().return_const("handled".to_owned());
    exec.expect_preflight()
        .returning(|t| Ok(vec![hygiene_core::Preflight::Ready; t.len()]));
    exec.expect_execute_tracked().returning(|targets, sink| {
        Ok(targets
            .iter()
            .map(|t| {
                sink.started(
                    &t.id,
                    hygiene_core::ExecHandle(serde_json::json!({"pid": 1})),
                );
                hygiene_core::ExecOutcome::success(t.id.clone(), Duration::from_secs(1))
            })
            .collect())
    });
    exec
}

// A maintenance's handle that cannot be recorded leaves a gap too: the run
// goes on (the maintenance has started), counts it, and does not close
// the journal.
#[tokio::test(start_paused = true)]
async fn a_handle_that_cannot_be_recorded_leaves_the_journal_unfinished() {
    let (lb, _) = pool(2);
    let journal = MemoryJournal::new();
    let r = Rollout::new(lb.clone(), handled(), config(1))
        .with_journal(NoHandle(journal.clone()))
        .run()
        .await
        .expect("run");
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(r.journal_records_lost, 2, "{r:#?}");
    assert!(
        r.targets.iter().all(|t| t.result == TargetResult::Done),
        "{r:#?}"
    );
    let records = journal.records().expect("records");
    assert!(
        !records.iter().any(|r| matches!(r, Record::End { .. })),
        "{records:#?}"
    );
    check_every_target_back_or_named(&lb, &r);
}

// The journal alone tells an auditor what became of each target, with why.
#[tokio::test(start_paused = true)]
async fn finished_records_say_what_became_of_each_target_and_why() {
    let (lb, ids) = pool(3);
    lb.set_status(
        &ids[2],
        TargetState::OutOfService,
        hygiene_core::Health::Unknown,
    )
    .expect("set");
    let journal = MemoryJournal::new();
    Rollout::new(lb, executor(&ids, Some(&ids[1])), config(1))
        .with_journal(journal.clone())
        .run()
        .await
        .expect("run");
    let finished: Vec<(TargetId, hygiene_core::Stage, Location, Option<String>)> = journal
        .records()
        .expect("records")
        .into_iter()
        .filter_map(|r| match r {
            Record::Finished {
                id,
                stage,
                location,
                detail,
                ..
            } => Some((id, stage, location, detail)),
            _ => None,
        })
        .collect();
    let of = |id: &TargetId| {
        finished
            .iter()
            .find(|f| &f.0 == id)
            .unwrap_or_else(|| panic!("no record for {id}: {finished:?}"))
            .clone()
    };
    assert_eq!(of(&ids[0]).1, hygiene_core::Stage::Done);
    let failed = of(&ids[1]);
    assert_eq!(failed.1, hygiene_core::Stage::Failed);
    assert_eq!(failed.2, Location::KeptOut);
    assert!(failed.3.is_some_and(|d| d.contains("patch failed")));
    let skipped = of(&ids[2]);
    assert_eq!(skipped.1, hygiene_core::Stage::Skipped);
    assert!(
        skipped.3.is_some_and(|d| d.contains("OutOfService")),
        "{finished:?}"
    );
}

// A fresh run has changed nothing: an unreachable balancer is said after
// one listing, not after the engine's whole retry budget. A resume has
// targets out: it waits for the balancer to come back.
#[tokio::test(start_paused = true)]
async fn a_fresh_run_fails_at_once_on_an_unreachable_balancer_and_a_resume_waits() {
    let (lb, ids) = pool(2);
    lb.fail_next(
        Operation::List,
        Error::unavailable("lb", "socket does not exist"),
    );
    let journal = MemoryJournal::new();
    let started = tokio::time::Instant::now();
    let e = Rollout::new(lb.clone(), executor(&ids, None), config(1))
        .with_journal(journal.clone())
        .run()
        .await
        .expect_err("an unreachable balancer");
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    assert_eq!(started.elapsed(), Duration::ZERO, "no retry delay");
    assert_eq!(lb.call_count(), 1, "{:?}", lb.calls());
    assert!(journal.records().expect("records").is_empty());

    // Throttling asks to try later: a fresh run does.
    lb.fail_next(
        Operation::List,
        Error::Throttled {
            location: "lb".into(),
            message: "Rate exceeded".into(),
            source: None,
        },
    );
    let r = Rollout::new(lb.clone(), executor(&ids, None), config(1))
        .with_journal(MemoryJournal::new())
        .run()
        .await
        .expect("a throttled listing is retried");
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");

    // Killed mid-run, then the balancer is briefly unreachable on resume.
    let (journal, killed) = run_and_kill(&lb, &ids, None, 1, 6).await;
    assert!(killed);
    lb.fail_next(
        Operation::List,
        Error::unavailable("lb", "socket does not exist"),
    );
    let r = Rollout::new(lb.clone(), executor(&ids, None), config(1))
        .with_journal(journal.clone())
        .resume()
        .await
        .expect("the resume retried the listing");
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    check_every_target_back_or_named(&lb, &r);
}
