//! Deterministic simulation of a group of [`Core`]s.
//!
//! One seed drives everything: message delay (so reordering), loss and
//! duplication, partitions (including one-way cuts), crashes that lose
//! whatever was not yet durable, restarts, and client proposals. Time is
//! virtual. After every step the invariants of BRIEF.md that live in the
//! core are checked:
//!
//! 1. election safety — at most one leader per term;
//! 2. log matching — two logs with an entry of the same index and term agree
//!    on everything up to it;
//! 3. commit safety — an entry once committed (known to a majority-backed
//!    commit index) is never changed, and every leader holds all of them;
//! 4. state-machine safety — every node applies the committed entry at each
//!    index, and nothing else;
//! 5. linearizable reads — a ReadIndex answer is at least every commit
//!    index any node knew when the read was asked.
//!
//! Disks can be wiped, too (a node restarts on an empty data directory
//! under its id, with a new incarnation), one at a time: a peer that knew
//! the node under its old incarnation tells it, on the first message it
//! gets from it (the transport's hello), that it lost its data, and the
//! checks above must hold.
//!
//! A failure panics with the seed; `UNDERSTUDY_SIM_SEED=<seed>` replays it
//! exactly, `UNDERSTUDY_SIM_SEEDS=<n>` runs more seeds (the soak).

use super::*;
use crate::types::ClientTag;
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
        let term = self.get(up_to).expect("compacting within the log").term;
        self.log.drain(..(up_to - self.compacted.0) as usize);
        self.compacted = (up_to, term);
    }
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
}

struct SimNode {
    core: Core,
    disk: Disk,
    /// Appends written but not yet fsynced, with the time they complete.
    writes: VecDeque<(u64, Vec<Entry>)>,
    applied: Vec<Entry>,
    up: bool,
    /// This node's clock runs this many parts per million fast or slow.
    drift_ppm: i64,
    /// Frozen (SIGSTOP) until then: it keeps its memory, sees nothing and
    /// does nothing; what arrives meanwhile waits in its socket buffers.
    paused_until: u64,
    /// The incarnation of its data directory (new after a wipe).
    incarnation: u64,
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
    /// A whole snapshot (the sender's applied entries up to `index`).
    Snapshot {
        from: NodeId,
        to: NodeId,
        index: Index,
        term: Term,
        state: Vec<Entry>,
    },
    /// The snapshot stream from `leader` to `peer` broke.
    SnapshotFailed { leader: NodeId, peer: NodeId },
    /// `peer` reported the snapshot installed (or not needed).
    SnapshotDone {
        leader: NodeId,
        peer: NodeId,
        index: Index,
    },
}

struct Sim {
    seed: u64,
    rng: Rng,
    now_ms: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Vec<(u64, Event)>,
    /// (from, to) pairs whose messages are dropped.
    cut: BTreeSet<(NodeId, NodeId)>,
    leaders: BTreeMap<Term, NodeId>,
    /// Committed entries, with a term by which they were surely committed
    /// (the highest term any node had when the commit was first seen).
    committed: BTreeMap<Index, (Entry, Term)>,
    proposals: u64,
    /// Linearizable reads in flight: (node, ctx) → lowest acceptable index.
    reads: BTreeMap<(NodeId, u64), Index>,
    next_read: u64,
    reads_served: u64,
    compactions: u64,
    snapshots_installed: u64,
    wipes: u64,
}

fn config(id: NodeId, members: &[NodeId]) -> GroupConfig {
    GroupConfig {
        heartbeat_interval_ms: 20,
        election_timeout_min_ms: 100,
        election_timeout_max_ms: 200,
        ..GroupConfig::new(id, members.to_vec())
    }
}

impl Sim {
    fn new(seed: u64, members: &[NodeId]) -> Sim {
        let nodes: BTreeMap<NodeId, SimNode> = members
            .iter()
            .map(|&id| {
                let core = Core::new(config(id, members), HardState::default(), (0, 0), 0, seed);
                (
                    id,
                    SimNode {
                        core,
                        disk: Disk::default(),
                        writes: VecDeque::new(),
                        applied: Vec::new(),
                        up: true,
                        drift_ppm: 0,
                        paused_until: 0,
                        incarnation: id,
                    },
                )
            })
            .collect();
        let mut rng = Rng(seed);
        let mut nodes = nodes;
        for n in nodes.values_mut() {
            // Clocks that run up to 2 % fast or slow.
            n.drift_ppm = rng.below(40_001) as i64 - 20_000;
        }
        Sim {
            seed,
            rng,
            now_ms: 0,
            nodes,
            net: Vec::new(),
            cut: BTreeSet::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            proposals: 0,
            reads: BTreeMap::new(),
            next_read: 0,
            reads_served: 0,
            compactions: 0,
            snapshots_installed: 0,
            wipes: 0,
        }
    }

    fn fail(&self, what: &str) -> ! {
        for (id, n) in &self.nodes {
            eprintln!(
                "node {id}: up {} role {:?} term {} vote {:?} last {} durable {} (last term {:?}) commit {} applied {} recovering {:?} told {:?} peers {:?} incarnation {}",
                n.up,
                n.core.role(),
                n.core.term(),
                n.core.vote(),
                n.core.last_index(),
                n.disk.last_index(),
                n.disk.log.last().map(|e| e.term),
                n.core.commit_index(),
                n.applied.len(),
                n.core.recovering_until(),
                n.disk.recovery_floor,
                n.disk.peers,
                n.incarnation
            );
        }
        panic!(
            "simulation invariant violated at {} ms: {what} (UNDERSTUDY_SIM_SEED={})",
            self.now_ms, self.seed
        )
    }

    /// Execute a node's Ready in order: hard state (sync), truncate (sync),
    /// appends (async fsync), messages, apply.
    fn drain(&mut self, id: NodeId) {
        let r = {
            let n = self.nodes.get_mut(&id).expect("node");
            n.core.ready()
        };
        // Mostly fast disks, sometimes a slow fsync: wide windows in which
        // a node changes its mind about entries still being written.
        let delay = if self.rng.chance(100) {
            5 + self.rng.below(60)
        } else {
            1 + self.rng.below(3)
        };
        let n = self.nodes.get_mut(&id).expect("node");
        if let Some(hs) = r.hard_state {
            n.disk.hard = hs;
        }
        // The shell records when the terms are learned, with the hard
        // state that holds its vote.
        n.disk.terms_pending = n.core.lost_terms_pending();
        n.disk.recovery_floor = n.core.recovery_floor();
        if let Some(t) = r.truncate_from {
            n.disk.truncate_from(t);
            for (_, batch) in n.writes.iter_mut() {
                batch.retain(|e| e.index < t);
            }
        }
        if !r.append.is_empty() {
            n.writes.push_back((self.now_ms + delay, r.append));
        }
        let apply = r.apply_up_to;
        for peer in r.snapshots {
            let n = &self.nodes[&id];
            let index = n.applied.len() as Index;
            let term = n.applied.last().map_or(0, |e| e.term);
            let state = n.applied.clone();
            let at = self.now_ms + 5 + self.rng.below(30);
            let event = if self.cut.contains(&(id, peer)) || self.rng.chance(100) {
                Event::SnapshotFailed { leader: id, peer }
            } else {
                Event::Snapshot {
                    from: id,
                    to: peer,
                    index,
                    term,
                    state,
                }
            };
            self.net.push((at, event));
        }
        for ctx in r.failed_reads {
            self.reads.remove(&(id, ctx));
        }
        for (ctx, index) in r.reads {
            // Unknown: a duplicated answer of a read already served, or
            // of one asked before a crash. The shell drops those too.
            let Some(floor) = self.reads.remove(&(id, ctx)) else {
                continue;
            };
            if index < floor {
                self.fail(&format!(
                    "read {ctx} on node {id} got index {index}, below the commit index {floor} known when it was asked"
                ));
            }
            self.reads_served += 1;
        }
        for (to, msg) in r.messages {
            self.send(id, to, msg);
        }
        if let Some(up_to) = apply {
            self.apply(id, up_to);
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message) {
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

    fn apply(&mut self, id: NodeId, up_to: Index) {
        let n = self.nodes.get_mut(&id).expect("node");
        let from = n.applied.len() as Index + 1;
        let entries = n.disk.entries(from, up_to, usize::MAX);
        if entries.len() as Index != up_to + 1 - from {
            let msg = format!(
                "node {id} asked to apply {from}..={up_to} but its durable log holds {}..={}",
                n.disk.compacted.0 + 1,
                n.disk.last_index()
            );
            self.fail(&msg);
        }
        let n = self.nodes.get_mut(&id).expect("node");
        n.applied.extend(entries);
        n.core.applied(up_to);
    }

    fn complete_writes(&mut self, id: NodeId) {
        let now = self.now_ms;
        loop {
            let n = self.nodes.get_mut(&id).expect("node");
            let Some((at, _)) = n.writes.front() else {
                break;
            };
            if *at > now {
                break;
            }
            let (_, batch) = n.writes.pop_front().expect("front");
            let Some(last) = batch.last().cloned() else {
                continue;
            };
            for e in batch {
                let expected = n.disk.last_index() + 1;
                assert_eq!(e.index, expected, "sim: appends continue the durable log");
                n.disk.log.push(e);
            }
            n.core.persisted(last.index, last.term, &n.disk);
            self.drain(id);
        }
    }

    fn crash(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node");
        n.up = false;
        n.writes.clear(); // not fsynced: lost
        self.reads.retain(|(node, _), _| *node != id);
    }

    fn restart(&mut self, id: NodeId) {
        let members: Vec<NodeId> = self.nodes.keys().copied().collect();
        let seed = self.rng.next();
        let n = self.nodes.get_mut(&id).expect("node");
        let last = n
            .disk
            .log
            .last()
            .map(|e| (e.index, e.term))
            .unwrap_or(n.disk.compacted);
        // Applied state survives (the applier checkpoints with its index).
        let applied = (n.applied.len() as Index).min(last.0);
        n.applied.truncate(applied as usize);
        n.core = Core::new(config(id, &members), n.disk.hard, last, applied, seed);
        n.core
            .restore_recovering(n.disk.recovery_floor, !n.disk.terms_pending);
        n.up = true;
    }

    /// Whether losing `id`'s disk is a fault the group must survive: a
    /// majority of the other nodes durably hold everything any node knows
    /// committed (else two disks' worth of data would be gone, which no
    /// replication of this size survives), and every peer has heard from
    /// `id` (only then can it be told it lost its data; see
    /// ARCHITECTURE.md, "Lost data").
    fn may_wipe(&self, id: NodeId) -> bool {
        let Some((_, top)) = self.nodes.iter().max_by_key(|(_, n)| n.core.commit_index()) else {
            return false;
        };
        let commit = top.core.commit_index();
        let Some(term) = top.disk.term(commit) else {
            return false;
        };
        let holders = self
            .nodes
            .iter()
            .filter(|&(&p, n)| p != id && n.disk.term(commit) == Some(term))
            .count();
        let known = self
            .nodes
            .iter()
            .all(|(&p, n)| p == id || n.disk.peers.contains_key(&id));
        holders > self.nodes.len() / 2 && known
    }

    /// The node loses its disk and restarts on an empty one, under a new
    /// incarnation.
    fn wipe(&mut self, id: NodeId) {
        if std::env::var("UNDERSTUDY_SIM_TRACE").is_ok() {
            eprintln!("{} ms: wipe node {id}", self.now_ms);
        }
        self.crash(id);
        let incarnation = self.rng.next() | 1;
        let n = self.nodes.get_mut(&id).expect("node");
        n.disk = Disk::default();
        n.applied.clear();
        n.incarnation = incarnation;
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
        // The answer carries the receiver's term and log position.
        let (term, position) = {
            let c = &self.nodes[&to].core;
            (c.term(), c.durable_position())
        };
        let sender = self.nodes.get_mut(&from).expect("node");
        sender.core.hello_answered(to, term, position);
        sender.disk.terms_pending = sender.core.lost_terms_pending();
        self.drain(from);
        let incarnation = self.nodes[&from].incarnation;
        let receiver = self.nodes.get_mut(&to).expect("node");
        let before = receiver.disk.peers.insert(from, incarnation);
        if before.is_none_or(|b| b == incarnation) {
            return;
        }
        receiver.core.peer_lost_data(from, &receiver.disk);
        let commit = receiver.core.commit_index();
        if std::env::var("UNDERSTUDY_SIM_TRACE").is_ok() {
            eprintln!(
                "{} ms: node {to} (term {}) tells node {from} it lost its data (commit {commit})",
                self.now_ms,
                receiver.core.term()
            );
        }
        self.drain(to);
        let sender = self.nodes.get_mut(&from).expect("node");
        sender.disk.terms_pending = true;
        sender.core.told_lost_data();
        sender.core.hello_answered(to, term, position);
        self.drain(from);
    }

    /// Leases: a leader that may serve reads from its own state is not
    /// deposed — no node leads a later term. Also checked before a step's
    /// deliveries, as a read may reach a thawed leader before anything else.
    fn check_leases(&self) {
        for (&id, n) in &self.nodes {
            if n.up && n.paused_until <= self.now_ms && n.core.lease_read_ok(n.clock(self.now_ms)) {
                let term = n.core.term();
                if let Some((&other, m)) = self
                    .nodes
                    .iter()
                    .find(|(_, m)| m.up && m.core.role() == Role::Leader && m.core.term() > term)
                {
                    let msg = format!(
                        "node {id} holds a read lease in term {term} while node {other} leads term {}",
                        m.core.term()
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
            let now = (
                n.core.lost_terms.is_some(),
                n.core.role(),
                n.core.term(),
                n.core.vote(),
            );
            eprintln!(
                "{} ms: node {id} lost_terms {:?} role {:?} term {} vote {:?} up {}",
                self.now_ms, n.core.lost_terms, now.1, now.2, now.3, n.up
            );
        }
    }

    fn check(&mut self) {
        // 1. Election safety.
        for (&id, n) in &self.nodes {
            if n.up && n.core.role() == Role::Leader {
                let term = n.core.term();
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
            if n.up && n.core.role() == Role::Leader {
                self.leaders.insert(n.core.term(), id);
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
                let msg = format!("node {id}: timestamp goes back at entry {}", w[1].index);
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
        let mut newly = Vec::new();
        for n in self.nodes.values() {
            for e in &n.applied {
                newly.push(e.clone());
            }
        }
        let term_now = self
            .nodes
            .values()
            .map(|n| n.core.term())
            .max()
            .unwrap_or(0);
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
            if !(n.up && n.core.role() == Role::Leader) {
                continue;
            }
            for (&i, (c, by_term)) in &self.committed {
                if n.core.term() <= *by_term {
                    continue;
                }
                if i <= n.disk.compacted.0 {
                    continue; // in its snapshot: applied, checked by (3)
                }
                let durable = n.disk.get(i);
                let pending = n.writes.iter().flat_map(|(_, b)| b).find(|e| e.index == i);
                if durable.or(pending) != Some(c) {
                    let msg = format!(
                        "leader {id} of term {} lacks committed entry {i}",
                        n.core.term()
                    );
                    self.fail(&msg);
                }
            }
        }
    }

    /// One millisecond of virtual time: deliveries, fsync completions,
    /// ticks, client proposals and, with `faults`, crashes and partitions.
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
                Event::Deliver { to, .. } | Event::Snapshot { to, .. } => Some(*to),
                Event::SnapshotFailed { leader, .. } | Event::SnapshotDone { leader, .. } => {
                    Some(*leader)
                }
            };
            match to.and_then(|t| paused.get(&t)) {
                Some(&until) => self.net.push((until, event)),
                None => due_now.push((at, event)),
            }
        }
        let due = due_now;
        for (_, event) in due {
            match event {
                Event::Deliver { from, to, msg } => {
                    if !self.nodes[&to].up {
                        continue;
                    }
                    if self.nodes[&from].up {
                        self.hello(from, to);
                    }
                    let n = self.nodes.get_mut(&to).expect("node");
                    n.core.step(from, msg, &n.disk);
                    self.drain(to);
                }
                Event::Snapshot {
                    from,
                    to,
                    index,
                    term,
                    state,
                } => {
                    let n = self.nodes.get_mut(&to).expect("node");
                    if !n.up {
                        self.net.push((
                            now + 1,
                            Event::SnapshotFailed {
                                leader: from,
                                peer: to,
                            },
                        ));
                        continue;
                    }
                    if index > n.applied.len() as Index {
                        // Install: the state, then a log reset (queued
                        // fsyncs of the old log are superseded by it).
                        n.applied = state;
                        n.writes.clear();
                        n.disk.log.clear();
                        n.disk.compacted = (index, term);
                        self.snapshots_installed += 1;
                    }
                    n.core.restore(index, term);
                    self.drain(to);
                    // The sender hears back, unless the answer is lost.
                    let at = now + 1 + self.rng.below(10);
                    let answer = if self.rng.chance(100) {
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
                    let n = self.nodes.get_mut(&leader).expect("node");
                    if n.up {
                        n.core.snapshot_sent(peer, index, &n.disk);
                        self.drain(leader);
                    }
                }
                Event::SnapshotFailed { leader, peer } => {
                    let n = self.nodes.get_mut(&leader).expect("node");
                    if n.up {
                        n.core.snapshot_failed(peer);
                        self.drain(leader);
                    }
                }
            }
        }
        for &id in &ids {
            if !self.nodes[&id].up || paused.contains_key(&id) {
                continue;
            }
            self.complete_writes(id);
            if now.is_multiple_of(5) {
                let n = self.nodes.get_mut(&id).expect("node");
                let clock = n.clock(now);
                n.core.tick(clock, &n.disk);
                self.drain(id);
            }
        }
        // Clients propose to whoever leads.
        let propose = if faults {
            self.rng.chance(300)
        } else {
            now.is_multiple_of(7)
        };
        let leader = ids.iter().copied().find(|id| {
            self.nodes[id].up
                && !paused.contains_key(id)
                && self.nodes[id].core.role() == Role::Leader
        });
        if let (true, Some(id)) = (propose, leader) {
            self.proposals += 1;
            let payload = Payload::Command {
                actor: "sim".into(),
                client: Some(ClientTag {
                    client_id: 1,
                    seq: self.proposals,
                    acked_below: 0,
                }),
                command: ByteBuf::from(self.proposals.to_be_bytes().to_vec()),
                by: None,
            };
            let prepared = self.rng.chance(500);
            let n = self.nodes.get_mut(&id).expect("node");
            let result = if prepared {
                // The row log kind's path: the shell fixes the entry.
                let entry = Entry {
                    index: n.core.last_index() + 1,
                    term: n.core.term(),
                    context: EntryContext {
                        timestamp_ms: now.max(n.core.last_timestamp_ms()),
                        seed: 0,
                    },
                    payload,
                };
                n.core.append_prepared(vec![entry], &n.disk)
            } else {
                n.core.propose(payload, now, 0, &n.disk)
            };
            match result {
                Ok(_) | Err(ProposeError::Transferring { .. }) => {}
                Err(e) => panic!("a leader refused a proposal: {e}"),
            }
            self.drain(id);
        }
        // Log compaction: a node drops a prefix of what it applied.
        if faults && self.rng.chance(20) {
            let id = ids[self.rng.below(ids.len() as u64) as usize];
            let keep = self.rng.below(30);
            let n = self.nodes.get_mut(&id).expect("node");
            let up_to = (n.applied.len() as Index)
                .saturating_sub(keep)
                .min(n.disk.last_index());
            n.disk.compact(up_to);
            self.compactions += 1;
        }
        // Linearizable reads at random nodes.
        if self.rng.chance(if faults { 100 } else { 30 }) {
            let id = ids[self.rng.below(ids.len() as u64) as usize];
            let floor = self
                .nodes
                .values()
                .map(|n| n.core.commit_index())
                .max()
                .unwrap_or(0);
            self.next_read += 1;
            let ctx = self.next_read;
            let n = self.nodes.get_mut(&id).expect("node");
            if n.up && n.paused_until <= now && n.core.read_index(ctx).is_ok() {
                self.reads.insert((id, ctx), floor);
                self.drain(id);
            }
        }
        // Manual switchovers: the leader hands over to a random member.
        if let Some(id) = leader
            && self.rng.chance(if faults { 3 } else { 1 })
        {
            let to = ids[self.rng.below(ids.len() as u64) as usize];
            let n = self.nodes.get_mut(&id).expect("node");
            if n.up && n.core.role() == Role::Leader {
                let _ = n.core.transfer_leadership(to);
                self.drain(id);
            }
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
            let learning = self.nodes[&id].core.lost_terms_pending();
            for &p in &ids {
                if p != id
                    && (learning || !self.nodes[&id].core.heard_hello_from(p))
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
            if self.rng.chance(2) {
                // Freeze a node (SIGSTOP) for 50–500 ms.
                let id = ids[self.rng.below(ids.len() as u64) as usize];
                let until = now + 50 + self.rng.below(450);
                let n = self.nodes.get_mut(&id).expect("node");
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
        }
        self.trace();
        self.check();
    }

    /// Heal everything and let the group settle: it must elect a leader,
    /// commit new proposals and serve a linearizable read (liveness once
    /// faults stop).
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
            if self.committed.len() > committed_before + 1 && self.reads_served > reads_before {
                return;
            }
        }
        self.fail("no progress within 20 s of healing");
    }
}

/// Runs one seed; returns how many snapshots were installed.
fn run(seed: u64, members: &[NodeId], steps: u64) -> u64 {
    let mut sim = Sim::new(seed, members);
    for _ in 0..steps {
        sim.step(true);
    }
    sim.settle();
    WIPES.fetch_add(sim.wipes, std::sync::atomic::Ordering::Relaxed);
    sim.snapshots_installed
}

/// Wipes over all runs (the tests check that the fault happens).
static WIPES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
/// - 1592590529: no leader for good after healing — a node that lost its
///   data was told a peer's last position, whose tail was not durable and
///   vanished in a crash, so no surviving log met its floor (peers now
///   tell their durable position).
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
];

#[test]
fn three_nodes_keep_the_invariants_under_faults() {
    let installed: u64 = seeds().into_iter().map(|s| run(s, &[1, 2, 3], 4_000)).sum();
    eprintln!("snapshots installed: {installed}");
    // (One replayed seed may install or wipe nothing.)
    let replaying = std::env::var("UNDERSTUDY_SIM_SEED").is_ok();
    assert!(
        replaying || installed > 0,
        "the runs exercise snapshot installation"
    );
    let wipes = WIPES.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("disks wiped: {wipes}");
    assert!(replaying || wipes > 0, "the runs wipe disks");
}

#[test]
fn five_nodes_keep_the_invariants_under_faults() {
    // Half as many seeds as with three nodes (each run costs more); a soak
    // with UNDERSTUDY_SIM_SEEDS scales both.
    let seeds = seeds();
    let n = (seeds.len() / 2).max(30).min(seeds.len());
    let installed: u64 = seeds
        .into_iter()
        .take(n)
        .map(|s| run(s, &[1, 2, 3, 4, 5], 4_000))
        .sum();
    eprintln!("snapshots installed: {installed}");
    let replaying = std::env::var("UNDERSTUDY_SIM_SEED").is_ok();
    assert!(
        replaying || installed > 0,
        "the runs exercise snapshot installation"
    );
}
