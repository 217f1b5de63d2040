//! The [`Executor`] trait: what runs the maintenance on a target.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::target::{Target, TargetId};

/// How many bytes of stdout / stderr an outcome keeps (the end of it).
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// Whether the executor can reach a target at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Preflight {
    /// Reachable: go ahead.
    Ready,
    /// Not reachable; the target must not be drained. The reason says why.
    NotReady(String),
}

/// The result of the maintenance on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// The target.
    pub id: TargetId,
    /// Whether the maintenance succeeded.
    pub success: bool,
    /// Exit code, where there is one.
    pub exit_code: Option<i32>,
    /// The end of standard output (at most [`OUTPUT_TAIL_BYTES`]).
    pub stdout_tail: String,
    /// The end of standard error (at most [`OUTPUT_TAIL_BYTES`]).
    pub stderr_tail: String,
    /// How long it ran.
    #[serde(with = "crate::report::duration_ms", rename = "duration_ms")]
    pub duration: Duration,
    /// Why it failed, in words, when it failed.
    pub message: Option<String>,
}

impl ExecOutcome {
    /// A successful outcome with no output.
    pub fn success(id: TargetId, duration: Duration) -> Self {
        Self {
            id,
            success: true,
            exit_code: Some(0),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            duration,
            message: None,
        }
    }

    /// A failed outcome with a message.
    pub fn failure(id: TargetId, duration: Duration, message: impl Into<String>) -> Self {
        Self {
            id,
            success: false,
            exit_code: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            duration,
            message: Some(message.into()),
        }
    }
}

/// Keeps the last `max` bytes of `s`, cut at a character boundary.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// Runs the maintenance (patch, reboot, deploy) on targets.
///
/// # Contract
/// - `preflight` returns one [`Preflight`] per target, in order; a target
///   that is not ready is never drained.
/// - `execute` returns one [`ExecOutcome`] per target, in order. A target's
///   maintenance failing is an outcome with `success: false`, not an `Err`;
///   `Err` means the executor itself failed (and a retryable one may be
///   retried by the engine, so `execute` must be safe to call again).
/// - Batching belongs to the executor (SSM takes at most 50 instances a call).
#[async_trait]
pub trait Executor: Send + Sync + Debug + 'static {
    /// A short human name (for messages and reports).
    fn name(&self) -> String;

    /// Can the executor reach each target?
    async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>>;

    /// Runs the maintenance on each target.
    async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>>;
}

macro_rules! forward_executor {
    ($($wrapper:ty),*) => {$(
        #[async_trait]
        impl<T: Executor + ?Sized> Executor for $wrapper {
            fn name(&self) -> String { (**self).name() }
            async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>> { (**self).preflight(targets).await }
            async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>> { (**self).execute(targets).await }
        }
    )*};
}

forward_executor!(Arc<T>, Box<T>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cuts_at_char_boundary() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello", 3), "llo");
        let s = "aé"; // é is two bytes
        assert_eq!(tail(s, 1), "");
        assert_eq!(tail(s, 2), "é");
    }
}
