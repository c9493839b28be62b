//! The node: the actix shell around the node's decisions.
//!
//! What a node decides — when a writer is answered, when a read may run,
//! what the log writer gets next and when a message may leave, what the
//! leader executes ahead of commit — is the sans-IO
//! [`understudy_core::node::NodeState`] (with the protocol core inside);
//! this module only executes its effects and feeds it events:
//!
//! * [`Node`] (`shell.rs`; on the system arbiter, with the network) owns
//!   the state, turns messages into its events and executes its effects;
//!   `requests.rs` takes the clients' requests (deploys compiled first,
//!   auth changes, promotions). It never blocks.
//! * [`LogWriter`] (`writer`, its own thread) persists the hard state and
//!   appends entries, one batch at a time (group commit).
//! * [`ApplierActor`] (`applier_actor`, its own thread) applies committed
//!   entries through the sandbox ([`applier`]) in batches, executes the
//!   leader's proposals ahead of commit, and prepares queries for the
//!   query threads (`queries`).
//! * [`SnapshotMaker`] (`snapshots`, its own thread) writes snapshots
//!   (for followers, and for online backups: `backups.rs`).
//! * Connections ([`server`]) turn frames into [`ClientCall`] messages;
//!   [`run`] binds the listeners and starts everything.
//!
//! The log and the state are separate LMDB environments, so the writer's
//! fsync of batch N+1 overlaps the applier's work on batch N.

pub use crate::config::{LogKind, Timing};

pub mod applier;
mod applier_actor;
mod backups;
mod clock;
mod config;
pub mod error;
mod messages;
mod queries;
mod requests;
mod run;
pub mod server;
mod shell;
mod snapshots;
#[cfg(test)]
mod tests;
mod writer;

pub use applier_actor::{ApplierActor, ReadAudit};
pub use backups::{
    BACKUP_CATCH_UP_MS, BACKUP_IDLE_MS, BACKUP_WRITE_TIMEOUT_MS, BACKUPS_STAGED_MAX,
    BACKUPS_WRITING_MAX,
};
pub use clock::TICK_MS;
pub use config::{Compaction, ConfigError, NodeConfig, PeerConfig};
pub use messages::FAULT_RETRY_MS;
pub use queries::{QUERIES_HANDED_PER_THREAD, QUERY_THREADS_MAX, QueryRunner, query_threads};
pub use run::{Running, run, run_bound, run_with};
pub use shell::{ClientCall, FromPeer, Natives, Node, Started};
pub use snapshots::SnapshotMaker;
pub use understudy_core::node::PEER_ALIVE_ELECTION_TIMEOUTS;
pub use writer::LogWriter;
