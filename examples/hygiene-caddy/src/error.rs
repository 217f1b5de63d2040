//! The backend's private errors and their one mapping into
//! [`hygiene_core::Error`].

use std::time::Duration;

use hygiene_core::Error;

/// Everything that goes wrong inside this backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaddyError {
    /// No reply: connection refused, reset, a request that cannot be built.
    #[error("{op} on Caddy's admin API {admin}: {message}")]
    Transport {
        admin: String,
        op: &'static str,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// No reply within the request timeout.
    #[error("{op} on Caddy's admin API {admin}")]
    Timeout {
        admin: String,
        op: &'static str,
        after: Duration,
    },
    /// The admin API answered with an error status (Caddy's `{"error": …}`).
    #[error("{op} on Caddy's admin API {admin}: HTTP {status}: {text}")]
    Api {
        admin: String,
        op: &'static str,
        status: u16,
        text: String,
    },
    /// Our conditional write (`If-Match`) kept meeting a configuration that
    /// another writer had changed since we read it. Nothing was overwritten.
    #[error("{op} on Caddy's admin API {admin}: the configuration changed between our read and our write {attempts} times in a row (another writer is busy); nothing was overwritten")]
    Conflict {
        admin: String,
        op: &'static str,
        attempts: u32,
    },
    /// A reply that is not what the admin API sends.
    #[error("{op} on Caddy's admin API {admin}: {message}")]
    Protocol {
        admin: String,
        op: &'static str,
        message: String,
    },
    /// The change cannot be made safely (a route would be left without an
    /// upstream, the route to put an upstream back into is gone).
    #[error("{op} on Caddy's admin API {admin}: {message}")]
    Refused {
        admin: String,
        op: &'static str,
        message: String,
    },
}

impl From<CaddyError> for Error {
    fn from(e: CaddyError) -> Self {
        let location = match &e {
            CaddyError::Transport { admin, .. }
            | CaddyError::Timeout { admin, .. }
            | CaddyError::Api { admin, .. }
            | CaddyError::Conflict { admin, .. }
            | CaddyError::Protocol { admin, .. }
            | CaddyError::Refused { admin, .. } => format!("Caddy admin API {admin}"),
        };
        match e {
            CaddyError::Timeout { op, admin, after } => Error::Timeout {
                operation: format!("{op} on Caddy's admin API {admin}"),
                after,
            },
            CaddyError::Transport { .. } => Error::Unavailable {
                location,
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            // Another writer: worth another try from a fresh read.
            CaddyError::Conflict { .. } => Error::Unavailable {
                location,
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            CaddyError::Api { status, .. } if status >= 500 => Error::Unavailable {
                location,
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            CaddyError::Api {
                status: 401 | 403, ..
            } => Error::PermissionDenied {
                location,
                message: format!("{e}; check the admin endpoint's `origins` and access control"),
                source: Some(Box::new(e)),
            },
            CaddyError::Api { .. } | CaddyError::Refused { .. } => Error::Rejected {
                location,
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            CaddyError::Protocol { .. } => Error::Protocol {
                location,
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_and_outages_are_retryable_refusals_are_not() {
        let admin = "http://127.0.0.1:2019".to_owned();
        let conflict: Error = CaddyError::Conflict {
            admin: admin.clone(),
            op: "drain",
            attempts: 3,
        }
        .into();
        assert!(conflict.is_retryable(), "{conflict}");
        assert!(conflict.to_string().contains("nothing was overwritten"));
        let bad: Error = CaddyError::Api {
            admin: admin.clone(),
            op: "drain",
            status: 400,
            text: "loading new config: …".into(),
        }
        .into();
        assert!(!bad.is_retryable() && matches!(bad, Error::Rejected { .. }));
        let down: Error = CaddyError::Api {
            admin,
            op: "status",
            status: 502,
            text: String::new(),
        }
        .into();
        assert!(down.is_retryable());
    }
}
