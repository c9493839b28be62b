//! The node's decisions, sans-IO: everything a node decides around the
//! protocol [`Core`] — when a writer is answered and with what, when a
//! read may run, when the log writer gets the next batch and when a
//! message may leave, what the leader executes ahead of commit, when a
//! node quarantines itself, when a snapshot goes out or comes in.
//!
//! [`NodeState`] takes events (a client's write or read, a peer's
//! message, the log writer's or the applier's report, the clock's tick)
//! with the time they happen at (`now_ms`, the shell's clock) and queues
//! [`Effect`]s for the shell to execute, in order: messages to send,
//! batches to persist, entries to apply or execute ahead of commit, and
//! answers to clients. It reads no clock, draws no randomness (entry seeds
//! come from a generator seeded once), does no I/O and starts no thread,
//! so it builds for `wasm32-unknown-unknown` and the deterministic
//! simulator runs it (see `crate::sim`).
//!
//! The shell (`understudy::node::Node`, an actix actor) owns the
//! `NodeState`, calls one event method per message it handles, then
//! [`NodeState::drive`], then executes [`NodeState::take_effects`].
//! Writers and readers are opaque handles (`W`, `R`) to the state: the
//! shell's reply channels, the simulator's client operations.
//!
//! One concept per file:
//! * [`writes`] — writers waiting for their answer, per concern;
//! * [`reads`] — the read queues, and when each read may run;
//! * [`persist`] — the log writer's pipeline, and messages held until the
//!   hard state they depend on is durable;
//! * [`speculation`] — what the leader executes ahead of commit;
//! * [`alarm`] — the determinism alarm (digest comparison, quarantine);
//! * [`membership`] — configuration changes, as the leader carries them
//!   out (learners promoted or swapped in once caught up);
//! * [`transfer`] — snapshots going out and coming in;
//! * this file — the state itself, its settings and effects, faults,
//!   membership hints and the turn ([`NodeState::drive`]).

pub mod alarm;
pub mod membership;
pub mod persist;
pub mod reads;
pub mod speculation;
pub mod transfer;
pub mod writes;

#[cfg(test)]
mod tests;

use crate::client::{ApiError, ErrorCode, WriteAnswer};
use crate::membership::Membership;
use crate::replication::{Core, GroupConfig, HardState, LogRead, Message, Ready, Rng, Role};
use crate::types::{Index, LogKind, NodeId, Term};
use std::collections::{BTreeMap, BTreeSet};

pub use persist::PersistBatch;
pub use reads::Read;
pub use speculation::{SpeculateBatch, SpeculationFailed};
pub use transfer::{InstallRefused, SnapshotIn};

/// How many maximum election timeouts back a peer counts as alive for a
/// forced promotion: one heard from more recently may still elect.
pub const PEER_ALIVE_ELECTION_TIMEOUTS: u64 = 3;

/// What a node is configured to decide with (from its config).
#[derive(Clone, Debug)]
pub struct Settings {
    /// What the log holds (equal on every member).
    pub log_kind: LogKind,
    /// Most writes waiting for their answer before new ones are refused
    /// `Overloaded`.
    pub pending_writes_max: usize,
    /// How long a write waits for its outcome before it is answered
    /// `Timeout` (outcome unknown).
    pub write_timeout_ms: u64,
    /// How long a read waits (for a leader, a read index, the applier, a
    /// query slot) before it is answered `Timeout`.
    pub read_timeout_ms: u64,
    /// Most reads running at once (handed to the applier or a query
    /// thread); the rest wait in order.
    pub query_slots: usize,
    /// Most reads waiting for a query slot before new ones are refused
    /// `Overloaded` (the host's `QUERIES_WAITING_MAX`).
    pub queries_waiting_max: usize,
    /// Members whose client address comes from the configuration: a
    /// peer's hello does not change it.
    pub configured_addresses: BTreeSet<NodeId>,
    /// A learner added to become a voter (or to replace one) is moved on
    /// once it is at most this many entries behind the leader…
    pub promote_lag_entries: u64,
    /// …and the oldest entry it lacks is at most this many milliseconds
    /// old (by the leader's clock).
    pub promote_lag_ms: u64,
    /// A replacement that has not caught up this long after it was added
    /// is removed again (the replaced voter stays).
    pub catch_up_timeout_ms: u64,
    /// Where the bootstrap members listen, as this node is configured:
    /// the first leader writes them into the group's first configuration
    /// entry (unknown ones stay empty until a change names them).
    pub member_addrs: BTreeMap<NodeId, crate::membership::MemberAddrs>,
}

/// Who waits for an entry: a client, or this node's own configuration
/// change (see [`membership`]).
#[derive(Debug)]
pub(super) enum Reply<W> {
    /// A client's writer.
    Client(W),
    /// A configuration entry this node proposed.
    Config,
}

/// Which part of the host has a fault (it cannot write; it keeps trying).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultSource {
    /// The log writer.
    Log,
    /// The applier.
    Applier,
}

/// What the shell must do, in the order the effects were queued.
#[derive(Debug)]
pub enum Effect<W, R> {
    /// Send a protocol message to a peer.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Share a digest sample of this node's state with every peer.
    ShareDigest {
        /// The applied index it was taken at.
        index: Index,
        /// The digest.
        digest: [u8; 32],
    },
    /// Hand a batch to the log writer; it reports with
    /// [`NodeState::persisted`] (one batch in flight at a time).
    Persist(PersistBatch),
    /// Apply committed entries up to this index; the applier reports with
    /// [`NodeState::applied`].
    ApplyUpTo(Index),
    /// Execute proposals ahead of their commit; reported with
    /// [`NodeState::speculated`].
    Speculate(SpeculateBatch),
    /// Drop every execution ahead of commit (the applier's overlay).
    DiscardSpeculation,
    /// Make (or reuse) a snapshot and stream it to this peer; reported
    /// with [`NodeState::snapshot_sent`] or [`NodeState::snapshot_failed`].
    SendSnapshot(NodeId),
    /// Answer a writer.
    Answer(W, WriteAnswer),
    /// Run a read now (over the applied state, unless its deadline passed
    /// first); report its end with [`NodeState::query_done`].
    RunRead(Read<R>),
    /// Refuse a read.
    RefuseRead(R, ApiError),
}

/// What a peer's answer to this node's hello said: its term, durable log
/// position, and configuration in effect (with its index).
type HelloHeard = (Term, (Term, Index), (Index, Membership));

/// The node's decisions (see the module docs).
pub struct NodeState<W, R> {
    core: Core,
    settings: Settings,
    /// Entry seeds (and a forced promotion's core seed).
    rng: Rng,
    /// Client addresses of members (ours, configured ones, and as peers'
    /// hellos announced them).
    addresses: BTreeMap<NodeId, String>,
    /// When each peer was last heard from (any connection or message).
    peer_heard_ms: BTreeMap<NodeId, u64>,
    /// The term and log position each peer's last answer to this node's
    /// hello carried.
    hello_terms: BTreeMap<NodeId, HelloHeard>,
    /// Host faults: the log writer or the applier cannot write.
    log_fault: Option<String>,
    applier_fault: Option<String>,
    /// Set when applying failed or the state is damaged: no writes, no
    /// reads, no leadership.
    halted: Option<String>,
    writes: writes::Writers<W>,
    reads: reads::Reads<R>,
    persist: persist::Persist,
    spec: speculation::Speculation<W>,
    alarm: alarm::Alarm,
    transfer: transfer::Transfers,
    change: membership::Changes<W>,
    out: Vec<Effect<W, R>>,
    /// Rules deliberately broken, to show the simulator catches them.
    #[cfg(test)]
    pub(crate) broken: Broken,
}

/// Rules a test may break on purpose (the simulator must then fail).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Broken {
    /// Answer a `majority` write once the leader's own log has it durable
    /// (as if it were `leader` concern).
    pub(crate) majority_answered_at_leader_fsync: bool,
    /// Serve a `lease` read from the leader's state even after its lease
    /// ran out.
    pub(crate) lease_outlives_its_expiry: bool,
    /// Make a change of the voters in one step, without the joint
    /// configuration (C_new straight after C_old).
    pub(crate) membership_without_joint: bool,
}

impl<W, R> NodeState<W, R> {
    /// A node's state around `core`. `seed` seeds the entry seeds;
    /// `addresses` are the client addresses known at start (this node's,
    /// and the configured ones of its peers).
    pub fn new(
        core: Core,
        settings: Settings,
        seed: u64,
        addresses: BTreeMap<NodeId, String>,
    ) -> Self {
        NodeState {
            core,
            settings,
            rng: Rng(seed),
            addresses,
            peer_heard_ms: BTreeMap::new(),
            hello_terms: BTreeMap::new(),
            log_fault: None,
            applier_fault: None,
            halted: None,
            writes: Default::default(),
            reads: Default::default(),
            persist: Default::default(),
            spec: Default::default(),
            alarm: Default::default(),
            transfer: Default::default(),
            change: Default::default(),
            out: Vec::new(),
            #[cfg(test)]
            broken: Broken::default(),
        }
    }

    /// The protocol core (read-only: every change goes through an event,
    /// so the state around it stays consistent).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The effects queued since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect<W, R>> {
        std::mem::take(&mut self.out)
    }

    /// The client addresses this node knows, itself included.
    pub fn addresses(&self) -> &BTreeMap<NodeId, String> {
        &self.addresses
    }

    /// The known leader's client address.
    pub fn leader_address(&self) -> Option<String> {
        self.core
            .leader()
            .and_then(|l| self.addresses.get(&l).cloned())
    }

    /// Why this node does not apply (halted), if it does not.
    pub fn halted(&self) -> Option<&String> {
        self.halted.as_ref()
    }

    /// The host fault this node has now (a full disk, an I/O error), if any.
    pub fn fault(&self) -> Option<&String> {
        self.log_fault.as_ref().or(self.applier_fault.as_ref())
    }

    /// An error that names the leader and its address (for `NotLeader`).
    pub fn not_leader(&self, message: &str) -> ApiError {
        ApiError {
            leader: self.core.leader(),
            leader_address: self.leader_address(),
            ..ApiError::new(ErrorCode::NotLeader, message)
        }
    }

    /// An error of `code` that names the leader and its address (a
    /// timeout: the client may retry there).
    pub(super) fn hinted(&self, code: ErrorCode, message: String) -> ApiError {
        ApiError {
            leader: self.core.leader(),
            leader_address: self.leader_address(),
            ..ApiError::new(code, message)
        }
    }

    /// The answer to a write while leadership is handed to `to`.
    fn handing_over_to(&self, to: NodeId) -> ApiError {
        ApiError {
            leader: Some(to),
            leader_address: self.addresses.get(&to).cloned(),
            ..ApiError::new(
                ErrorCode::NotLeader,
                format!("leadership is being handed to node {to}; retry there"),
            )
        }
    }

    fn answer(&mut self, to: Reply<W>, answer: WriteAnswer) {
        match to {
            Reply::Client(w) => self.out.push(Effect::Answer(w, answer)),
            Reply::Config => self.config_entry_answered(answer),
        }
    }

    /// The clock: the core's timers, then reads asked again or expired,
    /// writes expired, held row proposals released or expired. The shell
    /// calls [`NodeState::drive`] after it, as after every event.
    pub fn tick(&mut self, now_ms: u64, log: &impl LogRead) {
        // A node that cannot write its log is out of the protocol until it
        // can (no campaigns, no votes, no acks): its peers see it as
        // unreachable. While a snapshot is installed the clock of the core
        // stands still (no elections).
        if !self.transfer.installing && self.log_fault.is_none() {
            self.core.tick(now_ms, log);
        } else {
            self.core.advance_clock(now_ms);
        }
        self.reask_reads(now_ms);
    }

    /// After [`NodeState::tick`] and its drive: expire what waited too
    /// long, release row proposals held for the barrier.
    pub fn expire(&mut self, now_ms: u64) {
        self.expire_reads(now_ms);
        self.expire_writes(now_ms);
        self.release_held_rows(now_ms);
    }

    /// A protocol message from a peer.
    pub fn step(&mut self, from: NodeId, msg: Message, log: &impl LogRead) {
        if self.log_fault.is_some() {
            return; // out of the protocol until the log can be written
        }
        if self.transfer.installing && matches!(msg, Message::Append { .. }) {
            return; // the log is being replaced; the leader resends
        }
        self.core.step(from, msg, log);
    }

    /// Anything was heard from `peer` (a connection, a message).
    pub fn heard_from(&mut self, peer: NodeId, now_ms: u64) {
        self.peer_heard_ms.insert(peer, now_ms);
    }

    /// A peer connected and its (authenticated) hello named its client
    /// address; a configured address wins.
    pub fn peer_connected(&mut self, peer: NodeId, client_address: String) {
        if !self.settings.configured_addresses.contains(&peer) {
            self.addresses.insert(peer, client_address);
        }
    }

    /// A peer that knew `peer` under another incarnation: it lost its data.
    pub fn peer_lost_data(&mut self, peer: NodeId, log: &impl LogRead) {
        self.core.peer_lost_data(peer, log);
    }

    /// A peer answered this node's hello: with its term, its log position,
    /// the configuration in effect there (with its index) and whether it
    /// knew this node under another incarnation (this node lost its data
    /// directory).
    pub fn hello_answered(
        &mut self,
        from: NodeId,
        term: Term,
        position: (Term, Index),
        membership: (Index, Membership),
        lost_data: bool,
    ) {
        // Every answer since this node started carries a term at least as
        // new as any its old incarnation saw: kept, for if it learns later
        // (from another peer) that it lost its data.
        self.hello_terms
            .insert(from, (term, position, membership.clone()));
        if !lost_data {
            self.core.hello_answered(from, term, position, membership);
            return;
        }
        let first = !self.core.lost_terms_pending() && self.core.recovering_until().is_none();
        self.core.told_lost_data();
        for (&peer, (term, position, membership)) in &self.hello_terms {
            self.core
                .hello_answered(peer, *term, *position, membership.clone());
        }
        if first {
            tracing::warn!(
                node = self.core.id(),
                told_by = from,
                "peer {from} knew this node under another incarnation: its data directory was \
                 lost; it votes only once it has heard enough peers, and then only for logs at \
                 least as up-to-date as theirs",
            );
        }
    }

    /// A host fault starts (`Some`) or clears (`None`). While one lasts
    /// the node steps down, does not campaign, and refuses reads and
    /// writes with the reason.
    pub fn storage_fault(&mut self, source: FaultSource, reason: Option<String>) {
        let slot = match source {
            FaultSource::Log => &mut self.log_fault,
            FaultSource::Applier => &mut self.applier_fault,
        };
        *slot = reason.clone();
        match reason {
            Some(why) => {
                tracing::error!(
                    node = self.core.id(),
                    ?source,
                    reason = %why,
                    "host fault: stepping down and refusing reads and writes until it clears"
                );
                self.core.step_down();
                self.core.set_candidacy(false);
            }
            None => {
                tracing::warn!(node = self.core.id(), ?source, "host fault cleared");
                if self.fault().is_none() {
                    self.core.set_candidacy(true);
                }
            }
        }
    }

    /// Stop applying and taking writes for good (applying failed, the
    /// state is damaged, the log cannot be written): a halted leader
    /// leaves leadership to a member that can apply (it still logs and
    /// votes); every waiting writer is answered `Unavailable`.
    pub fn halt(&mut self, why: String) {
        tracing::error!(reason = %why, "node halted: refusing writes");
        self.core.step_down();
        self.core.set_candidacy(false);
        self.halted = Some(why.clone());
        for (_, w) in self.writes.take_all() {
            self.answer(
                w.reply,
                WriteAnswer::Refused(ApiError::new(ErrorCode::Unavailable, why.clone())),
            );
        }
    }

    /// `Err` with the reason while this node has signs that its group can
    /// still elect a leader without it being forced: it leads a group of
    /// more than one, it heard from a leader, or it heard from enough
    /// peers to make a majority with itself, within
    /// [`PEER_ALIVE_ELECTION_TIMEOUTS`] maximum election timeouts. Forcing
    /// it then would make two groups that both take writes.
    pub fn may_still_elect(&self, now_ms: u64) -> Result<(), MayStillElect> {
        let membership = self.core.membership();
        let members = membership.all_voters().len();
        let me = self.core.id();
        if membership.voters.len() <= 1 && membership.voters.contains(&me) && !membership.is_joint()
        {
            return Ok(());
        }
        if self.core.role() == Role::Leader {
            return Err(MayStillElect(format!(
                "this node leads its group of {members} voters (term {})",
                self.core.term()
            )));
        }
        let window_ms = PEER_ALIVE_ELECTION_TIMEOUTS * self.core.config().election_timeout_max_ms;
        let recent = |id: &NodeId| {
            self.peer_heard_ms
                .get(id)
                .is_some_and(|t| now_ms.saturating_sub(*t) <= window_ms)
        };
        if let Some(leader) = self.core.leader().filter(recent) {
            return Err(MayStillElect(format!(
                "this node heard from leader {leader} (term {}) within the last {window_ms} ms",
                self.core.term()
            )));
        }
        let alive: Vec<NodeId> = membership
            .all_voters()
            .into_iter()
            .filter(|id| *id != me && recent(id))
            .collect();
        if membership.has_quorum(|id| id == me || alive.contains(&id)) {
            return Err(MayStillElect(format!(
                "voters {alive:?} were heard from within the last {window_ms} ms: with this \
                 node they are a majority of {membership}, which can elect a leader"
            )));
        }
        Ok(())
    }

    /// Whether log writes are in flight or a snapshot is being installed
    /// (a forced promotion waits for them).
    pub fn log_busy(&self) -> bool {
        self.persist.busy() || self.transfer.installing
    }

    /// The operator's forced promotion, once the shell recorded it: this
    /// node becomes a group of one (`group`) and leads at once. Every
    /// write that the lost majority acknowledged and this node lacks is
    /// lost — that is the decision the operator made.
    pub fn lead_alone(&mut self, group: GroupConfig, now_ms: u64, log: &impl LogRead) {
        let hard = HardState {
            term: self.core.term(),
            vote: self.core.vote(),
        };
        let last = (
            self.core.last_index(),
            log.term(self.core.last_index()).unwrap_or(0),
        );
        let seed = self.rng.next();
        self.core = Core::new(group, hard, last, self.core.applied_index(), seed);
        self.core.tick(now_ms, log);
        self.forget_peer_samples();
        // Its configuration, this node alone, goes into the log as soon as
        // it leads (`drive_membership`: a core whose configuration is not
        // in its log writes it): the forced configuration.
        self.forget_membership_changes();
    }

    /// Hand leadership to `to` (a switchover).
    pub fn transfer_leadership(
        &mut self,
        to: NodeId,
    ) -> Result<(), crate::replication::TransferError> {
        self.core.transfer_leadership(to)
    }

    /// One turn: take what the core decided and queue its effects —
    /// snapshots to send, the hard state and entries to persist (writers
    /// of replaced entries answered), messages (held while a hard state
    /// they depend on is not durable), committed writers answered,
    /// entries to apply, reads whose index is known, and a change of
    /// leadership noticed.
    pub fn drive(&mut self, now_ms: u64, log: &impl LogRead) {
        self.ask_reads_without_leader(now_ms);
        self.drive_membership(now_ms, log);
        let Ready {
            hard_state,
            truncate_from,
            append,
            messages,
            apply_up_to,
            reads,
            failed_reads,
            snapshots,
        } = self.core.ready();
        for peer in snapshots {
            if self.transfer.sending.insert(peer) {
                self.out.push(Effect::SendSnapshot(peer));
            }
        }
        if let Some(hs) = hard_state {
            self.persist.queue_hard_state(hs);
        }
        if let Some(t) = truncate_from {
            self.persist.truncate_from(t);
            self.supersede_from(t);
        }
        if let Some(first) = append.first() {
            // Entries replaced without a durable truncation.
            self.supersede_from(first.index);
        }
        self.persist.append(append);
        self.flush_persist();
        for (to, message) in messages {
            if let Some(message) = self.persist.hold(to, message) {
                self.out.push(Effect::Send { to, message });
            }
        }
        self.answer_committed();
        if let Some(up_to) = apply_up_to {
            self.out.push(Effect::ApplyUpTo(up_to));
        }
        self.read_indexes_known(reads, failed_reads, log);
        self.track_leadership();
    }

    /// Entries the applier applied: `applied` is its applied index,
    /// `outcomes` the outcome of each entry (index, term) it applied,
    /// `samples` the digest samples it took. Writers of those entries are
    /// answered, reads waiting for them run, row proposals held for the
    /// barrier go on.
    pub fn applied(
        &mut self,
        applied: Index,
        outcomes: Vec<(Index, Term, crate::types::Outcome)>,
        samples: Vec<(Index, [u8; 32])>,
        now_ms: u64,
        log: &impl LogRead,
    ) {
        // After a snapshot install, a report from before it is stale.
        if applied >= self.core.applied_index() {
            self.core.applied(applied);
        }
        self.record_samples(samples);
        self.answer_applied(outcomes);
        self.release_reads(log);
        self.release_held_rows(now_ms);
    }

    /// The next entry seed.
    fn next_seed(&mut self) -> u64 {
        self.rng.next()
    }
}

/// A forced promotion refused: the group may still elect without it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MayStillElect(pub String);
