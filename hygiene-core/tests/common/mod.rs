//! Helpers shared by core's integration tests.
#![allow(dead_code, unreachable_pub)]

use hygiene_core::TargetId;

use hygiene_core::testing::{InMemoryBalancer, Operation};

pub fn ids(n: usize) -> Vec<TargetId> {
    (0..n)
        .map(|i| TargetId::new(format!("t{i:03}")).expect("id"))
        .collect()
}

pub fn pool(n: usize) -> (InMemoryBalancer, Vec<TargetId>) {
    let ids = ids(n);
    let lb = InMemoryBalancer::with_targets(ids.iter().map(|i| i.to_string())).expect("pool");
    (lb, ids)
}

/// Ids named by successful calls of `op`, in call order.
pub fn ids_of(lb: &InMemoryBalancer, op: Operation) -> Vec<TargetId> {
    lb.calls()
        .into_iter()
        .filter(|c| c.op == op && c.ok)
        .flat_map(|c| c.ids)
        .collect()
}

/// Every target of the balancer is in service.
pub fn all_in_service(lb: &InMemoryBalancer) -> bool {
    lb.snapshot()
        .iter()
        .all(|(_, s)| s.state == hygiene_core::TargetState::InService)
}

pub fn mutations(lb: &InMemoryBalancer) -> usize {
    lb.calls()
        .iter()
        .filter(|c| {
            matches!(
                c.op,
                Operation::Drain | Operation::Disable | Operation::Enable
            )
        })
        .count()
}

/// The in-memory balancer with one behaviour changed, for states a correct
/// backend never shows: a drain that is accepted but does nothing (an ELBv2
/// deregistration with a wrong port), or capabilities that lie.
#[derive(Debug, Clone)]
pub struct Tampered {
    pub inner: InMemoryBalancer,
    pub ignore_drain: bool,
    pub capabilities: Option<hygiene_core::Capabilities>,
}

impl Tampered {
    pub fn new(inner: InMemoryBalancer) -> Self {
        Self {
            inner,
            ignore_drain: false,
            capabilities: None,
        }
    }
}

#[async_trait::async_trait]
impl hygiene_core::LoadBalancer for Tampered {
    fn name(&self) -> String {
        "tampered in-memory balancer".into()
    }
    fn capabilities(&self) -> hygiene_core::Capabilities {
        self.capabilities
            .unwrap_or_else(|| self.inner.capabilities())
    }
    async fn list(&self) -> hygiene_core::Result<Vec<hygiene_core::ListedTarget>> {
        self.inner.list().await
    }
    async fn status(
        &self,
        ids: &[TargetId],
    ) -> hygiene_core::Result<Vec<hygiene_core::TargetStatus>> {
        self.inner.status(ids).await
    }
    async fn drain(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        if self.ignore_drain {
            return Ok(());
        }
        self.inner.drain(ids).await
    }
    async fn disable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.inner.disable(ids).await
    }
    async fn enable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.inner.enable(ids).await
    }
}
