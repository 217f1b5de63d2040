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
    /// The maintenance may still be running on the target: the executor
    /// could not confirm that it ended (a cancel never confirmed, status
    /// reads that kept failing). Never a success; the engine never puts
    /// such a target back by itself, whatever `on_failure` says, and keeps
    /// the run's journal open so a resume or restore can wait for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_still_run: bool,
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
            may_still_run: false,
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
            may_still_run: false,
        }
    }

    /// An outcome the executor could not learn: the maintenance may still be
    /// running (see [`ExecOutcome::may_still_run`]); `message` says why.
    pub fn may_still_run(id: TargetId, duration: Duration, message: impl Into<String>) -> Self {
        Self {
            may_still_run: true,
            ..Self::failure(id, duration, message)
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

/// What an executor keeps of a maintenance it started, so that another
/// process can find it again after a crash: executor-defined JSON (a local
/// child's pid, start time and status file; an SSM CommandId). The engine
/// journals it as soon as the executor reports it, and hands it back to
/// [`Executor::recover`] when the run is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExecHandle(pub serde_json::Value);

/// Where an executor reports each maintenance's [`ExecHandle`] as soon as
/// the maintenance has started (before it finishes).
pub struct HandleSink {
    report: Option<Box<ReportFn>>,
}

type ReportFn = dyn Fn(&TargetId, ExecHandle) + Send + Sync;

impl HandleSink {
    /// A sink that keeps nothing (no journal).
    pub fn none() -> Self {
        Self { report: None }
    }

    /// A sink that calls `report` for each handle.
    pub fn new(report: impl Fn(&TargetId, ExecHandle) + Send + Sync + 'static) -> Self {
        Self {
            report: Some(Box::new(report)),
        }
    }

    /// Reports that the maintenance of `id` started, with its handle.
    pub fn started(&self, id: &TargetId, handle: ExecHandle) {
        if let Some(f) = &self.report {
            f(id, handle);
        }
    }
}

impl Debug for HandleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleSink")
            .field("reports", &self.report.is_some())
            .finish()
    }
}

/// What became of a maintenance that a process which died had started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Recovered {
    /// It finished (or was still running and has now finished): its outcome.
    Finished(ExecOutcome),
    /// Its outcome cannot be learned; the reason says why. The rollout's
    /// `on_interrupted` setting decides what happens to the target.
    Unknown(String),
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
/// - Crash safety (optional): an executor whose maintenance outlives the
///   process that started it (a child in its own process group, an SSM
///   command) implements [`execute_tracked`](Executor::execute_tracked) to
///   report an [`ExecHandle`] per target as soon as it has one, and
///   [`recover`](Executor::recover) to wait for that maintenance from a new
///   process and read its outcome. The defaults keep no handle and recover
///   nothing, and a resumed run then applies `on_interrupted`.
#[async_trait]
pub trait Executor: Send + Sync + Debug + 'static {
    /// A short human name (for messages and reports).
    fn name(&self) -> String;

    /// Can the executor reach each target?
    async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>>;

    /// Runs the maintenance on each target.
    async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>>;

    /// [`execute`](Executor::execute), reporting each target's
    /// [`ExecHandle`] to `sink` as soon as its maintenance has started. The
    /// engine calls this one; the default keeps no handle.
    async fn execute_tracked(
        &self,
        targets: &[Target],
        sink: &HandleSink,
    ) -> Result<Vec<ExecOutcome>> {
        let _unused = sink;
        self.execute(targets).await
    }

    /// Finds a maintenance a dead process started on `target` from its
    /// `handle`: waits while it still runs, then reads its outcome. `Err`
    /// is for an executor that cannot ask right now (network, API); a
    /// maintenance whose outcome is gone for good is
    /// [`Recovered::Unknown`]. The default knows nothing.
    async fn recover(&self, target: &Target, handle: &ExecHandle) -> Result<Recovered> {
        let _unused = handle;
        Ok(Recovered::Unknown(format!(
            "{} cannot find a maintenance started by another process (on {})",
            self.name(),
            target.id
        )))
    }
}

macro_rules! forward_executor {
    ($($wrapper:ty),*) => {$(
        #[async_trait]
        impl<T: Executor + ?Sized> Executor for $wrapper {
            fn name(&self) -> String { (**self).name() }
            async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>> { (**self).preflight(targets).await }
            async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>> { (**self).execute(targets).await }
            async fn execute_tracked(&self, targets: &[Target], sink: &HandleSink) -> Result<Vec<ExecOutcome>> { (**self).execute_tracked(targets, sink).await }
            async fn recover(&self, target: &Target, handle: &ExecHandle) -> Result<Recovered> { (**self).recover(target, handle).await }
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
