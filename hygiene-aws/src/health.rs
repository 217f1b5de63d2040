//! ELBv2 target health, mapped to hygiene's [`TargetStatus`]: a pure
//! function per registration, and one that combines the registrations of a
//! target in several target groups.

use aws_sdk_elasticloadbalancingv2::types::{TargetHealth, TargetHealthStateEnum};
use hygiene_core::{Health, TargetState, TargetStatus};

/// What one target group says about one registration of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    /// Still registered (so a drain has to deregister it).
    pub(crate) registered: bool,
    /// In service, draining or out of service in this group.
    pub(crate) state: TargetState,
    /// Health in this group.
    pub(crate) health: Health,
    /// ELBv2's reason code and description, when it gave one.
    pub(crate) reason: Option<String>,
}

impl Observation {
    /// A target ELBv2 refuses to describe (`InvalidTarget`: a terminated or
    /// stopped instance): out of service and unhealthy, with ELBv2's words.
    pub(crate) fn invalid(message: &str) -> Self {
        Self {
            registered: false,
            state: TargetState::OutOfService,
            health: Health::Unhealthy,
            reason: Some(format!(
                "InvalidTarget: {message} (a terminated or stopped instance: ELBv2 will not register it again until it runs)"
            )),
        }
    }

    /// A registration this group does not have (absent from a full listing).
    pub(crate) fn not_registered() -> Self {
        Self {
            registered: false,
            state: TargetState::OutOfService,
            health: Health::Unknown,
            reason: None,
        }
    }
}

/// Maps one ELBv2 `TargetHealth`:
///
/// | ELBv2 state | state | health |
/// |---|---|---|
/// | `healthy` | in service | healthy |
/// | `initial` | in service | unknown (the first checks have not passed yet) |
/// | `unhealthy` | in service | unhealthy |
/// | `unavailable` | in service | unknown (health checks disabled) |
/// | `unhealthy.draining` (NLB) | in service, still registered | unhealthy |
/// | `draining` | draining | unknown |
/// | `unused` with `Target.NotRegistered` | out of service, not registered | unknown |
/// | `unused` otherwise (`Target.NotInUse`, `Target.InvalidState`, …) | out of service, still registered | unknown |
pub(crate) fn observe(health: Option<&TargetHealth>) -> Observation {
    let reason = health.and_then(|h| {
        let code = h.reason().map(|r| r.as_str().to_owned());
        match (code, h.description()) {
            (Some(c), Some(d)) => Some(format!("{c}: {d}")),
            (Some(c), None) => Some(c),
            (None, Some(d)) => Some(d.to_owned()),
            (None, None) => None,
        }
    });
    let state = health.and_then(TargetHealth::state);
    let (registered, state, health) = match state {
        Some(TargetHealthStateEnum::Healthy) => (true, TargetState::InService, Health::Healthy),
        Some(TargetHealthStateEnum::Initial | TargetHealthStateEnum::Unavailable) => {
            (true, TargetState::InService, Health::Unknown)
        }
        // NLB's `unhealthy.draining` is a *registered* target failing its
        // checks, kept for its open connections until the unhealthy
        // draining interval ends (and back to `healthy` if it recovers):
        // not a deregistration. A drain still has to deregister it. (AWS
        // "NLB introduces a new target health status while draining
        // connections", 2024; NLB guide, "Unhealthy draining interval".)
        Some(TargetHealthStateEnum::Unhealthy | TargetHealthStateEnum::UnhealthyDraining) => {
            (true, TargetState::InService, Health::Unhealthy)
        }
        Some(TargetHealthStateEnum::Draining) => (false, TargetState::Draining, Health::Unknown),
        Some(TargetHealthStateEnum::Unused) => {
            let not_registered = reason
                .as_deref()
                .is_none_or(|r| r.starts_with("Target.NotRegistered"));
            (!not_registered, TargetState::OutOfService, Health::Unknown)
        }
        // A state this SDK does not know: registered, and not to be trusted.
        _ => (true, TargetState::InService, Health::Unknown),
    };
    Observation {
        registered,
        state,
        health,
        reason,
    }
}

/// Combines the registrations of one target: out of service only when out
/// in every group, in service only when in service in every group (with
/// the worst health of them), draining otherwise.
pub(crate) fn combine(observations: &[Observation]) -> TargetStatus {
    let all = |s: TargetState| observations.iter().all(|o| o.state == s);
    let state = if observations.is_empty() || all(TargetState::OutOfService) {
        TargetState::OutOfService
    } else if all(TargetState::InService) {
        TargetState::InService
    } else {
        TargetState::Draining
    };
    let health = if observations.iter().any(|o| o.health == Health::Unhealthy) {
        Health::Unhealthy
    } else if !observations.is_empty() && observations.iter().all(|o| o.health == Health::Healthy) {
        Health::Healthy
    } else {
        Health::Unknown
    };
    // ELBv2 never says how many requests a target still has in flight.
    TargetStatus::new(state, health, None)
}

#[cfg(test)]
mod tests {
    use aws_sdk_elasticloadbalancingv2::types::TargetHealthReasonEnum;

    use super::*;

    fn th(state: TargetHealthStateEnum, reason: Option<TargetHealthReasonEnum>) -> TargetHealth {
        TargetHealth::builder()
            .state(state)
            .set_reason(reason)
            .description("why")
            .build()
    }

    #[test]
    fn maps_every_state() {
        use TargetHealthStateEnum as S;
        let o = observe(Some(&th(S::Healthy, None)));
        assert_eq!(
            (o.registered, o.state, o.health),
            (true, TargetState::InService, Health::Healthy)
        );
        let o = observe(Some(&th(
            S::Initial,
            Some(TargetHealthReasonEnum::RegistrationInProgress),
        )));
        assert_eq!(
            (o.state, o.health),
            (TargetState::InService, Health::Unknown)
        );
        let o = observe(Some(&th(
            S::Unhealthy,
            Some(TargetHealthReasonEnum::ResponseCodeMismatch),
        )));
        assert_eq!(
            (o.state, o.health),
            (TargetState::InService, Health::Unhealthy)
        );
        assert_eq!(
            o.reason.as_deref(),
            Some("Target.ResponseCodeMismatch: why")
        );
        let o = observe(Some(&th(
            S::Unavailable,
            Some(TargetHealthReasonEnum::HealthCheckDisabled),
        )));
        assert_eq!(
            (o.state, o.health),
            (TargetState::InService, Health::Unknown)
        );
        let o = observe(Some(&th(
            S::Draining,
            Some(TargetHealthReasonEnum::DeregistrationInProgress),
        )));
        assert_eq!((o.registered, o.state), (false, TargetState::Draining));
        let o = observe(Some(&th(S::UnhealthyDraining, None)));
        assert_eq!(
            (o.registered, o.state, o.health),
            (true, TargetState::InService, Health::Unhealthy),
            "unhealthy.draining is a registered, unhealthy target"
        );
        let o = observe(Some(&th(
            S::Unused,
            Some(TargetHealthReasonEnum::NotRegistered),
        )));
        assert_eq!((o.registered, o.state), (false, TargetState::OutOfService));
        let o = observe(Some(&th(S::Unused, Some(TargetHealthReasonEnum::NotInUse))));
        assert_eq!((o.registered, o.state), (true, TargetState::OutOfService));
    }

    fn obs(state: TargetState, health: Health) -> Observation {
        Observation {
            registered: state != TargetState::OutOfService,
            state,
            health,
            reason: None,
        }
    }

    #[test]
    fn combines_groups() {
        use Health::*;
        use TargetState::*;
        let s = combine(&[obs(InService, Healthy), obs(InService, Healthy)]);
        assert!(s.is_serving_healthy());
        assert_eq!(s.connections, None);
        let s = combine(&[obs(InService, Healthy), obs(InService, Unhealthy)]);
        assert_eq!((s.state, s.health), (InService, Unhealthy));
        let s = combine(&[obs(InService, Healthy), obs(InService, Unknown)]);
        assert_eq!(s.health, Unknown);
        let s = combine(&[obs(OutOfService, Unknown), obs(InService, Healthy)]);
        assert_eq!(s.state, Draining, "out of one group only is not drained");
        assert!(!s.is_drained());
        let s = combine(&[obs(OutOfService, Unknown), obs(Draining, Unknown)]);
        assert!(
            !s.is_drained(),
            "draining in one group with unknown connections is not drained"
        );
        let s = combine(&[obs(OutOfService, Unknown), obs(OutOfService, Unknown)]);
        assert!(s.is_drained());
    }
}
