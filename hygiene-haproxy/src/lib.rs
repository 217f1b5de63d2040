#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod balancer;
mod client;
mod config;
mod error;
mod found;
mod level;
mod parse;
mod reply;
mod snapshot;
mod status;
mod workers;

pub use balancer::HaproxyBalancer;
pub use config::{is_valid_name, HaproxyBalancerBuilder, HostMatch, HostScope, Node};
pub use level::SocketLevel;
