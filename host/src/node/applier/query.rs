//! Queries: what the applier prepares (a read snapshot, the pending writes
//! shared, the loaded machine) and a query thread runs.

use super::views::{ActorView, SharedView};
use crate::sandbox::view::WriteSet;
use crate::sandbox::{LoadError, LoadedMachine, Sandbox, SandboxError};
use crate::storage::{StateStore, StorageError};
use crate::types::{Index, Outcome};
use std::sync::Arc;

/// Why a query failed before it reached a machine.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No such actor.
    #[error("no actor named {0:?}")]
    NoSuchActor(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Host-side sandbox failure.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The stored module no longer loads (engine changed).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The state was checkpointed between the query's preparation and its
    /// run: the pending writes it was handed no longer sit on the state it
    /// would read. Prepare it again.
    #[error("the state moved on since the query was prepared")]
    Stale,
}

/// A query taken at one applied index by [`Applier::prepare_query`],
/// runnable on any thread.
pub struct QueryJob {
    pub(super) sandbox: Sandbox,
    pub(super) machine: LoadedMachine,
    pub(super) actor: String,
    pub(super) state: StateStore,
    /// The durable applied index the pending writes sit on.
    pub(super) base: Index,
    pub(super) overlay: Arc<WriteSet>,
    pub(super) applied_index: Index,
}

impl QueryJob {
    /// The actor queried.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Run the query: its outcome and the applied index it reflects. It
    /// takes its read snapshot now (so a job waiting for a thread holds no
    /// LMDB reader); if a checkpoint passed since it was prepared, it reads
    /// the newer durable state alone (`Stale` if the actor was deployed
    /// anew meanwhile). A value that fails its checksum voids the answer
    /// (`StorageError::StateCorrupt`).
    pub fn run(self, request: &[u8]) -> Result<(Outcome, Index), QueryError> {
        let QueryJob {
            sandbox,
            machine,
            actor,
            state,
            base,
            overlay,
            applied_index,
        } = self;
        let snap = state.snapshot()?;
        let durable = snap.applied_index()?;
        let (overlay, applied_index) = if durable == base {
            (overlay, applied_index)
        } else {
            // A checkpoint (or a snapshot's install) passed since: it made
            // every write this query was handed durable, and perhaps more
            // — the state as of `durable` is at least as new as the one it
            // was prepared for, and complete without the pending writes.
            // Unless the actor was deployed anew meanwhile (its machine
            // would be the old one): then it is prepared again.
            let same_module = snap
                .actor(&actor)?
                .is_some_and(|r| r.module.as_slice() == machine.hash.as_slice());
            if durable < applied_index || !same_module {
                return Err(QueryError::Stale);
            }
            (Arc::new(WriteSet::new()), durable)
        };
        let view = SharedView { snap, overlay };
        let call = sandbox.query(&machine, &actor, ActorView::new(&actor, view), request);
        let (result, view): (Result<Outcome, QueryError>, SharedView) = match call {
            Ok(call) => (Ok(call.outcome), call.view.batch),
            Err(f) => (Err(f.error.into()), f.view.batch),
        };
        if let Some(e) = view.snap.corruption() {
            return Err(e.into());
        }
        Ok((result?, applied_index))
    }
}
