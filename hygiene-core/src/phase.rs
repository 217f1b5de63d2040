//! Per-target stages and locations, and the pure rules that judge a
//! target's drain and health from one status observation. The rollout
//! machine applies them; nothing here does I/O.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::OnDrainTimeout;
use crate::target::{Capabilities, Health, TargetState, TargetStatus};

/// The name of a target's phase, for events and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stage {
    /// Not started.
    Pending,
    /// Preflight by the executor, and the status re-read before the drain.
    Preflight,
    /// Drain requested; waiting for in-flight work to end.
    Draining,
    /// No work left; maintenance may start.
    Drained,
    /// Maintenance running.
    Executing,
    /// The probe checks the target while it is still out of rotation.
    Probing,
    /// Enable requested; waiting for a fresh healthy observation.
    Enabling,
    /// Seen healthy after the enable.
    Healthy,
    /// Warmup over.
    Warm,
    /// Finished successfully.
    Done,
    /// Failed.
    Failed,
    /// Skipped (not in service at the start or right before its drain).
    Skipped,
    /// Put back without maintenance because the run was cancelled.
    Restored,
    /// Removed from the pool by someone else during the run.
    Vanished,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Pending => "pending",
            Self::Preflight => "preflight",
            Self::Draining => "draining",
            Self::Drained => "drained",
            Self::Executing => "executing",
            Self::Probing => "probing",
            Self::Enabling => "enabling",
            Self::Healthy => "healthy",
            Self::Warm => "warm",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Restored => "restored",
            Self::Vanished => "vanished",
        };
        f.write_str(s)
    }
}

/// Where a target is, as far as the run knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Location {
    /// In rotation.
    InService,
    /// Out of rotation because of the run, on its way back.
    OutByRun,
    /// Out of rotation because of the run, and left out (a failure).
    KeptOut,
    /// A call that changes it failed and its state could not be read back:
    /// an operator must look.
    Unknown,
    /// Out of rotation before the run; the run never touched it.
    OutBefore,
    /// No longer in the pool.
    Gone,
}

/// Settings the rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// What to do at the drain timeout.
    pub on_drain_timeout: OnDrainTimeout,
    /// Health timeout.
    pub health_timeout: Duration,
}

/// What one status observation says of a draining target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainVerdict {
    /// Keep waiting.
    Wait,
    /// Drained; `forced`: the drain timed out and the policy said proceed.
    Drained {
        /// Cut short by the drain timeout.
        forced: bool,
    },
    /// Failed: the drain did not take effect, or timed out with `Fail`.
    Failed {
        /// Why.
        reason: String,
        /// The target is still in service (the drain never took effect).
        in_service: bool,
    },
}

/// Judges a draining target from a status seen `waited` after the drain.
///
/// Drained means out of service, or draining with no connection left; a
/// draining target whose connections are unknown is never drained before
/// the balancer says `OutOfService`. A target still in service at the
/// timeout fails whatever the policy: no maintenance runs on a target that
/// is taking traffic.
pub fn judge_drain(status: &TargetStatus, waited: Duration, rules: &Rules) -> DrainVerdict {
    if status.is_drained() {
        return DrainVerdict::Drained { forced: false };
    }
    if waited < rules.drain_timeout {
        return DrainVerdict::Wait;
    }
    if status.state == TargetState::InService {
        return DrainVerdict::Failed {
            reason: format!(
                "still in service {:?} after the drain call: the drain did not take effect",
                rules.drain_timeout
            ),
            in_service: true,
        };
    }
    match rules.on_drain_timeout {
        OnDrainTimeout::Proceed => DrainVerdict::Drained { forced: true },
        OnDrainTimeout::Fail => {
            let left = status.connections.map_or_else(
                || "unknown in-flight work".to_owned(),
                |n| format!("{n} connection(s)"),
            );
            DrainVerdict::Failed {
                reason: format!(
                    "still {left} after the drain timeout of {:?}",
                    rules.drain_timeout
                ),
                in_service: false,
            }
        }
    }
}

/// What one status observation says of a target after its enable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthVerdict {
    /// Seen healthy (the observation is fresh: made after the enable).
    Healthy,
    /// Not yet; keep polling.
    Wait,
    /// Not healthy `health_timeout` after the enable.
    Failed(String),
}

/// Judges a target from a status seen `waited` after its enable.
pub fn judge_health(
    status: &TargetStatus,
    caps: &Capabilities,
    waited: Duration,
    rules: &Rules,
) -> HealthVerdict {
    if status.is_serving_healthy_with(caps) {
        return HealthVerdict::Healthy;
    }
    if waited < rules.health_timeout {
        return HealthVerdict::Wait;
    }
    let seen = match status.health {
        Health::Unknown => format!(
            "balancer reports {:?} with health Unknown (no health check has passed since the enable; is a check configured for it?)",
            status.state
        ),
        h => format!("balancer reports {:?}, health {h:?}", status.state),
    };
    let seen = match &status.reason {
        Some(why) => format!("{seen}: {why}"),
        None => seen,
    };
    HealthVerdict::Failed(format!(
        "not healthy {:?} after the enable: {seen}",
        rules.health_timeout
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        drain_timeout: Duration::from_secs(10),
        on_drain_timeout: OnDrainTimeout::Fail,
        health_timeout: Duration::from_secs(20),
    };

    fn st(state: TargetState, health: Health, conns: Option<u64>) -> TargetStatus {
        TargetStatus::new(state, health, conns)
    }

    #[test]
    fn stage_names_are_the_serde_names() {
        for stage in [
            Stage::Pending,
            Stage::Preflight,
            Stage::Draining,
            Stage::Drained,
            Stage::Executing,
            Stage::Probing,
            Stage::Enabling,
            Stage::Healthy,
            Stage::Warm,
            Stage::Done,
            Stage::Failed,
            Stage::Skipped,
            Stage::Restored,
            Stage::Vanished,
        ] {
            let json = serde_json::to_string(&stage).expect("json");
            assert_eq!(json.trim_matches('"'), stage.to_string());
        }
    }

    #[test]
    fn drain_rules() {
        use TargetState::*;
        let s = |secs| Duration::from_secs(secs);
        assert_eq!(
            judge_drain(&st(Draining, Health::Healthy, Some(3)), s(1), &RULES),
            DrainVerdict::Wait
        );
        assert_eq!(
            judge_drain(&st(Draining, Health::Healthy, Some(0)), s(1), &RULES),
            DrainVerdict::Drained { forced: false }
        );
        assert_eq!(
            judge_drain(&st(Draining, Health::Healthy, None), s(9), &RULES),
            DrainVerdict::Wait,
            "unknown connections never count as drained"
        );
        assert_eq!(
            judge_drain(&st(OutOfService, Health::Unknown, None), s(1), &RULES),
            DrainVerdict::Drained { forced: false }
        );
        match judge_drain(&st(Draining, Health::Healthy, Some(2)), s(10), &RULES) {
            DrainVerdict::Failed {
                reason,
                in_service: false,
            } => {
                assert!(reason.contains("2 connection"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let proceed = Rules {
            on_drain_timeout: OnDrainTimeout::Proceed,
            ..RULES
        };
        assert_eq!(
            judge_drain(&st(Draining, Health::Healthy, Some(2)), s(10), &proceed),
            DrainVerdict::Drained { forced: true }
        );
        assert_eq!(
            judge_drain(&st(Draining, Health::Healthy, Some(2)), s(9), &proceed),
            DrainVerdict::Wait
        );
        match judge_drain(&st(InService, Health::Healthy, Some(4)), s(10), &proceed) {
            DrainVerdict::Failed {
                reason,
                in_service: true,
            } => {
                assert!(reason.contains("did not take effect"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn health_rules() {
        use TargetState::*;
        let caps = Capabilities::none().with_health_checks(true);
        let s = |secs| Duration::from_secs(secs);
        assert_eq!(
            judge_health(&st(InService, Health::Healthy, None), &caps, s(0), &RULES),
            HealthVerdict::Healthy
        );
        assert_eq!(
            judge_health(&st(InService, Health::Unknown, None), &caps, s(19), &RULES),
            HealthVerdict::Wait
        );
        let down = st(InService, Health::Unhealthy, None).with_reason("Target.Timeout");
        match judge_health(&down, &caps, s(20), &RULES) {
            HealthVerdict::Failed(why) => {
                assert!(
                    why.contains("Unhealthy") && why.contains("Target.Timeout"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        let unchecked = Capabilities::none();
        assert_eq!(
            judge_health(
                &st(InService, Health::Unknown, None),
                &unchecked,
                s(0),
                &RULES
            ),
            HealthVerdict::Healthy,
            "without health checks, in service is enough"
        );
    }
}
