//! One journal per run, `hygiene history` and `hygiene logs`.
//!
//! A fresh `run` moves the pool's journal aside when its last run ended
//! (`<pool>.jsonl.<run id>.done`, beside it; the library's
//! `FileJournal::archive`), so every run starts a journal of its own and
//! `status` reads the latest. The newest [`KEEP`] are kept; older ones are
//! deleted. A journal that holds several runs (written before this, or a
//! shared journal in a lease store, which is never moved) is read run by
//! run.
//!
//! `history` lists the runs, newest first, with their outcome; `logs`
//! prints what a target's maintenances printed (the bounded tails of
//! stdout and stderr the journal keeps, 0600 like the journal), newest
//! first.

use std::path::{Path, PathBuf};

use hygiene_core::journal::{summarize, FileJournal, Journal as _, Record};
use hygiene_core::{ExecOutcome, Location};
use serde::Serialize;

use crate::cli::Global;
use crate::config::Loaded;
use crate::output::clean;
use crate::{exit, output, setup, Failure};

/// Archived journals kept per pool.
pub(crate) const KEEP: usize = 100;

/// The archived journals of `journal` (`<name>.<run id>.done`), any order.
fn archived(journal: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (journal.parent(), journal.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".done"))
        })
        .collect()
}

/// Before a fresh run takes the journal: when its last run ended, move it
/// aside so this run starts a journal of its own, and keep the newest
/// [`KEEP`] archived ones. A journal whose run did not end stays (the
/// engine refuses the run, naming resume and restore); one another
/// process holds is left to the lock's own error.
/// Returns where it went and its records.
pub(crate) fn archive_finished(journal: &Path) -> Result<Option<(PathBuf, Vec<Record>)>, Failure> {
    if !journal.exists() {
        return Ok(None);
    }
    let Ok(file) = FileJournal::open(journal) else {
        return Ok(None);
    };
    let records = file.records()?;
    let Some(sum) = summarize(&records) else {
        return Ok(None);
    };
    if sum.outcome.is_none() {
        return Ok(None);
    }
    let to = file.archive(&sum.header.run_id)?;
    prune(journal);
    Ok(Some((to, records)))
}

/// Deletes the oldest archived journals beyond [`KEEP`] (by the time
/// they were archived).
fn prune(journal: &Path) {
    let mut old: Vec<(std::time::SystemTime, PathBuf)> = archived(journal)
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if old.len() <= KEEP {
        return;
    }
    old.sort();
    for (_, p) in &old[..old.len() - KEEP] {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::warn!("cannot delete the old journal {}: {e}", p.display());
        }
    }
}

/// One run, as `history` shows it.
#[derive(Debug, Clone, Serialize)]
struct RunLine {
    run_id: String,
    started_at: String,
    host: String,
    /// `completed`, `aborted`, `cancelled`, or `unfinished`.
    outcome: String,
    /// Why, for an aborted run.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    targets: usize,
    /// Back in service through the run.
    in_service: usize,
    /// Left out of rotation (or in a state the run could not read).
    out: usize,
    /// Where its journal is.
    journal: String,
}

/// Every run of the pool's journals: the archived ones and the current
/// one (or the shared store's journal), newest first.
async fn all_runs(loaded: &Loaded, g: &Global) -> Result<Vec<(Vec<Record>, String)>, Failure> {
    let pool = loaded.pool_name();
    let mut journals: Vec<(Vec<Record>, String)> = Vec::new();
    if let Some(o) = crate::lease::open(loaded).await? {
        let records = o
            .store
            .records(&pool)
            .await
            .map_err(|e| Failure::Lib(e.into()))?;
        journals.push((
            records,
            format!("{} (journal of pool {pool})", o.store.name()),
        ));
    } else {
        let journal = setup::state_dir(loaded, g.state_dir.as_ref()).join(format!("{pool}.jsonl"));
        for p in archived(&journal).into_iter().chain([journal]) {
            if p.exists() {
                journals.push((FileJournal::read(&p)?, p.display().to_string()));
            }
        }
    }
    // Split each journal into its runs (a header starts one).
    let mut runs = Vec::new();
    for (records, at) in journals {
        let starts: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Record::Header(_)))
            .map(|(i, _)| i)
            .collect();
        for (k, &s) in starts.iter().enumerate() {
            let e = starts.get(k + 1).copied().unwrap_or(records.len());
            runs.push((records[s..e].to_vec(), at.clone()));
        }
    }
    runs.sort_by_key(|r| std::cmp::Reverse(started(&r.0)));
    Ok(runs)
}

fn started(records: &[Record]) -> String {
    match records.first() {
        Some(Record::Header(h)) => h.started_at.clone(),
        _ => String::new(),
    }
}

fn run_line(records: &[Record], journal: &str) -> Option<RunLine> {
    let sum = summarize(records)?;
    let (outcome, reason) = match &sum.outcome {
        None => ("unfinished".to_owned(), None),
        Some(o) => {
            let v = serde_json::to_value(o).unwrap_or_default();
            let kind = v["kind"].as_str().unwrap_or("?").to_owned();
            let reason = match o {
                hygiene_core::Outcome::Aborted { reason } => Some(reason.to_string()),
                _ => None,
            };
            (kind, reason)
        }
    };
    let in_service = sum
        .targets
        .iter()
        .filter(|t| {
            matches!(
                t.state,
                hygiene_core::journal::JournaledState::Finished {
                    location: Location::InService,
                    ..
                }
            )
        })
        .count();
    Some(RunLine {
        run_id: sum.header.run_id.clone(),
        started_at: sum.header.started_at.clone(),
        host: sum.header.host.clone(),
        outcome,
        reason,
        targets: sum.targets.len(),
        in_service,
        out: sum.out().count(),
        journal: journal.to_owned(),
    })
}

/// `hygiene history`: the pool's runs, newest first (`limit` of them).
pub(crate) async fn history(g: &Global, limit: usize) -> Result<u8, Failure> {
    let loaded = Loaded::read_with(&g.config, &g.set)?;
    let runs = all_runs(&loaded, g).await?;
    let lines: Vec<RunLine> = runs
        .iter()
        .filter_map(|(r, at)| run_line(r, at))
        .take(limit)
        .collect();
    if g.json {
        for l in &lines {
            output::json_line("run", l);
        }
        return Ok(exit::OK);
    }
    if lines.is_empty() {
        output::print(&format!(
            "pool {}: no run recorded\n",
            clean(loaded.pool_name())
        ));
        return Ok(exit::OK);
    }
    let mut o = String::new();
    for l in &lines {
        o.push_str(&format!(
            "{}  {}  {:<10} {} target(s): {} back in service, {} out{}  (on {})\n",
            clean(&l.started_at),
            clean(&l.run_id),
            clean(&l.outcome),
            l.targets,
            l.in_service,
            l.out,
            l.reason
                .as_ref()
                .map(|r| format!(" — {}", clean(r)))
                .unwrap_or_default(),
            clean(&l.host),
        ));
    }
    output::print(&o);
    Ok(exit::OK)
}

/// One maintenance of a target, as `logs` shows it.
#[derive(Debug, Clone, Serialize)]
struct LogEntry {
    run_id: String,
    run_started_at: String,
    #[serde(flatten)]
    outcome: ExecOutcome,
}

/// `hygiene logs <target>`: what its maintenances printed (the tails the
/// journal keeps), newest first: the last one, or all with `all`.
pub(crate) async fn logs(g: &Global, target: &str, all: bool) -> Result<u8, Failure> {
    let loaded = Loaded::read_with(&g.config, &g.set)?;
    let runs = all_runs(&loaded, g).await?;
    let mut entries = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (records, _) in &runs {
        let Some(Record::Header(h)) = records.first() else {
            continue;
        };
        for p in &h.plan {
            names.insert(p.id.to_string());
        }
        // Within a run, newest first too.
        for r in records.iter().rev() {
            if let Record::Result {
                outcomes: Some(outcomes),
                ..
            } = r
            {
                for o in outcomes.iter().filter(|o| o.id.as_str() == target) {
                    entries.push(LogEntry {
                        run_id: h.run_id.clone(),
                        run_started_at: h.started_at.clone(),
                        outcome: o.clone(),
                    });
                }
            }
        }
    }
    if entries.is_empty() {
        if names.contains(target) || names.is_empty() {
            // A known name (or no run at all): nothing to show, not an error.
            output::print(&format!(
                "{}: no maintenance recorded in the journals of pool {}\n",
                clean(target),
                clean(loaded.pool_name())
            ));
            return Ok(exit::OK);
        }
        return Err(crate::config::ConfigError::flag(
            &clean(target),
            format!(
                "is no target of the runs of pool {}: {}",
                clean(loaded.pool_name()),
                clean(names.into_iter().collect::<Vec<_>>().join(", "))
            ),
        )
        .into());
    }
    if !all {
        entries.truncate(1);
    }
    if g.json {
        for e in &entries {
            output::json_line("maintenance", e);
        }
        return Ok(exit::OK);
    }
    let mut o = String::new();
    for e in &entries {
        let x = &e.outcome;
        o.push_str(&format!(
            "== {} — run {} (started {}): {}{}, {:.1}s\n",
            clean(target),
            clean(&e.run_id),
            clean(&e.run_started_at),
            if x.success { "succeeded" } else { "FAILED" },
            x.exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default(),
            x.duration.as_secs_f64()
        ));
        if let Some(m) = &x.message {
            o.push_str(&format!("{}\n", clean(m)));
        }
        for (name, text) in [("stdout", &x.stdout_tail), ("stderr", &x.stderr_tail)] {
            if text.is_empty() {
                continue;
            }
            o.push_str(&format!(
                "-- {name} (last {} bytes at most)\n",
                hygiene_core::OUTPUT_TAIL_BYTES
            ));
            for line in text.lines() {
                o.push_str(&format!("{}\n", clean(line)));
            }
        }
    }
    output::print(&o);
    Ok(exit::OK)
}

/// The last lines of a failed maintenance's output, for the report: its
/// stderr, else its stdout; at most `n` lines.
pub(crate) fn last_lines(x: &ExecOutcome, n: usize) -> Vec<String> {
    let text = if x.stderr_tail.trim().is_empty() {
        &x.stdout_tail
    } else {
        &x.stderr_tail
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| clean(*l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hygiene_core::TargetId;

    #[test]
    fn the_last_lines_prefer_stderr_and_are_bounded() {
        let mut x = ExecOutcome::failure(
            TargetId::new("web/s1").expect("id"),
            std::time::Duration::ZERO,
            "exit 1",
        );
        x.stdout_tail = "a\nb\n".into();
        assert_eq!(last_lines(&x, 5), vec!["a", "b"]);
        x.stderr_tail = "1\n2\n\n3\n4\n5\n6\n\u{1b}[31mred\n".into();
        assert_eq!(last_lines(&x, 3), vec!["5", "6", "\\u{1b}[31mred"]);
    }

    #[test]
    fn archived_journals_are_found_by_name_and_pruned_to_the_newest() {
        let dir = tempfile::tempdir().expect("dir");
        let journal = dir.path().join("web.jsonl");
        for i in 0..(KEEP + 3) {
            let p = dir.path().join(format!("web.jsonl.run{i:03}.done"));
            std::fs::write(&p, "").expect("write");
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(t))
                .expect("mtime");
        }
        std::fs::write(dir.path().join("api.jsonl.x.done"), "").expect("write");
        assert_eq!(archived(&journal).len(), KEEP + 3);
        prune(&journal);
        let mut left: Vec<String> = archived(&journal)
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), KEEP);
        assert_eq!(left[0], "web.jsonl.run003.done", "the oldest three went");
        assert!(
            dir.path().join("api.jsonl.x.done").exists(),
            "another pool's stays"
        );
    }
}
