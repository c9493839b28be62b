//! The state environment (`state/`): machine state (each value sealed
//! with a checksum), actors, modules, precompiled artifacts, sessions, the
//! applied index and digest; checkpoints, and snapshots of it.

use super::env::*;
use crate::codec;
use crate::kv::{KvRead, ModuleHash, Pairs, WriteSet};
use crate::types::{Index, Term};
use heed::types::{Bytes, Str};
use heed::{Database, Env, RoTxn, WithoutTls};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

impl EnvErrors for StateStore {
    fn env(&self) -> &Env<WithoutTls> {
        &self.env
    }
    fn map_bytes(&self) -> usize {
        self.map_bytes
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

/// Where a follower stages the chunks of the snapshot `meta` describes,
/// under its snapshot `root`.
pub fn staging_dir(root: &Path, meta: &SnapshotMeta) -> std::path::PathBuf {
    root.join(format!("{STAGING_PREFIX}{}-{}", meta.index, meta.term))
}

/// Remove every staging directory under `root` but `keep`: only the latest
/// incoming snapshot is resumed.
pub fn remove_other_stagings(root: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.path() != keep && e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The name every staging directory starts with.
const STAGING_PREFIX: &str = "incoming-";

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
        position_of: impl FnOnce(Index) -> Option<SnapshotPosition>,
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
        let (term, last_timestamp_ms, membership) =
            position_of(applied.index).ok_or_else(|| {
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
            membership: membership.map(Box::new),
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
pub(super) fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
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
pub(super) fn unseal<'a>(key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The configuration in effect at `index` (`None`: the log held none
    /// by then; the receiver keeps its bootstrap one).
    #[serde(default)]
    pub membership: Option<Box<understudy_core::membership::Membership>>,
}

/// Where a snapshot's applied index stands in the log: its entry's term
/// and timestamp, and the configuration in effect there.
pub type SnapshotPosition = (Term, u64, Option<understudy_core::membership::Membership>);

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
