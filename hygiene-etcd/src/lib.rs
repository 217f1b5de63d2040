#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod config;
mod error;
mod keys;
mod store;

#[cfg(feature = "test-support")]
pub mod server;

pub use config::{
    EtcdLeaseStoreBuilder, EtcdTls, DEFAULT_LEASE_DURATION, DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT,
};
pub use store::EtcdLeaseStore;
