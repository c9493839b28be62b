//! The state's shared vocabulary, below both the sandbox and storage:
//! read views of machine state ([`KvRead`]), the write overlay a call
//! builds ([`WriteSet`]), and a module's identity ([`ModuleHash`]).
//! Re-exported as `sandbox::view` (and `ModuleHash` as
//! `sandbox::ModuleHash`), where the code that uses them looks.
//!
//! A machine call never writes to LMDB directly. Its `kv.put`/`kv.delete`
//! land in a [`WriteSet`] layered over a read-only view; the caller keeps the
//! write-set if the call succeeds and drops it otherwise. That one mechanism
//! gives rollback of refused commands, the write-set that row-based
//! replication ships, and the input of the state digest.

use std::any::Any;
use std::collections::BTreeMap;
use std::ops::Bound;

/// A machine's identity: the BLAKE3 hash of its component bytes.
pub type ModuleHash = [u8; 32];

/// Most pairs one `range` call returns, whatever the guest asks.
pub const RANGE_LIMIT_MAX: usize = 10_000;

/// Read access to a key-value state.
pub trait KvRead {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Up to `limit` pairs with `start <= key < end`, ascending.
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)>;
}

/// Writes of a call (or of a batch of calls): `None` is a delete.
pub type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// Reads through `top` (pending writes) onto `below`.
pub fn layered_get(top: &WriteSet, below: &dyn KvRead, key: &[u8]) -> Option<Vec<u8>> {
    match top.get(key) {
        Some(v) => v.clone(),
        None => below.get(key),
    }
}

/// A range over `top` merged onto `below`: `top` wins on equal keys and its
/// deletes hide `below`'s pairs.
pub fn layered_range(
    top: &WriteSet,
    below: &dyn KvRead,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    if end.is_some_and(|e| e <= start) || limit == 0 {
        return Vec::new();
    }
    let overlay: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
        top.range::<[u8], _>(bounds(start, end)).collect();
    // Each overlay key can hide at most one pair below, so this many pairs
    // from below always suffice to fill `limit` after merging.
    let from_below = below.range(start, end, limit.saturating_add(overlay.len()));
    let mut out = Vec::with_capacity(limit.min(from_below.len() + overlay.len()));
    let mut a = overlay.into_iter().peekable();
    let mut b = from_below.into_iter().peekable();
    while out.len() < limit {
        let take_top = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((ka, _)), Some((kb, _))) => ka.as_slice() <= kb.as_slice(),
        };
        if take_top {
            let (k, v) = a.next().unwrap();
            if b.peek().is_some_and(|(kb, _)| kb == k) {
                b.next();
            }
            if let Some(v) = v {
                out.push((k.clone(), v.clone()));
            }
        } else {
            out.push(b.next().unwrap());
        }
    }
    out
}

/// A view of `below` with `top`'s pending writes applied.
pub struct Layered<'a> {
    /// Pending writes.
    pub top: &'a WriteSet,
    /// The state underneath.
    pub below: &'a dyn KvRead,
}

impl KvRead for Layered<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        layered_get(self.top, self.below, key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        layered_range(self.top, self.below, start, end, limit)
    }
}

/// An in-memory state, for tests and the native reference implementation.
impl KvRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        BTreeMap::get(self, key).cloned()
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        if end.is_some_and(|e| e <= start) {
            return Vec::new();
        }
        BTreeMap::range::<[u8], _>(self, bounds(start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Read view handed into a call and given back afterwards.
pub trait StateView: KvRead + Send + Any {
    /// For getting the concrete view back after the call.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: KvRead + Send + Any> StateView for T {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(base: &mut BTreeMap<Vec<u8>, Vec<u8>>, ws: &WriteSet) {
        for (k, v) in ws {
            match v {
                Some(v) => base.insert(k.clone(), v.clone()),
                None => base.remove(k),
            };
        }
    }

    proptest! {
        /// The merged view must read exactly like the state with the writes applied.
        #[test]
        fn layered_range_equals_range_of_applied_writes(
            base in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..3), proptest::collection::vec(any::<u8>(), 0..2), 0..12),
            writes in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..3), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..2)), 0..12),
            start in proptest::collection::vec(0u8..4, 0..2),
            end in proptest::option::of(proptest::collection::vec(0u8..4, 0..3)),
            limit in 0usize..20,
        ) {
            let mut applied = base.clone();
            apply(&mut applied, &writes);
            let expect = KvRead::range(&applied, &start, end.as_deref(), limit);
            let got = layered_range(&writes, &base, &start, end.as_deref(), limit);
            prop_assert_eq!(got, expect);
            for k in writes.keys().chain(base.keys()) {
                prop_assert_eq!(layered_get(&writes, &base, k), KvRead::get(&applied, k));
            }
        }
    }
}
