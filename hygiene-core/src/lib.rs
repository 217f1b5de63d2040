#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod balancer;
mod commands;
mod config;
pub mod display;
mod engine;
mod error;
mod executor;
mod gate;
pub mod journal;
pub mod lease;
mod local;
mod notify;
pub mod phase;
mod probe;
pub mod report;
mod retry;
#[cfg(feature = "ssh")]
mod ssh;
mod target;
pub mod testing;
pub mod trace;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "mock")]
pub mod mock;

pub use balancer::{ListedTarget, LoadBalancer};
pub use commands::CommandGate;
pub use config::{
    duration_text, Amount, BatchBy, OnDrainTimeout, OnFailure, OnInterrupted, Pacing, RetryPolicy,
    RolloutConfig, RolloutConfigBuilder, Selection, ZONE_META,
};
pub use engine::{Rollout, RolloutHandle};
pub use error::{BoxError, Error, Result};
pub use executor::{
    tail, ExecHandle, ExecOutcome, Executor, HandleSink, Preflight, Recovered, OUTPUT_TAIL_BYTES,
};
pub use gate::{Gate, GateCheck, GatePolicy, GateVerdict, GateWhen, OnGateTimeout};
pub use local::LocalCommand;
pub use notify::{KeptOut, Notification, Notifier, Summary};
pub use phase::{Location, Stage};
pub use probe::{HttpProbe, Probe, ProbeVerdict, TcpProbe};
pub use report::{
    AbortReason, DrainLost, Event, EventKind, Outcome, PhaseTimings, PutBack, Report, TargetReport,
    TargetResult,
};
pub use retry::{with_retries, with_retries_when};
#[cfg(feature = "ssh")]
pub use ssh::SshCommand;
pub use target::{
    Capabilities, Health, Target, TargetId, TargetState, TargetStatus, MAX_TARGET_ID_LEN,
};
pub use tokio_util::sync::CancellationToken;

/// The root README's example, run as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
