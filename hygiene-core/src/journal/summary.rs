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
                // have moved it (the same rule resume applies): it said
                // out by the run, or the run sent a drain after it.
                (Some(f), _, _)
                    if !(t.out_after_finish
                        || (t.maybe_out && f.location == Location::OutByRun)) =>
                {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Op;

    fn id(s: &str) -> TargetId {
        TargetId::new(s).expect("id")
    }

    fn intent(call: u64, op: Op, s: &str) -> Record {
        Record::Intent {
            call,
            op,
            ids: vec![id(s)],
            at: String::new(),
        }
    }

    fn done(call: u64) -> Record {
        Record::Result {
            call,
            ok: true,
            error: None,
            outcomes: None,
            open: false,
            at: String::new(),
        }
    }

    fn finished(s: &str, stage: Stage, location: Location) -> Record {
        Record::Finished {
            id: id(s),
            stage,
            failed_at: None,
            location,
            detail: None,
        }
    }

    /// A recorded finish is what the journal says of a target, unless it
    /// said "out by the run" and a change of the run may have moved it
    /// since (the same rule resume applies): then it is out.
    #[test]
    fn a_finish_is_trusted_unless_the_run_may_have_moved_the_target_since() {
        let names = ["a", "b", "c", "d", "e"];
        let records = vec![
            crate::journal::test_header(&names),
            // a: finished out by the run, drained and never put back.
            intent(1, Op::Drain, "a"),
            done(1),
            finished("a", Stage::Skipped, Location::OutByRun),
            // b: kept out after a drain: its finish is trusted.
            intent(2, Op::Drain, "b"),
            done(2),
            finished("b", Stage::Failed, Location::KeptOut),
            // c: finished out by the run, then put back.
            intent(3, Op::Drain, "c"),
            done(3),
            finished("c", Stage::Skipped, Location::OutByRun),
            intent(4, Op::Enable, "c"),
            done(4),
            // d: never touched, finished in service.
            finished("d", Stage::Done, Location::InService),
            // e: failed in service, then drained again by the run's guard.
            intent(5, Op::Drain, "e"),
            finished("e", Stage::Failed, Location::InService),
            intent(6, Op::Drain, "e"),
        ];
        let summary = summarize(&records).expect("a run");
        let state = |s: &str| {
            summary
                .targets
                .iter()
                .find(|t| t.id == id(s))
                .expect("summarised")
                .state
                .clone()
        };
        assert_eq!(state("a"), JournaledState::Out);
        assert_eq!(
            state("b"),
            JournaledState::Finished {
                stage: Stage::Failed,
                location: Location::KeptOut,
                detail: None,
            }
        );
        assert_eq!(
            state("c"),
            JournaledState::Finished {
                stage: Stage::Skipped,
                location: Location::OutByRun,
                detail: None,
            }
        );
        assert_eq!(
            state("d"),
            JournaledState::Finished {
                stage: Stage::Done,
                location: Location::InService,
                detail: None,
            }
        );
        assert_eq!(
            state("e"),
            JournaledState::Out,
            "its finish may no longer hold"
        );
        let out: Vec<&str> = summary.out().map(|t| t.id.as_str()).collect();
        assert_eq!(out, ["a", "b", "c", "e"]);
    }
}
