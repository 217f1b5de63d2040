//! [`CaddyBalancer`]: the [`LoadBalancer`] over the `reverse_proxy`
//! handlers of one Caddy, through its admin API.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use hygiene_core::{
    Capabilities, Error, Health, ListedTarget, LoadBalancer, Result, Target, TargetId, TargetState,
    TargetStatus,
};
use serde_json::Value;
use tokio::time::Instant;

use crate::client::{Admin, Written};
use crate::config::{HealthChecks, HostMatch};
use crate::error::CaddyError;
use crate::routes::{
    check_target_name, dial_of, fresh_delay, handlers, host_key, host_of, park, parked_dials,
    remove_host, restore, unpark, Handler, Placement, PARKED_ID,
};

/// How many times a write meets another writer's change before the call
/// gives up (and the engine retries it later).
const WRITE_ATTEMPTS: u32 = 3;

/// Meta key of a listed target: the handlers holding it.
pub const META_HANDLERS: &str = "caddy.handlers";
/// Meta key of a listed target: where it sits, as JSON (a list of
/// [`Placement`](crate::Placement)s). The journal keeps it with the plan,
/// and [`LoadBalancer::adopt`] reads it back after a crash.
pub const META_PLACEMENTS: &str = "caddy.placements";

/// The upstreams of Caddy `reverse_proxy` handlers as one pool.
///
/// # Targets are hosts
/// A target id is an upstream's dial address, `10.0.0.5:8080`, as written
/// in the pool's handlers (chosen with [`CaddyBuilder::handler`] by `@id`
/// or [`CaddyBuilder::server`] by server name). Its host is that address
/// ([`HostMatch::AddressAndPort`]) or that IP or name on any port
/// ([`HostMatch::Address`]); every upstream of **every** `reverse_proxy`
/// handler of the configuration (other routes, subroutes, other servers)
/// on that host is taken out with it and put back with it.
///
/// # Operations
/// Every change is one conditional write of the whole configuration: a
/// `GET /config/` (with its `ETag`), the edit, and a `PATCH /config/` with
/// `If-Match`, so Caddy loads it atomically and only if nobody changed the
/// configuration in between. A `412` (another writer) is never overwritten:
/// the call reads again and redoes its edit on the new configuration, up to
/// three times, then fails retryably naming the conflict.
///
/// | | what changes |
/// |---|---|
/// | drain, disable | the host's upstreams leave every handler; they are *parked* (see below) |
/// | enable | each goes back into its handler at its index, with every option it had; unparked |
///
/// Drain and disable are the same call: an upstream out of every handler
/// gets no new request of any kind (no sticky session reaches it), and its
/// requests in flight finish. A drain that would leave a handler with no
/// upstream is refused, naming the handler, and nothing changes.
///
/// # Requests in flight: the parked handler
/// Caddy 2.6.2 forgets an upstream's request count the moment no loaded
/// handler holds its address: `GET /reverse_proxy/upstreams` stops listing
/// it while its requests still run (measured here). So a drain also puts
/// the address into a handler with `@id` `hygiene-parked`, in a route
/// whose matcher (`expression: false`) takes no request, in the same
/// atomic write. Caddy's counter lives on, and `num_requests` counts the
/// host's requests in flight until they end. Enable removes it from there
/// (and the route once empty).
///
/// # Health
/// Caddy 2.6 does not show active health in `/reverse_proxy/upstreams`;
/// only the admin endpoint's `/metrics` gauge
/// `caddy_reverse_proxy_upstreams_healthy{upstream}` does, updated when a
/// handler starts (before any check) and every 10 s. Every configuration
/// change restarts every handler, and Caddy then takes every upstream as
/// healthy until its first check. So, with [`HealthChecks::Active`]:
/// after a change (ours, or another writer's seen as a new `ETag`), a
/// target reads `Unknown` until the gauge can hold a check made after it
/// (10.5 s with check timeouts under 10 s), then `Healthy` or `Unhealthy`
/// from the gauge. A host in a handler without `health_checks.active`
/// reads `Unknown`, naming that handler. Without health checks
/// ([`HealthChecks::None`]) every target reads `Unknown` and the
/// capabilities say there are no checks: the engine takes "in service" as
/// enough, so give the rollout a probe. A target out of every handler
/// reads `Unknown` (Caddy checks only what is configured).
///
/// # Crash safety
/// [`list`](LoadBalancer::list) gives each target's placements (handler
/// `@id` and path, index, the upstream object) in its
/// [`META_PLACEMENTS`] meta; the engine journals them with the plan, and
/// [`adopt`](LoadBalancer::adopt) reads them back, so a new process puts a
/// target a dead run took out back exactly where it was.
///
/// [`CaddyBuilder::handler`]: crate::CaddyBuilder::handler
/// [`CaddyBuilder::server`]: crate::CaddyBuilder::server
#[derive(Clone)]
pub struct CaddyBalancer {
    inner: Arc<Inner>,
}

struct Inner {
    admin: Admin,
    handlers: Vec<String>,
    servers: Vec<String>,
    poll: Duration,
    health: HealthChecks,
    host_match: HostMatch,
    state: Mutex<State>,
    /// One write of ours at a time: two of our own calls never race each
    /// other into `412`s.
    write: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Host key → where its upstreams were when last taken out (or listed).
    placements: HashMap<String, Vec<Placement>>,
    /// Host key → the target id it is known by (listed or adopted).
    members: BTreeMap<String, TargetId>,
    /// The last `ETag` read (`None` right after a write of ours).
    etag: Option<String>,
    /// When the configuration last changed, as far as we know.
    changed_at: Option<Instant>,
}

impl fmt::Debug for CaddyBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaddyBalancer")
            .field("admin", &self.inner.admin)
            .field("handlers", &self.inner.handlers)
            .field("servers", &self.inner.servers)
            .field("health", &self.inner.health)
            .field("host_match", &self.inner.host_match)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Out,
    In,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CaddyBalancer {
    /// A builder: `CaddyBalancer::builder().admin(url).handler("web").build()`.
    pub fn builder() -> crate::CaddyBuilder {
        crate::CaddyBuilder::new()
    }

    pub(crate) fn from_parts(
        admin: Admin,
        handlers: Vec<String>,
        servers: Vec<String>,
        poll: Duration,
        health: HealthChecks,
        host_match: HostMatch,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin,
                handlers,
                servers,
                poll,
                health,
                host_match,
                state: Mutex::new(State::default()),
                write: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn admin_name(&self) -> String {
        self.inner.admin.base().to_owned()
    }

    fn key(&self, dial: &str) -> String {
        host_key(dial, self.inner.host_match)
    }

    /// Notes the `ETag` of a read: a new one is a change by someone else.
    fn observe(&self, etag: &str) {
        let mut st = locked(&self.inner.state);
        if st.etag.as_deref() != Some(etag) {
            if st.etag.is_some() {
                st.changed_at = Some(Instant::now());
            }
            st.etag = Some(etag.to_owned());
        }
    }

    /// The pool's handlers; a configured handler or server that is not
    /// there is `NotFound`, naming it.
    fn pool<'a>(&self, all: &'a [Handler]) -> Result<Vec<&'a Handler>> {
        let location = Some(format!("Caddy {}", self.admin_name()));
        for id in &self.inner.handlers {
            if !all
                .iter()
                .any(|h| h.id.as_deref() == Some(id.as_str()) && !h.is_parked())
            {
                return Err(Error::NotFound {
                    kind: "reverse_proxy handler (@id)",
                    name: id.clone(),
                    location,
                });
            }
        }
        for s in &self.inner.servers {
            if !all.iter().any(|h| h.server.as_deref() == Some(s.as_str())) {
                return Err(Error::NotFound {
                    kind: "HTTP server with a reverse_proxy handler",
                    name: s.clone(),
                    location,
                });
            }
        }
        Ok(all
            .iter()
            .filter(|h| {
                !h.is_parked()
                    && (h
                        .id
                        .as_ref()
                        .is_some_and(|i| self.inner.handlers.contains(i))
                        || h.server
                            .as_ref()
                            .is_some_and(|s| self.inner.servers.contains(s)))
            })
            .collect())
    }

    /// Checks every name before anything is sent.
    fn check_names(ids: &[TargetId]) -> Result<()> {
        for id in ids {
            check_target_name(id.as_str()).map_err(|why| Error::invalid_name(id.as_str(), why))?;
        }
        Ok(())
    }

    /// The host key of each id; an id neither in the pool's handlers nor
    /// known from an earlier listing, drain or adoption is `NotFound`.
    fn resolve(&self, ids: &[TargetId], pool: &[&Handler]) -> Result<Vec<String>> {
        let mut st = locked(&self.inner.state);
        ids.iter()
            .map(|id| {
                let key = self.key(id.as_str());
                let in_pool = pool.iter().any(|h| h.dials().any(|d| self.key(d) == key));
                if in_pool {
                    st.members.entry(key.clone()).or_insert_with(|| id.clone());
                    Ok(key)
                } else if st.members.contains_key(&key) {
                    Ok(key)
                } else {
                    Err(Error::target_not_found(
                        id.as_str(),
                        Some(format!(
                            "the pool's handlers on Caddy {}",
                            self.admin_name()
                        )),
                    ))
                }
            })
            .collect()
    }

    /// Every saved placement but those of host `key`.
    fn saved_except(&self, key: &str) -> Vec<Placement> {
        locked(&self.inner.state)
            .placements
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .flat_map(|(_, p)| p.iter().cloned())
            .collect()
    }

    /// The server the parked route goes into: the first pool handler's.
    fn park_server(&self, pool: &[&Handler], all: &[Handler]) -> Option<String> {
        pool.iter()
            .chain(all.iter().collect::<Vec<_>>().iter())
            .find_map(|h| h.server.clone())
    }

    async fn change(&self, op: &'static str, ids: &[TargetId], change: Change) -> Result<()> {
        Self::check_names(ids)?;
        if ids.is_empty() {
            return Ok(());
        }
        let _one_writer = self.inner.write.lock().await;
        let admin = &self.inner.admin;
        let refused = |message: String| -> Error {
            CaddyError::Refused {
                admin: self.admin_name(),
                op,
                message,
            }
            .into()
        };
        for _ in 0..WRITE_ATTEMPTS {
            let (cfg, etag) = admin.config(op).await?;
            self.observe(&etag);
            let all = handlers(&cfg);
            let pool = self.pool(&all)?;
            let keys = self.resolve(ids, &pool)?;
            let mut new = cfg.clone();
            let mut taken: Vec<(String, Vec<Placement>)> = Vec::new();
            match change {
                Change::Out => {
                    let mut dials = Vec::new();
                    for key in &keys {
                        let others: Vec<Placement> = self
                            .saved_except(key)
                            .into_iter()
                            .chain(taken.iter().flat_map(|(_, p)| p.iter().cloned()))
                            .collect();
                        let removed = remove_host(&mut new, key, self.inner.host_match, &others)
                            .map_err(refused)?;
                        for p in &removed {
                            if let Some(d) = dial_of(&p.upstream) {
                                if !dials.iter().any(|x| x == d) {
                                    dials.push(d.to_owned());
                                }
                            }
                        }
                        taken.push((key.clone(), removed));
                    }
                    if !dials.is_empty() {
                        let server = self.park_server(&pool, &all).ok_or_else(|| {
                            refused(
                                "the configuration has no HTTP server to park upstreams in".into(),
                            )
                        })?;
                        park(&mut new, &server, &dials).map_err(refused)?;
                    }
                }
                Change::In => {
                    let parked = parked_dials(&all);
                    for (id, key) in ids.iter().zip(&keys) {
                        let saved = locked(&self.inner.state)
                            .placements
                            .get(key)
                            .cloned()
                            .unwrap_or_default();
                        let serving = all
                            .iter()
                            .any(|h| !h.is_parked() && h.dials().any(|d| self.key(d) == *key));
                        if saved.is_empty() && !serving {
                            return Err(refused(format!(
                                "{id} is in no handler and this process does not know where it was (it was not taken out by hygiene, or its run's journal was not adopted); put it back by hand"
                            )));
                        }
                        restore(&mut new, &saved, &self.saved_except(key)).map_err(refused)?;
                        let mine: Vec<String> = parked
                            .iter()
                            .filter(|d| self.key(d) == *key)
                            .cloned()
                            .collect();
                        unpark(&mut new, &mine);
                    }
                }
            }
            if new == cfg {
                tracing::debug!(op, "nothing to change");
                return Ok(());
            }
            match admin.write_config(op, &new, &etag).await? {
                Written::Loaded => {
                    let mut st = locked(&self.inner.state);
                    for (id, key) in ids.iter().zip(&keys) {
                        st.members.entry(key.clone()).or_insert_with(|| id.clone());
                    }
                    for (key, removed) in taken {
                        if removed.is_empty() {
                            continue;
                        }
                        let old = st.placements.remove(&key).unwrap_or_default();
                        let kept: Vec<Placement> = old
                            .into_iter()
                            .filter(|o| !removed.iter().any(|n| n.handler == o.handler))
                            .collect();
                        let mut merged = removed;
                        merged.extend(kept);
                        st.placements.insert(key, merged);
                    }
                    st.changed_at = Some(Instant::now());
                    st.etag = None;
                    tracing::debug!(op, targets = ?ids, "configuration loaded");
                    return Ok(());
                }
                Written::Stale => {
                    tracing::warn!(
                        op,
                        "the configuration changed between our read and our write; reading it again"
                    );
                    locked(&self.inner.state).changed_at = Some(Instant::now());
                }
            }
        }
        Err(CaddyError::Conflict {
            admin: self.admin_name(),
            op,
            attempts: WRITE_ATTEMPTS,
        }
        .into())
    }

    /// Reads what a status needs: the configuration, the request counts,
    /// and (when some target may need it) the health gauge.
    async fn observe_all(&self, op: &'static str) -> Result<Snapshot> {
        let admin = &self.inner.admin;
        let (cfg, etag) = admin.config(op).await?;
        self.observe(&etag);
        let requests = admin.requests(op).await?;
        let gauges = if self.inner.health == HealthChecks::Active {
            admin.healthy_gauges(op).await?
        } else {
            HashMap::new()
        };
        let changed_at = locked(&self.inner.state).changed_at;
        Ok(Snapshot {
            all: handlers(&cfg),
            requests,
            gauges,
            changed_at,
        })
    }

    fn status_of(&self, key: &str, snap: &Snapshot) -> TargetStatus {
        let serving: Vec<&Handler> = snap
            .all
            .iter()
            .filter(|h| !h.is_parked() && h.dials().any(|d| self.key(d) == key))
            .collect();
        let parked: Vec<String> = parked_dials(&snap.all)
            .into_iter()
            .filter(|d| self.key(d) == key)
            .collect();
        let mut dials: Vec<String> = serving
            .iter()
            .flat_map(|h| h.dials().filter(|d| self.key(d) == key).map(str::to_owned))
            .chain(parked.iter().cloned())
            .collect();
        dials.sort();
        dials.dedup();
        let in_flight: u64 = dials
            .iter()
            .map(|d| snap.requests.get(d).copied().unwrap_or(0))
            .sum();
        if serving.is_empty() {
            if parked.is_empty() {
                // Out of every handler, but not by us: Caddy no longer
                // counts its requests, so the count is unknown.
                return TargetStatus::new(TargetState::Draining, Health::Unknown, None).with_reason(
                    "in no handler and not parked by hygiene: Caddy no longer counts its requests in flight",
                );
            }
            let state = if in_flight > 0 {
                TargetState::Draining
            } else {
                TargetState::OutOfService
            };
            return TargetStatus::new(state, Health::Unknown, Some(in_flight));
        }
        let (health, reason) = self.health_of(&serving, &dials, snap);
        let st = TargetStatus::new(TargetState::InService, health, Some(in_flight));
        match reason {
            Some(r) => st.with_reason(r),
            None => st,
        }
    }

    fn health_of(
        &self,
        serving: &[&Handler],
        dials: &[String],
        snap: &Snapshot,
    ) -> (Health, Option<String>) {
        if self.inner.health == HealthChecks::None {
            return (Health::Unknown, None);
        }
        let mut longest = Duration::ZERO;
        for h in serving {
            match h.active_timeout {
                Some(t) => longest = longest.max(t),
                None => {
                    return (
                        Health::Unknown,
                        Some(format!(
                            "the reverse_proxy handler {} has no active health check (health_checks.active)",
                            h.reference()
                        )),
                    )
                }
            }
        }
        if let Some(at) = snap.changed_at {
            let wait = fresh_delay(longest);
            if at.elapsed() < wait {
                return (
                    Health::Unknown,
                    Some(format!(
                        "waiting for Caddy's health report after the configuration change {:.1?} ago (it reports every 10 s; fresh after {wait:?})",
                        at.elapsed()
                    )),
                );
            }
        }
        let mut health = Health::Healthy;
        let mut reason = None;
        for d in dials {
            match snap.gauges.get(d) {
                Some(true) => {}
                Some(false) => {
                    health = Health::Unhealthy;
                    reason = Some(format!("Caddy's health checks mark {d} unhealthy"));
                }
                None if health == Health::Healthy => {
                    health = Health::Unknown;
                    reason = Some(format!("Caddy reports no health for {d} yet"));
                }
                None => {}
            }
        }
        (health, reason)
    }

    /// Where the host's upstreams sit now (in service), for the meta.
    fn placements_now(&self, key: &str, all: &[Handler]) -> Vec<Placement> {
        all.iter()
            .filter(|h| !h.is_parked())
            .flat_map(|h| {
                h.upstreams
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| dial_of(u).is_some_and(|d| self.key(d) == key))
                    .map(|(i, u)| Placement {
                        handler: h.reference(),
                        index: i,
                        upstream: u.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

struct Snapshot {
    all: Vec<Handler>,
    requests: HashMap<String, u64>,
    gauges: HashMap<String, bool>,
    changed_at: Option<Instant>,
}

#[async_trait]
impl LoadBalancer for CaddyBalancer {
    fn name(&self) -> String {
        format!("Caddy {}", self.admin_name())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_counts_connections(true)
            .with_graceful_drain(true)
            .with_hard_disable(true)
            .with_health_checks(self.inner.health == HealthChecks::Active)
            .with_cheap_status(true)
    }

    fn default_poll_interval(&self) -> Duration {
        self.inner.poll
    }

    fn enable_hint(&self, id: &TargetId) -> String {
        let key = self.key(id.as_str());
        let saved = locked(&self.inner.state)
            .placements
            .get(&key)
            .cloned()
            .unwrap_or_default();
        if saved.is_empty() {
            return format!(
                "put {id} back into the upstreams of its reverse_proxy handler(s) on Caddy {}",
                self.admin_name()
            );
        }
        let puts: Vec<String> = saved
            .iter()
            .map(|p| {
                format!(
                    "curl -X PUT {}/config{}/upstreams/{} -H 'Content-Type: application/json' -d '{}'",
                    self.admin_name(),
                    p.handler.path,
                    p.index,
                    p.upstream
                )
            })
            .collect();
        format!(
            "{} (then remove {id} from the handler @id {PARKED_ID})",
            puts.join("; ")
        )
    }

    async fn adopt(&self, targets: &[Target]) -> Result<()> {
        let mut st = locked(&self.inner.state);
        for t in targets {
            let key = self.key(t.id.as_str());
            st.members
                .entry(key.clone())
                .or_insert_with(|| t.id.clone());
            let Some(json) = t.meta.get(META_PLACEMENTS) else {
                continue;
            };
            let placements: Vec<Placement> = serde_json::from_str(json).map_err(|e| {
                Error::protocol(
                    format!("the journal's plan entry for {}", t.id),
                    format!("{META_PLACEMENTS} is not a list of placements: {e}"),
                )
            })?;
            if !placements.is_empty() {
                st.placements.entry(key).or_insert(placements);
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ListedTarget>> {
        let snap = self.observe_all("list").await?;
        let pool = self.pool(&snap.all)?;
        let mut seen: Vec<(String, String)> = Vec::new();
        for h in &pool {
            for d in h.dials() {
                let key = self.key(d);
                if check_target_name(d).is_err() {
                    tracing::warn!(dial = d, handler = %h.reference(), "upstream skipped: not a single host:port");
                    continue;
                }
                if !seen.iter().any(|(k, _)| *k == key) {
                    seen.push((key, d.to_owned()));
                }
            }
        }
        let drained: Vec<(String, TargetId)> = {
            let st = locked(&self.inner.state);
            st.members
                .iter()
                .filter(|(k, _)| !seen.iter().any(|(s, _)| s == *k))
                .map(|(k, id)| (k.clone(), id.clone()))
                .collect()
        };
        let mut out = Vec::new();
        let mut entries: Vec<(String, TargetId)> = Vec::new();
        for (key, dial) in seen {
            let id = TargetId::new(dial.clone())?;
            entries.push((key, id));
        }
        entries.extend(drained);
        for (key, id) in entries {
            let status = self.status_of(&key, &snap);
            let mut placements = self.placements_now(&key, &snap.all);
            let mut st = locked(&self.inner.state);
            if placements.is_empty() {
                placements = st.placements.get(&key).cloned().unwrap_or_default();
            }
            st.members.insert(key.clone(), id.clone());
            drop(st);
            let mut refs: Vec<String> = placements.iter().map(|p| p.handler.to_string()).collect();
            refs.dedup();
            let mut target = Target::new(id.clone())
                .with_address(host_of(id.as_str()))
                .with_meta(META_HANDLERS, refs.join(", "))
                .with_meta(
                    META_PLACEMENTS,
                    serde_json::to_string(&placements).unwrap_or_else(|_| "[]".into()),
                );
            if let Some(port) = id
                .as_str()
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
            {
                target = target.with_port(port);
            }
            out.push(ListedTarget { target, status });
        }
        Ok(out)
    }

    async fn status(&self, ids: &[TargetId]) -> Result<Vec<TargetStatus>> {
        Self::check_names(ids)?;
        let snap = self.observe_all("status").await?;
        let pool = self.pool(&snap.all)?;
        let keys = self.resolve(ids, &pool)?;
        Ok(keys.iter().map(|k| self.status_of(k, &snap)).collect())
    }

    async fn drain(&self, ids: &[TargetId]) -> Result<()> {
        self.change("drain", ids, Change::Out).await
    }

    async fn disable(&self, ids: &[TargetId]) -> Result<()> {
        // Out of every handler is already "hard": no request of any kind
        // can reach the upstream; its requests in flight finish.
        self.change("disable", ids, Change::Out).await
    }

    async fn enable(&self, ids: &[TargetId]) -> Result<()> {
        self.change("enable", ids, Change::In).await
    }
}

/// The upstream objects of a configuration's pool handlers (for tests and
/// tools that compare configurations).
pub fn upstreams_of(cfg: &Value, handler_id: &str) -> Option<Vec<Value>> {
    handlers(cfg)
        .into_iter()
        .find(|h| h.id.as_deref() == Some(handler_id))
        .map(|h| h.upstreams)
}
