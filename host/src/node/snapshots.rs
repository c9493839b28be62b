//! The snapshot maker: writes snapshots of the durable state (for
//! followers that need compacted entries) on its own thread.

use super::error::SnapshotError;
use super::messages::MakeSnapshot;
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
        let log = self.log.clone();
        let meta = self.state.write_snapshot(&tmp, self.chunk_bytes, |i| {
            let term = crate::replication::LogRead::term(&log, i)?;
            let membership = log.membership_at(i).ok()?;
            Some((
                term,
                log.timestamp_of(i).ok().flatten().unwrap_or(0),
                membership,
            ))
        })?;
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
