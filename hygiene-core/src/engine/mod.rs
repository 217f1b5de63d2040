//! The rolling engine: a pure rollout machine ([`machine`]), a pure batch
//! planner ([`planner`]) and a thin async driver ([`driver`]). See
//! [`RolloutConfig`] for the semantics of each setting.

mod driver;
mod machine;
mod planner;
mod record;
#[cfg(test)]
mod regressions;
#[cfg(test)]
mod round3;
#[cfg(test)]
mod sim;
mod spans;

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
use crate::journal::{self, Header, Journal, Record, Trace, JOURNAL_FORMAT};
use crate::probe::Probe;
use crate::report::{Event, Report};

use driver::{EventHub, Parts};
use machine::{Machine, Recovery};

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
    journal: Option<Arc<dyn Journal>>,
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
            journal: None,
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
        let span = tracing::info_span!("rollout", balancer = %self.lb.name(), executor = %self.exec.name(), run = tracing::field::Empty);
        self.run_inner(Mode::Run).instrument(span).await
    }

    /// Writes the run's journal to `journal` (see [`crate::journal`]): a
    /// record before and after every change, so that a run whose process
    /// died can be resumed or restored. A new run refuses to start over a
    /// journal whose last run did not finish.
    pub fn with_journal(mut self, journal: impl Journal) -> Self {
        self.journal = Some(Arc::new(journal));
        self
    }

    /// Finishes the run the journal (see [`with_journal`](Self::with_journal))
    /// says did not finish, reconciling what it recorded with what the
    /// balancer shows now, without replaying anything: a target whose
    /// maintenance succeeded is enabled and verified; one only drained
    /// continues its maintenance; one whose maintenance started with no
    /// recorded outcome is kept out and reported (`on_interrupted = fail`)
    /// or maintained again (`rerun`); a target the journal says is out but
    /// the balancer shows in service (a reload) is handled and reported;
    /// targets never started go on in their turn, and the failure budget
    /// and canary carry over. The policies are this rollout's
    /// configuration; the targets are the journal's plan.
    ///
    /// # Errors
    /// [`Error::Journal`] when there is no journal, it holds no unfinished
    /// run, or it cannot be read; as [`run`](Self::run) otherwise.
    pub async fn resume(self) -> Result<Report> {
        let span =
            tracing::info_span!("resume", balancer = %self.lb.name(), run = tracing::field::Empty);
        self.run_inner(Mode::Resume).instrument(span).await
    }

    /// Abandons the run the journal says did not finish and puts back every
    /// target it took out (enable, then fresh health), reporting each; no
    /// maintenance runs and nothing new starts.
    ///
    /// # Errors
    /// As [`resume`](Self::resume).
    pub async fn restore(self) -> Result<Report> {
        let span =
            tracing::info_span!("restore", balancer = %self.lb.name(), run = tracing::field::Empty);
        self.run_inner(Mode::Restore).instrument(span).await
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

    async fn run_inner(self, mode: Mode) -> Result<Report> {
        let started_at = jiff::Timestamp::now().to_string();
        let started = Instant::now();
        let journal = self.journal.clone();
        let parts = Arc::new(Parts {
            lb: self.lb,
            exec: self.exec,
            probe: self.probe,
            config: self.config,
            hub: self.hub,
            journal: self.journal,
            started,
            balancer_calls: AtomicU64::new(0),
            executor_calls: AtomicU64::new(0),
            spans: Arc::new(spans::SpanTree::new()),
        });
        let lb = Arc::clone(&parts.lb);
        let state = match &journal {
            Some(j) => Some(journal::status(&**j, &lb.name())?),
            None if mode == Mode::Run => None,
            None => {
                return Err(Error::invalid_config(
                    "journal",
                    "resume and restore read the run's journal: give it with with_journal",
                ))
            }
        };
        let mut listed = tokio::select! {
            biased;
            r = parts.list_pool(mode == Mode::Run) => r?,
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
        let caps = lb.capabilities();
        let has_probe = parts.probe.is_some();
        let (machine, run_id) = match (mode, state) {
            (Mode::Run, state) => {
                if let Some((journal::Status::Unfinished(h), _)) = &state {
                    return Err(unfinished(&journal, h));
                }
                let machine = Machine::new(
                    parts.config.clone(),
                    caps,
                    poll,
                    has_probe,
                    &listed,
                    &lb.name(),
                )?;
                let run_id = uuid::Uuid::new_v4().to_string();
                parts.journal(&Record::Header(Box::new(Header {
                    format: JOURNAL_FORMAT,
                    hygiene: env!("CARGO_PKG_VERSION").to_owned(),
                    run_id: run_id.clone(),
                    started_at: started_at.clone(),
                    balancer: lb.name(),
                    executor: parts.exec.name(),
                    host: journal::host(),
                    pid: std::process::id(),
                    config: parts.config.clone(),
                    plan: machine.plan_targets(),
                })))?;
                (machine, run_id)
            }
            (_, Some((journal::Status::Unfinished(h), records))) => {
                let (header, traces) = Trace::of(&records)
                    .ok_or_else(|| Error::journal(location(&journal), "holds no run to recover"))?;
                // What the dead process knew of each target (ELBv2 ports),
                // and where the targets it may have taken out are: a
                // balancer may not list a target that is out (ELBv2).
                lb.adopt(&header.plan).await?;
                let unlisted: Vec<crate::target::Target> = traces
                    .iter()
                    .filter(|t| t.maybe_out && !listed.iter().any(|l| l.target.id == t.target.id))
                    .map(|t| t.target.clone())
                    .collect();
                for (target, status) in unlisted.iter().zip(parts.status_of(&unlisted).await?) {
                    if let Some(status) = status {
                        listed.push(crate::balancer::ListedTarget {
                            target: target.clone(),
                            status,
                        });
                    }
                }
                let recovery = if mode == Mode::Restore {
                    Recovery::Restore
                } else {
                    Recovery::Resume
                };
                let first_call = journal::last_call(&records).map_or(0, |c| c + 1);
                let machine = Machine::recover(
                    parts.config.clone(),
                    caps,
                    poll,
                    has_probe,
                    &listed,
                    traces,
                    first_call,
                    recovery,
                );
                parts.journal(&Record::Resumed {
                    mode: if mode == Mode::Restore {
                        "restore"
                    } else {
                        "resume"
                    }
                    .into(),
                    at: started_at.clone(),
                    host: journal::host(),
                    pid: std::process::id(),
                })?;
                (machine, h.run_id.clone())
            }
            (_, Some((journal::Status::Finished(h), _))) => {
                return Err(Error::journal(
                    location(&journal),
                    format!(
                    "holds no unfinished run: its last run ({}, started {}) ended; nothing to {}",
                    h.run_id,
                    h.started_at,
                    if mode == Mode::Restore {
                        "restore"
                    } else {
                        "resume"
                    }
                ),
                ))
            }
            (_, _) => {
                return Err(Error::journal(
                    location(&journal),
                    "is empty: there is no run to resume or restore",
                ))
            }
        };
        // Every line and span of the run carries its id (`run`).
        tracing::Span::current().record("run", run_id.as_str());
        tracing::info!(run_id = %run_id, targets = machine.plan_targets().len(), ?mode, "rollout starts");
        Ok(driver::drive(parts, machine, self.cancel, run_id, started_at).await)
    }
}

/// What a [`Rollout`] does with its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Resume,
    Restore,
}

fn location(journal: &Option<Arc<dyn Journal>>) -> String {
    journal
        .as_ref()
        .map_or_else(|| "(none)".into(), |j| j.location())
}

fn unfinished(journal: &Option<Arc<dyn Journal>>, h: &Header) -> Error {
    Error::journal(
        location(journal),
        format!(
            "holds run {} (started {} on {}, pid {}), which did not finish: some targets may still be out of rotation. Resume it (Rollout::resume, `hygiene resume`) or put back what it took out (Rollout::restore, `hygiene restore`) before a new run",
            h.run_id, h.started_at, h.host, h.pid
        ),
    )
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
