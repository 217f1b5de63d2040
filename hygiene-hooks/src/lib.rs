#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod client;
mod http;
mod prometheus;
mod webhook;

pub use http::HttpGate;
pub use prometheus::PrometheusGate;
pub use webhook::{WebhookFormat, WebhookNotifier};
