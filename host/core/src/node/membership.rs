//! Configuration changes, as the leader carries them out.
//!
//! An operator's change ([`NodeState::change_membership`]) is checked by
//! the core against the configuration in effect (one change at a time,
//! see [`crate::membership`]) and proposed as a configuration entry
//! through the ordinary write pipeline, of either log kind, with this
//! node itself as the entry's writer ([`Reply::Config`]). The client
//! waits for the change to be *done*: the entry itself when the voters do
//! not change, else C_new, which the leader proposes once the joint
//! configuration committed — whoever leads then: a new leader finishes
//! its predecessor's change.
//!
//! The leader also moves learners on by itself, at most one change at a
//! time: a learner added to become a voter is promoted once it is within
//! [`Settings::promote_lag_entries`] entries and
//! [`Settings::promote_lag_ms`] of the leader, a learner added to replace a
//! voter is swapped in for it at the same point, and one that has not
//! caught up [`Settings::catch_up_timeout_ms`] after it was added is
//! removed again (the replaced voter stays: the configuration is as
//! before).
//!
//! [`Settings::promote_lag_entries`]: super::Settings::promote_lag_entries
//! [`Settings::promote_lag_ms`]: super::Settings::promote_lag_ms
//! [`Settings::catch_up_timeout_ms`]: super::Settings::catch_up_timeout_ms

use super::{NodeState, Reply};
use crate::client::{ApiError, ErrorCode, WriteAnswer, WriteConcern};
use crate::membership::{Goal, MembershipChange, MembershipError};
use crate::replication::{LogRead, Role};
use crate::types::{ClientTag, Index, Outcome, Payload};
use serde_bytes::ByteBuf;

/// A client's change waiting for its answer.
#[derive(Debug)]
struct Waiter<W> {
    reply: W,
    /// The configuration entry whose commit completes the change (the
    /// joint configuration's until C_new is proposed).
    index: Index,
    /// Waiting for C_new: `index` is the joint configuration.
    joint: bool,
    deadline_ms: u64,
}

/// What became of a change asked for.
enum Started {
    /// Answered at once (a retry of the change in effect).
    Done(WriteAnswer),
    /// Proposed: its configuration entry is at `index`.
    Proposed { index: Index, joint: bool },
}

/// The leader's configuration changes in progress.
#[derive(Debug)]
pub(super) struct Changes<W> {
    /// The client waiting for the change in progress, if one asked.
    waiter: Option<Waiter<W>>,
    /// A configuration entry this node proposed and has not been answered
    /// for yet (so it proposes no second one meanwhile).
    in_flight: Option<Index>,
}

impl<W> Default for Changes<W> {
    fn default() -> Self {
        Changes {
            waiter: None,
            in_flight: None,
        }
    }
}

impl<W, R> NodeState<W, R> {
    /// An operator's configuration change: refused at once (with why) if
    /// this node cannot make it now or it is invalid, else proposed; the
    /// writer is answered once the change is done (see the module docs),
    /// with the index of the configuration that completed it. A retry
    /// of the request that made the configuration in effect (same
    /// `tag`) is answered with it, not made twice.
    pub fn change_membership(
        &mut self,
        change: MembershipChange,
        tag: Option<ClientTag>,
        reply: W,
        now_ms: u64,
        log: &impl LogRead,
    ) {
        let answer = match self.start_change(change, tag, now_ms, log) {
            Ok(Started::Done(answer)) => answer,
            Ok(Started::Proposed { index, joint }) => {
                self.change.waiter = Some(Waiter {
                    reply,
                    index,
                    joint,
                    deadline_ms: now_ms + self.settings.write_timeout_ms,
                });
                return;
            }
            Err(e) => WriteAnswer::Refused(e),
        };
        self.answer(Reply::Client(reply), answer);
    }

    fn start_change(
        &mut self,
        change: MembershipChange,
        tag: Option<ClientTag>,
        now_ms: u64,
        log: &impl LogRead,
    ) -> Result<Started, ApiError> {
        if let Some(why) = self.halted.clone().or(self.fault().cloned()) {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("this node cannot write: {why}"),
            ));
        }
        let (index, current) = (self.core.membership_index(), self.core.membership());
        if tag.is_some() && current.tag == tag && self.core.role() == Role::Leader {
            if current.is_joint() || index > self.core.commit_index() {
                return Err(self.membership_refusal(MembershipError::InProgress { index }));
            }
            let term = self
                .core
                .unstable_entry(index)
                .map(|e| e.term)
                .or_else(|| log.term(index))
                .unwrap_or(0);
            return Ok(Started::Done(WriteAnswer::Written {
                outcome: Outcome::Ok(ByteBuf::new()),
                term,
                index,
            }));
        }
        let busy = self
            .change
            .in_flight
            .or(self.change.waiter.as_ref().map(|w| w.index));
        if let Some(index) = busy {
            return Err(self.membership_refusal(MembershipError::InProgress { index }));
        }
        if !self.row_barrier_reached() {
            return Err(self.membership_refusal(MembershipError::NotSettled));
        }
        let next = self
            .core
            .check_membership_change(&change, tag)
            .map_err(|e| self.membership_refusal(e))?;
        let next = self.unsafe_rule(next);
        let joint = next.is_joint();
        tracing::info!(%change, membership = %next, "configuration change proposed");
        match self.propose_config(next, now_ms, log) {
            Some(index) => Ok(Started::Proposed { index, joint }),
            None => Err(self.not_leader("this node could not propose the change; retry")),
        }
    }

    /// A forced promotion replaced the core: a change in progress is
    /// over (its client is told; its entries' writers are answered as the
    /// new core decides).
    pub(super) fn forget_membership_changes(&mut self) {
        self.change.in_flight = None;
        if let Some(w) = self.change.waiter.take() {
            let e = ApiError::new(
                ErrorCode::Unavailable,
                "a forced promotion ended this configuration change; see `member list`",
            );
            self.answer(Reply::Client(w.reply), WriteAnswer::Refused(e));
        }
    }

    fn membership_refusal(&self, e: MembershipError) -> ApiError {
        let code = match e {
            MembershipError::NotLeader { .. } => return self.not_leader(&e.to_string()),
            MembershipError::Transferring { to } => return self.handing_over_to(to),
            MembershipError::InProgress { .. } | MembershipError::NotSettled => {
                ErrorCode::Unavailable
            }
            _ => ErrorCode::BadRequest,
        };
        ApiError::new(code, e.to_string())
    }

    /// Propose a configuration entry with this node as its writer.
    fn propose_config(
        &mut self,
        next: crate::membership::Membership,
        now_ms: u64,
        log: &impl LogRead,
    ) -> Option<Index> {
        let payload = Payload::Config(Box::new(next));
        let index =
            self.propose_entry(payload, WriteConcern::Majority, Reply::Config, now_ms, log)?;
        self.change.in_flight = Some(index);
        Some(index)
    }

    /// A configuration entry this node proposed was answered (committed,
    /// superseded, refused, timed out).
    pub(super) fn config_entry_answered(&mut self, answer: WriteAnswer) {
        let index = match &answer {
            WriteAnswer::Written { index, .. } | WriteAnswer::Accepted { index, .. } => {
                Some(*index)
            }
            WriteAnswer::Refused(_) => None,
        };
        // One configuration entry in flight at a time: this answer is its.
        self.change.in_flight = None;
        let Some(w) = self.change.waiter.take() else {
            return;
        };
        match (index, &answer) {
            // The joint configuration committed: C_new comes next
            // (`drive_membership`), and the client waits for it.
            (Some(i), WriteAnswer::Written { .. }) if i == w.index && w.joint => {
                self.change.waiter = Some(w);
            }
            (Some(i), _) if i != w.index => self.change.waiter = Some(w),
            _ => self.answer(Reply::Client(w.reply), answer),
        }
    }

    /// The leader's part of every turn: C_new once a joint configuration
    /// committed, learners promoted, swapped in or given up on, and the
    /// change's client answered `Timeout` at its deadline.
    pub(super) fn drive_membership(&mut self, now_ms: u64, log: &impl LogRead) {
        if let Some(w) = &self.change.waiter
            && w.deadline_ms <= now_ms
        {
            let w = self.change.waiter.take().expect("checked");
            let e = self.hinted(
                ErrorCode::Timeout,
                format!(
                    "the configuration change did not complete within write_timeout_ms = {} ms; \
                     it may still complete: see `member list`",
                    self.settings.write_timeout_ms
                ),
            );
            self.answer(Reply::Client(w.reply), WriteAnswer::Refused(e));
        }
        if self.core.role() != Role::Leader {
            if let Some(w) = self.change.waiter.take() {
                let e = self.not_leader(
                    "this node lost its leadership before the configuration change completed; \
                     it may still complete: see `member list`",
                );
                self.answer(Reply::Client(w.reply), WriteAnswer::Refused(e));
            }
            return;
        }
        if self.change.in_flight.is_some()
            || self.halted.is_some()
            || self.fault().is_some()
            || !self.row_barrier_reached()
        {
            return;
        }
        if self.core.membership_index() == 0
            && self.core.commit_index() >= self.core.term_start_index()
            && !self.core.membership().voters.is_empty()
        {
            // The first leader of a group writes its bootstrap member list
            // into the log: from then on the configuration lives there
            // (a member that lost its data, or joins, learns it).
            let mut first = self.core.membership().clone();
            for id in first.members() {
                let addrs = self.settings.member_addrs.get(&id).cloned();
                first.addrs.insert(id, addrs.unwrap_or_default());
            }
            tracing::info!(membership = %first, "writing the bootstrap configuration into the log");
            self.propose_config(first, now_ms, log);
            return;
        }
        if let Some(next) = self.core.leave_joint_due() {
            tracing::info!(membership = %next, "joint configuration committed: proposing the new one");
            let index = self.propose_config(next, now_ms, log);
            if let (Some(w), Some(index)) = (self.change.waiter.as_mut(), index)
                && w.joint
            {
                w.index = index;
                w.joint = false;
            }
            return;
        }
        if self.change.waiter.is_some() {
            return;
        }
        let Some(change) = self.learner_due(now_ms, log) else {
            return;
        };
        if let Ok(next) = self.core.check_membership_change(&change, None) {
            let next = self.unsafe_rule(next);
            tracing::info!(%change, membership = %next, "the leader moves a learner on");
            self.propose_config(next, now_ms, log);
        }
    }

    /// The configuration to append for a change: as checked — or, when a
    /// test breaks the rule on purpose, C_new without the joint step.
    fn unsafe_rule(&self, next: crate::membership::Membership) -> crate::membership::Membership {
        #[cfg(test)]
        if self.broken.membership_without_joint && next.is_joint() {
            return next.leave_joint();
        }
        next
    }

    /// A learner the leader should move on now, if any: promoted (or
    /// swapped in) once caught up, removed once it failed to catch up in
    /// time.
    fn learner_due(&self, now_ms: u64, log: &impl LogRead) -> Option<MembershipChange> {
        let m = self.core.membership();
        if m.catching_up.is_empty() {
            return None;
        }
        let followers = self.core.followers(log);
        for (&id, goal) in &m.catching_up {
            let caught_up = followers.iter().any(|f| {
                f.id == id
                    && !f.snapshot
                    && f.lag_entries <= self.settings.promote_lag_entries
                    && f.lag_ms <= self.settings.promote_lag_ms
                    && f.matched > 0
            });
            let out = match goal {
                Goal::Replace { out, .. } if m.voters.contains(out) => Some(*out),
                _ => None,
            };
            if caught_up {
                return Some(match out {
                    Some(out) => MembershipChange::Swap { out, into: id },
                    None => MembershipChange::Promote { id },
                });
            }
            if let Goal::Replace { since_ms, .. } = goal
                && now_ms.saturating_sub(*since_ms) > self.settings.catch_up_timeout_ms
            {
                tracing::warn!(
                    learner = id,
                    "the replacement did not catch up in time: removing it, the configuration stays"
                );
                return Some(MembershipChange::Remove { id });
            }
        }
        None
    }
}
