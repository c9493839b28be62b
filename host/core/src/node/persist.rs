//! The log writer's pipeline, and the hold on messages.
//!
//! One batch is with the log writer at a time; what the core hands over
//! meanwhile (hard states, a truncation, entries) accumulates and goes in
//! the next batch, in one transaction and one fsync (group commit), at
//! most [`APPEND_BATCH_ENTRIES_MAX`] entries at a time.
//!
//! A message the core sends after it changed its hard state (a vote, an
//! append of a new term) leaves only once that hard state is durable
//! (BRIEF invariant 3: a vote is never granted twice in a term, even
//! across a crash). Each queued hard state gets a sequence number; a
//! message waits for the number queued when it was sent.

use super::{Effect, NodeState};
use crate::replication::{HardState, LogRead, Message};
use crate::types::{Entry, Index, NodeId, Term};

/// Most entries handed to the log writer in one batch (one transaction).
pub const APPEND_BATCH_ENTRIES_MAX: usize = 4096;

/// One batch for the log writer, in this order: the hard state (with its
/// sequence number), the truncation, the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistBatch {
    /// The hard state to make durable, and its sequence number (reported
    /// back in [`NodeState::persisted`]).
    pub hard_state: Option<(HardState, u64)>,
    /// Remove every durable entry at this index and after.
    pub truncate_from: Option<Index>,
    /// Append these.
    pub entries: Vec<Entry>,
}

/// The pipeline's state.
#[derive(Debug, Default)]
pub(super) struct Persist {
    hard_state: Option<(HardState, u64)>,
    truncate_from: Option<Index>,
    queue: Vec<Entry>,
    in_flight: bool,
    /// Hard states queued / known durable (sequence numbers).
    hard_state_queued: u64,
    hard_state_durable: u64,
    /// Messages waiting until the hard state of this sequence number is
    /// durable.
    held: Vec<(u64, NodeId, Message)>,
}

impl Persist {
    /// A batch is with the writer, or entries wait for one.
    pub(super) fn busy(&self) -> bool {
        self.in_flight || !self.queue.is_empty()
    }

    pub(super) fn queue_hard_state(&mut self, hs: HardState) {
        self.hard_state_queued += 1;
        self.hard_state = Some((hs, self.hard_state_queued));
    }

    /// Entries at `index` and after are replaced: queued ones too.
    pub(super) fn truncate_from(&mut self, index: Index) {
        self.queue.retain(|e| e.index < index);
        self.truncate_from = Some(self.truncate_from.map_or(index, |p| p.min(index)));
    }

    pub(super) fn append(&mut self, entries: Vec<Entry>) {
        self.queue.extend(entries);
    }

    /// Drop what is not yet with the writer (the log is being replaced by
    /// a snapshot's).
    pub(super) fn forget_queued(&mut self) {
        self.queue.clear();
        self.truncate_from = None;
    }

    /// `Some(message)` if it may leave now, else it is held.
    pub(super) fn hold(&mut self, to: NodeId, message: Message) -> Option<Message> {
        if self.hard_state_queued > self.hard_state_durable {
            self.held.push((self.hard_state_queued, to, message));
            None
        } else {
            Some(message)
        }
    }

    fn next_batch(&mut self) -> Option<PersistBatch> {
        if self.in_flight || (self.queue.is_empty() && self.hard_state.is_none()) {
            return None;
        }
        let n = self.queue.len().min(APPEND_BATCH_ENTRIES_MAX);
        self.in_flight = true;
        Some(PersistBatch {
            hard_state: self.hard_state.take(),
            truncate_from: self.truncate_from.take(),
            entries: self.queue.drain(..n).collect(),
        })
    }

    /// The hard state of sequence number `seq` is durable: the messages
    /// that waited for it.
    fn durable(&mut self, seq: u64) -> Vec<(NodeId, Message)> {
        self.hard_state_durable = seq;
        let (go, hold): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(s, _, _)| *s <= seq);
        self.held = hold;
        go.into_iter().map(|(_, to, m)| (to, m)).collect()
    }
}

impl<W, R> NodeState<W, R> {
    /// Hand the next batch to the log writer, if none is with it.
    pub(super) fn flush_persist(&mut self) {
        if let Some(batch) = self.persist.next_batch() {
            self.out.push(Effect::Persist(batch));
        }
    }

    /// The log writer made the last batch durable: `hard_state_seq` if it
    /// held a hard state, `last` the (index, term) of its last entry if it
    /// held entries. Messages that waited for the hard state leave; the
    /// core learns what is durable; `leader`-concern writers are answered;
    /// the next batch goes.
    pub fn persisted(
        &mut self,
        hard_state_seq: Option<u64>,
        last: Option<(Index, Term)>,
        log: &impl LogRead,
    ) {
        self.persist.in_flight = false;
        if let Some(seq) = hard_state_seq {
            for (to, message) in self.persist.durable(seq) {
                self.out.push(Effect::Send { to, message });
            }
        }
        if let Some((index, term)) = last {
            self.core.persisted(index, term, log);
            self.answer_durable(index, term);
        }
    }

    /// The log writer failed the last batch: the node halts (it cannot
    /// keep the promises of what it sent).
    pub fn persist_failed(&mut self, why: String) {
        self.persist.in_flight = false;
        self.halt(format!("log write failed: {why}"));
    }
}
