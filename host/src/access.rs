//! The host side of [`crate::auth`]: the auth state a node last applied,
//! shared with its connections; tokens (made, parsed, verified against
//! their hash); certificate fingerprints; the audit trail's records and
//! where the group's own records live in the state.
//!
//! Tokens are 256-bit random secrets; the state keeps only their BLAKE3
//! hash. A fast hash is enough for secrets this long (no password to
//! guess), and keeps a per-connection check cheap. Hashes are compared in
//! constant time.

use crate::auth::{AuthState, Denied, Principal};
use crate::types::Index;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

/// The namespace of the group's own records in the state's key-value
/// table. Not a valid actor name (those start with a letter), so no
/// machine can read or write it.
pub const SYSTEM_NAMESPACE: &str = "_system";
/// Most audit records a group keeps (the oldest is overwritten).
pub const AUDIT_RECORDS_MAX: u64 = 10_000;
/// Printed tokens start with this.
pub const TOKEN_PREFIX: &str = "ust_";
/// Bytes of a token's secret.
const SECRET_BYTES: usize = 32;

/// State key of the auth state.
pub fn auth_key() -> Vec<u8> {
    crate::storage::actor_key(SYSTEM_NAMESPACE, b"auth")
}

/// State key of the index of the last auth change: entries read it (8
/// bytes) to know whether the auth state they hold decoded is current,
/// instead of reading the whole state for every command.
pub fn auth_version_key() -> &'static [u8] {
    static KEY: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| crate::storage::actor_key(SYSTEM_NAMESPACE, b"auth-version"));
    &KEY
}

/// State key of the group's configuration as of the applied index (see
/// [`understudy_core::membership`]): a snapshot carries it, and a node
/// that completes an interrupted install reads it back.
pub fn membership_key() -> Vec<u8> {
    crate::storage::actor_key(SYSTEM_NAMESPACE, b"membership")
}

/// State key of the audit trail's next sequence number.
pub fn audit_seq_key() -> Vec<u8> {
    crate::storage::actor_key(SYSTEM_NAMESPACE, b"audit-seq")
}

/// State key of audit slot `slot` (0..AUDIT_RECORDS_MAX).
pub fn audit_key(slot: u64) -> Vec<u8> {
    let mut k = crate::storage::actor_key(SYSTEM_NAMESPACE, b"audit/");
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

/// Where the audit slots start and end (for a range read).
pub fn audit_range() -> (Vec<u8>, Vec<u8>) {
    let start = crate::storage::actor_key(SYSTEM_NAMESPACE, b"audit/");
    let mut end = start.clone();
    *end.last_mut().expect("non-empty") += 1;
    (start, end)
}

/// One administrative action, as the log recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The entry that did it.
    pub index: Index,
    /// The entry's time (ms since the Unix epoch, the leader's clock).
    pub timestamp_ms: u64,
    /// Who asked (`None`: nobody proved who it was, auth was off).
    pub by: Option<Principal>,
    /// What was done.
    pub action: String,
}

/// The auth state a node last applied: the applier publishes it, every
/// connection checks requests against it.
#[derive(Clone, Default)]
pub struct AuthView(Arc<RwLock<Arc<AuthState>>>);

impl std::fmt::Debug for AuthView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthView").finish_non_exhaustive()
    }
}

impl AuthView {
    /// The current state.
    pub fn get(&self) -> Arc<AuthState> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publish a new state.
    pub fn set(&self, state: Arc<AuthState>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = state;
    }
}

/// A new token: its id, the text to hand to its user (once), and the hash
/// the group keeps.
pub fn new_token() -> (String, String, Vec<u8>) {
    let id_bytes: [u8; 6] = rand::random();
    let secret: [u8; SECRET_BYTES] = rand::random();
    let id = crate::auth::hex(&id_bytes);
    let text = format!("{TOKEN_PREFIX}{id}_{}", crate::auth::hex(&secret));
    (id, text, blake3::hash(&secret).as_bytes().to_vec())
}

/// The id and secret of a presented token.
fn parse_token(text: &str) -> Result<(&str, Vec<u8>), NotAToken> {
    let bad = || NotAToken;
    let rest = text.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
    if secret.len() != 2 * SECRET_BYTES {
        return Err(bad());
    }
    let secret = (0..SECRET_BYTES)
        .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    Ok((id, secret))
}

/// A presented text that is no token at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a token (they look like {TOKEN_PREFIX}<id>_<64 hex digits>)")]
pub struct NotAToken;

/// Who a presented token stands for, by `state` at `now_ms`.
pub fn verify_token(state: &AuthState, text: &str, now_ms: u64) -> Result<Principal, Denied> {
    let (id, secret) = parse_token(text).map_err(|e| Denied::Unauthenticated(e.to_string()))?;
    let unknown = || Denied::Unauthenticated(format!("token {id} is revoked or unknown"));
    let token = state.tokens.get(id).ok_or_else(unknown)?;
    let hash = blake3::hash(&secret);
    // blake3::Hash compares in constant time.
    if token.hash.len() != 32
        || hash != blake3::Hash::from_bytes(token.hash[..].try_into().expect("32"))
    {
        return Err(unknown());
    }
    let principal = Principal {
        user: token.user.clone(),
        token: Some(id.to_string()),
        cert: None,
    };
    state.authenticate(&principal, now_ms)?;
    Ok(principal)
}

/// The fingerprint of a certificate (BLAKE3 of its DER), as revocations
/// name it.
pub fn fingerprint(der: &[u8]) -> Vec<u8> {
    blake3::hash(der).as_bytes().to_vec()
}

/// The auth state as shown to an admin: token hashes left out.
pub fn shown(state: &AuthState) -> AuthState {
    let mut s = state.clone();
    for t in s.tokens.values_mut() {
        t.hash.clear();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthChange, Token};

    #[test]
    fn a_token_verifies_until_it_is_revoked_and_never_by_a_wrong_secret() {
        let (id, text, hash) = new_token();
        let s = AuthState::default()
            .apply(
                &AuthChange::UserAdd {
                    name: "u".into(),
                    roles: Default::default(),
                },
                0,
            )
            .unwrap()
            .apply(
                &AuthChange::TokenCreate {
                    id: id.clone(),
                    token: Token {
                        user: "u".into(),
                        hash,
                        expires_ms: 0,
                    },
                },
                0,
            )
            .unwrap();
        assert_eq!(verify_token(&s, &text, 0).unwrap().user, "u");
        let mut wrong = text.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert!(verify_token(&s, &wrong, 0).is_err());
        assert!(verify_token(&s, "ust_nope", 0).is_err());
        let s = s.apply(&AuthChange::TokenRevoke { id }, 0).unwrap();
        assert!(verify_token(&s, &text, 0).is_err());
    }

    #[test]
    fn audit_slots_sort_inside_their_range() {
        let (start, end) = audit_range();
        for slot in [0, 1, AUDIT_RECORDS_MAX - 1] {
            let k = audit_key(slot);
            assert!(k >= start && k < end);
        }
        assert!(auth_key() < start || auth_key() >= end);
        assert!(audit_seq_key() < start || audit_seq_key() >= end);
        let version = auth_version_key().to_vec();
        assert!(version < start || version >= end);
    }
}
