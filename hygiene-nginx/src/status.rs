//! Pure mapping from the API's peer view to [`TargetStatus`], and the
//! aggregation of several peers (instances of an HA pair) into one status.

use hygiene_core::{Health, TargetState, TargetStatus};

use crate::client::Peer;
use crate::config::HealthChecks;

/// One peer's status, and whether a health check ran since the enable
/// baseline (the baseline can then be forgotten).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerView {
    pub(crate) status: TargetStatus,
    pub(crate) fresh: bool,
}

/// Maps one peer.
///
/// - `up`, `checking`, `unhealthy`, `unavail` are in service (the admin
///   flags are off; health says the rest); `draining` is draining.
/// - `down` with `active > 0` is `Draining` (nginx lets open connections
///   and requests run on): for stream upstreams this *is* the drain. `down`
///   with no connection left is `OutOfService`.
/// - `baseline`: `health_checks.checks` when this balancer last enabled the
///   peer. Until the counter moves past it, health is `Unknown`.
/// - [`HealthChecks::Passive`]: nothing checks the peer, so health is
///   `Unknown` (`Unhealthy` for `unhealthy`/`unavail`, which nginx marks
///   after failed requests), never `Healthy`.
pub(crate) fn peer_status(
    peer: &Peer,
    mode: HealthChecks,
    baseline: Option<u64>,
) -> Result<PeerView, String> {
    let st = peer.state.as_str();
    let connections = peer.active;
    let state = match st {
        "up" | "checking" | "unhealthy" | "unavail" => TargetState::InService,
        "draining" => TargetState::Draining,
        "down" if connections.unwrap_or(0) > 0 => TargetState::Draining,
        "down" => TargetState::OutOfService,
        other => {
            return Err(format!(
                "peer {} ({}) has state {other:?}, which API version 9 does not define",
                peer.id, peer.server
            ))
        }
    };
    let checks = peer.health_checks.map(|h| h.checks);
    let (stale, fresh) = match (mode, baseline) {
        (HealthChecks::Active, Some(b)) => {
            let moved = checks.is_some_and(|c| c > b);
            (!moved, moved)
        }
        _ => (false, false),
    };
    let health = if stale {
        Health::Unknown
    } else {
        match (mode, st) {
            (_, "down" | "checking") => Health::Unknown,
            (_, "unhealthy" | "unavail") => Health::Unhealthy,
            // No check ran, so none vouches for the peer (in particular
            // not right after an enable): the engine accepts in service +
            // Unknown from a balancer without health checks.
            (HealthChecks::Passive, _) => Health::Unknown,
            (HealthChecks::Active, _) => match peer.health_checks.and_then(|h| h.last_passed) {
                Some(true) => Health::Healthy,
                Some(false) => Health::Unhealthy,
                None => Health::Unknown,
            },
        }
    };
    Ok(PeerView {
        status: TargetStatus::new(state, health, connections),
        fresh,
    })
}

/// One status for a server seen on several instances (or several peers).
///
/// In service only where in service everywhere; out of service only where
/// out everywhere; anything else is draining. Connections are summed. A
/// split pool (in service on one instance, not on another) is draining with
/// **unknown** connections, so it never counts as drained while one
/// instance still sends it new work. Health is healthy only where healthy
/// everywhere, unhealthy where unhealthy anywhere, else unknown.
pub(crate) fn combine(views: &[TargetStatus]) -> TargetStatus {
    let all = |s: TargetState| views.iter().all(|v| v.state == s);
    let any = |s: TargetState| views.iter().any(|v| v.state == s);
    let sum: Option<u64> = views.iter().map(|v| v.connections).sum();
    let (state, connections) = if all(TargetState::InService) {
        (TargetState::InService, sum)
    } else if all(TargetState::OutOfService) {
        (TargetState::OutOfService, sum)
    } else if any(TargetState::InService) {
        (TargetState::Draining, None)
    } else {
        (TargetState::Draining, sum)
    };
    let health = if views.iter().any(|v| v.health == Health::Unhealthy) {
        Health::Unhealthy
    } else if !views.is_empty() && views.iter().all(|v| v.health == Health::Healthy) {
        Health::Healthy
    } else {
        Health::Unknown
    };
    TargetStatus::new(state, health, connections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::PeerHealthChecks;
    use Health::*;
    use TargetState::*;

    fn peer(state: &str, active: u64, hc: Option<(u64, Option<bool>)>) -> Peer {
        Peer {
            id: 1,
            server: "10.0.0.1:80".into(),
            name: None,
            backup: false,
            state: state.into(),
            active: Some(active),
            health_checks: hc.map(|(checks, last_passed)| PeerHealthChecks {
                checks,
                last_passed,
            }),
        }
    }

    fn st(p: &Peer, mode: HealthChecks, baseline: Option<u64>) -> TargetStatus {
        peer_status(p, mode, baseline).expect("known state").status
    }

    #[test]
    fn states() {
        let hc = Some((5, Some(true)));
        assert_eq!(
            st(&peer("up", 2, hc), HealthChecks::Active, None),
            TargetStatus::new(InService, Healthy, Some(2))
        );
        assert_eq!(
            st(&peer("draining", 2, hc), HealthChecks::Active, None).state,
            Draining
        );
        assert_eq!(
            st(&peer("down", 2, hc), HealthChecks::Active, None),
            TargetStatus::new(Draining, Unknown, Some(2))
        );
        assert_eq!(
            st(&peer("down", 0, hc), HealthChecks::Active, None),
            TargetStatus::new(OutOfService, Unknown, Some(0))
        );
        assert_eq!(
            st(&peer("checking", 0, hc), HealthChecks::Active, None),
            TargetStatus::new(InService, Unknown, Some(0))
        );
        assert_eq!(
            st(&peer("unhealthy", 0, hc), HealthChecks::Active, None).health,
            Unhealthy
        );
        assert_eq!(
            st(&peer("unavail", 0, None), HealthChecks::Passive, None).health,
            Unhealthy
        );
        assert!(peer_status(&peer("sleeping", 0, None), HealthChecks::Active, None).is_err());
    }

    #[test]
    fn active_mode_needs_a_check() {
        assert_eq!(
            st(&peer("up", 0, None), HealthChecks::Active, None).health,
            Unknown
        );
        assert_eq!(
            st(&peer("up", 0, Some((0, None))), HealthChecks::Active, None).health,
            Unknown
        );
        assert_eq!(
            st(
                &peer("up", 0, Some((3, Some(false)))),
                HealthChecks::Active,
                None
            )
            .health,
            Unhealthy
        );
    }

    #[test]
    fn passive_mode_never_says_healthy() {
        // No check behind `up`, before or right after an enable.
        for baseline in [None, Some(0), Some(7)] {
            assert_eq!(
                st(&peer("up", 0, None), HealthChecks::Passive, baseline),
                TargetStatus::new(InService, Unknown, Some(0))
            );
            assert_eq!(
                st(
                    &peer("up", 3, Some((9, Some(true)))),
                    HealthChecks::Passive,
                    baseline
                )
                .health,
                Unknown,
                "a check counter does not count in passive mode"
            );
        }
        assert_eq!(
            st(&peer("draining", 1, None), HealthChecks::Passive, None).health,
            Unknown
        );
        assert_eq!(
            st(&peer("unhealthy", 0, None), HealthChecks::Passive, None).health,
            Unhealthy
        );
    }

    #[test]
    fn stale_check_after_enable_is_unknown() {
        let p = peer("up", 0, Some((7, Some(true))));
        let v = peer_status(&p, HealthChecks::Active, Some(7)).expect("known");
        assert_eq!((v.status.health, v.fresh), (Unknown, false));
        let p = peer("up", 0, Some((8, Some(true))));
        let v = peer_status(&p, HealthChecks::Active, Some(7)).expect("known");
        assert_eq!((v.status.health, v.fresh), (Healthy, true));
        let p = peer("unhealthy", 0, Some((7, Some(false))));
        assert_eq!(
            st(&p, HealthChecks::Active, Some(7)).health,
            Unknown,
            "a stale failure is no verdict either"
        );
    }

    #[test]
    fn combine_ha() {
        let up = TargetStatus::new(InService, Healthy, Some(1));
        let dr = TargetStatus::new(Draining, Healthy, Some(2));
        let out = TargetStatus::new(OutOfService, Unknown, Some(0));
        let dr0 = TargetStatus::new(Draining, Healthy, Some(0));
        assert_eq!(
            combine(&[up.clone(), up.clone()]),
            TargetStatus::new(InService, Healthy, Some(2))
        );
        assert_eq!(
            combine(&[up.clone(), dr.clone()]),
            TargetStatus::new(Draining, Healthy, None)
        );
        assert!(
            !combine(&[up.clone(), out.clone()]).is_drained(),
            "split pool must not count as drained"
        );
        assert_eq!(
            combine(&[dr.clone(), out.clone()]),
            TargetStatus::new(Draining, Unknown, Some(2))
        );
        assert!(combine(&[dr0.clone(), out.clone()]).is_drained());
        assert_eq!(combine(&[out.clone(), out.clone()]).state, OutOfService);
        let sick = TargetStatus::new(InService, Unhealthy, Some(0));
        assert_eq!(combine(&[up.clone(), sick.clone()]).health, Unhealthy);
        let unknown = TargetStatus::new(InService, Unknown, None);
        assert_eq!(
            combine(&[up.clone(), unknown.clone()]),
            TargetStatus::new(InService, Unknown, None)
        );
    }
}
