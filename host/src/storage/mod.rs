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

pub mod journal;

use crate::codec::{self, CodecError};
use crate::kv::{KvRead, ModuleHash, Pairs, WriteSet};
use crate::types::{Entry, Index, NodeId, Term};
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, WithoutTls, byteorder::BigEndian};
use journal::Journal;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Bound;
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

pub use crate::replication::HardState;

/// Most LMDB read transactions open at once per environment (LMDB's
/// default; query threads, snapshots and readers of the log share them).
const READERS_MAX: u32 = 126;

/// The log meta key of the last compacted entry's timestamp.
const COMPACTED_TIMESTAMP: &str = "compacted-timestamp";

/// How an environment syncs its commits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    /// Data and meta page fsynced on every commit: for the log, whose
    /// commits acknowledge writes.
    Full,
    /// Data fsynced, meta page not (MDB_NOMETASYNC): atomic and consistent,
    /// but a system crash may undo the last commit. For the state, which the
    /// log can always re-derive (applied index and effects roll back together).
    NoMetaSync,
}

fn open_env(
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

fn lmdb(env: &Env<WithoutTls>, map_bytes: usize) -> impl Fn(heed::Error) -> StorageError + '_ {
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

fn create_db<KC: 'static, DC: 'static>(
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

fn check_identity(
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

/// Error mapping shared by both stores: LMDB errors (a full map named as
/// such) and records that do not decode, each naming the environment.
trait EnvErrors {
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

impl EnvErrors for LogStore {
    fn env(&self) -> &Env<WithoutTls> {
        &self.env
    }
    fn map_bytes(&self) -> usize {
        self.map_bytes
    }
}

impl EnvErrors for StateStore {
    fn env(&self) -> &Env<WithoutTls> {
        &self.env
    }
    fn map_bytes(&self) -> usize {
        self.map_bytes
    }
}

/// Most entries the journal holds before they move into LMDB.
pub const TAIL_ENTRIES_MAX: usize = 4096;

/// Bigger appends (a follower catching up, a module upload) go straight
/// into LMDB: the journal saves latency on small appends, and writing a
/// big one twice would only cost throughput.
pub const JOURNAL_BATCH_BYTES_MAX: u64 = 256 << 10;

/// The replicated log and the hard state: LMDB, with a write-ahead
/// [`Journal`] in front (see [`journal`]). An append is durable once its
/// journal write is synced (one `fdatasync`); the journaled entries (the
/// *tail*, also kept in memory for readers) move into LMDB in one
/// transaction when the journal fills, before a truncation, a reset or a
/// hard-state change that comes with entries, and at every open (crash
/// recovery). Readers see an entry once it is durable, wherever it is.
#[derive(Clone)]
pub struct LogStore {
    env: Env<WithoutTls>,
    entries: Database<'static, U64<BigEndian>, Bytes>,
    meta: Database<'static, Str, Bytes>,
    map_bytes: usize,
    shared: std::sync::Arc<LogShared>,
}

/// What every clone of a [`LogStore`] shares.
struct LogShared {
    /// The compacted point (the core asks for the log's first index on
    /// every append it ships); re-read after each compaction or reset.
    compacted: std::sync::Mutex<(Index, Term)>,
    /// Entries durable in the journal and not yet in LMDB.
    tail: std::sync::RwLock<Tail>,
    /// The journal (`None`: appends commit to LMDB directly). Every write
    /// to the log holds this lock, so there is one writer at a time.
    writer: std::sync::Mutex<Option<Journal>>,
}

#[derive(Default)]
struct Tail {
    /// Contiguous entries with their encoding (written as is into LMDB
    /// when they move).
    entries: std::collections::VecDeque<(Entry, Vec<u8>)>,
    /// Bumped whenever entries leave the tail, so a reader that read the
    /// tail and then LMDB knows whether it saw one consistent log.
    version: u64,
}

impl LogStore {
    /// Open (or create) the log environment at `path`, and recover the
    /// journal: its valid records move into LMDB before anything else.
    pub fn open(
        path: &Path,
        identity: &Identity,
        opts: &StorageOptions,
    ) -> Result<Self, StorageError> {
        let env = open_env(path, opts, 4, SyncMode::Full)?;
        let entries = create_db(&env, "entries", opts)?;
        let meta = create_db(&env, "meta", opts)?;
        check_identity(&env, meta, identity, opts.map_size_bytes)?;
        let log = LogStore {
            env,
            entries,
            meta,
            map_bytes: opts.map_size_bytes,
            shared: std::sync::Arc::new(LogShared {
                compacted: Default::default(),
                tail: Default::default(),
                writer: std::sync::Mutex::new(None),
            }),
        };
        log.refresh_compacted()?;
        let journal_path = path.join("journal");
        if opts.journal_bytes > 0 || journal_path.exists() {
            let io = |source| StorageError::Io {
                path: journal_path.clone(),
                source,
            };
            let mut journal = Journal::open(&journal_path, opts.journal_bytes).map_err(io)?;
            let generation = log.recover(&journal)?;
            journal.restart(generation);
            if opts.journal_bytes > 0 {
                *log.shared.writer.lock().expect("log writer lock") = Some(journal);
            }
        }
        Ok(log)
    }

    /// Move the valid records of the journal's current generation into
    /// LMDB and start a new generation, in one transaction; returns it.
    fn recover(&self, journal: &Journal) -> Result<u64, StorageError> {
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        let generation = self.journal_generation(&wtxn)?;
        let path = journal.path().to_path_buf();
        let records = journal.scan(generation).map_err(|e| match e {
            journal::ScanError::Io(source) => StorageError::Io { path, source },
            source => StorageError::JournalCorrupt { path, source },
        })?;
        let mut recovered = Vec::with_capacity(records.len());
        for (i, bytes) in records.iter().enumerate() {
            let entry: Entry = codec::decode("journal entry", bytes)
                .map_err(self.corrupt(format!("journal record {i}")))?;
            recovered.push((entry, bytes.as_slice()));
        }
        if let (Some((first, _)), Some((last, _))) = (recovered.first(), recovered.last()) {
            tracing::info!(
                first = first.index,
                last = last.index,
                "recovering journaled log entries into LMDB"
            );
        }
        self.put_entries(
            &mut wtxn,
            recovered.iter().map(|(e, b)| (e, Cow::Borrowed(*b))),
        )?;
        self.meta
            .put(
                &mut wtxn,
                "journal_generation",
                &codec::encode(&(generation + 1)),
            )
            .map_err(self.err())?;
        wtxn.commit().map_err(self.err())?;
        Ok(generation + 1)
    }

    fn journal_generation(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<u64, StorageError> {
        match self
            .meta
            .get(txn, "journal_generation")
            .map_err(self.err())?
        {
            None => Ok(0),
            Some(b) => codec::decode("journal generation", b)
                .map_err(self.corrupt("journal generation".into())),
        }
    }

    /// Index and term of the last entry; for an empty log, the compacted
    /// point (`(0, 0)` for a new log).
    pub fn last(&self) -> Result<(Index, Term), StorageError> {
        if let Some((e, _)) = self
            .shared
            .tail
            .read()
            .expect("log tail lock")
            .entries
            .back()
        {
            return Ok((e.index, e.term));
        }
        let rtxn = self.env.read_txn().map_err(self.err())?;
        self.lmdb_last(&rtxn)
    }

    fn lmdb_last(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<(Index, Term), StorageError> {
        match self.entries.last(txn).map_err(self.err())? {
            None => self.compacted_in(txn),
            Some((index, bytes)) => {
                let entry: Entry = codec::decode("entry", bytes)
                    .map_err(self.corrupt(format!("entry {index}")))?;
                Ok((index, entry.term))
            }
        }
    }

    /// Append `entries`, which must continue the log at `last + 1`. Checks
    /// contiguity and term order first; one `fdatasync`.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.persist(None, entries)
    }

    /// Persist an optional new hard state and append `entries`, atomically:
    /// the unit of group commit.
    pub fn persist(
        &self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.persist_with(hard_state, None, entries)
    }

    /// [`Self::persist`], removing a conflicting suffix from `truncate_from`
    /// first, all atomically. Plain appends go to the journal (one
    /// `fdatasync`); the rest is one LMDB transaction that also takes in the
    /// journaled tail.
    pub fn persist_with(
        &self,
        hard_state: Option<&HardState>,
        truncate_from: Option<Index>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hard_state.is_none() && truncate_from.is_none() {
            return Ok(());
        }
        let mut writer = self.shared.writer.lock().expect("log writer lock");
        if entries.is_empty() && truncate_from.is_none() {
            // A vote or a new term alone: the tail can stay where it is.
            let mut wtxn = self.env.write_txn().map_err(self.err())?;
            self.put_hard_state(&mut wtxn, hard_state)?;
            return wtxn.commit().map_err(self.err());
        }
        if hard_state.is_none()
            && truncate_from.is_none()
            && let Some(journal) = writer.as_mut()
        {
            let encoded: Vec<Vec<u8>> = entries.iter().map(codec::encode).collect();
            let bytes = Journal::bytes_for(encoded.iter().map(Vec::as_slice));
            let tail_len = self
                .shared
                .tail
                .read()
                .expect("log tail lock")
                .entries
                .len();
            if bytes <= JOURNAL_BATCH_BYTES_MAX
                && journal.fits(bytes)
                && tail_len + entries.len() <= TAIL_ENTRIES_MAX
            {
                check_continues(self.last()?, entries)?;
                journal
                    .append(encoded.iter().map(Vec::as_slice))
                    .map_err(|source| StorageError::Io {
                        path: journal.path().to_path_buf(),
                        source,
                    })?;
                let mut tail = self.shared.tail.write().expect("log tail lock");
                tail.entries.extend(entries.iter().cloned().zip(encoded));
                return Ok(());
            }
        }
        self.move_tail(&mut writer, truncate_from.is_some(), |wtxn| {
            if let Some(from) = truncate_from {
                self.entries
                    .delete_range(wtxn, &(from..))
                    .map_err(self.err())?;
            }
            self.put_hard_state(wtxn, hard_state)?;
            self.put_entries(
                wtxn,
                entries.iter().map(|e| (e, Cow::Owned(codec::encode(e)))),
            )
        })
    }

    /// One LMDB transaction that takes in the journaled tail, then runs
    /// `then`, and starts a new journal generation; the tail is emptied
    /// once it commits. A move that removes entries (`removes`: a
    /// truncation, a reset) keeps readers out of the tail from before its
    /// commit until the tail is empty, so that no reader combines the old
    /// tail with the new LMDB log; a plain move leaves the same entries in
    /// both places for a moment, which readers may mix freely.
    fn move_tail(
        &self,
        writer: &mut Option<Journal>,
        removes: bool,
        then: impl FnOnce(&mut heed::RwTxn<'_>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        // LMDB's writer lock first: readers wait for this move's own work,
        // never for another writer (a compaction) ahead of it.
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        let mut held = removes.then(|| self.shared.tail.write().expect("log tail lock"));
        match &held {
            Some(tail) => self.put_entries(&mut wtxn, Self::encoded(tail))?,
            None => {
                let tail = self.shared.tail.read().expect("log tail lock");
                self.put_entries(&mut wtxn, Self::encoded(&tail))?;
            }
        }
        then(&mut wtxn)?;
        let generation = self.journal_generation(&wtxn)? + 1;
        self.meta
            .put(&mut wtxn, "journal_generation", &codec::encode(&generation))
            .map_err(self.err())?;
        wtxn.commit().map_err(self.err())?;
        #[cfg(test)]
        tests::pause_after_move_commit();
        let mut tail = match held.take() {
            Some(tail) => tail,
            None => self.shared.tail.write().expect("log tail lock"),
        };
        tail.entries.clear();
        tail.version += 1;
        drop(tail);
        if let Some(journal) = writer.as_mut() {
            journal.restart(generation);
        }
        Ok(())
    }

    fn put_hard_state(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if let Some(hs) = hard_state {
            self.meta
                .put(wtxn, "hard_state", &codec::encode(hs))
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// The tail's entries with their encoding.
    fn encoded(tail: &Tail) -> impl Iterator<Item = (&Entry, Cow<'_, [u8]>)> {
        tail.entries
            .iter()
            .map(|(e, b)| (e, Cow::Borrowed(b.as_slice())))
    }

    /// Put `entries` (each with its encoding) into LMDB after its last
    /// entry, checking that they continue it.
    fn put_entries<'e>(
        &self,
        wtxn: &mut heed::RwTxn<'_>,
        entries: impl Iterator<Item = (&'e Entry, Cow<'e, [u8]>)>,
    ) -> Result<(), StorageError> {
        let mut prev = self.lmdb_last(wtxn)?;
        for (e, bytes) in entries {
            check_continues(prev, std::slice::from_ref(e))?;
            self.entries
                .put(wtxn, &e.index, &bytes)
                .map_err(self.err())?;
            prev = (e.index, e.term);
        }
        Ok(())
    }

    /// The last compacted entry's (index, term): entries up to it are gone
    /// (their effects live in the state). `(0, 0)` if nothing is compacted.
    pub fn compacted(&self) -> Result<(Index, Term), StorageError> {
        Ok(*self.shared.compacted.lock().expect("compacted point lock"))
    }

    /// Re-read the compacted point after a commit. Read and store under
    /// one lock: whichever caller stores last has read last, so the cache
    /// never goes back to an older point.
    fn refresh_compacted(&self) -> Result<(), StorageError> {
        let mut cached = self.shared.compacted.lock().expect("compacted point lock");
        let rtxn = self.env.read_txn().map_err(self.err())?;
        *cached = self.compacted_in(&rtxn)?;
        Ok(())
    }

    fn compacted_in(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<(Index, Term), StorageError> {
        match self.meta.get(txn, "compacted").map_err(self.err())? {
            None => Ok((0, 0)),
            Some(b) => codec::decode("compacted", b).map_err(self.corrupt("compacted".into())),
        }
    }

    /// Remove the log prefix up to `up_to` (which must be applied and
    /// durable in the state), keeping its (index, term) as the compacted
    /// point. At most `batch_max` entries go per call (one transaction), so
    /// the log writer is never held up long; returns the new compacted
    /// index. Entries still in the journaled tail move into LMDB first
    /// (only when the retained log is shorter than the tail).
    pub fn compact(&self, up_to: Index, batch_max: u64) -> Result<Index, StorageError> {
        let (done, _) = self.compacted()?;
        let to = up_to.min(done + batch_max.max(1));
        if to <= done {
            return Ok(done);
        }
        let tail_first = self
            .shared
            .tail
            .read()
            .expect("log tail lock")
            .entries
            .front()
            .map(|(e, _)| e.index);
        if tail_first.is_some_and(|first| first <= to) {
            let mut writer = self.shared.writer.lock().expect("log writer lock");
            self.move_tail(&mut writer, false, |_| Ok(()))?;
        }
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        let (done, _) = self.compacted_in(&wtxn)?;
        if to <= done {
            return Ok(done);
        }
        let (term, timestamp_ms) = match self.entries.get(&wtxn, &to).map_err(self.err())? {
            Some(b) => {
                let e = codec::decode::<Entry>("entry", b)
                    .map_err(self.corrupt(format!("entry {to}")))?;
                (e.term, e.context.timestamp_ms)
            }
            None => {
                return Err(StorageError::Invariant(format!(
                    "compaction up to {to}, which is not in the log"
                )));
            }
        };
        self.entries
            .delete_range(&mut wtxn, &(..=to))
            .map_err(self.err())?;
        self.meta
            .put(&mut wtxn, "compacted", &codec::encode(&(to, term)))
            .map_err(self.err())?;
        self.meta
            .put(
                &mut wtxn,
                COMPACTED_TIMESTAMP,
                &codec::encode(&timestamp_ms),
            )
            .map_err(self.err())?;
        wtxn.commit().map_err(self.err())?;
        self.refresh_compacted()?;
        Ok(to)
    }

    /// Replace the whole log by the compacted point `(index, term)` (after
    /// a snapshot of the state at `index` was installed), whose entry was
    /// stamped `timestamp_ms` (0 if unknown).
    pub fn reset_to(
        &self,
        index: Index,
        term: Term,
        timestamp_ms: u64,
    ) -> Result<(), StorageError> {
        let mut writer = self.shared.writer.lock().expect("log writer lock");
        self.move_tail(&mut writer, true, |wtxn| {
            self.entries.clear(wtxn).map_err(self.err())?;
            self.meta
                .put(wtxn, "compacted", &codec::encode(&(index, term)))
                .map_err(self.err())?;
            self.meta
                .put(wtxn, COMPACTED_TIMESTAMP, &codec::encode(&timestamp_ms))
                .map_err(self.err())
        })?;
        self.refresh_compacted()
    }

    /// The timestamp of the last compacted entry (0 if none, or if its
    /// data directory predates this record).
    pub fn compacted_timestamp_ms(&self) -> Result<u64, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        match self
            .meta
            .get(&rtxn, COMPACTED_TIMESTAMP)
            .map_err(self.err())?
        {
            None => Ok(0),
            Some(b) => codec::decode(COMPACTED_TIMESTAMP, b)
                .map_err(self.corrupt(COMPACTED_TIMESTAMP.into())),
        }
    }

    /// The timestamp of the entry at `index`, in the log or at its
    /// compacted point.
    pub fn timestamp_of(&self, index: Index) -> Result<Option<u64>, StorageError> {
        if let Some(e) = self
            .read(index, index, 1)?
            .first()
            .filter(|e| e.index == index)
        {
            return Ok(Some(e.context.timestamp_ms));
        }
        if self.compacted()?.0 == index {
            return self.compacted_timestamp_ms().map(Some);
        }
        Ok(None)
    }

    /// Index of the first entry with a timestamp at or after `ms`, searched
    /// between `from` and `to` (timestamps never decrease along the log).
    pub fn first_at_or_after(
        &self,
        ms: u64,
        from: Index,
        to: Index,
    ) -> Result<Index, StorageError> {
        let (mut lo, mut hi) = (from, to + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ts = self
                .read(mid, mid, 1)?
                .first()
                .map(|e| e.context.timestamp_ms)
                .unwrap_or(u64::MAX);
            if ts < ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Remove every entry at `from` and after (a conflicting suffix).
    pub fn truncate_from(&self, from: Index) -> Result<(), StorageError> {
        self.persist_with(None, Some(from), &[])
    }

    /// Entries `from..=to`, at most `bytes_max` bytes (always at least one):
    /// from LMDB, then from the journaled tail, as one consistent log.
    pub fn read(
        &self,
        from: Index,
        to: Index,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        loop {
            // The tail first: an entry leaves it only after it is in LMDB.
            let (version, tail_first, mut from_tail) = {
                let tail = self.shared.tail.read().expect("log tail lock");
                let first = tail.entries.front().map_or(Index::MAX, |(e, _)| e.index);
                let mut part = Vec::new();
                let mut bytes = 0usize;
                let skip = from.saturating_sub(first) as usize;
                for (e, encoded) in tail.entries.iter().skip(skip) {
                    if e.index > to || bytes >= bytes_max {
                        break;
                    }
                    bytes += encoded.len();
                    part.push((e.clone(), encoded.len()));
                }
                (tail.version, first, part)
            };
            #[cfg(test)]
            tests::pause_between_tail_and_lmdb();
            let mut out = Vec::new();
            let mut bytes_total = 0usize;
            if from < tail_first {
                (out, bytes_total) = self.read_lmdb(from, to.min(tail_first - 1), bytes_max)?;
            }
            if self.shared.tail.read().expect("log tail lock").version != version {
                continue; // a truncation or a move happened in between
            }
            let reaches_tail = match out.last() {
                None => from >= tail_first,
                Some(e) => e.index + 1 == tail_first,
            };
            if reaches_tail && (out.is_empty() || bytes_total < bytes_max) {
                for (e, size) in from_tail.drain(..) {
                    out.push(e);
                    bytes_total += size;
                    if bytes_total >= bytes_max {
                        break;
                    }
                }
            }
            return Ok(out);
        }
    }

    fn read_lmdb(
        &self,
        from: Index,
        to: Index,
        bytes_max: usize,
    ) -> Result<(Vec<Entry>, usize), StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        let mut out = Vec::new();
        let mut bytes_total = 0usize;
        for item in self
            .entries
            .range(&rtxn, &(from..=to))
            .map_err(self.err())?
        {
            let (index, bytes) = item.map_err(self.err())?;
            let entry: Entry =
                codec::decode("entry", bytes).map_err(self.corrupt(format!("entry {index}")))?;
            // Paired check: the key we stored under is the index inside.
            if entry.index != index {
                return Err(StorageError::Invariant(format!(
                    "entry stored at {index} says it is {}",
                    entry.index
                )));
            }
            bytes_total += bytes.len();
            out.push(entry);
            if bytes_total >= bytes_max {
                break;
            }
        }
        Ok((out, bytes_total))
    }

    /// A meta value, decoded.
    fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        match self.meta.get(&rtxn, key).map_err(self.err())? {
            None => Ok(None),
            Some(bytes) => codec::decode(key, bytes)
                .map(Some)
                .map_err(self.corrupt(key.into())),
        }
    }

    /// Write one meta value in its own (synced) transaction.
    fn meta_put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        // One writer at a time, as for every write to the log.
        let _writer = self.shared.writer.lock().expect("log writer lock");
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        self.meta
            .put(&mut wtxn, key, &codec::encode(value))
            .map_err(self.err())?;
        wtxn.commit().map_err(self.err())
    }

    /// This data directory's incarnation: a random id made when the log was
    /// created (or first opened by a build that has incarnations). A node
    /// restarted on an empty directory under the same node id has another
    /// one, which tells its peers that it lost its log and its votes.
    pub fn incarnation(&self) -> Result<u64, StorageError> {
        if let Some(i) = self.meta_get::<u64>("incarnation")? {
            return Ok(i);
        }
        let i = rand::random::<u64>() | 1;
        self.meta_put("incarnation", &i)?;
        Ok(i)
    }

    /// Record that `peer` runs on a data directory of `incarnation`
    /// (durably, before the peer is welcomed). Returns the incarnation
    /// recorded before if it was another one: the peer lost its data.
    pub fn observe_peer(
        &self,
        peer: NodeId,
        incarnation: u64,
    ) -> Result<Option<u64>, StorageError> {
        let mut known: BTreeMap<NodeId, u64> =
            self.meta_get("peer_incarnations")?.unwrap_or_default();
        let before = known.insert(peer, incarnation);
        if before == Some(incarnation) {
            return Ok(None);
        }
        self.meta_put("peer_incarnations", &known)?;
        Ok(before)
    }

    /// What this node knows of its own data loss: the log position (last
    /// term, last index) a candidate needs for its vote — the most
    /// up-to-date its peers told it after the loss (`Core::recovery_floor`)
    /// — and whether it has learned which terms its old incarnation may
    /// have used. `((0, 0), true)`: never lost its data.
    pub fn recovering(&self) -> Result<((Term, Index), bool), StorageError> {
        Ok(self.meta_get("recovering")?.unwrap_or(((0, 0), true)))
    }

    /// Record [`Self::recovering`] (synced).
    pub fn set_recovering(
        &self,
        floor: (Term, Index),
        terms_known: bool,
    ) -> Result<(), StorageError> {
        self.meta_put("recovering", &(floor, terms_known))
    }

    /// The persisted term and vote.
    pub fn hard_state(&self) -> Result<HardState, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        match self.meta.get(&rtxn, "hard_state").map_err(self.err())? {
            None => Ok(HardState::default()),
            Some(bytes) => {
                codec::decode("hard state", bytes).map_err(self.corrupt("hard state".into()))
            }
        }
    }
}

/// Log invariant: `entries` continue the log after `prev` — contiguous
/// indexes, terms that never decrease.
fn check_continues(prev: (Index, Term), entries: &[Entry]) -> Result<(), StorageError> {
    let (mut prev_index, mut prev_term) = prev;
    for e in entries {
        if e.index != prev_index + 1 || e.term < prev_term {
            return Err(StorageError::Invariant(format!(
                "append of entry {}@{} after {}@{}",
                e.index, e.term, prev_index, prev_term
            )));
        }
        (prev_index, prev_term) = (e.index, e.term);
    }
    Ok(())
}

impl crate::replication::LogRead for LogStore {
    fn term(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        // A read failure answers "unknown", which the core treats
        // conservatively (no match, no commit).
        let found = self.read(index, index, 1).and_then(|entries| {
            match entries.first().filter(|e| e.index == index) {
                Some(e) => Ok(Some(e.term)),
                None => {
                    let (c, t) = self.compacted()?;
                    Ok((c == index).then_some(t))
                }
            }
        });
        found.unwrap_or_else(|e| {
            tracing::error!(error = %e, index, "log read failed");
            None
        })
    }

    fn compacted_timestamp_ms(&self) -> u64 {
        LogStore::compacted_timestamp_ms(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, "log read failed");
            0
        })
    }

    fn first_index(&self) -> Index {
        self.compacted().map(|(c, _)| c + 1).unwrap_or_else(|e| {
            tracing::error!(error = %e, "log read failed");
            1
        })
    }

    fn entries(&self, from: Index, to: Index, bytes_max: usize) -> Vec<Entry> {
        self.read(from, to, bytes_max).unwrap_or_else(|e| {
            tracing::error!(error = %e, from, to, "log read failed");
            Vec::new()
        })
    }
}

/// What an actor name maps to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRecord {
    /// Hash of the machine component.
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
    /// Index of the deploy entry.
    pub deployed_at: Index,
}

/// Everything one applied batch changes, written in one transaction.
#[derive(Clone, Default)]
pub struct StateBatch {
    /// Machine state writes (full keys, see [`actor_key`]).
    pub kv: WriteSet,
    /// Client session records: key (client id, seq) → encoded outcome, `None` deletes.
    pub sessions: BTreeMap<[u8; 16], Option<Vec<u8>>>,
    /// Client id → forget every session seq below this.
    pub session_prunes: BTreeMap<u64, u64>,
    /// New or replaced actors.
    pub actors: BTreeMap<String, ActorRecord>,
    /// New module bytes by hash.
    pub modules: BTreeMap<ModuleHash, Vec<u8>>,
    /// The last entry this batch applies.
    pub applied_index: Index,
    /// The state digest after it.
    pub digest: [u8; 32],
}

/// The file of a snapshot's chunk `seq` in its directory (written by
/// [`StateStore::write_snapshot`], staged by a follower as it arrives, read
/// back by [`crate::node::applier::Applier::install_snapshot`]).
pub fn chunk_name(seq: u64) -> String {
    format!("chunk-{seq:08}")
}

/// Key of a session record.
pub fn session_key(client_id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Full state key of `key` in `actor`'s namespace: `len(actor) ‖ actor ‖ key`.
pub fn actor_key(actor: &str, key: &[u8]) -> Vec<u8> {
    let mut k = actor_prefix(actor);
    k.extend_from_slice(key);
    k
}

/// Prefix of every key of `actor`.
pub fn actor_prefix(actor: &str) -> Vec<u8> {
    debug_assert!(actor.len() <= crate::types::ACTOR_NAME_MAX_BYTES);
    let mut k = Vec::with_capacity(1 + actor.len() + 16);
    k.push(actor.len() as u8);
    k.extend_from_slice(actor.as_bytes());
    k
}

/// Applied position and digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// Last applied index.
    pub index: Index,
    /// Chained digest of the write-sets up to it.
    pub digest: [u8; 32],
}

/// Machine state, actors, modules, sessions and the applied index.
#[derive(Clone)]
pub struct StateStore {
    env: Env<WithoutTls>,
    kv: Database<'static, Bytes, Bytes>,
    meta: Database<'static, Str, Bytes>,
    sessions: Database<'static, Bytes, Bytes>,
    actors: Database<'static, Str, Bytes>,
    modules: Database<'static, Bytes, Bytes>,
    artifacts: Database<'static, Bytes, Bytes>,
    map_bytes: usize,
}

impl StateStore {
    /// Open (or create) the state environment at `path`.
    pub fn open(
        path: &Path,
        identity: &Identity,
        opts: &StorageOptions,
    ) -> Result<Self, StorageError> {
        let env = open_env(path, opts, 8, SyncMode::NoMetaSync)?;
        let kv = create_db(&env, "kv", opts)?;
        let meta = create_db(&env, "meta", opts)?;
        let sessions = create_db(&env, "sessions", opts)?;
        let actors = create_db(&env, "actors", opts)?;
        let modules = create_db(&env, "modules", opts)?;
        let artifacts = create_db(&env, "artifacts", opts)?;
        check_identity(&env, meta, identity, opts.map_size_bytes)?;
        Ok(StateStore {
            env,
            kv,
            meta,
            sessions,
            actors,
            modules,
            artifacts,
            map_bytes: opts.map_size_bytes,
        })
    }

    /// The applied index and digest.
    pub fn applied(&self) -> Result<AppliedState, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        match self.meta.get(&rtxn, "applied").map_err(self.err())? {
            None => Ok(AppliedState::default()),
            Some(b) => codec::decode("applied", b).map_err(self.corrupt("applied".into())),
        }
    }

    /// A consistent read snapshot (owned; keep it short-lived: it pins pages).
    pub fn snapshot(&self) -> Result<StateSnapshot, StorageError> {
        let txn = self.env.clone().static_read_txn().map_err(self.err())?;
        Ok(StateSnapshot {
            txn,
            store: self.clone(),
            corrupt: std::sync::OnceLock::new(),
        })
    }

    /// Write one applied batch atomically: its state changes together with
    /// the `applied_index` that covers them (exactly-once apply).
    pub fn commit(&self, batch: &StateBatch) -> Result<(), StorageError> {
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        let before: AppliedState = match self.meta.get(&wtxn, "applied").map_err(self.err())? {
            None => AppliedState::default(),
            Some(b) => codec::decode("applied", b).map_err(self.corrupt("applied".into()))?,
        };
        // Exactly-once apply: a batch must start right after what is applied.
        if batch.applied_index <= before.index {
            return Err(StorageError::Invariant(format!(
                "batch up to {} would re-apply entries (applied is {})",
                batch.applied_index, before.index
            )));
        }
        for (k, v) in &batch.kv {
            match v {
                Some(v) => self.kv.put(&mut wtxn, k, &seal(k, v)),
                None => self.kv.delete(&mut wtxn, k).map(|_| ()),
            }
            .map_err(self.err())?;
        }
        for (client, below) in &batch.session_prunes {
            let lo = session_key(*client, 0);
            let hi = session_key(*client, *below);
            let range = (Bound::Included(&lo[..]), Bound::Excluded(&hi[..]));
            self.sessions
                .delete_range(&mut wtxn, &range)
                .map_err(self.err())?;
        }
        for (k, v) in &batch.sessions {
            // Skip records that a prune of this same batch already forgets.
            let client = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            let seq = u64::from_be_bytes(k[8..].try_into().expect("8 bytes"));
            if batch
                .session_prunes
                .get(&client)
                .is_some_and(|below| seq < *below)
            {
                continue;
            }
            match v {
                Some(v) => self.sessions.put(&mut wtxn, k, v),
                None => self.sessions.delete(&mut wtxn, k).map(|_| ()),
            }
            .map_err(self.err())?;
        }
        for (hash, bytes) in &batch.modules {
            self.modules
                .put(&mut wtxn, hash, bytes)
                .map_err(self.err())?;
        }
        for (name, rec) in &batch.actors {
            self.actors
                .put(&mut wtxn, name, &codec::encode(rec))
                .map_err(self.err())?;
        }
        let applied = AppliedState {
            index: batch.applied_index,
            digest: batch.digest,
        };
        self.meta
            .put(&mut wtxn, "applied", &codec::encode(&applied))
            .map_err(self.err())?;
        wtxn.commit().map_err(self.err())
    }

    /// Store a precompiled artifact of `hash` for engine `compat`.
    pub fn put_artifact(
        &self,
        hash: &ModuleHash,
        compat: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        self.artifacts
            .put(&mut wtxn, &artifact_key(hash, compat), bytes)
            .map_err(self.err())?;
        wtxn.commit().map_err(self.err())
    }

    /// A copy of the precompiled artifact of `hash` for engine `compat`.
    /// Copied out: the LMDB page is reused once the read transaction ends.
    pub fn artifact(
        &self,
        hash: &ModuleHash,
        compat: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        Ok(self
            .artifacts
            .get(&rtxn, &artifact_key(hash, compat))
            .map_err(self.err())?
            .map(<[u8]>::to_vec))
    }

    /// Every actor and its record.
    pub fn actors(&self) -> Result<Vec<(String, ActorRecord)>, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        let mut out = Vec::new();
        for item in self.actors.iter(&rtxn).map_err(self.err())? {
            let (name, bytes) = item.map_err(self.err())?;
            let rec =
                codec::decode("actor", bytes).map_err(self.corrupt(format!("actor {name}")))?;
            out.push((name.to_string(), rec));
        }
        Ok(out)
    }

    /// Write a snapshot of the durable state (kv, actors, modules,
    /// sessions, applied index and digest; not the node-local artifact
    /// cache) into `dir` as chunk files of about `chunk_bytes` each, from
    /// one consistent read transaction. `term_of` gives the log term of the
    /// applied index.
    pub fn write_snapshot(
        &self,
        dir: &Path,
        chunk_bytes: usize,
        position_of: impl FnOnce(Index) -> Option<(Term, u64)>,
    ) -> Result<SnapshotMeta, StorageError> {
        let io = |source: std::io::Error| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let rtxn = self.env.read_txn().map_err(self.err())?;
        let applied: AppliedState = match self.meta.get(&rtxn, "applied").map_err(self.err())? {
            None => AppliedState::default(),
            Some(b) => codec::decode("applied", b).map_err(self.corrupt("applied".into()))?,
        };
        let (term, last_timestamp_ms) = position_of(applied.index).ok_or_else(|| {
            StorageError::Invariant(format!("no term for applied index {}", applied.index))
        })?;
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut chunk: Vec<SnapshotRecord> = Vec::new();
        let mut chunk_size = 0usize;
        let mut checksums: Vec<[u8; 32]> = Vec::new();
        let mut total = 0u64;
        let mut flush =
            |chunk: &mut Vec<SnapshotRecord>, size: &mut usize| -> Result<(), StorageError> {
                let bytes = codec::encode(&*chunk);
                checksums.push(*blake3::hash(&bytes).as_bytes());
                total += bytes.len() as u64;
                let path = dir.join(chunk_name(checksums.len() as u64 - 1));
                std::fs::write(&path, &bytes).map_err(io)?;
                chunk.clear();
                *size = 0;
                Ok(())
            };
        let tables: [(u8, Database<'static, Bytes, Bytes>); 3] =
            [(0, self.kv), (2, self.modules), (3, self.sessions)];
        for (table, db) in tables {
            for item in db.iter(&rtxn).map_err(self.err())? {
                let (k, v) = item.map_err(self.err())?;
                // A snapshot carries values as machines see them.
                let v = if table == 0 {
                    unseal(k, v).ok_or_else(|| self.state_corrupt(k))?
                } else {
                    v
                };
                chunk_size += k.len() + v.len() + 8;
                chunk.push(SnapshotRecord {
                    table,
                    key: serde_bytes::ByteBuf::from(k),
                    value: serde_bytes::ByteBuf::from(v),
                });
                if chunk_size >= chunk_bytes {
                    flush(&mut chunk, &mut chunk_size)?;
                }
            }
        }
        for item in self.actors.iter(&rtxn).map_err(self.err())? {
            let (k, v) = item.map_err(self.err())?;
            chunk.push(SnapshotRecord {
                table: 1,
                key: serde_bytes::ByteBuf::from(k.as_bytes()),
                value: serde_bytes::ByteBuf::from(v),
            });
        }
        flush(&mut chunk, &mut chunk_size)?;
        let meta = SnapshotMeta {
            index: applied.index,
            term,
            digest: applied.digest,
            chunks: checksums.len() as u64,
            bytes: total,
            checksums,
            last_timestamp_ms,
        };
        std::fs::write(dir.join("meta"), codec::encode(&meta)).map_err(io)?;
        Ok(meta)
    }

    /// Replace the whole state with a snapshot's records, in one
    /// transaction, with the snapshot's applied index and digest. Also
    /// records the snapshot's (index, term), so that a crash before the
    /// log is reset is completed at the next start.
    pub fn install_snapshot(
        &self,
        meta: &SnapshotMeta,
        chunks: impl Iterator<Item = Result<Vec<SnapshotRecord>, StorageError>>,
    ) -> Result<(), StorageError> {
        let mut wtxn = self.env.write_txn().map_err(self.err())?;
        self.kv.clear(&mut wtxn).map_err(self.err())?;
        self.actors.clear(&mut wtxn).map_err(self.err())?;
        self.modules.clear(&mut wtxn).map_err(self.err())?;
        self.sessions.clear(&mut wtxn).map_err(self.err())?;
        for chunk in chunks {
            for r in chunk? {
                let (k, v) = (&r.key[..], &r.value[..]);
                match r.table {
                    0 => self.kv.put(&mut wtxn, k, &seal(k, v)),
                    1 => {
                        let name = std::str::from_utf8(k).map_err(|_| {
                            StorageError::Invariant("snapshot actor name is not UTF-8".into())
                        })?;
                        self.actors.put(&mut wtxn, name, v)
                    }
                    2 => self.modules.put(&mut wtxn, k, v),
                    3 => self.sessions.put(&mut wtxn, k, v),
                    t => {
                        return Err(StorageError::Invariant(format!(
                            "snapshot record of unknown table {t}"
                        )));
                    }
                }
                .map_err(self.err())?;
            }
        }
        let applied = AppliedState {
            index: meta.index,
            digest: meta.digest,
        };
        self.meta
            .put(&mut wtxn, "applied", &codec::encode(&applied))
            .map_err(self.err())?;
        self.meta
            .put(
                &mut wtxn,
                "snapshot",
                &codec::encode(&(meta.index, meta.term)),
            )
            .map_err(self.err())?;
        wtxn.commit().map_err(self.err())
    }

    /// The (index, term) of the last snapshot installed, if any.
    pub fn installed_snapshot(&self) -> Result<Option<(Index, Term)>, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        match self.meta.get(&rtxn, "snapshot").map_err(self.err())? {
            None => Ok(None),
            Some(b) => codec::decode("snapshot", b)
                .map(Some)
                .map_err(self.corrupt("snapshot".into())),
        }
    }

    /// Every kv pair, for verification and tests.
    pub fn dump_kv(&self) -> Result<Pairs, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        let mut out = Vec::new();
        for item in self.kv.iter(&rtxn).map_err(self.err())? {
            let (k, v) = item.map_err(self.err())?;
            let v = unseal(k, v).ok_or_else(|| self.state_corrupt(k))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn state_corrupt(&self, key: &[u8]) -> StorageError {
        StorageError::StateCorrupt {
            path: self.env.path().to_path_buf(),
            key: hex_of(key),
        }
    }
}

/// Bytes of the checksum each stored machine-state value ends with.
const VALUE_CHECK_BYTES: usize = 4;

/// A machine-state value as stored: the value, then a CRC-32 of the key
/// and the value (a value damaged at rest, or one found under another
/// key, fails it). Checked on every read ([`unseal`]).
fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(value);
    let mut out = Vec::with_capacity(value.len() + VALUE_CHECK_BYTES);
    out.extend_from_slice(value);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out
}

/// The value of a stored machine-state value, if its checksum holds.
fn unseal<'a>(key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    let split = stored.len().checked_sub(VALUE_CHECK_BYTES)?;
    let (value, check) = stored.split_at(split);
    let mut h = crc32fast::Hasher::new();
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(value);
    (h.finalize().to_le_bytes() == check).then_some(value)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn artifact_key(hash: &ModuleHash, compat: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(hash);
    k[32..].copy_from_slice(compat);
    k
}

/// One record of a state snapshot: table (0 kv, 1 actors, 2 modules,
/// 3 sessions), key, value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Which table.
    pub table: u8,
    /// Key.
    pub key: serde_bytes::ByteBuf,
    /// Value.
    pub value: serde_bytes::ByteBuf,
}

/// Describes a snapshot written by [`StateStore::write_snapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The applied index the snapshot is the state of.
    pub index: Index,
    /// Log term of that index.
    pub term: Term,
    /// State digest at that index.
    pub digest: [u8; 32],
    /// Number of chunk files.
    pub chunks: u64,
    /// Total bytes of the chunks.
    pub bytes: u64,
    /// BLAKE3 of each chunk.
    pub checksums: Vec<[u8; 32]>,
    /// Timestamp of the entry at `index` (0 if unknown: a snapshot made
    /// by an older version). The receiver's log keeps it with its
    /// compacted point, so that leading later it never stamps an entry
    /// earlier than the ones before.
    #[serde(default)]
    pub last_timestamp_ms: u64,
}

/// An owned read snapshot of the state environment.
pub struct StateSnapshot {
    txn: RoTxn<'static, WithoutTls>,
    store: StateStore,
    /// The first value read through [`KvRead`] that failed its checksum:
    /// the call that read it must be thrown away (see [`Self::corruption`]).
    corrupt: std::sync::OnceLock<Vec<u8>>,
}

impl StateSnapshot {
    /// A value read through this snapshot failed its checksum: whatever
    /// was computed from the reads is void, and the state is damaged.
    /// (`KvRead` has no error path — a machine's reads cannot fail — so
    /// the reader checks this after each call.)
    pub fn corruption(&self) -> Option<StorageError> {
        self.corrupt.get().map(|key| self.store.state_corrupt(key))
    }

    fn checked<'a>(&self, key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
        let value = unseal(key, stored);
        if value.is_none() {
            let _ = self.corrupt.set(key.to_vec());
        }
        value
    }

    /// The applied index of the state this snapshot sees.
    pub fn applied_index(&self) -> Result<Index, StorageError> {
        match self
            .store
            .meta
            .get(&self.txn, "applied")
            .map_err(self.store.err())?
        {
            None => Ok(0),
            Some(b) => codec::decode::<AppliedState>("applied", b)
                .map(|a| a.index)
                .map_err(self.store.corrupt("applied".into())),
        }
    }

    /// The actor record of `name`.
    pub fn actor(&self, name: &str) -> Result<Option<ActorRecord>, StorageError> {
        match self
            .store
            .actors
            .get(&self.txn, name)
            .map_err(self.store.err())?
        {
            None => Ok(None),
            Some(b) => codec::decode("actor", b)
                .map(Some)
                .map_err(self.store.corrupt(format!("actor {name}"))),
        }
    }

    /// Module bytes by hash.
    pub fn module(&self, hash: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .store
            .modules
            .get(&self.txn, hash)
            .map_err(self.store.err())?
            .map(<[u8]>::to_vec))
    }

    /// The stored outcome of a client's write, if still remembered.
    pub fn session(&self, key: &[u8; 16]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .store
            .sessions
            .get(&self.txn, &key[..])
            .map_err(self.store.err())?
            .map(<[u8]>::to_vec))
    }
}

impl KvRead for StateSnapshot {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        // A read error here is an LMDB failure (disk), not guest input; the
        // sandbox cannot report it deterministically, so fail loudly.
        let stored = self
            .store
            .kv
            .get(&self.txn, key)
            .expect("LMDB read of machine state failed")?;
        self.checked(key, stored).map(<[u8]>::to_vec)
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        if end.is_some_and(|e| e <= start) {
            return Vec::new();
        }
        let range = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        self.store
            .kv
            .range(&self.txn, &range)
            .expect("LMDB range of machine state failed")
            .take(limit)
            .filter_map(|r| {
                let (k, v) = r.expect("LMDB range of machine state failed");
                let v = self.checked(k, v)?;
                Some((k.to_vec(), v.to_vec()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
