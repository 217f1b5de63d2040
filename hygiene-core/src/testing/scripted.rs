//! [`ScriptedExecutor`]: an executor for tests whose outcomes are scripted
//! per target and whose calls are logged.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::memory::InMemoryBalancer;
use crate::error::{Error, Result};
use crate::executor::{ExecOutcome, Executor, Preflight};
use crate::target::{Target, TargetId, TargetStatus};

/// What the scripted maintenance does on one target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Script {
    /// How long it takes.
    pub duration: Duration,
    /// `Some(message)`: it fails with this message.
    pub fail: Option<String>,
    /// `Some(reason)`: preflight says not ready.
    pub not_ready: Option<String>,
}

/// One execution as the scripted executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    /// The target.
    pub id: TargetId,
    /// When the maintenance started (tokio time).
    pub started: Instant,
    /// When it ended.
    pub ended: Instant,
    /// Whether it succeeded.
    pub success: bool,
    /// The target's status on the observed balancer when it started.
    pub status_at_start: Option<TargetStatus>,
}

#[derive(Debug, Default)]
struct State {
    scripts: HashMap<TargetId, Script>,
    faults: VecDeque<Error>,
    log: Vec<ExecRecord>,
    preflights: usize,
}

/// An executor whose outcomes are scripted per target (default: success at
/// once). Clones share state. With [`observe`](Self::observe), each record
/// keeps the target's status on the balancer when its maintenance started,
/// so a test can check that nothing ran before its target was drained.
#[derive(Debug, Clone, Default)]
pub struct ScriptedExecutor {
    state: Arc<Mutex<State>>,
    observed: Option<InMemoryBalancer>,
}

impl ScriptedExecutor {
    /// Success everywhere, at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the status of each target on `lb` when its maintenance starts.
    pub fn observe(mut self, lb: &InMemoryBalancer) -> Self {
        self.observed = Some(lb.clone());
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Scripts one target.
    pub fn script(&self, id: &TargetId, script: Script) {
        self.lock().scripts.insert(id.clone(), script);
    }

    /// Every target takes `duration` unless scripted otherwise.
    pub fn set_duration_all<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a TargetId>,
        duration: Duration,
    ) {
        let mut s = self.lock();
        for id in ids {
            s.scripts.entry(id.clone()).or_default().duration = duration;
        }
    }

    /// The next `execute` call fails as a whole with `error`.
    pub fn fail_next(&self, error: Error) {
        self.lock().faults.push_back(error);
    }

    /// Every execution so far.
    pub fn records(&self) -> Vec<ExecRecord> {
        self.lock().log.clone()
    }

    /// Preflight calls so far.
    pub fn preflight_calls(&self) -> usize {
        self.lock().preflights
    }
}

#[async_trait]
impl Executor for ScriptedExecutor {
    fn name(&self) -> String {
        "scripted executor".to_owned()
    }

    async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>> {
        let mut s = self.lock();
        s.preflights += 1;
        Ok(targets
            .iter()
            .map(
                |t| match s.scripts.get(&t.id).and_then(|sc| sc.not_ready.clone()) {
                    Some(why) => Preflight::NotReady(why),
                    None => Preflight::Ready,
                },
            )
            .collect())
    }

    async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>> {
        let scripts: Vec<Script> = {
            let mut s = self.lock();
            if let Some(e) = s.faults.pop_front() {
                return Err(e);
            }
            targets
                .iter()
                .map(|t| s.scripts.get(&t.id).cloned().unwrap_or_default())
                .collect()
        };
        let started = Instant::now();
        let statuses: Vec<Option<TargetStatus>> = targets
            .iter()
            .map(|t| self.observed.as_ref().and_then(|lb| lb.status_of(&t.id)))
            .collect();
        // All targets of a batch run at once; each ends after its own time.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by_key(|&i| scripts[i].duration);
        let mut outcomes: Vec<Option<ExecOutcome>> = vec![None; targets.len()];
        for i in order {
            let until = started + scripts[i].duration;
            tokio::time::sleep_until(until).await;
            let id = targets[i].id.clone();
            let out = match &scripts[i].fail {
                None => ExecOutcome::success(id.clone(), scripts[i].duration),
                Some(msg) => {
                    let mut o = ExecOutcome::failure(id.clone(), scripts[i].duration, msg.clone());
                    o.exit_code = Some(1);
                    o
                }
            };
            self.lock().log.push(ExecRecord {
                id,
                started,
                ended: Instant::now(),
                success: out.success,
                status_at_start: statuses[i].clone(),
            });
            outcomes[i] = Some(out);
        }
        Ok(outcomes.into_iter().flatten().collect())
    }
}
