//! `understudy`: run nodes and talk to them.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use understudy::api::client::Client;
use understudy::node::{NodeConfig, run};
use understudy::types::Outcome;

const DEFAULT_ADDR: &str = "127.0.0.1:7600";

#[derive(Parser)]
#[command(
    name = "understudy",
    version,
    about = "Replication host for sandboxed WebAssembly state machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local node with the example `kv` machine deployed as actor `kv` (no configuration needed).
    Dev {
        /// Data directory (kept between runs).
        #[arg(long, default_value = ".understudy-dev")]
        data_dir: PathBuf,
        /// Client API address.
        #[arg(long, default_value = DEFAULT_ADDR)]
        listen: SocketAddr,
    },
    /// Run one node from a TOML config file or from flags.
    Node {
        /// TOML file with a NodeConfig (node_id, cluster_id, listen, data_dir, [storage], [limits]).
        #[arg(long, conflicts_with_all = ["id", "cluster", "listen", "data_dir"])]
        config: Option<PathBuf>,
        /// Node id.
        #[arg(long)]
        id: Option<u64>,
        /// Cluster id.
        #[arg(long, default_value = "understudy")]
        cluster: String,
        /// Client API address.
        #[arg(long, default_value = DEFAULT_ADDR)]
        listen: SocketAddr,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Deploy a machine (a component or core module file, or a built-in example) as an actor.
    Deploy {
        /// Node address.
        #[arg(long, default_value = DEFAULT_ADDR)]
        addr: SocketAddr,
        /// Actor name.
        actor: String,
        /// Wasm file to deploy.
        #[arg(required_unless_present = "example")]
        file: Option<PathBuf>,
        /// Deploy a built-in example machine instead: kv, counter, bank.
        #[arg(long, conflicts_with = "file")]
        example: Option<String>,
    },
    /// Send a command (JSON, sent as CBOR) to an actor; prints the response as JSON.
    Send {
        /// Node address.
        #[arg(long, default_value = DEFAULT_ADDR)]
        addr: SocketAddr,
        /// Actor name.
        actor: String,
        /// Command as JSON, e.g. '{"put":{"key":"a","value":"1"}}'.
        json: String,
    },
    /// Query an actor (JSON, sent as CBOR); prints the answer as JSON.
    Query {
        /// Node address.
        #[arg(long, default_value = DEFAULT_ADDR)]
        addr: SocketAddr,
        /// Actor name.
        actor: String,
        /// Query as JSON, e.g. '{"get":{"key":"a"}}'.
        json: String,
    },
    /// Show a node's role, term, indexes, digest and actors.
    Status {
        /// Node address.
        #[arg(long, default_value = DEFAULT_ADDR)]
        addr: SocketAddr,
    },
    /// Offline check of a stopped node's data directory: replay its log into
    /// a scratch state and compare with the stored state.
    Verify {
        /// Data directory of the (stopped) node.
        #[arg(long)]
        data_dir: PathBuf,
        /// Node id it belongs to.
        #[arg(long)]
        id: u64,
        /// Cluster id.
        #[arg(long, default_value = "understudy")]
        cluster: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Dev { data_dir, listen } => {
            run_node(NodeConfig::new(1, "understudy-dev", listen, data_dir), true)
        }
        Command::Node {
            config,
            id,
            cluster,
            listen,
            data_dir,
        } => {
            let config = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
                }
                None => {
                    let id = id.context("--id is required without --config")?;
                    let data_dir = data_dir.context("--data-dir is required without --config")?;
                    NodeConfig::new(id, &cluster, listen, data_dir)
                }
            };
            run_node(config, false)
        }
        Command::Deploy {
            addr,
            actor,
            file,
            example,
        } => {
            let wasm = match (file, example) {
                (Some(path), _) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                (None, Some(name)) => understudy_examples::by_name(&name)
                    .with_context(|| format!("no example named {name:?}; try kv, counter or bank"))?
                    .to_vec(),
                (None, None) => bail!("give a wasm file or --example"),
            };
            client_call(addr, |c| async move {
                let w = c.deploy(&actor, wasm).await?;
                match w.outcome {
                    Outcome::Ok(hash) => {
                        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                        println!("deployed actor {actor} (module {hex}) at index {}", w.index);
                        Ok(())
                    }
                    other => bail!("deploy refused: {}", describe(&other)),
                }
            })
        }
        Command::Send { addr, actor, json } => {
            let command = json_to_cbor(&json)?;
            client_call(addr, |c| async move {
                let w = c.command(&actor, command).await?;
                print_outcome(&w.outcome)?;
                eprintln!("(committed at index {}, term {})", w.index, w.term);
                Ok(())
            })
        }
        Command::Query { addr, actor, json } => {
            let request = json_to_cbor(&json)?;
            client_call(addr, |c| async move {
                let (outcome, applied) = c.query(&actor, request).await?;
                print_outcome(&outcome)?;
                eprintln!("(as of applied index {applied})");
                Ok(())
            })
        }
        Command::Status { addr } => client_call(addr, |c| async move {
            let s = c.status().await?;
            println!("node {} of cluster {:?}", s.node_id, s.cluster_id);
            println!(
                "  role      {:?} (term {}, leader {:?})",
                s.role, s.term, s.leader
            );
            println!(
                "  indexes   last {}  commit {}  applied {}",
                s.last_index, s.commit_index, s.applied_index
            );
            println!("  digest    {}", s.digest);
            println!("  actors    {}", s.actors.join(", "));
            println!("  pending   {} writes", s.pending_writes);
            Ok(())
        }),
        Command::Verify {
            data_dir,
            id,
            cluster,
        } => verify(data_dir, id, &cluster),
    }
}

fn run_node(config: NodeConfig, dev: bool) -> Result<()> {
    let system = actix::System::new();
    system.block_on(async move {
        let (_node, bound) = run(config.clone()).await?;
        // Tests and scripts read this line to learn the bound port.
        println!(
            "understudy node {} listening on {bound}, data in {}",
            config.node_id,
            config.data_dir.display()
        );
        use std::io::Write as _;
        std::io::stdout().flush()?;
        if dev {
            let client = Client::connect(bound).await?;
            let status = client.status().await?;
            if !status.actors.iter().any(|a| a == "kv") {
                let w = client
                    .deploy("kv", understudy_examples::KV.to_vec())
                    .await?;
                anyhow::ensure!(
                    w.outcome.is_ok(),
                    "deploying the kv example failed: {:?}",
                    w.outcome
                );
            }
            println!("actor `kv` (examples/kv) is deployed. In another terminal:");
            println!(
                "  cargo run -q -- send kv '{{\"put\":{{\"key\":\"hello\",\"value\":\"world\"}}}}'"
            );
            println!("  cargo run -q -- query kv '{{\"get\":{{\"key\":\"hello\"}}}}'");
            println!("  cargo run -q -- status");
            println!(
                "Ctrl-C stops the node; the data stays in {}.",
                config.data_dir.display()
            );
        }
        tokio::signal::ctrl_c().await?;
        println!("stopping");
        Ok::<_, anyhow::Error>(())
    })
}

fn client_call<F, Fut>(addr: SocketAddr, f: F) -> Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = Client::connect(addr).await.with_context(|| {
            format!("is a node running at {addr}? (start one with `understudy dev`)")
        })?;
        f(client).await
    })
}

fn json_to_cbor(json: &str) -> Result<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("argument is not valid JSON: {json}"))?;
    Ok(understudy::codec::to_cbor(&value))
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(_) => "ok".into(),
        Outcome::Refused { code, message } => format!("refused ({code}): {message}"),
        Outcome::Trapped { trap } => {
            format!("machine trapped ({trap}); its writes were rolled back")
        }
        Outcome::OutOfFuel => "machine ran out of fuel; its writes were rolled back".into(),
        Outcome::MemoryLimit => "machine hit its memory limit; its writes were rolled back".into(),
        Outcome::NoSuchActor => "no such actor (deploy it first)".into(),
        Outcome::DeployRefused { reason } => format!("deploy refused: {reason}"),
    }
}

fn print_outcome(outcome: &Outcome) -> Result<()> {
    match outcome {
        Outcome::Ok(bytes) => {
            let value: serde_cbor::Value =
                serde_cbor::from_slice(bytes).context("the machine's response is not CBOR")?;
            match serde_json::to_string(&value) {
                Ok(json) => println!("{json}"),
                Err(_) => println!("{value:?}"),
            }
            Ok(())
        }
        other => bail!("{}", describe(other)),
    }
}

fn verify(data_dir: PathBuf, id: u64, cluster: &str) -> Result<()> {
    use understudy::storage;
    let identity = storage::Identity {
        format_version: storage::FORMAT_VERSION,
        cluster_id: cluster.to_string(),
        node_id: id,
    };
    let (_lock, log, state) =
        storage::open(&data_dir, &identity, &storage::StorageOptions::default())?;
    let applied = state.applied()?;
    let scratch = tempfile_dir()?;
    let (replayed, kv) = understudy::node::applier::replay(
        &log,
        applied.index,
        &scratch,
        &identity,
        understudy::sandbox::SandboxLimits::default(),
    )?;
    let _ = std::fs::remove_dir_all(&scratch);
    anyhow::ensure!(
        replayed == applied && kv == state.dump_kv()?,
        "state differs from a replay of the log up to index {}",
        applied.index
    );
    println!(
        "ok: state at applied index {} equals a fresh replay of the log",
        applied.index
    );
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("understudy-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
