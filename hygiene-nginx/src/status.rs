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
/// - `up` is in service. Its health is its last check: nginx keeps a
///   server `up` until `fails=` checks in a row have failed, so `up` with
///   `last_passed: false` is in service and `Unhealthy` (the core's
///   `Unhealthy` is "the last check failed"), never `Healthy`.
/// - `checking`, `unhealthy` and `unavail` get no new requests
///   (ngx_http_upstream_hc_module: "Client requests are not passed to
///   unhealthy servers and servers in the “checking” state"; `unavail`:
///   `max_fails` reached): they are `Draining`, with their `active`
///   connections running on, so they never count in service for
///   `min_healthy`. `unhealthy` stays `Unhealthy` even when its last check
///   passed (it needs `passes=` in a row).
/// - `draining` is draining (http): the balancer decides when it is
///   drained (see `NginxBalancer`).
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
        "up" => TargetState::InService,
        "draining" | "checking" | "unhealthy" | "unavail" => TargetState::Draining,
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
    let last_passed = peer.health_checks.and_then(|h| h.last_passed);
    let (stale, fresh) = match (mode, baseline) {
        (HealthChecks::Active, Some(b)) => {
            let moved = checks.is_some_and(|c| c > b);
            (!moved, moved)
        }
        _ => (false, false),
    };
    let mut reason = None;
    let health = if stale {
        Health::Unknown
    } else {
        match (mode, st) {
            (_, "down" | "checking") => Health::Unknown,
            (_, "unhealthy" | "unavail") => {
                if st == "unhealthy" && last_passed == Some(true) {
                    reason = Some(
                        "nginx: unhealthy, its last check passed (it needs passes= checks in a row)"
                            .to_owned(),
                    );
                } else {
                    reason = Some(format!("nginx: {st}, it gets no new requests"));
                }
                Health::Unhealthy
            }
            // No check ran, so none vouches for the peer (in particular
            // not right after an enable): the engine accepts in service +
            // Unknown from a balancer without health checks.
            (HealthChecks::Passive, _) => Health::Unknown,
            (HealthChecks::Active, _) => match last_passed {
                Some(true) => Health::Healthy,
                Some(false) => {
                    reason = Some(format!(
                        "nginx: {st}, but its last health check failed (not yet fails= in a row)"
                    ));
                    Health::Unhealthy
                }
                None => Health::Unknown,
            },
        }
    };
    let mut status = TargetStatus::new(state, health, connections);
    if let Some(r) = reason {
        status = status.with_reason(r);
    }
    Ok(PeerView { status, fresh })
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
    let mut out = TargetStatus::new(state, health, connections);
    let reasons: Vec<&str> = views.iter().filter_map(|v| v.reason.as_deref()).collect();
    if !reasons.is_empty() {
        out = out.with_reason(reasons.join("; "));
    }
    out
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
            st(&peer("unhealthy", 0, hc), HealthChecks::Active, None).health,
            Unhealthy
        );
        assert_eq!(
            st(&peer("unavail", 0, None), HealthChecks::Passive, None).health,
            Unhealthy
        );
        assert!(peer_status(&peer("sleeping", 0, None), HealthChecks::Active, None).is_err());
    }

    /// Issue 12, NGINX 6: peers nginx sends no new requests to never read
    /// as in service (so `min_healthy` does not count them), in either
    /// health mode; their connections still run on.
    #[test]
    fn checking_unhealthy_unavail_take_no_new_requests() {
        for mode in [HealthChecks::Active, HealthChecks::Passive] {
            for state in ["checking", "unhealthy", "unavail"] {
                let s = st(&peer(state, 2, Some((5, Some(true)))), mode, None);
                assert_eq!((s.state, s.connections), (Draining, Some(2)), "{state}");
                assert!(!s.is_serving_healthy() && !s.is_drained(), "{state}: {s:?}");
                let caps = hygiene_core::Capabilities::none();
                assert!(!s.is_serving_healthy_with(&caps), "{state} {mode:?}");
            }
        }
        assert_eq!(
            st(&peer("checking", 0, None), HealthChecks::Active, None),
            TargetStatus::new(Draining, Unknown, Some(0))
        );
    }

    /// Issue 12, NGINX 3: between `fails=`/`passes=` thresholds nginx keeps
    /// the state, so `up` can carry a failed last check (in service, not
    /// healthy) and `unhealthy` a passed one (still not serving).
    #[test]
    fn state_between_thresholds() {
        let s = st(
            &peer("up", 1, Some((4, Some(false)))),
            HealthChecks::Active,
            None,
        );
        assert_eq!((s.state, s.health), (InService, Unhealthy));
        assert!(
            s.reason.as_deref().is_some_and(|r| r.contains("fails=")),
            "{s:?}"
        );
        let s = st(
            &peer("unhealthy", 0, Some((4, Some(true)))),
            HealthChecks::Active,
            None,
        );
        assert_eq!((s.state, s.health), (Draining, Unhealthy));
        assert!(
            s.reason.as_deref().is_some_and(|r| r.contains("passes=")),
            "{s:?}"
        );
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
        let p = peer("up", 0, Some((7, Some(false))));
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
