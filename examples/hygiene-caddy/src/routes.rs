//! Caddy's JSON configuration as this backend sees it: the `reverse_proxy`
//! handlers wherever they sit (server routes, subroutes), their upstreams,
//! and the edits a drain and an enable make. Pure functions over
//! [`serde_json::Value`], tested without a server.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::HostMatch;

/// The `@id` of the handler that parks drained upstreams (see the crate
/// docs: it keeps Caddy counting their requests in flight).
pub const PARKED_ID: &str = "hygiene-parked";

/// Caddy's active health checker reports into its `upstreams_healthy`
/// gauge every 10 s from a handler's start (Caddy 2.6, fixed).
pub(crate) const GAUGE_PERIOD: Duration = Duration::from_secs(10);

/// One step of a path into the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A `reverse_proxy` handler found in the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    pub(crate) path: Vec<Seg>,
    /// Its `@id`, when it has one.
    pub(crate) id: Option<String>,
    /// The HTTP server (`apps.http.servers.<name>`) it is in.
    pub(crate) server: Option<String>,
    /// Its static upstreams, as written.
    pub(crate) upstreams: Vec<Value>,
    /// Its `health_checks.active` timeout, when active checks are set.
    pub(crate) active_timeout: Option<Duration>,
}

impl Handler {
    /// A JSON pointer (`/apps/http/servers/web/routes/0/handle/0`).
    pub(crate) fn pointer(&self) -> String {
        pointer(&self.path)
    }

    /// How an operator and the journal name it: `@id` when it has one.
    pub(crate) fn reference(&self) -> HandlerRef {
        HandlerRef {
            id: self.id.clone(),
            path: self.pointer(),
        }
    }

    pub(crate) fn is_parked(&self) -> bool {
        self.id.as_deref() == Some(PARKED_ID)
    }

    /// The dial addresses of its upstreams, in order.
    pub(crate) fn dials(&self) -> impl Iterator<Item = &str> {
        self.upstreams.iter().filter_map(dial_of)
    }
}

/// Where a handler is: its `@id` (found again wherever it moves) and its
/// path when it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerRef {
    /// The handler's `@id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// JSON pointer of the handler in the configuration.
    pub path: String,
}

impl std::fmt::Display for HandlerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "@id {id:?} ({})", self.path),
            None => f.write_str(&self.path),
        }
    }
}

/// An upstream as it was in a handler: enough to put it back exactly
/// where it was, with every option it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The handler it was in.
    pub handler: HandlerRef,
    /// Its index in the handler's `upstreams`.
    pub index: usize,
    /// The upstream object, verbatim (`dial`, `max_requests`, …).
    pub upstream: Value,
}

pub(crate) fn pointer(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        s.push('/');
        match seg {
            Seg::Key(k) => s.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Seg::Index(i) => s.push_str(&i.to_string()),
        }
    }
    s
}

pub(crate) fn dial_of(upstream: &Value) -> Option<&str> {
    upstream.get("dial").and_then(Value::as_str)
}

/// The host part of a dial address (`10.0.0.5:8080` → `10.0.0.5`,
/// `[::1]:80` → `::1`), for [`HostMatch::Address`].
pub(crate) fn host_of(dial: &str) -> &str {
    let dial = dial.strip_prefix("tcp/").unwrap_or(dial);
    if let Some(rest) = dial.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    dial.rsplit_once(':').map_or(dial, |(h, _)| h)
}

/// What identifies a host under `m`.
pub(crate) fn host_key(dial: &str, m: HostMatch) -> String {
    match m {
        HostMatch::AddressAndPort => dial.strip_prefix("tcp/").unwrap_or(dial).to_owned(),
        HostMatch::Address => host_of(dial).to_owned(),
    }
}

/// Whether `id` is a dial address this backend accepts as a target id:
/// `host:port` with a DNS name, an IPv4 address or a bracketed IPv6
/// address, and a port. Placeholders (`{…}`), unix sockets and port ranges
/// are refused: they do not name one host.
pub(crate) fn check_target_name(id: &str) -> Result<(), String> {
    let Some((host, port)) = id.rsplit_once(':') else {
        return Err("a Caddy target is an upstream's dial address, host:port".to_owned());
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()
    {
        return Err(format!("{port:?} is not a port number"));
    }
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty()
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name or address (placeholders, unix sockets and port ranges name no single host)"
        ))
    }
}

/// Every `reverse_proxy` handler of the configuration, in document order.
pub(crate) fn handlers(cfg: &Value) -> Vec<Handler> {
    let mut out = Vec::new();
    walk(cfg, &mut Vec::new(), &mut out);
    out
}

fn walk(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Handler>) {
    match v {
        Value::Object(o) => {
            if o.get("handler").and_then(Value::as_str) == Some("reverse_proxy") {
                out.push(handler_at(o, path));
                return;
            }
            for (k, child) in o {
                path.push(Seg::Key(k.clone()));
                walk(child, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                walk(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn handler_at(o: &Map<String, Value>, path: &[Seg]) -> Handler {
    let server = match path {
        [Seg::Key(a), Seg::Key(h), Seg::Key(s), Seg::Key(name), ..]
            if a == "apps" && h == "http" && s == "servers" =>
        {
            Some(name.clone())
        }
        _ => None,
    };
    let active = o
        .get("health_checks")
        .and_then(|h| h.get("active"))
        .filter(|a| a.is_object());
    Handler {
        path: path.to_vec(),
        id: o.get("@id").and_then(Value::as_str).map(str::to_owned),
        server,
        upstreams: o
            .get("upstreams")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        active_timeout: active.map(|a| {
            a.get("timeout")
                .map_or(Some(Duration::from_secs(5)), parse_duration)
                // An unreadable timeout: assume a long one (health waits more).
                .unwrap_or(Duration::from_secs(60))
        }),
    }
}

/// A Caddy duration: integer nanoseconds or a Go duration string
/// (`500ms`, `5s`, `1m30s`, `1.5s`).
pub(crate) fn parse_duration(v: &Value) -> Option<Duration> {
    if let Some(n) = v.as_u64() {
        return Some(Duration::from_nanos(n));
    }
    let s = v.as_str()?;
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// How long after a configuration change Caddy's gauge can show the result
/// of a health check made after it: the first gauge update after the
/// first check's own time limit, and a margin.
pub(crate) fn fresh_delay(active_timeout: Duration) -> Duration {
    let ticks = active_timeout.as_millis() / GAUGE_PERIOD.as_millis() + 1;
    GAUGE_PERIOD * u32::try_from(ticks).unwrap_or(u32::MAX) + Duration::from_millis(500)
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get_mut(k.as_str())?,
            Seg::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

fn upstreams_mut<'a>(cfg: &'a mut Value, h: &Handler) -> Option<&'a mut Vec<Value>> {
    get_mut(cfg, &h.path)?
        .get_mut("upstreams")
        .and_then(Value::as_array_mut)
}

/// Whether `r` names handler `h`.
fn names(r: &HandlerRef, h: &Handler) -> bool {
    match (&r.id, &h.id) {
        (Some(a), Some(b)) => a == b,
        (None, _) => r.path == h.pointer(),
        (Some(_), None) => false,
    }
}

/// The indices, in `h`'s original list, of the upstreams of `others`
/// that `h` does not hold now (still out), sorted.
fn still_out(h: &Handler, others: &[Placement]) -> Vec<usize> {
    let mut out: Vec<usize> = others
        .iter()
        .filter(|p| names(&p.handler, h))
        .filter(|p| !h.dials().any(|d| Some(d) == dial_of(&p.upstream)))
        .map(|p| p.index)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// An index in `h`'s list now → the index in its list with every
/// upstream still out back in.
fn to_original(i: usize, h: &Handler, others: &[Placement]) -> usize {
    let mut j = i;
    for r in still_out(h, others) {
        if r <= j {
            j += 1;
        }
    }
    j
}

/// The inverse of [`to_original`].
fn to_current(orig: usize, h: &Handler, others: &[Placement]) -> usize {
    orig - still_out(h, others).iter().filter(|&&r| r < orig).count()
}

/// Takes every upstream of host `key` out of every handler but the parked
/// one; returns where each was, as an index in the handler's list with
/// every upstream of `others` (the other hosts taken out) back in, so
/// that any order of put-backs rebuilds the list. A handler that would be
/// left with no upstream is refused (every request of its route would
/// fail), naming it, and `cfg` is then left unchanged.
pub(crate) fn remove_host(
    cfg: &mut Value,
    key: &str,
    m: HostMatch,
    others: &[Placement],
) -> Result<Vec<Placement>, String> {
    let mut removed = Vec::new();
    let all = handlers(cfg);
    for h in all.iter().filter(|h| !h.is_parked()) {
        let hits: Vec<usize> = h
            .upstreams
            .iter()
            .enumerate()
            .filter(|(_, u)| dial_of(u).is_some_and(|d| host_key(d, m) == key))
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            continue;
        }
        if hits.len() == h.upstreams.len() {
            return Err(format!(
                "taking {key} out would leave the reverse_proxy handler {} with no upstream, so every request of its route would fail; add another upstream to it first",
                h.reference()
            ));
        }
        for &i in &hits {
            removed.push(Placement {
                handler: h.reference(),
                index: to_original(i, h, others),
                upstream: h.upstreams[i].clone(),
            });
        }
    }
    for h in all.iter().filter(|h| !h.is_parked()) {
        if let Some(ups) = upstreams_mut(cfg, h) {
            ups.retain(|u| dial_of(u).is_none_or(|d| host_key(d, m) != key));
        }
    }
    Ok(removed)
}

/// The handler `r` names now: by `@id` when it has one, else by path (and
/// only if a `reverse_proxy` handler is still there).
pub(crate) fn find<'a>(all: &'a [Handler], r: &HandlerRef) -> Option<&'a Handler> {
    match &r.id {
        Some(id) => all.iter().find(|h| h.id.as_deref() == Some(id.as_str())),
        None => all.iter().find(|h| h.pointer() == r.path),
    }
}

/// Puts upstreams back where they were: at their index in the list with
/// every upstream of `others` (other hosts still out) back in, counted
/// down by those still out (or at the end of a handler that has since
/// shrunk); a handler that holds the address again is left alone. A
/// handler that is gone is refused, naming it and the upstream, and `cfg`
/// is then left unchanged.
pub(crate) fn restore(
    cfg: &mut Value,
    placements: &[Placement],
    others: &[Placement],
) -> Result<(), String> {
    let all = handlers(cfg);
    for p in placements {
        if find(&all, &p.handler).filter(|h| !h.is_parked()).is_none() {
            return Err(format!(
                "the reverse_proxy handler {} that held {} is gone from the configuration; put the upstream back by hand where it belongs",
                p.handler, p.upstream
            ));
        }
    }
    let mut sorted: Vec<&Placement> = placements.iter().collect();
    sorted.sort_by_key(|p| p.index);
    for p in sorted {
        // Read again: an earlier insert moved what follows it.
        let all = handlers(cfg);
        let Some(h) = find(&all, &p.handler).cloned() else {
            continue;
        };
        let dial = dial_of(&p.upstream);
        if h.dials().any(|d| Some(d) == dial) {
            continue;
        }
        let at = to_current(p.index, &h, others);
        let Some(ups) = upstreams_mut(cfg, &h) else {
            continue;
        };
        let at = at.min(ups.len());
        ups.insert(at, p.upstream.clone());
    }
    Ok(())
}

/// Adds `dials` to the parked handler (created, in a route that matches no
/// request, at the end of `server`'s routes, when there is none).
pub(crate) fn park(cfg: &mut Value, server: &str, dials: &[String]) -> Result<(), String> {
    if dials.is_empty() {
        return Ok(());
    }
    let all = handlers(cfg);
    if let Some(p) = all.iter().find(|h| h.is_parked()) {
        let ups = upstreams_mut(cfg, p).ok_or("the parked handler has no upstreams list")?;
        for d in dials {
            if !ups.iter().any(|u| dial_of(u) == Some(d.as_str())) {
                ups.push(json!({ "dial": d }));
            }
        }
        return Ok(());
    }
    let routes = cfg
        .pointer_mut(&format!("/apps/http/servers/{server}/routes"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("the HTTP server {server:?} has no routes list"))?;
    routes.push(json!({
        // `false` never matches: the route only keeps Caddy counting the
        // parked upstreams' requests in flight.
        "match": [{ "expression": "false" }],
        "handle": [{
            "@id": PARKED_ID,
            "handler": "reverse_proxy",
            "upstreams": dials.iter().map(|d| json!({ "dial": d })).collect::<Vec<_>>(),
        }],
    }));
    Ok(())
}

/// Removes `dials` from the parked handler, and its route once it is empty.
pub(crate) fn unpark(cfg: &mut Value, dials: &[String]) {
    let all = handlers(cfg);
    let Some(p) = all.iter().find(|h| h.is_parked()).cloned() else {
        return;
    };
    let empty = match upstreams_mut(cfg, &p) {
        Some(ups) => {
            ups.retain(|u| !dial_of(u).is_some_and(|d| dials.iter().any(|x| x == d)));
            ups.is_empty()
        }
        None => false,
    };
    if !empty {
        return;
    }
    // The route is two steps up: …/routes/<i>/handle/<j>.
    if let [parent @ .., Seg::Index(route), Seg::Key(handle), Seg::Index(_)] = p.path.as_slice() {
        if handle == "handle" {
            if let Some(routes) = get_mut(cfg, parent).and_then(Value::as_array_mut) {
                if *route < routes.len() {
                    routes.remove(*route);
                }
            }
        }
    }
}

/// The dial addresses parked now.
pub(crate) fn parked_dials(all: &[Handler]) -> Vec<String> {
    all.iter()
        .filter(|h| h.is_parked())
        .flat_map(|h| h.dials().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Value {
        json!({"apps": {"http": {"servers": {"web": {"routes": [
            {"handle": [{"@id": "web", "handler": "reverse_proxy",
                "health_checks": {"active": {"uri": "/", "timeout": "500ms"}},
                "upstreams": [{"dial": "10.0.0.1:80"}, {"dial": "10.0.0.2:80", "max_requests": 7}, {"dial": "10.0.0.3:80"}]}]},
            {"handle": [{"handler": "subroute", "routes": [{"handle": [{"handler": "reverse_proxy",
                "upstreams": [{"dial": "10.0.0.2:81"}, {"dial": "10.0.0.4:80"}]}]}]}]}
        ]}}}}})
    }

    #[test]
    fn finds_handlers_in_subroutes_with_their_server_and_checks() {
        let hs = handlers(&cfg());
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[0].id.as_deref(), Some("web"));
        assert_eq!(hs[0].server.as_deref(), Some("web"));
        assert_eq!(hs[0].active_timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            hs[1].pointer(),
            "/apps/http/servers/web/routes/1/handle/0/routes/0/handle/0"
        );
        assert_eq!(hs[1].active_timeout, None);
    }

    #[test]
    fn a_drained_host_goes_back_exactly_where_it_was() {
        let original = cfg();
        let mut c = original.clone();
        let removed = remove_host(&mut c, "10.0.0.2", HostMatch::Address, &[]).expect("removed");
        assert_eq!(removed.len(), 2, "from both handlers: {removed:?}");
        assert_eq!(removed[0].index, 1);
        assert_eq!(removed[0].upstream["max_requests"], 7);
        park(&mut c, "web", &["10.0.0.2:80".into(), "10.0.0.2:81".into()]).expect("parked");
        let hs = handlers(&c);
        assert_eq!(parked_dials(&hs), ["10.0.0.2:80", "10.0.0.2:81"]);
        assert!(!hs[0].dials().any(|d| d.starts_with("10.0.0.2")));
        restore(&mut c, &removed, &[]).expect("restored");
        unpark(&mut c, &["10.0.0.2:80".into(), "10.0.0.2:81".into()]);
        assert_eq!(c, original, "position, options and the parked route");
        // Idempotent: restoring again changes nothing.
        restore(&mut c, &removed, &[]).expect("restored");
        assert_eq!(c, original);
    }

    /// Hosts taken out one after the other and put back in any order
    /// end where they were.
    #[test]
    fn any_order_of_put_backs_rebuilds_the_list() {
        let original = cfg();
        let hm = HostMatch::AddressAndPort;
        for order in [
            [0, 1, 2],
            [2, 1, 0],
            [1, 0, 2],
            [1, 2, 0],
            [0, 2, 1],
            [2, 0, 1],
        ] {
            let mut c = original.clone();
            let keys = ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"];
            let mut out: Vec<Vec<Placement>> = Vec::new();
            // The last one would empty the handler: take out two.
            for k in &keys[..2] {
                let others: Vec<Placement> = out.iter().flatten().cloned().collect();
                out.push(remove_host(&mut c, k, hm, &others).expect("out"));
            }
            for &i in order.iter().filter(|&&i| i < 2) {
                let others: Vec<Placement> = out
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, p)| p.clone())
                    .collect();
                restore(&mut c, &out[i], &others).expect("back");
            }
            assert_eq!(c, original, "order {order:?}");
        }
    }

    #[test]
    fn address_and_port_takes_only_that_port() {
        let mut c = cfg();
        let removed =
            remove_host(&mut c, "10.0.0.2:80", HostMatch::AddressAndPort, &[]).expect("ok");
        assert_eq!(removed.len(), 1);
        assert!(handlers(&c)[1].dials().any(|d| d == "10.0.0.2:81"));
    }

    #[test]
    fn a_route_is_never_left_without_upstreams_and_nothing_changes() {
        let mut c = json!({"apps": {"http": {"servers": {"web": {"routes": [
            {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "10.0.0.9:80"}]}]}]}}}}});
        let before = c.clone();
        let e = remove_host(&mut c, "10.0.0.9:80", HostMatch::AddressAndPort, &[])
            .expect_err("refused");
        assert!(
            e.contains("/apps/http/servers/web/routes/0/handle/0"),
            "{e}"
        );
        assert_eq!(c, before);
    }

    #[test]
    fn a_gone_handler_is_refused_by_name() {
        let mut c = cfg();
        let p = Placement {
            handler: HandlerRef {
                id: Some("api".into()),
                path: "/x".into(),
            },
            index: 0,
            upstream: json!({"dial": "10.0.0.7:80"}),
        };
        let before = c.clone();
        let e = restore(&mut c, &[p], &[]).expect_err("refused");
        assert!(e.contains("\"api\"") && e.contains("10.0.0.7:80"), "{e}");
        assert_eq!(c, before);
    }

    #[test]
    fn target_names() {
        for ok in ["10.0.0.1:80", "web-1.internal:8080", "[::1]:443"] {
            assert!(check_target_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "{http.upstream}:80",
            "10.0.0.1:80-90",
            "unix//run/a.sock",
            ":80",
        ] {
            assert!(check_target_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_freshness() {
        assert_eq!(
            parse_duration(&json!("1m30s")),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration(&json!("500ms")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration(&json!(2_000_000_000u64)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse_duration(&json!("5 parsecs")), None);
        assert_eq!(
            fresh_delay(Duration::from_secs(5)),
            Duration::from_millis(10_500)
        );
        assert_eq!(
            fresh_delay(Duration::from_secs(12)),
            Duration::from_millis(20_500)
        );
    }
}
