//! [`NginxBuilder`]: every setting of an [`NginxBalancer`], validated by
//! [`NginxBuilder::build`].

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use hygiene_core::{Error, Result};
use url::Url;

use crate::balancer::NginxBalancer;
use crate::client::{Instance, UpstreamKind, MAX_API_VERSION, MIN_API_VERSION};

/// How the balancer judges a peer's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthChecks {
    /// The upstreams have active health checks (`health_check` directive).
    /// A peer is `Healthy` only when its last check passed **and**, after
    /// this balancer enabled it, at least one more check has run
    /// (`health_checks.checks` grew): until then it is `Unknown`, so a check
    /// made before the maintenance never counts. `checking` is `Unknown`,
    /// `unhealthy` and `unavail` are `Unhealthy`. A peer without
    /// `health_checks` stays `Unknown`.
    #[default]
    Active,
    /// No active health checks: nginx only sees failed requests (`max_fails`).
    /// `up` (and `draining`) is `Unknown`, since no check vouches for it,
    /// not even right after an enable; `unavail`/`unhealthy` are
    /// `Unhealthy`. The balancer then reports no health checks in its
    /// capabilities, so the engine takes in service + `Unknown` as back in
    /// service. nginx has no fresh check to offer here, so pair the rollout
    /// with a [`hygiene_core::Probe`] that checks the target itself.
    Passive,
}

/// One upstream this balancer manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamRef {
    pub(crate) kind: UpstreamKind,
    pub(crate) name: String,
}

/// Builds an [`NginxBalancer`]; see [`NginxBalancer::builder`].
#[derive(Clone, Default)]
pub struct NginxBuilder {
    instances: Vec<String>,
    upstreams: Vec<UpstreamRef>,
    basic_auth: Option<(String, String)>,
    ca_certs: Vec<Vec<u8>>,
    identity: Option<Vec<u8>>,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    health: HealthChecks,
    api_version: Option<u32>,
    poll_interval: Option<Duration>,
    max_reply: Option<usize>,
    proxy: Option<String>,
    auth_over_http: bool,
    scope: Scope,
}

/// Which upstreams a host is drained from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every upstream (http and stream) of the instance that lists the
    /// host: the configured upstreams name the hosts to maintain, not the
    /// upstreams to drain (the default). A maintenance takes the whole host
    /// down, so every upstream that sends it work must stop first.
    #[default]
    AllUpstreams,
    /// Only the configured upstreams. Other upstreams listing a managed
    /// host keep sending it work during its maintenance; `list` warns,
    /// naming them.
    ListedOnly,
}

impl fmt::Debug for NginxBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NginxBuilder")
            .field("instances", &self.instances)
            .field("upstreams", &self.upstreams)
            .field("user", &self.basic_auth.as_ref().map(|(u, _)| u.as_str()))
            .field("password", &self.basic_auth.as_ref().map(|_| "<redacted>"))
            .field("ca_certs", &self.ca_certs.len())
            .field(
                "client_identity",
                &self.identity.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("health", &self.health)
            .field("api_version", &self.api_version)
            .field("poll_interval", &self.poll_interval)
            .field("max_reply", &self.max_reply)
            .field("proxy", &self.proxy.as_ref().map(|_| "<set>"))
            .field("auth_over_http", &self.auth_over_http)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Default time for one API request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default status poll interval: the API is local and cheap.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Default cap on the size of one API reply (8 MiB: a peer is under 1 kB).
pub const DEFAULT_MAX_REPLY_SIZE: usize = 8 << 20;

impl NginxBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an nginx instance by its API URL: the location serving `api`,
    /// e.g. `https://lb1.example:8443/api` (the URL whose GET lists the
    /// versions). Several instances (an HA pair) form one pool.
    pub fn instance(mut self, api_url: impl Into<String>) -> Self {
        self.instances.push(api_url.into());
        self
    }

    /// Adds several instances.
    pub fn instances<I, S>(mut self, api_urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.instances.extend(api_urls.into_iter().map(Into::into));
        self
    }

    /// Manages an http upstream (`http { upstream NAME { zone …; } }`).
    pub fn upstream(mut self, name: impl Into<String>) -> Self {
        self.upstreams.push(UpstreamRef {
            kind: UpstreamKind::Http,
            name: name.into(),
        });
        self
    }

    /// Manages a stream upstream (`stream { upstream NAME { zone …; } }`):
    /// no graceful drain there, see [`NginxBalancer`].
    pub fn stream_upstream(mut self, name: impl Into<String>) -> Self {
        self.upstreams.push(UpstreamRef {
            kind: UpstreamKind::Stream,
            name: name.into(),
        });
        self
    }

    /// HTTP basic authentication for every instance (`auth_basic` on the API
    /// location). Never logged.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic_auth = Some((user.into(), password.into()));
        self
    }

    /// Trusts the CA certificate(s) in this PEM, besides the built-in roots.
    pub fn ca_cert_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca_certs.push(pem.as_ref().to_vec());
        self
    }

    /// Presents a client certificate: one PEM holding the private key and
    /// the certificate chain.
    pub fn client_identity_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.identity = Some(pem.as_ref().to_vec());
        self
    }

    /// Time limit of one API request (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Time limit to connect (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How health is judged (default [`HealthChecks::Active`]).
    pub fn health_checks(mut self, mode: HealthChecks) -> Self {
        self.health = mode;
        self
    }

    /// Uses this API version instead of negotiating one with `GET /api/`.
    pub fn api_version(mut self, version: u32) -> Self {
        self.api_version = Some(version);
        self
    }

    /// The poll interval the engine uses when its config does not say
    /// (default [`DEFAULT_POLL_INTERVAL`]).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// Caps the size of one API reply (default [`DEFAULT_MAX_REPLY_SIZE`]);
    /// a larger reply is an error, never read whole.
    pub fn max_reply_size(mut self, bytes: usize) -> Self {
        self.max_reply = Some(bytes);
        self
    }

    /// Reaches the API through this proxy (`http://proxy:3128`). Without
    /// it the API is reached directly: `HTTP_PROXY`, `HTTPS_PROXY` and
    /// `ALL_PROXY` in the environment are ignored, since an API holding
    /// credentials and write access is rarely meant to go through the
    /// proxy set for outbound web traffic.
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// Allows [`basic_auth`](Self::basic_auth) over plain `http` to a host
    /// that is not loopback. Refused by default: the password would cross
    /// the network in clear.
    pub fn allow_basic_auth_over_http(mut self, allow: bool) -> Self {
        self.auth_over_http = allow;
        self
    }

    /// Which upstreams a host is drained from (default
    /// [`Scope::AllUpstreams`]).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Validates every setting and builds the balancer. Nothing is sent yet:
    /// the API version is negotiated on the first call.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a missing or malformed setting,
    /// [`Error::InvalidName`] for an upstream name that is not acceptable;
    /// [`Error::InvalidConfig`] (`basic_auth`) for credentials over plain
    /// http to a host that is not loopback, unless
    /// [`allow_basic_auth_over_http`](Self::allow_basic_auth_over_http).
    pub fn build(self) -> Result<NginxBalancer> {
        if self.instances.is_empty() {
            return Err(Error::invalid_config(
                "instance",
                "no nginx instance given; add its API URL, e.g. https://lb1:8443/api",
            ));
        }
        if self.upstreams.is_empty() {
            return Err(Error::invalid_config(
                "upstream",
                "no upstream given; name the upstream(s) whose servers to maintain",
            ));
        }
        let mut seen = BTreeSet::new();
        for u in &self.upstreams {
            validate_upstream_name(&u.name)?;
            if !seen.insert(u.name.as_str()) {
                return Err(Error::invalid_config(
                    "upstream",
                    format!("upstream {:?} is given twice (target ids are <upstream>/<server>, so a name must be unique across http and stream)", u.name),
                ));
            }
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let connect_timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if timeout.is_zero() || connect_timeout.is_zero() {
            return Err(Error::invalid_config(
                "timeout",
                "timeouts must be greater than zero",
            ));
        }
        if let Some(v) = self.api_version {
            if !(MIN_API_VERSION..=MAX_API_VERSION).contains(&v) {
                return Err(Error::invalid_config(
                    "api_version",
                    format!("version {v} is not supported; this client speaks {MIN_API_VERSION} to {MAX_API_VERSION}"),
                ));
            }
        }
        if let Some((user, _)) = &self.basic_auth {
            if user.is_empty() || user.contains(':') {
                return Err(Error::invalid_config(
                    "basic_auth",
                    "the user name must be non-empty and must not contain ':'",
                ));
            }
        }
        let poll = self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
        if poll.is_zero() {
            return Err(Error::invalid_config(
                "poll_interval",
                "the poll interval must be greater than zero",
            ));
        }

        let max_reply = self.max_reply.unwrap_or(DEFAULT_MAX_REPLY_SIZE);
        if max_reply == 0 {
            return Err(Error::invalid_config(
                "max_reply_size",
                "the reply size cap must be greater than zero",
            ));
        }
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            // A redirect could carry the credentials elsewhere; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hygiene-nginx/", env!("CARGO_PKG_VERSION")));
        // reqwest reads HTTP(S)_PROXY from the environment by default: only
        // an explicitly configured proxy is used.
        http = match &self.proxy {
            None => http.no_proxy(),
            Some(p) => http.proxy(reqwest::Proxy::all(p.as_str()).map_err(|e| {
                Error::invalid_config("proxy", format!("{p:?} is not a proxy URL: {e}"))
            })?),
        };
        for pem in &self.ca_certs {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::invalid_config("ca_cert_pem", format!("not a PEM certificate bundle: {e}"))
            })?;
            if certs.is_empty() {
                return Err(Error::invalid_config(
                    "ca_cert_pem",
                    "the PEM holds no certificate",
                ));
            }
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        if let Some(pem) = &self.identity {
            let id = reqwest::Identity::from_pem(pem).map_err(|e| {
                Error::invalid_config(
                    "client_identity_pem",
                    format!("need one PEM with a private key and its certificate chain: {e}"),
                )
            })?;
            http = http.identity(id);
        }
        let http = http.build().map_err(|e| {
            Error::invalid_config("tls", format!("cannot build the HTTP client: {e}"))
        })?;

        let mut instances = Vec::with_capacity(self.instances.len());
        let mut urls = BTreeSet::new();
        for raw in &self.instances {
            let base = parse_api_url(raw)?;
            if !urls.insert(base.to_string()) {
                return Err(Error::invalid_config(
                    "instance",
                    format!("instance {raw} is given twice"),
                ));
            }
            if self.basic_auth.is_some() && base.scheme() == "http" && !is_loopback(&base) {
                if !self.auth_over_http {
                    return Err(Error::invalid_config(
                        "basic_auth",
                        format!("{raw}: basic auth over plain http would send the password in clear; use an https API URL, or allow it explicitly with allow_basic_auth_over_http(true)"),
                    ));
                }
                tracing::warn!(nginx.instance = %base, "basic auth over plain http: the password crosses the network in clear; use https");
            }
            instances.push(Instance::new(
                base,
                http.clone(),
                self.basic_auth.clone(),
                self.api_version,
                timeout,
                max_reply,
            ));
        }
        Ok(NginxBalancer::from_parts(
            instances,
            self.upstreams,
            self.health,
            poll,
            self.scope,
        ))
    }
}

/// Upstream names go into URL paths: refuse anything that is not a plain
/// nginx name, even though each segment is percent-encoded too.
pub(crate) fn validate_upstream_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 {
        return Err(Error::invalid_name(
            name,
            "an upstream name must be 1 to 256 characters",
        ));
    }
    if name == "." || name == ".." {
        return Err(Error::invalid_name(
            name,
            "an upstream name cannot be a relative path",
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '~' | '@')))
    {
        return Err(Error::invalid_name(
            name,
            format!("{c:?} is not allowed in an upstream name (letters, digits, _ - . : ~ @)"),
        ));
    }
    Ok(())
}

fn parse_api_url(raw: &str) -> Result<Url> {
    let bad = |why: &str| {
        Error::invalid_config(
            "instance",
            format!("{raw:?}: {why}; give the API URL, e.g. https://lb1:8443/api"),
        )
    };
    let mut url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host().is_none() {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials in the URL are not accepted (they would end up in logs); use basic_auth",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names() {
        assert!(validate_upstream_name("backend").is_ok());
        assert!(validate_upstream_name("api-v2.internal").is_ok());
        for bad in [
            "", ".", "..", "a/b", "a b", "a?x", "a#b", "a%2F", "a\nb", "../nginx",
        ] {
            assert!(
                matches!(validate_upstream_name(bad), Err(Error::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn api_urls() {
        assert_eq!(
            parse_api_url("http://127.0.0.1:8080/api")
                .map(|u| u.to_string())
                .ok()
                .as_deref(),
            Some("http://127.0.0.1:8080/api/")
        );
        assert!(parse_api_url("ftp://x/api").is_err());
        assert!(parse_api_url("http://u:p@x/api").is_err());
        assert!(parse_api_url("http://x/api?a=1").is_err());
        assert!(parse_api_url("not a url").is_err());
    }

    #[test]
    fn build_validates() {
        let b = || {
            NginxBalancer::builder()
                .instance("http://127.0.0.1:1/api")
                .upstream("backend")
        };
        assert!(b().build().is_ok());
        assert!(NginxBalancer::builder()
            .upstream("backend")
            .build()
            .is_err());
        assert!(NginxBalancer::builder()
            .instance("http://127.0.0.1:1/api")
            .build()
            .is_err());
        assert!(
            b().upstream("backend").build().is_err(),
            "duplicate upstream"
        );
        assert!(
            b().stream_upstream("backend").build().is_err(),
            "same name in http and stream"
        );
        assert!(
            b().api_version(1).build().is_err(),
            "version 1 has no drain"
        );
        assert!(b().api_version(2).build().is_ok());
        assert!(b().max_reply_size(0).build().is_err());
        assert!(b().proxy("not a url").build().is_err());
        assert!(b().proxy("http://127.0.0.1:3128").build().is_ok());
        assert!(b().api_version(10).build().is_err());
        assert!(b().timeout(Duration::ZERO).build().is_err());
        assert!(b().ca_cert_pem("not pem").build().is_err());
        assert!(b().client_identity_pem("not pem").build().is_err());
        assert!(
            b().instance("http://127.0.0.1:1/api/").build().is_err(),
            "same instance twice"
        );
        assert!(matches!(
            b().upstream("a/../b").build(),
            Err(Error::InvalidName { .. })
        ));
    }

    /// Issue 12, NGINX 8: credentials over plain http leave the host only
    /// when explicitly allowed.
    #[test]
    fn basic_auth_over_plain_http_is_refused() {
        let b = |url: &str| {
            NginxBalancer::builder()
                .instance(url)
                .upstream("backend")
                .basic_auth("admin", "pw")
        };
        let e = b("http://lb1.example/api").build().expect_err("plain http");
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "basic_auth",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("allow_basic_auth_over_http"), "{e}");
        assert!(b("http://lb1.example/api")
            .allow_basic_auth_over_http(true)
            .build()
            .is_ok());
        assert!(b("https://lb1.example/api").build().is_ok());
        assert!(
            b("http://127.0.0.1:8080/api").build().is_ok(),
            "loopback never leaves the host"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let b = NginxBalancer::builder()
            .instance("http://127.0.0.1:1/api")
            .upstream("backend")
            .basic_auth("admin", "s3cret-pw");
        assert!(!format!("{b:?}").contains("s3cret-pw"));
        let lb = b.build().expect("valid");
        let s = format!("{lb:?}");
        assert!(!s.contains("s3cret-pw") && s.contains("admin"), "{s}");
    }
}
