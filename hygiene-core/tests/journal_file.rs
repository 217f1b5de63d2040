//! The file journal: durable JSON Lines, one writer at a time, and a clear
//! typed error, with nothing changed, for a torn, damaged, foreign, newer or
//! locked journal.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{mutations, pool};
use hygiene_core::journal::{FileJournal, Journal, Record};
use hygiene_core::testing::ScriptedExecutor;
use hygiene_core::{Error, Rollout, RolloutConfig};

fn config() -> RolloutConfig {
    RolloutConfig::builder()
        .poll_interval(Duration::from_millis(100))
        .build()
        .expect("config")
}

fn journal_message(e: &Error) -> &str {
    match e {
        Error::Journal { message, .. } => message,
        other => panic!("expected a journal error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_writes_a_journal_that_reads_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state/web.jsonl");
    let (lb, ids) = pool(2);
    let r = Rollout::new(lb, ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open"))
        .run()
        .await
        .expect("run");
    assert!(r.is_success());
    let records = FileJournal::read(&path).expect("read");
    match records.first() {
        Some(Record::Header(h)) => {
            assert_eq!(h.run_id, r.run_id);
            assert_eq!(h.plan.len(), ids.len());
            assert_eq!(h.pid, std::process::id());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(records.last(), Some(Record::End { .. })));
    let intents = records
        .iter()
        .filter(|r| matches!(r, Record::Intent { .. }))
        .count();
    let results = records
        .iter()
        .filter(|r| matches!(r, Record::Result { .. }))
        .count();
    assert_eq!(intents, results, "a result for every intent");
    assert!(intents >= 3 * ids.len(), "drain, execute, enable each");
    // Finished runs may be followed by a new one in the same journal.
    let (lb2, _) = pool(2);
    Rollout::new(lb2, ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open again"))
        .run()
        .await
        .expect("second run");
}

#[tokio::test(start_paused = true)]
async fn a_torn_last_line_is_ignored_and_a_damaged_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("web.jsonl");
    let (lb, _) = pool(2);
    Rollout::new(lb, ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open"))
        .run()
        .await
        .expect("run");
    let whole = FileJournal::read(&path).expect("read");
    // A process killed while writing leaves half a line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    f.write_all(br#"{"record":"intent","call":99,"op":"dr"#)
        .expect("write");
    drop(f);
    assert_eq!(FileJournal::read(&path).expect("torn tail ignored"), whole);
    // A damaged line in the middle is not guessed at.
    let text = std::fs::read_to_string(&path).expect("read");
    let damaged = text.replacen("\"record\":\"result\"", "\"record\":\"resu", 1);
    std::fs::write(&path, damaged).expect("write");
    let e = FileJournal::read(&path).expect_err("damaged");
    assert!(journal_message(&e).contains("damaged"), "{e}");
    let (lb, _) = pool(2);
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open"))
        .run()
        .await
        .expect_err("refused");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(mutations(&lb), 0, "nothing changed");
}

#[tokio::test(start_paused = true)]
async fn a_locked_journal_names_its_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("web.jsonl");
    let held = FileJournal::open(&path).expect("first");
    let (lb, ids) = pool(2);
    // The first holder writes its header, as a run does.
    let header_run = Rollout::new(lb.clone(), ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(dir.path().join("other.jsonl")).expect("other"))
        .run()
        .await
        .expect("run");
    let other = FileJournal::read(&dir.path().join("other.jsonl")).expect("read");
    held.append(&other[0]).expect("header");
    let e = FileJournal::open(&path).expect_err("locked");
    let m = journal_message(&e);
    assert!(
        m.contains(&header_run.run_id) && m.contains(&std::process::id().to_string()),
        "{m}"
    );
    drop(held);
    FileJournal::open(&path).expect("free once the holder is gone");
    assert_eq!(ids.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_foreign_or_newer_journal_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("web.jsonl");
    let (lb, _) = pool(2);
    Rollout::new(lb, ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open"))
        .run()
        .await
        .expect("run");
    let text = std::fs::read_to_string(&path).expect("read");
    // Another pool's journal.
    let foreign = dir.path().join("foreign.jsonl");
    std::fs::write(
        &foreign,
        text.replacen("in-memory balancer", "haproxy web@lb-a", 1),
    )
    .expect("write");
    let (lb, _) = pool(2);
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&foreign).expect("open"))
        .resume()
        .await
        .expect_err("foreign");
    assert!(journal_message(&e).contains("not to"), "{e}");
    assert_eq!(mutations(&lb), 0);
    // A journal from a newer version.
    let newer = dir.path().join("newer.jsonl");
    std::fs::write(&newer, text.replacen("\"format\":1", "\"format\":99", 1)).expect("write");
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&newer).expect("open"))
        .run()
        .await
        .expect_err("newer");
    assert!(journal_message(&e).contains("newer"), "{e}");
    // Not a journal at all.
    let junk = dir.path().join("junk.jsonl");
    std::fs::write(
        &junk,
        "{\"record\":\"end\",\"outcome\":{\"kind\":\"completed\"},\"at\":\"x\"}\n",
    )
    .expect("write");
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&junk).expect("open"))
        .run()
        .await
        .expect_err("junk");
    assert!(journal_message(&e).contains("header"), "{e}");
    // Resume with nothing to resume.
    let e = Rollout::new(lb.clone(), ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open"))
        .resume()
        .await
        .expect_err("finished");
    assert!(journal_message(&e).contains("nothing to resume"), "{e}");
    assert_eq!(mutations(&lb), 0);
}
