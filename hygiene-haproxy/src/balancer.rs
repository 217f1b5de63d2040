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
use crate::parse::{self, ParseError, ReplyError, ServerState, StatRow, ADMF_FORCED};

/// Admin bits `state ready` clears: forced maint (also set for a server
/// `disabled` in the configuration), forced drain.
const ADMF_NEEDS_READY: u32 = ADMF_FORCED;

/// Forced maintenance (`set server … state maint`).
const ADMF_FORCED_MAINT: u32 = 0x01;

/// Longest command line sent at once; HAProxy's CLI reads one buffer
/// (`tune.bufsize`, 16 kB by default) per line.
const MAX_LINE: usize = 8 * 1024;

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
    /// Per pool server name, every `backend/server` the last snapshot
    /// found for it (for the way back in a report).
    pub(crate) seen: Mutex<HashMap<String, Vec<String>>>,
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

/// One server of one backend on one node.
#[derive(Debug, Clone)]
struct Entry {
    state: ServerState,
    stat: StatRow,
}

impl Entry {
    /// The server `track`s another one: its health is the tracked
    /// server's, and HAProxy refuses `set server … health` on it
    /// (`cannot change health on a tracking server.`).
    fn tracking(&self) -> bool {
        !self.stat.tracked.trim().is_empty() || self.state.inherits_maint()
    }

    /// HAProxy runs a health check of its own on this server (configured
    /// with `check` and not stopped by `disable health`). Without the
    /// `srv_check_state` column, judged from `show stat`.
    fn own_checks(&self) -> bool {
        self.state.checks_enabled().unwrap_or_else(|| {
            self.stat.status.trim() != "no check" && !self.stat.check_status.trim().is_empty()
        })
    }

    /// Some health check decides this server's health (its own or, when it
    /// tracks one, the tracked server's).
    fn checked(&self) -> bool {
        self.tracking() || self.own_checks()
    }
}

/// What one node says about its backends: the pool's first (in pool
/// order), then every other backend holding servers.
#[derive(Debug)]
struct Snapshot {
    node: String,
    backends: Vec<(String, Vec<Entry>)>,
    /// How many of `backends` are the pool's (the first ones).
    pool: usize,
    scope: HostScope,
    host_match: HostMatch,
}

/// A host: an address, and a port unless any port matches.
type Host = (String, Option<u16>);

impl Snapshot {
    /// The host a server points to; `None` for a server without a usable
    /// address (unresolved, `0.0.0.0`), which only matches by name.
    fn host(&self, e: &Entry) -> Option<Host> {
        let a = e.state.addr.trim();
        if a.is_empty() || a == "-" || a == "0.0.0.0" || a == "::" {
            return None;
        }
        let port = match self.host_match {
            HostMatch::AddressAndPort => e.state.port,
            HostMatch::Address => None,
        };
        Some((a.to_owned(), port))
    }

    /// The pool server `name`: its entries in every pool backend that has
    /// the name, plus every server with the same host in the backends the
    /// scope reaches (every backend by default). Pool order first.
    fn server(&self, name: &str) -> Vec<(&str, &Entry)> {
        let pool = &self.backends[..self.pool];
        let mut out: Vec<(&str, &Entry)> = pool
            .iter()
            .filter_map(|(b, entries)| {
                entries
                    .iter()
                    .find(|e| e.state.server == name)
                    .map(|e| (b.as_str(), e))
            })
            .collect();
        let hosts: Vec<Host> = out.iter().filter_map(|(_, e)| self.host(e)).collect();
        if hosts.is_empty() {
            return out;
        }
        let reach = match self.scope {
            HostScope::AllBackends => &self.backends[..],
            HostScope::PoolBackendsOnly => pool,
        };
        for (b, entries) in reach {
            for e in entries {
                let known = out
                    .iter()
                    .any(|(ob, oe)| *ob == b.as_str() && oe.state.server == e.state.server);
                if !known && self.host(e).is_some_and(|h| hosts.contains(&h)) {
                    out.push((b.as_str(), e));
                }
            }
        }
        out
    }

    /// `backend/server` of every server outside the pool's backends with
    /// the same host as pool server `name`, whatever the scope.
    fn others(&self, name: &str) -> Vec<String> {
        let hosts: Vec<Host> = self.backends[..self.pool]
            .iter()
            .flat_map(|(_, entries)| entries.iter().filter(|e| e.state.server == name))
            .filter_map(|e| self.host(e))
            .collect();
        self.backends[self.pool..]
            .iter()
            .flat_map(|(b, entries)| entries.iter().map(move |e| (b, e)))
            .filter(|(_, e)| self.host(e).is_some_and(|h| hosts.contains(&h)))
            .map(|(b, e)| format!("{b}/{}", e.state.server))
            .collect()
    }

    /// Pool backend `backend` holds server `server`.
    fn has(&self, backend: &str, server: &str) -> bool {
        self.backends[..self.pool]
            .iter()
            .any(|(b, entries)| b == backend && entries.iter().any(|e| e.state.server == server))
    }
}

/// A target id, split and checked: `backend/server`.
/// A runtime API socket's level (`stats socket … level <level>`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketLevel {
    /// `level admin`: everything, `set server` included.
    Admin,
    /// `level operator`: `show` and a few harmless commands; no `set server`.
    Operator,
    /// `level user`: `show` only.
    User,
    /// Any other reply (an HAProxy older than 2.0 does not know `show cli
    /// level`): the reply's first line.
    Unknown(String),
}

impl SocketLevel {
    fn parse(reply: &str) -> Self {
        let line = reply.lines().next().unwrap_or("").trim();
        match line {
            "admin" => Self::Admin,
            "operator" => Self::Operator,
            "user" => Self::User,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for SocketLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin => f.write_str("admin"),
            Self::Operator => f.write_str("operator"),
            Self::User => f.write_str("user"),
            Self::Unknown(r) => write!(f, "unknown ({r:?})"),
        }
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
                match Self::add_old_workers(m, &mut snap).await {
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

    /// Adds the in-flight requests of the node's old workers (processes a
    /// reload replaced, still finishing theirs) to each server's count,
    /// from the master CLI: `show proc`, then `@!<pid> show stat` for each
    /// old worker. A row counts for the entry of the same backend and
    /// server name *and* for every entry pointing to the same address (a
    /// reload may have renamed or renumbered servers): an overcount only
    /// makes a drain wait for requests that really run. A worker whose
    /// reply is not a `show stat` counts nothing only once a second `show
    /// proc` no longer lists it; otherwise, as for a cut reply, the whole
    /// count is unavailable (retried).
    async fn add_old_workers(master: &Client, snap: &mut Snapshot) -> Result<(), HaproxyError> {
        let pids = Self::old_worker_pids(master).await?;
        let mut rows: Vec<parse::StatRow> = Vec::new();
        let mut unanswered = Vec::new();
        for pid in &pids {
            let line = format!("@!{pid} show stat -1 4 -1");
            let raw = master.send(&line).await?;
            if !raw.trim_start().starts_with("# pxname") {
                unanswered.push((*pid, raw.trim().to_owned()));
                continue;
            }
            let parsed = parse::parse_stat(&raw).map_err(|e| HaproxyError::Unavailable {
                node: master.name().to_owned(),
                message: format!("the reply of old worker {pid} to `{line}` is cut or malformed ({e:?}): its in-flight requests cannot be counted"),
                source: None,
            })?;
            rows.extend(parsed.into_iter().filter(|r| r.connections > 0));
        }
        if !unanswered.is_empty() {
            let still = Self::old_worker_pids(master).await?;
            if let Some((pid, reply)) = unanswered.iter().find(|(p, _)| still.contains(p)) {
                return Err(HaproxyError::Unavailable {
                    node: master.name().to_owned(),
                    message: format!("old worker {pid} runs but did not answer `show stat` ({reply:?}): its in-flight requests cannot be counted"),
                    source: None,
                });
            }
            debug!(master = master.name(), gone = ?unanswered, "old workers ended");
        }
        if rows.is_empty() {
            return Ok(());
        }
        debug!(node = %snap.node, old_workers = ?pids, rows = rows.len(), "old workers still serve");
        let host_of = |addr: &str| -> Option<(String, Option<u16>)> {
            let (a, p) = addr.rsplit_once(':')?;
            let a = a.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = match snap.host_match {
                HostMatch::AddressAndPort => Some(p.parse().ok()?),
                HostMatch::Address => None,
            };
            Some((a, port))
        };
        let mut add: Vec<(usize, usize, u64)> = Vec::new();
        for r in &rows {
            let host = r.addr.as_deref().and_then(host_of);
            for (b, (backend, entries)) in snap.backends.iter().enumerate() {
                for (k, e) in entries.iter().enumerate() {
                    let same_name = *backend == r.backend && e.state.server == r.server;
                    let same_host = host.is_some() && snap.host(e) == host;
                    if same_name || same_host {
                        add.push((b, k, r.connections));
                    }
                }
            }
        }
        for (b, k, n) in add {
            if let Some(e) = snap.backends.get_mut(b).and_then(|(_, v)| v.get_mut(k)) {
                e.stat.connections = e.stat.connections.saturating_add(n);
            }
        }
        Ok(())
    }

    async fn old_worker_pids(master: &Client) -> Result<Vec<u32>, HaproxyError> {
        let raw = master.send("show proc").await?;
        parse::parse_old_workers(&raw).map_err(|e| reply_error(master.name(), "show proc", None, e))
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

    fn status_of(snapshots: &[Snapshot], server: &str) -> TargetStatus {
        let parts: Vec<(TargetState, Health, u64)> = snapshots
            .iter()
            .flat_map(|s| s.server(server))
            .map(|(_, e)| (e.state.state(), e.stat.health(), e.stat.connections))
            .collect();
        aggregate(&parts)
    }

    /// Sends `set server` commands built by `commands` for each node, after
    /// checking on every node first that every target exists (so an unknown
    /// id changes nothing anywhere).
    async fn apply<F>(&self, ids: &[TargetId], what: &str, commands: F) -> hygiene_core::Result<()>
    where
        F: Fn(&str, &Entry) -> Vec<String>,
    {
        let keys = self.keys(ids)?;
        if keys.is_empty() {
            return Ok(());
        }
        let snapshots = self.snapshots(OldWorkers::Skip).await?;
        Self::check_present(&snapshots, &keys)?;
        for (client, snap) in self.inner.clients.iter().zip(&snapshots) {
            let mut cmds: Vec<(String, String, String)> = Vec::new();
            for k in &keys {
                for (backend, entry) in snap.server(&k.server) {
                    for c in commands(backend, entry) {
                        if !cmds.iter().any(|(x, _, _)| *x == c) {
                            cmds.push((c, backend.to_owned(), k.server.clone()));
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

/// Splits a reply into `count` bodies. When the framing is wrong but the
/// reply starts with a known error line (HAProxy refusing the whole line),
/// that error is the one reported.
fn split<'a>(
    node: &str,
    line: &str,
    raw: &'a str,
    count: usize,
) -> Result<Vec<&'a str>, HaproxyError> {
    parse::split_replies(raw, count).map_err(|m| {
        let first = raw.split("\n\n").next().unwrap_or_default();
        match parse::classify(first) {
            Some(e @ (ReplyError::PermissionDenied | ReplyError::UnknownCommand(_))) => {
                reply_error(node, line, None, ParseError::Reply(e))
            }
            _ => HaproxyError::Protocol {
                node: node.to_owned(),
                message: format!("`{line}`: {m}"),
            },
        }
    })
}

/// Splits commands into lines short enough for HAProxy's CLI buffer.
fn chunks(cmds: &[(String, String, String)]) -> Vec<&[(String, String, String)]> {
    let mut out = Vec::new();
    let (mut start, mut len) = (0, 0);
    for (i, (c, _, _)) in cmds.iter().enumerate() {
        if i > start && len + c.len() + 2 > MAX_LINE {
            out.push(&cmds[start..i]);
            start = i;
            len = 0;
        }
        len += c.len() + 2;
    }
    if start < cmds.len() {
        out.push(&cmds[start..]);
    }
    out
}

/// The one place HAProxy's replies become errors.
fn reply_error(
    node: &str,
    command: &str,
    target: Option<(&str, &str)>,
    e: ParseError,
) -> HaproxyError {
    let node = node.to_owned();
    let command = command.to_owned();
    match e {
        ParseError::Reply(ReplyError::PermissionDenied) => {
            HaproxyError::PermissionDenied { node, command }
        }
        ParseError::Reply(ReplyError::NoSuchBackend) => HaproxyError::NoSuchBackend {
            node,
            backend: target.map(|(b, _)| b.to_owned()).unwrap_or(command),
        },
        ParseError::Reply(ReplyError::NoSuchServer) => match target {
            Some((b, s)) => HaproxyError::NoSuchServer {
                node,
                backend: b.to_owned(),
                server: s.to_owned(),
            },
            None => HaproxyError::Rejected {
                node,
                command,
                reply: "No such server.".into(),
            },
        },
        ParseError::Reply(ReplyError::UnknownCommand(reply)) => HaproxyError::UnknownCommand {
            node,
            command,
            reply,
        },
        ParseError::Reply(ReplyError::Other(reply)) => HaproxyError::Rejected {
            node,
            command,
            reply,
        },
        ParseError::Format(message) => HaproxyError::Protocol {
            node,
            message: format!("`{command}`: {message}"),
        },
    }
}

/// Status of one target from its entries on every node and backend:
/// in service as soon as one entry is (a node or backend that sends it new
/// requests is what matters: a node restarted during a drain has it back
/// in rotation, and the engine must see that and drain it again), else
/// the most out state; healthy only where every entry is in service and
/// healthy (entries that disagree are `Unknown`); connections summed.
fn aggregate(parts: &[(TargetState, Health, u64)]) -> TargetStatus {
    let rank = |s: TargetState| match s {
        TargetState::InService => 0,
        TargetState::Draining => 1,
        TargetState::OutOfService => 2,
    };
    let connections = parts.iter().map(|p| p.2).fold(0u64, u64::saturating_add);
    let state = if parts.iter().any(|p| p.0 == TargetState::InService) {
        TargetState::InService
    } else {
        match parts
            .iter()
            .map(|p| p.0)
            .max_by_key(|s| rank(*s))
            .unwrap_or(TargetState::OutOfService)
        {
            // `MAINT` stops new requests, not those in flight: while any
            // entry (a node, an old worker) still has some, the target is
            // still draining, whatever another entry says.
            TargetState::OutOfService if connections > 0 => TargetState::Draining,
            s => s,
        }
    };
    let mixed = parts.iter().any(|p| p.0 != state);
    let health = if parts.is_empty() || mixed {
        Health::Unknown
    } else if parts.iter().any(|p| p.1 == Health::Unhealthy) {
        Health::Unhealthy
    } else if parts.iter().all(|p| p.1 == Health::Healthy) {
        Health::Healthy
    } else {
        Health::Unknown
    };
    TargetStatus::new(state, health, Some(connections))
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

    fn enable_hint(&self, id: &TargetId) -> String {
        let server = id.as_str().split_once('/').map_or(id.as_str(), |(_, s)| s);
        if !crate::config::is_valid_name(server) {
            return format!("{id} is not a valid HAProxy target id");
        }
        // Every backend the last listing found the host in, else the pool's.
        let known = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(server)
            .cloned();
        let servers = known.unwrap_or_else(|| {
            self.inner
                .backends
                .iter()
                .map(|b| format!("{b}/{server}"))
                .collect()
        });
        let cmd = servers
            .iter()
            .map(|s| format!("set server {s} state ready"))
            .collect::<Vec<_>>()
            .join("; ");
        self.inner
            .clients
            .iter()
            .map(|c| c.node().socat(&cmd))
            .collect::<Vec<_>>()
            .join(" && ")
    }

    async fn list(&self) -> hygiene_core::Result<Vec<ListedTarget>> {
        let snapshots = self.snapshots(OldWorkers::BestEffort).await?;
        let Some(first) = snapshots.first() else {
            return Ok(Vec::new());
        };
        // Each host once, under the first pool backend that has it: the
        // servers of the pool sharing its name or its host are one target.
        let mut covered: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        let mut out = Vec::new();
        for (backend, entries) in &first.backends[..first.pool] {
            for e in entries {
                let name = e.state.server.as_str();
                if covered.contains(&(backend.as_str(), name)) {
                    continue;
                }
                let all = first.server(name);
                covered.extend(all.iter().map(|(b, x)| (*b, x.state.server.as_str())));
                let key = Key {
                    backend: backend.clone(),
                    server: name.to_owned(),
                };
                Self::check_present(&snapshots, std::slice::from_ref(&key))?;
                let id = TargetId::new(format!("{backend}/{name}"))?;
                let mut backends: Vec<&str> = Vec::new();
                for (b, _) in &all {
                    if !backends.contains(b) {
                        backends.push(b);
                    }
                }
                let mut target = Target::new(id)
                    .with_address(e.state.addr.clone())
                    .with_meta("backends", backends.join(","))
                    .with_meta("nodes", self.node_names().join(","));
                let others = first.others(name);
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
                seen.insert(
                    name.to_owned(),
                    all.iter()
                        .map(|(b, x)| format!("{b}/{}", x.state.server))
                        .collect(),
                );
                if let Some(port) = e.state.port {
                    target = target.with_port(port);
                }
                out.push(ListedTarget {
                    target,
                    status: Self::status_of(&snapshots, name),
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
        Ok(keys
            .iter()
            .map(|k| Self::status_of(&snapshots, &k.server))
            .collect())
    }

    async fn drain(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.apply(ids, "drain", |b, e| {
            if e.state.admin_state & ADMF_FORCED_MAINT != 0 {
                // `state drain` would take it *out* of maintenance: a server
                // already held in maintenance stays there.
                Vec::new()
            } else {
                vec![format!("set server {b}/{} state drain", e.state.server)]
            }
        })
        .await
    }

    async fn disable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.apply(ids, "disable", |b, e| {
            vec![format!("set server {b}/{} state maint", e.state.server)]
        })
        .await
    }

    /// Puts the servers back; see the crate docs, "Fresh health after
    /// enable": servers with a check of their own are forced `DOWN` until
    /// `rise` checks made after the enable have passed; tracking servers
    /// and servers without a check are only made ready.
    async fn enable(&self, ids: &[TargetId]) -> hygiene_core::Result<()> {
        self.apply(ids, "enable", enable_commands).await
    }
}

/// The commands that put one server of backend `b` back in service, from
/// what the snapshot says about it (measured on HAProxy 2.6.12, see the
/// crate README):
///
/// - **Own health check** (`check`), out (forced maint or drain):
///   `[state drain;] health down; state ready`. `health down` forces the
///   server `DOWN`, so HAProxy sends it nothing and shows it `DOWN`, then
///   `DOWN 1/2`…, until `rise` checks made after the enable have passed.
///   Leaving `MAINT` resets the check's health counter (the server is `UP`
///   at once with the check result from before the maintenance), which
///   would undo a `health down` sent while in `MAINT`: so a server in forced
///   maintenance is first moved to `DRAIN` (which leaves `MAINT` and takes
///   no new traffic), then forced down, then made ready.
/// - **Tracking server** (`track b/s`): `state ready` only; HAProxy
///   refuses `health` on it, and its health is the tracked server's.
/// - **No health check** (no `check`, or `disable health`): `state ready`,
///   and `health up` when it is down: nothing would ever raise a server
///   without a check that someone forced down.
/// - Already in service (and, without a check, up): nothing. Forcing the
///   health of a serving server down would take it out of service.
fn enable_commands(b: &str, e: &Entry) -> Vec<String> {
    let s = &e.state.server;
    let out = e.state.admin_state & ADMF_NEEDS_READY != 0;
    let mut cmds = Vec::new();
    if e.tracking() {
        if out {
            cmds.push(format!("set server {b}/{s} state ready"));
        }
    } else if e.own_checks() {
        if out {
            if e.state.admin_state & ADMF_FORCED_MAINT != 0 {
                cmds.push(format!("set server {b}/{s} state drain"));
            }
            cmds.push(format!("set server {b}/{s} health down"));
            cmds.push(format!("set server {b}/{s} state ready"));
        }
    } else {
        if out {
            cmds.push(format!("set server {b}/{s} state ready"));
        }
        if e.state.op_state == 0 {
            cmds.push(format!("set server {b}/{s} health up"));
        }
    }
    cmds
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
    fn aggregate_is_pessimistic_and_sums() {
        use Health::*;
        use TargetState::*;
        let s = aggregate(&[(InService, Healthy, 1), (InService, Healthy, 2)]);
        assert_eq!(s, TargetStatus::new(InService, Healthy, Some(3)));
        // One node still (or again: restarted) sends it new requests: in
        // service, and not healthy-in-service until every entry agrees.
        let s = aggregate(&[(InService, Healthy, 0), (Draining, Healthy, 4)]);
        assert_eq!(s, TargetStatus::new(InService, Unknown, Some(4)));
        let s = aggregate(&[(Draining, Healthy, 0), (Draining, Healthy, 4)]);
        assert_eq!(s, TargetStatus::new(Draining, Healthy, Some(4)));
        let s = aggregate(&[(Draining, Healthy, 0), (OutOfService, Unknown, 0)]);
        assert_eq!(s.state, OutOfService);
        assert_eq!(s.health, Unknown);
        // Out hard on one node, requests still running on the other: not
        // drained until they end.
        let s = aggregate(&[(OutOfService, Unknown, 0), (Draining, Healthy, 2)]);
        assert_eq!((s.state, s.connections), (Draining, Some(2)));
        assert!(!s.is_drained());
        let s = aggregate(&[(OutOfService, Unknown, 1)]);
        assert_eq!(s.state, Draining, "MAINT with a request in flight");
        assert_eq!(
            aggregate(&[(InService, Healthy, 0), (InService, Unhealthy, 0)]).health,
            Unhealthy
        );
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
    fn long_batches_are_split() {
        let cmds: Vec<(String, String, String)> = (0..1000)
            .map(|i| {
                (
                    format!("set server web/s{i} state drain"),
                    "web".into(),
                    format!("s{i}"),
                )
            })
            .collect();
        let parts = chunks(&cmds);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), 1000);
        for p in parts {
            let line: usize = p.iter().map(|(c, _, _)| c.len() + 2).sum();
            assert!(line <= MAX_LINE);
        }
    }

    fn entry(admin_state: u32, op_state: u8, check_state: u32, tracked: &str) -> Entry {
        Entry {
            state: ServerState {
                backend: "web".into(),
                server: "s1".into(),
                addr: "127.0.0.1".into(),
                port: Some(80),
                op_state,
                admin_state,
                check_state: Some(check_state),
            },
            stat: StatRow {
                backend: "web".into(),
                server: "s1".into(),
                connections: 0,
                status: String::new(),
                check_status: String::new(),
                tracked: tracked.into(),
                addr: None,
            },
        }
    }

    #[test]
    fn enable_commands_per_kind_of_server() {
        let cmds = |e: Entry| enable_commands("web", &e);
        // Checked, in forced MAINT (check state 14 while paused): leave
        // MAINT through DRAIN, force down, then ready.
        assert_eq!(
            cmds(entry(1, 0, 14, "")),
            [
                "set server web/s1 state drain",
                "set server web/s1 health down",
                "set server web/s1 state ready"
            ]
        );
        // Checked, draining.
        assert_eq!(
            cmds(entry(8, 2, 6, "")),
            [
                "set server web/s1 health down",
                "set server web/s1 state ready"
            ]
        );
        // Checked and in service: untouched, even when down.
        assert!(cmds(entry(0, 2, 6, "")).is_empty());
        assert!(cmds(entry(0, 0, 6, "")).is_empty());
        // Config `disabled` (5): as forced MAINT.
        assert_eq!(cmds(entry(5, 0, 14, "")).len(), 3);
        // No check (0), or a check stopped by `disable health` (2): never
        // `health down`; `health up` when down.
        assert_eq!(cmds(entry(8, 2, 0, "")), ["set server web/s1 state ready"]);
        assert_eq!(cmds(entry(8, 2, 2, "")), ["set server web/s1 state ready"]);
        assert_eq!(
            cmds(entry(1, 0, 0, "")),
            [
                "set server web/s1 state ready",
                "set server web/s1 health up"
            ]
        );
        assert_eq!(cmds(entry(0, 0, 0, "")), ["set server web/s1 health up"]);
        assert!(cmds(entry(0, 2, 0, "")).is_empty());
        // Tracking: `state ready` only, and only where forced out.
        assert_eq!(
            cmds(entry(3, 0, 0, "web/s0")),
            ["set server web/s1 state ready"]
        );
        assert!(cmds(entry(2, 0, 0, "web/s0")).is_empty());
        assert!(cmds(entry(0, 0, 0, "web/s0")).is_empty());
        // Checks: a tracking server counts as checked, no check does not.
        assert!(entry(0, 2, 0, "web/s0").checked());
        assert!(entry(0, 2, 6, "").checked());
        assert!(!entry(0, 2, 2, "").checked());
    }

    #[test]
    fn hint_and_name() {
        let lb = lb(&["web", "api"]);
        let hint = lb.enable_hint(&id("web/s1"));
        assert!(
            hint.contains("set server web/s1 state ready; set server api/s1 state ready"),
            "{hint}"
        );
        assert!(
            hint.contains("UNIX-CONNECT:/nonexistent/haproxy.sock"),
            "{hint}"
        );
        assert!(lb.name().contains("web, api") && lb.name().contains("lb-a"));
        assert!(lb.capabilities().counts_connections && lb.capabilities().hard_disable);
        assert!(lb.default_poll_interval() <= Duration::from_millis(250));
    }

    fn at(backend: &str, server: &str, addr: &str, port: u16) -> Entry {
        let mut e = entry(0, 2, 0, "");
        e.state.backend = backend.into();
        e.state.server = server.into();
        e.state.addr = addr.into();
        e.state.port = Some(port);
        e.stat.backend = backend.into();
        e.stat.server = server.into();
        e
    }

    fn snap(scope: HostScope, host_match: HostMatch) -> Snapshot {
        Snapshot {
            node: "lb-a".into(),
            backends: vec![
                (
                    "web".into(),
                    vec![
                        at("web", "s1", "10.0.0.1", 80),
                        at("web", "s2", "10.0.0.2", 80),
                    ],
                ),
                (
                    "api".into(),
                    vec![
                        at("api", "a1", "10.0.0.1", 80),
                        at("api", "a1-admin", "10.0.0.1", 8080),
                        at("api", "nowhere", "0.0.0.0", 80),
                    ],
                ),
            ],
            pool: 1,
            scope,
            host_match,
        }
    }

    fn names(v: &[(&str, &Entry)]) -> Vec<String> {
        v.iter()
            .map(|(b, e)| format!("{b}/{}", e.state.server))
            .collect()
    }

    #[test]
    fn a_host_is_matched_by_address_and_port_or_address_across_backends() {
        let s = snap(HostScope::AllBackends, HostMatch::AddressAndPort);
        assert_eq!(names(&s.server("s1")), ["web/s1", "api/a1"]);
        assert_eq!(names(&s.server("s2")), ["web/s2"]);
        let s = snap(HostScope::AllBackends, HostMatch::Address);
        assert_eq!(names(&s.server("s1")), ["web/s1", "api/a1", "api/a1-admin"]);
        let s = snap(HostScope::PoolBackendsOnly, HostMatch::AddressAndPort);
        assert_eq!(names(&s.server("s1")), ["web/s1"]);
        assert_eq!(s.others("s1"), ["api/a1"], "named even when not drained");
        // An unusable address never matches another server.
        let mut s = snap(HostScope::AllBackends, HostMatch::Address);
        s.backends[0].1[0].state.addr = "0.0.0.0".into();
        assert_eq!(names(&s.server("s1")), ["web/s1"]);
    }
}
