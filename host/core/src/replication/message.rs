//! The core's vocabulary: its configuration, hard state, role, the
//! messages between members, what it asks the shell to do (`Ready`), how
//! it reads the durable log (`LogRead`), and its errors.

use crate::types::{Entry, Index, NodeId, Term};
use serde::{Deserialize, Serialize};

/// Persistent vote and term (Raft's "hard state"): written (fsync) before
/// the node acts on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Current term.
    pub term: Term,
    /// Whom this node voted for in `term`.
    pub vote: Option<NodeId>,
}

/// Static group configuration and timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// This node.
    pub id: NodeId,
    /// The bootstrap voters (this node among them, or empty for a node
    /// that joins a running group): the configuration in effect until
    /// the log holds one (see [`crate::membership`]).
    pub members: Vec<NodeId>,
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Election timeouts are drawn uniformly from `[min, max)`.
    pub election_timeout_min_ms: u64,
    /// Upper bound (exclusive) of the election timeout.
    pub election_timeout_max_ms: u64,
    /// Most entry bytes in one append message.
    pub append_bytes_max: usize,
    /// Most append messages in flight to one follower.
    pub inflight_appends_max: usize,
}

impl GroupConfig {
    /// A group with default timing.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        GroupConfig {
            id,
            members,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            append_bytes_max: 1 << 20,
            inflight_appends_max: 16,
        }
    }
}

/// A node's role in its term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether an election could succeed, without bumping the term.
    PreCandidate,
    /// Asking for votes.
    Candidate,
    /// Takes writes.
    Leader,
}

/// Why a proposal was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes writes.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Where the leader is believed to be.
        leader: Option<NodeId>,
    },
    /// The leader is handing leadership over and takes no new writes.
    #[error("leadership is being transferred to node {to}")]
    Transferring {
        /// The node that will lead.
        to: NodeId,
    },
}

/// Why a leadership transfer cannot start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader can hand over.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Where the leader is believed to be.
        leader: Option<NodeId>,
    },
    /// The target is not a voter (or is this node).
    #[error("node {0} is not another voting member of the group")]
    NotAMember(NodeId),
}

/// A message between members of a group. Every message carries its sender's
/// term; a higher term makes the receiver step down at once (fencing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Log shipping (an empty one probes where a follower's log ends;
    /// liveness and the commit index travel in [`Message::Heartbeat`]).
    Append {
        /// Leader's term.
        term: Term,
        /// Index before the first entry.
        prev_index: Index,
        /// Term of the entry at `prev_index`.
        prev_term: Term,
        /// Entries to append (empty for a heartbeat).
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: Index,
    },
    /// Answer to `Append`.
    AppendResponse {
        /// Responder's term.
        term: Term,
        /// Whether the log matched at `prev_index`.
        success: bool,
        /// On success: the responder's log matches the leader's up to here
        /// and it is durable. On failure: where the leader should retry
        /// (the responder's last index, or the index before the conflict).
        index: Index,
        /// On failure: the `prev_index` of the refused append, so that a
        /// late or duplicated refusal is recognised as stale and ignored.
        rejected: Index,
    },
    /// Vote request; `pre` is a pre-vote (no state changes on either side).
    Vote {
        /// The term the candidate runs for.
        term: Term,
        /// Candidate's last log index.
        last_index: Index,
        /// Candidate's last log term.
        last_term: Term,
        /// Pre-vote?
        pre: bool,
        /// Asked for by the leader (leadership transfer): voters set aside
        /// leader stickiness, since the leader itself stepped aside.
        #[serde(default)]
        transfer: bool,
    },
    /// The leader hands over: the receiver (caught up) starts an election
    /// at once, skipping the pre-vote.
    TimeoutNow {
        /// Leader's term.
        term: Term,
    },
    /// Leader liveness and commit index, on a path separate from bulk
    /// appends so it never waits behind them. `commit` never exceeds what
    /// the receiver is known to hold; `seq` confirms leadership for reads.
    Heartbeat {
        /// Leader's term.
        term: Term,
        /// min(leader's commit index, receiver's match index).
        commit: Index,
        /// Heartbeat round, echoed in the response.
        seq: u64,
    },
    /// Answer to `Heartbeat`.
    HeartbeatResponse {
        /// Responder's term.
        term: Term,
        /// The round answered.
        seq: u64,
    },
    /// A follower asks the leader for a read index (linearizable read).
    ReadIndex {
        /// Follower's term.
        term: Term,
        /// Follower's request id, echoed.
        ctx: u64,
    },
    /// The leader's answer: reading at `index` or later is linearizable.
    ReadIndexResponse {
        /// Leader's term.
        term: Term,
        /// The follower's request id.
        ctx: u64,
        /// Apply up to here, then read.
        index: Index,
    },
    /// Answer to `Vote`.
    VoteResponse {
        /// For a granted vote the term voted in; else the responder's term.
        term: Term,
        /// Granted?
        granted: bool,
        /// Answer to a pre-vote?
        pre: bool,
    },
}

impl Message {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            Message::Append { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatResponse { term, .. }
            | Message::ReadIndex { term, .. }
            | Message::ReadIndexResponse { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }
}

/// Read access to the durable log, for term checks and log shipping.
pub trait LogRead {
    /// Term of the durable entry at `index` (`Some(0)` for index 0).
    fn term(&self, index: Index) -> Option<Term>;
    /// Durable entries `from..=to`, at most about `bytes_max` (at least one).
    fn entries(&self, from: Index, to: Index, bytes_max: usize) -> Vec<Entry>;
    /// First index still in the log: entries before it were compacted
    /// into a snapshot (`term(first_index - 1)` is still known).
    fn first_index(&self) -> Index {
        1
    }
    /// Timestamp of the last compacted entry (0 if unknown or none): a
    /// leader whose log's last entry was compacted (or replaced by a
    /// snapshot) never stamps an entry earlier than it.
    fn compacted_timestamp_ms(&self) -> u64 {
        0
    }
}

/// What the shell must do, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Persist this hard state (fsync) before anything below.
    pub hard_state: Option<HardState>,
    /// Remove every durable entry at this index and after, before appending.
    pub truncate_from: Option<Index>,
    /// Append these entries to the log (they continue it).
    pub append: Vec<Entry>,
    /// Send these messages.
    pub messages: Vec<(NodeId, Message)>,
    /// Apply committed entries up to this index.
    pub apply_up_to: Option<Index>,
    /// Linearizable reads of this node that may run once the applied index
    /// reaches the given index: (request id, read index).
    pub reads: Vec<(u64, Index)>,
    /// Read requests of this node that cannot be served (leadership lost).
    pub failed_reads: Vec<u64>,
    /// Followers that need entries this node has compacted: send each a
    /// snapshot of the state, then report [`Core::snapshot_failed`] on
    /// failure (success shows as the follower's acknowledgement).
    pub snapshots: Vec<NodeId>,
}

impl Ready {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.truncate_from.is_none()
            && self.append.is_empty()
            && self.messages.is_empty()
            && self.apply_up_to.is_none()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.snapshots.is_empty()
    }
}

/// A follower's replication state as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerStatus {
    /// The follower.
    pub id: NodeId,
    /// Highest index known durable and matching there.
    pub matched: Index,
    /// Entries behind the leader's last index.
    pub lag_entries: u64,
    /// Age in milliseconds of the oldest entry it lacks (0 when caught up).
    pub lag_ms: u64,
    /// Milliseconds since the leader last heard from it.
    pub heard_ms_ago: u64,
    /// It needs a snapshot (entries it lacks are compacted).
    #[serde(default)]
    pub snapshot: bool,
}
