//! The rollout machine: every target's step and location, and the rules
//! that move them. It performs no I/O and reads no clock (quinn-proto's
//! shape): the driver feeds it replies and the time, asks it for the
//! effects to perform ([`Machine::handle`]) and for the next instant it
//! wants to be woken at ([`Machine::poll_timeout`]).
//!
//! Invariants 3–5 hold here by construction, whatever the driver does:
//! an `Execute` effect only names targets whose drain was judged finished;
//! an `Enable` only names targets whose maintenance succeeded (and whose
//! probe passed), targets put back without any maintenance (cancellation,
//! a failed drain), or failed targets under `on_failure = restore`; and the
//! machine only finishes once no target is left out of rotation by the run
//! without being reported as kept out.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::balancer::ListedTarget;
use crate::config::{Amount, OnFailure, Pacing, RolloutConfig, Selection};
use crate::error::{Error, Result};
use crate::executor::{ExecOutcome, Preflight};
use crate::phase::{
    judge_drain, judge_health, DrainVerdict, HealthVerdict, Location, Rules, Stage,
};
use crate::probe::ProbeVerdict;
use crate::report::{
    AbortReason, EventKind, Outcome, PhaseTimings, PutBack, TargetReport, TargetResult,
};
use crate::target::{Capabilities, Target, TargetId, TargetState, TargetStatus};

use super::planner;

/// Identifies one effect, so its reply can come back in any order.
pub(crate) type CallId = u64;

/// Something the driver must do, then answer with [`Input::Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    List(CallId),
    Status(CallId, Vec<TargetId>),
    Preflight(CallId, Vec<Target>),
    Drain(CallId, Vec<TargetId>),
    Disable(CallId, Vec<TargetId>),
    Enable(CallId, Vec<TargetId>),
    Execute(CallId, Vec<Target>),
    Probe(CallId, Target),
}

impl Effect {
    pub(crate) fn call(&self) -> CallId {
        match self {
            Self::List(c)
            | Self::Status(c, _)
            | Self::Preflight(c, _)
            | Self::Drain(c, _)
            | Self::Disable(c, _)
            | Self::Enable(c, _)
            | Self::Execute(c, _)
            | Self::Probe(c, _) => *c,
        }
    }
}

/// The answer to an effect.
#[derive(Debug)]
pub(crate) enum Reply {
    Listed(Result<Vec<ListedTarget>>),
    Status(Result<Vec<TargetStatus>>),
    Preflight(Result<Vec<Preflight>>),
    /// Drain, disable or enable.
    Changed(Result<()>),
    Executed(Result<Vec<ExecOutcome>>),
    Probed(Result<ProbeVerdict>),
}

/// What the machine is fed.
#[derive(Debug)]
pub(crate) enum Input {
    /// Time passed (the driver woke at [`Machine::poll_timeout`]).
    Tick,
    /// The operator cancelled the run.
    Cancel,
    /// An effect finished.
    Reply(CallId, Reply),
}

/// Why an enable is wanted; decides what happens once it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// After a successful maintenance: verify fresh health, then done.
    Maintained,
    /// `on_failure = restore`: put back, verify, report the health.
    Restore,
    /// Cancelled before its maintenance: put back at once.
    Cancel,
    /// A drain failed or could not be watched: undo it, no maintenance ran.
    Undo,
}

/// What a target is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Queued,
    Preflight,
    Recheck,
    DrainCall,
    Draining,
    Drained,
    Execute,
    /// Probing while out of rotation; `wake` is the next attempt when no
    /// probe is in flight.
    Probe {
        in_flight: bool,
        wake: Duration,
    },
    AwaitEnable,
    EnableCall,
    Verify,
    /// Healthy; warming up until `until` (unknown while its batch finishes).
    Warm {
        until: Option<Duration>,
    },
    TakeOut,
    TakeOutCall,
    ReadBack,
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Done,
    Failed,
    Skipped(String),
    Restored(String),
    Vanished(Stage, String),
}

/// After which failed call a status is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Drain,
    Enable,
    TakeOut,
}

#[derive(Debug, Clone)]
enum Call {
    List(Vec<usize>),
    Recheck(Vec<usize>),
    Poll(Vec<usize>),
    Preflight(Vec<usize>),
    Drain(Vec<usize>),
    Enable(Vec<usize>),
    TakeOut(Vec<usize>),
    Execute(Vec<usize>),
    Probe(usize),
    ReadBack(Vec<usize>, After),
}

#[derive(Debug)]
struct Slot {
    target: Target,
    step: Step,
    location: Location,
    group: Option<usize>,
    purpose: Purpose,
    /// When the current wait started: the drain call, the end of the
    /// maintenance, the enable call, the start of warmup.
    since: Duration,
    timings: PhaseTimings,
    execution: Option<ExecOutcome>,
    drain_cut_short: bool,
    failure: Option<(Stage, String)>,
    put_back: Option<PutBack>,
    last_probe: Option<String>,
    notes: Vec<String>,
    end: Option<End>,
    emitted: Stage,
}

/// The plan step in flight (one at a time): choosing and preparing the
/// next targets to take out.
#[derive(Debug)]
enum PlanStep {
    Listing,
    Preflight,
    Recheck { pending: usize, ready: Vec<usize> },
}

/// The rollout machine. See the module docs.
#[derive(Debug)]
pub(crate) struct Machine {
    cfg: RolloutConfig,
    caps: Capabilities,
    rules: Rules,
    poll: Duration,
    has_probe: bool,
    slots: Vec<Slot>,
    index: HashMap<TargetId, usize>,
    queue: VecDeque<usize>,
    /// Targets neither queued nor finished.
    active: BTreeSet<usize>,
    pool: usize,
    batch_len: usize,
    allowed: usize,
    failed: usize,
    groups: usize,
    canary_done: bool,
    plan: Option<PlanStep>,
    plan_retry_at: Option<Duration>,
    capacity_since: Option<Duration>,
    calls: HashMap<CallId, Call>,
    next_call: CallId,
    poll_due: Duration,
    poll_in_flight: bool,
    cancelled: bool,
    stop: Option<AbortReason>,
    events: VecDeque<(Option<usize>, EventKind)>,
    now: Duration,
}

impl Machine {
    /// A machine over the pool as listed at the start.
    ///
    /// # Errors
    /// Before anything is touched: a selected target is unknown
    /// ([`Error::NotFound`]), the pool is empty, or `min_healthy` can never
    /// be met ([`Error::InvalidConfig`]).
    pub(crate) fn new(
        cfg: RolloutConfig,
        caps: Capabilities,
        poll: Duration,
        has_probe: bool,
        listed: &[ListedTarget],
        balancer: &str,
    ) -> Result<Self> {
        let selected = select(listed, cfg.selection(), balancer)?;
        if selected.is_empty() {
            return Err(Error::invalid_config(
                "selection",
                format!("{balancer} lists no target: nothing to maintain; check the pool (backend, upstream, target group)"),
            ));
        }
        let pool = listed.len();
        let min_h = cfg.min_healthy_of(pool);
        if min_h > 0 && min_h >= pool {
            return Err(Error::invalid_config(
                "min_healthy",
                format!("{min_h} of a pool of {pool} must stay healthy, so no target can ever be taken out; lower min_healthy"),
            ));
        }
        let rules = Rules {
            drain_timeout: cfg.drain_timeout(),
            on_drain_timeout: cfg.on_drain_timeout(),
            health_timeout: cfg.health_timeout(),
        };
        let mut m = Self {
            batch_len: cfg.batch_len(selected.len()),
            allowed: cfg.failures_allowed(selected.len()),
            caps,
            rules,
            poll,
            has_probe,
            slots: Vec::with_capacity(selected.len()),
            index: HashMap::with_capacity(selected.len()),
            queue: VecDeque::with_capacity(selected.len()),
            active: BTreeSet::new(),
            pool,
            failed: 0,
            groups: 0,
            canary_done: !cfg.canary(),
            plan: None,
            plan_retry_at: None,
            capacity_since: None,
            calls: HashMap::new(),
            next_call: 0,
            poll_due: Duration::ZERO,
            poll_in_flight: false,
            cancelled: false,
            stop: None,
            events: VecDeque::new(),
            now: Duration::ZERO,
            cfg,
        };
        m.events.push_back((
            None,
            EventKind::Started {
                selected: selected.len(),
                pool,
            },
        ));
        for (i, l) in selected.iter().enumerate() {
            m.index.insert(l.target.id.clone(), i);
            m.slots.push(Slot {
                target: l.target.clone(),
                step: Step::Queued,
                location: Location::InService,
                group: None,
                purpose: Purpose::Maintained,
                since: Duration::ZERO,
                timings: PhaseTimings::default(),
                execution: None,
                drain_cut_short: false,
                failure: None,
                put_back: None,
                last_probe: None,
                notes: Vec::new(),
                end: None,
                emitted: Stage::Pending,
            });
            if l.status.state == TargetState::InService {
                m.queue.push_back(i);
            } else {
                m.slots[i].location = Location::OutBefore;
                m.finish(
                    i,
                    End::Skipped(format!(
                        "{:?} when the run started; the run restores what it found, nothing more",
                        l.status.state
                    )),
                );
            }
        }
        Ok(m)
    }

    /// Feeds one input at `now` (time since the run started) and returns
    /// the effects to perform.
    pub(crate) fn handle(&mut self, now: Duration, input: Input) -> Vec<Effect> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::Cancel => self.cancelled = true,
            Input::Reply(call, reply) => {
                if let Some(c) = self.calls.remove(&call) {
                    self.on_reply(c, reply, &mut out);
                }
            }
        }
        self.advance(&mut out);
        out
    }

    /// The next instant (time since the start) the machine wants to be
    /// woken at with [`Input::Tick`], if any.
    pub(crate) fn poll_timeout(&self) -> Option<Duration> {
        let mut t: Option<Duration> = None;
        let mut at = |d: Duration| t = Some(t.map_or(d, |t| t.min(d)));
        // The next poll: at its fixed-rate tick, or earlier at a timeout so
        // the timeout is judged on time. None while one is in flight.
        let mut poll: Option<Duration> = None;
        for &i in &self.active {
            let s = &self.slots[i];
            let deadline = match s.step {
                Step::Draining => s.since + self.rules.drain_timeout,
                Step::Verify => s.since + self.rules.health_timeout,
                Step::Probe {
                    in_flight: false,
                    wake,
                } => {
                    at(wake);
                    continue;
                }
                Step::Warm { until: Some(u) } => {
                    at(u);
                    continue;
                }
                _ => continue,
            };
            poll = Some(poll.map_or(deadline, |p: Duration| p.min(deadline)));
        }
        if let Some(deadline) = poll {
            if !self.poll_in_flight {
                at(deadline.min(self.poll_due));
            }
        }
        if self.plan.is_none() && !self.cancelled && self.stop.is_none() {
            if let Some(r) = self.plan_retry_at {
                at(r);
            }
        }
        t
    }

    /// The next event to publish, with its batch.
    pub(crate) fn poll_event(&mut self) -> Option<(Option<usize>, EventKind)> {
        self.events.pop_front()
    }

    /// Nothing left to do: every target is finished or will not start.
    pub(crate) fn is_finished(&self) -> bool {
        self.plan.is_none()
            && self.calls.is_empty()
            && self.active.is_empty()
            && (self.queue.is_empty() || self.cancelled || self.stop.is_some())
    }

    /// How the run ended (meaningful once finished).
    pub(crate) fn outcome(&self) -> Outcome {
        if self.cancelled {
            Outcome::Cancelled
        } else if let Some(r) = &self.stop {
            Outcome::Aborted { reason: r.clone() }
        } else {
            Outcome::Completed
        }
    }

    /// Groups (batches) started.
    pub(crate) fn batches(&self) -> usize {
        self.groups
    }

    /// One report line per selected target; `hint` gives the way back for
    /// targets kept out.
    pub(crate) fn target_reports(&self, hint: impl Fn(&TargetId) -> String) -> Vec<TargetReport> {
        self.slots
            .iter()
            .map(|s| {
                let mut location = s.location;
                let result = match (&s.end, &s.failure) {
                    (Some(End::Done), _) => TargetResult::Done,
                    (Some(End::Skipped(r)), _) => TargetResult::Skipped { reason: r.clone() },
                    (Some(End::Restored(r)), _) => TargetResult::Restored { reason: r.clone() },
                    (Some(End::Vanished(at, r)), _) => TargetResult::Vanished {
                        phase: *at,
                        reason: r.clone(),
                    },
                    (None, None) if s.step == Step::Queued => TargetResult::NotStarted,
                    (_, failure) => {
                        // Never silent: a target mid-way (a bug) or failed is
                        // reported with where it is.
                        let (phase, reason) = failure.clone().unwrap_or_else(|| {
                            (
                                s.emitted,
                                "the run ended with the target mid-way".to_owned(),
                            )
                        });
                        if location == Location::OutByRun {
                            location = Location::KeptOut;
                        }
                        let kept_out = matches!(location, Location::KeptOut | Location::Unknown);
                        TargetResult::Failed {
                            phase,
                            reason,
                            kept_out,
                            restore_hint: kept_out.then(|| hint(&s.target.id)),
                            put_back: s.put_back.clone(),
                        }
                    }
                };
                TargetReport {
                    id: s.target.id.clone(),
                    result,
                    location,
                    batch: s.group,
                    timings: s.timings,
                    execution: s.execution.clone(),
                    drain_cut_short: s.drain_cut_short,
                    notes: s.notes.clone(),
                }
            })
            .collect()
    }

    // ---- bookkeeping ------------------------------------------------------

    fn call(&mut self, call: Call) -> CallId {
        let id = self.next_call;
        self.next_call += 1;
        self.calls.insert(id, call);
        id
    }

    fn set(&mut self, i: usize, step: Step) {
        self.slots[i].step = step;
        match step {
            Step::Queued | Step::Finished => {
                self.active.remove(&i);
            }
            _ => {
                self.active.insert(i);
            }
        }
        self.emit_stage(i);
    }

    fn finish(&mut self, i: usize, end: End) {
        let s = &mut self.slots[i];
        if matches!(end, End::Vanished(..)) && s.failure.is_some() {
            self.failed -= 1;
        }
        if s.location == Location::OutByRun {
            // Never lose a target: out because of the run and not coming
            // back is kept out, and reported so.
            s.location = Location::KeptOut;
        }
        s.end = Some(end);
        self.set(i, Step::Finished);
    }

    fn fail(&mut self, i: usize, at: Stage, reason: impl Into<String>) {
        let s = &mut self.slots[i];
        if s.failure.is_none() {
            s.failure = Some((at, reason.into()));
            self.failed += 1;
        } else {
            s.notes.push(reason.into());
        }
        self.emit_stage(i);
    }

    fn note(&mut self, i: usize, note: impl Into<String>) {
        self.slots[i].notes.push(note.into());
    }

    fn stop(&mut self, reason: AbortReason) {
        if self.stop.is_none() && !self.cancelled {
            self.events.push_back((
                None,
                EventKind::Stopping {
                    reason: reason.clone(),
                },
            ));
            self.stop = Some(reason);
        }
    }

    fn stop_balancer(&mut self, operation: &str, e: &Error) {
        self.stop(AbortReason::Balancer {
            operation: operation.to_owned(),
            message: e.to_string(),
        });
    }

    fn requeue(&mut self, idx: &[usize]) {
        for &i in idx.iter().rev() {
            self.slots[i].group = None;
            self.set(i, Step::Queued);
            self.queue.push_front(i);
        }
    }

    fn ids(&self, idx: &[usize]) -> Vec<TargetId> {
        idx.iter()
            .map(|&i| self.slots[i].target.id.clone())
            .collect()
    }

    fn visible(&self, i: usize) -> Stage {
        let s = &self.slots[i];
        if let Some(end) = &s.end {
            return match end {
                End::Done => Stage::Done,
                End::Failed => Stage::Failed,
                End::Skipped(_) => Stage::Skipped,
                End::Restored(_) => Stage::Restored,
                End::Vanished(..) => Stage::Vanished,
            };
        }
        if s.failure.is_some() {
            return Stage::Failed;
        }
        match s.step {
            Step::Queued => Stage::Pending,
            Step::Preflight | Step::Recheck => Stage::Preflight,
            Step::DrainCall | Step::Draining => Stage::Draining,
            Step::Drained => Stage::Drained,
            Step::Execute => Stage::Executing,
            Step::Probe { .. } => Stage::Probing,
            Step::AwaitEnable | Step::EnableCall | Step::Verify => match s.purpose {
                Purpose::Cancel | Purpose::Undo => s.emitted,
                _ => Stage::Enabling,
            },
            Step::Warm { .. } => Stage::Healthy,
            Step::TakeOut | Step::TakeOutCall | Step::ReadBack | Step::Finished => s.emitted,
        }
    }

    /// An event when the target's visible stage changed.
    fn emit_stage(&mut self, i: usize) {
        {
            let stage = self.visible(i);
            if stage == self.slots[i].emitted {
                return;
            }
            self.slots[i].emitted = stage;
            let s = &self.slots[i];
            let detail = match (&s.end, stage) {
                (Some(End::Skipped(r) | End::Restored(r) | End::Vanished(_, r)), _) => {
                    Some(r.clone())
                }
                (_, Stage::Failed) => s.failure.as_ref().map(|(_, r)| r.clone()),
                _ => None,
            };
            self.events.push_back((
                s.group,
                EventKind::Phase {
                    id: s.target.id.clone(),
                    stage,
                    detail,
                },
            ));
        }
    }

    fn in_progress(&self) -> usize {
        self.active.len()
    }

    /// Targets failed so far; a target that vanished is not a failure.
    fn failures(&self) -> usize {
        self.failed
    }

    // ---- replies ----------------------------------------------------------

    fn on_reply(&mut self, call: Call, reply: Reply, out: &mut Vec<Effect>) {
        match (call, reply) {
            (Call::List(cands), Reply::Listed(r)) => self.on_listed(&cands, r, out),
            (Call::Preflight(idx), Reply::Preflight(r)) => self.on_preflight(&idx, r, out),
            (Call::Recheck(idx), Reply::Status(r)) => self.on_recheck(&idx, r, out),
            (Call::Drain(idx), Reply::Changed(r)) => self.on_drain(&idx, r, out),
            (Call::Poll(idx), Reply::Status(r)) => self.on_poll(&idx, r, out),
            (Call::Execute(idx), Reply::Executed(r)) => self.on_execute(&idx, r),
            (Call::Probe(i), Reply::Probed(r)) => self.on_probe(i, r),
            (Call::Enable(idx), Reply::Changed(r)) => self.on_enable(&idx, r, out),
            (Call::TakeOut(idx), Reply::Changed(r)) => self.on_take_out(&idx, r, out),
            (Call::ReadBack(idx, after), Reply::Status(r)) => {
                self.on_read_back(&idx, after, r, out)
            }
            (call, reply) => {
                // A driver bug; never guess what a mismatched reply means.
                debug_assert!(false, "reply {reply:?} does not answer {call:?}");
            }
        }
    }

    fn on_listed(&mut self, cands: &[usize], r: Result<Vec<ListedTarget>>, out: &mut Vec<Effect>) {
        self.plan = None;
        let listed = match r {
            Ok(l) => l,
            Err(Error::Cancelled { .. }) => return,
            Err(e) => return self.stop_balancer("list", &e),
        };
        if self.cancelled || self.stop.is_some() {
            return;
        }
        self.pool = listed.len();
        let required = self.cfg.min_healthy_of(self.pool);
        let by_id: HashMap<&TargetId, &TargetStatus> =
            listed.iter().map(|l| (&l.target.id, &l.status)).collect();
        let healthy = listed
            .iter()
            .filter(|l| {
                l.status.is_serving_healthy_with(&self.caps) && self.counts_as_serving(&l.target.id)
            })
            .count();
        let mut removed = false;
        let mut costs = Vec::new();
        let mut fit = Vec::new();
        for &i in cands {
            if self.slots[i].step != Step::Queued {
                continue;
            }
            match by_id.get(&self.slots[i].target.id) {
                None => {
                    removed = true;
                    self.queue.retain(|&q| q != i);
                    self.slots[i].location = Location::Gone;
                    self.finish(
                        i,
                        End::Vanished(
                            Stage::Pending,
                            "no longer in the pool when its batch was due".into(),
                        ),
                    );
                }
                Some(st) if st.state != TargetState::InService => {
                    removed = true;
                    self.queue.retain(|&q| q != i);
                    self.slots[i].location = Location::OutBefore;
                    self.finish(
                        i,
                        End::Skipped(format!(
                            "{:?} when its batch was due; left as found",
                            st.state
                        )),
                    );
                }
                Some(st) => {
                    costs.push(usize::from(st.is_serving_healthy_with(&self.caps)));
                    fit.push(i);
                }
            }
        }
        let take = planner::fit(&costs, healthy, required);
        if take > 0 {
            self.capacity_since = None;
            let chosen: Vec<usize> = fit[..take].to_vec();
            let set: BTreeSet<usize> = chosen.iter().copied().collect();
            self.queue.retain(|q| !set.contains(q));
            self.start_preflight(chosen, out);
            return;
        }
        if removed || fit.is_empty() {
            return; // plan again at once with the next candidates
        }
        if self.in_progress() > 0 {
            self.plan_retry_at = Some(self.now + self.poll);
            return;
        }
        let since = *self.capacity_since.get_or_insert(self.now);
        let waited = self.now.saturating_sub(since);
        if waited >= self.cfg.capacity_timeout() {
            self.stop(AbortReason::Capacity {
                healthy,
                required,
                min_healthy: self.cfg.min_healthy(),
                waited,
            });
        } else {
            self.events
                .push_back((None, EventKind::WaitingForCapacity { healthy, required }));
            self.plan_retry_at = Some(self.now + self.poll);
        }
    }

    /// Whether a pool member may count as serving capacity: targets this
    /// run is working on never do, even when the listing still shows them
    /// in service (their drain may be applied at any moment).
    fn counts_as_serving(&self, id: &TargetId) -> bool {
        self.index.get(id).is_none_or(|&i| {
            let s = &self.slots[i];
            matches!(s.step, Step::Queued | Step::Finished) && s.location == Location::InService
        })
    }

    fn start_preflight(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        let g = self.groups;
        self.groups += 1;
        for &i in &idx {
            self.slots[i].group = Some(g);
            self.set(i, Step::Preflight);
        }
        self.events.push_back((
            Some(g),
            EventKind::BatchStarted {
                index: g,
                targets: self.ids(&idx),
            },
        ));
        let targets = idx.iter().map(|&i| self.slots[i].target.clone()).collect();
        let c = self.call(Call::Preflight(idx));
        out.push(Effect::Preflight(c, targets));
        self.plan = Some(PlanStep::Preflight);
    }

    fn on_preflight(&mut self, idx: &[usize], r: Result<Vec<Preflight>>, out: &mut Vec<Effect>) {
        self.plan = None;
        let verdicts = match r {
            Err(Error::Cancelled { .. }) => return self.requeue(idx),
            _ if self.cancelled => return self.requeue(idx),
            Ok(v) if v.len() == idx.len() => v,
            Ok(v) => vec![
                Preflight::NotReady(format!(
                    "executor returned {} preflight results for {} targets",
                    v.len(),
                    idx.len()
                ));
                idx.len()
            ],
            Err(e) => vec![Preflight::NotReady(format!("preflight failed: {e}")); idx.len()],
        };
        let mut ready = Vec::new();
        for (&i, v) in idx.iter().zip(verdicts) {
            match v {
                Preflight::Ready => ready.push(i),
                Preflight::NotReady(why) => {
                    self.fail(
                        i,
                        Stage::Preflight,
                        format!("{why}; not drained, left in service"),
                    );
                    self.finish(i, End::Failed);
                }
            }
        }
        if ready.is_empty() {
            return;
        }
        for &i in &ready {
            self.set(i, Step::Recheck);
        }
        let ids = self.ids(&ready);
        let c = self.call(Call::Recheck(ready));
        out.push(Effect::Status(c, ids));
        self.plan = Some(PlanStep::Recheck {
            pending: 1,
            ready: Vec::new(),
        });
    }

    fn on_recheck(&mut self, idx: &[usize], r: Result<Vec<TargetStatus>>, out: &mut Vec<Effect>) {
        match &mut self.plan {
            Some(PlanStep::Recheck { pending, .. }) => *pending -= 1,
            _ => {
                debug_assert!(false, "recheck reply without a recheck step");
                return;
            }
        }
        let mut ok = Vec::new();
        match r {
            Err(Error::NotFound { .. }) if idx.len() > 1 => {
                // Which one is gone? Ask for each alone.
                if let Some(PlanStep::Recheck { pending, .. }) = &mut self.plan {
                    *pending += idx.len();
                }
                for &i in idx {
                    let ids = self.ids(&[i]);
                    let c = self.call(Call::Recheck(vec![i]));
                    out.push(Effect::Status(c, ids));
                }
                return;
            }
            Err(e @ Error::NotFound { .. }) => {
                let i = idx[0];
                self.slots[i].location = Location::Gone;
                self.finish(
                    i,
                    End::Vanished(
                        Stage::Preflight,
                        format!("removed from the pool before its drain: {e}"),
                    ),
                );
            }
            Err(Error::Cancelled { .. }) => self.requeue(idx),
            Err(e) => {
                self.requeue(idx);
                self.stop_balancer("status", &e);
            }
            Ok(st) if st.len() != idx.len() => {
                self.requeue(idx);
                self.stop_balancer(
                    "status",
                    &Error::protocol(
                        "balancer",
                        format!(
                            "status returned {} entries for {} targets",
                            st.len(),
                            idx.len()
                        ),
                    ),
                );
            }
            Ok(st) => {
                for (&i, s) in idx.iter().zip(st) {
                    if s.state == TargetState::InService {
                        ok.push(i);
                    } else {
                        self.slots[i].location = Location::OutBefore;
                        self.finish(
                            i,
                            End::Skipped(format!(
                                "{:?} right before its drain (someone else took it out); left as found",
                                s.state
                            )),
                        );
                    }
                }
            }
        }
        let Some(PlanStep::Recheck { pending, ready }) = &mut self.plan else {
            return;
        };
        ready.extend(ok);
        if *pending > 0 {
            return;
        }
        let ready = std::mem::take(ready);
        self.plan = None;
        if ready.is_empty() {
            return;
        }
        if self.cancelled || self.stop.is_some() {
            // Nothing new starts once the run stops: never drained.
            return self.requeue(&ready);
        }
        self.send_drain(ready, out);
    }

    fn send_drain(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.set(i, Step::DrainCall);
        }
        let ids = self.ids(&idx);
        let c = self.call(Call::Drain(idx));
        out.push(Effect::Drain(c, ids));
    }

    fn on_drain(&mut self, idx: &[usize], r: Result<()>, out: &mut Vec<Effect>) {
        match r {
            Ok(()) => {
                for &i in idx {
                    self.slots[i].location = Location::OutByRun;
                    self.slots[i].since = self.now;
                    self.set(i, Step::Draining);
                }
                self.poll_due = self.now;
            }
            // Bad input changes nothing (the trait's contract): one unknown
            // id must not hold the others back. Drain each alone.
            Err(Error::NotFound { .. } | Error::InvalidName { .. }) if idx.len() > 1 => {
                for &i in idx {
                    self.send_drain(vec![i], out);
                }
            }
            // One target alone: gone from the pool, or refused? Read it back.
            Err(e @ (Error::NotFound { .. } | Error::InvalidName { .. })) => {
                self.fail(idx[0], Stage::Draining, format!("drain refused: {e}"));
                self.read_back(idx.to_vec(), After::Drain, out);
            }
            Err(Error::Cancelled { .. }) => {
                // It may have been applied: put it back (enable is idempotent).
                for &i in idx {
                    self.slots[i].location = Location::Unknown;
                    self.slots[i].purpose = Purpose::Cancel;
                    self.set(i, Step::AwaitEnable);
                }
            }
            Err(e) => {
                for &i in idx {
                    self.fail(i, Stage::Draining, format!("drain failed: {e}"));
                }
                self.read_back(idx.to_vec(), After::Drain, out);
                self.stop_balancer("drain", &e);
            }
        }
    }

    fn read_back(&mut self, idx: Vec<usize>, after: After, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.set(i, Step::ReadBack);
        }
        let ids = self.ids(&idx);
        let c = self.call(Call::ReadBack(idx, after));
        out.push(Effect::Status(c, ids));
    }

    fn on_read_back(
        &mut self,
        idx: &[usize],
        after: After,
        r: Result<Vec<TargetStatus>>,
        out: &mut Vec<Effect>,
    ) {
        let seen: Vec<Option<TargetState>> = match r {
            Ok(st) if st.len() == idx.len() => st.into_iter().map(|s| Some(s.state)).collect(),
            Err(Error::NotFound { .. }) if idx.len() > 1 => {
                for &i in idx {
                    self.read_back(vec![i], after, out);
                }
                return;
            }
            Err(e @ Error::NotFound { .. }) => {
                // Gone for the balancer's read too: removed from the pool.
                let i = idx[0];
                let at = self.slots[i]
                    .failure
                    .as_ref()
                    .map_or(self.slots[i].emitted, |(at, _)| *at);
                self.slots[i].location = Location::Gone;
                return self.finish(i, End::Vanished(at, format!("removed from the pool: {e}")));
            }
            _ => vec![None; idx.len()],
        };
        for (&i, state) in idx.iter().zip(seen) {
            match (after, state) {
                (After::Drain, Some(TargetState::InService)) => {
                    self.slots[i].location = Location::InService;
                    self.note(
                        i,
                        "the balancer shows it in service: the drain did not apply",
                    );
                    self.finish(i, End::Failed);
                }
                (After::Drain, other) => {
                    // Out, or unknown: undo the drain (no maintenance ran).
                    self.slots[i].location = if other.is_some() {
                        Location::OutByRun
                    } else {
                        Location::Unknown
                    };
                    self.slots[i].purpose = Purpose::Undo;
                    self.set(i, Step::AwaitEnable);
                }
                (After::Enable, Some(TargetState::InService)) => {
                    self.slots[i].location = Location::InService;
                    match self.slots[i].purpose {
                        Purpose::Maintained | Purpose::Restore => {
                            self.note(i, "the enable call failed, but the balancer shows it in service: its health was verified as usual");
                            self.slots[i].since = self.now;
                            self.poll_due = self.now;
                            self.set(i, Step::Verify);
                        }
                        Purpose::Cancel => {
                            if self.slots[i].failure.take().is_some() {
                                self.failed -= 1;
                            }
                            self.finish(
                                i,
                                End::Restored(
                                    "the run was cancelled before its maintenance".into(),
                                ),
                            );
                        }
                        Purpose::Undo => self.finish(i, End::Failed),
                    }
                }
                (After::Enable, Some(s)) => {
                    self.slots[i].location = Location::KeptOut;
                    self.note(i, format!("the balancer shows it {s:?}: out of rotation"));
                    self.finish(i, End::Failed);
                }
                (After::TakeOut, Some(TargetState::InService)) => {
                    self.slots[i].location = Location::InService;
                    self.note(
                        i,
                        "it could not be taken out of rotation again: it is IN SERVICE",
                    );
                    self.finish(i, End::Failed);
                }
                (After::TakeOut, Some(s)) => {
                    self.slots[i].location = Location::KeptOut;
                    self.note(
                        i,
                        format!("taking it out again failed, but the balancer shows it {s:?}"),
                    );
                    self.finish(i, End::Failed);
                }
                (After::Enable | After::TakeOut, None) => {
                    self.slots[i].location = Location::Unknown;
                    self.note(i, "its state could not be read back: check it");
                    self.finish(i, End::Failed);
                }
            }
        }
    }

    fn on_poll(&mut self, idx: &[usize], r: Result<Vec<TargetStatus>>, out: &mut Vec<Effect>) {
        // Split polls: the regular poll resumes once every answer is in.
        self.poll_in_flight = self.calls.values().any(|c| matches!(c, Call::Poll(_)));
        let st = match r {
            Ok(st) if st.len() == idx.len() => st,
            Ok(st) => {
                let e = Error::protocol(
                    "balancer",
                    format!(
                        "status returned {} entries for {} targets",
                        st.len(),
                        idx.len()
                    ),
                );
                return self.poll_failed(idx, &e);
            }
            Err(Error::NotFound { .. }) if idx.len() > 1 => {
                // Which one vanished? Ask for each alone; the next regular
                // poll waits for these answers.
                self.poll_in_flight = true;
                for &i in idx {
                    let ids = self.ids(&[i]);
                    let c = self.call(Call::Poll(vec![i]));
                    out.push(Effect::Status(c, ids));
                }
                return;
            }
            Err(e @ Error::NotFound { .. }) => {
                let i = idx[0];
                if matches!(self.slots[i].step, Step::Draining | Step::Verify) {
                    let at = self.visible(i);
                    self.slots[i].location = Location::Gone;
                    self.finish(i, End::Vanished(at, format!("removed from the pool: {e}")));
                }
                return;
            }
            Err(Error::Cancelled { .. }) => return,
            Err(e) => return self.poll_failed(idx, &e),
        };
        for (&i, s) in idx.iter().zip(st) {
            let waited = self.now.saturating_sub(self.slots[i].since);
            match self.slots[i].step {
                Step::Draining => match judge_drain(&s, waited, &self.rules) {
                    DrainVerdict::Wait => {}
                    DrainVerdict::Drained { forced } => {
                        self.slots[i].timings.drain = Some(waited);
                        self.slots[i].drain_cut_short = forced;
                        self.set(i, Step::Drained);
                    }
                    DrainVerdict::Failed { reason, in_service } => {
                        self.fail(i, Stage::Draining, reason);
                        if in_service {
                            self.slots[i].location = Location::InService;
                            self.finish(i, End::Failed);
                        } else {
                            self.after_failure_out(i);
                        }
                    }
                },
                Step::Verify => match judge_health(&s, &self.caps, waited, &self.rules) {
                    HealthVerdict::Wait => {}
                    HealthVerdict::Healthy => self.on_healthy(i, waited),
                    HealthVerdict::Failed(why) => self.on_unhealthy(i, why),
                },
                _ => {}
            }
        }
    }

    fn poll_failed(&mut self, idx: &[usize], e: &Error) {
        for &i in idx {
            match self.slots[i].step {
                Step::Draining => {
                    self.fail(
                        i,
                        Stage::Draining,
                        format!("status while draining failed: {e}; not maintained"),
                    );
                    self.slots[i].purpose = Purpose::Undo;
                    self.set(i, Step::AwaitEnable);
                }
                Step::Verify => {
                    let why = format!("status after the enable failed: {e}");
                    match self.slots[i].purpose {
                        Purpose::Restore => {
                            self.slots[i].put_back = Some(PutBack {
                                healthy: false,
                                detail: why,
                            });
                            self.finish(i, End::Failed);
                        }
                        _ => {
                            self.fail(i, Stage::Enabling, why);
                            self.keep_out_again(i);
                        }
                    }
                }
                _ => {}
            }
        }
        self.stop_balancer("status", e);
    }

    /// A failed target that is out of rotation: kept out, or put back under
    /// `on_failure = restore` (after the probe, when there is one).
    fn after_failure_out(&mut self, i: usize) {
        match self.cfg.on_failure() {
            OnFailure::KeepOut => self.finish(i, End::Failed),
            OnFailure::Restore => {
                self.slots[i].purpose = Purpose::Restore;
                // A maintenance was attempted (whatever its outcome): the probe
                // says whether the target is fit to serve again.
                if self.has_probe && self.slots[i].timings.execute.is_some() {
                    self.slots[i].since = self.now;
                    self.set(
                        i,
                        Step::Probe {
                            in_flight: false,
                            wake: self.now,
                        },
                    );
                } else {
                    self.set(i, Step::AwaitEnable);
                }
            }
        }
    }

    fn on_healthy(&mut self, i: usize, waited: Duration) {
        match self.slots[i].purpose {
            Purpose::Restore => {
                self.slots[i].put_back = Some(PutBack {
                    healthy: true,
                    detail: format!("healthy {waited:?} after it was put back"),
                });
                self.finish(i, End::Failed);
            }
            _ => {
                self.slots[i].timings.health = Some(waited);
                self.canary_done = true;
                self.slots[i].since = self.now;
                let until = match self.cfg.pacing() {
                    Pacing::Batches => None,
                    Pacing::Window => Some(self.warm_until()),
                };
                self.set(i, Step::Warm { until });
            }
        }
    }

    fn warm_until(&self) -> Duration {
        if self.queue.is_empty() || self.cancelled || self.stop.is_some() {
            self.now
        } else {
            self.now + self.cfg.warmup()
        }
    }

    fn on_unhealthy(&mut self, i: usize, why: String) {
        match self.slots[i].purpose {
            Purpose::Restore => {
                self.slots[i].put_back = Some(PutBack {
                    healthy: false,
                    detail: why,
                });
                self.finish(i, End::Failed);
            }
            _ => {
                self.fail(i, Stage::Enabling, why);
                match self.cfg.on_failure() {
                    OnFailure::KeepOut => self.keep_out_again(i),
                    OnFailure::Restore => self.finish(i, End::Failed),
                }
            }
        }
    }

    /// A target back in rotation that failed its health check: take it out
    /// again (the effect is sent by `advance`, batched).
    fn keep_out_again(&mut self, i: usize) {
        self.set(i, Step::TakeOut);
    }

    fn on_take_out(&mut self, idx: &[usize], r: Result<()>, out: &mut Vec<Effect>) {
        match r {
            Ok(()) => {
                for &i in idx {
                    self.slots[i].location = Location::KeptOut;
                    self.finish(i, End::Failed);
                }
            }
            Err(Error::NotFound { .. } | Error::InvalidName { .. }) if idx.len() > 1 => {
                for &i in idx {
                    self.send_take_out(vec![i], out);
                }
            }
            Err(e) => {
                for &i in idx {
                    self.note(i, format!("taking it out of rotation again failed: {e}"));
                }
                self.read_back(idx.to_vec(), After::TakeOut, out);
            }
        }
    }

    fn send_take_out(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.set(i, Step::TakeOutCall);
        }
        let ids = self.ids(&idx);
        let hard = self.caps.hard_disable;
        let c = self.call(Call::TakeOut(idx));
        out.push(if hard {
            Effect::Disable(c, ids)
        } else {
            Effect::Drain(c, ids)
        });
    }

    fn on_execute(&mut self, idx: &[usize], r: Result<Vec<ExecOutcome>>) {
        let outcomes: Vec<std::result::Result<ExecOutcome, String>> = match r {
            Ok(v) if v.len() == idx.len() => v
                .into_iter()
                .zip(idx)
                .map(|(o, &i)| {
                    if o.id == self.slots[i].target.id {
                        Ok(o)
                    } else {
                        Err(format!(
                            "executor returned the outcome of {} in the place of {}: not trusted",
                            o.id, self.slots[i].target.id
                        ))
                    }
                })
                .collect(),
            Ok(v) => vec![
                Err(format!(
                    "executor returned {} outcomes for {} targets",
                    v.len(),
                    idx.len()
                ));
                idx.len()
            ],
            Err(e) => vec![Err(format!("executor failed: {e}")); idx.len()],
        };
        for (&i, o) in idx.iter().zip(outcomes) {
            let ran = self.now.saturating_sub(self.slots[i].since);
            self.slots[i].since = self.now;
            let verdict = match o {
                Ok(o) => {
                    self.slots[i].timings.execute = Some(o.duration);
                    let v = if o.success {
                        Ok(())
                    } else {
                        Err(o.message.clone().unwrap_or_else(|| match o.exit_code {
                            Some(c) => format!("maintenance exited with code {c}"),
                            None => "maintenance failed".to_owned(),
                        }))
                    };
                    self.slots[i].execution = Some(o);
                    v
                }
                Err(e) => {
                    self.slots[i].timings.execute = Some(ran);
                    Err(e)
                }
            };
            match verdict {
                Ok(()) if self.has_probe => self.set(
                    i,
                    Step::Probe {
                        in_flight: false,
                        wake: self.now,
                    },
                ),
                Ok(()) => self.set(i, Step::AwaitEnable),
                Err(why) => {
                    self.fail(i, Stage::Executing, why);
                    self.after_failure_out(i);
                }
            }
        }
    }

    fn on_probe(&mut self, i: usize, r: Result<ProbeVerdict>) {
        let why = match r {
            Ok(ProbeVerdict::Pass) => {
                let waited = self.now.saturating_sub(self.slots[i].since);
                self.slots[i].timings.probe = Some(waited);
                return self.set(i, Step::AwaitEnable);
            }
            Ok(ProbeVerdict::Fail(why)) => why,
            Err(e @ Error::InvalidConfig { .. }) => {
                return self.probe_failed(i, format!("probe cannot run: {e}"));
            }
            Err(e) => format!("probe error: {e}"),
        };
        let waited = self.now.saturating_sub(self.slots[i].since);
        if waited < self.rules.health_timeout {
            self.slots[i].last_probe = Some(why);
            let wake = (self.now + self.poll).min(self.slots[i].since + self.rules.health_timeout);
            self.set(
                i,
                Step::Probe {
                    in_flight: false,
                    wake,
                },
            );
        } else {
            self.probe_failed(
                i,
                format!(
                    "probe did not pass within {:?} of the maintenance: {why}",
                    self.rules.health_timeout
                ),
            );
        }
    }

    fn probe_failed(&mut self, i: usize, why: String) {
        let why = format!("{why}; never put back in rotation");
        if self.slots[i].purpose == Purpose::Restore {
            self.note(i, why);
        } else {
            self.fail(i, Stage::Probing, why);
        }
        self.finish(i, End::Failed);
    }

    fn on_enable(&mut self, idx: &[usize], r: Result<()>, out: &mut Vec<Effect>) {
        match r {
            Ok(()) => {
                for &i in idx {
                    self.slots[i].location = Location::InService;
                    match self.slots[i].purpose {
                        Purpose::Maintained | Purpose::Restore => {
                            self.slots[i].since = self.now;
                            self.set(i, Step::Verify);
                            self.poll_due = self.now;
                        }
                        Purpose::Cancel => self.finish(
                            i,
                            End::Restored("the run was cancelled before its maintenance".into()),
                        ),
                        Purpose::Undo => self.finish(i, End::Failed),
                    }
                }
            }
            Err(Error::NotFound { .. } | Error::InvalidName { .. }) if idx.len() > 1 => {
                for &i in idx {
                    self.send_enable(vec![i], out);
                }
            }
            Err(e) => {
                for &i in idx {
                    let why = match self.slots[i].purpose {
                        Purpose::Maintained => {
                            format!("enable failed after a successful maintenance: {e}")
                        }
                        Purpose::Cancel => format!("cancelled, and re-enabling failed: {e}"),
                        Purpose::Restore | Purpose::Undo => {
                            format!("putting it back failed: {e}")
                        }
                    };
                    let at = if self.slots[i].purpose == Purpose::Cancel {
                        Stage::Restored
                    } else {
                        Stage::Enabling
                    };
                    self.fail(i, at, why);
                }
                self.read_back(idx.to_vec(), After::Enable, out);
                if !matches!(
                    e,
                    Error::Cancelled { .. } | Error::NotFound { .. } | Error::InvalidName { .. }
                ) {
                    self.stop_balancer("enable", &e);
                }
            }
        }
    }

    fn send_enable(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.set(i, Step::EnableCall);
        }
        let ids = self.ids(&idx);
        let c = self.call(Call::Enable(idx));
        out.push(Effect::Enable(c, ids));
    }

    // ---- advancing ---------------------------------------------------------

    /// Everything that follows from the current state at `now`: put-backs
    /// on cancel, executes and enables whose turn has come, probes and
    /// warmups that are due, the next poll, the failure budget, the next
    /// targets to start.
    fn advance(&mut self, out: &mut Vec<Effect>) {
        if self.cancelled {
            // Drained targets not yet executing go back at once; warmups end.
            let back: Vec<usize> = self
                .active
                .iter()
                .copied()
                .filter(|&i| matches!(self.slots[i].step, Step::Draining | Step::Drained))
                .collect();
            for i in back {
                self.slots[i].purpose = Purpose::Cancel;
                self.set(i, Step::AwaitEnable);
            }
        }
        let now = self.now;
        let mut execute: Vec<usize> = Vec::new();
        let mut enable: Vec<usize> = Vec::new();
        let mut take_out: Vec<usize> = Vec::new();
        let mut probes: Vec<usize> = Vec::new();
        let mut warm_done: Vec<usize> = Vec::new();
        let mut warm_start: Vec<usize> = Vec::new();
        for &i in &self.active {
            let s = &self.slots[i];
            match s.step {
                Step::Drained if self.turn(i, Turn::Execute) => execute.push(i),
                Step::AwaitEnable if self.turn(i, Turn::Enable) => enable.push(i),
                Step::TakeOut => take_out.push(i),
                Step::Probe {
                    in_flight: false,
                    wake,
                } if wake <= now => probes.push(i),
                Step::Warm { until: Some(u) } if u <= now || self.cancelled => warm_done.push(i),
                Step::Warm { until: None } if self.turn(i, Turn::Warm) => warm_start.push(i),
                _ => {}
            }
        }
        for i in warm_start {
            let until = if self.cancelled {
                now
            } else {
                self.warm_until()
            };
            self.set(i, Step::Warm { until: Some(until) });
            if until <= now {
                self.finish_warm(i);
            }
        }
        for i in warm_done {
            self.finish_warm(i);
        }
        match self.cfg.pacing() {
            Pacing::Batches => {
                // One executor call per batch.
                let mut by_group: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
                for i in execute {
                    by_group.entry(self.slots[i].group).or_default().push(i);
                }
                let mut groups: Vec<_> = by_group.into_values().collect();
                groups.sort();
                for g in groups {
                    self.send_execute(g, out);
                }
            }
            Pacing::Window => {
                for i in execute {
                    self.send_execute(vec![i], out);
                }
            }
        }
        if !enable.is_empty() {
            self.send_enable(enable, out);
        }
        if !take_out.is_empty() {
            self.send_take_out(take_out, out);
        }
        for i in probes {
            self.set(
                i,
                Step::Probe {
                    in_flight: true,
                    wake: now,
                },
            );
            let c = self.call(Call::Probe(i));
            out.push(Effect::Probe(c, self.slots[i].target.clone()));
        }
        self.maybe_poll(out);
        let failed = self.failures();
        if failed > self.allowed {
            self.stop(AbortReason::FailureBudget {
                failed,
                allowed: self.allowed,
                max_failures: self.cfg.max_failures(),
                selected: self.slots.len(),
            });
        }
        self.plan(out);
    }

    fn finish_warm(&mut self, i: usize) {
        let warmed = self.now.saturating_sub(self.slots[i].since);
        if !warmed.is_zero() {
            self.slots[i].timings.warmup = Some(warmed);
            let s = &self.slots[i];
            self.events.push_back((
                s.group,
                EventKind::Phase {
                    id: s.target.id.clone(),
                    stage: Stage::Warm,
                    detail: None,
                },
            ));
        }
        self.finish(i, End::Done);
    }

    /// Whether target `i` may take the next collective step now. With
    /// batches, a batch executes together once none of it is still
    /// draining, is enabled together once none of it is still before the
    /// enable, and warms up once all of it is healthy or settled. A window
    /// moves each target alone. Put-backs never wait.
    fn turn(&self, i: usize, turn: Turn) -> bool {
        let s = &self.slots[i];
        if turn == Turn::Enable && matches!(s.purpose, Purpose::Cancel | Purpose::Undo) {
            return true;
        }
        if self.cfg.pacing() == Pacing::Window {
            return true;
        }
        let blocking = |step: Step| match turn {
            Turn::Execute => matches!(step, Step::DrainCall | Step::Draining),
            Turn::Enable => matches!(
                step,
                Step::DrainCall
                    | Step::Draining
                    | Step::Drained
                    | Step::Execute
                    | Step::Probe { .. }
            ),
            Turn::Warm => !matches!(step, Step::Warm { .. } | Step::Finished | Step::Queued),
        };
        !self
            .active
            .iter()
            .any(|&j| j != i && self.slots[j].group == s.group && blocking(self.slots[j].step))
    }

    fn send_execute(&mut self, idx: Vec<usize>, out: &mut Vec<Effect>) {
        for &i in &idx {
            self.slots[i].since = self.now;
            self.set(i, Step::Execute);
        }
        let targets = idx.iter().map(|&i| self.slots[i].target.clone()).collect();
        let c = self.call(Call::Execute(idx));
        out.push(Effect::Execute(c, targets));
    }

    fn maybe_poll(&mut self, out: &mut Vec<Effect>) {
        if self.poll_in_flight {
            return;
        }
        let observed: Vec<usize> = self
            .active
            .iter()
            .copied()
            .filter(|&i| matches!(self.slots[i].step, Step::Draining | Step::Verify))
            .collect();
        if observed.is_empty() {
            return;
        }
        let deadline = observed
            .iter()
            .map(|&i| {
                let s = &self.slots[i];
                s.since
                    + if s.step == Step::Draining {
                        self.rules.drain_timeout
                    } else {
                        self.rules.health_timeout
                    }
            })
            .min()
            .unwrap_or(self.poll_due);
        if self.now < self.poll_due.min(deadline) {
            return;
        }
        // Fixed rate: polls start one `poll` apart from the first, so the
        // time a status call takes does not stretch the interval; missed
        // ticks are skipped rather than polled back to back.
        if self.poll_due <= self.now {
            self.poll_due += self.poll;
            if self.poll_due <= self.now {
                self.poll_due = self.now + self.poll;
            }
        }
        self.poll_in_flight = true;
        let ids = self.ids(&observed);
        let c = self.call(Call::Poll(observed));
        out.push(Effect::Status(c, ids));
    }

    fn plan(&mut self, out: &mut Vec<Effect>) {
        if self.plan.is_some() || self.cancelled || self.stop.is_some() || self.queue.is_empty() {
            return;
        }
        if let Some(t) = self.plan_retry_at {
            if self.now < t {
                return;
            }
            self.plan_retry_at = None;
        }
        let want = planner::want(planner::Window {
            pacing: self.cfg.pacing(),
            width: self.batch_len,
            in_progress: self.in_progress(),
            canary: !self.canary_done,
        });
        if want == 0 {
            return;
        }
        let want = want.min(self.queue.len());
        if matches!(self.cfg.min_healthy(), Amount::Count(0) | Amount::Percent(0)) {
            let cands: Vec<usize> = self.queue.drain(..want).collect();
            self.start_preflight(cands, out);
        } else {
            let cands: Vec<usize> = self.queue.iter().take(want).copied().collect();
            let c = self.call(Call::List(cands));
            out.push(Effect::List(c));
            self.plan = Some(PlanStep::Listing);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Execute,
    Enable,
    Warm,
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
