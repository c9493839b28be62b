//! What the leader knows of each follower's log.

use crate::types::Index;
use std::collections::BTreeMap;

/// Replication progress of one follower, seen from the leader.
#[derive(Clone, Debug, Default)]
pub(super) struct Progress {
    /// Next index to send.
    pub(super) next: Index,
    /// Highest index known to match and be durable there.
    pub(super) matched: Index,
    /// Appends in flight: last index → first index.
    pub(super) inflight: BTreeMap<Index, Index>,
    /// Heard from it since the last check-quorum round.
    pub(super) active: bool,
    /// Searching backwards for the match point: one append in flight.
    pub(super) probing: bool,
    /// While probing: the `prev_index` of the probe in flight; only its
    /// refusal counts.
    pub(super) probe: Option<Index>,
    /// Answered an append since the last heartbeat; if not, appends in
    /// flight are taken as lost and resent.
    pub(super) answered: bool,
    /// Highest heartbeat round it answered.
    pub(super) acked_seq: u64,
    /// A snapshot is on its way to it: no appends until it acknowledges.
    pub(super) snapshotting: bool,
    /// When it was last heard from.
    pub(super) heard_ms: u64,
}

impl Progress {
    /// A follower a leader knows nothing of yet: next to send `next`, heard
    /// from at `now_ms` (a new leader's view, or one reset because the
    /// follower lost its data).
    pub(super) fn fresh(next: Index, now_ms: u64) -> Progress {
        Progress {
            next,
            matched: 0,
            inflight: BTreeMap::new(),
            active: true,
            probing: false,
            probe: None,
            answered: true,
            acked_seq: 0,
            snapshotting: false,
            heard_ms: now_ms,
        }
    }
}
