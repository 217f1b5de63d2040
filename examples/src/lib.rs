//! Building blocks of the runnable scenarios: "Hello, World!" services, a
//! real HAProxy in front of them, a load generator that counts every failed
//! request, and the control channel the simulated patch uses.

pub mod caddy;
pub mod control;
pub mod haproxy;
pub mod hello;
pub mod load;
pub mod monitor;
pub mod pushgateway;
pub mod scenario;
pub mod soak;
pub mod sshd;

/// Errors of the scenario plumbing, as text: these are programs, not a library.
pub type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
