//! Test harness: real `understudy` node processes on 127.0.0.1.
//!
//! [`NodeProc`] starts the binary with `--listen 127.0.0.1:0`, reads the
//! bound address from its first line of output (no fixed ports, no races),
//! and kills the process on drop, so a failing test leaves nothing behind.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use understudy::api::client::Client;

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
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node id.
    pub id: u64,
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
        let args = [
            "node",
            "--id",
            &id_arg,
            "--cluster",
            cluster,
            "--listen",
            "127.0.0.1:0",
        ];
        Self::spawn(&args, data_dir, id)
    }

    /// Start `understudy dev` (the README's first command) on `data_dir`.
    pub fn start_dev(data_dir: &Path) -> Result<NodeProc> {
        Self::spawn(&["dev", "--listen", "127.0.0.1:0"], data_dir, 1)
    }

    fn spawn(args: &[&str], data_dir: &Path, id: u64) -> Result<NodeProc> {
        std::fs::create_dir_all(data_dir)?;
        let stderr_path = data_dir.with_extension(format!("stderr.{}", rand::random::<u32>()));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut child = Command::new(understudy_bin())
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
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
        let Some(addr) = addr else {
            let _ = child.kill();
            let status = child.wait()?;
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            bail!("node did not start ({status}): {err}");
        };
        Ok(NodeProc {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            id,
            stderr_path,
        })
    }

    /// Connect a client, retrying briefly while the node finishes starting.
    pub async fn client(&self) -> Result<Client> {
        let mut last = None;
        for _ in 0..50 {
            match Client::connect(self.addr).await {
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

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The node's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
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

/// CBOR of a JSON text, as the CLI sends it.
pub fn cbor(json: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(json).expect("test JSON");
    understudy::codec::to_cbor(&v)
}

/// Decode a CBOR response.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    serde_cbor::from_slice(bytes).expect("CBOR response")
}
