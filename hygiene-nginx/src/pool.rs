//! The live upstreams of every instance (one read per instance and
//! upstream kind) and the resolution of a target id to the pool entries of
//! its host.
//!
//! A target is a host: the maintenance takes the whole host down, so every
//! upstream entry (http or stream, any port) whose `server` address is on
//! that host is part of it. Entries are keyed by `server`, the peer's
//! address, never by `name`: the spec says `name` is what the `server`
//! directive says, so a hostname resolving to several addresses gives
//! several peers of one `name`.

use std::collections::{BTreeMap, BTreeSet};

use crate::client::{Peer, UpstreamKind, UpstreamLive};

/// One instance's upstreams, by kind and name.
pub(crate) type Upstreams = BTreeMap<(UpstreamKind, String), UpstreamLive>;

/// Per instance: the live upstreams read for this call.
pub(crate) type Snapshot = Vec<Upstreams>;

/// A server as the target id gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerKey {
    /// nginx's id of the server in the named upstream, on the first instance.
    Id(u64),
    /// Its address (`10.0.0.5:8080`) or its host alone (`10.0.0.5`).
    Address(String),
}

/// One pool entry of a target's host: a peer of one upstream on one
/// instance.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    pub(crate) inst: usize,
    pub(crate) kind: UpstreamKind,
    pub(crate) upstream: &'a str,
    pub(crate) peer: &'a Peer,
}

impl Entry<'_> {
    /// What identifies this entry across reloads (ids do not survive one).
    pub(crate) fn key(&self) -> EntryKey {
        (
            self.inst,
            self.kind,
            self.upstream.to_owned(),
            self.peer.server.clone(),
        )
    }

    /// `backend/3 (10.0.0.1:8080)`, for messages.
    pub(crate) fn label(&self) -> String {
        format!("{}/{} ({})", self.upstream, self.peer.id, self.peer.server)
    }
}

/// `(instance, kind, upstream, server address)`.
pub(crate) type EntryKey = (usize, UpstreamKind, String, String);

/// The host part of a `server` address: `10.0.0.1` of `10.0.0.1:8080`,
/// `::1` of `[::1]:443`; a unix socket is its own host.
pub(crate) fn host_of(server: &str) -> &str {
    if server.starts_with("unix:") {
        return server;
    }
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    if server.matches(':').count() > 1 {
        // A bare IPv6 address: no port.
        return server;
    }
    server.split_once(':').map_or(server, |(h, _)| h)
}

/// The peers of `upstream` on one instance that `key` names.
pub(crate) fn named<'a>(
    ups: &'a Upstreams,
    kind: UpstreamKind,
    upstream: &str,
    key: &ServerKey,
) -> Vec<&'a Peer> {
    let Some(live) = ups.get(&(kind, upstream.to_owned())) else {
        return Vec::new();
    };
    live.peers
        .iter()
        .filter(|p| match key {
            ServerKey::Id(n) => p.id == *n,
            ServerKey::Address(a) => p.server == *a || host_of(&p.server) == a,
        })
        .collect()
}

/// Every entry on instance `inst` whose host is in `hosts`, in upstream
/// order.
pub(crate) fn entries_of<'a>(
    snap: &'a Snapshot,
    inst: usize,
    hosts: &BTreeSet<&str>,
) -> Vec<Entry<'a>> {
    let mut out = Vec::new();
    if let Some(ups) = snap.get(inst) {
        for ((kind, name), live) in ups {
            for p in &live.peers {
                if hosts.contains(host_of(&p.server)) {
                    out.push(Entry {
                        inst,
                        kind: *kind,
                        upstream: name,
                        peer: p,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("10.0.0.1:8080"), "10.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("app.example"), "app.example");
        assert_eq!(host_of("unix:/tmp/s.sock"), "unix:/tmp/s.sock");
    }
}
