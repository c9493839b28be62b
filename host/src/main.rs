//! `understudy`: run nodes and talk to them.
//!
//! One file for the command tree and its handlers (over 800 lines): each
//! handler is a few lines that parse, call the client or start a node, and
//! print; split, they would be the same code behind more imports.

mod cli_backup;
mod cli_bench;
mod cli_member;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use understudy::api::client::{Client, ClientOptions};
use understudy::api::{ReadLevel, Status, WriteConcern};
use understudy::node::{LogKind, NodeConfig, PeerConfig, run};
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
    /// How long a client command waits for one answer from a node (ms);
    /// past it the command fails with a timeout error. `send` and
    /// `promote` may try several nodes within this bound to find the
    /// leader. `status` waits this long for each member, in parallel.
    #[arg(long, global = true, default_value_t = 15_000)]
    timeout_ms: u64,
    /// How long a client command waits to connect to a node (ms).
    #[arg(long, global = true, default_value_t = 3_000)]
    connect_timeout_ms: u64,
    /// Connect with TLS, trusting the CA in this PEM file (the one that
    /// signed the nodes' certificates).
    #[arg(long, global = true, env = "UNDERSTUDY_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) to present, naming a user
    /// (`understudy certs --user NAME`); needs --ca and --key.
    #[arg(long, global = true, env = "UNDERSTUDY_CERT", requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "UNDERSTUDY_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Authenticate with this token (`understudy auth token create`).
    #[arg(long, global = true, env = "UNDERSTUDY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log lines as `text` (colours only on a terminal) or `json` (one
    /// object per line, with the request's id and client address on the
    /// lines of a request).
    #[arg(long, global = true, env = "UNDERSTUDY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// What printing commands print: `text` for people, `json` for
    /// programs (one JSON document per result).
    #[arg(long, global = true, env = "UNDERSTUDY_OUTPUT", default_value = "text", value_parser = ["text", "json"])]
    output: String,
    /// What to log: a level (`error`, `warn`, `info`, `debug`, `trace`)
    /// or a filter (`understudy=debug,info`); default RUST_LOG, else info.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

/// How this CLI run reaches nodes (`--timeout-ms`, `--connect-timeout-ms`,
/// `--ca`, `--cert`, `--key`).
#[derive(Clone)]
struct Reaching {
    request: std::time::Duration,
    options: ClientOptions,
}

static REACHING: std::sync::OnceLock<Reaching> = std::sync::OnceLock::new();

/// `--output json`.
static JSON_OUTPUT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether printing commands print JSON (`--output json`).
fn json_output() -> bool {
    JSON_OUTPUT.get().copied().unwrap_or(false)
}

/// Print a result: `json` with `--output json`, else what `text` prints.
fn emit(json: impl FnOnce() -> serde_json::Value, text: impl FnOnce()) {
    if json_output() {
        println!("{}", json());
    } else {
        text();
    }
}

/// The one error for an actor the group does not have, from every command.
fn no_such_actor(actor: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no actor named {actor:?} in this group (deploy one: understudy deploy {actor} FILE)"
    )
}

/// A client error as the CLI says it (an unknown actor the same way
/// whether the node refused it at the door or the log's apply did).
fn said(actor: &str, e: understudy::api::client::ClientError) -> anyhow::Error {
    match e.code() {
        Some(understudy::api::ErrorCode::NoSuchActor) => no_such_actor(actor),
        _ => e.into(),
    }
}

fn reaching() -> Reaching {
    REACHING
        .get_or_init(|| Reaching {
            request: std::time::Duration::from_millis(15_000),
            options: ClientOptions::default(),
        })
        .clone()
}

/// A client of exactly the node at `addr`, as this run reaches nodes.
async fn connect_node(addr: SocketAddr) -> Result<Client, understudy::api::client::ClientError> {
    let r = reaching();
    Ok(Client::connect_node_with(addr, r.options)
        .await?
        .request_timeout(r.request))
}

// Parsed once per run: the size of its largest variant (`node`'s flags)
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start a local group (3 nodes in this process) with the example `kv` machine deployed as actor `kv` (no configuration needed).
    Dev {
        /// Data directory (kept between runs); node N uses <data-dir>/nodeN.
        #[arg(long, default_value = ".understudy-dev")]
        data_dir: PathBuf,
        /// Client API address of node 1; node N listens on the next ports
        /// (port 0: any free ports).
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        listen: SocketAddr,
        /// Group size.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// TLS on every port: certificates for the group and an `admin`
        /// client certificate are made in <data-dir>/tls (once), and the
        /// commands printed to try the group use them.
        #[arg(long)]
        tls: bool,
    },
    /// Make a CA and certificates for a group in a directory (the CA is made once and reused): one node certificate per member, one client certificate per user.
    Certs {
        /// Directory for the files (ca.pem, ca-key.pem, node-N.pem,
        /// node-N-key.pem, user-NAME.pem, user-NAME-key.pem).
        #[arg(long)]
        out: PathBuf,
        /// Node certificates for members 1..=N (0: none).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Host names or IP addresses the nodes are reached at (every
        /// node certificate names them all); repeat per host.
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
        /// A client certificate for this user; repeat per user.
        #[arg(long = "user")]
        users: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Run one node from a TOML config file or from flags.
    Node {
        /// TOML file with a NodeConfig (node_id, cluster_id, listen, data_dir, peer_listen, [[peers]], [timing], [storage], [limits]).
        #[arg(long, conflicts_with_all = ["id", "cluster", "listen", "data_dir", "peer_listen", "http_listen", "peer", "heartbeat_ms", "election_timeout_ms", "read_timeout_ms", "write_timeout_ms", "module_compile_timeout_ms", "frame_read_timeout_ms", "idle_timeout_ms", "log_retain_entries", "snapshot_chunk_bytes", "log_kind", "tls_cert", "tls_key", "peer_ca", "client_ca", "insecure", "join", "await_membership", "catch_up_timeout_ms", "advertise_client", "advertise_peer"])]
        config: Option<PathBuf>,
        /// Node id (config: node_id).
        #[arg(long, visible_alias = "node-id")]
        id: Option<u64>,
        /// Cluster id (config: cluster_id).
        #[arg(long, visible_alias = "cluster-id", default_value = "understudy")]
        cluster: String,
        /// Client API address.
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        listen: SocketAddr,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address other members connect to.
        #[arg(long)]
        peer_listen: Option<SocketAddr>,
        /// Address of the HTTP/JSON API (same TLS and auth as --listen).
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Another member, as ID=HOST:PORT (its peer address), optionally
        /// ,CLIENT-HOST:PORT (where it serves clients, for leader hints);
        /// repeat per member.
        #[arg(long, value_parser = parse_peer)]
        peer: Vec<PeerConfig>,
        /// Leader heartbeat interval (ms; config: timing.heartbeat_interval_ms).
        #[arg(long, visible_alias = "heartbeat-interval-ms")]
        heartbeat_ms: Option<u64>,
        /// Election timeout range (ms), as MIN-MAX.
        #[arg(long, value_parser = parse_range)]
        election_timeout_ms: Option<(u64, u64)>,
        /// How long a read may wait for a leader or to catch up (ms).
        #[arg(long)]
        read_timeout_ms: Option<u64>,
        /// How long a write may wait for its outcome before it is answered
        /// `Timeout` (ms).
        #[arg(long)]
        write_timeout_ms: Option<u64>,
        /// How long the leader may compile a deployed module before it
        /// refuses it (ms).
        #[arg(long)]
        module_compile_timeout_ms: Option<u64>,
        /// How long a client's frame may take to arrive, first byte to
        /// last, before the connection is closed (ms).
        #[arg(long)]
        frame_read_timeout_ms: Option<u64>,
        /// How long an idle client connection stays open (ms).
        #[arg(long)]
        idle_timeout_ms: Option<u64>,
        /// Applied entries kept in the log before the prefix is compacted
        /// (config: compaction.retain_entries).
        #[arg(long, visible_alias = "retain-entries")]
        log_retain_entries: Option<u64>,
        /// Bytes per snapshot chunk.
        #[arg(long)]
        snapshot_chunk_bytes: Option<usize>,
        /// Replication-log kind: `statement` (every node runs the machine)
        /// or `row` (the leader runs it and logs the effects).
        #[arg(long, value_parser = parse_log_kind)]
        log_kind: Option<LogKind>,
        /// TLS on both ports: this node's certificate (PEM, naming it;
        /// `understudy certs`). Needs --tls-key and --peer-ca.
        #[arg(long, requires_all = ["tls_key", "peer_ca"])]
        tls_cert: Option<PathBuf>,
        /// Private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// CA that signs the members' certificates.
        #[arg(long, requires = "tls_cert")]
        peer_ca: Option<PathBuf>,
        /// CA that signs client certificates (default: --peer-ca).
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// Allow listening on non-loopback addresses without TLS (logged
        /// at every start). Only on a network you trust.
        #[arg(long)]
        insecure: bool,
        /// Join a running group through any member's client address
        /// (instead of --peer): the node starts with an empty data
        /// directory, is added as a learner, catches up and is promoted.
        #[arg(long, conflicts_with = "peer", requires = "peer_listen")]
        join: Option<String>,
        /// How long a replacement (`member replace`) may take to catch up
        /// before the leader removes it again (ms; default 30 minutes).
        #[arg(long)]
        catch_up_timeout_ms: Option<u64>,
        /// Start with no member list and wait to be added by an operator
        /// (`member add`, or `member replace` for a dead member).
        #[arg(long, conflicts_with_all = ["peer", "join"], requires = "peer_listen")]
        await_membership: bool,
        /// The client address to announce (HOST:PORT; a name others can
        /// resolve, e.g. a pod's DNS name) when it differs from --listen.
        #[arg(long)]
        advertise_client: Option<String>,
        /// The peer address to announce when it differs from --peer-listen.
        #[arg(long)]
        advertise_peer: Option<String>,
        /// Check the configuration (flags or --config) and print it as
        /// TOML, without starting the node.
        #[arg(long)]
        check: bool,
    },
    /// Deploy a machine (a component or core module file, or a built-in example) as an actor.
    Deploy {
        /// Node address.
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        /// Actor name.
        actor: String,
        /// Wasm file to deploy.
        #[arg(required_unless_present = "example")]
        file: Option<PathBuf>,
        /// Deploy a built-in example machine instead: kv, counter, bank.
        #[arg(long, conflicts_with = "file")]
        example: Option<String>,
        /// Replace the actor's module if it has one (its state stays).
        #[arg(long)]
        replace: bool,
    },
    /// List the actors a node has, with their module hashes and deploy indexes.
    Actors {
        /// Node to ask (any member).
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
    },
    /// Send a command (JSON, sent as CBOR) to an actor through the leader; prints the response as JSON.
    Send {
        /// Address of any node of the group (the leader is found from it).
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        /// Write concern: `majority` (never lost) or `leader` (acknowledged
        /// after the leader's fsync; may be lost on failover).
        #[arg(long, default_value = "majority", value_parser = parse_concern)]
        concern: WriteConcern,
        /// Actor name.
        actor: String,
        /// Command as JSON, e.g. '{"put":{"key":"a","value":"1"}}'; `-`
        /// reads it from standard input, `@FILE` from a file.
        json: String,
    },
    /// Query an actor (JSON, sent as CBOR) on the node at --addr; prints the answer as JSON.
    Query {
        /// Node to read from (any member).
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        /// Consistency: `linearizable` (default), `lease` (leader only),
        /// `any`, `session:TERM:INDEX`, `bounded:ENTRIES` or `bounded-ms:MS`.
        #[arg(long, default_value = "linearizable", value_parser = parse_level)]
        level: ReadLevel,
        /// Actor name.
        actor: String,
        /// Query as JSON, e.g. '{"get":{"key":"a"}}'; `-` reads it from
        /// standard input, `@FILE` from a file.
        json: String,
    },
    /// Manual switchover: hand leadership to NODE (it catches up first; the old leader stops taking writes; NODE leads in a new term).
    Promote {
        /// Address of any node of the group (with --force: of NODE itself).
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        /// Id of the member that is to lead.
        node: u64,
        /// The majority is lost for good: make NODE a group of one that
        /// leads. Acknowledged writes it lacks are LOST; the other members
        /// must be rebuilt. Logged, and recorded in NODE's data directory.
        #[arg(long)]
        force: bool,
    },
    /// Watch a node catch up (snapshot chunks, then log entries) with a progress bar, until it has everything the leader committed.
    CatchUp {
        /// The node to watch.
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Show or change the group's members: list, add, promote, demote, remove, replace.
    Member {
        /// Address of any node of the group (a change goes to its leader).
        #[arg(long, global = true, default_value = DEFAULT_ADDR)]
        addr: SocketAddr,
        #[command(subcommand)]
        command: cli_member::MemberCommand,
    },
    /// Show every member's role, term, indexes, lag and digest (asking the node at --addr and the members it knows).
    Status {
        /// Address of any node of the group.
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
    },
    /// Users, roles, tokens and the module allow-list of a group (changed through its leader's log).
    Auth {
        /// Address of any node of the group.
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        #[command(subcommand)]
        what: AuthCommand,
    },
    /// The audit trail of admin actions (deploys, promotions, auth changes), newest first.
    Audit {
        /// Node to ask (any member; each keeps the whole trail).
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        /// Most records to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Offline checks, reading only: a stopped node's data directory (its
    /// log replayed into a scratch state and compared with its stored
    /// state), or a backup file (every checksum, record and module).
    Verify {
        /// Data directory of the (stopped) node; its node id and cluster
        /// id are read from it.
        #[arg(long, required_unless_present = "backup", conflicts_with = "backup")]
        data_dir: Option<PathBuf>,
        /// A backup file (`understudy backup`) to check instead.
        #[arg(long)]
        backup: Option<PathBuf>,
        /// With --data-dir: the node id it must belong to (checked).
        #[arg(long, alias = "id", requires = "data_dir")]
        node_id: Option<u64>,
        /// With --data-dir: the cluster id it must belong to (checked).
        #[arg(long, alias = "cluster", requires = "data_dir")]
        cluster_id: Option<String>,
        /// With --data-dir: replay the log up to this index only and print
        /// the state digest there (what a backup taken at that index must
        /// show), instead of comparing with the stored state.
        #[arg(long, requires = "data_dir")]
        at: Option<u64>,
    },
    /// Take an online backup from any member while the group serves: a
    /// consistent snapshot (state, actors, modules, sessions; the index and
    /// term it is at; checksummed) into one file. With --every-s, one
    /// every so often into --dir, keeping the newest --keep.
    Backup {
        /// The member to back up (any; a follower spares the leader).
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        /// The backup file (written as FILE.partial, then renamed).
        #[arg(long, required_unless_present = "dir", conflicts_with = "dir")]
        out: Option<PathBuf>,
        /// A directory for timestamped backups (`understudy-TIME.backup`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Take a backup every this many seconds (into --dir) until stopped.
        #[arg(long, requires = "dir")]
        every_s: Option<u64>,
        /// How many backups to keep in --dir (the newest).
        #[arg(long, default_value_t = 7, requires = "dir", value_parser = clap::value_parser!(u64).range(1..))]
        keep: u64,
        /// With --every-s: stop after this many backups.
        #[arg(long, requires = "every_s")]
        count: Option<u64>,
    },
    /// Load-test a running group: closed-loop clients writing (kv puts
    /// through the leader) and reading (kv gets from every member) for a
    /// while, with a progress bar; then throughput and p50/p99/p99.9 per
    /// kind. Deploys the kv example as --actor if the group has none by
    /// that name; writes keys `bench-N`.
    Bench {
        /// Any member of the group.
        #[arg(long, env = "UNDERSTUDY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
        addr: SocketAddr,
        /// Closed-loop clients (each one connection, one operation in flight).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Fraction of operations that are reads (0: writes only, 1: reads only).
        #[arg(long, default_value_t = 0.0)]
        reads: f64,
        /// Write concern of the writes: `majority` or `leader`.
        #[arg(long, default_value = "majority", value_parser = parse_concern)]
        concern: WriteConcern,
        /// Read level of the reads (as `query --level`).
        #[arg(long, default_value = "linearizable")]
        level: String,
        /// The kv actor to write and read.
        #[arg(long, default_value = "bench")]
        actor: String,
        /// Distinct keys.
        #[arg(long, default_value_t = 1000)]
        keys: u64,
        /// Bytes of each value written.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
    },
    /// Make a new member's data directory from a backup file: the state at
    /// the backup's index and a log that starts there. Restore the same
    /// file for every member of a new group, then start them (`understudy
    /// node`) with the new group's members; the group goes on from the
    /// backup's index.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The new member's config file (its node_id, cluster_id, data_dir
        /// and [storage] are used).
        #[arg(long, conflicts_with_all = ["data_dir", "node_id", "cluster_id"])]
        config: Option<PathBuf>,
        /// The new member's data directory (must not exist, or be empty).
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        /// The new member's node id.
        #[arg(long, alias = "id", required_unless_present = "config")]
        node_id: Option<u64>,
        /// The new group's cluster id (default: the backed-up group's).
        #[arg(long, alias = "cluster")]
        cluster_id: Option<String>,
    },
}

/// `understudy auth …`.
#[derive(Subcommand)]
enum AuthCommand {
    /// Start checking every request (refused unless a user holds the admin role).
    Enable,
    /// Stop checking requests (anyone the ports let in may do anything).
    Disable,
    /// Show users, roles, token ids and the module allow-list.
    Show,
    /// Users.
    User {
        #[command(subcommand)]
        what: UserCommand,
    },
    /// Roles: named sets of permissions (admin, write:<actor pattern>, read:<actor pattern>).
    Role {
        #[command(subcommand)]
        what: RoleCommand,
    },
    /// Tokens: secrets that stand for a user.
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// Stop accepting a client certificate (PEM file), on every node from the index it commits at.
    RevokeCert {
        /// The certificate.
        file: PathBuf,
    },
    /// The module allow-list: once a hash is allowed, only allowed modules may be deployed.
    Module {
        #[command(subcommand)]
        what: ModuleCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (or replace its roles).
    Add {
        /// User name (a client certificate names it as urn:understudy:user:NAME).
        name: String,
        /// A role to give it (admin, or one made by `auth role grant`); repeat per role.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Remove a user and its tokens.
    Remove {
        /// User name.
        name: String,
    },
}

#[derive(Subcommand)]
enum RoleCommand {
    /// Give a role a permission (creates the role).
    Grant {
        /// Role name.
        role: String,
        /// admin, write:<actor pattern> or read:<actor pattern> (a name, a prefix ending in *, or *).
        permission: String,
    },
    /// Take a permission from a role.
    Revoke {
        /// Role name.
        role: String,
        /// The permission.
        permission: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token for a user; it is printed once (the group keeps only its hash).
    Create {
        /// The user.
        user: String,
        /// Lifetime in seconds (0: until revoked).
        #[arg(long, default_value_t = 0)]
        ttl_s: u64,
    },
    /// Revoke a token by its id (the part after ust_ and before the next _).
    Revoke {
        /// Token id.
        id: String,
    },
}

#[derive(Subcommand)]
enum ModuleCommand {
    /// Allow a module: a wasm file (hashed as the group hashes it) or --hash.
    Allow {
        /// The module file.
        #[arg(required_unless_present_any = ["hash", "example"])]
        file: Option<PathBuf>,
        /// A built-in example instead: kv, counter, bank.
        #[arg(long, conflicts_with = "file")]
        example: Option<String>,
        /// The component hash (64 hex digits), as `deploy` prints it.
        #[arg(long, conflicts_with_all = ["file", "example"])]
        hash: Option<String>,
    },
    /// Turn the allow-list off: any module may be deployed.
    Any,
}

fn main() {
    let cli = Cli::parse();
    let filter = match &cli.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("error: --log-level {level:?}: {e}");
            std::process::exit(2);
        }),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        use std::io::IsTerminal as _;
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let tls = match &cli.ca {
        Some(ca) => {
            let identity = cli.cert.as_deref().zip(cli.key.as_deref());
            match understudy::tls::ClientTls::load(ca, identity) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
        None => None,
    };
    let _ = JSON_OUTPUT.set(cli.output == "json");
    let _ = REACHING.set(Reaching {
        request: std::time::Duration::from_millis(cli.timeout_ms),
        options: ClientOptions {
            connect_timeout: std::time::Duration::from_millis(cli.connect_timeout_ms),
            tls,
            token: cli.token.clone(),
        },
    });
    if let Err(e) = dispatch(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Dev {
            data_dir,
            listen,
            nodes,
            tls,
        } => run_dev(data_dir, listen, nodes, tls),
        Command::Certs {
            out,
            nodes,
            hosts,
            users,
            days,
        } => certs(out, nodes, &hosts, &users, days),
        Command::Node {
            config,
            id,
            cluster,
            listen,
            data_dir,
            peer_listen,
            http_listen,
            peer,
            heartbeat_ms,
            election_timeout_ms,
            read_timeout_ms,
            write_timeout_ms,
            module_compile_timeout_ms,
            frame_read_timeout_ms,
            idle_timeout_ms,
            log_retain_entries,
            snapshot_chunk_bytes,
            log_kind,
            tls_cert,
            tls_key,
            peer_ca,
            client_ca,
            insecure,
            join,
            await_membership,
            advertise_client,
            advertise_peer,
            check,
            catch_up_timeout_ms,
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
                    let mut config = NodeConfig::new(id, &cluster, listen, data_dir);
                    config.peer_listen = peer_listen;
                    config.http_listen = http_listen;
                    config.peers = peer;
                    if let Some(ms) = heartbeat_ms {
                        config.timing.heartbeat_interval_ms = ms;
                    }
                    if let Some(ms) = read_timeout_ms {
                        config.read_timeout_ms = ms;
                    }
                    if let Some(ms) = write_timeout_ms {
                        config.write_timeout_ms = ms;
                    }
                    if let Some(ms) = module_compile_timeout_ms {
                        config.module_compile_timeout_ms = ms;
                    }
                    if let Some(ms) = frame_read_timeout_ms {
                        config.frame_read_timeout_ms = ms;
                    }
                    if let Some(ms) = idle_timeout_ms {
                        config.idle_timeout_ms = ms;
                    }
                    if let Some(n) = log_retain_entries {
                        config.compaction.retain_entries = n;
                    }
                    if let Some(n) = snapshot_chunk_bytes {
                        config.compaction.snapshot_chunk_bytes = n;
                    }
                    if let Some(k) = log_kind {
                        config.log_kind = k;
                    }
                    config.insecure = insecure;
                    config.join = join;
                    config.await_membership = await_membership;
                    config.advertise_client = advertise_client;
                    config.advertise_peer = advertise_peer;
                    if let Some(ms) = catch_up_timeout_ms {
                        config.membership.catch_up_timeout_ms = ms;
                    }
                    if let (Some(cert), Some(key), Some(peer_ca)) = (tls_cert, tls_key, peer_ca) {
                        config.tls = Some(understudy::tls::TlsSettings {
                            cert,
                            key,
                            peer_ca,
                            client_ca,
                        });
                    }
                    if let Some((min, max)) = election_timeout_ms {
                        config.timing.election_timeout_min_ms = min;
                        config.timing.election_timeout_max_ms = max;
                    }
                    config
                }
            };
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid node config: {e}"))?;
            if check {
                print!(
                    "{}",
                    toml::to_string(&config).context("printing the configuration")?
                );
                return Ok(());
            }
            run_node(config)
        }
        Command::Deploy {
            addr,
            actor,
            file,
            example,
            replace,
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
            client_call(addr, Reach::Leader, |c| async move {
                // What the actor runs now, as the node asked knows it (the
                // leader, once the client has found it).
                let old = c
                    .status()
                    .await?
                    .actor_modules
                    .into_iter()
                    .find(|a| a.name == actor);
                if let Some(old) = &old
                    && !replace
                {
                    bail!(
                        "actor {actor} exists (module {}, deployed at index {}): pass --replace to replace its module (its state stays)",
                        old.module,
                        old.deployed_at
                    );
                }
                let w = c.deploy(&actor, wasm).await?;
                let hash = match w.outcome {
                    Outcome::Ok(hash) => understudy::auth::hex(&hash),
                    Outcome::DeployRefused { reason } => {
                        bail!("deploy of {actor} refused: {reason}")
                    }
                    other => bail!("deploy of {actor}: {}", describe(&other)),
                };
                emit(
                    || {
                        serde_json::json!({
                            "actor": actor,
                            "module": hash,
                            "index": w.index,
                            "replaced": old.as_ref().map(|o| &o.module),
                        })
                    },
                    || match &old {
                        Some(old) => println!(
                            "replaced actor {actor}: module {} -> {hash} at index {}",
                            old.module, w.index
                        ),
                        None => println!(
                            "deployed actor {actor} (module {hash}) at index {}",
                            w.index
                        ),
                    },
                );
                Ok(())
            })
        }
        Command::Actors { addr } => client_call(addr, Reach::Node, |c| async move {
            let s = c.status().await?;
            emit(
                || serde_json::json!(s.actor_modules),
                || {
                    if s.actor_modules.is_empty() {
                        println!(
                            "no actors deployed (node {} at index {})",
                            s.node_id, s.applied_index
                        );
                        return;
                    }
                    println!("{:<24} {:<64} DEPLOYED-AT", "ACTOR", "MODULE");
                    for a in &s.actor_modules {
                        println!("{:<24} {:<64} {}", a.name, a.module, a.deployed_at);
                    }
                },
            );
            Ok(())
        }),
        Command::Send {
            addr,
            concern,
            actor,
            json,
        } => {
            let command = json_to_cbor(&json_argument(&json)?)?;
            client_call(addr, Reach::Leader, |c| async move {
                let tag = c.next_tag();
                match concern {
                    WriteConcern::Majority => {
                        let w = c
                            .command_tagged(&actor, command, tag, WriteConcern::Majority)
                            .await
                            .map_err(|e| said(&actor, e))?;
                        if json_output() {
                            print_outcome_json(&actor, &w.outcome, "index", w.index, Some(w.term))?;
                        } else {
                            print_outcome(&actor, &w.outcome)?;
                            eprintln!(
                                "(committed at index {}, term {}; session token {}:{})",
                                w.index, w.term, w.term, w.index
                            );
                        }
                    }
                    WriteConcern::Leader => {
                        let (term, index) = c
                            .command_leader(&actor, command, tag)
                            .await
                            .map_err(|e| said(&actor, e))?;
                        emit(
                            || serde_json::json!({"accepted": true, "index": index, "term": term}),
                            || {
                                println!(
                                    "accepted at index {index}, term {term} (not yet committed)"
                                );
                                eprintln!(
                                    "(read its effect with --level session:{term}:{index}; a leader-concern write may be lost on failover)"
                                );
                            },
                        );
                    }
                }
                Ok(())
            })
        }
        Command::Query {
            addr,
            level,
            actor,
            json,
        } => {
            let request = json_to_cbor(&json_argument(&json)?)?;
            client_call(addr, Reach::Node, |c| async move {
                let (outcome, applied) = c
                    .query_at(&actor, request, level)
                    .await
                    .map_err(|e| said(&actor, e))?;
                if json_output() {
                    print_outcome_json(&actor, &outcome, "applied_index", applied, None)?;
                } else {
                    print_outcome(&actor, &outcome)?;
                    eprintln!("(as of applied index {applied})");
                }
                Ok(())
            })
        }
        Command::Promote {
            addr,
            node,
            force: true,
        } => client_call(addr, Reach::Node, |c| async move {
            let term = c.force_promote(node).await?;
            if json_output() {
                println!(
                    "{}",
                    serde_json::json!({"leader": node, "term": term, "forced": true})
                );
                return Ok(());
            }
            println!(
                "node {node} was promoted by force and leads alone (term {term}), by a configuration of itself alone written to its log; writes it lacked are lost. Grow the group back with `understudy member add` (or `node --join`), and do not restart the old members with their data: they are no longer members."
            );
            Ok(())
        }),
        Command::Promote {
            addr,
            node,
            force: false,
        } => client_call(addr, Reach::Leader, |c| async move {
            let term = c.promote(node).await?;
            emit(
                || serde_json::json!({"leader": node, "term": term}),
                || println!("node {node} leads (term {term})"),
            );
            Ok(())
        }),
        Command::CatchUp { addr, timeout_s } => client_call(addr, Reach::Node, |c| async move {
            catch_up(&c, std::time::Duration::from_secs(timeout_s)).await
        }),
        Command::Member { addr, command } => client_call(addr, Reach::Leader, |c| async move {
            cli_member::run(c, command).await
        }),
        Command::Status { addr } => client_call(addr, Reach::Node, |c| async move {
            let first = c.status().await?;
            // Every other member at once, each within the time limits: a
            // frozen or unreachable member is a row that says so, and
            // never holds up the others.
            let others = first
                .client_addresses
                .iter()
                .filter(|(id, _)| **id != first.node_id)
                .map(|(&id, a)| async move {
                    let status = match understudy::net::resolve(a).await {
                        Some(a) => match connect_node(a).await {
                            Ok(c) => c.status().await.map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        },
                        None => Err(format!("its address {a} does not resolve")),
                    };
                    (id, a.clone(), status)
                });
            let mut all = vec![first.clone()];
            let mut unreachable = Vec::new();
            for (id, a, status) in futures::future::join_all(others).await {
                match status {
                    Ok(s) => all.push(s),
                    Err(e) => unreachable.push((id, a, e)),
                }
            }
            emit(
                || {
                    serde_json::json!({
                        "members": all,
                        "unreachable": unreachable
                            .iter()
                            .map(|(id, a, e)| serde_json::json!({"id": id, "address": a, "error": e}))
                            .collect::<Vec<_>>(),
                    })
                },
                || print_status(&all, &unreachable),
            );
            Ok(())
        }),
        Command::Verify {
            data_dir: Some(data_dir),
            at,
            node_id,
            cluster_id,
            ..
        } => verify(data_dir, at, node_id, cluster_id),
        Command::Verify {
            backup: Some(file), ..
        } => {
            let summary = understudy::backup::verify(&file)?;
            cli_backup::show(&format!("ok: {}", file.display()), &summary, json_output());
            Ok(())
        }
        Command::Verify { .. } => bail!("give --data-dir DIR or --backup FILE"),
        Command::Backup {
            addr,
            out,
            dir,
            every_s,
            keep,
            count,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let plan = cli_backup::BackupPlan {
                out,
                dir,
                every_s,
                keep: keep as usize,
                count,
            };
            rt.block_on(cli_backup::run(
                || async move {
                    let begin = connect_node(addr).await.with_context(|| {
                        format!(
                            "is a node running at {addr}? (start a group with `understudy dev`)"
                        )
                    })?;
                    // The snapshot is written before the first answer.
                    let begin = begin.request_timeout(reaching().request.max(
                        std::time::Duration::from_millis(understudy::node::BACKUP_WRITE_TIMEOUT_MS),
                    ));
                    let chunks = connect_node(addr).await?;
                    let r = reaching();
                    let leader = Client::connect_group_with_options(vec![addr], r.options)
                        .await?
                        .request_timeout(r.request)
                        .retry_for(r.request);
                    Ok(cli_backup::Clients {
                        leader,
                        begin,
                        chunks,
                    })
                },
                plan,
                json_output(),
            ))
        }
        Command::Bench {
            addr,
            clients,
            seconds,
            reads,
            concern,
            level,
            actor,
            keys,
            value_bytes,
        } => {
            let plan = cli_bench::Plan {
                addr,
                clients,
                seconds,
                reads,
                concern,
                level: (parse_level(&level)?, level),
                actor,
                keys,
                value_bytes,
            };
            let r = reaching();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(cli_bench::run(plan, r.options, r.request, json_output()))
        }
        Command::Restore {
            from,
            config,
            data_dir,
            node_id,
            cluster_id,
        } => restore(&from, config, data_dir, node_id, cluster_id),
        Command::Auth { addr, what } => auth(addr, what),
        Command::Audit { addr, limit } => client_call(addr, Reach::Node, |c| async move {
            let records = c.audit(limit).await?;
            if json_output() {
                println!("{}", serde_json::json!(records));
                return Ok(());
            }
            if records.is_empty() {
                println!("no admin actions recorded");
            }
            for r in records {
                let by =
                    r.by.map_or("(nobody authenticated)".to_string(), |p| p.to_string());
                println!(
                    "{:>8}  {}  {by}: {}",
                    r.index,
                    format_ms(r.timestamp_ms),
                    r.action
                );
            }
            Ok(())
        }),
    }
}

/// `understudy auth …`.
fn auth(addr: SocketAddr, what: AuthCommand) -> Result<()> {
    use understudy::api::{AuthRequest, Response};
    let request = match what {
        AuthCommand::Enable => AuthRequest::Enable,
        AuthCommand::Disable => AuthRequest::Disable,
        AuthCommand::Show => AuthRequest::Show,
        AuthCommand::User {
            what: UserCommand::Add { name, roles },
        } => AuthRequest::UserAdd { name, roles },
        AuthCommand::User {
            what: UserCommand::Remove { name },
        } => AuthRequest::UserRemove { name },
        AuthCommand::Role {
            what: RoleCommand::Grant { role, permission },
        } => AuthRequest::RoleGrant { role, permission },
        AuthCommand::Role {
            what: RoleCommand::Revoke { role, permission },
        } => AuthRequest::RoleRevoke { role, permission },
        AuthCommand::Token {
            what: TokenCommand::Create { user, ttl_s },
        } => AuthRequest::TokenCreate {
            user,
            ttl_ms: ttl_s.saturating_mul(1000),
        },
        AuthCommand::Token {
            what: TokenCommand::Revoke { id },
        } => AuthRequest::TokenRevoke { id },
        AuthCommand::RevokeCert { file } => {
            let certs = understudy::tls::load_certs(&file)?;
            AuthRequest::CertRevoke {
                fingerprint: understudy::access::fingerprint(&certs[0]).into(),
            }
        }
        AuthCommand::Module {
            what:
                ModuleCommand::Allow {
                    file,
                    example,
                    hash,
                },
        } => {
            let hash = match (file, example, hash) {
                (_, _, Some(hex)) => parse_hex32(&hex)?,
                (Some(path), _, _) => module_hash(
                    &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                )?,
                (None, Some(name), None) => module_hash(
                    understudy_examples::by_name(&name)
                        .with_context(|| format!("no example named {name:?}"))?,
                )?,
                (None, None, None) => bail!("give a wasm file, --example or --hash"),
            };
            AuthRequest::ModuleAllow {
                hash: hash.to_vec().into(),
            }
        }
        AuthCommand::Module {
            what: ModuleCommand::Any,
        } => AuthRequest::ModulesAny,
    };
    let show = matches!(request, AuthRequest::Show);
    let reach = if show { Reach::Node } else { Reach::Leader };
    client_call(addr, reach, |c| async move {
        let answer = c.auth(request).await?;
        if json_output() {
            let json = match &answer {
                Response::AuthState(s) => serde_json::json!(s),
                Response::TokenCreated {
                    id, token, index, ..
                } => serde_json::json!({"id": id, "token": token, "index": index}),
                Response::Written {
                    outcome: Outcome::Ok(_),
                    index,
                    ..
                } => {
                    serde_json::json!({"index": index})
                }
                Response::Written { outcome, .. } => bail!("{}", describe(outcome)),
                other => bail!("unexpected answer: {other:?}"),
            };
            println!("{json}");
            return Ok(());
        }
        match answer {
            Response::AuthState(s) => {
                println!("auth is {}", if s.enabled { "enabled" } else { "disabled" });
                for (user, roles) in &s.users {
                    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                    println!("user {user}: roles {}", roles.join(", "));
                }
                for (role, perms) in &s.roles {
                    let perms: Vec<String> = perms.iter().map(|p| p.to_string()).collect();
                    println!("role {role}: {}", perms.join(", "));
                }
                for (id, t) in &s.tokens {
                    let until = if t.expires_ms == 0 {
                        "no expiry".to_string()
                    } else {
                        format!("expires {}", format_ms(t.expires_ms))
                    };
                    println!("token {id}: user {} ({until})", t.user);
                }
                match &s.allowed_modules {
                    None => println!("modules: any may be deployed"),
                    Some(list) => {
                        for h in list {
                            println!("module allowed: {}", understudy::auth::hex(h));
                        }
                    }
                }
                println!("revoked certificates: {}", s.revoked_certs.len());
            }
            Response::TokenCreated {
                id, token, index, ..
            } => {
                println!("{token}");
                eprintln!(
                    "(token {id}, committed at index {index}; shown once: the group keeps only its hash. Use it with --token or UNDERSTUDY_TOKEN)"
                );
            }
            Response::Written { outcome, index, .. } => match outcome {
                Outcome::Ok(_) => println!("done at index {index}"),
                other => bail!("{}", describe(&other)),
            },
            other => bail!("unexpected answer: {other:?}"),
        }
        Ok(())
    })
}

/// The hash a group gives a module file (after making it a component).
fn module_hash(wasm: &[u8]) -> Result<[u8; 32]> {
    let component = understudy::sandbox::Sandbox::normalize(wasm)
        .map_err(|e| anyhow::anyhow!("not a module the group could deploy: {e}"))?;
    Ok(understudy::sandbox::Sandbox::hash(&component))
}

fn parse_hex32(hex: &str) -> Result<[u8; 32]> {
    anyhow::ensure!(
        hex.len() == 64,
        "a hash is 64 hex digits, got {}",
        hex.len()
    );
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .with_context(|| format!("not hex: {hex}"))?;
    }
    Ok(out)
}

/// A time in ms since the Unix epoch, as UTC.
fn format_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    match t {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

fn run_node(config: NodeConfig) -> Result<()> {
    let system = actix::System::new();
    system.block_on(async move {
        let running = run(config.clone()).await?;
        let http_addr = understudy::http::start(&config, &running)?;
        // Tests and scripts read this line to learn the bound ports.
        let peers = running
            .peer
            .map(|p| format!(" peers on {p},"))
            .unwrap_or_default();
        let http = http_addr
            .map(|h| format!(" HTTP on {h},"))
            .unwrap_or_default();
        println!(
            "understudy node {} listening on {},{peers}{http} data in {}",
            config.node_id,
            running.client,
            config.data_dir.display()
        );
        use std::io::Write as _;
        std::io::stdout().flush()?;
        let refused = async {
            match running.join_refused {
                // (A dropped sender: the join ended without a refusal.)
                Some(told) => match told.await {
                    Ok(why) => why,
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        // SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes) stops the node;
        // every acknowledged write is durable already.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            stop = tokio::signal::ctrl_c() => stop?,
            _ = term.recv() => {}
            why = refused => anyhow::bail!("{why}"),
        }
        println!("stopping");
        Ok::<_, anyhow::Error>(())
    })
}

/// `understudy certs`: a CA (made once), node and user certificates.
fn certs(out: PathBuf, nodes: u64, hosts: &[String], users: &[String], days: u32) -> Result<()> {
    use understudy::tls::issue::{Layout, Validity, write_file, write_private};
    let layout = Layout { dir: out };
    let validity = Validity::days(days);
    let (ca, made) = layout.ca(validity)?;
    if made {
        println!(
            "made a CA: {} (its key: {})",
            layout.ca_cert().display(),
            layout.ca_key().display()
        );
    } else {
        println!("using the CA in {}", layout.ca_cert().display());
    }
    for id in 1..=nodes {
        let issued = ca.node(id, hosts, validity)?;
        write_file(&layout.node_cert(id), &issued.cert_pem)?;
        write_private(&layout.node_key(id), &issued.key_pem)?;
        println!(
            "node {id}: {} (hosts {})",
            layout.node_cert(id).display(),
            hosts.join(", ")
        );
    }
    for user in users {
        let issued = ca.user(user, validity)?;
        write_file(&layout.user_cert(user), &issued.cert_pem)?;
        write_private(&layout.user_key(user), &issued.key_pem)?;
        println!("user {user}: {}", layout.user_cert(user).display());
    }
    Ok(())
}

/// The certificates of a dev group with TLS, made once in `dir`.
fn dev_certs(dir: PathBuf, listen: SocketAddr, n: u64) -> Result<understudy::tls::issue::Layout> {
    use understudy::tls::issue::{Layout, Validity, write_file, write_private};
    let layout = Layout { dir };
    let validity = Validity::days(365);
    let (ca, _) = layout.ca(validity)?;
    let mut hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    if !hosts.contains(&listen.ip().to_string()) {
        hosts.push(listen.ip().to_string());
    }
    for id in 1..=n {
        if !layout.node_cert(id).exists() {
            let issued = ca.node(id, &hosts, validity)?;
            write_file(&layout.node_cert(id), &issued.cert_pem)?;
            write_private(&layout.node_key(id), &issued.key_pem)?;
        }
    }
    if !layout.user_cert("admin").exists() {
        let issued = ca.user("admin", validity)?;
        write_file(&layout.user_cert("admin"), &issued.cert_pem)?;
        write_private(&layout.user_key("admin"), &issued.key_pem)?;
    }
    Ok(layout)
}

/// `understudy dev`: a group of `n` nodes in this process, kv deployed.
fn run_dev(data_dir: PathBuf, listen: SocketAddr, n: u64, tls: bool) -> Result<()> {
    anyhow::ensure!((1..=7).contains(&n), "--nodes must be between 1 and 7");
    let layout = if tls {
        Some(dev_certs(data_dir.join("tls"), listen, n)?)
    } else {
        None
    };
    let system = actix::System::new();
    system.block_on(async move {
        use tokio::net::TcpListener;
        // Bind every port first, so each node's config names its peers'
        // actual addresses (port 0 picks free ones).
        let mut bound = Vec::new();
        for i in 0..n {
            let port = |p: u16| if p == 0 { 0 } else { p + i as u16 };
            let client = SocketAddr::new(listen.ip(), port(listen.port()));
            let peer = SocketAddr::new(
                listen.ip(),
                if listen.port() == 0 { 0 } else { listen.port() + 100 + i as u16 },
            );
            let c = TcpListener::bind(client)
                .await
                .with_context(|| format!("binding {client}"))?;
            let p = TcpListener::bind(peer)
                .await
                .with_context(|| format!("binding {peer}"))?;
            bound.push((i + 1, c, p));
        }
        let peer_addrs: Vec<(u64, SocketAddr)> = bound
            .iter()
            .map(|(id, _, p)| Ok((*id, p.local_addr()?)))
            .collect::<Result<_>>()?;
        let mut clients = Vec::new();
        let mut https = Vec::new();
        for (id, c, p) in bound {
            let mut config = NodeConfig::new(
                id,
                "understudy-dev",
                c.local_addr()?,
                data_dir.join(format!("node{id}")),
            );
            config.peer_listen = Some(p.local_addr()?);
            config.peers = PeerConfig::others(id, &peer_addrs);
            config.tls = layout.as_ref().map(|l| l.node_settings(id));
            // The HTTP API, 200 ports above the client port.
            config.http_listen = Some(SocketAddr::new(
                listen.ip(),
                if listen.port() == 0 {
                    0
                } else {
                    listen.port() + 200 + id as u16 - 1
                },
            ));
            let running = understudy::node::run_bound(config.clone(), Vec::new(), c, Some(p))?;
            let addr = running.client;
            let http = understudy::http::start(&config, &running)?
                .context("the dev group serves HTTP")?;
            // Tests and scripts read these lines to learn the bound ports.
            println!(
                "understudy node {id} listening on {addr}, HTTP on {http}, data in {}",
                config.data_dir.display()
            );
            clients.push(addr);
            https.push(http);
        }
        use std::io::Write as _;
        std::io::stdout().flush()?;
        let mut options = ClientOptions::default();
        // What the printed commands add to reach the group.
        let mut flags = String::new();
        if let Some(l) = &layout {
            let (cert, key) = (l.user_cert("admin"), l.user_key("admin"));
            options.tls = Some(understudy::tls::ClientTls::load(
                &l.ca_cert(),
                Some((&cert, &key)),
            )?);
            flags = format!(
                " --ca {} --cert {} --key {}",
                l.ca_cert().display(),
                cert.display(),
                key.display()
            );
        }
        let client = Client::connect_group_with_options(clients.clone(), options).await?;
        let deployed = loop {
            // Wait for a leader, then deploy kv once.
            match client.call(understudy::api::Request::Status).await {
                Ok(understudy::api::Response::Status(s)) if s.leader.is_some() => {
                    break s.actors.iter().any(|a| a == "kv");
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        if !deployed {
            let w = client
                .deploy("kv", understudy_examples::KV.to_vec())
                .await?;
            anyhow::ensure!(
                w.outcome.is_ok(),
                "deploying the kv example failed: {:?}",
                w.outcome
            );
        }
        let first = clients[0];
        println!("a {n}-node group is up; actor `kv` (examples/kv) is deployed. In another terminal:");
        println!(
            "  cargo run -q -- send{flags} --addr {first} kv '{{\"put\":{{\"key\":\"hello\",\"value\":\"world\"}}}}'"
        );
        println!(
            "  cargo run -q -- query{flags} --addr {} --level linearizable kv '{{\"get\":{{\"key\":\"hello\"}}}}'",
            clients[clients.len() - 1]
        );
        println!("  cargo run -q -- status{flags} --addr {first}");
        let scheme = if layout.is_some() { "https" } else { "http" };
        println!(
            "  curl -s {scheme}://{}/v1/actors/kv/queries -H 'Content-Type: application/json' -d '{{\"get\":{{\"key\":\"hello\"}}}}'",
            https[0]
        );
        println!(
            "Ctrl-C stops the group; the data stays in {}.",
            data_dir.display()
        );
        std::io::stdout().flush()?;
        tokio::signal::ctrl_c().await?;
        println!("stopping");
        Ok::<_, anyhow::Error>(())
    })
}

/// Show a node's catch-up as a progress bar: snapshot chunks while one is
/// arriving, then entries applied against the leader's commit index.
async fn catch_up(c: &Client, timeout: std::time::Duration) -> Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    let deadline = tokio::time::Instant::now() + timeout;
    let bar = ProgressBar::new(0);
    let mut mode = "";
    loop {
        let s = c.status().await?;
        let leader_commit = match (&s.leader_address, s.role) {
            (_, understudy::replication::Role::Leader) => Some(s.commit_index),
            (Some(a), _) => match understudy::net::resolve(a).await {
                Some(a) => match connect_node(a).await {
                    Ok(l) => l.status().await.ok().map(|l| l.commit_index),
                    Err(_) => None,
                },
                None => None,
            },
            (None, _) => None,
        };
        if let Some(p) = &s.snapshot_in {
            if mode != "snapshot" {
                mode = "snapshot";
                bar.set_style(
                    ProgressStyle::with_template(
                        "snapshot @{msg} [{bar:40}] {pos}/{len} chunks ({elapsed})",
                    )?
                    .progress_chars("=> "),
                );
            }
            bar.set_message(p.index.to_string());
            bar.set_length(p.chunks);
            bar.set_position(p.chunks_done);
        } else if let Some(target) = leader_commit {
            if mode != "log" {
                mode = "log";
                bar.set_style(
                    ProgressStyle::with_template(
                        "log [{bar:40}] {pos}/{len} applied, {per_sec} ({eta} left)",
                    )?
                    .progress_chars("=> "),
                );
            }
            bar.set_length(target.max(s.applied_index));
            bar.set_position(s.applied_index);
            if s.applied_index >= target {
                bar.finish();
                println!(
                    "node {} is caught up: applied {} of the leader's {}",
                    s.node_id, s.applied_index, target
                );
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bar.abandon();
            bail!("node {} did not catch up within {timeout:?}", s.node_id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn print_status(all: &[Status], unreachable: &[(u64, String, String)]) {
    let leader = all
        .iter()
        .find(|s| s.role == understudy::replication::Role::Leader);
    println!(
        "{:<5} {:<12} {:>5} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}  digest",
        "node", "role", "term", "vote", "last", "commit", "applied", "lag", "lag ms", "heard ms"
    );
    let mut all = all.to_vec();
    all.sort_by_key(|s| s.node_id);
    for s in &all {
        let f = leader.and_then(|l| l.followers.iter().find(|f| f.id == s.node_id));
        let (lag, lag_ms) = match (leader, f) {
            (Some(l), _) if l.node_id == s.node_id => ("0".to_string(), "0".to_string()),
            (_, Some(f)) => (f.lag_entries.to_string(), f.lag_ms.to_string()),
            _ => ("?".to_string(), "?".to_string()),
        };
        let role = match (&s.quarantined, s.recovering_until, &s.fault) {
            (Some(_), _, _) => "QUARANTINED".to_string(),
            (None, _, Some(_)) => "FAULT".to_string(),
            (None, Some(_), None) => "RECOVERING".to_string(),
            (None, None, None) => format!("{:?}", s.role),
        };
        let vote = s.vote.map_or("-".to_string(), |v| v.to_string());
        let heard = s
            .leader_heard_ms_ago
            .map_or("-".to_string(), |h| h.to_string());
        println!(
            "{:<5} {:<12} {:>5} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}  {}",
            s.node_id,
            role,
            s.term,
            vote,
            s.last_index,
            s.commit_index,
            s.applied_index,
            lag,
            lag_ms,
            heard,
            &s.digest[..s.digest.len().min(16)]
        );
    }
    for (id, a, why) in unreachable {
        println!("{id:<5} {:<12} at {a}: {why}", "UNREACHABLE");
    }
    if let Some(s) = all.first() {
        println!(
            "cluster {:?}; leader {}; actors: {}",
            s.cluster_id,
            leader.map_or("none known".to_string(), |l| l.node_id.to_string()),
            s.actors.join(", ")
        );
    }
    for s in &all {
        if let Some(why) = &s.quarantined {
            println!("node {} is quarantined: {why}", s.node_id);
        }
        if let Some(why) = &s.fault {
            println!("node {} has a host fault: {why}", s.node_id);
        }
        if let Some(until) = s.recovering_until {
            println!(
                "node {} lost its data directory and is recovering: it votes again once its log reaches index {until} (it holds {})",
                s.node_id, s.last_index
            );
        }
        if s.role != understudy::replication::Role::Leader
            && let Some(ms) = s.leader_heard_ms_ago
            && ms > 1000
        {
            println!("node {} last heard from a leader {ms} ms ago", s.node_id);
        }
    }
}

/// Which node a CLI command talks to.
#[derive(Clone, Copy)]
enum Reach {
    /// Whichever node leads the group of the one at the address (the
    /// client follows leader hints).
    Leader,
    /// Exactly the node at the address.
    Node,
}

/// Run `f` with a client of the group at `addr`, as `reach` says.
fn client_call<F, Fut>(addr: SocketAddr, reach: Reach, f: F) -> Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let r = reaching();
        let client = match reach {
            Reach::Leader => Client::connect_group_with_options(vec![addr], r.options)
                .await
                .map(|c| c.request_timeout(r.request).retry_for(r.request)),
            Reach::Node => connect_node(addr).await,
        }
        .with_context(|| {
            format!("is a node running at {addr}? (start a group with `understudy dev`)")
        })?;
        f(client).await
    })
}

fn parse_peer(s: &str) -> anyhow::Result<PeerConfig> {
    let (id, rest) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("expected ID=HOST:PORT[,CLIENT-HOST:PORT], got {s:?}"))?;
    let id = id
        .parse()
        .map_err(|e| anyhow::anyhow!("bad node id {id:?}: {e}"))?;
    let (address, client_address) = match rest.split_once(',') {
        Some((peer, client)) => (peer.to_string(), Some(client.to_string())),
        None => (rest.to_string(), None),
    };
    Ok(PeerConfig {
        id,
        address,
        client_address,
    })
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("expected MIN-MAX, got {s:?}"))?;
    let p = |x: &str| x.parse::<u64>().map_err(|e| anyhow::anyhow!("{x:?}: {e}"));
    Ok((p(a)?, p(b)?))
}

fn parse_log_kind(s: &str) -> anyhow::Result<LogKind> {
    match s {
        "statement" => Ok(LogKind::Statement),
        "row" => Ok(LogKind::Row),
        _ => Err(anyhow::anyhow!("expected statement or row, got {s:?}")),
    }
}

fn parse_concern(s: &str) -> anyhow::Result<WriteConcern> {
    match s {
        "majority" => Ok(WriteConcern::Majority),
        "leader" => Ok(WriteConcern::Leader),
        _ => Err(anyhow::anyhow!("expected majority or leader, got {s:?}")),
    }
}

/// A node's address: `HOST:PORT`, a host name or an IP address (the
/// first address the name resolves to).
fn parse_addr(s: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    s.to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("{s:?} is not HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{s:?} resolves to no address"))
}

/// A command's or query's JSON: the argument itself, `-` for standard
/// input, or `@FILE` for a file's contents (for documents too large for a
/// command line).
fn json_argument(arg: &str) -> Result<String> {
    use std::io::Read as _;
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the JSON from standard input")?;
        return Ok(text);
    }
    if let Some(path) = arg.strip_prefix('@') {
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading the JSON from {path}"));
    }
    Ok(arg.to_string())
}

fn parse_level(s: &str) -> anyhow::Result<ReadLevel> {
    understudy::api::parse_read_level(s).map_err(|e| anyhow::anyhow!(e))
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
        Outcome::Denied { reason } => format!("denied when applied: {reason}"),
    }
}

fn print_outcome(actor: &str, outcome: &Outcome) -> Result<()> {
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
        Outcome::NoSuchActor => Err(no_such_actor(actor)),
        other => bail!("{}", describe(other)),
    }
}

/// `--output json` of a command's or query's outcome: `{"value": …,
/// <position>: …}`, or the refusal as an error (non-zero exit).
fn print_outcome_json(
    actor: &str,
    outcome: &Outcome,
    position: &str,
    at: u64,
    term: Option<u64>,
) -> Result<()> {
    match outcome {
        Outcome::Ok(bytes) => {
            let value: serde_cbor::Value =
                serde_cbor::from_slice(bytes).context("the machine's response is not CBOR")?;
            let mut out = serde_json::json!({"value": value, position: at});
            if let Some(term) = term {
                out["term"] = term.into();
            }
            println!("{out}");
            Ok(())
        }
        Outcome::NoSuchActor => Err(no_such_actor(actor)),
        other => bail!("{}", describe(other)),
    }
}

fn verify(
    data_dir: PathBuf,
    at: Option<u64>,
    node_id: Option<u64>,
    cluster_id: Option<String>,
) -> Result<()> {
    use understudy::storage;
    anyhow::ensure!(
        data_dir.join("log").join("data.mdb").is_file(),
        "{} is not a node's data directory (no log in it)",
        data_dir.display()
    );
    // No node may run on it while it is read and copied.
    let _held = storage::DirLock::acquire(&data_dir)?;
    // Read the identity without writing: a wrong path is refused, never
    // made into an empty node.
    let identity = storage::peek_identity(&data_dir.join("log"))?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not a node's data directory (no log with an identity in it)",
            data_dir.display()
        )
    })?;
    if node_id.is_some_and(|id| id != identity.node_id)
        || cluster_id
            .as_ref()
            .is_some_and(|c| *c != identity.cluster_id)
    {
        bail!(
            "{} belongs to {identity}, not to node {} of cluster {:?}",
            data_dir.display(),
            node_id.map_or("(any)".to_string(), |i| i.to_string()),
            cluster_id.as_deref().unwrap_or("(any)")
        );
    }
    // Opening a data directory writes (journaled entries move into the
    // log, identities are checked in write transactions): verify opens a
    // copy, made while it holds the directory's lock.
    let scratch = tempfile_dir()?;
    let result = verify_copy(&data_dir, &scratch, &identity, at);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// [`verify`] on a copy of `data_dir` made under `scratch`.
fn verify_copy(
    data_dir: &std::path::Path,
    scratch: &std::path::Path,
    identity: &understudy::storage::Identity,
    at: Option<u64>,
) -> Result<()> {
    use understudy::storage;
    let copy = scratch.join("copy");
    for env in ["log", "state"] {
        let (from, to) = (data_dir.join(env), copy.join(env));
        std::fs::create_dir_all(&to)?;
        for file in
            std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))?
        {
            let file = file?;
            if file.file_type()?.is_file() {
                std::fs::copy(file.path(), to.join(file.file_name()))
                    .with_context(|| format!("copying {}", file.path().display()))?;
            }
        }
    }
    let (_lock, log, state) = storage::open(&copy, identity, &storage::StorageOptions::default())?;
    let applied = state.applied()?;
    let (compacted, _) = log.compacted()?;
    anyhow::ensure!(
        compacted == 0,
        "the log of {} is compacted up to index {compacted}: a replay from the start is not possible (verify needs the whole log; raise compaction.retain_entries / retain_ms to keep it)",
        data_dir.display()
    );
    let (replayed, kv) = understudy::node::applier::replay(
        &log,
        at.unwrap_or(applied.index),
        &scratch.join("replay"),
        identity,
        understudy::sandbox::SandboxLimits::default(),
    )?;
    let hex = |d: &[u8; 32]| understudy::auth::hex(d);
    if let Some(at) = at {
        let digest = hex(&replayed.digest);
        emit(
            || {
                serde_json::json!({
                    "node_id": identity.node_id,
                    "cluster_id": identity.cluster_id,
                    "index": at,
                    "digest": digest,
                    "kv_pairs": kv.len(),
                })
            },
            || {
                println!(
                    "{identity}: replayed to index {at}: digest {digest}, {} kv pairs",
                    kv.len()
                )
            },
        );
        return Ok(());
    }
    anyhow::ensure!(
        replayed == applied && kv == state.dump_kv()?,
        "state differs from a replay of the log up to index {}",
        applied.index
    );
    let digest = hex(&applied.digest);
    emit(
        || {
            serde_json::json!({
                "node_id": identity.node_id,
                "cluster_id": identity.cluster_id,
                "applied_index": applied.index,
                "digest": digest,
                "ok": true,
            })
        },
        || {
            println!(
                "ok: {identity}: state at applied index {} (digest {digest}) equals a fresh replay of the log",
                applied.index
            )
        },
    );
    Ok(())
}

/// `understudy restore`.
fn restore(
    from: &std::path::Path,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    node_id: Option<u64>,
    cluster_id: Option<String>,
) -> Result<()> {
    use understudy::storage;
    let (data_dir, node_id, cluster_id, options) = match config {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let c: NodeConfig =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            (c.data_dir, c.node_id, Some(c.cluster_id), c.storage)
        }
        None => (
            data_dir.context("--data-dir is needed without --config")?,
            node_id.context("--node-id is needed without --config")?,
            cluster_id,
            storage::StorageOptions::default(),
        ),
    };
    let cluster_id = match cluster_id {
        Some(c) => c,
        None => {
            understudy::backup::BackupReader::open(from)?
                .header
                .cluster_id
        }
    };
    let identity = storage::Identity {
        format_version: storage::FORMAT_VERSION,
        cluster_id,
        node_id,
    };
    let summary = understudy::backup::restore(from, &data_dir, &identity, &options)?;
    cli_backup::show(
        &format!("restored {} into {}", identity, data_dir.display()),
        &summary,
        json_output(),
    );
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("understudy-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
