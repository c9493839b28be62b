//! Replication benchmark: a 3-node group of real `understudy` processes on
//! this machine (peers talk directly, no proxies), the `kv` machine in Wasm.
//!
//! Prints, from one run:
//! - the physical floor: fdatasync of a 4 KiB append and a loopback TCP
//!   round trip (p50/p99), and the floor of a majority write they imply;
//! - majority-write throughput and p50/p99 latency with 1, 16 and 64
//!   closed-loop clients (each its own connection to the leader), and
//!   with 1 and 64 over TLS on both ports (another group, mutual TLS
//!   between members, client certificates), beside the plaintext figures
//!   (`UNDERSTUDY_BENCH_TLS=0` skips it);
//! - read throughput with 64 clients, all on the leader against spread over
//!   the three nodes, at the `any` and `linearizable` levels;
//! - catch-up speed of a follower that was down while N entries were
//!   written (N = `UNDERSTUDY_BENCH_CATCHUP`, default 1,000,000), until it
//!   has applied everything the leader committed: by replaying the log
//!   (both kinds, the whole log kept) and with the default retention
//!   (statement kind: the log is compacted, a snapshot then the tail);
//! - the ratios the Replication issue sets as the bar, against etcd's
//!   figures from `tests/etcd-compare` when `ETCD_FIGURES` names them
//!   (`tests/etcd-compare/run.sh` runs both).
//!
//! `cargo bench -p understudy --bench replication`; `UNDERSTUDY_BENCH_SECS`
//! sets the length of each measurement (default 3), `UNDERSTUDY_BENCH_NODES`
//! the group size of the first part (default 3; 1 shows what replication
//! adds), `UNDERSTUDY_BENCH_CATCHUP=0` skips the catch-up part and
//! `UNDERSTUDY_BENCH_READS=0` the reads.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use understudy::api::ReadLevel;
use understudy::api::client::{Client, ClientOptions};
use understudy_load::{Run, pct, us};
use understudy_tests::{Group, cbor};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` appends of 4 KiB to a new file at `path`, each followed by
/// fdatasync; their latencies, sorted.
fn fsync_probe(path: std::path::PathBuf, n: usize) -> Vec<Duration> {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![7u8; 4096];
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    times
}

/// fdatasync of a 4 KiB append, p50 and p99.
fn fsync_floor(dir: &std::path::Path) -> (Duration, Duration) {
    let times = fsync_probe(dir.join("fsync-probe"), 500);
    (pct(&times, 0.5), pct(&times, 0.99))
}

/// fdatasync p50 while `k` threads each append 4 KiB and fdatasync their
/// own file at once: the nodes of a group on one machine share one disk.
fn fsync_concurrent(dir: &std::path::Path, k: usize) -> Duration {
    let handles: Vec<_> = (0..k)
        .map(|i| {
            let path = dir.join(format!("fsync-probe-{i}"));
            std::thread::spawn(move || pct(&fsync_probe(path, 300), 0.5))
        })
        .collect();
    let all: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    all.into_iter().max().unwrap_or_default()
}

/// Loopback TCP round trip of a small message, p50 and p99.
async fn rtt_floor() -> (Duration, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 64];
        while s.read_exact(&mut b).await.is_ok() {
            if s.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut b = [0u8; 64];
    let mut times = Vec::new();
    for _ in 0..3000 {
        let t = Instant::now();
        s.write_all(&b).await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    (pct(&times, 0.5), pct(&times, 0.99))
}

/// `clients` closed-loop clients, each on its own connection to one of
/// `targets` (round robin), for `secs`; `op(client, i)` is one operation.
/// The generator is shared with the etcd comparison (`tests/etcd-compare`).
async fn closed_loop<F, Fut>(targets: &[SocketAddr], clients: usize, secs: f64, op: F) -> Run
where
    F: Fn(std::sync::Arc<Client>, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    closed_loop_with(targets, ClientOptions::default(), clients, secs, op).await
}

/// [`closed_loop`] with clients that connect with `options` (TLS).
async fn closed_loop_with<F, Fut>(
    targets: &[SocketAddr],
    options: ClientOptions,
    clients: usize,
    secs: f64,
    op: F,
) -> Run
where
    F: Fn(std::sync::Arc<Client>, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let targets = targets.to_vec();
    understudy_load::closed_loop(
        clients,
        secs,
        |c| {
            let target = targets[c % targets.len()];
            let options = options.clone();
            async move {
                Client::connect_node_with(target, options)
                    .await
                    .expect("connect")
            }
        },
        op,
    )
    .await
}

fn put(key: u64) -> Vec<u8> {
    cbor(&format!(
        r#"{{"put":{{"key":"k{}","value":"{key}"}}}}"#,
        key % 10_000
    ))
}

async fn write_op(c: std::sync::Arc<Client>, i: u64) {
    let w = c.command("kv", put(i)).await.expect("majority write");
    assert!(w.outcome.is_ok());
}

/// Majority writes through the leader at `leader` with 1, 16 and 64
/// clients, printed as a table: (clients, run) each.
async fn write_table(leader: SocketAddr, secs: f64) -> Vec<(usize, Run)> {
    println!(
        "{:>8} {:>12} {:>10} {:>10}",
        "clients", "writes/s", "p50", "p99"
    );
    let mut results = Vec::new();
    for clients in [1usize, 16, 64] {
        let r = closed_loop(&[leader], clients, secs, write_op).await;
        println!(
            "{clients:>8} {:>12.0} {:>10} {:>10}",
            r.ops_per_s,
            us(r.p50),
            us(r.p99)
        );
        results.push((clients, r));
    }
    results
}

/// A group of `n` with the kv example deployed: (group, leader, its address).
async fn start_group(dir: &std::path::Path, n: u64, flags: &[&str]) -> (Group, u64, SocketAddr) {
    start(Group::start_direct(dir, n, flags).unwrap()).await
}

/// [`start_group`] with `g`, once it runs.
async fn start(g: Group) -> (Group, u64, SocketAddr) {
    let (g, leader, c) = understudy_tests::with_kv(g).await;
    // The leader compiled the module before proposing it; followers of the
    // statement kind compile it when they apply it. Measure once every node
    // has (else their compiles share the two cores with the first figure).
    let deployed = tokio::time::timeout(Duration::from_secs(10), c.status())
        .await
        .expect("a status within 10 s")
        .expect("a status")
        .last_index;
    g.converged(deployed, Duration::from_secs(60))
        .await
        .expect("every node applies the deploy");
    let addr = g.node(leader).addr;
    (g, leader, addr)
}

/// Kill a follower, write `n` entries, restart it, and time it from the
/// restart until it has applied everything the leader committed.
async fn catch_up(g: &mut Group, leader: u64, n: u64, kind: &str) -> f64 {
    println!("\n== catch-up of a follower {n} entries behind ({kind}) ==");
    let leader_addr = g.node(leader).addr;
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    g.kill9(victim);
    let t = Instant::now();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let c = std::sync::Arc::new(Client::connect(leader_addr).await.unwrap());
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            loop {
                if written.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= n {
                    break;
                }
                write_op(c.clone(), w << 32 | i).await;
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "wrote {n} entries with one follower down in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let target = Client::connect(leader_addr)
        .await
        .unwrap()
        .status()
        .await
        .unwrap()
        .commit_index;
    g.restart(victim).unwrap();
    let v = g.node(victim).addr;
    let start_status = Client::connect(v).await.unwrap().status().await.unwrap();
    let t = Instant::now();
    let behind = target - start_status.applied_index;
    loop {
        let s = Client::connect(v).await.unwrap().status().await.unwrap();
        if s.applied_index >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t.elapsed().as_secs_f64();
    let rate = behind as f64 / took;
    println!(
        "follower applied {behind} missing entries in {took:.2} s: {rate:.0} entries/s (from restart to caught up)"
    );
    rate
}

/// One durable append of a small entry to a node's log (what a write waits
/// for on each node), p50 and p99: through the journal (`journal_bytes` >
/// 0: one fdatasync) or as an LMDB commit (0: data and meta page flushed).
fn log_append(dir: &std::path::Path, journal_bytes: u64) -> (Duration, Duration) {
    use understudy::storage::{FORMAT_VERSION, Identity, StorageOptions};
    use understudy::types::{Entry, EntryContext, Payload};
    let identity = Identity {
        format_version: FORMAT_VERSION,
        cluster_id: "bench".into(),
        node_id: 1,
    };
    let (_lock, log, _state) = understudy::storage::open(
        &dir.join(format!("log-probe-{journal_bytes}")),
        &identity,
        &StorageOptions {
            journal_bytes,
            ..StorageOptions::default()
        },
    )
    .unwrap();
    let mut times = Vec::new();
    for i in 1..=500u64 {
        let e = Entry {
            index: i,
            term: 1,
            context: EntryContext {
                timestamp_ms: i,
                seed: i,
            },
            payload: Payload::Command {
                actor: "kv".into(),
                client: None,
                command: serde_bytes::ByteBuf::from(vec![7u8; 100]),
                by: None,
            },
        };
        let t = Instant::now();
        log.append(&[e]).unwrap();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    (pct(&times, 0.5), pct(&times, 0.99))
}

/// etcd's figures from `tests/etcd-compare` (file named by `ETCD_FIGURES`):
/// (clients, writes/s, p50 µs, p99 µs) per line.
fn etcd_figures() -> Option<Vec<(usize, f64, f64, f64)>> {
    let text = std::fs::read_to_string(std::env::var("ETCD_FIGURES").ok()?).ok()?;
    let rows: Vec<_> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect();
    (!rows.is_empty()).then_some(rows)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` passes
    // nothing. Only measure when asked to: a test run checks that it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    understudy_tests::use_binary(env!("CARGO_BIN_EXE_understudy"));
    let secs: f64 = env_or("UNDERSTUDY_BENCH_SECS", 3.0);
    let catchup: u64 = env_or("UNDERSTUDY_BENCH_CATCHUP", 1_000_000);
    let (rt, dir) = understudy_tests::bench_setup();
    rt.block_on(async move {
        println!("== floor (this machine) ==");
        let (fs50, fs99) = fsync_floor(dir.path());
        let (rt50, rt99) = rtt_floor().await;
        println!("fdatasync 4 KiB append  p50 {}  p99 {}", us(fs50), us(fs99));
        println!("loopback round trip     p50 {}  p99 {}", us(rt50), us(rt99));
        // Leader fsync in parallel with (round trip + follower fsync).
        let floor = fs50.max(rt50 + fs50);
        println!("majority-write floor    ≈ {} (the issue's formula)", us(floor));
        let fs3 = fsync_concurrent(dir.path(), 3);
        println!(
            "fdatasync p50 with 3 nodes' worth at once on this disk {} (floor with it ≈ {})",
            us(fs3),
            us(fs3 + rt50)
        );
        let (lm50, lm99) = log_append(dir.path(), 0);
        println!(
            "log append as an LMDB commit (data + meta page flushed) p50 {}  p99 {}",
            us(lm50),
            us(lm99)
        );
        let (j50, j99) = log_append(dir.path(), 4 << 20);
        println!(
            "log append through the journal (one fdatasync)          p50 {}  p99 {}",
            us(j50),
            us(j99)
        );

        let retain = (catchup + 100_000).to_string();
        let nodes: u64 = env_or("UNDERSTUDY_BENCH_NODES", 3);
        let (mut g, leader, leader_addr) = start_group(
            &dir.path().join("group"),
            nodes,
            &["--log-retain-entries", &retain],
        )
        .await;

        println!("\n== majority writes (kv put through the leader, fsync on every node) ==");
        let results = write_table(leader_addr, secs).await;

        // The same writes with TLS on both ports (mutual TLS between the
        // members, clients with a certificate), beside the plaintext
        // figures of this run. UNDERSTUDY_BENCH_TLS=0 skips it.
        if env_or("UNDERSTUDY_BENCH_TLS", 1u8) != 0 {
            let (tg, _, tls_leader) =
                start(Group::start_direct_tls(&dir.path().join("tls"), nodes, &[]).unwrap()).await;
            let options = tg.client_options().unwrap();
            println!("\n== majority writes, TLS on both ports, against plaintext (this run) ==");
            println!(
                "{:>8} {:>12} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10}",
                "clients", "TLS w/s", "p50", "p99", "plain w/s", "p50", "p99", "TLS cost"
            );
            for clients in [1usize, 64] {
                let r = closed_loop_with(&[tls_leader], options.clone(), clients, secs, write_op).await;
                let plain = &results.iter().find(|(c, _)| *c == clients).expect("measured").1;
                println!(
                    "{clients:>8} {:>12.0} {:>10} {:>10} {:>12.0} {:>10} {:>10} {:>9.0}%",
                    r.ops_per_s,
                    us(r.p50),
                    us(r.p99),
                    plain.ops_per_s,
                    us(plain.p50),
                    us(plain.p99),
                    100.0 * (1.0 - r.ops_per_s / plain.ops_per_s)
                );
            }
            drop(tg);
        }

        // UNDERSTUDY_BENCH_READS=0: writes only (repeated comparison rounds).
        let reads = if env_or("UNDERSTUDY_BENCH_READS", 1u8) == 0 {
            Vec::new()
        } else {
            println!("\n== reads, 64 clients ==");
            println!("{:>14} {:>14} {:>12} {:>10} {:>10}", "level", "nodes", "reads/s", "p50", "p99");
            vec![("any", ReadLevel::Any), ("linearizable", ReadLevel::Linearizable)]
        };
        let all = g.addrs();
        for (name, level) in reads {
            for (where_, targets) in [("leader only", vec![leader_addr]), ("all 3", all.clone())] {
                let r = closed_loop(&targets, 64, secs, move |c, i| async move {
                    let q = cbor(&format!(r#"{{"get":{{"key":"k{}"}}}}"#, i % 10_000));
                    c.query_at("kv", q, level).await.expect("read");
                })
                .await;
                println!(
                    "{name:>14} {where_:>14} {:>12.0} {:>10} {:>10}",
                    r.ops_per_s,
                    us(r.p50),
                    us(r.p99)
                );
            }
        }

        // UNDERSTUDY_BENCH_CATCHUP=0: no catch-up runs.
        let catchup_rate = if catchup > 0 {
            Some(catch_up(&mut g, leader, catchup, "statement log kind, whole log kept: replay").await)
        } else {
            None
        };
        drop(g);

        // The same with the row log kind: followers apply effects and run
        // no guest code.
        let (mut g, leader, leader_addr) = start_group(
            &dir.path().join("row"),
            3,
            &["--log-retain-entries", &retain, "--log-kind", "row"],
        )
        .await;
        println!("\n== majority writes, row log kind ==");
        let row_results = write_table(leader_addr, secs).await;
        let row_rate = if catchup > 0 {
            Some(catch_up(&mut g, leader, catchup, "row log kind, whole log kept: replay").await)
        } else {
            None
        };

        // What a follower that far behind gets by default: the log beyond
        // the retention bound (100,000 entries) is compacted, so it is
        // rebuilt from a snapshot and then replays the tail.
        let snapshot_rate = if catchup > 0 {
            drop(g);
            let (mut g, leader, _) = start_group(&dir.path().join("snapshot"), 3, &[]).await;
            Some(
                catch_up(
                    &mut g,
                    leader,
                    catchup,
                    "statement log kind, default retention: snapshot + tail",
                )
                .await,
            )
        } else {
            None
        };

        println!("\n== against the bar (Replication issue) ==");
        let etcd = etcd_figures();
        for (kind, results) in [("statement", &results), ("row", &row_results)] {
            let single = &results[0].1;
            println!(
                "{kind}: single-client p50 {} vs floor {}: {:.2}× (bar: ≤ 1.5×); vs the shared-disk floor {}: {:.2}×",
                us(single.p50),
                us(floor),
                single.p50.as_secs_f64() / floor.as_secs_f64(),
                us(fs3 + rt50),
                single.p50.as_secs_f64() / (fs3 + rt50).as_secs_f64()
            );
            match &etcd {
                Some(etcd) => {
                    for (clients, r) in results.iter() {
                        if let Some((_, ops, p50, _)) = etcd.iter().find(|e| e.0 == *clients) {
                            println!(
                                "{kind}: {clients} client(s) {:.0} writes/s, p50 {} against etcd's {ops:.0}/s, p50 {:.0} µs (same generator, this session): {:.2}× the throughput{}",
                                r.ops_per_s,
                                us(r.p50),
                                p50,
                                r.ops_per_s / ops,
                                if *clients == 64 { " (bar: ≥ 2×)" } else { "" }
                            );
                        }
                    }
                }
                None => println!(
                    "{kind}: 64 clients {:.0} writes/s; for the ratio against etcd driven by this same generator, run tests/etcd-compare/run.sh (the issue's 4,084/s for etcd was driven from Python and is client-bound: {:.2}× that)",
                    results[2].1.ops_per_s,
                    results[2].1.ops_per_s / 4084.0
                ),
            }
        }
        if let (Some(statement), Some(row), Some(snapshot)) = (catchup_rate, row_rate, snapshot_rate) {
            println!(
                "catch-up {statement:.0} entries/s statement (replay), {row:.0} entries/s row (replay), {snapshot:.0} entries/s statement with the default retention (snapshot + tail) (bar: ≥ 200,000)"
            );
        }
    });
}
