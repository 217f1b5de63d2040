//! A maintenance that outlives the run that started it: the journal keeps
//! the executor's handle, and a resumed (or restoring) run waits for the
//! maintenance and reads its outcome instead of guessing. Real child
//! processes (`LocalCommand`), real time.

mod common;

use std::path::Path;
use std::time::Duration;

use common::pool;
use hygiene_core::journal::{summarize, Journal, JournaledState, MemoryJournal, Op, Record};
use hygiene_core::testing::{InMemoryBalancer, Operation};
use hygiene_core::{
    LocalCommand, Location, OnInterrupted, Rollout, RolloutConfig, TargetId, TargetResult,
    TargetState,
};

fn config(on_interrupted: OnInterrupted) -> RolloutConfig {
    RolloutConfig::builder()
        .poll_interval(Duration::from_millis(50))
        .health_timeout(Duration::from_secs(5))
        .on_interrupted(on_interrupted)
        .build()
        .expect("config")
}

/// A maintenance that counts its runs in `dir/<target>.runs`, takes
/// `secs`, writes `dir/<target>.done` at its end and exits with `code`
/// for `t000` (0 for the others).
fn maintenance(dir: &Path, secs: &str, code: u8) -> LocalCommand {
    let script = format!(
        "echo run >> \"$0/$HYGIENE_TARGET_ID.runs\"; sleep {secs}; touch \"$0/$HYGIENE_TARGET_ID.done\"; \
         if [ \"$HYGIENE_TARGET_ID\" = t000 ]; then echo bad >&2; exit {code}; fi"
    );
    LocalCommand::new("sh", ["-c".to_owned(), script, dir.display().to_string()])
        .expect("cmd")
        .with_state_dir(dir.join("state"))
        .with_timeout(Duration::from_secs(20))
}

fn runs(dir: &Path, id: &TargetId) -> usize {
    std::fs::read_to_string(dir.join(format!("{id}.runs")))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Starts a run of one target at a time and drops it (the process dies)
/// while t000's maintenance runs; returns the journal left behind.
async fn die_during_first_maintenance(lb: &InMemoryBalancer, exec: LocalCommand) -> MemoryJournal {
    let journal = MemoryJournal::new();
    let run = Rollout::new(lb.clone(), exec, config(OnInterrupted::Fail))
        .with_journal(journal.clone())
        .run();
    let dropped = tokio::time::timeout(Duration::from_millis(700), run).await;
    assert!(dropped.is_err(), "the run ended before it was killed");
    let records = journal.records().expect("records");
    assert!(
        records.iter().any(|r| matches!(r, Record::Started { .. })),
        "the journal keeps the maintenance's handle: {records:#?}"
    );
    assert!(
        !records.iter().any(|r| matches!(
            r,
            Record::Result { call, .. } if records.iter().any(|i| matches!(i, Record::Intent { call: c, op: Op::Execute, .. } if c == call))
        )),
        "no result was recorded for the maintenance"
    );
    journal
}

#[tokio::test]
async fn resume_waits_for_a_running_maintenance_and_uses_its_success() {
    let dir = tempfile::tempdir().expect("dir");
    let (lb, ids) = pool(2);
    let journal = die_during_first_maintenance(&lb, maintenance(dir.path(), "1.5", 0)).await;
    assert!(!dir.path().join("t000.done").exists());
    // What an operator reads without the balancer: t000 out, its
    // maintenance maybe still running, with the handle to find it.
    let s = summarize(&journal.records().expect("records")).expect("a run");
    assert_eq!(s.outcome, None);
    let out: Vec<_> = s.out().map(|t| t.id.clone()).collect();
    assert_eq!(out, vec![ids[0].clone()]);
    assert_eq!(s.targets[0].state, JournaledState::MaintenanceRunning);
    assert!(s.targets[0].handle.is_some());
    assert_eq!(s.targets[1].state, JournaledState::NotStarted);
    // Even with on_interrupted = fail, the outcome is learned, not guessed.
    let r = Rollout::new(
        lb.clone(),
        maintenance(dir.path(), "0.1", 0),
        config(OnInterrupted::Fail),
    )
    .with_journal(journal.clone())
    .resume()
    .await
    .expect("resume");
    assert!(r.is_success(), "{r:#?}");
    let t0 = r.target(&ids[0]).expect("t000");
    assert_eq!(t0.result, TargetResult::Done, "{t0:?}");
    assert!(
        t0.notes.iter().any(|n| n.contains("outcome read")),
        "{t0:?}"
    );
    assert_eq!(runs(dir.path(), &ids[0]), 1, "never run twice");
    assert_eq!(runs(dir.path(), &ids[1]), 1);
    for id in &ids {
        assert_eq!(
            lb.status_of(id).map(|s| s.state),
            Some(TargetState::InService)
        );
    }
    // Enabled only after the maintenance ended.
    let enable_t0 = lb
        .calls()
        .into_iter()
        .find(|c| c.op == Operation::Enable && c.ids.contains(&ids[0]))
        .expect("t000 enabled");
    assert!(enable_t0.ok);
    assert!(dir.path().join("t000.done").exists());
    let records = journal.records().expect("records");
    assert!(records.iter().any(|r| matches!(
        r,
        Record::Intent {
            op: Op::Recover,
            ..
        }
    )));
    let s = summarize(&records).expect("a run");
    assert!(s.outcome.is_some());
    assert_eq!(s.out().count(), 0, "{s:#?}");
}

#[tokio::test]
async fn resume_reads_a_failure_and_keeps_the_target_out_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let (lb, ids) = pool(2);
    let journal = die_during_first_maintenance(&lb, maintenance(dir.path(), "1", 3)).await;
    // Rerun would run it again if the outcome were unknown: it is known.
    let r = Rollout::new(
        lb.clone(),
        maintenance(dir.path(), "0.1", 3),
        config(OnInterrupted::Rerun),
    )
    .with_journal(journal)
    .resume()
    .await
    .expect("resume");
    let t0 = r.target(&ids[0]).expect("t000");
    assert_eq!(t0.location, Location::KeptOut, "{r:#?}");
    assert!(
        matches!(&t0.result, TargetResult::Failed { reason, restore_hint: Some(_), .. } if reason.contains("code 3")),
        "{t0:?}"
    );
    assert_eq!(runs(dir.path(), &ids[0]), 1, "a known failure is not rerun");
    assert_ne!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::InService)
    );
}

#[tokio::test]
async fn restore_waits_for_a_running_maintenance_before_putting_back() {
    let dir = tempfile::tempdir().expect("dir");
    let (lb, ids) = pool(2);
    // Its maintenance will fail: restore puts it back all the same, and says so.
    let journal = die_during_first_maintenance(&lb, maintenance(dir.path(), "1.5", 3)).await;
    let r = Rollout::new(
        lb.clone(),
        maintenance(dir.path(), "0.1", 0),
        config(OnInterrupted::Fail),
    )
    .with_journal(journal)
    .restore()
    .await
    .expect("restore");
    assert!(
        dir.path().join("t000.done").exists(),
        "restore put t000 back before its maintenance ended"
    );
    assert_eq!(
        lb.status_of(&ids[0]).map(|s| s.state),
        Some(TargetState::InService),
        "{r:#?}"
    );
    assert_eq!(runs(dir.path(), &ids[1]), 0, "restore starts nothing");
    let t0 = r.target(&ids[0]).expect("t000");
    assert!(t0.notes.iter().any(|n| n.contains("waiting")), "{t0:?}");
    assert!(
        t0.notes
            .iter()
            .any(|n| n.contains("failed") && n.contains("put back all the same")),
        "{t0:?}"
    );
}

#[tokio::test]
async fn a_maintenance_that_left_no_trace_falls_back_to_on_interrupted() {
    let dir = tempfile::tempdir().expect("dir");
    let (lb, ids) = pool(2);
    let journal = die_during_first_maintenance(&lb, maintenance(dir.path(), "1", 0)).await;
    // The maintenance is gone without its status (its files removed, as a
    // reboot of a tmpfs would).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    std::fs::remove_dir_all(dir.path().join("state")).expect("rm");
    let r = Rollout::new(
        lb.clone(),
        maintenance(dir.path(), "0.1", 0),
        config(OnInterrupted::Rerun),
    )
    .with_journal(journal)
    .resume()
    .await
    .expect("resume");
    let t0 = r.target(&ids[0]).expect("t000");
    assert_eq!(t0.result, TargetResult::Done, "{r:#?}");
    assert!(
        t0.notes
            .iter()
            .any(|n| n.contains("on_interrupted = rerun")),
        "{t0:?}"
    );
    assert_eq!(runs(dir.path(), &ids[0]), 2, "run again under rerun");
}
