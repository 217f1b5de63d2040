//! A target's status from its entries on every node and backend.

use hygiene_core::{Health, TargetState, TargetStatus};

/// Status of one target from its entries on every node and backend:
/// in service as soon as one entry is (a node or backend that sends it new
/// requests is what matters: a node restarted during a drain has it back
/// in rotation, and the engine must see that and drain it again), else
/// the most out state; healthy only where every entry is in service and
/// healthy (entries that disagree are `Unknown`); connections summed.
pub(crate) fn aggregate(parts: &[(TargetState, Health, u64)]) -> TargetStatus {
    let rank = |s: TargetState| match s {
        TargetState::InService => 0,
        TargetState::Draining => 1,
        TargetState::OutOfService => 2,
    };
    let connections = parts.iter().map(|p| p.2).fold(0u64, u64::saturating_add);
    let state = if parts.iter().any(|p| p.0 == TargetState::InService) {
        TargetState::InService
    } else {
        match parts
            .iter()
            .map(|p| p.0)
            .max_by_key(|s| rank(*s))
            .unwrap_or(TargetState::OutOfService)
        {
            // `MAINT` stops new requests, not those in flight: while any
            // entry (a node, an old worker) still has some, the target is
            // still draining, whatever another entry says.
            TargetState::OutOfService if connections > 0 => TargetState::Draining,
            s => s,
        }
    };
    let mixed = parts.iter().any(|p| p.0 != state);
    let health = if parts.is_empty() || mixed {
        Health::Unknown
    } else if parts.iter().any(|p| p.1 == Health::Unhealthy) {
        Health::Unhealthy
    } else if parts.iter().all(|p| p.1 == Health::Healthy) {
        Health::Healthy
    } else {
        Health::Unknown
    };
    TargetStatus::new(state, health, Some(connections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_is_pessimistic_and_sums() {
        use Health::*;
        use TargetState::*;
        let s = aggregate(&[(InService, Healthy, 1), (InService, Healthy, 2)]);
        assert_eq!(s, TargetStatus::new(InService, Healthy, Some(3)));
        // One node still (or again: restarted) sends it new requests: in
        // service, and not healthy-in-service until every entry agrees.
        let s = aggregate(&[(InService, Healthy, 0), (Draining, Healthy, 4)]);
        assert_eq!(s, TargetStatus::new(InService, Unknown, Some(4)));
        let s = aggregate(&[(Draining, Healthy, 0), (Draining, Healthy, 4)]);
        assert_eq!(s, TargetStatus::new(Draining, Healthy, Some(4)));
        let s = aggregate(&[(Draining, Healthy, 0), (OutOfService, Unknown, 0)]);
        assert_eq!(s.state, OutOfService);
        assert_eq!(s.health, Unknown);
        // Out hard on one node, requests still running on the other: not
        // drained until they end.
        let s = aggregate(&[(OutOfService, Unknown, 0), (Draining, Healthy, 2)]);
        assert_eq!((s.state, s.connections), (Draining, Some(2)));
        assert!(!s.is_drained());
        let s = aggregate(&[(OutOfService, Unknown, 1)]);
        assert_eq!(s.state, Draining, "MAINT with a request in flight");
        assert_eq!(
            aggregate(&[(InService, Healthy, 0), (InService, Unhealthy, 0)]).health,
            Unhealthy
        );
    }
}
