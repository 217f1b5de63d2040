//! [`NginxBalancer`]: the [`LoadBalancer`] over one or several NGINX Plus
//! instances.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::try_join_all;
use hygiene_core::{
    Capabilities, Error, ListedTarget, LoadBalancer, Result, Target, TargetId, TargetStatus,
};
use serde_json::{json, Value};

use crate::client::{Instance, Peer, UpstreamKind, UpstreamLive};
use crate::config::{HealthChecks, NginxBuilder, UpstreamRef};
use crate::error::{Ctx, NginxError};
use crate::status::{combine, peer_status};

/// Servers of NGINX Plus upstreams as one pool, over the REST API.
///
/// # Targets
/// A target id is `<upstream>/<server id>` (`backend/3`), the id nginx gives
/// the server; [`LoadBalancer::list`] returns that form. A server can also be
/// named by address, `backend/10.0.0.5:8080` (its resolved `name` or its
/// configured `server`); every server of the upstream with that address is
/// then concerned.
///
/// # Several instances
/// Every instance (an HA pair) holds the same upstreams. Server ids are read
/// on the first instance; on the others the server with the same address is
/// used, since their ids may differ. Mutations go to every instance; status
/// is in service only where in service on all, with connections summed (see
/// the rules in the crate docs). A server missing on one instance is
/// [`Error::NotFound`] naming that instance, and nothing is changed.
///
/// # Operations
/// | | http upstream | stream upstream |
/// |---|---|---|
/// | drain | `PATCH {"drain": true}` | `PATCH {"down": true}`: open connections run on; drained at `active == 0` |
/// | disable | `PATCH {"down": true}` | `PATCH {"down": true}` |
/// | enable | `PATCH {"drain": false, "down": false}` | `PATCH {"down": false}` |
///
/// Drain leaves a server that is already `down` alone (setting `drain` on it
/// would let sticky sessions back in). Every call first reads the upstreams
/// and resolves every id on every instance, so an unknown id fails the call
/// before any change.
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
    /// `(instance, upstream, peer id)` → `health_checks.checks` at enable.
    baselines: Mutex<HashMap<(usize, usize, u64), u64>>,
}

impl fmt::Debug for NginxBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NginxBalancer")
            .field("instances", &self.inner.instances)
            .field("upstreams", &self.inner.upstreams)
            .field("health", &self.inner.health)
            .field("poll", &self.inner.poll)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerKey {
    Id(u64),
    Address(String),
}

#[derive(Debug, Clone)]
struct Wanted {
    id: TargetId,
    up: usize,
    key: ServerKey,
}

/// Per instance: the live upstreams read for this call.
type Snapshot = Vec<HashMap<usize, UpstreamLive>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Drain,
    Disable,
    Enable,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Disable => "disable",
            Self::Enable => "enable",
        }
    }

    /// The PATCH body for a peer in `state`, or `None` to leave it alone.
    fn body(self, kind: UpstreamKind, state: &str) -> Option<Value> {
        match (self, kind) {
            (Self::Drain, _) if state == "down" => None,
            (Self::Drain, UpstreamKind::Http) => Some(json!({ "drain": true })),
            (Self::Drain | Self::Disable, _) => Some(json!({ "down": true })),
            (Self::Enable, UpstreamKind::Http) => Some(json!({ "drain": false, "down": false })),
            (Self::Enable, UpstreamKind::Stream) => Some(json!({ "down": false })),
        }
    }
}

impl NginxBalancer {
    /// A builder: `NginxBalancer::builder().instance(url).upstream("backend").build()`.
    pub fn builder() -> NginxBuilder {
        NginxBuilder::new()
    }

    pub(crate) fn from_parts(
        instances: Vec<Instance>,
        upstreams: Vec<UpstreamRef>,
        health: HealthChecks,
        poll: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                instances,
                upstreams,
                health,
                poll,
                baselines: Mutex::new(HashMap::new()),
            }),
        }
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

    /// Reads the given upstreams on every instance (instances in parallel).
    async fn snapshot(&self, ups: &BTreeSet<usize>) -> Result<Snapshot, NginxError> {
        let inner = &self.inner;
        try_join_all(inner.instances.iter().map(|inst| async move {
            let mut m = HashMap::new();
            for &u in ups {
                let r = &inner.upstreams[u];
                m.insert(u, inst.upstream(r.kind, &r.name).await?);
            }
            Ok::<_, NginxError>(m)
        }))
        .await
    }

    fn live<'a>(&self, snap: &'a Snapshot, i: usize, up: usize) -> &'a [Peer] {
        snap.get(i)
            .and_then(|m| m.get(&up))
            .map(|l| l.peers.as_slice())
            .unwrap_or_default()
    }

    /// The peers a target names, per instance (each non-empty).
    fn resolve<'a>(
        &self,
        snap: &'a Snapshot,
        w: &Wanted,
    ) -> Result<Vec<Vec<&'a Peer>>, NginxError> {
        let upstream = &self.inner.upstreams[w.up].name;
        let label = |i: usize| {
            self.inner
                .instances
                .get(i)
                .map(Instance::label)
                .unwrap_or_default()
        };
        let first: Vec<&Peer> = self
            .live(snap, 0, w.up)
            .iter()
            .filter(|p| match &w.key {
                ServerKey::Id(n) => p.id == *n,
                ServerKey::Address(a) => p.address() == a || p.server == *a,
            })
            .collect();
        if first.is_empty() {
            return Err(NginxError::UnknownTarget {
                id: w.id.to_string(),
                location: format!("nginx {} (upstream {upstream:?})", label(0)),
            });
        }
        let addrs: BTreeSet<&str> = first.iter().map(|p| p.address()).collect();
        let mut out = vec![first];
        for i in 1..self.inner.instances.len() {
            let peers: Vec<&Peer> = self
                .live(snap, i, w.up)
                .iter()
                .filter(|p| addrs.contains(p.address()))
                .collect();
            if peers.is_empty() {
                return Err(NginxError::UnknownTarget {
                    id: w.id.to_string(),
                    location: format!(
                        "nginx {} (upstream {upstream:?}; it is {addrs:?} on {}: the instances disagree)",
                        label(i),
                        label(0)
                    ),
                });
            }
            out.push(peers);
        }
        Ok(out)
    }

    fn status_of(&self, snap: &Snapshot, w: &Wanted) -> Result<TargetStatus> {
        let per_instance = self.resolve(snap, w)?;
        let mut views = Vec::new();
        let mut baselines = self
            .inner
            .baselines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (i, peers) in per_instance.iter().enumerate() {
            for p in peers {
                let key = (i, w.up, p.id);
                let v = peer_status(p, self.inner.health, baselines.get(&key).copied()).map_err(
                    |m| {
                        let ctx = Ctx::new(self.inner.instances[i].label(), "read peer state")
                            .upstream(&self.inner.upstreams[w.up].name);
                        Error::from(NginxError::Malformed { ctx, message: m })
                    },
                )?;
                if v.fresh {
                    baselines.remove(&key);
                }
                views.push(v.status);
            }
        }
        Ok(combine(&views))
    }

    async fn mutate(&self, ids: &[TargetId], op: Op) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let wanted = ids
            .iter()
            .map(|id| self.parse(id))
            .collect::<Result<Vec<_>>>()?;
        let ups = wanted.iter().map(|w| w.up).collect();
        let snap = self.snapshot(&ups).await?;
        let resolved = wanted
            .iter()
            .map(|w| self.resolve(&snap, w))
            .collect::<Result<Vec<_>, _>>()?;

        // Per instance: (upstream, peer id, body, target label), each peer once.
        let n = self.inner.instances.len();
        let mut plans: Vec<Vec<(usize, u64, Value, String)>> = vec![Vec::new(); n];
        let mut seen = BTreeSet::new();
        for (w, per_instance) in wanted.iter().zip(&resolved) {
            let kind = self.inner.upstreams[w.up].kind;
            for (i, peers) in per_instance.iter().enumerate() {
                for p in peers {
                    if !seen.insert((i, w.up, p.id)) {
                        continue;
                    }
                    let Some(body) = op.body(kind, &p.state) else {
                        tracing::debug!(target.id = %w.id, nginx.instance = self.inner.instances[i].label(), state = %p.state, "already out, left alone");
                        continue;
                    };
                    if op == Op::Enable
                        && self.inner.health == HealthChecks::Active
                        && p.state != "up"
                    {
                        // Recorded before the PATCH: no check counted so far may vouch for the server.
                        let checks = p.health_checks.map(|h| h.checks).unwrap_or(0);
                        self.inner
                            .baselines
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert((i, w.up, p.id), checks);
                    }
                    let label = format!(
                        "{}/{} ({}), asked as {}",
                        self.inner.upstreams[w.up].name,
                        p.id,
                        p.address(),
                        w.id
                    );
                    plans[i].push((w.up, p.id, body, label));
                }
            }
        }
        let inner = &self.inner;
        try_join_all(plans.iter().enumerate().map(|(i, plan)| async move {
            let inst = &inner.instances[i];
            for (up, peer, body, label) in plan {
                let r = &inner.upstreams[*up];
                let ctx = Ctx::new(inst.label(), op.name()).upstream(&r.name).server(label.clone());
                inst.patch_server(r.kind, &r.name, *peer, body, &ctx).await?;
                tracing::debug!(nginx.instance = inst.label(), upstream = %r.name, server.id = peer, op = op.name(), "patched");
            }
            Ok::<_, NginxError>(())
        }))
        .await?;
        Ok(())
    }
}

fn split_address(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && !host.starts_with("unix")).then(|| (host.to_owned(), port))
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
    }

    fn default_poll_interval(&self) -> Duration {
        self.inner.poll
    }

    fn enable_hint(&self, id: &TargetId) -> String {
        let Ok(w) = self.parse(id) else {
            return format!("re-enable {id} on {} once it is fixed", self.name());
        };
        let r = &self.inner.upstreams[w.up];
        let body = match r.kind {
            UpstreamKind::Http => r#"{"drain":false,"down":false}"#,
            UpstreamKind::Stream => r#"{"down":false}"#,
        };
        let server = match &w.key {
            ServerKey::Id(n) => n.to_string(),
            ServerKey::Address(a) => format!("<id of {a}>"),
        };
        let urls: Vec<String> = self
            .inner
            .instances
            .iter()
            .map(|i| {
                let v = i.known_version().unwrap_or(crate::client::MAX_API_VERSION);
                format!(
                    "{}/{v}/{}/upstreams/{}/servers/{server}",
                    i.label(),
                    r.kind,
                    r.name
                )
            })
            .collect();
        format!("once it is fixed, PATCH {body} (curl -X PATCH -H 'Content-Type: application/json' -d '{body}' URL) to each of: {}", urls.join(" "))
    }

    async fn list(&self) -> Result<Vec<ListedTarget>> {
        let ups: BTreeSet<usize> = (0..self.inner.upstreams.len()).collect();
        let snap = self.snapshot(&ups).await?;
        let mut out = Vec::new();
        for (u, r) in self.inner.upstreams.iter().enumerate() {
            for p in self.live(&snap, 0, u) {
                let id = TargetId::new(format!("{}/{}", r.name, p.id))?;
                let w = Wanted {
                    id: id.clone(),
                    up: u,
                    key: ServerKey::Id(p.id),
                };
                let status = self.status_of(&snap, &w)?;
                let mut target = Target::new(id)
                    .with_meta("upstream", r.name.clone())
                    .with_meta("protocol", r.kind.to_string())
                    .with_meta("server", p.server.clone());
                if let Some((host, port)) = split_address(p.address()) {
                    target = target.with_address(host).with_port(port);
                }
                if p.backup {
                    target = target.with_meta("backup", "true");
                }
                out.push(ListedTarget { target, status });
            }
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
        let ups = wanted.iter().map(|w| w.up).collect();
        let snap = self.snapshot(&ups).await?;
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
