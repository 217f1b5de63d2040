//! The JSON report of a run, and its progress events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::executor::ExecOutcome;
use crate::phase::Stage;
use crate::target::TargetId;

/// Serde helpers writing a [`Duration`] as whole milliseconds.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Every selected target was handled within the failure budget.
    Completed,
    /// The run stopped early; `reason` says why.
    Aborted {
        /// Why.
        reason: String,
    },
    /// The run was cancelled.
    Cancelled,
}

/// What became of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetResult {
    /// Maintained, healthy and back in service.
    Done,
    /// Failed; `kept_out` says whether it is out of rotation now.
    Failed {
        /// The phase it failed in.
        phase: Stage,
        /// Why.
        reason: String,
        /// Out of rotation because of the run.
        kept_out: bool,
        /// How to put it back by hand, when kept out.
        restore_hint: Option<String>,
    },
    /// Not maintained, never touched.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Drained, then put back without maintenance (cancellation).
    Restored {
        /// Why.
        reason: String,
    },
    /// The run ended before this target's turn.
    NotStarted,
}

/// Time spent in each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTimings {
    /// From the drain call to drained.
    #[serde(with = "opt_duration_ms", rename = "drain_ms")]
    pub drain: Option<Duration>,
    /// The maintenance.
    #[serde(with = "opt_duration_ms", rename = "execute_ms")]
    pub execute: Option<Duration>,
    /// From the enable call to healthy.
    #[serde(with = "opt_duration_ms", rename = "health_ms")]
    pub health: Option<Duration>,
    /// Warmup.
    #[serde(with = "opt_duration_ms", rename = "warmup_ms")]
    pub warmup: Option<Duration>,
}

/// One target's line in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReport {
    /// The target.
    pub id: TargetId,
    /// What became of it.
    pub result: TargetResult,
    /// Its batch (0-based), when it was in one.
    pub batch: Option<usize>,
    /// Time per phase.
    pub timings: PhaseTimings,
    /// The executor's outcome, when it ran.
    pub execution: Option<ExecOutcome>,
    /// The drain timed out with `on_drain_timeout = Proceed`: the
    /// maintenance started with work still in flight on the target.
    #[serde(default)]
    pub drain_cut_short: bool,
}

impl TargetReport {
    /// Out of rotation because of the run.
    pub fn is_kept_out(&self) -> bool {
        matches!(self.result, TargetResult::Failed { kept_out: true, .. })
    }
}

/// The report of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// How the run ended.
    pub outcome: Outcome,
    /// The balancer's name.
    pub balancer: String,
    /// The executor's name.
    pub executor: String,
    /// Wall time of the run.
    #[serde(with = "duration_ms", rename = "duration_ms")]
    pub duration: Duration,
    /// Batches started.
    pub batches: usize,
    /// One line per target of the selection (and per skipped one).
    pub targets: Vec<TargetReport>,
    /// Balancer API calls made (retries included).
    pub balancer_calls: u64,
    /// Executor calls made (retries included).
    pub executor_calls: u64,
}

impl Report {
    /// Targets out of rotation because of the run, with why.
    pub fn kept_out(&self) -> impl Iterator<Item = &TargetReport> {
        self.targets.iter().filter(|t| t.is_kept_out())
    }

    /// Failed targets.
    pub fn failed(&self) -> impl Iterator<Item = &TargetReport> {
        self.targets
            .iter()
            .filter(|t| matches!(t.result, TargetResult::Failed { .. }))
    }

    /// Completed with no failure.
    pub fn is_success(&self) -> bool {
        self.outcome == Outcome::Completed && self.failed().next().is_none()
    }

    /// The report as pretty JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"report serialization: {e}\"}}"))
    }
}

/// A progress event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The run validated its input and starts.
    Started {
        /// Targets selected.
        selected: usize,
        /// Targets in the pool.
        pool: usize,
    },
    /// A batch starts.
    BatchStarted {
        /// 0-based index.
        index: usize,
        /// Its targets.
        targets: Vec<TargetId>,
    },
    /// A target changed phase.
    Phase {
        /// The target.
        id: TargetId,
        /// Its new phase.
        stage: Stage,
        /// Details (failure reason, skip reason).
        detail: Option<String>,
    },
    /// A retryable error; the call is tried again after `delay`.
    Retry {
        /// The operation.
        operation: String,
        /// The error.
        error: String,
        /// The delay before the next try.
        #[serde(with = "duration_ms", rename = "delay_ms")]
        delay: Duration,
    },
    /// Waiting for capacity (`min_healthy`).
    WaitingForCapacity {
        /// Healthy targets now.
        healthy: usize,
        /// Required.
        required: usize,
    },
    /// The run ended.
    Finished {
        /// How.
        outcome: Outcome,
    },
}
