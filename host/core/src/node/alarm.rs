//! The determinism alarm (BRIEF invariant 7): every node samples its state
//! digest at the same applied indexes and shares the samples; a follower
//! whose digest differs from the leader's at the same index, or a leader
//! whose digest differs from a majority of the group and agrees with no
//! one, is quarantined — it serves no reads — and says so in its status
//! and log. Any mismatch is logged as an error on both sides.

use super::{Effect, NodeState};
use crate::types::{Index, NodeId};
use std::collections::BTreeMap;

/// Most of this node's own samples kept (the most recent).
pub const OWN_SAMPLES_KEPT_MAX: usize = 1024;

/// Most samples of peers kept while this node has not reached their index
/// (the most recent).
pub const PEER_SAMPLES_KEPT_MAX: usize = 4096;

/// The alarm's state.
#[derive(Debug, Default)]
pub(super) struct Alarm {
    /// This node's samples (the most recent ones).
    own: BTreeMap<Index, [u8; 32]>,
    /// Peers' samples this node has not reached yet.
    early: BTreeMap<(Index, NodeId), [u8; 32]>,
    /// Per peer: (last index compared, whether it agreed).
    checks: BTreeMap<NodeId, (Index, bool)>,
    /// Set when this node's state is found to differ: it serves no reads.
    pub(super) quarantined: Option<String>,
}

fn hex(d: &[u8; 32]) -> String {
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl<W, R> NodeState<W, R> {
    /// Why this node serves no reads, if its state was found to differ.
    pub fn quarantined(&self) -> Option<&String> {
        self.alarm.quarantined.as_ref()
    }

    /// Keep this node's new digest samples, share them with every peer,
    /// and compare them with samples peers sent earlier.
    pub(super) fn record_samples(&mut self, samples: Vec<(Index, [u8; 32])>) {
        for (index, digest) in samples {
            self.alarm.own.insert(index, digest);
            while self.alarm.own.len() > OWN_SAMPLES_KEPT_MAX {
                self.alarm.own.pop_first();
            }
            self.out.push(Effect::ShareDigest { index, digest });
            let theirs: Vec<(NodeId, [u8; 32])> = self
                .alarm
                .early
                .range((index, 0)..=(index, NodeId::MAX))
                .map(|(&(_, from), &d)| (from, d))
                .collect();
            for (from, d) in theirs {
                self.alarm.early.remove(&(index, from));
                self.compare_digest(from, index, d, digest);
            }
        }
        let applied = self.core.applied_index();
        self.alarm.early.retain(|&(i, _), _| i > applied);
    }

    /// A peer's digest sample at `index`: compared now if this node has
    /// its own, kept if this node has not reached `index` yet.
    pub fn digest_from_peer(&mut self, from: NodeId, index: Index, digest: [u8; 32]) {
        // Only members' samples count: a node that is no member (one
        // removed, or left out by a forced promotion and still running on
        // its old data) may hold another history.
        if !self.core.membership().contains(from) {
            return;
        }
        match self.alarm.own.get(&index) {
            Some(mine) => {
                let mine = *mine;
                self.compare_digest(from, index, digest, mine);
            }
            None if index > self.core.applied_index() => {
                self.alarm.early.insert((index, from), digest);
                while self.alarm.early.len() > PEER_SAMPLES_KEPT_MAX {
                    self.alarm.early.pop_first();
                }
            }
            None => {} // too old to compare
        }
    }

    /// Forget what peers sampled: after a forced promotion their samples
    /// are of a history this node's group no longer shares (writes it
    /// lacked were lost by that decision).
    pub(super) fn forget_peer_samples(&mut self) {
        self.alarm.early.clear();
        self.alarm.checks.clear();
    }

    fn compare_digest(&mut self, from: NodeId, index: Index, theirs: [u8; 32], mine: [u8; 32]) {
        let agree = theirs == mine;
        self.alarm.checks.insert(from, (index, agree));
        if agree || self.alarm.quarantined.is_some() {
            return;
        }
        tracing::error!(
            peer = from,
            index,
            mine = %hex(&mine),
            theirs = %hex(&theirs),
            "state digest differs from a peer's at the same index (determinism alarm)"
        );
        let leader = self.core.leader();
        let me = self.core.id();
        let why = if leader == Some(from) {
            Some(format!(
                "state digest at index {index} ({}) differs from the leader's (node {from}: {})",
                hex(&mine),
                hex(&theirs)
            ))
        } else if leader == Some(me) {
            let quorum = self.core.membership().all_voters().len() / 2 + 1;
            let differ = self.alarm.checks.values().filter(|(_, a)| !a).count();
            let agree = self.alarm.checks.values().filter(|(_, a)| *a).count();
            // The leader is the odd one out only if a majority of the
            // group (not counting it) disagrees with it.
            (differ >= quorum && agree == 0).then(|| {
                format!(
                    "state digest at index {index} ({}) differs from every follower compared ({differ})",
                    hex(&mine)
                )
            })
        } else {
            None
        };
        if let Some(why) = why {
            tracing::error!(reason = %why, "quarantined: this node serves no reads");
            self.alarm.quarantined = Some(why);
        }
    }
}
