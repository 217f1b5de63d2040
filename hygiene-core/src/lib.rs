#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod balancer;
mod config;
pub mod display;
mod engine;
mod error;
mod executor;
pub mod journal;
mod local;
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
pub use config::{
    duration_text, Amount, OnDrainTimeout, OnFailure, OnInterrupted, Pacing, RetryPolicy,
    RolloutConfig, RolloutConfigBuilder, Selection,
};
pub use engine::{Rollout, RolloutHandle};
pub use error::{BoxError, Error, Result};
pub use executor::{
    tail, ExecHandle, ExecOutcome, Executor, HandleSink, Preflight, Recovered, OUTPUT_TAIL_BYTES,
};
pub use local::LocalCommand;
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
