//! The sans-IO protocol core: a deterministic value that decides what the
//! node does, and never does it itself.
//!
//! The shell (the node state in [`crate::node`], which the node actor and the
//! simulator in `crate::sim` drive) feeds it inputs —
//! a client proposal, a peer message, "entries up to N are durable",
//! "entries up to N are applied", a clock tick — and drains a [`Ready`] of
//! outputs to execute in order: persist the hard state, truncate and append
//! the log, send messages, apply up to an index. No sockets, disk, clock or
//! threads live here: time arrives as an argument, randomness (election
//! timeouts) comes from a seeded generator, and the durable log is read
//! through [`LogRead`]. So a simulator can drive a whole group step by step
//! and replay any run exactly from its seed.
//!
//! The protocol is Raft: terms, randomized election timeouts with pre-vote,
//! votes granted only to candidates whose log is at least as up to date by
//! (last term, last index), a no-op entry that a new leader commits before
//! anything else counts, log shipping with the (prev index, prev term)
//! consistency check and truncation of a conflicting suffix, commit by the
//! quorum-th match index restricted to the current term, check-quorum
//! step-down, and leader stickiness (a node that heard from a live leader
//! within the minimum election timeout ignores vote requests).
//!
//! Followers acknowledge entries only once they are durable, and a vote is
//! sent only in a [`Ready`] whose `hard_state` (persisted first) records it.
//!
//! One concept per file, as raft-rs and openraft split theirs: `message.rs`
//! (the vocabulary: configuration, hard state, messages, `Ready`,
//! `LogRead`, errors), `progress.rs` (what the leader knows of each
//! follower), `election.rs`, `replicate.rs` (proposals, appends, commit,
//! apply, snapshots), `read.rs` (heartbeat rounds, read index, lease),
//! `transfer.rs`, `lost_data.rs` (a member that lost its disk). This file
//! holds `Core` itself: its state, its constructor and getters, the clock
//! (`tick`), the dispatch of messages (`step`) and `ready`.

mod election;
#[cfg(test)]
mod fuzz;
mod lost_data;
mod message;
mod progress;
mod read;
mod replicate;
#[cfg(test)]
pub(crate) mod tests;
mod transfer;

pub use message::{
    FollowerStatus, GroupConfig, HardState, LogRead, Message, ProposeError, Ready, Role,
    TransferError,
};
use progress::Progress;

use crate::membership::{Membership, MembershipError, MembershipLog};
use crate::types::{Entry, EntryContext, Index, NodeId, Payload, Term};
use std::collections::{BTreeMap, BTreeSet};

/// A linearizable read waiting for its heartbeat round.
#[derive(Clone, Debug)]
struct PendingRead {
    /// Who asked (this node or a follower).
    from: NodeId,
    ctx: u64,
    index: Index,
    seq: u64,
}

/// Heartbeat rounds whose send time the leader keeps (for leases and read
/// indexes); answers to older rounds are ignored.
const HEARTBEAT_ROUNDS_KEPT: usize = 256;

/// How many maximum election timeouts a leader keeps shipping the log to
/// a member a configuration change took out, for it to learn so.
pub const LEAVING_ELECTION_TIMEOUTS: u64 = 20;

/// An entry's size beyond its payload, for bounding append messages.
const ENTRY_OVERHEAD_BYTES_ESTIMATE: usize = 48;

/// The size of an auth or audit entry, for bounding append messages
/// (they are bounded by the auth limits).
const AUTH_ENTRY_BYTES_ESTIMATE: usize = 256;

/// SplitMix64, for election timeouts (and the node state's entry seeds):
/// deterministic per seed.
#[derive(Clone, Debug)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Peers heard by a node that lost its data, with their log positions.
type HeardPositions = BTreeMap<NodeId, (Term, Index)>;

/// The protocol state of one node.
#[derive(Debug)]
pub struct Core {
    config: GroupConfig,
    /// The configurations of the log that can still be in effect; the
    /// last one is (see [`crate::membership`]).
    memberships: MembershipLog,
    role: Role,
    hard: HardState,
    leader: Option<NodeId>,
    /// Entries handed to the shell but not yet reported durable.
    unstable: Vec<Entry>,
    /// Everything at or after this index is being replaced (pending
    /// truncation); durable terms there are stale.
    truncated_from: Option<Index>,
    last_index: Index,
    last_term: Term,
    /// Highest index durable on this node (with the term we know there).
    persisted_index: Index,
    /// Term of the entry at `persisted_index`.
    persisted_term: Term,
    /// First index of the current leader term (its no-op).
    term_start_index: Index,
    commit_index: Index,
    apply_requested: Index,
    applied_index: Index,
    last_timestamp_ms: u64,
    now_ms: u64,
    election_deadline_ms: u64,
    heartbeat_due_ms: u64,
    check_quorum_due_ms: u64,
    /// When a leader was last heard from (for stickiness and pre-votes).
    leader_seen_ms: Option<u64>,
    votes: BTreeMap<NodeId, bool>,
    progress: BTreeMap<NodeId, Progress>,
    /// On the leader: members a configuration change took out, still
    /// shipped the log until they hold that configuration (index) — so
    /// they learn they were removed and stop serving — or until the time
    /// given ([`LEAVING_ELECTION_TIMEOUTS`]).
    leaving: BTreeMap<NodeId, (Index, u64)>,
    /// Ack owed to the leader once `persisted_index` reaches the index.
    ack_owed: Option<(NodeId, Index)>,
    /// Heartbeat round of the leader.
    heartbeat_seq: u64,
    pending_reads: Vec<PendingRead>,
    /// A read waits for a heartbeat round not yet sent.
    read_round_wanted: bool,
    /// Leadership transfer in progress: (target, give up at, TimeoutNow sent).
    transfer: Option<(NodeId, u64, bool)>,
    /// A TimeoutNow went out in this term. Delivered late, after the
    /// transfer was given up, it still elects its target with transfer
    /// votes, which disregard the lease this leader counts on: so no lease
    /// read for the rest of the term (ReadIndex reads still run).
    lease_forfeited: bool,
    /// When each recent heartbeat round was sent (for the leader lease).
    rounds_sent: std::collections::VecDeque<(u64, u64)>,
    /// No vote is granted before this time: a node that just started may
    /// have promised a leader, before it stopped, not to vote for a while
    /// (the leader's lease counts on that promise).
    vote_embargo_until_ms: u64,
    /// This node came back without its data: the most up-to-date log
    /// position (last term, last index) of the voters among the peers it
    /// heard from since (see `lost_terms`). Every entry the group committed before the loss
    /// is in a log at least this up-to-date, so the node votes only for a
    /// candidate whose log is at least this up-to-date (its own empty log
    /// would let it vote for anyone, and elect a member missing committed
    /// entries), and does not campaign until its durable log reaches it.
    /// (0, 0): never lost its data.
    recovery_floor: (Term, Index),
    /// Peers that came back without their data, with the time until which
    /// their votes are not counted: a vote granted before the peer learned
    /// it (sent before its hello was answered, still on its way) arrives
    /// within a maximum election timeout; after that its votes count again
    /// (it refuses to vote itself until it has caught up).
    lost_data: BTreeMap<NodeId, u64>,
    /// Told it lost its data, and not yet sure of the terms its old
    /// incarnation may have used: the peers heard from since, with their
    /// log positions (hello answers and vote requests carry them), and the
    /// highest term heard. Once it has heard from enough peers that they
    /// intersect every majority its old incarnation could have voted or led
    /// in, or committed an entry with (`n - quorum + 1`), it takes that term
    /// with a vote for itself — so it neither votes nor leads again in a
    /// term it may have used — its `recovery_floor` covers every committed
    /// entry, and this ends. Until then it neither votes nor campaigns.
    lost_terms: Option<(HeardPositions, Term)>,
    /// This node's vote in the current term went to a peer that has since
    /// come back without its data: the vote stands (no one else gets it),
    /// but that peer — a new incarnation with another log — does not get
    /// it again, or it could lead this term a second time with another log.
    vote_void: bool,
    /// Peers that answered this node's hello since it started. It votes
    /// only for those: a peer that knew this node under another
    /// incarnation says so in that answer, and a vote granted before it
    /// arrived could elect a candidate missing entries this node's lost
    /// data held (a candidate's requests can come over the candidate's own
    /// connection before this node's hello to it is answered).
    hello_from: BTreeSet<NodeId>,
    /// The newest configuration (with its index) a peer's hello answer
    /// reported: what a node that lost its data counts its peers against.
    reported_membership: Option<(Index, Membership)>,
    /// False while the shell has a host fault (a disk that cannot take
    /// the state): the node follows and votes but does not campaign.
    candidacy: bool,
    rng: Rng,
    ready: Ready,
}

impl Core {
    /// A core resuming from durable state: hard state, last log entry and
    /// applied index. `seed` drives the election timeouts.
    pub fn new(
        config: GroupConfig,
        hard: HardState,
        last: (Index, Term),
        applied: Index,
        seed: u64,
    ) -> Self {
        assert!(
            applied <= last.0,
            "applied index {applied} beyond the log end {}",
            last.0
        );
        assert!(
            config.election_timeout_min_ms < config.election_timeout_max_ms
                && config.heartbeat_interval_ms < config.election_timeout_min_ms,
            "heartbeat < election timeout min < max"
        );
        let mut core = Core {
            rng: Rng(seed ^ config.id.rotate_left(17)),
            memberships: MembershipLog::new(0, Membership::of_voters(config.members.clone())),
            config,
            role: Role::Follower,
            hard,
            leader: None,
            unstable: Vec::new(),
            truncated_from: None,
            last_index: last.0,
            last_term: last.1,
            persisted_index: last.0,
            persisted_term: last.1,
            term_start_index: 0,
            // Entries applied before were committed before.
            commit_index: applied,
            apply_requested: applied,
            applied_index: applied,
            last_timestamp_ms: 0,
            now_ms: 0,
            election_deadline_ms: 0,
            heartbeat_due_ms: 0,
            check_quorum_due_ms: 0,
            leader_seen_ms: None,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            leaving: BTreeMap::new(),
            ack_owed: None,
            heartbeat_seq: 0,
            pending_reads: Vec::new(),
            read_round_wanted: false,
            transfer: None,
            lease_forfeited: false,
            rounds_sent: Default::default(),
            vote_embargo_until_ms: 0,
            recovery_floor: (0, 0),
            lost_data: BTreeMap::new(),
            candidacy: true,
            vote_void: false,
            hello_from: BTreeSet::new(),
            reported_membership: None,
            lost_terms: None,
            ready: Ready::default(),
        };
        core.reset_election_timer();
        core
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
    /// The group configuration this core runs with (members, timing).
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The configuration in effect: the last one in this node's log
    /// (committed or not), else the bootstrap one (`config.members`).
    pub fn membership(&self) -> &Membership {
        self.memberships.current().1
    }
    /// The index of the configuration in effect (0: the bootstrap one).
    pub fn membership_index(&self) -> Index {
        self.memberships.current().0
    }
    /// The configuration a snapshot of the state at `index` carries: the
    /// newest at or below it. `None` if `index` is below every
    /// configuration this core still keeps (below the commit index).
    pub fn membership_at(&self, index: Index) -> Option<&Membership> {
        self.memberships.at(index)
    }
    /// Whether this node votes (a voter of either set while joint).
    pub fn is_voter(&self) -> bool {
        self.membership().is_voter(self.config.id)
    }
    /// After a restart: the configurations the durable log holds, oldest
    /// first, the first at or below the applied index (from the log's
    /// configuration table, or the snapshot it was reset to). Empty: the
    /// bootstrap configuration stays.
    pub fn restore_memberships(&mut self, entries: Vec<(Index, Membership)>) {
        if entries.is_empty() {
            return;
        }
        let bootstrap = self.membership().clone();
        self.memberships = MembershipLog::from_entries(entries, bootstrap);
        self.memberships.committed(self.commit_index);
        self.reset_election_timer();
    }
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }
    /// Last log index (durable or not).
    pub fn last_index(&self) -> Index {
        self.last_index
    }
    /// Term of the last log entry (durable or not).
    pub fn last_term(&self) -> Term {
        self.last_term
    }
    /// The durable log's position (term, index): what this node tells a
    /// peer that lost its data (see `recovery_floor`). Not the last
    /// position: an entry not yet durable may vanish in a crash, and a
    /// floor above every surviving log would leave the peer unable to
    /// vote for anyone.
    pub fn durable_position(&self) -> (Term, Index) {
        (self.persisted_term, self.persisted_index)
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
    /// Milliseconds (of the shell's clock, as of the last input) since a
    /// leader was last heard from; 0 on the leader itself.
    pub fn leader_heard_ms_ago(&self) -> Option<u64> {
        if self.role == Role::Leader {
            return Some(0);
        }
        self.leader_seen_ms
            .filter(|_| self.leader.is_some())
            .map(|t| self.now_ms.saturating_sub(t))
    }
    /// On the leader: members a change took out that it still ships the
    /// log to (until they hold that change).
    pub fn leaving(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.leaving.keys().copied()
    }
    /// On the leader: every follower's replication state.
    pub fn followers(&self, log: &impl LogRead) -> Vec<FollowerStatus> {
        self.progress
            .iter()
            .map(|(&id, p)| {
                let oldest_missing = if p.matched >= self.last_index {
                    None
                } else if let Some(e) = self.unstable.iter().find(|e| e.index == p.matched + 1) {
                    Some(e.context.timestamp_ms)
                } else {
                    let i = p.matched + 1;
                    log.entries(i, i, 1).first().map(|e| e.context.timestamp_ms)
                };
                FollowerStatus {
                    id,
                    matched: p.matched,
                    lag_entries: self.last_index.saturating_sub(p.matched),
                    lag_ms: oldest_missing.map_or(0, |t| self.now_ms.saturating_sub(t)),
                    heard_ms_ago: self.now_ms.saturating_sub(p.heard_ms),
                    snapshot: p.snapshotting,
                }
            })
            .collect()
    }

    /// Whether this node alone makes a majority of every voter set.
    pub(super) fn alone_is_quorum(&self) -> bool {
        let me = self.config.id;
        self.membership().has_quorum(|id| id == me)
    }

    /// Every other member (voters, old voters, learners): who gets the log.
    pub(super) fn peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        let mut all = self.membership().members();
        all.remove(&me);
        all.into_iter().collect()
    }

    /// Every other voter of either set: who is asked for votes.
    pub(super) fn voting_peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        let mut all = self.membership().all_voters();
        all.remove(&me);
        all.into_iter().collect()
    }

    pub(super) fn reset_election_timer(&mut self) {
        if self.is_voter() && self.alone_is_quorum() {
            // Nobody else can lead: elect ourselves at the next tick.
            self.election_deadline_ms = self.now_ms;
            return;
        }
        let span = self.config.election_timeout_max_ms - self.config.election_timeout_min_ms;
        let timeout = self.config.election_timeout_min_ms + self.rng.next() % span;
        self.election_deadline_ms = self.now_ms + timeout;
    }

    /// The entry at `index` if it is not durable yet — as just proposed,
    /// so the shell can execute exactly the entry that is being logged.
    pub fn unstable_entry(&self, index: Index) -> Option<&Entry> {
        let first = self.unstable.first()?.index;
        self.unstable
            .get(usize::try_from(index.checked_sub(first)?).ok()?)
    }

    /// Term of the entry at `index` as this node currently sees its log.
    pub(super) fn term_at(&self, index: Index, log: &impl LogRead) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        if index > self.last_index {
            return None;
        }
        if let Some(first) = self.unstable.first()
            && index >= first.index
        {
            return Some(self.unstable[(index - first.index) as usize].term);
        }
        if self.truncated_from.is_some_and(|t| index >= t) {
            return None;
        }
        log.term(index)
    }

    pub(super) fn entries_from(&self, from: Index, log: &impl LogRead) -> Vec<Entry> {
        let bytes_max = self.config.append_bytes_max;
        let unstable_first = self
            .unstable
            .first()
            .map(|e| e.index)
            .unwrap_or(self.last_index + 1);
        let mut out = Vec::new();
        if from < unstable_first {
            out = log.entries(from, unstable_first - 1, bytes_max);
            let complete = out.last().is_some_and(|e| e.index + 1 == unstable_first);
            if !complete {
                return out;
            }
        }
        let start = from.max(unstable_first);
        if let Some(first) = self.unstable.first() {
            let mut bytes = 0usize;
            for e in &self.unstable[(start - first.index) as usize..] {
                bytes += entry_size(e);
                out.push(e.clone());
                if bytes >= bytes_max {
                    break;
                }
            }
        }
        out
    }

    pub(super) fn send(&mut self, to: NodeId, msg: Message) {
        self.ready.messages.push((to, msg));
    }

    pub(super) fn set_hard_state(&mut self, term: Term, vote: Option<NodeId>) {
        debug_assert!(term >= self.hard.term, "terms never go back");
        if term > self.hard.term {
            self.vote_void = false;
        }
        self.hard = HardState { term, vote };
        self.ready.hard_state = Some(self.hard);
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.hard.term {
            self.set_hard_state(term, None);
        }
        if self.role == Role::Leader {
            tracing::info!(node = self.config.id, term, "stepping down");
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.leaving.clear();
        self.votes.clear();
        self.transfer = None;
        let me = self.config.id;
        for r in std::mem::take(&mut self.pending_reads) {
            if r.from == me {
                self.ready.failed_reads.push(r.ctx);
            }
        }
        self.reset_election_timer();
    }

    /// Advance the clock only, while the shell keeps this node out of the
    /// protocol (installing a snapshot, or unable to write its log): no
    /// timer fires, but what it hears meanwhile (a leader's heartbeats)
    /// counts from the real time, so its first tick afterwards does not
    /// find a deadline long past and campaign against a live leader.
    pub fn advance_clock(&mut self, now_ms: u64) {
        if self.now_ms != 0 {
            self.now_ms = self.now_ms.max(now_ms);
        }
    }

    /// Advance time; elections, heartbeats and check-quorum happen here.
    pub fn tick(&mut self, now_ms: u64, log: &impl LogRead) {
        if self.now_ms == 0 {
            // First tick: timers start from the shell's clock, not from 0.
            self.now_ms = now_ms;
            self.vote_embargo_until_ms = now_ms + self.config.election_timeout_min_ms;
            self.reset_election_timer();
        }
        self.now_ms = self.now_ms.max(now_ms);
        match self.role {
            Role::Leader => {
                let now = self.now_ms;
                let gone: Vec<NodeId> = self
                    .leaving
                    .iter()
                    .filter(|(_, (_, until))| *until <= now)
                    .map(|(&id, _)| id)
                    .collect();
                for id in gone {
                    self.leaving.remove(&id);
                    self.progress.remove(&id);
                }
                if let Some((to, give_up_ms, _)) = self.transfer
                    && self.now_ms >= give_up_ms
                {
                    tracing::warn!(
                        node = self.config.id,
                        to,
                        "leadership transfer timed out; leading on"
                    );
                    self.transfer = None;
                }
                if self.now_ms >= self.check_quorum_due_ms {
                    self.check_quorum();
                    if self.role != Role::Leader {
                        return;
                    }
                }
                if self.now_ms >= self.heartbeat_due_ms {
                    let peers: Vec<NodeId> = self.progress.keys().copied().collect();
                    for p in peers {
                        let pr = self.progress.get_mut(&p).expect("peer");
                        if !pr.answered && !pr.inflight.is_empty() {
                            // No answer for a whole interval: taken as lost
                            // in the network. Resend from the first index
                            // not acknowledged, one probe at a time.
                            let first = pr.inflight.values().min().copied().unwrap_or(1);
                            pr.next = first.max(pr.matched + 1);
                            pr.inflight.clear();
                            pr.probing = true;
                        }
                        pr.answered = false;
                        self.send_append(p, log, false);
                    }
                    self.broadcast_heartbeat();
                }
            }
            _ => {
                if self.now_ms >= self.election_deadline_ms {
                    if self.recovering() || !self.candidacy || !self.is_voter() {
                        // It lost its data: it waits to be caught up. Or
                        // it is a learner, or not (or no longer) a member.
                        self.reset_election_timer();
                    } else {
                        self.start_pre_vote(log);
                    }
                }
            }
        }
    }

    /// Handle a message from `from`.
    pub fn step(&mut self, from: NodeId, msg: Message, log: &impl LogRead) {
        // Anyone may speak: a leader this node does not know as a member
        // yet (added by a configuration it has not received), a candidate
        // removed by one it has. Only voters of the configuration in
        // effect count (`Membership::has_quorum`), and pre-votes keep a
        // removed member from raising anyone's term.
        if from == self.config.id {
            tracing::warn!(from, "message from this node itself refused");
            return;
        }
        self.learn_lost_terms(from, &msg);
        let term = msg.term();
        if term > self.hard.term {
            match &msg {
                // Pre-votes never change anyone's term — except that a
                // refusal carries the refuser's own, newer term (as in
                // etcd): a pre-candidate that never learned it would ask
                // for that same term forever and never be granted. Only a
                // pre-candidate: a late refusal reaching a follower must
                // not make it drop its leader (and the lease it grants).
                Message::VoteResponse {
                    pre: true,
                    granted: false,
                    ..
                } if self.role == Role::PreCandidate => self.become_follower(term, None),
                Message::Vote { pre: true, .. } | Message::VoteResponse { pre: true, .. } => {}
                Message::Vote {
                    transfer: false, ..
                } if self.in_leader_lease() => {
                    // Leader stickiness: a live leader exists; ignore the
                    // disruptive candidate entirely (do not even adopt its term).
                    return;
                }
                Message::Append { .. } | Message::Heartbeat { .. } => {
                    self.become_follower(term, Some(from))
                }
                _ => self.become_follower(term, None),
            }
        } else if term < self.hard.term {
            match msg {
                // Tell a stale leader about the newer term so it steps down.
                Message::Append { .. } => {
                    let term = self.hard.term;
                    self.send(
                        from,
                        Message::AppendResponse {
                            term,
                            success: false,
                            index: self.last_index,
                            rejected: 0,
                        },
                    );
                }
                Message::Heartbeat { seq, .. } => {
                    let term = self.hard.term;
                    self.send(from, Message::HeartbeatResponse { term, seq });
                }
                Message::Vote { pre, .. } => {
                    let term = self.hard.term;
                    self.send(
                        from,
                        Message::VoteResponse {
                            term,
                            granted: false,
                            pre,
                        },
                    );
                }
                _ => {}
            }
            tracing::info!(
                node = self.config.id,
                from,
                term,
                current = self.hard.term,
                "message of a stale term refused"
            );
            return;
        }
        match msg {
            Message::Append {
                term,
                prev_index,
                prev_term,
                entries,
                commit,
            } => self.on_append(from, term, prev_index, prev_term, entries, commit, log),
            Message::AppendResponse {
                success,
                index,
                rejected,
                ..
            } => self.on_append_response(from, success, index, rejected, log),
            Message::Vote {
                term,
                last_index,
                last_term,
                pre,
                transfer,
            } => self.on_vote(from, term, last_index, last_term, pre, transfer),
            Message::TimeoutNow { .. } => {
                // Only the leader of this term sends a TimeoutNow of it
                // (a higher term made this node a follower of no one just
                // above). A pre-candidate has not changed its term, and a
                // follower may not know its leader yet (after a restart):
                // both take over as asked.
                let following = self.leader.is_none_or(|l| l == from);
                if matches!(self.role, Role::Follower | Role::PreCandidate)
                    && following
                    && self.is_voter()
                    && !self.recovering()
                {
                    tracing::info!(node = self.config.id, "leadership handed over: campaigning");
                    self.leader = Some(from);
                    self.campaign_as(log, true);
                } else {
                    tracing::info!(
                        node = self.config.id,
                        from,
                        role = ?self.role,
                        leader = ?self.leader,
                        "leadership handover ignored: another member leads this term"
                    );
                }
            }
            Message::VoteResponse { granted, pre, term } => {
                self.on_vote_response(from, term, granted, pre, log)
            }
            Message::Heartbeat { term, commit, seq } => self.on_heartbeat(from, term, commit, seq),
            Message::HeartbeatResponse { seq, .. } => self.on_heartbeat_response(from, seq, log),
            Message::ReadIndex { ctx, .. } => {
                if self.role == Role::Leader {
                    self.queue_read(from, ctx);
                }
                // Otherwise dropped: the follower times out and retries
                // with the leader it learns about.
            }
            Message::ReadIndexResponse { ctx, index, .. } => {
                if self.role == Role::Follower && self.leader == Some(from) {
                    self.ready.reads.push((ctx, index));
                }
            }
        }
    }

    /// Take the outputs accumulated since the last call.
    pub fn ready(&mut self) -> Ready {
        if std::mem::take(&mut self.read_round_wanted)
            && self.role == Role::Leader
            && self
                .pending_reads
                .iter()
                .any(|r| r.seq > self.heartbeat_seq)
        {
            self.broadcast_heartbeat();
        }
        std::mem::take(&mut self.ready)
    }
}

fn entry_size(e: &Entry) -> usize {
    ENTRY_OVERHEAD_BYTES_ESTIMATE
        + match &e.payload {
            Payload::Noop => 0,
            Payload::Deploy { actor, wasm, .. } => actor.len() + wasm.len(),
            Payload::Command { actor, command, .. } => actor.len() + command.len(),
            // Bounded by the auth limits; an estimate is enough here.
            Payload::Auth { .. } | Payload::Audit { .. } => AUTH_ENTRY_BYTES_ESTIMATE,
            Payload::Config(m) => {
                m.addrs
                    .values()
                    .map(|a| a.peer.len() + a.client.len() + 16)
                    .sum::<usize>()
                    + 16 * m.members().len()
            }
            Payload::Effects(fx) => {
                fx.writes
                    .iter()
                    .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 4)
                    .sum::<usize>()
                    + fx.deploy.as_ref().map_or(0, |(a, m)| a.len() + m.len())
            }
        }
}

/// Whether an append is one an honest leader of `term` could send: its
/// entries continue `prev_index` one by one, with terms that never go back
/// from `prev_term` and never pass `term`.
fn check_append(
    term: Term,
    prev_index: Index,
    prev_term: Term,
    entries: &[Entry],
) -> Result<(), &'static str> {
    if prev_term > term {
        return Err("its previous entry's term is newer than the message's");
    }
    let mut last_term = prev_term;
    for (i, e) in entries.iter().enumerate() {
        if Some(e.index) != prev_index.checked_add(1 + i as Index) {
            return Err("its entries do not continue its previous index one by one");
        }
        if e.term < last_term || e.term > term {
            return Err("its entries' terms go back, or pass the message's term");
        }
        last_term = e.term;
    }
    Ok(())
}
