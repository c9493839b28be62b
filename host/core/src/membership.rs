//! A group's configuration: who votes, who only learns, where each member
//! listens — and how it changes, through the log, by joint consensus.
//!
//! A configuration is a log entry ([`crate::types::Payload::Config`]) and
//! is in effect on a node as soon as it is in that node's log, committed
//! or not (the Raft dissertation's rule, §4.1): the core counts votes and
//! acknowledgements with the last configuration of its log, and falls
//! back to the one before when a truncation removes it. A change of the
//! voters goes through a *joint* configuration (C_old,new: elections and
//! commits need a majority of the old voters *and* of the new), and only
//! once that is committed does the leader append C_new. So two
//! configurations in effect on two nodes at any moment always have
//! majorities that meet (BRIEF invariant 12), whatever the change: one
//! voter added, a swap of two, or several at once. Learners receive the
//! log and count for nothing. See docs/decisions.md, "Membership changes".

use crate::types::{ClientTag, Index, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most members a configuration holds (voters, old voters and learners
/// together): every one of them gets the log from the leader.
pub const MEMBERS_MAX: usize = 32;

/// Longest address of a member (`host:port`), in bytes.
pub const MEMBER_ADDRESS_BYTES_MAX: usize = 256;

/// Where a member listens (as other members and clients reach it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddrs {
    /// Address for other members (the peer port).
    pub peer: String,
    /// Address for clients (the client port).
    pub client: String,
}

/// A group's configuration at one position of its log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voters (C_new while joint).
    pub voters: BTreeSet<NodeId>,
    /// While joint (C_old,new): the voters of C_old. Elections and commits
    /// need a majority of both sets.
    #[serde(default)]
    pub old_voters: Option<BTreeSet<NodeId>>,
    /// Members that receive the log and count for nothing.
    #[serde(default)]
    pub learners: BTreeSet<NodeId>,
    /// Where each member listens (every voter, old voter and learner; a
    /// bootstrap configuration may leave them to the node's settings).
    #[serde(default)]
    pub addrs: BTreeMap<NodeId, MemberAddrs>,
    /// Learners the leader moves on once they have caught up (see
    /// [`Goal`]); the others stay learners until an operator says.
    #[serde(default)]
    pub catching_up: BTreeMap<NodeId, Goal>,
    /// The client request that produced this configuration: a retry of
    /// it is answered with this configuration, not applied twice.
    #[serde(default)]
    pub tag: Option<ClientTag>,
}

/// What the leader does with a learner once it has caught up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Goal {
    /// Promote it to voter (a member added as a voter, or joining).
    Vote,
    /// Swap it in for voter `out` in one change; if it has not caught up
    /// `catch_up_timeout_ms` after `since_ms` (the leader's clock when it
    /// was added), remove it again and keep `out`.
    Replace {
        /// The voter it replaces.
        out: NodeId,
        /// When it was added (the proposing leader's clock).
        since_ms: u64,
    },
}

/// One change of a configuration, as an operator asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new member. It starts as a learner either way; with `voter` the
    /// leader promotes it once it has caught up ([`Goal::Vote`]), so an
    /// empty member never counts for commit.
    Add {
        /// Its id (not in use).
        id: NodeId,
        /// Where it listens.
        addrs: MemberAddrs,
        /// Promote it once caught up.
        voter: bool,
    },
    /// A new member that replaces voter `out`: a learner first, swapped
    /// in for `out` once caught up ([`Goal::Replace`]).
    Replace {
        /// The voter to replace (typically dead).
        out: NodeId,
        /// The new member's id (not in use).
        id: NodeId,
        /// Where it listens.
        addrs: MemberAddrs,
    },
    /// A learner becomes a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// A voter becomes a learner (a member that lost its disk, brought
    /// back under its id in a new incarnation, catches up before it votes).
    Demote {
        /// The voter.
        id: NodeId,
    },
    /// A voter that lost its data (restarted on an empty directory, a
    /// new incarnation) comes back under its id: a learner first, its
    /// vote back once it has caught up ([`Goal::Vote`]).
    Rejoin {
        /// The voter.
        id: NodeId,
    },
    /// A member leaves.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// A voter out and a caught-up learner in, in one change (the learner
    /// was added beforehand; see `member replace`).
    Swap {
        /// The voter that leaves.
        out: NodeId,
        /// The learner that becomes a voter.
        into: NodeId,
    },
}

impl std::fmt::Display for MembershipChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipChange::Add { id, addrs, voter } => write!(
                f,
                "add node {id} as a learner{} (peer {}, client {})",
                if *voter {
                    " to promote once caught up"
                } else {
                    ""
                },
                addrs.peer,
                addrs.client
            ),
            MembershipChange::Replace { out, id, addrs } => write!(
                f,
                "add node {id} as a learner to replace voter {out} once caught up (peer {}, client {})",
                addrs.peer, addrs.client
            ),
            MembershipChange::Promote { id } => write!(f, "promote learner {id} to voter"),
            MembershipChange::Demote { id } => write!(f, "demote voter {id} to learner"),
            MembershipChange::Rejoin { id } => {
                write!(
                    f,
                    "demote voter {id} to a learner promoted again once caught up"
                )
            }
            MembershipChange::Remove { id } => write!(f, "remove node {id}"),
            MembershipChange::Swap { out, into } => {
                write!(f, "replace voter {out} with node {into}")
            }
        }
    }
}

/// Why a configuration change is refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes the configuration.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Where the leader is believed to be.
        leader: Option<NodeId>,
    },
    /// One change at a time.
    #[error("a configuration change is in progress (entry {index}); retry once it completes")]
    InProgress {
        /// The entry of the change in progress.
        index: Index,
    },
    /// A new leader first commits an entry of its own term.
    #[error("this leader has not yet committed an entry of its term; retry shortly")]
    NotSettled,
    /// The leader is handing over.
    #[error("leadership is being transferred to node {to}; retry there")]
    Transferring {
        /// The next leader.
        to: NodeId,
    },
    /// The id is taken.
    #[error("node {0} is already a member")]
    IdInUse(NodeId),
    /// Not a member (of the kind the change needs).
    #[error("node {id} is not {what}")]
    NotA {
        /// The node.
        id: NodeId,
        /// What it should be ("a member", "a learner", "a voter").
        what: &'static str,
    },
    /// The group would have no voter left.
    #[error("node {0} is the last voter: a group needs one")]
    LastVoter(NodeId),
    /// The leader removes itself only after handing over.
    #[error("node {0} leads: hand leadership over before removing or demoting it")]
    RemovesLeader(NodeId),
    /// The configuration would hold more than [`MEMBERS_MAX`] members.
    #[error("the group already has {0} members: at most MEMBERS_MAX = {MEMBERS_MAX}")]
    TooMany(usize),
    /// An address is missing or in use by another member.
    #[error("bad address for node {id}: {why}")]
    BadAddress {
        /// The node.
        id: NodeId,
        /// Why.
        why: String,
    },
}

impl Membership {
    /// A group of `voters`, with no addresses (a bootstrap configuration:
    /// the node's settings say where they listen).
    pub fn of_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// Whether elections and commits need two majorities (C_old,new).
    pub fn is_joint(&self) -> bool {
        self.old_voters.is_some()
    }

    /// The voter sets whose majorities count: C_new, and C_old while joint.
    pub fn voter_sets(&self) -> impl Iterator<Item = &BTreeSet<NodeId>> {
        std::iter::once(&self.voters).chain(self.old_voters.as_ref())
    }

    /// Whether `id` votes (in either set while joint).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voter_sets().any(|s| s.contains(&id))
    }

    /// Whether `id` is a learner (and not a voter).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) && !self.is_voter(id)
    }

    /// Whether `id` is in the configuration at all.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member: voters, old voters, learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.voter_sets().flatten().copied().collect();
        all.extend(self.learners.iter().copied());
        all
    }

    /// Every voter of either set.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voter_sets().flatten().copied().collect()
    }

    /// Whether the members `yes` selects hold a majority of every voter set.
    pub fn has_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        self.voter_sets().all(|set| {
            let n = set.iter().filter(|&&id| yes(id)).count();
            n > set.len() / 2
        })
    }

    /// Whether the members `no` selects make a majority of some voter set
    /// impossible to reach (an election lost).
    pub fn quorum_lost(&self, no: impl Fn(NodeId) -> bool) -> bool {
        self.voter_sets().any(|set| {
            let n = set.iter().filter(|&&id| no(id)).count();
            set.len() - n <= set.len() / 2
        })
    }

    /// The highest value that a majority of every voter set has reached,
    /// by `value` of each voter (a commit index from match indexes, a
    /// confirmed heartbeat round from acknowledged ones). `None` for a
    /// configuration without voters.
    pub fn quorum_value<T: Ord + Copy>(&self, value: impl Fn(NodeId) -> T) -> Option<T> {
        let mut out: Option<T> = None;
        for set in self.voter_sets() {
            let mut v: Vec<T> = set.iter().map(|&id| value(id)).collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            let reached = *v.get(set.len() / 2)?;
            out = Some(out.map_or(reached, |o| o.min(reached)));
        }
        out
    }

    /// Whether the peers in `heard` meet every majority of every voter set
    /// (`me` excluded: it is the one asking). Never for a configuration
    /// without voters (not known yet).
    pub fn meets_every_majority(&self, heard: &BTreeSet<NodeId>) -> bool {
        !self.voters.is_empty()
            && self.voter_sets().all(|set| {
                let n = set.iter().filter(|id| heard.contains(id)).count();
                // |heard ∩ set| + a majority of set > |set|
                n + set.len() / 2 + 1 > set.len()
            })
    }

    /// The configuration with `change` made, as the leader appends it
    /// next: a joint configuration when the voters change, else the new
    /// one directly. `leader` is who asks (it cannot remove itself).
    /// Checks what the change alone can get wrong; the caller checks that
    /// no other change is in progress.
    /// `now_ms` is the leader's clock (a replacement's start).
    pub fn changed(
        &self,
        change: &MembershipChange,
        leader: NodeId,
        tag: Option<ClientTag>,
        now_ms: u64,
    ) -> Result<Membership, MembershipError> {
        debug_assert!(!self.is_joint(), "one change at a time");
        let mut voters = self.voters.clone();
        let mut learners = self.learners.clone();
        let mut addrs = self.addrs.clone();
        let mut catching_up = self.catching_up.clone();
        match change {
            MembershipChange::Add {
                id,
                addrs: a,
                voter,
            } => {
                if self.contains(*id) {
                    return Err(MembershipError::IdInUse(*id));
                }
                self.check_addrs(*id, a)?;
                learners.insert(*id);
                if *voter {
                    catching_up.insert(*id, Goal::Vote);
                }
                addrs.insert(*id, a.clone());
            }
            MembershipChange::Replace { out, id, addrs: a } => {
                if !self.voters.contains(out) {
                    return Err(MembershipError::NotA {
                        id: *out,
                        what: "a voter",
                    });
                }
                if *out == leader {
                    return Err(MembershipError::RemovesLeader(*out));
                }
                if self.contains(*id) {
                    return Err(MembershipError::IdInUse(*id));
                }
                self.check_addrs(*id, a)?;
                learners.insert(*id);
                catching_up.insert(
                    *id,
                    Goal::Replace {
                        out: *out,
                        since_ms: now_ms,
                    },
                );
                addrs.insert(*id, a.clone());
            }
            MembershipChange::Promote { id } => {
                if !self.is_learner(*id) {
                    return Err(MembershipError::NotA {
                        id: *id,
                        what: "a learner",
                    });
                }
                learners.remove(id);
                catching_up.remove(id);
                voters.insert(*id);
            }
            MembershipChange::Demote { id } | MembershipChange::Rejoin { id } => {
                if !self.voters.contains(id) {
                    return Err(MembershipError::NotA {
                        id: *id,
                        what: "a voter",
                    });
                }
                if *id == leader {
                    return Err(MembershipError::RemovesLeader(*id));
                }
                if self.voters.len() == 1 {
                    return Err(MembershipError::LastVoter(*id));
                }
                voters.remove(id);
                learners.insert(*id);
                if matches!(change, MembershipChange::Rejoin { .. }) {
                    catching_up.insert(*id, Goal::Vote);
                }
            }
            MembershipChange::Remove { id } => {
                if !self.contains(*id) {
                    return Err(MembershipError::NotA {
                        id: *id,
                        what: "a member",
                    });
                }
                if *id == leader {
                    return Err(MembershipError::RemovesLeader(*id));
                }
                if self.voters.len() == 1 && self.voters.contains(id) {
                    return Err(MembershipError::LastVoter(*id));
                }
                voters.remove(id);
                learners.remove(id);
                catching_up.remove(id);
                catching_up.retain(|_, g| !matches!(g, Goal::Replace { out, .. } if out == id));
            }
            MembershipChange::Swap { out, into } => {
                if !self.voters.contains(out) {
                    return Err(MembershipError::NotA {
                        id: *out,
                        what: "a voter",
                    });
                }
                if !self.is_learner(*into) {
                    return Err(MembershipError::NotA {
                        id: *into,
                        what: "a learner",
                    });
                }
                if *out == leader {
                    return Err(MembershipError::RemovesLeader(*out));
                }
                voters.remove(out);
                learners.remove(into);
                catching_up.remove(into);
                voters.insert(*into);
            }
        }
        let old_voters = (voters != self.voters).then(|| self.voters.clone());
        let mut next = Membership {
            voters,
            old_voters,
            learners,
            addrs,
            catching_up,
            tag,
        };
        // A voter on its way out keeps its address while the joint
        // configuration holds it (the leader still ships it the log).
        let members = next.members();
        next.addrs.retain(|id, _| members.contains(id));
        Ok(next)
    }

    /// C_new of a joint configuration: the old voters leave; the ones no
    /// longer voters and not learners leave entirely.
    pub fn leave_joint(&self) -> Membership {
        let mut next = self.clone();
        next.old_voters = None;
        let members = next.members();
        next.addrs.retain(|id, _| members.contains(id));
        next.catching_up.retain(|id, _| next.learners.contains(id));
        next
    }

    fn check_addrs(&self, id: NodeId, a: &MemberAddrs) -> Result<(), MembershipError> {
        let bad = |why: String| Err(MembershipError::BadAddress { id, why });
        if a.peer.is_empty() || a.client.is_empty() {
            return bad("both a peer and a client address are needed".into());
        }
        if a.peer.len().max(a.client.len()) > MEMBER_ADDRESS_BYTES_MAX {
            return bad(format!(
                "an address is over MEMBER_ADDRESS_BYTES_MAX = {MEMBER_ADDRESS_BYTES_MAX} bytes"
            ));
        }
        let members = self.members().len();
        if members >= MEMBERS_MAX {
            return Err(MembershipError::TooMany(members));
        }
        if a.peer == a.client {
            return bad("the peer and client addresses must differ".into());
        }
        for (&other, o) in &self.addrs {
            for addr in [&a.peer, &a.client] {
                if *addr == o.peer || *addr == o.client {
                    return bad(format!("{addr} is already node {other}'s"));
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |s: &BTreeSet<NodeId>| {
            s.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "voters {{{}}}", list(&self.voters))?;
        if let Some(old) = &self.old_voters {
            write!(f, " joint with old voters {{{}}}", list(old))?;
        }
        if !self.learners.is_empty() {
            write!(f, ", learners {{{}}}", list(&self.learners))?;
        }
        Ok(())
    }
}

/// The configurations of a node's log that can still be in effect: the
/// last one at or below the commit index (never truncated), then every
/// later one (in effect until a truncation removes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipLog {
    entries: Vec<(Index, Membership)>,
}

impl MembershipLog {
    /// A log whose configuration is `base`, at `index` (0: bootstrap).
    pub fn new(index: Index, base: Membership) -> Self {
        MembershipLog {
            entries: vec![(index, base)],
        }
    }

    /// From the configurations a durable log holds, oldest first (the
    /// first one at or below the applied index). Empty: `bootstrap`.
    pub fn from_entries(entries: Vec<(Index, Membership)>, bootstrap: Membership) -> Self {
        if entries.is_empty() {
            return MembershipLog::new(0, bootstrap);
        }
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        MembershipLog { entries }
    }

    /// The configuration in effect, and its index.
    pub fn current(&self) -> (Index, &Membership) {
        let (i, m) = self.entries.last().expect("never empty");
        (*i, m)
    }

    /// A configuration entry was appended at `index`.
    pub fn appended(&mut self, index: Index, m: Membership) {
        debug_assert!(index > self.current().0);
        self.entries.push((index, m));
    }

    /// The log was cut at `index` (that entry and after are gone).
    /// Returns whether the configuration in effect changed.
    pub fn truncated(&mut self, index: Index) -> bool {
        let before = self.entries.len();
        while self.entries.len() > 1 && self.entries.last().expect("non-empty").0 >= index {
            self.entries.pop();
        }
        debug_assert!(
            self.entries[0].0 < index || index == 0,
            "a committed configuration is never truncated"
        );
        self.entries.len() != before
    }

    /// Everything up to `commit` is committed: only the last
    /// configuration at or below it is needed from there on.
    pub fn committed(&mut self, commit: Index) {
        let keep_from = self
            .entries
            .iter()
            .rposition(|(i, _)| *i <= commit)
            .unwrap_or(0);
        self.entries.drain(..keep_from);
    }

    /// The log was replaced by a snapshot at `index` holding `m`.
    pub fn reset(&mut self, index: Index, m: Membership) {
        self.entries = vec![(index, m)];
    }

    /// The newest configuration at or below `index` (the one a snapshot
    /// of the state at `index` carries).
    pub fn at(&self, index: Index) -> Option<&Membership> {
        self.entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, m)| m)
    }

    /// Whether the configuration in effect is committed (`commit` is the
    /// commit index).
    pub fn current_committed(&self, commit: Index) -> bool {
        self.current().0 <= commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u64) -> MemberAddrs {
        MemberAddrs {
            peer: format!("p{n}"),
            client: format!("c{n}"),
        }
    }

    #[test]
    fn a_joint_configuration_needs_a_majority_of_both_sets() {
        let old = Membership::of_voters([1, 2, 3]);
        let add = MembershipChange::Add {
            id: 4,
            addrs: addrs(4),
            voter: true,
        };
        // Added as a learner first, to promote once caught up.
        let learner = old.changed(&add, 1, None, 0).unwrap();
        assert!(!learner.is_joint());
        assert!(learner.is_learner(4));
        assert_eq!(learner.catching_up.get(&4), Some(&Goal::Vote));
        let joint = learner
            .changed(&MembershipChange::Promote { id: 4 }, 1, None, 0)
            .unwrap();
        assert!(joint.is_joint());
        // {1,2} is a majority of C_old but not of C_new = {1,2,3,4}.
        assert!(!joint.has_quorum(|id| id == 1 || id == 2));
        assert!(joint.has_quorum(|id| [1, 2, 4].contains(&id)));
        assert_eq!(
            joint.quorum_value(|id| [0, 10, 9, 8, 7][id as usize]),
            Some(8)
        );
        let new = joint.leave_joint();
        assert!(!new.is_joint());
        assert_eq!(new.voters.len(), 4);
    }

    #[test]
    fn a_swap_goes_through_a_joint_configuration() {
        let mut m = Membership::of_voters([1, 2, 3]);
        m.learners.insert(4);
        let joint = m
            .changed(&MembershipChange::Swap { out: 3, into: 4 }, 1, None, 0)
            .unwrap();
        assert_eq!(joint.old_voters, Some([1, 2, 3].into()));
        assert_eq!(joint.voters, [1, 2, 4].into());
        // {1,3} is a majority of the old set only; {2,4} of the new only.
        assert!(!joint.has_quorum(|id| id == 1 || id == 3));
        assert!(!joint.has_quorum(|id| id == 2 || id == 4));
        assert!(joint.has_quorum(|id| id == 1 || id == 2));
        assert!(!joint.leave_joint().contains(3));
    }

    #[test]
    fn a_voter_on_its_way_out_keeps_its_address_until_c_new() {
        let mut m = Membership::of_voters([1, 2, 3]);
        m.addrs = (1..=3).map(|i| (i, addrs(i))).collect();
        let joint = m
            .changed(&MembershipChange::Remove { id: 3 }, 1, None, 0)
            .unwrap();
        assert!(joint.is_joint());
        assert_eq!(joint.addrs.get(&3), Some(&addrs(3)));
        assert_eq!(joint.leave_joint().addrs.get(&3), None);
    }

    #[test]
    fn bad_changes_are_refused() {
        let m = Membership::of_voters([1]);
        let remove = MembershipChange::Remove { id: 1 };
        assert_eq!(
            m.changed(&remove, 2, None, 0),
            Err(MembershipError::LastVoter(1))
        );
        assert_eq!(
            m.changed(&remove, 1, None, 0),
            Err(MembershipError::RemovesLeader(1))
        );
        let add = MembershipChange::Add {
            id: 1,
            addrs: addrs(1),
            voter: false,
        };
        assert_eq!(
            m.changed(&add, 1, None, 0),
            Err(MembershipError::IdInUse(1))
        );
        let promote = MembershipChange::Promote { id: 7 };
        assert!(matches!(
            m.changed(&promote, 1, None, 0),
            Err(MembershipError::NotA { id: 7, .. })
        ));
    }

    #[test]
    fn members_and_addresses_are_bounded_at_and_one_past() {
        let at = MemberAddrs {
            peer: "p".repeat(MEMBER_ADDRESS_BYTES_MAX),
            client: "c".repeat(MEMBER_ADDRESS_BYTES_MAX),
        };
        let add = |id, addrs| MembershipChange::Add {
            id,
            addrs,
            voter: false,
        };
        let m = Membership::of_voters([1]);
        assert!(m.changed(&add(2, at.clone()), 1, None, 0).is_ok());
        let past = MemberAddrs {
            peer: "p".repeat(MEMBER_ADDRESS_BYTES_MAX + 1),
            ..at
        };
        let e = m.changed(&add(2, past), 1, None, 0).unwrap_err();
        assert!(e.to_string().contains("MEMBER_ADDRESS_BYTES_MAX"), "{e}");
        // One short of the limit: the last member fits, the next does not.
        let mut full = Membership::of_voters([1]);
        full.learners = (2..MEMBERS_MAX as u64).collect();
        assert_eq!(full.members().len(), MEMBERS_MAX - 1);
        let last = full.changed(&add(100, addrs(100)), 1, None, 0).unwrap();
        assert_eq!(last.members().len(), MEMBERS_MAX);
        assert_eq!(
            last.changed(&add(101, addrs(101)), 1, None, 0),
            Err(MembershipError::TooMany(MEMBERS_MAX))
        );
    }

    #[test]
    fn the_membership_log_falls_back_when_truncated() {
        let mut log = MembershipLog::new(0, Membership::of_voters([1, 2, 3]));
        log.appended(5, Membership::of_voters([1, 2, 3, 4]));
        assert_eq!(log.current().0, 5);
        assert!(log.truncated(5));
        assert_eq!(log.current().0, 0);
        log.appended(6, Membership::of_voters([1, 2]));
        log.committed(6);
        assert_eq!(log.current().0, 6);
        assert!(!log.truncated(7));
    }
}
