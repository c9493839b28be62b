//! Automatic failover with real node processes: a leader killed, frozen or
//! cut off is replaced by a majority election; no acknowledged write is
//! ever lost, and a write never shows as acknowledged unless it is in the
//! log of the group. Timing: heartbeat 25 ms, election timeout 150–300 ms.

use std::collections::BTreeSet;
use std::time::Duration;
use understudy::api::client::Client;
use understudy::api::{ErrorCode, ReadLevel, WriteConcern};
use understudy::replication::Role;
use understudy::types::Outcome;
use understudy_tests::{Group, decode, kv_get as get, kv_put as put, with_kv};

const SETTLE: Duration = Duration::from_secs(20);

/// Write keys `from..to` through a leader-following client; returns the
/// acknowledged ones (a write that fails after the client's retries is
/// simply not acknowledged).
async fn writes(c: &Client, prefix: &str, from: u64, to: u64) -> Vec<String> {
    let mut acked = Vec::new();
    for i in from..to {
        let key = format!("{prefix}{i}");
        let tag = c.next_tag();
        if let Ok(w) = c
            .command_tagged("kv", put(&key, &i.to_string()), tag, WriteConcern::Majority)
            .await
        {
            assert!(w.outcome.is_ok(), "{:?}", w.outcome);
            acked.push(key);
        }
    }
    acked
}

/// The value of `key`, read linearizably.
async fn read_key(c: &Client, key: &str) -> Option<String> {
    let (out, _) = c
        .query_at("kv", get(key), ReadLevel::Linearizable)
        .await
        .unwrap();
    let Outcome::Ok(b) = out else {
        panic!("{out:?}")
    };
    decode(&b)
}

/// Every acknowledged key is there, read linearizably through the group.
async fn assert_present(g: &Group, acked: &[String]) {
    let c = g.client().await.unwrap();
    for key in acked {
        let found = read_key(&c, key).await;
        assert!(found.is_some(), "acknowledged write {key} was lost");
    }
}

async fn term_of(g: &Group, id: u64) -> (Role, u64) {
    let status = async { g.client_of(id).await.unwrap().status().await.unwrap() };
    let s = tokio::time::timeout(Duration::from_secs(10), status)
        .await
        .expect("a status within 10 s");
    (s.role, s.term)
}

async fn sigkill_the_leader(n: u64) {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, old, _) = with_kv(Group::start(dir.path(), n, &[]).unwrap()).await;
    let writer = {
        let c = g.client().await.unwrap();
        tokio::spawn(async move { writes(&c, "w", 0, 300).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    g.kill9(old);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 250,
        "writes resume on the new leader: {}",
        acked.len()
    );
    let new = g.leader(SETTLE).await.unwrap();
    assert_ne!(new, old);
    assert_present(&g, &acked).await;
    // The old leader comes back as a follower and catches up.
    g.restart(old).unwrap();
    let leader = g.leader(SETTLE).await.unwrap();
    assert_eq!(leader, new, "a returning node does not take over");
    g.assert_same_state(SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_of_three_elects_a_new_one_and_loses_no_acknowledged_write() {
    sigkill_the_leader(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_of_five_elects_a_new_one_and_loses_no_acknowledged_write() {
    sigkill_the_leader(5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_of_three_is_replaced_and_steps_down_when_it_thaws() {
    frozen_leader(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_of_five_is_replaced_and_steps_down_when_it_thaws() {
    frozen_leader(5).await
}

async fn frozen_leader(n: u64) {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, old, _) = with_kv(Group::start(dir.path(), n, &[]).unwrap()).await;
    let (_, old_term) = term_of(&g, old).await;
    let direct = g.client_of(old).await.unwrap().retry_for(Duration::ZERO);
    g.node(old).pause();
    // Writes sent to the frozen leader wait in its socket.
    let stuck = tokio::spawn(async move {
        let mut answers = Vec::new();
        for i in 0..5 {
            let key = format!("frozen{i}");
            let r = direct.command("kv", put(&key, "x")).await;
            answers.push((key, r.map(|w| w.outcome)));
        }
        answers
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The others elected a new leader, in a later term, and take writes.
    let others: Vec<u64> = (1..=n).filter(|&i| i != old).collect();
    let mut new = None;
    for _ in 0..100 {
        for &i in &others {
            let (role, term) = term_of(&g, i).await;
            if role == Role::Leader && term > old_term {
                new = Some(i);
            }
        }
        if new.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = new.expect("a new leader while the old one is frozen");
    let via_new = Client::connect_group(vec![g.node(new).addr]).await.unwrap();
    let acked = writes(&via_new, "after", 0, 50).await;
    assert_eq!(acked.len(), 50);
    g.node(old).resume();
    assert_eq!(
        g.leader(SETTLE).await.unwrap(),
        new,
        "the thawed leader steps down"
    );
    // Thawed, its own clock says every timeout passed: it may first step
    // down into a pre-candidacy (refused: the others hear their leader)
    // before the new leader's heartbeat makes it a follower. A bounded wait.
    let mut role = term_of(&g, old).await.0;
    for _ in 0..100 {
        if role == Role::Follower {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        role = term_of(&g, old).await.0;
    }
    assert_eq!(role, Role::Follower, "the thawed leader follows within 5 s");
    // What the old leader answered while it thawed: never a success for a
    // write the group does not have.
    let answers = stuck.await.unwrap();
    let c = g.client().await.unwrap();
    let mut lost = 0;
    for (key, answer) in answers {
        let found = read_key(&c, &key).await;
        let present = found.is_some();
        lost += usize::from(!present);
        match answer {
            Ok(o) => {
                assert!(o.is_ok());
                assert!(
                    present,
                    "{key} acknowledged by the old leader but not in the group"
                );
            }
            Err(e) => assert!(
                matches!(
                    e.code(),
                    Some(ErrorCode::NotLeader | ErrorCode::Superseded | ErrorCode::Unavailable)
                ) || e.code().is_none(),
                "{key}: {e:?}"
            ),
        }
    }
    assert_present(&g, &acked).await;
    g.assert_same_state(SETTLE).await;
    // Whatever the old leader had logged and lost is kept for audit.
    let mut kept = Vec::new();
    if let Ok(files) = std::fs::read_dir(g.node(old).data_dir.join("quarantine")) {
        for f in files.flatten() {
            let bytes = std::fs::read(f.path()).unwrap();
            let entries: Vec<understudy::types::Entry> =
                understudy::codec::decode("quarantine", &bytes).unwrap();
            kept.extend(entries);
        }
    }
    // Each quarantined write is one that never committed: the group does
    // not have it.
    let c = g.client().await.unwrap();
    let mut quarantined = 0;
    for e in &kept {
        if let understudy::types::Payload::Command { command, .. } = &e.payload {
            let v: serde_json::Value = serde_cbor::from_slice(command).unwrap();
            let key = v["put"]["key"].as_str().unwrap().to_string();
            let found = read_key(&c, &key).await;
            assert_eq!(found, None, "{key} committed yet quarantined");
            quarantined += 1;
        }
    }
    eprintln!("{lost} frozen writes not in the group, {quarantined} of them kept in quarantine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_cannot_commit_and_a_healed_node_does_not_disturb() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, old, c) =
        with_kv(Group::start(dir.path(), 3, &["--read-timeout-ms", "1000"]).unwrap()).await;
    let direct = g.client_of(old).await.unwrap();
    // A lease read on the leader is served from its own state; a follower
    // refuses one and names the leader.
    direct
        .query_at("kv", get("x"), ReadLevel::Lease)
        .await
        .expect("lease read on a healthy leader");
    let follower = (1..=3).find(|&i| i != old).unwrap();
    let err = g
        .client_of(follower)
        .await
        .unwrap()
        .query_at("kv", get("x"), ReadLevel::Lease)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotLeader));
    g.net.isolate(old);
    // The isolated leader cannot commit: the write is never acknowledged.
    let lonely = tokio::time::timeout(
        Duration::from_secs(2),
        direct.command("kv", put("lonely", "1")),
    )
    .await;
    assert!(
        !matches!(lonely, Ok(Ok(_))),
        "a minority leader acknowledged a write: {lonely:?}"
    );
    // It steps down (check-quorum) and linearizable reads stop there.
    let mut stepped_down = false;
    for _ in 0..40 {
        if term_of(&g, old).await.0 != Role::Leader {
            stepped_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stepped_down, "check-quorum: the cut-off leader steps down");
    let read = direct
        .query_at("kv", get("lonely"), ReadLevel::Linearizable)
        .await;
    assert!(
        read.is_err(),
        "no linearizable read on the minority side: {read:?}"
    );
    let read = direct.query_at("kv", get("lonely"), ReadLevel::Lease).await;
    assert!(read.is_err(), "its lease has run out: {read:?}");
    // The majority elected a new leader and takes writes.
    let others: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    let via = Client::connect_group(others.iter().map(|&i| g.node(i).addr).collect())
        .await
        .unwrap();
    let acked = writes(&via, "maj", 0, 30).await;
    assert_eq!(acked.len(), 30);
    let mut new = None;
    for &i in &others {
        if term_of(&g, i).await.0 == Role::Leader {
            new = Some(i);
        }
    }
    let new = new.expect("a leader on the majority side");
    let (_, new_term) = term_of(&g, new).await;
    // Healed: the old leader rejoins without an election (pre-vote), and its
    // unacknowledged write is gone.
    g.net.heal();
    assert_eq!(g.leader(SETTLE).await.unwrap(), new);
    assert_eq!(
        term_of(&g, new).await.1,
        new_term,
        "no new election on healing"
    );
    let found = read_key(&c, "lonely").await;
    assert_eq!(found, None, "the minority write never committed");
    assert_present(&g, &acked).await;
    g.assert_same_state(SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failovers_and_a_whole_group_restart_lose_no_acknowledged_write() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, _, _) = with_kv(Group::start(dir.path(), 3, &[]).unwrap()).await;
    let mut acked = Vec::new();
    let mut leaders = BTreeSet::new();
    for round in 0..4u64 {
        let leader = g.leader(SETTLE).await.unwrap();
        leaders.insert(leader);
        let c = g.client().await.unwrap();
        acked.extend(writes(&c, &format!("r{round}-"), 0, 40).await);
        g.kill9(leader);
        let c = g.client().await.unwrap();
        acked.extend(writes(&c, &format!("r{round}x-"), 0, 10).await);
        g.restart(leader).unwrap();
    }
    assert!(leaders.len() >= 2, "leadership moved: {leaders:?}");
    assert_eq!(
        acked.len(),
        4 * 50,
        "every write was acknowledged eventually"
    );
    // Whole-group restart.
    for id in 1..=3 {
        g.kill9(id);
    }
    for id in 1..=3 {
        g.restart(id).unwrap();
    }
    g.leader(SETTLE).await.unwrap();
    assert_present(&g, &acked).await;
    g.assert_same_state(SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_promotion_brings_back_writes_after_the_majority_is_lost_for_good() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = with_kv(Group::start(dir.path(), 3, &[]).unwrap()).await;
    let acked = writes(&c, "before", 0, 20).await;
    let survivor = (1..=3).find(|&i| i != leader).unwrap();
    let index = c.status().await.unwrap().commit_index;
    g.converged(index, SETTLE).await.unwrap();
    for id in (1..=3).filter(|&i| i != survivor) {
        g.kill9(id);
    }
    // No majority: nothing commits.
    let direct = g.client_of(survivor).await.unwrap();
    let stuck = tokio::time::timeout(
        Duration::from_secs(1),
        direct.command("kv", put("stuck", "1")),
    )
    .await;
    assert!(!matches!(stuck, Ok(Ok(_))), "{stuck:?}");
    // A forced promotion is refused while the survivor heard from a leader
    // within three election timeouts (at most 900 ms here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The operator decides: the survivor leads alone.
    let addr = g.node(survivor).addr.to_string();
    let id = survivor.to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        understudy_tests::run_cli(&["promote", "--force", "--addr", &addr, &id]).unwrap()
    })
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("promoted by force"), "{out}");
    assert!(
        g.node(survivor).stderr().contains("FORCED PROMOTION"),
        "the decision is logged"
    );
    assert_eq!(g.leader(SETTLE).await.unwrap(), survivor);
    let mut all = acked.clone();
    all.extend(writes(&g.client().await.unwrap(), "after", 0, 10).await);
    assert_eq!(all.len(), 30);
    assert_present(&g, &all).await;
    // A restart keeps the decision (recorded in its data directory).
    g.kill9(survivor);
    g.restart(survivor).unwrap();
    assert_eq!(g.leader(SETTLE).await.unwrap(), survivor);
    assert_present(&g, &all).await;
}

/// Exactly-once client writes across a failover: a counter incremented by
/// tagged writes, the leader killed while they run, every write retried
/// with its own tag until acknowledged. The counter must equal the number
/// of writes — a retry of a write that did commit before the leader died
/// gets its first result, not a second increment.
async fn retried_writes_across_a_failover(flags: &[&str]) {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(dir.path(), 3, flags).unwrap();
    let leader = g.leader(SETTLE).await.unwrap();
    let c = g.client().await.unwrap();
    let w = c
        .deploy("counter", understudy_examples::COUNTER.to_vec())
        .await
        .unwrap();
    assert!(w.outcome.is_ok(), "{:?}", w.outcome);
    const WRITES: i64 = 600;
    // Restarted nodes listen on new ports: the writer reconnects to the
    // current ones and retries with the same tag.
    let addrs = std::sync::Arc::new(std::sync::Mutex::new(g.addrs()));
    let writer = {
        let addrs = addrs.clone();
        let mut c = g.client().await.unwrap().retry_for(Duration::from_secs(2));
        tokio::spawn(async move {
            let add = understudy_tests::cbor(r#"{"add":{"name":"n","by":1}}"#);
            for _ in 0..WRITES {
                let tag = c.next_tag();
                let mut tries = 0;
                loop {
                    match c
                        .command_tagged("counter", add.clone(), tag, WriteConcern::Majority)
                        .await
                    {
                        Ok(w) => {
                            assert!(w.outcome.is_ok(), "{:?}", w.outcome);
                            break;
                        }
                        Err(e) => {
                            tries += 1;
                            assert!(tries < 10, "write never acknowledged: {e}");
                            let now = addrs.lock().unwrap().clone();
                            if let Ok(fresh) = Client::connect_group(now).await {
                                c = fresh.retry_for(Duration::from_secs(2));
                            }
                        }
                    }
                }
            }
        })
    };
    // Three failovers while the writes run: each kill likely catches a
    // write that committed but whose answer was lost.
    let mut leader = leader;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        g.kill9(leader);
        let dead = leader;
        leader = g.leader(SETTLE).await.unwrap();
        g.restart(dead).unwrap();
        *addrs.lock().unwrap() = g.addrs();
    }
    writer.await.unwrap();
    let c = g.client().await.unwrap();
    let (out, _) = c
        .query_at(
            "counter",
            understudy_tests::cbor(r#"{"name":"n"}"#),
            ReadLevel::Linearizable,
        )
        .await
        .unwrap();
    let Outcome::Ok(b) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        decode::<i64>(&b),
        WRITES,
        "every write applied exactly once"
    );
    g.assert_same_state(SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_retried_across_a_failover_are_applied_once() {
    retried_writes_across_a_failover(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_kind_writes_retried_across_a_failover_are_applied_once() {
    retried_writes_across_a_failover(&["--log-kind", "row"]).await
}
