//! Writers waiting for their answer, and when each is answered.
//!
//! A write is answered exactly once, and only with what is true of its
//! entry (BRIEF invariants 6 and 10):
//! * `majority`: `Written` once its entry committed in the term it was
//!   proposed in and its outcome is known — at commit when the leader
//!   executed it ahead of the commit ([`super::speculation`]), else when
//!   it is applied;
//! * `leader`: `Accepted` once the leader's log has it durable;
//! * `Superseded` when another leader's entry replaced it;
//! * `NotLeader` (outcome unknown) when this leader lost its term before
//!   the entry committed;
//! * `Timeout` (outcome unknown) at `write_timeout_ms`;
//! * `Unavailable` when the node halts.

use super::{NodeState, Reply};
use crate::client::{ApiError, ErrorCode, WriteAnswer, WriteConcern};
use crate::replication::{LogRead, ProposeError, Role};
use crate::types::{Index, Outcome, Payload, Term};
use std::collections::BTreeMap;

/// A writer waiting for its entry.
#[derive(Debug)]
pub(super) struct Waiter<W> {
    pub(super) term: Term,
    pub(super) concern: WriteConcern,
    pub(super) reply: Reply<W>,
    /// The outcome, once the leader executed the entry ahead of its
    /// commit: final once the entry commits in this term, so the writer is
    /// answered at commit, not after the apply.
    pub(super) outcome: Option<Outcome>,
    /// When the writer is answered `Timeout` if nothing else came first.
    pub(super) deadline_ms: u64,
}

/// Writers waiting for their entry, by index.
#[derive(Debug)]
pub(super) struct Writers<W> {
    waiting: BTreeMap<Index, Waiter<W>>,
}

impl<W> Default for Writers<W> {
    fn default() -> Self {
        Writers {
            waiting: BTreeMap::new(),
        }
    }
}

impl<W> Writers<W> {
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn insert(&mut self, index: Index, waiter: Waiter<W>) {
        let replaced = self.waiting.insert(index, waiter);
        debug_assert!(replaced.is_none(), "two writers wait for entry {index}");
    }

    pub(super) fn get_mut(&mut self, index: Index) -> Option<&mut Waiter<W>> {
        self.waiting.get_mut(&index)
    }

    pub(super) fn take_all(&mut self) -> BTreeMap<Index, Waiter<W>> {
        std::mem::take(&mut self.waiting)
    }

    /// Remove the writers `pick` selects among those up to `index`.
    fn take_up_to(
        &mut self,
        index: Index,
        pick: impl Fn(&Waiter<W>) -> bool,
    ) -> Vec<(Index, Waiter<W>)> {
        let ready: Vec<Index> = self
            .waiting
            .range(..=index)
            .filter(|(_, w)| pick(w))
            .map(|(&i, _)| i)
            .collect();
        ready
            .into_iter()
            .map(|i| (i, self.waiting.remove(&i).expect("listed")))
            .collect()
    }
}

impl<W, R> NodeState<W, R> {
    /// Writes waiting for their answer (shown in the status).
    pub fn pending_writes(&self) -> usize {
        self.writes.len()
    }

    /// A client's write: refused at once when this node halted, has a
    /// host fault, holds `pending_writes_max` writers or does not lead;
    /// else proposed (statement kind: appended now and executed ahead of
    /// its commit; row kind: executed first, see
    /// `propose_row`). Effects of the speculation go out
    /// with the next [`NodeState::flush_speculation`].
    pub fn propose(
        &mut self,
        payload: Payload,
        concern: WriteConcern,
        reply: W,
        now_ms: u64,
        log: &impl LogRead,
    ) {
        self.propose_entry(payload, concern, Reply::Client(reply), now_ms, log);
    }

    /// [`NodeState::propose`] for any writer (a client's, or this node's
    /// own configuration entries): the index the entry takes, if it was
    /// proposed (a row proposal held for the barrier has none yet).
    pub(super) fn propose_entry(
        &mut self,
        payload: Payload,
        concern: WriteConcern,
        reply: Reply<W>,
        now_ms: u64,
        log: &impl LogRead,
    ) -> Option<Index> {
        if let Some(why) = &self.halted {
            let e = ApiError::new(ErrorCode::Unavailable, format!("node halted: {why}"));
            self.answer(reply, WriteAnswer::Refused(e));
            return None;
        }
        if let Some(why) = self.fault() {
            let e = ApiError {
                leader: self.core.leader(),
                leader_address: self.leader_address(),
                ..ApiError::new(
                    ErrorCode::Unavailable,
                    format!("this node has a host fault: {why}"),
                )
            };
            self.answer(reply, WriteAnswer::Refused(e));
            return None;
        }
        if self.writes.len() + self.spec.waiting_len() >= self.settings.pending_writes_max {
            let e = ApiError::new(
                ErrorCode::Overloaded,
                format!("{} writes already waiting; retry later", self.writes.len()),
            );
            self.answer(reply, WriteAnswer::Refused(e));
            return None;
        }
        if self.settings.log_kind == crate::types::LogKind::Row {
            return self.propose_row(payload, concern, reply, now_ms);
        }
        let seed = self.next_seed();
        match self.core.propose(payload, now_ms, seed, log) {
            Ok(index) => {
                let waiter = Waiter {
                    term: self.core.term(),
                    concern,
                    reply,
                    outcome: None,
                    deadline_ms: now_ms + self.settings.write_timeout_ms,
                };
                self.writes.insert(index, waiter);
                // Execute it while it is replicated: its outcome is final
                // once it commits in this term, so the writer is answered
                // at commit (see `answer_committed`); the applier runs it
                // again on apply and checks that it gets the same.
                let entry = self.core.unstable_entry(index).expect("just proposed");
                self.spec.to_speculate.push(entry.clone());
                Some(index)
            }
            Err(ProposeError::NotLeader { .. }) => {
                let e = self.not_leader("this node is not the leader");
                self.answer(reply, WriteAnswer::Refused(e));
                None
            }
            Err(ProposeError::Transferring { to }) => {
                let e = self.handing_over_to(to);
                self.answer(reply, WriteAnswer::Refused(e));
                None
            }
        }
    }

    /// Answer writers whose entry (of the term they wrote in) is committed
    /// and whose outcome is known: fixed when the leader executed it ahead
    /// of the commit (both log kinds).
    pub(super) fn answer_committed(&mut self) {
        let term = self.core.term();
        let ready = self.writes.take_up_to(self.core.commit_index(), |w| {
            w.outcome.is_some() && w.term == term && w.concern == WriteConcern::Majority
        });
        for (index, w) in ready {
            // Committed in this term by this leader: the entry at `index`
            // is the one it appended (log matching).
            let answer = WriteAnswer::Written {
                outcome: w.outcome.expect("picked"),
                term: w.term,
                index,
            };
            self.answer(w.reply, answer);
        }
    }

    /// `leader` concern: writers of this term's entries up to `index` are
    /// answered once the log has them durable.
    pub(super) fn answer_durable(&mut self, index: Index, term: Term) {
        #[cfg(test)]
        let any_concern = self.broken.majority_answered_at_leader_fsync;
        #[cfg(not(test))]
        let any_concern = false;
        let acked = self.writes.take_up_to(index, |w| {
            (w.concern == WriteConcern::Leader || any_concern) && w.term == term
        });
        for (i, w) in acked {
            let answer = WriteAnswer::Accepted {
                term: w.term,
                index: i,
            };
            self.answer(w.reply, answer);
        }
    }

    /// Writers of applied entries: `Written` if the entry applied is the
    /// one they wrote (same term), else `Superseded`.
    pub(super) fn answer_applied(&mut self, outcomes: Vec<(Index, Term, Outcome)>) {
        for (index, term, outcome) in outcomes {
            let Some(w) = self.writes.waiting.remove(&index) else {
                continue;
            };
            let answer = if w.term == term {
                WriteAnswer::Written {
                    outcome,
                    term,
                    index,
                }
            } else {
                WriteAnswer::Refused(ApiError::new(
                    ErrorCode::Superseded,
                    format!(
                        "entry {index} of term {} was replaced by one of term {term}; not applied",
                        w.term
                    ),
                ))
            };
            self.answer(w.reply, answer);
        }
    }

    /// Waiters for entries at `index` and after that this node no longer
    /// holds learn that their write was replaced (never applied).
    pub(super) fn supersede_from(&mut self, index: Index) {
        let gone = self.writes.waiting.split_off(&index);
        for (i, w) in gone {
            // A re-appended entry of the same term is the same entry.
            if self.core.role() == Role::Leader && self.core.term() == w.term {
                self.writes.waiting.insert(i, w);
                continue;
            }
            let e = ApiError {
                leader: self.core.leader(),
                leader_address: self.leader_address(),
                ..ApiError::new(
                    ErrorCode::Superseded,
                    format!(
                        "entry {i} of term {} was replaced by another leader's; not applied",
                        w.term
                    ),
                )
            };
            self.answer(w.reply, WriteAnswer::Refused(e));
        }
    }

    /// A leader that lost its term answers every writer whose entry has
    /// not committed (BRIEF invariant 10): it will not learn their outcome
    /// as leader, and as a follower it may never hear of their entry again
    /// (a cut-off old leader keeps it until it rejoins). The entry may
    /// still commit under the next leader, so the answer says the outcome
    /// is unknown; a retry with the same client tag (the Rust client
    /// retries `NotLeader`) is applied at most once and gets the first
    /// outcome. Writers of committed entries are answered at apply.
    pub(super) fn release_uncommitted_writers(&mut self) {
        let commit = self.core.commit_index();
        let gone = self.writes.waiting.split_off(&(commit + 1));
        for (index, w) in gone {
            let e = self.not_leader(&format!(
                "this node lost its leadership (term {}) before entry {index} committed; \
                 its outcome is unknown: retry with the same client tag",
                w.term
            ));
            self.answer(w.reply, WriteAnswer::Refused(e));
        }
    }

    /// Writers whose deadline passed are answered `Timeout` (outcome
    /// unknown; see [`super::Settings::write_timeout_ms`]).
    pub(super) fn expire_writes(&mut self, now_ms: u64) {
        let expired = self
            .writes
            .take_up_to(Index::MAX, |w| w.deadline_ms <= now_ms);
        for (index, w) in expired {
            let e = self.hinted(
                ErrorCode::Timeout,
                format!(
                    "entry {index} (term {}) got no outcome within write_timeout_ms = {} ms \
                     (commit {}, applied {}); its outcome is unknown: retry with the same \
                     client tag",
                    w.term,
                    self.settings.write_timeout_ms,
                    self.core.commit_index(),
                    self.core.applied_index()
                ),
            );
            self.answer(w.reply, WriteAnswer::Refused(e));
        }
    }
}
