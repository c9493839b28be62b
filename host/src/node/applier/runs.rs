//! Runs: commands share their actor's Wasm instance within a window of
//! [`RUN_WINDOW`] indexes of one term, cut by the log alone so every replica
//! runs the same commands in the same runs.

use crate::types::{Entry, Index, Term};
use std::collections::HashMap;

/// Commands share their actor's instance within a run: the entries of one
/// window of this many indexes (`k·W + 1 ..= (k+1)·W`) and of one term. A
/// deploy of the actor, or a call that does not end normally, ends its
/// instance sooner. Runs are cut by the log alone, so every replica runs
/// the same entries in the same runs; part of the log format (changing it
/// changes what machines compute). Reuse takes a call from ≈ 6 µs (a fresh
/// instance) to ≈ 1.2 µs.
pub const RUN_WINDOW: Index = 64;

/// Most instances one chain of runs keeps: a command for one more actor
/// first drops the one used longest ago (by log index, so every replica
/// drops the same). Two chains (applier and speculation) plus a query
/// stay well inside the sandbox's pool of 64 instances.
pub const RUN_ACTORS_MAX: usize = 16;

/// Whether `index` opens a window of [`RUN_WINDOW`] entries.
pub fn opens_window(index: Index) -> bool {
    index >= 1 && (index - 1).is_multiple_of(RUN_WINDOW)
}

/// One chain of runs: the instances its commands share, and where it is.
#[derive(Default)]
pub(super) struct Run {
    /// The index this chain can run next (0: none; it can only start at a
    /// window start).
    pub(super) next: Index,
    /// The term of the entry before `next`, if this chain ran it.
    pub(super) term: Option<Term>,
    /// Kept instances by actor, with the index of their last call.
    pub(super) warm: HashMap<String, (crate::sandbox::Warm, Index)>,
}

/// Which chain of runs executes an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chain {
    /// The applier's: committed entries, in log order.
    Applied,
    /// The leader's ahead-of-commit execution.
    Speculated,
}

impl Chain {
    /// This chain's runs, of the applier's two.
    pub(super) fn of<'a>(self, applied: &'a mut Run, speculated: &'a mut Run) -> &'a mut Run {
        match self {
            Chain::Applied => applied,
            Chain::Speculated => speculated,
        }
    }
}

impl Run {
    /// A chain that continues after `index`, a window end (or 0).
    pub(super) fn after(index: Index) -> Run {
        Run {
            next: index + 1,
            term: None,
            warm: HashMap::new(),
        }
    }

    /// Move to entry `e`, whose term started at `term_start` if known (the
    /// index of its leader's no-op: the core always starts a term so);
    /// false if this chain cannot run `e` the way every replica runs it (it
    /// did not run the commands of `e`'s run before `e`).
    pub(super) fn enter(&mut self, e: &Entry, term_start: Option<Index>) -> bool {
        // The entry at `term_start` is the new leader's no-op: a run that
        // starts there has made no call before the entry after it.
        let starts = opens_window(e.index)
            || term_start.is_some_and(|t| e.index == t || e.index == t + 1)
            || (self.next == e.index && self.term.is_some_and(|t| t != e.term));
        if starts {
            self.warm.clear();
        } else if self.next != e.index {
            *self = Run::default();
            return false;
        }
        self.next = e.index + 1;
        self.term = Some(e.term);
        true
    }

    /// Start over at `e` with fresh instances, whatever came before (row
    /// log kind: only the leader runs commands, and logs what they did).
    pub(super) fn restart(&mut self, e: &Entry) {
        self.warm.clear();
        self.next = e.index + 1;
        self.term = Some(e.term);
    }
}
