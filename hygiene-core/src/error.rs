//! The one error type of hygiene. Backends keep private error enums and map
//! them into this one in exactly one `From` impl each.

use std::time::Duration;

/// A boxed error source, kept so callers can walk the chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, in variants a caller can `match` on.
///
/// Every message names the thing concerned and what to do about it.
/// [`Error::is_retryable`] tells the engine which errors are worth another
/// try with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid; nothing was touched.
    #[error("invalid configuration: {field}: {message}")]
    InvalidConfig {
        /// The setting at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A name (target id, backend, server, upstream) is not acceptable, for
    /// instance because it could inject a command into a text protocol.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: String,
    },

    /// The backend does not know this thing.
    #[error("{kind} {name:?} not found{}: check the name against the configuration it comes from", location.as_ref().map(|l| format!(" on {l}")).unwrap_or_default())]
    NotFound {
        /// What kind of thing (target, backend, server, upstream, target group).
        kind: &'static str,
        /// Its name.
        name: String,
        /// Where it was looked for (a node, an API URL), when known.
        location: Option<String>,
    },

    /// The backend cannot do this at all.
    #[error("{operation} is not supported by {backend}: {hint}")]
    NotSupported {
        /// The operation.
        operation: &'static str,
        /// The backend.
        backend: String,
        /// What to do instead.
        hint: String,
    },

    /// Credentials or access level are insufficient.
    #[error("permission denied by {location}: {message}")]
    PermissionDenied {
        /// Which endpoint refused.
        location: String,
        /// What is missing and how to grant it.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend or executor could not be reached, or went away (retryable).
    #[error("{location} is unavailable: {message}")]
    Unavailable {
        /// Which endpoint.
        location: String,
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend asked us to slow down (retryable).
    #[error("{location} is throttling requests: {message}")]
    Throttled {
        /// Which endpoint.
        location: String,
        /// What the backend said.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// An operation did not finish in time (retryable).
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done, and against what.
        operation: String,
        /// How long we waited.
        after: Duration,
    },

    /// A reply could not be understood (truncated, garbled, unexpected).
    #[error("malformed reply from {location}: {message}")]
    Protocol {
        /// Which endpoint.
        location: String,
        /// What was wrong with it.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend refused the request for a reason of its own.
    #[error("{location} rejected the request: {message}")]
    Rejected {
        /// Which endpoint.
        location: String,
        /// What it said.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The executor failed as a whole (not one target's maintenance failing:
    /// that is an [`crate::ExecOutcome`]).
    #[error("executor {executor}: {message}")]
    Executor {
        /// Which executor.
        executor: String,
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The run was cancelled while this call was in flight and stopped
    /// waiting for it: whether it took effect is unknown, so the engine
    /// reads back or undoes what it may have changed.
    #[error("{operation} was abandoned because the run was cancelled; whether it took effect is unknown")]
    Cancelled {
        /// The call abandoned.
        operation: String,
    },

    /// The run's journal cannot be used: locked by another run, left
    /// unfinished by a run that died, damaged, from another pool or from a
    /// newer version. Nothing was changed.
    #[error("journal {location} {message}")]
    Journal {
        /// The journal (a path).
        location: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// Not enough healthy capacity to take even one target out.
    #[error("not enough healthy capacity: {message}")]
    Capacity {
        /// The numbers involved and what to change.
        message: String,
    },
}

impl Error {
    /// Whether a retry with backoff may succeed: the endpoint was unavailable,
    /// throttled us, or timed out.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Throttled { .. } | Self::Timeout { .. }
        )
    }

    /// Shorthand for [`Error::InvalidConfig`].
    pub fn invalid_config(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::InvalidName`].
    pub fn invalid_name(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidName {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`] of a target.
    pub fn target_not_found(name: impl Into<String>, location: Option<String>) -> Self {
        Self::NotFound {
            kind: "target",
            name: name.into(),
            location,
        }
    }

    /// Shorthand for [`Error::Unavailable`] without a source.
    pub fn unavailable(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unavailable {
            location: location.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for [`Error::Protocol`] without a source.
    pub fn protocol(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Protocol {
            location: location.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for [`Error::Rejected`] without a source.
    pub fn rejected(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Rejected {
            location: location.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for [`Error::Journal`].
    pub fn journal(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Journal {
            location: location.into(),
            message: message.into(),
        }
    }

    /// Whether this is a [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(Error::unavailable("lb", "down").is_retryable());
        assert!(Error::Timeout {
            operation: "drain".into(),
            after: Duration::from_secs(1)
        }
        .is_retryable());
        assert!(!Error::target_not_found("web/s9", None).is_retryable());
        assert!(!Error::invalid_config("batch_size", "0").is_retryable());
    }

    #[test]
    fn messages_name_the_thing() {
        let e = Error::target_not_found("web/s9", Some("node a".into()));
        let s = e.to_string();
        assert!(s.contains("web/s9") && s.contains("node a"), "{s}");
    }
}
