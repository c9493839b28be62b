//! The errors between the node's actors: what the log writer, the
//! snapshot maker and the applier's thread report when they fail, typed,
//! so that the node decides by kind (halt, retry, refuse) and never by
//! message text.

use super::applier::ApplyError;
use crate::storage::StorageError;
use std::path::PathBuf;

/// The log writer could not write a batch.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The suffix a truncation removes could not be read to keep it in
    /// quarantine.
    #[error("reading the log suffix to quarantine: {0}")]
    QuarantineRead(#[source] StorageError),
    /// Nor written there.
    #[error("writing {path}: {source}")]
    Quarantine {
        /// The quarantine file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log itself.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl WriteError {
    /// A fault of the host (a full disk, an I/O error), which the writer
    /// retries until it clears; anything else halts the node.
    pub fn is_host_fault(&self) -> bool {
        match self {
            WriteError::QuarantineRead(_) | WriteError::Quarantine { .. } => true,
            WriteError::Storage(e) => e.is_host_fault(),
        }
    }

    /// What an operator is told (a full disk says so).
    pub fn describe(&self) -> String {
        match self {
            WriteError::Storage(e) => e.describe(),
            other => other.to_string(),
        }
    }
}

/// The snapshot maker could not make a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the state or the log, or writing the snapshot's files.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A backup's state did not reach the index asked in time.
    #[error(
        "this node's durable state reached index {reached}, not {wanted}, within {within_ms} ms (BACKUP_CATCH_UP_MS): back up a member that is not behind"
    )]
    Behind {
        /// Where it is.
        reached: crate::types::Index,
        /// Where it was to be.
        wanted: crate::types::Index,
        /// How long it was given.
        within_ms: u64,
    },
    /// Putting the written snapshot in place.
    #[error("moving the snapshot to {path}: {source}")]
    Io {
        /// Where it was to go.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Sending a snapshot to a follower failed (it is offered again later).
#[derive(Debug, thiserror::Error)]
pub enum SendSnapshotError {
    /// The snapshot maker's thread is gone.
    #[error("the snapshot maker stopped")]
    MakerStopped,
    /// No snapshot could be made.
    #[error(transparent)]
    Make(#[from] SnapshotError),
    /// The transfer broke or was refused.
    #[error(transparent)]
    Transfer(#[from] crate::peer::snapshot::TransferError),
}

/// The applier halted (a damaged state, a failed apply): it applies
/// nothing more, and the node halts with this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ApplierHalted {
    /// Why, as the status and the log show it.
    pub reason: String,
}

/// The applier could not install a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// It halted before.
    #[error("applying halted: {0}")]
    Halted(String),
    /// Installing failed (nothing changed).
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// A snapshot install that failed, and whether the node can go on.
#[derive(Debug, thiserror::Error)]
pub enum InstallFailed {
    /// The state was not replaced (nothing changed).
    #[error(transparent)]
    State(#[from] InstallError),
    /// The applier or the log writer stopped.
    #[error("{0} stopped")]
    Stopped(&'static str),
    /// The state was replaced but the log was not reset to it: the node
    /// cannot go on (it halts).
    #[error("state installed but the log reset failed: {0}")]
    LogReset(#[source] StorageError),
}
