//! Helpers shared by core's integration tests.
#![allow(dead_code, unreachable_pub)]

use hygiene_core::{InMemoryBalancer, Operation, TargetId};

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
