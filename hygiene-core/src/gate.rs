//! Gates: outside checks that decide whether the rollout may go on — the
//! monitoring says the service is fine, a soak test passed, nobody holds a
//! lock. A gate is asked before each batch starts and after each batch is
//! back (see [`GatePolicy`]); a gate that says no *holds* the rollout:
//! nothing new is drained, targets already in progress finish, and the
//! gate is asked again every `interval` until it says go or its `timeout`
//! has passed, when [`OnGateTimeout`] decides.
//!
//! Concrete gates (a command, an HTTP URL, a Prometheus query) live in the
//! `hygiene-hooks` crate; any type implementing [`Gate`] will do.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::target::TargetId;

/// When a gate is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateWhen {
    /// Before a batch starts (before its first drain).
    Before,
    /// After a batch is back: all of its targets finished, and after
    /// `wait_between_batches` when another batch follows.
    After,
}

impl std::fmt::Display for GateWhen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Before => "before",
            Self::After => "after",
        })
    }
}

/// What a gate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// The rollout may go on.
    Go,
    /// The rollout must wait; the text says why (for events, the journal
    /// and the operator).
    Hold(String),
}

/// What a gate is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GateCheck {
    /// Before or after a batch.
    pub when: GateWhen,
    /// The batch (0-based): the one about to start, or the one just back.
    pub batch: usize,
    /// The run's id.
    pub run_id: String,
    /// The batch's targets (after a batch); empty before one (its targets
    /// are chosen once the gates let it start).
    pub targets: Vec<TargetId>,
}

impl GateCheck {
    /// A check at `when` of `batch` in run `run_id`.
    pub fn new(when: GateWhen, batch: usize, run_id: impl Into<String>) -> Self {
        Self {
            when,
            batch,
            run_id: run_id.into(),
            targets: Vec::new(),
        }
    }

    /// With the batch's targets.
    pub fn with_targets(mut self, targets: Vec<TargetId>) -> Self {
        self.targets = targets;
        self
    }
}

/// An outside check the rollout waits on.
///
/// # Contract
/// - `check` asks once and does not wait for a change: the engine asks
///   again on the gate's own interval, each attempt bounded by the
///   rollout's `call_timeout`.
/// - `Ok(GateVerdict::Hold(why))` is a no. `Err(_)` means the gate could
///   not be asked (unreachable, a bad answer); the engine counts it as a
///   no and keeps its text: a monitoring system that is down never lets a
///   rollout go on.
/// - It changes nothing: asking twice is harmless.
#[async_trait]
pub trait Gate: Send + Sync + Debug + 'static {
    /// A short name for events, the journal and the report (`alerts`,
    /// `smoke-test`).
    fn name(&self) -> String;

    /// Asks the gate once.
    async fn check(&self, at: &GateCheck) -> Result<GateVerdict>;
}

macro_rules! forward_gate {
    ($($wrapper:ty),*) => {$(
        #[async_trait]
        impl<T: Gate + ?Sized> Gate for $wrapper {
            fn name(&self) -> String { (**self).name() }
            async fn check(&self, at: &GateCheck) -> Result<GateVerdict> { (**self).check(at).await }
        }
    )*};
}

forward_gate!(std::sync::Arc<T>, Box<T>);

/// What happens when a gate still says no at its `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnGateTimeout {
    /// Stop the run (the default): nothing new starts, targets in progress
    /// finish, and the report says which gate held it.
    #[default]
    Abort,
    /// Go on as if the gate had said go; the event and the journal say so.
    Proceed,
}

/// When and how often a gate is asked, and for how long a no may hold the
/// rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatePolicy {
    pub(crate) before: bool,
    pub(crate) after: bool,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl GatePolicy {
    /// Asked before and after each batch; a no is asked again every
    /// `interval` until `timeout` has passed since the first ask.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `interval` is zero (a gate would be
    /// asked in a loop) or `timeout` is shorter than `interval` (it could
    /// never be asked twice).
    pub fn new(interval: Duration, timeout: Duration) -> Result<Self> {
        if interval.is_zero() {
            return Err(Error::invalid_config(
                "gate.interval",
                "must be greater than zero: a gate that says no is asked again on this interval",
            ));
        }
        if timeout < interval {
            return Err(Error::invalid_config(
                "gate.timeout",
                format!(
                    "{timeout:?} is shorter than the interval {interval:?}: the gate could never be asked again; make the timeout at least the interval"
                ),
            ));
        }
        Ok(Self {
            before: true,
            after: true,
            interval,
            timeout,
        })
    }

    /// Asked only at `when` (before or after each batch).
    pub fn only(mut self, when: GateWhen) -> Self {
        self.before = when == GateWhen::Before;
        self.after = when == GateWhen::After;
        self
    }

    /// Whether the gate is asked at `when`.
    pub fn applies(&self, when: GateWhen) -> bool {
        match when {
            GateWhen::Before => self.before,
            GateWhen::After => self.after,
        }
    }

    /// How often a no is asked again.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long a no may hold the rollout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_refuses_a_zero_interval_and_a_timeout_below_it() {
        let s = Duration::from_secs;
        assert!(matches!(
            GatePolicy::new(Duration::ZERO, s(10)),
            Err(Error::InvalidConfig {
                field: "gate.interval",
                ..
            })
        ));
        assert!(matches!(
            GatePolicy::new(s(10), s(5)),
            Err(Error::InvalidConfig {
                field: "gate.timeout",
                ..
            })
        ));
        let p = GatePolicy::new(s(10), s(60))
            .expect("valid")
            .only(GateWhen::After);
        assert!(!p.applies(GateWhen::Before) && p.applies(GateWhen::After));
    }
}
