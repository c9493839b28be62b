//! Log replication and commit: proposals, appends to each follower
//! (pipelined, bounded, probing after a refusal), their answers, what is
//! durable, commit by the quorum-th durable match index, apply, and
//! snapshots for followers behind the compacted log.

use super::*;

impl Core {
    pub(super) fn push_entry(&mut self, payload: Payload, context: EntryContext) -> Index {
        let index = self.last_index + 1;
        let term = self.hard.term;
        assert!(term >= self.last_term, "terms never decrease along the log");
        let entry = Entry {
            index,
            term,
            context,
            payload,
        };
        self.unstable.push(entry.clone());
        self.last_index = index;
        self.last_term = term;
        self.note_membership(&entry);
        self.ready.append.push(entry);
        index
    }

    /// An entry joined this node's log: a configuration is in effect at
    /// once (see [`crate::membership`]).
    pub(super) fn note_membership(&mut self, e: &Entry) {
        if let Payload::Config(m) = &e.payload {
            tracing::info!(node = self.config.id, index = e.index, membership = %m, "configuration in effect");
            self.memberships.appended(e.index, (**m).clone());
            self.membership_changed();
            self.recheck_lost_terms();
        }
    }

    /// The configuration in effect changed (appended, truncated away,
    /// restored): the leader ships the log to whoever is a member now
    /// and to no one else; a transfer to a node no longer a voter ends.
    pub(super) fn membership_changed(&mut self) {
        if let Some((to, _, _)) = self.transfer
            && !self.membership().voters.contains(&to)
        {
            self.transfer = None;
        }
        if self.role != Role::Leader {
            return;
        }
        let peers = self.peers();
        let (index, now) = (self.membership_index(), self.now_ms);
        let until = now + LEAVING_ELECTION_TIMEOUTS * self.config.election_timeout_max_ms;
        for id in self.progress.keys() {
            if !peers.contains(id) && !self.leaving.contains_key(id) {
                self.leaving.insert(*id, (index, until));
            }
        }
        // A member back in the configuration is no longer leaving.
        self.leaving.retain(|id, _| !peers.contains(id));
        let leaving = &self.leaving;
        self.progress
            .retain(|id, _| peers.contains(id) || leaving.contains_key(id));
        let next = self.last_index + 1;
        for p in peers {
            self.progress
                .entry(p)
                .or_insert_with(|| Progress::fresh(next, now));
        }
    }

    /// On the leader: check a configuration change and return the
    /// configuration to append for it (joint when the voters change).
    /// One change at a time: refused while the configuration in effect is
    /// joint or not yet committed, and until this leader's term has
    /// committed an entry (its no-op).
    pub fn check_membership_change(
        &self,
        change: &crate::membership::MembershipChange,
        tag: Option<crate::types::ClientTag>,
    ) -> Result<Membership, MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some((to, _, _)) = self.transfer {
            return Err(MembershipError::Transferring { to });
        }
        if self.commit_index < self.term_start_index {
            return Err(MembershipError::NotSettled);
        }
        let (index, current) = self.memberships.current();
        if current.is_joint() || index > self.commit_index {
            return Err(MembershipError::InProgress { index });
        }
        current.changed(change, self.config.id, tag, self.now_ms)
    }

    /// On the leader: the configuration in effect is joint and committed,
    /// so C_new is due — the configuration to append next. The shell
    /// proposes it like any entry (and must not propose it twice).
    pub fn leave_joint_due(&self) -> Option<Membership> {
        let (index, current) = self.memberships.current();
        let due = self.role == Role::Leader
            && current.is_joint()
            && index <= self.commit_index
            && self.commit_index >= self.term_start_index;
        due.then(|| current.leave_joint())
    }

    /// Propose a new entry. `now_ms` and `seed` come from the shell; the
    /// timestamp is made non-decreasing along the log here.
    pub fn propose(
        &mut self,
        payload: Payload,
        now_ms: u64,
        seed: u64,
        log: &impl LogRead,
    ) -> Result<Index, ProposeError> {
        self.may_take_writes()?;
        self.last_timestamp_ms = self.last_timestamp_ms.max(now_ms);
        let context = EntryContext {
            timestamp_ms: self.last_timestamp_ms,
            seed,
        };
        let index = self.push_entry(payload, context);
        for p in self.peers() {
            self.send_append(p, log, false);
        }
        self.advance_commit(log);
        Ok(index)
    }

    /// Only a leader that is not handing over takes new entries.
    pub(super) fn may_take_writes(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        match self.transfer {
            Some((to, _, _)) => Err(ProposeError::Transferring { to }),
            None => Ok(()),
        }
    }

    /// Row log kind: append entries the shell prepared from proposals it
    /// executed ahead of their commit. They must continue this leader's
    /// log in its current term, with timestamps that never go back along
    /// the log (see [`Core::last_timestamp_ms`]). Returns the last index.
    pub fn append_prepared(
        &mut self,
        entries: Vec<Entry>,
        log: &impl LogRead,
    ) -> Result<Index, ProposeError> {
        self.may_take_writes()?;
        for e in &entries {
            assert!(
                e.index == self.last_index + 1 && e.term == self.hard.term,
                "a prepared entry ({}, {}) must continue the log at ({}, {})",
                e.index,
                e.term,
                self.last_index + 1,
                self.hard.term
            );
            assert!(
                e.context.timestamp_ms >= self.last_timestamp_ms,
                "timestamps never go back along the log"
            );
            self.last_timestamp_ms = e.context.timestamp_ms;
            self.unstable.push(e.clone());
            self.last_index = e.index;
            self.last_term = e.term;
        }
        for e in &entries {
            self.note_membership(e);
        }
        self.ready.append.extend(entries);
        for p in self.peers() {
            self.send_append(p, log, false);
        }
        self.advance_commit(log);
        Ok(self.last_index)
    }

    /// First index of this leader's term (its no-op); everything before it
    /// is committed once the no-op is.
    pub fn term_start_index(&self) -> Index {
        self.term_start_index
    }

    /// Timestamp of the newest entry this node proposed or prepared.
    pub fn last_timestamp_ms(&self) -> u64 {
        self.last_timestamp_ms
    }

    /// Send `peer` what it is missing (pipelined, bounded); with `force`,
    /// send an append even when it carries no entries (a probe).
    pub(super) fn send_append(&mut self, peer: NodeId, log: &impl LogRead, force: bool) {
        let Some(pr) = self.progress.get_mut(&peer) else {
            return;
        };
        if pr.snapshotting {
            return;
        }
        if pr.next < log.first_index() {
            // What it needs is compacted away: it gets a snapshot.
            pr.snapshotting = true;
            pr.inflight.clear();
            self.ready.snapshots.push(peer);
            return;
        }
        let next = pr.next;
        let limit = if pr.probing {
            1
        } else {
            self.config.inflight_appends_max
        };
        let full = pr.inflight.len() >= limit;
        let has_entries = next <= self.last_index;
        if !force && (!has_entries || full) {
            return;
        }
        let prev_index = next - 1;
        let Some(prev_term) = self.term_at(prev_index, log) else {
            tracing::error!(
                node = self.config.id,
                peer,
                prev_index,
                "no term for an index of the log; not shipping"
            );
            return;
        };
        let entries = if has_entries && !full {
            self.entries_from(next, log)
        } else {
            Vec::new()
        };
        let pr = self.progress.get_mut(&peer).expect("peer");
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            pr.inflight.insert(last.index, first.index);
            pr.next = last.index + 1;
        } else if pr.probing || pr.inflight.is_empty() {
            // An empty probe is tracked too, so its loss is noticed.
            pr.inflight.insert(prev_index, prev_index + 1);
        }
        if pr.probing {
            pr.probe = Some(prev_index);
        }
        let msg = Message::Append {
            term: self.hard.term,
            prev_index,
            prev_term,
            entries,
            commit: self.commit_index,
        };
        self.send(peer, msg);
    }

    /// The shell made entries up to `index` (of term `term`) durable.
    pub fn persisted(&mut self, index: Index, term: Term, log: &impl LogRead) {
        // A report for an entry that has since been replaced is stale.
        if self.term_at(index, log) != Some(term) {
            return;
        }
        if index >= self.persisted_index {
            self.persisted_index = index;
            self.persisted_term = term;
        }
        if self.truncated_from.is_some_and(|t| index >= t) {
            self.truncated_from = None;
        }
        self.unstable.retain(|e| e.index > index);
        if let Some((leader, owed)) = self.ack_owed
            && self.persisted_index >= owed
        {
            self.ack_owed = None;
            if self.leader == Some(leader) && self.role == Role::Follower {
                self.ack(leader, owed);
            }
        }
        self.advance_commit(log);
        self.request_apply();
    }

    pub(super) fn advance_commit(&mut self, log: &impl LogRead) {
        if self.role != Role::Leader {
            return;
        }
        let (me, persisted) = (self.config.id, self.persisted_index);
        let progress = &self.progress;
        // A leader outside the voters of C_new (removing itself) does not
        // count itself for it.
        let majority_match = self
            .membership()
            .quorum_value(|id| {
                if id == me {
                    persisted
                } else {
                    progress.get(&id).map_or(0, |p| p.matched)
                }
            })
            .unwrap_or(0);
        // Only entries of the current term commit by counting (Raft §5.4.2).
        if majority_match >= self.term_start_index
            && majority_match > self.commit_index
            && self.term_at(majority_match, log) == Some(self.hard.term)
        {
            self.commit_index = majority_match;
        }
        self.request_apply();
        // A leader that is no longer a voter once its removal committed
        // steps down; the voters elect one of them.
        if !self.is_voter() && self.memberships.current_committed(self.commit_index) {
            tracing::info!(
                node = self.config.id,
                "this leader is no longer a voter: stepping down"
            );
            self.become_follower(self.hard.term, None);
        }
    }

    pub(super) fn request_apply(&mut self) {
        self.memberships.committed(self.commit_index);
        let up_to = self.commit_index.min(self.persisted_index);
        if up_to > self.apply_requested {
            self.apply_requested = up_to;
            self.ready.apply_up_to = Some(up_to);
        }
    }

    /// The shell applied entries up to `index`.
    pub fn applied(&mut self, index: Index) {
        assert!(
            index <= self.commit_index,
            "applied {index} beyond commit {}: only committed entries are applied",
            self.commit_index
        );
        assert!(index >= self.applied_index, "applied index never goes back");
        self.applied_index = index;
    }

    /// `from` leads `term` (the current one): follow it, and restart the
    /// election timer.
    /// False (and the message is to be dropped) if this node leads `term`
    /// itself: two leaders of one term cannot happen between honest
    /// members (election safety, checked by the simulator), so the sender
    /// is broken or forged, and a message is never a reason to crash.
    #[must_use]
    pub(super) fn heard_from_leader(&mut self, from: NodeId, term: Term) -> bool {
        if self.role == Role::Leader && self.hard.term == term {
            tracing::error!(
                node = self.config.id,
                from,
                term,
                "refused a leader's message of this node's own term (election safety: \
                 a member that claims to lead it is broken or forged)"
            );
            return false;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(term, Some(from));
        }
        self.leader_seen_ms = Some(self.now_ms);
        self.reset_election_timer();
        true
    }

    /// Tell `leader` that this log matches its own, durably, up to `index`.
    pub(super) fn ack(&mut self, leader: NodeId, index: Index) {
        let term = self.hard.term;
        self.send(
            leader,
            Message::AppendResponse {
                term,
                success: true,
                index,
                rejected: 0,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append(
        &mut self,
        from: NodeId,
        term: Term,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        log: &impl LogRead,
    ) {
        // A peer's message is input: one that no honest leader sends is
        // refused and logged, never asserted on.
        if let Err(why) = check_append(term, prev_index, prev_term, &entries) {
            tracing::warn!(node = self.config.id, from, why, "malformed append refused");
            return;
        }
        if !self.heard_from_leader(from, term) {
            return;
        }
        // Below what this node holds committed and durable (perhaps
        // compacted): it matches the leader there by leader completeness.
        let floor = self.commit_index.min(self.persisted_index);
        if prev_index < floor && self.truncated_from.is_none() {
            self.ack(from, floor);
            return;
        }
        if self.term_at(prev_index, log) != Some(prev_term) {
            // Log matching: refuse, and hint where to retry.
            let hint = prev_index.saturating_sub(1).min(self.last_index);
            self.send(
                from,
                Message::AppendResponse {
                    term,
                    success: false,
                    index: hint,
                    rejected: prev_index,
                },
            );
            return;
        }
        let match_index = prev_index + entries.len() as Index;
        // Skip what we already have; truncate at the first conflict.
        let mut new_from = None;
        for (i, e) in entries.iter().enumerate() {
            match self.term_at(e.index, log) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    if e.index <= self.commit_index {
                        // Commit safety: an honest leader holds every
                        // committed entry (leader completeness).
                        tracing::error!(
                            node = self.config.id,
                            from,
                            index = e.index,
                            "refused an append that would overwrite a committed entry"
                        );
                        return;
                    }
                    self.truncate_from(e.index, log);
                    new_from = Some(i);
                    break;
                }
                None => {
                    new_from = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = new_from {
            for e in entries.into_iter().skip(i) {
                // Kept so that, leading later, this node never stamps an
                // entry earlier than one before it.
                self.last_timestamp_ms = self.last_timestamp_ms.max(e.context.timestamp_ms);
                self.last_index = e.index;
                self.last_term = e.term;
                self.unstable.push(e.clone());
                self.note_membership(&e);
                self.ready.append.push(e);
            }
        }
        let new_commit = commit.min(match_index);
        if new_commit > self.commit_index {
            self.commit_index = new_commit;
        }
        if self.persisted_index >= match_index && self.truncated_from.is_none() {
            self.ack(from, match_index);
        } else {
            self.ack_owed = Some((from, match_index));
        }
        self.request_apply();
    }

    pub(super) fn truncate_from(&mut self, index: Index, log: &impl LogRead) {
        debug_assert!(
            index > self.commit_index,
            "committed entries are never truncated"
        );
        tracing::info!(
            node = self.config.id,
            index,
            "truncating a conflicting log suffix"
        );
        // Entries at `index` or after that were handed to the shell in an
        // earlier Ready may be on their way to disk: the truncation must be
        // durable too, not only the durable ones.
        let not_yet_handed: BTreeSet<Index> = self.ready.append.iter().map(|e| e.index).collect();
        let handed = self
            .unstable
            .iter()
            .any(|e| e.index >= index && !not_yet_handed.contains(&e.index));
        self.unstable.retain(|e| e.index < index);
        self.ready.append.retain(|e| e.index < index);
        if index <= self.persisted_index || handed {
            self.truncated_from = Some(self.truncated_from.map_or(index, |t| t.min(index)));
            self.ready.truncate_from =
                Some(self.ready.truncate_from.map_or(index, |t| t.min(index)));
            if index - 1 < self.persisted_index {
                self.persisted_index = index - 1;
                self.persisted_term = self
                    .term_at(index - 1, log)
                    .expect("the entry before a conflict is in the log");
            }
        }
        self.last_index = index - 1;
        self.last_term = self
            .term_at(index - 1, log)
            .expect("the entry before a conflict is in the log");
        if self.memberships.truncated(index) {
            tracing::info!(node = self.config.id, index, membership = %self.membership(), "a configuration was truncated away: the one before is in effect");
            self.membership_changed();
        }
    }

    pub(super) fn on_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: Index,
        rejected: Index,
        log: &impl LogRead,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.active = true;
        pr.answered = true;
        pr.heard_ms = self.now_ms;
        if success {
            pr.snapshotting = false;
            if index > pr.matched {
                pr.matched = index;
            }
            pr.next = pr.next.max(index + 1);
            pr.inflight.retain(|&i, _| i > index);
            pr.probing = false;
            if self.leaving.get(&from).is_some_and(|(at, _)| index >= *at) {
                // It holds the configuration that took it out: done.
                self.leaving.remove(&from);
                self.progress.remove(&from);
                return;
            }
            self.advance_commit(log);
            self.send_append(from, log, false);
            self.maybe_hand_over();
        } else {
            // A refusal below what is acknowledged, or of an earlier probe
            // than the current one, is stale (late or duplicated): ignoring
            // it keeps refusals from multiplying resends.
            let stale = rejected <= pr.matched && rejected != 0
                || (pr.probing && pr.probe != Some(rejected));
            if stale {
                return;
            }
            // Probe backwards from the follower's hint, one append at a time.
            pr.next = (index + 1).min(rejected.max(1)).max(pr.matched + 1);
            pr.inflight.clear();
            pr.probing = true;
            self.send_append(from, log, true);
        }
    }

    /// `peer` installed (or already had) the snapshot of the state at
    /// `index`: ship the log from there.
    pub fn snapshot_sent(&mut self, peer: NodeId, index: Index, log: &impl LogRead) {
        if let Some(pr) = self.progress.get_mut(&peer) {
            pr.snapshotting = false;
            pr.matched = pr.matched.max(index);
            pr.next = pr.matched + 1;
            pr.inflight.clear();
            pr.probing = false;
            self.advance_commit(log);
            self.send_append(peer, log, false);
        }
    }

    /// Sending a snapshot to `peer` failed; it will be offered again.
    pub fn snapshot_failed(&mut self, peer: NodeId) {
        if let Some(pr) = self.progress.get_mut(&peer) {
            pr.snapshotting = false;
        }
    }

    /// A snapshot of the state at `index` (whose entry had `term`) arrived.
    /// If it is newer than what this node applied, the shell has replaced
    /// the state and reset the log to `(index, term)` before calling this:
    /// everything up to `index` was committed, so it counts as applied. If
    /// not (the node moved on meanwhile), the shell installed nothing. Either
    /// way the leader learns where this node's log stands.
    pub fn restore(&mut self, index: Index, term: Term, membership: Membership) {
        if index <= self.applied_index {
            let floor = self.commit_index.min(self.persisted_index);
            if let (Role::Follower, Some(leader)) = (self.role, self.leader) {
                self.ack(leader, floor);
            }
            return;
        }
        tracing::info!(node = self.config.id, index, term, "snapshot installed");
        self.unstable.clear();
        self.truncated_from = None;
        self.ack_owed = None;
        self.last_index = index;
        self.last_term = term;
        self.persisted_index = index;
        self.persisted_term = term;
        self.commit_index = self.commit_index.max(index);
        self.apply_requested = self.apply_requested.max(index);
        self.applied_index = index;
        self.memberships.reset(index, membership);
        self.membership_changed();
        self.recheck_lost_terms();
        if let (Role::Follower, Some(leader)) = (self.role, self.leader) {
            self.ack(leader, index);
        }
    }
}
