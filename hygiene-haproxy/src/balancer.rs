//! [`HaproxyBalancer`]: the [`LoadBalancer`] over one or more HAProxy nodes.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hygiene_core::{
    with_retries, with_retries_when, Capabilities, Health, ListedTarget, LoadBalancer, RetryPolicy,
    Target, TargetId, TargetState, TargetStatus,
};
use tracing::{debug, warn};

use crate::client::{Client, SendFailure};
use crate::config::{check_name, HaproxyBalancerBuilder, HostMatch, HostScope};
use crate::error::HaproxyError;
use crate::found::{self, Admin, Records};
use crate::level::SocketLevel;
use crate::parse::{self, ParseError};
use crate::reply::{chunks, reply_error, split};
use crate::snapshot::{Entry, Part, Snapshot};
use crate::status::aggregate;

/// A pool of servers behind one or more HAProxy nodes, driven through the
/// runtime API. Cheap to clone (the clones share one configuration).
///
/// Build it with [`HaproxyBalancer::builder`]; see the crate docs for the
/// target id format, the drain / enable commands and how a stale `UP` after
/// maintenance is ruled out.
#[derive(Clone)]
pub struct HaproxyBalancer {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) clients: Vec<Client>,
    /// Each node's master CLI, when configured (same order as `clients`).
    pub(crate) masters: Vec<Option<Client>>,
    pub(crate) backends: Vec<String>,
    pub(crate) poll_interval: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) scope: HostScope,
    pub(crate) host_match: HostMatch,
    /// Per target id, every `backend/server` the last listing found for
    /// it (for the way back in a report).
    pub(crate) seen: Mutex<HashMap<String, Vec<String>>>,
    /// What each entry was found as, to put back exactly that.
    pub(crate) records: Mutex<Records>,
    /// What [`LoadBalancer::capabilities`] says about health checks: false
    /// once a snapshot saw a pool server that neither runs a check nor
    /// tracks a checked server (true until the first snapshot).
    pub(crate) health_checks: AtomicBool,
}

impl fmt::Debug for HaproxyBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaproxyBalancer")
            .field("nodes", &self.node_names())
            .field("backends", &self.inner.backends)
            .field("poll_interval", &self.inner.poll_interval)
            .finish_non_exhaustive()
    }
}

/// Whether a snapshot adds the old workers' requests (see
/// [`HaproxyBalancer::snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OldWorkers {
    Required,
    BestEffort,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    backend: String,
    server: String,
}

impl Key {
    fn id(&self) -> String {
        format!("{}/{}", self.backend, self.server)
    }
}

impl HaproxyBalancer {
    /// A builder: `.node(Node::unix(path))`, `.backend("web")`, then `.build()`.
    pub fn builder() -> HaproxyBalancerBuilder {
        HaproxyBalancerBuilder::default()
    }

    pub(crate) fn from_parts(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// The backends of the pool, in the order given to the builder.
    pub fn backends(&self) -> &[String] {
        &self.inner.backends
    }

    /// The names of the nodes, in the order given to the builder.
    pub fn node_names(&self) -> Vec<String> {
        self.inner
            .clients
            .iter()
            .map(|c| c.name().to_owned())
            .collect()
    }

    /// Each node's runtime API level, as `show cli level` says it, in node
    /// order: only [`SocketLevel::Admin`] may change server states (a socket
    /// at `level operator` or `level user` lists fine and refuses every
    /// drain). Changes nothing; for checks before a run (`hygiene
    /// validate`).
    pub async fn socket_levels(&self) -> Vec<(String, Result<SocketLevel, hygiene_core::Error>)> {
        let mut out = Vec::with_capacity(self.inner.clients.len());
        for client in &self.inner.clients {
            let r = self
                .retrying(client, "show cli level", || async {
                    let raw = client.send("show cli level").await?;
                    Ok(SocketLevel::parse(&raw))
                })
                .await;
            out.push((client.name().to_owned(), r));
        }
        out
    }

    /// Each node's HAProxy version, as `show info` says it (`Version:`), in
    /// node order; `Ok(None)` when the reply has no version line. Changes
    /// nothing; for checks before a run (`hygiene validate`): before 2.5, a
    /// worker that a reload is stopping lists no server in `show stat`
    /// (haproxy issue 1307), so its requests cannot be counted and a status
    /// read during a reload fails until it exits (see the crate docs).
    pub async fn versions(&self) -> Vec<(String, Result<Option<String>, hygiene_core::Error>)> {
        let mut out = Vec::with_capacity(self.inner.clients.len());
        for client in &self.inner.clients {
            let r = self
                .retrying(client, "show info", || async {
                    Ok(parse::info_version(&client.send("show info").await?))
                })
                .await;
            out.push((client.name().to_owned(), r));
        }
        out
    }

    /// Whether the requests of an old worker of this HAProxy version can be
    /// counted: from 2.5 (`Some(true)`); before, a stopping worker lists no
    /// server (`Some(false)`); `None` when the version cannot be read.
    pub fn counts_old_workers(version: &str) -> Option<bool> {
        parse::major_minor(version).map(|v| v >= (2, 5))
    }

    /// Refuses, before anything is changed, a node whose socket is not
    /// `level admin` (an HAProxy that does not know `show cli level` passes:
    /// its first drain says it). For a run's start.
    ///
    /// # Errors
    /// [`hygiene_core::Error::PermissionDenied`] naming the node and its
    /// level; a node that cannot be reached, as [`list`](LoadBalancer::list).
    pub async fn check_admin(&self) -> hygiene_core::Result<()> {
        for (node, level) in self.socket_levels().await {
            match level? {
                SocketLevel::Admin | SocketLevel::Unknown(_) => {}
                other => {
                    return Err(HaproxyError::PermissionDenied {
                        node,
                        command: format!("set server (this socket is at level {other})"),
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    fn pool(&self) -> String {
        format!("backends {}", self.inner.backends.join(", "))
    }

    /// Splits and checks an id before anything is sent: `backend/server`,
    /// both names in HAProxy's charset, the backend one of the pool's.
    fn key(&self, id: &TargetId) -> Result<Key, HaproxyError> {
        let Some((backend, server)) = id.as_str().split_once('/') else {
            return Err(HaproxyError::InvalidName {
                name: id.to_string(),
                reason: "an HAProxy target id is `backend/server`".into(),
            });
        };
        check_name(backend, "backend")
            .and_then(|()| check_name(server, "server"))
            .map_err(|e| match e {
                HaproxyError::InvalidName { reason, .. } => HaproxyError::InvalidName {
                    name: id.to_string(),
                    reason,
                },
                other => other,
            })?;
        if !self.inner.backends.iter().any(|b| b == backend) {
            return Err(HaproxyError::UnknownTarget {
                id: id.to_string(),
                pool: self.pool(),
            });
        }
        Ok(Key {
            backend: backend.to_owned(),
            server: server.to_owned(),
        })
    }

    fn keys(&self, ids: &[TargetId]) -> Result<Vec<Key>, HaproxyError> {
        ids.iter().map(|id| self.key(id)).collect()
    }

    /// Calls `f` with retries of refused / vanished sockets and timeouts;
    /// for `show` lines only (see `apply` for `set` lines).
    async fn retrying<T, F, Fut>(
        &self,
        client: &Client,
        what: &str,
        f: F,
    ) -> hygiene_core::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = hygiene_core::Result<T>>,
    {
        with_retries(&self.inner.retry, f, |e, delay| {
            warn!(node = client.name(), call = what, error = %e, delay_ms = delay.as_millis() as u64, "retrying haproxy call");
        })
        .await
    }

    /// One node's snapshot. With `old`, the requests its old workers still
    /// finish are added (when a master socket is configured): `Required`
    /// fails when the master cannot say (a drain must not be judged on a
    /// partial count), `BestEffort` logs and goes on (a listing), `Skip`
    /// does not ask (a change needs only the current worker: a master
    /// failure must never stop an enable).
    async fn snapshot(&self, k: usize, old: OldWorkers) -> hygiene_core::Result<Snapshot> {
        let client = &self.inner.clients[k];
        let master = self
            .inner
            .masters
            .get(k)
            .and_then(Option::as_ref)
            .filter(|_| old != OldWorkers::Skip);
        self.retrying(client, "show", || async {
            let mut snap = self.snapshot_once(client).await?;
            if let Some(m) = master {
                match crate::workers::add_old_workers(m, &mut snap).await {
                    Ok(()) => {}
                    Err(e) if old == OldWorkers::BestEffort => {
                        warn!(node = client.name(), error = %e, "cannot count the old workers' requests; listing without them");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(snap)
        })
        .await
    }

    /// One connection: `show backend; show servers state; show stat -1 4
    /// -1`: every backend of the node, so a host the pool shares with
    /// other backends is found in all of them.
    async fn snapshot_once(&self, client: &Client) -> Result<Snapshot, HaproxyError> {
        let node = client.name().to_owned();
        let commands = ["show backend", "show servers state", "show stat -1 4 -1"];
        let line = commands.join("; ");
        let raw = client.send(&line).await?;
        let bodies = split(&node, &line, &raw, commands.len())?;
        let err = |cmd: &str, e: ParseError| reply_error(&node, cmd, None, e);
        let names = parse::parse_backends(bodies[0]).map_err(|e| err(commands[0], e))?;
        let states = parse::parse_servers_state(bodies[1]).map_err(|e| err(commands[1], e))?;
        let stats = parse::parse_stat(bodies[2]).map_err(|e| err(commands[2], e))?;
        for b in &self.inner.backends {
            if !names.contains(b) {
                return Err(HaproxyError::NoSuchBackend {
                    node: node.clone(),
                    backend: b.clone(),
                });
            }
        }
        let mut stat_of: HashMap<(&str, &str), &parse::StatRow> = HashMap::new();
        for st in &stats {
            stat_of.insert((st.backend.as_str(), st.server.as_str()), st);
        }
        let mut by_backend: HashMap<&str, Vec<Entry>> = HashMap::new();
        for state in &states {
            let Some(stat) = stat_of.get(&(state.backend.as_str(), state.server.as_str())) else {
                return Err(HaproxyError::Protocol {
                    node: node.clone(),
                    message: format!(
                        "server {}/{} is in `show servers state` but not in `show stat` (reloading?)",
                        state.backend, state.server
                    ),
                });
            };
            by_backend
                .entry(state.backend.as_str())
                .or_default()
                .push(Entry {
                    stat: (*stat).clone(),
                    state: state.clone(),
                });
        }
        let pool: BTreeSet<&str> = self.inner.backends.iter().map(String::as_str).collect();
        let mut backends: Vec<(String, Vec<Entry>)> = self
            .inner
            .backends
            .iter()
            .map(|b| (b.clone(), by_backend.remove(b.as_str()).unwrap_or_default()))
            .collect();
        for name in names.iter().filter(|n| !pool.contains(n.as_str())) {
            if let Some(entries) = by_backend.remove(name.as_str()) {
                backends.push((name.clone(), entries));
            }
        }
        Ok(Snapshot {
            node,
            backends,
            pool: self.inner.backends.len(),
            scope: self.inner.scope,
            host_match: self.inner.host_match,
        })
    }

    async fn snapshots(&self, old: OldWorkers) -> hygiene_core::Result<Vec<Snapshot>> {
        let mut out = Vec::with_capacity(self.inner.clients.len());
        for k in 0..self.inner.clients.len() {
            out.push(self.snapshot(k, old).await?);
        }
        let all_checked = out
            .iter()
            .flat_map(|s| s.backends[..s.pool].iter().flat_map(|(_, entries)| entries))
            .all(Entry::checked);
        self.inner
            .health_checks
            .store(all_checked, Ordering::Relaxed);
        Ok(out)
    }

    /// Every key must name a server its backend has, on every node.
    fn check_present(snapshots: &[Snapshot], keys: &[Key]) -> Result<(), HaproxyError> {
        for snap in snapshots {
            for k in keys {
                if !snap.has(&k.backend, &k.server) {
                    return Err(HaproxyError::NoSuchServer {
                        node: snap.node.clone(),
                        backend: k.backend.clone(),
                        server: k.server.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Status of target `key` from its entries on every node (see
    /// [`aggregate`]). An entry out as it was found (an operator's drain or
    /// maintenance, left so) says nothing about the target's state or
    /// health, but its requests still count. Standing by (see
    /// [`TargetStatus::standby`]) when no entry of a pool backend gives it
    /// capacity: each in-service pool entry is `backup`, weight 0 or
    /// `NOLB`.
    fn status_of(&self, snapshots: &[Snapshot], key: &Key) -> TargetStatus {
        let id = key.id();
        let records = self.records();
        let mut parts: Vec<(TargetState, Health, u64)> = Vec::new();
        let mut out_as_found = 0u64;
        let mut capacity = false;
        let mut standby = false;
        for snap in snapshots {
            for (b, in_pool, e) in snap.server(&key.backend, &key.server) {
                let st = e.state.state();
                if records
                    .get(&id, &snap.node, b, e)
                    .is_some_and(|f| f.left_out(e))
                {
                    out_as_found = out_as_found.saturating_add(e.stat.connections);
                    continue;
                }
                if in_pool && st == TargetState::InService {
                    if e.stat.standby() {
                        standby = true;
                    } else {
                        capacity = true;
                    }
                }
                parts.push((st, e.stat.health(), e.stat.connections));
            }
        }
        drop(records);
        if parts.is_empty() {
            // Every entry is out as found: the target is out.
            return Self::status_all(snapshots, key);
        }
        if let Some(p) = parts.first_mut() {
            p.2 = p.2.saturating_add(out_as_found);
        }
        aggregate(&parts).with_standby(standby && !capacity)
    }

    fn status_all(snapshots: &[Snapshot], key: &Key) -> TargetStatus {
        let parts: Vec<(TargetState, Health, u64)> = snapshots
            .iter()
            .flat_map(|s| s.server(&key.backend, &key.server))
            .map(|(_, _, e)| (e.state.state(), e.stat.health(), e.stat.connections))
            .collect();
        aggregate(&parts)
    }

    /// Sends `set` commands built by `commands` (per node, backend and
    /// entry of each target) for each node, after checking on every node
    /// first that every target exists (so an unknown id changes nothing
    /// anywhere). With `take_out`, what the entries are now is recorded
    /// first where nothing is (see [`Records::taking_out`]).
    async fn apply<F>(
        &self,
        ids: &[TargetId],
        what: &str,
        take_out: bool,
        commands: F,
    ) -> hygiene_core::Result<()>
    where
        F: Fn(&str, &str, &str, &Entry) -> Vec<String>,
    {
        let keys = self.keys(ids)?;
        if keys.is_empty() {
            return Ok(());
        }
        let snapshots = self.snapshots(OldWorkers::Skip).await?;
        Self::check_present(&snapshots, &keys)?;
        let targets: Vec<(String, &Snapshot, Vec<Part<'_>>)> = snapshots
            .iter()
            .flat_map(|snap| {
                keys.iter()
                    .map(move |k| (k.id(), snap, snap.server(&k.backend, &k.server)))
            })
            .collect();
        if take_out {
            self.taking_out(&targets);
        }
        for (client, snap) in self.inner.clients.iter().zip(&snapshots) {
            let mut cmds: Vec<(String, String, String)> = Vec::new();
            for (id, _, parts) in targets.iter().filter(|(_, s, _)| std::ptr::eq(*s, snap)) {
                for (backend, _, entry) in parts {
                    for c in commands(id, &snap.node, backend, entry) {
                        if !cmds.iter().any(|(x, _, _)| *x == c) {
                            cmds.push((c, (*backend).to_owned(), entry.state.server.clone()));
                        }
                    }
                }
            }
            for chunk in chunks(&cmds) {
                // A `set` line is retried only when it certainly was not
                // sent: after a read timeout or a cut connection HAProxy may
                // have applied it, and repeating a `health down` would
                // restart the rise. The error goes back to the caller, whose
                // repeated call starts from a fresh snapshot.
                let maybe_sent = AtomicBool::new(false);
                with_retries_when(
                    &self.inner.retry,
                    || async {
                        self.send_sets(client, chunk).await.map_err(|f| {
                            if f.maybe_sent {
                                maybe_sent.store(true, Ordering::Relaxed);
                            }
                            hygiene_core::Error::from(f.error)
                        })
                    },
                    |e| e.is_retryable() && !maybe_sent.load(Ordering::Relaxed),
                    |e, delay| {
                        warn!(node = client.name(), call = what, error = %e, delay_ms = delay.as_millis() as u64, "retrying haproxy call (not sent)");
                    },
                )
                .await?;
            }
            debug!(
                node = client.name(),
                call = what,
                commands = cmds.len(),
                "haproxy change applied"
            );
        }
        Ok(())
    }

    /// Records what the entries of the targets are now, where nothing is
    /// recorded yet, and keeps the records until the targets are back.
    fn taking_out(&self, targets: &[(String, &Snapshot, Vec<Part<'_>>)]) {
        let mut records = self.records();
        for (id, snap, parts) in targets {
            let parts: Vec<(&str, &Entry)> = parts.iter().map(|(b, _, e)| (*b, *e)).collect();
            records.taking_out(id, &snap.node, &parts);
        }
    }

    /// Sends `set` commands on one line; each must answer with an empty reply.
    ///
    /// Any failure after the connection was made is `maybe_sent`.
    async fn send_sets(
        &self,
        client: &Client,
        cmds: &[(String, String, String)],
    ) -> Result<(), SendFailure> {
        let line = cmds
            .iter()
            .map(|(c, _, _)| c.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let raw = client.send_tracked(&line).await?;
        let node = client.name();
        let sent = |error| SendFailure {
            error,
            maybe_sent: true,
        };
        let bodies = split(node, &line, &raw, cmds.len()).map_err(sent)?;
        for ((cmd, backend, server), body) in cmds.iter().zip(bodies) {
            if let Some(e) = parse::classify(body) {
                return Err(sent(reply_error(
                    node,
                    cmd,
                    Some((backend, server)),
                    ParseError::Reply(e),
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl LoadBalancer for HaproxyBalancer {
    fn name(&self) -> String {
        format!(
            "haproxy ({} on {})",
            self.inner.backends.join(", "),
            self.node_names().join(", ")
        )
    }

    /// `health_checks` is false when the last `list` / `status` / change
    /// saw a pool server without any health check (no `check`, or `disable
    /// health`, and no `track`): such a server's health is `Unknown`
    /// forever, and the engine then accepts "in service" as healthy (pair
    /// it with a [`Probe`](hygiene_core::Probe)). True before the first call.
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_counts_connections(true)
            .with_graceful_drain(true)
            .with_hard_disable(true)
            .with_health_checks(self.inner.health_checks.load(Ordering::Relaxed))
            // A local socket, no rate limit.
            .with_cheap_status(true)
    }

    fn default_poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }

    /// The commands that put the target back as it was found, on every
    /// node: `state ready` (or `state drain` for an entry found drained),
    /// `enable agent` where an agent check ran; entries found in
    /// maintenance are left out.
    fn enable_hint(&self, id: &TargetId) -> String {
        let Ok(key) = self.key(id) else {
            return format!("{id} is not a valid HAProxy target id of this pool");
        };
        // Every entry the last listing found for the host, else the id's.
        let known = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id.as_str())
            .cloned();
        let entries = known.unwrap_or_else(|| vec![id.to_string()]);
        let records = self.records();
        self.inner
            .clients
            .iter()
            .map(|c| {
                let mut cmds = Vec::new();
                for entry in &entries {
                    let found = records.get_named(&key.id(), c.name(), entry);
                    match found.map(|f| f.admin) {
                        None | Some(Admin::Ready) => {
                            cmds.push(format!("set server {entry} state ready"));
                        }
                        Some(Admin::Drain) => cmds.push(format!("set server {entry} state drain")),
                        Some(Admin::Maint) => {}
                    }
                    if found.is_some_and(|f| f.agent) {
                        cmds.push(format!("enable agent {entry}"));
                    }
                }
                c.node().socat(&cmds.join("; "))
            })
            .collect::<Vec<_>>()
            .join(" && ")
    }

    /// Learns, from the journal's plan, what each entry of the targets was
    /// found as before the dead run took them out (`meta["found"]`), so
    /// that `enable` puts back exactly that; a target without it (a
    /// journal of an earlier version) is put back in service as then.
    ///
    /// # Errors
    /// [`hygiene_core::Error::Journal`] naming the target when its
    /// `meta["found"]` is not what `list` writes.
    async fn adopt(&self, targets: &[Target]) -> hygiene_core::Result<()> {
        let mut records = self.records();
        for t in targets {
            let Ok(key) = self.key(&t.id) else {
                continue; // not this pool's: nothing to learn
            };
            records
                .adopt(&key.id(), t.meta.get(found::META_FOUND).map(String::as_str))
                .map_err(|m| {
                    hygiene_core::Error::journal(
                        format!("the journal's plan, target {}", t.id),
                        format!(
                            "meta[\"{}\"] is not what this balancer writes ({m}): fix or remove the value (without it, every entry of the target that is out is put back in service)",
                            found::META_FOUND
                        ),
                    )
                })?;
        }
        Ok(())
    }

    async fn list(&self) -> hygiene_core::Result<Vec<ListedTarget>> {
        let snapshots = self.snapshots(OldWorkers::BestEffort).await?;
        let Some(first) = snapshots.first() else {
            return Ok(Vec::new());
        };
        // Each host once, under the first pool backend that has it: the
        // servers of the pool sharing its name and host, or its host, are
        // one target.
        let mut covered: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        let mut out = Vec::new();
        for (backend, entries) in &first.backends[..first.pool] {
            for e in entries {
                let name = e.state.server.as_str();
                if covered.contains(&(backend.as_str(), name)) {
                    continue;
                }
                let all = first.server(backend, name);
                covered.extend(all.iter().map(|(b, _, x)| (*b, x.state.server.as_str())));
                let key = Key {
                    backend: backend.clone(),
                    server: name.to_owned(),
                };
                Self::check_present(&snapshots, std::slice::from_ref(&key))?;
                let id = TargetId::new(key.id())?;
                let mut backends: Vec<&str> = Vec::new();
                for (b, _, _) in &all {
                    if !backends.contains(b) {
                        backends.push(b);
                    }
                }
                let mut target = Target::new(id)
                    .with_address(e.state.addr.clone())
                    .with_meta("backends", backends.join(","))
                    .with_meta("nodes", self.node_names().join(","));
                let others = first.others(backend, name);
                if !others.is_empty() {
                    target = target.with_meta("other_backends", others.join(","));
                    if self.inner.scope == HostScope::PoolBackendsOnly {
                        warn!(
                            target.id = %target.id,
                            others = %others.join(", "),
                            "the same host also serves backends outside the pool; they keep sending it requests during its maintenance (scope: pool backends only)"
                        );
                    }
                }
                // What every entry is now, on every node: what `enable`
                // restores, journaled by the engine with the plan.
                let mut everywhere: Vec<(&str, &str, &Entry)> = Vec::new();
                let mut agents: Vec<String> = Vec::new();
                {
                    let mut records = self.records();
                    for snap in &snapshots {
                        let parts = snap.server(backend, name);
                        let pairs: Vec<(&str, &Entry)> =
                            parts.iter().map(|(b, _, x)| (*b, *x)).collect();
                        records.listed(&key.id(), &snap.node, &pairs);
                        for (b, x) in pairs {
                            let n = format!("{b}/{}", x.state.server);
                            if x.state.has_agent() && !agents.contains(&n) {
                                agents.push(n);
                            }
                            everywhere.push((snap.node.as_str(), b, x));
                        }
                    }
                    target = target.with_meta(found::META_FOUND, records.meta(&everywhere));
                }
                if !agents.is_empty() {
                    target = target.with_meta("agents", agents.join(","));
                }
                seen.insert(
                    key.id(),
                    all.iter()
                        .map(|(b, _, x)| format!("{b}/{}", x.state.server))
                        .collect(),
                );
                if let Some(port) = e.state.port {
                    target = target.with_port(port);
                }
                out.push(ListedTarget {
                    target,
                    status: self.status_of(&snapshots, &key),
                });
            }
        }
        *self
            .inner
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = seen;
        Ok(out)
    }

    async fn status(&self, ids: &[TargetId]) -> hygiene_core::Result<Vec<TargetStatus>> {
        let keys = self.keys(ids)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let snapshots = self.snapshots(OldWorkers::Required).await?;
        Self::check_present(&snapshots, &keys)?;
        Ok(keys.iter().map(|k| self.status_of(&snapshots, k)).collect())
    }

    /// Stops the agent checks that run (an agent's `ready` would end the
    /// drain) and drains every entry of the host not in maintenance.
    async fn drain(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.apply(ids, "drain", true, |_, _, b, e| found::drain_commands(b, e))
            .await
    }

    async fn disable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.apply(ids, "disable", true, |_, _, b, e| {
            found::disable_commands(b, e)
        })
        .await
    }

    /// Puts every entry back as it was found (see the crate docs, "What
    /// was found is what is put back"); entries found in service come back
    /// as in "Fresh health after enable": servers with a check of their own
    /// are forced `DOWN` until `rise` checks made after the enable have
    /// passed; tracking servers and servers without a check are only made
    /// ready. Agent checks that ran are started again.
    async fn enable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.apply(ids, "enable", false, |id, node, b, e| {
            let found = self.records().to_restore(id, node, b, e);
            found::enable_commands(b, e, found)
        })
        .await?;
        let mut records = self.records();
        for k in self.keys(ids)? {
            records.put_back(&k.id());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Node;

    fn lb(backends: &[&str]) -> HaproxyBalancer {
        let mut b =
            HaproxyBalancer::builder().node(Node::unix("/nonexistent/haproxy.sock").named("lb-a"));
        for x in backends {
            b = b.backend(*x);
        }
        b.build().expect("valid config")
    }

    fn id(s: &str) -> TargetId {
        TargetId::new(s).expect("valid target id")
    }

    #[test]
    fn ids_are_checked_before_anything_is_sent() {
        let lb = lb(&["web", "api"]);
        assert_eq!(
            lb.key(&id("web/s1")).ok(),
            Some(Key {
                backend: "web".into(),
                server: "s1".into()
            })
        );
        assert!(matches!(
            lb.key(&id("web/s1;shutdown")),
            Err(HaproxyError::InvalidName { .. })
        ));
        assert!(matches!(
            lb.key(&id("s1")),
            Err(HaproxyError::InvalidName { .. })
        ));
        assert!(matches!(
            lb.key(&id("web/a/b")),
            Err(HaproxyError::InvalidName { .. })
        ));
        assert!(matches!(
            lb.key(&id("other/s1")),
            Err(HaproxyError::UnknownTarget { .. })
        ));
        let e: hygiene_core::Error = lb.key(&id("other/s1")).expect_err("not in pool").into();
        assert!(
            e.is_not_found() && e.to_string().contains("other/s1"),
            "{e}"
        );
    }

    #[test]
    fn versions_that_count_old_workers() {
        assert_eq!(
            HaproxyBalancer::counts_old_workers("2.6.12-1+deb12u4"),
            Some(true)
        );
        assert_eq!(HaproxyBalancer::counts_old_workers("2.5.0"), Some(true));
        assert_eq!(HaproxyBalancer::counts_old_workers("2.4.22"), Some(false));
        assert_eq!(HaproxyBalancer::counts_old_workers("1.8.30"), Some(false));
        assert_eq!(HaproxyBalancer::counts_old_workers("dev"), None);
    }

    #[test]
    fn hint_and_name() {
        let lb = lb(&["web", "api"]);
        // Never listed: the id's own server only (`api/s1` may be another
        // host).
        let hint = lb.enable_hint(&id("web/s1"));
        assert!(hint.contains("'set server web/s1 state ready'"), "{hint}");
        assert!(
            hint.contains("UNIX-CONNECT:/nonexistent/haproxy.sock"),
            "{hint}"
        );
        assert!(lb.name().contains("web, api") && lb.name().contains("lb-a"));
        assert!(lb.capabilities().counts_connections && lb.capabilities().hard_disable);
        assert!(lb.default_poll_interval() <= Duration::from_millis(250));
    }
}
