//! Gates and the soak between batches (`wait_between_batches`): while a
//! gate says no, or the soak runs, the rollout is *held*: nothing new is
//! drained; targets already in progress go on.
//!
//! One stage at a time, in this order: after a batch is back, the soak
//! (when another batch follows), then the gates asked after it; before the
//! next batch starts, the gates asked before it. Each gate of a stage is
//! asked at once; a no is asked again on the gate's own interval, the last
//! time exactly at its timeout; at the timeout `on_gate_timeout` decides.
//! A gate that could not be asked (an error) counts as a no.
//!
//! Hooks ride the same stages: a hook is asked once (go is success);
//! hooks run after the gates before a batch, and first thing after a
//! batch is back (before the soak); a hook that fails, or cannot run,
//! stops the run by its name.

use super::*;
use crate::gate::{GatePolicy, GateVerdict, GateWhen, OnGateTimeout};

/// A gate as the machine knows it; the driver holds the gate itself, at
/// the same index.
#[derive(Debug, Clone)]
pub(crate) struct GateSpec {
    pub(crate) name: String,
    pub(crate) policy: GatePolicy,
    /// A hook: asked once, a no stops the run.
    pub(crate) hook: bool,
}

/// What the driver asks a gate ([`Effect::Gate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GateAsk {
    /// The gate's index (as given to [`Machine::with_gates`]).
    pub(crate) gate: usize,
    pub(crate) when: GateWhen,
    pub(crate) batch: usize,
    pub(crate) targets: Vec<TargetId>,
    /// A hook's own time limit (a gate's ask is bounded by `call_timeout`).
    pub(crate) limit: Option<Duration>,
}

/// The gates, and where the run is with them.
#[derive(Debug, Default)]
pub(super) struct Gates {
    specs: Vec<GateSpec>,
    /// Batches whose after-stage (soak, gates after) is over.
    after_done: BTreeSet<usize>,
    /// The batch whose gates before said go.
    before_passed: Option<usize>,
    /// Batches whose hooks after have run.
    after_hooks_done: BTreeSet<usize>,
    /// The batch whose hooks before have run.
    before_hooks_done: Option<usize>,
    stage: Option<Hold>,
    serial: u64,
}

#[derive(Debug)]
struct Hold {
    serial: u64,
    /// A stage of hooks, not gates.
    hooks: bool,
    when: GateWhen,
    batch: usize,
    /// When the gates were first asked (the soak's end, after one).
    since: Duration,
    soak_until: Option<Duration>,
    asks: Vec<(usize, Ask)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Ask at this instant; `held`: it said no before in this stage.
    Due {
        at: Duration,
        held: bool,
    },
    InFlight {
        held: bool,
    },
    Go,
}

impl Machine {
    /// The gates to ask, in the driver's order. Batches already started
    /// (a resumed run) are not asked about again.
    pub(crate) fn with_gates(mut self, specs: Vec<GateSpec>) -> Self {
        self.gates.specs = specs;
        self.gates.after_done = (0..self.groups).collect();
        self.gates.after_hooks_done = (0..self.groups).collect();
        self
    }

    /// Whether batch `g` has an after-stage: gates asked after it, or a
    /// soak because another batch follows.
    fn after_stage_needed(&self) -> bool {
        self.gates
            .specs
            .iter()
            .any(|s| s.policy.applies(GateWhen::After))
            || (!self.cfg.wait_between_batches().is_zero() && !self.queue.is_empty())
    }

    /// Whether a gate (`hook` false) or a hook is asked at `when`.
    fn has(&self, when: GateWhen, hook: bool) -> bool {
        self.gates
            .specs
            .iter()
            .any(|s| s.hook == hook && s.policy.applies(when))
    }

    fn batch_over(&self, g: usize) -> bool {
        !self.active.iter().any(|&i| self.slots[i].group == Some(g))
    }

    /// A batch is back and its after-stage has not run yet.
    fn after_due(&self) -> Option<usize> {
        (0..self.groups).find(|g| !self.gates.after_done.contains(g) && self.batch_over(*g))
    }

    /// Nothing left for the gates to do before the run may end.
    pub(super) fn gates_idle(&self) -> bool {
        self.cancelled
            || self.stop.is_some()
            || (self.gates.stage.is_none()
                && (self.after_due().is_none() || !self.after_stage_needed()))
    }

    /// The next instant a gate is due or the soak ends.
    pub(super) fn gate_wake(&self) -> Option<Duration> {
        if self.cancelled || self.stop.is_some() {
            return None;
        }
        let h = self.gates.stage.as_ref()?;
        if let Some(u) = h.soak_until {
            return Some(u);
        }
        h.asks
            .iter()
            .filter_map(|(_, a)| match a {
                Ask::Due { at, .. } => Some(*at),
                _ => None,
            })
            .min()
    }

    /// Runs the after-stage of a batch that is back. False while the
    /// rollout is held by it.
    pub(super) fn after_clear(&mut self, out: &mut Vec<Effect>) -> bool {
        loop {
            match self.gates.stage.as_ref().map(|h| h.when) {
                Some(GateWhen::After) if !self.step_stage(out) => return false,
                Some(GateWhen::After) | None => {}
                // The gates before the next batch are being asked: that
                // batch's turn first.
                Some(GateWhen::Before) => return true,
            }
            let Some(g) = self.after_due() else {
                return true;
            };
            if !self.gates.after_hooks_done.contains(&g) {
                if self.has(GateWhen::After, true) {
                    self.open_stage(GateWhen::After, g, None, true);
                    continue;
                }
                self.gates.after_hooks_done.insert(g);
            }
            if !(self.has(GateWhen::After, false)
                || (!self.cfg.wait_between_batches().is_zero() && !self.queue.is_empty()))
            {
                self.gates.after_done.insert(g);
                continue;
            }
            let soak = self.cfg.wait_between_batches();
            let soak_until = (!soak.is_zero() && !self.queue.is_empty()).then(|| {
                self.events
                    .push_back((Some(g), EventKind::Soaking { wait: soak }));
                self.now + soak
            });
            self.open_stage(GateWhen::After, g, soak_until, false);
        }
    }

    /// Asks the gates before the next batch. False while the rollout is
    /// held by them.
    pub(super) fn before_clear(&mut self, out: &mut Vec<Effect>) -> bool {
        let next = self.groups;
        loop {
            if self.gates.stage.is_some() {
                if !self.step_stage(out) {
                    return false;
                }
                continue;
            }
            if self.gates.before_passed != Some(next) {
                if self.has(GateWhen::Before, false) {
                    self.open_stage(GateWhen::Before, next, None, false);
                    continue;
                }
                self.gates.before_passed = Some(next);
            }
            if self.gates.before_hooks_done != Some(next) {
                if self.has(GateWhen::Before, true) {
                    self.open_stage(GateWhen::Before, next, None, true);
                    continue;
                }
                self.gates.before_hooks_done = Some(next);
            }
            return true;
        }
    }

    fn open_stage(
        &mut self,
        when: GateWhen,
        batch: usize,
        soak_until: Option<Duration>,
        hooks: bool,
    ) {
        self.gates.serial += 1;
        let now = self.now;
        let asks = (0..self.gates.specs.len())
            .filter(|&k| {
                let s = &self.gates.specs[k];
                s.hook == hooks && s.policy.applies(when)
            })
            .map(|k| {
                (
                    k,
                    Ask::Due {
                        at: now,
                        held: false,
                    },
                )
            })
            .collect();
        self.gates.stage = Some(Hold {
            serial: self.gates.serial,
            hooks,
            when,
            batch,
            since: now,
            soak_until,
            asks,
        });
    }

    /// Sends the asks that are due; closes the stage once every gate said
    /// go. True when it closed.
    fn step_stage(&mut self, out: &mut Vec<Effect>) -> bool {
        let now = self.now;
        let Some(h) = self.gates.stage.as_mut() else {
            return true;
        };
        if let Some(u) = h.soak_until {
            if now < u {
                return false;
            }
            h.soak_until = None;
            h.since = now;
            for (_, a) in &mut h.asks {
                *a = Ask::Due {
                    at: now,
                    held: false,
                };
            }
        }
        let (serial, when, batch, hooks) = (h.serial, h.when, h.batch, h.hooks);
        let due: Vec<(usize, bool)> = h
            .asks
            .iter()
            .filter_map(|(k, a)| match a {
                Ask::Due { at, held } if *at <= now => Some((*k, *held)),
                _ => None,
            })
            .collect();
        if due.is_empty() && h.asks.iter().all(|(_, a)| *a == Ask::Go) {
            self.gates.stage = None;
            match (when, hooks) {
                (GateWhen::After, false) => {
                    self.gates.after_done.insert(batch);
                }
                (GateWhen::After, true) => {
                    self.gates.after_hooks_done.insert(batch);
                }
                (GateWhen::Before, false) => self.gates.before_passed = Some(batch),
                (GateWhen::Before, true) => self.gates.before_hooks_done = Some(batch),
            }
            return true;
        }
        let targets: Vec<TargetId> = match when {
            GateWhen::After => self
                .slots
                .iter()
                .filter(|s| s.group == Some(batch))
                .map(|s| s.target.id.clone())
                .collect(),
            GateWhen::Before => Vec::new(),
        };
        for (k, held) in due {
            if let Some(h) = self.gates.stage.as_mut() {
                if let Some((_, a)) = h.asks.iter_mut().find(|(j, _)| *j == k) {
                    *a = Ask::InFlight { held };
                }
            }
            let c = self.call(Call::Gate(serial, k));
            let spec = &self.gates.specs[k];
            out.push(Effect::Gate(
                c,
                GateAsk {
                    gate: k,
                    when,
                    batch,
                    targets: targets.clone(),
                    limit: spec.hook.then(|| spec.policy.timeout()),
                },
            ));
        }
        false
    }

    /// A gate answered.
    pub(super) fn on_gate(&mut self, serial: u64, k: usize, r: Result<GateVerdict>) {
        let now = self.now;
        if self.cancelled || self.stop.is_some() {
            return;
        }
        let Some(h) = self.gates.stage.as_mut().filter(|h| h.serial == serial) else {
            return;
        };
        let Some((_, ask)) = h.asks.iter_mut().find(|(j, _)| *j == k) else {
            return;
        };
        let Ask::InFlight { held } = *ask else {
            return;
        };
        let spec = &self.gates.specs[k];
        let (name, policy) = (spec.name.clone(), spec.policy.clone());
        let (when, batch, waited) = (h.when, h.batch, now.saturating_sub(h.since));
        if h.hooks {
            let failed = match r {
                Ok(GateVerdict::Go) => None,
                Ok(GateVerdict::Hold(why)) => Some(why),
                Err(e) => Some(format!("could not run: {e}")),
            };
            self.events.push_back((
                Some(batch),
                EventKind::HookRan {
                    hook: name.clone(),
                    when,
                    ok: failed.is_none(),
                    detail: failed.clone(),
                },
            ));
            match failed {
                None => *ask = Ask::Go,
                Some(message) => {
                    self.gates.stage = None;
                    self.stop(AbortReason::Hook {
                        hook: name,
                        when,
                        batch,
                        message,
                    });
                }
            }
            return;
        }
        let why = match r {
            Ok(GateVerdict::Go) => {
                *ask = Ask::Go;
                self.events.push_back((
                    Some(batch),
                    EventKind::GateChecked {
                        gate: name,
                        when,
                        go: true,
                        detail: None,
                        waited,
                    },
                ));
                return;
            }
            Ok(GateVerdict::Hold(why)) => why,
            Err(e) => format!("could not be asked (counts as no): {e}"),
        };
        let deadline = h.since + policy.timeout();
        let timed_out = now >= deadline;
        *ask = if timed_out {
            Ask::Go
        } else {
            Ask::Due {
                at: (now + policy.interval()).min(deadline),
                held: true,
            }
        };
        self.events.push_back((
            Some(batch),
            EventKind::GateChecked {
                gate: name.clone(),
                when,
                go: false,
                detail: Some(why.clone()),
                waited,
            },
        ));
        if !held {
            self.events.push_back((
                Some(batch),
                EventKind::GateHolding {
                    gate: name.clone(),
                    when,
                    reason: why.clone(),
                    timeout: policy.timeout(),
                },
            ));
        }
        if timed_out {
            let action = self.cfg.on_gate_timeout();
            self.events.push_back((
                Some(batch),
                EventKind::GateTimedOut {
                    gate: name.clone(),
                    when,
                    waited,
                    action,
                },
            ));
            if action == OnGateTimeout::Abort {
                self.gates.stage = None;
                self.stop(AbortReason::Gate {
                    gate: name,
                    when,
                    batch,
                    waited,
                    reason: why,
                });
            }
        }
    }
}
