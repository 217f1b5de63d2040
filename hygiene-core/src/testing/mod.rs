//! Test doubles: a balancer in memory with scripted drain and health, fault
//! injection and a call log, and an executor with scripted outcomes. They
//! are for tests, examples and benchmarks; real runs use a backend crate
//! and [`LocalCommand`](crate::LocalCommand) or a remote executor.

mod memory;
mod scripted;

pub use memory::{CallRecord, DrainProfile, HealthScript, InMemoryBalancer, Operation};
pub use scripted::{ExecRecord, Script, ScriptedExecutor};
