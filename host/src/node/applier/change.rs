//! What applying one entry changes (`Change`: outcome, prefixed writes,
//! sessions, actors, modules), the digest chained over it, and the check
//! an `Effects` entry of the row log kind must pass.

use crate::access;
use crate::codec;
use crate::sandbox::view::WriteSet;
use crate::sandbox::{ModuleHash, Sandbox};
use crate::storage::{ActorRecord, StateBatch, session_key};
use crate::types::{ClientTag, Effects, Index, Outcome, validate_actor_name};
use serde_bytes::ByteBuf;

/// Chain `digest` over one entry's index and prefixed write-set.
pub fn chain_digest(digest: &[u8; 32], index: Index, writes: &WriteSet) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(digest);
    h.update(&index.to_be_bytes());
    for (k, v) in writes {
        h.update(&(k.len() as u64).to_be_bytes());
        h.update(k);
        match v {
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_be_bytes());
                h.update(v);
            }
            None => {
                h.update(&[0]);
            }
        }
    }
    *h.finalize().as_bytes()
}

/// What applying one entry changes.
#[derive(Clone, Debug)]
pub(super) struct Change {
    pub(super) outcome: Outcome,
    /// Prefixed kv writes.
    pub(super) writes: WriteSet,
    /// A new exactly-once record under this tag.
    pub(super) session: Option<ClientTag>,
    /// A deployed actor: name, module hash, component bytes.
    pub(super) deploy: Option<(String, ModuleHash, Vec<u8>)>,
}

impl Change {
    pub(super) fn of_outcome(outcome: Outcome) -> Change {
        Change {
            outcome,
            writes: WriteSet::new(),
            session: None,
            deploy: None,
        }
    }

    /// Record everything but the kv writes (which go through the view).
    pub(super) fn fold_into(&self, batch: &mut StateBatch, index: Index) {
        if let Some(tag) = self.session {
            batch.sessions.insert(
                session_key(tag.client_id, tag.seq),
                Some(codec::encode(&self.outcome)),
            );
            let below = batch.session_prunes.entry(tag.client_id).or_insert(0);
            *below = (*below).max(tag.acked_below.min(tag.seq));
        }
        if let Some((actor, hash, component)) = &self.deploy {
            batch.modules.insert(*hash, component.clone());
            batch.actors.insert(
                actor.clone(),
                ActorRecord {
                    module: hash.to_vec(),
                    deployed_at: index,
                },
            );
        }
    }

    pub(super) fn to_effects(&self) -> Effects {
        Effects {
            outcome: self.outcome.clone(),
            writes: self
                .writes
                .iter()
                .map(|(k, v)| (ByteBuf::from(k.clone()), v.clone().map(ByteBuf::from)))
                .collect(),
            session: self.session,
            deploy: self
                .deploy
                .as_ref()
                .map(|(a, _, c)| (a.clone(), ByteBuf::from(c.clone()))),
        }
    }

    /// The change an Effects entry describes. Effects are made by a
    /// leader's sandbox, which keeps every limit; if an entry breaks one
    /// anyway (a host bug, a foreign leader), it is committed everywhere as
    /// the same refusal, never written into LMDB where it would halt the
    /// node (BRIEF invariant 9).
    pub(super) fn from_effects(fx: &Effects) -> Change {
        if let Err(why) = check_effects(fx) {
            tracing::error!(reason = %why, "an effects entry breaks a limit; committed as refused");
            return Change {
                session: fx.session,
                ..Change::of_outcome(Outcome::Trapped {
                    trap: INVALID_EFFECTS.to_string(),
                })
            };
        }
        Change {
            outcome: fx.outcome.clone(),
            writes: fx
                .writes
                .iter()
                .map(|(k, v)| (k.to_vec(), v.as_ref().map(|v| v.to_vec())))
                .collect(),
            session: fx.session,
            deploy: fx
                .deploy
                .as_ref()
                .map(|(a, c)| (a.clone(), Sandbox::hash(c), c.to_vec())),
        }
    }
}

/// The trap kind of an Effects entry that breaks a limit.
pub const INVALID_EFFECTS: &str = "invalid-effects";

/// Whether an Effects entry keeps the limits its leader's sandbox keeps.
pub(super) fn check_effects(fx: &Effects) -> Result<(), InvalidEffects> {
    use crate::limits::{LMDB_KEY_BYTES_MAX, MODULE_BYTES_MAX, VALUE_BYTES_MAX};
    for (k, v) in &fx.writes {
        // A prefixed key: length byte, a valid actor name, then the key.
        let name_len = *k.first().ok_or(InvalidEffects::EmptyKey)? as usize;
        let name = k
            .get(1..1 + name_len)
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or(InvalidEffects::NoActorPrefix)?;
        // The group's own records (auth, audit) are written by the
        // leader's host, never by a machine.
        if name != access::SYSTEM_NAMESPACE {
            validate_actor_name(name)?;
        }
        if k.len() > LMDB_KEY_BYTES_MAX {
            return Err(InvalidEffects::KeyTooLong(k.len()));
        }
        if v.as_ref().is_some_and(|v| v.len() > VALUE_BYTES_MAX) {
            return Err(InvalidEffects::ValueTooLarge);
        }
    }
    if let Some((actor, component)) = &fx.deploy {
        validate_actor_name(actor)?;
        if component.len() > MODULE_BYTES_MAX {
            return Err(InvalidEffects::ModuleTooLarge);
        }
    }
    Ok(())
}

/// Why an Effects entry breaks the limits its leader's sandbox keeps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum InvalidEffects {
    #[error("an empty key")]
    EmptyKey,
    #[error("a key without an actor prefix")]
    NoActorPrefix,
    #[error(transparent)]
    BadName(#[from] crate::types::BadActorName),
    #[error("a key of {0} bytes")]
    KeyTooLong(usize),
    #[error("a value over VALUE_BYTES_MAX")]
    ValueTooLarge,
    #[error("a module over MODULE_BYTES_MAX")]
    ModuleTooLarge,
}

/// The digest is sampled at every index that is a multiple of this, so
/// nodes can compare their state at the same point of the log.
pub const DIGEST_SAMPLE_EVERY: Index = 64;
