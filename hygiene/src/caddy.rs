//! `[balancer.caddy]`: Caddy's reverse proxy through its admin API
//! (the `hygiene-caddy` crate, feature `caddy`).

use std::sync::Arc;
use std::time::Duration;

use hygiene_core::{duration_text, LoadBalancer};
use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Loaded};

/// `[balancer.caddy]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaddySection {
    /// The admin endpoint, `http://127.0.0.1:2019` (the default).
    pub(crate) admin: Option<String>,
    /// `reverse_proxy` handlers of the pool, by `@id`.
    #[serde(default)]
    pub(crate) handlers: Vec<String>,
    /// HTTP servers (`apps.http.servers.<name>`) whose every
    /// `reverse_proxy` handler is in the pool.
    #[serde(default)]
    pub(crate) servers: Vec<String>,
    /// `active` (default: Caddy's active health checks) or `none`.
    #[serde(default)]
    pub(crate) health_checks: CaddyHealth,
    /// What makes two upstreams one host: `address_and_port` (default) or
    /// `address`.
    #[serde(default)]
    pub(crate) host_match: CaddyHostMatch,
    /// Time limit of one admin API request.
    #[serde(default, with = "duration_text::option")]
    pub(crate) timeout: Option<Duration>,
}

/// `[balancer.caddy] health_checks`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CaddyHealth {
    #[default]
    Active,
    None,
}

/// `[balancer.caddy] host_match`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CaddyHostMatch {
    #[default]
    AddressAndPort,
    Address,
}

impl CaddySection {
    /// The pool's default name: its handlers and servers.
    pub(crate) fn pool_name(&self) -> String {
        self.handlers
            .iter()
            .chain(&self.servers)
            .cloned()
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// The balancer of the section.
#[cfg(feature = "caddy")]
pub(crate) fn balancer(
    loaded: &Loaded,
    c: &Spanned<CaddySection>,
    poll: Option<Duration>,
) -> Result<Arc<dyn LoadBalancer>, ConfigError> {
    use hygiene_caddy::{CaddyBalancer, HealthChecks, HostMatch};
    let span = c.span();
    let c = c.get_ref();
    let mut b = CaddyBalancer::builder()
        .health(match c.health_checks {
            CaddyHealth::Active => HealthChecks::Active,
            CaddyHealth::None => HealthChecks::None,
        })
        .host_match(match c.host_match {
            CaddyHostMatch::AddressAndPort => HostMatch::AddressAndPort,
            CaddyHostMatch::Address => HostMatch::Address,
        });
    if let Some(a) = &c.admin {
        b = b.admin(a.as_str());
    }
    for h in &c.handlers {
        b = b.handler(h.as_str());
    }
    for s in &c.servers {
        b = b.server(s.as_str());
    }
    if let Some(t) = c.timeout {
        b = b.timeout(t);
    }
    if let Some(p) = poll {
        b = b.poll_interval(p);
    }
    Ok(Arc::new(crate::setup::at(
        loaded,
        span,
        "balancer.caddy",
        b.build(),
    )?))
}

/// Without the `caddy` feature the section is refused.
#[cfg(not(feature = "caddy"))]
pub(crate) fn balancer(
    loaded: &Loaded,
    c: &Spanned<CaddySection>,
    _poll: Option<Duration>,
) -> Result<Arc<dyn LoadBalancer>, ConfigError> {
    Err(loaded.error_at(
        Some(c.span()),
        "balancer.caddy",
        "this hygiene was built without Caddy support: build it with the `caddy` feature",
    ))
}
