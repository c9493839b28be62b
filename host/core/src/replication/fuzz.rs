//! Peer messages are input (BRIEF invariant 11): arbitrary messages from
//! members, non-members and the node itself, of any term and shape, stepped
//! into a follower and a leader among ticks, never panic the core, never
//! move its commit index back and never make it truncate a committed
//! entry. `PROPTEST_CASES=100000 cargo test -p understudy-core fuzz`
//! runs it long.

use super::*;
use proptest::prelude::*;

/// The disk: it applies the core's `Ready` at once and never fails.
use super::tests::MemLog as Log;

fn entry(index: Index, term: Term) -> Entry {
    Entry {
        index,
        term,
        context: EntryContext {
            timestamp_ms: index,
            seed: 0,
        },
        payload: Payload::Noop,
    }
}

fn message() -> impl Strategy<Value = Message> {
    let t = 0..6u64;
    let i = 0..12u64;
    prop_oneof![
        (
            t.clone(),
            i.clone(),
            t.clone(),
            proptest::collection::vec((i.clone(), t.clone()), 0..4),
            i.clone()
        )
            .prop_map(
                |(term, prev_index, prev_term, es, commit)| Message::Append {
                    term,
                    prev_index,
                    prev_term,
                    entries: es.into_iter().map(|(i, t)| entry(i, t)).collect(),
                    commit,
                }
            ),
        // Well-formed appends too, so the paths past the shape check run.
        (1..6u64, 0..8u64, 0..6u64, 0..4usize, 0..12u64).prop_map(
            |(term, prev_index, prev_term, n, commit)| {
                let prev_term = prev_term.min(term);
                Message::Append {
                    term,
                    prev_index,
                    prev_term,
                    entries: (1..=n as Index)
                        .map(|k| entry(prev_index + k, term))
                        .collect(),
                    commit,
                }
            }
        ),
        (t.clone(), any::<bool>(), i.clone(), i.clone()).prop_map(
            |(term, success, index, rejected)| Message::AppendResponse {
                term,
                success,
                index,
                rejected,
            }
        ),
        (
            t.clone(),
            i.clone(),
            t.clone(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(term, last_index, last_term, pre, transfer)| Message::Vote {
                    term,
                    last_index,
                    last_term,
                    pre,
                    transfer,
                }
            ),
        (t.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(term, granted, pre)| Message::VoteResponse { term, granted, pre }),
        t.clone().prop_map(|term| Message::TimeoutNow { term }),
        (t.clone(), i.clone(), 0..4u64).prop_map(|(term, commit, seq)| Message::Heartbeat {
            term,
            commit,
            seq
        }),
        (t.clone(), 0..4u64).prop_map(|(term, seq)| Message::HeartbeatResponse { term, seq }),
        (t.clone(), 0..4u64).prop_map(|(term, ctx)| Message::ReadIndex { term, ctx }),
        (t.clone(), 0..4u64, i.clone()).prop_map(|(term, ctx, index)| Message::ReadIndexResponse {
            term,
            ctx,
            index
        }),
    ]
}

/// Execute a Ready the way a shell does, on a disk that never fails.
fn persist(core: &mut Core, log: &Log) {
    let r = core.ready();
    if let Some(from) = r.truncate_from {
        assert!(from > 0);
        log.0.borrow_mut().truncate(from as usize - 1);
    }
    if !r.append.is_empty() {
        let mut l = log.0.borrow_mut();
        for e in &r.append {
            let at = e.index as usize - 1;
            l.truncate(at);
            l.push(e.clone());
        }
    }
    if let Some(last) = r.append.last() {
        core.persisted(last.index, last.term, log);
    }
    if let Some(up_to) = r.apply_up_to {
        core.applied(up_to);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fuzz_peer_messages_never_panic_a_core(
        leader in any::<bool>(),
        steps in proptest::collection::vec((0..5u64, message(), 0..3u64), 1..40),
    ) {
        let log = Log::default();
        let config = GroupConfig {
            heartbeat_interval_ms: 20,
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            ..GroupConfig::new(1, vec![1, 2, 3])
        };
        let mut core = Core::new(config, HardState::default(), (0, 0), 0, 7);
        let mut now = 1_000;
        core.tick(now, &log);
        if leader {
            // Lead term 1 with node 2's vote.
            now += 1_000;
            core.tick(now, &log);
            persist(&mut core, &log);
            core.step(2, Message::VoteResponse { term: 1, granted: true, pre: true }, &log);
            persist(&mut core, &log);
            core.step(2, Message::VoteResponse { term: 1, granted: true, pre: false }, &log);
            persist(&mut core, &log);
        }
        let mut commit = core.commit_index();
        for (from, msg, ticks) in steps {
            // 0 is not a member, 1 is the node itself.
            core.step(from, msg, &log);
            persist(&mut core, &log);
            for _ in 0..ticks {
                now += 30;
                core.tick(now, &log);
                persist(&mut core, &log);
            }
            prop_assert!(core.commit_index() >= commit, "the commit index went back");
            commit = core.commit_index();
            prop_assert!(log.0.borrow().len() as Index >= commit.min(core.persisted_index()));
        }
    }
}
