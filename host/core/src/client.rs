//! The vocabulary of a client's answers, shared by the node's sans-IO
//! decisions ([`crate::node`]) and the host's wire API (which re-exports
//! it): when a write is acknowledged ([`WriteConcern`]), how fresh a read
//! must be ([`ReadLevel`]), and how a request is refused ([`ApiError`]).

use crate::types::{Index, NodeId, Term};
use serde::{Deserialize, Serialize};

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteConcern {
    /// After a majority has it durable (never lost). The answer carries
    /// the outcome every replica computes: the leader executed the entry
    /// while it was replicated (or, row kind, before logging its effects)
    /// and answers at commit.
    #[default]
    Majority,
    /// After the leader's fsync; may be lost on failover.
    Leader,
}

/// How fresh a read must be. Every read answer names the applied index
/// it reflects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadLevel {
    /// Whatever this node has applied (may be arbitrarily stale on a node
    /// that is cut off).
    Any,
    /// At most this far behind what this node knows the leader has
    /// committed, and a leader heard from within `max_lag_ms` (lag in
    /// milliseconds also counts the age of the oldest committed entry not
    /// yet applied here, by the leader's clock).
    Bounded {
        /// Most committed entries not yet applied here.
        max_lag_entries: Option<u64>,
        /// Most milliseconds behind.
        max_lag_ms: Option<u64>,
    },
    /// On the leader only, from its own state while its lease holds (a
    /// majority answered a heartbeat recently enough that none of them can
    /// have voted for another leader yet); when it does not, the leader
    /// falls back to a linearizable read. Followers refuse with `NotLeader`.
    Lease,
    /// Read-your-writes: wait until the write with this token (returned
    /// by every write) is applied here, then read.
    Session {
        /// Term of the write.
        term: Term,
        /// Index of the write.
        index: Index,
    },
    /// Sees every write acknowledged before the read started (ReadIndex:
    /// the leader confirms its leadership with a majority, this node waits
    /// until it has applied the leader's commit index).
    #[default]
    Linearizable,
}

/// Machine-readable error class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// This node is not the leader; see `leader`.
    NotLeader,
    /// The request is malformed or invalid.
    BadRequest,
    /// The frame could not be read (too large, truncated, not CBOR).
    BadFrame,
    /// The client speaks a newer protocol.
    UnsupportedVersion,
    /// Too many writes waiting; retry later.
    Overloaded,
    /// The node cannot serve (storage failed, applying halted).
    Unavailable,
    /// No actor by that name.
    NoSuchActor,
    /// The node is further behind than the read allows.
    Stale,
    /// The request could not complete in time (no leader, not caught up).
    Timeout,
    /// The write's entry was replaced by another leader's: it was not
    /// applied. Retry it (with the same client tag).
    Superseded,
    /// This node's state digest differs from the leader's at the same
    /// index (a determinism alarm): it serves no reads.
    Quarantined,
    /// The request (or a part of it) is over a limit; the message names
    /// the limit and its value (see the host's `limits` module).
    TooLarge,
    /// The connection did not prove who it is: TLS required, a bad or
    /// unknown certificate or token, or none where the node requires one.
    Unauthenticated,
    /// The caller is known but not allowed to do this (see the roles in
    /// [`crate::auth`]).
    PermissionDenied,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// Class.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The leader, when known (for `NotLeader`).
    pub leader: Option<NodeId>,
    /// The leader's client address, when known.
    #[serde(default)]
    pub leader_address: Option<String>,
}

impl ApiError {
    /// An error without a leader hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            leader: None,
            leader_address: None,
        }
    }
}

/// What a writer is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteAnswer {
    /// Its entry committed with this outcome (every replica computes the
    /// same).
    Written {
        /// The machine's deterministic result.
        outcome: crate::types::Outcome,
        /// Term of the entry (session token).
        term: Term,
        /// Index of the entry (session token).
        index: Index,
    },
    /// `leader` concern: its entry is durable on the leader (not yet
    /// committed; may be lost on failover).
    Accepted {
        /// Term of the entry.
        term: Term,
        /// Index of the entry.
        index: Index,
    },
    /// Refused, superseded, timed out or unknown: see the error's code.
    Refused(ApiError),
}
