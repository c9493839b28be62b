//! The messages between the node's actors: the node and its log writer,
//! applier, snapshot maker and query threads (none of them leave the
//! process).

use super::applier;
use super::error::{ApplierHalted, InstallError, SnapshotError, WriteError};
use crate::api::Response;
use crate::storage::{self, AppliedState, HardState};
use crate::types::{Entry, Index, Outcome, Term};
use actix::prelude::*;
use serde_bytes::ByteBuf;
use std::path::PathBuf;
use tokio::sync::oneshot;
use understudy_core::node::FaultSource;
use understudy_core::node::SpeculationFailed;

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Persist {
    /// The hard state and its sequence number (messages wait for it).
    pub(super) hard_state: Option<(HardState, u64)>,
    pub(super) truncate_from: Option<Index>,
    pub(super) entries: Vec<Entry>,
    pub(super) reply_to: Recipient<Persisted>,
    pub(super) fault_to: Recipient<StorageFault>,
}

/// A host fault of the node's storage began (`reason`) or cleared
/// (`None`). The writer or the applier keeps trying the same operation
/// every [`FAULT_RETRY_MS`] until it succeeds.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct StorageFault {
    pub(super) source: FaultSource,
    pub(super) reason: Option<String>,
}

/// How often an operation that failed on a host fault (a full disk, an
/// I/O error) is tried again.
pub const FAULT_RETRY_MS: u64 = 500;

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Persisted {
    pub(super) result: Result<Option<(Index, Term)>, WriteError>,
    pub(super) hard_state_seq: Option<u64>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ApplyUpTo {
    pub(super) up_to: Index,
    pub(super) reply_to: Recipient<Applied>,
    pub(super) fault_to: Recipient<StorageFault>,
}

/// Outcomes of applied entries: (index, term, outcome).
pub(super) type Outcomes = Vec<(Index, Term, Outcome)>;

/// Digest samples taken while applying: (index, digest).
pub(super) type Samples = Vec<(Index, [u8; 32])>;

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Applied(pub(super) Result<(Outcomes, AppliedState, Samples), ApplierHalted>);

/// Replace the state by a staged snapshot (answer: installed, or not needed).
#[derive(Message)]
#[rtype(result = "Result<bool, InstallError>")]
pub(super) struct InstallSnapshot {
    pub(super) dir: PathBuf,
    pub(super) meta: storage::SnapshotMeta,
}

/// On the leader: execute these entries ahead of their commit.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Speculate {
    pub(super) entries: Vec<Entry>,
    /// Row log kind: return them as `Effects` entries to log.
    pub(super) as_effects: bool,
    /// The first index of the leader's term.
    pub(super) term_start: Index,
    pub(super) epoch: u64,
    pub(super) reply_to: Recipient<Speculated>,
}

/// The entries of a [`Speculate`] (as `Effects` for the row kind) with
/// their outcomes.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Speculated {
    pub(super) epoch: u64,
    pub(super) result: Result<Vec<(Entry, Outcome)>, SpeculationFailed>,
}

/// Forget every speculated entry.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct DiscardSpeculation;

/// Replace the log by the compacted point of an installed snapshot.
#[derive(Message)]
#[rtype(result = "Result<(), crate::storage::StorageError>")]
pub(super) struct ResetLog {
    pub(super) membership: Option<understudy_core::membership::Membership>,
    pub(super) index: Index,
    pub(super) term: Term,
    /// The timestamp of the snapshot's last entry.
    pub(super) timestamp_ms: u64,
}

/// Produce (or reuse) a snapshot to send.
#[derive(Message)]
#[rtype(result = "Result<(PathBuf, storage::SnapshotMeta), SnapshotError>")]
pub(super) struct MakeSnapshot;

/// Write a fresh snapshot of the durable state into `dir` (an online
/// backup; see `backups.rs`).
#[derive(Message)]
#[rtype(result = "Result<storage::SnapshotMeta, SnapshotError>")]
pub(super) struct MakeBackup {
    /// Where its chunks and meta go (made; must not exist).
    pub dir: PathBuf,
    /// Wait until the durable state is at or past this index…
    pub at_least: crate::types::Index,
    /// …for at most this long (then `SnapshotError::Behind`).
    pub within: std::time::Duration,
}

/// Drive the node state once every message already queued has been handled:
/// the proposals of a burst go to the applier together, and leave as one
/// append (see `Node::execute` in `shell.rs`).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct DriveSoon;

/// Make executed entries durable in the state store (sent on every tick).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Checkpoint {
    pub(super) reply_to: Recipient<Applied>,
    pub(super) fault_to: Recipient<StorageFault>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct RunQuery {
    pub(super) actor: String,
    pub(super) request: ByteBuf,
    pub(super) reply: oneshot::Sender<Response>,
    /// Tells the node when the query has run or was dropped (the node
    /// hands over at most `QUERIES_HANDED_PER_THREAD` per query thread).
    pub(super) done: QueryDoneGuard,
    /// When the query is answered `Timeout` instead of run.
    pub(super) deadline_ms: u64,
}

/// Sends [`QueryDone`] when dropped: whichever way a query ends (run,
/// refused by a halted applier, dropped with a closed mailbox), the node
/// hears of it and hands over the next.
pub(super) struct QueryDoneGuard {
    pub(super) to: Recipient<QueryDone>,
    pub(super) halted: Option<String>,
}

impl Drop for QueryDoneGuard {
    fn drop(&mut self) {
        self.to.do_send(QueryDone {
            halted: self.halted.take(),
        });
    }
}

/// A query the node handed over has ended; `halted` if it found the state
/// damaged (the applier then applies nothing more).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct QueryDone {
    pub(super) halted: Option<String>,
}

/// A query the applier prepared, for a [`QueryRunner`] thread.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct RunPrepared {
    pub(super) job: applier::QueryJob,
    pub(super) request: ByteBuf,
    pub(super) reply: oneshot::Sender<Response>,
    pub(super) done: QueryDoneGuard,
    pub(super) deadline_ms: u64,
    /// Told if the query found the state damaged.
    pub(super) damaged_to: Recipient<Damaged>,
    /// Where a query that went stale (a checkpoint passed since it was
    /// prepared) goes to be prepared again.
    pub(super) again: Recipient<RunQuery>,
}

/// A query found the state damaged at rest: the applier halts.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Damaged {
    pub(super) why: String,
}
