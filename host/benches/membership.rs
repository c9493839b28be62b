//! `member replace` benchmark: a 3-node group of real processes (default
//! timing) holds a large state; one member is SIGKILLed and replaced by a
//! fresh node with an empty data directory. Measured: the time from the
//! command to a fully redundant group — the new node swapped in as a voter
//! (it caught up: a snapshot of the whole state, then the log; the group
//! keeps 1,000 entries of log) and the dead one out — and until it has
//! applied everything committed by then. Two states: `UNDERSTUDY_BENCH_STATE_MIB` MiB of values
//! (default 1024, in 512 KiB values) and `UNDERSTUDY_BENCH_ENTRIES`
//! entries (default 1,000,000 small writes).
//!
//! `cargo bench -p understudy --bench membership`

use std::time::{Duration, Instant};
use understudy::api::MembershipChange;
use understudy::api::client::Client;
use understudy_tests::{Group, NodeProc, cbor};

/// A short log: the state reaches the new member as a snapshot.
const RETAIN: [&str; 2] = ["--log-retain-entries", "1000"];

/// Concurrent writers while the state is filled.
const WRITERS: usize = 64;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    understudy_tests::use_binary(env!("CARGO_BIN_EXE_understudy"));
    let mib: usize = env("UNDERSTUDY_BENCH_STATE_MIB", 1024);
    let entries: usize = env("UNDERSTUDY_BENCH_ENTRIES", 1_000_000);
    if mib > 0 {
        let value = "x".repeat(512 << 10);
        replace(&format!("{mib} MiB of state"), mib * 2, move |i| {
            cbor(&format!(
                r#"{{"put":{{"key":"big{i}","value":"{value}"}}}}"#
            ))
        });
    }
    if entries > 0 {
        replace(&format!("{entries} entries"), entries, |i| {
            cbor(&format!(r#"{{"put":{{"key":"k{i}","value":"{i}"}}}}"#))
        });
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fill a fresh group with `writes` commands made by `command`, kill a
/// follower, replace it, and print how long the replacement took.
fn replace(what: &str, writes: usize, command: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static) {
    let (rt, dir) = understudy_tests::bench_setup();
    rt.block_on(async move {
        let (mut g, leader, _) =
            understudy_tests::with_kv(Group::start_direct(dir.path(), 3, &RETAIN).unwrap()).await;
        let filled = Instant::now();
        let command = std::sync::Arc::new(command);
        let c = std::sync::Arc::new(g.client().await.unwrap());
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (c, command) = (c.clone(), command.clone());
                tokio::spawn(async move {
                    for i in (w..writes).step_by(WRITERS) {
                        c.command("kv", command(i)).await.expect("a write");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let s = c.status().await.unwrap();
        println!(
            "{what}: filled in {:.1} s (last index {})",
            filled.elapsed().as_secs_f64(),
            s.last_index
        );
        let dead = if leader == 3 { 2 } else { 3 };
        g.kill9(dead);
        let new = NodeProc::start_member(
            &dir.path().join("node4"),
            4,
            "test",
            &std::iter::once("--await-membership")
                .chain(RETAIN)
                .map(String::from)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let started = Instant::now();
        let change = MembershipChange::Replace {
            out: dead,
            id: 4,
            addrs: understudy::api::MemberAddrs {
                peer: new.peer_addr.unwrap().to_string(),
                client: new.addr.to_string(),
            },
        };
        c.change_membership(change)
            .await
            .expect("the replacement starts");
        let leader_addr = g.node(leader).addr;
        let status = Client::connect(leader_addr).await.unwrap();
        loop {
            let s = status.status().await.unwrap();
            let m = &s.membership;
            if m.voters.contains(&4) && !m.contains(dead) && !m.is_joint() {
                break;
            }
            assert!(m.contains(4), "the replacement was given up");
            assert!(
                started.elapsed() < Duration::from_secs(3600),
                "no replacement within an hour"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let swapped = started.elapsed();
        // And until it has applied everything committed when it was
        // swapped in.
        let target = status.status().await.unwrap().commit_index;
        let node4 = Client::connect(new.addr).await.unwrap();
        let n = loop {
            let n = node4.status().await.unwrap();
            if n.applied_index >= target {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "{what}: member replace: swapped in after {:.1} s, applied everything after {:.1} s \
             (node 4 applied {}, its log starts at {}: {})",
            swapped.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            n.applied_index,
            n.log_first_index,
            if n.log_first_index > 1 {
                "it got a snapshot"
            } else {
                "no snapshot"
            }
        );
    });
}
