//! What the leader executes ahead of commit.
//!
//! Statement kind: a proposal is appended at once and executed while it
//! is replicated; its outcome is final once the entry commits in this
//! term, so the writer is answered at commit. Row kind: a proposal is
//! executed first, against the executed state plus the proposals executed
//! before it, and the `Effects` it returns is what the log takes.
//!
//! An execution belongs to an epoch; a lost term, a refused append or a
//! failed execution discards every execution (a new epoch), answers the
//! writers waiting for one, and makes new executions wait until every
//! entry already in the log is applied (the barrier).

use super::{Effect, NodeState, Reply};
use crate::client::{ErrorCode, WriteAnswer, WriteConcern};
use crate::replication::{LogRead, Role};
use crate::types::{Entry, EntryContext, Index, Outcome, Payload, Term};
use std::collections::{BTreeMap, VecDeque};

/// Proposals for the applier to execute ahead of their commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeculateBatch {
    /// The entries, in log order.
    pub entries: Vec<Entry>,
    /// Row kind: return each entry with its `Effects` as payload.
    pub as_effects: bool,
    /// The index of this leader's term's first entry (executions build on
    /// everything before it).
    pub term_start: Index,
    /// The epoch to report with.
    pub epoch: u64,
}

/// An execution ahead of commit that could not run (a gap after a new
/// term, a host failure, a machine that cannot be built).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpeculationFailed(pub String);

/// A row proposal held until the barrier is reached.
#[derive(Debug)]
struct Held<W> {
    payload: Payload,
    concern: WriteConcern,
    reply: Reply<W>,
    deadline_ms: u64,
}

/// The speculation's bookkeeping.
#[derive(Debug)]
pub(super) struct Speculation<W> {
    /// Bumped whenever speculation is discarded; answers of an older epoch
    /// are dropped.
    epoch: u64,
    /// Entries proposed since the last flush, executed together.
    pub(super) to_speculate: Vec<Entry>,
    /// The term this node last led in (to notice a new or lost term).
    led: Option<Term>,
    /// Row kind: entries handed to the applier (or about to be) and not
    /// yet back.
    outstanding: u64,
    /// Row kind: their writers, in log order.
    waiting: VecDeque<(Index, WriteConcern, Reply<W>)>,
    /// Row kind: execution may start only once the applied index reaches
    /// this (so it builds on every entry already in the log; the statement
    /// kind's applier refuses a gap by itself).
    barrier: Index,
    /// Row kind: proposals held until the barrier is reached.
    held: Vec<Held<W>>,
    /// Row kind: newest timestamp handed out.
    last_ts: u64,
}

impl<W> Default for Speculation<W> {
    fn default() -> Self {
        Speculation {
            epoch: 0,
            to_speculate: Vec::new(),
            led: None,
            outstanding: 0,
            waiting: VecDeque::new(),
            barrier: 0,
            held: Vec::new(),
            last_ts: 0,
        }
    }
}

impl<W> Speculation<W> {
    pub(super) fn waiting_len(&self) -> usize {
        self.waiting.len()
    }
}

impl<W, R> NodeState<W, R> {
    /// Proposals wait to be handed to the applier (the shell calls
    /// [`NodeState::flush_speculation`] once its mailbox is drained, so a
    /// burst of writes is executed together).
    pub fn wants_speculation(&self) -> bool {
        !self.spec.to_speculate.is_empty()
    }

    /// Whether a row proposal made now gets its index at once (is not
    /// held for the barrier); always true for the statement kind.
    pub(super) fn row_barrier_reached(&self) -> bool {
        self.settings.log_kind != crate::types::LogKind::Row
            || self.core.applied_index() >= self.spec.barrier
    }

    /// Hand the proposals made since the last flush to the applier.
    pub fn flush_speculation(&mut self) {
        if self.spec.to_speculate.is_empty() {
            return;
        }
        let batch = SpeculateBatch {
            entries: std::mem::take(&mut self.spec.to_speculate),
            as_effects: self.settings.log_kind == crate::types::LogKind::Row,
            term_start: self.core.term_start_index(),
            epoch: self.spec.epoch,
        };
        self.out.push(Effect::Speculate(batch));
    }

    /// Row log kind: fix the entry's index, term and context, and have the
    /// applier execute it against the executed state plus the entries
    /// executed before it; the `Effects` it returns is what gets logged.
    pub(super) fn propose_row(
        &mut self,
        payload: Payload,
        concern: WriteConcern,
        reply: Reply<W>,
        now_ms: u64,
    ) -> Option<Index> {
        if self.core.role() != Role::Leader {
            let e = self.not_leader("this node is not the leader");
            self.answer(reply, WriteAnswer::Refused(e));
            return None;
        }
        if let Some(to) = self.core.transferring_to() {
            let e = self.handing_over_to(to);
            self.answer(reply, WriteAnswer::Refused(e));
            return None;
        }
        if self.core.applied_index() < self.spec.barrier {
            self.spec.held.push(Held {
                payload,
                concern,
                reply,
                deadline_ms: now_ms + self.settings.read_timeout_ms,
            });
            return None;
        }
        let index = self.core.last_index() + 1 + self.spec.outstanding;
        let ts = now_ms
            .max(self.spec.last_ts)
            .max(self.core.last_timestamp_ms());
        self.spec.last_ts = ts;
        let entry = Entry {
            index,
            term: self.core.term(),
            context: EntryContext {
                timestamp_ms: ts,
                seed: self.next_seed(),
            },
            payload,
        };
        self.spec.outstanding += 1;
        self.spec.waiting.push_back((index, concern, reply));
        self.spec.to_speculate.push(entry);
        Some(index)
    }

    /// The applier executed a batch of epoch `epoch`: statement kind, the
    /// outcomes of entries already logged; row kind, the entries to log
    /// (with their `Effects`) and their outcomes.
    pub fn speculated(
        &mut self,
        epoch: u64,
        result: Result<Vec<(Entry, Outcome)>, SpeculationFailed>,
        now_ms: u64,
        log: &impl LogRead,
    ) {
        if epoch != self.spec.epoch {
            return; // discarded meanwhile; its writers were answered
        }
        if self.settings.log_kind == crate::types::LogKind::Statement {
            // The entries are in the log already; only the outcomes are
            // news. An execution that could not run leaves them to be
            // answered on apply.
            match result {
                Ok(done) => {
                    for (e, outcome) in done {
                        if let Some(w) = self.writes.get_mut(e.index)
                            && w.term == e.term
                        {
                            w.outcome = Some(outcome);
                        }
                    }
                    self.answer_committed();
                }
                Err(why) => tracing::debug!(%why, "statement not executed ahead of commit"),
            }
            return;
        }
        let entries = match result {
            Ok(e) => e,
            Err(why) => return self.discard_speculation(&why.0),
        };
        self.spec.outstanding -= entries.len() as u64;
        let term = self.core.term();
        let (entries, outcomes): (Vec<Entry>, BTreeMap<Index, Outcome>) = entries
            .into_iter()
            .map(|(e, outcome)| {
                let index = e.index;
                (e, (index, outcome))
            })
            .unzip();
        match self.core.append_prepared(entries, log) {
            Ok(last) => {
                while let Some(&(index, _, _)) = self.spec.waiting.front() {
                    if index > last {
                        break;
                    }
                    let (index, concern, reply) = self.spec.waiting.pop_front().expect("front");
                    self.writes.insert(
                        index,
                        super::writes::Waiter {
                            term,
                            concern,
                            reply,
                            outcome: outcomes.get(&index).cloned(),
                            deadline_ms: now_ms + self.settings.write_timeout_ms,
                        },
                    );
                }
            }
            Err(e) => self.discard_speculation(&e.to_string()),
        }
    }

    /// Drop every execution ahead of commit (lost term, refused append,
    /// failed execution): writers waiting for one are told to retry, and
    /// new executions wait until everything now in the log is applied.
    pub(super) fn discard_speculation(&mut self, why: &str) {
        self.spec.epoch += 1;
        self.spec.outstanding = 0;
        self.spec.to_speculate.clear();
        self.spec.barrier = self.core.last_index();
        self.out.push(Effect::DiscardSpeculation);
        let code = if self.core.role() == Role::Leader {
            ErrorCode::Unavailable
        } else {
            ErrorCode::NotLeader
        };
        for (_, _, reply) in std::mem::take(&mut self.spec.waiting) {
            let e = crate::client::ApiError {
                code,
                ..self.not_leader(&format!("write not logged ({why}); retry"))
            };
            self.answer(reply, WriteAnswer::Refused(e));
        }
    }

    /// Notice a new or lost term: executions of an older term are dropped
    /// before any of the new one starts (both log kinds); a lost term
    /// answers the writers of uncommitted entries.
    pub(super) fn track_leadership(&mut self) {
        let leading = (self.core.role() == Role::Leader).then(|| self.core.term());
        if leading == self.spec.led {
            return;
        }
        if self.spec.led.is_some() {
            self.discard_speculation("leadership changed");
            if leading.is_none() {
                self.release_uncommitted_writers();
            }
        }
        self.spec.led = leading;
        if leading.is_some() {
            // Build on everything before this term's no-op.
            self.spec.barrier = self.spec.barrier.max(self.core.term_start_index());
        } else {
            for held in std::mem::take(&mut self.spec.held) {
                let e = self.not_leader("leadership changed; retry");
                self.answer(held.reply, WriteAnswer::Refused(e));
            }
        }
    }

    /// Release row proposals held for the barrier, or expire them.
    pub(super) fn release_held_rows(&mut self, now_ms: u64) {
        if self.spec.held.is_empty() {
            return;
        }
        if self.core.applied_index() >= self.spec.barrier {
            for held in std::mem::take(&mut self.spec.held) {
                self.propose_row(held.payload, held.concern, held.reply, now_ms);
            }
        } else {
            let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.spec.held)
                .into_iter()
                .partition(|h| h.deadline_ms <= now_ms);
            self.spec.held = keep;
            for held in gone {
                let e = crate::client::ApiError::new(
                    ErrorCode::Timeout,
                    "the new leader did not catch up in time; retry",
                );
                self.answer(held.reply, WriteAnswer::Refused(e));
            }
        }
    }
}
