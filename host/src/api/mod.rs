//! The actor message API v0: what clients send to a node and what they get
//! back, plus the Rust [`client::Client`].
//!
//! Every frame is `{ v, id, body }`: `v` is the protocol version (a node
//! refuses a newer one with [`ErrorCode::UnsupportedVersion`]), `id` pairs a
//! response with its request (requests may be pipelined and answered out of
//! order), `body` a [`Request`] or [`Response`].

pub mod client;

use crate::replication::Role;
use crate::types::{ClientTag, Index, NodeId, Outcome, Term};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;

/// One frame on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Frame<T> {
    /// Protocol version.
    pub v: u16,
    /// Request id, echoed in the response. 0 is for connection-level errors.
    pub id: u64,
    /// The message.
    pub body: T,
}

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteConcern {
    /// After a majority has it durable and the leader applied it (never lost).
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

/// A client request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Deploy a machine as an actor (through the log).
    Deploy {
        /// Actor name.
        actor: String,
        /// Component or core module bytes.
        wasm: ByteBuf,
    },
    /// Send a command to an actor (through the log).
    Command {
        /// Actor name.
        actor: String,
        /// CBOR command.
        command: ByteBuf,
        /// Exactly-once tag.
        client: Option<ClientTag>,
        /// Write concern.
        concern: WriteConcern,
    },
    /// Read from an actor's applied state.
    Query {
        /// Actor name.
        actor: String,
        /// CBOR request.
        request: ByteBuf,
        /// Consistency level.
        #[serde(default)]
        level: ReadLevel,
    },
    /// Node status.
    Status,
    /// Manual switchover: the leader brings `node` up to date, stops taking
    /// writes, and hands leadership over (in a new term). With `force`,
    /// sent to `node` itself: for a group that lost its majority, `node`
    /// becomes a group of one and leads — writes it lacks are lost.
    Promote {
        /// The member that is to lead.
        node: NodeId,
        /// The operator's decision for a lost majority.
        #[serde(default)]
        force: bool,
    },
}

impl Request {
    /// The door check every request passes before it reaches the log or a
    /// machine: names and sizes within [`crate::limits`]. What it refuses
    /// never costs the group anything.
    pub fn admit(&self) -> Result<(), ApiError> {
        use crate::limits::{COMMAND_BYTES_MAX, MODULE_BYTES_MAX, QUERY_BYTES_MAX, check};
        let too_large = |m: String| ApiError::new(ErrorCode::TooLarge, m);
        let bad_name = |m: String| ApiError::new(ErrorCode::BadRequest, m);
        match self {
            Request::Command { actor, command, .. } => {
                crate::types::validate_actor_name(actor).map_err(bad_name)?;
                check(
                    "the command",
                    command.len(),
                    "COMMAND_BYTES_MAX",
                    COMMAND_BYTES_MAX,
                )
                .map_err(too_large)
            }
            Request::Query { actor, request, .. } => {
                crate::types::validate_actor_name(actor).map_err(bad_name)?;
                check(
                    "the query",
                    request.len(),
                    "QUERY_BYTES_MAX",
                    QUERY_BYTES_MAX,
                )
                .map_err(too_large)
            }
            Request::Deploy { actor, wasm } => {
                crate::types::validate_actor_name(actor).map_err(bad_name)?;
                check(
                    "the module",
                    wasm.len(),
                    "MODULE_BYTES_MAX",
                    MODULE_BYTES_MAX,
                )
                .map_err(too_large)
            }
            Request::Status | Request::Promote { .. } => Ok(()),
        }
    }
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
    /// the limit and its value (see [`crate::limits`]).
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

/// Node status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Node id.
    pub node_id: NodeId,
    /// Cluster id.
    pub cluster_id: String,
    /// Role.
    pub role: Role,
    /// Term.
    pub term: Term,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Last log index.
    pub last_index: Index,
    /// First index still in the log (earlier ones are compacted).
    #[serde(default)]
    pub log_first_index: Index,
    /// Commit index.
    pub commit_index: Index,
    /// Applied index.
    pub applied_index: Index,
    /// State digest at the applied index (hex).
    pub digest: String,
    /// Deployed actors.
    pub actors: Vec<String>,
    /// Writes waiting for the log or the applier.
    pub pending_writes: usize,
    /// Vote in the current term.
    #[serde(default)]
    pub vote: Option<NodeId>,
    /// Milliseconds since the leader was last heard from (0 on the leader).
    #[serde(default)]
    pub leader_heard_ms_ago: Option<u64>,
    /// The leader's client address, when known.
    #[serde(default)]
    pub leader_address: Option<String>,
    /// On the leader: each follower's replication state.
    #[serde(default)]
    pub followers: Vec<crate::replication::FollowerStatus>,
    /// Why this node serves no reads, if it is quarantined (a determinism
    /// alarm) or halted (its state damaged at rest, applying failed).
    #[serde(default)]
    pub quarantined: Option<String>,
    /// A snapshot being received, if any.
    #[serde(default)]
    pub snapshot_in: Option<SnapshotProgress>,
    /// While this node is recovering from a lost data directory: the index
    /// its durable log must reach before it campaigns again (it votes, once
    /// it has heard enough peers, only for logs at least that up-to-date).
    #[serde(default)]
    pub recovering_until: Option<Index>,
    /// A host fault this node has (a full disk, an I/O error): it stepped
    /// down and refuses reads and writes until it clears.
    #[serde(default)]
    pub fault: Option<String>,
    /// Client addresses of the members this node knows (itself included).
    #[serde(default)]
    pub client_addresses: std::collections::BTreeMap<NodeId, String>,
}

/// Progress of a snapshot a follower receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// The applied index the snapshot is the state of.
    pub index: Index,
    /// Chunks received and verified.
    pub chunks_done: u64,
    /// Chunks in all.
    pub chunks: u64,
    /// Bytes in all.
    pub bytes: u64,
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A write (command or deploy) was committed and applied.
    Written {
        /// Its deterministic result.
        outcome: Outcome,
        /// Term of the entry (session token).
        term: Term,
        /// Index of the entry (session token).
        index: Index,
    },
    /// A write with the `leader` concern is durable on the leader; it is
    /// not yet committed and may be lost on failover. Its outcome can be
    /// read with a `session` read of this token.
    Accepted {
        /// Term of the entry.
        term: Term,
        /// Index of the entry.
        index: Index,
    },
    /// A query answer.
    Read {
        /// The machine's answer.
        outcome: Outcome,
        /// Applied index the answer reflects.
        applied_index: Index,
    },
    /// Status.
    Status(Box<Status>),
    /// A switchover has started; watch `leader` in the status.
    Promoting {
        /// The member that is to lead.
        node: NodeId,
        /// The term of the leader handing over.
        term: Term,
    },
    /// An error.
    Error(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{COMMAND_BYTES_MAX, MODULE_BYTES_MAX, QUERY_BYTES_MAX};

    fn command(actor: &str, len: usize) -> Request {
        Request::Command {
            actor: actor.into(),
            command: ByteBuf::from(vec![0u8; len]),
            client: None,
            concern: WriteConcern::Majority,
        }
    }

    fn query(actor: &str, len: usize) -> Request {
        Request::Query {
            actor: actor.into(),
            request: ByteBuf::from(vec![0u8; len]),
            level: ReadLevel::Any,
        }
    }

    fn deploy(actor: &str, len: usize) -> Request {
        Request::Deploy {
            actor: actor.into(),
            wasm: ByteBuf::from(vec![0u8; len]),
        }
    }

    #[test]
    fn the_door_admits_every_limit_and_refuses_one_past_it_by_name() {
        for (at, past, name) in [
            (
                command("kv", COMMAND_BYTES_MAX),
                command("kv", COMMAND_BYTES_MAX + 1),
                "COMMAND_BYTES_MAX",
            ),
            (
                query("kv", QUERY_BYTES_MAX),
                query("kv", QUERY_BYTES_MAX + 1),
                "QUERY_BYTES_MAX",
            ),
            (
                deploy("kv", MODULE_BYTES_MAX),
                deploy("kv", MODULE_BYTES_MAX + 1),
                "MODULE_BYTES_MAX",
            ),
        ] {
            assert_eq!(at.admit(), Ok(()), "{name}");
            let e = past.admit().unwrap_err();
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(e.message.contains(name), "{}", e.message);
        }
        let longest = "a".repeat(crate::types::ACTOR_NAME_MAX_BYTES);
        assert_eq!(command(&longest, 1).admit(), Ok(()));
        for bad in [
            String::new(),
            format!("{longest}a"),
            "Kv".into(),
            "1kv".into(),
            "k v".into(),
        ] {
            for r in [command(&bad, 1), query(&bad, 1), deploy(&bad, 1)] {
                assert_eq!(
                    r.admit().unwrap_err().code,
                    ErrorCode::BadRequest,
                    "{bad:?}"
                );
            }
        }
    }
}
