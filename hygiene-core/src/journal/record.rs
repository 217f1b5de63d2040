//! The records of a journal (one JSON object per line).

use serde::{Deserialize, Serialize};

use crate::config::RolloutConfig;
use crate::executor::{ExecHandle, ExecOutcome};
use crate::phase::{Location, Stage};
use crate::report::Outcome;
use crate::target::{Target, TargetId};

/// The journal format this version writes and reads (and every older one).
///
/// - 1: header, intents, results, seals, ends.
/// - 2: adds `change` / `undone` (changes outside the balancer, such as an
///   Auto Scaling group's, with their undo), `gate` (a gate's answer) and
///   `open` results (a maintenance that may still run). A format-1 reader
///   cannot undo those changes: it refuses such a journal (by this check,
///   or as records it cannot read), never half-reads it.
pub const JOURNAL_FORMAT: u32 = 2;

/// The first record: which run, on what, with what, over which targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Header {
    /// Journal format ([`JOURNAL_FORMAT`] when written by this version).
    pub format: u32,
    /// The hygiene version that wrote it.
    pub hygiene: String,
    /// The run's id.
    pub run_id: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The balancer's name (a journal belongs to one pool).
    pub balancer: String,
    /// The executor's name.
    pub executor: String,
    /// The host the run ran on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The configuration.
    pub config: RolloutConfig,
    /// The selected targets in order, as listed at the start: what a
    /// balancer needs to put each back exactly (ELBv2 port and zone).
    pub plan: Vec<Target>,
}

/// A call that changes a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Out of rotation, gracefully.
    Drain,
    /// Out of rotation, hard.
    Disable,
    /// Back in rotation.
    Enable,
    /// The maintenance.
    Execute,
    /// Waiting, from a resumed run, for a maintenance a dead run started,
    /// and reading its outcome.
    Recover,
}

/// One line of a journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Record {
    /// The first record.
    Header(Box<Header>),
    /// Written before a call that changes targets.
    Intent {
        /// The call (unique in the run).
        call: u64,
        /// What it does.
        op: Op,
        /// The targets it names.
        ids: Vec<TargetId>,
        /// When (RFC 3339).
        at: String,
    },
    /// A maintenance started, and the executor's handle on it (written
    /// while the maintenance runs, between its intent and its result).
    Started {
        /// The execute call.
        call: u64,
        /// The target.
        id: TargetId,
        /// What finds the maintenance again ([`crate::Executor::recover`]).
        handle: ExecHandle,
        /// When (RFC 3339).
        at: String,
    },
    /// Written after that call.
    Result {
        /// The call.
        call: u64,
        /// It succeeded (a maintenance call succeeds as a call even when a
        /// target's maintenance failed: see `outcomes`).
        ok: bool,
        /// Its error, when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The maintenance's outcome per target, for `execute`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcomes: Option<Vec<ExecOutcome>>,
        /// For `recover`: the executor could not be asked (or could not
        /// confirm the end), so the maintenance may still run and its
        /// handle stays valid for the next resume or restore.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        open: bool,
        /// When (RFC 3339).
        at: String,
    },
    /// A target finished (done, failed, skipped, vanished, restored).
    Finished {
        /// The target.
        id: TargetId,
        /// Its last stage.
        stage: Stage,
        /// The phase it failed in, when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failed_at: Option<Stage>,
        /// Where it is.
        location: Location,
        /// Why, for a failure or a skip.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The run was taken up again by a later process (resume or restore).
    Resumed {
        /// `resume` or `restore`.
        mode: String,
        /// When (RFC 3339).
        at: String,
        /// The host.
        host: String,
        /// The process.
        pid: u32,
    },
    /// A change outside the balancer (an Auto Scaling group's processes
    /// or size, an instance's standby), written **before** it is made,
    /// with what undoes it. `resume` and `restore` undo, newest first,
    /// every change of the run with no [`Record::Undone`] (see
    /// [`open_changes`](crate::journal::open_changes)); an undo must be
    /// harmless when the change was never applied.
    Change(Box<Change>),
    /// The change `key` was undone (or found not to need undoing).
    Undone {
        /// The change's key.
        key: String,
        /// When (RFC 3339).
        at: String,
    },
    /// A gate answered before or after a batch (every answer), or still
    /// said no at its timeout (`timed_out`; `go` then says whether the run
    /// went on, `on_gate_timeout = proceed`). Only a record of what was
    /// seen: resume does not read it, it asks the gates again.
    Gate {
        /// The gate's name.
        gate: String,
        /// Before or after the batch.
        when: crate::gate::GateWhen,
        /// The batch (0-based).
        batch: usize,
        /// It said go (or the run goes on past its timeout).
        go: bool,
        /// Why not, or what it saw.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// This is the decision at its timeout, not an answer.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        timed_out: bool,
        /// A hook's run (`go`: it succeeded), not a gate's answer.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hook: bool,
        /// When (RFC 3339).
        at: String,
    },
    /// The run ended.
    End {
        /// How.
        outcome: Outcome,
        /// When (RFC 3339).
        at: String,
    },
}

/// A change outside the balancer, with its undo ([`Record::Change`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Change {
    /// Unique in the run for one change; the same key written again is the
    /// same change (its first undo counts).
    pub key: String,
    /// The system it was made in (`autoscaling`).
    pub system: String,
    /// What it did, for people (`suspended AZRebalance on group web`).
    pub what: String,
    /// What undoes it, for the code of `system`.
    pub undo: serde_json::Value,
    /// The target it was made for, when one (an instance's standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetId>,
    /// When (RFC 3339).
    pub at: String,
}

impl Change {
    /// A change made now.
    pub fn new(
        key: impl Into<String>,
        system: impl Into<String>,
        what: impl Into<String>,
        undo: serde_json::Value,
    ) -> Self {
        Self {
            key: key.into(),
            system: system.into(),
            what: what.into(),
            undo,
            target: None,
            at: jiff::Timestamp::now().to_string(),
        }
    }

    /// Made for this target.
    pub fn for_target(mut self, id: TargetId) -> Self {
        self.target = Some(id);
        self
    }
}

impl Record {
    /// The record that says the change `key` was undone, now.
    pub fn undone(key: impl Into<String>) -> Self {
        Self::Undone {
            key: key.into(),
            at: jiff::Timestamp::now().to_string(),
        }
    }
}

/// The changes of the last run of `records` not undone yet, oldest first
/// (undo them in reverse order).
pub fn open_changes(records: &[Record]) -> Vec<Change> {
    let start = records
        .iter()
        .rposition(|r| matches!(r, Record::Header(_)))
        .unwrap_or(0);
    let mut open: Vec<Change> = Vec::new();
    for r in &records[start..] {
        match r {
            Record::Change(c) if !open.iter().any(|o| o.key == c.key) => open.push((**c).clone()),
            Record::Undone { key, .. } => open.retain(|o| &o.key != key),
            _ => {}
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(run: &str) -> Record {
        Record::Header(Box::new(Header {
            format: JOURNAL_FORMAT,
            hygiene: "test".into(),
            run_id: run.into(),
            started_at: String::new(),
            balancer: "lb".into(),
            executor: "exec".into(),
            host: "h".into(),
            pid: 1,
            config: RolloutConfig::builder().build().expect("config"),
            plan: Vec::new(),
        }))
    }

    fn change(key: &str, what: &str) -> Record {
        Record::Change(Box::new(Change::new(
            key,
            "autoscaling",
            what,
            serde_json::json!({ "key": key }),
        )))
    }

    #[test]
    fn open_changes_are_the_last_runs_not_undone_first_write_kept() {
        let records = [
            header("run-1"),
            change("old", "a change of an earlier run"),
            header("run-2"),
            change("suspend", "suspended AZRebalance"),
            change("standby-i-1", "i-1 in standby"),
            change("suspend", "written again"),
            change("min-size", "MinSize 2 -> 1"),
            Record::undone("standby-i-1"),
            Record::undone("not-a-change"),
        ];
        let open = open_changes(&records);
        let keys: Vec<&str> = open.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            ["suspend", "min-size"],
            "oldest first, undone ones gone"
        );
        assert_eq!(
            open[0].what, "suspended AZRebalance",
            "the first write counts"
        );
        assert!(
            open_changes(&records[..2]).len() == 1,
            "no later header: the first run's"
        );
        assert!(open_changes(&[]).is_empty());
    }
}
