//! Elections: the election timer, check-quorum, pre-vote, votes and their
//! answers, becoming leader (a no-op of its own term first).

use super::*;

impl Core {
    /// Leave leadership at once (the shell has a host fault): followers
    /// elect another leader when its heartbeats stop.
    pub fn step_down(&mut self) {
        if self.role != Role::Follower {
            tracing::warn!(
                node = self.config.id,
                term = self.hard.term,
                "stepping down"
            );
            self.become_follower(self.hard.term, None);
        }
    }

    /// Whether this node may campaign (false while the shell has a host
    /// fault; it still follows and votes).
    pub fn set_candidacy(&mut self, allowed: bool) {
        self.candidacy = allowed;
    }

    /// A leader that has not heard from a majority within an election
    /// timeout steps down: it may be on the minority side of a partition.
    pub(super) fn check_quorum(&mut self) {
        self.check_quorum_due_ms = self.now_ms + self.config.election_timeout_min_ms;
        let me = self.config.id;
        let progress = &self.progress;
        let heard = self
            .membership()
            .has_quorum(|id| id == me || progress.get(&id).is_some_and(|p| p.active));
        for p in self.progress.values_mut() {
            p.active = false;
        }
        if !heard {
            tracing::info!(node = self.config.id, term = self.hard.term, "lost quorum");
            self.become_follower(self.hard.term, None);
        }
    }

    pub(super) fn start_pre_vote(&mut self, log: &impl LogRead) {
        self.reset_election_timer();
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        if self.votes_won() {
            return self.campaign(log);
        }
        self.request_votes(self.hard.term + 1, true, false);
    }

    /// Ask every peer for a (pre-)vote in `term`.
    pub(super) fn request_votes(&mut self, term: Term, pre: bool, transfer: bool) {
        let (last_index, last_term) = (self.last_index, self.last_term);
        for p in self.voting_peers() {
            let msg = Message::Vote {
                term,
                last_index,
                last_term,
                pre,
                transfer,
            };
            self.send(p, msg);
        }
    }

    pub(super) fn campaign(&mut self, log: &impl LogRead) {
        self.campaign_as(log, false)
    }

    pub(super) fn campaign_as(&mut self, log: &impl LogRead, transfer: bool) {
        self.set_hard_state(self.hard.term + 1, Some(self.config.id));
        self.role = Role::Candidate;
        self.leader = None;
        self.reset_election_timer();
        self.votes.clear();
        // Our own vote is durable once the shell executes `hard_state`,
        // which precedes the vote requests in this Ready.
        self.votes.insert(self.config.id, true);
        if self.votes_won() {
            return self.become_leader(log);
        }
        self.request_votes(self.hard.term, false, transfer);
    }

    pub(super) fn become_leader(&mut self, log: &impl LogRead) {
        self.role = Role::Leader;
        self.lease_forfeited = false;
        self.leader = Some(self.config.id);
        self.leader_seen_ms = Some(self.now_ms);
        self.votes.clear();
        self.heartbeat_seq = 0;
        self.rounds_sent.clear();
        let next = self.last_index + 1;
        let now = self.now_ms;
        self.progress = self
            .peers()
            .into_iter()
            .map(|p| (p, Progress::fresh(next, now)))
            .collect();
        self.check_quorum_due_ms = self.now_ms + self.config.election_timeout_min_ms;
        // Timestamps never go back along the log, whoever leads.
        let last_ts = match self.unstable.last() {
            Some(e) => Some(e.context.timestamp_ms),
            None if self.last_index > 0 => log
                .entries(self.last_index, self.last_index, 1)
                .first()
                .map(|e| e.context.timestamp_ms)
                .or(Some(log.compacted_timestamp_ms())),
            None => None,
        };
        self.last_timestamp_ms = self
            .last_timestamp_ms
            .max(last_ts.unwrap_or(0))
            .max(self.now_ms);
        // Promotion: commit an entry of our own term before anything of an
        // earlier term counts as committed.
        self.term_start_index = next;
        self.push_entry(
            Payload::Noop,
            EntryContext {
                timestamp_ms: self.last_timestamp_ms,
                seed: 0,
            },
        );
        tracing::info!(
            term = self.hard.term,
            node = self.config.id,
            "became leader"
        );
        for p in self.peers() {
            self.send_append(p, log, true);
        }
        self.broadcast_heartbeat();
        self.advance_commit(log);
    }

    /// Whether a candidate's log is at least as up-to-date as this node's
    /// — or, for a node that lost its data, as its `recovery_floor`.
    pub(super) fn log_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term, self.last_index).max(self.recovery_floor)
    }

    pub(super) fn on_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last_index: Index,
        last_term: Term,
        pre: bool,
        transfer: bool,
    ) {
        let up_to_date = self.log_up_to_date(last_index, last_term);
        // A node that lost its data votes only once it heard enough peers,
        // and then by its recovery floor (see `log_up_to_date`): its empty
        // log would be up-to-date with anyone's.
        let embargo = (self.now_ms < self.vote_embargo_until_ms && !transfer)
            || self.lost_terms.is_some()
            || !self.hello_from.contains(&from);
        let granted = if pre {
            // Would we vote in `term`? Only if no live leader is known.
            term > self.hard.term && up_to_date && !self.in_leader_lease() && !embargo
        } else {
            let free =
                self.hard.vote.is_none() || (self.hard.vote == Some(from) && !self.vote_void);
            free && up_to_date && !embargo
        };
        if granted && !pre {
            self.set_hard_state(term, Some(from));
            self.reset_election_timer();
        }
        let reply_term = if granted { term } else { self.hard.term };
        self.send(
            from,
            Message::VoteResponse {
                term: reply_term,
                granted,
                pre,
            },
        );
    }

    pub(super) fn on_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        granted: bool,
        pre: bool,
        log: &impl LogRead,
    ) {
        if self.recovering() {
            return;
        }
        let expected = match (self.role, pre) {
            (Role::PreCandidate, true) => self.hard.term + 1,
            (Role::Candidate, false) => self.hard.term,
            _ => return,
        };
        if term != expected {
            return;
        }
        // A vote from an empty log that did not yet know it lost its data.
        let granted = granted
            && self
                .lost_data
                .get(&from)
                .is_none_or(|&until| self.now_ms >= until);
        self.votes.insert(from, granted);
        let votes = &self.votes;
        if self.votes_won() {
            if pre {
                self.campaign(log);
            } else {
                self.become_leader(log);
            }
        } else if self
            .membership()
            .quorum_lost(|id| votes.get(&id) == Some(&false))
        {
            self.become_follower(self.hard.term, None);
        }
    }

    /// Whether the votes granted so far make a majority of every voter
    /// set of the configuration in effect.
    pub(super) fn votes_won(&self) -> bool {
        let votes = &self.votes;
        self.membership()
            .has_quorum(|id| votes.get(&id) == Some(&true))
    }
}
