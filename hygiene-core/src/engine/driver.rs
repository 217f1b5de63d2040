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
use crate::gate::{Gate, GateCheck, GateVerdict};
use crate::journal::{Journal, Op, Record};
use crate::lease::{Heartbeat, HeldLease, LeaseState};
use crate::phase::Location;
use crate::probe::Probe;
use crate::report::{Event, EventKind, Outcome, Report};
use crate::retry::with_retries_when;
use crate::target::TargetId;

use super::machine::{CallId, Effect, GateAsk, Input, LeaseNews, Machine, Reply};
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

/// The run's lease: renewed by a heartbeat, guarding drains and every
/// change once it is taken over.
#[derive(Debug)]
pub(crate) struct LeaseLink {
    pub(crate) held: HeldLease,
    heartbeat: Mutex<Option<Heartbeat>>,
    rx: tokio::sync::watch::Receiver<LeaseState>,
    /// The store refused this run for a newer fence: no more changes.
    fenced: Arc<std::sync::atomic::AtomicBool>,
    /// Time a step needs left on the lease.
    need: Duration,
    /// Host key of each planned target.
    hosts: Mutex<std::collections::HashMap<TargetId, String>>,
}

impl LeaseLink {
    pub(crate) fn start(
        held: HeldLease,
        fenced: Arc<std::sync::atomic::AtomicBool>,
        need: Duration,
    ) -> Self {
        let heartbeat = Heartbeat::start(held.clone());
        let rx = heartbeat.watch();
        Self {
            held,
            heartbeat: Mutex::new(Some(heartbeat)),
            rx,
            fenced,
            need,
            hosts: Mutex::default(),
        }
    }

    fn fenced_out(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    fn hosts_of(&self, ids: &[TargetId]) -> Vec<String> {
        let hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<String> = ids
            .iter()
            .map(|id| hosts.get(id).cloned().unwrap_or_else(|| id.to_string()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn stop(&self) {
        if let Some(h) = self
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            h.stop();
        }
    }
}

/// The next change of the lease's state; `None` once nothing more can come.
async fn lease_change(
    link: Option<&LeaseLink>,
    rx: &mut Option<tokio::sync::watch::Receiver<LeaseState>>,
) -> Option<LeaseState> {
    let (Some(_), Some(rx)) = (link, rx.as_mut()) else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => Some(rx.borrow_and_update().clone()),
        Err(_) => match rx.borrow().clone() {
            lost @ LeaseState::Lost { .. } => Some(lost),
            LeaseState::Held { .. } => None,
        },
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
    /// Records of this run that could not be written: the journal has a
    /// gap, so the run does not close it with an `End` (see `drive`).
    pub(crate) journal_lost: Arc<AtomicU64>,
    pub(crate) lease: Option<LeaseLink>,
    pub(crate) started: Instant,
    pub(crate) balancer_calls: AtomicU64,
    pub(crate) executor_calls: AtomicU64,
    /// The gates, at the indices the machine's [`GateAsk`]s name.
    pub(crate) gates: Vec<Arc<dyn Gate>>,
    /// The run's id, told to the gates (set once the run has one).
    pub(crate) run_id: std::sync::OnceLock<String>,
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
                self.journal_lost.fetch_add(1, Ordering::SeqCst);
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
        let lost = Arc::clone(&self.journal_lost);
        HandleSink::new(move |id, handle| {
            let record = Record::Started {
                call,
                id: id.clone(),
                handle,
                at: jiff::Timestamp::now().to_string(),
            };
            if let Err(e) = journal.append(&record) {
                lost.fetch_add(1, Ordering::SeqCst);
                // The maintenance runs on; a resume then applies
                // `on_interrupted` instead of waiting for it.
                error!(error = %e, target.id = %id, "the maintenance's handle was not journaled");
            }
        })
    }

    /// Asks one gate once, within `call_timeout` (past it: an error, which
    /// the machine counts as a no).
    async fn ask_gate(&self, ask: GateAsk) -> Result<GateVerdict> {
        let Some(gate) = self.gates.get(ask.gate) else {
            return Err(Error::invalid_config(
                "gate",
                "the machine asked a gate that is not configured",
            ));
        };
        let run_id = self.run_id.get().cloned().unwrap_or_default();
        let check = GateCheck::new(ask.when, ask.batch, run_id).with_targets(ask.targets.clone());
        let limit = ask.limit.unwrap_or_else(|| self.config.call_timeout());
        match tokio::time::timeout(limit, gate.check(&check)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: format!("gate {}", gate.name()),
                after: limit,
            }),
        }
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
            Effect::Drain(_, ids) => {
                if let Some(link) = &self.lease {
                    // The hosts it takes out, with a check that the lease is
                    // still this run's, in one transaction.
                    let hosts = link.hosts_of(&ids);
                    if let Err(e) = link.held.store.take_hosts(&link.held.grant, &hosts).await {
                        if matches!(e, crate::lease::LeaseError::Lost { .. }) {
                            link.fenced.store(true, Ordering::SeqCst);
                        }
                        warn!(error = %e, "hosts not taken: not drained");
                        return Reply::Changed(Err(e.into()));
                    }
                }
                Reply::Changed(self.lb_call("drain", || lb.drain(&ids)).await)
            }
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
            Effect::Gate(_, ask) => Reply::Gate(self.ask_gate(ask).await),
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
        Effect::List(_)
            | Effect::Status(..)
            | Effect::Preflight(..)
            | Effect::Drain(..)
            | Effect::Gate(..)
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
        Effect::Gate(..) => Reply::Gate(Err(e("gate"))),
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
    let _set = parts.run_id.set(run_id.clone());
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
    let mut lease_rx = None;
    // When the lease, not renewed, has less left than a step needs: the
    // run goes restore-only then, while it still holds the lease for its
    // put-backs (it keeps renewing).
    let mut lease_until: Option<Instant> = None;
    let mut restore_only = false;
    if let Some(link) = &parts.lease {
        {
            let mut hosts = link
                .hosts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for t in machine.plan_targets() {
                hosts.insert(t.id.clone(), crate::lease::host_key(&t));
            }
        }
        let mut rx = link.rx.clone();
        let news = match rx.borrow_and_update().clone() {
            LeaseState::Held { until } => LeaseNews::Until(until.saturating_duration_since(start)),
            LeaseState::Lost { reason, .. } => LeaseNews::Lost(reason),
        };
        if let LeaseNews::Until(u) = &news {
            lease_until = Some(start + *u);
        }
        lease_rx = Some(rx);
        machine.set_lease(Duration::ZERO, link.need);
        effects.extend(machine.handle(start.elapsed(), Input::Lease(news)));
    }
    loop {
        journal_finished(&parts, &mut machine);
        for e in effects.drain(..) {
            debug!(?e, "effect");
            if let Some(link) = parts.lease.as_ref().filter(|l| l.fenced_out()) {
                if let Some(reply) = fenced_reply(link, &e) {
                    let call = e.call();
                    inflight.push(Box::pin(async move { (call, reply) }));
                    continue;
                }
            }
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
            journal_gate(&parts, batch, &kind);
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
            () = at_risk(parts.lease.as_ref(), lease_until), if !restore_only => {
                restore_only = true;
                let left = lease_until.map_or(Duration::ZERO, |u| u.saturating_duration_since(Instant::now()));
                let reason = format!(
                    "not renewed: {} left, less than a step needs",
                    crate::duration_text::format(left)
                );
                error!(reason = %reason, "lease at risk: the run only puts back from now on");
                Input::Lease(LeaseNews::Lost(reason))
            }
            news = lease_change(parts.lease.as_ref(), &mut lease_rx) => match news {
                Some(LeaseState::Held { until }) => {
                    lease_until = Some(until);
                    Input::Lease(LeaseNews::Until(until.saturating_duration_since(start)))
                }
                Some(LeaseState::Lost { reason, .. }) => {
                    // Ran out or taken over: another holder may act on the
                    // pool now; this run changes nothing more.
                    if let Some(link) = &parts.lease {
                        link.fenced.store(true, Ordering::SeqCst);
                    }
                    error!(reason = %reason, "lease lost: this run touches the balancer no more");
                    lease_rx = None;
                    restore_only = true;
                    Input::Lease(LeaseNews::Lost(reason))
                }
                None => {
                    lease_rx = None;
                    Input::Tick
                }
            },
            () = sleep_until(wake) => Input::Tick,
        };
        effects = machine.handle(start.elapsed(), input);
    }
    if let Some(link) = &parts.lease {
        link.stop();
    }
    let outcome = machine.outcome();
    journal_finished(&parts, &mut machine);
    if machine.maintenance_open() {
        // A maintenance may still be running: the journal stays open, so a
        // new run is refused and resume or restore waits for it.
        warn!("a maintenance may still be running: the journal is left unfinished");
    } else if parts.journal_lost.load(Ordering::SeqCst) > 0 {
        // A journal with a gap is not closed: an `End` over it would make
        // `status` and a later run trust records that miss a change (and a
        // store may apply a write its client gave up on after later ones).
        // Left unfinished, resume or restore reconcile it with the balancer.
        error!(
            journal = %parts.journal.as_ref().map(|j| j.location()).unwrap_or_default(),
            "records of this run could not be written: the journal is left unfinished; `restore` (or `resume`) reconciles it with the balancer before a new run can start"
        );
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
        journal_records_lost: parts.journal_lost.load(Ordering::SeqCst),
    }
}

/// Records the targets that finished since the last look, and gives back
/// to the lease store the hosts back in service.
fn journal_finished(parts: &Arc<Parts>, machine: &mut Machine) {
    let mut back = Vec::new();
    for f in machine.take_finished() {
        if f.location == Location::InService {
            back.push(f.id.clone());
        }
        // Logged by `Parts::journal` when it fails; the run goes on.
        let _logged = parts.journal(&finished_record(f));
    }
    if let Some(link) = parts
        .lease
        .as_ref()
        .filter(|l| !back.is_empty() && !l.fenced_out())
    {
        let hosts = link.hosts_of(&back);
        let store = Arc::clone(&link.held.store);
        let grant = link.held.grant.clone();
        // Best effort: a host not given back stays held by this pool
        // until the lease is released.
        tokio::spawn(async move {
            if let Err(e) = store.give_back(&grant, &hosts).await {
                warn!(error = %e, "hosts back in service not given back to the lease store");
            }
        });
    }
}

/// When the lease will have less left than a step needs (never without a
/// lease).
async fn at_risk(link: Option<&LeaseLink>, until: Option<Instant>) {
    match (link, until) {
        (Some(link), Some(u)) => {
            tokio::time::sleep_until(u.checked_sub(link.need).unwrap_or(u)).await;
        }
        _ => std::future::pending().await,
    }
}

/// The reply to a change a run whose lease was lost does not make.
fn fenced_reply(link: &LeaseLink, effect: &Effect) -> Option<Reply> {
    let e = || {
        Error::journal(
            link.held.store.name(),
            format!(
                "refused: the lease of pool {} ({}) is lost (ran out or taken over); this run touches the balancer no more: resume or restore it under a new lease",
                link.held.grant.pool, link.held.grant.fence
            ),
        )
    };
    match effect {
        Effect::Drain(..) | Effect::Disable(..) | Effect::Enable(..) => {
            Some(Reply::Changed(Err(e())))
        }
        Effect::Execute(..) => Some(Reply::Executed(Err(e()))),
        _ => None,
    }
}

/// Records a gate's answer, or the decision at its timeout.
fn journal_gate(parts: &Parts, batch: Option<usize>, kind: &EventKind) {
    let record = match kind {
        EventKind::GateChecked {
            gate,
            when,
            go,
            detail,
            ..
        } => Record::Gate {
            gate: gate.clone(),
            when: *when,
            batch: batch.unwrap_or_default(),
            go: *go,
            detail: detail.clone(),
            timed_out: false,
            hook: false,
            at: jiff::Timestamp::now().to_string(),
        },
        EventKind::HookRan {
            hook,
            when,
            ok,
            detail,
        } => Record::Gate {
            gate: hook.clone(),
            when: *when,
            batch: batch.unwrap_or_default(),
            go: *ok,
            detail: detail.clone(),
            timed_out: false,
            hook: true,
            at: jiff::Timestamp::now().to_string(),
        },
        EventKind::GateTimedOut {
            gate,
            when,
            waited,
            action,
        } => Record::Gate {
            gate: gate.clone(),
            when: *when,
            batch: batch.unwrap_or_default(),
            go: *action == crate::gate::OnGateTimeout::Proceed,
            detail: Some(format!(
                "still no after {waited:?}; on_gate_timeout = {action:?}"
            )),
            timed_out: true,
            hook: false,
            at: jiff::Timestamp::now().to_string(),
        },
        _ => return,
    };
    // Logged by `Parts::journal` when it fails; the run goes on.
    let _logged = parts.journal(&record);
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
        EventKind::GateHolding {
            gate,
            when,
            reason,
            timeout,
        } => {
            warn!(gate = %gate, %when, reason = %reason, timeout_ms = timeout.as_millis() as u64, "gate says no: the rollout is held");
        }
        EventKind::GateChecked { gate, when, go, .. } => {
            debug!(gate = %gate, %when, go, "gate answered")
        }
        EventKind::GateTimedOut {
            gate, when, action, ..
        } => warn!(gate = %gate, %when, ?action, "gate still says no at its timeout"),
        EventKind::HookRan {
            hook,
            when,
            ok: false,
            detail,
        } => warn!(hook = %hook, %when, detail = detail.as_deref().unwrap_or(""), "hook failed"),
        EventKind::HookRan { hook, when, .. } => info!(hook = %hook, %when, "hook ran"),
        EventKind::Soaking { wait } => {
            info!(
                wait_ms = wait.as_millis() as u64,
                "batch back: soaking before the next"
            );
        }
        EventKind::FoundOut { id } => {
            warn!(target.id = %id, "found out of rotation, not by this run: left as found");
        }
        _ => {}
    }
}
