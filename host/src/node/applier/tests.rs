//! The applier's tests: runs, execution ahead of commit, limits, auth,
//! crashes between execute and checkpoint, snapshots (one file for the
//! tests of one type, hence its length).

use super::*;
use crate::sandbox::SandboxLimits;
use crate::storage::{FORMAT_VERSION, Identity, StorageOptions};
use crate::types::{ClientTag, EntryContext};

fn identity() -> Identity {
    Identity {
        format_version: FORMAT_VERSION,
        cluster_id: "t".into(),
        node_id: 1,
    }
}

fn applier(dir: &std::path::Path) -> Applier {
    let state = StateStore::open(dir, &identity(), &StorageOptions::default()).unwrap();
    Applier::new(Sandbox::new(SandboxLimits::default()).unwrap(), state).unwrap()
}

fn entry(index: Index, payload: Payload) -> Entry {
    Entry {
        index,
        term: 1,
        context: EntryContext {
            timestamp_ms: index,
            seed: index,
        },
        payload,
    }
}

fn add(index: Index, seq: u64) -> Entry {
    entry(
        index,
        Payload::Command {
            actor: "c".into(),
            client: Some(ClientTag {
                client_id: 9,
                seq,
                acked_below: seq,
            }),
            command: codec::to_cbor(&serde_json::json!({"add": {"name": "n", "by": 1}})).into(),
            by: None,
        },
    )
}

fn counter(a: &mut Applier) -> Outcome {
    a.query("c", &codec::to_cbor(&serde_json::json!({"name": "n"})))
        .unwrap()
        .0
}

fn log() -> Vec<Entry> {
    let mut entries = vec![entry(
        1,
        Payload::Deploy {
            actor: "c".into(),
            wasm: understudy_examples::COUNTER.to_vec().into(),
            by: None,
        },
    )];
    entries.extend((2..=6).map(|i| add(i, i)));
    // A retry of seq 4 with a new index: answered from the session.
    entries.push(add(7, 4));
    entries
}

/// Commands after `log()` up to `to`.
fn adds(from: Index, to: Index) -> Vec<Entry> {
    (from..=to).map(|i| add(i, i)).collect()
}

#[test]
fn pending_effects_are_visible_before_the_checkpoint_and_durable_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = applier(dir.path());
    let outcomes = a.execute(&log()).unwrap();
    assert_eq!(
        outcomes[6].1, outcomes[3].1,
        "a retried write returns its first result"
    );
    assert_eq!(a.applied().index, 7);
    assert_eq!(
        a.durable().index,
        0,
        "nothing durable before the checkpoint"
    );
    assert_eq!(
        counter(&mut a),
        Outcome::Ok(codec::to_cbor(&5i64).into()),
        "reads see pending writes"
    );
    assert!(!a.checkpoint().unwrap(), "not at a window end: nothing yet");
    assert_eq!(a.durable().index, 0);
    a.execute(&adds(8, RUN_WINDOW + 3)).unwrap();
    assert!(!a.checkpoint().unwrap(), "past the window end: not yet");
    a.execute(&adds(RUN_WINDOW + 4, 2 * RUN_WINDOW)).unwrap();
    assert!(a.checkpoint().unwrap());
    assert_eq!(a.durable(), a.applied());
    assert_eq!(a.state().applied().unwrap(), a.applied());
}

/// A query prepared before a checkpoint and run after it reads the
/// newer durable state alone (never its old pending writes over the
/// new state), reporting that state's index; one whose actor was
/// deployed anew meanwhile is `Stale` (prepared again by the node).
#[test]
fn a_query_prepared_before_a_checkpoint_reads_the_newer_state_or_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = applier(dir.path());
    a.execute(&log()).unwrap();
    let get = codec::to_cbor(&serde_json::json!({"name": "n"}));
    let before = a.prepare_query("c").unwrap();
    let same = a.prepare_query("c").unwrap();
    assert_eq!(
        same.run(&get).unwrap(),
        (Outcome::Ok(codec::to_cbor(&5i64).into()), 7),
        "no checkpoint between: the pending writes"
    );
    a.execute(&adds(8, RUN_WINDOW)).unwrap();
    assert!(a.checkpoint().unwrap());
    let n = 5 + (RUN_WINDOW - 7) as i64;
    assert_eq!(
        before.run(&get).unwrap(),
        (Outcome::Ok(codec::to_cbor(&n).into()), RUN_WINDOW),
        "after the checkpoint: the durable state at its index"
    );
    // The actor deployed anew (another module) and checkpointed.
    let stale = a.prepare_query("c").unwrap();
    let redeploy = entry(
        RUN_WINDOW + 1,
        Payload::Deploy {
            actor: "c".into(),
            wasm: understudy_examples::KV.to_vec().into(),
            by: None,
        },
    );
    a.execute(&[redeploy]).unwrap();
    a.execute(&adds(RUN_WINDOW + 2, 2 * RUN_WINDOW)).unwrap();
    assert!(a.checkpoint().unwrap());
    assert!(matches!(stale.run(&get), Err(QueryError::Stale)));
}

#[test]
fn a_crash_before_the_checkpoint_re_executes_to_the_same_outcomes_and_digest() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut log = log();
    log.extend(adds(8, RUN_WINDOW + 10));
    let mut whole = applier(d1.path());
    let expected = whole.apply(&log).unwrap();

    let w = RUN_WINDOW as usize;
    let mut crashed = applier(d2.path());
    crashed.apply(&log[..w]).unwrap();
    crashed.execute(&log[w..]).unwrap();
    drop(crashed); // the pending batch dies with the process
    let mut restarted = applier(d2.path());
    assert_eq!(restarted.applied().index, RUN_WINDOW);
    let again = restarted.apply(&log[w..]).unwrap();
    assert_eq!(again[..], expected[w..]);
    assert_eq!(restarted.applied(), whole.applied());
    assert_eq!(restarted.kv_pairs().unwrap(), whole.kv_pairs().unwrap());
}

#[test]
fn a_watchdog_interrupt_is_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateStore::open(dir.path(), &identity(), &StorageOptions::default()).unwrap();
    let limits = SandboxLimits {
        fuel_per_call: u64::MAX / 4,
        watchdog_ms: 50,
        ..SandboxLimits::default()
    };
    let mut a = Applier::new(Sandbox::new(limits).unwrap(), state).unwrap();
    let deploy = entry(
        1,
        Payload::Deploy {
            actor: "m".into(),
            wasm: understudy_examples::MISBEHAVE.to_vec().into(),
            by: None,
        },
    );
    a.apply(&[deploy]).unwrap();
    let spin = entry(
        2,
        Payload::Command {
            actor: "m".into(),
            client: None,
            command: codec::to_cbor(&serde_json::json!({"loop": {"key": "x"}})).into(),
            by: None,
        },
    );
    let err = a.apply(&[spin]).unwrap_err();
    assert!(
        matches!(err, ApplyError::Sandbox(SandboxError::Watchdog(_))),
        "{err}"
    );
    assert_eq!(
        a.state().applied().unwrap().index,
        0,
        "no result was committed"
    );
    assert_eq!(a.applied().index, 0, "nor kept in memory");
}

#[test]
fn precompiled_artifact_is_cached_and_keyed_by_engine() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = applier(dir.path());
    a.apply(&log()[..2]).unwrap();
    let hash = Sandbox::hash(&Sandbox::normalize(understudy_examples::COUNTER).unwrap());
    let compat = a.sandbox().compatibility_hash();
    let artifact = a.state().artifact(&hash, &compat).unwrap();
    assert!(artifact.is_some(), "the first load caches the artifact");
    drop(a);
    // A different engine configuration has a different key: no stale
    // artifact can be picked up by it.
    let other = Sandbox::new(SandboxLimits {
        memory_bytes_max: 32 << 20,
        ..SandboxLimits::default()
    })
    .unwrap();
    assert_ne!(other.compatibility_hash(), compat);
    let mut restarted = applier(dir.path());
    restarted.apply(&log()[..3]).unwrap();
    assert_eq!(
        counter(&mut restarted),
        Outcome::Ok(codec::to_cbor(&2i64).into())
    );
}

/// The row log kind: what the leader speculates, committed and applied
/// on the leader and on a follower (which runs no guest code), ends in
/// the state a statement log of the same commands gives — even with a
/// checkpoint and new speculation while earlier entries are in flight.
#[test]
fn speculated_effects_reach_the_same_state_as_statements() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut statement = applier(dirs[0].path());
    let mut leader = applier(dirs[1].path());
    let mut follower = applier(dirs[2].path());
    let entries = log();
    statement.apply(&entries).unwrap();
    // Deploy and two commands speculated; the deploy commits first.
    let effects_of =
        |out: Vec<(Entry, Outcome)>| -> Vec<Entry> { out.into_iter().map(|(e, _)| e).collect() };
    let first = effects_of(leader.speculate(&entries[..3], true, 1).unwrap());
    assert!(
        first
            .iter()
            .all(|e| matches!(e.payload, Payload::Effects(_)))
    );
    leader.execute(&first[..1]).unwrap();
    leader.checkpoint().unwrap();
    // More speculation on top of what is still in flight (2 and 3).
    let rest = effects_of(leader.speculate(&entries[3..], true, 1).unwrap());
    assert_eq!(leader.speculated(), entries.len() - 1);
    let effects: Vec<Entry> = first.into_iter().chain(rest).collect();
    // Reads see only what committed.
    assert_eq!(leader.applied().index, 1);
    let outcomes = leader.execute(&effects[1..]).unwrap();
    assert_eq!(leader.speculated(), 0);
    leader.checkpoint().unwrap();
    let on_follower = follower.apply(&effects).unwrap();
    assert_eq!(leader.applied(), statement.applied(), "same digest");
    assert_eq!(follower.applied(), statement.applied(), "same digest");
    assert_eq!(leader.kv_pairs().unwrap(), statement.kv_pairs().unwrap());
    assert_eq!(follower.kv_pairs().unwrap(), statement.kv_pairs().unwrap());
    // The retry (entry 7) was answered from the session, as in statements.
    assert_eq!(outcomes.last(), on_follower.last());
    assert_eq!(counter(&mut follower), counter(&mut statement));
}

/// Auth changes through the log: a command is checked against the
/// auth state at its own index, so a revocation takes effect at one
/// index on every replica, in both log kinds; admin actions leave
/// audit records; the published auth state follows the applied one.
#[test]
fn auth_is_checked_at_each_entrys_index_in_both_log_kinds() {
    use crate::auth::{AuthChange, Permission, Principal, Token};
    let admin = Principal {
        user: "root".into(),
        token: None,
        cert: Some(vec![1; 32]),
    };
    let w = Principal {
        user: "w".into(),
        token: Some("t1".into()),
        cert: None,
    };
    let auth = |i, change| {
        entry(
            i,
            Payload::Auth {
                change,
                by: Some(admin.clone()),
            },
        )
    };
    let command = |i, by: Option<Principal>| {
        entry(
            i,
            Payload::Command {
                actor: "c".into(),
                client: None,
                command: codec::to_cbor(&serde_json::json!({"add": {"name": "n", "by": 1}})).into(),
                by,
            },
        )
    };
    let entries = vec![
        entry(
            1,
            Payload::Deploy {
                actor: "c".into(),
                wasm: understudy_examples::COUNTER.to_vec().into(),
                by: Some(admin.clone()),
            },
        ),
        auth(
            2,
            AuthChange::RoleGrant {
                role: "writer".into(),
                permission: Permission::Write("c".into()),
            },
        ),
        auth(
            3,
            AuthChange::UserAdd {
                name: "root".into(),
                roles: ["admin".to_string()].into(),
            },
        ),
        auth(
            4,
            AuthChange::UserAdd {
                name: "w".into(),
                roles: ["writer".to_string()].into(),
            },
        ),
        auth(
            5,
            AuthChange::TokenCreate {
                id: "t1".into(),
                token: Token {
                    user: "w".into(),
                    hash: vec![0; 32],
                    expires_ms: 0,
                },
            },
        ),
        auth(6, AuthChange::Enable),
        command(7, Some(w.clone())),
        auth(8, AuthChange::TokenRevoke { id: "t1".into() }),
        command(9, Some(w.clone())),
        command(10, None),
        entry(
            11,
            Payload::Deploy {
                actor: "d".into(),
                wasm: understudy_examples::KV.to_vec().into(),
                by: Some(Principal {
                    token: None,
                    ..w.clone()
                }),
            },
        ),
        // Auth on, so an enable with nobody named is denied too.
        entry(
            12,
            Payload::Auth {
                change: AuthChange::Disable,
                by: None,
            },
        ),
        // With an allow-list, a module off it is refused at apply.
        auth(13, AuthChange::ModuleAllow { hash: vec![9; 32] }),
        entry(
            14,
            Payload::Deploy {
                actor: "e".into(),
                wasm: understudy_examples::KV.to_vec().into(),
                by: Some(admin.clone()),
            },
        ),
    ];
    let check = |outcomes: &[(Index, Outcome)]| {
        let at = |i: Index| &outcomes[i as usize - 1].1;
        assert!(at(7).is_ok(), "{:?}", at(7));
        for i in [9, 10, 11, 12] {
            assert!(matches!(at(i), Outcome::Denied { .. }), "{i}: {:?}", at(i));
        }
        assert!(
            matches!(at(14), Outcome::DeployRefused { reason } if reason.contains("allow-list")),
            "{:?}",
            at(14)
        );
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut statement = applier(dirs[0].path());
    let view = statement.auth_view();
    assert!(!view.get().enabled);
    let outcomes = statement.apply(&entries).unwrap();
    check(&outcomes);
    assert!(view.get().enabled && !view.get().tokens.contains_key("t1"));
    // Row kind: the leader executes ahead of commit, followers apply
    // its effects.
    let mut leader = applier(dirs[1].path());
    let effects: Vec<Entry> = leader
        .speculate(&entries, true, 1)
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    check(&leader.execute(&effects).unwrap());
    let mut follower = applier(dirs[2].path());
    check(&follower.apply(&effects).unwrap());
    assert_eq!(leader.applied(), statement.applied(), "same digest");
    assert_eq!(follower.applied(), statement.applied(), "same digest");
    assert!(follower.auth_view().get().enabled);
    // The audit trail: the deploy and the seven auth changes, newest
    // first (refusals and denials leave none).
    let trail = statement.audit_trail(100).unwrap();
    let actions: Vec<&str> = trail.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(trail.len(), 8, "{actions:?}");
    assert_eq!(trail[0].index, 13);
    assert_eq!(trail[1].index, 8);
    assert!(actions[1].starts_with("token revoke t1"), "{actions:?}");
    assert!(actions[7].starts_with("deploy c"), "{actions:?}");
    assert_eq!(trail[7].by.as_ref(), Some(&admin));
    assert_eq!(follower.audit_trail(100).unwrap(), trail);
    // It survives a restart (durable with the state, at a window end).
    let noops: Vec<Entry> = (15..=RUN_WINDOW).map(|i| entry(i, Payload::Noop)).collect();
    statement.apply(&noops).unwrap();
    assert_eq!(statement.durable().index, RUN_WINDOW);
    drop(statement);
    let again = applier(dirs[0].path());
    assert!(again.auth_view().get().enabled);
}

/// The auth state is one value: a change that would make it larger
/// than `VALUE_BYTES_MAX` is committed as a refusal (a change that
/// keeps it at the limit or under goes through).
#[test]
fn an_auth_change_past_value_bytes_max_is_refused_and_one_within_is_not() {
    use crate::auth::{AuthChange, AuthState};
    let limit = crate::limits::VALUE_BYTES_MAX;
    let mut state = AuthState::default();
    let mut i = 0u64;
    // Roles of long permissions fill it fast (within ROLES_MAX and
    // PERMISSIONS_PER_ROLE_MAX); short users fill the rest.
    while codec::encode(&state).len() < limit - 10_000 {
        let perms = (0..crate::auth::PERMISSIONS_PER_ROLE_MAX)
            .map(|p| crate::auth::Permission::Read(format!("{p:03}{}", "x".repeat(60))))
            .collect();
        state.roles.insert(format!("role-{i}"), perms);
        i += 1;
    }
    while codec::encode(&state).len() < limit - 40 {
        state.users.insert(format!("s{i}"), Default::default());
        i += 1;
    }
    let add = |name: String| AuthChange::UserAdd {
        name,
        roles: Default::default(),
    };
    let small = add("a".into());
    let large = add("b".repeat(crate::auth::NAME_BYTES_MAX));
    let within = state.apply(&small, 0).unwrap();
    assert!(codec::encode(&within).len() <= limit);
    let past = within.apply(&large, 0).unwrap();
    assert!(
        codec::encode(&past).len() > limit,
        "the test's second change must pass the limit"
    );
    // Stored as the applier keeps it, at a window end.
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &identity(), &StorageOptions::default()).unwrap();
    let mut batch = StateBatch::default();
    batch
        .kv
        .insert(access::auth_key(), Some(codec::encode(&state)));
    batch.kv.insert(
        access::auth_version_key().to_vec(),
        Some(1u64.to_be_bytes().to_vec()),
    );
    batch.applied_index = RUN_WINDOW;
    store.commit(&batch).unwrap();
    drop(store);
    let mut a = applier(dir.path());
    let entries = [small, large]
        .into_iter()
        .enumerate()
        .map(|(k, change)| {
            entry(
                RUN_WINDOW + 1 + k as u64,
                Payload::Auth { change, by: None },
            )
        })
        .collect::<Vec<_>>();
    let outcomes = a.apply(&entries).unwrap();
    assert!(outcomes[0].1.is_ok(), "{:?}", outcomes[0].1);
    assert!(
        matches!(&outcomes[1].1, Outcome::Refused { code, message } if code == "too-large" && message.contains("VALUE_BYTES_MAX")),
        "{:?}",
        outcomes[1].1
    );
    assert_eq!(a.auth_view().get().users.len(), state.users.len() + 1);
}

#[test]
fn discarded_speculation_leaves_no_trace() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = applier(dirs[0].path());
    let mut b = applier(dirs[1].path());
    let entries = log();
    a.apply(&entries[..1]).unwrap();
    b.apply(&entries[..1]).unwrap();
    a.speculate(&entries[1..4], true, 1).unwrap();
    // The term is lost: another leader's entries commit at 2..
    a.discard_speculation();
    let others: Vec<Entry> = (2..=3).map(|i| add(i, 100 + i)).collect();
    a.apply(&others).unwrap();
    b.apply(&others).unwrap();
    assert_eq!(a.applied(), b.applied());
    assert_eq!(a.kv_pairs().unwrap(), b.kv_pairs().unwrap());
    // Without the discard, an applied entry that is not the speculated
    // one drops the speculation by itself.
    a.speculate(&[add(4, 50)], true, 1).unwrap();
    let other = add(4, 51);
    a.apply(std::slice::from_ref(&other)).unwrap();
    b.apply(&[other]).unwrap();
    assert_eq!(a.speculated(), 0);
    assert_eq!(a.applied(), b.applied());
}

/// The statement log kind on the leader: a command executed ahead of
/// its commit is executed again on apply, in the applier's own runs,
/// with the same outcome; the state, digest and outcomes equal a plain
/// apply's. A speculation that no longer matches the log is dropped.
#[test]
fn a_speculated_statement_gets_the_outcome_it_gets_on_apply() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut plain = applier(dirs[0].path());
    let mut leader = applier(dirs[1].path());
    let entries = log();
    let expected = plain.apply(&entries).unwrap();
    leader.apply(&entries[..1]).unwrap();
    let calls = leader.calls;
    let speculated = leader.speculate(&entries[1..4], false, 1).unwrap();
    assert_eq!(leader.calls, calls + 3, "executed ahead of commit");
    assert!(
        speculated
            .iter()
            .zip(&entries[1..4])
            .all(|((logged, _), e)| logged == e),
        "statements are logged as they are"
    );
    let outcomes = leader.execute(&entries[1..]).unwrap();
    assert_eq!(
        leader.calls,
        calls + 3 + 5,
        "all run again on apply but the retry, answered from its session"
    );
    assert_eq!(outcomes, expected[1..].to_vec());
    assert_eq!(
        speculated
            .iter()
            .map(|(_, o)| o.clone())
            .collect::<Vec<_>>(),
        expected[1..4]
            .iter()
            .map(|(_, o)| o.clone())
            .collect::<Vec<_>>(),
        "the speculated outcomes are the committed ones"
    );
    assert_eq!(leader.applied(), plain.applied(), "same digest");
    assert_eq!(leader.kv_pairs().unwrap(), plain.kv_pairs().unwrap());

    // Speculated at term 1, but the log holds another entry of term 2
    // at that index: the speculation is dropped.
    leader.speculate(&[add(8, 8)], false, 1).unwrap();
    let mut other = add(8, 80);
    other.term = 2;
    leader.execute(&[other]).unwrap();
    assert_eq!(leader.speculated(), 0);
}

fn misbehave(index: Index, term: Term, json: &str) -> Entry {
    Entry {
        term,
        ..entry(
            index,
            Payload::Command {
                actor: "m".into(),
                client: None,
                command: codec::to_cbor(&serde_json::from_str::<serde_json::Value>(json).unwrap())
                    .into(),
                by: None,
            },
        )
    }
}

/// A log of `remember` commands (the machine answers how many commands
/// its instance has run) over three windows, with a new term starting
/// at 150 (with its leader's no-op, as always) and a trap at 100.
fn remember_log() -> Vec<Entry> {
    let mut log = vec![entry(
        1,
        Payload::Deploy {
            actor: "m".into(),
            wasm: understudy_examples::MISBEHAVE.to_vec().into(),
            by: None,
        },
    )];
    for i in 2..=200 {
        if i == 150 {
            log.push(Entry {
                term: 2,
                ..entry(i, Payload::Noop)
            });
            continue;
        }
        let term = if i < 150 { 1 } else { 2 };
        let json = if i == 100 {
            r#"{"panic":{"key":"x"}}"#
        } else {
            r#"{"remember":null}"#
        };
        log.push(misbehave(i, term, json));
    }
    log
}

fn remembered(o: &Outcome) -> Option<u64> {
    match o {
        Outcome::Ok(b) => serde_cbor::from_slice::<(u64, u64)>(b).ok().map(|r| r.0),
        _ => None,
    }
}

/// Commands share an instance within a run — a window of RUN_WINDOW
/// entries and one term, cut early by a trap — and every way of
/// applying the log (any batching, checkpoints, crashes and restarts)
/// runs the same runs: same outcomes, same digest.
#[test]
fn commands_share_an_instance_within_a_run_however_the_log_is_applied() {
    let log = remember_log();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut whole = applier(dirs[0].path());
    let expected = whole.apply(&log).unwrap();
    let run_start = |i: Index| -> Index {
        let window = (i - 1) / RUN_WINDOW * RUN_WINDOW + 1;
        let after_trap = if (101..=128).contains(&i) { 101 } else { 0 };
        let term = if i >= 150 { 151 } else { 0 };
        window.max(after_trap).max(term).max(2)
    };
    for (i, o) in &expected[1..] {
        if *i == 100 {
            assert!(matches!(o, Outcome::Trapped { .. }), "{o:?}");
            continue;
        }
        if *i == 150 {
            continue; // the no-op
        }
        assert_eq!(remembered(o), Some(i - run_start(*i) + 1), "entry {i}");
    }

    // In odd batches, with a checkpoint attempt after each.
    let mut batched = applier(dirs[1].path());
    let mut outcomes = Vec::new();
    for chunk in log.chunks(37) {
        outcomes.extend(batched.execute(chunk).unwrap());
        batched.checkpoint().unwrap();
    }
    assert_eq!(outcomes, expected);
    assert_eq!(batched.applied(), whole.applied());

    // Crashing (dropping what is not durable) after every 45 entries,
    // then restarting from what is.
    let mut outcomes = std::collections::BTreeMap::new();
    let mut next = 1usize;
    while next <= log.len() {
        let mut a = applier(dirs[2].path());
        let from = a.applied().index as usize + 1;
        assert!(opens_window(from as Index), "restarts at a window start");
        let to = (next + 44).min(log.len());
        for (i, o) in a.execute(&log[from - 1..to]).unwrap() {
            outcomes.insert(i, o);
        }
        a.checkpoint().unwrap();
        if to == log.len() {
            assert_eq!(a.applied(), whole.applied());
            assert_eq!(a.kv_pairs().unwrap(), whole.kv_pairs().unwrap());
        }
        next = to + 1;
    }
    assert_eq!(outcomes.into_iter().collect::<Vec<_>>(), expected);
}

/// The leader's ahead-of-commit execution runs only where its runs
/// match the log's: from a new term's start, or after missing entries,
/// from the next window; whatever it returns equals the apply's outcome.
#[test]
fn speculation_runs_the_runs_every_replica_runs() {
    let log = remember_log();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut plain = applier(dirs[0].path());
    let expected = plain.apply(&log).unwrap();
    let mut leader = applier(dirs[1].path());
    leader.apply(&log[..149]).unwrap();
    // Term 2 starts at 150: speculation starts a run there.
    let ahead = leader.speculate(&log[149..160], false, 150).unwrap();
    assert_eq!(ahead.len(), 11);
    for ((e, o), (i, x)) in ahead.iter().zip(&expected[149..160]) {
        assert_eq!((e.index, o), (*i, x));
    }
    leader.execute(&log[149..160]).unwrap();
    // A lost speculation (say, a failed append) leaves its chain
    // behind the log: nothing runs ahead until the next window.
    leader.discard_speculation();
    leader.execute(&log[160..165]).unwrap();
    assert!(
        leader
            .speculate(&log[165..170], false, 150)
            .unwrap()
            .is_empty()
    );
    assert!(leader.spec.is_none(), "nothing outstanding");
    leader.execute(&log[165..192]).unwrap();
    let ahead = leader.speculate(&log[192..], false, 150).unwrap();
    assert_eq!(ahead.len(), log.len() - 192, "from the window at 193");
    for ((e, o), (i, x)) in ahead.iter().zip(&expected[192..]) {
        assert_eq!((e.index, o), (*i, x));
    }
    leader.execute(&log[192..]).unwrap();
    assert_eq!(leader.applied(), plain.applied());
}

/// A deploy ends its actor's instance within a run: the next command
/// runs the new machine, in a fresh instance.
#[test]
fn a_deploy_ends_its_actors_instance() {
    let deploy = |index, wasm: &[u8]| {
        entry(
            index,
            Payload::Deploy {
                actor: "m".into(),
                wasm: wasm.to_vec().into(),
                by: None,
            },
        )
    };
    let remember = |index| misbehave(index, 1, r#"{"remember":null}"#);
    let log = vec![
        deploy(1, understudy_examples::MISBEHAVE),
        remember(2),
        remember(3),
        deploy(4, understudy_examples::MISBEHAVE),
        remember(5),
        deploy(6, understudy_examples::COUNTER),
        misbehave(7, 1, r#"{"add":{"name":"n","by":3}}"#),
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = applier(dir.path()).apply(&log).unwrap();
    let counts: Vec<Option<u64>> = out[1..5].iter().map(|(_, o)| remembered(o)).collect();
    assert_eq!(counts, vec![Some(1), Some(2), None, Some(1)]);
    assert_eq!(out[6].1, Outcome::Ok(codec::to_cbor(&3i64).into()));
}

/// A run over more actors than [`RUN_ACTORS_MAX`], on both chains at
/// once: instances are dropped oldest first, the same way on both (no
/// divergence), and the sandbox's pool is never exhausted.
#[test]
fn a_run_over_many_actors_keeps_a_bounded_number_of_instances() {
    let actors = 40;
    let mut log: Vec<Entry> = (1..=actors)
        .map(|i| {
            entry(
                i,
                Payload::Deploy {
                    actor: format!("m{i}"),
                    wasm: understudy_examples::MISBEHAVE.to_vec().into(),
                    by: None,
                },
            )
        })
        .collect();
    log.extend((actors + 1..=RUN_WINDOW).map(|i| entry(i, Payload::Noop)));
    for i in RUN_WINDOW + 1..=3 * RUN_WINDOW {
        let mut e = misbehave(i, 1, r#"{"remember":null}"#);
        if let Payload::Command { actor, .. } = &mut e.payload {
            *actor = format!("m{}", (i - RUN_WINDOW - 1) % actors + 1);
        }
        log.push(e);
    }
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut plain = applier(dirs[0].path());
    let expected = plain.apply(&log).unwrap();
    let mut leader = applier(dirs[1].path());
    let w = RUN_WINDOW as usize;
    leader.apply(&log[..w]).unwrap();
    let ahead = leader.speculate(&log[w..], false, 1).unwrap();
    assert_eq!(ahead.len(), log.len() - w);
    assert_eq!(leader.spec_run.warm.len(), RUN_ACTORS_MAX);
    let outcomes = leader.execute(&log[w..]).unwrap();
    assert_eq!(outcomes, expected[w..]);
    assert_eq!(leader.run.warm.len(), RUN_ACTORS_MAX);
    assert_eq!(leader.applied(), plain.applied());
}

/// Mutation check of the determinism guard: a speculation made in a run
/// the log does not have (told the term started where it did not) gets
/// another answer than the apply, and applying it refuses.
#[test]
fn a_speculation_that_differs_from_the_apply_stops_the_applier() {
    let log = remember_log();
    let dir = tempfile::tempdir().unwrap();
    let mut leader = applier(dir.path());
    leader.apply(&log[..9]).unwrap();
    let ahead = leader.speculate(&log[9..10], false, 9).unwrap();
    assert_eq!(remembered(&ahead[0].1), Some(1));
    let err = leader.execute(&log[9..10]).unwrap_err();
    assert!(matches!(err, ApplyError::Diverged { index: 10 }), "{err}");
}

/// Every content limit at, and one past, its value: a committed
/// outcome either way, never an error, and the state checkpoints
/// (an over-long key used to reach LMDB and halt every node there).
#[test]
fn content_at_and_past_every_limit_is_an_outcome_and_the_state_checkpoints() {
    use crate::limits::{KEY_BYTES_MAX, MODULE_BYTES_MAX, RESPONSE_BYTES_MAX, WRITE_SET_BYTES_MAX};
    let dir = tempfile::tempdir().unwrap();
    let mut a = applier(dir.path());
    let deploy = |index, actor: &str, wasm: Vec<u8>| {
        entry(
            index,
            Payload::Deploy {
                actor: actor.into(),
                wasm: wasm.into(),
                by: None,
            },
        )
    };
    let kv = |index, actor: &str, json: serde_json::Value| {
        entry(
            index,
            Payload::Command {
                actor: actor.into(),
                client: None,
                command: codec::to_cbor(&json).into(),
                by: None,
            },
        )
    };
    let put = |index, key: String| {
        kv(
            index,
            "kv",
            serde_json::json!({"put": {"key": key, "value": "v"}}),
        )
    };
    let trapped = |kind: &str| Outcome::Trapped { trap: kind.into() };
    // A write-set of exactly the limit: keys `f0`..`f7` (2 bytes each).
    let each = WRITE_SET_BYTES_MAX / 8 - 2;
    let mut sizes = vec![each; 8];
    let fill = |index, sizes: &[usize]| {
        misbehave(
            index,
            1,
            &serde_json::json!({"fill": {"sizes": sizes}}).to_string(),
        )
    };
    let shout = |index, bytes: usize| {
        misbehave(
            index,
            1,
            &serde_json::json!({"shout": {"bytes": bytes}}).to_string(),
        )
    };
    let mut log = vec![
        deploy(1, "kv", understudy_examples::KV.to_vec()),
        deploy(2, "m", understudy_examples::MISBEHAVE.to_vec()),
        put(3, "k".repeat(KEY_BYTES_MAX)),
        put(4, "k".repeat(KEY_BYTES_MAX + 1)),
        put(5, "k".repeat(600)),
        kv(
            6,
            "",
            serde_json::json!({"put": {"key": "a", "value": "v"}}),
        ),
        kv(
            7,
            &"a".repeat(600),
            serde_json::json!({"put": {"key": "a", "value": "v"}}),
        ),
        deploy(8, "", understudy_examples::KV.to_vec()),
        deploy(9, "big", vec![0u8; MODULE_BYTES_MAX + 1]),
        fill(10, &sizes),
    ];
    sizes[7] += 1;
    log.push(fill(11, &sizes));
    log.push(shout(12, RESPONSE_BYTES_MAX - "loud".len()));
    log.push(shout(13, RESPONSE_BYTES_MAX - "loud".len() + 1));
    let outcomes: Vec<Outcome> = a
        .execute(&log)
        .unwrap()
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert!(
        outcomes[..2].iter().all(Outcome::is_ok),
        "{:?}",
        &outcomes[..2]
    );
    assert!(
        outcomes[2].is_ok(),
        "a key of KEY_BYTES_MAX: {:?}",
        outcomes[2]
    );
    assert_eq!(outcomes[3], trapped("kv-too-large"));
    assert_eq!(outcomes[4], trapped("kv-too-large"));
    assert_eq!(outcomes[5], Outcome::NoSuchActor);
    assert_eq!(outcomes[6], Outcome::NoSuchActor);
    assert!(
        matches!(&outcomes[7], Outcome::DeployRefused { reason } if reason.contains("actor name"))
    );
    assert!(
        matches!(&outcomes[8], Outcome::DeployRefused { reason } if reason.contains("MODULE_BYTES_MAX"))
    );
    assert!(
        outcomes[9].is_ok(),
        "a write-set of WRITE_SET_BYTES_MAX: {:?}",
        outcomes[9]
    );
    assert_eq!(outcomes[10], trapped("write-set-too-large"));
    assert!(matches!(&outcomes[11], Outcome::Refused { code, .. } if code == "loud"));
    assert_eq!(outcomes[12], trapped(crate::sandbox::RESPONSE_TOO_LARGE));
    // Two values of 600 kB: a scan of both answers over the limit.
    let big = |index, key: &str| {
        kv(
            index,
            "kv",
            serde_json::json!({"put": {"key": key, "value": "v".repeat(600_000)}}),
        )
    };
    a.execute(&[big(14, "big1"), big(15, "big2")]).unwrap();
    // The state holding the longest key becomes durable.
    a.execute(&adds_for_kv(16, RUN_WINDOW)).unwrap();
    assert!(a.checkpoint().unwrap());
    assert_eq!(a.durable().index, RUN_WINDOW);
    let get = codec::to_cbor(&serde_json::json!({"get": {"key": "k".repeat(KEY_BYTES_MAX)}}));
    assert_eq!(
        a.query("kv", &get).unwrap().0,
        Outcome::Ok(codec::to_cbor(&Some("v")).into())
    );
    let get = codec::to_cbor(&serde_json::json!({"get": {"key": "k".repeat(KEY_BYTES_MAX + 1)}}));
    assert_eq!(a.query("kv", &get).unwrap().0, trapped("kv-too-large"));
    assert!(matches!(a.query("", &get), Err(QueryError::NoSuchActor(_))));
    let scan = codec::to_cbor(&serde_json::json!({"scan": {"prefix": "big", "limit": 1}}));
    assert!(
        a.query("kv", &scan).unwrap().0.is_ok(),
        "one value: under the limit"
    );
    let scan = codec::to_cbor(&serde_json::json!({"scan": {"prefix": "big", "limit": 2}}));
    assert_eq!(
        a.query("kv", &scan).unwrap().0,
        trapped(crate::sandbox::RESPONSE_TOO_LARGE)
    );
}

mod property {
    use super::*;
    use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
    use proptest::prelude::*;

    fn actor() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("kv".to_string()),
            Just("m".to_string()),
            Just(String::new()),
            Just("a".repeat(65)),
            Just("a".repeat(600)),
            "[A-Za-z0-9 _.\\-]{0,8}",
        ]
    }

    fn size() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(KEY_BYTES_MAX),
            Just(KEY_BYTES_MAX + 1),
            Just(600),
            0..64usize,
        ]
    }

    fn payload() -> impl Strategy<Value = Payload> {
        let command = prop_oneof![
            (size(), size()).prop_map(
                |(k, v)| serde_json::json!({"put": {"key": "k".repeat(k), "value": "v".repeat(v)}})
            ),
            size().prop_map(|k| serde_json::json!({"delete": {"key": "k".repeat(k)}})),
            prop_oneof![
                Just(VALUE_BYTES_MAX),
                Just(VALUE_BYTES_MAX + 1),
                0..4096usize
            ]
            .prop_map(|n| serde_json::json!({"fill": {"sizes": [n]}})),
            (0..3usize).prop_map(|n| serde_json::json!({"shout": {"bytes": n * 700_000}})),
            Just(serde_json::json!({"panic": {"key": "p"}})),
            Just(serde_json::json!({"remember": null})),
        ]
        .prop_map(|j| codec::to_cbor(&j));
        let bytes = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            4 => (actor(), prop_oneof![command, bytes]).prop_map(|(actor, command)| Payload::Command {
                actor,
                client: None,
                command: command.into(),
                by: None,
            }),
            1 => (actor(), prop_oneof![
                Just(understudy_examples::KV.to_vec()),
                Just(understudy_examples::MISBEHAVE.to_vec()),
                proptest::collection::vec(any::<u8>(), 0..64),
            ])
            .prop_map(|(actor, wasm)| Payload::Deploy { actor, wasm: wasm.into(), by: None }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10))]

        /// Content never halts the applier (BRIEF invariant 9):
        /// arbitrary actor names, keys, values, commands and module
        /// bytes, at and past every limit, are all applied as outcomes,
        /// the state checkpoints, and a second replica that applies the
        /// same log in other batches gets the same outcomes and digest.
        #[test]
        fn arbitrary_content_is_always_an_outcome_the_same_on_every_replica(
            payloads in proptest::collection::vec(payload(), 1..24),
            split in 1..8usize,
        ) {
            let mut log = vec![
                entry(1, Payload::Deploy { actor: "kv".into(), wasm: understudy_examples::KV.to_vec().into(), by: None }),
                entry(2, Payload::Deploy { actor: "m".into(), wasm: understudy_examples::MISBEHAVE.to_vec().into(), by: None }),
            ];
            log.extend(payloads.into_iter().enumerate().map(|(i, p)| entry(3 + i as Index, p)));
            let end = log.len() as Index;
            log.extend((end + 1..=RUN_WINDOW).map(|i| entry(i, Payload::Noop)));
            let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (mut a, mut b) = (applier(d1.path()), applier(d2.path()));
            let one = a.execute(&log).expect("content never fails the applier");
            prop_assert!(a.checkpoint().expect("the state checkpoints"));
            let mut two = Vec::new();
            for chunk in log.chunks(split) {
                two.extend(b.execute(chunk).expect("content never fails the applier"));
            }
            prop_assert!(b.checkpoint().expect("the state checkpoints"));
            prop_assert_eq!(one, two);
            prop_assert_eq!(a.applied(), b.applied());
        }
    }
}

fn adds_for_kv(from: Index, to: Index) -> Vec<Entry> {
    (from..=to)
        .map(|i| {
            entry(
                i,
                Payload::Command {
                    actor: "kv".into(),
                    client: None,
                    command: codec::to_cbor(
                        &serde_json::json!({"put": {"key": "n", "value": i.to_string()}}),
                    )
                    .into(),
                    by: None,
                },
            )
        })
        .collect()
}

#[test]
fn execute_refuses_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = applier(dir.path());
    assert!(matches!(
        a.execute(&log()[1..]),
        Err(ApplyError::Gap { applied: 0, got: 2 })
    ));
}
