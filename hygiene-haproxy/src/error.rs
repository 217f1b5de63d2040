//! The private error enum of this backend and its one mapping into
//! [`hygiene_core::Error`].

use std::time::Duration;

/// Everything that can go wrong talking to HAProxy. Each variant names the
/// node (and the backend / server where there is one).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HaproxyError {
    /// A name that is not in HAProxy's charset, or a malformed target id.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    /// The builder was given something unusable.
    #[error("invalid configuration: {field}: {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },

    /// The socket could not be reached, or went away before a reply.
    #[error("{message}")]
    Unavailable {
        node: String,
        message: String,
        #[source]
        source: Option<std::io::Error>,
    },

    /// The socket file exists but this process may not open it.
    #[error("cannot open runtime API socket {endpoint}")]
    SocketAccess {
        node: String,
        endpoint: String,
        #[source]
        source: std::io::Error,
    },

    /// Connecting or reading the reply took too long.
    #[error("{operation} on {node}")]
    Timeout {
        node: String,
        operation: String,
        after: Duration,
    },

    /// The socket is not `level admin`.
    #[error("`{command}` was refused")]
    PermissionDenied { node: String, command: String },

    /// `No such backend.` / `Can't find backend.` / `No such proxy.`, or a
    /// backend of the pool that the node does not have.
    #[error("no backend {backend:?}")]
    NoSuchBackend { node: String, backend: String },

    /// `No such server.`, or a server missing from a backend.
    #[error("no server {backend}/{server}")]
    NoSuchServer {
        node: String,
        backend: String,
        server: String,
    },

    /// A target id the pool does not hold.
    #[error("target {id} is not in the pool")]
    UnknownTarget { id: String, pool: String },

    /// The node does not know a command (an HAProxy too old?).
    #[error("`{command}` is an unknown command there (HAProxy too old?): {reply}")]
    UnknownCommand {
        node: String,
        command: String,
        reply: String,
    },

    /// Any other error line HAProxy answered with.
    #[error("`{command}` was rejected: {reply}")]
    Rejected {
        node: String,
        command: String,
        reply: String,
    },

    /// Empty where a reply was due, truncated, or not in the expected format.
    #[error("{message}")]
    Protocol { node: String, message: String },
}

fn on(node: &str) -> String {
    format!("haproxy node {node}")
}

impl From<HaproxyError> for hygiene_core::Error {
    fn from(e: HaproxyError) -> Self {
        use hygiene_core::Error as E;
        let text = e.to_string();
        match e {
            HaproxyError::InvalidName { name, reason } => E::InvalidName { name, reason },
            HaproxyError::InvalidConfig { field, message } => E::InvalidConfig { field, message },
            HaproxyError::Unavailable { node, message, source } => E::Unavailable {
                location: on(&node),
                message,
                source: source.map(|s| Box::new(s) as hygiene_core::BoxError),
            },
            HaproxyError::SocketAccess { node, endpoint, source } => E::PermissionDenied {
                location: on(&node),
                message: format!(
                    "this process may not open {endpoint} ({source}): run as the socket's user or group, \
                     or set `mode`, `user` and `group` on the `stats socket` line"
                ),
                source: Some(Box::new(source)),
            },
            HaproxyError::Timeout { node, operation, after } => {
                E::Timeout { operation: format!("{operation} on {}", on(&node)), after }
            }
            HaproxyError::PermissionDenied { node, command } => E::PermissionDenied {
                location: on(&node),
                message: format!(
                    "`{command}` needs an admin-level runtime API socket: declare it with \
                     `stats socket <path> level admin` (or `stats socket ipv4@<addr>:<port> level admin`) \
                     in the global section and reload HAProxy"
                ),
                source: None,
            },
            HaproxyError::NoSuchBackend { node, backend } => {
                E::NotFound { kind: "backend", name: backend, location: Some(on(&node)) }
            }
            HaproxyError::NoSuchServer { node, backend, server } => {
                E::NotFound { kind: "server", name: format!("{backend}/{server}"), location: Some(on(&node)) }
            }
            HaproxyError::UnknownTarget { id, pool } => {
                E::NotFound { kind: "target", name: id, location: Some(format!("the haproxy pool ({pool})")) }
            }
            HaproxyError::UnknownCommand { node, .. } | HaproxyError::Rejected { node, .. } => {
                E::Rejected { location: on(&node), message: text, source: None }
            }
            HaproxyError::Protocol { node, message } => E::Protocol { location: on(&node), message, source: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_says_how_to_fix() {
        let e: hygiene_core::Error = HaproxyError::PermissionDenied {
            node: "lb-a".into(),
            command: "set server web/s1 state drain".into(),
        }
        .into();
        let s = e.to_string();
        assert!(matches!(e, hygiene_core::Error::PermissionDenied { .. }));
        assert!(s.contains("lb-a") && s.contains("level admin"), "{s}");
    }

    #[test]
    fn not_found_names_node_backend_and_server() {
        let e: hygiene_core::Error = HaproxyError::NoSuchServer {
            node: "lb-b".into(),
            backend: "web".into(),
            server: "s9".into(),
        }
        .into();
        let s = e.to_string();
        assert!(e.is_not_found());
        assert!(s.contains("lb-b") && s.contains("web/s9"), "{s}");
    }

    #[test]
    fn connection_errors_are_retryable_and_replies_are_not() {
        let e: hygiene_core::Error = HaproxyError::Unavailable {
            node: "a".into(),
            message: "refused".into(),
            source: None,
        }
        .into();
        assert!(e.is_retryable());
        let e: hygiene_core::Error = HaproxyError::Protocol {
            node: "a".into(),
            message: "truncated".into(),
        }
        .into();
        assert!(!e.is_retryable());
        let e: hygiene_core::Error = HaproxyError::Timeout {
            node: "a".into(),
            operation: "read".into(),
            after: Duration::from_secs(1),
        }
        .into();
        assert!(e.is_retryable());
    }
}
