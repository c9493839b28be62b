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

/// Path of the `understudy` binary, built (once per test process) from the
/// current sources: `cargo test -p understudy-tests` alone would otherwise
/// run whatever stale binary an earlier build left behind.
pub fn understudy_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test-exe> → target/<profile>/understudy
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("profile dir");
        let target_dir = profile_dir.parent().expect("target dir");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "understudy",
            "--bin",
            "understudy",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the understudy binary");
        assert!(status.success(), "building the understudy binary failed");
        let bin = profile_dir.join("understudy");
        assert!(
            bin.exists(),
            "{} not found after building it",
            bin.display()
        );
        bin
    })
    .clone()
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
        std::fs::create_dir_all(data_dir)?;
        let stderr_path = data_dir.with_extension(format!("stderr.{}", rand::random::<u32>()));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut child = Command::new(understudy_bin())
            .args([
                "node",
                "--id",
                &id.to_string(),
                "--cluster",
                cluster,
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning understudy")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
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
