//! The rolling engine: drives every target through the phase machine one
//! batch at a time. See [`RolloutConfig`] for the semantics of each setting.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::balancer::{ListedTarget, LoadBalancer};
use crate::config::{OnFailure, RolloutConfig, Selection};
use crate::error::{Error, Result};
use crate::executor::{ExecOutcome, Executor, Preflight};
use crate::phase::{step, Observation, Phase, Stage, StepPolicy};
use crate::probe::{Probe, ProbeVerdict};
use crate::report::{Event, Outcome, PhaseTimings, Report, TargetReport, TargetResult};
use crate::retry::{with_retries, with_retries_when};
use crate::target::{Health, Target, TargetId, TargetState, TargetStatus};

/// A rollout: a balancer, an executor, an optional probe and a configuration.
///
/// ```
/// # tokio_test_block_on(async {
/// use hygiene_core::{InMemoryBalancer, Rollout, RolloutConfig, ScriptedExecutor};
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
    events: Option<mpsc::UnboundedSender<Event>>,
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
            events: None,
        }
    }

    /// Checks each target directly after the enable; only once the probe
    /// passes does a balancer health observation count.
    pub fn with_probe(mut self, probe: impl Probe) -> Self {
        self.probe = Some(Arc::new(probe));
        self
    }

    /// Cancels the run when `token` is cancelled: nothing new starts, drained
    /// targets not yet executing are put back at once, executing targets
    /// finish and go through enable and health; the report says `Cancelled`.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// A stream of progress events (phase changes, batches, retries).
    pub fn subscribe(&mut self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.events = Some(tx);
        rx
    }

    /// Runs the rollout.
    ///
    /// # Errors
    /// Only before anything is changed: the pool cannot be listed, a selected
    /// target is unknown ([`Error::NotFound`]), or `min_healthy` cannot be
    /// met by any batch of this pool ([`Error::InvalidConfig`]). Once a
    /// target has been touched, every problem ends in a [`Report`] with
    /// [`Outcome::Aborted`] and each touched target either back in service
    /// or listed as kept out.
    pub async fn run(self) -> Result<Report> {
        let span = tracing::info_span!("rollout", balancer = %self.lb.name(), executor = %self.exec.name());
        Run::new(self).start().instrument(span).await
    }
}

#[allow(dead_code)]
fn assert_run_is_send(r: Rollout) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&r.run());
}

#[derive(Debug)]
struct Slot {
    target: Target,
    phase: Phase,
    batch: Option<usize>,
    timings: PhaseTimings,
    execution: Option<ExecOutcome>,
    /// Taken out of rotation by this run and not yet put back.
    out_by_run: bool,
    /// Extra words for the report (a put-back that failed, …).
    note: Option<String>,
    /// Drained by the drain timeout with `Proceed`, work still in flight.
    drain_cut_short: bool,
}

/// Why the batch loop stops early.
enum Stop {
    Cancelled,
    Abort(String),
}

struct Run {
    lb: Arc<dyn LoadBalancer>,
    exec: Arc<dyn Executor>,
    probe: Option<Arc<dyn Probe>>,
    cfg: RolloutConfig,
    cancel: CancellationToken,
    events: Option<mpsc::UnboundedSender<Event>>,
    policy: StepPolicy,
    poll: Duration,
    slots: Vec<Slot>,
    balancer_calls: AtomicU64,
    executor_calls: AtomicU64,
    pool: usize,
}

impl Run {
    fn new(r: Rollout) -> Self {
        // A balancer's default of zero would spin: never poll faster than 1 ms.
        let poll = r
            .config
            .poll_interval
            .unwrap_or_else(|| r.lb.default_poll_interval())
            .max(Duration::from_millis(1));
        let policy = StepPolicy {
            drain_timeout: r.config.drain_timeout,
            on_drain_timeout: r.config.on_drain_timeout,
            health_timeout: r.config.health_timeout,
        };
        Self {
            lb: r.lb,
            exec: r.exec,
            probe: r.probe,
            cfg: r.config,
            cancel: r.cancel,
            events: r.events,
            policy,
            poll,
            slots: Vec::new(),
            balancer_calls: AtomicU64::new(0),
            executor_calls: AtomicU64::new(0),
            pool: 0,
        }
    }

    fn emit(&self, event: Event) {
        if let Some(tx) = &self.events {
            // A dropped receiver only means nobody watches progress.
            if tx.send(event).is_err() {
                debug!("event receiver dropped");
            }
        }
    }

    async fn lb_call<T, F, Fut>(&self, operation: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let calls = &self.balancer_calls;
        let r = with_retries(
            &self.cfg.retry,
            || {
                calls.fetch_add(1, Ordering::Relaxed);
                f()
            },
            |e, delay| self.on_retry(operation, e, delay),
        )
        .await;
        debug!(operation, ok = r.is_ok(), "balancer call");
        r
    }

    async fn exec_call<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.exec_call_when(operation, f, Error::is_retryable).await
    }

    async fn exec_call_when<T, F, Fut>(
        &self,
        operation: &'static str,
        mut f: F,
        when: impl FnMut(&Error) -> bool,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let calls = &self.executor_calls;
        with_retries_when(
            &self.cfg.retry,
            || {
                calls.fetch_add(1, Ordering::Relaxed);
                f()
            },
            when,
            |e, delay| self.on_retry(operation, e, delay),
        )
        .await
    }

    fn on_retry(&self, operation: &str, e: &Error, delay: Duration) {
        warn!(operation, error = %e, delay_ms = delay.as_millis() as u64, "retrying");
        self.emit(Event::Retry {
            operation: operation.to_owned(),
            error: e.to_string(),
            delay,
        });
    }

    fn observe(&mut self, i: usize, obs: Observation) -> Stage {
        let slot = &mut self.slots[i];
        let before = slot.phase.stage();
        slot.phase = step(&slot.phase, &obs, &self.policy);
        let after = slot.phase.stage();
        if before != after {
            let detail = match &slot.phase {
                Phase::Failed { reason, .. } | Phase::Skipped { reason } => Some(reason.clone()),
                _ => None,
            };
            if after == Stage::Failed {
                warn!(target.id = %slot.target.id, from = %before, reason = detail.as_deref().unwrap_or(""), "target failed");
            } else {
                info!(target.id = %slot.target.id, phase = %after, "phase");
            }
            let id = slot.target.id.clone();
            self.emit(Event::Phase {
                id,
                stage: after,
                detail,
            });
        }
        after
    }

    fn ids(&self, idx: &[usize]) -> Vec<TargetId> {
        idx.iter()
            .map(|&i| self.slots[i].target.id.clone())
            .collect()
    }

    async fn status(&self, idx: &[usize]) -> Result<Vec<TargetStatus>> {
        let ids = self.ids(idx);
        let lb = &self.lb;
        let st = self.lb_call("status", || lb.status(&ids)).await?;
        if st.len() != ids.len() {
            return Err(Error::protocol(
                lb.name(),
                format!(
                    "status returned {} entries for {} targets",
                    st.len(),
                    ids.len()
                ),
            ));
        }
        Ok(st)
    }

    /// Sleeps for `d`; false when cancelled meanwhile.
    async fn pause(&self, d: Duration) -> bool {
        self.pause_until(Instant::now() + d).await
    }

    /// Sleeps until `t`; false when cancelled meanwhile.
    async fn pause_until(&self, t: Instant) -> bool {
        tokio::select! {
            () = tokio::time::sleep_until(t) => true,
            () = self.cancel.cancelled() => false,
        }
    }

    async fn start(mut self) -> Result<Report> {
        let started = Instant::now();
        let lb = Arc::clone(&self.lb);
        let listed = self.lb_call("list", || lb.list()).await?;
        self.pool = listed.len();
        let selected = select(&listed, self.cfg.selection(), &self.lb.name())?;
        if selected.is_empty() {
            return Err(Error::invalid_config(
                "selection",
                format!("{} lists no target: nothing to maintain; check the pool (backend, upstream, target group)", self.lb.name()),
            ));
        }
        let min_h = self.cfg.min_healthy_of(self.pool);
        if min_h > 0 && min_h >= self.pool {
            return Err(Error::invalid_config(
                "min_healthy",
                format!("{min_h} of a pool of {} must stay healthy, so no target can ever be taken out; lower min_healthy", self.pool),
            ));
        }
        self.slots = selected
            .iter()
            .map(|l| Slot {
                target: l.target.clone(),
                phase: Phase::Pending,
                batch: None,
                timings: PhaseTimings::default(),
                execution: None,
                out_by_run: false,
                note: None,
                drain_cut_short: false,
            })
            .collect();
        info!(
            selected = self.slots.len(),
            pool = self.pool,
            "rollout starts"
        );
        self.emit(Event::Started {
            selected: self.slots.len(),
            pool: self.pool,
        });

        let mut queue = VecDeque::new();
        for (i, l) in selected.iter().enumerate() {
            if l.status.state == TargetState::InService {
                queue.push_back(i);
            } else {
                let why = format!(
                    "{:?} when the run started; the run restores what it found, nothing more",
                    l.status.state
                );
                self.observe(i, Observation::NotInService(why));
            }
        }

        let outcome = self.batches(queue).await;
        match &outcome {
            Outcome::Aborted { reason } => error!(reason = %reason, "rollout aborted"),
            other => info!(outcome = ?other, "rollout finished"),
        }
        self.emit(Event::Finished {
            outcome: outcome.clone(),
        });
        Ok(self.report(outcome, started.elapsed()))
    }

    async fn batches(&mut self, mut queue: VecDeque<usize>) -> Outcome {
        let selected = self.slots.len();
        let batch_len = self.cfg.batch_len(selected);
        let allowed = self.cfg.failures_allowed(selected);
        let mut index = 0;
        while !queue.is_empty() {
            if self.cancel.is_cancelled() {
                return Outcome::Cancelled;
            }
            let want = if self.cfg.canary && index == 0 {
                1
            } else {
                batch_len
            };
            let batch = match self.next_batch(&mut queue, want).await {
                Ok(b) => b,
                Err(Stop::Cancelled) => return Outcome::Cancelled,
                Err(Stop::Abort(reason)) => return Outcome::Aborted { reason },
            };
            if batch.is_empty() {
                continue;
            }
            let result = self
                .run_batch(index, &batch, !queue.is_empty())
                .instrument(tracing::info_span!("batch", index))
                .await;
            index += 1;
            if let Err(reason) = result {
                return Outcome::Aborted { reason };
            }
            if self.cancel.is_cancelled() {
                return Outcome::Cancelled;
            }
            let failures = self
                .slots
                .iter()
                .filter(|s| s.phase.stage() == Stage::Failed)
                .count();
            if failures > allowed {
                return Outcome::Aborted {
                    reason: format!(
                        "{failures} target(s) failed, more than max_failures = {} allows ({allowed} of {selected})",
                        self.cfg.max_failures
                    ),
                };
            }
        }
        Outcome::Completed
    }

    /// The next batch: up to `want` targets from the queue that are still in
    /// service, shrunk to respect `min_healthy`.
    async fn next_batch(
        &mut self,
        queue: &mut VecDeque<usize>,
        want: usize,
    ) -> Result<Vec<usize>, Stop> {
        let min_h = self.cfg.min_healthy_of(self.pool);
        let mut waiting_since: Option<Instant> = None;
        loop {
            let cands: Vec<usize> = queue.iter().take(want).copied().collect();
            if cands.is_empty() {
                return Ok(Vec::new());
            }
            let st = self
                .status(&cands)
                .await
                .map_err(|e| Stop::Abort(format!("status before a batch failed: {e}")))?;
            let gone: Vec<(usize, TargetState)> = cands
                .iter()
                .zip(&st)
                .filter(|(_, s)| s.state != TargetState::InService)
                .map(|(&i, s)| (i, s.state))
                .collect();
            if !gone.is_empty() {
                for (i, state) in gone {
                    queue.retain(|&q| q != i);
                    self.observe(
                        i,
                        Observation::NotInService(format!(
                            "{state:?} when its batch was due; left as found"
                        )),
                    );
                }
                continue;
            }
            let mut take = cands.len();
            if min_h > 0 {
                let lb = Arc::clone(&self.lb);
                let listed = self.lb_call("list", || lb.list()).await.map_err(|e| {
                    Stop::Abort(format!("listing the pool for min_healthy failed: {e}"))
                })?;
                let caps = self.lb.capabilities();
                let healthy = listed
                    .iter()
                    .filter(|l| l.status.is_serving_healthy_with(&caps))
                    .count();
                let mut budget = healthy.saturating_sub(min_h);
                take = 0;
                for s in &st {
                    let cost = usize::from(s.is_serving_healthy_with(&caps));
                    if cost > budget {
                        break;
                    }
                    budget -= cost;
                    take += 1;
                }
                if take == 0 {
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.cfg.capacity_timeout {
                        let e = Error::Capacity {
                            message: format!(
                                "{healthy} target(s) healthy, min_healthy = {} requires {min_h}; waited {:?} (capacity_timeout) for capacity to return. Bring targets back or lower min_healthy",
                                self.cfg.min_healthy, self.cfg.capacity_timeout
                            ),
                        };
                        return Err(Stop::Abort(e.to_string()));
                    }
                    self.emit(Event::WaitingForCapacity {
                        healthy,
                        required: min_h,
                    });
                    if !self.pause(self.poll).await {
                        return Err(Stop::Cancelled);
                    }
                    continue;
                }
            }
            return Ok(queue.drain(..take).collect());
        }
    }

    /// One batch; `more`: another batch follows (warmup is the wait before it).
    async fn run_batch(&mut self, index: usize, batch: &[usize], more: bool) -> Result<(), String> {
        let ids = self.ids(batch);
        info!(index, size = batch.len(), "batch starts");
        self.emit(Event::BatchStarted {
            index,
            targets: ids,
        });
        for &i in batch {
            self.slots[i].batch = Some(index);
        }
        let ready = self.preflight(batch).await;
        if ready.is_empty() || self.cancel.is_cancelled() {
            // Cancelled during preflight: start nothing new.
            return Ok(());
        }
        let abort = self.drain(&ready).await;
        if abort.is_none() && !self.cancel.is_cancelled() {
            self.execute(&ready).await;
        }
        if self.cancel.is_cancelled() {
            // Drained targets not yet executing go back at once.
            let back: Vec<usize> = ready
                .iter()
                .copied()
                .filter(|&i| matches!(self.slots[i].phase, Phase::Draining | Phase::Drained { .. }))
                .collect();
            for &i in &back {
                self.observe(i, Observation::Cancelled);
            }
            self.put_back(&back, "the run was cancelled").await;
        }
        let abort = match abort {
            Some(reason) => Some(reason),
            None => self.enable_and_verify(&ready).await,
        };
        self.apply_failure_policy(&ready).await;
        // Verified targets are done even when the run aborts; only the wait
        // for the next batch (warmup) is skipped then.
        self.warmup(&ready, abort.is_none() && more).await;
        match abort {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    async fn preflight(&mut self, batch: &[usize]) -> Vec<usize> {
        let targets: Vec<Target> = batch
            .iter()
            .map(|&i| self.slots[i].target.clone())
            .collect();
        let exec = Arc::clone(&self.exec);
        let verdicts = match self
            .exec_call("preflight", || exec.preflight(&targets))
            .await
        {
            Ok(v) if v.len() == batch.len() => v,
            Ok(v) => vec![
                Preflight::NotReady(format!(
                    "executor returned {} preflight results for {} targets",
                    v.len(),
                    batch.len()
                ));
                batch.len()
            ],
            Err(e) => vec![Preflight::NotReady(format!("preflight failed: {e}")); batch.len()],
        };
        let mut ready = Vec::new();
        for (&i, v) in batch.iter().zip(verdicts) {
            match v {
                Preflight::Ready => ready.push(i),
                Preflight::NotReady(why) => {
                    self.observe(
                        i,
                        Observation::PreflightFailed(format!(
                            "{why}; not drained, left in service"
                        )),
                    );
                }
            }
        }
        ready
    }

    /// Drains and waits; `Some(reason)` when the balancer failed for good.
    async fn drain(&mut self, ready: &[usize]) -> Option<String> {
        let ids = self.ids(ready);
        let lb = Arc::clone(&self.lb);
        if let Err(e) = self.lb_call("drain", || lb.drain(&ids)).await {
            let reason = format!("drain failed: {e}");
            // Bad input changes nothing (the trait's contract); any other
            // failure may have been applied in part: treat all as out.
            let changed = !matches!(e, Error::NotFound { .. } | Error::InvalidName { .. });
            for &i in ready {
                self.slots[i].out_by_run = changed;
                self.observe(i, Observation::DrainSent);
                self.observe(i, Observation::Error(reason.clone()));
            }
            self.put_back(ready, "the drain failed before any maintenance")
                .await;
            return Some(reason);
        }
        let since = Instant::now();
        for &i in ready {
            self.slots[i].out_by_run = true;
            self.observe(i, Observation::DrainSent);
        }
        let mut draining = ready.to_vec();
        let mut tick = since;
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            let st = match self.status(&draining).await {
                Ok(st) => st,
                Err(e) => {
                    let reason = format!("status while draining failed: {e}");
                    let back: Vec<usize> = ready
                        .iter()
                        .copied()
                        .filter(|&i| {
                            matches!(self.slots[i].phase, Phase::Draining | Phase::Drained { .. })
                        })
                        .collect();
                    for &i in &back {
                        self.observe(i, Observation::Error(reason.clone()));
                    }
                    self.put_back(&back, "draining could not be observed; not maintained")
                        .await;
                    return Some(reason);
                }
            };
            let waited = since.elapsed();
            for (&i, status) in draining.iter().zip(st) {
                debug!(target.id = %self.slots[i].target.id, connections = ?status.connections, "waiting for drain");
                match self.observe(i, Observation::DrainStatus { status, waited }) {
                    Stage::Draining => {}
                    Stage::Failed if status.state == TargetState::InService => {
                        // The drain never took effect: the target is serving.
                        self.slots[i].out_by_run = false;
                    }
                    _ => {
                        self.slots[i].timings.drain = Some(waited);
                        self.slots[i].drain_cut_short =
                            self.slots[i].phase == (Phase::Drained { forced: true });
                    }
                }
            }
            draining.retain(|&i| self.slots[i].phase == Phase::Draining);
            if draining.is_empty() {
                return None;
            }
            let wake = next_poll(&mut tick, self.poll, since + self.policy.drain_timeout);
            if !self.pause_until(wake).await {
                return None;
            }
        }
    }

    async fn execute(&mut self, ready: &[usize]) {
        let run: Vec<usize> = ready
            .iter()
            .copied()
            .filter(|&i| matches!(self.slots[i].phase, Phase::Drained { .. }))
            .collect();
        if run.is_empty() {
            return;
        }
        let targets: Vec<Target> = run.iter().map(|&i| self.slots[i].target.clone()).collect();
        for &i in &run {
            self.observe(i, Observation::ExecStarted);
        }
        let started = Instant::now();
        let exec = Arc::clone(&self.exec);
        // Maintenance (a reboot, a patch) is not safe to run twice: only a
        // throttled call, which the executor did not accept, is retried.
        let result = self
            .exec_call_when(
                "execute",
                || exec.execute(&targets),
                |e| matches!(e, Error::Throttled { .. }),
            )
            .await;
        let outcomes: Vec<Result<ExecOutcome, String>> = match result {
            Ok(v) if v.len() == run.len() => v
                .into_iter()
                .zip(&targets)
                .map(|(o, t)| {
                    if o.id == t.id {
                        Ok(o)
                    } else {
                        Err(format!(
                            "executor returned the outcome of {} in the place of {}: not trusted",
                            o.id, t.id
                        ))
                    }
                })
                .collect(),
            Ok(v) => vec![
                Err(format!(
                    "executor returned {} outcomes for {} targets",
                    v.len(),
                    run.len()
                ));
                run.len()
            ],
            Err(e) => vec![Err(format!("executor failed: {e}")); run.len()],
        };
        for (&i, out) in run.iter().zip(outcomes) {
            let obs = match out {
                Ok(o) => {
                    self.slots[i].timings.execute = Some(o.duration);
                    let r = if o.success {
                        Ok(())
                    } else {
                        Err(o.message.clone().unwrap_or_else(|| match o.exit_code {
                            Some(c) => format!("maintenance exited with code {c}"),
                            None => "maintenance failed".to_owned(),
                        }))
                    };
                    self.slots[i].execution = Some(o);
                    r
                }
                Err(e) => {
                    self.slots[i].timings.execute = Some(started.elapsed());
                    Err(e)
                }
            };
            self.observe(i, Observation::ExecFinished(obs));
        }
    }

    /// Enables the successfully maintained targets and waits for a fresh
    /// healthy observation of each.
    async fn enable_and_verify(&mut self, ready: &[usize]) -> Option<String> {
        let ok: Vec<usize> = ready
            .iter()
            .copied()
            .filter(|&i| self.slots[i].phase == Phase::Enabling)
            .collect();
        if ok.is_empty() {
            return None;
        }
        let ids = self.ids(&ok);
        let lb = Arc::clone(&self.lb);
        let mut abort = None;
        let mut ok = ok;
        if let Err(e) = self.lb_call("enable", || lb.enable(&ids)).await {
            let reason = format!("enable failed after a successful maintenance: {e}");
            // Bad input changes nothing (the trait's contract): one unknown
            // id must not keep the whole batch out. Try each target alone.
            let each =
                ok.len() > 1 && matches!(e, Error::NotFound { .. } | Error::InvalidName { .. });
            if !each {
                for &i in &ok {
                    self.observe(i, Observation::Error(reason.clone()));
                }
                return Some(reason);
            }
            let mut enabled = Vec::new();
            for &i in &ok {
                let id = self.slots[i].target.id.clone();
                match self
                    .lb_call("enable", || lb.enable(std::slice::from_ref(&id)))
                    .await
                {
                    Ok(()) => enabled.push(i),
                    Err(e1) => {
                        let why = format!("enable failed after a successful maintenance: {e1}");
                        self.observe(i, Observation::Error(why));
                    }
                }
            }
            if enabled.len() < ok.len() {
                abort = Some(reason);
            }
            if enabled.is_empty() {
                return abort;
            }
            ok = enabled;
        }
        let since = Instant::now();
        for &i in &ok {
            self.slots[i].out_by_run = false;
        }
        let caps = self.lb.capabilities();
        let mut probed: HashMap<usize, Option<String>> = HashMap::new();
        let mut waiting = ok;
        let mut tick = since;
        loop {
            if let Some(probe) = self.probe.clone() {
                for &i in &waiting {
                    if matches!(probed.get(&i), Some(None)) {
                        continue;
                    }
                    let left = (since + self.policy.health_timeout)
                        .saturating_duration_since(Instant::now())
                        .max(self.poll);
                    let verdict = match tokio::time::timeout(
                        left,
                        probe.check(&self.slots[i].target),
                    )
                    .await
                    {
                        Ok(Ok(ProbeVerdict::Pass)) => None,
                        Ok(Ok(ProbeVerdict::Fail(why))) => Some(format!("probe: {why}")),
                        Ok(Err(e)) => Some(format!("probe cannot run: {e}")),
                        Err(_) => Some(format!("probe gave no verdict within {left:?}")),
                    };
                    probed.insert(i, verdict);
                }
            }
            let st = match self.status(&waiting).await {
                Ok(st) => st,
                Err(e) => {
                    let reason = format!("status after enable failed: {e}");
                    for &i in &waiting {
                        self.observe(i, Observation::Error(reason.clone()));
                    }
                    return Some(reason);
                }
            };
            let waited = since.elapsed();
            for (&i, s) in waiting.iter().zip(st) {
                let probe_fail = probed.get(&i).cloned().flatten();
                let healthy = probe_fail.is_none() && s.is_serving_healthy_with(&caps);
                let detail = probe_fail.unwrap_or_else(|| match s.health {
                    Health::Unknown => format!(
                        "balancer reports {:?} with health Unknown (no health check has passed since the enable; is a check configured for it?)",
                        s.state
                    ),
                    h => format!("balancer reports {:?}, health {h:?}", s.state),
                });
                let detail = match self.lb.status_reason(&self.slots[i].target.id) {
                    Some(why) if !healthy => format!("{detail}: {why}"),
                    _ => detail,
                };
                if self.observe(
                    i,
                    Observation::Health {
                        healthy,
                        detail,
                        waited,
                    },
                ) == Stage::Healthy
                {
                    self.slots[i].timings.health = Some(waited);
                }
            }
            waiting.retain(|&i| self.slots[i].phase == Phase::Enabling);
            if waiting.is_empty() {
                return abort;
            }
            // Health is awaited even when cancelled: the target is already
            // back in rotation and must be verified or taken out again.
            tokio::time::sleep_until(next_poll(
                &mut tick,
                self.poll,
                since + self.policy.health_timeout,
            ))
            .await;
        }
    }

    /// KeepOut: failed targets in rotation are taken out again. Restore:
    /// failed targets out of rotation are put back.
    async fn apply_failure_policy(&mut self, ready: &[usize]) {
        let failed: Vec<usize> = ready
            .iter()
            .copied()
            .filter(|&i| self.slots[i].phase.stage() == Stage::Failed)
            .collect();
        match self.cfg.on_failure {
            OnFailure::Restore => {
                let back: Vec<usize> = failed
                    .into_iter()
                    .filter(|&i| self.slots[i].out_by_run)
                    .collect();
                self.put_back(&back, "on_failure = restore").await;
            }
            OnFailure::KeepOut => {
                // Only a target that failed its health check after the enable
                // is back in rotation; every other failure is still out.
                let out: Vec<usize> = failed
                    .into_iter()
                    .filter(|&i| {
                        !self.slots[i].out_by_run
                            && matches!(
                                self.slots[i].phase,
                                Phase::Failed {
                                    at: Stage::Enabling,
                                    ..
                                }
                            )
                    })
                    .collect();
                if out.is_empty() {
                    return;
                }
                let ids = self.ids(&out);
                let lb = Arc::clone(&self.lb);
                let hard = lb.capabilities().hard_disable;
                let r = if hard {
                    self.lb_call("disable", || lb.disable(&ids)).await
                } else {
                    self.lb_call("drain", || lb.drain(&ids)).await
                };
                match r {
                    Ok(()) => {
                        for &i in &out {
                            self.slots[i].out_by_run = true;
                        }
                    }
                    Err(e) => {
                        // The call may have been applied in part (one node
                        // of two): ask what the balancer shows now, and
                        // count as out whatever is not plainly in service.
                        let seen = self.status(&out).await.ok();
                        for (k, &i) in out.iter().enumerate() {
                            let state = seen.as_ref().map(|st| st[k].state);
                            self.slots[i].out_by_run = state != Some(TargetState::InService);
                            self.slots[i].note = Some(match state {
                                Some(TargetState::InService) => {
                                    format!("it failed its health check and could not be taken out of rotation again ({e}): it is IN SERVICE")
                                }
                                Some(s) => format!("taking it out again failed ({e}) but the balancer shows it {s:?}"),
                                None => format!("taking it out again failed ({e}) and its state could not be read: check it"),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Enables targets the run took out, recording failures on each.
    async fn put_back(&mut self, idx: &[usize], why: &str) {
        let out: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| self.slots[i].out_by_run)
            .collect();
        if out.is_empty() {
            return;
        }
        let ids = self.ids(&out);
        let lb = Arc::clone(&self.lb);
        match self.lb_call("enable", || lb.enable(&ids)).await {
            Ok(()) => {
                for &i in &out {
                    self.slots[i].out_by_run = false;
                }
                info!(count = out.len(), why, "targets put back in rotation");
            }
            Err(e) => {
                error!(error = %e, why, "could not put targets back in rotation");
                for &i in &out {
                    self.slots[i].note = Some(format!("putting it back ({why}) failed: {e}"));
                    if self.slots[i].phase == Phase::Restored {
                        let reason = format!("cancelled, and re-enabling failed: {e}");
                        self.slots[i].phase = Phase::Failed {
                            at: Stage::Restored,
                            reason: reason.clone(),
                        };
                        let id = self.slots[i].target.id.clone();
                        self.emit(Event::Phase {
                            id,
                            stage: Stage::Failed,
                            detail: Some(reason),
                        });
                    }
                }
            }
        }
    }

    async fn warmup(&mut self, ready: &[usize], wait: bool) {
        let healthy: Vec<usize> = ready
            .iter()
            .copied()
            .filter(|&i| self.slots[i].phase == Phase::Healthy)
            .collect();
        if healthy.is_empty() {
            return;
        }
        let w = self.cfg.warmup;
        if wait && !w.is_zero() && !self.cancel.is_cancelled() {
            let t = Instant::now();
            self.pause(w).await;
            for &i in &healthy {
                self.slots[i].timings.warmup = Some(t.elapsed());
            }
        }
        for &i in &healthy {
            self.observe(i, Observation::WarmedUp);
            self.observe(i, Observation::Finished);
        }
    }

    fn report(self, outcome: Outcome, duration: Duration) -> Report {
        let lb = &self.lb;
        let batches = self
            .slots
            .iter()
            .filter_map(|s| s.batch)
            .max()
            .map_or(0, |b| b + 1);
        let targets = self
            .slots
            .into_iter()
            .map(|s| {
                let result = match s.phase {
                    Phase::Done => TargetResult::Done,
                    Phase::Skipped { reason } => TargetResult::Skipped { reason },
                    Phase::Restored if !s.out_by_run => TargetResult::Restored {
                        reason: "the run was cancelled before its maintenance".into(),
                    },
                    Phase::Failed { at, reason } => TargetResult::Failed {
                        phase: at,
                        reason: match &s.note {
                            Some(n) => format!("{reason}; {n}"),
                            None => reason,
                        },
                        kept_out: s.out_by_run,
                        restore_hint: s.out_by_run.then(|| lb.enable_hint(&s.target.id)),
                    },
                    Phase::Pending => TargetResult::NotStarted,
                    // A target the run left mid-way: report it as failed so
                    // it is never lost silently.
                    other => TargetResult::Failed {
                        phase: other.stage(),
                        reason: s
                            .note
                            .clone()
                            .unwrap_or_else(|| "the run ended with the target mid-way".into()),
                        kept_out: s.out_by_run,
                        restore_hint: s.out_by_run.then(|| lb.enable_hint(&s.target.id)),
                    },
                };
                TargetReport {
                    id: s.target.id,
                    result,
                    batch: s.batch,
                    timings: s.timings,
                    execution: s.execution,
                    drain_cut_short: s.drain_cut_short,
                }
            })
            .collect();
        Report {
            outcome,
            balancer: self.lb.name(),
            executor: self.exec.name(),
            duration,
            batches,
            targets,
            balancer_calls: self.balancer_calls.load(Ordering::Relaxed),
            executor_calls: self.executor_calls.load(Ordering::Relaxed),
        }
    }
}

/// The next poll instant: polls start at a fixed rate (one every `poll`
/// from the first), so the time a status call takes does not stretch the
/// interval, and a change is seen within one interval of happening. Never
/// later than `deadline`, so a timeout is judged on time.
fn next_poll(tick: &mut Instant, poll: Duration, deadline: Instant) -> Instant {
    let now = Instant::now();
    *tick += poll;
    if *tick < now {
        // A slow call: skip the missed ticks rather than poll back to back.
        *tick = now + poll;
    }
    (*tick).min(deadline.max(now + Duration::from_millis(1)))
}

fn select(
    listed: &[ListedTarget],
    selection: &Selection,
    balancer: &str,
) -> Result<Vec<ListedTarget>> {
    match selection {
        Selection::All => Ok(listed.to_vec()),
        Selection::Named(ids) => {
            let by_id: HashMap<&TargetId, &ListedTarget> =
                listed.iter().map(|l| (&l.target.id, l)).collect();
            ids.iter()
                .map(|id| {
                    by_id.get(id).map(|l| (*l).clone()).ok_or_else(|| {
                        Error::target_not_found(id.as_str(), Some(balancer.to_owned()))
                    })
                })
                .collect()
        }
    }
}
