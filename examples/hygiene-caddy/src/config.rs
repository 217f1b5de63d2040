//! [`CaddyBuilder`]: every setting of a [`CaddyBalancer`], validated in
//! [`CaddyBuilder::build`].

use std::time::Duration;

use hygiene_core::{Error, Result};

use crate::balancer::CaddyBalancer;
use crate::client::Admin;

/// Caddy's default admin endpoint.
pub const DEFAULT_ADMIN: &str = "http://localhost:2019";
/// Default time limit of one admin API request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default poll interval: the admin API is local and cheap.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Which upstreams are the same host as a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostMatch {
    /// The same dial address, `host:port` (the default; as HAProxy's).
    #[default]
    AddressAndPort,
    /// The same host, any port (one machine serving several ports).
    Address,
}

/// Where a target's health comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthChecks {
    /// Caddy's active health checks (`health_checks.active` on every
    /// handler that holds the host), read from the admin endpoint's
    /// `caddy_reverse_proxy_upstreams_healthy` gauge once it can hold a
    /// check made after the last configuration change (see the crate
    /// docs). A host in a handler without active checks reads `Unknown`,
    /// naming the handler. The default.
    #[default]
    Active,
    /// No health from Caddy: every target reads `Unknown`, and
    /// `capabilities().health_checks` is false, so the engine takes "in
    /// service" as enough. Give the rollout a probe.
    None,
}

/// Builds a [`CaddyBalancer`]:
///
/// ```
/// use hygiene_caddy::CaddyBalancer;
/// let lb = CaddyBalancer::builder()
///     .admin("http://127.0.0.1:2019")
///     .handler("web")              // the reverse_proxy handler with "@id": "web"
///     .build()?;
/// # Ok::<(), hygiene_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CaddyBuilder {
    admin: String,
    handlers: Vec<String>,
    servers: Vec<String>,
    timeout: Duration,
    poll: Duration,
    health: HealthChecks,
    host_match: HostMatch,
}

impl Default for CaddyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CaddyBuilder {
    /// Defaults: admin endpoint [`DEFAULT_ADMIN`], no pool yet.
    pub fn new() -> Self {
        Self {
            admin: DEFAULT_ADMIN.to_owned(),
            handlers: Vec::new(),
            servers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            poll: DEFAULT_POLL_INTERVAL,
            health: HealthChecks::default(),
            host_match: HostMatch::default(),
        }
    }

    /// The admin endpoint: `http://host:port` or `host:port`.
    pub fn admin(mut self, admin: impl Into<String>) -> Self {
        self.admin = admin.into();
        self
    }

    /// Adds the `reverse_proxy` handler whose `@id` is `id` to the pool:
    /// its upstreams are the targets.
    pub fn handler(mut self, id: impl Into<String>) -> Self {
        self.handlers.push(id.into());
        self
    }

    /// Adds every `reverse_proxy` handler of the HTTP server `name`
    /// (`apps.http.servers.<name>`, subroutes included) to the pool.
    pub fn server(mut self, name: impl Into<String>) -> Self {
        self.servers.push(name.into());
        self
    }

    /// Time limit of one admin API request ([`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The engine's poll interval when the rollout does not set one.
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Where health comes from ([`HealthChecks::Active`]).
    pub fn health(mut self, health: HealthChecks) -> Self {
        self.health = health;
        self
    }

    /// Which upstreams are the same host ([`HostMatch::AddressAndPort`]).
    pub fn host_match(mut self, host_match: HostMatch) -> Self {
        self.host_match = host_match;
        self
    }

    /// Validates every setting. Nothing is sent yet.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting: no pool (neither a
    /// handler nor a server), an admin endpoint that is not `http://host:port`,
    /// an empty name, a zero timeout or poll interval.
    pub fn build(self) -> Result<CaddyBalancer> {
        if self.handlers.is_empty() && self.servers.is_empty() {
            return Err(Error::invalid_config(
                "handlers",
                "name the pool: at least one reverse_proxy handler by its @id (`handler`) or one HTTP server by name (`server`)",
            ));
        }
        for (field, names) in [("handlers", &self.handlers), ("servers", &self.servers)] {
            if let Some(bad) = names
                .iter()
                .find(|n| n.is_empty() || n.chars().any(|c| c.is_control() || c == '/'))
            {
                return Err(Error::invalid_config(
                    field,
                    format!("{bad:?} is not a name Caddy's configuration can hold here (empty, `/` or a control character)"),
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid_config(
                "timeout",
                "must be above zero (e.g. 10s)",
            ));
        }
        if self.poll.is_zero() {
            return Err(Error::invalid_config(
                "poll_interval",
                "must be above zero (e.g. 500ms)",
            ));
        }
        let base = admin_base(&self.admin)?;
        Ok(CaddyBalancer::from_parts(
            Admin::new(base, self.timeout),
            self.handlers,
            self.servers,
            self.poll,
            self.health,
            self.host_match,
        ))
    }
}

fn admin_base(admin: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::invalid_config(
            "admin",
            format!("{admin:?} {why}; expected http://host:port, e.g. http://127.0.0.1:2019"),
        )
    };
    if admin.starts_with("https://") {
        return Err(bad(
            "uses https: this backend speaks to the admin endpoint in plain HTTP (keep it on loopback)",
        ));
    }
    if admin.starts_with("unix/") {
        return Err(bad("is a unix socket, which this backend does not support"));
    }
    let rest = admin.strip_prefix("http://").unwrap_or(admin);
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.chars().any(char::is_whitespace) {
        return Err(bad("is not a host:port"));
    }
    let uri: hyper::Uri = format!("http://{rest}/")
        .parse()
        .map_err(|_| bad("is not a host:port"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(format!("http://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_the_setting() {
        let e = CaddyBuilder::new().build().expect_err("no pool");
        assert!(e.to_string().contains("handlers"), "{e}");
        for (admin, what) in [
            ("https://127.0.0.1:2019", "https"),
            ("unix//run/caddy.sock", "unix"),
            ("http://127.0.0.1:2019/config", "host:port"),
        ] {
            let e = CaddyBuilder::new()
                .handler("web")
                .admin(admin)
                .build()
                .expect_err(admin);
            assert!(
                e.to_string().contains("admin") && e.to_string().contains(what),
                "{e}"
            );
        }
        let e = CaddyBuilder::new()
            .handler("")
            .build()
            .expect_err("empty name");
        assert!(e.to_string().contains("handlers"), "{e}");
        assert!(CaddyBuilder::new()
            .server("srv0")
            .admin("127.0.0.1:2019")
            .build()
            .is_ok());
    }
}
