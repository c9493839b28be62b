//! The read queues, and when each read may run.
//!
//! A read runs over the applied state once its level allows it (BRIEF
//! invariant 5):
//! * `any` at once; `bounded` at once if this node is within the lag it
//!   allows, else refused `Stale`;
//! * `session` once the write its token names is applied here (and is in
//!   this node's log: else `Superseded`);
//! * `lease` on the leader at once while its lease holds and it applied
//!   its commit index, else like `linearizable`;
//! * `linearizable` once the leader confirmed a read index with a majority
//!   and this node applied up to it. A read asked while no leader is known
//!   waits for one; a read index not answered within
//!   [`READ_INDEX_PATIENCE_HEARTBEATS`] heartbeats is asked again.
//!
//! Reads that may run take one of `query_slots`; the rest wait in order,
//! at most `queries_waiting_max`. Every read is answered or refused by
//! its deadline (`read_timeout_ms`).

use super::{Effect, NodeState};
use crate::client::{ApiError, ErrorCode, ReadLevel};
use crate::replication::{LogRead, Role};
use crate::types::{Index, Term};
use std::collections::{BTreeMap, VecDeque};

/// Heartbeat intervals a read index may go unanswered before it is asked
/// again (the request or its answer was lost, or the leader changed).
pub const READ_INDEX_PATIENCE_HEARTBEATS: u64 = 4;

/// A read waiting to run.
#[derive(Debug)]
pub struct Read<R> {
    /// The shell's handle (the query and where to answer).
    pub handle: R,
    /// When it is refused `Timeout` if it has not run.
    pub deadline_ms: u64,
    /// For a session read: the write's (index, term) must be in the log.
    pub token: Option<(Index, Term)>,
}

/// The read queues.
#[derive(Debug)]
pub(super) struct Reads<R> {
    /// Waiting for their read index, by request id, with when it was last
    /// asked.
    index_waiting: BTreeMap<u64, (u64, Read<R>)>,
    /// Waiting for a leader to be known (an election).
    without_leader: Vec<(u64, Read<R>)>,
    next_ctx: u64,
    /// Waiting for the applied index to reach a point.
    apply_waiting: BTreeMap<Index, Vec<Read<R>>>,
    /// Waiting for a query slot, in order.
    slot_waiting: VecDeque<Read<R>>,
    /// Reads running now (handed to the shell).
    running: usize,
}

impl<R> Default for Reads<R> {
    fn default() -> Self {
        Reads {
            index_waiting: BTreeMap::new(),
            without_leader: Vec::new(),
            next_ctx: 0,
            apply_waiting: BTreeMap::new(),
            slot_waiting: VecDeque::new(),
            running: 0,
        }
    }
}

impl<W, R> NodeState<W, R> {
    fn refuse_read(&mut self, read: Read<R>, code: ErrorCode, message: String) {
        self.out.push(Effect::RefuseRead(
            read.handle,
            ApiError::new(code, message),
        ));
    }

    /// A client's read at `level`; `deadline_ms` is when it is refused
    /// `Timeout` if it has not run.
    pub fn query(
        &mut self,
        handle: R,
        level: ReadLevel,
        now_ms: u64,
        deadline_ms: u64,
        log: &impl LogRead,
    ) {
        let read = Read {
            handle,
            deadline_ms,
            token: None,
        };
        if let Some(why) = &self.alarm.quarantined {
            let message = format!("this node is quarantined: {why}");
            return self.refuse_read(read, ErrorCode::Quarantined, message);
        }
        if let Some(why) = &self.halted {
            let message = format!("this node halted: {why}");
            return self.refuse_read(read, ErrorCode::Unavailable, message);
        }
        if let Some(why) = self.fault() {
            let message = format!("this node has a host fault: {why}");
            return self.refuse_read(read, ErrorCode::Unavailable, message);
        }
        let (index, membership) = (self.core.membership_index(), self.core.membership());
        if index > 0 && !membership.contains(self.core.id()) {
            let message = format!(
                "this node is not a member of its group's configuration (entry {index}: \
                 {membership}): removed, or not yet added; it serves no reads"
            );
            return self.refuse_read(read, ErrorCode::Unavailable, message);
        }
        match level {
            ReadLevel::Any => self.run_read(read, log),
            ReadLevel::Bounded {
                max_lag_entries,
                max_lag_ms,
            } => {
                let (lag_entries, lag_ms) = self.lag(now_ms, log);
                if let Some(max) = max_lag_entries
                    && lag_entries > max
                {
                    let message = format!(
                        "{lag_entries} committed entries are not applied here yet (at most {max} allowed)"
                    );
                    return self.refuse_read(read, ErrorCode::Stale, message);
                }
                if let Some(max) = max_lag_ms {
                    match lag_ms {
                        Some(ms) if ms <= max => {}
                        Some(ms) => {
                            let message =
                                format!("{ms} ms behind the leader (at most {max} ms allowed)");
                            return self.refuse_read(read, ErrorCode::Stale, message);
                        }
                        None => {
                            let message = "no leader heard from: lag unknown".to_string();
                            return self.refuse_read(read, ErrorCode::Stale, message);
                        }
                    }
                }
                self.run_read(read, log)
            }
            ReadLevel::Session { term, index } => {
                let read = Read {
                    token: Some((index, term)),
                    ..read
                };
                self.read_at(index, read, log)
            }
            ReadLevel::Lease if self.core.role() != Role::Leader => {
                let e = self.not_leader("lease reads are served by the leader only");
                self.out.push(Effect::RefuseRead(read.handle, e));
            }
            ReadLevel::Lease
                if self.lease_reads_hold(now_ms)
                    && self.core.applied_index() >= self.core.commit_index() =>
            {
                self.run_read(read, log)
            }
            // No valid lease (or not caught up): confirm with a majority.
            ReadLevel::Lease | ReadLevel::Linearizable => {
                self.reads.next_ctx += 1;
                let read_ctx = self.reads.next_ctx;
                match self.core.read_index(read_ctx) {
                    Ok(()) => {
                        self.reads.index_waiting.insert(read_ctx, (now_ms, read));
                    }
                    Err(_) => {
                        // An election is running: wait for its outcome.
                        self.reads.without_leader.push((read_ctx, read));
                    }
                }
            }
        }
    }

    /// Whether a lease read may be served from this leader's state now.
    fn lease_reads_hold(&self, now_ms: u64) -> bool {
        #[cfg(test)]
        if self.broken.lease_outlives_its_expiry {
            return true;
        }
        self.core.lease_read_ok(now_ms)
    }

    /// (committed entries not applied here, milliseconds behind the leader
    /// if one is known). The milliseconds also count the age of the oldest
    /// committed entry not applied here, by its timestamp.
    fn lag(&self, now_ms: u64, log: &impl LogRead) -> (u64, Option<u64>) {
        let applied = self.core.applied_index();
        let entries = self.core.commit_index().saturating_sub(applied);
        let heard = self.core.leader_heard_ms_ago();
        let oldest_unapplied = if entries > 0 {
            log.entries(applied + 1, applied + 1, 1)
                .first()
                .map(|e| now_ms.saturating_sub(e.context.timestamp_ms))
                .unwrap_or(0)
        } else {
            0
        };
        (entries, heard.map(|h| h.max(oldest_unapplied)))
    }

    /// Serve `read` once this node has applied `index`.
    fn read_at(&mut self, index: Index, read: Read<R>, log: &impl LogRead) {
        if self.core.applied_index() >= index {
            self.run_read(read, log);
        } else {
            self.reads
                .apply_waiting
                .entry(index)
                .or_default()
                .push(read);
        }
    }

    fn run_read(&mut self, read: Read<R>, log: &impl LogRead) {
        if let Some((index, term)) = read.token
            && log.term(index) != Some(term)
        {
            let message = format!(
                "the session's write ({term}, {index}) is not in this node's log: it was lost (a `leader`-concern write that never committed)"
            );
            return self.refuse_read(read, ErrorCode::Superseded, message);
        }
        if self.reads.running < self.settings.query_slots {
            self.reads.running += 1;
            self.out.push(Effect::RunRead(read));
            return;
        }
        let max = self.settings.queries_waiting_max;
        if self.reads.slot_waiting.len() >= max {
            let message = format!(
                "{max} queries already wait for this node's query threads (QUERIES_WAITING_MAX); retry later"
            );
            return self.refuse_read(read, ErrorCode::Overloaded, message);
        }
        self.reads.slot_waiting.push_back(read);
    }

    /// A read the shell ran (or could not run) ended: its slot goes to the
    /// next waiting read whose client is still there (`gone` tells) and
    /// whose deadline has not passed.
    pub fn query_done(&mut self, now_ms: u64, gone: impl Fn(&R) -> bool) {
        self.reads.running = self.reads.running.saturating_sub(1);
        while let Some(read) = self.reads.slot_waiting.pop_front() {
            if gone(&read.handle) {
                continue;
            }
            if now_ms >= read.deadline_ms {
                let message =
                    "the query waited for a query thread past read_timeout_ms".to_string();
                self.refuse_read(read, ErrorCode::Timeout, message);
                continue;
            }
            self.reads.running += 1;
            self.out.push(Effect::RunRead(read));
            return;
        }
    }

    /// Reads whose index is now applied run.
    pub(super) fn release_reads(&mut self, log: &impl LogRead) {
        let applied = self.core.applied_index();
        let later = self.reads.apply_waiting.split_off(&(applied + 1));
        let ready = std::mem::replace(&mut self.reads.apply_waiting, later);
        for read in ready.into_values().flatten() {
            self.run_read(read, log);
        }
    }

    /// Reads that waited for a leader ask for their read index once one is
    /// known.
    pub(super) fn ask_reads_without_leader(&mut self, now_ms: u64) {
        if self.reads.without_leader.is_empty() || self.core.leader().is_none() {
            return;
        }
        for (read_ctx, read) in std::mem::take(&mut self.reads.without_leader) {
            match self.core.read_index(read_ctx) {
                Ok(()) => {
                    self.reads.index_waiting.insert(read_ctx, (now_ms, read));
                }
                Err(_) => self.reads.without_leader.push((read_ctx, read)),
            }
        }
    }

    /// The core answered read indexes: those reads run once their index is
    /// applied; those it failed (leadership lost) are refused `NotLeader`.
    pub(super) fn read_indexes_known(
        &mut self,
        known: Vec<(u64, Index)>,
        failed: Vec<u64>,
        log: &impl LogRead,
    ) {
        for (read_ctx, index) in known {
            if let Some((_, read)) = self.reads.index_waiting.remove(&read_ctx) {
                self.read_at(index, read, log);
            }
        }
        for read_ctx in failed {
            if let Some((_, read)) = self.reads.index_waiting.remove(&read_ctx) {
                let e = self.not_leader("leadership changed during the read; retry");
                self.out.push(Effect::RefuseRead(read.handle, e));
            }
        }
    }

    /// Ask again for read indexes not answered within
    /// [`READ_INDEX_PATIENCE_HEARTBEATS`] heartbeat intervals.
    pub(super) fn reask_reads(&mut self, now_ms: u64) {
        let patience = READ_INDEX_PATIENCE_HEARTBEATS * self.core.config().heartbeat_interval_ms;
        let stale: Vec<u64> = self
            .reads
            .index_waiting
            .iter()
            .filter(|(_, (asked, _))| now_ms.saturating_sub(*asked) >= patience)
            .map(|(&c, _)| c)
            .collect();
        for c in stale {
            let (_, read) = self.reads.index_waiting.remove(&c).expect("listed");
            match self.core.read_index(c) {
                Ok(()) => {
                    self.reads.index_waiting.insert(c, (now_ms, read));
                }
                Err(_) => self.reads.without_leader.push((c, read)),
            }
        }
    }

    /// Reads whose deadline passed are refused `Timeout`.
    pub(super) fn expire_reads(&mut self, now_ms: u64) {
        let applied = self.core.applied_index();
        let expired: Vec<u64> = self
            .reads
            .index_waiting
            .iter()
            .filter(|(_, (_, r))| r.deadline_ms <= now_ms)
            .map(|(&c, _)| c)
            .collect();
        for c in expired {
            let (_, read) = self.reads.index_waiting.remove(&c).expect("listed");
            let message = "the leader did not confirm a read index in time".to_string();
            self.refuse_read(read, ErrorCode::Timeout, message);
        }
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.without_leader)
            .into_iter()
            .partition(|(_, r)| r.deadline_ms <= now_ms);
        self.reads.without_leader = keep;
        for (_, read) in gone {
            let message = "no leader known in time: a linearizable read needs one".to_string();
            self.refuse_read(read, ErrorCode::Timeout, message);
        }
        let mut gone = Vec::new();
        for (index, reads) in self.reads.apply_waiting.iter_mut() {
            let (expired, keep): (Vec<_>, Vec<_>) = std::mem::take(reads)
                .into_iter()
                .partition(|r| r.deadline_ms <= now_ms);
            *reads = keep;
            gone.extend(expired.into_iter().map(|r| (*index, r)));
        }
        self.reads.apply_waiting.retain(|_, v| !v.is_empty());
        for (index, read) in gone {
            let message = format!("not caught up to index {index} in time (applied {applied})");
            self.refuse_read(read, ErrorCode::Timeout, message);
        }
    }
}
