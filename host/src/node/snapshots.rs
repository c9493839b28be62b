//! The snapshot maker: writes snapshots of the durable state (for
//! followers that need compacted entries) on its own thread.

use super::error::SnapshotError;
use super::messages::{MakeBackup, MakeSnapshot};
use crate::storage::{self, LogStore};
use actix::prelude::*;
use std::path::PathBuf;

/// Produces snapshots of the durable state on its own thread, and keeps the
/// latest one while it is still ahead of the compacted log (so a broken
/// transfer resumes with the same snapshot).
pub struct SnapshotMaker {
    pub(super) state: storage::StateStore,
    pub(super) log: LogStore,
    pub(super) root: PathBuf,
    pub(super) chunk_bytes: usize,
}

impl Actor for SnapshotMaker {
    type Context = SyncContext<Self>;
}

impl Handler<MakeSnapshot> for SnapshotMaker {
    type Result = Result<(PathBuf, storage::SnapshotMeta), SnapshotError>;
    fn handle(&mut self, _: MakeSnapshot, _: &mut Self::Context) -> Self::Result {
        let current = self.root.join("current");
        let (compacted, _) = self.log.compacted()?;
        if let Ok(bytes) = std::fs::read(current.join("meta"))
            && let Ok(meta) = crate::codec::decode::<storage::SnapshotMeta>("snapshot meta", &bytes)
            && meta.index >= compacted
        {
            return Ok((current, meta));
        }
        let tmp = self.root.join(format!("tmp-{}", rand::random::<u32>()));
        let meta = self.write(&tmp)?;
        let _ = std::fs::remove_dir_all(&current);
        std::fs::rename(&tmp, &current).map_err(|source| SnapshotError::Io {
            path: current.clone(),
            source,
        })?;
        tracing::info!(
            index = meta.index,
            chunks = meta.chunks,
            bytes = meta.bytes,
            "snapshot written"
        );
        Ok((current, meta))
    }
}

impl SnapshotMaker {
    /// Write a snapshot of the durable state into `dir`.
    fn write(&self, dir: &std::path::Path) -> Result<storage::SnapshotMeta, SnapshotError> {
        let log = self.log.clone();
        Ok(self.state.write_snapshot(dir, self.chunk_bytes, |i| {
            let term = crate::replication::LogRead::term(&log, i)?;
            let membership = log.membership_at(i).ok()?;
            Some((
                term,
                log.timestamp_of(i).ok().flatten().unwrap_or(0),
                membership,
            ))
        })?)
    }
}

impl Handler<MakeBackup> for SnapshotMaker {
    type Result = Result<storage::SnapshotMeta, SnapshotError>;
    fn handle(&mut self, msg: MakeBackup, _: &mut Self::Context) -> Self::Result {
        // The durable state moves at run window ends, at the applier's
        // checkpoints: wait for the one the seal closed.
        let deadline = std::time::Instant::now() + msg.within;
        loop {
            let reached = self.state.applied()?.index;
            if reached >= msg.at_least {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(SnapshotError::Behind {
                    reached,
                    wanted: msg.at_least,
                    within_ms: msg.within.as_millis() as u64,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let meta = self.write(&msg.dir).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&msg.dir);
        })?;
        tracing::info!(
            index = meta.index,
            chunks = meta.chunks,
            bytes = meta.bytes,
            "backup snapshot written"
        );
        Ok(meta)
    }
}
