//! A member that lost its data directory: it learns the terms its old
//! incarnation may have used and the log position every entry committed
//! before the loss reaches (its recovery floor), votes only for logs at
//! least that up-to-date, and campaigns only once its own log reaches it.

use super::*;

impl Core {
    /// This node came back without its data (a peer knew it under another
    /// incarnation). Until it has heard from enough peers (their terms and
    /// log positions, [`Core::hello_answered`]) it neither votes nor
    /// campaigns; then it holds its vote in the highest term they told,
    /// votes only for candidates whose log is at least as up-to-date as
    /// the most up-to-date of theirs, and campaigns once its own durable
    /// log is. The shell persists [`Core::recovery_floor`] and passes it
    /// again after a restart (with [`Core::restore_recovering`]).
    pub fn told_lost_data(&mut self) {
        if self.lost_terms.is_none() {
            self.lost_terms = Some((BTreeSet::new(), self.hard.term));
        }
        // A campaign started before it knew ends here.
        if matches!(self.role, Role::PreCandidate | Role::Candidate) {
            self.become_follower(self.hard.term, None);
        }
    }

    /// After a restart: what the shell persisted of a data loss — the log
    /// position a candidate must reach for this node's vote (and its own
    /// log before it campaigns), and whether the terms were learned (see
    /// [`Core::lost_terms_pending`]).
    pub fn restore_recovering(&mut self, floor: (Term, Index), terms_known: bool) {
        if !terms_known && self.lost_terms.is_none() {
            self.lost_terms = Some((BTreeSet::new(), self.hard.term));
        }
        self.raise_recovery_floor(floor);
    }

    /// See `recovery_floor`; the shell persists it with the hard state.
    pub fn recovery_floor(&self) -> (Term, Index) {
        self.recovery_floor
    }

    /// Whether this node, told it lost its data, has yet to learn the terms
    /// its old incarnation may have used (the shell persists the change).
    pub fn lost_terms_pending(&self) -> bool {
        self.lost_terms.is_some()
    }

    pub(super) fn raise_recovery_floor(&mut self, floor: (Term, Index)) {
        if floor > self.recovery_floor {
            tracing::warn!(
                node = self.config.id,
                term = floor.0,
                index = floor.1,
                held = self.persisted_index,
                "this node lost its data: it votes only for logs at least this up-to-date"
            );
            self.recovery_floor = floor;
        }
    }

    /// While this node is recovering from lost data: the index its log
    /// must reach before it campaigns again.
    pub fn recovering_until(&self) -> Option<Index> {
        self.recovering().then_some(self.recovery_floor.1)
    }

    pub(super) fn recovering(&self) -> bool {
        self.lost_terms.is_some() || self.durable_position() < self.recovery_floor
    }

    /// A told-lost node heard `msg` from `from`: see [`Core::lost_terms`].
    pub(super) fn learn_lost_terms(&mut self, from: NodeId, msg: &Message) {
        // A pre-vote request proposes its sender's term + 1; a pre-vote
        // answer may carry a proposed term too (this node does not ask).
        // Only vote requests carry the sender's log position.
        let (term, position) = match msg {
            Message::Vote {
                pre,
                term,
                last_index,
                last_term,
                ..
            } => (
                if *pre { term.saturating_sub(1) } else { *term },
                Some((*last_term, *last_index)),
            ),
            Message::VoteResponse { pre: true, .. } => return,
            other => (other.term(), None),
        };
        self.learn_term(from, term, position);
    }

    /// `peer` answered this node's hello (the transport's), being in
    /// `term` with its log at `position` (last term, last index): a
    /// told-lost node learns both from it.
    pub fn hello_answered(&mut self, peer: NodeId, term: Term, position: (Term, Index)) {
        if peer != self.config.id && self.config.members.contains(&peer) {
            self.hello_from.insert(peer);
            self.learn_term(peer, term, Some(position));
        }
    }

    /// Whether `peer` answered this node's hello since it started (see
    /// `hello_from`).
    pub fn heard_hello_from(&self, peer: NodeId) -> bool {
        self.hello_from.contains(&peer)
    }

    pub(super) fn learn_term(&mut self, from: NodeId, term: Term, position: Option<(Term, Index)>) {
        let needed = self.config.members.len() - self.quorum() + 1;
        let Some((heard, max_term)) = self.lost_terms.as_mut() else {
            return;
        };
        *max_term = (*max_term).max(term);
        // A peer counts once its log position is known: the positions of
        // `needed` peers bound every entry committed before the loss.
        let Some(position) = position else {
            return;
        };
        heard.insert(from);
        let heard_enough = heard.len() >= needed;
        self.raise_recovery_floor(position);
        if !heard_enough {
            return;
        }
        let Some((_, max_term)) = self.lost_terms else {
            return;
        };
        let term = max_term;
        self.lost_terms = None;
        if term > self.hard.term || self.hard.vote.is_none() {
            let term = term.max(self.hard.term);
            tracing::info!(
                node = self.config.id,
                term,
                "heard from enough peers after losing its data: holding its vote in term {term}"
            );
            self.set_hard_state(term, Some(self.config.id));
            if self.role != Role::Follower {
                self.become_follower(term, None);
            }
        }
    }

    /// `peer` came back without its data (a new incarnation): as leader,
    /// forget what it held and ship it everything again (a snapshot if
    /// the log was compacted), from its real position.
    pub fn peer_lost_data(&mut self, peer: NodeId, log: &impl LogRead) {
        let until = self.now_ms + self.config.election_timeout_max_ms;
        self.lost_data.insert(peer, until);
        if self.hard.vote == Some(peer) {
            self.vote_void = true;
        }
        if self.votes.get(&peer) == Some(&true) {
            self.votes.insert(peer, false);
        }
        if self.role != Role::Leader {
            return;
        }
        let next = self.last_index + 1;
        let now = self.now_ms;
        if let Some(pr) = self.progress.get_mut(&peer) {
            tracing::warn!(
                node = self.config.id,
                peer,
                held = pr.matched,
                "a follower lost its data; catching it up from the start"
            );
            *pr = Progress::fresh(next, now);
            self.send_append(peer, log, false);
        }
    }
}
