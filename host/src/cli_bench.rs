//! `understudy bench`: a closed-loop load test against a running group
//! (like `etcdctl check perf`), part of the CLI binary. Each client keeps
//! one operation in flight: a write (a kv `put` through the leader, with
//! the chosen concern) or a read (a kv `get` at the chosen level from the
//! member the client is given, round robin), drawn by the read fraction.
//! Latencies are kept whole and sorted at the end (8 bytes per
//! operation), so the percentiles are exact.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use understudy::api::client::{Client, ClientOptions};
use understudy::api::{ReadLevel, WriteConcern};
use understudy::types::Outcome;

/// Most clients a bench runs (unit: clients, each one connection).
pub const BENCH_CLIENTS_MAX: usize = 1024;
/// Longest bench (unit: seconds).
pub const BENCH_SECONDS_MAX: u64 = 3600;
/// Largest value a bench writes (unit: bytes; the kv machine takes up to
/// `VALUE_BYTES_MAX`, but the JSON-free CBOR command must fit
/// `COMMAND_BYTES_MAX` too).
pub const BENCH_VALUE_BYTES_MAX: usize = 512 << 10;

/// What to run.
pub struct Plan {
    /// A member of the group.
    pub addr: SocketAddr,
    /// Closed-loop clients.
    pub clients: usize,
    /// How long.
    pub seconds: u64,
    /// Fraction of operations that are reads (0 to 1).
    pub reads: f64,
    /// Write concern of the writes.
    pub concern: WriteConcern,
    /// Read level of the reads, and as it was written.
    pub level: (ReadLevel, String),
    /// The kv actor written and read (deployed from the kv example if the
    /// group has none by that name).
    pub actor: String,
    /// Keys written and read (`bench-0` … `bench-(keys-1)`).
    pub keys: u64,
    /// Bytes of each value written.
    pub value_bytes: usize,
}

/// One kind's figures.
#[derive(Default, serde::Serialize)]
struct Figures {
    ops: u64,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    errors: u64,
}

fn figures(mut latencies: Vec<Duration>, errors: u64, elapsed: Duration) -> Figures {
    latencies.sort_unstable();
    let at = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[i].as_nanos() as f64 / 1e3
    };
    Figures {
        ops: latencies.len() as u64,
        ops_per_s: latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: at(1.0),
        errors,
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    writes: Vec<Duration>,
    reads: Vec<Duration>,
    write_errors: u64,
    read_errors: u64,
    first_error: Option<String>,
}

/// Check the plan's numbers against their limits.
pub fn check(plan: &Plan) -> Result<()> {
    if plan.clients == 0 || plan.clients > BENCH_CLIENTS_MAX {
        bail!(
            "--clients {} is not within 1..={BENCH_CLIENTS_MAX} (BENCH_CLIENTS_MAX)",
            plan.clients
        );
    }
    if plan.seconds == 0 || plan.seconds > BENCH_SECONDS_MAX {
        bail!(
            "--seconds {} is not within 1..={BENCH_SECONDS_MAX} (BENCH_SECONDS_MAX)",
            plan.seconds
        );
    }
    if !(0.0..=1.0).contains(&plan.reads) {
        bail!("--reads {} is not a fraction within 0..=1", plan.reads);
    }
    if plan.value_bytes > BENCH_VALUE_BYTES_MAX {
        bail!(
            "--value-bytes {} is over {BENCH_VALUE_BYTES_MAX} (BENCH_VALUE_BYTES_MAX)",
            plan.value_bytes
        );
    }
    if plan.keys == 0 {
        bail!("--keys must be at least 1");
    }
    Ok(())
}

fn put(key: u64, value: &str) -> Vec<u8> {
    understudy::codec::to_cbor(&serde_json::json!({
        "put": {"key": format!("bench-{key}"), "value": value}
    }))
}

fn get(key: u64) -> Vec<u8> {
    understudy::codec::to_cbor(&serde_json::json!({"get": {"key": format!("bench-{key}")}}))
}

/// Run the bench and print its table (or JSON).
pub async fn run(
    plan: Plan,
    options: ClientOptions,
    request_timeout: Duration,
    json: bool,
) -> Result<()> {
    check(&plan)?;
    let group = |options: ClientOptions| async move {
        Client::connect_group_with_options(vec![plan.addr], options)
            .await
            .map(|c| {
                c.request_timeout(request_timeout)
                    .retry_for(request_timeout)
            })
    };
    let admin = group(options.clone())
        .await
        .with_context(|| format!("is a node running at {}?", plan.addr))?;
    let status = admin.status().await?;
    if !status.actors.contains(&plan.actor) {
        let w = admin
            .deploy(&plan.actor, understudy_examples::KV.to_vec())
            .await
            .with_context(|| format!("deploying the kv example as actor {:?}", plan.actor))?;
        if let Outcome::Ok(_) = w.outcome {
            eprintln!(
                "deployed the kv example as actor {:?} (index {})",
                plan.actor, w.index
            );
        } else {
            bail!(
                "deploying the kv example as {:?}: {:?}",
                plan.actor,
                w.outcome
            );
        }
    }
    let mut members: Vec<SocketAddr> = Vec::new();
    for a in status.client_addresses.values() {
        members.extend(understudy::net::resolve(a).await);
    }
    if members.is_empty() {
        members.push(plan.addr);
    }
    // Connections first, then the clock.
    let mut clients = Vec::with_capacity(plan.clients);
    for c in 0..plan.clients {
        let writer = group(options.clone()).await?;
        let member = members[c % members.len()];
        let reader = Client::connect_node_with(member, options.clone())
            .await
            .with_context(|| format!("connecting to {member}"))?
            .request_timeout(request_timeout);
        clients.push((writer, reader));
    }
    let value = "x".repeat(plan.value_bytes);
    let done = Arc::new(AtomicU64::new(0));
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(plan.seconds),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("bench [{bar:40}] {pos}/{len} s, {msg}")?
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(plan.seconds);
    let mut tasks = Vec::with_capacity(plan.clients);
    for (c, (writer, reader)) in clients.into_iter().enumerate() {
        let (value, actor, done) = (value.clone(), plan.actor.clone(), done.clone());
        let (reads, keys, concern, level) = (plan.reads, plan.keys, plan.concern, plan.level.0);
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            // A small deterministic generator per client: the mix is the
            // same from run to run.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            while Instant::now() < deadline {
                let key = next() % keys;
                let read = (next() % 1_000_000) as f64 / 1e6 < reads;
                let began = Instant::now();
                let result = if read {
                    reader
                        .query_at(&actor, get(key), level)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|(o, _)| match o {
                            Outcome::Ok(_) => Ok(()),
                            other => Err(format!("{other:?}")),
                        })
                } else {
                    let tag = writer.next_tag();
                    match concern {
                        WriteConcern::Leader => writer
                            .command_leader(&actor, put(key, &value), tag)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        _ => writer
                            .command_tagged(&actor, put(key, &value), tag, concern)
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|w| match w.outcome {
                                Outcome::Ok(_) => Ok(()),
                                other => Err(format!("{other:?}")),
                            }),
                    }
                };
                let took = began.elapsed();
                match (result, read) {
                    (Ok(()), true) => seen.reads.push(took),
                    (Ok(()), false) => seen.writes.push(took),
                    (Err(e), read) => {
                        if read {
                            seen.read_errors += 1;
                        } else {
                            seen.write_errors += 1;
                        }
                        seen.first_error.get_or_insert(e);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let elapsed = start.elapsed();
                bar.set_position(elapsed.as_secs().min(plan.seconds));
                let ops = done.load(Ordering::Relaxed);
                bar.set_message(format!(
                    "{ops} ops, {:.0} ops/s",
                    ops as f64 / elapsed.as_secs_f64().max(1e-3)
                ));
            }
        })
    };
    let mut all = Seen::default();
    for t in tasks {
        let seen = t.await.context("a bench client")?;
        all.writes.extend(seen.writes);
        all.reads.extend(seen.reads);
        all.write_errors += seen.write_errors;
        all.read_errors += seen.read_errors;
        if all.first_error.is_none() {
            all.first_error = seen.first_error;
        }
    }
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    let mut every: Vec<Duration> = all.writes.iter().chain(&all.reads).copied().collect();
    every.sort_unstable();
    let writes = figures(all.writes, all.write_errors, elapsed);
    let reads = figures(all.reads, all.read_errors, elapsed);
    let total = figures(every, all.write_errors + all.read_errors, elapsed);
    let concern = match plan.concern {
        WriteConcern::Leader => "leader",
        _ => "majority",
    };
    let level = &plan.level.1;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "clients": plan.clients,
                "seconds": elapsed.as_secs_f64(),
                "members": members.len(),
                "reads_fraction": plan.reads,
                "concern": concern,
                "level": level,
                "keys": plan.keys,
                "value_bytes": plan.value_bytes,
                "writes": writes,
                "reads": reads,
                "total": total,
                "first_error": all.first_error,
            })
        );
        return Ok(());
    }
    println!(
        "{} clients for {:.1} s against {} members: {:.0}% writes ({concern}), {:.0}% reads ({level}), {} keys, {}-byte values",
        plan.clients,
        elapsed.as_secs_f64(),
        members.len(),
        (1.0 - plan.reads) * 100.0,
        plan.reads * 100.0,
        plan.keys,
        plan.value_bytes
    );
    println!(
        "{:<7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "", "ops", "ops/s", "p50", "p99", "p99.9", "max", "errors"
    );
    for (name, f) in [("writes", &writes), ("reads", &reads), ("total", &total)] {
        println!(
            "{name:<7} {:>9} {:>10.0} {:>10} {:>10} {:>10} {:>10} {:>7}",
            f.ops,
            f.ops_per_s,
            ms(f.p50_us),
            ms(f.p99_us),
            ms(f.p999_us),
            ms(f.max_us),
            f.errors
        );
    }
    if let Some(e) = all.first_error {
        println!("first error: {e}");
    }
    Ok(())
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            addr: "127.0.0.1:1".parse().unwrap(),
            clients: 1,
            seconds: 1,
            reads: 0.0,
            concern: WriteConcern::Majority,
            level: (ReadLevel::Linearizable, "linearizable".into()),
            actor: "bench".into(),
            keys: 1,
            value_bytes: 0,
        }
    }

    #[test]
    fn a_plan_is_admitted_at_each_limit_and_refused_one_past() {
        let with = |f: &dyn Fn(&mut Plan)| {
            let mut p = plan();
            f(&mut p);
            check(&p)
        };
        assert!(with(&|p| p.clients = BENCH_CLIENTS_MAX).is_ok());
        let e = with(&|p| p.clients = BENCH_CLIENTS_MAX + 1).unwrap_err();
        assert!(e.to_string().contains("BENCH_CLIENTS_MAX"), "{e}");
        assert!(with(&|p| p.clients = 0).is_err());
        assert!(with(&|p| p.seconds = BENCH_SECONDS_MAX).is_ok());
        let e = with(&|p| p.seconds = BENCH_SECONDS_MAX + 1).unwrap_err();
        assert!(e.to_string().contains("BENCH_SECONDS_MAX"), "{e}");
        assert!(with(&|p| p.value_bytes = BENCH_VALUE_BYTES_MAX).is_ok());
        let e = with(&|p| p.value_bytes = BENCH_VALUE_BYTES_MAX + 1).unwrap_err();
        assert!(e.to_string().contains("BENCH_VALUE_BYTES_MAX"), "{e}");
        assert!(with(&|p| p.reads = 1.0).is_ok());
        assert!(with(&|p| p.reads = 1.001).is_err());
        assert!(with(&|p| p.reads = f64::NAN).is_err());
        assert!(with(&|p| p.keys = 0).is_err());
        // The largest value still makes a command under the command limit.
        let command = put(u64::MAX, &"x".repeat(BENCH_VALUE_BYTES_MAX));
        assert!(command.len() <= understudy::limits::COMMAND_BYTES_MAX);
    }

    #[test]
    fn percentiles_are_read_from_the_sorted_latencies() {
        let l: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let f = figures(l, 2, Duration::from_secs(2));
        assert_eq!(f.ops, 1000);
        assert_eq!(f.ops_per_s, 500.0);
        assert_eq!(
            (f.p50_us, f.p99_us, f.p999_us, f.max_us),
            (501.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(f.errors, 2);
        let empty = figures(Vec::new(), 0, Duration::from_secs(1));
        assert_eq!((empty.ops, empty.p99_us), (0, 0.0));
    }
}
