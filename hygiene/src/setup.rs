//! From a loaded configuration (and the command line's overrides) to the
//! library's objects: balancer, executor, probe, rollout configuration and
//! journal path. Nothing here connects to anything.

use std::net::ToSocketAddrs;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hygiene_core::{
    Executor, HttpProbe, LoadBalancer, LocalCommand, Probe, ProbeVerdict, RolloutConfig,
    SshCommand, Target, TcpProbe,
};
use hygiene_haproxy::{HaproxyBalancer, HostMatch, HostScope, Node};
use toml::Spanned;

use crate::cli::RolloutFlags;
use crate::config::{ConfigError, HaproxyHostMatch, HaproxyHosts, Loaded, ProbeKind};

/// Everything a command needs, built and validated.
#[derive(Debug)]
pub(crate) struct Setup {
    /// The configuration file.
    pub(crate) config_path: PathBuf,
    /// The pool's name (names the journal).
    pub(crate) pool: String,
    /// The pool's journal.
    pub(crate) journal: PathBuf,
    /// The engine's settings, overrides applied.
    pub(crate) rollout: RolloutConfig,
    pub(crate) balancer: Arc<dyn LoadBalancer>,
    pub(crate) executor: Arc<dyn Executor>,
    pub(crate) probe: Option<AnyProbe>,
    /// The executor's own time limit, when it has one (for the plan).
    pub(crate) executor_timeout: Option<Duration>,
    /// The HAProxy balancer, when it is one (validate asks its sockets'
    /// level).
    pub(crate) haproxy: Option<HaproxyBalancer>,
    /// The ELBv2 balancer, when it is one (its deregistration delays give
    /// the default drain timeout).
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub(crate) elbv2: Option<crate::elbv2::Elbv2>,
    /// Whether the operator set `drain_timeout` (file, `--set`, flag or
    /// variable) rather than leaving it to the default (only ELBv2's default
    /// depends on it).
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub(crate) drain_timeout_set: bool,
    /// `[[gate]]` and `[[notify]]`.
    pub(crate) outside: crate::gates::Outside,
}

/// The probe the file configures.
#[derive(Debug, Clone)]
pub(crate) enum AnyProbe {
    Http(HttpProbe),
    Tcp(TcpProbe),
}

#[async_trait]
impl Probe for AnyProbe {
    async fn check(&self, target: &Target) -> hygiene_core::Result<ProbeVerdict> {
        match self {
            Self::Http(p) => p.check(target).await,
            Self::Tcp(p) => p.check(target).await,
        }
    }
}

/// A library error from building one section, placed at that section.
pub(crate) fn at<T>(
    loaded: &Loaded,
    span: Range<usize>,
    section: &str,
    r: hygiene_core::Result<T>,
) -> Result<T, ConfigError> {
    r.map_err(|e| {
        let (key, message) = match &e {
            hygiene_core::Error::InvalidConfig { field, message } => {
                // A builder names its own fields (`ssh.user`): under this
                // section that is `executor.ssh.user`.
                let last = section.rsplit('.').next().unwrap_or(section);
                let field = field
                    .strip_prefix(last)
                    .and_then(|f| f.strip_prefix('.'))
                    .unwrap_or(field);
                // Point at the field's line when the section sets it.
                let span = loaded.field_span(span.clone(), field);
                return loaded.error_at(Some(span), &format!("{section}.{field}"), message.clone());
            }
            other => (section.to_owned(), other.to_string()),
        };
        loaded.error_at(Some(span), &key, message)
    })
}

/// The state directory: flag / `HYGIENE_STATE_DIR`, else the file's
/// `state_dir`, else the library's default.
pub(crate) fn state_dir(loaded: &Loaded, flag: Option<&PathBuf>) -> PathBuf {
    flag.cloned()
        .or_else(|| loaded.file.state_dir.clone())
        .unwrap_or_else(hygiene_core::journal::default_dir)
}

/// Builds everything from the file and the flags.
pub(crate) async fn build(
    loaded: &Loaded,
    state_dir_flag: Option<&PathBuf>,
    flags: &RolloutFlags,
    cancel: &hygiene_core::CancellationToken,
) -> Result<Setup, ConfigError> {
    let pool = loaded.pool_name();
    let state_dir = state_dir(loaded, state_dir_flag);
    let journal = state_dir.join(format!("{pool}.jsonl"));
    let rollout = rollout_config(loaded, flags)?;
    let drain_timeout_set =
        flags.drain_timeout.is_some() || loaded.sets("rollout", "drain_timeout");
    let (balancer, _, haproxy, elbv2) =
        balancer(loaded, rollout.poll_interval(), rollout.call_timeout()).await?;
    let (executor, executor_timeout, _) = executor(loaded, &state_dir, cancel).await?;
    let probe = probe(loaded)?;
    let outside = crate::gates::build(loaded, &rollout)?;
    Ok(Setup {
        config_path: loaded.path.clone(),
        pool,
        journal,
        rollout,
        balancer,
        executor,
        probe,
        executor_timeout,
        haproxy,
        elbv2,
        drain_timeout_set,
        outside,
    })
}

/// The `[rollout]` section with the command line's overrides on top; an
/// override goes through the same validation as the file.
pub(crate) fn rollout_config(
    loaded: &Loaded,
    flags: &RolloutFlags,
) -> Result<RolloutConfig, ConfigError> {
    let base = match &loaded.file.rollout {
        Some(r) => r.get_ref().clone(),
        None => RolloutConfig::builder()
            .build()
            .map_err(|e| ConfigError::flag("rollout", e.to_string()))?,
    };
    let overrides = flags.overrides()?;
    if overrides.is_empty() {
        return Ok(base);
    }
    let mut value = serde_json::to_value(&base)
        .map_err(|e| ConfigError::flag("rollout", format!("cannot apply overrides: {e}")))?;
    let Some(map) = value.as_object_mut() else {
        return Err(ConfigError::flag("rollout", "cannot apply overrides"));
    };
    for (key, v) in &overrides {
        map.insert((*key).to_owned(), v.clone());
    }
    serde_json::from_value::<RolloutConfig>(value).map_err(|e| {
        // "invalid configuration: batch_size: …" names the key: name the
        // flag or variable that set it.
        let text = e.to_string();
        let rest = text
            .strip_prefix("invalid configuration: ")
            .unwrap_or(&text);
        match rest.split_once(": ") {
            Some((key, message)) if overrides.iter().any(|(k, _)| *k == key) => {
                ConfigError::flag(&flags.source(key), message.to_owned())
                    .with_key(&format!("rollout.{key}"))
            }
            _ => {
                let named: Vec<String> = overrides.iter().map(|(k, _)| flags.source(k)).collect();
                ConfigError::flag(&named.join(", "), rest.to_owned())
            }
        }
    })
}

/// Applies `--only` and `--exclude` over the pool as listed. A name is a
/// target's full name (`web/s1`), a glob over the full names (`web/s*`,
/// `*/s[12]`), or a short name (`s1`, the part after the last `/`) when
/// it names one target only. A name that matches nothing (`--only` when
/// `strict`, `--exclude` always) or a short name that matches several is
/// an error that names the flag and lists the pool's targets (or the
/// matches).
pub(crate) fn select(
    setup: &mut Setup,
    listed: &[hygiene_core::ListedTarget],
    flags: &RolloutFlags,
    strict: bool,
) -> Result<(), ConfigError> {
    if flags.only.is_empty() && flags.exclude.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = listed.iter().map(|l| l.target.id.as_str()).collect();
    let only = resolve(&flags.source("only"), &flags.only, &ids, strict)?;
    let exclude = resolve(&flags.source("exclude"), &flags.exclude, &ids, true)?;
    let base: Vec<String> = if !flags.only.is_empty() {
        only
    } else {
        match setup.rollout.selection() {
            hygiene_core::Selection::Named(ids) => ids.iter().map(ToString::to_string).collect(),
            _ => ids.iter().map(|s| (*s).to_owned()).collect(),
        }
    };
    let keep: Vec<String> = base
        .into_iter()
        .filter(|id| !exclude.contains(id))
        .collect();
    let mut value = serde_json::to_value(&setup.rollout)
        .map_err(|e| ConfigError::flag("--only/--exclude", format!("cannot apply: {e}")))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("selection".into(), serde_json::json!({ "named": keep }));
    }
    setup.rollout = serde_json::from_value(value).map_err(|e| {
        let flag = if flags.only.is_empty() {
            "exclude"
        } else {
            "only"
        };
        ConfigError::flag(&flags.source(flag), e.to_string())
    })?;
    Ok(())
}

/// The pool's names that `names` give (see [`select`]), in their order,
/// each once. A name matching nothing is an error when `strict`, else
/// kept as given (`plan` and `validate` report a selection that names
/// nothing).
pub(crate) fn resolve(
    flag: &str,
    names: &[String],
    ids: &[&str],
    strict: bool,
) -> Result<Vec<String>, ConfigError> {
    let pool = || {
        if ids.is_empty() {
            "nothing".to_owned()
        } else {
            ids.join(", ")
        }
    };
    let mut out: Vec<String> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    for name in names {
        let matched: Vec<&str> = if ids.contains(&name.as_str()) {
            vec![name.as_str()]
        } else if name.contains(['*', '?', '[']) {
            let pattern = glob::Pattern::new(name).map_err(|e| {
                ConfigError::flag(flag, format!("{name:?} is not a valid pattern: {e}"))
            })?;
            ids.iter()
                .copied()
                .filter(|id| pattern.matches(id))
                .collect()
        } else {
            let short: Vec<&str> = ids
                .iter()
                .copied()
                .filter(|id| id.rsplit('/').next() == Some(name.as_str()))
                .collect();
            if short.len() > 1 {
                return Err(ConfigError::flag(
                    flag,
                    format!(
                        "{name} is ambiguous: it names {}; give the full name",
                        short.join(", ")
                    ),
                ));
            }
            short
        };
        if matched.is_empty() {
            missing.push(name);
            if !strict {
                out.push(name.clone());
            }
        }
        for id in matched {
            if !out.iter().any(|o| o == id) {
                out.push(id.to_owned());
            }
        }
    }
    if strict && !missing.is_empty() {
        return Err(ConfigError::flag(
            flag,
            format!(
                "{} not in the pool; the pool holds: {}",
                missing.join(", "),
                pool()
            ),
        ));
    }
    Ok(out)
}

/// The balancer, its kind, and the concrete HAProxy or ELBv2 balancer
/// when it is one.
type BuiltBalancer = (
    Arc<dyn LoadBalancer>,
    &'static str,
    Option<HaproxyBalancer>,
    Option<crate::elbv2::Elbv2>,
);

async fn balancer(
    loaded: &Loaded,
    poll: Option<Duration>,
    call_timeout: Duration,
) -> Result<BuiltBalancer, ConfigError> {
    let Some(b) = &loaded.file.balancer else {
        return Err(loaded.error_at(None, "balancer", "no balancer is configured"));
    };
    let b = b.get_ref();
    if let Some(h) = &b.haproxy {
        let span = h.span();
        let h = h.get_ref();
        let mut builder = HaproxyBalancer::builder();
        if h.nodes.get_ref().is_empty() {
            return Err(loaded.error_at(
                Some(h.nodes.span()),
                "balancer.haproxy.nodes",
                "no node: give each HAProxy's admin socket, a Unix path (\"/run/haproxy/admin.sock\") or \"host:port\"",
            ));
        }
        let masters = match &h.master_sockets {
            Some(m) if m.get_ref().len() != h.nodes.get_ref().len() => {
                return Err(loaded.error_at(
                    Some(m.span()),
                    "balancer.haproxy.master_sockets",
                    format!(
                        "{} master socket(s) for {} node(s): give one per node, in the order of `nodes`",
                        m.get_ref().len(),
                        h.nodes.get_ref().len()
                    ),
                ))
            }
            Some(m) => m.get_ref().iter().map(Some).collect(),
            None => vec![None; h.nodes.get_ref().len()],
        };
        for (n, master) in h.nodes.get_ref().iter().zip(masters) {
            let mut nd = node(loaded, &h.nodes, n)?;
            if let (Some(m), Some(list)) = (master, &h.master_sockets) {
                nd = match endpoint(loaded, list, "balancer.haproxy.master_sockets", m)? {
                    Endpoint::Unix(p) => nd.master_socket(p),
                    Endpoint::Tcp(a) => nd.master_tcp(a),
                };
            }
            builder = builder.node(nd);
        }
        for b in h.backends.get_ref() {
            builder = builder.backend(b.as_str());
        }
        if let Some(t) = h.connect_timeout {
            builder = builder.connect_timeout(t);
        }
        if let Some(t) = h.read_timeout {
            builder = builder.read_timeout(t);
        }
        if let Some(p) = poll {
            builder = builder.poll_interval(p);
        }
        builder = builder
            .scope(match h.hosts {
                HaproxyHosts::AllBackends => HostScope::AllBackends,
                HaproxyHosts::PoolBackends => HostScope::PoolBackendsOnly,
            })
            .host_match(match h.host_match {
                HaproxyHostMatch::AddressAndPort => HostMatch::AddressAndPort,
                HaproxyHostMatch::Address => HostMatch::Address,
            });
        let lb = at(loaded, span, "balancer.haproxy", builder.build())?;
        return Ok((Arc::new(lb.clone()), "haproxy", Some(lb), None));
    }
    if let Some(n) = &b.nginx {
        return nginx(loaded, n, poll).map(|lb| (lb, "nginx", None, None));
    }
    if let Some(c) = &b.caddy {
        return crate::caddy::balancer(loaded, c, poll).map(|lb| (lb, "caddy", None, None));
    }
    if let Some(e) = &b.elbv2 {
        return elbv2(loaded, e, poll, call_timeout)
            .await
            .map(|(lb, e)| (lb, "elbv2", None, e));
    }
    Err(loaded.error_at(None, "balancer", "no balancer is configured"))
}

/// A node of `[balancer.haproxy] nodes`.
fn node(loaded: &Loaded, nodes: &Spanned<Vec<String>>, n: &str) -> Result<Node, ConfigError> {
    Ok(
        match endpoint(loaded, nodes, "balancer.haproxy.nodes", n)? {
            Endpoint::Unix(p) => Node::unix(p),
            Endpoint::Tcp(a) => Node::tcp(a).named(n),
        },
    )
}

/// A socket of the file: a Unix path or a TCP address.
enum Endpoint {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// `/path` → Unix socket; `host:port` → TCP (resolved now).
fn endpoint(
    loaded: &Loaded,
    list: &Spanned<Vec<String>>,
    key: &str,
    n: &str,
) -> Result<Endpoint, ConfigError> {
    if n.contains('/') {
        return Ok(Endpoint::Unix(PathBuf::from(n)));
    }
    n.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(Endpoint::Tcp)
        .ok_or_else(|| {
            loaded.error_at(
                Some(list.span()),
                key,
                format!("{n:?} is neither a Unix socket path (with a '/') nor a resolvable \"host:port\""),
            )
        })
}

#[cfg(feature = "nginx")]
fn read_secret_file(
    loaded: &Loaded,
    p: &Spanned<PathBuf>,
    key: &str,
) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(p.get_ref()).map_err(|e| {
        loaded.error_at(
            Some(p.span()),
            key,
            format!("cannot read {}: {e}", p.get_ref().display()),
        )
    })
}

#[cfg(feature = "nginx")]
fn nginx(
    loaded: &Loaded,
    n: &Spanned<crate::config::NginxSection>,
    poll: Option<Duration>,
) -> Result<Arc<dyn LoadBalancer>, ConfigError> {
    use crate::config::NginxHealth;
    use hygiene_nginx::{HealthChecks, NginxBalancer};
    let span = n.span();
    let n = n.get_ref();
    let mut b = NginxBalancer::builder().instances(n.api_urls.get_ref().iter().cloned());
    for u in &n.upstreams {
        b = b.upstream(u.as_str());
    }
    for u in &n.stream_upstreams {
        b = b.stream_upstream(u.as_str());
    }
    b = b.scope(match n.hosts {
        crate::config::NginxHosts::AllUpstreams => hygiene_nginx::Scope::AllUpstreams,
        crate::config::NginxHosts::ListedOnly => hygiene_nginx::Scope::ListedOnly,
    });
    let password = match (&n.password_env, &n.password_file) {
        (Some(_), Some(f)) => {
            return Err(loaded.error_at(
                Some(f.span()),
                "balancer.nginx.password_file",
                "give the password either in an environment variable (password_env) or in a file (password_file), not both",
            ))
        }
        (Some(var), None) => Some(std::env::var(var.get_ref()).map_err(|_| {
            loaded.error_at(
                Some(var.span()),
                "balancer.nginx.password_env",
                format!("the environment variable {} is not set: export the API password in it", var.get_ref()),
            )
        })?),
        (None, Some(f)) => {
            let bytes = read_secret_file(loaded, f, "balancer.nginx.password_file")?;
            Some(
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            )
        }
        (None, None) => None,
    };
    match (&n.user, password) {
        (Some(u), Some(p)) => b = b.basic_auth(u.as_str(), p),
        (Some(_), None) => {
            return Err(loaded.error_at(
                Some(span),
                "balancer.nginx.user",
                "a user without a password: set password_env (a variable's name) or password_file; never the password itself",
            ))
        }
        (None, Some(_)) => {
            return Err(loaded.error_at(
                Some(span),
                "balancer.nginx.user",
                "a password without a user: set user",
            ))
        }
        (None, None) => {}
    }
    if let Some(ca) = &n.ca_file {
        b = b.ca_cert_pem(read_secret_file(loaded, ca, "balancer.nginx.ca_file")?);
    }
    if let Some(id) = &n.client_identity_file {
        b = b.client_identity_pem(read_secret_file(
            loaded,
            id,
            "balancer.nginx.client_identity_file",
        )?);
    }
    if let Some(h) = n.health_checks {
        b = b.health_checks(match h {
            NginxHealth::Active => HealthChecks::Active,
            NginxHealth::Passive => HealthChecks::Passive,
        });
    }
    if let Some(v) = n.api_version {
        b = b.api_version(v);
    }
    if let Some(t) = n.timeout {
        b = b.timeout(t);
    }
    if let Some(t) = n.connect_timeout {
        b = b.connect_timeout(t);
    }
    if let Some(p) = poll {
        b = b.poll_interval(p);
    }
    let lb = at(loaded, span, "balancer.nginx", b.build())?;
    Ok(Arc::new(lb))
}

#[cfg(not(feature = "nginx"))]
fn nginx(
    loaded: &Loaded,
    n: &Spanned<crate::config::NginxSection>,
    _poll: Option<Duration>,
) -> Result<Arc<dyn LoadBalancer>, ConfigError> {
    Err(loaded.error_at(
        Some(n.span()),
        "balancer.nginx",
        "this hygiene was built without nginx support: build it with the `nginx` feature",
    ))
}

#[cfg(feature = "aws")]
pub(crate) async fn sdk_config(
    region: Option<&str>,
    profile: Option<&str>,
) -> hygiene_aws::SdkConfig {
    let mut l = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = region {
        l = l.region(aws_config::Region::new(r.to_owned()));
    }
    if let Some(p) = profile {
        l = l.profile_name(p);
    }
    l.load().await
}

#[cfg(feature = "aws")]
async fn elbv2(
    loaded: &Loaded,
    e: &Spanned<crate::config::Elbv2Section>,
    poll: Option<Duration>,
    call_timeout: Duration,
) -> Result<(Arc<dyn LoadBalancer>, Option<crate::elbv2::Elbv2>), ConfigError> {
    let span = e.span();
    let e = e.get_ref();
    let mut b = hygiene_aws::Elbv2Balancer::builder()
        .with_sdk_config(sdk_config(e.region.as_deref(), e.profile.as_deref()).await);
    if let Some(u) = &e.endpoint_url {
        b = b.with_endpoint_url(u);
    }
    for tg in &e.target_groups {
        b = b.with_target_group(tg);
    }
    if let Some(lb) = &e.load_balancer {
        b = b.with_load_balancer(lb);
    }
    // The alternatives to an ARN; the builder refuses more than one kind.
    if !e.instances.is_empty() {
        b = b.with_instances(e.instances.iter().cloned());
    }
    for (key, values) in &e.tags {
        b = b.with_instance_tag(key, values.values());
    }
    if let Some(asg) = &e.auto_scaling_group {
        b = b.with_auto_scaling_group(asg);
    }
    if let Some(p) = poll {
        b = b.with_poll_interval(p);
    }
    b = b.with_other_target_groups(match e.other_target_groups {
        crate::config::OtherGroups::Ignore => hygiene_aws::OtherTargetGroups::Ignore,
        crate::config::OtherGroups::Report => hygiene_aws::OtherTargetGroups::Report,
        crate::config::OtherGroups::Drain => hygiene_aws::OtherTargetGroups::Drain,
    });
    // A put-back that meets a registration still draining waits for its
    // end within the engine's limit of one balancer call.
    b = b.with_enable_wait(call_timeout * 2 / 3);
    let lb = at(loaded, span, "balancer.elbv2", b.build())?;
    Ok((Arc::new(lb.clone()), Some(lb)))
}

#[cfg(not(feature = "aws"))]
async fn elbv2(
    loaded: &Loaded,
    e: &Spanned<crate::config::Elbv2Section>,
    _poll: Option<Duration>,
    _call_timeout: Duration,
) -> Result<(Arc<dyn LoadBalancer>, Option<crate::elbv2::Elbv2>), ConfigError> {
    Err(loaded.error_at(
        Some(e.span()),
        "balancer.elbv2",
        "this hygiene was built without AWS support: build it with the `aws` feature",
    ))
}

type BuiltExecutor = (Arc<dyn Executor>, Option<Duration>, &'static str);

/// The variable holding the balancer's password (`[balancer.nginx]
/// password_env`): never given to a maintenance or to ssh.
pub(crate) fn password_env(loaded: &Loaded) -> Option<String> {
    let b = loaded.file.balancer.as_ref()?.get_ref();
    Some(
        b.nginx
            .as_ref()?
            .get_ref()
            .password_env
            .as_ref()?
            .get_ref()
            .clone(),
    )
}

type Withhold<X> = fn(X, &str) -> hygiene_core::Result<X>;
type SetEnv<X> = fn(X, &str, &str) -> hygiene_core::Result<X>;
type EnvKeys<'a> = (
    &'a Option<Spanned<Vec<String>>>,
    &'a Option<Spanned<std::collections::BTreeMap<String, String>>>,
);

/// An executor's child environment: the balancer's password withheld,
/// then the section's `pass_env` and `env`.
fn child_env<X>(
    loaded: &Loaded,
    span: Range<usize>,
    section: &str,
    mut x: X,
    (pass_env, env): EnvKeys<'_>,
    (withhold, pass, set): (Withhold<X>, Withhold<X>, SetEnv<X>),
) -> Result<X, ConfigError> {
    if let Some(secret) = password_env(loaded) {
        x = at(loaded, span.clone(), section, withhold(x, &secret))?;
    }
    if let Some(secret) = crate::lease_etcd::password_env(loaded) {
        x = at(loaded, span.clone(), section, withhold(x, &secret))?;
    }
    for name in pass_env.iter().flat_map(|p| p.get_ref()) {
        x = at(loaded, span.clone(), section, pass(x, name))?;
    }
    for (k, v) in env.iter().flat_map(|e| e.get_ref()) {
        x = at(loaded, span.clone(), section, set(x, k, v))?;
    }
    Ok(x)
}

async fn executor(
    loaded: &Loaded,
    state_dir: &std::path::Path,
    cancel: &hygiene_core::CancellationToken,
) -> Result<BuiltExecutor, ConfigError> {
    let Some(x) = &loaded.file.executor else {
        return Err(loaded.error_at(None, "executor", "no executor is configured"));
    };
    let x = x.get_ref();
    if let Some(l) = &x.local {
        let span = l.span();
        let l = l.get_ref();
        let timeout = l.timeout.unwrap_or(Duration::from_secs(600));
        if timeout.is_zero() {
            return Err(loaded.error_at(
                Some(span),
                "executor.local.timeout",
                "must be greater than zero",
            ));
        }
        let cmd = at(
            loaded,
            l.program.span(),
            "executor.local",
            LocalCommand::new(l.program.get_ref(), &l.args),
        )?
        .with_timeout(timeout)
        .with_state_dir(state_dir.join("exec"));
        let cmd = child_env(
            loaded,
            span,
            "executor.local",
            cmd,
            (&l.pass_env, &l.env),
            (
                LocalCommand::withhold_env,
                LocalCommand::with_pass_env,
                LocalCommand::with_env,
            ),
        )?;
        return Ok((Arc::new(cmd), Some(timeout), "local"));
    }
    if let Some(s) = &x.ssh {
        return ssh(loaded, s, state_dir);
    }
    if let Some(s) = &x.ssm {
        return ssm(loaded, s, cancel).await;
    }
    Err(loaded.error_at(None, "executor", "no executor is configured"))
}

fn ssh(
    loaded: &Loaded,
    s: &Spanned<crate::config::SshSection>,
    state_dir: &std::path::Path,
) -> Result<BuiltExecutor, ConfigError> {
    let span = s.span();
    let sec = s.get_ref();
    let mut x = at(
        loaded,
        sec.command.span(),
        "executor.ssh",
        hygiene_core::SshCommand::new(sec.command.get_ref()),
    )?
    .with_state_dir(state_dir.join("exec"));
    if let Some(u) = &sec.user {
        x = x.with_user(u);
    }
    if let Some(p) = sec.port {
        x = x.with_port(p);
    }
    if let Some(p) = &sec.identity_file {
        x = x.with_identity_file(p);
    }
    if let Some(p) = &sec.known_hosts_file {
        x = x.with_known_hosts_file(p);
    }
    let timeout = sec.timeout.unwrap_or(Duration::from_secs(600));
    x = x.with_timeout(timeout);
    if let Some(t) = sec.connect_timeout {
        x = x.with_connect_timeout(t);
    }
    if let Some(p) = &sec.ssh_program {
        x = x.with_ssh_program(p);
    }
    for (k, v) in &sec.options {
        x = at(loaded, span.clone(), "executor.ssh", x.with_option(k, v))?;
    }
    let x = child_env(
        loaded,
        span.clone(),
        "executor.ssh",
        x,
        (&sec.pass_env, &sec.env),
        (
            SshCommand::withhold_env,
            SshCommand::with_pass_env,
            SshCommand::with_env,
        ),
    )?;
    at(loaded, span, "executor.ssh", x.validate())?;
    Ok((Arc::new(x), Some(timeout), "ssh"))
}

#[cfg(feature = "aws")]
async fn ssm(
    loaded: &Loaded,
    s: &Spanned<crate::config::SsmSection>,
    cancel: &hygiene_core::CancellationToken,
) -> Result<BuiltExecutor, ConfigError> {
    use crate::config::{SsmPreflight, SsmStatusApi};
    use hygiene_aws::{PreflightCheck, SsmExecutor, StatusApi};
    let span = s.span();
    let s = s.get_ref();
    let (region, profile, endpoint) = match loaded
        .file
        .balancer
        .as_ref()
        .and_then(|b| b.get_ref().elbv2.as_ref())
    {
        Some(e) => (
            e.get_ref().region.clone(),
            e.get_ref().profile.clone(),
            e.get_ref().endpoint_url.clone(),
        ),
        None => (None, None, None),
    };
    let mut b = SsmExecutor::builder(&s.document)
        .with_sdk_config(sdk_config(region.as_deref(), profile.as_deref()).await);
    if let Some(u) = &endpoint {
        b = b.with_endpoint_url(u);
    }
    if let Some(v) = &s.document_version {
        b = b.with_document_version(v);
    }
    for (k, v) in &s.parameters {
        b = b.with_parameter(k, v.values());
    }
    b = b.with_comment(
        s.comment
            .as_deref()
            .unwrap_or("hygiene rolling maintenance"),
    );
    if let Some(t) = s.delivery_timeout {
        b = b.with_delivery_timeout(t);
    }
    if let Some(t) = s.execution_timeout {
        b = b.with_execution_timeout(t);
    }
    if let Some(p) = &s.traceparent_parameter {
        b = b.with_traceparent_parameter(p);
    }
    if let Some(t) = s.wait_timeout {
        b = b.with_wait_timeout(t);
    }
    if let Some(t) = s.poll_interval {
        b = b.with_poll_interval(t);
    }
    if let Some(bucket) = &s.output_s3_bucket {
        b = b.with_output_s3(bucket, s.output_s3_key_prefix.clone());
    }
    if let Some(g) = &s.cloudwatch_log_group {
        b = b.with_cloudwatch_output(g);
    }
    b = b.with_preflight(
        match s.preflight.unwrap_or(SsmPreflight::InstanceInformation) {
            SsmPreflight::InstanceInformation => PreflightCheck::DescribeInstanceInformation,
            SsmPreflight::DocumentOnly => PreflightCheck::DocumentOnly,
            SsmPreflight::Skip => PreflightCheck::Skip,
        },
    );
    b = b.with_status_api(match s.status_api.unwrap_or(SsmStatusApi::List) {
        SsmStatusApi::List => StatusApi::ListCommandInvocations,
        SsmStatusApi::Get => StatusApi::GetCommandInvocation,
    });
    if s.cancel_on_interrupt.unwrap_or(true) {
        b = b.with_cancellation(cancel.clone());
    }
    let x = at(loaded, span, "executor.ssm", b.build())?;
    let timeout = s.wait_timeout.or(s.execution_timeout);
    Ok((Arc::new(x), timeout, "ssm"))
}

#[cfg(not(feature = "aws"))]
async fn ssm(
    loaded: &Loaded,
    s: &Spanned<crate::config::SsmSection>,
    _cancel: &hygiene_core::CancellationToken,
) -> Result<BuiltExecutor, ConfigError> {
    Err(loaded.error_at(
        Some(s.span()),
        "executor.ssm",
        "this hygiene was built without AWS support: build it with the `aws` feature",
    ))
}

fn probe(loaded: &Loaded) -> Result<Option<AnyProbe>, ConfigError> {
    let Some(p) = &loaded.file.probe else {
        return Ok(None);
    };
    let span = p.span();
    let p = p.get_ref();
    let probe = match p.kind {
        ProbeKind::Http => {
            let mut h = at(
                loaded,
                span.clone(),
                "probe",
                HttpProbe::new(p.path.clone().unwrap_or_else(|| "/".into())),
            )?;
            if let Some(port) = p.port {
                h = h.with_port(port);
            }
            if let Some(t) = p.timeout {
                h = h.with_timeout(t);
            }
            AnyProbe::Http(h)
        }
        ProbeKind::Tcp => {
            if p.path.is_some() {
                return Err(loaded.error_at(
                    Some(span),
                    "probe.path",
                    "a tcp probe has no path: remove it, or use kind = \"http\"",
                ));
            }
            let mut t = TcpProbe::new();
            if let Some(port) = p.port {
                t = t.with_port(port);
            }
            if let Some(d) = p.timeout {
                t = t.with_timeout(d);
            }
            AnyProbe::Tcp(t)
        }
    };
    Ok(Some(probe))
}

#[cfg(test)]
mod tests {
    use super::resolve;

    const POOL: &[&str] = &["web/s1", "web/s2", "web/s10", "api/a1", "api/s2"];

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn full_names_globs_and_short_names_resolve_in_order_once() {
        let got =
            resolve("--only", &names(&["s10", "web/s*", "a1"]), POOL, true).expect("resolves");
        assert_eq!(got, names(&["web/s10", "web/s1", "web/s2", "api/a1"]));
        let got = resolve("--only", &names(&["*/s?"]), POOL, true).expect("resolves");
        assert_eq!(got, names(&["web/s1", "web/s2", "api/s2"]));
    }

    #[test]
    fn an_ambiguous_short_name_is_refused_with_its_matches() {
        let e = resolve("--only", &names(&["s2"]), POOL, false)
            .expect_err("ambiguous")
            .to_string();
        assert!(e.contains("--only") && e.contains("web/s2, api/s2"), "{e}");
    }

    #[test]
    fn a_name_matching_nothing_lists_the_pool_when_strict_and_is_kept_otherwise() {
        let e = resolve("HYGIENE_EXCLUDE", &names(&["db/*", "web/s1"]), POOL, true)
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("HYGIENE_EXCLUDE") && e.contains("db/*") && e.contains("web/s10"),
            "{e}"
        );
        let got = resolve("--only", &names(&["nope"]), POOL, false).expect("kept");
        assert_eq!(got, names(&["nope"]));
        let e = resolve("--only", &names(&["web/[s"]), POOL, false)
            .expect_err("bad pattern")
            .to_string();
        assert!(e.contains("not a valid pattern"), "{e}");
    }
}
