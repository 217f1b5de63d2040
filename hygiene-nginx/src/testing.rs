//! A spec-faithful NGINX Plus API test server, for tests, examples and
//! benchmarks (feature `test-support`).
//!
//! [`FakeNginx`] is a stateful server on 127.0.0.1 built from the NGINX Plus
//! API specification (the upstream part): version list, http and stream
//! upstreams, servers GET and PATCH, peers with `state`, `active` and
//! `health_checks`. It rejects what the spec says the real server rejects.
//! The crate's integration tests check its replies against the spec's
//! schemas.
//!
//! ```no_run
//! use hygiene_nginx::testing::{FakeNginx, Kind, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let srv = FakeNginx::start(State::standard()).await;
//! srv.with(|s| s.auto_check = Some(true)); // every GET runs a passing check
//! let api = srv.url(); // http://127.0.0.1:…/api
//! // … run the balancer against `api` …
//! assert!(!srv.peer(Kind::Http, "backend", 0).drain);
//! # let _ = api;
//! # }
//! ```

// Handlers answer errors as ready-made responses, the axum way.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

/// Health as the active health checks see a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hs {
    /// Passing its checks (`up`).
    Up,
    /// Under `health_check … mandatory`, not checked yet (`checking`): at
    /// start, after a reload (unless `persistent` and healthy before), and
    /// for servers added through the API or DNS.
    Checking,
    /// Failing its checks (`unhealthy`).
    Unhealthy,
    /// Unavailable after `max_fails` failed attempts (`unavail`).
    Unavail,
}

/// The `health_checks` counters of a peer (a peer of an upstream with an
/// active `health_check`), and the parameters of that `health_check`.
///
/// The model follows ngx_http_upstream_hc_module: `fails=` consecutive
/// failed checks make an `up` server `unhealthy`, `passes=` consecutive
/// passed checks make an `unhealthy` one `up` (both 1 by default). In
/// between the state stays, so a server can read `up` with
/// `last_passed: false`, or `unhealthy` with `last_passed: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hc {
    /// Checks made.
    pub checks: u64,
    /// Checks failed.
    pub fails: u64,
    /// Times the peer became unhealthy.
    pub unhealthy: u64,
    /// Whether the last check passed (`None`: no check yet).
    pub last_passed: Option<bool>,
    /// `health_check … mandatory`: after a reload ([`State::reload`]) a peer
    /// is `checking` until its first check completes. Turning `down` off
    /// through the API does **not** make it `checking`.
    pub mandatory: bool,
    /// `health_check … mandatory persistent`: a peer healthy before a
    /// reload stays `up` after it.
    pub persistent: bool,
    /// `fails=`: consecutive failed checks that make a server unhealthy.
    pub fails_needed: u32,
    /// `passes=`: consecutive passed checks that make a server healthy.
    pub passes_needed: u32,
    /// Consecutive failed checks so far.
    pub fail_run: u32,
    /// Consecutive passed checks so far.
    pub pass_run: u32,
}

impl Default for Hc {
    fn default() -> Self {
        Self {
            checks: 0,
            fails: 0,
            unhealthy: 0,
            last_passed: None,
            mandatory: false,
            persistent: false,
            fails_needed: 1,
            passes_needed: 1,
            fail_run: 0,
            pass_run: 0,
        }
    }
}

/// One server of an upstream, as nginx numbers and configures it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The server id (`…/servers/{id}`).
    pub id: u64,
    /// Its address (`10.0.0.1:8080`): the API's `server`.
    pub server: String,
    /// What the `server` directive says, when it differs from the address
    /// (a hostname resolving to several addresses gives several peers of
    /// the same `name`); the API's `name` (`server` when `None`).
    pub name: Option<String>,
    /// A backup server.
    pub backup: bool,
    /// `weight`.
    pub weight: i64,
    /// `max_conns` (0: no limit).
    pub max_conns: i64,
    /// `max_fails`.
    pub max_fails: i64,
    /// `fail_timeout` (`10s`).
    pub fail_timeout: String,
    /// `slow_start` (`0s`).
    pub slow_start: String,
    /// `route` (http only).
    pub route: String,
    /// Marked `down`.
    pub down: bool,
    /// Marked `drain` (http only).
    pub drain: bool,
    /// Active connections.
    pub active: u64,
    /// `active` values handed out one per observation (GET of the upstream).
    pub active_script: VecDeque<u64>,
    /// Health as the active checks see it.
    pub health: Hs,
    /// Health check counters (`None`: the upstream has no `health_check`).
    pub hc: Option<Hc>,
}

impl Peer {
    /// A healthy peer in service with default parameters, 3 checks passed.
    pub fn new(id: u64, server: &str) -> Self {
        Self {
            id,
            server: server.into(),
            name: None,
            backup: false,
            weight: 1,
            max_conns: 0,
            max_fails: 1,
            fail_timeout: "10s".into(),
            slow_start: "0s".into(),
            route: String::new(),
            down: false,
            drain: false,
            active: 0,
            active_script: VecDeque::new(),
            health: Hs::Up,
            hc: Some(Hc {
                checks: 3,
                last_passed: Some(true),
                ..Hc::default()
            }),
        }
    }

    /// The `state` the API reports: `down`, `draining` (http), or the health.
    pub fn state(&self, kind: Kind) -> &'static str {
        if self.down {
            "down"
        } else if self.drain && kind == Kind::Http {
            "draining"
        } else {
            match self.health {
                Hs::Up => "up",
                Hs::Checking => "checking",
                Hs::Unhealthy => "unhealthy",
                Hs::Unavail => "unavail",
            }
        }
    }

    fn live_json(&self, kind: Kind) -> Value {
        let mut v = json!({
            "id": self.id,
            "server": self.server,
            "name": self.name.as_deref().unwrap_or(&self.server),
            "backup": self.backup,
            "weight": self.weight,
            "state": self.state(kind),
            "active": self.active,
            "sent": 0,
            "received": 0,
            "fails": self.hc.map(|h| h.fails).unwrap_or(0),
            "unavail": 0,
            "downtime": 0,
        });
        let m = v.as_object_mut().expect("object");
        match kind {
            Kind::Http => {
                m.insert("requests".into(), json!(0));
                m.insert(
                    "responses".into(),
                    json!({"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "codes": {}, "total": 0}),
                );
            }
            Kind::Stream => {
                m.insert("connections".into(), json!(0));
            }
        }
        if self.max_conns > 0 {
            m.insert("max_conns".into(), json!(self.max_conns));
        }
        if self.down {
            m.insert("downstart".into(), json!("2026-11-26T19:00:00.000Z"));
        }
        if let Some(h) = self.hc {
            let mut o = json!({"checks": h.checks, "fails": h.fails, "unhealthy": h.unhealthy});
            if let Some(p) = h.last_passed {
                o["last_passed"] = json!(p);
            }
            m.insert("health_checks".into(), o);
        }
        v
    }

    fn conf_json(&self, kind: Kind) -> Value {
        let mut v = json!({
            "id": self.id,
            "server": self.server,
            "weight": self.weight,
            "max_conns": self.max_conns,
            "max_fails": self.max_fails,
            "fail_timeout": self.fail_timeout,
            "slow_start": self.slow_start,
            "backup": self.backup,
            "down": self.down,
        });
        if kind == Kind::Http {
            v["route"] = json!(self.route);
            if self.drain {
                v["drain"] = json!(true);
            }
        }
        v
    }
}

/// The kind of an upstream (`/http/upstreams/` or `/stream/upstreams/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An http upstream.
    Http,
    /// A stream (TCP/UDP) upstream.
    Stream,
}

/// An upstream and its servers.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `false`: a static upstream (no `zone`).
    pub zone: bool,
    /// Its servers.
    pub peers: Vec<Peer>,
}

/// A request the server received (after the injected replies and the auth
/// check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The method (`GET`, `PATCH`).
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The body, JSON object keys sorted (see [`FakeNginx::patches`]).
    pub body: String,
}

/// A reply to give to a coming request instead of serving it.
#[derive(Debug, Clone)]
pub struct Injected {
    /// Only for requests of this method (`None`: any).
    pub method: Option<&'static str>,
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// Everything the server knows and does; change it through
/// [`FakeNginx::with`].
#[derive(Debug)]
pub struct State {
    /// The API versions served (`/api/`).
    pub versions: Vec<u32>,
    /// `api write=on`: PATCH allowed (otherwise `MethodDisabled`).
    pub write: bool,
    /// Expected `Authorization` header value.
    pub auth: Option<String>,
    /// The upstreams by kind and name.
    pub upstreams: BTreeMap<(Kind, String), Upstream>,
    /// Every request served, in order.
    pub log: Vec<Logged>,
    /// Replies to give instead of serving, first first.
    pub inject: VecDeque<Injected>,
    /// Time to wait before answering each request.
    pub delay: Duration,
    /// Each GET of an upstream first runs a health check round with this
    /// result (a model of periodic checks that needs no clock).
    pub auto_check: Option<bool>,
    /// Servers (addresses) whose health checks fail.
    pub sick: Vec<String>,
    /// Counter behind the `request_id` of error replies.
    pub next_request: u64,
    /// Reload (with renumbering, see [`State::reload`]) right before the
    /// next PATCH is applied: a reload racing a change.
    pub reload_before_patch: bool,
}

impl State {
    /// http `backend` (3 peers, health checks), stream `tcp` (2 peers),
    /// http `nohc` (no health checks), static http `legacy`.
    pub fn standard() -> Self {
        let mut upstreams = BTreeMap::new();
        let peers = |base: &str, n: u64, port: u16| {
            (0..n)
                .map(|i| Peer::new(i, &format!("{base}.{}:{port}", i + 1)))
                .collect::<Vec<_>>()
        };
        upstreams.insert(
            (Kind::Http, "backend".into()),
            Upstream {
                zone: true,
                peers: peers("10.0.0", 3, 8080),
            },
        );
        upstreams.insert(
            (Kind::Stream, "tcp".into()),
            Upstream {
                zone: true,
                peers: peers("10.0.1", 2, 5432),
            },
        );
        let mut nohc = peers("10.0.2", 2, 80);
        for p in &mut nohc {
            p.hc = None;
        }
        upstreams.insert(
            (Kind::Http, "nohc".into()),
            Upstream {
                zone: true,
                peers: nohc,
            },
        );
        upstreams.insert(
            (Kind::Http, "legacy".into()),
            Upstream {
                zone: false,
                peers: peers("10.0.3", 1, 80),
            },
        );
        Self {
            versions: (1..=9).collect(),
            write: true,
            auth: None,
            upstreams,
            log: Vec::new(),
            inject: VecDeque::new(),
            delay: Duration::ZERO,
            auto_check: None,
            sick: Vec::new(),
            next_request: 0,
            reload_before_patch: false,
        }
    }

    /// The upstream; panics when there is none of that kind and name.
    pub fn upstream_mut(&mut self, kind: Kind, name: &str) -> &mut Upstream {
        self.upstreams
            .get_mut(&(kind, name.to_owned()))
            .expect("known upstream")
    }

    /// A peer of an upstream; panics when there is no such peer.
    pub fn peer_mut(&mut self, kind: Kind, upstream: &str, id: u64) -> &mut Peer {
        self.upstream_mut(kind, upstream)
            .peers
            .iter_mut()
            .find(|p| p.id == id)
            .expect("known peer")
    }

    /// One health check of every peer that is not down, with the
    /// `fails=` / `passes=` rules of [`Hc`].
    pub fn check_round(&mut self, kind: Kind, upstream: &str, pass: bool) {
        let sick = self.sick.clone();
        for p in &mut self.upstream_mut(kind, upstream).peers {
            if p.down {
                continue;
            }
            let pass = pass && !sick.contains(&p.server);
            let Some(h) = p.hc.as_mut() else { continue };
            h.checks += 1;
            h.last_passed = Some(pass);
            if pass {
                h.pass_run += 1;
                h.fail_run = 0;
                let healthy = match p.health {
                    // The first completed check ends `checking`.
                    Hs::Checking => true,
                    Hs::Up => true,
                    Hs::Unhealthy | Hs::Unavail => h.pass_run >= h.passes_needed,
                };
                if healthy {
                    p.health = Hs::Up;
                }
            } else {
                h.fails += 1;
                h.fail_run += 1;
                h.pass_run = 0;
                let sick = match p.health {
                    Hs::Checking | Hs::Unavail => true,
                    Hs::Up => h.fail_run >= h.fails_needed,
                    Hs::Unhealthy => false,
                };
                if sick {
                    h.unhealthy += 1;
                    p.health = Hs::Unhealthy;
                }
            }
        }
    }

    /// A configuration reload: API changes are forgotten (`drain` and
    /// `down` go back to the configuration, here off), health restarts
    /// (`checking` under `mandatory`, unless `persistent` and `up` before;
    /// else `up`), and with `renumber` the server ids change (reversed, so
    /// an old id names another server).
    pub fn reload(&mut self, renumber: bool) {
        for u in self.upstreams.values_mut() {
            let n = u.peers.len() as u64;
            for (i, p) in u.peers.iter_mut().enumerate() {
                p.down = false;
                p.drain = false;
                p.active_script.clear();
                if renumber {
                    p.id = n - 1 - i as u64;
                }
                let keep_up = p.hc.is_some_and(|h| h.persistent) && p.health == Hs::Up;
                p.health = match p.hc.as_mut() {
                    Some(h) if h.mandatory && !keep_up => {
                        h.fail_run = 0;
                        h.pass_run = 0;
                        Hs::Checking
                    }
                    _ => Hs::Up,
                };
            }
        }
    }

    fn request_id(&mut self) -> String {
        self.next_request += 1;
        format!(
            "{:032x}",
            self.next_request.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The nginx error body: `{"error":{"status","text","code"},"request_id","href"}`.
fn err(st: &Shared, status: StatusCode, code: &str, text: impl Into<String>) -> Response {
    let rid = lock(st).request_id();
    let body = json!({
        "error": {"status": status.as_u16(), "text": text.into(), "code": code},
        "request_id": rid,
        "href": "https://nginx.org/en/docs/http/ngx_http_api_module.html",
    });
    (status, Json(body)).into_response()
}

fn check_version(st: &Shared, v: &str) -> Result<(), Response> {
    let ok = v
        .parse::<u32>()
        .is_ok_and(|v| lock(st).versions.contains(&v));
    if ok {
        Ok(())
    } else {
        Err(err(
            st,
            StatusCode::NOT_FOUND,
            "UnknownVersion",
            "unknown version",
        ))
    }
}

fn kind_of(st: &Shared, k: &str) -> Result<Kind, Response> {
    match k {
        "http" => Ok(Kind::Http),
        "stream" => Ok(Kind::Stream),
        _ => Err(err(
            st,
            StatusCode::NOT_FOUND,
            "PathNotFound",
            "path not found",
        )),
    }
}

/// Looks the upstream up: 404 `UpstreamNotFound`, 400 `UpstreamStatic`.
fn with_upstream<T>(
    st: &Shared,
    kind: Kind,
    name: &str,
    f: impl FnOnce(&mut State, Kind) -> T,
) -> Result<T, Response> {
    let zone = lock(st)
        .upstreams
        .get(&(kind, name.to_owned()))
        .map(|u| u.zone);
    match zone {
        None => Err(err(
            st,
            StatusCode::NOT_FOUND,
            "UpstreamNotFound",
            "upstream not found",
        )),
        Some(false) => Err(err(
            st,
            StatusCode::BAD_REQUEST,
            "UpstreamStatic",
            "upstream is static",
        )),
        Some(true) => Ok(f(&mut lock(st), kind)),
    }
}

fn observe(state: &mut State, kind: Kind, name: &str) -> Value {
    if let Some(pass) = state.auto_check {
        state.check_round(kind, name, pass);
    }
    let up = state.upstream_mut(kind, name);
    for p in &mut up.peers {
        // Only connections to a server that gets no new ones wind down.
        if !(p.drain || p.down) {
            continue;
        }
        if let Some(a) = p.active_script.pop_front() {
            p.active = a;
        }
    }
    let peers: Vec<Value> = up.peers.iter().map(|p| p.live_json(kind)).collect();
    let mut v = json!({"peers": peers, "zombies": 0, "zone": name});
    if kind == Kind::Http {
        v["keepalive"] = json!(0);
    }
    v
}

async fn versions(AxState(st): AxState<Shared>) -> Response {
    Json(lock(&st).versions.clone()).into_response()
}

async fn root(AxState(st): AxState<Shared>, Path(v): Path<String>) -> Response {
    if let Err(r) = check_version(&st, &v) {
        return r;
    }
    Json(json!([
        "nginx",
        "processes",
        "connections",
        "slabs",
        "http",
        "stream",
        "resolvers",
        "ssl",
        "workers"
    ]))
    .into_response()
}

async fn upstreams(AxState(st): AxState<Shared>, Path((v, k)): Path<(String, String)>) -> Response {
    let kind = match check_version(&st, &v).and_then(|()| kind_of(&st, &k)) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let mut s = lock(&st);
    let names: Vec<String> = s
        .upstreams
        .iter()
        .filter(|((kk, _), u)| *kk == kind && u.zone)
        .map(|((_, n), _)| n.clone())
        .collect();
    let map: Map<String, Value> = names
        .into_iter()
        .map(|n| (n.clone(), observe(&mut s, kind, &n)))
        .collect();
    Json(Value::Object(map)).into_response()
}

async fn upstream(
    AxState(st): AxState<Shared>,
    Path((v, k, u)): Path<(String, String, String)>,
) -> Response {
    let kind = match check_version(&st, &v).and_then(|()| kind_of(&st, &k)) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match with_upstream(&st, kind, &u, |s, kind| observe(s, kind, &u)) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn servers(
    AxState(st): AxState<Shared>,
    Path((v, k, u)): Path<(String, String, String)>,
) -> Response {
    let kind = match check_version(&st, &v).and_then(|()| kind_of(&st, &k)) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match with_upstream(&st, kind, &u, |s, kind| {
        s.upstream_mut(kind, &u)
            .peers
            .iter()
            .map(|p| p.conf_json(kind))
            .collect::<Vec<_>>()
    }) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn server_get(
    AxState(st): AxState<Shared>,
    Path((v, k, u, id)): Path<(String, String, String, String)>,
) -> Response {
    server_op(&st, &v, &k, &u, &id, None)
}

async fn server_patch(
    AxState(st): AxState<Shared>,
    Path((v, k, u, id)): Path<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    server_op(&st, &v, &k, &u, &id, Some(&body))
}

fn server_op(st: &Shared, v: &str, k: &str, u: &str, id: &str, patch: Option<&[u8]>) -> Response {
    let kind = match check_version(st, v).and_then(|()| kind_of(st, k)) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if patch.is_some() && !lock(st).write {
        return err(
            st,
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodDisabled",
            "method disabled",
        );
    }
    if let Err(r) = with_upstream(st, kind, u, |_, _| ()) {
        return r;
    }
    let Ok(id) = id.parse::<u64>() else {
        return err(
            st,
            StatusCode::BAD_REQUEST,
            "UpstreamBadServerId",
            "invalid server id",
        );
    };
    if !lock(st)
        .upstream_mut(kind, u)
        .peers
        .iter()
        .any(|p| p.id == id)
    {
        return err(
            st,
            StatusCode::NOT_FOUND,
            "UpstreamServerNotFound",
            format!("server with ID \"{id}\" does not exist"),
        );
    }
    if let Some(body) = patch {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
            return err(
                st,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "JsonError",
                "json error",
            );
        };
        if let Err((code, text)) = validate_patch(kind, &fields) {
            return err(st, StatusCode::BAD_REQUEST, code, text);
        }
        let mut s = lock(st);
        if std::mem::take(&mut s.reload_before_patch) {
            s.reload(true);
        }
        let Some(p) = s
            .upstream_mut(kind, u)
            .peers
            .iter_mut()
            .find(|p| p.id == id)
        else {
            drop(s);
            return err(
                st,
                StatusCode::NOT_FOUND,
                "UpstreamServerNotFound",
                format!("server with ID \"{id}\" does not exist"),
            );
        };
        apply_patch(p, &fields);
    }
    let conf = lock(st).peer_mut(kind, u, id).conf_json(kind);
    Json(conf).into_response()
}

/// What the spec says a PATCH may hold: `id`, `backup`, `service` cannot be
/// changed; stream servers have no `drain` and no `route`.
fn validate_patch(kind: Kind, fields: &Map<String, Value>) -> Result<(), (&'static str, String)> {
    for (k, v) in fields {
        if v.is_object() || v.is_array() {
            return Err(("UpstreamConfFormatError", "nested object or list".into()));
        }
        let ok = match (kind, k.as_str()) {
            (_, "down") | (Kind::Http, "drain") => v.is_boolean(),
            (_, "weight" | "max_conns" | "max_fails") => v.is_i64(),
            (_, "server" | "fail_timeout" | "slow_start") | (Kind::Http, "route") => v.is_string(),
            _ => {
                return Err((
                    "UpstreamConfFormatError",
                    format!("unknown parameter \"{k}\""),
                ))
            }
        };
        if !ok {
            return Err(("UpstreamConfFormatError", format!("invalid \"{k}\" value")));
        }
    }
    Ok(())
}

fn apply_patch(p: &mut Peer, fields: &Map<String, Value>) {
    for (k, v) in fields {
        match k.as_str() {
            // No `checking` here: the docs give that state to servers at
            // start, after a reload and when added through the API or DNS,
            // not to a server whose `down` is turned off.
            "down" => p.down = v.as_bool().unwrap_or(p.down),
            "drain" => p.drain = v.as_bool().unwrap_or(p.drain),
            "weight" => p.weight = v.as_i64().unwrap_or(p.weight),
            "max_conns" => p.max_conns = v.as_i64().unwrap_or(p.max_conns),
            "max_fails" => p.max_fails = v.as_i64().unwrap_or(p.max_fails),
            "server" => p.server = v.as_str().unwrap_or_default().to_owned(),
            "fail_timeout" => p.fail_timeout = v.as_str().unwrap_or_default().to_owned(),
            "slow_start" => p.slow_start = v.as_str().unwrap_or_default().to_owned(),
            "route" => p.route = v.as_str().unwrap_or_default().to_owned(),
            _ => {}
        }
    }
}

/// Delay, injected replies, basic auth, request log — in that order.
async fn front(AxState(st): AxState<Shared>, req: Request, next: Next) -> Response {
    let delay = lock(&st).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let injected = {
        let mut s = lock(&st);
        let m = req.method().as_str().to_owned();
        let at = s
            .inject
            .iter()
            .position(|i| i.method.is_none_or(|x| x == m));
        at.and_then(|at| s.inject.remove(at))
    };
    if let Some(i) = injected {
        let status = StatusCode::from_u16(i.status).expect("valid status");
        return (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(i.content_type),
            )],
            i.body,
        )
            .into_response();
    }
    let expected = lock(&st).auth.clone();
    if let Some(want) = expected {
        let got = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        if got != Some(want.as_str()) {
            // nginx's auth_basic answers with an HTML page, not the API's JSON.
            let page = "<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n<center><h1>401 Authorization Required</h1></center>\r\n</body>\r\n</html>\r\n";
            return (
                StatusCode::UNAUTHORIZED,
                [
                    (header::CONTENT_TYPE, "text/html"),
                    (header::WWW_AUTHENTICATE, "Basic realm=\"api\""),
                ],
                page,
            )
                .into_response();
        }
    }
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, 1 << 20).await.unwrap_or_default();
    lock(&st).log.push(Logged {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        body: canonical_json(&bytes),
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A logged body with JSON object keys sorted, so tests can compare it as
/// text whatever order the client wrote the keys in (serde_json keeps
/// insertion order when another crate of the workspace turns on its
/// `preserve_order` feature). Non-JSON bodies are kept as they are.
fn canonical_json(bytes: &[u8]) -> String {
    match serde_json::from_slice::<std::collections::BTreeMap<String, serde_json::Value>>(bytes) {
        Ok(map) => serde_json::to_string(&map).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Every (method, spec path) the router serves, for the spec check.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/http/upstreams/"),
    ("get", "/http/upstreams/{httpUpstreamName}/"),
    ("get", "/http/upstreams/{httpUpstreamName}/servers/"),
    (
        "get",
        "/http/upstreams/{httpUpstreamName}/servers/{httpUpstreamServerId}",
    ),
    (
        "patch",
        "/http/upstreams/{httpUpstreamName}/servers/{httpUpstreamServerId}",
    ),
    ("get", "/stream/upstreams/"),
    ("get", "/stream/upstreams/{streamUpstreamName}/"),
    ("get", "/stream/upstreams/{streamUpstreamName}/servers/"),
    (
        "get",
        "/stream/upstreams/{streamUpstreamName}/servers/{streamUpstreamServerId}",
    ),
    (
        "patch",
        "/stream/upstreams/{streamUpstreamName}/servers/{streamUpstreamServerId}",
    ),
];

fn router(st: Shared) -> Router {
    let fallback_state = st.clone();
    Router::new()
        .route("/api", get(versions))
        .route("/api/", get(versions))
        .route("/api/{v}/", get(root))
        .route("/api/{v}/{k}/upstreams/", get(upstreams))
        .route("/api/{v}/{k}/upstreams/{u}", get(upstream))
        .route("/api/{v}/{k}/upstreams/{u}/", get(upstream))
        .route("/api/{v}/{k}/upstreams/{u}/servers", get(servers))
        .route("/api/{v}/{k}/upstreams/{u}/servers/", get(servers))
        .route(
            "/api/{v}/{k}/upstreams/{u}/servers/{id}",
            get(server_get).patch(server_patch),
        )
        .fallback(move |m: Method| {
            let st = fallback_state.clone();
            async move {
                if m == Method::GET || m == Method::PATCH {
                    err(&st, StatusCode::NOT_FOUND, "PathNotFound", "path not found")
                } else {
                    err(
                        &st,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotSupported",
                        "method not supported",
                    )
                }
            }
        })
        .layer(middleware::from_fn_with_state(st.clone(), front))
        .with_state(st)
}

/// A running test server on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct FakeNginx {
    /// The server's state, shared with its handlers.
    pub state: Arc<Mutex<State>>,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `http`, or `https` when started by [`FakeNginx::start_with`].
    pub scheme: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNginx {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeNginx {
    /// Starts the server on an ephemeral port of 127.0.0.1, on the current
    /// tokio runtime; panics when it cannot bind.
    pub async fn start(state: State) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(state));
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            state,
            addr,
            scheme: "http",
            task,
        }
    }

    /// Starts the server on a listener of the caller's (a TLS one, say)
    /// that listens on `addr`; the URL scheme is `https`.
    pub async fn start_with<L>(state: State, listener: L, addr: SocketAddr) -> Self
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let state = Arc::new(Mutex::new(state));
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            state,
            addr,
            scheme: "https",
            task,
        }
    }

    /// The API URL: `http://127.0.0.1:<port>/api`.
    pub fn url(&self) -> String {
        format!("{}://{}/api", self.scheme, self.addr)
    }

    /// Runs `f` on the state, under its lock.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut lock(&self.state))
    }

    /// A copy of a peer as it is now; panics when there is no such peer.
    pub fn peer(&self, kind: Kind, upstream: &str, id: u64) -> Peer {
        self.with(|s| s.peer_mut(kind, upstream, id).clone())
    }

    /// The PATCH requests received, in order.
    pub fn patches(&self) -> Vec<Logged> {
        self.with(|s| {
            s.log
                .iter()
                .filter(|l| l.method == "PATCH")
                .cloned()
                .collect()
        })
    }

    /// Forgets the requests received so far.
    pub fn clear_log(&self) {
        self.with(|s| s.log.clear());
    }

    /// The next request (of `method`, if given) gets this reply instead.
    pub fn inject(
        &self,
        method: Option<&'static str>,
        status: u16,
        content_type: &'static str,
        body: &str,
    ) {
        self.with(|s| {
            s.inject.push_back(Injected {
                method,
                status,
                content_type,
                body: body.into(),
            })
        });
    }

    /// An nginx JSON error body.
    pub fn error_body(status: u16, code: &str) -> String {
        json!({"error": {"status": status, "text": "injected", "code": code}, "request_id": "00ff", "href": "https://nginx.org/"}).to_string()
    }
}
