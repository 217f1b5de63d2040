//! What one node says about its servers, and which of them are one host.

use crate::config::{HostMatch, HostScope};
use crate::parse::{ServerState, StatRow};

/// One server of one backend on one node.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) state: ServerState,
    pub(crate) stat: StatRow,
}

impl Entry {
    /// The server `track`s another one: its health is the tracked
    /// server's, and HAProxy refuses `set server … health` on it
    /// (`cannot change health on a tracking server.`).
    pub(crate) fn tracking(&self) -> bool {
        !self.stat.tracked.trim().is_empty() || self.state.inherits_maint()
    }

    /// HAProxy runs a health check of its own on this server (configured
    /// with `check` and not stopped by `disable health`). Without the
    /// `srv_check_state` column, judged from `show stat`.
    pub(crate) fn own_checks(&self) -> bool {
        self.state.checks_enabled().unwrap_or_else(|| {
            self.stat.status.trim() != "no check" && !self.stat.check_status.trim().is_empty()
        })
    }

    /// Some health check decides this server's health (its own or, when it
    /// tracks one, the tracked server's).
    pub(crate) fn checked(&self) -> bool {
        self.tracking() || self.own_checks()
    }
}

/// What one node says about its backends: the pool's first (in pool
/// order), then every other backend holding servers.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) node: String,
    pub(crate) backends: Vec<(String, Vec<Entry>)>,
    /// How many of `backends` are the pool's (the first ones).
    pub(crate) pool: usize,
    pub(crate) scope: HostScope,
    pub(crate) host_match: HostMatch,
}

/// A host: an address, and a port unless any port matches.
pub(crate) type Host = (String, Option<u16>);

/// One entry of a host: its backend, whether that backend is one of the
/// pool's, and the server.
pub(crate) type Part<'a> = (&'a str, bool, &'a Entry);

impl Snapshot {
    /// The host a server points to; `None` for a server without a usable
    /// address (unresolved, `0.0.0.0`), which only matches by name.
    pub(crate) fn host(&self, e: &Entry) -> Option<Host> {
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

    /// Pool server `backend/name`, and the servers of the same name in the
    /// other pool backends that point to the same host. Two servers of the
    /// same name at *different* addresses are different hosts
    /// (`server-template srv 1-3 …` in two backends names `srv1` in both);
    /// where either has no usable address, the name decides.
    fn named(&self, backend: &str, name: &str) -> Vec<Part<'_>> {
        let pool = &self.backends[..self.pool];
        let Some(anchor) = pool
            .iter()
            .find(|(b, _)| b == backend)
            .and_then(|(_, entries)| entries.iter().find(|e| e.state.server == name))
        else {
            return Vec::new();
        };
        let host = self.host(anchor);
        let mut out: Vec<Part<'_>> = Vec::new();
        for (b, entries) in pool {
            if b == backend {
                out.push((b.as_str(), true, anchor));
                continue;
            }
            if let Some(e) = entries.iter().find(|e| e.state.server == name) {
                let same = match (&host, self.host(e)) {
                    (Some(h), Some(o)) => *h == o,
                    _ => true,
                };
                if same {
                    out.push((b.as_str(), true, e));
                }
            }
        }
        out
    }

    /// The target `backend/name`: its entries in the pool (see `named`),
    /// plus every server with the same host in the backends the scope
    /// reaches (every backend by default). Pool order first.
    pub(crate) fn server(&self, backend: &str, name: &str) -> Vec<Part<'_>> {
        let mut out = self.named(backend, name);
        let hosts: Vec<Host> = out.iter().filter_map(|(_, _, e)| self.host(e)).collect();
        if hosts.is_empty() {
            return out;
        }
        let reach = match self.scope {
            HostScope::AllBackends => self.backends.len(),
            HostScope::PoolBackendsOnly => self.pool,
        };
        for (k, (b, entries)) in self.backends[..reach].iter().enumerate() {
            for e in entries {
                let known = out
                    .iter()
                    .any(|(ob, _, oe)| *ob == b.as_str() && oe.state.server == e.state.server);
                if !known && self.host(e).is_some_and(|h| hosts.contains(&h)) {
                    out.push((b.as_str(), k < self.pool, e));
                }
            }
        }
        out
    }

    /// `backend/server` of every server outside the pool's backends with
    /// the same host as the target `backend/name`, whatever the scope.
    pub(crate) fn others(&self, backend: &str, name: &str) -> Vec<String> {
        let hosts: Vec<Host> = self
            .named(backend, name)
            .iter()
            .filter_map(|(_, _, e)| self.host(e))
            .collect();
        self.backends[self.pool..]
            .iter()
            .flat_map(|(b, entries)| entries.iter().map(move |e| (b, e)))
            .filter(|(_, e)| self.host(e).is_some_and(|h| hosts.contains(&h)))
            .map(|(b, e)| format!("{b}/{}", e.state.server))
            .collect()
    }

    /// Pool backend `backend` holds server `server`.
    pub(crate) fn has(&self, backend: &str, server: &str) -> bool {
        self.backends[..self.pool]
            .iter()
            .any(|(b, entries)| b == backend && entries.iter().any(|e| e.state.server == server))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(admin_state: u32, op_state: u8, check_state: u32, tracked: &str) -> Entry {
        Entry {
            state: ServerState {
                backend: "web".into(),
                server: "s1".into(),
                addr: "127.0.0.1".into(),
                port: Some(80),
                op_state,
                admin_state,
                check_state: Some(check_state),
                agent_state: Some(0),
            },
            stat: StatRow {
                backend: "web".into(),
                server: "s1".into(),
                connections: 0,
                status: String::new(),
                check_status: String::new(),
                tracked: tracked.into(),
                addr: None,
                backup: false,
                weight: Some(1),
            },
        }
    }

    pub(crate) fn at(backend: &str, server: &str, addr: &str, port: u16) -> Entry {
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

    fn names(v: &[Part<'_>]) -> Vec<String> {
        v.iter()
            .map(|(b, _, e)| format!("{b}/{}", e.state.server))
            .collect()
    }

    #[test]
    fn a_host_is_matched_by_address_and_port_or_address_across_backends() {
        let s = snap(HostScope::AllBackends, HostMatch::AddressAndPort);
        assert_eq!(names(&s.server("web", "s1")), ["web/s1", "api/a1"]);
        assert_eq!(names(&s.server("web", "s2")), ["web/s2"]);
        let s = snap(HostScope::AllBackends, HostMatch::Address);
        assert_eq!(
            names(&s.server("web", "s1")),
            ["web/s1", "api/a1", "api/a1-admin"]
        );
        let s = snap(HostScope::PoolBackendsOnly, HostMatch::AddressAndPort);
        assert_eq!(names(&s.server("web", "s1")), ["web/s1"]);
        assert_eq!(
            s.others("web", "s1"),
            ["api/a1"],
            "named even when not drained"
        );
        // An unusable address never matches another server.
        let mut s = snap(HostScope::AllBackends, HostMatch::Address);
        s.backends[0].1[0].state.addr = "0.0.0.0".into();
        assert_eq!(names(&s.server("web", "s1")), ["web/s1"]);
    }

    #[test]
    fn same_name_at_another_address_is_another_host() {
        // `server-template srv 1-2` in two pool backends.
        let s = Snapshot {
            node: "lb-a".into(),
            backends: vec![
                (
                    "web".into(),
                    vec![
                        at("web", "srv1", "10.0.0.1", 80),
                        at("web", "srv2", "10.0.0.2", 80),
                    ],
                ),
                (
                    "api".into(),
                    vec![
                        at("api", "srv1", "10.0.1.1", 80),
                        at("api", "srv2", "10.0.0.2", 80),
                    ],
                ),
            ],
            pool: 2,
            scope: HostScope::AllBackends,
            host_match: HostMatch::AddressAndPort,
        };
        assert_eq!(names(&s.server("web", "srv1")), ["web/srv1"]);
        assert_eq!(names(&s.server("api", "srv1")), ["api/srv1"]);
        assert_eq!(names(&s.server("web", "srv2")), ["web/srv2", "api/srv2"]);
        assert!(s.server("web", "srv1").iter().all(|(_, pool, _)| *pool));
        // Without a usable address, the name still decides.
        let mut s = s;
        s.backends[1].1[0].state.addr = "0.0.0.0".into();
        assert_eq!(names(&s.server("web", "srv1")), ["web/srv1", "api/srv1"]);
    }
}
