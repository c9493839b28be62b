//! The sans-IO protocol core: a deterministic value that decides what the
//! node does, and never does it itself.
//!
//! The shell (the node actor) feeds it inputs — a client proposal, "entries
//! up to N are durable", "entries up to N are applied", a clock tick — and
//! drains a [`Ready`] of outputs to execute in order: persist the hard state,
//! append entries, apply up to an index. No sockets, disk, clock, threads or
//! randomness live here (time and seeds arrive as arguments), so a test or a
//! simulator can drive it step by step and replay any run exactly.
//!
//! Today the group configuration may hold one member; the commit rule is
//! already "a majority of members have the entry durable, and it is of the
//! current term", and the hard state (term, vote) is persisted before it is
//! acted on. Replication adds peer messages to the same inputs and outputs.

use crate::storage::HardState;
use crate::types::{Entry, EntryContext, Index, NodeId, Payload, Term};

/// Static group configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// This node.
    pub id: NodeId,
    /// Every voting member, including this node.
    pub members: Vec<NodeId>,
}

/// A node's role in its term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
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
}

/// What the shell must do, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Persist this hard state (fsync) before anything below.
    pub hard_state: Option<HardState>,
    /// Append these entries to the log (they continue it).
    pub append: Vec<Entry>,
    /// Apply committed entries up to this index.
    pub apply_up_to: Option<Index>,
}

impl Ready {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.append.is_empty() && self.apply_up_to.is_none()
    }
}

/// The protocol state of one node.
#[derive(Debug)]
pub struct Core {
    config: GroupConfig,
    role: Role,
    hard: HardState,
    leader: Option<NodeId>,
    /// Last index/term of the log, including entries not yet durable.
    last_index: Index,
    last_term: Term,
    /// Highest index durable on this node.
    persisted_index: Index,
    /// First index of the current leader term (its no-op).
    term_start_index: Index,
    commit_index: Index,
    /// Highest index the shell was asked to apply.
    apply_requested: Index,
    applied_index: Index,
    last_timestamp_ms: u64,
    ready: Ready,
}

impl Core {
    /// A core resuming from durable state: hard state, last log entry and
    /// applied index. Everything in the log is durable at start.
    pub fn new(config: GroupConfig, hard: HardState, last: (Index, Term), applied: Index) -> Self {
        assert!(
            config.members.contains(&config.id),
            "a node is a member of its group"
        );
        assert!(
            applied <= last.0,
            "applied index {applied} beyond the log end {}",
            last.0
        );
        Core {
            config,
            role: Role::Follower,
            hard,
            leader: None,
            last_index: last.0,
            last_term: last.1,
            persisted_index: last.0,
            term_start_index: 0,
            // Entries applied before were committed before.
            commit_index: applied,
            apply_requested: applied,
            applied_index: applied,
            last_timestamp_ms: 0,
            ready: Ready::default(),
        }
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.hard.term
    }
    /// Vote in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.hard.vote
    }
    /// Known leader.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Last log index (durable or not).
    pub fn last_index(&self) -> Index {
        self.last_index
    }
    /// Commit index.
    pub fn commit_index(&self) -> Index {
        self.commit_index
    }
    /// Applied index as last reported by the shell.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }
    /// Durable index on this node.
    pub fn persisted_index(&self) -> Index {
        self.persisted_index
    }

    fn quorum(&self) -> usize {
        self.config.members.len() / 2 + 1
    }

    /// Advance time. A lone member elects itself at once; with peers the
    /// election timer lives here too (Supervisor issue).
    pub fn tick(&mut self, _now_ms: u64) {
        if self.role != Role::Leader && self.config.members.len() == 1 {
            self.campaign();
        }
    }

    fn campaign(&mut self) {
        self.hard = HardState {
            term: self.hard.term + 1,
            vote: Some(self.config.id),
        };
        self.ready.hard_state = Some(self.hard);
        self.role = Role::Candidate;
        // Our own vote is durable once the shell executes `hard_state`,
        // which precedes everything else in this Ready.
        let votes = 1;
        if votes >= self.quorum() {
            self.become_leader();
        }
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        // Promotion: commit an entry of our own term before anything of an
        // earlier term counts as committed.
        self.term_start_index = self.last_index + 1;
        self.push_entry(
            Payload::Noop,
            EntryContext {
                timestamp_ms: self.last_timestamp_ms,
                seed: 0,
            },
        );
        tracing::info!(
            term = self.hard.term,
            node = self.config.id,
            "became leader"
        );
    }

    fn push_entry(&mut self, payload: Payload, context: EntryContext) -> Index {
        let index = self.last_index + 1;
        let term = self.hard.term;
        debug_assert!(term >= self.last_term, "terms never decrease along the log");
        self.ready.append.push(Entry {
            index,
            term,
            context,
            payload,
        });
        self.last_index = index;
        self.last_term = term;
        index
    }

    /// Propose a new entry. `now_ms` and `seed` come from the shell; the
    /// timestamp is made non-decreasing along the log here.
    pub fn propose(
        &mut self,
        payload: Payload,
        now_ms: u64,
        seed: u64,
    ) -> Result<Index, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        self.last_timestamp_ms = self.last_timestamp_ms.max(now_ms);
        let context = EntryContext {
            timestamp_ms: self.last_timestamp_ms,
            seed,
        };
        Ok(self.push_entry(payload, context))
    }

    /// The shell made entries up to `index` durable.
    pub fn persisted(&mut self, index: Index) {
        assert!(
            index <= self.last_index,
            "persisted {index} beyond log end {}",
            self.last_index
        );
        self.persisted_index = self.persisted_index.max(index);
        self.advance_commit();
    }

    fn advance_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        // With one member the majority match is our own durable index;
        // replication replaces this by the quorum-th highest match index.
        let majority_match = self.persisted_index;
        if majority_match >= self.term_start_index && majority_match > self.commit_index {
            self.commit_index = majority_match;
        }
        if self.commit_index > self.apply_requested {
            self.apply_requested = self.commit_index;
            self.ready.apply_up_to = Some(self.commit_index);
        }
    }

    /// The shell applied entries up to `index`.
    pub fn applied(&mut self, index: Index) {
        assert!(
            index <= self.commit_index,
            "applied {index} beyond commit {}: only committed entries are applied",
            self.commit_index
        );
        assert!(index >= self.applied_index, "applied index never goes back");
        self.applied_index = index;
    }

    /// Take the outputs accumulated since the last call.
    pub fn ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    fn single() -> Core {
        Core::new(
            GroupConfig {
                id: 1,
                members: vec![1],
            },
            HardState::default(),
            (0, 0),
            0,
        )
    }

    fn cmd() -> Payload {
        Payload::Command {
            actor: "a".into(),
            client: None,
            command: ByteBuf::new(),
        }
    }

    #[test]
    fn lone_member_persists_its_vote_before_leading_and_commits_a_noop() {
        let mut c = single();
        assert!(matches!(
            c.propose(cmd(), 0, 0),
            Err(ProposeError::NotLeader { .. })
        ));
        c.tick(0);
        let r = c.ready();
        assert_eq!(
            r.hard_state,
            Some(HardState {
                term: 1,
                vote: Some(1)
            })
        );
        assert_eq!(r.append.len(), 1);
        assert_eq!(r.append[0].payload, Payload::Noop);
        assert_eq!(r.apply_up_to, None, "nothing commits before it is durable");
        c.persisted(1);
        assert_eq!(c.ready().apply_up_to, Some(1));
    }

    #[test]
    fn commit_waits_for_durability_and_never_goes_back() {
        let mut c = single();
        c.tick(0);
        c.ready();
        c.persisted(1);
        c.ready();
        let a = c.propose(cmd(), 10, 1).unwrap();
        let b = c.propose(cmd(), 5, 2).unwrap();
        let r = c.ready();
        assert_eq!((a, b), (2, 3));
        assert!(r.append[1].context.timestamp_ms >= r.append[0].context.timestamp_ms);
        assert_eq!(c.commit_index(), 1);
        c.persisted(3);
        assert_eq!(c.ready().apply_up_to, Some(3));
        c.persisted(2);
        assert_eq!(c.commit_index(), 3);
        c.applied(3);
    }

    #[test]
    fn restart_resumes_in_a_new_term_after_the_old_log() {
        let mut c = Core::new(
            GroupConfig {
                id: 1,
                members: vec![1],
            },
            HardState {
                term: 4,
                vote: Some(1),
            },
            (10, 4),
            7,
        );
        c.tick(0);
        let r = c.ready();
        assert_eq!(r.hard_state.unwrap().term, 5);
        assert_eq!(r.append[0].index, 11);
        c.persisted(11);
        assert_eq!(
            c.ready().apply_up_to,
            Some(11),
            "the old tail commits with the new no-op"
        );
    }

    #[test]
    #[should_panic(expected = "only committed entries are applied")]
    fn applying_beyond_commit_is_caught() {
        let mut c = single();
        c.tick(0);
        c.applied(1);
    }
}
