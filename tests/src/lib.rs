//! Test harness: real `understudy` node processes on 127.0.0.1.
//!
//! [`NodeProc`] starts the binary with `--listen 127.0.0.1:0`, reads the
//! bound addresses from its first line of output (no fixed ports, no races),
//! and kills the process on drop, so a failing test leaves nothing behind.
//!
//! [`Group`] runs a group of node processes whose peer traffic goes through
//! a fault-injecting [`ProxyNet`]: one proxy per directed link, listening
//! before any node starts (so every config can name it) and retargeted when
//! a node restarts on new ports. Cutting a link drops its connections and
//! refuses new ones; healing lets the nodes reconnect.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use understudy::api::client::{Client, ClientOptions};

static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Tell the harness which `understudy` binary to run. Integration tests are
/// targets of the `understudy` package, so cargo builds the binary fresh for
/// them and names it in `CARGO_BIN_EXE_understudy`; [`setup!`] passes it.
pub fn use_binary(path: &str) {
    let _ = BIN.set(PathBuf::from(path));
}

/// Call first in every test: `understudy_tests::setup!();`
#[macro_export]
macro_rules! setup {
    () => {
        $crate::use_binary(env!("CARGO_BIN_EXE_understudy"))
    };
}

/// Path of the `understudy` binary under test.
pub fn understudy_bin() -> PathBuf {
    BIN.get()
        .cloned()
        .expect("call understudy_tests::setup!() at the start of the test")
}

/// One running node process.
pub struct NodeProc {
    child: Child,
    /// Client API address.
    pub addr: SocketAddr,
    /// Peer address (nodes of a group).
    pub peer_addr: Option<SocketAddr>,
    /// HTTP address (nodes started with `--http-listen`).
    pub http_addr: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node id.
    pub id: u64,
    /// How clients of the harness reach it (TLS for a TLS group).
    pub client_options: ClientOptions,
    stderr_path: PathBuf,
}

impl NodeProc {
    /// Start node `id` of cluster `test` on `data_dir`.
    pub fn start(data_dir: &Path, id: u64) -> Result<NodeProc> {
        Self::start_in_cluster(data_dir, id, "test")
    }

    /// Start node `id` of `cluster` on `data_dir`; fails with the node's
    /// own error output if it exits instead of listening.
    pub fn start_in_cluster(data_dir: &Path, id: u64, cluster: &str) -> Result<NodeProc> {
        let id_arg = id.to_string();
        Self::spawn(&Self::node_args(&id_arg, cluster), data_dir, id)
    }

    /// `understudy node` for node `id_arg` of `cluster` on a free client port.
    fn node_args<'a>(id_arg: &'a str, cluster: &'a str) -> Vec<&'a str> {
        vec![
            "node",
            "--id",
            id_arg,
            "--cluster",
            cluster,
            "--listen",
            "127.0.0.1:0",
        ]
    }

    /// Start `understudy dev` (the README's first command) on `data_dir`.
    pub fn start_dev(data_dir: &Path) -> Result<NodeProc> {
        Self::start_dev_with(data_dir, &[])
    }

    /// `understudy dev` with `extra` flags (`--tls`).
    pub fn start_dev_with(data_dir: &Path, extra: &[&str]) -> Result<NodeProc> {
        let mut args = vec!["dev", "--listen", "127.0.0.1:0"];
        args.extend(extra);
        Self::spawn(&args, data_dir, 1)
    }

    /// Start node `id` of a group with extra flags (peers, timing).
    pub fn start_member(data_dir: &Path, id: u64, cluster: &str, extra: &[String]) -> Result<Self> {
        Self::start_member_limited(data_dir, id, cluster, extra, None)
    }

    /// [`NodeProc::start_member`] in a process whose open-file limit (soft
    /// and hard) is `open_files`, if given.
    pub fn start_member_limited(
        data_dir: &Path,
        id: u64,
        cluster: &str,
        extra: &[String],
        open_files: Option<u64>,
    ) -> Result<Self> {
        let id_arg = id.to_string();
        let mut args = Self::node_args(&id_arg, cluster);
        if !extra.iter().any(|a| a == "--peer-listen") {
            args.extend(["--peer-listen", "127.0.0.1:0"]);
        }
        args.extend(extra.iter().map(String::as_str));
        Self::spawn_limited(&args, data_dir, id, open_files)
    }

    fn spawn(args: &[&str], data_dir: &Path, id: u64) -> Result<NodeProc> {
        Self::spawn_limited(args, data_dir, id, None)
    }

    /// Start `understudy` with exactly `args` (and `--data-dir`), as node
    /// `id`; fails with its error output if it does not start listening.
    pub fn spawn_args(args: &[&str], data_dir: &Path, id: u64) -> Result<NodeProc> {
        Self::spawn(args, data_dir, id)
    }

    fn spawn_limited(
        args: &[&str],
        data_dir: &Path,
        id: u64,
        open_files: Option<u64>,
    ) -> Result<NodeProc> {
        std::fs::create_dir_all(data_dir)?;
        let stderr_path = data_dir.with_extension(format!("stderr.{}", rand::random::<u32>()));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut command = Command::new(understudy_bin());
        if let Some(n) = open_files {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec here.
            unsafe {
                command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, n, n));
            }
        }
        let mut child = command
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            // UNDERSTUDY_TEST_LOG=info shows more of the nodes' logs in
            // failure messages.
            .env(
                "RUST_LOG",
                std::env::var("UNDERSTUDY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning understudy")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        // Keep draining: a node that prints more must never hit a closed pipe.
        std::thread::spawn(move || {
            let mut rest = String::new();
            while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {
                rest.clear();
            }
        });
        let addr = line
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .map(|a| a.trim_end_matches(','))
            .and_then(|a| a.parse().ok());
        let peer_addr = line
            .split_whitespace()
            .skip_while(|w| *w != "peers")
            .nth(2)
            .map(|a| a.trim_end_matches(','))
            .and_then(|a| a.parse().ok());
        let http_addr = line
            .split_whitespace()
            .skip_while(|w| *w != "HTTP")
            .nth(2)
            .map(|a| a.trim_end_matches(','))
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let status = child.wait()?;
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            bail!("node did not start ({status}): {err}");
        };
        Ok(NodeProc {
            child,
            addr,
            peer_addr,
            http_addr,
            data_dir: data_dir.to_path_buf(),
            id,
            client_options: ClientOptions::default(),
            stderr_path,
        })
    }

    /// Connect a client, retrying briefly while the node finishes starting.
    pub async fn client(&self) -> Result<Client> {
        let mut last = None;
        for _ in 0..50 {
            match Client::connect_node_with(self.addr, self.client_options.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.expect("tried").into())
    }

    /// SIGKILL the process and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process freezes (a long GC pause, a stuck VM).
    pub fn pause(&self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    /// SIGCONT after [`NodeProc::pause`].
    pub fn resume(&self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }

    /// The process's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Wait up to `secs` for the process to exit by itself; its exit
    /// status, or `None` if it still runs.
    pub async fn exited_within(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what its nodes logged (at `warn`, or at
        // UNDERSTUDY_TEST_LOG's level), so a failure seen once in CI can be
        // read after the fact.
        if std::thread::panicking() {
            eprintln!("--- node {} (log) ---\n{}", self.id, self.stderr());
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Run `understudy` with `args`, these environment variables and this
/// standard input, to completion (the CLI bounds its own waits with
/// `--timeout-ms`); returns (success, stdout, stderr).
pub fn run_cli_with(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Result<(bool, String, String)> {
    use std::io::Write as _;
    let mut child = Command::new(understudy_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(stdin)?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Run `understudy` with `args` to completion; returns (success, stdout, stderr).
pub fn run_cli(args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(understudy_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Await `f` for at most `secs` seconds, else fail the test naming `what`:
/// no test waits forever on the network (BRIEF invariant 10).
pub async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {secs} s"),
    }
}

/// The hello a member of a harness group sends (cluster `test`, the
/// harness's timing, statement kind, no incarnation): tests forge peers
/// with it.
pub fn member_hello(from: u64, to: u64, lane: understudy::peer::Lane) -> understudy::peer::Hello {
    understudy::peer::Hello {
        v: understudy::peer::PEER_PROTOCOL_VERSION,
        cluster_id: "test".into(),
        from,
        to,
        client_address: "127.0.0.1:1".into(),
        lane,
        log_kind: understudy::node::LogKind::Statement,
        timing: understudy::node::Timing {
            heartbeat_interval_ms: 25,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
        },
        incarnation: 0,
        peer_address: String::new(),
    }
}

/// Run the CLI off the async runtime, failing the test if it takes more
/// than `secs` seconds.
pub async fn run_cli_within(secs: u64, args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let started = std::time::Instant::now();
    let run = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args).expect("running the CLI")
    });
    let out = within(secs, "a CLI command", run)
        .await
        .expect("the CLI thread");
    assert!(started.elapsed() < Duration::from_secs(secs));
    out
}

/// CBOR of a JSON text, as the CLI sends it.
pub fn cbor(json: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(json).expect("test JSON");
    understudy::codec::to_cbor(&v)
}

/// The kv example's `put` command.
pub fn kv_put(key: &str, value: &str) -> Vec<u8> {
    cbor(&format!(r#"{{"put":{{"key":"{key}","value":"{value}"}}}}"#))
}

/// The kv example's `get` query.
pub fn kv_get(key: &str) -> Vec<u8> {
    cbor(&format!(r#"{{"get":{{"key":"{key}"}}}}"#))
}

/// What a multi-process benchmark runs in: a 2-worker runtime (the load
/// generator) and a data directory under `UNDERSTUDY_BENCH_DIR` (default:
/// the current directory, which is on a real disk; the system temp folder
/// may not be).
pub fn bench_setup() -> (tokio::runtime::Runtime, tempfile::TempDir) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let root = std::env::var("UNDERSTUDY_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let dir = tempfile::tempdir_in(&root).expect("a benchmark directory");
    (rt, dir)
}

/// An HTTP/1.1 answer: status, headers (names lower-cased), body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request on a connection of its own (`Connection: close`),
/// within `secs`: the dependency-free client of the HTTP tests.
pub async fn http(
    secs: u64,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpAnswer> {
    https(secs, addr, None, method, path, headers, body).await
}

/// [`http`] over TLS with `tls` (HTTPS), or plaintext without.
pub async fn https(
    secs: u64,
    addr: SocketAddr,
    tls: Option<&understudy::tls::ClientTls>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut s: Box<dyn understudy::tls::Io> = match tls {
            Some(tls) => Box::new(tls.connect(addr, tcp).await?),
            None => Box::new(tcp),
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(secs), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{method} {path}: no answer within {secs} s"))??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{method} {path}: not an HTTP answer: {raw:?}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{method} {path}: bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = unchunk(&body);
    }
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

fn unchunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// Wait (up to 20 s) for `g` to elect a leader, connect a leader-following
/// client and deploy the kv example: (group, leader, client).
pub async fn with_kv(g: Group) -> (Group, u64, Client) {
    let leader = g
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader within 20 s");
    let c = g.client().await.expect("a client of the group");
    deploy_kv(&c).await;
    (g, leader, c)
}

/// Deploy the kv example as actor `kv`.
pub async fn deploy_kv(c: &Client) {
    let w = c
        .deploy("kv", understudy_examples::KV.to_vec())
        .await
        .expect("deploy");
    assert!(w.outcome.is_ok(), "{:?}", w.outcome);
}

/// Decode a CBOR response.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    serde_cbor::from_slice(bytes).expect("CBOR response")
}

/// One proxied directed link.
struct Link {
    listen: SocketAddr,
    target: std::sync::Mutex<Option<SocketAddr>>,
    cut: std::sync::atomic::AtomicBool,
    conns: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

/// Fault-injecting proxies for every directed link of a group, on a runtime
/// of their own (so a test that blocks its thread does not stall them).
pub struct ProxyNet {
    rt: Option<tokio::runtime::Runtime>,
    links: std::collections::BTreeMap<(u64, u64), std::sync::Arc<Link>>,
}

impl ProxyNet {
    /// Proxies for every ordered pair of `ids`.
    pub fn new(ids: &[u64]) -> Result<ProxyNet> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut links = std::collections::BTreeMap::new();
        for &from in ids {
            for &to in ids {
                if from == to {
                    continue;
                }
                let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                listener.set_nonblocking(true)?;
                let link = std::sync::Arc::new(Link {
                    listen: listener.local_addr()?,
                    target: std::sync::Mutex::new(None),
                    cut: false.into(),
                    conns: std::sync::Mutex::new(Vec::new()),
                });
                rt.spawn(accept_loop(listener, link.clone()));
                links.insert((from, to), link);
            }
        }
        Ok(ProxyNet {
            rt: Some(rt),
            links,
        })
    }

    /// The address node `from` must dial to reach node `to`.
    pub fn address(&self, from: u64, to: u64) -> SocketAddr {
        self.links[&(from, to)].listen
    }

    /// Where links to node `to` lead now.
    pub fn retarget(&self, to: u64, target: SocketAddr) {
        for ((_, t), link) in &self.links {
            if *t == to {
                *link.target.lock().unwrap() = Some(target);
            }
        }
    }

    /// Cut the directed link `from → to`.
    pub fn cut(&self, from: u64, to: u64) {
        let link = &self.links[&(from, to)];
        link.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in link.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Cut every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        let pairs: Vec<(u64, u64)> = self.links.keys().copied().collect();
        for (a, b) in pairs {
            if a == id || b == id {
                self.cut(a, b);
            }
        }
    }

    /// Restore every link.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.cut.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for ProxyNet {
    fn drop(&mut self) {
        // Allowed inside an async test, unlike dropping a runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, link: std::sync::Arc<Link>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    while let Ok((mut inbound, _)) = listener.accept().await {
        let target = *link.target.lock().unwrap();
        let (false, Some(target)) = (link.cut.load(std::sync::atomic::Ordering::SeqCst), target)
        else {
            continue; // cut or not started: the connection is dropped
        };
        let task = tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        let mut conns = link.conns.lock().unwrap();
        conns.retain(|c| !c.is_finished());
        conns.push(task.abort_handle());
    }
}

/// A group of node processes wired through a [`ProxyNet`].
pub struct Group {
    /// Members by id (`None` while a member is down).
    pub nodes: std::collections::BTreeMap<u64, Option<NodeProc>>,
    /// The links between them.
    pub net: ProxyNet,
    root: PathBuf,
    cluster: String,
    extra: Vec<String>,
    /// Without proxies: each node's fixed peer port.
    direct: Option<std::collections::BTreeMap<u64, u16>>,
    /// The open-file limit of nodes (re)started from now on, if set.
    pub open_files: Option<u64>,
    /// The group's certificates (a TLS group), made by [`Group::start_tls`].
    pub tls: Option<understudy::tls::issue::Layout>,
}

impl Group {
    /// Start `n` nodes (ids 1..=n) under `root`, with fast test timing
    /// (heartbeat 25 ms, election timeout 150–300 ms, unless `extra` sets
    /// `--heartbeat-ms` and `--election-timeout-ms`) plus `extra` flags.
    pub fn start(root: &Path, n: u64, extra: &[&str]) -> Result<Group> {
        Self::start_limited(root, n, extra, None)
    }

    /// [`Group::start`] with TLS on every port: a CA, node certificates
    /// and an `admin` client certificate are made under `root/tls`
    /// ([`tls_layout`]); the harness's clients present the admin one.
    pub fn start_tls(root: &Path, n: u64, extra: &[&str]) -> Result<Group> {
        let layout = tls_layout(&root.join("tls"), n)?;
        Self::start_with(root, n, extra, None, Some(layout))
    }

    /// [`Group::start`] with every node's open-file limit at `open_files`.
    pub fn start_limited(
        root: &Path,
        n: u64,
        extra: &[&str],
        open_files: Option<u64>,
    ) -> Result<Group> {
        Self::start_with(root, n, extra, open_files, None)
    }

    fn start_with(
        root: &Path,
        n: u64,
        extra: &[&str],
        open_files: Option<u64>,
        tls: Option<understudy::tls::issue::Layout>,
    ) -> Result<Group> {
        let ids: Vec<u64> = (1..=n).collect();
        let net = ProxyNet::new(&ids)?;
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // Fast test timing, unless the test sets its own.
        if !extra.iter().any(|a| a == "--heartbeat-ms") {
            extra.extend(
                ["--heartbeat-ms", "25", "--election-timeout-ms", "150-300"].map(String::from),
            );
        }
        let mut g = Group {
            nodes: ids.iter().map(|&id| (id, None)).collect(),
            net,
            root: root.to_path_buf(),
            cluster: "test".into(),
            extra,
            direct: None,
            open_files,
            tls,
        };
        for id in ids {
            g.restart(id)?;
        }
        Ok(g)
    }

    /// Start `n` nodes whose peers talk directly, without proxies (for
    /// benchmarks: no extra hop). Peer ports are picked free beforehand;
    /// `extra` flags as given (default timing).
    pub fn start_direct(root: &Path, n: u64, extra: &[&str]) -> Result<Group> {
        Self::start_direct_with(root, n, extra, None)
    }

    /// [`Group::start_direct`] with TLS on every port ([`tls_layout`]).
    pub fn start_direct_tls(root: &Path, n: u64, extra: &[&str]) -> Result<Group> {
        let layout = tls_layout(&root.join("tls"), n)?;
        Self::start_direct_with(root, n, extra, Some(layout))
    }

    fn start_direct_with(
        root: &Path,
        n: u64,
        extra: &[&str],
        tls: Option<understudy::tls::issue::Layout>,
    ) -> Result<Group> {
        let ids: Vec<u64> = (1..=n).collect();
        let mut ports = std::collections::BTreeMap::new();
        for &id in &ids {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            ports.insert(id, l.local_addr()?.port());
        }
        let mut g = Group {
            nodes: ids.iter().map(|&id| (id, None)).collect(),
            net: ProxyNet::new(&[])?,
            root: root.to_path_buf(),
            cluster: "test".into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            direct: Some(ports),
            open_files: None,
            tls,
        };
        for id in ids {
            g.restart(id)?;
        }
        Ok(g)
    }

    /// (Re)start node `id` on its data directory.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        let mut args = self.extra.clone();
        for &other in self.nodes.keys() {
            if other != id {
                args.push("--peer".into());
                let address = match &self.direct {
                    Some(ports) => format!("127.0.0.1:{}", ports[&other]),
                    None => self.net.address(id, other).to_string(),
                };
                args.push(format!("{other}={address}"));
            }
        }
        if let Some(ports) = &self.direct {
            args.push("--peer-listen".into());
            args.push(format!("127.0.0.1:{}", ports[&id]));
        }
        if let Some(layout) = &self.tls {
            for (flag, path) in [
                ("--tls-cert", layout.node_cert(id)),
                ("--tls-key", layout.node_key(id)),
                ("--peer-ca", layout.ca_cert()),
            ] {
                args.push(flag.into());
                args.push(path.display().to_string());
            }
        }
        let dir = self.root.join(format!("node{id}"));
        let mut node =
            NodeProc::start_member_limited(&dir, id, &self.cluster, &args, self.open_files)?;
        node.client_options = self.client_options()?;
        let peer = node.peer_addr.context("a member prints its peer address")?;
        if self.direct.is_none() {
            self.net.retarget(id, peer);
        }
        self.nodes.insert(id, Some(node));
        Ok(())
    }

    /// The running node `id`.
    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes[&id].as_ref().expect("node is running")
    }

    /// SIGKILL node `id`.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut n) = self.nodes.insert(id, None).flatten() {
            n.kill9();
        }
    }

    /// Client addresses of the running nodes.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.values().flatten().map(|n| n.addr).collect()
    }

    /// How the harness's clients reach this group: plaintext, or TLS with
    /// the `admin` client certificate.
    pub fn client_options(&self) -> Result<ClientOptions> {
        let mut options = ClientOptions::default();
        if let Some(layout) = &self.tls {
            let (cert, key) = (layout.user_cert("admin"), layout.user_key("admin"));
            options.tls = Some(understudy::tls::ClientTls::load(
                &layout.ca_cert(),
                Some((&cert, &key)),
            )?);
        }
        Ok(options)
    }

    /// A client that follows the leader.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::connect_group_with_options(self.addrs(), self.client_options()?).await?)
    }

    /// A client of exactly node `id`.
    pub async fn client_of(&self, id: u64) -> Result<Client> {
        self.node(id).client().await
    }

    /// Status of every running node that answers.
    pub async fn statuses(&self) -> Vec<understudy::api::Status> {
        let mut out = Vec::new();
        for n in self.nodes.values().flatten() {
            // A frozen member answers nothing: give each two seconds.
            let options = ClientOptions {
                connect_timeout: Duration::from_secs(2),
                ..n.client_options.clone()
            };
            if let Ok(c) = Client::connect_node_with(n.addr, options).await
                && let Ok(s) = c.request_timeout(Duration::from_secs(2)).status().await
            {
                out.push(s);
            }
        }
        out
    }

    /// Wait until one node leads and every running node agrees on it;
    /// returns its id.
    pub async fn leader(&self, within: Duration) -> Result<u64> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let all = self.statuses().await;
            let leaders: Vec<_> = all
                .iter()
                .filter(|s| s.role == understudy::replication::Role::Leader)
                .collect();
            if let [l] = leaders[..]
                && all
                    .iter()
                    .all(|s| s.leader == Some(l.node_id) && s.term == l.term)
            {
                return Ok(l.node_id);
            }
            if std::time::Instant::now() > deadline {
                bail!("no agreed leader within {within:?}: {all:#?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until every running node has applied at least `index`; returns
    /// their statuses.
    pub async fn converged(
        &self,
        index: u64,
        within: Duration,
    ) -> Result<Vec<understudy::api::Status>> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let all = self.statuses().await;
            let running = self.nodes.values().flatten().count();
            if all.len() == running && all.iter().all(|s| s.applied_index >= index) {
                return Ok(all);
            }
            if std::time::Instant::now() > deadline {
                bail!("not every node applied {index} within {within:?}: {all:#?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until every running node is idle at the same applied index,
    /// then check that all hold the same state (equal digests) and none is
    /// quarantined; returns the index. On failure the nodes' logs are
    /// printed.
    pub async fn assert_same_state(&self, within: Duration) -> u64 {
        let (index, digests) = match self.settled_digests(within).await {
            Ok(x) => x,
            Err(e) => {
                for n in self.nodes.values().flatten() {
                    eprintln!("--- node {} ---\n{}", n.id, n.stderr());
                }
                panic!("{e}");
            }
        };
        for s in self.statuses().await {
            assert_eq!(s.quarantined, None, "node {} quarantined", s.node_id);
        }
        assert!(
            digests.iter().all(|(_, d)| *d == digests[0].1),
            "digests differ at applied index {index}: {digests:?}"
        );
        index
    }

    /// Wait until every running node is idle at the same applied index and
    /// return (index, digests by node): equal digests mean equal state.
    pub async fn settled_digests(&self, within: Duration) -> Result<(u64, Vec<(u64, String)>)> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let all = self.statuses().await;
            let running = self.nodes.values().flatten().count();
            let first = all.first().map(|s| s.applied_index);
            if all.len() == running
                && all.iter().all(|s| {
                    Some(s.applied_index) == first
                        && s.commit_index == s.applied_index
                        && s.last_index == s.applied_index
                })
            {
                let digests = all.iter().map(|s| (s.node_id, s.digest.clone())).collect();
                return Ok((first.unwrap_or(0), digests));
            }
            if std::time::Instant::now() > deadline {
                bail!("nodes did not settle within {within:?}: {all:#?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Certificates for a TLS group of `n` in `dir` (made once): a CA, node
/// certificates for 127.0.0.1 and localhost, and an `admin` user's.
pub fn tls_layout(dir: &Path, n: u64) -> Result<understudy::tls::issue::Layout> {
    use understudy::tls::issue::{Layout, Validity, write_file, write_private};
    let layout = Layout {
        dir: dir.to_path_buf(),
    };
    let validity = Validity::days(1);
    let (ca, _) = layout.ca(validity)?;
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    for id in 1..=n {
        let issued = ca.node(id, &hosts, validity)?;
        write_file(&layout.node_cert(id), &issued.cert_pem)?;
        write_private(&layout.node_key(id), &issued.key_pem)?;
    }
    let issued = ca.user("admin", validity)?;
    write_file(&layout.user_cert("admin"), &issued.cert_pem)?;
    write_private(&layout.user_key("admin"), &issued.key_pem)?;
    Ok(layout)
}

/// A component whose one core module holds `functions` functions of
/// `ops_per_function` register-heavy operations each (loops over 2,000
/// locals): valid WebAssembly that is slow for Cranelift's register
/// allocator (measured: a function's compile time grows about with the
/// square of its size — 0.4 MB 3.6 s, 0.8 MB 14 s, 1.6 MB 46 s). It
/// exports nothing of our world, so it is no machine either.
pub fn slow_to_compile_component(functions: usize, ops_per_function: usize) -> Vec<u8> {
    use std::fmt::Write;
    const LOCALS: usize = 2_000;
    const PER_LOOP: usize = 200;
    let mut wat = String::from("(component (core module");
    for f in 0..functions {
        let _ = write!(
            wat,
            "(func (export \"f{f}\") (param i32) (result i32) (local {})",
            "i32 ".repeat(LOCALS)
        );
        for l in 0..ops_per_function.div_ceil(PER_LOOP) {
            wat.push_str("(loop ");
            for i in 0..PER_LOOP {
                let _ = write!(
                    wat,
                    "(local.set {} (i32.add (local.get {}) (local.get {})))",
                    (i * 7 + l * 31 + f) % LOCALS + 1,
                    (i * 13 + l * 17) % LOCALS + 1,
                    (i * 3 + l) % LOCALS + 1
                );
            }
            wat.push_str("(br_if 0 (local.get 0)))");
        }
        wat.push_str("(local.get 1))");
    }
    wat.push_str("))");
    wat::parse_str(&wat).expect("generated WAT")
}
