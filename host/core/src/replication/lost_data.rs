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
            self.lost_terms = Some((BTreeMap::new(), self.hard.term));
        }
        self.distrust_bootstrap();
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
            self.lost_terms = Some((BTreeMap::new(), self.hard.term));
        }
        if !terms_known || floor != (0, 0) {
            self.distrust_bootstrap();
        }
        self.raise_recovery_floor(floor);
    }

    /// A node that lost its data does not know its group's configuration:
    /// the bootstrap member list it was started with may be long out of
    /// date (members added, removed, replaced since). Until its log (or a
    /// snapshot) gives it one, it has none: it counts no votes, and its
    /// peers' answers cannot meet every majority (see `learn_term`).
    pub(super) fn distrust_bootstrap(&mut self) {
        if self.membership_index() == 0 && !self.membership().voters.is_empty() {
            tracing::warn!(
                node = self.config.id,
                "this node lost its data: its bootstrap member list is not trusted; \
                 it waits for the group's configuration from the log"
            );
            self.memberships = MembershipLog::new(0, Membership::default());
        }
    }

    /// A configuration arrived while learning the terms lost: the peers
    /// heard so far may now be enough.
    pub(super) fn recheck_lost_terms(&mut self) {
        if self.lost_terms.is_some() {
            self.learn_term(self.config.id, 0, None);
        }
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
    /// With `membership`, the configuration in effect there and its
    /// index: a node that lost its data, and so its configuration, counts
    /// the peers it heard against the newest one reported (see
    /// `learn_term`).
    pub fn hello_answered(
        &mut self,
        peer: NodeId,
        term: Term,
        position: (Term, Index),
        membership: (Index, Membership),
    ) {
        if peer != self.config.id {
            self.hello_from.insert(peer);
            // The newest; at one index, one that names voters (a peer
            // that lost its data too reports none).
            let rank = |(i, m): &(Index, Membership)| (*i, !m.voters.is_empty());
            if self
                .reported_membership
                .as_ref()
                .is_none_or(|r| rank(&membership) > rank(r))
            {
                self.reported_membership = Some(membership);
            }
            self.learn_term(peer, term, Some(position));
        }
    }

    /// Whether `peer` answered this node's hello since it started (see
    /// `hello_from`).
    pub fn heard_hello_from(&self, peer: NodeId) -> bool {
        self.hello_from.contains(&peer)
    }

    pub(super) fn learn_term(&mut self, from: NodeId, term: Term, position: Option<(Term, Index)>) {
        let Some((heard, max_term)) = self.lost_terms.as_mut() else {
            return;
        };
        *max_term = (*max_term).max(term);
        // A peer counts once its log position is known: the positions of
        // the voters among peers that meet every majority bound every
        // entry committed before the loss.
        if let Some(position) = position {
            let held = heard.entry(from).or_insert(position);
            *held = (*held).max(position);
        }
        let Some((heard, _)) = self.lost_terms.as_ref() else {
            return;
        };
        // The configuration to count with: this node's own (from its log),
        // else the newest its peers reported. Every entry committed
        // before the loss is held by a majority of the newest committed
        // configuration (and of every later one): peers meeting every
        // majority of it bound them all. (If the only peers that answer
        // were removed long ago and report an older configuration, that
        // bound can fall short: docs/decisions.md, "A member that lost
        // its data".)
        let own = self.memberships.current();
        let membership = match &self.reported_membership {
            Some((i, m)) if own.0 == 0 || *i > own.0 => m,
            _ => own.1,
        };
        let heard_ids: BTreeSet<NodeId> = heard.keys().copied().collect();
        if !membership.meets_every_majority(&heard_ids) {
            return;
        }
        // The floor: the most up-to-date voter's log. Not a learner's: a
        // learner can hold a tail no voter has (entries a leader sent
        // before it lost its leadership, never committed), which no
        // candidate could then reach — no leader, for good. Every
        // committed entry is on some voter heard (they meet every
        // majority), so the voters' positions bound them all.
        let voters = membership.all_voters();
        let floor = heard
            .iter()
            .filter(|(p, _)| voters.contains(p))
            .map(|(_, pos)| *pos)
            .max()
            .unwrap_or((0, 0));
        let Some((_, max_term)) = self.lost_terms.take() else {
            return;
        };
        self.raise_recovery_floor(floor);
        let term = max_term;
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
