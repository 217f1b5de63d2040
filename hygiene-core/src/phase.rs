//! The per-target phase machine: a pure function from a phase and an
//! observation to the next phase. The async engine only drives it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::OnDrainTimeout;
use crate::target::{TargetState, TargetStatus};

/// The name of a phase (without payload), for events and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Not started.
    Pending,
    /// Preflight by the executor.
    Preflight,
    /// Drain requested; waiting for in-flight work to end.
    Draining,
    /// No work left; maintenance may start.
    Drained,
    /// Maintenance running.
    Executing,
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
    /// Skipped (not in service at the start, not ready at preflight, …).
    Skipped,
    /// Put back without maintenance because the run was cancelled.
    Restored,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Pending => "pending",
            Self::Preflight => "preflight",
            Self::Draining => "draining",
            Self::Drained => "drained",
            Self::Executing => "executing",
            Self::Enabling => "enabling",
            Self::Healthy => "healthy",
            Self::Warm => "warm",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Restored => "restored",
        };
        f.write_str(s)
    }
}

/// A target's phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not started.
    Pending,
    /// Waiting for in-flight work to end.
    Draining,
    /// Drained (`forced`: the drain timed out and the policy said proceed).
    Drained {
        /// Drain timed out and was cut short.
        forced: bool,
    },
    /// Maintenance running.
    Executing,
    /// Enabled; waiting for a fresh healthy observation.
    Enabling,
    /// Seen healthy after the enable.
    Healthy,
    /// Warmup over.
    Warm,
    /// Finished successfully.
    Done,
    /// Failed in `at`.
    Failed {
        /// The phase it failed in.
        at: Stage,
        /// Why.
        reason: String,
    },
    /// Not maintained.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Put back without maintenance (cancellation).
    Restored,
}

impl Phase {
    /// The phase's name.
    pub fn stage(&self) -> Stage {
        match self {
            Self::Pending => Stage::Pending,
            Self::Draining => Stage::Draining,
            Self::Drained { .. } => Stage::Drained,
            Self::Executing => Stage::Executing,
            Self::Enabling => Stage::Enabling,
            Self::Healthy => Stage::Healthy,
            Self::Warm => Stage::Warm,
            Self::Done => Stage::Done,
            Self::Failed { .. } => Stage::Failed,
            Self::Skipped { .. } => Stage::Skipped,
            Self::Restored => Stage::Restored,
        }
    }

    /// No further transition is possible.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed { .. } | Self::Skipped { .. } | Self::Restored
        )
    }
}

/// Something the engine saw or did that may move a target on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The target was not in service when the run looked at it.
    NotInService(String),
    /// The executor cannot reach the target.
    PreflightFailed(String),
    /// The drain call succeeded.
    DrainSent,
    /// A status seen while draining, `waited` after the drain call.
    DrainStatus {
        /// The status.
        status: TargetStatus,
        /// Time since the drain call.
        waited: Duration,
    },
    /// The maintenance started.
    ExecStarted,
    /// The maintenance ended.
    ExecFinished(Result<(), String>),
    /// A health observation made after the enable (and after the probe
    /// passed, if there is one), `waited` after the enable call.
    Health {
        /// Whether it counts as healthy (in service, healthy, probe passed).
        healthy: bool,
        /// What was seen, for the failure message.
        detail: String,
        /// Time since the enable call.
        waited: Duration,
    },
    /// Warmup ended.
    WarmedUp,
    /// The engine finished the target.
    Finished,
    /// A balancer or executor call failed for good.
    Error(String),
    /// The run was cancelled.
    Cancelled,
}

/// Settings the machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPolicy {
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// What to do at the drain timeout.
    pub on_drain_timeout: OnDrainTimeout,
    /// Health timeout.
    pub health_timeout: Duration,
}

/// The next phase. Observations that do not apply to a phase leave it as
/// it is (terminal phases never move).
pub fn step(phase: &Phase, obs: &Observation, policy: &StepPolicy) -> Phase {
    use Observation as O;
    use Phase as P;
    let fail = |at: Stage, reason: String| P::Failed { at, reason };
    match (phase, obs) {
        (p, _) if p.is_terminal() => p.clone(),
        (P::Pending, O::NotInService(why)) => P::Skipped {
            reason: why.clone(),
        },
        (P::Pending, O::PreflightFailed(why)) => fail(Stage::Preflight, why.clone()),
        (P::Pending, O::DrainSent) => P::Draining,
        (P::Pending, O::Cancelled) => phase.clone(),
        (P::Draining, O::DrainStatus { status, waited }) => {
            if status.is_drained() {
                P::Drained { forced: false }
            } else if *waited >= policy.drain_timeout && status.state == TargetState::InService {
                // The drain never took effect (a wrong port on ELBv2, an
                // operator re-enabling it): never run maintenance on a
                // target that is still taking traffic, whatever the policy.
                fail(
                    Stage::Draining,
                    format!(
                        "still in service {:?} after the drain call: the drain did not take effect",
                        policy.drain_timeout
                    ),
                )
            } else if *waited >= policy.drain_timeout {
                let left = status.connections.map_or_else(
                    || "unknown in-flight work".to_owned(),
                    |n| format!("{n} connection(s)"),
                );
                match policy.on_drain_timeout {
                    OnDrainTimeout::Proceed => P::Drained { forced: true },
                    OnDrainTimeout::Fail => fail(
                        Stage::Draining,
                        format!(
                            "still {left} after the drain timeout of {:?}",
                            policy.drain_timeout
                        ),
                    ),
                }
            } else {
                P::Draining
            }
        }
        (P::Draining | P::Drained { .. }, O::Cancelled) => P::Restored,
        (P::Drained { .. }, O::ExecStarted) => P::Executing,
        (P::Executing, O::ExecFinished(Ok(()))) => P::Enabling,
        (P::Executing, O::ExecFinished(Err(why))) => fail(Stage::Executing, why.clone()),
        (P::Enabling, O::Health { healthy: true, .. }) => P::Healthy,
        (
            P::Enabling,
            O::Health {
                healthy: false,
                detail,
                waited,
            },
        ) if *waited >= policy.health_timeout => fail(
            Stage::Enabling,
            format!(
                "not healthy {:?} after the enable: {detail}",
                policy.health_timeout
            ),
        ),
        (P::Healthy, O::WarmedUp) => P::Warm,
        (P::Healthy | P::Warm, O::Finished) => P::Done,
        (_, O::Error(why)) => fail(phase.stage(), why.clone()),
        _ => phase.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Health;

    const POLICY: StepPolicy = StepPolicy {
        drain_timeout: Duration::from_secs(10),
        on_drain_timeout: OnDrainTimeout::Fail,
        health_timeout: Duration::from_secs(20),
    };

    fn draining(conns: Option<u64>, secs: u64) -> Observation {
        Observation::DrainStatus {
            status: TargetStatus::new(TargetState::Draining, Health::Healthy, conns),
            waited: Duration::from_secs(secs),
        }
    }

    #[test]
    fn happy_path() {
        let mut p = Phase::Pending;
        for (obs, want) in [
            (Observation::DrainSent, Stage::Draining),
            (draining(Some(3), 1), Stage::Draining),
            (draining(Some(0), 2), Stage::Drained),
            (Observation::ExecStarted, Stage::Executing),
            (Observation::ExecFinished(Ok(())), Stage::Enabling),
            (
                Observation::Health {
                    healthy: false,
                    detail: "unknown".into(),
                    waited: Duration::from_secs(1),
                },
                Stage::Enabling,
            ),
            (
                Observation::Health {
                    healthy: true,
                    detail: String::new(),
                    waited: Duration::from_secs(2),
                },
                Stage::Healthy,
            ),
            (Observation::WarmedUp, Stage::Warm),
            (Observation::Finished, Stage::Done),
        ] {
            p = step(&p, &obs, &POLICY);
            assert_eq!(p.stage(), want, "after {obs:?}");
        }
    }

    #[test]
    fn unknown_connections_never_count_as_drained() {
        let p = step(&Phase::Draining, &draining(None, 1), &POLICY);
        assert_eq!(p, Phase::Draining);
        let out = Observation::DrainStatus {
            status: TargetStatus::new(TargetState::OutOfService, Health::Unknown, None),
            waited: Duration::from_secs(1),
        };
        assert_eq!(
            step(&Phase::Draining, &out, &POLICY),
            Phase::Drained { forced: false }
        );
    }

    #[test]
    fn drain_timeout_fail_and_proceed() {
        let p = step(&Phase::Draining, &draining(Some(2), 10), &POLICY);
        match p {
            Phase::Failed {
                at: Stage::Draining,
                reason,
            } => assert!(reason.contains("2 connection"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let proceed = StepPolicy {
            on_drain_timeout: OnDrainTimeout::Proceed,
            ..POLICY
        };
        assert_eq!(
            step(&Phase::Draining, &draining(Some(2), 10), &proceed),
            Phase::Drained { forced: true }
        );
        assert_eq!(
            step(&Phase::Draining, &draining(Some(2), 9), &proceed),
            Phase::Draining
        );
    }

    #[test]
    fn a_drain_that_never_took_effect_fails_even_with_proceed() {
        let obs = Observation::DrainStatus {
            status: TargetStatus::new(TargetState::InService, Health::Healthy, Some(4)),
            waited: Duration::from_secs(10),
        };
        let proceed = StepPolicy {
            on_drain_timeout: OnDrainTimeout::Proceed,
            ..POLICY
        };
        match step(&Phase::Draining, &obs, &proceed) {
            Phase::Failed {
                at: Stage::Draining,
                reason,
            } => assert!(reason.contains("did not take effect"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn health_timeout_fails() {
        let obs = Observation::Health {
            healthy: false,
            detail: "DOWN".into(),
            waited: Duration::from_secs(20),
        };
        match step(&Phase::Enabling, &obs, &POLICY) {
            Phase::Failed {
                at: Stage::Enabling,
                reason,
            } => assert!(reason.contains("DOWN")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_failure_fails() {
        let p = step(
            &Phase::Executing,
            &Observation::ExecFinished(Err("exit 3".into())),
            &POLICY,
        );
        assert_eq!(
            p,
            Phase::Failed {
                at: Stage::Executing,
                reason: "exit 3".into()
            }
        );
    }

    #[test]
    fn skip_and_preflight() {
        assert_eq!(
            step(
                &Phase::Pending,
                &Observation::NotInService("maint".into()),
                &POLICY
            )
            .stage(),
            Stage::Skipped
        );
        assert_eq!(
            step(
                &Phase::Pending,
                &Observation::PreflightFailed("offline".into()),
                &POLICY
            ),
            Phase::Failed {
                at: Stage::Preflight,
                reason: "offline".into()
            }
        );
    }

    #[test]
    fn cancellation_per_phase() {
        assert_eq!(
            step(&Phase::Pending, &Observation::Cancelled, &POLICY),
            Phase::Pending
        );
        assert_eq!(
            step(&Phase::Draining, &Observation::Cancelled, &POLICY),
            Phase::Restored
        );
        assert_eq!(
            step(
                &Phase::Drained { forced: false },
                &Observation::Cancelled,
                &POLICY
            ),
            Phase::Restored
        );
        // Running maintenance finishes and goes through enable + health.
        assert_eq!(
            step(&Phase::Executing, &Observation::Cancelled, &POLICY),
            Phase::Executing
        );
        assert_eq!(
            step(&Phase::Enabling, &Observation::Cancelled, &POLICY),
            Phase::Enabling
        );
    }

    #[test]
    fn execute_only_from_drained() {
        for p in [Phase::Pending, Phase::Draining, Phase::Enabling] {
            assert_eq!(step(&p, &Observation::ExecStarted, &POLICY), p);
        }
    }

    #[test]
    fn terminal_phases_never_move() {
        let failed = Phase::Failed {
            at: Stage::Executing,
            reason: "x".into(),
        };
        for obs in [
            Observation::DrainSent,
            Observation::Finished,
            Observation::ExecFinished(Ok(())),
            Observation::Error("e".into()),
        ] {
            assert_eq!(step(&failed, &obs, &POLICY), failed);
            assert_eq!(step(&Phase::Done, &obs, &POLICY), Phase::Done);
        }
    }

    #[test]
    fn errors_fail_in_the_current_stage() {
        assert_eq!(
            step(&Phase::Draining, &Observation::Error("api".into()), &POLICY),
            Phase::Failed {
                at: Stage::Draining,
                reason: "api".into()
            }
        );
    }
}
