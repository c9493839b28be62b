//! What a node has staged of its online backups (see `super`), kept
//! apart from the requests that stage them so that the node's shell can
//! hold it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Most backups a node keeps staged at once (unit: backups); a new one
/// removes the least recently used.
pub const BACKUPS_STAGED_MAX: usize = 4;
/// Backups a node writes at once (unit: backups); another `Begin` is
/// refused `Overloaded` until the one being written is staged.
pub const BACKUPS_WRITING_MAX: usize = 1;
/// A staged backup nobody asked a chunk of for this long is removed
/// (unit: ms).
pub const BACKUP_IDLE_MS: u64 = 60_000;
/// How long a member may take to bring its durable state to the index a
/// backup was sealed at before it writes the snapshot (unit: ms); past
/// it the backup is refused `Timeout` naming where the member is.
pub const BACKUP_CATCH_UP_MS: u64 = 60_000;
/// How long writing a backup's snapshot may take before the request is
/// answered `Timeout` (unit: ms; the snapshot is still staged when it
/// finishes, and removed as idle).
pub const BACKUP_WRITE_TIMEOUT_MS: u64 = 600_000;

/// The backups a node has staged.
pub(crate) struct Staged {
    pub(super) root: PathBuf,
    pub(super) open: BTreeMap<u64, StagedBackup>,
    pub(super) writing: usize,
    pub(super) sweeping: bool,
}

pub(super) struct StagedBackup {
    pub(super) dir: PathBuf,
    pub(super) chunks: u64,
    pub(super) last_used: Instant,
}

impl Staged {
    /// The staging area under `data_dir`; whatever a previous run left
    /// there is removed.
    pub(crate) fn new(data_dir: &Path) -> Staged {
        let root = data_dir.join("backups");
        if root.exists()
            && let Err(e) = std::fs::remove_dir_all(&root)
        {
            tracing::warn!(path = %root.display(), error = %e, "cannot remove old staged backups");
        }
        Staged {
            root,
            open: BTreeMap::new(),
            writing: 0,
            sweeping: false,
        }
    }

    pub(super) fn remove(&mut self, id: u64) {
        if let Some(b) = self.open.remove(&id) {
            remove_dir(&b.dir);
        }
    }
}

pub(super) fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove a staged backup");
    }
}
