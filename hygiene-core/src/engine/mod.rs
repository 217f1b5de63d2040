//! The rolling engine: a pure rollout machine ([`machine`]), a pure batch
//! planner ([`planner`]) and a thin async driver ([`driver`]). See
//! [`RolloutConfig`] for the semantics of each setting.

mod deliver;
mod driver;
#[cfg(test)]
mod gates;
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
#[cfg(test)]
mod survivors;

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
use crate::gate::{Gate, GatePolicy};
use crate::journal::{self, Header, Journal, Record, Trace, JOURNAL_FORMAT};
use crate::notify::Notifier;
use crate::probe::Probe;
use crate::report::{Event, Report};

use driver::{EventHub, Parts};
use machine::{GateSpec, Machine, Recovery};

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
    lease: Option<(crate::lease::HeldLease, Arc<std::sync::atomic::AtomicBool>)>,
    lease_margin: std::time::Duration,
    gates: Vec<(Arc<dyn Gate>, GatePolicy, bool)>,
    notifiers: Vec<Arc<dyn Notifier>>,
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
            lease: None,
            lease_margin: DEFAULT_LEASE_MARGIN,
            gates: Vec::new(),
            notifiers: Vec::new(),
        }
    }

    /// Tells `notifier` when the run starts, when a target fails, when a
    /// gate holds the rollout, and when the run ends (the report's summary,
    /// and the way back for every target left out). Delivered in order from
    /// a task of their own, each retried on the run's retry policy; a
    /// notifier that fails never stops or fails the run. Once the run is
    /// over, `run` waits for the last notification at most as long as its
    /// retries take.
    pub fn with_notifier(mut self, notifier: impl Notifier) -> Self {
        self.notifiers.push(Arc::new(notifier));
        self
    }

    /// Asks `gate` before and/or after each batch, as `policy` says (see
    /// [`crate::Gate`]): while it says no (or cannot be asked), nothing new
    /// is drained; it is asked again every `policy.interval()` until it
    /// says go or `policy.timeout()` has passed, when `on_gate_timeout`
    /// decides. Every answer is an event ([`crate::EventKind::GateChecked`]) and
    /// a journal record. Gates are asked in the order they were added, all
    /// at once.
    pub fn with_gate(mut self, gate: impl Gate, policy: GatePolicy) -> Self {
        self.gates.push((Arc::new(gate), policy, false));
        self
    }

    /// Runs `hook` once at `when` of each batch — before a batch, once its
    /// gates said go, right before its first drain; after a batch, first
    /// thing once it is back (before `wait_between_batches` and the gates
    /// after it) — within `limit`. The hook is a [`Gate`] asked once: go
    /// is success; a no, an error or a hook past `limit` is a failure that
    /// stops the run (`AbortReason::Hook`, by name): nothing more starts.
    /// Every run is an event (`EventKind::HookRan`) and a journal record.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `limit` is zero.
    pub fn with_hook(
        mut self,
        hook: impl Gate,
        when: crate::gate::GateWhen,
        limit: std::time::Duration,
    ) -> Result<Self> {
        let policy = GatePolicy::new(limit, limit)
            .map_err(|_| Error::invalid_config("hook.timeout", "must be greater than zero"))?
            .only(when);
        self.gates.push((Arc::new(hook), policy, true));
        Ok(self)
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

    /// Runs under a shared lease (see [`crate::lease`]), acquired by the
    /// caller: the run's journal is the store's, written under the lease's
    /// fence ([`StoreJournal`](crate::lease::StoreJournal); this replaces
    /// [`with_journal`](Self::with_journal)), the run's id is the grant's,
    /// and the lease is renewed in the background for as long as the run
    /// goes on ([`Heartbeat`](crate::lease::Heartbeat)). The caller
    /// releases it afterwards.
    ///
    /// - A drain or a maintenance starts only while the time left on the
    ///   lease covers the step's budget (`call_timeout`: the longest the
    ///   call that starts it may take) plus a margin for clock skew
    ///   ([`with_lease_margin`](Self::with_lease_margin), 2 s by default).
    /// - Before a drain, the hosts it takes out are taken in the store
    ///   ([`LeaseStore::take_hosts`](crate::lease::LeaseStore::take_hosts)):
    ///   a host another pool has out fails that drain, touching nothing.
    ///   A host back in service is given back.
    /// - **Lease at risk** (renewals failing, and less left than a step
    ///   needs): the run goes restore-only — the cancel path: nothing new
    ///   drains or starts, drained targets go back at once, running
    ///   maintenances finish and are probed and put back — while it still
    ///   holds the lease (it keeps renewing), and ends
    ///   `Aborted { LeaseLost }` naming what is still out.
    /// - **Lease lost** (ran out on this machine's clock, or the store
    ///   refused a renewal or a journal record for a newer fence): another
    ///   holder may act on the pool now, so the run touches the balancer no
    ///   more (only reads); the report names every target still out, for
    ///   the next holder's `resume` or `restore`.
    pub fn with_lease(mut self, lease: crate::lease::HeldLease) -> Self {
        let journal =
            crate::lease::StoreJournal::new(Arc::clone(&lease.store), lease.grant.clone());
        let fenced = journal.fenced_flag();
        self.journal = Some(Arc::new(journal));
        self.lease = Some((lease, fenced));
        self
    }

    /// The margin for clock skew between this machine and the lease store
    /// (see [`with_lease`](Self::with_lease)).
    pub fn with_lease_margin(mut self, margin: std::time::Duration) -> Self {
        self.lease_margin = margin;
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
        let lease = match self.lease {
            Some((held, fenced)) => {
                let need = self.config.call_timeout() + self.lease_margin;
                let d = held.grant.duration;
                if d - d / 3 <= need {
                    return Err(Error::invalid_config(
                        "lease",
                        format!(
                            "a lease of {} leaves {} before a renewal, not more than a step needs ({} call_timeout + {} margin): lengthen the lease duration or shorten call_timeout",
                            crate::duration_text::format(d),
                            crate::duration_text::format(d - d / 3),
                            crate::duration_text::format(self.config.call_timeout()),
                            crate::duration_text::format(self.lease_margin),
                        ),
                    ));
                }
                Some(driver::LeaseLink::start(held, fenced, need))
            }
            None => None,
        };
        let notifiers = self.notifiers;
        let parts = Arc::new(Parts {
            lb: self.lb,
            exec: self.exec,
            probe: self.probe,
            config: self.config,
            hub: self.hub,
            journal: self.journal,
            journal_lost: Arc::new(AtomicU64::new(0)),
            lease,
            started,
            balancer_calls: AtomicU64::new(0),
            executor_calls: AtomicU64::new(0),
            gates: self.gates.iter().map(|(g, _, _)| Arc::clone(g)).collect(),
            run_id: std::sync::OnceLock::new(),
            spans: Arc::new(spans::SpanTree::new()),
        });
        let gate_specs: Vec<GateSpec> = self
            .gates
            .iter()
            .map(|(g, p, hook)| GateSpec {
                name: g.name(),
                policy: p.clone(),
                hook: *hook,
            })
            .collect();
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
                let run_id = parts.lease.as_ref().map_or_else(
                    || uuid::Uuid::new_v4().to_string(),
                    |l| l.held.grant.owner.run_id.clone(),
                );
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
        let machine = machine.with_gates(gate_specs);
        let delivery = (!notifiers.is_empty()).then(|| {
            deliver::Delivery::start(
                notifiers,
                parts.hub.subscribe(),
                run_id.clone(),
                Arc::clone(&parts.lb),
                parts.config.retry(),
                parts.config.call_timeout(),
            )
        });
        let report = driver::drive(parts, machine, self.cancel, run_id, started_at).await;
        if let Some(d) = delivery {
            d.finish(&report).await;
        }
        Ok(report)
    }
}

/// The default margin for clock skew (see [`Rollout::with_lease`]).
const DEFAULT_LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

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
