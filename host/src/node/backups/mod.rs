//! Online backups ([`BackupRequest`]): any member writes a snapshot of its
//! durable state on the snapshot thread (one LMDB read transaction, so
//! the group keeps serving and the snapshot is consistent at one applied
//! index), stages it under `DATA_DIR/backups/ID`, and hands its chunks
//! out one request at a time. The client assembles the backup file
//! (`crate::backup`).
//!
//! Disk use is bounded: one backup is written at a time
//! ([`BACKUPS_WRITING_MAX`]), at most [`BACKUPS_STAGED_MAX`] are staged
//! (a new one removes the least recently used), and one nobody asked a
//! chunk of for [`BACKUP_IDLE_MS`] is removed. A restart removes them all.

pub(super) mod staged;

pub use staged::{
    BACKUP_CATCH_UP_MS, BACKUP_IDLE_MS, BACKUP_WRITE_TIMEOUT_MS, BACKUPS_STAGED_MAX,
    BACKUPS_WRITING_MAX,
};
use staged::{StagedBackup, remove_dir};

use super::applier::RUN_WINDOW;
use super::clock::now_ms;
use super::messages::MakeBackup;
use super::shell::Node;
use crate::api::{ApiError, BackupRequest, ErrorCode, Response, WriteConcern};
use crate::replication::Role;
use crate::types::Payload;
use actix::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

fn unknown(id: u64) -> ApiError {
    ApiError::new(
        ErrorCode::BadRequest,
        format!(
            "no staged backup {id:016x} on this node (ended, idle for BACKUP_IDLE_MS = \
             {BACKUP_IDLE_MS} ms, pushed out by newer ones past BACKUPS_STAGED_MAX = \
             {BACKUPS_STAGED_MAX}, or the node restarted): begin the backup again"
        ),
    )
}

impl Node {
    /// Take one step of an online backup.
    pub(super) fn backup(
        &mut self,
        request: BackupRequest,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        match request {
            BackupRequest::Seal => self.backup_seal(reply, ctx),
            BackupRequest::Begin { at_least } => self.backup_begin(at_least, reply, ctx),
            BackupRequest::Chunk { id, seq } => {
                let Some(b) = self.backups.open.get_mut(&id) else {
                    let _ = reply.send(Response::Error(unknown(id)));
                    return;
                };
                if seq >= b.chunks {
                    let _ = reply.send(Response::Error(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("backup {id:016x} has {} chunks: no chunk {seq}", b.chunks),
                    )));
                    return;
                }
                b.last_used = Instant::now();
                let path = b.dir.join(crate::storage::chunk_name(seq));
                ctx.spawn(
                    async move {
                        let answer = match tokio::fs::read(&path).await {
                            Ok(data) => Response::BackupChunk { data: data.into() },
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                Response::Error(unknown(id))
                            }
                            Err(e) => Response::Error(ApiError::new(
                                ErrorCode::Unavailable,
                                format!("reading chunk {seq} of backup {id:016x}: {e}"),
                            )),
                        };
                        let _ = reply.send(answer);
                    }
                    .into_actor(self),
                );
            }
            BackupRequest::End { id } => {
                // Idempotent: a backup already removed is ended too.
                self.backups.remove(id);
                let _ = reply.send(Response::BackupEnded);
            }
        }
    }

    /// On the leader: append no-ops up to the end of the current run
    /// window, so that the members' durable state (which moves at window
    /// ends) comes to hold every write acknowledged so far; answer with
    /// the last index before them once they are applied.
    fn backup_seal(&mut self, reply: oneshot::Sender<Response>, ctx: &mut Context<Self>) {
        if self.state.core().role() != Role::Leader {
            let _ = reply.send(Response::Error(
                self.state.not_leader("a backup's seal goes to the leader"),
            ));
            return;
        }
        let last = self.state.core().last_index();
        let missing = (RUN_WINDOW - last % RUN_WINDOW) % RUN_WINDOW;
        let mut written = Vec::with_capacity(missing as usize);
        for _ in 0..missing {
            let (done, answer) = oneshot::channel();
            self.state.propose(
                Payload::Noop,
                WriteConcern::Majority,
                done,
                now_ms(),
                &self.log,
            );
            written.push(answer);
        }
        self.execute(ctx);
        ctx.spawn(
            async move {
                let mut refused = None;
                for answer in written {
                    // Each is answered within `write_timeout_ms`.
                    match answer.await {
                        Ok(Response::Written { .. }) => {}
                        Ok(Response::Error(e)) => {
                            refused = Some(e);
                            break;
                        }
                        Ok(other) => {
                            refused = Some(ApiError::new(
                                ErrorCode::Unavailable,
                                format!("a seal entry was answered {other:?}"),
                            ));
                            break;
                        }
                        Err(_) => {
                            refused = Some(ApiError::new(
                                ErrorCode::Unavailable,
                                "a seal entry was dropped (the node is stopping)",
                            ));
                            break;
                        }
                    }
                }
                let _ = reply.send(match refused {
                    None => Response::BackupSealed { index: last },
                    Some(e) => Response::Error(e),
                });
            }
            .into_actor(self),
        );
    }

    fn backup_begin(
        &mut self,
        at_least: crate::types::Index,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        if self.backups.writing >= BACKUPS_WRITING_MAX {
            let _ = reply.send(Response::Error(ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "this node is writing {BACKUPS_WRITING_MAX} backup(s) already \
                     (BACKUPS_WRITING_MAX): retry when it is done"
                ),
            )));
            return;
        }
        if let Err(e) = std::fs::create_dir_all(&self.backups.root) {
            let _ = reply.send(Response::Error(ApiError::new(
                ErrorCode::Unavailable,
                format!("creating {}: {e}", self.backups.root.display()),
            )));
            return;
        }
        let id = rand::random::<u64>();
        let dir = self.backups.root.join(format!("{id:016x}"));
        self.backups.writing += 1;
        let write = self.snapshot_maker.send(MakeBackup {
            dir: dir.clone(),
            at_least,
            within: Duration::from_millis(BACKUP_CATCH_UP_MS),
        });
        // The answer goes at the first of: the snapshot written, or the
        // bound. A snapshot written after its request timed out is removed.
        let reply = Rc::new(RefCell::new(Some(reply)));
        let timed_out = reply.clone();
        ctx.run_later(
            Duration::from_millis(BACKUP_WRITE_TIMEOUT_MS),
            move |_, _| {
                if let Some(reply) = timed_out.borrow_mut().take() {
                    let _ = reply.send(Response::Error(ApiError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the backup's snapshot was not written within \
                             BACKUP_WRITE_TIMEOUT_MS = {BACKUP_WRITE_TIMEOUT_MS} ms"
                        ),
                    )));
                }
            },
        );
        let (node_id, cluster_id) = (self.config.node_id, self.config.cluster_id.clone());
        ctx.spawn(write.into_actor(self).map(move |written, node, ctx| {
            node.backups.writing -= 1;
            let Some(reply) = reply.borrow_mut().take() else {
                remove_dir(&dir);
                return;
            };
            let answer = match written {
                Ok(Ok(meta)) => {
                    // Room for this one: the least recently used go.
                    while node.backups.open.len() >= BACKUPS_STAGED_MAX {
                        let Some((&oldest, _)) =
                            node.backups.open.iter().min_by_key(|(_, b)| b.last_used)
                        else {
                            break;
                        };
                        node.backups.remove(oldest);
                    }
                    node.backups.open.insert(
                        id,
                        StagedBackup {
                            dir,
                            chunks: meta.chunks,
                            last_used: Instant::now(),
                        },
                    );
                    node.sweep_backups_later(ctx);
                    Response::BackupBegun {
                        id,
                        node_id,
                        cluster_id,
                        taken_at_ms: now_ms(),
                        meta: Box::new(meta),
                    }
                }
                Ok(Err(e @ super::error::SnapshotError::Behind { .. })) => {
                    Response::Error(ApiError::new(ErrorCode::Timeout, e.to_string()))
                }
                Ok(Err(e)) => Response::Error(ApiError::new(
                    ErrorCode::Unavailable,
                    format!("writing the backup's snapshot: {e}"),
                )),
                Err(_) => Response::Error(ApiError::new(
                    ErrorCode::Unavailable,
                    "the snapshot maker stopped",
                )),
            };
            let _ = reply.send(answer);
        }));
    }

    /// Remove the staged backups idle for [`BACKUP_IDLE_MS`], and look
    /// again later while any is staged.
    fn sweep_backups_later(&mut self, ctx: &mut Context<Self>) {
        if self.backups.sweeping {
            return;
        }
        self.backups.sweeping = true;
        let every = Duration::from_millis(BACKUP_IDLE_MS / 4);
        ctx.run_later(every, |node, ctx| {
            node.backups.sweeping = false;
            let idle = Duration::from_millis(BACKUP_IDLE_MS);
            let stale: Vec<u64> = node
                .backups
                .open
                .iter()
                .filter(|(_, b)| b.last_used.elapsed() >= idle)
                .map(|(&id, _)| id)
                .collect();
            for id in stale {
                tracing::info!(backup = %format!("{id:016x}"), "removing an idle staged backup");
                node.backups.remove(id);
            }
            if !node.backups.open.is_empty() {
                node.sweep_backups_later(ctx);
            }
        });
    }
}
