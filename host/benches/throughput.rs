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
use understudy::api::{Request, Response, WriteConcern};
use understudy::node::{ClientCall, Natives, Node, NodeConfig, run_with};
use understudy::sandbox::{CallContext, NativeKv, NativeMachine, Sandbox};
use understudy::types::{ClientTag, Outcome};

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

fn start_node(dir: &std::path::Path, natives: Natives) -> (actix::Addr<Node>, SocketAddr) {
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
            let r = run_with(config, natives).await.expect("node starts");
            let started = (r.node, r.client);
            tx.send(started).unwrap();
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

/// How the clients reach the node.
#[derive(Clone)]
enum Path {
    /// TCP connections through the Rust client (the full network path).
    Tcp(SocketAddr),
    /// Actix messages straight to the node actor (the in-process actor API).
    Actor(actix::Addr<Node>),
}

impl Path {
    fn name(&self) -> &'static str {
        match self {
            Path::Tcp(_) => "tcp",
            Path::Actor(_) => "actor",
        }
    }
}

enum Sender {
    Tcp(Client),
    Actor(actix::Addr<Node>, u64, u64),
}

impl Sender {
    async fn new(path: &Path) -> Sender {
        match path {
            Path::Tcp(addr) => Sender::Tcp(Client::connect(*addr).await.unwrap()),
            Path::Actor(node) => Sender::Actor(node.clone(), rand::random(), 1),
        }
    }

    async fn put(&mut self, command: Vec<u8>) -> Outcome {
        match self {
            Sender::Tcp(client) => client.command("kv", command).await.unwrap().outcome,
            Sender::Actor(node, client_id, seq) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let tag = ClientTag {
                    client_id: *client_id,
                    seq: *seq,
                    acked_below: *seq,
                };
                *seq += 1;
                let request = Request::Command {
                    actor: "kv".into(),
                    command: command.into(),
                    client: Some(tag),
                    concern: WriteConcern::Majority,
                };
                node.do_send(ClientCall {
                    request,
                    reply: tx,
                    by: None,
                    span: tracing::Span::none(),
                });
                match rx.await.unwrap() {
                    Response::Written { outcome, .. } => outcome,
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}

async fn drive(path: Path, clients: usize, secs: f64) -> Figures {
    let mut tasks = Vec::new();
    let start = Instant::now();
    let warmup = Duration::from_millis(500);
    let end = warmup + Duration::from_secs_f64(secs);
    for c in 0..clients {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Sender::new(&path).await;
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < end {
                let cmd = understudy::codec::to_cbor(&serde_json::json!(
                    {"put": {"key": format!("k{c}-{}", i % 1000), "value": format!("v{i}")}}
                ));
                let t = Instant::now();
                let outcome = client.put(cmd).await;
                assert!(outcome.is_ok(), "{outcome:?}");
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

/// The `i`-th command of the apply-cost loops and its entry facts.
fn put_call(i: u64) -> (Vec<u8>, CallContext) {
    let cmd = understudy::codec::to_cbor(
        &serde_json::json!({"put": {"key": format!("k{}", i % 1000), "value": "v"}}),
    );
    let ctx = CallContext {
        index: i + 1,
        term: 1,
        entry: understudy::types::EntryContext {
            timestamp_ms: 0,
            seed: i,
        },
    };
    (cmd, ctx)
}

/// Cost of one `apply` (one kv get + put) in the sandbox over an in-memory
/// view, with no storage: what Wasm itself adds per command.
fn apply_cost(kv_hash: understudy::sandbox::ModuleHash) {
    let n: u64 = env_or("UNDERSTUDY_BENCH_APPLY_CALLS", 20_000);
    let mut sandbox = Sandbox::new(Default::default()).unwrap();
    let component = Sandbox::normalize(understudy_examples::KV).unwrap();
    let wasm = unsafe { sandbox.load(&component, None) }.unwrap();
    sandbox.register_native(kv_hash, Arc::new(NativeKvMachine));
    let native = sandbox.native(&kv_hash).unwrap();
    println!("apply cost (kv put = 1 get + 1 put, in-memory state, {n} calls)");
    for (name, machine) in [("wasm", &wasm), ("native", &native)] {
        let mut view = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
        let start = Instant::now();
        for i in 0..n {
            let (cmd, ctx) = put_call(i);
            let call = sandbox.apply(machine, "kv", view, ctx, &cmd).unwrap();
            assert!(call.outcome.is_ok());
            view = call.view;
        }
        println!(
            "  {name:<7} {:>8.2} µs per apply",
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
    // The same commands on an instance kept for a run of 64 (what the
    // applier does within a log window).
    let mut view = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let start = Instant::now();
    let mut warm = sandbox.warm(&wasm, "kv").unwrap();
    for i in 0..n {
        if i % 64 == 0 {
            warm = sandbox.warm(&wasm, "kv").unwrap();
        }
        let (cmd, ctx) = put_call(i);
        let call = sandbox.apply_warm(&mut warm, view, ctx, &cmd).unwrap();
        assert!(call.outcome.is_ok());
        view = call.view;
    }
    println!(
        "  {:<7} {:>8.2} µs per apply (an instance per run of 64)",
        "wasm",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
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
    apply_cost(kv_hash);
    if std::env::var_os("UNDERSTUDY_BENCH_APPLY_ONLY").is_some() {
        return;
    }
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
        if std::env::var("UNDERSTUDY_BENCH_MODE").is_ok_and(|m| m != name) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let (node, addr) = start_node(dir.path(), natives);
        rt.block_on(async {
            let setup = Client::connect(addr).await.unwrap();
            let w = setup
                .deploy("kv", understudy_examples::KV.to_vec())
                .await
                .unwrap();
            assert!(w.outcome.is_ok(), "{:?}", w.outcome);
        });
        for path in [Path::Tcp(addr), Path::Actor(node.clone())] {
            let f = rt.block_on(drive(path.clone(), clients, secs));
            println!(
                "  {name:<7} {:<6} {:>10.0} commands/s   p50 {:>6} µs   p99 {:>6} µs",
                path.name(),
                f.commands_per_s,
                f.p50_us,
                f.p99_us
            );
            results.push((name, path.name(), f));
        }
        // The node keeps running on its thread; removing its files at the
        // end is fine on Linux (LMDB keeps the open inodes).
        dirs.push(dir);
    }
    for path in ["tcp", "actor"] {
        let find = |n: &str| results.iter().find(|(name, p, _)| *name == n && *p == path);
        if let (Some((_, _, w)), Some((_, _, n))) = (find("wasm"), find("native")) {
            println!(
                "  wasm/native throughput ratio ({path}): {:.2}",
                w.commands_per_s / n.commands_per_s
            );
        }
    }
}
