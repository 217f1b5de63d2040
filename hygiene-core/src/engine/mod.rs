//! The rolling engine: a pure rollout machine ([`machine`]), a pure batch
//! planner ([`planner`]) and a thin async driver ([`driver`]). See
//! [`RolloutConfig`] for the semantics of each setting.

mod driver;
mod machine;
mod planner;
#[cfg(test)]
mod regressions;
#[cfg(test)]
mod sim;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::balancer::LoadBalancer;
use crate::config::RolloutConfig;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::probe::Probe;
use crate::report::{Event, Report};

use driver::{EventHub, Parts};
use machine::Machine;

/// A rollout: a balancer, an executor, an optional probe and a configuration.
///
/// Per target: preflight, re-read its status, drain, wait until drained,
/// run the maintenance, probe it directly while it is still out of
/// rotation (with [`with_probe`](Self::with_probe)), enable it, wait for a
/// fresh healthy observation, warm up. Every balancer call, preflight and
/// probe has a time limit (`call_timeout`) and is retried on retryable
/// errors; the maintenance has its own limit (`execute_timeout`).
///
/// ```
/// # tokio_test_block_on(async {
/// use hygiene_core::testing::{InMemoryBalancer, ScriptedExecutor};
/// use hygiene_core::{Rollout, RolloutConfig};
/// let lb = InMemoryBalancer::with_targets(["a", "b", "c"])?;
/// let report = Rollout::new(lb.clone(), ScriptedExecutor::new(), RolloutConfig::builder().build()?)
///     .run()
///     .await?;
/// assert!(report.is_success());
/// # Ok::<(), hygiene_core::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct Rollout {
    lb: Arc<dyn LoadBalancer>,
    exec: Arc<dyn Executor>,
    probe: Option<Arc<dyn Probe>>,
    config: RolloutConfig,
    cancel: CancellationToken,
    hub: EventHub,
}

impl Rollout {
    /// A rollout of `config` over `lb`, with `exec` doing the maintenance.
    pub fn new(lb: impl LoadBalancer, exec: impl Executor, config: RolloutConfig) -> Self {
        Self {
            lb: Arc::new(lb),
            exec: Arc::new(exec),
            probe: None,
            config,
            cancel: CancellationToken::new(),
            hub: EventHub::default(),
        }
    }

    /// Checks each target directly after its maintenance, while it is still
    /// out of rotation; the probe is tried again every poll interval until
    /// it passes or `health_timeout` has passed since the maintenance
    /// ended. A target whose probe never passes is never put back in
    /// rotation (whatever `on_failure` says) and is reported with the
    /// probe's words.
    pub fn with_probe(mut self, probe: impl Probe) -> Self {
        self.probe = Some(Arc::new(probe));
        self
    }

    /// Cancels the run when `token` is cancelled: nothing new starts, calls
    /// that read or drain are abandoned at once, drained targets not yet
    /// executing are put back at once (and a target whose drain call was
    /// abandoned too), executing targets finish and go through probe,
    /// enable and health; the report says `Cancelled`.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// A stream of progress events. Call it as many times as there are
    /// subscribers; each gets every event.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Event> {
        self.hub.subscribe()
    }

    /// Runs the rollout to its end.
    ///
    /// # Errors
    /// Only before anything is changed: the pool cannot be listed, a selected
    /// target is unknown ([`Error::NotFound`]), `min_healthy` cannot be met
    /// by any batch of this pool ([`Error::InvalidConfig`]), or the run was
    /// cancelled while listing ([`Error::Cancelled`]). Once a target has
    /// been touched, every problem ends in a [`Report`] with each touched
    /// target either back in service or listed as kept out.
    pub async fn run(self) -> Result<Report> {
        let span = tracing::info_span!("rollout", balancer = %self.lb.name(), executor = %self.exec.name());
        self.run_inner().instrument(span).await
    }

    /// Runs the rollout on a tokio task and returns a handle to watch,
    /// cancel and join it. Needs a tokio runtime.
    pub fn spawn(self) -> RolloutHandle {
        let cancel = self.cancel.clone();
        let hub = self.hub.clone();
        RolloutHandle {
            cancel,
            hub,
            task: tokio::spawn(self.run()),
        }
    }

    async fn run_inner(self) -> Result<Report> {
        let run_id = uuid::Uuid::new_v4().to_string();
        let started_at = jiff::Timestamp::now().to_string();
        let started = Instant::now();
        let parts = Arc::new(Parts {
            lb: self.lb,
            exec: self.exec,
            probe: self.probe,
            config: self.config,
            hub: self.hub,
            started,
            balancer_calls: AtomicU64::new(0),
            executor_calls: AtomicU64::new(0),
        });
        let lb = Arc::clone(&parts.lb);
        let listed = tokio::select! {
            biased;
            r = parts.list_pool() => r?,
            () = self.cancel.cancelled() => {
                return Err(Error::Cancelled { operation: format!("listing {}", lb.name()) });
            }
        };
        // A balancer's default of zero would spin: never poll faster than 1 ms.
        let poll = parts
            .config
            .poll_interval()
            .unwrap_or_else(|| lb.default_poll_interval())
            .max(std::time::Duration::from_millis(1));
        let machine = Machine::new(
            parts.config.clone(),
            lb.capabilities(),
            poll,
            parts.probe.is_some(),
            &listed,
            &lb.name(),
        )?;
        tracing::info!(
            run_id = %run_id,
            selected = listed.len(),
            "rollout starts"
        );
        Ok(driver::drive(parts, machine, self.cancel, run_id, started_at).await)
    }
}

/// A rollout running on its own task ([`Rollout::spawn`]).
#[derive(Debug)]
pub struct RolloutHandle {
    cancel: CancellationToken,
    hub: EventHub,
    task: JoinHandle<Result<Report>>,
}

impl RolloutHandle {
    /// Cancels the run (see [`Rollout::with_cancellation`]); `join` still
    /// returns its report.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Events from now on.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Event> {
        self.hub.subscribe()
    }

    /// Waits for the end of the run.
    ///
    /// # Errors
    /// As [`Rollout::run`].
    pub async fn join(self) -> Result<Report> {
        match self.task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Cancelled {
                operation: format!("the rollout task ({e})"),
            }),
        }
    }
}

#[allow(dead_code)]
fn assert_run_is_send(r: Rollout) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&r.run());
}
