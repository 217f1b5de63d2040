//! A runtime API socket's level, as `show cli level` says it.

use std::fmt;

/// A runtime API socket's level (`stats socket … level <level>`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketLevel {
    /// `level admin`: everything, `set server` included.
    Admin,
    /// `level operator`: `show` and a few harmless commands; no `set server`.
    Operator,
    /// `level user`: `show` only.
    User,
    /// Any other reply (an HAProxy older than 2.0 does not know `show cli
    /// level`): the reply's first line.
    Unknown(String),
}

impl SocketLevel {
    pub(crate) fn parse(reply: &str) -> Self {
        let line = reply.lines().next().unwrap_or("").trim();
        match line {
            "admin" => Self::Admin,
            "operator" => Self::Operator,
            "user" => Self::User,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for SocketLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin => f.write_str("admin"),
            Self::Operator => f.write_str("operator"),
            Self::User => f.write_str("user"),
            Self::Unknown(r) => write!(f, "unknown ({r:?})"),
        }
    }
}
