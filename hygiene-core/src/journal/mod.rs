//! The run's journal: what the run did to each target, written durably
//! before and after every change, so that a run whose process died can be
//! resumed or undone, and an auditor can read what happened.
//!
//! - A [`Journal`] is append-only: a [`Header`] first (run id, version,
//!   balancer and executor, configuration, the ordered plan with every
//!   target as listed — for ELBv2 its port and zone), then for every call
//!   that changes a target an *intent* record **before** the call and a
//!   *result* record after it, a record for each target that finishes, and
//!   an `end` record when the run ends.
//! - [`FileJournal`] writes JSON Lines, `sync_data` after each record,
//!   ignores a torn last line on read, and lets one writer at a time hold
//!   it (an exclusive lock on the file; the error names the holder).
//! - [`MemoryJournal`] is the same in memory, for tests.
//!
//! Nothing is written when no journal is given to the
//! [`Rollout`](crate::Rollout): library users choose. [`default_dir`] is
//! where an operator's tool keeps journals (`$HYGIENE_STATE_DIR`, else
//! `$XDG_STATE_HOME/hygiene`, else `~/.local/state/hygiene`, else
//! `/var/lib/hygiene` for root).

mod file;
pub(crate) mod private;
mod record;
mod summary;
mod trace;

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use file::FileJournal;
pub use private::{check_state_dir, prepare_state_dir, readable_by_others};
pub use record::{open_changes, Change, Header, Op, Record, JOURNAL_FORMAT};
pub use summary::{summarize, JournaledState, Summary, TargetSummary};
pub(crate) use trace::{Finish, Interrupted, Trace};

use crate::error::{Error, Result};

/// Where a journal's records are kept.
///
/// # Contract
/// - `append` returns only once the record is durable (on disk for a file).
/// - `records` returns every complete record in order; a torn last record
///   (the process died while writing it) is ignored; anything else that
///   cannot be read is an [`Error::Journal`].
pub trait Journal: Send + Sync + Debug + 'static {
    /// Where it is, for messages (a path).
    fn location(&self) -> String;

    /// Appends one record, durably.
    ///
    /// # Errors
    /// [`Error::Journal`] when it cannot be written.
    fn append(&self, record: &Record) -> Result<()>;

    /// Every record so far.
    ///
    /// # Errors
    /// [`Error::Journal`] when it cannot be read or is corrupt.
    fn records(&self) -> Result<Vec<Record>>;
}

impl<T: Journal + ?Sized> Journal for Arc<T> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn append(&self, record: &Record) -> Result<()> {
        (**self).append(record)
    }
    fn records(&self) -> Result<Vec<Record>> {
        (**self).records()
    }
}

/// A journal in memory (tests). Clones share the records.
#[derive(Debug, Clone, Default)]
pub struct MemoryJournal {
    records: Arc<Mutex<Vec<Record>>>,
    fail_appends: Arc<Mutex<bool>>,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every later append fails (a full disk), or succeeds again.
    pub fn set_failing(&self, failing: bool) {
        *self
            .fail_appends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failing;
    }

    /// Keeps only the first `n` records: what a process killed right after
    /// its `n`th record left behind.
    pub fn truncate(&self, n: usize) {
        self.lock().truncate(n);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Journal for MemoryJournal {
    fn location(&self) -> String {
        "memory journal".into()
    }

    fn append(&self, record: &Record) -> Result<()> {
        if *self
            .fail_appends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            return Err(Error::journal(
                self.location(),
                "cannot write: injected failure",
            ));
        }
        self.lock().push(record.clone());
        Ok(())
    }

    fn records(&self) -> Result<Vec<Record>> {
        Ok(self.lock().clone())
    }
}

/// Where an operator's tool keeps journals by default:
/// `$HYGIENE_STATE_DIR`, else `$XDG_STATE_HOME/hygiene`, else
/// `$HOME/.local/state/hygiene`, else `/var/lib/hygiene`.
pub fn default_dir() -> PathBuf {
    dir_from(|k| std::env::var_os(k))
}

/// [`default_dir`] from the variables `var` gives (an empty one is unset).
fn dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let env = |k: &str| var(k).filter(|v| !v.is_empty());
    if let Some(d) = env("HYGIENE_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = env("XDG_STATE_HOME") {
        return PathBuf::from(d).join("hygiene");
    }
    if let Some(h) = env("HOME") {
        return PathBuf::from(h).join(".local/state/hygiene");
    }
    PathBuf::from("/var/lib/hygiene")
}

/// The host this process runs on, for journal headers.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

/// The largest call id the journal's records use.
pub(crate) fn last_call(records: &[Record]) -> Option<u64> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Intent { call, .. } => Some(*call),
            _ => None,
        })
        .max()
}

/// The state of a journal: nothing in it, a run that ended, or a run that
/// did not (its process died, or it is still running elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Status {
    Empty,
    Finished(Box<Header>),
    Unfinished(Box<Header>),
}

/// Reads a journal's state, checking it is one this version can use for
/// this balancer.
pub(crate) fn status(journal: &dyn Journal, balancer: &str) -> Result<(Status, Vec<Record>)> {
    let records = journal.records()?;
    let Some(first) = records.first() else {
        return Ok((Status::Empty, records));
    };
    if !matches!(first, Record::Header(_)) {
        return Err(Error::journal(
            journal.location(),
            "does not start with a header: it is not a hygiene journal, or it is damaged; move it away",
        ));
    }
    // A journal may hold several runs one after the other: the last counts.
    let last = records
        .iter()
        .rposition(|r| matches!(r, Record::Header(_)))
        .unwrap_or(0);
    let Record::Header(h) = &records[last] else {
        return Err(Error::journal(
            journal.location(),
            "does not start with a header: it is not a hygiene journal, or it is damaged; move it away",
        ));
    };
    if h.format > JOURNAL_FORMAT {
        return Err(Error::journal(
            journal.location(),
            format!(
                "was written by a newer hygiene ({}, journal format {}; this one reads format {JOURNAL_FORMAT}): use that version to resume or restore it",
                h.hygiene, h.format
            ),
        ));
    }
    if h.balancer != balancer {
        return Err(Error::journal(
            journal.location(),
            format!(
                "belongs to run {} on {:?}, not to {balancer:?}: give each pool its own journal",
                h.run_id, h.balancer
            ),
        ));
    }
    let ended = records[last..]
        .iter()
        .any(|r| matches!(r, Record::End { .. }));
    let h = h.clone();
    Ok((
        if ended {
            Status::Finished(h)
        } else {
            Status::Unfinished(h)
        },
        records,
    ))
}

/// A journal header for tests: a run of the default configuration over
/// targets named `names`.
#[cfg(test)]
pub(crate) fn test_header(names: &[&str]) -> Record {
    Record::Header(Box::new(Header {
        format: JOURNAL_FORMAT,
        hygiene: "test".into(),
        run_id: "run".into(),
        started_at: String::new(),
        balancer: "lb".into(),
        executor: "exec".into(),
        host: "h".into(),
        pid: 1,
        config: crate::config::RolloutConfig::builder()
            .build()
            .expect("config"),
        plan: names
            .iter()
            .map(|s| crate::target::Target::new(crate::target::TargetId::new(*s).expect("id")))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(call: u64) -> Record {
        Record::Intent {
            call,
            op: Op::Drain,
            ids: Vec::new(),
            at: String::new(),
        }
    }

    #[test]
    fn a_shared_journal_is_the_same_journal() {
        let inner = MemoryJournal::new();
        let shared: Arc<dyn Journal> = Arc::new(inner.clone());
        assert_eq!(shared.location(), "memory journal");
        shared.append(&intent(4)).expect("append");
        assert_eq!(inner.records().expect("records"), vec![intent(4)]);
        assert_eq!(shared.records().expect("records"), vec![intent(4)]);
    }

    #[test]
    fn truncate_keeps_what_a_killed_process_left() {
        let j = MemoryJournal::new();
        for c in 0..5 {
            j.append(&intent(c)).expect("append");
        }
        j.truncate(2);
        assert_eq!(j.records().expect("records"), vec![intent(0), intent(1)]);
    }

    #[test]
    fn the_next_call_id_follows_the_largest_intent() {
        assert_eq!(last_call(&[]), None);
        let records = [intent(3), intent(7), intent(5)];
        assert_eq!(last_call(&records), Some(7));
    }

    #[test]
    fn the_state_dir_comes_from_the_first_variable_set() {
        use std::ffi::OsString;
        let vars = |set: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                set.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            dir_from(vars(&[
                ("HYGIENE_STATE_DIR", "/s"),
                ("XDG_STATE_HOME", "/x")
            ])),
            PathBuf::from("/s")
        );
        assert_eq!(
            dir_from(vars(&[("HYGIENE_STATE_DIR", ""), ("XDG_STATE_HOME", "/x")])),
            PathBuf::from("/x/hygiene"),
            "an empty variable is unset"
        );
        assert_eq!(
            dir_from(vars(&[("HOME", "/home/op")])),
            PathBuf::from("/home/op/.local/state/hygiene")
        );
        assert_eq!(dir_from(vars(&[])), PathBuf::from("/var/lib/hygiene"));
        // This process's own: from its environment, a real place.
        assert_ne!(default_dir(), PathBuf::new());
        assert_eq!(default_dir(), dir_from(|k| std::env::var_os(k)));
    }

    #[test]
    fn the_host_is_this_machines_name() {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .expect("a hostname on this machine");
        assert!(!name.trim().is_empty());
        assert_eq!(host(), name.trim());
    }
}
