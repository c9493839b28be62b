//! Snapshots going out (to a follower that needs compacted entries) and
//! coming in (from the leader this node follows).
//!
//! At most one transfer per peer goes out at a time; a failed one is
//! offered again by the core after a pause. An incoming snapshot is
//! installed only from the leader this node follows (a snapshot from an
//! old leader, still on its way, would roll back entries this node
//! acknowledged to the new one), and only when this node's log does not
//! already hold its last entry (then the entries after it may be
//! acknowledged: Raft §7). While one is installed, appends are dropped
//! and the core's clock stands still (no elections).

use super::NodeState;
use crate::membership::Membership;
use crate::replication::{LogRead, Role};
use crate::types::{Index, NodeId, Term};
use std::collections::BTreeSet;

/// Progress of a snapshot this node receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotIn {
    /// The applied index the snapshot is the state of.
    pub index: Index,
    /// Chunks received and verified.
    pub chunks_done: u64,
    /// Chunks in all.
    pub chunks: u64,
    /// Bytes in all.
    pub bytes: u64,
}

/// Why an incoming snapshot is not installed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstallRefused {
    /// Installing one already, or not a follower.
    #[error("not a follower ready to install a snapshot")]
    NotReady,
    /// From a member this node does not follow.
    #[error("node {from} is not this node's leader ({leader:?}): snapshot refused")]
    NotFromLeader {
        /// The sender.
        from: NodeId,
        /// The leader this node follows.
        leader: Option<NodeId>,
    },
    /// This node's log holds the snapshot's last entry: it applies from
    /// the log instead.
    #[error("this node's log already holds entry {index} of term {term}")]
    Covered {
        /// The snapshot's index.
        index: Index,
        /// Its term.
        term: Term,
    },
}

/// The transfers' state.
#[derive(Debug, Default)]
pub(super) struct Transfers {
    /// Peers a snapshot is being sent to.
    pub(super) sending: BTreeSet<NodeId>,
    /// A snapshot is being installed.
    pub(super) installing: bool,
    /// A snapshot being received.
    receiving: Option<SnapshotIn>,
}

impl<W, R> NodeState<W, R> {
    /// A snapshot being received, if any.
    pub fn snapshot_in(&self) -> Option<SnapshotIn> {
        self.transfer.receiving
    }

    /// The snapshot for `peer` was delivered: it holds the state up to
    /// `index`.
    pub fn snapshot_sent(&mut self, peer: NodeId, index: Index, log: &impl LogRead) {
        self.transfer.sending.remove(&peer);
        self.core.snapshot_sent(peer, index, log);
    }

    /// The transfer to `peer` could not start or failed.
    pub fn snapshot_not_sent(&mut self, peer: NodeId) {
        self.transfer.sending.remove(&peer);
    }

    /// After a pause following a failed transfer: the core may offer
    /// `peer` a snapshot again.
    pub fn snapshot_failed(&mut self, peer: NodeId) {
        self.core.snapshot_failed(peer);
    }

    /// A chunk of an incoming snapshot was received and verified.
    pub fn snapshot_progress(&mut self, progress: SnapshotIn) {
        self.transfer.receiving = Some(progress);
    }

    /// An incoming snapshot from `from` is complete: `Ok` if the shell may
    /// install it (the state then drops entries not yet written: they
    /// belong to the log being replaced), else why not.
    pub fn install_begin(
        &mut self,
        from: NodeId,
        index: Index,
        term: Term,
        log: &impl LogRead,
    ) -> Result<(), InstallRefused> {
        if self.transfer.installing || self.core.role() != Role::Follower {
            return Err(InstallRefused::NotReady);
        }
        if self.core.leader() != Some(from) {
            tracing::warn!(
                from,
                leader = ?self.core.leader(),
                index,
                "refused a snapshot from a member that is not this node's leader"
            );
            return Err(InstallRefused::NotFromLeader {
                from,
                leader: self.core.leader(),
            });
        }
        let held = self
            .core
            .unstable_entry(index)
            .map(|e| e.term)
            .or_else(|| log.term(index));
        if index > 0 && held == Some(term) {
            tracing::info!(
                from,
                index,
                "a snapshot this node's log already covers: applying from the log instead"
            );
            return Err(InstallRefused::Covered { index, term });
        }
        self.transfer.installing = true;
        self.persist.forget_queued();
        Ok(())
    }

    /// The install ended: `Some((index, term, configuration))` if the
    /// state and the log now stand at the snapshot or beyond it (the core restarts from
    /// there; reads waiting for it run), `None` if it failed.
    pub fn install_end(
        &mut self,
        installed: Option<(Index, Term, Membership)>,
        log: &impl LogRead,
    ) {
        self.transfer.installing = false;
        self.transfer.receiving = None;
        if let Some((index, term, membership)) = installed {
            self.core.restore(index, term, membership);
            self.release_reads(log);
        }
    }
}
