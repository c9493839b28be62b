//! Backup files: one online backup of a group (written by `understudy
//! backup` from the chunks a member stages, see
//! `crate::node`'s `backups.rs`), checked offline (`understudy verify
//! --backup`), and restored into a new data directory (`understudy
//! restore`).
//!
//! ```text
//! magic      16 bytes   "UNDERSTUDY-BKUP\n"
//! version     4 bytes   BACKUP_FORMAT_VERSION, little-endian
//! header      8 + n     length (LE u64), then the CBOR BackupHeader:
//!                       cluster, node, time, and the snapshot's meta
//!                       (index, term, digest, BLAKE3 of every chunk,
//!                       the configuration in effect at the index)
//! chunk × N   8 + n     length, then the chunk as the node staged it
//!                       (CBOR records: kv, actors, modules, sessions)
//! trailer    32 bytes   BLAKE3 of every byte before it
//! ```
//!
//! Every chunk is checked against its checksum in the header as it is
//! read, and the whole file against the trailer: a truncated or altered
//! file is refused before anything is restored from it.

use crate::codec;
use crate::storage::{
    self, ActorRecord, Identity, SnapshotMeta, SnapshotRecord, StorageError, StorageOptions,
};
use crate::types::{Index, NodeId};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// The first bytes of a backup file.
pub const BACKUP_MAGIC: &[u8; 16] = b"UNDERSTUDY-BKUP\n";
/// The format version this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u32 = 1;
/// Largest header a backup file may declare (unit: bytes): a header holds
/// 32 bytes per chunk, so this admits more than a million chunks.
pub const BACKUP_HEADER_BYTES_MAX: u64 = 64 << 20;
/// Largest chunk a backup file may declare (unit: bytes): a chunk came in
/// one frame of the client port.
pub const BACKUP_CHUNK_BYTES_MAX: u64 = crate::net::FRAME_BYTES_MAX as u64;

/// What a backup file says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The group it was taken from.
    pub cluster_id: String,
    /// The member that wrote it.
    pub node_id: NodeId,
    /// When (ms since the Unix epoch).
    pub taken_at_ms: u64,
    /// The version of the build that wrote the file.
    pub understudy_version: String,
    /// The snapshot: index, term, digest, chunk checksums.
    pub meta: SnapshotMeta,
}

/// Why a backup file cannot be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a backup of this format, or is damaged.
    #[error("{path} is not a valid backup: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Restoring: the data directory.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Restoring into a directory that holds something already.
    #[error(
        "{0} is not empty: restore makes a new data directory (a member's data is never overwritten)"
    )]
    NotEmpty(PathBuf),
}

/// Writes a backup file as its chunks arrive.
pub struct BackupWriter<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    meta: SnapshotMeta,
    next: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Start the file: magic, version, header.
    pub fn new(out: W, header: &BackupHeader) -> std::io::Result<Self> {
        let mut w = BackupWriter {
            out,
            hasher: blake3::Hasher::new(),
            meta: header.meta.clone(),
            next: 0,
        };
        w.put(BACKUP_MAGIC)?;
        w.put(&BACKUP_FORMAT_VERSION.to_le_bytes())?;
        let header = codec::encode(header);
        w.put(&(header.len() as u64).to_le_bytes())?;
        w.put(&header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    /// Append the next chunk, checked against its checksum first.
    pub fn chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        let seq = self.next;
        let expected = self.meta.checksums.get(seq as usize).ok_or_else(|| {
            std::io::Error::other(format!("chunk {seq} is past the backup's last"))
        })?;
        if blake3::hash(data).as_bytes() != expected {
            return Err(std::io::Error::other(format!(
                "chunk {seq} does not match its checksum"
            )));
        }
        self.put(&(data.len() as u64).to_le_bytes())?;
        self.put(data)?;
        self.next += 1;
        Ok(())
    }

    /// Write the trailer once every chunk is in; returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        if self.next != self.meta.chunks {
            return Err(std::io::Error::other(format!(
                "{} of {} chunks written",
                self.next, self.meta.chunks
            )));
        }
        let trailer = *self.hasher.finalize().as_bytes();
        self.out.write_all(&trailer)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a backup file, checking every chunk as it goes.
pub struct BackupReader {
    path: PathBuf,
    input: BufReader<std::fs::File>,
    hasher: blake3::Hasher,
    /// What the file says about itself.
    pub header: BackupHeader,
    next: u64,
}

impl BackupReader {
    /// Open `path` and read its header.
    pub fn open(path: &Path) -> Result<Self, BackupError> {
        let file = std::fs::File::open(path).map_err(|source| BackupError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut r = BackupReader {
            path: path.to_path_buf(),
            input: BufReader::new(file),
            hasher: blake3::Hasher::new(),
            header: BackupHeader::default(),
            next: 0,
        };
        let mut magic = [0u8; 16];
        r.take(&mut magic)?;
        if &magic != BACKUP_MAGIC {
            return Err(r.invalid("it does not start as a backup file does".into()));
        }
        let mut version = [0u8; 4];
        r.take(&mut version)?;
        let version = u32::from_le_bytes(version);
        if version != BACKUP_FORMAT_VERSION {
            return Err(r.invalid(format!(
                "format version {version}; this build reads version {BACKUP_FORMAT_VERSION}"
            )));
        }
        let header = r.sized(
            "the header",
            BACKUP_HEADER_BYTES_MAX,
            "BACKUP_HEADER_BYTES_MAX",
        )?;
        let header: BackupHeader = codec::decode("backup header", &header)
            .map_err(|e| r.invalid(format!("the header does not decode: {e}")))?;
        if header.meta.checksums.len() as u64 != header.meta.chunks {
            return Err(r.invalid(format!(
                "the header lists {} checksums for {} chunks",
                header.meta.checksums.len(),
                header.meta.chunks
            )));
        }
        r.header = header;
        Ok(r)
    }

    fn invalid(&self, why: String) -> BackupError {
        BackupError::Invalid {
            path: self.path.clone(),
            why,
        }
    }

    /// Read exactly `buf.len()` bytes (into the running hash).
    fn take(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.read_exactly(buf)?;
        self.hasher.update(buf);
        Ok(())
    }

    /// Read exactly `buf.len()` bytes; an early end is a truncated file.
    fn read_exactly(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.invalid("it ends too early (truncated)".into())
            } else {
                BackupError::Io {
                    path: self.path.clone(),
                    source: e,
                }
            }
        })
    }

    /// A length-prefixed part of at most `max` bytes.
    fn sized(&mut self, what: &str, max: u64, limit: &str) -> Result<Vec<u8>, BackupError> {
        let mut len = [0u8; 8];
        self.take(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > max {
            return Err(self.invalid(format!(
                "{what} declares {len} bytes, over the limit of {max} bytes ({limit})"
            )));
        }
        let mut out = vec![0u8; len as usize];
        self.take(&mut out)?;
        Ok(out)
    }

    /// The next chunk's bytes (checked against its checksum), or `None`
    /// after the last.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        let seq = self.next;
        if seq == self.header.meta.chunks {
            return Ok(None);
        }
        let data = self.sized(
            &format!("chunk {seq}"),
            BACKUP_CHUNK_BYTES_MAX,
            "BACKUP_CHUNK_BYTES_MAX",
        )?;
        if blake3::hash(&data).as_bytes() != &self.header.meta.checksums[seq as usize] {
            return Err(self.invalid(format!("chunk {seq} does not match its checksum")));
        }
        self.next += 1;
        Ok(Some(data))
    }

    /// The next chunk's records.
    pub fn next_records(&mut self) -> Result<Option<Vec<SnapshotRecord>>, BackupError> {
        let seq = self.next;
        match self.next_chunk()? {
            None => Ok(None),
            Some(data) => codec::decode("backup chunk", &data)
                .map(Some)
                .map_err(|e| self.invalid(format!("chunk {seq} does not decode: {e}"))),
        }
    }

    /// After the last chunk: the trailer must be the hash of everything
    /// before it, and nothing may follow.
    pub fn finish(mut self) -> Result<(), BackupError> {
        if self.next != self.header.meta.chunks {
            return Err(self.invalid(format!(
                "finished after {} of {} chunks",
                self.next, self.header.meta.chunks
            )));
        }
        let expected = *self.hasher.finalize().as_bytes();
        let mut trailer = [0u8; 32];
        self.read_exactly(&mut trailer)?;
        if trailer != expected {
            return Err(self.invalid("the trailer does not match the file's checksum".into()));
        }
        let mut rest = [0u8; 1];
        match self.input.read(&mut rest) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.invalid("bytes follow the trailer".into())),
            Err(source) => Err(BackupError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// What a backup holds, as `verify --backup` and `restore` report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The group it was taken from.
    pub cluster_id: String,
    /// The member that wrote it.
    pub node_id: NodeId,
    /// When (ms since the Unix epoch).
    pub taken_at_ms: u64,
    /// The applied index it is the state of.
    pub index: Index,
    /// The log term of that index.
    pub term: u64,
    /// The state digest at that index (hex).
    pub digest: String,
    /// Chunks.
    pub chunks: u64,
    /// Bytes of the chunks.
    pub bytes: u64,
    /// Machine-state pairs.
    pub kv_pairs: u64,
    /// Actors, with their module hash (hex) and deploy index.
    pub actors: Vec<(String, String, Index)>,
    /// Modules.
    pub modules: u64,
    /// Exactly-once session records.
    pub sessions: u64,
    /// Voters of the configuration in effect at the index (empty: the
    /// group's bootstrap configuration).
    pub voters: Vec<NodeId>,
}

use crate::auth::hex;

/// Read the whole backup at `path` and check it: every chunk's checksum,
/// the file's trailer, every record's table, every actor's record and
/// module, every module's hash. Reads only.
pub fn verify(path: &Path) -> Result<BackupSummary, BackupError> {
    let mut r = BackupReader::open(path)?;
    let h = r.header.clone();
    if !h
        .meta
        .index
        .is_multiple_of(crate::node::applier::RUN_WINDOW)
    {
        return Err(r.invalid(format!(
            "its index {} is not at a run window's end ({}): no member writes such a snapshot",
            h.meta.index,
            crate::node::applier::RUN_WINDOW
        )));
    }
    let mut s = BackupSummary {
        cluster_id: h.cluster_id.clone(),
        node_id: h.node_id,
        taken_at_ms: h.taken_at_ms,
        index: h.meta.index,
        term: h.meta.term,
        digest: hex(&h.meta.digest),
        chunks: h.meta.chunks,
        bytes: h.meta.bytes,
        voters: h
            .meta
            .membership
            .as_ref()
            .map(|m| m.voters.iter().copied().collect())
            .unwrap_or_default(),
        ..BackupSummary::default()
    };
    let mut modules = std::collections::BTreeSet::new();
    let mut actors = Vec::new();
    while let Some(records) = r.next_records()? {
        for rec in records {
            match rec.table {
                0 => s.kv_pairs += 1,
                1 => {
                    let name = String::from_utf8(rec.key.to_vec())
                        .map_err(|_| r.invalid("an actor's name is not UTF-8".into()))?;
                    let record: ActorRecord = codec::decode("actor record", &rec.value)
                        .map_err(|e| r.invalid(format!("actor {name:?}: {e}")))?;
                    actors.push((name, record));
                }
                2 => {
                    if blake3::hash(&rec.value).as_bytes()[..] != rec.key[..] {
                        return Err(
                            r.invalid(format!("module {} does not match its hash", hex(&rec.key)))
                        );
                    }
                    modules.insert(rec.key.to_vec());
                }
                3 => s.sessions += 1,
                t => return Err(r.invalid(format!("a record of unknown table {t}"))),
            }
        }
    }
    r.finish()?;
    for (name, record) in actors {
        if !modules.contains(&record.module) {
            return Err(BackupError::Invalid {
                path: path.to_path_buf(),
                why: format!(
                    "actor {name:?} runs module {}, which the backup lacks",
                    hex(&record.module)
                ),
            });
        }
        s.actors
            .push((name, hex(&record.module), record.deployed_at));
    }
    s.modules = modules.len() as u64;
    Ok(s)
}

/// Make a new data directory at `data_dir` for `identity` from the backup
/// at `path`: the state at the backup's index, and a log that starts
/// there (compacted up to it). The configuration is the new member's own
/// (from its `--peer`s or config file when it starts), not the backed-up
/// group's. Checks the whole file first ([`verify`]); refuses a directory
/// that holds anything.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    identity: &Identity,
    options: &StorageOptions,
) -> Result<BackupSummary, BackupError> {
    let summary = verify(path)?;
    if std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
    }
    let mut r = BackupReader::open(path)?;
    let meta = r.header.meta.clone();
    let (_lock, log, state) = storage::open(data_dir, identity, options)?;
    let mut failed = None;
    let chunks = std::iter::from_fn(|| match r.next_records() {
        Ok(Some(records)) => Some(Ok(records)),
        Ok(None) => None,
        Err(e) => {
            let why = e.to_string();
            failed = Some(e);
            Some(Err(StorageError::Invariant(why)))
        }
    });
    let installed = state.install_snapshot(&meta, chunks);
    if let Some(e) = failed {
        return Err(e);
    }
    installed?;
    r.finish()?;
    log.reset_to(meta.index, meta.term, meta.last_timestamp_ms, None)?;
    Ok(summary)
}

/// Why a backup could not be taken from a node.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The node refused or failed a step.
    #[error("{0}")]
    Client(#[from] crate::api::client::ClientError),
    /// The node sent a chunk that does not match its checksum, or the
    /// file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Take an online backup, holding every write the group acknowledged
/// before it began: sealed through `leader` (a client of the group), from
/// the node `begin` and `client` speak to (`begin`, which waits for the
/// snapshot to be written, may have the longer request timeout), into the
/// file
/// `out` (written as `out.partial`, synced, then renamed: `out` is either
/// a whole backup or absent). `progress(done, total)` is called after
/// each chunk. The node's staged copy is removed at the end, also when
/// the backup fails.
pub async fn fetch(
    leader: &crate::api::client::Client,
    begin: &crate::api::client::Client,
    client: &crate::api::client::Client,
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<BackupHeader, FetchError> {
    let sealed = leader.backup_seal().await?;
    let begun = begin.backup_begin(sealed).await?;
    let header = BackupHeader {
        cluster_id: begun.cluster_id,
        node_id: begun.node_id,
        taken_at_ms: begun.taken_at_ms,
        understudy_version: env!("CARGO_PKG_VERSION").to_string(),
        meta: begun.meta,
    };
    let written = fetch_chunks(client, begun.id, &header, out, &mut progress).await;
    // Best effort: an unended backup is removed as idle anyway.
    let _ = client.backup_end(begun.id).await;
    written.map(|()| header)
}

async fn fetch_chunks(
    client: &crate::api::client::Client,
    id: u64,
    header: &BackupHeader,
    out: &Path,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(), FetchError> {
    let partial = {
        let mut p = out.as_os_str().to_owned();
        p.push(".partial");
        PathBuf::from(p)
    };
    let io = |source: std::io::Error| FetchError::Io {
        path: partial.clone(),
        source,
    };
    let file = std::fs::File::create(&partial).map_err(io)?;
    let mut w = BackupWriter::new(std::io::BufWriter::new(file), header).map_err(io)?;
    let total = header.meta.chunks;
    let result = async {
        for seq in 0..total {
            let data = client.backup_chunk(id, seq).await?;
            w.chunk(&data).map_err(io)?;
            progress(seq + 1, total);
        }
        let file = w
            .finish()
            .map_err(io)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&partial, out).map_err(|source| FetchError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        if let Some(dir) = out.parent()
            && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_of(chunks: &[Vec<u8>]) -> SnapshotMeta {
        SnapshotMeta {
            index: 128,
            term: 3,
            digest: [7; 32],
            chunks: chunks.len() as u64,
            bytes: chunks.iter().map(|c| c.len() as u64).sum(),
            checksums: chunks.iter().map(|c| *blake3::hash(c).as_bytes()).collect(),
            last_timestamp_ms: 5,
            membership: None,
        }
    }

    fn write(path: &Path, chunks: &[Vec<u8>]) {
        let header = BackupHeader {
            cluster_id: "c".into(),
            node_id: 1,
            taken_at_ms: 9,
            understudy_version: "test".into(),
            meta: meta_of(chunks),
        };
        let mut w = BackupWriter::new(Vec::new(), &header).unwrap();
        for c in chunks {
            w.chunk(c).unwrap();
        }
        std::fs::write(path, w.finish().unwrap()).unwrap();
    }

    fn records(kv: &[(&str, &str)]) -> Vec<u8> {
        let rs: Vec<SnapshotRecord> = kv
            .iter()
            .map(|(k, v)| SnapshotRecord {
                table: 0,
                key: serde_bytes::ByteBuf::from(k.as_bytes()),
                value: serde_bytes::ByteBuf::from(v.as_bytes()),
            })
            .collect();
        codec::encode(&rs)
    }

    #[test]
    fn a_written_backup_verifies_and_any_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let chunks = vec![records(&[("a", "1"), ("b", "2")]), records(&[("c", "3")])];
        write(&path, &chunks);
        let s = verify(&path).unwrap();
        assert_eq!((s.index, s.term, s.kv_pairs, s.chunks), (128, 3, 3, 2));
        let good = std::fs::read(&path).unwrap();
        // Every single flipped byte is caught (by a checksum, the
        // trailer, or the structure), and so is every truncation.
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                verify(&path).is_err(),
                "a flipped byte at {i} was not caught"
            );
        }
        for len in [0, 10, 20, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(
                verify(&path).is_err(),
                "a truncation at {len} was not caught"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(
            verify(&path)
                .unwrap_err()
                .to_string()
                .contains("follow the trailer")
        );
    }

    #[test]
    fn a_chunk_is_admitted_at_the_limit_and_refused_one_past() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        // A chunk that declares its length: at the limit it is read (and
        // fails only for being short), one past it is refused unread.
        let declared = |len: u64| {
            let header = BackupHeader {
                cluster_id: "c".into(),
                node_id: 1,
                taken_at_ms: 0,
                understudy_version: "t".into(),
                meta: meta_of(&[vec![1]]),
            };
            let w = BackupWriter::new(Vec::new(), &header).unwrap();
            let mut bytes = w.out;
            bytes.extend_from_slice(&len.to_le_bytes());
            std::fs::write(&path, bytes).unwrap();
            let mut r = BackupReader::open(&path).unwrap();
            r.next_chunk().unwrap_err().to_string()
        };
        assert!(declared(BACKUP_CHUNK_BYTES_MAX).contains("truncated"));
        assert!(declared(BACKUP_CHUNK_BYTES_MAX + 1).contains("BACKUP_CHUNK_BYTES_MAX"));
    }

    #[test]
    fn a_header_is_read_at_the_limit_and_refused_one_past() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let declared = |len: u64| {
            let mut bytes = BACKUP_MAGIC.to_vec();
            bytes.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&len.to_le_bytes());
            std::fs::write(&path, bytes).unwrap();
            match BackupReader::open(&path) {
                Ok(_) => panic!("a header of {len} bytes with none behind it was read"),
                Err(e) => e.to_string(),
            }
        };
        assert!(declared(BACKUP_HEADER_BYTES_MAX).contains("truncated"));
        assert!(declared(BACKUP_HEADER_BYTES_MAX + 1).contains("BACKUP_HEADER_BYTES_MAX"));
    }

    #[test]
    fn restore_refuses_a_directory_that_holds_anything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        write(&path, &[records(&[("a", "1")])]);
        let target = dir.path().join("data");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("something"), b"x").unwrap();
        let identity = Identity {
            format_version: storage::FORMAT_VERSION,
            cluster_id: "c".into(),
            node_id: 1,
        };
        let err = restore(&path, &target, &identity, &StorageOptions::default()).unwrap_err();
        assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    }
}
