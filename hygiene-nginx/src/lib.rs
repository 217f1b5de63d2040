#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod balancer;
mod client;
mod config;
mod error;
mod pool;
mod status;
#[cfg(feature = "test-support")]
pub mod testing;

pub use balancer::{traffic_before_fresh_check, NginxBalancer};
pub use client::{UpstreamKind, MAX_API_VERSION, MIN_API_VERSION};
pub use config::{
    HealthChecks, NginxBuilder, Scope, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REPLY_SIZE,
    DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT,
};
