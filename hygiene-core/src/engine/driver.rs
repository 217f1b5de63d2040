//! The driver: performs the machine's effects against the balancer, the
//! executor and the probe, with retries, time limits and cancellation. It
//! is the only async part of the engine and decides nothing: every rule is
//! the machine's.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::balancer::LoadBalancer;
use crate::config::RolloutConfig;
use crate::error::{Error, Result};
use crate::executor::{Executor, HandleSink};
use crate::journal::{Journal, Op, Record};
use crate::probe::Probe;
use crate::report::{Event, EventKind, Outcome, Report};
use crate::retry::with_retries_when;

use super::machine::{CallId, Effect, Input, Machine, Reply};
use super::record::{finished_record, intent_record, result_record};

/// Subscribers to a run's events; each gets every event from the moment
/// it subscribed.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventHub {
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Event>>>>,
}

impl EventHub {
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push(tx);
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<Event>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, event: Event) {
        // A dropped receiver only means nobody watches progress any more.
        self.lock().retain(|tx| tx.send(event.clone()).is_ok());
    }
}

/// What every effect needs: the parts, the limits, the counters.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) lb: Arc<dyn LoadBalancer>,
    pub(crate) exec: Arc<dyn Executor>,
    pub(crate) probe: Option<Arc<dyn Probe>>,
    pub(crate) config: RolloutConfig,
    pub(crate) hub: EventHub,
    pub(crate) journal: Option<Arc<dyn Journal>>,
    pub(crate) started: Instant,
    pub(crate) balancer_calls: AtomicU64,
    pub(crate) executor_calls: AtomicU64,
    /// The run's batch, target and phase spans, from its events.
    pub(crate) spans: Arc<super::spans::SpanTree>,
}

impl Parts {
    /// Appends a record when there is a journal. A record that cannot be
    /// written is logged: the run goes on (the call it describes decides
    /// whether it may, see `drive`).
    pub(crate) fn journal(&self, record: &Record) -> Result<()> {
        match &self.journal {
            Some(j) => j.append(record).inspect_err(|e| {
                error!(error = %e, "journal record not written");
            }),
            None => Ok(()),
        }
    }

    fn event(&self, batch: Option<usize>, kind: EventKind) {
        let event = Event {
            at: jiff::Timestamp::now().to_string(),
            elapsed: self.started.elapsed(),
            batch,
            kind,
        };
        self.spans.observe(&event);
        self.hub.publish(event);
    }

    /// One call with retries of `when`-errors, each attempt bounded by
    /// `limit` (a late attempt is a retryable [`Error::Timeout`]).
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        counter: &AtomicU64,
        limit: Duration,
        when: impl FnMut(&Error) -> bool,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let r = with_retries_when(
            &self.config.retry(),
            || {
                counter.fetch_add(1, Ordering::Relaxed);
                let attempt = f();
                async move {
                    match tokio::time::timeout(limit, attempt).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout {
                            operation: operation.to_owned(),
                            after: limit,
                        }),
                    }
                }
            },
            when,
            |e, delay| {
                warn!(operation, error = %e, delay_ms = delay.as_millis() as u64, "retrying");
                self.event(
                    None,
                    EventKind::Retry {
                        operation: operation.to_owned(),
                        error: e.to_string(),
                        delay,
                    },
                );
            },
        )
        .await;
        debug!(operation, ok = r.is_ok(), "call");
        r
    }

    async fn lb_call<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.call(
            operation,
            &self.balancer_calls,
            self.config.call_timeout(),
            Error::is_retryable,
            f,
        )
        .await
    }

    /// The pool at the start, before the machine exists. A fresh run has
    /// changed nothing yet: only a throttled listing is retried (the API
    /// asks for exactly that); any other error is said at once (the
    /// backend's own retries still apply) instead of after the engine's
    /// whole retry budget. Resume and restore retry every retryable error:
    /// the run they finish left targets out, and a balancer coming back is
    /// worth waiting for.
    pub(crate) async fn list_pool(
        &self,
        fresh: bool,
    ) -> Result<Vec<crate::balancer::ListedTarget>> {
        let lb = Arc::clone(&self.lb);
        if fresh {
            return self
                .call(
                    "list",
                    &self.balancer_calls,
                    self.config.call_timeout(),
                    |e: &Error| matches!(e, Error::Throttled { .. }),
                    || lb.list(),
                )
                .await;
        }
        self.lb_call("list", || lb.list()).await
    }

    /// The status of targets the listing does not show (ELBv2 lists only
    /// registered targets), with retries; `None` for one the balancer does
    /// not know at all.
    pub(crate) async fn status_of(
        &self,
        targets: &[crate::target::Target],
    ) -> Result<Vec<Option<crate::target::TargetStatus>>> {
        let lb = Arc::clone(&self.lb);
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let ids = [t.id.clone()];
            match self.lb_call("status", || lb.status(&ids)).await {
                Ok(mut st) if st.len() == 1 => out.push(st.pop()),
                Ok(_) | Err(Error::NotFound { .. }) => out.push(None),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Where the executor reports its handles on the maintenance of call
    /// `call`: the journal, when there is one.
    fn handle_sink(&self, call: CallId) -> HandleSink {
        let Some(journal) = self.journal.clone() else {
            return HandleSink::none();
        };
        HandleSink::new(move |id, handle| {
            let record = Record::Started {
                call,
                id: id.clone(),
                handle,
                at: jiff::Timestamp::now().to_string(),
            };
            if let Err(e) = journal.append(&record) {
                // The maintenance runs on; a resume then applies
                // `on_interrupted` instead of waiting for it.
                error!(error = %e, target.id = %id, "the maintenance's handle was not journaled");
            }
        })
    }

    /// Performs one effect.
    async fn perform(self: Arc<Self>, effect: Effect) -> Reply {
        let call = effect.call();
        let lb = Arc::clone(&self.lb);
        match effect {
            Effect::List(_) => Reply::Listed(self.lb_call("list", || lb.list()).await),
            Effect::Status(_, ids) | Effect::ReadBack(_, ids) => {
                Reply::Status(self.lb_call("status", || lb.status(&ids)).await)
            }
            Effect::Drain(_, ids) => Reply::Changed(self.lb_call("drain", || lb.drain(&ids)).await),
            Effect::Disable(_, ids) => {
                Reply::Changed(self.lb_call("disable", || lb.disable(&ids)).await)
            }
            Effect::Enable(_, ids) => {
                Reply::Changed(self.lb_call("enable", || lb.enable(&ids)).await)
            }
            Effect::Preflight(_, targets) => {
                let exec = Arc::clone(&self.exec);
                Reply::Preflight(
                    self.call(
                        "preflight",
                        &self.executor_calls,
                        self.config.call_timeout(),
                        Error::is_retryable,
                        || exec.preflight(&targets),
                    )
                    .await,
                )
            }
            Effect::Execute(_, targets) => {
                let exec = Arc::clone(&self.exec);
                // Maintenance (a reboot, a patch) is not safe to run twice:
                // only a throttled call, which the executor refused, is
                // tried again; a call past its limit is not.
                let sink = self.handle_sink(call);
                // Each maintenance's span is a child of its target's phase.
                let spans = self.spans.lookup();
                Reply::Executed(
                    crate::trace::with_phase_spans(
                        spans,
                        self.call(
                            "execute",
                            &self.executor_calls,
                            self.config.execute_timeout(),
                            |e| matches!(e, Error::Throttled { .. }),
                            || exec.execute_tracked(&targets, &sink),
                        ),
                    )
                    .await,
                )
            }
            Effect::Recover(_, target, handle) => {
                let exec = Arc::clone(&self.exec);
                // Waits for the maintenance to end: bounded like one, in
                // all (a recovery that hit the limit is not tried again,
                // and retries of a failed read share the same limit).
                let limit = self.config.execute_timeout();
                let recovery = self.call(
                    "recover",
                    &self.executor_calls,
                    limit,
                    |e| e.is_retryable() && !matches!(e, Error::Timeout { .. }),
                    || exec.recover(&target, &handle),
                );
                Reply::Recovered(match tokio::time::timeout(limit, recovery).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout {
                        operation: format!("recovering the maintenance of {}", target.id),
                        after: limit,
                    }),
                })
            }
            Effect::Probe(_, target) => {
                let Some(probe) = self.probe.clone() else {
                    return Reply::Probed(Err(Error::invalid_config(
                        "probe",
                        "the machine asked for a probe but none is configured",
                    )));
                };
                let limit = self.config.call_timeout();
                Reply::Probed(
                    match tokio::time::timeout(limit, probe.check(&target)).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout {
                            operation: format!("probe of {}", target.id),
                            after: limit,
                        }),
                    },
                )
            }
        }
    }
}

/// Effects the run stops waiting for when it is cancelled: reads, the
/// preflight and the drain. Enable, disable, probe and the maintenance
/// itself always finish (each within its time limit): they are how
/// targets get back into rotation.
pub(crate) fn cancellable(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::List(_) | Effect::Status(..) | Effect::Preflight(..) | Effect::Drain(..)
    )
}

pub(crate) fn abandoned(effect: &Effect) -> Reply {
    let e = |op: &str| Error::Cancelled {
        operation: op.to_owned(),
    };
    match effect {
        Effect::List(_) => Reply::Listed(Err(e("list"))),
        Effect::Status(..) | Effect::ReadBack(..) => Reply::Status(Err(e("status"))),
        Effect::Preflight(..) => Reply::Preflight(Err(e("preflight"))),
        Effect::Execute(..) => Reply::Executed(Err(e("execute"))),
        Effect::Recover(..) => Reply::Recovered(Err(e("recover"))),
        Effect::Probe(..) => Reply::Probed(Err(e("probe"))),
        Effect::Drain(..) => Reply::Changed(Err(e("drain"))),
        Effect::Disable(..) => Reply::Changed(Err(e("disable"))),
        Effect::Enable(..) => Reply::Changed(Err(e("enable"))),
    }
}

type InFlight = Pin<Box<dyn Future<Output = (CallId, Reply)> + Send>>;

fn launch(parts: &Arc<Parts>, cancel: &CancellationToken, effect: Effect) -> InFlight {
    let call = effect.call();
    // A call started after the cancellation is never raced with it: it is
    // part of putting things back.
    let race = cancellable(&effect) && !cancel.is_cancelled();
    let on_cancel = abandoned(&effect);
    let fut = Arc::clone(parts).perform(effect);
    let token = cancel.clone();
    Box::pin(async move {
        if race {
            tokio::select! {
                r = fut => (call, r),
                () = token.cancelled() => (call, on_cancel),
            }
        } else {
            (call, fut.await)
        }
    })
}

/// Runs the machine to its end and builds the report.
pub(crate) async fn drive(
    parts: Arc<Parts>,
    mut machine: Machine,
    cancel: CancellationToken,
    run_id: String,
    started_at: String,
) -> Report {
    let mut inflight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut cancel_seen = false;
    let start = parts.started;
    let mut effects = if cancel.is_cancelled() {
        cancel_seen = true;
        machine.handle(start.elapsed(), Input::Cancel)
    } else {
        machine.handle(start.elapsed(), Input::Tick)
    };
    let mut intents: std::collections::HashSet<CallId> = std::collections::HashSet::new();
    let mut stuck = false;
    loop {
        journal_finished(&parts, &mut machine);
        for e in effects.drain(..) {
            debug!(?e, "effect");
            if let Some((op, intent)) = intent_record(&e) {
                // The intent is durable before the call is made. A run that
                // cannot record a drain or a maintenance does not make it;
                // putting targets back goes ahead regardless.
                if let Err(err) = parts.journal(&intent) {
                    if matches!(op, Op::Drain | Op::Execute) {
                        let call = e.call();
                        let reply = match op {
                            Op::Execute => Reply::Executed(Err(err)),
                            _ => Reply::Changed(Err(err)),
                        };
                        inflight.push(Box::pin(async move { (call, reply) }));
                        continue;
                    }
                }
                if parts.journal.is_some() {
                    intents.insert(e.call());
                }
            }
            inflight.push(launch(&parts, &cancel, e));
        }
        while let Some((batch, kind)) = machine.poll_event() {
            log_event(batch, &kind);
            parts.event(batch, kind);
        }
        if machine.is_finished() {
            break;
        }
        let wake = machine.poll_timeout().map(|d| start + d);
        if inflight.is_empty() && wake.is_none() {
            // Nothing can move the machine any more: a bug. Report what is
            // known; the report names every target not finished.
            error!("the rollout machine is stuck; ending the run");
            stuck = true;
            break;
        }
        let input = tokio::select! {
            biased;
            () = cancel.cancelled(), if !cancel_seen => {
                cancel_seen = true;
                info!("cancelled: nothing new starts; drained targets go back");
                Input::Cancel
            }
            Some((call, reply)) = inflight.next() => {
                if intents.remove(&call) {
                    let _logged = parts.journal(&result_record(call, &reply));
                }
                Input::Reply(call, reply)
            }
            () = sleep_until(wake) => Input::Tick,
        };
        effects = machine.handle(start.elapsed(), input);
    }
    let outcome = machine.outcome();
    journal_finished(&parts, &mut machine);
    if machine.maintenance_open() {
        // A maintenance may still be running: the journal stays open, so a
        // new run is refused and resume or restore waits for it.
        warn!("a maintenance may still be running: the journal is left unfinished");
    } else if !stuck {
        // A stuck run leaves its journal unfinished: resume or restore can
        // still reconcile what it left.
        let _logged = parts.journal(&Record::End {
            outcome: outcome.clone(),
            at: jiff::Timestamp::now().to_string(),
        });
    }
    match &outcome {
        Outcome::Aborted { reason } => error!(reason = %reason, "rollout aborted"),
        other => info!(outcome = ?other, "rollout finished"),
    }
    parts.event(
        None,
        EventKind::Finished {
            outcome: outcome.clone(),
        },
    );
    Report {
        run_id,
        started_at,
        outcome,
        balancer: parts.lb.name(),
        executor: parts.exec.name(),
        config: parts.config.clone(),
        duration: start.elapsed(),
        batches: machine.batches(),
        targets: machine.target_reports(|id| parts.lb.enable_hint(id)),
        found_out: machine.found_out_ids(),
        balancer_calls: parts.balancer_calls.load(Ordering::Relaxed),
        executor_calls: parts.executor_calls.load(Ordering::Relaxed),
    }
}

/// Records the targets that finished since the last look.
fn journal_finished(parts: &Parts, machine: &mut Machine) {
    for f in machine.take_finished() {
        // Logged by `Parts::journal` when it fails; the run goes on.
        let _logged = parts.journal(&finished_record(f));
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn log_event(batch: Option<usize>, kind: &EventKind) {
    // `batch` is recorded only when there is one.
    let batch = batch.map(|b| b as u64);
    match kind {
        EventKind::Phase {
            id,
            stage: crate::phase::Stage::Failed,
            detail,
        } => {
            warn!(batch, target.id = %id, reason = detail.as_deref().unwrap_or(""), "target failed")
        }
        EventKind::Phase { id, stage, .. } => {
            info!(batch, target.id = %id, phase = %stage, "phase")
        }
        EventKind::BatchStarted { index, targets } => {
            info!(batch, index, size = targets.len(), "batch starts");
        }
        EventKind::Stopping { reason } => warn!(reason = %reason, "no new targets start"),
        EventKind::FoundOut { id } => {
            warn!(target.id = %id, "found out of rotation, not by this run: left as found");
        }
        _ => {}
    }
}
