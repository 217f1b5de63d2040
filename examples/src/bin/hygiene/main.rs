//! The operator's command.
#![allow(dead_code)]
mod config;
fn main() {}
