//! The log writer: persists the hard state and appends entries on its own
//! thread; while one fsync runs, new entries accumulate in the node state
//! and go out together in the next batch (group commit). Host faults (a
//! full disk, an I/O error) are retried until they clear.

use super::clock::now_ms;
use super::error::WriteError;
use super::messages::FAULT_RETRY_MS;
use super::messages::{Persist, Persisted, ResetLog, StorageFault};
use crate::storage::LogStore;
use crate::types::Index;
use actix::prelude::*;
use std::path::PathBuf;
use std::time::Duration;
use understudy_core::node::FaultSource;

/// Persists the hard state and log entries on its own thread.
pub struct LogWriter {
    pub(super) log: LogStore,
    /// Where truncated (never committed) entries are kept for audit.
    pub(super) quarantine: PathBuf,
    /// The fsync histogram is fed here.
    pub(super) metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl LogWriter {
    /// Save the entries from `from` on, which a truncation is about to
    /// remove, to a file of the quarantine directory (fsynced): a suffix
    /// that never committed is audited, never silently dropped.
    fn quarantine_from(&self, from: Index) -> Result<(), WriteError> {
        let entries = self
            .log
            .read(from, Index::MAX, usize::MAX)
            .map_err(WriteError::QuarantineRead)?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.quarantine).map_err(|source| WriteError::Quarantine {
            path: self.quarantine.clone(),
            source,
        })?;
        let name = format!(
            "truncated-{}-{}-at-{}.cbor",
            first.index,
            last.index,
            now_ms()
        );
        let path = self.quarantine.join(name);
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&crate::codec::encode(&entries))?;
            f.sync_all()?;
            std::fs::File::open(&self.quarantine)?.sync_all()
        };
        write().map_err(|source| WriteError::Quarantine {
            path: path.clone(),
            source,
        })?;
        tracing::warn!(
            from = first.index,
            to = last.index,
            file = %path.display(),
            "a log suffix that never committed was truncated; kept in quarantine"
        );
        Ok(())
    }
}

impl Actor for LogWriter {
    type Context = SyncContext<Self>;
}

impl Handler<ResetLog> for LogWriter {
    type Result = Result<(), crate::storage::StorageError>;
    fn handle(&mut self, msg: ResetLog, _: &mut Self::Context) -> Self::Result {
        self.log.reset_to(
            msg.index,
            msg.term,
            msg.timestamp_ms,
            msg.membership.as_ref(),
        )
    }
}

/// Tests only: log writers under these directories hold every persist
/// until the directory leaves the list (a disk that stalls on one node),
/// for at most `Duration` (so a test that forgets cannot hang).
#[cfg(test)]
pub(crate) static HELD_PERSISTS: std::sync::Mutex<Vec<(PathBuf, Duration)>> =
    std::sync::Mutex::new(Vec::new());

/// Runs `f` when dropped (whichever way the handler returns).
fn scopeguard_observe(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl Handler<Persist> for LogWriter {
    type Result = ();
    fn handle(&mut self, msg: Persist, _: &mut Self::Context) {
        let started = std::time::Instant::now();
        let metrics = self.metrics.clone();
        let _timed = scopeguard_observe(move || {
            metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64())
        });
        #[cfg(test)]
        {
            let start = std::time::Instant::now();
            loop {
                let held = HELD_PERSISTS.lock().expect("test hook lock").clone();
                let Some((_, most)) = held
                    .iter()
                    .find(|(dir, _)| self.quarantine.starts_with(dir))
                else {
                    break;
                };
                if start.elapsed() >= *most {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let last = msg.entries.last().map(|e| (e.index, e.term));
        let hard_state = msg.hard_state.map(|(hs, _)| hs);
        // A host fault (a full disk, an I/O error) is tried again until it
        // clears: a failed persist writes nothing (an aborted transaction,
        // a journal offset not moved), so the same batch can be written
        // again. Anything else is a bug, and halts the node.
        let mut faulted = false;
        let result = loop {
            let quarantined = match msg.truncate_from {
                Some(from) => self.quarantine_from(from),
                None => Ok(()),
            };
            let attempt = quarantined.and_then(|()| {
                self.log
                    .persist_with(hard_state.as_ref(), msg.truncate_from, &msg.entries)
                    .map(|()| last)
                    .map_err(WriteError::from)
            });
            match attempt {
                Ok(last) => break Ok(last),
                Err(e) if e.is_host_fault() => {
                    let why = e.describe();
                    if !faulted {
                        faulted = true;
                        tracing::error!(reason = %why, "log write failed; retrying until it succeeds");
                        msg.fault_to.do_send(StorageFault {
                            source: FaultSource::Log,
                            reason: Some(why),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(FAULT_RETRY_MS));
                }
                Err(e) => break Err(e),
            }
        };
        if faulted && result.is_ok() {
            tracing::warn!("log writes succeed again");
            msg.fault_to.do_send(StorageFault {
                source: FaultSource::Log,
                reason: None,
            });
        }
        msg.reply_to.do_send(Persisted {
            result,
            hard_state_seq: msg.hard_state.map(|(_, seq)| seq),
        });
    }
}
