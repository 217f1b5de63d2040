//! [`InMemoryBalancer`]: a balancer in memory, with scripted connection decay
//! and health, fault injection and a call log. Clones share state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::balancer::{ListedTarget, LoadBalancer};
use crate::error::{Error, Result};
use crate::target::{Capabilities, Health, Target, TargetId, TargetState, TargetStatus};

/// A balancer operation, for fault injection and the call log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// [`LoadBalancer::list`].
    List,
    /// [`LoadBalancer::status`].
    Status,
    /// [`LoadBalancer::drain`].
    Drain,
    /// [`LoadBalancer::disable`].
    Disable,
    /// [`LoadBalancer::enable`].
    Enable,
}

/// One call as the in-memory balancer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// When (tokio time, so paused tests see virtual time).
    pub at: Instant,
    /// Which operation.
    pub op: Operation,
    /// The ids it named (empty for `list`).
    pub ids: Vec<TargetId>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Targets in service and healthy right after the call.
    pub serving_healthy_after: usize,
}

/// How a target's connections fall once it is drained: `initial`
/// connections fall linearly to zero over `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainProfile {
    /// Connections in flight when the drain starts (and while in service).
    pub initial: u64,
    /// Time until the last one ends.
    pub duration: Duration,
}

/// The health a target shows after each enable: `Unknown` for `delay`, then
/// `health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthScript {
    /// Time before the first check after the enable completes.
    pub delay: Duration,
    /// What that check finds.
    pub health: Health,
}

impl Default for HealthScript {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            health: Health::Healthy,
        }
    }
}

#[derive(Debug)]
struct Entry {
    target: Target,
    state: TargetState,
    health: Health,
    drain: DrainProfile,
    health_script: HealthScript,
    drained_at: Option<Instant>,
    enabled_at: Option<Instant>,
}

impl Entry {
    fn status(&self, now: Instant) -> TargetStatus {
        let connections = match (self.state, self.drained_at) {
            (TargetState::InService, _) => self.drain.initial,
            (TargetState::OutOfService, _) => 0,
            (TargetState::Draining, Some(at)) => {
                let elapsed = now.saturating_duration_since(at);
                if elapsed >= self.drain.duration || self.drain.duration.is_zero() {
                    0
                } else {
                    let left = (self.drain.duration - elapsed).as_secs_f64()
                        / self.drain.duration.as_secs_f64();
                    (self.drain.initial as f64 * left).ceil() as u64
                }
            }
            (TargetState::Draining, None) => self.drain.initial,
        };
        let health = match self.enabled_at {
            Some(at) if now.saturating_duration_since(at) < self.health_script.delay => {
                Health::Unknown
            }
            Some(_) => self.health_script.health,
            None => self.health,
        };
        TargetStatus::new(self.state, health, Some(connections))
    }
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Entry>,
    index: HashMap<TargetId, usize>,
    faults: HashMap<Operation, VecDeque<Option<Error>>>,
    log: Vec<CallRecord>,
    /// A reload due at this instant (see `InMemoryBalancer::reload_at`).
    reload_at: Option<Instant>,
    /// The reload happened before this entry of the call log.
    reloaded_before_call: Option<usize>,
}

impl State {
    /// A reload due now forgets every runtime change: every target out of
    /// rotation is back in service, its health checked afresh.
    fn reload_if_due(&mut self) {
        let now = Instant::now();
        if self.reload_at.is_some_and(|at| at <= now) {
            self.reload_at = None;
            self.reloaded_before_call = Some(self.log.len());
            for e in &mut self.entries {
                if e.state != TargetState::InService {
                    e.state = TargetState::InService;
                    e.drained_at = None;
                    e.enabled_at = Some(now);
                }
            }
        }
    }

    fn find(&self, ids: &[TargetId]) -> Result<Vec<usize>> {
        ids.iter()
            .map(|id| {
                self.index.get(id).copied().ok_or_else(|| {
                    Error::target_not_found(id.as_str(), Some("in-memory balancer".into()))
                })
            })
            .collect()
    }

    fn serving_healthy(&self, now: Instant) -> usize {
        self.entries
            .iter()
            .filter(|e| e.status(now).is_serving_healthy())
            .count()
    }

    fn record(&mut self, op: Operation, ids: &[TargetId], ok: bool, mutation: bool) {
        let now = Instant::now();
        let serving_healthy_after = if mutation {
            self.serving_healthy(now)
        } else {
            0
        };
        self.log.push(CallRecord {
            at: now,
            op,
            ids: ids.to_vec(),
            ok,
            serving_healthy_after,
        });
    }

    fn fault(&mut self, op: Operation) -> Option<Error> {
        self.faults
            .get_mut(&op)
            .and_then(VecDeque::pop_front)
            .flatten()
    }
}

/// A balancer in memory, for tests, examples and benchmarks. Clones share
/// state, so a test can hold one clone while the engine uses another.
///
/// Every target starts in service and healthy with no connections. Drained
/// targets lose their connections as their [`DrainProfile`] says; enabled
/// targets show the health of their [`HealthScript`] (after its delay:
/// `Unknown` before, never a stale `Healthy`).
#[derive(Debug, Clone, Default)]
pub struct InMemoryBalancer {
    state: Arc<Mutex<State>>,
}

impl InMemoryBalancer {
    /// An empty balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A balancer with a target per id (address `127.0.0.1`).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for an invalid id.
    pub fn with_targets<I, S>(ids: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let lb = Self::new();
        for id in ids {
            lb.add_target(Target::new(TargetId::new(id)?).with_address("127.0.0.1"));
        }
        Ok(lb)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock only happens in a failing test; the
        // state is still usable for its report.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds (or replaces) a target, in service and healthy.
    pub fn add_target(&self, target: Target) {
        let mut s = self.lock();
        let entry = Entry {
            target: target.clone(),
            state: TargetState::InService,
            health: Health::Healthy,
            drain: DrainProfile::default(),
            health_script: HealthScript::default(),
            drained_at: None,
            enabled_at: None,
        };
        match s.index.get(&target.id) {
            Some(&i) => s.entries[i] = entry,
            None => {
                let i = s.entries.len();
                s.index.insert(target.id, i);
                s.entries.push(entry);
            }
        }
    }

    /// Removes a target from the pool (someone else's scale-in or config
    /// change): later calls naming it fail with [`Error::NotFound`].
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn remove_target(&self, id: &TargetId) -> Result<()> {
        let mut s = self.lock();
        let i = s.find(std::slice::from_ref(id))?[0];
        s.entries.remove(i);
        let index = s
            .entries
            .iter()
            .enumerate()
            .map(|(k, e)| (e.target.id.clone(), k))
            .collect();
        s.index = index;
        Ok(())
    }

    fn with_entry(&self, id: &TargetId, f: impl FnOnce(&mut Entry)) -> Result<()> {
        let mut s = self.lock();
        let i = s.find(std::slice::from_ref(id))?[0];
        f(&mut s.entries[i]);
        Ok(())
    }

    /// Sets a target's state and health directly (a target out for
    /// maintenance before the run, an unhealthy one, …).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn set_status(&self, id: &TargetId, state: TargetState, health: Health) -> Result<()> {
        self.with_entry(id, |e| {
            e.state = state;
            e.health = health;
            e.enabled_at = None;
            e.drained_at = if state == TargetState::InService {
                None
            } else {
                Some(Instant::now())
            };
        })
    }

    /// Scripts how a target's connections decay after a drain.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn set_drain_profile(&self, id: &TargetId, profile: DrainProfile) -> Result<()> {
        self.with_entry(id, |e| e.drain = profile)
    }

    /// Scripts the health a target shows after each enable.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn set_health_after_enable(&self, id: &TargetId, script: HealthScript) -> Result<()> {
        self.with_entry(id, |e| e.health_script = script)
    }

    /// The next call of `op` fails with `error` (queued: several calls fail
    /// in turn when called several times).
    pub fn fail_next(&self, op: Operation, error: Error) {
        self.lock()
            .faults
            .entry(op)
            .or_default()
            .push_back(Some(error));
    }

    /// The next call of `op` succeeds (queued with [`fail_next`](Self::fail_next):
    /// `pass_next` then `fail_next` fails the second call).
    pub fn pass_next(&self, op: Operation) {
        self.lock().faults.entry(op).or_default().push_back(None);
    }

    /// A reload at `at` (tokio time): like HAProxy's, it forgets every
    /// runtime change, putting every target out of rotation back in service
    /// (its health checked afresh). It takes effect at the first status
    /// call made at or after `at`, which already sees it. `None` cancels
    /// one that has not happened yet.
    pub fn reload_at(&self, at: Option<Instant>) {
        self.lock().reload_at = at;
    }

    /// The index in [`calls`](Self::calls) of the first call made after
    /// the reload, once it happened.
    pub fn reloaded_before_call(&self) -> Option<usize> {
        self.lock().reloaded_before_call
    }

    /// Every call made so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.lock().log.clone()
    }

    /// Number of calls made so far.
    pub fn call_count(&self) -> usize {
        self.lock().log.len()
    }

    /// The current status of every target, in order.
    pub fn snapshot(&self) -> Vec<(TargetId, TargetStatus)> {
        let now = Instant::now();
        self.lock()
            .entries
            .iter()
            .map(|e| (e.target.id.clone(), e.status(now)))
            .collect()
    }

    /// The current status of one target.
    pub fn status_of(&self, id: &TargetId) -> Option<TargetStatus> {
        let s = self.lock();
        s.index
            .get(id)
            .map(|&i| s.entries[i].status(Instant::now()))
    }

    fn mutate(
        &self,
        op: Operation,
        ids: &[TargetId],
        f: impl Fn(&mut Entry, Instant),
    ) -> Result<()> {
        let mut s = self.lock();
        if let Some(e) = s.fault(op) {
            s.record(op, ids, false, true);
            return Err(e);
        }
        let idx = match s.find(ids) {
            Ok(idx) => idx,
            Err(e) => {
                s.record(op, ids, false, true);
                return Err(e);
            }
        };
        let now = Instant::now();
        for i in idx {
            f(&mut s.entries[i], now);
        }
        s.record(op, ids, true, true);
        Ok(())
    }
}

#[async_trait]
impl LoadBalancer for InMemoryBalancer {
    fn name(&self) -> String {
        "in-memory balancer".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_counts_connections(true)
            .with_graceful_drain(true)
            .with_hard_disable(true)
            .with_health_checks(true)
    }

    async fn list(&self) -> Result<Vec<ListedTarget>> {
        let mut s = self.lock();
        if let Some(e) = s.fault(Operation::List) {
            s.record(Operation::List, &[], false, false);
            return Err(e);
        }
        let now = Instant::now();
        let out = s
            .entries
            .iter()
            .map(|e| ListedTarget {
                target: e.target.clone(),
                status: e.status(now),
            })
            .collect();
        s.record(Operation::List, &[], true, false);
        Ok(out)
    }

    async fn status(&self, ids: &[TargetId]) -> Result<Vec<TargetStatus>> {
        let mut s = self.lock();
        s.reload_if_due();
        if let Some(e) = s.fault(Operation::Status) {
            s.record(Operation::Status, ids, false, false);
            return Err(e);
        }
        let r = s.find(ids).map(|idx| {
            let now = Instant::now();
            idx.into_iter().map(|i| s.entries[i].status(now)).collect()
        });
        s.record(Operation::Status, ids, r.is_ok(), false);
        r
    }

    async fn drain(&self, ids: &[TargetId]) -> Result<()> {
        self.mutate(Operation::Drain, ids, |e, now| {
            if e.state == TargetState::InService {
                e.state = TargetState::Draining;
                e.drained_at = Some(now);
            }
        })
    }

    async fn disable(&self, ids: &[TargetId]) -> Result<()> {
        self.mutate(Operation::Disable, ids, |e, now| {
            if e.state != TargetState::OutOfService {
                e.state = TargetState::OutOfService;
                e.drained_at.get_or_insert(now);
            }
        })
    }

    async fn enable(&self, ids: &[TargetId]) -> Result<()> {
        self.mutate(Operation::Enable, ids, |e, now| {
            if e.state != TargetState::InService {
                e.state = TargetState::InService;
                e.drained_at = None;
                e.enabled_at = Some(now);
            }
        })
    }
}
