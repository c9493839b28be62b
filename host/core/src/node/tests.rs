//! Unit tests of single rules of the node state; the simulator
//! (`crate::sim`) drives whole groups of it under faults.

use super::*;
use crate::client::{ReadLevel, WriteConcern};
use crate::replication::tests::MemLog as Disk;
use crate::replication::{GroupConfig, HardState};
use crate::types::{Outcome, Payload};
use serde_bytes::ByteBuf;

fn settings(log_kind: LogKind) -> Settings {
    Settings {
        log_kind,
        pending_writes_max: 4,
        write_timeout_ms: 1_000,
        read_timeout_ms: 1_000,
        query_slots: 1,
        queries_waiting_max: 1,
        configured_addresses: BTreeSet::new(),
        promote_lag_entries: 10,
        promote_lag_ms: 1_000,
        catch_up_timeout_ms: 10_000,
        member_addrs: BTreeMap::new(),
    }
}

fn state(members: Vec<NodeId>, log_kind: LogKind) -> NodeState<u32, u32> {
    let core = Core::new(
        GroupConfig::new(1, members),
        HardState::default(),
        (0, 0),
        0,
        7,
    );
    NodeState::new(core, settings(log_kind), 9, BTreeMap::new())
}

fn command(byte: u8) -> Payload {
    Payload::Command {
        actor: "a".into(),
        client: None,
        command: ByteBuf::from(vec![byte]),
        by: None,
    }
}

/// Execute the log writer's batches at once; return the other effects.
fn persist_all(s: &mut NodeState<u32, u32>, disk: &Disk) -> Vec<Effect<u32, u32>> {
    let mut rest = Vec::new();
    loop {
        let effects = s.take_effects();
        if effects.is_empty() {
            return rest;
        }
        for e in effects {
            match e {
                Effect::Persist(batch) => {
                    let last = batch.entries.last().map(|e| (e.index, e.term));
                    disk.write(&batch.entries);
                    s.persisted(batch.hard_state.map(|(_, seq)| seq), last, disk);
                    s.drive(0, disk);
                }
                other => rest.push(other),
            }
        }
    }
}

/// The writers' answers among `effects`.
fn answers_in(effects: Vec<Effect<u32, u32>>) -> Vec<(u32, WriteAnswer)> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Answer(w, a) => Some((w, a)),
            _ => None,
        })
        .collect()
}

/// A lone member that leads, with its no-op and the bootstrap
/// configuration it then writes (entries 1 and 2) applied.
fn leader(log_kind: LogKind) -> (NodeState<u32, u32>, Disk) {
    let disk = Disk::default();
    let mut s = state(vec![1], log_kind);
    s.tick(10_000, &disk);
    s.drive(10_000, &disk);
    persist_all(&mut s, &disk);
    assert_eq!(s.core().role(), Role::Leader);
    s.applied(1, vec![], vec![], 10_000, &disk);
    s.drive(10_000, &disk);
    s.flush_speculation();
    persist_all(&mut s, &disk);
    assert_eq!(
        s.core().membership_index(),
        2,
        "the bootstrap configuration"
    );
    let done = Outcome::Ok(ByteBuf::new());
    s.applied(2, vec![(2, 1, done)], vec![], 10_000, &disk);
    s.drive(10_000, &disk);
    persist_all(&mut s, &disk);
    assert_eq!(s.pending_writes(), 0);
    (s, disk)
}

#[test]
fn a_vote_leaves_only_once_the_hard_state_that_records_it_is_durable() {
    let disk = Disk::default();
    let mut s = state(vec![1, 2, 3], LogKind::Statement);
    // Past the minimum election timeout after its start (a node votes for
    // no one before), without a leader.
    s.tick(0, &disk);
    s.hello_answered(2, 0, (0, 0), (0, Membership::of_voters([1, 2, 3])), false);
    s.tick(250, &disk);
    s.drive(250, &disk);
    s.take_effects();
    let ask = Message::Vote {
        term: 1,
        last_index: 0,
        last_term: 0,
        pre: false,
        transfer: true,
    };
    s.step(2, ask, &disk);
    s.drive(1, &disk);
    let effects = s.take_effects();
    let batch = effects
        .iter()
        .find_map(|e| match e {
            Effect::Persist(b) => Some(b.clone()),
            _ => None,
        })
        .expect("the vote is persisted");
    assert_eq!(batch.hard_state.map(|(h, _)| h.vote), Some(Some(2)));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Send { .. })),
        "the vote left before it was durable: {effects:?}"
    );
    s.persisted(batch.hard_state.map(|(_, seq)| seq), None, &disk);
    match s.take_effects().as_slice() {
        [Effect::Send { to: 2, message }] => {
            assert!(
                matches!(message, Message::VoteResponse { .. }),
                "{message:?}"
            )
        }
        other => panic!("the held vote leaves once durable: {other:?}"),
    }
}

#[test]
fn writers_are_answered_by_concern_and_once() {
    let (mut s, disk) = leader(LogKind::Statement);
    s.propose(command(1), WriteConcern::Majority, 10, 10_001, &disk);
    s.propose(command(2), WriteConcern::Leader, 20, 10_001, &disk);
    s.flush_speculation();
    s.drive(10_001, &disk);
    let effects = persist_all(&mut s, &disk);
    let answers = answers_in(effects);
    // `leader` concern: at its fsync. `majority`: not yet (its outcome is
    // not known: neither executed ahead nor applied).
    assert_eq!(
        answers,
        vec![(20, WriteAnswer::Accepted { term: 1, index: 4 })]
    );
    // The applier reports both applied: only the majority writer is left.
    let outcome = Outcome::Ok(ByteBuf::from(vec![1]));
    s.applied(
        4,
        vec![(3, 1, outcome.clone()), (4, 1, Outcome::Ok(ByteBuf::new()))],
        vec![],
        10_002,
        &disk,
    );
    let answers = answers_in(s.take_effects());
    assert_eq!(
        answers,
        vec![(
            10,
            WriteAnswer::Written {
                outcome,
                term: 1,
                index: 3
            }
        )]
    );
    assert_eq!(s.pending_writes(), 0);
}

#[test]
fn a_full_table_of_writers_refuses_the_next_one_at_once() {
    let (mut s, disk) = leader(LogKind::Statement);
    for w in 0..4 {
        s.propose(command(w as u8), WriteConcern::Majority, w, 10_001, &disk);
    }
    assert!(
        s.take_effects()
            .iter()
            .all(|e| !matches!(e, Effect::Answer(..)))
    );
    s.propose(command(9), WriteConcern::Majority, 99, 10_001, &disk);
    match s.take_effects().as_slice() {
        [Effect::Answer(99, WriteAnswer::Refused(e))] => {
            assert_eq!(e.code, ErrorCode::Overloaded)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_write_with_no_outcome_is_answered_timeout_at_its_deadline() {
    let (mut s, disk) = leader(LogKind::Statement);
    s.propose(command(1), WriteConcern::Majority, 7, 10_000, &disk);
    s.take_effects();
    s.expire(10_999);
    assert!(s.take_effects().is_empty(), "not before its deadline");
    s.expire(11_000);
    match s.take_effects().as_slice() {
        [Effect::Answer(7, WriteAnswer::Refused(e))] => assert_eq!(e.code, ErrorCode::Timeout),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reads_beyond_the_query_slots_wait_in_order_and_past_the_queue_are_refused() {
    let (mut s, disk) = leader(LogKind::Statement);
    for r in 1..=3 {
        s.query(r, ReadLevel::Any, 10_001, 11_000, &disk);
    }
    let effects = s.take_effects();
    // One slot, one waiting place: the first runs, the second waits, the
    // third is refused.
    assert!(matches!(
        effects[0],
        Effect::RunRead(Read { handle: 1, .. })
    ));
    match &effects[1] {
        Effect::RefuseRead(3, e) => assert_eq!(e.code, ErrorCode::Overloaded),
        other => panic!("{other:?}"),
    }
    assert_eq!(effects.len(), 2);
    s.query_done(10_002, |_| false);
    assert!(matches!(
        s.take_effects().as_slice(),
        [Effect::RunRead(Read { handle: 2, .. })]
    ));
}

#[test]
fn a_quarantined_or_halted_node_serves_no_reads() {
    let (mut s, disk) = leader(LogKind::Statement);
    s.halt("test".into());
    s.take_effects();
    s.query(1, ReadLevel::Any, 10_001, 11_000, &disk);
    match s.take_effects().as_slice() {
        [Effect::RefuseRead(1, e)] => assert_eq!(e.code, ErrorCode::Unavailable),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_second_configuration_change_while_one_is_in_progress_is_refused() {
    use crate::membership::{MemberAddrs, MembershipChange};
    let (mut s, disk) = leader(LogKind::Statement);
    let add = |id: NodeId| MembershipChange::Add {
        id,
        addrs: MemberAddrs {
            peer: format!("p{id}"),
            client: format!("c{id}"),
        },
        voter: false,
    };
    s.change_membership(add(2), None, 1, 10_001, &disk);
    s.change_membership(add(3), None, 2, 10_001, &disk);
    let answers = answers_in(s.take_effects());
    match answers.as_slice() {
        [(2, WriteAnswer::Refused(e))] => {
            assert!(e.message.contains("in progress"), "{e:?}");
            assert_eq!(e.code, crate::client::ErrorCode::Unavailable);
        }
        other => panic!("the second change is refused at once: {other:?}"),
    }
    assert_eq!(
        s.core().membership_index(),
        3,
        "only the first is in the log"
    );
    assert!(s.core().membership().learners.contains(&2));
    assert!(!s.core().membership().contains(3));
}
