//! Leadership transfer: no new writes, the target caught up, then
//! `TimeoutNow`; given up after an election timeout.

use super::*;

impl Core {
    /// Hand leadership to `to`: stop taking writes, bring it up to date,
    /// then tell it to campaign at once. Gives up (and leads on) after an
    /// election timeout. Returns at once; watch `leader()`.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.config.id || !self.membership().voters.contains(&to) {
            return Err(TransferError::NotAMember(to));
        }
        tracing::info!(node = self.config.id, to, "transferring leadership");
        self.transfer = Some((to, self.now_ms + self.config.election_timeout_max_ms, false));
        self.maybe_hand_over();
        Ok(())
    }

    /// The transfer target, if a transfer is running.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.map(|(to, _, _)| to)
    }

    pub(super) fn maybe_hand_over(&mut self) {
        let Some((to, give_up, false)) = self.transfer else {
            return;
        };
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched >= self.last_index);
        if caught_up {
            self.transfer = Some((to, give_up, true));
            self.lease_forfeited = true;
            let term = self.hard.term;
            tracing::info!(
                node = self.config.id,
                to,
                "target caught up: telling it to campaign"
            );
            self.send(to, Message::TimeoutNow { term });
        }
    }
}
