//! A node's configuration: what it needs to start (its ids, addresses,
//! data directory, limits, timeouts, peers, TLS), with defaults and
//! validation. Read from `node.toml` or built from CLI flags.

use crate::config::{LogKind, Timing};
use crate::replication::GroupConfig;
use crate::sandbox::SandboxLimits;
use crate::storage::{self, Identity, StorageOptions};
use crate::types::NodeId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a node needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The group's cluster id (a node refuses a data dir of another cluster).
    pub cluster_id: String,
    /// Client API address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// LMDB settings.
    #[serde(default)]
    pub storage: StorageOptions,
    /// Sandbox limits (must be equal on every node of a group).
    #[serde(default)]
    pub limits: SandboxLimits,
    /// Most writes waiting for commit before new ones are refused.
    #[serde(default = "default_pending_writes_max")]
    pub pending_writes_max: usize,
    /// Most entries executed in one applier step.
    #[serde(default = "default_apply_batch_max")]
    pub apply_batch_entries_max: usize,
    /// Executed entries kept in memory before their effects are made
    /// durable in one state transaction (also done every tick).
    #[serde(default = "default_checkpoint_entries_max")]
    pub checkpoint_entries_max: usize,
    /// Where other members connect (required when `peers` is not empty).
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// Where the HTTP/JSON API listens (`None`: not served). Same TLS and
    /// auth as the client port.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// The other members of the group and their peer addresses. Empty: a
    /// group of one.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Heartbeat and election timing (equal on every member).
    #[serde(default)]
    pub timing: Timing,
    /// How long a read may wait (for a leader, or to catch up) before it
    /// fails with `Timeout`.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// How long a write may wait for its outcome (the log, a majority,
    /// the apply) before it is answered `Timeout` ("outcome unknown":
    /// retried with the same client tag it is applied at most once).
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// How long the leader may compile a deployed module before it
    /// refuses it (`TooLarge`, nothing reaches the log). The leader
    /// compiles before it proposes, off the node and applier threads, one
    /// module at a time (another deploy meanwhile is `Overloaded`); every
    /// replica later compiles the same code, so this bounds how long
    /// each replica's applier spends on one deploy.
    #[serde(default = "default_module_compile_timeout_ms")]
    pub module_compile_timeout_ms: u64,
    /// How long a client's frame may take to arrive, from its first byte
    /// to its last, before the connection is refused (`BadFrame`) and
    /// closed: a slow sender cannot hold a read buffer for long.
    #[serde(default = "default_frame_read_timeout_ms")]
    pub frame_read_timeout_ms: u64,
    /// How long a client connection with nothing in flight may stay
    /// silent before it is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// When the applied prefix of the log is compacted.
    #[serde(default)]
    pub compaction: Compaction,
    /// What the log holds (equal on every member).
    #[serde(default)]
    pub log_kind: LogKind,
    /// TLS on both ports (`None`: plaintext). See [`crate::tls`].
    #[serde(default)]
    pub tls: Option<crate::tls::TlsSettings>,
    /// Listen on addresses other than loopback without TLS (refused
    /// otherwise; logged at every start).
    #[serde(default)]
    pub insecure: bool,
    /// When the leader moves a learner on (see `member add`/`replace`).
    #[serde(default)]
    pub membership: MembershipSettings,
    /// Join a running group through this member's client address (any
    /// member; a follower redirects to the leader): the node starts with
    /// no member list, asks to be added (a learner, promoted once caught
    /// up), and takes its configuration from the log. Ignored once its
    /// log holds a configuration (a restart).
    #[serde(default)]
    pub join: Option<String>,
    /// The client address this node announces to its peers and, through
    /// them, to clients (leader hints, `status`, the cluster page): a name
    /// others can resolve, such as a Kubernetes pod's DNS name, when the
    /// node listens on `0.0.0.0`. Default: the bound `listen` address.
    #[serde(default)]
    pub advertise_client: Option<String>,
    /// The peer address this node announces (hellos, `join`). Default: the
    /// bound `peer_listen` address.
    #[serde(default)]
    pub advertise_peer: Option<String>,
    /// Start with no member list and wait to be added by an operator
    /// (`member add`, `member replace`): the node takes its configuration
    /// from the log the leader then ships it.
    #[serde(default)]
    pub await_membership: bool,
}

/// When the leader promotes a learner added to vote, or swaps in one added
/// to replace a voter: once it is within both lag bounds. A replacement
/// that is still behind `catch_up_timeout_ms` after it was added is
/// removed again (the configuration is as before).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSettings {
    /// Most entries a learner may be behind the leader's last one.
    pub promote_lag_entries: u64,
    /// Most milliseconds old the oldest entry it lacks may be.
    pub promote_lag_ms: u64,
    /// How long a replacement may take to catch up (a snapshot of the
    /// whole state, then the log).
    pub catch_up_timeout_ms: u64,
}

impl Default for MembershipSettings {
    fn default() -> Self {
        MembershipSettings {
            promote_lag_entries: 1_000,
            promote_lag_ms: 2_000,
            catch_up_timeout_ms: 30 * 60 * 1_000,
        }
    }
}

/// Log compaction bounds. The log keeps the last `retain_entries` applied
/// entries and those younger than `retain_ms` (by entry timestamp); the
/// prefix beyond either bound is removed once its effects are durable in
/// the state. A follower that needs removed entries gets a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compaction {
    /// Size bound: applied entries kept in the log.
    pub retain_entries: u64,
    /// Age bound: applied entries older than this are removed.
    pub retain_ms: u64,
    /// Bytes per snapshot chunk.
    pub snapshot_chunk_bytes: usize,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            retain_entries: 100_000,
            retain_ms: 24 * 3600 * 1000,
            snapshot_chunk_bytes: 1 << 20,
        }
    }
}

/// Another member of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node id.
    pub id: NodeId,
    /// Its peer address (`host:port`).
    pub address: String,
    /// Where it serves clients (for leader hints). Unset: what its hello
    /// says (authenticated by its certificate when TLS is on).
    #[serde(default)]
    pub client_address: Option<String>,
}

impl PeerConfig {
    /// The peers of node `id` in a group whose members listen for peers
    /// at `members` (id, address), `id` among them.
    pub fn others(id: NodeId, members: &[(NodeId, SocketAddr)]) -> Vec<PeerConfig> {
        members
            .iter()
            .filter(|(other, _)| *other != id)
            .map(|(other, address)| PeerConfig {
                id: *other,
                address: address.to_string(),
                client_address: None,
            })
            .collect()
    }
}

fn default_read_timeout_ms() -> u64 {
    5_000
}

fn default_write_timeout_ms() -> u64 {
    10_000
}

fn default_module_compile_timeout_ms() -> u64 {
    30_000
}

fn default_frame_read_timeout_ms() -> u64 {
    30_000
}

fn default_idle_timeout_ms() -> u64 {
    300_000
}

fn default_checkpoint_entries_max() -> usize {
    8192
}

fn default_pending_writes_max() -> usize {
    100_000
}

fn default_apply_batch_max() -> usize {
    1024
}

impl NodeConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(node_id: NodeId, cluster_id: &str, listen: SocketAddr, data_dir: PathBuf) -> Self {
        NodeConfig {
            node_id,
            cluster_id: cluster_id.to_string(),
            listen,
            data_dir,
            storage: StorageOptions::default(),
            limits: SandboxLimits::default(),
            pending_writes_max: default_pending_writes_max(),
            apply_batch_entries_max: default_apply_batch_max(),
            checkpoint_entries_max: default_checkpoint_entries_max(),
            peer_listen: None,
            http_listen: None,
            peers: Vec::new(),
            timing: Timing::default(),
            read_timeout_ms: default_read_timeout_ms(),
            write_timeout_ms: default_write_timeout_ms(),
            module_compile_timeout_ms: default_module_compile_timeout_ms(),
            frame_read_timeout_ms: default_frame_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            compaction: Compaction::default(),
            log_kind: LogKind::default(),
            tls: None,
            insecure: false,
            membership: MembershipSettings::default(),
            join: None,
            advertise_client: None,
            advertise_peer: None,
            await_membership: false,
        }
    }

    /// Every member's id, this node's included, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        let mut m: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        m.push(self.node_id);
        m.sort_unstable();
        m
    }

    /// Check the group description; errors name what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let members = self.members();
        if members.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateIds {
                node: self.node_id,
                peers: self.peers.iter().map(|p| p.id).collect(),
            });
        }
        if (!self.peers.is_empty() || self.join.is_some() || self.await_membership)
            && self.peer_listen.is_none()
        {
            return Err(ConfigError::NoPeerListen);
        }
        if (self.join.is_some() || self.await_membership) && !self.peers.is_empty() {
            return Err(ConfigError::JoinWithPeers);
        }
        if self.join.is_some() && self.tls.is_some() {
            return Err(ConfigError::JoinWithTls);
        }
        let exposed: Vec<String> = std::iter::once(self.listen)
            .chain(self.peer_listen)
            .chain(self.http_listen)
            .filter(|a| !a.ip().is_loopback())
            .map(|a| a.to_string())
            .collect();
        if !exposed.is_empty() && self.tls.is_none() && !self.insecure {
            return Err(ConfigError::Exposed(exposed.join(", ")));
        }
        for (field, value) in [
            ("advertise_client", &self.advertise_client),
            ("advertise_peer", &self.advertise_peer),
        ] {
            if let Some(a) = value {
                let port = a
                    .rsplit_once(':')
                    .map(|(host, port)| (host, port.parse::<u16>()));
                let max = understudy_core::membership::MEMBER_ADDRESS_BYTES_MAX;
                if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) || a.len() > max {
                    return Err(ConfigError::Advertise {
                        field,
                        value: a.clone(),
                        max,
                    });
                }
            }
        }
        let t = self.timing;
        if !(t.heartbeat_interval_ms > 0
            && t.heartbeat_interval_ms < t.election_timeout_min_ms
            && t.election_timeout_min_ms < t.election_timeout_max_ms)
        {
            return Err(ConfigError::Timing(t));
        }
        Ok(())
    }

    pub(super) fn group(&self) -> GroupConfig {
        GroupConfig {
            heartbeat_interval_ms: self.timing.heartbeat_interval_ms,
            election_timeout_min_ms: self.timing.election_timeout_min_ms,
            election_timeout_max_ms: self.timing.election_timeout_max_ms,
            ..GroupConfig::new(self.node_id, self.bootstrap_members())
        }
    }

    /// The bootstrap member list: this node and its peers — none for a
    /// node that joins (it knows no configuration until the log gives it
    /// one).
    pub fn bootstrap_members(&self) -> Vec<NodeId> {
        if self.join.is_some() || self.await_membership {
            Vec::new()
        } else {
            self.members()
        }
    }

    /// The file that records a forced promotion (see [`crate::api::Request::Promote`]
    /// with `force`): while it exists, this node is a group of one.
    pub fn forced_path(&self) -> PathBuf {
        self.data_dir.join("FORCED-ALONE")
    }

    pub(super) fn identity(&self) -> Identity {
        Identity {
            format_version: storage::FORMAT_VERSION,
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
        }
    }
}

/// A node configuration [`NodeConfig::validate`] refuses; each names what
/// to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two members with one id.
    #[error("node ids must be unique in a group (this node {node} and peers {peers:?})")]
    DuplicateIds {
        /// This node.
        node: NodeId,
        /// The peers.
        peers: Vec<NodeId>,
    },
    /// Peers without a peer address to listen on.
    #[error("peer_listen is required when the group has peers (or the node joins one)")]
    NoPeerListen,
    /// Both a member list and a group to join.
    #[error(
        "join and peers exclude each other: a node that joins takes its members from the group"
    )]
    JoinWithPeers,
    /// Joining over TLS.
    #[error(
        "join is not built for TLS yet: add the member with `understudy member add` and start \
         it with --peer flags for the current members"
    )]
    JoinWithTls,
    /// Addresses other than loopback, without TLS and without `insecure`.
    #[error(
        "listening on {0} (not loopback) without TLS: anyone who reaches the ports could \
         join the group, deploy or read. Configure [tls] (`understudy certs` makes \
         certificates; then enable auth), or start with --insecure (insecure = true) on \
         a network you trust"
    )]
    Exposed(String),
    /// An advertised address that is not `HOST:PORT` of at most
    /// `MEMBER_ADDRESS_BYTES_MAX` bytes.
    #[error(
        "{field} {value:?} must be HOST:PORT of at most {max} bytes (MEMBER_ADDRESS_BYTES_MAX)"
    )]
    Advertise {
        /// Which.
        field: &'static str,
        /// As given.
        value: String,
        /// The limit.
        max: usize,
    },
    /// Failure-detection timing out of order.
    #[error(
        "timing must satisfy 0 < heartbeat_interval_ms ({}) < election_timeout_min_ms ({}) < election_timeout_max_ms ({})",
        .0.heartbeat_interval_ms, .0.election_timeout_min_ms, .0.election_timeout_max_ms
    )]
    Timing(Timing),
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_core::membership::MEMBER_ADDRESS_BYTES_MAX;

    #[test]
    fn an_advertised_address_is_admitted_at_the_limit_and_refused_one_past_or_malformed() {
        let with = |client: &str| {
            let mut c = NodeConfig::new(1, "c", "127.0.0.1:1".parse().unwrap(), "d".into());
            c.advertise_client = Some(client.to_string());
            c.validate()
        };
        let host = |len: usize| "h".repeat(len);
        // ":7600" is 5 bytes.
        assert!(with(&format!("{}:7600", host(MEMBER_ADDRESS_BYTES_MAX - 5))).is_ok());
        let e = with(&format!("{}:7600", host(MEMBER_ADDRESS_BYTES_MAX - 4))).unwrap_err();
        assert!(e.to_string().contains("MEMBER_ADDRESS_BYTES_MAX"), "{e}");
        for bad in ["no-port", ":7600", "host:", "host:99999", "host:port"] {
            assert!(
                matches!(with(bad), Err(ConfigError::Advertise { .. })),
                "{bad} was admitted"
            );
        }
        assert!(with("pod-0.svc.cluster.local:7600").is_ok());
        assert!(with("[::1]:7600").is_ok());
    }
}
