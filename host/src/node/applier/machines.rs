//! The machines an applier has loaded, by module hash.

use super::query::QueryError;
use crate::auth::hex;
use crate::sandbox::{LoadedMachine, ModuleHash, Sandbox};
use crate::storage::{StateBatch, StateSnapshot, StateStore, StorageError};
use std::collections::HashMap;

/// Loaded machines by module hash, loaded on first use: a registered native
/// stand-in, else the precompiled artifact (compiled and cached on a miss).
#[derive(Default)]
pub(super) struct MachineCache {
    pub(super) loaded: HashMap<ModuleHash, LoadedMachine>,
}

impl MachineCache {
    pub(super) fn load(
        &mut self,
        sandbox: &Sandbox,
        state: &StateStore,
        hash: &ModuleHash,
        component: impl FnOnce() -> Result<Option<Vec<u8>>, StorageError>,
    ) -> Result<LoadedMachine, QueryError> {
        if let Some(m) = self.loaded.get(hash) {
            return Ok(m.clone());
        }
        if let Some(m) = sandbox.native(hash) {
            self.loaded.insert(*hash, m.clone());
            return Ok(m);
        }
        let compat = sandbox.compatibility_hash();
        let bytes = component()?.ok_or_else(|| {
            StorageError::Invariant(format!("module {} missing from storage", hex(hash)))
        })?;
        let artifact = match state.artifact(hash, &compat)? {
            Some(a) => a,
            None => {
                let a = sandbox.precompile(&bytes)?;
                // Cache for the next start; losing it only costs a recompile.
                if let Err(e) = state.put_artifact(hash, &compat, &a) {
                    tracing::warn!(error = %e, "could not cache precompiled artifact");
                }
                a
            }
        };
        // SAFETY: the artifact was produced by this node's engine (same
        // compatibility hash in its key) and read from this node's storage.
        let m = unsafe { sandbox.load(&bytes, Some(&artifact)) }?;
        self.loaded.insert(*hash, m.clone());
        Ok(m)
    }

    /// The machine of `actor` as `batch` (pending deploys first) and the
    /// snapshot under `view` see it; `None` if there is no such actor.
    pub(super) fn of_actor(
        &mut self,
        sandbox: &Sandbox,
        state: &StateStore,
        actor: &str,
        snap: &StateSnapshot,
        batch: &StateBatch,
    ) -> Result<Option<LoadedMachine>, QueryError> {
        let record = match batch.actors.get(actor) {
            Some(r) => r.clone(),
            None => match snap.actor(actor)? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let hash = <ModuleHash>::try_from(record.module.as_slice()).map_err(|_| {
            StorageError::Invariant(format!("actor {actor} has a malformed module hash"))
        })?;
        let pending = batch.modules.get(&hash).cloned();
        self.load(sandbox, state, &hash, || match pending {
            Some(b) => Ok(Some(b)),
            None => snap.module(&hash),
        })
        .map(Some)
    }
}
