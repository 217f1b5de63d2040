//! [`NginxBalancer`]: the [`LoadBalancer`] over one or several NGINX Plus
//! instances.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::try_join_all;
use hygiene_core::{
    Capabilities, Error, ListedTarget, LoadBalancer, Result, Target, TargetId, TargetStatus,
};
use serde_json::{json, Value};

use crate::client::{Instance, Peer, UpstreamKind};
use crate::config::{HealthChecks, Scope, UpstreamRef};
use crate::error::{Ctx, NginxError};
use crate::pool::{entries_of, host_of, named, Entry, EntryKey, ServerKey, Snapshot, Upstreams};
use crate::status::{combine, peer_status};

/// Hosts behind NGINX Plus upstreams as one pool, over the REST API.
///
/// # Targets are hosts
/// A target id is `<upstream>/<server id>` (`backend/3`), the id nginx gives
/// the server on the first instance; [`LoadBalancer::list`] returns that
/// form. A server can also be named by address, `backend/10.0.0.5:8080`
/// (its `server`), or by host, `backend/10.0.0.5`.
///
/// The target is the **host** of that server: with [`Scope::AllUpstreams`]
/// (the default) every entry of every upstream, http or stream, whose
/// `server` is on the same host is drained, disabled and enabled with it,
/// and its status combines them all: drained only when drained
/// everywhere, in service and healthy only when so everywhere. `list`
/// gives each host once (its first entry in the configured upstreams) and
/// names all its entries in the `entries` meta. Entries are matched by the
/// peers' `server` address, never by `name`.
///
/// # Several instances
/// Every instance (an HA pair) holds the same upstreams. Server ids are read
/// on the first instance; on the others the same host is used, since their
/// ids may differ. Mutations go to every instance; status combines them
/// (see the crate docs). A host missing from the named upstream on one
/// instance is [`Error::NotFound`] naming that instance, and nothing is
/// changed.
///
/// # Operations
/// | | http upstream | stream upstream |
/// |---|---|---|
/// | drain | `PATCH {"drain": true}`, then `{"down": true}` at `active == 0` | `PATCH {"down": true}`: open connections run on; drained at `active == 0` |
/// | disable | `PATCH {"down": true}` | `PATCH {"down": true}` |
/// | enable | `PATCH {"drain": false, "down": false}` | `PATCH {"down": false}` |
///
/// **Why an http drain ends in `down`.** nginx keeps a `draining` server
/// draining forever and still sends it the requests that session
/// persistence (`sticky`) binds to it, so `active == 0` on a draining
/// server may be an idle sticky client, not the end of its work. The engine
/// drains, polls `status` until drained, then runs the maintenance; so the
/// second step lives in `status`: for a server this balancer drained, the
/// read that sees it `draining` with `active == 0` on an instance PATCHes
/// `{"down": true}` there first, and reports it out of service only once
/// nginx has accepted that. A `draining` server with no connection that
/// this balancer did not drain (an operator's, or one a crashed run
/// drained: see [`LoadBalancer::adopt`]) reads as draining with an
/// **unknown** connection count, never as drained. What this cannot cover:
/// a drain cut short by the engine's drain timeout with
/// `OnDrainTimeout::Proceed` runs the maintenance while the server is only
/// draining; that needs the engine to disable after a forced drain.
///
/// Drain leaves a server that is already `down` alone (setting `drain` on it
/// would let sticky sessions back in). Every call first reads the upstreams
/// and resolves every id on every instance, so an unknown id fails the call
/// before any change.
///
/// # Reloads
/// A reload forgets API changes and renumbers server ids. The balancer
/// remembers the address each `<upstream>/<id>` named when first seen (or
/// adopted): when the id now names another address, the call fails with
/// [`Error::Rejected`] naming both, and nothing is sent. Every PATCH reply
/// is checked to be the server meant; a mismatch (a reload between the read
/// and the PATCH) fails the call naming the server that was changed.
///
/// # Health
/// See [`HealthChecks`]: with active checks (the default), `Healthy` needs a
/// passed check counted after this balancer's last enable of the server.
#[derive(Clone)]
pub struct NginxBalancer {
    inner: Arc<Inner>,
}

struct Inner {
    instances: Vec<Instance>,
    upstreams: Vec<UpstreamRef>,
    health: HealthChecks,
    poll: Duration,
    scope: Scope,
    /// Entry → `health_checks.checks` at enable.
    baselines: Mutex<HashMap<EntryKey, u64>>,
    /// http entries this balancer drained: set `down` once at `active == 0`.
    sealing: Mutex<HashSet<EntryKey>>,
    /// `(configured upstream, id)` → the address it named when first seen.
    known: Mutex<HashMap<(usize, u64), String>>,
    /// Target id → the entries it resolved to last, for the enable hint.
    last_entries: Mutex<HashMap<TargetId, Vec<HintEntry>>>,
}

/// `(instance, kind, upstream, server id)` of an entry, for hints.
type HintEntry = (usize, UpstreamKind, String, u64);

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for NginxBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NginxBalancer")
            .field("instances", &self.inner.instances)
            .field("upstreams", &self.inner.upstreams)
            .field("health", &self.inner.health)
            .field("poll", &self.inner.poll)
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Wanted {
    id: TargetId,
    up: usize,
    key: ServerKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Drain,
    Disable,
    Enable,
    /// The second step of an http drain (see the type docs).
    Seal,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::Seal => "set down after drain",
        }
    }

    /// The PATCH body for a peer in `state`, or `None` to leave it alone.
    fn body(self, kind: UpstreamKind, state: &str) -> Option<Value> {
        match (self, kind) {
            // Already down (the drain set it, or an earlier disable):
            // nothing to send.
            (Self::Drain | Self::Disable, _) if state == "down" => None,
            (Self::Drain, UpstreamKind::Http) => Some(json!({ "drain": true })),
            (Self::Drain | Self::Disable | Self::Seal, _) => Some(json!({ "down": true })),
            (Self::Enable, UpstreamKind::Http) => Some(json!({ "drain": false, "down": false })),
            (Self::Enable, UpstreamKind::Stream) => Some(json!({ "down": false })),
        }
    }
}

/// One PATCH to send: instance, kind, upstream, peer id, its address, body,
/// label for messages.
struct Patch {
    inst: usize,
    kind: UpstreamKind,
    upstream: String,
    id: u64,
    server: String,
    body: Value,
    label: String,
}

impl NginxBalancer {
    /// A builder: `NginxBalancer::builder().instance(url).upstream("backend").build()`.
    pub fn builder() -> crate::NginxBuilder {
        crate::NginxBuilder::new()
    }

    pub(crate) fn from_parts(
        instances: Vec<Instance>,
        upstreams: Vec<UpstreamRef>,
        health: HealthChecks,
        poll: Duration,
        scope: Scope,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                instances,
                upstreams,
                health,
                poll,
                scope,
                baselines: Mutex::new(HashMap::new()),
                sealing: Mutex::new(HashSet::new()),
                known: Mutex::new(HashMap::new()),
                last_entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Why NGINX Plus may send a server requests after
    /// [`enable`](LoadBalancer::enable) before any health check made after
    /// the enable, and what covers it: [`traffic_before_fresh_check`] for
    /// this balancer's health mode.
    pub fn traffic_before_fresh_check(&self) -> String {
        traffic_before_fresh_check(self.inner.health)
    }

    /// The API version in use on each instance (`None` before the first call).
    pub fn api_versions(&self) -> Vec<Option<u32>> {
        self.inner
            .instances
            .iter()
            .map(Instance::known_version)
            .collect()
    }

    fn parse(&self, id: &TargetId) -> Result<Wanted> {
        let (u, rest) = id.as_str().split_once('/').ok_or_else(|| {
            Error::invalid_name(id.as_str(), "an nginx target id is <upstream>/<server id> or <upstream>/<address>, e.g. backend/3")
        })?;
        let up = self
            .inner
            .upstreams
            .iter()
            .position(|x| x.name == u)
            .ok_or_else(|| Error::NotFound {
                kind: "target",
                name: id.to_string(),
                location: Some(format!(
                    "{}: upstream {u:?} is not among the managed upstreams {:?}",
                    self.name(),
                    self.upstream_names()
                )),
            })?;
        if rest.is_empty() {
            return Err(Error::invalid_name(
                id.as_str(),
                "no server after the upstream name",
            ));
        }
        let key = if rest.bytes().all(|b| b.is_ascii_digit()) {
            ServerKey::Id(
                rest.parse()
                    .map_err(|_| Error::invalid_name(id.as_str(), "server id out of range"))?,
            )
        } else {
            ServerKey::Address(rest.to_owned())
        };
        Ok(Wanted {
            id: id.clone(),
            up,
            key,
        })
    }

    fn upstream_names(&self) -> Vec<&str> {
        self.inner
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect()
    }

    fn label(&self, i: usize) -> &str {
        self.inner
            .instances
            .get(i)
            .map(Instance::label)
            .unwrap_or_default()
    }

    /// Reads the upstreams on every instance (instances in parallel): with
    /// `all`, every upstream of every kind (one call per kind), else only
    /// the configured ones (one call per configured kind). A configured
    /// upstream missing from the list is asked for by name, for nginx's own
    /// error (`UpstreamNotFound`, `UpstreamStatic`).
    async fn snapshot(&self, all: bool) -> Result<Snapshot, NginxError> {
        let inner = &self.inner;
        let kinds: BTreeSet<UpstreamKind> = if all {
            [UpstreamKind::Http, UpstreamKind::Stream].into()
        } else {
            inner.upstreams.iter().map(|u| u.kind).collect()
        };
        try_join_all(inner.instances.iter().map(|inst| {
            let kinds = kinds.clone();
            async move {
                let mut m = Upstreams::new();
                for kind in kinds {
                    let wanted: Vec<&str> = inner
                        .upstreams
                        .iter()
                        .filter(|u| u.kind == kind)
                        .map(|u| u.name.as_str())
                        .collect();
                    let configured = !wanted.is_empty();
                    let listed = match inst.upstreams(kind, &wanted.join(", ")).await {
                        Ok(l) => l,
                        // An nginx without a `stream` block has no stream
                        // upstreams to drain from.
                        Err(NginxError::Api { status: 404, .. }) if !configured => HashMap::new(),
                        Err(e) => return Err(e),
                    };
                    for (name, live) in listed {
                        if all
                            || inner
                                .upstreams
                                .iter()
                                .any(|u| u.kind == kind && u.name == name)
                        {
                            m.insert((kind, name), live);
                        }
                    }
                }
                for r in &inner.upstreams {
                    if let std::collections::btree_map::Entry::Vacant(v) =
                        m.entry((r.kind, r.name.clone()))
                    {
                        v.insert(inst.upstream(r.kind, &r.name).await?);
                    }
                }
                Ok::<_, NginxError>(m)
            }
        }))
        .await
    }

    fn scope_all(&self) -> bool {
        self.inner.scope == Scope::AllUpstreams
    }

    /// The entries of a target's host on every instance.
    fn resolve<'a>(&self, snap: &'a Snapshot, w: &Wanted) -> Result<Vec<Entry<'a>>, NginxError> {
        let r = &self.inner.upstreams[w.up];
        let first = snap
            .first()
            .map(|u| named(u, r.kind, &r.name, &w.key))
            .unwrap_or_default();
        if first.is_empty() {
            return Err(NginxError::UnknownTarget {
                id: w.id.to_string(),
                location: format!("nginx {} (upstream {:?})", self.label(0), r.name),
            });
        }
        if let ServerKey::Id(n) = w.key {
            let now = &first[0].server;
            let mut known = locked(&self.inner.known);
            match known.get(&(w.up, n)) {
                Some(was) if was != now => {
                    return Err(NginxError::Renumbered {
                        id: w.id.to_string(),
                        instance: self.label(0).to_owned(),
                        was: was.clone(),
                        now: now.clone(),
                        upstream: r.name.clone(),
                    })
                }
                Some(_) => {}
                None => {
                    known.insert((w.up, n), now.clone());
                }
            }
        }
        let hosts: BTreeSet<&str> = first.iter().map(|p| host_of(&p.server)).collect();
        let mut out = Vec::new();
        for i in 0..self.inner.instances.len() {
            let found = entries_of(snap, i, &hosts);
            if !found
                .iter()
                .any(|e| e.kind == r.kind && e.upstream == r.name)
            {
                return Err(NginxError::UnknownTarget {
                    id: w.id.to_string(),
                    location: format!(
                        "nginx {} (upstream {:?}; it is host {hosts:?} on {}: the instances disagree)",
                        self.label(i),
                        r.name,
                        self.label(0)
                    ),
                });
            }
            out.extend(found);
        }
        locked(&self.inner.last_entries).insert(
            w.id.clone(),
            out.iter()
                .map(|e| (e.inst, e.kind, e.upstream.to_owned(), e.peer.id))
                .collect(),
        );
        Ok(out)
    }

    fn status_of(&self, snap: &Snapshot, w: &Wanted) -> Result<TargetStatus> {
        let entries = self.resolve(snap, w)?;
        let mut views = Vec::new();
        let mut baselines = locked(&self.inner.baselines);
        for e in &entries {
            let key = e.key();
            let v = peer_status(e.peer, self.inner.health, baselines.get(&key).copied()).map_err(
                |m| {
                    let ctx = Ctx::new(self.label(e.inst), "read peer state").upstream(e.upstream);
                    Error::from(NginxError::Malformed { ctx, message: m })
                },
            )?;
            if v.fresh {
                baselines.remove(&key);
            }
            let mut st = v.status;
            if e.kind == UpstreamKind::Http
                && e.peer.state == "draining"
                && st.connections == Some(0)
            {
                // Only draining: sticky clients can still bring requests,
                // so no connection now does not mean drained (type docs).
                st.connections = None;
            }
            views.push(st);
        }
        Ok(combine(&views))
    }

    /// The http entries of these targets that this balancer drained and
    /// that are now `draining` with no connection: to be set `down`.
    fn to_seal(&self, snap: &Snapshot, wanted: &[Wanted]) -> Result<Vec<Patch>> {
        let sealing = locked(&self.inner.sealing).clone();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for w in wanted {
            for e in self.resolve(snap, w)? {
                let ready = e.kind == UpstreamKind::Http
                    && e.peer.state == "draining"
                    && e.peer.active == Some(0)
                    && sealing.contains(&e.key());
                if ready && seen.insert(e.key()) {
                    out.push(self.patch_of(&e, Op::Seal, &w.id));
                }
            }
        }
        Ok(out)
    }

    fn patch_of(&self, e: &Entry<'_>, op: Op, asked: &TargetId) -> Patch {
        Patch {
            inst: e.inst,
            kind: e.kind,
            upstream: e.upstream.to_owned(),
            id: e.peer.id,
            server: e.peer.server.clone(),
            body: op.body(e.kind, "").unwrap_or(Value::Null),
            label: format!("{}, asked as {asked}", e.label()),
        }
    }

    /// Sends the PATCHes (instances in parallel, each one's in order) and
    /// checks every reply names the server meant.
    async fn send(&self, patches: &[Patch], op: Op) -> Result<(), NginxError> {
        let inner = &self.inner;
        try_join_all((0..inner.instances.len()).map(|i| async move {
            let inst = &inner.instances[i];
            for p in patches.iter().filter(|p| p.inst == i) {
                let ctx = Ctx::new(inst.label(), op.name())
                    .upstream(&p.upstream)
                    .server(p.label.clone());
                let conf = inst.patch_server(p.kind, &p.upstream, p.id, &p.body, &ctx).await?;
                if conf.server != p.server || conf.id != p.id {
                    return Err(NginxError::WrongServer {
                        ctx: Box::new(ctx),
                        body: p.body.to_string(),
                        meant: p.server.clone(),
                        changed: conf.server,
                    });
                }
                tracing::debug!(nginx.instance = inst.label(), upstream = %p.upstream, server.id = p.id, server.address = %p.server, op = op.name(), "patched");
            }
            Ok::<_, NginxError>(())
        }))
        .await?;
        Ok(())
    }

    async fn mutate(&self, ids: &[TargetId], op: Op) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let wanted = ids
            .iter()
            .map(|id| self.parse(id))
            .collect::<Result<Vec<_>>>()?;
        let snap = self.snapshot(self.scope_all()).await?;
        let resolved = wanted
            .iter()
            .map(|w| self.resolve(&snap, w))
            .collect::<Result<Vec<_>, _>>()?;

        let mut patches = Vec::new();
        let mut seen = HashSet::new();
        for (w, entries) in wanted.iter().zip(&resolved) {
            for e in entries {
                let key = e.key();
                if !seen.insert(key.clone()) {
                    continue;
                }
                match op {
                    Op::Drain if e.kind == UpstreamKind::Http => {
                        locked(&self.inner.sealing).insert(key.clone());
                    }
                    Op::Disable | Op::Enable => {
                        locked(&self.inner.sealing).remove(&key);
                    }
                    _ => {}
                }
                let Some(body) = op.body(e.kind, &e.peer.state) else {
                    tracing::debug!(target.id = %w.id, nginx.instance = self.label(e.inst), state = %e.peer.state, "already out, left alone");
                    continue;
                };
                if op == Op::Enable
                    && self.inner.health == HealthChecks::Active
                    && e.peer.state != "up"
                {
                    // Recorded before the PATCH: no check counted so far may vouch for the server.
                    let checks = e.peer.health_checks.map(|h| h.checks).unwrap_or(0);
                    locked(&self.inner.baselines).insert(key, checks);
                }
                let mut p = self.patch_of(e, op, &w.id);
                p.body = body;
                patches.push(p);
            }
        }
        self.send(&patches, op).await?;
        Ok(())
    }

    /// Targets named by `list`: each host once, at its first entry in the
    /// configured upstreams of the first instance.
    fn hosts_listed(&self, snap: &Snapshot) -> Vec<(usize, u64)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (u, r) in self.inner.upstreams.iter().enumerate() {
            let Some(live) = snap.first().and_then(|m| m.get(&(r.kind, r.name.clone()))) else {
                continue;
            };
            for p in &live.peers {
                if seen.insert(host_of(&p.server).to_owned()) {
                    out.push((u, p.id));
                }
            }
        }
        out
    }
}

#[async_trait]
impl LoadBalancer for NginxBalancer {
    fn name(&self) -> String {
        let urls: Vec<&str> = self.inner.instances.iter().map(Instance::label).collect();
        format!("nginx {}", urls.join(" + "))
    }

    /// Connections are counted (`active`), `down` is a hard disable; the
    /// drain is graceful only when every upstream is an http one (stream
    /// servers have no `drain`: their drain is `down` plus waiting for
    /// `active == 0`); health checks as configured by [`HealthChecks`].
    fn capabilities(&self) -> Capabilities {
        let graceful = self
            .inner
            .upstreams
            .iter()
            .all(|u| u.kind == UpstreamKind::Http);
        Capabilities::none()
            .with_counts_connections(true)
            .with_graceful_drain(graceful)
            .with_hard_disable(true)
            .with_health_checks(self.inner.health == HealthChecks::Active)
            // One HTTP GET per upstream on the NGINX host, no rate limit.
            .with_cheap_status(true)
    }

    fn default_poll_interval(&self) -> Duration {
        self.inner.poll
    }

    fn enable_hint(&self, id: &TargetId) -> String {
        let Ok(w) = self.parse(id) else {
            return format!("re-enable {id} on {} once it is fixed", self.name());
        };
        let entries = locked(&self.inner.last_entries)
            .get(id)
            .cloned()
            .unwrap_or_else(|| {
                // Never resolved here: the named upstream only, by its id.
                let r = &self.inner.upstreams[w.up];
                match &w.key {
                    ServerKey::Id(n) => (0..self.inner.instances.len())
                        .map(|i| (i, r.kind, r.name.clone(), *n))
                        .collect(),
                    ServerKey::Address(_) => Vec::new(),
                }
            });
        if entries.is_empty() {
            return format!(
                "re-enable every server of {id} on {} once it is fixed",
                self.name()
            );
        }
        let urls: Vec<String> = entries
            .iter()
            .map(|(i, kind, upstream, peer)| {
                let inst = &self.inner.instances[*i];
                let v = inst
                    .known_version()
                    .unwrap_or(crate::client::MAX_API_VERSION);
                let body = match kind {
                    UpstreamKind::Http => r#"{"drain":false,"down":false}"#,
                    UpstreamKind::Stream => r#"{"down":false}"#,
                };
                format!(
                    "{body} to {}/{v}/{kind}/upstreams/{upstream}/servers/{peer}",
                    inst.label()
                )
            })
            .collect();
        format!(
            "once it is fixed, PATCH (curl -X PATCH -H 'Content-Type: application/json' -d BODY URL) each of: {} (check first that each id still names the host: a reload renumbers servers)",
            urls.join(", ")
        )
    }

    /// Learns the address each `<upstream>/<id>` named when an earlier
    /// process listed it (the `server` meta), so a reload that renumbered
    /// the servers since is caught, and keeps sealing (setting `down` at
    /// `active == 0`) the http servers of those targets that are draining.
    async fn adopt(&self, targets: &[Target]) -> Result<()> {
        for t in targets {
            let Ok(w) = self.parse(&t.id) else { continue };
            if let (ServerKey::Id(n), Some(server)) = (&w.key, t.meta.get("server")) {
                locked(&self.inner.known)
                    .entry((w.up, *n))
                    .or_insert_with(|| server.clone());
            }
            if let Some(entries) = t.meta.get("entries") {
                let mut sealing = locked(&self.inner.sealing);
                for e in entries.split(' ') {
                    // `<instance>|<kind>|<upstream>|<server>`
                    let parts: Vec<&str> = e.split('|').collect();
                    if let [i, "http", u, server] = parts[..] {
                        if let Ok(i) = i.parse() {
                            sealing.insert((
                                i,
                                UpstreamKind::Http,
                                u.to_owned(),
                                server.to_owned(),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ListedTarget>> {
        // Every upstream, whatever the scope: the warnings need them.
        let snap = self.snapshot(true).await?;
        let mut out = Vec::new();
        for (u, n) in self.hosts_listed(&snap) {
            let r = &self.inner.upstreams[u];
            let id = TargetId::new(format!("{}/{}", r.name, n))?;
            let w = Wanted {
                id: id.clone(),
                up: u,
                key: ServerKey::Id(n),
            };
            let entries = self.resolve(&snap, &w)?;
            let peer: &Peer = entries
                .iter()
                .find(|e| e.inst == 0 && e.kind == r.kind && e.upstream == r.name && e.peer.id == n)
                .map(|e| e.peer)
                .ok_or_else(|| Error::target_not_found(id.to_string(), None))?;
            let outside: BTreeSet<String> = entries
                .iter()
                .filter(|e| {
                    !self
                        .inner
                        .upstreams
                        .iter()
                        .any(|c| c.kind == e.kind && c.name == e.upstream)
                })
                .map(|e| format!("{} {}", e.kind, e.upstream))
                .collect();
            if !outside.is_empty() {
                match self.inner.scope {
                    Scope::AllUpstreams => {
                        tracing::info!(target.id = %id, upstreams = ?outside, "host also serves upstreams outside the configured ones; they are drained too")
                    }
                    Scope::ListedOnly => {
                        tracing::warn!(target.id = %id, upstreams = ?outside, "host also serves upstreams outside the configured ones; with Scope::ListedOnly they keep sending it work during its maintenance")
                    }
                }
            }
            let mut target = Target::new(id)
                .with_meta("upstream", r.name.clone())
                .with_meta("protocol", r.kind.to_string())
                .with_meta("server", peer.server.clone());
            if let Some(name) = &peer.name {
                target = target.with_meta("name", name.clone());
            }
            let in_scope = |e: &&Entry<'_>| {
                self.scope_all()
                    || self
                        .inner
                        .upstreams
                        .iter()
                        .any(|c| c.kind == e.kind && c.name == e.upstream)
            };
            let list: Vec<String> = entries
                .iter()
                .filter(in_scope)
                .map(|e| format!("{}|{}|{}|{}", e.inst, e.kind, e.upstream, e.peer.server))
                .collect();
            target = target.with_meta("entries", list.join(" "));
            if !outside.is_empty() {
                target = target.with_meta(
                    "other_upstreams",
                    outside.into_iter().collect::<Vec<_>>().join(", "),
                );
            }
            if let Some((host, port)) = split_address(&peer.server) {
                target = target.with_address(host).with_port(port);
            }
            if peer.backup {
                target = target.with_meta("backup", "true");
            }
            let status = if self.scope_all() {
                self.status_of(&snap, &w)?
            } else {
                let scoped: Snapshot = snap
                    .iter()
                    .map(|m| {
                        m.iter()
                            .filter(|((k, n), _)| {
                                self.inner
                                    .upstreams
                                    .iter()
                                    .any(|c| c.kind == *k && &c.name == n)
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .collect();
                self.status_of(&scoped, &w)?
            };
            out.push(ListedTarget { target, status });
        }
        Ok(out)
    }

    async fn status(&self, ids: &[TargetId]) -> Result<Vec<TargetStatus>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = ids
            .iter()
            .map(|id| self.parse(id))
            .collect::<Result<Vec<_>>>()?;
        let mut snap = self.snapshot(self.scope_all()).await?;
        let seal = self.to_seal(&snap, &wanted)?;
        if !seal.is_empty() {
            self.send(&seal, Op::Seal).await?;
            for p in &seal {
                locked(&self.inner.sealing).remove(&(
                    p.inst,
                    p.kind,
                    p.upstream.clone(),
                    p.server.clone(),
                ));
                if let Some(peer) = snap[p.inst]
                    .get_mut(&(p.kind, p.upstream.clone()))
                    .and_then(|l| l.peers.iter_mut().find(|x| x.id == p.id))
                {
                    // What nginx now has: down, no connection.
                    peer.state = "down".into();
                }
            }
        }
        wanted.iter().map(|w| self.status_of(&snap, w)).collect()
    }

    async fn drain(&self, ids: &[TargetId]) -> Result<()> {
        self.mutate(ids, Op::Drain).await
    }

    async fn disable(&self, ids: &[TargetId]) -> Result<()> {
        self.mutate(ids, Op::Disable).await
    }

    async fn enable(&self, ids: &[TargetId]) -> Result<()> {
        self.mutate(ids, Op::Enable).await
    }
}

/// Why NGINX Plus may send a server requests after
/// [`enable`](LoadBalancer::enable) before any health check made after the
/// enable, and what covers it (see the crate docs, "Traffic after enable");
/// `hygiene validate` shows it when no probe is configured.
///
/// NGINX Plus routes to a server as soon as `down` is false, on the result
/// of its last check from before the maintenance; its API has no way to
/// hold an existing server until a fresh check passes (`health_check
/// mandatory` holds only servers added through the API or DNS, and servers
/// after a reload). The balancer's own status waits for a fresh check
/// ([`HealthChecks::Active`]); nginx's routing does not.
pub fn traffic_before_fresh_check(health: HealthChecks) -> String {
    let mut s = String::from(
        "NGINX Plus sends requests to a server as soon as it is enabled (`down: false`), on its last health check from before the maintenance: \
         its API cannot hold a server until a fresh check passes (`health_check mandatory` holds only servers added through the API or DNS, and after a reload), \
         so a patched server that is broken takes requests until its next failed check (up to `interval` x `fails`)",
    );
    if health == HealthChecks::Passive {
        s.push_str(
            "; with health_checks = \"passive\" no active check runs at all: only failed requests (`max_fails`) take it out",
        );
    }
    s.push_str(
        ". Add a [probe]: it checks the patched server before it is put back; and keep the `health_check interval` short",
    );
    s
}

fn split_address(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && !host.starts_with("unix")).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_address("10.0.0.1:8080"),
            Some(("10.0.0.1".into(), 8080))
        );
        assert_eq!(split_address("[::1]:443"), Some(("::1".into(), 443)));
        assert_eq!(split_address("unix:/tmp/sock"), None);
        assert_eq!(split_address("host"), None);
    }

    #[test]
    fn bodies() {
        assert_eq!(
            Op::Drain.body(UpstreamKind::Http, "up"),
            Some(json!({"drain": true}))
        );
        assert_eq!(Op::Drain.body(UpstreamKind::Http, "down"), None);
        assert_eq!(
            Op::Drain.body(UpstreamKind::Stream, "up"),
            Some(json!({"down": true}))
        );
        assert_eq!(
            Op::Enable.body(UpstreamKind::Stream, "down"),
            Some(json!({"down": false}))
        );
        assert_eq!(
            Op::Enable.body(UpstreamKind::Http, "up"),
            Some(json!({"drain": false, "down": false}))
        );
        assert_eq!(
            Op::Disable.body(UpstreamKind::Http, "draining"),
            Some(json!({"down": true}))
        );
    }

    #[test]
    fn ids_parse() {
        let lb = NginxBalancer::builder()
            .instance("http://127.0.0.1:1/api")
            .upstream("backend")
            .build()
            .expect("valid");
        let p = |s: &str| lb.parse(&TargetId::new(s).expect("id"));
        assert_eq!(p("backend/3").map(|w| w.key).ok(), Some(ServerKey::Id(3)));
        assert_eq!(
            p("backend/10.0.0.5:8080").map(|w| w.key).ok(),
            Some(ServerKey::Address("10.0.0.5:8080".into()))
        );
        assert!(matches!(p("backend"), Err(Error::InvalidName { .. })));
        assert!(matches!(p("backend/"), Err(Error::InvalidName { .. })));
        assert!(matches!(p("other/1"), Err(Error::NotFound { .. })));
        assert!(matches!(
            p("backend/99999999999999999999999"),
            Err(Error::InvalidName { .. })
        ));
    }
}
