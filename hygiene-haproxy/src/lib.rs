#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod balancer;
mod client;
mod config;
mod error;
mod found;
mod parse;
mod reply;
mod snapshot;
mod workers;

pub use balancer::{HaproxyBalancer, SocketLevel};
pub use config::{is_valid_name, HaproxyBalancerBuilder, HostMatch, HostScope, Node};
