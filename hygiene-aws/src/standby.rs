//! The group changes of an [`AutoScalingMode`](crate::AutoScalingMode)
//! woven into a run: [`StandbyExecutor`] suspends the mode's processes
//! before the first drain (at the first preflight) and puts drained
//! instances in standby before their maintenance; [`StandbyBalancer`]
//! takes them out of standby when the engine puts them back — after the
//! maintenance and the probe, so an instance re-enters its group's target
//! groups only when the engine would enable it. An instance kept out
//! after a failure stays in standby (its group neither replaces it nor
//! registers it); `hygiene enable` or `restore` take it out.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hygiene_core::{
    Capabilities, Error, ExecHandle, ExecOutcome, Executor, HandleSink, ListedTarget, LoadBalancer,
    Preflight, Recovered, Result, Target, TargetId, TargetStatus,
};

use crate::autoscaling::GroupKeeper;

/// A [`LoadBalancer`] whose `enable` first takes the instances out of
/// their group's standby (which registers them in the group's attached
/// target groups), then enables them as the inner balancer does
/// (registering them where the group does not: ELBv2's `RegisterTargets`
/// of a target already registered changes nothing).
#[derive(Debug, Clone)]
pub struct StandbyBalancer {
    inner: Arc<dyn LoadBalancer>,
    keeper: Arc<GroupKeeper>,
}

impl StandbyBalancer {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LoadBalancer>, keeper: Arc<GroupKeeper>) -> Self {
        Self { inner, keeper }
    }
}

#[async_trait]
impl LoadBalancer for StandbyBalancer {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn default_poll_interval(&self) -> Duration {
        self.inner.default_poll_interval()
    }
    fn enable_hint(&self, id: &TargetId) -> String {
        match self.keeper.group_of(id) {
            Some(g) if self.keeper.mode() == crate::AutoScalingMode::Standby => format!(
                "{} (and, if it is still in standby: aws autoscaling exit-standby --auto-scaling-group-name {g} --instance-ids {id})",
                self.inner.enable_hint(id)
            ),
            _ => self.inner.enable_hint(id),
        }
    }
    async fn adopt(&self, targets: &[Target]) -> Result<()> {
        self.inner.adopt(targets).await
    }
    async fn list(&self) -> Result<Vec<ListedTarget>> {
        self.inner.list().await
    }
    async fn status(&self, ids: &[TargetId]) -> Result<Vec<TargetStatus>> {
        self.inner.status(ids).await
    }
    async fn drain(&self, ids: &[TargetId]) -> Result<()> {
        self.inner.drain(ids).await
    }
    async fn disable(&self, ids: &[TargetId]) -> Result<()> {
        self.inner.disable(ids).await
    }
    async fn enable(&self, ids: &[TargetId]) -> Result<()> {
        self.keeper.exit_standby(ids).await?;
        self.inner.enable(ids).await
    }
}

/// An [`Executor`] that makes the group changes around the inner one:
/// the run's suspended processes at the first preflight, and (standby
/// mode) a preflight that refuses a batch below `MinSize` and standby
/// before the maintenance.
#[derive(Debug, Clone)]
pub struct StandbyExecutor {
    inner: Arc<dyn Executor>,
    keeper: Arc<GroupKeeper>,
}

impl StandbyExecutor {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Executor>, keeper: Arc<GroupKeeper>) -> Self {
        Self { inner, keeper }
    }

    async fn before(&self, targets: &[Target]) -> Result<()> {
        let ids: Vec<TargetId> = targets.iter().map(|t| t.id.clone()).collect();
        self.keeper.enter_standby(&ids).await
    }
}

#[async_trait]
impl Executor for StandbyExecutor {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>> {
        self.keeper.suspend().await?;
        let ids: Vec<TargetId> = targets.iter().map(|t| t.id.clone()).collect();
        match self.keeper.check_min_size(&ids).await {
            Ok(()) => {}
            Err(e @ Error::InvalidConfig { .. }) => {
                return Ok(vec![Preflight::NotReady(e.to_string()); targets.len()]);
            }
            Err(e) => return Err(e),
        }
        self.inner.preflight(targets).await
    }

    async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>> {
        self.before(targets).await?;
        self.inner.execute(targets).await
    }

    async fn execute_tracked(
        &self,
        targets: &[Target],
        sink: &HandleSink,
    ) -> Result<Vec<ExecOutcome>> {
        self.before(targets).await?;
        self.inner.execute_tracked(targets, sink).await
    }

    async fn recover(&self, target: &Target, handle: &ExecHandle) -> Result<Recovered> {
        self.inner.recover(target, handle).await
    }
}
