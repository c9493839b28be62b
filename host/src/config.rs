//! Settings every member of a group must share, used by the node and by
//! the peer transport alike (a peer's hello carries them, and a member of
//! other settings is refused): the replication-log kind and the
//! failure-detection timing. At the bottom of the house: it imports only
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
