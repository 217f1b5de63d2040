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
use crate::executor::{ExecHandle, ExecOutcome, Preflight, Recovered};
use crate::phase::{
    judge_drain, judge_health, DrainVerdict, HealthVerdict, Location, Rules, Stage,
};
use crate::probe::ProbeVerdict;
use crate::report::{
    AbortReason, EventKind, Outcome, PhaseTimings, PutBack, TargetReport, TargetResult,
};
use crate::target::{Capabilities, Target, TargetId, TargetState, TargetStatus};

use super::planner;

mod advance;
mod change;
mod gate;
mod observe;

use observe::Watch;
mod plan;
mod resume;
mod zones;

pub(crate) use gate::{GateAsk, GateSpec};
pub(crate) use resume::Recovery;

/// Identifies one effect, so its reply can come back in any order.
pub(crate) type CallId = u64;

/// The looks at the targets a run keeps out before it ends (each after one
/// of them was put back and taken out again).
pub(super) const FINAL_LOOKS: u8 = 3;

/// Something the driver must do, then answer with [`Input::Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    List(CallId),
    Status(CallId, Vec<TargetId>),
    /// A status read after a failed change, to learn what is true; never
    /// abandoned on cancellation.
    ReadBack(CallId, Vec<TargetId>),
    Preflight(CallId, Vec<Target>),
    Drain(CallId, Vec<TargetId>),
    Disable(CallId, Vec<TargetId>),
    Enable(CallId, Vec<TargetId>),
    Execute(CallId, Vec<Target>),
    /// Wait for a maintenance a dead run started, and read its outcome.
    Recover(CallId, Target, ExecHandle),
    Probe(CallId, Target),
    /// Ask a gate whether the rollout may go on ([`Reply::Gate`]).
    Gate(CallId, GateAsk),
}

impl Effect {
    pub(crate) fn call(&self) -> CallId {
        match self {
            Self::List(c)
            | Self::Status(c, _)
            | Self::ReadBack(c, _)
            | Self::Preflight(c, _)
            | Self::Drain(c, _)
            | Self::Disable(c, _)
            | Self::Enable(c, _)
            | Self::Execute(c, _)
            | Self::Recover(c, _, _)
            | Self::Probe(c, _)
            | Self::Gate(c, _) => *c,
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
    Recovered(Result<Recovered>),
    Probed(Result<ProbeVerdict>),
    /// A gate's answer; an error counts as a no.
    Gate(Result<crate::gate::GateVerdict>),
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
    /// News of the run's lease (only with a lease, see
    /// [`Machine::set_lease`]).
    Lease(LeaseNews),
}

/// What the driver learnt of the run's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseNews {
    /// Renewed: held until this instant (time since the start).
    Until(Duration),
    /// Lost: from now on the run only puts back (the cancel path), and
    /// ends `Aborted { LeaseLost }`.
    Lost(String),
}

/// The lease a drain or a maintenance needs (DESIGN §3, 10).
#[derive(Debug, Clone)]
struct LeaseGate {
    until: Duration,
    /// Time that must be left on the lease for a step to start: the
    /// step's budget plus the clock-skew margin.
    need: Duration,
    lost: Option<String>,
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
    /// Drained, and being disabled (hard) before its maintenance, where the
    /// balancer can: a drained server may still take sticky sessions
    /// (HAProxy `DRAIN` with persistence; NGINX `drain`).
    Seal,
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
    Recover(usize),
    Probe(usize),
    ReadBack(Vec<usize>, After),
    /// A drain sent again to a target the balancer put back on its own.
    Redrain(usize),
    /// Drained targets disabled before their maintenance.
    Seal(Vec<usize>),
    /// A gate asked in the gate stage `.0`.
    Gate(u64, usize),
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
    /// The last time a status showed it out of rotation.
    seen_out: Duration,
    /// A drain sent again (the guard) is in flight.
    redraining: bool,
    /// The balancer put it back while the run had it out, and it has not
    /// been taken out again since: never maintained in this state.
    lost: bool,
    /// The run decided it must stay out of rotation (a failed maintenance
    /// or probe, unhealthy after its enable, an unknown outcome): watched
    /// once finished, and taken out again if something puts it back.
    keep_out: bool,
    /// Its maintenance may still be running (the executor could not say it
    /// ended): kept out whatever `on_failure` says, and the journal stays
    /// open so a resume or restore waits for it again.
    open: bool,
    /// The guard no longer watches it (the pool no longer knows it).
    unwatched: bool,
    /// Kept out and watched, and the guard's last read of it failed (why):
    /// the run cannot say it is still out, so its report does not either.
    unseen: Option<String>,
    /// Disabled (hard) after its drain, before its maintenance.
    sealed: bool,
    /// The call id from which a poll counts for its current step: a poll
    /// sent before the step began says nothing about it.
    epoch: CallId,
    /// The error of a change whose effect is being read back.
    last_error: Option<String>,
    drain_lost: Vec<crate::report::DrainLost>,
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
    /// Finished targets the run keeps out of rotation: still watched, so a
    /// balancer that puts one back has it taken out again (DESIGN §3, 9).
    kept: BTreeSet<usize>,
    /// The last looks at the kept targets before the run ends (at most
    /// [`FINAL_LOOKS`]), and whether one of them was taken out again since
    /// the last look.
    final_looks: u8,
    kept_changed: bool,
    pool: usize,
    batch_len: usize,
    allowed: usize,
    failed: usize,
    groups: usize,
    canary_done: bool,
    plan: Option<PlanStep>,
    gates: gate::Gates,
    plan_retry_at: Option<Duration>,
    capacity_since: Option<Duration>,
    calls: HashMap<CallId, Call>,
    next_call: CallId,
    poll_due: Duration,
    /// When the last poll was sent.
    last_poll: Duration,
    poll_in_flight: bool,
    cancelled: bool,
    stop: Option<AbortReason>,
    events: VecDeque<(Option<usize>, EventKind)>,
    finished_log: Vec<Finished>,
    /// Maintenances of a dead run to wait for (sent by the next `advance`).
    to_recover: Vec<(usize, ExecHandle)>,
    now: Duration,
    /// With a shared lease: when it runs out, and whether it was lost.
    lease: Option<LeaseGate>,
}

/// A target that finished, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finished {
    pub(crate) id: TargetId,
    pub(crate) stage: Stage,
    pub(crate) failed_at: Option<Stage>,
    pub(crate) location: Location,
    pub(crate) detail: Option<String>,
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
        let mut m = Self::empty(cfg, caps, poll, has_probe, &selected, pool);
        m.order_by_zone();
        m.events.push_back((
            None,
            EventKind::Started {
                selected: selected.len(),
                pool,
            },
        ));
        for (i, l) in selected.iter().enumerate() {
            if l.status.state != TargetState::InService {
                m.queue.retain(|&q| q != i);
                m.found_out(i);
                m.finish(
                    i,
                    End::Skipped(format!(
                        "{:?} when the run started; the run restores what it found, nothing more",
                        l.status.state
                    )),
                );
            }
        }
        m.check_zones(listed, balancer)?;
        Ok(m)
    }

    /// A machine with every target of `selected` queued, in service.
    fn empty(
        cfg: RolloutConfig,
        caps: Capabilities,
        poll: Duration,
        has_probe: bool,
        selected: &[ListedTarget],
        pool: usize,
    ) -> Self {
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
            queue: (0..selected.len()).collect(),
            active: BTreeSet::new(),
            kept: BTreeSet::new(),
            final_looks: 0,
            kept_changed: false,
            pool,
            failed: 0,
            groups: 0,
            canary_done: !cfg.canary(),
            plan: None,
            gates: gate::Gates::default(),
            plan_retry_at: None,
            capacity_since: None,
            calls: HashMap::new(),
            next_call: 0,
            poll_due: Duration::ZERO,
            last_poll: Duration::ZERO,
            poll_in_flight: false,
            cancelled: false,
            stop: None,
            events: VecDeque::new(),
            finished_log: Vec::new(),
            to_recover: Vec::new(),
            now: Duration::ZERO,
            lease: None,
            cfg,
        };
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
                seen_out: Duration::ZERO,
                redraining: false,
                lost: false,
                keep_out: false,
                open: false,
                unwatched: false,
                unseen: None,
                sealed: false,
                epoch: 0,
                last_error: None,
                drain_lost: Vec::new(),
                end: None,
                emitted: Stage::Pending,
            });
        }
        m
    }

    /// The selected targets, in order (the journal's plan).
    pub(crate) fn plan_targets(&self) -> Vec<Target> {
        self.slots.iter().map(|s| s.target.clone()).collect()
    }

    /// Targets finished since the last call, for the journal: id, stage,
    /// the phase it failed in, location, why.
    pub(crate) fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.finished_log)
    }

    /// Feeds one input at `now` (time since the run started) and returns
    /// the effects to perform.
    pub(crate) fn handle(&mut self, now: Duration, input: Input) -> Vec<Effect> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::Cancel => self.cancelled = true,
            Input::Lease(news) => self.on_lease(news),
            Input::Reply(call, reply) => {
                if let Some(c) = self.calls.remove(&call) {
                    self.on_reply(call, c, reply, &mut out);
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
        for i in self.watched() {
            match (self.slots[i].step, self.watch(i)) {
                (
                    Step::Probe {
                        in_flight: false,
                        wake,
                    },
                    _,
                ) => at(wake),
                (Step::Warm { until: Some(u) }, _) => at(u),
                (_, Watch::Until(d)) => poll = Some(poll.map_or(d, |p: Duration| p.min(d))),
                (_, Watch::Guard) => poll = Some(poll.unwrap_or(self.poll_due)),
                _ => {}
            }
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
        if let Some(g) = self.gate_wake() {
            at(g);
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
            && self.gates_idle()
    }

    /// How the run ended (meaningful once finished).
    pub(crate) fn outcome(&self) -> Outcome {
        if let Some(message) = self.lease.as_ref().and_then(|g| g.lost.clone()) {
            Outcome::Aborted {
                reason: AbortReason::LeaseLost { message },
            }
        } else if self.cancelled {
            Outcome::Cancelled
        } else if let Some(r) = &self.stop {
            Outcome::Aborted { reason: r.clone() }
        } else {
            Outcome::Completed
        }
    }

    /// The run holds a lease until `until` (time since the start): a drain
    /// or a maintenance starts only while at least `need` is left of it.
    pub(crate) fn set_lease(&mut self, until: Duration, need: Duration) {
        self.lease = Some(LeaseGate {
            until,
            need,
            lost: None,
        });
    }

    fn on_lease(&mut self, news: LeaseNews) {
        let Some(gate) = &mut self.lease else {
            debug_assert!(false, "lease news without a lease");
            return;
        };
        match news {
            LeaseNews::Until(u) => gate.until = gate.until.max(u),
            LeaseNews::Lost(message) => {
                if gate.lost.is_none() {
                    gate.lost = Some(message.clone());
                    self.events.push_back((
                        None,
                        EventKind::Stopping {
                            reason: AbortReason::LeaseLost { message },
                        },
                    ));
                }
                // Restore-only is the cancel path: nothing new starts,
                // drained targets go back at once, running maintenances
                // finish and are probed and put back.
                self.cancelled = true;
            }
        }
    }

    /// Whether a drain or a maintenance may start now: no lease, or one
    /// held with enough time left for the step.
    fn lease_allows(&self) -> bool {
        self.lease
            .as_ref()
            .is_none_or(|g| g.lost.is_none() && g.until.saturating_sub(self.now) >= g.need)
    }

    /// Groups (batches) started.
    pub(crate) fn batches(&self) -> usize {
        self.groups
    }

    /// Some maintenance may still be running (the executor could not say it
    /// ended): the journal must stay open, so that `resume` or `restore`
    /// waits for it, and a new run is refused meanwhile.
    pub(crate) fn maintenance_open(&self) -> bool {
        self.slots.iter().any(|s| s.open)
    }

    /// Targets in progress, then the finished ones the run keeps out: what
    /// the polls look at.
    /// The kept ones only while something else is in progress: the run
    /// ends when nothing is, and its report names them.
    fn watched(&self) -> impl Iterator<Item = usize> + '_ {
        // A finished target read back is no reason to go on watching: two
        // kept targets whose re-drains keep failing would watch each other.
        let going_on = self.active.iter().any(|&i| self.slots[i].end.is_none());
        let kept = going_on.then(|| self.kept.iter());
        self.active
            .iter()
            .chain(kept.into_iter().flatten())
            .copied()
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
                let mut notes = s.notes.clone();
                if let (Some(End::Vanished(..)), Some((at, why))) = (&s.end, &s.failure) {
                    notes.insert(0, format!("failed at {at} before it vanished: {why}"));
                }
                if let (Location::KeptOut, Some(why)) = (location, &s.unseen) {
                    // Something may have put it back since the last read
                    // that showed it out: say so, not "kept out".
                    location = Location::Unknown;
                    notes.push(format!(
                        "the last status read of it failed ({why}): it may be back in rotation; check it"
                    ));
                }
                TargetReport {
                    id: s.target.id.clone(),
                    result,
                    location,
                    batch: s.group,
                    timings: s.timings,
                    execution: s.execution.clone(),
                    drain_cut_short: s.drain_cut_short,
                    notes,
                    drain_lost: s.drain_lost.clone(),
                    meta: s.target.meta.clone(),
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
        self.slots[i].epoch = self.next_call;
        match step {
            Step::Queued | Step::Finished => {
                self.active.remove(&i);
            }
            _ => {
                self.kept.remove(&i);
                self.active.insert(i);
            }
        }
        self.emit_stage(i);
    }

    fn finish(&mut self, i: usize, end: End) {
        let s = &mut self.slots[i];
        if s.location == Location::OutByRun {
            // Never lose a target: out because of the run and not coming
            // back is kept out, and reported so.
            s.location = Location::KeptOut;
        }
        s.end = Some(end);
        self.set(i, Step::Finished);
        if self.slots[i].location == Location::KeptOut || self.slots[i].keep_out {
            self.kept.insert(i);
        } else {
            self.kept.remove(&i);
        }
        let s = &self.slots[i];
        let detail = match &s.end {
            Some(End::Skipped(r) | End::Restored(r) | End::Vanished(_, r)) => Some(r.clone()),
            _ => s.failure.as_ref().map(|(_, r)| r.clone()),
        };
        self.finished_log.push(Finished {
            id: s.target.id.clone(),
            stage: s.emitted,
            failed_at: s.failure.as_ref().map(|(at, _)| *at),
            location: s.location,
            detail,
        });
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

    /// Target `i` is out of rotation and the run did not take it out: it
    /// is left as found, listed under `found_out`, and an event warns.
    fn found_out(&mut self, i: usize) {
        self.slots[i].location = Location::OutBefore;
        self.events.push_back((
            None,
            EventKind::FoundOut {
                id: self.slots[i].target.id.clone(),
            },
        ));
    }

    /// Targets found out of rotation that the run did not take out.
    pub(crate) fn found_out_ids(&self) -> Vec<TargetId> {
        self.slots
            .iter()
            .filter(|s| s.location == Location::OutBefore)
            .map(|s| s.target.id.clone())
            .collect()
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
            // The read after the hard disable: still drained to the eye.
            Step::Draining if s.sealed => Stage::Drained,
            Step::DrainCall | Step::Draining => Stage::Draining,
            Step::Drained | Step::Seal => Stage::Drained,
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

    fn on_reply(&mut self, call_id: CallId, call: Call, reply: Reply, out: &mut Vec<Effect>) {
        match (call, reply) {
            (Call::List(cands), Reply::Listed(r)) => self.on_listed(&cands, r, out),
            (Call::Preflight(idx), Reply::Preflight(r)) => self.on_preflight(&idx, r, out),
            (Call::Recheck(idx), Reply::Status(r)) => self.on_recheck(&idx, r, out),
            (Call::Drain(idx), Reply::Changed(r)) => self.on_drain(&idx, r, out),
            (Call::Poll(idx), Reply::Status(r)) => self.on_poll(call_id, &idx, r, out),
            (Call::Execute(idx), Reply::Executed(r)) => self.on_execute(&idx, r),
            (Call::Recover(i), Reply::Recovered(r)) => self.on_recovered(i, r),
            (Call::Probe(i), Reply::Probed(r)) => self.on_probe(i, r),
            (Call::Redrain(i), Reply::Changed(r)) => self.on_redrain(i, r, out),
            (Call::Seal(idx), Reply::Changed(r)) => self.on_seal(&idx, r),
            (Call::Gate(serial, k), Reply::Gate(r)) => self.on_gate(serial, k, r),
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
