//! Membership changes with real node processes: a group grows and
//! shrinks under a steady write load, a SIGKILLed member is replaced by a
//! fresh node (which gets a snapshot), the leader is removed, and a
//! removed member restarted with its old member list changes no term of
//! the group. In each, every acknowledged write is present afterwards and
//! the members' state digests agree. Timing: heartbeat 25 ms, election
//! timeout 150–300 ms.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use understudy::api::client::{Client, ClientOptions};
use understudy::api::{MemberAddrs, MembershipChange, ReadLevel, Status, WriteConcern};
use understudy::replication::Role;
use understudy::types::Outcome;
use understudy_tests::{
    Group, NodeProc, decode, kv_get as get, kv_put as put, run_cli_within, with_kv, within,
};

const SETTLE: Duration = Duration::from_secs(30);

/// The group's test timing, for nodes started outside [`Group`].
fn timing() -> Vec<String> {
    ["--heartbeat-ms", "25", "--election-timeout-ms", "150-300"]
        .map(String::from)
        .to_vec()
}

/// Start node `id` outside the group's member list, with `how` (`--join
/// ADDR` or `--await-membership`) and the group's timing.
fn new_node(root: &std::path::Path, id: u64, how: &[&str], extra: &[&str]) -> NodeProc {
    let mut args = timing();
    args.extend(how.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    NodeProc::start_member(&root.join(format!("node{id}")), id, "test", &args)
        .expect("a new node starts")
}

/// A steady write load through a leader-following client: keys `k0`,
/// `k1`, … until [`Load::finish`], which returns the acknowledged ones
/// (a write that fails after the client's retries is not acknowledged).
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    async fn start(g: &Group) -> Load {
        let c = within(10, "a client", g.client()).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let key = format!("k{i}");
                i += 1;
                let tag = c.next_tag();
                // Bounded by the client's request timeout and retry window.
                if let Ok(w) = c
                    .command_tagged("kv", put(&key, "v"), tag, WriteConcern::Majority)
                    .await
                {
                    assert!(w.outcome.is_ok(), "{:?}", w.outcome);
                    acked.push(key);
                }
            }
            acked
        });
        Load { stop, task }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        within(60, "the writer", self.task).await.unwrap()
    }
}

/// The status of the node at `addr`, within 2 s.
async fn status_of(addr: SocketAddr) -> Option<Status> {
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let c = Client::connect_node_with(addr, options).await.ok()?;
    c.request_timeout(Duration::from_secs(2))
        .status()
        .await
        .ok()
}

/// Wait until the leader among `addrs` reports a configuration `done`
/// accepts (not joint); returns that status.
async fn wait_membership(
    addrs: &[SocketAddr],
    what: &str,
    done: impl Fn(&Status) -> bool,
    within: Duration,
) -> Status {
    let deadline = std::time::Instant::now() + within;
    let mut last = Vec::new();
    loop {
        last.clear();
        for &a in addrs {
            if let Some(s) = status_of(a).await {
                if s.role == Role::Leader && !s.membership.is_joint() && done(&s) {
                    return s;
                }
                last.push((
                    s.node_id,
                    s.role,
                    s.membership_index,
                    s.membership.to_string(),
                ));
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not reached within {within:?}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until every node at `addrs` is idle at one applied index with
/// one digest; returns the index.
async fn same_state(addrs: &[SocketAddr], within: Duration) -> u64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut all = Vec::new();
        for &a in addrs {
            if let Some(s) = status_of(a).await {
                all.push(s);
            }
        }
        let first = all.first().map(|s| (s.applied_index, s.digest.clone()));
        if all.len() == addrs.len()
            && all.iter().all(|s| {
                Some((s.applied_index, s.digest.clone())) == first
                    && s.commit_index == s.applied_index
                    && s.last_index == s.applied_index
                    && s.quarantined.is_none()
            })
        {
            return first.expect("some").0;
        }
        let seen: Vec<_> = all
            .iter()
            .map(|s| {
                (
                    s.node_id,
                    s.applied_index,
                    s.commit_index,
                    s.last_index,
                    s.digest.clone(),
                )
            })
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "the members did not settle on one state within {within:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key of `acked` reads back, linearizably, through a client of
/// `addrs` (the members hold one state, so every member holds them).
async fn assert_present(addrs: &[SocketAddr], acked: &[String]) {
    let c = within(10, "a client", Client::connect_group(addrs.to_vec()))
        .await
        .unwrap();
    for key in acked {
        let (out, _) = within(
            10,
            "a read",
            c.query_at("kv", get(key), ReadLevel::Linearizable),
        )
        .await
        .unwrap();
        let Outcome::Ok(b) = out else {
            panic!("{out:?}")
        };
        let v: Option<String> = decode(&b);
        assert!(v.is_some(), "acknowledged write {key} was lost");
    }
}

/// The refusal of `change` (the test fails if it is made).
async fn refused(c: &Client, change: MembershipChange) -> String {
    within(10, "a change", c.change_membership(change))
        .await
        .expect_err("refused")
        .to_string()
}

fn voters(s: &Status) -> BTreeSet<u64> {
    s.membership.voters.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_grows_from_three_to_five_under_load_and_shrinks_back() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, _, c) = with_kv(Group::start(dir.path(), 3, &[]).unwrap()).await;
    let load = Load::start(&g).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Two nodes join through a member each, with empty data directories.
    let through = g.node(2).addr.to_string();
    let n4 = new_node(dir.path(), 4, &["--join", &through], &[]);
    let n5 = new_node(dir.path(), 5, &["--join", &through], &[]);
    let mut all: Vec<SocketAddr> = g.addrs();
    all.extend([n4.addr, n5.addr]);
    let five = wait_membership(
        &all,
        "five voters",
        |s| voters(s) == BTreeSet::from([1, 2, 3, 4, 5]),
        SETTLE,
    )
    .await;
    assert!(five.membership.learners.is_empty(), "{}", five.membership);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Shrink back: remove the two new members (one of them may lead).
    for id in [4, 5] {
        within(
            30,
            "a removal",
            c.change_membership(MembershipChange::Remove { id }),
        )
        .await
        .unwrap_or_else(|e| panic!("removing node {id}: {e}"));
    }
    let three = wait_membership(
        &g.addrs(),
        "three voters",
        |s| voters(s) == BTreeSet::from([1, 2, 3]) && !s.membership.contains(4),
        SETTLE,
    )
    .await;
    let acked = load.finish().await;
    assert!(acked.len() > 50, "writes went on: {}", acked.len());
    same_state(&g.addrs(), SETTLE).await;
    assert_present(&g.addrs(), &acked).await;
    // The removed members serve nothing.
    let removed = within(10, "a client", Client::connect(n4.addr))
        .await
        .unwrap();
    let refused = within(
        10,
        "a read",
        removed.query_at("kv", get("k0"), ReadLevel::Any),
    )
    .await;
    let s4 = status_of(n4.addr).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not a member")),
        "a removed member refuses reads: {refused:?}, its status {s4:?}\n{}\nleader:\n{}",
        n4.stderr(),
        g.nodes
            .values()
            .flatten()
            .map(|n| n.stderr())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    eprintln!(
        "grew to 5 and back to 3 (configuration at index {}); {} writes acknowledged",
        three.membership_index,
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_replaced_by_a_fresh_node_that_gets_a_snapshot() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    // A short log: the new member's entries are compacted away, so it
    // needs a snapshot.
    let extra = ["--log-retain-entries", "20"];
    let (mut g, leader, c) = with_kv(Group::start(dir.path(), 3, &extra).unwrap()).await;
    for i in 0..200 {
        within(10, "a write", c.command("kv", put(&format!("pre{i}"), "v")))
            .await
            .unwrap();
    }
    // The leader compacts its log (every few ticks).
    let leader_addr = g.node(leader).addr;
    let deadline = std::time::Instant::now() + SETTLE;
    while status_of(leader_addr)
        .await
        .is_none_or(|s| s.log_first_index < 100)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never compacted its log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = if leader == 3 { 2 } else { 3 };
    eprintln!("compacted; killing {dead}");
    g.kill9(dead);
    let load = Load::start(&g).await;
    let n4 = new_node(dir.path(), 4, &["--await-membership"], &extra);
    let with = format!("4={},{}", n4.peer_addr.expect("a peer address"), n4.addr);
    let addr = g.node(leader).addr.to_string();
    eprintln!("replacing {dead} with {with}");
    let (ok, out, err) = run_cli_within(
        120,
        &[
            "member",
            "replace",
            &dead.to_string(),
            "--with",
            &with,
            "--addr",
            &addr,
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("replaced voter {dead} with node 4")),
        "{out}"
    );
    let acked = load.finish().await;
    let members: Vec<SocketAddr> = g.addrs().into_iter().chain([n4.addr]).collect();
    same_state(&members, SETTLE).await;
    let s4 = status_of(n4.addr).await.unwrap();
    assert!(
        s4.log_first_index > 1,
        "the new member started from a snapshot (its log starts at {})",
        s4.log_first_index
    );
    let pre: Vec<String> = (0..200).map(|i| format!("pre{i}")).collect();
    assert_present(&members, &pre).await;
    assert_present(&members, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_removed_after_it_hands_over() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = with_kv(Group::start(dir.path(), 3, &[]).unwrap()).await;
    let load = Load::start(&g).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = g.node(leader).addr.to_string();
    let (ok, out, err) = run_cli_within(
        60,
        &["member", "remove", &leader.to_string(), "--addr", &addr],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("node {leader} was removed")), "{out}");
    let others: Vec<SocketAddr> = g
        .nodes
        .iter()
        .filter(|(id, _)| **id != leader)
        .filter_map(|(_, n)| n.as_ref().map(|n| n.addr))
        .collect();
    let after = wait_membership(
        &others,
        "two voters",
        |s| !s.membership.contains(leader),
        SETTLE,
    )
    .await;
    assert_ne!(after.node_id, leader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = load.finish().await;
    same_state(&others, SETTLE).await;
    assert_present(&others, &acked).await;
    // Writes go on without it.
    let c2 = within(10, "a client", Client::connect_group(others.clone()))
        .await
        .unwrap();
    within(10, "a write", c2.command("kv", put("after", "v")))
        .await
        .unwrap();
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_restarted_with_its_old_member_list_changes_no_term() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = with_kv(Group::start(dir.path(), 3, &[]).unwrap()).await;
    let gone = if leader == 3 { 2 } else { 3 };
    // Removed while it is down: its log never hears of it.
    g.kill9(gone);
    within(
        30,
        "a removal",
        c.change_membership(MembershipChange::Remove { id: gone }),
    )
    .await
    .unwrap();
    let load = Load::start(&g).await;
    let others: Vec<SocketAddr> = g.addrs();
    let before =
        wait_membership(&others, "removed", |s| !s.membership.contains(gone), SETTLE).await;
    // It comes back with its old --peer list and its old log.
    g.restart(gone).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = wait_membership(
        &others,
        "still removed",
        |s| !s.membership.contains(gone),
        SETTLE,
    )
    .await;
    assert_eq!(
        (now.node_id, now.term),
        (before.node_id, before.term),
        "the removed member changed the group's term or leader"
    );
    let back = status_of(g.node(gone).addr).await.unwrap();
    assert_ne!(back.role, Role::Leader);
    let acked = load.finish().await;
    assert!(!acked.is_empty());
    same_state(&others, SETTLE).await;
    assert_present(&others, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_changes_are_refused_and_change_nothing() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = with_kv(Group::start(dir.path(), 3, &[]).unwrap()).await;
    let s = wait_membership(
        &g.addrs(),
        "the first configuration",
        |s| s.membership_index > 0,
        SETTLE,
    )
    .await;
    let addrs = |n: u16| MemberAddrs {
        peer: format!("127.0.0.1:{n}"),
        client: format!("127.0.0.1:{}", n + 1),
    };
    // An id in use.
    let e = refused(
        &c,
        MembershipChange::Add {
            id: 2,
            addrs: addrs(9),
            voter: true,
        },
    )
    .await;
    assert!(e.contains("already a member"), "{e}");
    // Promoting a voter, removing a stranger.
    let e = refused(&c, MembershipChange::Promote { id: 2 }).await;
    assert!(e.contains("is not a learner"), "{e}");
    let e = refused(&c, MembershipChange::Remove { id: 9 }).await;
    assert!(e.contains("is not a member"), "{e}");
    // An address over its limit.
    let long = MemberAddrs {
        peer: "x".repeat(understudy::limits::MEMBER_ADDRESS_BYTES_MAX + 1),
        client: "127.0.0.1:1".into(),
    };
    let e = refused(
        &c,
        MembershipChange::Add {
            id: 7,
            addrs: long,
            voter: false,
        },
    )
    .await;
    assert!(e.contains("MEMBER_ADDRESS_BYTES_MAX"), "{e}");
    // A change sent to a follower is redirected: a single-node client of
    // a follower is told who leads.
    let follower = if leader == 1 { 2 } else { 1 };
    let direct = within(10, "a client", g.client_of(follower))
        .await
        .unwrap()
        .retry_for(Duration::ZERO);
    let e = refused(
        &direct,
        MembershipChange::Add {
            id: 8,
            addrs: addrs(20),
            voter: false,
        },
    )
    .await;
    assert!(e.contains("NotLeader"), "{e}");
    // Nothing changed.
    let after = wait_membership(&g.addrs(), "unchanged", |_| true, SETTLE).await;
    assert_eq!(
        after.membership_index, s.membership_index,
        "{}",
        after.membership
    );
    // A change is made once: a learner added, and the same request
    // retried (same tag) is answered with the same configuration.
    let tag = c.next_tag();
    let add = understudy::api::Request::Membership {
        change: MembershipChange::Add {
            id: 6,
            addrs: addrs(30),
            voter: false,
        },
        client: Some(tag),
        joining: None,
    };
    let leader_client = within(10, "a client", g.client_of(after.node_id))
        .await
        .unwrap();
    let first = within(10, "a change", leader_client.call(add.clone()))
        .await
        .unwrap();
    let again = within(10, "a retry", leader_client.call(add))
        .await
        .unwrap();
    assert_eq!(
        first, again,
        "a retried change is answered with its first result"
    );
}

/// A node of another cluster, or one speaking another peer protocol,
/// that asks to join is refused at once and changes nothing; a node
/// started with the wrong `--cluster-id` exits with the group's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_of_another_cluster_or_protocol_is_refused() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start(dir.path(), 3, &[]).unwrap();
    let before = wait_membership(
        &g.addrs(),
        "the first configuration",
        |s| s.membership_index > 0,
        SETTLE,
    )
    .await;
    // Another cluster id, through a member that may not lead (the check
    // is made by whichever node gets the request).
    let through = g.node(2).addr.to_string();
    let mut args = timing();
    args.extend(["--join".to_string(), through]);
    let mut stranger =
        NodeProc::start_member(&dir.path().join("node4"), 4, "another", &args).unwrap();
    let status = stranger
        .exited_within(30)
        .await
        .expect("a node the group refused exits");
    assert!(!status.success());
    let err = stranger.stderr();
    assert!(
        err.contains(r#"belongs to cluster "another", this group is cluster "test""#),
        "{err}"
    );
    // Another peer protocol: what a node of another version sends (this
    // build speaks one), through the client API a joining node uses.
    let c = within(10, "a client", g.client()).await.unwrap();
    let add = MembershipChange::Add {
        id: 5,
        addrs: MemberAddrs {
            peer: "127.0.0.1:9".into(),
            client: "127.0.0.1:10".into(),
        },
        voter: true,
    };
    let other = understudy::api::Joining {
        cluster_id: "test".into(),
        peer_protocol: understudy::peer::PEER_PROTOCOL_VERSION + 1,
    };
    let e = within(10, "a join", c.join(add.clone(), other))
        .await
        .expect_err("refused")
        .to_string();
    assert!(e.contains("speaks peer protocol"), "{e}");
    // Nothing changed.
    let after = wait_membership(&g.addrs(), "unchanged", |_| true, SETTLE).await;
    assert_eq!(after.membership_index, before.membership_index);
    assert_eq!(after.membership, before.membership);
    // The same request from a node of this cluster and protocol is taken
    // (the refusals above were for what the joining node said it is).
    let same = understudy::api::Joining {
        cluster_id: "test".into(),
        peer_protocol: understudy::peer::PEER_PROTOCOL_VERSION,
    };
    within(10, "a join", c.join(add, same)).await.unwrap();
    let added = wait_membership(
        &g.addrs(),
        "node 5 added",
        |s| s.membership.contains(5),
        SETTLE,
    )
    .await;
    assert!(
        added.membership.learners.contains(&5),
        "{}",
        added.membership
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_recovery_is_a_configuration_and_the_group_grows_back_to_three() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = with_kv(Group::start(dir.path(), 3, &[]).unwrap()).await;
    for i in 0..50 {
        within(10, "a write", c.command("kv", put(&format!("pre{i}"), "v")))
            .await
            .unwrap();
    }
    let survivor = if leader == 1 { 2 } else { 1 };
    // Everything the survivor holds (it acknowledged as a follower).
    let held = status_of(g.node(survivor).addr)
        .await
        .unwrap()
        .applied_index;
    // The majority is lost for good.
    for id in [1, 2, 3] {
        if id != survivor {
            g.kill9(id);
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let addr = g.node(survivor).addr.to_string();
    let (ok, out, err) = run_cli_within(
        30,
        &["promote", "--force", &survivor.to_string(), "--addr", &addr],
    )
    .await;
    assert!(ok, "{out}{err}");
    let alone = wait_membership(
        &[g.node(survivor).addr],
        "the forced configuration",
        |s| voters(s) == BTreeSet::from([survivor]) && s.membership_index > held,
        SETTLE,
    )
    .await;
    assert!(
        !g.node(survivor).data_dir.join("FORCED-ALONE").exists() || alone.membership_index > 0,
        "the forced configuration is in the log"
    );
    // It takes writes alone, and grows back to three with fresh nodes.
    let through = g.node(survivor).addr.to_string();
    let solo = within(
        10,
        "a client",
        Client::connect_group(vec![g.node(survivor).addr]),
    )
    .await
    .unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("solo{i}");
        within(10, "a write", solo.command("kv", put(&key, "v")))
            .await
            .unwrap();
        acked.push(key);
    }
    let n4 = new_node(dir.path(), 4, &["--join", &through], &[]);
    let n5 = new_node(dir.path(), 5, &["--join", &through], &[]);
    let members = vec![g.node(survivor).addr, n4.addr, n5.addr];
    wait_membership(
        &members,
        "three voters again",
        |s| voters(s) == BTreeSet::from([survivor, 4, 5]),
        SETTLE,
    )
    .await;
    same_state(&members, SETTLE).await;
    assert_present(&members, &acked).await;
    let pre: Vec<String> = (0..50).map(|i| format!("pre{i}")).collect();
    assert_present(&members, &pre).await;
    // A restart keeps the forced configuration (from the log).
    g.kill9(survivor);
    g.restart(survivor).unwrap();
    let members = vec![g.node(survivor).addr, n4.addr, n5.addr];
    let back = wait_membership(
        &members,
        "three voters after a restart",
        |s| voters(s) == BTreeSet::from([survivor, 4, 5]),
        SETTLE,
    )
    .await;
    assert!(!g.node(survivor).data_dir.join("FORCED-ALONE").exists());
    eprintln!("regrown: {}", back.membership);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_never_catches_up_is_given_up_and_the_configuration_stays() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--catch-up-timeout-ms", "1500"];
    let (g, leader, _) = with_kv(Group::start(dir.path(), 3, &extra).unwrap()).await;
    let before = wait_membership(
        &g.addrs(),
        "the first configuration",
        |s| s.membership_index > 0,
        SETTLE,
    )
    .await;
    let dead = if leader == 3 { 2 } else { 3 };
    // Node 4 is never started: nothing answers at its addresses.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nowhere.local_addr().unwrap().port();
    drop(nowhere);
    let with = format!("4=127.0.0.1:{port},127.0.0.1:{}", port + 1);
    let addr = g.node(leader).addr.to_string();
    let (ok, out, err) = run_cli_within(
        60,
        &[
            "member",
            "replace",
            &dead.to_string(),
            "--with",
            &with,
            "--addr",
            &addr,
        ],
    )
    .await;
    assert!(!ok, "{out}{err}");
    assert!(err.contains("did not catch up"), "{out}{err}");
    let after = wait_membership(
        &g.addrs(),
        "as before",
        |s| !s.membership.contains(4),
        SETTLE,
    )
    .await;
    assert_eq!(voters(&after), voters(&before));
    assert!(after.membership.learners.is_empty(), "{}", after.membership);
}
