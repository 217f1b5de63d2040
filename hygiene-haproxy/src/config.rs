//! Nodes, names and the validated builder of [`HaproxyBalancer`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hygiene_core::RetryPolicy;

use crate::balancer::HaproxyBalancer;
use crate::client::Client;
use crate::error::HaproxyError;

/// Where a node's runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `stats socket /run/haproxy/admin.sock level admin`
    Unix(PathBuf),
    /// `stats socket ipv4@127.0.0.1:9999 level admin`
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// One HAProxy process (one member of an HA pair) and its runtime API socket.
///
/// The socket must be declared `level admin`: `show` commands work at
/// `level user`, but `set server` is refused with `Permission denied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub(crate) name: Option<String>,
    pub(crate) endpoint: Endpoint,
    /// The master CLI (`haproxy -W -S <socket>`), when given.
    pub(crate) master: Option<Endpoint>,
}

impl Node {
    /// A node reached through a Unix socket
    /// (`stats socket /run/haproxy/admin.sock level admin`).
    pub fn unix(path: impl AsRef<Path>) -> Self {
        Self {
            name: None,
            endpoint: Endpoint::Unix(path.as_ref().to_path_buf()),
            master: None,
        }
    }

    /// A node reached over TCP (`stats socket ipv4@127.0.0.1:9999 level admin`).
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            name: None,
            endpoint: Endpoint::Tcp(addr),
            master: None,
        }
    }

    /// Names the node in messages and reports (default: its endpoint,
    /// `unix:/path` or `tcp:addr:port`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The node's master CLI socket (master-worker mode: `haproxy -W -S
    /// /run/haproxy-master.sock`, as Debian's and most distributions'
    /// systemd units run it).
    ///
    /// Why: a reload starts a new worker and leaves the old one finishing
    /// the requests it had; the new worker's `show stat` does not count
    /// them, so a drain during which HAProxy is reloaded would look
    /// finished while the old worker still has requests on the server.
    /// With the master socket, every status also asks the master for old
    /// workers (`show proc`) and adds their in-flight requests to each
    /// server's count (`@!<pid> show stat`), so a drain waits for them.
    /// Without it, a reload during a drain is only seen as a lost drain.
    pub fn master_socket(mut self, path: impl AsRef<Path>) -> Self {
        self.master = Some(Endpoint::Unix(path.as_ref().to_path_buf()));
        self
    }

    /// As [`master_socket`](Self::master_socket), over TCP (`-S ipv4@addr:port`).
    pub fn master_tcp(mut self, addr: SocketAddr) -> Self {
        self.master = Some(Endpoint::Tcp(addr));
        self
    }

    /// The master CLI as a node of its own (for its client).
    pub(crate) fn master_node(&self) -> Option<Node> {
        self.master.as_ref().map(|m| Node {
            name: Some(format!("{} (master {m})", self.display_name())),
            endpoint: m.clone(),
            master: None,
        })
    }

    /// The name used in messages.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.endpoint.to_string(),
        }
    }

    /// A shell command that sends `command` to this node with socat (for
    /// hints shown to operators).
    pub(crate) fn socat(&self, command: &str) -> String {
        let target = match &self.endpoint {
            Endpoint::Unix(p) => format!("UNIX-CONNECT:{}", p.display()),
            Endpoint::Tcp(a) => format!("TCP:{a}"),
        };
        format!("echo '{command}' | socat stdio {target}")
    }
}

/// Whether `name` is a valid HAProxy backend or server name:
/// non-empty, at most 255 bytes, only `[A-Za-z0-9._:-]`.
///
/// Anything else (`;`, spaces, newlines, `/`) could split into a second
/// runtime API command and is refused before any command is built.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub(crate) fn check_name(name: &str, what: &str) -> Result<(), HaproxyError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(HaproxyError::InvalidName {
            name: name.to_owned(),
            reason: format!(
                "an HAProxy {what} name must be 1 to 255 characters of [A-Za-z0-9._:-]"
            ),
        })
    }
}

/// Which backends a target is drained from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostScope {
    /// Every backend on the node that holds the same host (see
    /// [`HostMatch`]), whether the pool names it or not: the maintenance
    /// takes the whole host down, so every backend sending it traffic must
    /// stop first (the default).
    #[default]
    AllBackends,
    /// Only the pool's backends. Other backends holding the same host keep
    /// sending it requests during its maintenance; `list` names them in
    /// `meta["other_backends"]` and logs a warning.
    PoolBackendsOnly,
}

/// What makes two servers the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostMatch {
    /// The same address and port (`srv_addr:srv_port`; the default).
    #[default]
    AddressAndPort,
    /// The same address, any port (one machine serving several ports).
    Address,
}

/// Builds a [`HaproxyBalancer`]; every field is validated by [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct HaproxyBalancerBuilder {
    nodes: Vec<Node>,
    backends: Vec<String>,
    scope: HostScope,
    host_match: HostMatch,
    connect_timeout: Duration,
    read_timeout: Duration,
    poll_interval: Duration,
    retry: RetryPolicy,
}

impl Default for HaproxyBalancerBuilder {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            backends: Vec::new(),
            scope: HostScope::default(),
            host_match: HostMatch::default(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(100),
            retry: RetryPolicy {
                max_retries: 5,
                min_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(1),
                max_total: Duration::from_secs(5),
            },
        }
    }
}

impl HaproxyBalancerBuilder {
    /// Adds a node; drain and enable apply to every node, status aggregates
    /// over all of them. At least one is required.
    pub fn node(mut self, node: Node) -> Self {
        self.nodes.push(node);
        self
    }

    /// Adds a backend to the pool. At least one is required; with several,
    /// a server name present in more than one of them is one target,
    /// drained from all of them (see the crate docs for the id format).
    pub fn backend(mut self, backend: impl Into<String>) -> Self {
        self.backends.push(backend.into());
        self
    }

    /// Which backends a target is drained from (default: every backend
    /// holding the same host).
    pub fn scope(mut self, scope: HostScope) -> Self {
        self.scope = scope;
        self
    }

    /// What makes two servers the same host (default: address and port).
    pub fn host_match(mut self, host_match: HostMatch) -> Self {
        self.host_match = host_match;
        self
    }

    /// How long to wait for the socket to accept a connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a whole reply once the command is sent
    /// (default 5 s).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The poll interval suggested to the engine (default 100 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Retries when a socket refuses connections or goes away (HAProxy
    /// reloading); default: 5 retries, 50 ms to 1 s apart, 5 s in all.
    /// `show` lines are also retried after timeouts; `set` lines only when
    /// they certainly were not sent (no connection made).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Validates everything and builds the balancer.
    ///
    /// # Errors
    /// [`hygiene_core::Error::InvalidConfig`] without nodes or backends, with
    /// a zero timeout or poll interval, or with a node listed twice;
    /// [`hygiene_core::Error::InvalidName`] for a backend name outside
    /// `[A-Za-z0-9._:-]`.
    pub fn build(self) -> hygiene_core::Result<HaproxyBalancer> {
        Ok(self.try_build()?)
    }

    fn try_build(self) -> Result<HaproxyBalancer, HaproxyError> {
        let invalid = |field, message: &str| HaproxyError::InvalidConfig {
            field,
            message: message.to_owned(),
        };
        if self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "at least one HAProxy node is required: .node(Node::unix(path))",
            ));
        }
        if self.backends.is_empty() {
            return Err(invalid(
                "backends",
                "at least one backend is required: .backend(\"web\")",
            ));
        }
        for b in &self.backends {
            check_name(b, "backend")?;
        }
        if let Some(b) = duplicate(&self.backends) {
            return Err(invalid(
                "backends",
                &format!("backend {b:?} is listed twice"),
            ));
        }
        let backends = self.backends;
        let endpoints: Vec<String> = self.nodes.iter().map(|n| n.endpoint.to_string()).collect();
        if let Some(e) = duplicate(&endpoints) {
            return Err(invalid(
                "nodes",
                &format!("node socket {e} is listed twice"),
            ));
        }
        let names: Vec<String> = self.nodes.iter().map(Node::display_name).collect();
        if let Some(n) = duplicate(&names) {
            return Err(invalid(
                "nodes",
                &format!("two nodes have the same name {n:?}"),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be more than zero"));
        }
        if self.read_timeout.is_zero() {
            return Err(invalid("read_timeout", "must be more than zero"));
        }
        if self.poll_interval.is_zero() {
            return Err(invalid("poll_interval", "must be more than zero"));
        }
        let masters = self
            .nodes
            .iter()
            .map(|node| {
                node.master_node()
                    .map(|m| Client::master(m, self.connect_timeout, self.read_timeout))
            })
            .collect();
        let clients = self
            .nodes
            .into_iter()
            .map(|node| Client::new(node, self.connect_timeout, self.read_timeout))
            .collect();
        Ok(HaproxyBalancer::from_parts(Arc::new(
            crate::balancer::Inner {
                clients,
                masters,
                backends,
                poll_interval: self.poll_interval,
                retry: self.retry,
                scope: self.scope,
                host_match: self.host_match,
                health_checks: std::sync::atomic::AtomicBool::new(true),
                seen: std::sync::Mutex::default(),
                records: std::sync::Mutex::default(),
            },
        )))
    }
}

/// An item listed more than once, if any.
fn duplicate(items: &[String]) -> Option<&String> {
    let mut sorted: Vec<&String> = items.iter().collect();
    sorted.sort();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_haproxy_charset() {
        for ok in ["web", "s1", "be_app-2", "a.b:c", "X"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "web/s1",
            "s1;shutdown",
            "a b",
            "a\nb",
            "é",
            "a\tb",
            &"x".repeat(256),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn build_validates() {
        let e = HaproxyBalancer::builder()
            .backend("web")
            .build()
            .expect_err("no node");
        assert!(
            matches!(e, hygiene_core::Error::InvalidConfig { field: "nodes", .. }),
            "{e:?}"
        );
        let e = HaproxyBalancer::builder()
            .node(Node::unix("/x"))
            .build()
            .expect_err("no backend");
        assert!(
            matches!(
                e,
                hygiene_core::Error::InvalidConfig {
                    field: "backends",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = HaproxyBalancer::builder()
            .node(Node::unix("/x"))
            .backend("web;shutdown")
            .build()
            .expect_err("bad name");
        assert!(
            matches!(e, hygiene_core::Error::InvalidName { .. }),
            "{e:?}"
        );
        let e = HaproxyBalancer::builder()
            .node(Node::unix("/x"))
            .backend("a")
            .backend("b")
            .backend("a")
            .build();
        assert!(
            matches!(
                e,
                Err(hygiene_core::Error::InvalidConfig {
                    field: "backends",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = HaproxyBalancer::builder()
            .node(Node::unix("/x"))
            .node(Node::unix("/x"))
            .backend("a")
            .build();
        assert!(
            matches!(
                e,
                Err(hygiene_core::Error::InvalidConfig { field: "nodes", .. })
            ),
            "{e:?}"
        );
        let e = HaproxyBalancer::builder()
            .node(Node::unix("/x"))
            .backend("a")
            .read_timeout(Duration::ZERO)
            .build();
        assert!(
            matches!(
                e,
                Err(hygiene_core::Error::InvalidConfig {
                    field: "read_timeout",
                    ..
                })
            ),
            "{e:?}"
        );
        let lb = HaproxyBalancer::builder()
            .node(Node::unix("/x").named("lb-a"))
            .node(Node::tcp("127.0.0.1:9".parse().expect("addr")))
            .backend("web")
            .build()
            .expect("valid");
        assert!(format!("{lb:?}").contains("lb-a"));
    }
}
