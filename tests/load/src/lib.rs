//! The closed-loop load generator of Understudy's benchmarks. It knows
//! nothing of Understudy: the replication benchmark drives an Understudy
//! group with it, and `tests/etcd-compare` drives etcd with the same code,
//! so that the two are compared through one client-side measurement.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one closed-loop run measured.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Completed operations per second over the whole run.
    pub ops_per_s: f64,
    /// Median latency of one operation.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Operations completed.
    pub ops: usize,
}

/// The `p` quantile (0..=1) of sorted latencies (zero if there are none).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Microseconds, for printing.
pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `clients` closed-loop clients for `secs` seconds: client `c` gets its
/// own connection from `connect(c)` (made before the clock starts) and
/// runs `op(connection, id)` back to back, `id` unique per operation
/// (client number in the high 32 bits).
pub async fn closed_loop<C, Connect, ConnectFut, Op, OpFut>(
    clients: usize,
    secs: f64,
    connect: Connect,
    op: Op,
) -> Run
where
    C: Send + Sync + 'static,
    Connect: Fn(usize) -> ConnectFut,
    ConnectFut: Future<Output = C>,
    Op: Fn(Arc<C>, u64) -> OpFut + Send + Sync + Clone + 'static,
    OpFut: Future<Output = ()> + Send,
{
    let mut conns = Vec::with_capacity(clients);
    for c in 0..clients {
        conns.push(Arc::new(connect(c).await));
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (c, conn) in conns.into_iter().enumerate() {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(conn.clone(), (c as u64) << 32 | i).await;
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a load client panicked"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Run {
        ops_per_s: all.len() as f64 / elapsed,
        p50: pct(&all, 0.5),
        p99: pct(&all, 0.99),
        ops: all.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_client_runs_until_the_deadline_and_latencies_are_ordered() {
        let run = closed_loop(
            3,
            0.2,
            |c| async move { c },
            |_, _| async { tokio::time::sleep(Duration::from_millis(2)).await },
        )
        .await;
        // 3 clients × 0.2 s / ≥ 2 ms: at most 300 operations, and surely some.
        assert!(run.ops > 30 && run.ops <= 303, "{run:?}");
        assert!(run.p50 >= Duration::from_millis(2) && run.p99 >= run.p50);
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
    }
}
