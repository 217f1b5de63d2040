//! Delivers a run's notifications ([`crate::Notifier`]) from a task of its
//! own: in order, each retried on the run's retry policy, each attempt
//! bounded by `call_timeout`. A notifier never holds the run: one that
//! fails is logged and the next notification goes on; once the run is
//! over, the last notification (the report) is waited for only so long.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::balancer::LoadBalancer;
use crate::config::RetryPolicy;
use crate::error::Error;
use crate::notify::{Notification, Notifier};
use crate::report::{Event, EventKind, Report};
use crate::retry::with_retries;

/// The delivery task of one run.
#[derive(Debug)]
pub(crate) struct Delivery {
    last: oneshot::Sender<Notification>,
    task: JoinHandle<()>,
    bound: Duration,
}

impl Delivery {
    /// Starts delivering the notifications of `events` (subscribed before
    /// the run's first event) to every notifier.
    pub(crate) fn start(
        notifiers: Vec<Arc<dyn Notifier>>,
        mut events: mpsc::UnboundedReceiver<Event>,
        run_id: String,
        lb: Arc<dyn LoadBalancer>,
        retry: RetryPolicy,
        attempt: Duration,
    ) -> Self {
        let (last, last_rx) = oneshot::channel();
        let balancer = lb.name();
        let task = tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if matches!(e.kind, EventKind::Finished { .. }) {
                    break;
                }
                if let Some(n) =
                    Notification::of_event(&run_id, &balancer, &e, |id| lb.enable_hint(id))
                {
                    send(&notifiers, &n, &retry, attempt).await;
                }
            }
            if let Ok(n) = last_rx.await {
                send(&notifiers, &n, &retry, attempt).await;
            }
        });
        // The report's notification: every retry of it, and its attempts.
        let tries = u32::try_from(retry.max_retries)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let bound = retry.max_total + attempt.saturating_mul(tries);
        Self { last, task, bound }
    }

    /// Sends the report's notification and waits for the delivery to end,
    /// at most the time its own retries take.
    pub(crate) async fn finish(self, report: &Report) {
        // The task only ends early when it panicked: nothing to send to.
        let _sent = self.last.send(Notification::of_report(report));
        let mut task = self.task;
        match tokio::time::timeout(self.bound, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the notification task failed"),
            Err(_) => {
                task.abort();
                warn!(
                    bound_ms = self.bound.as_millis() as u64,
                    "notifications not delivered in time: given up (the run is over; see the report)"
                );
            }
        }
    }
}

async fn send(
    notifiers: &[Arc<dyn Notifier>],
    n: &Notification,
    retry: &RetryPolicy,
    attempt: Duration,
) {
    for notifier in notifiers {
        let r = with_retries(
            retry,
            || async {
                match tokio::time::timeout(attempt, notifier.notify(n)).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout {
                        operation: format!("notification to {}", notifier.name()),
                        after: attempt,
                    }),
                }
            },
            |e, delay| {
                warn!(notifier = %notifier.name(), error = %e, delay_ms = delay.as_millis() as u64, "notification failed; retrying");
            },
        )
        .await;
        match r {
            Ok(()) => debug!(notifier = %notifier.name(), "notified"),
            // Never stops the run: the report says everything the
            // notification would have.
            Err(e) => {
                warn!(notifier = %notifier.name(), error = %e, "notification not delivered; the run goes on")
            }
        }
    }
}
