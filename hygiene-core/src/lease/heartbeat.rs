//! [`Heartbeat`]: renews a lease in the background.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{HeldLease, LeaseError};

/// Whether the lease is still held, and until when (this process's
/// monotonic clock, counted from when the last successful renewal was
/// sent: never later than the store's own reckoning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Held until `until`, unless renewed before.
    Held {
        /// When it runs out without another renewal.
        until: Instant,
    },
    /// Lost: taken over (a greater fence), released, or not renewed in
    /// time. Nothing new may start; the run only puts back.
    Lost {
        /// Why, for the report.
        reason: String,
        /// Another holder took it over: even the journal refuses this run.
        taken_over: bool,
    },
}

/// Renews a lease every third of its duration (etcd's keep-alive rate),
/// and after a failed renewal every tenth, until it is renewed or runs
/// out. Dropping it stops renewing (it does not release).
#[derive(Debug)]
pub struct Heartbeat {
    rx: watch::Receiver<LeaseState>,
    task: JoinHandle<()>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Heartbeat {
    /// Starts renewing `lease`, acquired (or last renewed) by a call sent
    /// at `since`. Needs a tokio runtime.
    pub fn start(lease: HeldLease, since: Instant) -> Self {
        let duration = lease.grant.duration;
        let (tx, rx) = watch::channel(LeaseState::Held {
            until: since + duration,
        });
        let task = tokio::spawn(renew_loop(lease, since, tx));
        Self { rx, task }
    }

    /// The state now.
    pub fn state(&self) -> LeaseState {
        self.rx.borrow().clone()
    }

    /// A receiver of every change of state.
    pub fn watch(&self) -> watch::Receiver<LeaseState> {
        self.rx.clone()
    }

    /// Stops renewing; the lease runs out (or is released) afterwards.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn renew_loop(lease: HeldLease, since: Instant, tx: watch::Sender<LeaseState>) {
    let duration = lease.grant.duration;
    let period = duration / 3;
    let retry = (duration / 10).max(Duration::from_millis(1));
    let mut until = since + duration;
    let mut next = since + period;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        if sent >= until {
            let _closed = tx.send(LeaseState::Lost {
                reason: format!(
                    "not renewed for a whole lease ({}) in {}",
                    crate::duration_text::format(duration),
                    lease.store.name()
                ),
                taken_over: false,
            });
            return;
        }
        let r = tokio::time::timeout(
            until.saturating_duration_since(sent),
            lease.store.renew(&lease.grant),
        )
        .await;
        match r {
            Ok(Ok(())) => {
                until = sent + duration;
                next = sent + period;
                debug!(pool = %lease.grant.pool, fence = lease.grant.fence.0, "lease renewed");
                let _closed = tx.send(LeaseState::Held { until });
            }
            Ok(Err(e @ LeaseError::Lost { .. })) => {
                warn!(error = %e, "lease lost");
                let _closed = tx.send(LeaseState::Lost {
                    reason: e.to_string(),
                    taken_over: true,
                });
                return;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "lease not renewed; trying again");
                next = Instant::now() + retry;
            }
            Err(_) => {
                warn!(store = %lease.store.name(), "lease renewal timed out; trying again");
                next = Instant::now();
            }
        }
    }
}
