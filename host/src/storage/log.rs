//! The log environment (`log/`): entries, the hard state, the compacted
//! point and its timestamp, the peer book, and the write-ahead journal in
//! front of LMDB (`journal.rs`).

use super::env::*;
use super::journal::{self, Journal};
use crate::codec;
use crate::replication::HardState;
use crate::types::{Entry, Index, NodeId, Payload, Term};
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, RoTxn, WithoutTls, byteorder::BigEndian};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use understudy_core::membership::Membership;

/// The log meta key of the last compacted entry's timestamp.
const COMPACTED_TIMESTAMP: &str = "compacted-timestamp";

impl EnvErrors for LogStore {
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
    /// The configurations the log holds, by index (a copy of each
    /// configuration entry's payload, kept in the same transactions as
    /// the entries), and the one at the compacted point: a node starts
    /// with them without reading its whole log.
    configs: Database<'static, U64<BigEndian>, Bytes>,
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
        let configs = create_db(&env, "configs", opts)?;
        check_identity(&env, meta, identity, opts.map_size_bytes)?;
        let log = LogStore {
            env,
            entries,
            meta,
            configs,
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
                self.configs
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
        super::tests::pause_after_move_commit();
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
            if let Payload::Config(m) = &e.payload {
                self.configs
                    .put(wtxn, &e.index, &codec::encode(&**m))
                    .map_err(self.err())?;
            }
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
        // The configuration in effect at the compacted point stays.
        let kept = self
            .configs
            .get_lower_than_or_equal_to(&wtxn, &to)
            .map_err(self.err())?
            .map(|(i, _)| i);
        if let Some(kept) = kept {
            self.configs
                .delete_range(&mut wtxn, &(..kept))
                .map_err(self.err())?;
        }
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
    /// stamped `timestamp_ms` (0 if unknown), with the configuration in
    /// effect there (`None`: none was in the log yet; the bootstrap one).
    pub fn reset_to(
        &self,
        index: Index,
        term: Term,
        timestamp_ms: u64,
        membership: Option<&Membership>,
    ) -> Result<(), StorageError> {
        let mut writer = self.shared.writer.lock().expect("log writer lock");
        self.move_tail(&mut writer, true, |wtxn| {
            self.entries.clear(wtxn).map_err(self.err())?;
            self.configs.clear(wtxn).map_err(self.err())?;
            if let Some(m) = membership {
                self.configs
                    .put(wtxn, &index, &codec::encode(m))
                    .map_err(self.err())?;
            }
            self.meta
                .put(wtxn, "compacted", &codec::encode(&(index, term)))
                .map_err(self.err())?;
            self.meta
                .put(wtxn, COMPACTED_TIMESTAMP, &codec::encode(&timestamp_ms))
                .map_err(self.err())
        })?;
        self.refresh_compacted()
    }

    /// The configurations the log holds, oldest first: the one in effect
    /// at the compacted point (if the log held one by then), then every
    /// later configuration entry. Empty: the bootstrap configuration.
    pub fn memberships(&self) -> Result<Vec<(Index, Membership)>, StorageError> {
        let rtxn = self.env.read_txn().map_err(self.err())?;
        let mut out = Vec::new();
        for item in self.configs.iter(&rtxn).map_err(self.err())? {
            let (i, b) = item.map_err(self.err())?;
            let m = codec::decode("configuration", b)
                .map_err(self.corrupt(format!("configuration {i}")))?;
            out.push((i, m));
        }
        drop(rtxn);
        let tail = self.shared.tail.read().expect("log tail lock");
        for (e, _) in &tail.entries {
            if let Payload::Config(m) = &e.payload
                && out.last().is_none_or(|(i, _)| *i < e.index)
            {
                out.push((e.index, (**m).clone()));
            }
        }
        Ok(out)
    }

    /// The configuration in effect at `index` (the newest at or below
    /// it), if the log holds one: what a snapshot of the state at `index`
    /// carries.
    pub fn membership_at(&self, index: Index) -> Result<Option<Membership>, StorageError> {
        {
            let tail = self.shared.tail.read().expect("log tail lock");
            let newest = tail
                .entries
                .iter()
                .rev()
                .find_map(|(e, _)| match &e.payload {
                    Payload::Config(m) if e.index <= index => Some((**m).clone()),
                    _ => None,
                });
            if newest.is_some() {
                return Ok(newest);
            }
        }
        let rtxn = self.env.read_txn().map_err(self.err())?;
        match self
            .configs
            .get_lower_than_or_equal_to(&rtxn, &index)
            .map_err(self.err())?
        {
            None => Ok(None),
            Some((i, b)) => codec::decode("configuration", b)
                .map(Some)
                .map_err(self.corrupt(format!("configuration {i}"))),
        }
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
            super::tests::pause_between_tail_and_lmdb();
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
