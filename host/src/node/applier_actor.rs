//! The applier's thread: applies committed entries through the sandbox in
//! batches, checkpoints their effects, executes the leader's proposals
//! ahead of commit, installs snapshots, compacts the log, and prepares
//! queries for the query threads.

use super::applier::{self, Applier, ApplyError};
use super::clock::{TICK_MS, now_ms};
use super::config::Compaction;
use super::error::{ApplierHalted, InstallError};
use super::messages::FAULT_RETRY_MS;
use super::messages::*;
use super::queries::{QueryRunner, query_response};
use crate::api::{ApiError, ErrorCode, Response};
use crate::storage::LogStore;
use crate::types::{Index, Payload};
use actix::prelude::*;
use understudy_core::node::{FaultSource, SpeculationFailed};

/// Most bytes of entries the applier reads from the log for one batch
/// (at least one entry, whatever its size).
pub const APPLY_READ_BYTES_MAX: usize = 16 << 20;

/// The log is compacted every this many ticks (of `TICK_MS`: once a
/// second).
pub const COMPACT_EVERY_TICKS: u64 = 50;

/// Most entries one compaction removes (one transaction, so the log
/// writer is never held up long).
pub const COMPACT_BATCH_ENTRIES_MAX: u64 = 50_000;

/// Applies committed entries and answers queries on its own thread.
pub struct ApplierActor {
    pub(super) applier: Applier,
    pub(super) log: LogStore,
    pub(super) batch_max: usize,
    pub(super) checkpoint_entries: usize,
    /// A tick asked for a checkpoint while the applied index was inside a
    /// window: take it at the next window end.
    pub(super) checkpoint_due: bool,
    pub(super) compaction: Compaction,
    pub(super) ticks: u64,
    pub(super) halted: Option<String>,
    /// A host fault kept the last checkpoint from committing: nothing more
    /// is executed (the pending batch stays bounded) until a retry of the
    /// checkpoint succeeds. `wanted` is how far the node asked to apply.
    pub(super) fault: Option<String>,
    pub(super) wanted: Option<Index>,
    /// What `status` shows of the applier, kept current here so that the
    /// node answers a status without waiting behind an apply or a compile.
    pub(super) shown: Shown,
    /// Where prepared queries run.
    pub(super) queries: Addr<QueryRunner>,
    /// The apply histogram and the machine calls are fed here.
    pub(super) metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// The applier's part of a status: applied index, digest and actors.
/// What the applier last published: applied index, digest, and the
/// actors with their modules.
pub(super) type Shown =
    std::sync::Arc<std::sync::Mutex<(Index, [u8; 32], Vec<(String, crate::storage::ActorRecord)>)>>;

impl ApplierActor {
    /// Publish the applied position (and the actors, if `actors_changed`).
    fn show(&mut self, actors_changed: bool) {
        let applied = self.applier.applied();
        let actors = actors_changed.then(|| self.applier.actors().unwrap_or_default());
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        shown.0 = applied.index;
        shown.1 = applied.digest;
        if let Some(actors) = actors {
            shown.2 = actors;
        }
    }
}

impl Actor for ApplierActor {
    type Context = SyncContext<Self>;
}

impl Handler<ApplyUpTo> for ApplierActor {
    type Result = ();
    fn handle(&mut self, msg: ApplyUpTo, _: &mut Self::Context) {
        self.apply_up_to(msg.up_to, &msg.reply_to, &msg.fault_to);
    }
}

impl ApplierActor {
    fn apply_up_to(
        &mut self,
        up_to: Index,
        reply_to: &Recipient<Applied>,
        fault_to: &Recipient<StorageFault>,
    ) {
        if let Some(why) = &self.halted {
            // Halted by a query (damaged state): the node hears of it here.
            reply_to.do_send(Applied(Err(ApplierHalted {
                reason: why.clone(),
            })));
            return;
        }
        if self.fault.is_some() {
            self.wanted = Some(self.wanted.unwrap_or(0).max(up_to));
            return;
        }
        let msg = ApplyUpTo {
            up_to,
            reply_to: reply_to.clone(),
            fault_to: fault_to.clone(),
        };
        while self.applier.applied().index < msg.up_to {
            let from = self.applier.applied().index + 1;
            let mut to = msg.up_to.min(from + self.batch_max as u64 - 1);
            // State becomes durable only at a window end (see
            // `applier::RUN_WINDOW`): when a checkpoint is due, stop at the
            // last one in reach.
            let due = self.checkpoint_due
                || self.applier.pending_entries() + (to - from + 1) as usize
                    >= self.checkpoint_entries;
            let window_end = to - to % applier::RUN_WINDOW;
            if due && window_end >= from {
                to = window_end;
            }
            let executed = self
                .log
                .read(from, to, APPLY_READ_BYTES_MAX)
                .map_err(ApplyError::from)
                .and_then(|entries| {
                    if entries.first().map(|e| e.index) != Some(from) {
                        return Err(ApplyError::Missing(from));
                    }
                    let started = std::time::Instant::now();
                    let outcomes = self.applier.execute(&entries)?;
                    self.metrics
                        .apply_seconds
                        .observe(started.elapsed().as_secs_f64());
                    for (actor, (calls, fuel)) in self.applier.take_calls() {
                        self.metrics.machine_calls(&actor, calls, fuel);
                    }
                    let deployed = entries
                        .iter()
                        .any(|e| matches!(e.payload, Payload::Deploy { .. }));
                    self.show(deployed);
                    Ok(entries
                        .iter()
                        .zip(outcomes)
                        .map(|(e, (i, o))| {
                            debug_assert_eq!(e.index, i);
                            (i, e.term, o)
                        })
                        .collect::<Outcomes>())
                });
            let outcomes = match executed {
                Ok(x) => x,
                Err(e) => return self.halt(e, from, &msg.reply_to),
            };
            // Answer before the state is durable: the outcomes are final (a
            // deterministic function of the durable log), and a crash before
            // the checkpoint re-executes these entries from the log.
            let samples = self.applier.take_samples();
            msg.reply_to
                .do_send(Applied(Ok((outcomes, self.applier.applied(), samples))));
            if self.checkpoint_due || self.applier.pending_entries() >= self.checkpoint_entries {
                match self.applier.checkpoint() {
                    Ok(true) => self.checkpoint_due = false,
                    Ok(false) => {}
                    Err(applier::ApplyError::Storage(e)) if e.is_host_fault() => {
                        self.wanted = Some(msg.up_to);
                        return self.enter_fault(e.describe(), &msg.fault_to);
                    }
                    Err(e) => return self.halt(e, from, &msg.reply_to),
                }
            }
        }
    }

    /// A checkpoint failed on a host fault: stop executing, tell the node,
    /// and retry the checkpoint on later ticks.
    fn enter_fault(&mut self, why: String, fault_to: &Recipient<StorageFault>) {
        if self.fault.is_none() {
            tracing::error!(reason = %why, "state checkpoint failed; retrying until it succeeds");
            fault_to.do_send(StorageFault {
                source: FaultSource::Applier,
                reason: Some(why.clone()),
            });
        }
        self.fault = Some(why);
    }
}

impl Handler<Checkpoint> for ApplierActor {
    type Result = ();
    fn handle(&mut self, msg: Checkpoint, _: &mut Self::Context) {
        if self.halted.is_some() {
            return;
        }
        self.ticks += 1;
        let retry_every = (FAULT_RETRY_MS / TICK_MS).max(1);
        if self.fault.is_some() && !self.ticks.is_multiple_of(retry_every) {
            return;
        }
        match self.applier.checkpoint() {
            Ok(done) => {
                self.checkpoint_due = !done && self.applier.pending_entries() > 0;
                if done && self.fault.take().is_some() {
                    tracing::warn!("state checkpoints succeed again");
                    msg.fault_to.do_send(StorageFault {
                        source: FaultSource::Applier,
                        reason: None,
                    });
                    if let Some(up_to) = self.wanted.take() {
                        self.apply_up_to(up_to, &msg.reply_to, &msg.fault_to);
                    }
                }
            }
            Err(applier::ApplyError::Storage(e)) if e.is_host_fault() => {
                return self.enter_fault(e.describe(), &msg.fault_to);
            }
            Err(e) => {
                let index = self.applier.durable().index + 1;
                return self.halt(e, index, &msg.reply_to);
            }
        }
        if self.fault.is_none() && self.ticks.is_multiple_of(COMPACT_EVERY_TICKS) {
            self.compact();
        }
    }
}

impl Handler<Speculate> for ApplierActor {
    type Result = ();
    fn handle(&mut self, msg: Speculate, _: &mut Self::Context) {
        let result = match &self.halted {
            Some(why) => Err(SpeculationFailed(format!("applying halted: {why}"))),
            None => self
                .applier
                .speculate(&msg.entries, msg.as_effects, msg.term_start)
                .map_err(|e| SpeculationFailed(e.to_string())),
        };
        msg.reply_to.do_send(Speculated {
            epoch: msg.epoch,
            result,
        });
    }
}

impl Handler<DiscardSpeculation> for ApplierActor {
    type Result = ();
    fn handle(&mut self, _: DiscardSpeculation, _: &mut Self::Context) {
        self.applier.discard_speculation();
    }
}

impl Handler<InstallSnapshot> for ApplierActor {
    type Result = Result<bool, InstallError>;
    fn handle(&mut self, msg: InstallSnapshot, _: &mut Self::Context) -> Self::Result {
        if let Some(why) = &self.halted {
            return Err(InstallError::Halted(why.clone()));
        }
        let installed = self
            .applier
            .install_snapshot(&msg.dir, &msg.meta)
            .map_err(InstallError::from);
        self.show(true);
        installed
    }
}

impl ApplierActor {
    /// Remove the log prefix beyond the size or the age bound, up to what
    /// the state holds durably.
    fn compact(&mut self) {
        let durable = self.applier.durable().index;
        let (compacted, _) = match self.log.compacted() {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "reading the compaction point"),
        };
        if durable <= compacted {
            return;
        }
        // A state ahead of the whole log was installed from a snapshot,
        // and the log writer is about to reset the log to it: nothing here
        // to compact.
        match self.log.last() {
            Ok((last, _)) if durable > last => return,
            Ok(_) => {}
            Err(e) => return tracing::error!(error = %e, "reading the log's end"),
        }
        let by_size = durable.saturating_sub(self.compaction.retain_entries);
        let cutoff_ms = now_ms().saturating_sub(self.compaction.retain_ms);
        let by_age = match self
            .log
            .first_at_or_after(cutoff_ms, compacted + 1, durable)
        {
            Ok(first_young) => first_young.saturating_sub(1),
            Err(e) => return tracing::error!(error = %e, "searching the log by age"),
        };
        let up_to = by_size.max(by_age).min(durable);
        if up_to <= compacted {
            return;
        }
        match self.log.compact(up_to, COMPACT_BATCH_ENTRIES_MAX) {
            Ok(done) => tracing::debug!(up_to = done, "log compacted"),
            Err(e) => tracing::error!(error = %e, "log compaction failed"),
        }
    }

    fn halt(&mut self, error: impl std::fmt::Display, index: Index, reply_to: &Recipient<Applied>) {
        let error = error.to_string();
        tracing::error!(%error, index, "applying halted");
        self.halted = Some(error.clone());
        reply_to.do_send(Applied(Err(ApplierHalted { reason: error })));
    }
}

impl Handler<RunQuery> for ApplierActor {
    type Result = ();
    fn handle(&mut self, mut msg: RunQuery, ctx: &mut Self::Context) {
        if let Some(why) = &self.halted {
            // The executed-but-not-durable effects are gone with the halt;
            // answering from the durable state could go back in time.
            let error = ApiError::new(ErrorCode::Unavailable, format!("applying halted: {why}"));
            let _ = msg.reply.send(Response::Error(error));
            return;
        }
        if msg.reply.is_closed() {
            return; // the client is gone
        }
        // Only the preparation (a snapshot, the shared pending writes, the
        // loaded machine) happens here; the machine runs on a query thread.
        match self.applier.prepare_query(&msg.actor) {
            Ok(job) => self.queries.do_send(RunPrepared {
                job,
                request: msg.request,
                reply: msg.reply,
                done: msg.done,
                deadline_ms: msg.deadline_ms,
                damaged_to: ctx.address().recipient(),
                again: ctx.address().recipient(),
            }),
            Err(e) => {
                let (response, halted) = query_response(Err(e));
                if let Some(why) = &halted {
                    self.halted = Some(why.clone());
                }
                msg.done.halted = halted;
                let _ = msg.reply.send(response);
            }
        }
        // The node hands over the next query when this one ends, or is
        // dropped unrun (see `QueryDoneGuard`).
    }
}

/// Read the audit trail (newest first, at most `limit` records).
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::access::AuditRecord>, crate::storage::StorageError>")]
pub struct ReadAudit {
    /// Most records.
    pub limit: usize,
}

impl Handler<ReadAudit> for ApplierActor {
    type Result = Result<Vec<crate::access::AuditRecord>, crate::storage::StorageError>;
    fn handle(&mut self, msg: ReadAudit, _ctx: &mut Self::Context) -> Self::Result {
        self.applier.audit_trail(msg.limit)
    }
}

impl Handler<Damaged> for ApplierActor {
    type Result = ();
    fn handle(&mut self, msg: Damaged, _: &mut Self::Context) {
        if self.halted.is_none() {
            self.halted = Some(msg.why);
        }
    }
}
