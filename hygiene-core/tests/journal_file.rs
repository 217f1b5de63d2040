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
    std::fs::write(
        &newer,
        text.replacen(
            &format!("\"format\":{}", hygiene_core::journal::JOURNAL_FORMAT),
            "\"format\":99",
            1,
        ),
    )
    .expect("write");
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

/// A run killed while writing, then a new process on the same journal: the
/// torn tail is cut (and said) before the first append, so the journal
/// stays readable and the next run, resume or restore can start.
#[tokio::test(start_paused = true)]
async fn a_torn_tail_is_cut_before_the_next_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("web.jsonl");
    let (lb, _) = pool(2);
    Rollout::new(lb, ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open"))
        .run()
        .await
        .expect("run");
    let torn = br#"{"record":"intent","call":99,"op":"dr"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open")
        .write_all(torn)
        .expect("write");
    let j = FileJournal::open(&path).expect("open again");
    assert_eq!(j.torn_tail_cut(), Some(torn.len() as u64));
    let (lb, _) = pool(2);
    let second = Rollout::new(lb, ScriptedExecutor::new(), config())
        .with_journal(j)
        .run()
        .await
        .expect("a second run over the cut journal");
    let records = FileJournal::read(&path).expect("readable after the append");
    let headers: Vec<&str> = records
        .iter()
        .filter_map(|r| match r {
            Record::Header(h) => Some(h.run_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(headers.len(), 2, "{headers:?}");
    assert_eq!(headers[1], second.run_id);
    // A whole journal is left as it is.
    let j = FileJournal::open(&path).expect("open whole");
    assert_eq!(j.torn_tail_cut(), None);
}

/// Maintenance output carries raw UTF-8: a tail torn inside a character
/// is still only a torn last line.
#[tokio::test(start_paused = true)]
async fn a_tail_torn_inside_a_utf8_character_is_only_a_torn_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("web.jsonl");
    let (lb, _) = pool(2);
    Rollout::new(lb, ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open"))
        .run()
        .await
        .expect("run");
    let whole = FileJournal::read(&path).expect("read");
    let mut torn =
        br#"{"record":"result","call":3,"ok":true,"outcomes":[{"stdout_tail":"caf"#.to_vec();
    torn.push(0xC3); // the first byte of "é"
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open")
        .write_all(&torn)
        .expect("write");
    assert_eq!(FileJournal::read(&path).expect("torn tail ignored"), whole);
    let j = FileJournal::open(&path).expect("open again");
    assert_eq!(j.torn_tail_cut(), Some(torn.len() as u64));
    // Invalid UTF-8 anywhere but the last line is damage, not a tear.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.insert(20, 0xFF);
    drop(j);
    std::fs::write(&path, bytes).expect("write");
    let e = FileJournal::read(&path).expect_err("damaged");
    assert!(journal_message(&e).contains("line 1 is damaged"), "{e}");
}

/// A journal holds many runs: the lock error names the one that holds it
/// now, and the process that took it up last.
#[tokio::test(start_paused = true)]
async fn the_lock_error_names_the_run_holding_it_now() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("web.jsonl");
    let (lb, _) = pool(2);
    let first = Rollout::new(lb, ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&path).expect("open"))
        .run()
        .await
        .expect("first run");
    let other = dir.path().join("other.jsonl");
    let (lb, _) = pool(2);
    let second = Rollout::new(lb, ScriptedExecutor::new(), config())
        .with_journal(FileJournal::open(&other).expect("open"))
        .run()
        .await
        .expect("second run");
    let held = FileJournal::open(&path).expect("held");
    held.append(&FileJournal::read(&other).expect("read")[0])
        .expect("the second run's header");
    let e = FileJournal::open(&path).expect_err("locked");
    let m = journal_message(&e);
    assert!(
        m.contains(&second.run_id) && !m.contains(&first.run_id),
        "names the holder now ({}), not the first run ({}): {m}",
        second.run_id,
        first.run_id
    );
    held.append(&Record::Resumed {
        mode: "restore".into(),
        at: "2026-12-06T03:00:00Z".into(),
        host: "bastion-7".into(),
        pid: 4242,
    })
    .expect("resumed");
    let m = journal_message(&FileJournal::open(&path).expect_err("locked")).to_owned();
    assert!(
        m.contains("bastion-7") && m.contains("4242") && m.contains("restore"),
        "{m}"
    );
}
