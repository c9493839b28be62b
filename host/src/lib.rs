//! Understudy: a replication host for sandboxed WebAssembly state machines.
//!
//! Read the modules in this order: [`types`] (log entries and outcomes),
//! [`limits`] (every bound on what a request or a machine can make a node hold),
//! [`codec`] (bytes), [`sandbox`] (running machines), [`storage`] (LMDB),
//! [`replication`] (the sans-IO core), [`node`] (the actix shell that
//! executes the core's decisions), [`net`] (framing), [`peer`] (the transport between members), [`api`] (the actor
//! message API and the Rust client). `ARCHITECTURE.md` has the map.

pub use understudy_core::{auth, replication, types};

pub mod access;
pub mod api;
pub mod backup;
pub mod codec;
pub mod config;
pub mod http;
pub mod kv;
#[cfg(test)]
mod layers;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod node;
pub mod peer;
pub mod sandbox;
pub mod storage;
pub mod tls;
