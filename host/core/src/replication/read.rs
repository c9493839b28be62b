//! Heartbeat rounds, read indexes (ReadIndex) and the leader's lease.

use super::*;

impl Core {
    /// Send every peer a heartbeat of a new round.
    pub(super) fn broadcast_heartbeat(&mut self) {
        self.heartbeat_due_ms = self.now_ms + self.config.heartbeat_interval_ms;
        self.heartbeat_seq += 1;
        self.rounds_sent
            .push_back((self.heartbeat_seq, self.now_ms));
        while self.rounds_sent.len() > HEARTBEAT_ROUNDS_KEPT {
            self.rounds_sent.pop_front();
        }
        let (term, seq) = (self.hard.term, self.heartbeat_seq);
        let beats: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(&p, pr)| (p, self.commit_index.min(pr.matched)))
            .collect();
        for (p, commit) in beats {
            self.send(p, Message::Heartbeat { term, commit, seq });
        }
        // A TimeoutNow can be lost, or reach a target that cannot act on
        // it yet: it goes again, after the heartbeat that tells the target
        // who leads, until the transfer ends.
        if let Some((to, _, true)) = self.transfer {
            self.send(to, Message::TimeoutNow { term });
        }
    }

    pub(super) fn on_heartbeat(&mut self, from: NodeId, term: Term, commit: Index, seq: u64) {
        if !self.heard_from_leader(from, term) {
            return;
        }
        // The leader only names a commit index up to what it knows we
        // hold, so it is safe to adopt as far as our log reaches.
        let commit = commit.min(self.last_index);
        if commit > self.commit_index {
            self.commit_index = commit;
            self.request_apply();
        }
        self.send(from, Message::HeartbeatResponse { term, seq });
    }

    pub(super) fn on_heartbeat_response(&mut self, from: NodeId, seq: u64, log: &impl LogRead) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.last_index;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.active = true;
        pr.heard_ms = self.now_ms;
        pr.acked_seq = pr.acked_seq.max(seq);
        let idle_behind = pr.matched < last && pr.inflight.is_empty();
        if idle_behind && !pr.probing {
            pr.next = pr.matched + 1;
        }
        self.resolve_reads();
        if idle_behind {
            // Back from a cut or a restart: resume shipping now.
            self.send_append(from, log, false);
        }
    }

    /// Whether this leader may serve a read from its own state without
    /// asking the others (a `lease` read): a majority answered a heartbeat
    /// round sent less than 90 % of the minimum election timeout ago, and
    /// none of them will vote for another candidate until that timeout has
    /// passed since they heard it (leader stickiness; a restarted node
    /// waits as long before it votes). The 10 % margin absorbs clock-rate
    /// drift. Also needs this term's no-op committed, no transfer, and no
    /// TimeoutNow sent in this term (see `lease_forfeited`).
    /// `now_ms` is the shell's clock when the read is served (not the last
    /// tick: a process that was frozen must not trust its old time).
    pub fn lease_read_ok(&self, now_ms: u64) -> bool {
        if self.role != Role::Leader
            || self.transfer.is_some()
            || self.lease_forfeited
            || self.commit_index < self.term_start_index
        {
            return false;
        }
        if self.alone_is_quorum() {
            return true;
        }
        let Some(confirmed) = self.confirmed_round() else {
            return false;
        };
        let Some(&(_, sent)) = self.rounds_sent.iter().find(|(seq, _)| *seq == confirmed) else {
            return false;
        };
        now_ms.max(self.now_ms) < sent + self.config.election_timeout_min_ms * 9 / 10
    }

    /// Ask for a linearizable read: the answer arrives in [`Ready::reads`]
    /// as (ctx, index) — serve it once the applied index reaches `index` —
    /// or in [`Ready::failed_reads`] if leadership is lost meanwhile.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        match (self.role, self.leader) {
            (Role::Leader, _) => {
                self.queue_read(self.config.id, ctx);
                Ok(())
            }
            (Role::Follower, Some(leader)) => {
                let term = self.hard.term;
                self.send(leader, Message::ReadIndex { term, ctx });
                Ok(())
            }
            _ => Err(ProposeError::NotLeader {
                leader: self.leader,
            }),
        }
    }

    /// ReadIndex on the leader: the read may see everything committed now,
    /// and everything committed by earlier leaders (all before this term's
    /// no-op), once a majority confirms this node still leads.
    pub(super) fn queue_read(&mut self, from: NodeId, ctx: u64) {
        let index = self.commit_index.max(self.term_start_index);
        let seq = self.heartbeat_seq + 1;
        self.pending_reads.push(PendingRead {
            from,
            ctx,
            index,
            seq,
        });
        if self.alone_is_quorum() {
            self.resolve_reads();
        } else {
            // Reads queued before the next `ready()` share one round.
            self.read_round_wanted = true;
        }
    }

    pub(super) fn resolve_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let Some(confirmed) = self.confirmed_round() else {
            return;
        };
        let me = self.config.id;
        let term = self.hard.term;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_reads)
            .into_iter()
            .partition(|r| r.seq <= confirmed);
        self.pending_reads = waiting;
        for r in done {
            if r.from == me {
                self.ready.reads.push((r.ctx, r.index));
            } else {
                let msg = Message::ReadIndexResponse {
                    term,
                    ctx: r.ctx,
                    index: r.index,
                };
                self.send(r.from, msg);
            }
        }
    }

    /// The newest heartbeat round a majority of every voter set answered
    /// (this node counts as having answered every round).
    fn confirmed_round(&self) -> Option<u64> {
        let me = self.config.id;
        let progress = &self.progress;
        self.membership().quorum_value(|id| {
            if id == me {
                u64::MAX
            } else {
                progress.get(&id).map_or(0, |p| p.acked_seq)
            }
        })
    }

    pub(super) fn in_leader_lease(&self) -> bool {
        self.role == Role::Leader && self.leader == Some(self.config.id)
            || self.leader_seen_ms.is_some_and(|t| {
                self.leader.is_some() && self.now_ms < t + self.config.election_timeout_min_ms
            })
    }
}
