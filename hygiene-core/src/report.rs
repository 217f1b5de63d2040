//! The JSON report of a run, and its progress events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Amount, RolloutConfig};
use crate::executor::ExecOutcome;
use crate::gate::{GateWhen, OnGateTimeout};
use crate::phase::{Location, Stage};
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

pub(crate) mod opt_duration_ms {
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
#[non_exhaustive]
pub enum Outcome {
    /// Every selected target was handled within the failure budget.
    Completed,
    /// The run stopped starting targets early; `reason` says why. Targets in
    /// progress then were finished (or put back) before the run ended.
    Aborted {
        /// Why.
        reason: AbortReason,
    },
    /// The run was cancelled.
    Cancelled,
}

/// Why a run was aborted, in a form a program can `match` on; its
/// `Display` is the sentence for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AbortReason {
    /// More targets failed than `max_failures` allows.
    FailureBudget {
        /// Targets failed so far.
        failed: usize,
        /// Failures tolerated (`max_failures` out of the selected targets).
        allowed: usize,
        /// The setting.
        max_failures: Amount,
        /// Targets selected.
        selected: usize,
    },
    /// Not even one target could be taken out without breaking
    /// `min_healthy`, for `capacity_timeout`.
    Capacity {
        /// Targets healthy and in service at the last look.
        healthy: usize,
        /// Targets `min_healthy` requires.
        required: usize,
        /// The setting.
        min_healthy: Amount,
        /// How long the run waited.
        #[serde(with = "duration_ms", rename = "waited_ms")]
        waited: Duration,
    },
    /// Not even one target could be taken out without breaking
    /// `zone_min_healthy` in its Availability Zone, for `capacity_timeout`.
    ZoneCapacity {
        /// The zone.
        zone: String,
        /// Targets of the zone healthy and in service at the last look.
        healthy: usize,
        /// Targets of the zone `zone_min_healthy` requires.
        required: usize,
        /// The setting (a count of 1 where an NLB with cross-zone load
        /// balancing off needs its last healthy target in each zone).
        zone_min_healthy: Amount,
        /// How long the run waited.
        #[serde(with = "duration_ms", rename = "waited_ms")]
        waited: Duration,
    },
    /// A balancer call failed for good (after its retries).
    Balancer {
        /// The operation (`status`, `drain`, `enable`, `list`).
        operation: String,
        /// The error.
        message: String,
    },
    /// The run's lease was lost (not renewed in time, or taken over): it
    /// started nothing more, finished or waited for the maintenance
    /// already running, and put back what it had out (unless taken over:
    /// then it touched the balancer no more, and the new holder answers
    /// for what is out).
    LeaseLost {
        /// Why.
        message: String,
    },
    /// A hook before or after a batch failed (or could not run).
    Hook {
        /// The hook's name.
        hook: String,
        /// Before or after the batch.
        when: GateWhen,
        /// The batch (0-based).
        batch: usize,
        /// What it said.
        message: String,
    },
    /// A gate still said no at its timeout, with `on_gate_timeout = abort`.
    Gate {
        /// The gate's name.
        gate: String,
        /// Before or after the batch.
        when: GateWhen,
        /// The batch (0-based).
        batch: usize,
        /// How long it held the rollout.
        #[serde(with = "duration_ms", rename = "waited_ms")]
        waited: Duration,
        /// What it said last.
        reason: String,
    },
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FailureBudget { failed, allowed, max_failures, selected } => write!(
                f,
                "{failed} target(s) failed, more than max_failures = {max_failures} allows ({allowed} of {selected})"
            ),
            Self::Capacity { healthy, required, min_healthy, waited } => write!(
                f,
                "not enough healthy capacity: {healthy} target(s) healthy, min_healthy = {min_healthy} requires {required}; waited {waited:?} (capacity_timeout) for capacity to return. Bring targets back or lower min_healthy"
            ),
            Self::ZoneCapacity { zone, healthy, required, zone_min_healthy, waited } => write!(
                f,
                "not enough healthy capacity in zone {zone}: {healthy} target(s) healthy there, zone_min_healthy = {zone_min_healthy} requires {required}; waited {waited:?} (capacity_timeout) for capacity to return. Bring targets of {zone} back or lower zone_min_healthy"
            ),
            Self::Balancer { operation, message } => write!(
                f,
                "the balancer's {operation} failed for good: {message}; check the balancer: the report lists every target this run left out of rotation or could not read"
            ),
            Self::LeaseLost { message } => write!(
                f,
                "the run's lease was lost ({message}): nothing new started and what was out was put back where the run could; the report names every target still out"
            ),
            Self::Hook { hook, when, batch, message } => write!(
                f,
                "hook {hook} failed {when} batch {batch}: {message}. Nothing more starts; fix what it checks, then run again"
            ),
            Self::Gate { gate, when, batch, waited, reason } => write!(
                f,
                "gate {gate} still said no {when} batch {batch} after {waited:?} (its timeout; on_gate_timeout = abort): {reason}. Look at what it watches, then run again: targets already done are maintained again only if selected"
            ),
        }
    }
}

/// What became of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TargetResult {
    /// Maintained, healthy and back in service.
    Done,
    /// Failed; `kept_out` says whether it is out of rotation now.
    Failed {
        /// The phase it failed in.
        phase: Stage,
        /// Why.
        reason: String,
        /// Out of rotation because of the run (or in a state the run could
        /// not read: see the target's `location`).
        kept_out: bool,
        /// How to put it back by hand, when kept out.
        restore_hint: Option<String>,
        /// With `on_failure = restore`: the target was put back, and what
        /// its health was after that.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        put_back: Option<PutBack>,
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
    /// Removed from the pool by someone else during the run; it fails
    /// alone and the rest go on. It does not count against `max_failures`,
    /// unless it had failed before it vanished (its notes say how).
    Vanished {
        /// The phase it was in.
        phase: Stage,
        /// What was seen.
        reason: String,
    },
    /// The run ended before this target's turn.
    NotStarted,
}

/// A failed target put back in rotation by `on_failure = restore`, and
/// the fresh health seen after it (bounded by `health_timeout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutBack {
    /// Seen healthy after the put-back.
    pub healthy: bool,
    /// What was seen.
    pub detail: String,
}

/// Time spent in each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PhaseTimings {
    /// From the drain call to drained.
    #[serde(with = "opt_duration_ms", rename = "drain_ms")]
    pub drain: Option<Duration>,
    /// The maintenance.
    #[serde(with = "opt_duration_ms", rename = "execute_ms")]
    pub execute: Option<Duration>,
    /// From the end of the maintenance to the probe passing.
    #[serde(default, with = "opt_duration_ms", rename = "probe_ms")]
    pub probe: Option<Duration>,
    /// From the enable call to healthy.
    #[serde(with = "opt_duration_ms", rename = "health_ms")]
    pub health: Option<Duration>,
    /// Warmup.
    #[serde(with = "opt_duration_ms", rename = "warmup_ms")]
    pub warmup: Option<Duration>,
}

/// One target's line in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetReport {
    /// The target.
    pub id: TargetId,
    /// What became of it.
    pub result: TargetResult,
    /// Where it is at the end of the run, as far as the run knows.
    pub location: Location,
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
    /// What else happened to it (a call that failed but was applied, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Each time the balancer put it back in rotation on its own while the
    /// run had it out (a reload forgets runtime state), and when the run
    /// took it out again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drain_lost: Vec<DrainLost>,
    /// What the balancer said of it when listed (`backends`,
    /// `other_backends`, `other_target_groups`, …): where it serves.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub meta: std::collections::BTreeMap<String, String>,
}

/// The balancer put a target back in rotation on its own while the run
/// had it out of rotation (times since the start of the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainLost {
    /// The last status that still showed it out.
    #[serde(with = "duration_ms", rename = "last_seen_out_ms")]
    pub last_seen_out: Duration,
    /// The status that showed it in service.
    #[serde(with = "duration_ms", rename = "seen_in_service_ms")]
    pub seen_in_service: Duration,
    /// When the drain sent again was applied (`None`: it failed).
    #[serde(with = "opt_duration_ms", rename = "back_out_ms")]
    pub back_out: Option<Duration>,
}

impl DrainLost {
    /// At most how long it was in rotation: from the last status that
    /// showed it out to the drain sent again.
    pub fn in_service_at_most(&self) -> Option<Duration> {
        self.back_out.map(|b| b.saturating_sub(self.last_seen_out))
    }
}

impl TargetReport {
    /// Out of rotation because of the run, or in a state the run could not
    /// read after one of its calls failed: either way an operator must look.
    pub fn is_kept_out(&self) -> bool {
        matches!(self.location, Location::KeptOut | Location::Unknown)
    }
}

/// The report of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// The run's id.
    pub run_id: String,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// The balancer's name.
    pub balancer: String,
    /// The executor's name.
    pub executor: String,
    /// The configuration it ran with.
    pub config: RolloutConfig,
    /// Wall time of the run.
    #[serde(with = "duration_ms", rename = "duration_ms")]
    pub duration: Duration,
    /// Batches started (groups of targets started together, with
    /// [`Pacing::Window`](crate::Pacing::Window)).
    pub batches: usize,
    /// One line per target of the selection (and per skipped one).
    pub targets: Vec<TargetReport>,
    /// Targets found out of rotation that this run did not take out (and
    /// no journal says it did): left as found, never enabled. Someone else
    /// took them out; check them.
    #[serde(default)]
    pub found_out: Vec<TargetId>,
    /// Balancer API calls made (retries included).
    pub balancer_calls: u64,
    /// Executor calls made (retries included).
    pub executor_calls: u64,
    /// Journal records of this run that could not be written (a full
    /// disk, a store that timed out or fenced the run). The journal then
    /// has a gap, so the run leaves it unfinished: `restore` or `resume`
    /// reconciles it with the balancer before a new run may start.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub journal_records_lost: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if
fn is_zero(n: &u64) -> bool {
    *n == 0
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

    /// The result of one target.
    pub fn target(&self, id: &TargetId) -> Option<&TargetReport> {
        self.targets.iter().find(|t| &t.id == id)
    }

    /// Completed with no failure and nothing kept out.
    pub fn is_success(&self) -> bool {
        self.outcome == Outcome::Completed
            && self.failed().next().is_none()
            && self.kept_out().next().is_none()
    }

    /// The report as pretty JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"report serialization: {e}\"}}"))
    }
}

/// A progress event: when, in which batch, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Wall-clock time (RFC 3339, UTC).
    pub at: String,
    /// Time since the run started.
    #[serde(with = "duration_ms", rename = "elapsed_ms")]
    pub elapsed: Duration,
    /// The batch concerned, when there is one.
    pub batch: Option<usize>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What an [`Event`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
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
    /// The balancer put a target back in rotation on its own while the run
    /// had it out (a reload forgets runtime state); it is drained again.
    DrainLost {
        /// The target.
        id: TargetId,
        /// Its phase then.
        stage: Stage,
    },
    /// A target is out of rotation and this run did not take it out: it is
    /// left as found (see `Report::found_out`).
    FoundOut {
        /// The target.
        id: TargetId,
    },
    /// Waiting for capacity (`min_healthy`).
    WaitingForCapacity {
        /// Healthy targets now.
        healthy: usize,
        /// Required.
        required: usize,
    },
    /// The run stops starting targets; those in progress finish.
    Stopping {
        /// Why.
        reason: AbortReason,
    },
    /// A gate answered (every answer, go or not).
    GateChecked {
        /// The gate's name.
        gate: String,
        /// Before or after the batch (the event's `batch`).
        when: GateWhen,
        /// It said go.
        go: bool,
        /// Why not, or what it saw.
        detail: Option<String>,
        /// Since the gates of this batch were first asked.
        #[serde(with = "duration_ms", rename = "waited_ms")]
        waited: Duration,
    },
    /// A gate said no: the rollout is held (nothing new is drained) until
    /// it says go or `timeout` has passed. Once per gate and batch.
    GateHolding {
        /// The gate's name.
        gate: String,
        /// Before or after the batch (the event's `batch`).
        when: GateWhen,
        /// Why.
        reason: String,
        /// How long it may hold the rollout.
        #[serde(with = "duration_ms", rename = "timeout_ms")]
        timeout: Duration,
    },
    /// A gate still said no at its timeout; `action` is what happens
    /// (the run stops, or goes on as if it had said go).
    GateTimedOut {
        /// The gate's name.
        gate: String,
        /// Before or after the batch (the event's `batch`).
        when: GateWhen,
        /// How long it held the rollout.
        #[serde(with = "duration_ms", rename = "waited_ms")]
        waited: Duration,
        /// `on_gate_timeout`.
        action: OnGateTimeout,
    },
    /// A hook ran before or after the batch (the event's `batch`); a hook
    /// that failed stops the run.
    HookRan {
        /// The hook's name.
        hook: String,
        /// Before or after the batch.
        when: GateWhen,
        /// It succeeded.
        ok: bool,
        /// Why not.
        detail: Option<String>,
    },
    /// The batch (the event's `batch`) is back: a soak time
    /// (`wait_between_batches`) before the next one starts.
    Soaking {
        /// How long.
        #[serde(with = "duration_ms", rename = "wait_ms")]
        wait: Duration,
    },
    /// The run ended.
    Finished {
        /// How.
        outcome: Outcome,
    },
}
