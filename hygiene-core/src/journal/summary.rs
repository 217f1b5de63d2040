//! What a journal says a run left, read without the balancer: the answer
//! to "what is out, and how do I put it back?" after a run died.

use serde::Serialize;

use super::{Header, Interrupted, Record, Trace};
use crate::executor::ExecHandle;
use crate::phase::{Location, Stage};
use crate::report::Outcome;
use crate::target::TargetId;

/// A journal's last run, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// The run's header (id, host, pid, balancer, executor, configuration, plan).
    pub header: Header,
    /// How it ended; `None` when it did not (its process died, or it still
    /// runs: a [`FileJournal`](super::FileJournal) that cannot be opened
    /// for writing tells which).
    pub outcome: Option<Outcome>,
    /// Each target of its plan, in order.
    pub targets: Vec<TargetSummary>,
}

/// One target of a journal's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TargetSummary {
    /// The target.
    pub id: TargetId,
    /// What the journal says of it.
    pub state: JournaledState,
    /// The executor's handle on a maintenance whose end was not recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<ExecHandle>,
}

/// A target's state as far as its journal knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JournaledState {
    /// Never touched by the run.
    NotStarted,
    /// The run may have it out of rotation (a drain or disable was sent,
    /// no enable succeeded after it), its maintenance not started.
    Out,
    /// Out, and its maintenance started with no recorded end: it may still
    /// run (see the handle).
    MaintenanceRunning,
    /// Out, its maintenance succeeded, not yet back.
    MaintenanceSucceeded,
    /// Out, its maintenance failed.
    MaintenanceFailed {
        /// Why.
        reason: String,
    },
    /// Finished: how and where.
    Finished {
        /// Its last stage.
        stage: Stage,
        /// Where it was left.
        location: Location,
        /// Why, for a failure or skip.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl JournaledState {
    /// The run may have left the target out of rotation.
    pub fn maybe_out(&self) -> bool {
        match self {
            Self::NotStarted => false,
            Self::Finished { location, .. } => matches!(
                location,
                Location::OutByRun | Location::KeptOut | Location::Unknown
            ),
            _ => true,
        }
    }
}

impl Summary {
    /// Targets the run may have left out of rotation.
    pub fn out(&self) -> impl Iterator<Item = &TargetSummary> {
        self.targets.iter().filter(|t| t.state.maybe_out())
    }
}

/// Summarises the last run of `records` (as a journal returns them);
/// `None` when there is no run in them.
pub fn summarize(records: &[Record]) -> Option<Summary> {
    let (header, traces) = Trace::of(records)?;
    let start = records
        .iter()
        .rposition(|r| matches!(r, Record::Header(_)))?;
    let outcome = records[start..].iter().rev().find_map(|r| match r {
        Record::End { outcome, .. } => Some(outcome.clone()),
        _ => None,
    });
    let targets = traces
        .into_iter()
        .map(|t| {
            let state = match (&t.finished, t.maybe_out, &t.exec) {
                // A finish the journal recorded, unless a later change may
                // have moved it (the same rule resume applies).
                (Some(f), _, _) if !(t.maybe_out && f.location == Location::OutByRun) => {
                    JournaledState::Finished {
                        stage: f.stage,
                        location: f.location,
                        detail: f.detail.clone(),
                    }
                }
                (_, false, Interrupted::NotStarted) => JournaledState::NotStarted,
                (_, _, Interrupted::NotStarted) => JournaledState::Out,
                (_, _, Interrupted::Unknown) => JournaledState::MaintenanceRunning,
                (_, _, Interrupted::Succeeded) => JournaledState::MaintenanceSucceeded,
                (_, _, Interrupted::Failed(why)) => JournaledState::MaintenanceFailed {
                    reason: why.clone(),
                },
            };
            TargetSummary {
                id: t.target.id,
                state,
                handle: t.handle,
            }
        })
        .collect();
    Some(Summary {
        header,
        outcome,
        targets,
    })
}
