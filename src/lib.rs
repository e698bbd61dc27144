//! latchkey: a Kubernetes operator for rotated API keys and short-lived tokens.
//!
//! Layers (see `../shared/research/rust-operator-style.md`): [`crd`] types;
//! pure logic ([`key`], [`conditions`], [`controller::plan`]) that takes no
//! client; thin reconcilers in [`controller`] that fetch → compute → apply →
//! write status.
#![forbid(unsafe_code)]

pub mod admission;
pub mod cli;
pub mod client;
pub mod clock;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod error;
#[cfg(test)]
pub mod fixtures;
pub mod grants;
pub mod key;
pub mod listener;
pub mod meta;
pub mod namespaces;
pub mod plugin;
pub mod redact;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod token;
pub mod validity;
pub mod webhook;

pub use error::{Error, Result};
