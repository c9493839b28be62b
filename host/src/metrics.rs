//! A node's Prometheus metrics (prometheus-client), served at `/metrics`
//! by the HTTP API. Counters and histograms are fed where things happen
//! (the log writer's fsyncs, the applier's runs, client requests, the
//! shell's elections); gauges are set from the node's status when scraped
//! ([`Metrics::observe`]), so they are never stale.

use crate::api::Status;
use crate::replication::Role;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// One label: a peer's id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer.
    pub peer: String,
}

/// One label: an actor's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabel {
    /// The actor.
    pub actor: String,
}

/// One label: a role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    /// `leader`, `follower`, `candidate`, `precandidate`.
    pub role: String,
}

/// One label: what happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome.
    pub outcome: String,
}

/// Labels of a client request: its kind and the port it came through.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// `command`, `query`, `deploy`, `status`, `admin`.
    pub kind: String,
    /// `cbor` or `http`.
    pub port: String,
}

/// Labels of a refusal: the error code and the port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    /// The CBOR API's error code (`NotLeader`, `Overloaded`, …).
    pub code: String,
    /// `cbor` or `http`.
    pub port: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The latency buckets' upper bounds: 50 µs doubling to about 13 s.
const BUCKETS: usize = 19;

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, BUCKETS as u16))
}

/// Seconds of write counts a node keeps for its status (the cluster page's
/// writes/s and p99).
pub const RECENT_SECONDS: usize = 120;

/// Writes answered per second, with a latency histogram each.
#[derive(Default)]
struct Recent {
    seconds: std::collections::VecDeque<(u64, u64, [u64; BUCKETS + 1])>,
}

impl Recent {
    fn record(&mut self, now_s: u64, seconds: f64) {
        if self.seconds.back().is_none_or(|b| b.0 != now_s) {
            self.seconds.push_back((now_s, 0, [0; BUCKETS + 1]));
            while self.seconds.len() > RECENT_SECONDS {
                self.seconds.pop_front();
            }
        }
        let back = self.seconds.back_mut().expect("pushed");
        back.1 += 1;
        let bucket = (0..BUCKETS)
            .find(|&k| seconds <= bucket_bound(k))
            .unwrap_or(BUCKETS);
        back.2[bucket] += 1;
    }
}

fn bucket_bound(k: usize) -> f64 {
    0.000_05 * 2f64.powi(k as i32)
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    role: Family<RoleLabel, Gauge>,
    term: Gauge,
    last_index: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    pending_writes: Gauge,
    follower_lag_entries: Family<PeerLabel, Gauge>,
    follower_lag_seconds: Family<PeerLabel, FloatGauge>,
    follower_heard_seconds: Family<PeerLabel, FloatGauge>,
    quarantined: Gauge,
    snapshot_in_bytes: Gauge,
    snapshot_in_chunks_done: Gauge,
    snapshot_in_chunks: Gauge,
    members: Family<RoleLabel, Gauge>,
    /// Elections this node took part in as a candidate, by outcome.
    pub elections: Family<OutcomeLabel, Counter>,
    /// Times this node saw the leader change.
    pub leader_changes: Counter,
    /// Times this node quarantined itself (the determinism alarm).
    pub quarantines: Counter,
    /// The log writer's batches, from hand-over to durable.
    pub fsync_seconds: Histogram,
    /// The applier's runs of committed entries.
    pub apply_seconds: Histogram,
    /// Client requests, from arrival to answer.
    pub request_seconds: Family<RequestLabel, Histogram>,
    /// Requests answered with an error, by code.
    pub refusals: Family<RefusalLabel, Counter>,
    /// Client connections open (both ports).
    pub connections: Gauge,
    /// Machine calls run, by actor (an execution ahead of commit that is
    /// discarded and run again counts again).
    pub machine_calls: Family<ActorLabel, Counter>,
    recent: std::sync::Mutex<Recent>,
    /// Fuel those calls used, by actor.
    pub machine_fuel: Family<ActorLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A node's metrics, registered under the `understudy_` prefix.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("understudy");
        let m = Metrics {
            registry: Registry::default(),
            role: Family::default(),
            term: Gauge::default(),
            last_index: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            pending_writes: Gauge::default(),
            follower_lag_entries: Family::default(),
            follower_lag_seconds: Family::default(),
            follower_heard_seconds: Family::default(),
            quarantined: Gauge::default(),
            snapshot_in_bytes: Gauge::default(),
            snapshot_in_chunks_done: Gauge::default(),
            snapshot_in_chunks: Gauge::default(),
            members: Family::default(),
            elections: Family::default(),
            leader_changes: Counter::default(),
            quarantines: Counter::default(),
            fsync_seconds: latency(),
            apply_seconds: latency(),
            request_seconds: Family::new_with_constructor(latency),
            refusals: Family::default(),
            connections: Gauge::default(),
            machine_calls: Family::default(),
            machine_fuel: Family::default(),
            recent: Default::default(),
        };
        r.register(
            "role",
            "This node's role (1 for the role it has)",
            m.role.clone(),
        );
        r.register("term", "The current term", m.term.clone());
        r.register(
            "last_index",
            "The last index of this node's log",
            m.last_index.clone(),
        );
        r.register(
            "commit_index",
            "The highest index this node knows committed",
            m.commit_index.clone(),
        );
        r.register(
            "applied_index",
            "The highest index this node has applied",
            m.applied_index.clone(),
        );
        r.register(
            "pending_writes",
            "Writes waiting for the log or the applier (the write queue)",
            m.pending_writes.clone(),
        );
        r.register(
            "follower_lag_entries",
            "On the leader: entries each follower lacks",
            m.follower_lag_entries.clone(),
        );
        r.register_with_unit(
            "follower_lag",
            "On the leader: the age of the oldest entry each follower lacks",
            Unit::Seconds,
            m.follower_lag_seconds.clone(),
        );
        r.register_with_unit(
            "follower_heard",
            "On the leader: time since each follower was last heard from",
            Unit::Seconds,
            m.follower_heard_seconds.clone(),
        );
        r.register(
            "quarantined",
            "1 while this node serves no reads (the determinism alarm, or a halt)",
            m.quarantined.clone(),
        );
        r.register(
            "snapshot_in_bytes",
            "Size of the snapshot being received (0: none)",
            m.snapshot_in_bytes.clone(),
        );
        r.register(
            "snapshot_in_chunks_done",
            "Chunks of the snapshot being received that arrived and were verified",
            m.snapshot_in_chunks_done.clone(),
        );
        r.register(
            "snapshot_in_chunks",
            "Chunks of the snapshot being received, in all",
            m.snapshot_in_chunks.clone(),
        );
        r.register(
            "members",
            "Members of the configuration in effect, by role (voter, learner)",
            m.members.clone(),
        );
        r.register(
            "elections",
            "Elections this node ran as a candidate, by outcome (started, won)",
            m.elections.clone(),
        );
        r.register(
            "leader_changes",
            "Times this node saw the leader change",
            m.leader_changes.clone(),
        );
        r.register(
            "quarantines",
            "Times this node quarantined itself",
            m.quarantines.clone(),
        );
        r.register_with_unit(
            "fsync",
            "Log writes, from hand-over to the log writer to durable",
            Unit::Seconds,
            m.fsync_seconds.clone(),
        );
        r.register_with_unit(
            "apply",
            "Runs of committed entries through the applier",
            Unit::Seconds,
            m.apply_seconds.clone(),
        );
        r.register_with_unit(
            "request",
            "Client requests, from arrival to answer (a majority write: its commit and apply)",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        r.register(
            "refusals",
            "Client requests answered with an error, by code",
            m.refusals.clone(),
        );
        r.register(
            "client_connections",
            "Client connections open",
            m.connections.clone(),
        );
        r.register(
            "machine_calls",
            "Machine calls run, by actor",
            m.machine_calls.clone(),
        );
        r.register(
            "machine_fuel",
            "Fuel (instructions, by the pinned costs) machine calls used, by actor",
            m.machine_fuel.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// A shared handle.
    pub fn shared() -> Arc<Metrics> {
        Arc::new(Metrics::new())
    }

    /// Set the gauges from the node's status.
    pub fn observe(&self, s: &Status) {
        for (role, name) in [
            (Role::Leader, "leader"),
            (Role::Follower, "follower"),
            (Role::Candidate, "candidate"),
            (Role::PreCandidate, "precandidate"),
        ] {
            self.role
                .get_or_create(&RoleLabel { role: name.into() })
                .set(i64::from(s.role == role));
        }
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(int(s.term));
        self.last_index.set(int(s.last_index));
        self.commit_index.set(int(s.commit_index));
        self.applied_index.set(int(s.applied_index));
        self.pending_writes.set(int(s.pending_writes as u64));
        self.quarantined.set(i64::from(s.quarantined.is_some()));
        // Followers come and go (a new leader, a member removed): only
        // the current ones are shown.
        self.follower_lag_entries.clear();
        self.follower_lag_seconds.clear();
        self.follower_heard_seconds.clear();
        for f in &s.followers {
            let peer = PeerLabel {
                peer: f.id.to_string(),
            };
            self.follower_lag_entries
                .get_or_create(&peer)
                .set(int(f.lag_entries));
            self.follower_lag_seconds
                .get_or_create(&peer)
                .set(f.lag_ms as f64 / 1000.0);
            self.follower_heard_seconds
                .get_or_create(&peer)
                .set(f.heard_ms_ago as f64 / 1000.0);
        }
        let (bytes, done, chunks) = s
            .snapshot_in
            .as_ref()
            .map_or((0, 0, 0), |p| (p.bytes, p.chunks_done, p.chunks));
        self.snapshot_in_bytes.set(int(bytes));
        self.snapshot_in_chunks_done.set(int(done));
        self.snapshot_in_chunks.set(int(chunks));
        let voters = s.membership.all_voters().len() as i64;
        let learners = s
            .membership
            .learners
            .iter()
            .filter(|l| !s.membership.is_voter(**l))
            .count() as i64;
        self.members
            .get_or_create(&RoleLabel {
                role: "voter".into(),
            })
            .set(voters);
        self.members
            .get_or_create(&RoleLabel {
                role: "learner".into(),
            })
            .set(learners);
    }

    /// A client request answered after `seconds`; `refused` with the error
    /// code if it was one.
    pub fn request(&self, kind: &str, port: &str, seconds: f64, refused: Option<String>) {
        self.request_seconds
            .get_or_create(&RequestLabel {
                kind: kind.into(),
                port: port.into(),
            })
            .observe(seconds);
        if kind == "command" && refused.is_none() {
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(now_s, seconds);
        }
        if let Some(code) = refused {
            self.refusals
                .get_or_create(&RefusalLabel {
                    code,
                    port: port.into(),
                })
                .inc();
        }
    }

    /// Writes answered in each of the last seconds, with their p99.
    pub fn recent_writes(&self) -> Vec<crate::api::WritesSecond> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .seconds
            .iter()
            .map(|(at_s, writes, buckets)| {
                let rank = ((*writes as f64 * 0.99).ceil() as u64).max(1);
                let mut seen = 0;
                let k = buckets
                    .iter()
                    .position(|n| {
                        seen += n;
                        seen >= rank
                    })
                    .unwrap_or(BUCKETS);
                crate::api::WritesSecond {
                    at_s: *at_s,
                    writes: *writes,
                    p99_us: (bucket_bound(k.min(BUCKETS - 1)) * 1e6).round() as u64,
                }
            })
            .collect()
    }

    /// `calls` machine calls of `actor` that used `fuel` in all.
    pub fn machine_calls(&self, actor: &str, calls: u64, fuel: u64) {
        let label = ActorLabel {
            actor: actor.into(),
        };
        self.machine_calls.get_or_create(&label).inc_by(calls);
        self.machine_fuel.get_or_create(&label).inc_by(fuel);
    }

    /// The exposition in the Prometheus text format (version 0.0.4, what
    /// every Prometheus scrapes and `promtool check metrics` reads).
    pub fn encode(&self) -> String {
        let mut open = String::new();
        prometheus_client::encoding::text::encode(&mut open, &self.registry)
            .expect("writing to a String cannot fail");
        prometheus_text(&open)
    }
}

/// The media type of [`Metrics::encode`].
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// prometheus-client writes OpenMetrics; the Prometheus text format differs
/// in three ways that matter here: a counter's HELP and TYPE name its
/// samples' name (with `_total`), there are no UNIT lines, and no `# EOF`.
fn prometheus_text(open: &str) -> String {
    let mut counters = std::collections::BTreeSet::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(name) {
                    out.push_str(prefix);
                    out.push_str(name);
                    out.push_str("_total");
                    out.push_str(&rest[name.len()..]);
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The kind of a client request, for its metrics.
pub fn kind_of(request: &crate::api::Request) -> &'static str {
    use crate::api::Request as R;
    match request {
        R::Command { .. } => "command",
        R::Query { .. } => "query",
        R::Deploy { .. } => "deploy",
        R::Status => "status",
        R::Authenticate { .. } => "authenticate",
        R::Promote { .. } | R::Auth(_) | R::Audit { .. } | R::Membership { .. } => "admin",
        R::Backup(_) => "backup",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_writes_keep_their_last_seconds_at_and_one_past_the_limit() {
        let mut r = Recent::default();
        for s in 0..RECENT_SECONDS as u64 {
            r.record(s, 0.001);
        }
        assert_eq!(r.seconds.len(), RECENT_SECONDS);
        r.record(RECENT_SECONDS as u64 - 1, 0.001);
        assert_eq!(
            r.seconds.len(),
            RECENT_SECONDS,
            "the same second counts again"
        );
        assert_eq!(r.seconds.back().map(|b| b.1), Some(2));
        r.record(RECENT_SECONDS as u64, 0.001);
        assert_eq!(r.seconds.len(), RECENT_SECONDS, "one past: the oldest goes");
        assert_eq!(r.seconds.front().map(|f| f.0), Some(1));
    }

    #[test]
    fn a_p99_is_the_bound_of_the_bucket_that_holds_it() {
        let m = Metrics::new();
        for _ in 0..99 {
            m.request("command", "cbor", 0.000_04, None);
        }
        m.request("command", "cbor", 0.5, None);
        let w = m.recent_writes();
        assert_eq!(w.iter().map(|s| s.writes).sum::<u64>(), 100);
        // 99 of 100 within the first bucket (50 µs); the 100th is not p99.
        assert!(w.iter().all(|s| s.writes < 100 || s.p99_us == 50), "{w:?}");
    }

    #[test]
    fn counters_are_named_by_their_samples_and_units_and_eof_go() {
        let m = Metrics::new();
        m.leader_changes.inc();
        let text = m.encode();
        assert!(
            text.contains("# HELP understudy_leader_changes_total Times"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE understudy_leader_changes_total counter"),
            "{text}"
        );
        assert!(text.contains("understudy_leader_changes_total 1"), "{text}");
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE understudy_fsync_seconds histogram"),
            "{text}"
        );
    }
}
