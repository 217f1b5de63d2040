//! Targets, their identity and the status a balancer reports for them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest target id accepted by [`TargetId::new`].
pub const MAX_TARGET_ID_LEN: usize = 512;

/// Backend-native identity of a target: `i-0abc…` (ELBv2 instance),
/// `web/s1` (HAProxy backend/server), `upstream/3` (nginx upstream/server).
///
/// Construction guarantees a non-empty id of at most [`MAX_TARGET_ID_LEN`]
/// bytes with no whitespace and no control characters, so an id can never
/// smuggle a second line or command into a text protocol. Backends add their
/// own, stricter rules on top (HAProxy names are `[A-Za-z0-9._:-]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TargetId(String);

impl TargetId {
    /// Validates and wraps an id.
    ///
    /// # Errors
    /// [`Error::InvalidName`] when the id is empty, too long, or holds
    /// whitespace or control characters.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::invalid_name(id, "a target id must not be empty"));
        }
        if id.len() > MAX_TARGET_ID_LEN {
            return Err(Error::invalid_name(
                id,
                format!("a target id must be at most {MAX_TARGET_ID_LEN} bytes"),
            ));
        }
        if let Some(c) = id.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid_name(
                id.clone(),
                format!(
                    "a target id must not contain whitespace or control characters (found {c:?})"
                ),
            ));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TargetId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl AsRef<str> for TargetId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TargetId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// A target: its id, what an executor needs to reach it, and what a balancer
/// needs to put it back exactly as it was (ELBv2 port and Availability Zone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Target {
    /// Backend-native identity.
    pub id: TargetId,
    /// Host name or IP address the maintenance reaches the target at.
    pub address: Option<String>,
    /// Port the balancer sends traffic to.
    pub port: Option<u16>,
    /// Cloud instance id (ELBv2 instance targets, SSM).
    pub instance_id: Option<String>,
    /// Availability Zone the target was registered with (ELBv2 IP targets).
    pub zone: Option<String>,
    /// Backend-specific facts (group memberships, node names, …).
    pub meta: BTreeMap<String, String>,
}

impl Target {
    /// A target with only an id.
    pub fn new(id: TargetId) -> Self {
        Self {
            id,
            address: None,
            port: None,
            instance_id: None,
            zone: None,
            meta: BTreeMap::new(),
        }
    }

    /// Sets the address.
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Sets the port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets the cloud instance id.
    pub fn with_instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = Some(instance_id.into());
        self
    }

    /// Sets the Availability Zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Adds a backend-specific fact.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }
}

/// Whether the balancer sends new work to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Receives new work.
    InService,
    /// Receives no new work; existing work runs on.
    Draining,
    /// Receives nothing (maintenance, deregistered, down by admin).
    OutOfService,
}

/// The balancer's view of a target's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The last check passed.
    Healthy,
    /// The last check failed.
    Unhealthy,
    /// No check is configured, or none has completed yet.
    Unknown,
}

/// What a balancer reports about one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetStatus {
    /// In service, draining or out of service.
    pub state: TargetState,
    /// Health as the balancer sees it.
    pub health: Health,
    /// In-flight work the balancer still has on the target; `None` where the
    /// backend cannot count it. Never `Some(0)` when the count is unknown.
    pub connections: Option<u64>,
    /// The balancer's own words for the health result, when it gives any
    /// (ELBv2's `Target.ResponseCodeMismatch: …`, HAProxy's check status);
    /// the engine adds them to a health failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In service, but the balancer sends it no new work of its own while
    /// the other targets serve: HAProxy `backup` servers (used only once
    /// every active server of the backend is down), servers at weight 0 or
    /// `NOLB`. Such a target is not serving capacity: `min_healthy` never
    /// counts it (see [`counts_as_capacity_with`](Self::counts_as_capacity_with)),
    /// while its own health is judged as any other's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

impl TargetStatus {
    /// A status.
    pub fn new(state: TargetState, health: Health, connections: Option<u64>) -> Self {
        Self {
            state,
            health,
            connections,
            reason: None,
            standby: false,
        }
    }

    /// The same status, standing by (see [`standby`](Self::standby)).
    pub fn with_standby(mut self, standby: bool) -> Self {
        self.standby = standby;
        self
    }

    /// The same status with the balancer's own words for its health.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Drained: out of service, or draining with no connection left.
    ///
    /// A draining target whose connections are unknown (`None`) is not
    /// drained: only the backend saying `OutOfService` ends that wait.
    pub fn is_drained(&self) -> bool {
        match self.state {
            TargetState::OutOfService => true,
            TargetState::Draining => self.connections == Some(0),
            TargetState::InService => false,
        }
    }

    /// In service and `Healthy`. `Unknown` health does not count: a target
    /// is only healthy on the word of a check (see
    /// [`is_serving_healthy_with`](Self::is_serving_healthy_with) for
    /// balancers without health checks).
    pub fn is_serving_healthy(&self) -> bool {
        self.state == TargetState::InService && self.health == Health::Healthy
    }

    /// As [`is_serving_healthy`](Self::is_serving_healthy), but on a balancer
    /// that runs no health checks at all (`Capabilities::health_checks` is
    /// false) being in service is enough: there is no check to wait for, and
    /// a [`Probe`](crate::Probe) is the way to verify such targets.
    pub fn is_serving_healthy_with(&self, caps: &Capabilities) -> bool {
        self.state == TargetState::InService
            && (self.health == Health::Healthy
                || (!caps.health_checks && self.health == Health::Unknown))
    }
}

impl TargetStatus {
    /// Serving capacity for `min_healthy`: serving and healthy
    /// ([`is_serving_healthy_with`](Self::is_serving_healthy_with)) and not
    /// [`standby`](Self::standby) — a backup or weight-0 server carries no
    /// load while the others serve, so counting it would let a rollout take
    /// out the servers that do.
    pub fn counts_as_capacity_with(&self, caps: &Capabilities) -> bool {
        self.is_serving_healthy_with(caps) && !self.standby
    }
}

/// What a backend can do; shared tests and the engine pick their behaviour
/// from it. Built from [`Capabilities::none`] with the `with_*` setters:
///
/// ```
/// let caps = hygiene_core::Capabilities::none()
///     .with_counts_connections(true)
///     .with_health_checks(true);
/// assert!(caps.counts_connections && !caps.hard_disable);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend reports in-flight connections per target.
    pub counts_connections: bool,
    /// The backend has a graceful drain distinct from a hard disable.
    pub graceful_drain: bool,
    /// The backend has a hard disable ([`crate::LoadBalancer::disable`]).
    pub hard_disable: bool,
    /// The backend runs its own health checks.
    pub health_checks: bool,
    /// A status read is cheap (a local socket or HTTP call, no rate limit):
    /// the engine looks again every tenth of its poll interval while a
    /// target drains and while it waits for its health, so the end of a
    /// drain or a fresh check is acted on within milliseconds. Off for
    /// throttled cloud APIs (ELBv2), which are read at the poll interval.
    #[serde(default)]
    pub cheap_status: bool,
}

impl Capabilities {
    /// A backend that can do none of these things.
    pub fn none() -> Self {
        Self::default()
    }
    /// Says whether the backend counts in-flight connections per target.
    pub fn with_counts_connections(mut self, yes: bool) -> Self {
        self.counts_connections = yes;
        self
    }
    /// Says whether the backend has a graceful drain.
    pub fn with_graceful_drain(mut self, yes: bool) -> Self {
        self.graceful_drain = yes;
        self
    }
    /// Says whether the backend has a hard disable.
    pub fn with_hard_disable(mut self, yes: bool) -> Self {
        self.hard_disable = yes;
        self
    }
    /// Says whether the backend runs its own health checks.
    pub fn with_health_checks(mut self, yes: bool) -> Self {
        self.health_checks = yes;
        self
    }
    /// Says whether a status read is cheap enough to be made often (see
    /// [`Capabilities::cheap_status`]).
    pub fn with_cheap_status(mut self, yes: bool) -> Self {
        self.cheap_status = yes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_id_rejects_bad_input() {
        assert!(TargetId::new("").is_err());
        assert!(TargetId::new("web/s1\nshutdown").is_err());
        assert!(TargetId::new("web s1").is_err());
        assert!(TargetId::new("x".repeat(MAX_TARGET_ID_LEN + 1)).is_err());
        assert_eq!(
            TargetId::new("web/s1")
                .map(|t| t.to_string())
                .ok()
                .as_deref(),
            Some("web/s1")
        );
    }

    #[test]
    fn target_id_deserialize_validates() {
        assert!(serde_json::from_str::<TargetId>("\"a b\"").is_err());
        assert!(serde_json::from_str::<TargetId>("\"i-0abc\"").is_ok());
    }

    #[test]
    fn drained_rules() {
        use Health::*;
        use TargetState::*;
        assert!(TargetStatus::new(OutOfService, Unknown, None).is_drained());
        assert!(TargetStatus::new(Draining, Healthy, Some(0)).is_drained());
        assert!(!TargetStatus::new(Draining, Healthy, Some(2)).is_drained());
        assert!(!TargetStatus::new(Draining, Healthy, None).is_drained());
        assert!(!TargetStatus::new(InService, Healthy, Some(0)).is_drained());
    }

    #[test]
    fn standby_is_healthy_but_no_capacity() {
        use Health::*;
        use TargetState::*;
        let caps = Capabilities::none().with_health_checks(true);
        let s = TargetStatus::new(InService, Healthy, Some(0));
        assert!(s.counts_as_capacity_with(&caps));
        let s = s.with_standby(true);
        assert!(
            s.is_serving_healthy_with(&caps),
            "its own health is judged as usual"
        );
        assert!(!s.counts_as_capacity_with(&caps));
        let json =
            serde_json::to_string(&TargetStatus::new(InService, Healthy, None)).expect("json");
        assert!(!json.contains("standby"), "{json}");
        let back: TargetStatus = serde_json::from_str(&json).expect("reads without the field");
        assert!(!back.standby);
    }
}
