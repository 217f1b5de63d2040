#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod balancer;
mod client;
mod config;
mod error;
mod routes;

pub use balancer::{upstreams_of, CaddyBalancer, META_HANDLERS, META_PLACEMENTS};
pub use config::{
    CaddyBuilder, HealthChecks, HostMatch, DEFAULT_ADMIN, DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT,
};
pub use routes::{HandlerRef, Placement, PARKED_ID};
