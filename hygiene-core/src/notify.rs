//! Notifications: the team hears of a rollout when it starts, when a target
//! fails, when a gate holds it, and when it ends — with the report's
//! summary and the way back for every target left out of rotation.
//!
//! A [`Notifier`] delivers one [`Notification`]; the engine sends them in
//! order from a task of their own, retries each one (`backon`, the run's
//! retry policy, each attempt bounded by `call_timeout`) and never lets a
//! notifier stop, slow or fail a rollout: a notification that cannot be
//! delivered is logged and dropped. The webhook notifier lives in the
//! `hygiene-hooks` crate.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gate::GateWhen;
use crate::phase::Stage;
use crate::report::{Event, EventKind, Outcome, Report, TargetResult};
use crate::target::TargetId;

/// Delivers notifications somewhere a team looks.
///
/// # Contract
/// `notify` delivers once; an `Err` is retried by the engine when
/// [`Error::is_retryable`](crate::Error::is_retryable) says so. It must not
/// wait on the rollout.
#[async_trait]
pub trait Notifier: Send + Sync + Debug + 'static {
    /// A short name for logs (`webhook https://hooks.example/…`), with no
    /// secret in it.
    fn name(&self) -> String;

    /// Delivers one notification.
    async fn notify(&self, notification: &Notification) -> Result<()>;
}

macro_rules! forward_notifier {
    ($($wrapper:ty),*) => {$(
        #[async_trait]
        impl<T: Notifier + ?Sized> Notifier for $wrapper {
            fn name(&self) -> String { (**self).name() }
            async fn notify(&self, n: &Notification) -> Result<()> { (**self).notify(n).await }
        }
    )*};
}

forward_notifier!(std::sync::Arc<T>, Box<T>);

/// Counts of the report's targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Maintained and back.
    pub done: usize,
    /// Failed (kept out or not).
    pub failed: usize,
    /// Out of rotation because of the run.
    pub kept_out: usize,
    /// Skipped (found out of rotation, …).
    pub skipped: usize,
    /// Not started (the run ended first).
    pub not_started: usize,
}

/// A target left out of rotation, and the way back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptOut {
    /// The target.
    pub id: TargetId,
    /// Why it is out.
    pub reason: String,
    /// How to put it back by hand.
    pub restore_hint: Option<String>,
}

/// What a notification says; `text` is one line for a person (the Slack
/// body), the rest is for programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Notification {
    /// The run starts.
    Started {
        /// The run's id.
        run_id: String,
        /// The balancer.
        balancer: String,
        /// Targets selected.
        selected: usize,
        /// Targets in the pool.
        pool: usize,
    },
    /// A target failed.
    TargetFailed {
        /// The run's id.
        run_id: String,
        /// The target.
        id: TargetId,
        /// Why.
        reason: String,
        /// How to put it back by hand if the run leaves it out (the final
        /// notification says which ones it did).
        restore_hint: String,
    },
    /// A gate says no: the rollout is held.
    GateHeld {
        /// The run's id.
        run_id: String,
        /// The gate.
        gate: String,
        /// Before or after the batch.
        when: GateWhen,
        /// The batch.
        batch: usize,
        /// What it said.
        reason: String,
        /// How long it may hold the rollout.
        #[serde(with = "crate::report::duration_ms", rename = "timeout_ms")]
        timeout: Duration,
    },
    /// The run ended.
    Finished {
        /// The run's id.
        run_id: String,
        /// How it ended.
        outcome: Outcome,
        /// Counts of the targets.
        summary: Summary,
        /// Every target out of rotation because of the run, with the way
        /// back.
        kept_out: Vec<KeptOut>,
    },
}

impl Notification {
    /// The notification of an event, when it deserves one.
    pub fn of_event(
        run_id: &str,
        balancer: &str,
        event: &Event,
        restore_hint: impl Fn(&TargetId) -> String,
    ) -> Option<Self> {
        let run_id = run_id.to_owned();
        match &event.kind {
            EventKind::Started { selected, pool } => Some(Self::Started {
                run_id,
                balancer: balancer.to_owned(),
                selected: *selected,
                pool: *pool,
            }),
            EventKind::Phase {
                id,
                stage: Stage::Failed,
                detail,
            } => Some(Self::TargetFailed {
                run_id,
                id: id.clone(),
                reason: detail.clone().unwrap_or_default(),
                restore_hint: restore_hint(id),
            }),
            EventKind::GateHolding {
                gate,
                when,
                reason,
                timeout,
            } => Some(Self::GateHeld {
                run_id,
                gate: gate.clone(),
                when: *when,
                batch: event.batch.unwrap_or_default(),
                reason: reason.clone(),
                timeout: *timeout,
            }),
            _ => None,
        }
    }

    /// The final notification of a report.
    pub fn of_report(report: &Report) -> Self {
        let mut summary = Summary::default();
        for t in &report.targets {
            match &t.result {
                TargetResult::Done => summary.done += 1,
                TargetResult::Failed { .. } => summary.failed += 1,
                TargetResult::Skipped { .. }
                | TargetResult::Restored { .. }
                | TargetResult::Vanished { .. } => summary.skipped += 1,
                TargetResult::NotStarted => summary.not_started += 1,
            }
        }
        let kept_out: Vec<KeptOut> = report
            .kept_out()
            .map(|t| {
                let (reason, restore_hint) = match &t.result {
                    TargetResult::Failed {
                        reason,
                        restore_hint,
                        ..
                    } => (reason.clone(), restore_hint.clone()),
                    _ => (format!("{:?}", t.location), None),
                };
                KeptOut {
                    id: t.id.clone(),
                    reason,
                    restore_hint,
                }
            })
            .collect();
        summary.kept_out = kept_out.len();
        Self::Finished {
            run_id: report.run_id.clone(),
            outcome: report.outcome.clone(),
            summary,
            kept_out,
        }
    }

    /// One line (a few, for targets kept out) for a person.
    pub fn text(&self) -> String {
        match self {
            Self::Started {
                run_id,
                balancer,
                selected,
                pool,
            } => format!(
                "hygiene: rollout {run_id} starts on {balancer}: {selected} of {pool} target(s)"
            ),
            Self::TargetFailed {
                run_id,
                id,
                reason,
                restore_hint,
            } => format!(
                "hygiene: rollout {run_id}: target {id} failed: {reason} (if it stays out, the way back: {restore_hint})"
            ),
            Self::GateHeld {
                run_id,
                gate,
                when,
                batch,
                reason,
                timeout,
            } => format!(
                "hygiene: rollout {run_id} is held by gate {gate} {when} batch {batch}: {reason} (asked again until {timeout:?} have passed)"
            ),
            Self::Finished {
                run_id,
                outcome,
                summary: s,
                kept_out,
            } => {
                let how = match outcome {
                    Outcome::Completed => "completed".to_owned(),
                    Outcome::Aborted { reason } => format!("aborted: {reason}"),
                    Outcome::Cancelled => "cancelled".to_owned(),
                };
                let mut text = format!(
                    "hygiene: rollout {run_id} {how}. {} done, {} failed, {} kept out, {} skipped, {} not started",
                    s.done, s.failed, s.kept_out, s.skipped, s.not_started
                );
                for k in kept_out {
                    text.push_str(&format!(
                        "\n- {} kept out of rotation: {}; the way back: {}",
                        k.id,
                        k.reason,
                        k.restore_hint.as_deref().unwrap_or("see the report")
                    ));
                }
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_phase_becomes_a_notification_with_the_way_back() {
        let id = TargetId::new("web/s1").expect("id");
        let e = Event {
            at: String::new(),
            elapsed: Duration::ZERO,
            batch: Some(0),
            kind: EventKind::Phase {
                id: id.clone(),
                stage: Stage::Failed,
                detail: Some("exit 1".into()),
            },
        };
        let n = Notification::of_event("r1", "haproxy", &e, |i| format!("hygiene enable {i}"))
            .expect("notified");
        assert!(n.text().contains("web/s1 failed: exit 1"));
        assert!(n.text().contains("hygiene enable web/s1"));
        let healthy = Event {
            kind: EventKind::Phase {
                id,
                stage: Stage::Healthy,
                detail: None,
            },
            ..e
        };
        assert!(Notification::of_event("r1", "haproxy", &healthy, |_| String::new()).is_none());
    }
}
