#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

#[cfg(feature = "test-support")]
pub mod server;
