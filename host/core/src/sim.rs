//! Deterministic simulation of a group of nodes (one file, over 800 lines:
//! its events, its steps and its checks share one `Sim`, and read best
//! together): each is the protocol
//! [`Core`] inside the node's decisions ([`NodeState`]), driven the way the
//! actix shell drives them, over a simulated disk, network, applier and
//! clients.
//!
//! One seed drives everything: message delay (so reordering), loss and
//! duplication, partitions (including one-way cuts), pauses (SIGSTOP),
//! crashes that lose whatever was not yet durable, restarts, lost disks,
//! log compaction and snapshots, switchovers, slow fsyncs and appliers, and
//! clients that write at both concerns and read at every level, at the
//! leader and elsewhere. The log kind (statement or row) is drawn per
//! seed. Time is virtual. After every step the invariants of BRIEF.md are
//! checked:
//!
//! 1. election safety — at most one leader per term;
//! 2. log matching — two logs with an entry of the same index and term agree
//!    on everything up to it;
//! 3. commit safety — an entry once committed (known to a majority-backed
//!    commit index) is never changed, and every leader holds all of them;
//! 4. state-machine safety — every node applies the committed entry at each
//!    index, and nothing else;
//!
//! and what clients are promised:
//!
//! 5. every write acknowledged at `majority` survives: the entry committed
//!    at its index is the client's;
//! 6. a write is answered with its own entry's outcome (never another's,
//!    never a superseded one's), and every request is answered once — by
//!    its deadline (plus a tick and any pause), unless its node crashed;
//! 7. a `linearizable` or `lease` read runs over a state that holds every
//!    entry committed (by any node's knowledge) or acknowledged before it
//!    started; a `session` read's state holds its token's write;
//! 8. the determinism alarm, fed digest samples over the same network,
//!    never quarantines a node (the group is deterministic).
//!
//! Disks can be wiped, too (a node restarts on an empty data directory
//! under its id, with a new incarnation), one at a time: a peer that knew
//! the node under its old incarnation tells it, on the first message it
//! gets from it (the transport's hello), that it lost its data, and the
//! checks above must hold.
//!
//! A failure panics with the seed; `UNDERSTUDY_SIM_SEED=<seed>` replays it
//! exactly, `UNDERSTUDY_SIM_SEEDS=<n>` runs more seeds (the soak). A test
//! breaks a rule of the node state on purpose and shows the simulator
//! fails.

use crate::client::{ReadLevel, WriteAnswer, WriteConcern};
use crate::membership::{MemberAddrs, Membership, MembershipChange};
use crate::node::{Effect, NodeState, PersistBatch, Read, Settings, SpeculateBatch};
use crate::replication::{Core, GroupConfig, HardState, LogRead, Message, Rng, Role};
use crate::types::{ClientTag, Entry, Index, LogKind, NodeId, Outcome, Payload, Term};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The simulator's own decisions use the core's SplitMix64 generator.
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A node's durable storage: the log after the compacted point.
#[derive(Default, Clone)]
struct Disk {
    hard: HardState,
    /// Last compacted (index, term): entries up to it live in the state.
    compacted: (Index, Term),
    /// The timestamp of the last compacted entry.
    compacted_ts: u64,
    /// The configuration at the compacted point, if one was in the log
    /// (or the snapshot) by then.
    compacted_membership: Option<Membership>,
    log: Vec<Entry>,
    /// The incarnation each peer was last seen with (the peer book).
    peers: BTreeMap<NodeId, u64>,
    /// Told that it lost its data: the log position a candidate needs for
    /// its vote (`Core::recovery_floor`).
    recovery_floor: (Term, Index),
    /// Told that it lost its data and still learning which terms its old
    /// incarnation may have used.
    terms_pending: bool,
}

impl Disk {
    fn last_index(&self) -> Index {
        self.compacted.0 + self.log.len() as Index
    }
    fn get(&self, index: Index) -> Option<&Entry> {
        if index <= self.compacted.0 {
            return None;
        }
        self.log.get((index - self.compacted.0 - 1) as usize)
    }
    fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.compacted.0,
            "sim: truncating compacted entries"
        );
        self.log.truncate((index - self.compacted.0 - 1) as usize);
    }
    fn compact(&mut self, up_to: Index) {
        if up_to <= self.compacted.0 {
            return;
        }
        let last = self.get(up_to).expect("compacting within the log");
        let (term, ts) = (last.term, last.context.timestamp_ms);
        let drained: Vec<Entry> = self
            .log
            .drain(..(up_to - self.compacted.0) as usize)
            .collect();
        if let Some(m) = membership_in(&drained) {
            self.compacted_membership = Some(m);
        }
        self.compacted = (up_to, term);
        self.compacted_ts = ts;
    }
}

impl Disk {
    /// The configurations this durable log holds, oldest first (what the
    /// host's log keeps in its configuration table).
    fn memberships(&self) -> Vec<(Index, Membership)> {
        let mut out: Vec<(Index, Membership)> = self
            .compacted_membership
            .iter()
            .map(|m| (self.compacted.0, m.clone()))
            .collect();
        for e in &self.log {
            if let Payload::Config(m) = &e.payload {
                out.push((e.index, (**m).clone()));
            }
        }
        out
    }
}

/// The last configuration among `entries`.
fn membership_in(entries: &[Entry]) -> Option<Membership> {
    entries.iter().rev().find_map(|e| match &e.payload {
        Payload::Config(m) => Some((**m).clone()),
        _ => None,
    })
}

impl LogRead for Disk {
    fn term(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        if index == self.compacted.0 {
            return Some(self.compacted.1);
        }
        self.get(index).map(|e| e.term)
    }
    fn entries(&self, from: Index, to: Index, _bytes_max: usize) -> Vec<Entry> {
        let from = from.max(self.compacted.0 + 1);
        let to = to.min(self.last_index());
        if from > to {
            return Vec::new();
        }
        let base = self.compacted.0 + 1;
        self.log[(from - base) as usize..=(to - base) as usize].to_vec()
    }
    fn first_index(&self) -> Index {
        self.compacted.0 + 1
    }
    fn compacted_timestamp_ms(&self) -> u64 {
        self.compacted_ts
    }
}

/// Writers and readers are the clients' operation ids.
type State = NodeState<u64, u64>;

struct SimNode {
    state: State,
    /// The bootstrap voters it starts with (empty: it joined later).
    bootstrap: Vec<NodeId>,
    disk: Disk,
    /// The batch with the log writer, and when its fsync completes.
    writing: Option<(u64, PersistBatch)>,
    applied: Vec<Entry>,
    /// The applier was asked to apply up to here.
    apply_wanted: Index,
    /// Executions ahead of commit with the applier, and when each ends.
    executing: VecDeque<(u64, SpeculateBatch)>,
    up: bool,
    /// This node's clock runs this many parts per million fast or slow.
    drift_ppm: i64,
    /// Frozen (SIGSTOP) until then: it keeps its memory, sees nothing and
    /// does nothing; what arrives meanwhile waits in its socket buffers.
    paused_until: u64,
    /// The incarnation of its data directory (new after a wipe).
    incarnation: u64,
    /// Bumped at every crash: requests of an earlier life get no answer.
    life: u64,
    /// Promoted by force, with the log's last index then: the node's
    /// FORCED-ALONE record, kept until a configuration after that index
    /// is in its durable log (as `Node::start_parts` does).
    forced_at: Option<Index>,
}

impl SimNode {
    /// This node's view of the time.
    fn clock(&self, now: u64) -> u64 {
        (now as i64 + now as i64 * self.drift_ppm / 1_000_000) as u64
    }
}

enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: Message,
    },
    /// A digest sample of `from`'s applied state (the determinism alarm).
    Digest {
        from: NodeId,
        to: NodeId,
        index: Index,
        digest: [u8; 32],
    },
    /// A whole snapshot (the sender's applied entries up to `index`, and
    /// the configuration at `index`).
    Snapshot {
        from: NodeId,
        to: NodeId,
        index: Index,
        term: Term,
        state: Vec<Entry>,
        membership: Membership,
    },
    /// The snapshot stream from `leader` to `peer` broke, or was refused.
    SnapshotFailed { leader: NodeId, peer: NodeId },
    /// `peer` reported the snapshot installed (or not needed).
    SnapshotDone {
        leader: NodeId,
        peer: NodeId,
        index: Index,
    },
}

/// What a client asked.
#[derive(Clone, Debug)]
enum Ask {
    Write {
        concern: WriteConcern,
        command: Vec<u8>,
    },
    Read {
        level: ReadLevel,
        /// What its state must hold: the highest index any node knew
        /// committed, or any client had acknowledged, when it started.
        floor: Index,
    },
    /// An operator's configuration change (sent to the leader).
    Change { change: MembershipChange, seq: u64 },
}

/// A request in flight.
#[derive(Clone, Debug)]
struct Op {
    node: NodeId,
    /// The node's life it was sent to.
    life: u64,
    issued_ms: u64,
    ask: Ask,
}

/// How long a request may wait on a node (`write_timeout_ms` and
/// `read_timeout_ms` of the simulated nodes).
const REQUEST_TIMEOUT_MS: u64 = 1_000;

/// Slack on a request's deadline: a tick, and a node's clock running slow.
const ANSWER_SLACK_MS: u64 = 60;

/// Most entries a `bounded` read of the simulator allows behind.
const BOUNDED_LAG_ENTRIES: u64 = 5;

/// Chance per step (per mille) that an operator forces a recovery, once
/// per run, if the group lost its majority at that step.
const FORCE_PER_MILLE: u64 = 2;

struct Sim {
    seed: u64,
    rng: Rng,
    now_ms: u64,
    log_kind: LogKind,
    broken: crate::node::Broken,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Vec<(u64, Event)>,
    /// (from, to) pairs whose messages are dropped.
    cut: BTreeSet<(NodeId, NodeId)>,
    leaders: BTreeMap<Term, NodeId>,
    /// Committed entries, with a term by which they were surely committed
    /// (the highest term any node had when the commit was first seen).
    committed: BTreeMap<Index, (Entry, Term)>,
    /// Requests not yet answered, by id.
    ops: BTreeMap<u64, Op>,
    /// Requests answered.
    answered: BTreeSet<u64>,
    next_op: u64,
    /// Writes acknowledged at `majority`: (index, term, command).
    acked: Vec<(Index, Term, Vec<u8>)>,
    /// Write tokens clients hold (for session reads).
    tokens: Vec<(Index, Term)>,
    writes_acked: u64,
    reads_served: u64,
    /// Digest samples that reached a peer.
    digests_delivered: u64,
    refusals: u64,
    compactions: u64,
    snapshots_installed: u64,
    wipes: u64,
    /// The bootstrap voters.
    initial: Vec<NodeId>,
    /// The id the next new member gets.
    next_id: NodeId,
    /// At most this many nodes ever (members, removed ones included).
    nodes_max: usize,
    /// Change membership at random among the faults.
    membership: bool,
    /// The leader to remove once it handed over.
    leader_to_remove: Option<(NodeId, u64)>,
    /// Configuration changes asked for, and completed (answered).
    changes_asked: u64,
    changes_done: u64,
    /// Configurations seen in effect (distinct entries).
    configurations: BTreeSet<(Index, Term)>,
    /// Forced promotions (an operator's `promote --force` once the
    /// group lost its majority), and what they lost by decision:
    /// committed entries and acknowledged writes the forced node lacked.
    forcings: u64,
    lost_by_force: (u64, u64),
    /// The forced node's last index when it was forced: a configuration
    /// after it is of the group the operator made (the forced one, then
    /// its changes), one at or before it of the group that was given up;
    /// invariant 12 holds within each, not across (that is the decision).
    forced_boundary: Option<Index>,
}

fn config(id: NodeId, members: &[NodeId]) -> GroupConfig {
    GroupConfig {
        heartbeat_interval_ms: 20,
        election_timeout_min_ms: 100,
        election_timeout_max_ms: 200,
        ..GroupConfig::new(id, members.to_vec())
    }
}

fn settings(log_kind: LogKind, members: &[NodeId]) -> Settings {
    Settings {
        log_kind,
        pending_writes_max: 64,
        write_timeout_ms: REQUEST_TIMEOUT_MS,
        read_timeout_ms: REQUEST_TIMEOUT_MS,
        query_slots: 4,
        queries_waiting_max: 16,
        configured_addresses: members.iter().copied().collect(),
        promote_lag_entries: 5,
        promote_lag_ms: 200,
        catch_up_timeout_ms: 1_500,
        member_addrs: members.iter().map(|&id| (id, addrs_of(id))).collect(),
    }
}

/// Where a simulated member listens (only ever compared, never dialed).
fn addrs_of(id: NodeId) -> MemberAddrs {
    MemberAddrs {
        peer: format!("peer{id}"),
        client: format!("node{id}"),
    }
}

/// Whether some majority (of every voter set) of `a` and some of `b` are
/// disjoint: two leaders could then be elected, or two entries committed,
/// without any node knowing of both.
fn disjoint_majorities(a: &Membership, b: &Membership) -> bool {
    let all: Vec<NodeId> = a.all_voters().union(&b.all_voters()).copied().collect();
    assert!(all.len() < 16, "sim: too many voters to enumerate");
    (0u32..1 << all.len()).any(|bits| {
        let inside = |id: NodeId| {
            let k = all.iter().position(|&x| x == id).expect("a voter");
            bits & (1 << k) != 0
        };
        a.has_quorum(inside) && b.has_quorum(|id| !inside(id))
    })
}

fn node_state(
    core: Core,
    log_kind: LogKind,
    members: &[NodeId],
    seed: u64,
    broken: crate::node::Broken,
) -> State {
    let addresses = members.iter().map(|&m| (m, format!("node{m}"))).collect();
    let mut state = NodeState::new(core, settings(log_kind, members), seed, addresses);
    state.broken = broken;
    state
}

/// A node on an empty disk: one of the bootstrap members (`members`
/// holds it) or a new one that joins (`members` empty).
fn new_node(
    id: NodeId,
    members: &[NodeId],
    log_kind: LogKind,
    seed: u64,
    broken: crate::node::Broken,
    rng: &mut Rng,
) -> SimNode {
    let core = Core::new(config(id, members), HardState::default(), (0, 0), 0, seed);
    SimNode {
        state: node_state(core, log_kind, members, seed ^ id, broken),
        bootstrap: members.to_vec(),
        disk: Disk::default(),
        writing: None,
        applied: Vec::new(),
        apply_wanted: 0,
        executing: VecDeque::new(),
        up: true,
        // Clocks that run up to 2 % fast or slow.
        drift_ppm: rng.below(40_001) as i64 - 20_000,
        paused_until: 0,
        incarnation: id,
        life: 0,
        forced_at: None,
    }
}

/// Digest samples are taken at every index that is a multiple of this (the
/// applier's `DIGEST_SAMPLE_EVERY` is 64; smaller here, so runs take many).
const DIGEST_SAMPLE_EVERY: Index = 16;

/// The simulated state's digest: a hash of the entries applied (every
/// node that applied the same entries has the same).
fn digest_of(applied: &[Entry]) -> [u8; 32] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for e in applied {
        for b in e
            .index
            .to_be_bytes()
            .into_iter()
            .chain(e.term.to_be_bytes())
            .chain(command_of(e).unwrap_or(&[]).iter().copied())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&h.to_be_bytes());
    out
}

/// The simulated machine answers a command with the command itself, so
/// a writer can tell its own entry's outcome from any other's.
fn outcome_of(entry: &Entry) -> Outcome {
    match &entry.payload {
        Payload::Command { command, .. } => Outcome::Ok(command.clone()),
        _ => Outcome::Ok(ByteBuf::new()),
    }
}

fn command_of(entry: &Entry) -> Option<&[u8]> {
    match &entry.payload {
        Payload::Command { command, .. } => Some(command),
        _ => None,
    }
}

impl Sim {
    fn new(seed: u64, members: &[NodeId], broken: crate::node::Broken, membership: bool) -> Sim {
        let mut rng = Rng(seed);
        let log_kind = if rng.chance(500) {
            LogKind::Row
        } else {
            LogKind::Statement
        };
        let nodes: BTreeMap<NodeId, SimNode> = members
            .iter()
            .map(|&id| (id, new_node(id, members, log_kind, seed, broken, &mut rng)))
            .collect();
        Sim {
            seed,
            rng,
            now_ms: 0,
            log_kind,
            broken,
            nodes,
            net: Vec::new(),
            cut: BTreeSet::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            ops: BTreeMap::new(),
            answered: BTreeSet::new(),
            next_op: 0,
            acked: Vec::new(),
            tokens: Vec::new(),
            writes_acked: 0,
            reads_served: 0,
            digests_delivered: 0,
            refusals: 0,
            compactions: 0,
            snapshots_installed: 0,
            wipes: 0,
            initial: members.to_vec(),
            next_id: members.iter().max().copied().unwrap_or(0) + 1,
            nodes_max: members.len() + 4,
            membership,
            leader_to_remove: None,
            changes_asked: 0,
            changes_done: 0,
            configurations: BTreeSet::new(),
            forcings: 0,
            lost_by_force: (0, 0),
            forced_boundary: None,
        }
    }

    fn fail(&self, what: &str) -> ! {
        for (id, n) in &self.nodes {
            let c = n.state.core();
            eprintln!(
                "node {id}: {} (at {}) up {} role {:?} term {} vote {:?} last {} durable {} (last term {:?}) commit {} applied {} recovering {:?} told {:?} peers {:?} incarnation {}",
                c.membership(),
                c.membership_index(),
                n.up,
                c.role(),
                c.term(),
                c.vote(),
                c.last_index(),
                n.disk.last_index(),
                n.disk.log.last().map(|e| e.term),
                c.commit_index(),
                n.applied.len(),
                c.recovering_until(),
                n.disk.recovery_floor,
                n.disk.peers,
                n.incarnation
            );
        }
        panic!(
            "simulation invariant violated at {} ms ({:?} log): {what} (UNDERSTUDY_SIM_SEED={})",
            self.now_ms, self.log_kind, self.seed
        )
    }

    fn node(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes.get_mut(&id).expect("node")
    }

    /// One turn of a node, as the shell takes it: record what the core
    /// knows of a data loss (before any message leaves), drive the state,
    /// execute its effects.
    fn drain(&mut self, id: NodeId) {
        let now = self.now_ms;
        let n = self.node(id);
        n.disk.terms_pending = n.state.core().lost_terms_pending();
        n.disk.recovery_floor = n.state.core().recovery_floor();
        let clock = n.clock(now);
        n.state.drive(clock, &n.disk);
        self.execute(id);
    }

    /// Execute a node's effects in order, as the shell does.
    fn execute(&mut self, id: NodeId) {
        loop {
            let effects = self.node(id).state.take_effects();
            if effects.is_empty() {
                return;
            }
            let mut reads_run = 0;
            for effect in effects {
                match effect {
                    Effect::Send { to, message } => self.send(id, to, message),
                    Effect::ShareDigest { index, digest } => {
                        let peers: Vec<NodeId> =
                            self.nodes.keys().copied().filter(|&p| p != id).collect();
                        for to in peers {
                            if !self.cut.contains(&(id, to)) && !self.rng.chance(20) {
                                let at = self.now_ms + 1 + self.rng.below(15);
                                let digest = Event::Digest {
                                    from: id,
                                    to,
                                    index,
                                    digest,
                                };
                                self.net.push((at, digest));
                            }
                        }
                    }
                    Effect::Persist(batch) => {
                        // Mostly fast disks, sometimes a slow fsync: wide
                        // windows in which a node changes its mind about
                        // entries still being written.
                        let delay = if self.rng.chance(100) {
                            5 + self.rng.below(60)
                        } else {
                            1 + self.rng.below(3)
                        };
                        let at = self.now_ms + delay;
                        let n = self.node(id);
                        if n.writing.is_some() {
                            self.fail(&format!(
                                "node {id} handed the log writer a batch while one was in flight"
                            ));
                        }
                        n.writing = Some((at, batch));
                    }
                    Effect::ApplyUpTo(up_to) => {
                        let n = self.node(id);
                        n.apply_wanted = n.apply_wanted.max(up_to);
                    }
                    Effect::Speculate(batch) => {
                        let at = self.now_ms + 1 + self.rng.below(5);
                        self.node(id).executing.push_back((at, batch));
                    }
                    Effect::DiscardSpeculation => self.node(id).executing.clear(),
                    Effect::SendSnapshot(peer) => self.send_snapshot(id, peer),
                    Effect::Answer(op, answer) => self.write_answered(id, op, answer),
                    Effect::RunRead(read) => {
                        self.run_read(id, read);
                        reads_run += 1;
                    }
                    Effect::RefuseRead(op, _) => {
                        self.answer_once(op);
                        self.refusals += 1;
                    }
                }
            }
            let now = self.now_ms;
            let n = self.node(id);
            let clock = n.clock(now);
            for _ in 0..reads_run {
                n.state.query_done(clock, |_| false);
            }
        }
    }

    fn send_snapshot(&mut self, id: NodeId, peer: NodeId) {
        let n = &self.nodes[&id];
        let index = n.applied.len() as Index;
        let term = n.applied.last().map_or(0, |e| e.term);
        let state = n.applied.clone();
        let membership = membership_in(&state)
            .unwrap_or_else(|| Membership::of_voters(self.initial.iter().copied()));
        let at = self.now_ms + 5 + self.rng.below(30);
        let gone = !self.nodes.contains_key(&peer);
        let event = if gone || self.cut.contains(&(id, peer)) || self.rng.chance(100) {
            Event::SnapshotFailed { leader: id, peer }
        } else {
            Event::Snapshot {
                from: id,
                to: peer,
                index,
                term,
                state,
                membership,
            }
        };
        self.net.push((at, event));
    }

    fn answer_once(&mut self, op: u64) -> Op {
        if !self.answered.insert(op) {
            self.fail(&format!("request {op} answered twice"));
        }
        match self.ops.remove(&op) {
            Some(o) => o,
            None => self.fail(&format!("an answer to request {op}, which was never asked")),
        }
    }

    fn write_answered(&mut self, id: NodeId, op: u64, answer: WriteAnswer) {
        let o = self.answer_once(op);
        if let Ask::Change { change, seq } = &o.ask {
            return self.change_answered(id, change, *seq, answer);
        }
        let Ask::Write { concern, command } = o.ask else {
            self.fail(&format!("a read ({op}) answered as a write"));
        };
        if o.node != id {
            self.fail(&format!(
                "node {id} answered request {op} sent to node {}",
                o.node
            ));
        }
        match answer {
            WriteAnswer::Written {
                outcome,
                term,
                index,
            } => {
                if outcome != Outcome::Ok(ByteBuf::from(command.clone())) {
                    self.fail(&format!(
                        "write {op} answered with the outcome of another entry (index {index}, term {term})"
                    ));
                }
                self.tokens.push((index, term));
                self.acked.push((index, term, command));
                self.writes_acked += 1;
            }
            WriteAnswer::Accepted { term, index } => {
                self.tokens.push((index, term));
                if concern == WriteConcern::Majority {
                    // Only a broken node answers a majority write before
                    // its commit; the client takes it as acknowledged.
                    self.acked.push((index, term, command));
                }
                self.writes_acked += 1;
            }
            WriteAnswer::Refused(_) => self.refusals += 1,
        }
    }

    /// A configuration change was answered: done, the entry that
    /// completed it is a configuration this change made (its tag), in
    /// effect on the answering leader's log.
    fn change_answered(
        &mut self,
        id: NodeId,
        change: &MembershipChange,
        seq: u64,
        answer: WriteAnswer,
    ) {
        match answer {
            WriteAnswer::Written { index, term, .. } => {
                let n = &self.nodes[&id];
                let entry = n
                    .disk
                    .get(index)
                    .cloned()
                    .or_else(|| n.state.core().unstable_entry(index).cloned());
                let ok = match entry.as_ref().map(|e| (&e.payload, e.term)) {
                    Some((Payload::Config(m), t)) => {
                        t == term && m.tag.is_some_and(|t| t.seq == seq) && !m.is_joint()
                    }
                    // Compacted: applied, so committed; checked by (3).
                    None => index <= n.disk.compacted.0,
                    _ => false,
                };
                if !ok {
                    self.fail(&format!(
                        "change {change} answered done at ({term}, {index}), which holds {entry:?}"
                    ));
                }
                self.changes_done += 1;
            }
            WriteAnswer::Accepted { .. } => {
                self.fail(&format!("change {change} answered before its commit"))
            }
            WriteAnswer::Refused(_) => self.refusals += 1,
        }
    }

    fn run_read(&mut self, id: NodeId, read: Read<u64>) {
        let o = self.answer_once(read.handle);
        let Ask::Read { level, floor } = o.ask else {
            self.fail(&format!(
                "a write or change ({}) run as a read",
                read.handle
            ));
        };
        let n = &self.nodes[&id];
        let applied = n.applied.len() as Index;
        match level {
            ReadLevel::Linearizable | ReadLevel::Lease if applied < floor => {
                self.fail(&format!(
                    "a {level:?} read on node {id} ran over applied index {applied}, below {floor} committed or acknowledged before it started"
                ));
            }
            ReadLevel::Session { term, index } => {
                let held = n.applied.get(index as usize - 1).map(|e| e.term);
                if held != Some(term) {
                    self.fail(&format!(
                        "a session read on node {id} for ({term}, {index}) ran over a state holding {held:?} there (applied {applied})"
                    ));
                }
            }
            _ => {}
        }
        self.reads_served += 1;
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message) {
        if !self.nodes.contains_key(&to) {
            return; // a retired node (see `force_if_majority_lost`): gone
        }
        if self.cut.contains(&(from, to)) || self.rng.chance(20) {
            return; // partitioned or lost
        }
        let copies = if self.rng.chance(20) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.now_ms + 1 + self.rng.below(15);
            self.net.push((
                at,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            ));
        }
    }

    /// The applier: applies what it was asked to, sometimes late.
    fn apply(&mut self, id: NodeId) {
        let now = self.now_ms;
        let n = self.node(id);
        let up_to = n.apply_wanted;
        let from = n.applied.len() as Index + 1;
        if up_to < from {
            return;
        }
        let entries = n.disk.entries(from, up_to, usize::MAX);
        if entries.len() as Index != up_to + 1 - from {
            let msg = format!(
                "node {id} asked to apply {from}..={up_to} but its durable log holds {}..={}",
                n.disk.compacted.0 + 1,
                n.disk.last_index()
            );
            self.fail(&msg);
        }
        let outcomes = entries
            .iter()
            .map(|e| (e.index, e.term, outcome_of(e)))
            .collect();
        n.applied.extend(entries);
        // Digest samples, as the applier takes them: at every index that is
        // a multiple of `DIGEST_SAMPLE_EVERY`, of the state applied so far.
        let samples = (from..=up_to)
            .filter(|i| i.is_multiple_of(DIGEST_SAMPLE_EVERY))
            .map(|i| (i, digest_of(&n.applied[..i as usize])))
            .collect();
        let clock = n.clock(now);
        n.state.applied(up_to, outcomes, samples, clock, &n.disk);
        self.drain(id);
    }

    /// The log writer: a batch whose fsync completed is durable.
    fn complete_writes(&mut self, id: NodeId) {
        if self.nodes[&id]
            .writing
            .as_ref()
            .is_some_and(|(at, _)| *at <= self.now_ms)
        {
            self.write_batch(id);
            self.drain(id);
        }
    }

    /// The batch with the log writer becomes durable now.
    fn write_batch(&mut self, id: NodeId) {
        let n = self.node(id);
        if n.writing.is_none() {
            return;
        }
        let (_, batch) = n.writing.take().expect("checked");
        if let Some((hs, _)) = batch.hard_state {
            n.disk.hard = hs;
        }
        if let Some(t) = batch.truncate_from {
            n.disk.truncate_from(t);
        }
        let last = batch.entries.last().map(|e| (e.index, e.term));
        for e in batch.entries {
            let expected = n.disk.last_index() + 1;
            assert_eq!(e.index, expected, "sim: appends continue the durable log");
            n.disk.log.push(e);
        }
        n.state
            .persisted(batch.hard_state.map(|(_, seq)| seq), last, &n.disk);
    }

    /// The applier: executions ahead of commit that are done report.
    fn complete_executions(&mut self, id: NodeId) {
        let now = self.now_ms;
        loop {
            let fails = self.rng.chance(5);
            let n = self.node(id);
            match n.executing.front() {
                Some((at, _)) if *at <= now => {}
                _ => return,
            }
            let (_, batch) = n.executing.pop_front().expect("front");
            let result = if fails {
                Err(crate::node::SpeculationFailed(
                    "sim: the machine could not run".into(),
                ))
            } else {
                Ok(batch
                    .entries
                    .into_iter()
                    .map(|e| {
                        let outcome = outcome_of(&e);
                        (e, outcome)
                    })
                    .collect())
            };
            let clock = n.clock(now);
            n.state.speculated(batch.epoch, result, clock, &n.disk);
            self.drain(id);
        }
    }

    fn crash(&mut self, id: NodeId) {
        let n = self.node(id);
        n.up = false;
        n.writing = None; // not fsynced: lost
        n.executing.clear();
        n.apply_wanted = 0;
        n.life += 1;
        // Its clients see their connections drop: no answer comes.
        self.ops.retain(|_, o| o.node != id);
    }

    fn restart(&mut self, id: NodeId) {
        let seed = self.rng.next();
        let (log_kind, broken) = (self.log_kind, self.broken);
        let n = self.node(id);
        // A forced node leads alone until its forced configuration (or a
        // later one) is in its durable log; then the log says it.
        let memberships = n.disk.memberships();
        n.forced_at = n
            .forced_at
            .filter(|&at| !memberships.iter().any(|(i, _)| *i > at));
        let members = match n.forced_at {
            Some(_) => vec![id],
            None => n.bootstrap.clone(),
        };
        let last = n
            .disk
            .log
            .last()
            .map(|e| (e.index, e.term))
            .unwrap_or(n.disk.compacted);
        // Applied state survives (the applier checkpoints with its index).
        let applied = (n.applied.len() as Index).min(last.0);
        n.applied.truncate(applied as usize);
        let mut core = Core::new(config(id, &members), n.disk.hard, last, applied, seed);
        if n.forced_at.is_none() {
            core.restore_memberships(memberships);
        }
        core.restore_recovering(n.disk.recovery_floor, !n.disk.terms_pending);
        n.state = node_state(core, log_kind, &members, seed, broken);
        n.up = true;
    }

    /// Whether losing `id`'s disk is a fault the group must survive: a
    /// majority of the other nodes durably hold everything any node knows
    /// committed (else two disks' worth of data would be gone, which no
    /// replication of this size survives), and every peer has heard from
    /// `id` (only then can it be told it lost its data; see
    /// ARCHITECTURE.md, "Lost data").
    fn may_wipe(&self, id: NodeId) -> bool {
        let Some((_, top)) = self
            .nodes
            .iter()
            .max_by_key(|(_, n)| n.state.core().commit_index())
        else {
            return false;
        };
        let commit = top.state.core().commit_index();
        let Some(term) = top.disk.term(commit) else {
            return false;
        };
        let voters = top.state.core().membership().clone();
        // Acknowledged writes count as committed too (their committer may
        // have crashed since).
        let acked = self.acked.iter().map(|a| a.0).max().unwrap_or(0);
        let holds = |p: NodeId| {
            let n = &self.nodes[&p];
            p != id
                && n.disk.term(commit) == Some(term)
                && n.disk.last_index().max(n.disk.compacted.0) >= acked
        };
        // Only a voter loses its disk: a learner or a removed node would
        // come back with the bootstrap configuration and no data, which
        // `member add`/`replace` covers instead (see the README).
        let known = self
            .nodes
            .iter()
            .all(|(&p, n)| p == id || !voters.contains(p) || n.disk.peers.contains_key(&id));
        voters.is_voter(id)
            && self.initial.contains(&id)
            && voters.has_quorum(|p| self.nodes.contains_key(&p) && holds(p))
            && known
    }

    /// The node loses its disk and restarts on an empty one, under a new
    /// incarnation.
    fn wipe(&mut self, id: NodeId) {
        if std::env::var("UNDERSTUDY_SIM_TRACE").is_ok() {
            eprintln!("{} ms: wipe node {id}", self.now_ms);
        }
        self.crash(id);
        let incarnation = self.rng.next() | 1;
        let n = self.node(id);
        n.disk = Disk::default();
        n.applied.clear();
        n.incarnation = incarnation;
        n.forced_at = None; // its record went with the data directory
        self.wipes += 1;
        self.restart(id);
        // Like the node's dialers at start: a hello to every peer it can
        // reach (the node votes for no one for a minimum election timeout
        // after it starts, in which these answers arrive).
        let peers: Vec<NodeId> = self.nodes.keys().copied().filter(|&p| p != id).collect();
        for p in peers {
            if self.nodes[&p].up && !self.cut.contains(&(id, p)) {
                self.hello(id, p);
            }
        }
    }

    /// What the transport's hello does before `from`'s first message
    /// reaches `to`: `to` records `from`'s incarnation, and if it knew
    /// another one, both learn that `from` lost its data.
    fn hello(&mut self, from: NodeId, to: NodeId) {
        // The answer carries the receiver's term, durable log position and
        // configuration in effect.
        let (term, position, membership) = {
            let c = self.nodes[&to].state.core();
            (
                c.term(),
                c.durable_position(),
                (c.membership_index(), c.membership().clone()),
            )
        };
        self.node(from)
            .state
            .hello_answered(to, term, position, membership.clone(), false);
        self.drain(from);
        let incarnation = self.nodes[&from].incarnation;
        let receiver = self.node(to);
        let before = receiver.disk.peers.insert(from, incarnation);
        if before.is_none_or(|b| b == incarnation) {
            return;
        }
        receiver.state.peer_lost_data(from, &receiver.disk);
        let commit = receiver.state.core().commit_index();
        if std::env::var("UNDERSTUDY_SIM_TRACE").is_ok() {
            eprintln!(
                "{} ms: node {to} (term {}) tells node {from} it lost its data (commit {commit})",
                self.now_ms,
                self.nodes[&to].state.core().term()
            );
        }
        self.drain(to);
        self.node(from)
            .state
            .hello_answered(to, term, position, membership, true);
        self.drain(from);
    }

    /// Leases: a leader that may serve reads from its own state is not
    /// deposed — no node leads a later term. Also checked before a step's
    /// deliveries, as a read may reach a thawed leader before anything else.
    fn check_leases(&self) {
        for (&id, n) in &self.nodes {
            let c = n.state.core();
            if n.up && n.paused_until <= self.now_ms && c.lease_read_ok(n.clock(self.now_ms)) {
                let term = c.term();
                if let Some((&other, m)) = self.nodes.iter().find(|(_, m)| {
                    m.up && m.state.core().role() == Role::Leader && m.state.core().term() > term
                }) {
                    let msg = format!(
                        "node {id} holds a read lease in term {term} while node {other} leads term {}",
                        m.state.core().term()
                    );
                    self.fail(&msg);
                }
            }
        }
    }

    fn trace(&mut self) {
        if std::env::var("UNDERSTUDY_SIM_TRACE").is_err() {
            return;
        }
        for (id, n) in &self.nodes {
            let c = n.state.core();
            eprintln!(
                "{} ms: node {id} learning lost terms {} role {:?} term {} vote {:?} up {}",
                self.now_ms,
                c.lost_terms_pending(),
                c.role(),
                c.term(),
                c.vote(),
                n.up
            );
        }
    }

    fn check(&mut self) {
        // 1. Election safety.
        for (&id, n) in &self.nodes {
            let c = n.state.core();
            if n.up && c.role() == Role::Leader {
                let term = c.term();
                match self.leaders.get(&term) {
                    Some(&other) if other != id => {
                        let msg = format!("nodes {other} and {id} both lead term {term}");
                        self.fail(&msg)
                    }
                    _ => {}
                }
            }
        }
        for (&id, n) in &self.nodes {
            if n.up && n.state.core().role() == Role::Leader {
                self.leaders.insert(n.state.core().term(), id);
            }
        }
        // Timestamps never go back along a log (machines see them as time).
        for (id, n) in &self.nodes {
            if let Some(w) = n
                .disk
                .log
                .windows(2)
                .find(|w| w[1].context.timestamp_ms < w[0].context.timestamp_ms)
            {
                let msg = format!(
                    "node {id}: timestamp goes back at entry {} ({:?} after {:?})",
                    w[1].index, w[1], w[0]
                );
                self.fail(&msg);
            }
        }
        // 2. Log matching on durable logs (the uncompacted parts).
        let logs: Vec<(NodeId, &Disk)> = self.nodes.iter().map(|(&id, n)| (id, &n.disk)).collect();
        for (i, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[i + 1..] {
                let lo = la.compacted.0.max(lb.compacted.0) + 1;
                let hi = la.last_index().min(lb.last_index());
                let shared = (lo..=hi)
                    .rev()
                    .find(|&k| la.get(k).map(|e| e.term) == lb.get(k).map(|e| e.term));
                if let Some(k) = shared
                    && (lo..=k).any(|j| la.get(j) != lb.get(j))
                {
                    let msg = format!(
                        "logs of {a} and {b} share ({k}, {:?}) but differ before",
                        la.get(k).map(|e| e.term)
                    );
                    self.fail(&msg);
                }
            }
        }
        self.check_leases();
        // 3. Commit safety: what a node applies was committed; nothing
        // committed ever changes.
        let term_now = self
            .nodes
            .values()
            .map(|n| n.state.core().term())
            .max()
            .unwrap_or(0);
        let mut newly = Vec::new();
        for n in self.nodes.values() {
            for e in &n.applied {
                newly.push(e.clone());
            }
        }
        for e in newly {
            match self.committed.get(&e.index) {
                Some((c, _)) if *c != e => {
                    let msg = format!(
                        "entry {} applied as term {} but committed as term {}",
                        e.index, e.term, c.term
                    );
                    self.fail(&msg)
                }
                Some(_) => {}
                None => {
                    if std::env::var("UNDERSTUDY_SIM_TRACE").is_ok() {
                        eprintln!(
                            "{} ms: entry {} of term {} committed (term now {term_now})",
                            self.now_ms, e.index, e.term
                        );
                    }
                    self.committed.insert(e.index, (e, term_now));
                }
            }
        }
        // 4. Leader completeness: a leader of a later term than an entry's
        // commit holds it (in its durable log or still being written). A
        // stale leader of an older term, cut off, may rightly lack it.
        for (&id, n) in &self.nodes {
            let c = n.state.core();
            if !(n.up && c.role() == Role::Leader) {
                continue;
            }
            for (&i, (entry, by_term)) in &self.committed {
                if c.term() <= *by_term {
                    continue;
                }
                if i <= n.disk.compacted.0 {
                    continue; // in its snapshot: applied, checked by (3)
                }
                let durable = n.disk.get(i);
                let pending = c.unstable_entry(i);
                if durable.or(pending) != Some(entry) {
                    let msg = format!("leader {id} of term {} lacks committed entry {i}", c.term());
                    self.fail(&msg);
                }
            }
        }
        // 5. Acknowledged majority writes survive.
        for (index, term, command) in &self.acked {
            if let Some((c, _)) = self.committed.get(index)
                && (c.term != *term || command_of(c) != Some(command))
            {
                let msg = format!(
                    "the write acknowledged at index {index} of term {term} was lost: entry {index} committed as term {}",
                    c.term
                );
                self.fail(&msg);
            }
        }
        self.check_configurations();
        // The determinism alarm never fires on a group that is
        // deterministic, whatever the faults (a sample compared with a
        // deposed leader's, a late one, one after a snapshot).
        if let Some((id, why)) = self
            .nodes
            .iter()
            .find_map(|(&id, n)| n.state.quarantined().map(|w| (id, w.clone())))
        {
            self.fail(&format!("node {id} quarantined itself: {why}"));
        }
        // 6. Every request is answered by its deadline, unless its node
        // crashed (its client sees the connection drop).
        let now = self.now_ms;
        let late = self.ops.iter().find(|(_, o)| {
            let n = &self.nodes[&o.node];
            n.up && n.life == o.life
                && now > o.issued_ms.max(n.paused_until) + REQUEST_TIMEOUT_MS + ANSWER_SLACK_MS
        });
        if let Some((id, o)) = late {
            let msg = format!(
                "request {id} ({:?}) to node {} asked at {} ms has no answer",
                o.ask, o.node, o.issued_ms
            );
            self.fail(&msg);
        }
    }

    /// A client request to `id`, through the node state.
    fn client_request(&mut self, id: NodeId, ask: Ask) {
        self.next_op += 1;
        let op = self.next_op;
        let now = self.now_ms;
        let life = self.nodes[&id].life;
        self.ops.insert(
            op,
            Op {
                node: id,
                life,
                issued_ms: now,
                ask: ask.clone(),
            },
        );
        let n = self.node(id);
        let clock = n.clock(now);
        match ask {
            Ask::Write { concern, command } => {
                let payload = Payload::Command {
                    actor: "sim".into(),
                    client: Some(ClientTag {
                        client_id: 1,
                        seq: op,
                        acked_below: 0,
                    }),
                    command: ByteBuf::from(command),
                    by: None,
                };
                n.state.propose(payload, concern, op, clock, &n.disk);
                // The shell executes proposals once its mailbox is drained.
                n.state.flush_speculation();
                self.drain(id);
            }
            Ask::Read { level, .. } => {
                n.state
                    .query(op, level, clock, clock + REQUEST_TIMEOUT_MS, &n.disk);
                self.drain(id);
            }
            Ask::Change { change, seq } => {
                let tag = ClientTag {
                    client_id: 2,
                    seq,
                    acked_below: 0,
                };
                n.state
                    .change_membership(change, Some(tag), op, clock, &n.disk);
                n.state.flush_speculation();
                self.drain(id);
            }
        }
    }

    /// An operator changes the configuration at the leader: adds a member
    /// (a learner to keep, or one to promote once caught up), replaces a
    /// voter, promotes or demotes, removes a member — the leader too,
    /// after it handed over — and sometimes retries a change it asked for.
    fn change_membership(&mut self, leader: NodeId) {
        let now = self.now_ms;
        if let Some((old, since)) = self.leader_to_remove {
            if leader != old {
                self.leader_to_remove = None;
                self.ask_change(leader, MembershipChange::Remove { id: old }, None);
            } else if now > since + 500 {
                self.leader_to_remove = None;
            }
            return;
        }
        let m = self.nodes[&leader].state.core().membership().clone();
        let voters: Vec<NodeId> = m.voters.iter().copied().filter(|&v| v != leader).collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let pick = |rng: &mut Rng, from: &[NodeId]| from[rng.below(from.len() as u64) as usize];
        let room = self.nodes.len() < self.nodes_max;
        let change = match self.rng.below(8) {
            0 | 1 if room => {
                let id = self.add_node();
                MembershipChange::Add {
                    id,
                    addrs: addrs_of(id),
                    voter: self.rng.chance(800),
                }
            }
            2 | 3 if room && !voters.is_empty() => {
                let out = pick(&mut self.rng, &voters);
                let id = self.add_node();
                MembershipChange::Replace {
                    out,
                    id,
                    addrs: addrs_of(id),
                }
            }
            4 if !learners.is_empty() => MembershipChange::Promote {
                id: pick(&mut self.rng, &learners),
            },
            5 if !voters.is_empty() && m.voters.len() > 3 => MembershipChange::Demote {
                id: pick(&mut self.rng, &voters),
            },
            6 if m.voters.len() > 2 || !learners.is_empty() => {
                let all: Vec<NodeId> = voters.iter().chain(&learners).copied().collect();
                MembershipChange::Remove {
                    id: pick(&mut self.rng, &all),
                }
            }
            7 if m.voters.len() > 2 && !voters.is_empty() => {
                // Remove the leader: hand over first.
                let to = pick(&mut self.rng, &voters);
                let _ = self.node(leader).state.transfer_leadership(to);
                self.drain(leader);
                self.leader_to_remove = Some((leader, now));
                return;
            }
            _ => return,
        };
        let retry = self.rng.chance(100);
        let seq = self.ask_change(leader, change.clone(), None);
        if retry {
            self.ask_change(leader, change, Some(seq));
        }
    }

    /// Send `change` to `to` (with the tag of request `seq` for a retry);
    /// returns the request's tag sequence.
    fn ask_change(&mut self, to: NodeId, change: MembershipChange, retry_of: Option<u64>) -> u64 {
        if std::env::var("UNDERSTUDY_SIM_TRACE").is_ok() {
            eprintln!("{} ms: ask node {to}: {change}", self.now_ms);
        }
        self.changes_asked += 1;
        let seq = retry_of.unwrap_or(self.next_op + 1);
        self.client_request(to, Ask::Change { change, seq });
        seq
    }

    /// A new node, up, on an empty disk, that knows no configuration yet.
    fn add_node(&mut self) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        let seed = self.rng.next();
        let node = new_node(id, &[], self.log_kind, seed, self.broken, &mut self.rng);
        self.nodes.insert(id, node);
        id
    }

    /// BRIEF invariant 12: no two configurations in effect have majorities
    /// that do not overlap. In effect: the configuration at the highest
    /// commit index any node knows, and every later one in the log of a
    /// node on the committed branch (its log holds that committed entry).
    /// An older configuration still in effect on a lagging node cannot
    /// decide anything: a majority of it holds the newer one.
    fn check_configurations(&mut self) {
        let Some((&top, _)) = self
            .nodes
            .iter()
            .max_by_key(|(_, n)| n.state.core().commit_index())
        else {
            return;
        };
        let term_at = |n: &SimNode, i: Index| {
            n.state
                .core()
                .unstable_entry(i)
                .map(|e| e.term)
                .or_else(|| n.disk.term(i))
        };
        let c = self.nodes[&top].state.core();
        let commit = c.commit_index();
        let Some(committed) = c.membership_at(commit).cloned() else {
            return;
        };
        let commit_term = term_at(&self.nodes[&top], commit);
        // The entry of the configuration in effect at the commit index.
        let committed_at = self.nodes[&top]
            .disk
            .memberships()
            .iter()
            .rev()
            .find(|(i, _)| *i <= commit)
            .map_or(0, |(i, _)| *i);
        let mut in_effect: Vec<(NodeId, Index, Membership)> = vec![(top, committed_at, committed)];
        for (&id, n) in &self.nodes {
            let core = n.state.core();
            let index = core.membership_index();
            if n.up && index > commit && term_at(n, commit) == commit_term {
                let m = core.membership().clone();
                if !in_effect.iter().any(|(_, _, o)| *o == m) {
                    in_effect.push((id, index, m));
                }
                if let Some(t) = term_at(n, index) {
                    self.configurations.insert((index, t));
                }
            }
        }
        let era = |index: Index| self.forced_boundary.is_some_and(|b| index > b);
        for (i, (a_node, a_index, a)) in in_effect.iter().enumerate() {
            for (b_node, b_index, b) in &in_effect[i + 1..] {
                if era(*a_index) == era(*b_index) && disjoint_majorities(a, b) {
                    self.fail(&format!(
                        "configurations {a} (entry {a_index}, node {a_node}) and {b} (entry \
                         {b_index}, node {b_node}) are both in effect and have majorities that \
                         do not overlap"
                    ));
                }
            }
        }
    }

    /// Clients: writes, mostly to the leader, at both concerns; reads at
    /// random nodes and levels.
    fn clients(&mut self, faults: bool, leader: Option<NodeId>, reachable: &[NodeId]) {
        let write = if faults {
            self.rng.chance(300)
        } else {
            self.now_ms.is_multiple_of(7)
        };
        if write && !reachable.is_empty() {
            let id = match leader {
                Some(l) if self.rng.chance(900) => l,
                _ => reachable[self.rng.below(reachable.len() as u64) as usize],
            };
            let concern = if self.rng.chance(300) {
                WriteConcern::Leader
            } else {
                WriteConcern::Majority
            };
            let command = (self.next_op + 1).to_be_bytes().to_vec();
            self.client_request(id, Ask::Write { concern, command });
        }
        if self.rng.chance(if faults { 100 } else { 30 }) && !reachable.is_empty() {
            let id = reachable[self.rng.below(reachable.len() as u64) as usize];
            let level = match self.rng.below(6) {
                0 => ReadLevel::Any,
                1 => ReadLevel::Bounded {
                    max_lag_entries: Some(BOUNDED_LAG_ENTRIES),
                    max_lag_ms: None,
                },
                2 | 3 => ReadLevel::Lease,
                4 if !self.tokens.is_empty() => {
                    let pick = self.rng.below(self.tokens.len() as u64) as usize;
                    let (index, term) = self.tokens[pick];
                    ReadLevel::Session { term, index }
                }
                _ => ReadLevel::Linearizable,
            };
            let committed = self
                .nodes
                .values()
                .map(|n| n.state.core().commit_index())
                .max()
                .unwrap_or(0);
            let acked = self.acked.iter().map(|a| a.0).max().unwrap_or(0);
            let floor = committed.max(acked);
            self.client_request(id, Ask::Read { level, floor });
        }
    }

    /// One millisecond of virtual time: deliveries, fsync completions,
    /// executions and applies, ticks, clients and, with `faults`, crashes,
    /// pauses, lost disks and partitions.
    fn step(&mut self, faults: bool) {
        self.now_ms += 1;
        self.check_leases();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let now = self.now_ms;
        let paused: BTreeMap<NodeId, u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.paused_until > now)
            .map(|(&id, n)| (id, n.paused_until))
            .collect();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.net = later;
        // Deliveries to a frozen node wait until it thaws.
        let mut due_now = Vec::new();
        for (at, event) in due {
            let to = match &event {
                Event::Deliver { to, .. }
                | Event::Snapshot { to, .. }
                | Event::Digest { to, .. } => *to,
                Event::SnapshotFailed { leader, .. } | Event::SnapshotDone { leader, .. } => {
                    *leader
                }
            };
            match paused.get(&to) {
                Some(&until) => self.net.push((until, event)),
                None => due_now.push((at, event)),
            }
        }
        for (_, event) in due_now {
            self.deliver(event);
        }
        for &id in &ids {
            if !self.nodes[&id].up || paused.contains_key(&id) {
                continue;
            }
            self.complete_writes(id);
            self.complete_executions(id);
            if self.rng.chance(500) {
                self.apply(id);
            }
            if now.is_multiple_of(5) {
                // The shell's tick: the core's timers, a turn, then what
                // waited too long is answered.
                let n = self.node(id);
                let clock = n.clock(now);
                n.state.tick(clock, &n.disk);
                self.drain(id);
                let n = self.node(id);
                n.state.expire(clock);
                n.state.flush_speculation();
                self.drain(id);
            }
        }
        let reachable: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|id| self.nodes[id].up && !paused.contains_key(id))
            .collect();
        let leader = reachable
            .iter()
            .copied()
            .find(|id| self.nodes[id].state.core().role() == Role::Leader);
        self.clients(faults, leader, &reachable);
        if let Some(l) = leader
            && faults
            && self.membership
            && self.rng.chance(8)
        {
            self.change_membership(l);
        }
        // Log compaction: a node drops a prefix of what it applied.
        if faults && self.rng.chance(20) {
            let id = ids[self.rng.below(ids.len() as u64) as usize];
            let keep = self.rng.below(30);
            let n = self.node(id);
            let up_to = (n.applied.len() as Index)
                .saturating_sub(keep)
                .min(n.disk.last_index());
            n.disk.compact(up_to);
            self.compactions += 1;
        }
        // Manual switchovers: the leader hands over to a random member.
        if let Some(id) = leader
            && self.rng.chance(if faults { 3 } else { 1 })
        {
            let to = ids[self.rng.below(ids.len() as u64) as usize];
            let _ = self.node(id).state.transfer_leadership(to);
            self.drain(id);
        }
        // Every node keeps dialing the peers whose answer to its hello it
        // has not had (the transport's dialers retry; it votes only for
        // those that answered), and a node still learning the terms it
        // lost, every peer: each answer carries the peer's term.
        let dialing: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up && n.paused_until <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in dialing {
            let learning = self.nodes[&id].state.core().lost_terms_pending();
            for &p in &ids {
                if p != id
                    && (learning || !self.nodes[&id].state.core().heard_hello_from(p))
                    && self.nodes[&p].up
                    && self.nodes[&p].paused_until <= now
                    && !self.cut.contains(&(id, p))
                    && !self.cut.contains(&(p, id))
                {
                    self.hello(id, p);
                }
            }
        }
        if faults {
            self.faults(&ids);
        }
        self.trace();
        self.check();
    }

    fn deliver(&mut self, event: Event) {
        let now = self.now_ms;
        match event {
            Event::Digest {
                from,
                to,
                index,
                digest,
            } => {
                let n = self.node(to);
                if n.up {
                    n.state.digest_from_peer(from, index, digest);
                    self.digests_delivered += 1;
                    self.execute(to);
                }
            }
            Event::Deliver { from, to, msg } => {
                if !self.nodes[&to].up {
                    return;
                }
                if self.nodes[&from].up {
                    self.hello(from, to);
                }
                let n = self.node(to);
                let clock = n.clock(now);
                n.state.heard_from(from, clock);
                n.state.step(from, msg, &n.disk);
                self.drain(to);
            }
            Event::Snapshot {
                from,
                to,
                index,
                term,
                state,
                membership,
            } => {
                // The log writer finishes the batch it is writing before
                // it resets the log to the snapshot.
                if self.nodes[&to].up {
                    self.write_batch(to);
                }
                let n = self.node(to);
                let refused = if !n.up || n.state.install_begin(from, index, term, &n.disk).is_err()
                {
                    true
                } else {
                    if index > n.applied.len() as Index {
                        // Install: the state, then a log reset.
                        n.disk.compacted_ts = state.last().map_or(0, |e| e.context.timestamp_ms);
                        n.applied = state;
                        n.disk.log.clear();
                        n.disk.compacted = (index, term);
                        n.disk.compacted_membership = Some(membership.clone());
                        n.apply_wanted = n.apply_wanted.max(index);
                        self.snapshots_installed += 1;
                    }
                    let n = self.node(to);
                    n.state
                        .install_end(Some((index, term, membership)), &n.disk);
                    self.drain(to);
                    false
                };
                // The sender hears back, unless the answer is lost.
                let at = now + 1 + self.rng.below(10);
                let answer = if refused || self.rng.chance(100) {
                    Event::SnapshotFailed {
                        leader: from,
                        peer: to,
                    }
                } else {
                    Event::SnapshotDone {
                        leader: from,
                        peer: to,
                        index,
                    }
                };
                self.net.push((at, answer));
            }
            Event::SnapshotDone {
                leader,
                peer,
                index,
            } => {
                let n = self.node(leader);
                if n.up {
                    n.state.snapshot_sent(peer, index, &n.disk);
                    self.drain(leader);
                }
            }
            Event::SnapshotFailed { leader, peer } => {
                let n = self.node(leader);
                if n.up {
                    n.state.snapshot_not_sent(peer);
                    n.state.snapshot_failed(peer);
                    self.drain(leader);
                }
            }
        }
    }

    fn faults(&mut self, ids: &[NodeId]) {
        let now = self.now_ms;
        if self.rng.chance(2) {
            // Freeze a node (SIGSTOP) for 50–500 ms.
            let id = ids[self.rng.below(ids.len() as u64) as usize];
            let until = now + 50 + self.rng.below(450);
            let n = self.node(id);
            if n.up && n.paused_until <= now {
                n.paused_until = until;
            }
        }
        if self.rng.chance(3) {
            let id = ids[self.rng.below(ids.len() as u64) as usize];
            if self.nodes[&id].up {
                self.crash(id);
            } else {
                self.restart(id);
            }
        }
        if self.rng.chance(1) {
            let id = ids[self.rng.below(ids.len() as u64) as usize];
            if self.may_wipe(id) {
                self.wipe(id);
            }
        }
        if self.rng.chance(4) {
            // Cut or heal one direction of one link (asymmetric partitions).
            let a = ids[self.rng.below(ids.len() as u64) as usize];
            let b = ids[self.rng.below(ids.len() as u64) as usize];
            if a != b && !self.cut.remove(&(a, b)) {
                self.cut.insert((a, b));
            }
        }
        if self.rng.chance(2) {
            self.cut.clear();
        }
        if self.membership && self.forcings == 0 && self.rng.chance(FORCE_PER_MILLE) {
            self.force_if_majority_lost(ids);
        }
    }

    /// The operator's forced recovery, when the group lost its majority:
    /// a random node that is up and whose configuration's voters are
    /// mostly down is promoted by force (if the node state allows it, as
    /// `Node::force_alone` asks), and every other node is retired for
    /// good — the README tells operators never to start the excluded
    /// members on their old data, and the group grows back from the forced
    /// node with new members. What the forced node lacked is lost by the
    /// operator's decision: the checker drops those committed entries,
    /// acknowledged writes and write tokens, and keeps checking everything
    /// from there on.
    fn force_if_majority_lost(&mut self, ids: &[NodeId]) {
        let now = self.now_ms;
        let id = ids[self.rng.below(ids.len() as u64) as usize];
        let n = &self.nodes[&id];
        let m = n.state.core().membership();
        let alive = |p: NodeId| {
            p == id
                || self
                    .nodes
                    .get(&p)
                    .is_some_and(|o| o.up && o.paused_until <= now)
        };
        if !n.up
            || n.paused_until > now
            || !m.all_voters().contains(&id)
            || m.has_quorum(alive)
            || n.state.log_busy()
            || n.writing.is_some()
            || n.state.may_still_elect(n.clock(now)).is_err()
        {
            return;
        }
        if std::env::var("UNDERSTUDY_SIM_TRACE").is_ok() {
            eprintln!("{now} ms: node {id} promoted by force (configuration {m})");
        }
        let retired: Vec<NodeId> = ids.iter().copied().filter(|&p| p != id).collect();
        for p in &retired {
            self.nodes.remove(p);
        }
        let known = |p: &NodeId| *p == id;
        self.net.retain(|(_, e)| match e {
            Event::Deliver { from, to, .. }
            | Event::Digest { from, to, .. }
            | Event::Snapshot { from, to, .. } => known(from) && known(to),
            Event::SnapshotFailed { leader, peer } | Event::SnapshotDone { leader, peer, .. } => {
                known(leader) && known(peer)
            }
        });
        self.cut.clear();
        self.ops.retain(|_, o| o.node == id);
        self.leader_to_remove = None;
        // What the forced node holds (applied, or in its durable log) is
        // all that is left; it commits its whole log as the group of one.
        let n = &self.nodes[&id];
        let holds = |index: Index, term: Term| {
            index >= 1
                && (n.applied.get(index as usize - 1).map(|e| e.term) == Some(term)
                    || n.disk.get(index).map(|e| e.term) == Some(term))
        };
        let before = (self.committed.len(), self.acked.len());
        self.committed.retain(|&i, (e, _)| holds(i, e.term));
        self.acked.retain(|(i, t, _)| holds(*i, *t));
        self.tokens.retain(|(i, t)| holds(*i, *t));
        self.lost_by_force.0 += (before.0 - self.committed.len()) as u64;
        self.lost_by_force.1 += (before.1 - self.acked.len()) as u64;
        // Reads asked before: what they must see is what survived.
        let top = n.disk.last_index().max(n.applied.len() as Index);
        for o in self.ops.values_mut() {
            if let Ask::Read { floor, .. } = &mut o.ask {
                *floor = (*floor).min(top);
            }
        }
        // Terms the retired nodes led after the forced node's term are
        // history of a group that no longer exists.
        let term = n.state.core().term();
        self.leaders.retain(|&t, _| t <= term);
        let n = self.node(id);
        let forced_at = n.state.core().last_index();
        n.forced_at = Some(forced_at);
        self.forced_boundary = Some(forced_at);
        let n = self.node(id);
        let clock = n.clock(now);
        n.state.lead_alone(config(id, &[id]), clock, &n.disk);
        self.forcings += 1;
        self.drain(id);
    }

    /// Heal everything and let the group settle: it must elect a leader,
    /// commit new writes, serve reads, hold every acknowledged write, and
    /// answer every request (liveness once faults stop).
    fn settle(&mut self) {
        self.cut.clear();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if !self.nodes[&id].up {
                self.restart(id);
            }
        }
        let committed_before = self.committed.len();
        let reads_before = self.reads_served;
        for _ in 0..20_000 {
            self.step(false);
            let acked = self.acked.iter().map(|a| a.0).max().unwrap_or(0);
            if self.committed.len() > committed_before + 1
                && self.reads_served > reads_before
                && self.committed.len() as Index >= acked
            {
                let pending: Vec<u64> = self.ops.keys().copied().collect();
                for _ in 0..REQUEST_TIMEOUT_MS + 2 * ANSWER_SLACK_MS {
                    if pending.iter().all(|op| !self.ops.contains_key(op)) {
                        return;
                    }
                    self.step(false);
                }
                let left: Vec<(&u64, &Op)> = self.ops.iter().take(5).collect();
                self.fail(&format!(
                    "requests still unanswered after healing: {left:?}"
                ));
            }
        }
        self.fail("no progress within 20 s of healing");
    }
}

/// What one run did.
#[derive(Default)]
struct Ran {
    snapshots_installed: u64,
    wipes: u64,
    writes_acked: u64,
    reads_served: u64,
    digests_delivered: u64,
    row: bool,
    changes_asked: u64,
    changes_done: u64,
    configurations: u64,
    forcings: u64,
    lost_by_force: (u64, u64),
}

/// Runs one seed.
fn run(seed: u64, members: &[NodeId], steps: u64, broken: crate::node::Broken) -> Ran {
    let mut sim = Sim::new(seed, members, broken, true);
    for _ in 0..steps {
        sim.step(true);
    }
    sim.settle();
    Ran {
        snapshots_installed: sim.snapshots_installed,
        wipes: sim.wipes,
        writes_acked: sim.writes_acked,
        reads_served: sim.reads_served,
        digests_delivered: sim.digests_delivered,
        row: sim.log_kind == LogKind::Row,
        changes_asked: sim.changes_asked,
        changes_done: sim.changes_done,
        configurations: sim.configurations.len() as u64,
        forcings: sim.forcings,
        lost_by_force: sim.lost_by_force,
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("UNDERSTUDY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n: u64 = std::env::var("UNDERSTUDY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Regression seeds that once failed stay first.
    let mut seeds: Vec<u64> = REGRESSIONS.to_vec();
    seeds.extend((0..n).map(|i| 0x5EED_0000 + i));
    seeds
}

/// Seeds that found bugs; kept forever.
/// - 0x5EED_000A: a follower stalled for good when a probe with entries
///   advanced `next` past the probe and its refusal was taken as stale.
/// - 0x5EED_0000: duplicated ReadIndex answers (the checker must accept
///   them; the shell drops answers to reads it no longer waits for).
/// - 0x5EED_000E: a new leader restored from a snapshot (or with a fully
///   compacted log) stamped its no-op earlier than the entries before it.
/// - 1592590381: a wiped node voted a second time in a term it had voted
///   in before its disk was lost (two leaders of term 1).
/// - 1592590350: a wiped node's vote elected a leader lacking committed
///   entries.
/// - 1592590405: a pre-candidate refused by a node of a newer term never
///   learned that term and asked for the same one forever (no leader
///   after healing, with a recovering node that votes for no one).
/// - 1592590485: a candidate ignored a recovered peer's votes for two
///   terms counted from when it learned, while its own pre-votes never
///   advanced its term (no leader after healing).
/// - 1592590882: a wiped node that had led term 1 led term 1 again with
///   another log (told by a peer that had committed nothing): a told node
///   now learns the terms of enough peers to cover every majority first.
/// - 1592590795: two wiped nodes waited for each other's terms forever
///   (hello answers now carry the peer's term).
/// - 1592590781 (five nodes): a TimeoutNow delivered after its transfer
///   was given up elected the target with transfer votes while the old
///   leader served lease reads again (a leader that sent a TimeoutNow now
///   serves no lease read for the rest of its term).
/// - 1592591747: two nodes that had lost their data (one after the
///   other) were told the group's commit index — 0, as commit indexes are
///   not durable — and elected one of them while the committed entry 1
///   was on the third node only (a node that lost its data now votes only
///   for logs at least as up-to-date as those of the peers it heard).
/// - 1592590882 again, once the simulator drove the node state with each
///   node's own (drifting) clock: a leader whose log ended at an entry it
///   had from a snapshot stamped its no-op earlier than that entry (the
///   log now keeps the compacted entry's timestamp, and a snapshot
///   carries it).
/// - 1592590529: no leader for good after healing — a node that lost its
///   data was told a peer's last position, whose tail was not durable and
///   vanished in a crash, so no surviving log met its floor (peers now
///   tell their durable position).
/// - 1592590616: a node promoted by force quarantined itself — a sample
///   a peer of the given-up group had sent, of an entry the forced node's
///   log holds otherwise, was still waiting to be compared (a forced
///   promotion now forgets peers' samples; only members' count).
/// - 1592590425 (five nodes): the checker compared the forced
///   configuration with the given-up group's (invariant 12 now holds on
///   each side of a forced promotion).
/// - 1592590626: no leader for good after healing — a node that had lost
///   its data took a learner's log, longer than every voter's, as the
///   floor a candidate must reach (the floor is now the voters').
const REGRESSIONS: &[u64] = &[
    0x5EED_000A,
    0x5EED_0000,
    0x5EED_000E,
    1592590381,
    1592590350,
    1592590405,
    1592590485,
    1592590882,
    1592590795,
    1592590781,
    1592591747,
    1592590529,
    1592590616,
    1592590425,
    1592590626,
];

fn totals(runs: Vec<Ran>) -> Ran {
    let mut t = Ran::default();
    let mut kinds = (0, 0);
    for r in runs {
        t.snapshots_installed += r.snapshots_installed;
        t.wipes += r.wipes;
        t.writes_acked += r.writes_acked;
        t.reads_served += r.reads_served;
        t.digests_delivered += r.digests_delivered;
        t.changes_asked += r.changes_asked;
        t.changes_done += r.changes_done;
        t.configurations += r.configurations;
        t.forcings += r.forcings;
        t.lost_by_force.0 += r.lost_by_force.0;
        t.lost_by_force.1 += r.lost_by_force.1;
        if r.row {
            kinds.1 += 1;
        } else {
            kinds.0 += 1;
        }
    }
    eprintln!(
        "snapshots installed {}, disks wiped {}, writes acknowledged {}, reads served {}, digest samples compared {}, configuration changes asked {} and completed {}, configurations in effect {}, forced recoveries {} (committed entries lost by decision {}, acknowledged writes {}), runs (statement, row) {kinds:?}",
        t.snapshots_installed,
        t.wipes,
        t.writes_acked,
        t.reads_served,
        t.digests_delivered,
        t.changes_asked,
        t.changes_done,
        t.configurations,
        t.forcings,
        t.lost_by_force.0,
        t.lost_by_force.1
    );
    t.row = kinds.0 > 0 && kinds.1 > 0;
    t
}

#[test]
fn three_nodes_keep_the_invariants_under_faults() {
    let runs = seeds()
        .into_iter()
        .map(|s| run(s, &[1, 2, 3], 4_000, Default::default()))
        .collect();
    let t = totals(runs);
    // (One replayed seed may install or wipe nothing.)
    if std::env::var("UNDERSTUDY_SIM_SEED").is_err() {
        assert!(t.snapshots_installed > 0, "the runs install snapshots");
        assert!(t.wipes > 0, "the runs wipe disks");
        assert!(t.row, "the runs use both log kinds");
        assert!(t.writes_acked > 0 && t.reads_served > 0);
        assert!(t.digests_delivered > 0, "digest samples reach peers");
        assert!(t.changes_done > 0, "the runs change the configuration");
        assert!(t.forcings > 0, "the runs force recoveries");
    }
}

#[test]
fn five_nodes_keep_the_invariants_under_faults() {
    // Half as many seeds as with three nodes (each run costs more); a soak
    // with UNDERSTUDY_SIM_SEEDS scales both.
    let seeds = seeds();
    let n = (seeds.len() / 2).max(30).min(seeds.len());
    let runs = seeds
        .into_iter()
        .take(n)
        .map(|s| run(s, &[1, 2, 3, 4, 5], 4_000, Default::default()))
        .collect();
    let t = totals(runs);
    if std::env::var("UNDERSTUDY_SIM_SEED").is_err() {
        assert!(t.snapshots_installed > 0, "the runs install snapshots");
    }
}

/// The first seed (of at most `tries`) whose run fails with `broken`.
fn first_failing(broken: crate::node::Broken, tries: u64) -> Option<(u64, String)> {
    (0..tries).map(|i| 0xB0C0_0000 + i).find_map(|seed| {
        std::panic::catch_unwind(|| run(seed, &[1, 2, 3], 4_000, broken))
            .err()
            .map(|e| {
                let message = e
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "a panic without a message".into());
                (seed, message)
            })
    })
}

/// The simulator catches a node that answers a `majority` write at the
/// leader's own fsync: a write it acknowledged is lost.
#[test]
fn a_majority_write_answered_at_the_leaders_fsync_is_caught() {
    let broken = crate::node::Broken {
        majority_answered_at_leader_fsync: true,
        ..Default::default()
    };
    let (seed, message) = first_failing(broken, 40).expect("the simulator catches it");
    eprintln!("seed {seed}: {message}");
    // Lost, or missed by a linearizable read (it was acknowledged before
    // it committed): either way, a promise of the `majority` concern.
    assert!(
        message.contains("was lost") || message.contains("committed or acknowledged"),
        "{message}"
    );
}

/// The simulator catches a leader that changes the voters in one step,
/// without the joint configuration: a swap makes two configurations in
/// effect whose majorities do not meet.
#[test]
fn a_change_of_voters_without_the_joint_configuration_is_caught() {
    let broken = crate::node::Broken {
        membership_without_joint: true,
        ..Default::default()
    };
    let (seed, message) = first_failing(broken, 40).expect("the simulator catches it");
    eprintln!("seed {seed}: {message}");
    assert!(message.contains("do not overlap"), "{message}");
}

/// The simulator catches a leader that serves `lease` reads after its
/// lease ran out: a read misses a write committed under a newer leader.
#[test]
fn a_lease_read_served_after_the_lease_ran_out_is_caught() {
    let broken = crate::node::Broken {
        lease_outlives_its_expiry: true,
        ..Default::default()
    };
    let (seed, message) = first_failing(broken, 40).expect("the simulator catches it");
    eprintln!("seed {seed}: {message}");
    assert!(message.contains("Lease read"), "{message}");
}
