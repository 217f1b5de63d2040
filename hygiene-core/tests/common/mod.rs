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
/// backend never shows or a real one shows only under faults: a drain that
/// is accepted but does nothing (an ELBv2 deregistration with a wrong
/// port), capabilities that lie, a call that never returns (a wedged API),
/// an enable applied and then reported failed (one HAProxy node of two).
#[derive(Debug, Clone)]
pub struct Tampered {
    pub inner: InMemoryBalancer,
    pub ignore_drain: bool,
    pub capabilities: Option<hygiene_core::Capabilities>,
    /// Calls of these operations never return, from the given call on
    /// (0: every call; 1: all but the first; …).
    pub hang: Vec<(Operation, usize)>,
    pub calls: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Operation, usize>>>,
    /// `enable` applies, then fails with this error, this many times.
    pub enable_applies_then_fails: std::sync::Arc<std::sync::Mutex<Vec<hygiene_core::Error>>>,
    /// `list` shows only targets in service, while `status` still answers
    /// for the others (ELBv2 lists registered targets only).
    pub list_in_service_only: bool,
}

impl Tampered {
    pub fn new(inner: InMemoryBalancer) -> Self {
        Self {
            inner,
            ignore_drain: false,
            capabilities: None,
            hang: Vec::new(),
            calls: Default::default(),
            enable_applies_then_fails: Default::default(),
            list_in_service_only: false,
        }
    }

    async fn maybe_hang(&self, op: Operation) {
        let n = {
            let mut calls = self.calls.lock().expect("lock");
            let n = calls.entry(op).or_default();
            *n += 1;
            *n
        };
        if self.hang.iter().any(|&(o, from)| o == op && n > from) {
            std::future::pending::<()>().await;
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
        self.maybe_hang(Operation::List).await;
        let mut listed = self.inner.list().await?;
        if self.list_in_service_only {
            listed.retain(|l| l.status.state == hygiene_core::TargetState::InService);
        }
        Ok(listed)
    }
    async fn status(
        &self,
        ids: &[TargetId],
    ) -> hygiene_core::Result<Vec<hygiene_core::TargetStatus>> {
        self.maybe_hang(Operation::Status).await;
        self.inner.status(ids).await
    }
    async fn drain(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.maybe_hang(Operation::Drain).await;
        if self.ignore_drain {
            return Ok(());
        }
        self.inner.drain(ids).await
    }
    async fn disable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.maybe_hang(Operation::Disable).await;
        self.inner.disable(ids).await
    }
    async fn enable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.maybe_hang(Operation::Enable).await;
        self.inner.enable(ids).await?;
        let fault = self.enable_applies_then_fails.lock().expect("lock").pop();
        match fault {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
