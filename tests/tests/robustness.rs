//! Nothing a client or a peer sends halts, splits or silently corrupts a
//! group, and every request ends (BRIEF invariants 9–11). Each test runs
//! real node processes and reproduces one case of the Robustness issue;
//! each failed before the change that fixed its case.

use std::time::Duration;
use understudy::api::ErrorCode;
use understudy::api::client::{Client, ClientError};
use understudy::limits::KEY_BYTES_MAX;
use understudy::types::Outcome;
use understudy_tests::{Group, NodeProc, decode, kv_get, kv_put, run_cli_within, with_kv, within};

fn api_code(r: &Result<impl std::fmt::Debug, ClientError>) -> Option<ErrorCode> {
    match r {
        Err(ClientError::Api(e)) => Some(e.code),
        _ => None,
    }
}

/// A 3-node group under `dir` (harness timing plus `flags`) with a leader
/// and the kv example deployed: (group, leader, a leader-following client).
async fn group_with_kv(dir: &std::path::Path, flags: &[&str]) -> (Group, u64, Client) {
    let g = Group::start(dir, 3, flags).unwrap();
    within(60, "a group with kv", with_kv(g)).await
}

/// [`group_with_kv`] plus the `misbehave` example deployed as `mis` and
/// applied on every node.
async fn group_with_mis(dir: &std::path::Path, flags: &[&str]) -> (Group, u64, Client) {
    let (g, leader, c) = group_with_kv(dir, flags).await;
    let w = within(
        60,
        "a deploy",
        c.deploy("mis", understudy_examples::MISBEHAVE.to_vec()),
    )
    .await
    .unwrap();
    assert!(matches!(w.outcome, Outcome::Ok(_)), "{:?}", w.outcome);
    g.converged(w.index, Duration::from_secs(60)).await.unwrap();
    (g, leader, c)
}

/// A writer of its own (a leader-following client) putting keys
/// `{prefix}{n}` one after another for `how_long`: the task ends with the
/// number of writes and the longest one.
async fn timed_writes(
    g: &Group,
    prefix: &str,
    how_long: Duration,
) -> tokio::task::JoinHandle<(u64, Duration)> {
    let c = within(10, "a client", g.client()).await.unwrap();
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (mut n, mut longest) = (0, Duration::ZERO);
        while started.elapsed() < how_long {
            let t = std::time::Instant::now();
            let key = format!("{prefix}{n}");
            let w = within(20, "a write", c.command("kv", kv_put(&key, "v"))).await;
            assert!(w.is_ok(), "{w:?}");
            longest = longest.max(t.elapsed());
            n += 1;
        }
        (n, longest)
    })
}

/// Put `{prefix}0..{prefix}{n-1}` = `value`, each acknowledged; the index
/// of the last.
async fn put_keys(c: &Client, prefix: &str, n: u64, value: &str) -> u64 {
    let mut last = 0;
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let w = within(10, "a write", c.command("kv", kv_put(&key, value)))
            .await
            .unwrap();
        assert!(w.outcome.is_ok(), "{key}: {:?}", w.outcome);
        last = w.index;
    }
    last
}

async fn read_value(c: &Client, key: &str) -> Option<String> {
    let (out, _) = within(10, "a read", c.query("kv", kv_get(key)))
        .await
        .expect("a read");
    match out {
        Outcome::Ok(b) => decode(&b),
        other => panic!("read of {key}: {other:?}"),
    }
}

/// An over-long key used to be answered, then halt every node at the next
/// checkpoint (LMDB keys are at most 511 bytes), again after every restart;
/// a command to the actor "" halted every node at apply. Now the key is a
/// committed refusal, the name is refused at the door, and the group keeps
/// making its state durable across restarts — with either log kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_keys_and_bad_actor_names_never_halt_a_group() {
    understudy_tests::setup!();
    for kind in ["statement", "row"] {
        let dir = tempfile::tempdir().unwrap();
        let (mut g, leader, c) = group_with_kv(dir.path(), &["--log-kind", kind]).await;
        let long = "k".repeat(600);
        let w = within(10, "a write", c.command("kv", kv_put(&long, "v")))
            .await
            .unwrap();
        assert_eq!(
            w.outcome,
            Outcome::Trapped {
                trap: "kv-too-large".into()
            },
            "{kind}"
        );
        let at_limit = "k".repeat(KEY_BYTES_MAX);
        let w = within(10, "a write", c.command("kv", kv_put(&at_limit, "v")))
            .await
            .unwrap();
        assert!(w.outcome.is_ok(), "{kind}: {:?}", w.outcome);
        let past = "k".repeat(KEY_BYTES_MAX + 1);
        let w = within(10, "a write", c.command("kv", kv_put(&past, "v")))
            .await
            .unwrap();
        assert!(!w.outcome.is_ok(), "{kind}");
        for actor in ["", &"a".repeat(65), "Kv", "k v"] {
            let r = within(10, "a write", c.command(actor, kv_put("a", "b"))).await;
            assert_eq!(
                api_code(&r),
                Some(ErrorCode::BadRequest),
                "{actor:?}: {r:?}"
            );
            let r = within(10, "a read", c.query(actor, kv_get("a"))).await;
            assert_eq!(
                api_code(&r),
                Some(ErrorCode::BadRequest),
                "{actor:?}: {r:?}"
            );
        }
        // Past two window ends (checkpoints), then restart a follower and
        // the leader: every node comes back, serves, and agrees.
        for i in 0..140 {
            let w = within(10, "a write", c.command("kv", kv_put("n", &i.to_string())))
                .await
                .unwrap();
            assert!(w.outcome.is_ok());
        }
        let follower = (1..=3).find(|&i| i != leader).unwrap();
        for id in [follower, leader] {
            g.kill9(id);
            g.restart(id).unwrap();
        }
        let c = within(10, "a client", g.client()).await.unwrap();
        let w = within(
            20,
            "a write after restarts",
            c.command("kv", kv_put("n", "last")),
        )
        .await
        .unwrap();
        assert!(w.outcome.is_ok());
        within(
            60,
            "convergence",
            g.converged(w.index, Duration::from_secs(30)),
        )
        .await
        .unwrap();
        g.assert_same_state(Duration::from_secs(30)).await;
        for id in 1..=3 {
            let n = within(10, "a client", g.client_of(id)).await.unwrap();
            assert_eq!(read_value(&n, &at_limit).await.as_deref(), Some("v"));
            assert_eq!(read_value(&n, "n").await.as_deref(), Some("last"));
            assert!(
                !g.node(id).stderr().contains("halted"),
                "node {id} halted: {}",
                g.node(id).stderr()
            );
        }
    }
}

/// `promote --force` on a follower of a healthy group made a second
/// leader that acknowledged writes of its own (a split). Now it is refused
/// with the reason while the node hears a leader or a majority, and allowed
/// once the majority is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_promotion_is_refused_while_the_group_can_still_elect() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = group_with_kv(dir.path(), &[]).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    for id in [follower, leader] {
        let n = within(10, "a client", g.client_of(id)).await.unwrap();
        let r = within(10, "a forced promotion", n.force_promote(id)).await;
        match &r {
            Err(ClientError::Api(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(e.message.contains("refused"), "{}", e.message);
            }
            other => panic!("node {id}: forced promotion not refused: {other:?}"),
        }
    }
    // Also through the CLI, with its reason.
    let addr = g.node(follower).addr.to_string();
    let (ok, _, err) = run_cli_within(
        30,
        &["promote", "--force", "--addr", &addr, &follower.to_string()],
    )
    .await;
    assert!(!ok && err.contains("heard from leader"), "{err}");
    assert_eq!(
        within(30, "a leader", g.leader(Duration::from_secs(20)))
            .await
            .unwrap(),
        leader
    );
    let w = within(10, "a write", c.command("kv", kv_put("a", "1")))
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
    assert!(
        !dir.path()
            .join(format!("node{follower}/FORCED-ALONE"))
            .exists()
    );
    // The majority gone for good: now the operator may go on with one.
    for id in (1..=3).filter(|&i| i != follower) {
        g.kill9(id);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = within(10, "a client", g.client_of(follower)).await.unwrap();
    within(10, "a forced promotion", n.force_promote(follower))
        .await
        .unwrap();
    let n = within(
        10,
        "a client",
        Client::connect_group(vec![g.node(follower).addr]),
    )
    .await
    .unwrap();
    let w = within(20, "a write", n.command("kv", kv_put("a", "2")))
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
}

/// An append whose first entry does not follow its `prev_index` panicked
/// the node actor: the process stayed up and answered `Unavailable` to
/// everything. Now it is refused, logged with its sender, and the node
/// keeps following its leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_append_is_refused_and_the_follower_keeps_serving() {
    use futures::{SinkExt, StreamExt};
    use understudy::peer::{Hello, HelloReply, Lane, PeerMessage};
    use understudy::replication::Message;
    use understudy::types::{Entry, EntryContext, Payload};
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = group_with_kv(dir.path(), &[]).await;
    let target = (1..=3).find(|&i| i != leader).unwrap();
    let status = within(10, "a status", async {
        g.client_of(target).await.unwrap().status().await.unwrap()
    })
    .await;
    let stream = within(
        10,
        "a peer connection",
        tokio::net::TcpStream::connect(g.node(target).peer_addr.unwrap()),
    )
    .await
    .unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, understudy::net::codec());
    let hello = Hello {
        client_address: g.node(leader).addr.to_string(),
        ..understudy_tests::member_hello(leader, target, Lane::Data)
    };
    within(10, "a hello", framed.send(understudy::net::encode(&hello)))
        .await
        .unwrap();
    let reply = within(10, "a hello reply", framed.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        understudy::net::decode::<HelloReply>(&reply).unwrap(),
        HelloReply::Welcome { .. }
    ));
    let at = |index| Entry {
        index,
        term: status.term,
        context: EntryContext {
            timestamp_ms: 0,
            seed: 0,
        },
        payload: Payload::Noop,
    };
    let gap = Message::Append {
        term: status.term,
        prev_index: status.last_index,
        prev_term: status.term,
        entries: vec![at(status.last_index + 5)],
        commit: 0,
    };
    within(
        10,
        "an append",
        framed.send(understudy::net::encode(&PeerMessage::Raft(gap))),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The follower still follows: a write reaches it and it reads it.
    let w = within(10, "a write", c.command("kv", kv_put("after", "yes")))
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
    let n = within(10, "a client", g.client_of(target)).await.unwrap();
    assert_eq!(read_value(&n, "after").await.as_deref(), Some("yes"));
    let log = g.node(target).stderr();
    assert!(log.contains("malformed append refused"), "{log}");
    g.assert_same_state(Duration::from_secs(30)).await;
}

/// One flipped bit in a journal record followed by good ones used to be
/// taken for a torn tail: the node started and dropped the acknowledged
/// entries after it. Now it refuses to start and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_record_before_acknowledged_ones_stops_the_node() {
    use std::os::unix::fs::FileExt;
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    {
        let mut node = NodeProc::start(&data, 1).unwrap();
        let c = within(10, "a client", node.client()).await.unwrap();
        within(30, "a deploy", understudy_tests::deploy_kv(&c)).await;
        for i in 0..10 {
            let w = within(10, "a write", c.command("kv", kv_put("k", &i.to_string())))
                .await
                .unwrap();
            assert!(w.outcome.is_ok());
        }
        node.kill9();
    }
    let journal = data.join("log/journal");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&journal)
        .unwrap();
    let at = understudy::storage::journal::HEADER_BYTES + 3;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x04], at).unwrap();
    match NodeProc::start(&data, 1) {
        Ok(_) => panic!("a node with a damaged acknowledged journal record started"),
        Err(e) => {
            let message = format!("{e:#}");
            assert!(message.contains("journal"), "{message}");
            assert!(message.contains("corrupt"), "{message}");
        }
    }
}

/// A leader cut off from its group used to hold a write it could not
/// commit until the cut healed, with no answer. Now, when it loses its
/// term, it answers the writer (`NotLeader`: the outcome is unknown, retry
/// with the same tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_answers_the_writers_it_holds() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, _c) = group_with_kv(dir.path(), &[]).await;
    let old = within(10, "a client", g.client_of(leader)).await.unwrap();
    g.net.isolate(leader);
    let started = std::time::Instant::now();
    // Well under the node's write timeout (10 s): the step-down answers.
    let r = within(
        8,
        "the cut-off leader's answer",
        old.command("kv", kv_put("cut", "1")),
    )
    .await;
    assert_eq!(api_code(&r), Some(ErrorCode::NotLeader), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    g.net.heal();
    within(30, "a leader", g.leader(Duration::from_secs(20)))
        .await
        .unwrap();
    g.assert_same_state(Duration::from_secs(30)).await;
}

/// `status`, `send` and `query` against a port that accepts and never
/// answers hung for minutes; `status` against a healthy follower printed
/// nothing while the leader was frozen. Now each ends within its timeout,
/// and a frozen member is a row that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_end_within_their_timeout_against_silent_or_frozen_nodes() {
    understudy_tests::setup!();
    // Accepts connections, reads nothing, answers nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < until {
            if let Ok((s, _)) = silent.accept() {
                conns.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    for args in [
        vec!["status"],
        vec!["send", "kv", r#"{"put":{"key":"a","value":"b"}}"#],
        vec!["query", "kv", r#"{"get":{"key":"a"}}"#],
    ] {
        let mut full = args.clone();
        full.extend(["--addr", &silent_addr, "--timeout-ms", "1000"]);
        let (ok, _, err) = run_cli_within(10, &full).await;
        assert!(!ok, "{args:?}");
        assert!(err.contains("no answer"), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, _c) = group_with_kv(dir.path(), &[]).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    g.node(leader).pause();
    let addr = g.node(follower).addr.to_string();
    let (ok, out, err) =
        run_cli_within(15, &["status", "--addr", &addr, "--timeout-ms", "1000"]).await;
    g.node(leader).resume();
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&leader.to_string()) && l.contains("UNREACHABLE")),
        "{out}"
    );
    held.join().unwrap();
}

/// A member restarted on an empty data directory voted as if it had lost
/// nothing: with the leader down and the third member stale, it elected
/// the stale one and acknowledged writes were gone. Now its peers tell it
/// that it lost its data, it does not vote until it has caught up, and the
/// group waits for the member that holds the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_its_data_does_not_vote_until_it_has_caught_up() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = group_with_kv(dir.path(), &[]).await;
    let mut others = (1..=3).filter(|&i| i != leader);
    let (wiped, stale) = (others.next().unwrap(), others.next().unwrap());
    g.node(stale).pause();
    let mut acked = Vec::new();
    let mut last_acked = 0;
    for i in 0..20 {
        let key = format!("w{i}");
        let w = within(10, "a write", c.command("kv", kv_put(&key, "acked")))
            .await
            .unwrap();
        assert!(w.outcome.is_ok());
        acked.push(key);
        last_acked = w.index;
    }
    g.kill9(leader);
    g.kill9(wiped);
    std::fs::remove_dir_all(dir.path().join(format!("node{wiped}"))).unwrap();
    g.restart(wiped).unwrap();
    g.node(stale).resume();
    // Whatever the two elect now would lack acknowledged writes: they
    // must not elect anyone.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut told = false;
    while std::time::Instant::now() < until {
        for s in g.statuses().await {
            assert_ne!(
                s.role,
                understudy::replication::Role::Leader,
                "node {} leads without the acknowledged writes: {s:#?}",
                s.node_id
            );
            if s.node_id == wiped && s.recovering_until.is_some() {
                told = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(told, "the wiped member shows as recovering");
    let addr = g.node(wiped).addr.to_string();
    let (ok, out, err) =
        run_cli_within(15, &["status", "--addr", &addr, "--timeout-ms", "1000"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("RECOVERING"), "{out}");
    // The member that holds them comes back: it leads, and every
    // acknowledged write is there on every node.
    g.restart(leader).unwrap();
    let new = within(30, "a leader", g.leader(Duration::from_secs(20)))
        .await
        .unwrap();
    // The member with the whole log wins first (the others vote only for
    // a log at least as up-to-date); under load leadership may have moved
    // on since, to the stale member once it was caught up. Either way the
    // leader holds every acknowledged write (checked on every node below:
    // a leader elected without them would have overwritten them).
    let s = within(10, "a status", async {
        g.client_of(new).await.unwrap().status().await.unwrap()
    })
    .await;
    assert!(
        new == leader || (new == stale && s.last_index >= last_acked),
        "node {new} leads with its log at {} (acknowledged up to {last_acked})",
        s.last_index
    );
    let c = within(10, "a client", g.client()).await.unwrap();
    let w = within(20, "a write", c.command("kv", kv_put("after", "yes")))
        .await
        .unwrap();
    within(
        60,
        "convergence",
        g.converged(w.index, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    for id in 1..=3 {
        let n = within(10, "a client", g.client_of(id)).await.unwrap();
        for key in &acked {
            assert_eq!(
                read_value(&n, key).await.as_deref(),
                Some("acked"),
                "node {id}, {key}"
            );
        }
    }
    g.assert_same_state(Duration::from_secs(30)).await;
    let s = within(10, "a status", async {
        g.client_of(wiped).await.unwrap().status().await.unwrap()
    })
    .await;
    assert_eq!(s.recovering_until, None, "caught up: it votes again");
}

/// A tmpfs mounted for a test, unmounted (lazily, so a node still holding
/// it cannot leave it behind) when dropped, even if the test fails.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size_mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fill the file system of `dir` until it refuses (ENOSPC).
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

/// A full disk on the leader was an I/O error that halted it while it
/// kept leading (the group could not write), and freeing space did not
/// help until a restart. Now the leader steps down with the reason (disk
/// full, and where), the others elect a leader and take writes, and once
/// space is freed the node resumes by itself and catches up, with nothing
/// acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_leader_is_survived_and_recovered_without_a_restart() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let _mounts: Vec<Tmpfs> = (1..=3)
        .map(|id| Tmpfs::mount(&dir.path().join(format!("node{id}")), 96))
        .collect();
    let (g, leader, c) = group_with_kv(dir.path(), &[]).await;
    let filler = fill(&dir.path().join(format!("node{leader}")));
    let value = "v".repeat(64 << 10);
    let mut acked = Vec::new();
    let mut fault = None;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    // Write until the full disk has shown on the leader and another node
    // leads and has taken writes.
    while std::time::Instant::now() < until {
        let key = format!("k{}", acked.len());
        if let Ok(Ok(w)) = tokio::time::timeout(
            Duration::from_secs(10),
            c.command("kv", kv_put(&key, &value)),
        )
        .await
        {
            assert!(w.outcome.is_ok(), "{:?}", w.outcome);
            acked.push(key);
        }
        if fault.is_none() {
            let s = within(10, "a status", async {
                g.client_of(leader).await.unwrap().status().await.unwrap()
            })
            .await;
            if let Some(why) = s.fault {
                assert_ne!(
                    s.role,
                    understudy::replication::Role::Leader,
                    "it stepped down"
                );
                fault = Some((why, acked.len()));
            }
        }
        if let Some((_, at)) = &fault
            && acked.len() >= at + 5
        {
            break;
        }
    }
    let (why, at) = fault.expect("the leader reports its full disk");
    eprintln!(
        "full disk after {at} writes ({} acknowledged in all): {why}",
        acked.len()
    );
    assert!(
        why.contains("disk full") && why.contains(&format!("node{leader}")),
        "{why}"
    );
    let new = within(30, "a leader", async {
        loop {
            let leaders: Vec<_> = g
                .statuses()
                .await
                .into_iter()
                .filter(|s| s.role == understudy::replication::Role::Leader)
                .map(|s| s.node_id)
                .collect();
            if let [l] = leaders[..] {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_ne!(new, leader);
    // Reads and writes on the full node are refused with the reason.
    let n = within(10, "a client", g.client_of(leader)).await.unwrap();
    let r = within(10, "a read", n.query("kv", kv_get("k0"))).await;
    match r {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert!(e.message.contains("disk full"), "{}", e.message);
        }
        other => panic!("a read on a node with a full disk: {other:?}"),
    }
    // Space comes back: the node resumes and catches up by itself.
    std::fs::remove_file(filler).unwrap();
    let w = within(20, "a write", c.command("kv", kv_put("after", "yes")))
        .await
        .unwrap();
    within(60, "the node recovers", async {
        loop {
            if let Ok(s) = n.status().await
                && s.fault.is_none()
                && s.applied_index >= w.index
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    for id in 1..=3 {
        let n = within(10, "a client", g.client_of(id)).await.unwrap();
        for key in &acked {
            let (out, _) = within(10, "a read", n.query("kv", kv_get(key)))
                .await
                .unwrap();
            assert!(matches!(out, Outcome::Ok(_)), "node {id} {key}: {out:?}");
            let Outcome::Ok(b) = out else { unreachable!() };
            assert_eq!(
                decode::<Option<String>>(&b).as_deref(),
                Some(value.as_str()),
                "node {id} {key}"
            );
        }
    }
    g.assert_same_state(Duration::from_secs(30)).await;
    drop(g);
}

/// A follower restarted on an empty data directory under its id stayed at
/// index 0 for good (the leader believed it still held the log) while
/// `status` showed a lag far below the truth. Now the leader resets its
/// view of it and catches it up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_data_is_caught_up_by_a_healthy_leader() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = group_with_kv(dir.path(), &[]).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    put_keys(&c, "b", 20, "x").await;
    g.kill9(follower);
    std::fs::remove_dir_all(dir.path().join(format!("node{follower}"))).unwrap();
    g.restart(follower).unwrap();
    let last = put_keys(&c, "a", 5, "y").await;
    let n = within(10, "a client", g.client_of(follower)).await.unwrap();
    within(20, "the wiped follower catches up", async {
        loop {
            if let Ok(s) = n.status().await
                && s.applied_index >= last
                && s.recovering_until.is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(read_value(&n, "b0").await.as_deref(), Some("x"));
    assert_eq!(read_value(&n, "a4").await.as_deref(), Some("y"));
    g.assert_same_state(Duration::from_secs(30)).await;
}

/// Deploying a 34 MB file hung the CLI (the frame was over the node's limit
/// and the connection closed under a client still waiting), and a 32 MiB
/// module produced an append over the peer frame limit. Now a module over
/// `MODULE_BYTES_MAX` is refused at once, by the CLI, naming the limit; one
/// just under the frame limit too; the node is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_module_is_refused_at_once_naming_the_limit() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n1"), 1).unwrap();
    let addr = node.addr.to_string();
    for size in [understudy::limits::MODULE_BYTES_MAX + 1, 34 << 20] {
        let file = dir.path().join(format!("big{size}.wasm"));
        std::fs::write(&file, vec![0u8; size]).unwrap();
        let (ok, _, err) = run_cli_within(
            30,
            &["deploy", "--addr", &addr, "big", file.to_str().unwrap()],
        )
        .await;
        assert!(!ok, "{err}");
        assert!(err.contains("MODULE_BYTES_MAX"), "{err}");
    }
    assert!(
        !dir.path().join("n1/quarantine").exists()
            || std::fs::read_dir(dir.path().join("n1/quarantine"))
                .unwrap()
                .next()
                .is_none(),
        "nothing reached the log"
    );
    let c = within(10, "a client", node.client()).await.unwrap();
    let s = within(10, "a status", c.status()).await.unwrap();
    assert_eq!(
        s.last_index, 2,
        "only the leader's no-op and the group's first configuration are in the log"
    );
}

/// A module built to be slow to compile (one 1.6 MB function of
/// register-heavy loops) was committed, then compiled by every node's
/// applier for most of a minute (minutes in a release build of the
/// report), during which no write committed; a new hash did it again. Now
/// it is refused at the door by a linear pass naming
/// `FUNCTION_BODY_BYTES_MAX`, and the group never stops writing; a module
/// of the same code split into functions under the limit compiles in
/// seconds and is refused (it is no machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_built_to_be_slow_to_compile_never_stalls_the_group() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, _, c) = group_with_kv(dir.path(), &[]).await;
    let writer = timed_writes(&g, "w", Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one_big = understudy_tests::slow_to_compile_component(1, 160_000);
    let r = within(20, "a deploy", c.deploy("slow", one_big)).await;
    assert_eq!(api_code(&r), Some(ErrorCode::TooLarge), "{r:?}");
    assert!(
        format!("{r:?}").contains("FUNCTION_BODY_BYTES_MAX"),
        "{r:?}"
    );
    let (writes, longest_gap) = within(60, "the writer", writer).await.unwrap();
    assert!(
        longest_gap < Duration::from_secs(5),
        "writes stalled for {longest_gap:?} ({writes} writes in 8 s)"
    );
    // The same code in functions under the limit compiles in seconds —
    // on the leader, before anything is proposed — and is refused as no
    // machine: nothing reached the log.
    let before = within(10, "a status", c.status()).await.unwrap();
    let split = understudy_tests::slow_to_compile_component(40, 10_000);
    let r = within(60, "a deploy", c.deploy("split", split)).await;
    assert_eq!(api_code(&r), Some(ErrorCode::BadRequest), "{r:?}");
    assert!(format!("{r:?}").contains("not a valid machine"), "{r:?}");
    let s = within(10, "a status", c.status()).await.unwrap();
    // Nothing but a new leader's no-op (one per term: an election on a
    // loaded machine while the module compiles) joined the log.
    assert!(
        s.last_index - before.last_index <= s.term - before.term,
        "the refused module never reached the log: {} entries more in {} new terms",
        s.last_index - before.last_index,
        s.term - before.term
    );
    assert!(!s.actors.contains(&"slow".to_string()));
}

/// The leader compiles a deploy before it proposes it, on a thread of its
/// own, within `module_compile_timeout_ms`: past it the deploy is refused
/// naming the setting and nothing reaches the log; while that compile
/// still runs another deploy is `Overloaded`; writes commit all along; a
/// module that compiles in time is deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_compiling_past_its_budget_is_refused_and_writes_go_on() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    // kv compiles in about 0.5 s here alone, up to 1.5 s and more while
    // the followers compile it alongside on the same two cores and other
    // tests run; 64 functions just under FUNCTION_BODY_BYTES_MAX of the
    // slow code take 5 s and more.
    // Slower failure detection than the harness's: the test needs one
    // leader from the slow deploy to the next (seen in CI under load: an
    // election in between sent the second deploy to a leader whose compile
    // slot was free).
    let flags = [
        "--module-compile-timeout-ms",
        "3000",
        "--heartbeat-ms",
        "100",
        "--election-timeout-ms",
        "1500-3000",
    ];
    let (g, _, c) = group_with_kv(dir.path(), &flags).await;
    let slow = understudy_tests::slow_to_compile_component(64, 13_000);
    assert!(slow.len() <= understudy::limits::MODULE_BYTES_MAX);
    let writer = timed_writes(&g, "c", Duration::from_secs(4)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = within(10, "a status", c.status()).await.unwrap();
    let started = std::time::Instant::now();
    let r = within(30, "a deploy", c.deploy("slow", slow)).await;
    assert_eq!(api_code(&r), Some(ErrorCode::TooLarge), "{r:?}");
    assert!(
        format!("{r:?}").contains("module_compile_timeout_ms"),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The compile goes on (it cannot be interrupted), and holds the one
    // compile slot.
    let again = within(
        10,
        "a deploy",
        c.deploy("kv2", understudy_examples::KV.to_vec()),
    )
    .await;
    assert_eq!(api_code(&again), Some(ErrorCode::Overloaded), "{again:?}");
    let (writes, longest) = within(60, "the writer", writer).await.unwrap();
    assert!(
        longest < Duration::from_secs(3),
        "writes stalled for {longest:?} ({writes} in 4 s) while a module compiled"
    );
    // Once the slot is free, a module that compiles in time is deployed.
    let mut deployed = None;
    for _ in 0..120 {
        let r = within(
            30,
            "a deploy",
            c.deploy("kv2", understudy_examples::KV.to_vec()),
        )
        .await;
        if api_code(&r) != Some(ErrorCode::Overloaded) {
            deployed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let w = deployed
        .expect("the compile slot frees within 30 s")
        .unwrap();
    assert!(matches!(w.outcome, Outcome::Ok(_)), "{:?}", w.outcome);
    // Every node applied it (a status shows what its node has applied).
    let all = within(
        60,
        "convergence",
        g.converged(w.index, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let after = all[0].clone();
    assert!(after.actors.contains(&"kv2".to_string()));
    assert!(!after.actors.contains(&"slow".to_string()));
    assert!(after.last_index > before.last_index);
}

/// Four connections sending queries that run out of fuel starved writes
/// (2 in 15 s, against 75 in 8 s without them): queries ran on the
/// applier thread, and every write's apply queued behind all of them. Now
/// queries run on threads of their own over read snapshots (the applier
/// only takes the snapshot), so a write waits for no query; they share
/// the cores only. (In between, one query at a time on the applier: 35
/// writes, the slowest about 2.7 query runs.)
/// The queries go to the leader, whose applier the writes need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_that_exhaust_their_fuel_do_not_starve_writes() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, _) = group_with_mis(dir.path(), &[]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loopers = Vec::new();
    for _ in 0..4 {
        let q = within(10, "a client of the leader", g.client_of(leader))
            .await
            .unwrap();
        let stop = stop.clone();
        loopers.push(tokio::spawn(async move {
            let (mut n, mut ran) = (0u32, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                let r = within(
                    60,
                    "a query",
                    q.query("mis", understudy_tests::cbor(r#""loop""#)),
                )
                .await;
                match r {
                    Ok((Outcome::OutOfFuel, _)) => {
                        n += 1;
                        ran += t.elapsed();
                    }
                    Err(ClientError::Api(e)) if e.code == ErrorCode::Overloaded => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    other => panic!("a looping query: {other:?}"),
                }
            }
            (n, ran)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writer = timed_writes(&g, "q", Duration::from_secs(8)).await;
    let (writes, longest) = within(60, "the writer", writer).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut queries, mut waited) = (0, Duration::ZERO);
    for l in loopers {
        let (n, ran) = within(120, "a looper", l).await.unwrap();
        queries += n;
        waited += ran;
    }
    assert!(queries > 0, "the queries ran");
    // Four loopers keep about four queries at the node: a query's answer
    // takes about four runs; one run is about a quarter of it.
    let one_run = waited / queries / 4;
    eprintln!(
        "{writes} writes (slowest {longest:?}) and {queries} fuel-exhausting queries (one run \
         about {one_run:?}) in 8 s"
    );
    // No write waits behind a query run (with one query at a time on the
    // applier the slowest waited about 2.7 runs; with all of them, 2.4 s).
    // Ratios of one run, not timings: the margin is for sharing the cores.
    let bound = one_run + Duration::from_millis(300);
    assert!(
        writes >= 10 && longest < bound,
        "writes starved: {writes} in 8 s, the slowest {longest:?} (bound {bound:?})"
    );
}

/// One connection's queries wait on their node at most
/// `QUERIES_PER_CONNECTION_MAX` (8) at a time; the rest are not read until
/// one is answered. So a client pipelining 24 fuel-exhausting queries
/// cannot queue them all ahead of another client's query: that one waits
/// for at most about 8 of them (without the bound, for all 24). Ratios of
/// one query run, measured here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_queue_its_queries_ahead_of_everyone_elses() {
    use understudy::node::server::QUERIES_PER_CONNECTION_MAX;
    const PIPELINED: usize = 24;
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, _) = group_with_mis(dir.path(), &["--read-timeout-ms", "120000"]).await;
    let greedy = std::sync::Arc::new(
        within(10, "a client", g.client_of(leader))
            .await
            .unwrap()
            .request_timeout(Duration::from_secs(120)),
    );
    let started = std::time::Instant::now();
    let pipelined: Vec<_> = (0..PIPELINED)
        .map(|_| {
            let greedy = greedy.clone();
            tokio::spawn(async move {
                let r = within(
                    150,
                    "a pipelined query",
                    greedy.query("mis", understudy_tests::cbor(r#""loop""#)),
                )
                .await;
                assert!(matches!(r, Ok((Outcome::OutOfFuel, _))), "{r:?}");
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = within(10, "a client", g.client_of(leader))
        .await
        .unwrap()
        .request_timeout(Duration::from_secs(120));
    let asked = std::time::Instant::now();
    let r = within(
        150,
        "the other query",
        other.query("mis", understudy_tests::cbor(r#""loop""#)),
    )
    .await;
    assert!(matches!(r, Ok((Outcome::OutOfFuel, _))), "{r:?}");
    let waited = asked.elapsed();
    for p in pipelined {
        within(150, "a pipelined query", p).await.unwrap();
    }
    let one_run = started.elapsed() / (PIPELINED as u32 + 1);
    eprintln!(
        "the other client's query took {waited:?}, one run about {one_run:?} \
         ({PIPELINED} pipelined on one connection)"
    );
    let bound = one_run * (QUERIES_PER_CONNECTION_MAX as u32 + 6);
    assert!(
        waited < bound,
        "the other query waited {waited:?}, behind more than {QUERIES_PER_CONNECTION_MAX} \
         of one connection's (bound {bound:?})"
    );
}

/// One flipped byte in a stored value was served at `linearizable` (only
/// `verify` noticed). Now every machine-state value is stored with a
/// checksum of its key and value: the damaged node refuses the read naming
/// the damage, halts (applies and serves nothing more, steps down, does
/// not campaign), and the group keeps serving the right value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_damaged_at_rest_is_never_served() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (mut g, leader, c) = group_with_kv(dir.path(), &[]).await;
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let marker = "DAMAGE-ME-0123456789abcdef";
    let w = within(10, "a write", c.command("kv", kv_put("precious", marker))).await;
    assert!(w.is_ok(), "{w:?}");
    // Past two run windows, so the value is checkpointed on every node.
    for i in 0..200 {
        let w = within(
            10,
            "a write",
            c.command("kv", kv_put(&format!("f{i}"), "v")),
        )
        .await;
        assert!(w.is_ok(), "{w:?}");
    }
    let state = g.node(victim).data_dir.join("state").join("data.mdb");
    let mut found = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let bytes = std::fs::read(&state).unwrap();
        found = bytes
            .windows(marker.len())
            .filter(|w| *w == marker.as_bytes())
            .count();
        if found > 0 {
            break;
        }
    }
    assert!(found > 0, "the value reached the victim's state file");
    g.kill9(victim);
    // Flip one byte of every copy of the value (LMDB may keep old pages).
    let mut bytes = std::fs::read(&state).unwrap();
    let mut at = 0;
    while let Some(i) = bytes[at..]
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
    {
        bytes[at + i + 3] ^= 0x01;
        at += i + marker.len();
    }
    std::fs::write(&state, &bytes).unwrap();
    g.restart(victim).unwrap();
    let direct = within(20, "a client of the victim", async {
        loop {
            if let Ok(c) = g.client_of(victim).await {
                break c.retry_for(Duration::ZERO);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let r = within(
        30,
        "a read of the damaged value",
        direct.query("kv", kv_get("precious")),
    )
    .await;
    match &r {
        Ok((Outcome::Ok(b), _)) => {
            let v: Option<String> = decode(b);
            panic!("the damaged node served {v:?}");
        }
        Err(e) => assert!(format!("{e}").contains("corrupt"), "{e}"),
        other => panic!("{other:?}"),
    }
    // It serves nothing more and says why; the group writes on and
    // serves the value as written.
    let w = within(10, "a write", c.command("kv", kv_put("after", "v"))).await;
    assert!(w.is_ok(), "{w:?}");
    let s = within(10, "a status", direct.status()).await.unwrap();
    assert!(
        s.quarantined
            .as_deref()
            .is_some_and(|q| q.contains("corrupt")),
        "{:?}",
        s.quarantined
    );
    assert_ne!(s.role, understudy::replication::Role::Leader);
    let r = within(10, "a read", direct.query("kv", kv_get("f1"))).await;
    assert!(r.is_err(), "a halted node serves no read: {r:?}");
    assert_eq!(read_value(&c, "precious").await.as_deref(), Some(marker));
}

/// A snapshot from a member that is not the node's leader was installed:
/// an old leader's, still on its way after an election, would roll back
/// entries the node had acknowledged to the new one (and a forged one
/// replaced its state). Now the node installs snapshots only from the
/// leader it follows, and refuses others naming the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_a_member_that_is_not_the_leader_is_refused() {
    understudy_tests::setup!();
    use understudy::storage::{FORMAT_VERSION, Identity, StateBatch, StateStore, StorageOptions};
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = group_with_kv(dir.path(), &[]).await;
    let mut others = (1..=3).filter(|&i| i != leader);
    let (victim, other) = (others.next().unwrap(), others.next().unwrap());
    let w = within(10, "a write", c.command("kv", kv_put("k", "real"))).await;
    assert!(w.is_ok(), "{w:?}");
    // A state far ahead of the group's, with no actors, as a snapshot.
    let forged = dir.path().join("forged");
    let identity = Identity {
        format_version: FORMAT_VERSION,
        cluster_id: "test".into(),
        node_id: other,
    };
    let state =
        StateStore::open(&forged.join("state"), &identity, &StorageOptions::default()).unwrap();
    let mut batch = StateBatch::default();
    batch.kv.insert(
        understudy::storage::actor_key("kv", b"k"),
        Some(b"forged".to_vec()),
    );
    batch.applied_index = 1_024; // a window end
    state.commit(&batch).unwrap();
    let snap = forged.join("snapshot");
    std::fs::create_dir_all(&snap).unwrap();
    let meta = state
        .write_snapshot(&snap, 1 << 20, |_| Some((1, 0, None)))
        .unwrap();
    let victim_peer = g
        .node(victim)
        .peer_addr
        .expect("a peer address")
        .to_string();
    let timing = understudy::node::Timing {
        heartbeat_interval_ms: 25,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
    };
    let sent = within(
        30,
        "a snapshot offer",
        understudy::peer::snapshot::send_snapshot(
            &victim_peer,
            "test",
            other,
            victim,
            &g.node(other).addr.to_string(),
            understudy::node::LogKind::Statement,
            timing,
            None,
            &snap,
            &meta,
        ),
    )
    .await;
    let err = sent.expect_err("the snapshot is refused").to_string();
    assert!(err.contains("not this node's leader"), "{err}");
    let direct = within(10, "a client", g.client_of(victim)).await.unwrap();
    let s = within(10, "a status", direct.status()).await.unwrap();
    assert!(s.applied_index < 1_024, "installed: {s:?}");
    let w = within(10, "a write", c.command("kv", kv_put("k2", "v")))
        .await
        .unwrap();
    // The victim applies on (it may still have been compiling the module
    // when it was asked first: a status shows what its node has applied).
    let all = within(
        60,
        "convergence",
        g.converged(w.index, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let s = all.iter().find(|s| s.node_id == victim).unwrap();
    assert!(s.actors.contains(&"kv".to_string()), "{:?}", s.actors);
}

/// About 20,000 idle connections exhausted a node's file descriptors
/// (`accept failed: Too many open files`): its connection limit (4096)
/// was above what its open-file limit allowed, so accept, the log's files
/// and snapshots could all fail with EMFILE. Now a node raises its soft
/// limit to the hard one and shares what `FDS_RESERVED` leaves among its
/// client connections: here, with an open-file limit of 1024, a flood of
/// idle connections to the leader is refused at the door with a frame
/// naming the limit, a client connected before keeps writing, nothing
/// fails with EMFILE, and once the flood closes new clients get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_is_refused_at_the_door_and_the_group_keeps_serving() {
    use understudy::node::server::{DescriptorBudget, FDS_RESERVED};
    const OPEN_FILES: u64 = 1024;
    const FLOOD: usize = 1100;
    understudy_tests::setup!();
    // This process holds the flood: its own soft limit goes up to its hard one.
    let ours = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        ours > FLOOD as u64 + 256,
        "this test needs {FLOOD} descriptors more"
    );
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start_limited(dir.path(), 3, &[], Some(OPEN_FILES)).unwrap();
    let (g, leader, c) = within(60, "a group with kv", with_kv(g)).await;
    put_keys(&c, "before", 5, "v").await;
    let budget = DescriptorBudget::from_limit(OPEN_FILES).unwrap();
    assert_eq!(budget.connections, OPEN_FILES - FDS_RESERVED);
    let addr = g.node(leader).addr;
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let s = within(5, "a connection", tokio::net::TcpStream::connect(addr))
            .await
            .unwrap();
        flood.push(s);
    }
    // Refused connections get one frame and are closed; accepted ones
    // hear nothing.
    let reads = flood.into_iter().map(|mut s| {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
            (read.is_ok(), String::from_utf8_lossy(&buf).into_owned(), s)
        })
    });
    let mut refused = 0;
    let mut held = Vec::new();
    for r in futures::future::join_all(reads).await {
        let (closed, text, s) = r.unwrap();
        if closed {
            assert!(
                text.contains("open-file limit (1024)") && text.contains("FDS_RESERVED"),
                "a refusal names the limit: {text:?}"
            );
            refused += 1;
        } else {
            held.push(s);
        }
    }
    let admitted = held.len() as u64;
    assert!(
        admitted <= budget.connections && refused >= FLOOD - budget.connections as usize,
        "{admitted} admitted, {refused} refused of {FLOOD} (budget {})",
        budget.connections
    );
    // The group keeps serving through the leader, over the connection
    // made before the flood.
    put_keys(&c, "during", 20, "v").await;
    assert_eq!(read_value(&c, "during19").await.as_deref(), Some("v"));
    let log = g.node(leader).stderr();
    assert!(
        !log.contains("Too many open files"),
        "nothing failed for want of descriptors:\n{log}"
    );
    drop(held);
    // Once the flood is gone, new clients get in.
    let fresh = within(10, "a client after the flood", async {
        loop {
            if let Ok(c) = g.client_of(leader).await
                && c.status().await.is_ok()
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(within(10, "a status", fresh.status()).await.is_ok());
    g.assert_same_state(Duration::from_secs(20)).await;
}

/// Twenty connections that each announced a 32 MiB frame and sent it
/// slowly held a node's memory with no timeout. Now the read buffer grows
/// only with what arrived, and a frame that does not arrive whole within
/// `frame_read_timeout_ms` (here 3 s) gets a `BadFrame` naming it and its
/// connection is closed; writes go on meanwhile. The node's resident memory
/// is printed (allocator-dependent: not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_of_huge_frames_are_cut_off_and_writes_go_on() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const SENDERS: usize = 20;
    const SENT_BYTES: usize = 4 << 20;
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = group_with_kv(dir.path(), &["--frame-read-timeout-ms", "3000"]).await;
    put_keys(&c, "before", 5, "v").await;
    let node = g.node(leader);
    let baseline = node.rss_bytes().unwrap_or(0);
    let addr = node.addr;
    let writes = timed_writes(&g, "during", Duration::from_secs(6)).await;
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            tokio::spawn(within(60, "a slow sender", async move {
                let mut s = within(5, "a connection", tokio::net::TcpStream::connect(addr))
                    .await
                    .unwrap();
                let announced = understudy::net::FRAME_BYTES_MAX as u32;
                s.write_all(&announced.to_be_bytes()).await.unwrap();
                // 4 MiB at once, then a trickle that never ends the frame.
                let chunk = vec![0xA5u8; 64 << 10];
                for _ in 0..SENT_BYTES / chunk.len() {
                    s.write_all(&chunk).await.unwrap();
                }
                let started = std::time::Instant::now();
                let mut answer = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // The node closes the connection after its refusal.
                    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                        Err(_) => {
                            assert!(
                                started.elapsed() < Duration::from_secs(20),
                                "a slow frame was never cut off"
                            );
                            if s.write_all(&[0u8; 16]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                String::from_utf8_lossy(&answer).into_owned()
            }))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peak = g.node(leader).rss_bytes().unwrap_or(0);
    for s in within(90, "the slow senders", futures::future::join_all(senders)).await {
        let answer = s.unwrap();
        assert!(
            answer.contains("frame_read_timeout_ms = 3000"),
            "the slow sender is told why: {answer:?}"
        );
    }
    let after = g.node(leader).rss_bytes().unwrap_or(0);
    let (n, _) = within(30, "the writer", writes).await.unwrap();
    assert!(n > 0, "writes went on");
    println!(
        "leader RSS: {} MiB before, {} MiB with {SENDERS} slow frames of {} MiB sent, {} MiB after; {n} writes meanwhile",
        baseline >> 20,
        peak >> 20,
        SENT_BYTES >> 20,
        after >> 20
    );
    put_keys(&c, "after", 5, "v").await;
    g.assert_same_state(Duration::from_secs(20)).await;
}

/// A connection that sends nothing is closed after `idle_timeout_ms` (here
/// 1 s; not before), while one that keeps asking stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_its_timeout_and_a_busy_one_is_not() {
    use tokio::io::AsyncReadExt as _;
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--idle-timeout-ms".to_string(), "1000".to_string()];
    let node = NodeProc::start_member(&dir.path().join("n1"), 1, "test", &flags).unwrap();
    let busy = within(10, "a client", node.client()).await.unwrap();
    // Taken before connecting: the node's clock for this connection
    // starts when it accepts it, which is after this instant, while the
    // moment this task resumes after the connect may come well after it
    // on a loaded machine (this test once saw the close "early" that way).
    let opened = std::time::Instant::now();
    let mut idle = within(5, "a connection", tokio::net::TcpStream::connect(node.addr))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = within(10, "the idle connection's end", idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(0)), "closed without a frame: {read:?}");
    assert!(
        opened.elapsed() >= Duration::from_millis(1000),
        "not before its timeout"
    );
    // The busy client asked nothing yet either: it was closed too. A new
    // one that asks every 300 ms for 2.5 s keeps its connection.
    drop(busy);
    let busy = within(10, "a client", node.client()).await.unwrap();
    for _ in 0..8 {
        within(10, "a status", busy.status()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A follower compiled a deployed module only when it applied the entry,
/// after the leader had compiled it before proposing: its applier stalled
/// for a whole compile (its reads and its applied index waited). Now the
/// leader sends the followers the module when it starts compiling; they
/// compile alongside, and apply the entry with its artifact ready. Over
/// three deploys, the first follower to apply each one is behind the
/// leader's answer by less than half of what the deploys took (before: by
/// about a whole compile). Ratios of this run's deploys, not timings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_compile_a_deployed_module_alongside_the_leader() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = group_with_kv(dir.path(), &[]).await;
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let mut clients = Vec::new();
    for &f in &followers {
        clients.push(within(10, "a client", g.client_of(f)).await.unwrap());
    }
    let (mut deploying, mut behind) = (Duration::ZERO, Duration::ZERO);
    for (name, module) in [
        ("counter", understudy_examples::COUNTER),
        ("bank", understudy_examples::BANK),
        ("mis", understudy_examples::MISBEHAVE),
    ] {
        let asked = std::time::Instant::now();
        let w = within(60, "a deploy", c.deploy(name, module.to_vec()))
            .await
            .unwrap();
        assert!(matches!(w.outcome, Outcome::Ok(_)), "{:?}", w.outcome);
        let answered = std::time::Instant::now();
        deploying += answered - asked;
        // The first follower to have applied it.
        let first = within(60, "a follower applies the deploy", async {
            loop {
                for f in &clients {
                    if let Ok(s) = f.status().await
                        && s.applied_index >= w.index
                    {
                        return std::time::Instant::now();
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        behind += first - answered;
    }
    eprintln!(
        "3 deploys took {deploying:?}; the first follower applied them {behind:?} later in all"
    );
    assert!(
        behind < deploying / 2,
        "followers applied the deploys {behind:?} after they were answered (the deploys took {deploying:?})"
    );
    g.assert_same_state(Duration::from_secs(30)).await;
}

/// The property test through the real node (Robustness, build 2): random
/// requests — actor names of every kind (empty, upper case, one past the
/// length limit, spaces, non-ASCII), kv commands and queries with keys and
/// values at and one past their limits, garbage commands, and garbage,
/// truncated or damaged modules — sent to a real 3-node group. Every one
/// is answered (an outcome, a refusal or an error code; never a timeout or
/// a broken connection), no node halts or is quarantined, every node ends
/// in the same state, and every acknowledged put reads back.
/// `UNDERSTUDY_PROP_SEED=<n>` replays a run (the seed is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_through_a_real_group_never_halt_a_node() {
    use rand::{Rng as _, SeedableRng as _};
    use understudy::limits::{ACTOR_NAME_MAX_BYTES, VALUE_BYTES_MAX};
    const OPS: usize = 150;
    understudy_tests::setup!();
    let seed: u64 = std::env::var("UNDERSTUDY_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("UNDERSTUDY_PROP_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (g, _, c) = group_with_kv(dir.path(), &[]).await;
    let names = [
        "kv".to_string(),
        String::new(),
        "KV".into(),
        "kv ".into(),
        "ünï".into(),
        "nobody".into(),
        "a".repeat(ACTOR_NAME_MAX_BYTES),
        "a".repeat(ACTOR_NAME_MAX_BYTES + 1),
    ];
    let key_lengths = [
        1,
        2,
        KEY_BYTES_MAX - 1,
        KEY_BYTES_MAX,
        KEY_BYTES_MAX + 1,
        1000,
    ];
    let value_lengths = [0, 1, 100, VALUE_BYTES_MAX - 64, VALUE_BYTES_MAX + 1];
    let mut acknowledged = std::collections::BTreeMap::new();
    for op in 0..OPS {
        let actor = if rng.random_bool(0.6) {
            "kv".to_string()
        } else {
            names[rng.random_range(0..names.len())].clone()
        };
        let key: String = {
            let n = key_lengths[rng.random_range(0..key_lengths.len())];
            let c = (b'a' + rng.random_range(0..26u8)) as char;
            format!("{op}-{}", c.to_string().repeat(n.saturating_sub(4).max(1)))
        };
        let what = rng.random_range(0..10);
        let answered = match what {
            0..=4 => {
                // A put; its value mostly small, sometimes at or past the limit.
                let n = if rng.random_bool(0.85) {
                    rng.random_range(0..64)
                } else {
                    value_lengths[rng.random_range(0..value_lengths.len())]
                };
                let value = "v".repeat(n);
                let r = within(60, "a put", c.command(&actor, kv_put(&key, &value))).await;
                if let Ok(w) = &r
                    && actor == "kv"
                    && w.outcome.is_ok()
                {
                    acknowledged.insert(key.clone(), value);
                }
                format!("{:?}", r.map(|w| w.outcome))
            }
            5..=6 => {
                let r = within(60, "a get", c.query(&actor, kv_get(&key))).await;
                format!("{:?}", r.map(|(o, _)| o))
            }
            7 => {
                // Garbage in place of a command.
                let n = rng.random_range(0..256);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                let r = within(60, "a garbage command", c.command(&actor, bytes)).await;
                format!("{:?}", r.map(|w| w.outcome))
            }
            _ => {
                // A module: garbage, truncated, or with a damaged byte.
                let kv = understudy_examples::KV.to_vec();
                let module = match rng.random_range(0..3) {
                    0 => (0..rng.random_range(0..4096))
                        .map(|_| rng.random())
                        .collect(),
                    1 => kv[..rng.random_range(0..kv.len())].to_vec(),
                    _ => {
                        let mut m = kv;
                        let i = rng.random_range(0..m.len());
                        m[i] ^= 1 << rng.random_range(0..8);
                        m
                    }
                };
                let name = format!("m{op}");
                let r = within(120, "a deploy", c.deploy(&name, module)).await;
                format!("{:?}", r.map(|w| w.outcome))
            }
        };
        assert!(
            !answered.contains("Timeout") && !answered.contains("Connection"),
            "op {op} ({what}) to {actor:?} was not answered (seed {seed}): {answered}"
        );
    }
    for s in g.statuses().await {
        assert_eq!(s.quarantined, None, "node {} (seed {seed})", s.node_id);
    }
    g.assert_same_state(Duration::from_secs(60)).await;
    for (key, value) in &acknowledged {
        assert_eq!(
            read_value(&c, key).await.as_deref(),
            Some(value.as_str()),
            "{key} (seed {seed})"
        );
    }
    eprintln!(
        "{OPS} random requests, {} puts acknowledged and read back",
        acknowledged.len()
    );
}
