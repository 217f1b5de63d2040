//! Test doubles: a balancer in memory with scripted drain and health, fault
//! injection and a call log, and an executor with scripted outcomes. They
//! are for tests, examples and benchmarks; real runs use a backend crate
//! and [`LocalCommand`](crate::LocalCommand) or a remote executor.

mod memory;
mod scripted;

pub use memory::{CallRecord, DrainProfile, HealthScript, InMemoryBalancer, Operation};
pub use scripted::{ExecRecord, Script, ScriptedExecutor};

use std::sync::{Arc, Mutex};

use crate::executor::{ExecHandle, HandleSink};
use crate::target::TargetId;

/// Keeps the handles an executor reports, as a journal would: for tests
/// of [`Executor::execute_tracked`](crate::Executor::execute_tracked) and
/// [`Executor::recover`](crate::Executor::recover).
#[derive(Debug, Clone, Default)]
pub struct KeptHandles {
    kept: Arc<Mutex<Vec<(TargetId, ExecHandle)>>>,
}

impl KeptHandles {
    /// Nothing kept yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that keeps what it is told here.
    pub fn sink(&self) -> HandleSink {
        let kept = Arc::clone(&self.kept);
        HandleSink::new(move |id, h| {
            kept.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((id.clone(), h));
        })
    }

    /// Every handle reported so far, in order.
    pub fn handles(&self) -> Vec<(TargetId, ExecHandle)> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
