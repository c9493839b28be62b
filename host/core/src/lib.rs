//! The sans-IO core of Understudy: the domain types of the log ([`types`]),
//! the group's configuration ([`membership`]) and the replication protocol
//! ([`replication`]). Nothing here touches a
//! socket, a disk, a clock or a thread, so it builds for
//! `wasm32-unknown-unknown` as well as natively, and a seeded simulator can
//! drive whole groups of it deterministically.

pub mod auth;
pub mod client;
pub mod membership;
pub mod node;
pub mod replication;
#[cfg(test)]
mod sim;
pub mod types;
