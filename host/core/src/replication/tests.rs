//! Unit tests of single rules of the core; the simulator (`crate::sim`)
//! drives whole groups.

use super::*;
use crate::membership::Membership;
use serde_bytes::ByteBuf;

/// A log whose durable part the test fills in by hand (also the fuzz
/// tests' disk).
#[derive(Default)]
pub(crate) struct MemLog(pub(crate) std::cell::RefCell<Vec<Entry>>);
impl LogRead for MemLog {
    fn term(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.0.borrow().get(index as usize - 1).map(|e| e.term)
    }
    fn entries(&self, from: Index, to: Index, _: usize) -> Vec<Entry> {
        let log = self.0.borrow();
        let to = to.min(log.len() as Index);
        if from == 0 || from > to {
            return Vec::new();
        }
        log[from as usize - 1..to as usize].to_vec()
    }
}
impl MemLog {
    pub(crate) fn write(&self, entries: &[Entry]) {
        self.0.borrow_mut().extend_from_slice(entries);
    }
}

fn single() -> Core {
    Core::new(
        GroupConfig::new(1, vec![1]),
        HardState::default(),
        (0, 0),
        0,
        7,
    )
}

fn cmd() -> Payload {
    Payload::Command {
        actor: "a".into(),
        client: None,
        command: ByteBuf::new(),
        by: None,
    }
}

fn elect(c: &mut Core, log: &MemLog) {
    c.tick(10_000, log);
}

/// Write what the core asked to append, then report it durable.
fn persist(c: &mut Core, log: &MemLog, r: &Ready) {
    log.write(&r.append);
    if let Some(last) = r.append.last() {
        c.persisted(last.index, last.term, log);
    }
}

/// A log whose every entry was compacted (or replaced by a snapshot)
/// up to `(index, term)`, the last one stamped `ts`.
struct Compacted {
    index: Index,
    term: Term,
    ts: u64,
}
impl LogRead for Compacted {
    fn term(&self, index: Index) -> Option<Term> {
        (index == self.index).then_some(self.term)
    }
    fn entries(&self, _: Index, _: Index, _: usize) -> Vec<Entry> {
        Vec::new()
    }
    fn first_index(&self) -> Index {
        self.index + 1
    }
    fn compacted_timestamp_ms(&self) -> u64 {
        self.ts
    }
}

/// Found by the simulator once it ran each node on its own clock: a
/// node whose log ended at a snapshot's entry, leading with a clock
/// behind the old leader's, stamped its no-op earlier than that entry.
#[test]
fn a_leader_whose_last_entry_was_compacted_never_stamps_earlier_than_it() {
    let log = Compacted {
        index: 40,
        term: 2,
        ts: 9_000,
    };
    let hard = HardState {
        term: 2,
        vote: None,
    };
    let mut c = Core::new(GroupConfig::new(1, vec![1]), hard, (40, 2), 40, 7);
    c.tick(5_000, &log);
    let r = c.ready();
    let noop = r.append.first().expect("a new leader appends its no-op");
    assert_eq!(noop.index, 41);
    assert!(
        noop.context.timestamp_ms >= 9_000,
        "stamped {} after an entry of 9000",
        noop.context.timestamp_ms
    );
}

#[test]
fn lone_member_persists_its_vote_before_leading_and_commits_a_noop() {
    let log = MemLog::default();
    let mut c = single();
    assert!(matches!(
        c.propose(cmd(), 0, 0, &log),
        Err(ProposeError::NotLeader { .. })
    ));
    elect(&mut c, &log);
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
    persist(&mut c, &log, &r);
    assert_eq!(c.ready().apply_up_to, Some(1));
    // A proposal is readable as it was logged until it is durable.
    let index = c.propose(cmd(), 5, 9, &log).unwrap();
    let e = c.unstable_entry(index).expect("just proposed").clone();
    assert_eq!((e.index, e.term, e.payload), (2, 1, cmd()));
    // The core fixed the context: timestamps never go back along the
    // log, so the no-op's 10,000 stands over the shell's 5.
    assert_eq!((e.context.timestamp_ms, e.context.seed), (10_000, 9));
    assert!(c.unstable_entry(1).is_none(), "durable already");
    let r = c.ready();
    persist(&mut c, &log, &r);
    assert!(c.unstable_entry(index).is_none());
}

#[test]
fn commit_waits_for_durability_and_never_goes_back() {
    let log = MemLog::default();
    let mut c = single();
    elect(&mut c, &log);
    let r = c.ready();
    persist(&mut c, &log, &r);
    c.ready();
    let a = c.propose(cmd(), 10, 1, &log).unwrap();
    let b = c.propose(cmd(), 5, 2, &log).unwrap();
    let r = c.ready();
    assert_eq!((a, b), (2, 3));
    assert!(r.append[1].context.timestamp_ms >= r.append[0].context.timestamp_ms);
    assert_eq!(c.commit_index(), 1);
    persist(&mut c, &log, &r);
    assert_eq!(c.ready().apply_up_to, Some(3));
    c.persisted(2, 1, &log);
    assert_eq!(c.commit_index(), 3);
    c.applied(3);
}

/// Cores wired by an in-test network that delivers at once, except
/// between the minority side and the rest; appends are durable at once.
struct Group {
    cores: BTreeMap<NodeId, Core>,
    logs: BTreeMap<NodeId, MemLog>,
    minority: Vec<NodeId>,
    /// The network loses every TimeoutNow while set.
    lose_timeout_nows: bool,
    reads: Vec<(NodeId, u64, Index)>,
    failed: Vec<(NodeId, u64)>,
}

impl Group {
    fn new(n: NodeId, slow_checks_on: NodeId) -> Group {
        let mut cores = BTreeMap::new();
        let mut logs = BTreeMap::new();
        let members: Vec<NodeId> = (1..=n).collect();
        for &id in &members {
            let mut config = GroupConfig::new(id, members.clone());
            if id == slow_checks_on {
                // Its check-quorum comes late: it keeps believing it
                // leads well after the others moved on.
                config.election_timeout_min_ms = 10_000;
                config.election_timeout_max_ms = 20_000;
            }
            let mut core = Core::new(config, HardState::default(), (0, 0), 0, id);
            // The transport's hellos, answered.
            for &peer in &members {
                core.hello_answered(peer, 0, (0, 0), (0, Membership::of_voters(members.clone())));
            }
            cores.insert(id, core);
            logs.insert(id, MemLog::default());
        }
        Group {
            cores,
            logs,
            minority: Vec::new(),
            lose_timeout_nows: false,
            reads: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn tick(&mut self, id: NodeId, now: u64) {
        let (c, l) = (self.cores.get_mut(&id).unwrap(), &self.logs[&id]);
        c.tick(now, l);
        self.pump(id);
    }

    /// Drain `first`'s Ready and everything it causes.
    fn pump(&mut self, first: NodeId) {
        let mut queue = std::collections::VecDeque::from([first]);
        while let Some(id) = queue.pop_front() {
            let r = self.cores.get_mut(&id).unwrap().ready();
            let log = &self.logs[&id];
            if let Some(t) = r.truncate_from {
                log.0.borrow_mut().truncate(t as usize - 1);
            }
            let core = self.cores.get_mut(&id).unwrap();
            persist(core, log, &r);
            self.reads.extend(r.reads.iter().map(|&(c, i)| (id, c, i)));
            self.failed.extend(r.failed_reads.iter().map(|&c| (id, c)));
            queue.push_back(id);
            if r.is_empty() {
                queue.pop_back();
            }
            for (to, msg) in r.messages {
                if self.minority.contains(&id) != self.minority.contains(&to)
                    || (self.lose_timeout_nows && matches!(msg, Message::TimeoutNow { .. }))
                {
                    continue;
                }
                let (c, l) = (self.cores.get_mut(&to).unwrap(), &self.logs[&to]);
                c.step(id, msg, l);
                queue.push_back(to);
            }
        }
    }

    fn propose(&mut self, id: NodeId) -> Index {
        let (c, l) = (self.cores.get_mut(&id).unwrap(), &self.logs[&id]);
        let index = c.propose(cmd(), 0, 0, l).unwrap();
        self.pump(id);
        index
    }
}

#[test]
fn a_deposed_leader_cut_off_never_serves_a_linearizable_read() {
    // Five nodes: the old leader keeps one follower of its old term on
    // its side, so it does hear heartbeat answers — just not a majority.
    let mut t = Group::new(5, 1);
    t.tick(1, 30_000); // the first tick starts the clock
    t.tick(1, 50_000);
    assert_eq!(t.cores[&1].role(), Role::Leader);
    let old = t.propose(1);
    assert_eq!(t.cores[&1].commit_index(), old);
    // Cut {1, 2} off; 3, 4 and 5 elect a leader and commit a write.
    t.minority = vec![1, 2];
    for now in (50_000..52_000).step_by(10) {
        for id in 1..=5 {
            t.tick(id, now);
        }
    }
    let new_leader = [3, 4, 5]
        .into_iter()
        .find(|id| t.cores[id].role() == Role::Leader)
        .expect("the majority side elects a leader");
    let acked = t.propose(new_leader);
    assert!(t.cores[&new_leader].commit_index() >= acked);
    // Node 1 still believes it leads; a read there must not be served
    // from its stale state (it cannot reach a majority to confirm).
    assert_eq!(t.cores[&1].role(), Role::Leader);
    t.cores.get_mut(&1).unwrap().read_index(7).unwrap();
    t.pump(1);
    t.tick(1, 52_000);
    assert!(t.reads.is_empty(), "stale read served: {:?}", t.reads);
    // Healed, it learns the newer term and fails the read.
    t.minority.clear();
    t.tick(1, 52_100);
    t.tick(new_leader, 52_100);
    assert_eq!(t.cores[&1].role(), Role::Follower);
    assert_eq!(t.failed, vec![(1, 7)]);
    // A read through the new leader sees the acknowledged write.
    t.cores.get_mut(&1).unwrap().read_index(8).unwrap();
    t.pump(1);
    assert!(matches!(t.reads[..], [(1, 8, i)] if i >= acked));
}

/// Found by the simulator (seed 1592590626): a learner held a tail no
/// voter had (sent by a leader that then lost its leadership); a node that
/// had lost its data took the learner's position as its floor, so no
/// candidate could ever reach it, and with its vote needed, the group had
/// no leader for good. The floor is the most up-to-date voter's log.
#[test]
fn a_learners_tail_does_not_raise_the_floor_of_a_node_that_lost_its_data() {
    let mut c = Core::new(
        GroupConfig::new(1, vec![1, 2, 3]),
        HardState::default(),
        (0, 0),
        0,
        3,
    );
    c.told_lost_data();
    let mut m = Membership::of_voters([1, 2, 3]);
    m.learners.insert(4);
    c.hello_answered(4, 3, (3, 110), (103, m.clone()));
    c.hello_answered(2, 3, (3, 105), (103, m.clone()));
    assert!(c.lost_terms_pending(), "one voter heard of three");
    c.hello_answered(3, 3, (3, 108), (103, m));
    assert!(!c.lost_terms_pending());
    assert_eq!(c.recovery_floor(), (3, 108), "the most up-to-date voter's");
}

#[test]
fn a_node_that_lost_its_data_votes_only_for_logs_as_up_to_date_as_its_peers() {
    // Found by the simulator (seed 1592591747): the committed entry 1
    // survived on one node only; the two that had lost their data were
    // told "commit 0" (commit indexes are not durable) and elected one
    // of themselves, with an empty log.
    let log = MemLog::default();
    let mut c = Core::new(
        GroupConfig::new(3, vec![1, 2, 3]),
        HardState::default(),
        (0, 0),
        0,
        3,
    );
    c.told_lost_data();
    let vote = |term, last_term, last_index| Message::Vote {
        term,
        last_index,
        last_term,
        pre: false,
        transfer: false,
    };
    let granted = |c: &mut Core| {
        c.ready()
            .messages
            .iter()
            .any(|(_, m)| matches!(m, Message::VoteResponse { granted: true, .. }))
    };
    // Before it has heard enough peers: no vote at all.
    c.hello_answered(1, 1, (0, 0), (0, Membership::of_voters([1, 2, 3])));
    assert!(c.lost_terms_pending());
    c.step(1, vote(2, 0, 0), &log);
    assert!(!granted(&mut c), "a vote before it heard two peers");
    c.hello_answered(2, 1, (1, 4), (0, Membership::of_voters([1, 2, 3])));
    assert!(!c.lost_terms_pending());
    assert_eq!(c.recovery_floor(), (1, 4));
    assert_eq!(c.recovering_until(), Some(4));
    // Node 1's empty log is not enough; node 2's is.
    c.step(1, vote(3, 0, 0), &log);
    assert!(
        !granted(&mut c),
        "a vote for a log missing what node 2 holds"
    );
    c.step(2, vote(3, 1, 4), &log);
    assert!(granted(&mut c));
    // A restart keeps the floor.
    let floor = c.recovery_floor();
    let mut again = Core::new(
        GroupConfig::new(3, vec![1, 2, 3]),
        HardState {
            term: 3,
            vote: None,
        },
        (0, 0),
        0,
        3,
    );
    again.restore_recovering(floor, true);
    again.step(1, vote(4, 0, 0), &log);
    assert!(
        !granted(&mut again),
        "no vote before the candidate answered a hello"
    );
    again.hello_answered(1, 3, (0, 0), (0, Membership::of_voters([1, 2, 3])));
    again.step(1, vote(4, 0, 0), &log);
    assert!(!granted(&mut again));
    again.step(1, vote(5, 2, 1), &log);
    assert!(
        granted(&mut again),
        "a log of a later term is more up-to-date"
    );
}

#[test]
fn a_leader_that_sent_timeout_now_serves_no_lease_read_again_in_that_term() {
    // Found by the simulator (seed 1592590781): a TimeoutNow delivered
    // after its transfer was given up elects the target with transfer
    // votes, which disregard the lease the old leader still counts on.
    let mut t = Group::new(3, 0);
    t.tick(1, 30_000);
    t.tick(1, 50_000);
    assert_eq!(t.cores[&1].role(), Role::Leader);
    t.propose(1);
    t.tick(1, 50_050);
    assert!(
        t.cores[&1].lease_read_ok(50_060),
        "a lease before the transfer"
    );
    let c = t.cores.get_mut(&1).unwrap();
    c.transfer_leadership(2).unwrap();
    let r = c.ready();
    persist(c, &t.logs[&1], &r);
    let (late, others): (Vec<_>, Vec<_>) = r
        .messages
        .into_iter()
        .partition(|(_, m)| matches!(m, Message::TimeoutNow { .. }));
    assert_eq!(
        late.len(),
        1,
        "the target is caught up: a TimeoutNow at once"
    );
    for (to, msg) in others {
        t.cores.get_mut(&to).unwrap().step(1, msg, &t.logs[&to]);
        t.pump(to);
    }
    // The TimeoutNow (and its repeats) are held up in the network; the
    // leader gives the transfer up and leads on, with majorities
    // answering its rounds.
    t.lose_timeout_nows = true;
    for now in (50_100..=50_700).step_by(50) {
        t.tick(1, now);
    }
    t.lose_timeout_nows = false;
    assert_eq!(t.cores[&1].transferring_to(), None);
    assert_eq!(t.cores[&1].role(), Role::Leader);
    assert!(
        !t.cores[&1].lease_read_ok(50_710),
        "a lease read after a TimeoutNow went out in this term"
    );
    // Why: node 1 is cut off, and the late TimeoutNow arrives.
    t.minority = vec![1];
    let (to, msg) = late.into_iter().next().unwrap();
    t.cores.get_mut(&to).unwrap().step(1, msg, &t.logs[&to]);
    t.pump(to);
    assert_eq!(
        t.cores[&2].role(),
        Role::Leader,
        "elected by transfer votes"
    );
    assert_eq!(t.cores[&1].role(), Role::Leader, "node 1 has not heard");
    assert!(!t.cores[&1].lease_read_ok(50_720));
}

/// Seen with real processes (replication's
/// `commands_sharing_instances…`, 2 runs in 12 under load): a target
/// that had just installed a snapshot was a pre-candidate (its clock
/// jumped past its election deadline) when the only TimeoutNow came;
/// it ignored it and the transfer timed out. A pre-candidate has not
/// changed its term, so a TimeoutNow of its term still comes from that
/// term's leader; and a leader repeats the TimeoutNow with each
/// heartbeat round until the transfer ends (a message can be lost).
#[test]
fn a_transfer_target_that_missed_the_timeout_now_or_was_pre_campaigning_takes_over() {
    let mut t = Group::new(3, 0);
    t.tick(1, 30_000);
    t.tick(1, 50_000);
    assert_eq!(t.cores[&1].role(), Role::Leader);
    t.propose(1);
    let term = t.cores[&1].term();
    let c = t.cores.get_mut(&1).unwrap();
    c.transfer_leadership(2).unwrap();
    let r = c.ready();
    persist(c, &t.logs[&1], &r);
    let lost = r
        .messages
        .iter()
        .filter(|(_, m)| matches!(m, Message::TimeoutNow { .. }))
        .count();
    assert_eq!(lost, 1, "the TimeoutNow, lost in the network");
    // The target's clock runs past its election deadline: it
    // pre-campaigns (its pre-vote requests are still on the way).
    let target = t.cores.get_mut(&2).unwrap();
    target.tick(50_000, &t.logs[&2]);
    target.tick(60_000, &t.logs[&2]);
    assert_eq!(target.role(), Role::PreCandidate);
    let _held = target.ready();
    // The leader's next heartbeat round carries the TimeoutNow again;
    // only that message reaches the target.
    let c = t.cores.get_mut(&1).unwrap();
    c.tick(50_100, &t.logs[&1]);
    let r = c.ready();
    persist(c, &t.logs[&1], &r);
    let again: Vec<Message> = r
        .messages
        .into_iter()
        .filter(|(to, m)| *to == 2 && matches!(m, Message::TimeoutNow { .. }))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(again.len(), 1, "the TimeoutNow is sent again");
    let target = t.cores.get_mut(&2).unwrap();
    target.step(1, again.into_iter().next().unwrap(), &t.logs[&2]);
    assert_eq!(
        target.role(),
        Role::Candidate,
        "the pre-candidate takes over"
    );
    t.pump(2);
    assert_eq!(t.cores[&2].role(), Role::Leader);
    assert!(t.cores[&2].term() > term);
    assert_eq!(t.cores[&1].role(), Role::Follower);
}

/// A follower kept out of the protocol (the node skips its ticks while
/// it installs a snapshot) still hears its leader's heartbeats; with
/// its clock advanced meanwhile, its first tick afterwards leaves it
/// following. (Without: its election timer, reset at a stale time,
/// fired at once and it pre-campaigned against a live leader.)
#[test]
fn heartbeats_heard_while_out_of_the_protocol_count_from_the_real_time() {
    let mut t = Group::new(3, 0);
    t.tick(1, 30_000);
    t.tick(2, 30_000);
    t.tick(1, 50_000);
    assert_eq!(t.cores[&1].role(), Role::Leader);
    t.propose(1);
    assert_eq!(t.cores[&2].leader(), Some(1));
    // Node 2 stops ticking for 2 s; node 1 keeps beating.
    for now in (50_050..=52_000).step_by(50) {
        t.cores.get_mut(&2).unwrap().advance_clock(now);
        t.tick(1, now);
    }
    t.tick(2, 52_010);
    assert_eq!(t.cores[&2].role(), Role::Follower);
    assert_eq!(t.cores[&2].leader(), Some(1));
}

#[test]
fn leadership_transfer_hands_over_to_a_caught_up_member_in_a_new_term() {
    let mut t = Group::new(3, 0);
    t.tick(1, 30_000);
    t.tick(1, 50_000);
    assert_eq!(t.cores[&1].role(), Role::Leader);
    let written = t.propose(1);
    let term = t.cores[&1].term();
    // Node 3 misses a write, so it must catch up first.
    t.minority = vec![3];
    let missed = t.propose(1);
    assert!(t.cores[&3].last_index() < missed);
    let c = t.cores.get_mut(&1).unwrap();
    assert_eq!(c.transfer_leadership(9), Err(TransferError::NotAMember(9)));
    c.transfer_leadership(3).unwrap();
    assert_eq!(
        c.propose(cmd(), 0, 0, &t.logs[&1]),
        Err(ProposeError::Transferring { to: 3 }),
        "no new writes while handing over"
    );
    t.minority.clear();
    // The lost append is resent after a heartbeat interval without an
    // answer; node 3 catches up, then takes over.
    t.tick(1, 50_100);
    t.tick(1, 50_200);
    assert_eq!(t.cores[&3].role(), Role::Leader);
    assert!(t.cores[&3].term() > term);
    assert_eq!(t.cores[&1].role(), Role::Follower);
    assert_eq!(t.cores[&1].leader(), Some(3));
    t.tick(3, 50_300);
    let after = t.propose(3);
    assert!(after > written.max(missed));
    assert!(
        t.cores
            .values()
            .all(|c| c.commit_index() >= missed || c.id() != 3)
    );
}

/// A leader that stepped down while its own entry was still being
/// written must have that write undone when a newer leader's entry
/// replaces it (found by the frozen-leader test with real processes).
#[test]
fn a_replaced_entry_still_being_written_is_truncated_on_disk() {
    let mut t = Group::new(3, 0);
    t.tick(1, 30_000);
    t.tick(1, 50_000);
    assert_eq!(t.cores[&1].role(), Role::Leader);
    t.propose(1);
    // Cut off, node 1 proposes an entry and hands it to its shell,
    // which has not finished writing it.
    t.minority = vec![1];
    let c = t.cores.get_mut(&1).unwrap();
    let index = c.propose(cmd(), 0, 0, &t.logs[&1]).unwrap();
    let handed = c.ready();
    assert_eq!(handed.append.last().map(|e| e.index), Some(index));
    // A newer leader's entry for the same index arrives.
    let newer = Entry {
        index,
        term: c.term() + 1,
        context: EntryContext {
            timestamp_ms: 1,
            seed: 0,
        },
        payload: Payload::Noop,
    };
    let prev_term = c.term();
    c.step(
        2,
        Message::Append {
            term: newer.term,
            prev_index: index - 1,
            prev_term,
            entries: vec![newer],
            commit: 0,
        },
        &t.logs[&1],
    );
    let r = c.ready();
    assert_eq!(
        r.truncate_from,
        Some(index),
        "the in-flight write is undone"
    );
    assert_eq!(r.append.first().map(|e| e.index), Some(index));
}

#[test]
fn appends_no_honest_leader_sends_are_refused_without_a_panic() {
    let mut t = Group::new(3, 0);
    t.tick(1, 30_000);
    t.tick(1, 50_000);
    assert_eq!(t.cores[&1].role(), Role::Leader);
    t.propose(1);
    t.propose(1);
    let term = t.cores[&1].term();
    let at = |index: Index, term: Term| Entry {
        index,
        term,
        context: EntryContext {
            timestamp_ms: 1,
            seed: 0,
        },
        payload: Payload::Noop,
    };
    let append = |prev_index, prev_term, entries, term| Message::Append {
        term,
        prev_index,
        prev_term,
        entries,
        commit: 0,
    };
    let bad = [
        // Entries that do not follow prev_index (the reported panic).
        append(1, term, vec![at(5, term)], term),
        append(1, term, vec![at(2, term), at(4, term)], term),
        // Terms that go back, or pass the message's term.
        append(1, term, vec![at(2, term), at(3, term - 1)], term),
        append(1, term, vec![at(2, term + 1)], term),
        append(1, term + 1, vec![], term),
        // Index overflow.
        append(u64::MAX, term, vec![at(0, term)], term),
    ];
    let follower = 2;
    let before = (t.cores[&follower].last_index(), t.cores[&follower].term());
    for m in bad {
        let (c, l) = (t.cores.get_mut(&follower).unwrap(), &t.logs[&follower]);
        c.step(1, m, l);
        let r = c.ready();
        assert!(r.append.is_empty() && r.truncate_from.is_none());
        assert!(r.messages.is_empty(), "refused without an answer");
    }
    assert_eq!(
        (t.cores[&follower].last_index(), t.cores[&follower].term()),
        before
    );
    // An append that would overwrite a committed entry, and one of the
    // leader's own term sent to the leader, are refused too.
    let commit = t.cores[&follower].commit_index();
    assert!(commit >= 2);
    let (c, l) = (t.cores.get_mut(&follower).unwrap(), &t.logs[&follower]);
    c.step(
        3,
        append(commit - 1, term, vec![at(commit, term + 1)], term + 1),
        l,
    );
    assert!(c.ready().truncate_from.is_none(), "a committed entry stays");
    let (c, l) = (t.cores.get_mut(&1).unwrap(), &t.logs[&1]);
    c.step(2, append(0, 0, vec![], term), l);
    assert_eq!(
        c.role(),
        Role::Leader,
        "a forged same-term append is ignored"
    );
}

#[test]
#[should_panic(expected = "only committed entries are applied")]
fn applying_beyond_commit_is_caught() {
    let log = MemLog::default();
    let mut c = single();
    elect(&mut c, &log);
    c.applied(1);
}
