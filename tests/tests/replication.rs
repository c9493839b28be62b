//! Replication with real node processes: writes through the leader, reads
//! on every node at every consistency level, a follower killed with SIGKILL
//! during writes, a follower cut off by the proxy network, and the leader
//! write concern. Every test ends by checking that all nodes hold the same
//! state (equal digests at the same applied index).

use std::time::Duration;
use understudy::api::client::{Client, ClientError};
use understudy::api::{ErrorCode, ReadLevel, WriteConcern};
use understudy::types::Outcome;
use understudy_tests::{
    Group, cbor, decode, deploy_kv, kv_get as get, kv_put as put, with_kv, within,
};

const SETTLE: Duration = Duration::from_secs(20);

fn value(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Ok(b) => decode(b),
        other => panic!("query failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_the_leader_and_every_node_serves_every_read_level() {
    every_read_level(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_kind_writes_acknowledged_at_commit_are_seen_by_every_read_level() {
    // The row kind answers a write when it commits (its outcome is in the
    // entry), before the leader applies it: reads must still see it.
    every_read_level(&["--log-kind", "row"]).await
}

async fn every_read_level(flags: &[&str]) {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = with_kv(Group::start(dir.path(), 3, flags).unwrap()).await;

    // A follower refuses writes and names the leader and its address.
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let f = g.client_of(follower).await.unwrap();
    let err = f.command("kv", put("x", "1")).await.unwrap_err();
    let ClientError::Api(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, ErrorCode::NotLeader);
    assert_eq!(e.leader, Some(leader));
    assert_eq!(
        e.leader_address.as_deref(),
        Some(g.node(leader).addr.to_string().as_str())
    );

    let readers: Vec<Client> = {
        let mut v = Vec::new();
        for id in 1..=3 {
            v.push(g.client_of(id).await.unwrap());
        }
        v
    };
    for i in 0..30u64 {
        let key = format!("k{}", i % 7);
        let w = c.command("kv", put(&key, &i.to_string())).await.unwrap();
        assert!(w.outcome.is_ok(), "{:?}", w.outcome);
        let r = &readers[(i % 3) as usize];
        // Linearizable: sees every write acknowledged before it started.
        let (out, at) = r
            .query_at("kv", get(&key), ReadLevel::Linearizable)
            .await
            .unwrap();
        assert_eq!(value(&out), Some(i.to_string()), "linearizable read");
        assert!(at >= w.index);
        // Session: the write's own token.
        let (out, at) = r
            .query_at(
                "kv",
                get(&key),
                ReadLevel::Session {
                    term: w.term,
                    index: w.index,
                },
            )
            .await
            .unwrap();
        assert!(at >= w.index, "a session read waits for its write");
        assert_eq!(value(&out), Some(i.to_string()), "session read");
        // Lease, on the leader: sees the write too.
        let (out, _) = c.query_at("kv", get(&key), ReadLevel::Lease).await.unwrap();
        assert_eq!(value(&out), Some(i.to_string()), "lease read");
        // Any and bounded: answered with the index they reflect.
        let (_, at) = r.query_at("kv", get(&key), ReadLevel::Any).await.unwrap();
        assert!(at > 0);
        r.query_at(
            "kv",
            get(&key),
            ReadLevel::Bounded {
                max_lag_entries: Some(1_000),
                max_lag_ms: Some(5_000),
            },
        )
        .await
        .unwrap();
    }

    // The leader concern: acknowledged before commit, with a token whose
    // session read on a follower shows the write once it arrives.
    let (term, index) = c
        .command_leader("kv", put("fast", "yes"), c.next_tag())
        .await
        .unwrap();
    let (out, at) = readers[follower as usize - 1]
        .query_at("kv", get("fast"), ReadLevel::Session { term, index })
        .await
        .unwrap();
    assert!(at >= index);
    assert_eq!(value(&out).as_deref(), Some("yes"));
    let _ = WriteConcern::Leader;

    g.assert_same_state(SETTLE).await;
}

/// Keep writing distinct keys through a leader-following client; returns
/// the acknowledged ones.
async fn write_range(c: &Client, from: u64, to: u64) -> Vec<u64> {
    let mut acked = Vec::new();
    for i in from..to {
        let tag = c.next_tag();
        match c
            .command_tagged(
                "kv",
                put(&format!("w{i}"), &i.to_string()),
                tag,
                WriteConcern::Majority,
            )
            .await
        {
            Ok(w) => {
                assert!(w.outcome.is_ok(), "{:?}", w.outcome);
                acked.push(i);
            }
            Err(e) => panic!("write {i} failed after retries: {e}"),
        }
    }
    acked
}

async fn assert_all_readable(g: &Group, acked: &[u64]) {
    for id in g.nodes.keys().copied().collect::<Vec<_>>() {
        let c = g.client_of(id).await.unwrap();
        for &i in acked {
            let (out, _) = c
                .query_at("kv", get(&format!("w{i}")), ReadLevel::Any)
                .await
                .unwrap();
            assert_eq!(value(&out), Some(i.to_string()), "node {id} lacks w{i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_during_writes_restarts_and_catches_up() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = with_kv(Group::start(dir.path(), 3, &[]).unwrap()).await;
    let victim = (1..=3).find(|&i| i != leader).unwrap();

    // Kill the follower while writes are in flight.
    let writer = {
        let c = g.client().await.unwrap();
        tokio::spawn(async move { write_range(&c, 0, 300).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    g.kill9(victim);
    let mut acked = writer.await.unwrap();
    // The majority (leader + one follower) kept committing.
    acked.extend(write_range(&c, 300, 400).await);
    g.restart(victim).unwrap();
    let index = g.assert_same_state(SETTLE).await;
    assert!(index >= 400);
    assert_all_readable(&g, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_serves_stale_reads_only_as_allowed_and_catches_up_after_healing() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) =
        with_kv(Group::start(dir.path(), 3, &["--read-timeout-ms", "1000"]).unwrap()).await;
    let mut acked = write_range(&c, 0, 50).await;
    let cut = (1..=3).find(|&i| i != leader).unwrap();
    g.converged(acked.len() as u64, SETTLE).await.unwrap();
    let term = g
        .client_of(leader)
        .await
        .unwrap()
        .status()
        .await
        .unwrap()
        .term;

    g.net.isolate(cut);
    acked.extend(write_range(&c, 50, 250).await);
    let r = g.client_of(cut).await.unwrap();
    // `any` answers from what it has: the old value, and says how old.
    let (out, at) = r.query_at("kv", get("w100"), ReadLevel::Any).await.unwrap();
    assert_eq!(value(&out), None, "the cut-off node cannot have w100");
    assert!(at < 100);
    // `bounded` by time refuses once the leader has been silent too long.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = r
        .query_at(
            "kv",
            get("w1"),
            ReadLevel::Bounded {
                max_lag_entries: None,
                max_lag_ms: Some(300),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Some(ErrorCode::Stale)),
        "bounded read on a cut-off node: {err:?}"
    );
    // `linearizable` cannot be served without the leader.
    let err = r
        .query_at("kv", get("w1"), ReadLevel::Linearizable)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::Timeout | ErrorCode::Unavailable | ErrorCode::NotLeader)
        ),
        "{err:?}"
    );
    // The cut-off node's pre-votes must not have disturbed the majority.
    let s = g.client_of(leader).await.unwrap().status().await.unwrap();
    assert_eq!(
        (s.role, s.term),
        (understudy::replication::Role::Leader, term)
    );

    g.net.heal();
    let (out, _) = r
        .query_at("kv", get("w249"), ReadLevel::Linearizable)
        .await
        .unwrap();
    assert_eq!(value(&out).as_deref(), Some("249"));
    g.assert_same_state(SETTLE).await;
    assert_all_readable(&g, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_switchover_under_writes_loses_no_acknowledged_write() {
    switchover(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_switchover_of_a_row_kind_group_loses_no_acknowledged_write() {
    // The old leader's speculative state is discarded when it hands over;
    // the new one speculates on top of everything in its log.
    switchover(&["--log-kind", "row"]).await
}

async fn switchover(flags: &[&str]) {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = with_kv(Group::start(dir.path(), 3, flags).unwrap()).await;
    let term = c.status().await.unwrap().term;
    let target = (1..=3).find(|&i| i != leader).unwrap();

    let writer = {
        let c = g.client().await.unwrap();
        tokio::spawn(async move { write_range(&c, 0, 400).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Through the CLI, as an operator would, addressing a node that is not
    // the leader: the request finds its way.
    let via = (1..=3).find(|&i| i != leader && i != target).unwrap();
    let addr = g.node(via).addr.to_string();
    let target_arg = target.to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        understudy_tests::run_cli(&["promote", "--addr", &addr, &target_arg]).unwrap()
    })
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("node {target} leads")), "{out}");
    let acked = writer.await.unwrap();
    assert_eq!(
        acked.len(),
        400,
        "every write was acknowledged, across the switchover"
    );
    assert_eq!(g.leader(SETTLE).await.unwrap(), target);
    let s = g.client_of(target).await.unwrap().status().await.unwrap();
    assert!(s.term > term, "the new leader leads in a new term");
    g.assert_same_state(SETTLE).await;
    assert_all_readable(&g, &acked).await;
    // Promoting a stranger is refused with the reason.
    let err = c.promote(9).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_compacted_log_is_rebuilt_from_a_snapshot() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = with_kv(
        Group::start(
            dir.path(),
            3,
            &[
                "--log-retain-entries",
                "20",
                "--snapshot-chunk-bytes",
                "4096",
            ],
        )
        .unwrap(),
    )
    .await;
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let mut acked = write_range(&c, 0, 20).await;
    g.converged(20, SETTLE).await.unwrap();
    let behind = g.client_of(victim).await.unwrap().status().await.unwrap();
    g.kill9(victim);
    // Enough writes, with values large enough for several chunks, and time
    // for the others to compact past where the victim stopped.
    acked.extend(write_range(&c, 20, 400).await);
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let s = g.client_of(leader).await.unwrap().status().await.unwrap();
        let needs_snapshot = s.followers.iter().any(|f| f.id == victim && f.snapshot);
        if s.log_first_index > behind.last_index + 1 && needs_snapshot {
            // Appends queued for the victim before that are dropped by its
            // lane's next failed dial (backoff at most 500 ms); otherwise a
            // stale append carrying every entry may legitimately catch it
            // up without a snapshot.
            tokio::time::sleep(Duration::from_millis(700)).await;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never compacted past {}: {s:?}",
            behind.last_index
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    g.restart(victim).unwrap();
    // The operator's view: `understudy catch-up` follows it to the end.
    let addr = g.node(victim).addr.to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        understudy_tests::run_cli(&["catch-up", "--addr", &addr, "--timeout-s", "20"]).unwrap()
    })
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("is caught up"), "{out}");
    g.assert_same_state(SETTLE).await;
    let s = g.client_of(victim).await.unwrap().status().await.unwrap();
    assert!(
        s.log_first_index > behind.last_index + 1,
        "the victim's log starts after a snapshot: {s:?}\nvictim: {}\nleader: {}",
        g.node(victim).stderr(),
        g.node(leader).stderr()
    );
    assert_all_readable(&g, &acked).await;
    // It keeps replicating normally afterwards.
    acked.extend(write_range(&c, 400, 420).await);
    g.assert_same_state(SETTLE).await;
    assert_all_readable(&g, &acked).await;
}

/// One workload of every kind of write: deploys, commands that succeed and
/// that are refused, a retried tag, a leader-concern write.
async fn mixed_workload(c: &Client) {
    deploy_kv(c).await;
    let w = c
        .deploy("bank", understudy_examples::BANK.to_vec())
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
    for i in 0..60u64 {
        let w = c
            .command("kv", put(&format!("k{}", i % 9), &i.to_string()))
            .await
            .unwrap();
        assert!(w.outcome.is_ok());
        if i % 10 == 3 {
            let cas = cbor(&format!(
                r#"{{"cas":{{"key":"k1","expected":"nope","new":"{i}"}}}}"#
            ));
            let w = c.command("kv", cas).await.unwrap();
            assert!(
                matches!(w.outcome, Outcome::Refused { .. }),
                "{:?}",
                w.outcome
            );
        }
    }
    for acct in ["alice", "bob"] {
        let open = cbor(&format!(
            r#"{{"open":{{"account":"{acct}","deposit":100}}}}"#
        ));
        assert!(c.command("bank", open).await.unwrap().outcome.is_ok());
    }
    let tag = c.next_tag();
    let transfer = cbor(r#"{"transfer":{"from":"alice","to":"bob","amount":30}}"#);
    let first = c
        .command_tagged("bank", transfer.clone(), tag, WriteConcern::Majority)
        .await
        .unwrap();
    let again = c
        .command_tagged("bank", transfer, tag, WriteConcern::Majority)
        .await
        .unwrap();
    assert_eq!(
        first.outcome, again.outcome,
        "a retry gets the first result"
    );
    let overdraft = cbor(r#"{"transfer":{"from":"bob","to":"alice","amount":1000}}"#);
    let w = c.command("bank", overdraft).await.unwrap();
    assert!(matches!(w.outcome, Outcome::Refused { .. }));
    c.command_leader("kv", put("fast", "1"), c.next_tag())
        .await
        .unwrap();
    let w = c.command("kv", put("last", "1")).await.unwrap();
    assert!(w.outcome.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_and_row_kinds_end_with_equal_digests_on_every_node() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let statement = Group::start(&dir.path().join("statement"), 3, &[]).unwrap();
    let row = Group::start(&dir.path().join("row"), 3, &["--log-kind", "row"]).unwrap();
    let mut answers = Vec::new();
    for (name, g) in [("statement", &statement), ("row", &row)] {
        g.leader(SETTLE).await.unwrap();
        let c = g.client().await.unwrap();
        mixed_workload(&c).await;
        let (index, ds) = g.settled_digests(SETTLE).await.unwrap();
        // Every member of a group holds the same state.
        for (node, d) in &ds {
            assert_eq!(d, &ds[0].1, "{name} node {node} differs at {index}: {ds:?}");
        }
        // Across the two groups the machines' state is the same (the
        // digests differ: the audit records of the deploys carry their
        // entries' times, which differ between two groups).
        for id in 1..=3 {
            let n = within(10, "a client", g.client_of(id)).await.unwrap();
            let mut seen = Vec::new();
            for k in 0..9 {
                let read = n.query_at("kv", get(&format!("k{k}")), ReadLevel::Any);
                seen.push(within(30, "a read", read).await.unwrap().0);
            }
            for acct in ["alice", "bob"] {
                let q = cbor(&format!(r#"{{"balance":{{"account":"{acct}"}}}}"#));
                let read = n.query_at("bank", q, ReadLevel::Any);
                seen.push(within(30, "a read", read).await.unwrap().0);
            }
            answers.push((name, id, seen));
        }
    }
    for (name, node, seen) in &answers {
        assert_eq!(seen, &answers[0].2, "{name} node {node} reads otherwise");
    }
}

/// `count` `remember` commands from `writers` concurrent clients; the
/// counts the machine answered.
async fn remember(g: &Group, writers: usize, count: usize) -> Vec<u64> {
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let c = g.client().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut counts = Vec::new();
            for _ in 0..count / writers {
                let w = c.command("m", cbor(r#"{"remember":null}"#)).await.unwrap();
                let Outcome::Ok(b) = &w.outcome else {
                    panic!("{:?}", w.outcome)
                };
                counts.push(decode::<(u64, u64)>(b).0);
            }
            counts
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// A machine whose answers depend on its instance's memory (it counts the
/// commands its instance ran, and writes the count): every node runs the
/// same commands in the same instances — across a follower's SIGKILL and
/// its rebuild from a snapshot, and a switchover to a new term — so the
/// state is the same everywhere and no node is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sharing_instances_leave_the_same_state_on_every_node() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(dir.path(), 3, &["--log-retain-entries", "20"]).unwrap();
    let leader = g.leader(SETTLE).await.unwrap();
    let c = g.client().await.unwrap();
    let w = c
        .deploy("m", understudy_examples::MISBEHAVE.to_vec())
        .await
        .unwrap();
    assert!(w.outcome.is_ok(), "{:?}", w.outcome);
    let mut counts = remember(&g, 4, 100).await;
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let behind = g.client_of(victim).await.unwrap().status().await.unwrap();
    g.kill9(victim);
    counts.extend(remember(&g, 4, 200).await);
    // The leader compacts past the victim's log: it comes back through a
    // snapshot, which must resume at a run's start.
    let deadline = std::time::Instant::now() + SETTLE;
    while c.status().await.unwrap().log_first_index <= behind.last_index + 1 {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    g.restart(victim).unwrap();
    g.assert_same_state(SETTLE).await;
    let term = c.status().await.unwrap().term;
    c.promote(victim).await.unwrap();
    assert_eq!(g.leader(SETTLE).await.unwrap(), victim);
    counts.extend(remember(&g, 4, 100).await);
    assert!(
        counts.iter().any(|&n| n > 1),
        "commands shared instances: {counts:?}"
    );
    let s = g.client_of(victim).await.unwrap().status().await.unwrap();
    assert!(s.term > term);
    g.assert_same_state(SETTLE).await;
}
