//! Single-node durable throughput: the `kv` example machine through Wasm
//! against a native Rust implementation of the same machine, on the same
//! node pipeline (TCP API, group-committed LMDB log with fsync, batched
//! apply with its own fsync), with N concurrent clients each sending one
//! `put` at a time. Prints commands/s, p50/p99 latency and the ratio.
//!
//! `cargo bench -p understudy --bench throughput`
//! Settings: UNDERSTUDY_BENCH_SECS (default 5), UNDERSTUDY_BENCH_CLIENTS (64).

use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use understudy::api::client::Client;
use understudy::node::{Natives, NodeConfig, run_with};
use understudy::sandbox::{CallContext, NativeKv, NativeMachine, Sandbox};

/// The `kv` example's commands (same serde shape as `examples/kv`).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Command {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Query {
    Get { key: String },
}

/// The `kv` example machine, natively.
struct NativeKvMachine;

fn get(kv: &mut NativeKv<'_>, key: &str) -> Result<Option<String>, (String, String)> {
    let raw = kv
        .get(key.as_bytes())
        .map_err(|e| ("host".to_string(), e.to_string()))?;
    raw.map(|b| serde_cbor::from_slice(&b).map_err(|e| ("decode".to_string(), e.to_string())))
        .transpose()
}

fn put(kv: &mut NativeKv<'_>, key: &str, value: &str) -> Result<(), (String, String)> {
    let bytes = serde_cbor::to_vec(&value).expect("encode");
    kv.put(key.as_bytes(), &bytes)
        .map_err(|e| ("host".to_string(), e.to_string()))
}

impl NativeMachine for NativeKvMachine {
    fn apply(
        &self,
        kv: &mut NativeKv<'_>,
        _ctx: CallContext,
        command: &[u8],
    ) -> Result<Vec<u8>, (String, String)> {
        let command: Command = serde_cbor::from_slice(command)
            .map_err(|e| ("bad-request".to_string(), e.to_string()))?;
        let old = match command {
            Command::Put { key, value } => {
                let old = get(kv, &key)?;
                put(kv, &key, &value)?;
                old
            }
            Command::Delete { key } => {
                let old = get(kv, &key)?;
                kv.delete(key.as_bytes())
                    .map_err(|e| ("host".to_string(), e.to_string()))?;
                old
            }
            Command::Cas { key, expected, new } => {
                let current = get(kv, &key)?;
                if current != expected {
                    return Err(("cas-mismatch".into(), format!("{key} is {current:?}")));
                }
                put(kv, &key, &new)?;
                current
            }
        };
        Ok(serde_cbor::to_vec(&old).expect("encode"))
    }

    fn query(&self, kv: &mut NativeKv<'_>, request: &[u8]) -> Result<Vec<u8>, (String, String)> {
        let Query::Get { key } = serde_cbor::from_slice(request)
            .map_err(|e| ("bad-request".to_string(), e.to_string()))?;
        Ok(serde_cbor::to_vec(&get(kv, &key)?).expect("encode"))
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_node(dir: &std::path::Path, natives: Natives) -> SocketAddr {
    let config = NodeConfig::new(
        1,
        "bench",
        "127.0.0.1:0".parse().unwrap(),
        dir.to_path_buf(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let system = actix::System::new();
        system.block_on(async move {
            let (_node, addr) = run_with(config, natives).await.expect("node starts");
            tx.send(addr).unwrap();
            futures::future::pending::<()>().await;
        });
    });
    rx.recv().expect("node address")
}

struct Figures {
    commands_per_s: f64,
    p50_us: u128,
    p99_us: u128,
}

async fn drive(addr: SocketAddr, clients: usize, secs: f64) -> Figures {
    let setup = Client::connect(addr).await.unwrap();
    let w = setup
        .deploy("kv", understudy_examples::KV.to_vec())
        .await
        .unwrap();
    assert!(w.outcome.is_ok(), "{:?}", w.outcome);
    let mut tasks = Vec::new();
    let start = Instant::now();
    let warmup = Duration::from_millis(500);
    let end = warmup + Duration::from_secs_f64(secs);
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(addr).await.unwrap();
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < end {
                let cmd = understudy::codec::to_cbor(&serde_json::json!(
                    {"put": {"key": format!("k{c}-{}", i % 1000), "value": format!("v{i}")}}
                ));
                let t = Instant::now();
                let res = client.command("kv", cmd).await.unwrap();
                assert!(res.outcome.is_ok(), "{:?}", res.outcome);
                if start.elapsed() > warmup {
                    latencies.push(t.elapsed().as_micros());
                }
                i += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Figures {
        commands_per_s: all.len() as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing.
    // Only measure when asked to: a test run just checks that it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: f64 = env_or("UNDERSTUDY_BENCH_SECS", 5.0);
    let clients: usize = env_or("UNDERSTUDY_BENCH_CLIENTS", 64);
    let kv_hash = Sandbox::hash(&Sandbox::normalize(understudy_examples::KV).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "single-node durable put throughput, {clients} clients, {secs} s each (group commit, fsync on)"
    );
    let mut results = Vec::new();
    let mut dirs = Vec::new();
    for (name, natives) in [
        ("wasm", Natives::new()),
        (
            "native",
            vec![(kv_hash, Arc::new(NativeKvMachine) as Arc<dyn NativeMachine>)],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let addr = start_node(dir.path(), natives);
        let f = rt.block_on(drive(addr, clients, secs));
        println!(
            "  {name:<7} {:>10.0} commands/s   p50 {:>6} µs   p99 {:>6} µs",
            f.commands_per_s, f.p50_us, f.p99_us
        );
        results.push(f);
        // The node keeps running on its thread; removing its files at the
        // end is fine on Linux (LMDB keeps the open inodes).
        dirs.push(dir);
    }
    println!(
        "  wasm/native throughput ratio: {:.2}",
        results[0].commands_per_s / results[1].commands_per_s
    );
}
