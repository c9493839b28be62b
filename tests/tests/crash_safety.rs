//! Crash safety: SIGKILL a node at random points of a stream of acknowledged
//! writes, many rounds; after each restart every acknowledged write is
//! present exactly once, and at the end the stored state equals a fresh
//! replay of the log (`understudy verify`).
//!
//! Exactly-once is checked through counters: writer `w` only ever adds 1 to
//! counter `w{w}`, one write in flight at a time, each with its own client
//! tag. A write whose answer was lost in the crash is retried after the
//! restart with the same tag. So the final value of each counter must equal
//! the number of tags its writer used: less means an acknowledged write was
//! lost, more means one was applied twice.
//!
//! `UNDERSTUDY_CRASH_ROUNDS` (default 12) and `UNDERSTUDY_CRASH_SEED` make a
//! longer or a replayed run.

use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use understudy::api::WriteConcern;
use understudy::api::client::Client;
use understudy::types::{ClientTag, Outcome};
use understudy_tests::{NodeProc, cbor, decode, run_cli};

const WRITERS: usize = 8;

fn add_one(writer: usize) -> Vec<u8> {
    cbor(&format!(r#"{{"add":{{"name":"w{writer}","by":1}}}}"#))
}

#[derive(Default)]
struct Ledger {
    /// Tags used per writer (each must end up applied exactly once).
    tags_used: [u64; WRITERS],
    /// Highest acknowledged counter value per writer.
    acked_value: [i64; WRITERS],
    /// Writes whose answer was lost in a crash: retried after the restart.
    unresolved: Vec<(usize, ClientTag)>,
}

fn value_of(outcome: &Outcome) -> i64 {
    match outcome {
        Outcome::Ok(b) => decode(b),
        other => panic!("counter add failed: {other:?}"),
    }
}

async fn writer(w: usize, client: Client, ledger: Arc<Mutex<Ledger>>) {
    loop {
        let tag = client.next_tag();
        ledger.lock().await.tags_used[w] += 1;
        match client
            .command_tagged("counter", add_one(w), tag, WriteConcern::Majority)
            .await
        {
            Ok(res) => {
                let v = value_of(&res.outcome);
                let mut l = ledger.lock().await;
                // One write in flight per writer: answers count up by one.
                assert_eq!(
                    v,
                    l.acked_value[w] + 1,
                    "writer {w}: acknowledged values are consecutive"
                );
                l.acked_value[w] = v;
            }
            Err(_) => {
                ledger.lock().await.unresolved.push((w, tag));
                return;
            }
        }
    }
}

/// Retry, with their original tags, the writes whose answers were lost,
/// then check every counter equals the writes its writer sent.
async fn resolve_and_check(node: &NodeProc, ledger: &Arc<Mutex<Ledger>>, round: usize, seed: u64) {
    let retry = node.client().await.unwrap();
    let unresolved = std::mem::take(&mut ledger.lock().await.unresolved);
    for (w, tag) in unresolved {
        let res = retry
            .command_tagged("counter", add_one(w), tag, WriteConcern::Majority)
            .await
            .unwrap();
        let mut l = ledger.lock().await;
        l.acked_value[w] = l.acked_value[w].max(value_of(&res.outcome));
    }
    // Everything acknowledged so far is there, exactly once.
    for w in 0..WRITERS {
        let (out, _) = retry
            .query("counter", cbor(&format!(r#"{{"name":"w{w}"}}"#)))
            .await
            .unwrap();
        let l = ledger.lock().await;
        assert_eq!(
            value_of(&out),
            l.tags_used[w] as i64,
            "round {round}, writer {w}: counter must equal the writes sent (seed {seed})"
        );
        assert!(value_of(&out) >= l.acked_value[w]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_exactly_once() {
    understudy_tests::setup!();
    let rounds: usize = std::env::var("UNDERSTUDY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("UNDERSTUDY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test: {rounds} rounds, UNDERSTUDY_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n1");
    let mut node = NodeProc::start(&path, 1).unwrap();
    let c = node.client().await.unwrap();
    assert!(
        c.deploy("counter", understudy_examples::COUNTER.to_vec())
            .await
            .unwrap()
            .outcome
            .is_ok()
    );
    drop(c);
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    for round in 0..rounds {
        resolve_and_check(&node, &ledger, round, seed).await;

        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let client = node.client().await.unwrap();
            tasks.push(tokio::spawn(writer(w, client, ledger.clone())));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..400))).await;
        node.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        node = NodeProc::start(&path, 1)
            .unwrap_or_else(|e| panic!("restart after round {round}: {e} (seed {seed})"));
    }

    resolve_and_check(&node, &ledger, rounds, seed).await;
    let total: u64 = ledger.lock().await.tags_used.iter().sum();
    println!("crash test: {total} writes over {rounds} crashes");
    node.kill9();
    let (ok, out, err) = run_cli(&[
        "verify",
        "--data-dir",
        path.to_str().unwrap(),
        "--id",
        "1",
        "--cluster",
        "test",
    ])
    .unwrap();
    assert!(
        ok,
        "state must equal a replay of the log: {out}{err} (seed {seed})"
    );
}
