//! etcd's majority-write figures on this machine, measured the way the
//! replication benchmark measures Understudy's: a 3-member group of real
//! processes on 127.0.0.1 (etcd's defaults: fsync on every commit), the same
//! closed-loop generator with 1, 16 and 64 clients, each on its own
//! connection to the leader, one put per operation over 10,000 keys.
//!
//! Prints a table and writes `clients writes/s p50_us p99_us` lines to the
//! file named by `ETCD_FIGURES` (if set), which the replication benchmark
//! reads to print its ratios against etcd from the same session.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use understudy_load::{closed_loop, us};

/// etcd members, killed when dropped (also on a panic).
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn main() {
    let secs: f64 = std::env::var("UNDERSTUDY_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let dir = tempfile::tempdir_in(std::env::var("UNDERSTUDY_BENCH_DIR").unwrap_or(".".into()))
        .expect("temp dir");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Members(Vec::new());
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("log");
        let child = Command::new("etcd")
            .args([
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &dir.path().join(format!("m{i}")).display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        members.0.push(child);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let endpoints: Vec<String> = ports
            .iter()
            .map(|(c, _)| format!("http://127.0.0.1:{c}"))
            .collect();
        let leader = find_leader(&endpoints).await;
        println!(
            "== etcd {} (3 members, defaults), majority puts through the leader ==",
            version().await
        );
        println!(
            "{:>8} {:>12} {:>10} {:>10}",
            "clients", "writes/s", "p50", "p99"
        );
        let mut lines = String::new();
        for clients in [1usize, 16, 64] {
            let endpoint = leader.clone();
            let run = closed_loop(
                clients,
                secs,
                |_| {
                    let endpoint = endpoint.clone();
                    async move {
                        tokio::sync::Mutex::new(
                            etcd_client::Client::connect([endpoint], None)
                                .await
                                .expect("connect to etcd"),
                        )
                    }
                },
                |c: Arc<tokio::sync::Mutex<etcd_client::Client>>, i| async move {
                    let key = format!("k{}", i % 10_000);
                    c.lock()
                        .await
                        .put(key, i.to_string(), None)
                        .await
                        .expect("etcd put");
                },
            )
            .await;
            println!(
                "{clients:>8} {:>12.0} {:>10} {:>10}",
                run.ops_per_s,
                us(run.p50),
                us(run.p99)
            );
            lines.push_str(&format!(
                "{clients} {:.0} {:.0} {:.0}\n",
                run.ops_per_s,
                run.p50.as_secs_f64() * 1e6,
                run.p99.as_secs_f64() * 1e6
            ));
        }
        if let Ok(path) = std::env::var("ETCD_FIGURES") {
            std::fs::write(&path, lines).expect("write the figures");
        }
    });
}

/// The endpoint of the member that leads, once the group has elected one.
async fn find_leader(endpoints: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for e in endpoints {
            if let Ok(mut c) = etcd_client::Client::connect([e.clone()], None).await
                && let Ok(status) = c.status().await
                && status.leader() != 0
                && status.leader() == status.header().map_or(0, |h| h.member_id())
            {
                return e.clone();
            }
        }
        assert!(Instant::now() < deadline, "etcd elected no leader in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn version() -> String {
    let out = Command::new("etcd").arg("--version").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.replace("etcd Version: ", "")))
        .unwrap_or_else(|| "?".into())
}
