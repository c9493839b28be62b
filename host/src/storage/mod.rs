//! Durable storage of one node on LMDB (heed), in two environments so that
//! appending to the log and applying to the state never queue behind each
//! other's single writer:
//!
//! * `log/` — [`LogStore`]: the replicated log (index → entry) and the hard
//!   state (term, vote). An append, however many entries it carries (group
//!   commit), is one record in the log's write-ahead journal and one
//!   `fdatasync` ([`journal`]); journaled entries move into LMDB in large
//!   batches. With `journal_bytes = 0` an append is one LMDB write
//!   transaction and its flush.
//! * `state/` — [`StateStore`]: every actor's key-value state, the actor
//!   table, module bytes, precompiled artifacts, client sessions, and the
//!   `applied_index` with its state digest. One applied batch is one write
//!   transaction, so an entry's effects and the `applied_index` that covers
//!   it become durable together (exactly-once apply).
//!
//! Both carry the node's [`Identity`]; a directory of another node or of a
//! newer format is refused at open. A process lock (`LOCK`, flock) keeps two
//! processes off one directory. A full LMDB map aborts the transaction and
//! returns [`StorageError::MapFull`]: the write is refused, nothing is lost.
//!
//! Files: `env.rs` (what both share: format, identity, options, errors,
//! opening an environment), `log.rs`, `journal.rs`, `state.rs` (with the
//! snapshot format: records, meta, chunk files); this file opens a data
//! directory and locks it.

mod env;
pub mod journal;
mod log;
mod state;

pub use crate::replication::HardState;
pub use env::{FORMAT_VERSION, Identity, StorageError, StorageOptions, peek_identity};
pub use log::{JOURNAL_BATCH_BYTES_MAX, LogStore, TAIL_ENTRIES_MAX};
pub use state::*;

use std::fs::File;
use std::path::Path;

/// An exclusive lock on a data directory for this process's lifetime.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the lock or fail with [`StorageError::Locked`].
    pub fn acquire(dir: &Path) -> Result<Self, StorageError> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("LOCK");
        let file = File::create(&path).map_err(|source| StorageError::Io { path, source })?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(StorageError::Locked(dir.to_path_buf()));
        }
        Ok(DirLock { _file: file })
    }
}

/// Open both environments of a data directory and check its identity.
pub fn open(
    dir: &Path,
    identity: &Identity,
    opts: &StorageOptions,
) -> Result<(DirLock, LogStore, StateStore), StorageError> {
    let lock = DirLock::acquire(dir)?;
    let log = LogStore::open(&dir.join("log"), identity, opts)?;
    let state = StateStore::open(&dir.join("state"), identity, opts)?;
    Ok((lock, log, state))
}

#[cfg(test)]
mod tests;
