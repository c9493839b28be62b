//! What both stores share, at the bottom of storage: the data
//! directory's format version and identity, the options, the errors, and
//! opening an LMDB environment.

use super::journal;
use crate::codec::{self, CodecError};
use crate::types::NodeId;
use heed::types::{Bytes, Str};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// On-disk format version of a data directory. 2: commands share their
/// actor's instance within a run of the log (`node::applier::RUN_WINDOW`),
/// and state is durable only at window ends. 3: the content limits of
/// [`crate::limits`] (keys of at most `KEY_BYTES_MAX`, a bounded write-set
/// and answer) turn some commands that version 2 applied into refusals.
/// 4: every machine-state value is stored with a checksum of its key and
/// value (damage at rest is detected on read).
pub const FORMAT_VERSION: u32 = 4;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// LMDB or I/O failure.
    #[error("storage I/O at {path}: {source}")]
    Lmdb {
        /// Environment path.
        path: PathBuf,
        /// The error.
        source: heed::Error,
    },
    /// The map is full: the write was refused and rolled back.
    #[error(
        "storage full at {path}: the LMDB map of {map_bytes} bytes is used up; raise `map_size_bytes` and restart (no data was lost)"
    )]
    MapFull {
        /// Environment path.
        path: PathBuf,
        /// Configured map size.
        map_bytes: usize,
    },
    /// A stored record does not decode.
    #[error("corrupt record {what} in {path}: {source}")]
    Corrupt {
        /// Environment path.
        path: PathBuf,
        /// What was read.
        what: String,
        /// Why it failed.
        source: CodecError,
    },
    /// The log's journal holds a damaged record that was acknowledged.
    #[error(
        "the log journal {path} is corrupt: {source}. This node's log cannot be trusted and \
         it refuses to start. Keep the directory for inspection, move it aside, and start \
         the node on an empty data directory to copy its group's state (only while the rest \
         of the group is healthy), or restore it from a backup"
    )]
    JournalCorrupt {
        /// The journal file.
        path: PathBuf,
        /// Where.
        source: journal::ScanError,
    },
    /// A machine-state value fails its checksum: the state on this disk
    /// was damaged after it was written.
    #[error(
        "the state in {path} is corrupt: the value of key {key} fails its checksum. This \
         node applies and serves nothing more; keep the directory for inspection, move it \
         aside, and start the node on an empty data directory to copy its group's state"
    )]
    StateCorrupt {
        /// Environment path.
        path: PathBuf,
        /// The key, in hex.
        key: String,
    },
    /// The directory belongs to another node or cluster.
    #[error(
        "data directory {path} belongs to {found}, not {expected}; point this node at its own directory"
    )]
    WrongIdentity {
        /// Directory.
        path: PathBuf,
        /// Found identity.
        found: String,
        /// Expected identity.
        expected: String,
    },
    /// Written by a newer Understudy.
    #[error(
        "data directory {path} has format version {found}; this build supports up to {FORMAT_VERSION}; upgrade Understudy"
    )]
    NewerFormat {
        /// Directory.
        path: PathBuf,
        /// Found version.
        found: u32,
    },
    /// Written by an older Understudy, whose log this build would apply
    /// differently.
    #[error(
        "data directory {path} has format version {found}, older than this build's \
         {FORMAT_VERSION}: this build may apply its log's commands with other results \
         (2: commands share instances within runs; 3: content limits refuse over-long \
         keys, write-sets and answers); keep the older build for it, or start this node \
         on an empty data directory to copy its group's state"
    )]
    OlderFormat {
        /// Directory.
        path: PathBuf,
        /// Found version.
        found: u32,
    },
    /// Another process holds the directory.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// A broken invariant of the log (a bug, never bad input).
    #[error("log invariant violated: {0}")]
    Invariant(String),
    /// Plain I/O.
    #[error("I/O on {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether the host failed (disk, I/O, a full map) rather than the
    /// data: the operation can be tried again once the fault clears.
    pub fn is_host_fault(&self) -> bool {
        matches!(
            self,
            StorageError::Lmdb { .. } | StorageError::MapFull { .. } | StorageError::Io { .. }
        )
    }

    /// Whether the device is out of space (ENOSPC).
    pub fn is_disk_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        match self {
            StorageError::Lmdb { source, .. } => match source {
                heed::Error::Io(e) => e.raw_os_error() == Some(ENOSPC),
                heed::Error::Mdb(heed::MdbError::Other(code)) => *code == ENOSPC,
                _ => false,
            },
            StorageError::Io { source, .. } => source.raw_os_error() == Some(ENOSPC),
            _ => false,
        }
    }

    /// What an operator reads: a full disk is named as such, with its path.
    pub fn describe(&self) -> String {
        match self {
            StorageError::Lmdb { path, .. } | StorageError::Io { path, .. }
                if self.is_disk_full() =>
            {
                format!(
                    "disk full at {}: no space left on the device; free space there and the \
                     node resumes by itself ({self})",
                    path.display()
                )
            }
            other => other.to_string(),
        }
    }
}

/// Who owns a data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Format version of the directory.
    pub format_version: u32,
    /// The group's cluster id.
    pub cluster_id: String,
    /// This node's id.
    pub node_id: NodeId,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} of cluster {:?}", self.node_id, self.cluster_id)
    }
}

/// Storage settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageOptions {
    /// LMDB map size of each environment. It is address space, not disk:
    /// the files grow only as data is written.
    pub map_size_bytes: usize,
    /// Size of the log's write-ahead journal, a file filled with zeros
    /// when it is created (0: no journal; every append is an LMDB commit,
    /// two flushes instead of one).
    pub journal_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            map_size_bytes: 64 << 30,
            journal_bytes: 4 << 20,
        }
    }
}

/// Most LMDB read transactions open at once per environment (LMDB's
/// default; query threads, snapshots and readers of the log share them).
pub(super) const READERS_MAX: u32 = 126;

/// How an environment syncs its commits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncMode {
    /// Data and meta page fsynced on every commit: for the log, whose
    /// commits acknowledge writes.
    Full,
    /// Data fsynced, meta page not (MDB_NOMETASYNC): atomic and consistent,
    /// but a system crash may undo the last commit. For the state, which the
    /// log can always re-derive (applied index and effects roll back together).
    NoMetaSync,
}

pub(super) fn open_env(
    path: &Path,
    opts: &StorageOptions,
    max_dbs: u32,
    sync: SyncMode,
) -> Result<Env<WithoutTls>, StorageError> {
    std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut o = EnvOpenOptions::new().read_txn_without_tls();
    o.map_size(opts.map_size_bytes)
        .max_dbs(max_dbs)
        .max_readers(READERS_MAX);
    if sync == SyncMode::NoMetaSync {
        // SAFETY: NOMETASYNC keeps LMDB's integrity guarantees; see `SyncMode`.
        unsafe { o.flags(heed::EnvFlags::NO_META_SYNC) };
    }
    // SAFETY: each environment is opened once per process (the directory
    // lock below keeps other processes out, and a node opens its envs once).
    let env = unsafe { o.open(path) }.map_err(|source| StorageError::Lmdb {
        path: path.to_path_buf(),
        source,
    })?;
    // Stale reader slots of a crashed process pin pages forever otherwise.
    let _ = env.clear_stale_readers();
    Ok(env)
}

pub(super) fn lmdb(
    env: &Env<WithoutTls>,
    map_bytes: usize,
) -> impl Fn(heed::Error) -> StorageError + '_ {
    move |source| match source {
        heed::Error::Mdb(heed::MdbError::MapFull) => StorageError::MapFull {
            path: env.path().to_path_buf(),
            map_bytes,
        },
        source => StorageError::Lmdb {
            path: env.path().to_path_buf(),
            source,
        },
    }
}

pub(super) fn create_db<KC: 'static, DC: 'static>(
    env: &Env<WithoutTls>,
    name: &str,
    opts: &StorageOptions,
) -> Result<Database<'static, KC, DC>, StorageError> {
    let err = lmdb(env, opts.map_size_bytes);
    let wtxn = env.write_txn().map_err(&err)?;
    let db = env
        .create_databases_and_commit(wtxn, |wdo, wtxn| {
            wdo.create_database::<KC, DC>(wtxn, Some(name))
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .map_err(&err)?;
    Ok(db.unwrap_commit())
}

/// The identity recorded in the log environment at `path`, read without
/// writing anything (the environment opened read-only, without LMDB's
/// lock file, whose reader table a read would write: the caller holds
/// the data directory's [`super::DirLock`], so no process has it open);
/// `None` if `path` holds no log environment.
pub fn peek_identity(path: &Path) -> Result<Option<Identity>, StorageError> {
    if !path.join("data.mdb").is_file() {
        return Ok(None);
    }
    let lmdb_err = |source| StorageError::Lmdb {
        path: path.to_path_buf(),
        source,
    };
    let mut o = EnvOpenOptions::new().read_txn_without_tls();
    o.max_dbs(4).max_readers(READERS_MAX);
    // SAFETY: read-only, and no other process has it open (the caller
    // holds the directory's lock); this process opens it nowhere else
    // while this one is alive.
    unsafe { o.flags(heed::EnvFlags::READ_ONLY | heed::EnvFlags::NO_LOCK) };
    // SAFETY: as above.
    let env = unsafe { o.open(path) }.map_err(lmdb_err)?;
    let opened = env
        .open_databases_and_commit(env.read_txn().map_err(lmdb_err)?, |opener, rtxn| {
            opener
                .open_database::<Str, Bytes>(rtxn, Some("meta"))
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .map_err(lmdb_err)?;
    let Some(meta) = opened.unwrap_commit() else {
        return Ok(None);
    };
    let rtxn = env.read_txn().map_err(lmdb_err)?;
    let Some(bytes) = meta.get(&rtxn, "identity").map_err(lmdb_err)? else {
        return Ok(None);
    };
    codec::decode("identity", bytes)
        .map(Some)
        .map_err(|source| StorageError::Corrupt {
            path: path.to_path_buf(),
            what: "identity".into(),
            source,
        })
}

pub(super) fn check_identity(
    env: &Env<WithoutTls>,
    meta: Database<'static, Str, Bytes>,
    identity: &Identity,
    map_bytes: usize,
) -> Result<(), StorageError> {
    let err = lmdb(env, map_bytes);
    let mut wtxn = env.write_txn().map_err(&err)?;
    match meta.get(&wtxn, "identity").map_err(&err)? {
        Some(bytes) => {
            let found: Identity =
                codec::decode("identity", bytes).map_err(|source| match source {
                    CodecError::NewerVersion { .. } => StorageError::NewerFormat {
                        path: env.path().to_path_buf(),
                        found: u32::MAX,
                    },
                    source => StorageError::Corrupt {
                        path: env.path().to_path_buf(),
                        what: "identity".into(),
                        source,
                    },
                })?;
            if found.format_version > FORMAT_VERSION {
                return Err(StorageError::NewerFormat {
                    path: env.path().to_path_buf(),
                    found: found.format_version,
                });
            }
            if found.format_version < FORMAT_VERSION {
                return Err(StorageError::OlderFormat {
                    path: env.path().to_path_buf(),
                    found: found.format_version,
                });
            }
            if found.cluster_id != identity.cluster_id || found.node_id != identity.node_id {
                return Err(StorageError::WrongIdentity {
                    path: env.path().to_path_buf(),
                    found: found.to_string(),
                    expected: identity.to_string(),
                });
            }
        }
        None => {
            meta.put(&mut wtxn, "identity", &codec::encode(identity))
                .map_err(&err)?;
        }
    }
    wtxn.commit().map_err(&err)
}

/// Error mapping shared by both stores: LMDB errors (a full map named as
/// such) and records that do not decode, each naming the environment.
pub(super) trait EnvErrors {
    fn env(&self) -> &Env<WithoutTls>;
    fn map_bytes(&self) -> usize;

    fn err(&self) -> impl Fn(heed::Error) -> StorageError + '_ {
        lmdb(self.env(), self.map_bytes())
    }

    fn corrupt(&self, what: String) -> impl FnOnce(CodecError) -> StorageError + '_ {
        move |source| StorageError::Corrupt {
            path: self.env().path().to_path_buf(),
            what,
            source,
        }
    }
}
