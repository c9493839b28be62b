//! Settings every member of a group must share, used by the node, the
//! sandbox and the peer transport alike (a peer's hello carries the log
//! kind and the timing, and a member of other settings is refused): the
//! replication-log kind, the failure-detection timing, and the limits of
//! every machine call. At the bottom of the house: it imports only
//! the protocol core.

use serde::{Deserialize, Serialize};
use understudy_core::replication::GroupConfig;

/// The replication-log kind lives in the core (the node's decisions
/// depend on it); re-exported here with the other shared settings.
pub use understudy_core::types::LogKind;

/// Failure-detection timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_min_ms, election_timeout_max_ms)` starts an election.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout.
    pub election_timeout_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        let g = GroupConfig::new(1, vec![1]);
        Timing {
            heartbeat_interval_ms: g.heartbeat_interval_ms,
            election_timeout_min_ms: g.election_timeout_min_ms,
            election_timeout_max_ms: g.election_timeout_max_ms,
        }
    }
}

/// Limits applied to every machine call. Part of the group's configuration:
/// every replica must use the same values or results diverge.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxLimits {
    /// Instruction budget of one call (wasmtime fuel units).
    pub fuel_per_call: u64,
    /// Budget for host work one call may cause (kv operations and bytes moved).
    pub host_units_per_call: u64,
    /// Largest linear memory of an instance, in bytes.
    pub memory_bytes_max: usize,
    /// Wall-clock watchdog for one call; never produces a committed result.
    pub watchdog_ms: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            fuel_per_call: 200_000_000,
            host_units_per_call: 64 << 20,
            memory_bytes_max: 64 << 20,
            watchdog_ms: 10_000,
        }
    }
}
