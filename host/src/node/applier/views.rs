//! The views a machine reads through: the durable snapshot plus the
//! writes of the entries executed before (`BatchView`, or `SharedView` for
//! a query), narrowed to one actor's keys (`ActorView`).

use crate::sandbox::view::{self, KvRead, WriteSet};
use crate::storage::{StateSnapshot, actor_prefix};
use std::sync::Arc;

/// The snapshot plus the writes of the batch so far (full keys).
pub(super) struct BatchView {
    pub(super) snap: StateSnapshot,
    pub(super) overlay: WriteSet,
}

impl KvRead for BatchView {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        view::layered_get(&self.overlay, &self.snap, key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        view::layered_range(&self.overlay, &self.snap, start, end, limit)
    }
}

/// The snapshot plus the pending writes as they were when a query was
/// taken, shared with the applier (which copies them again only after it
/// changed them): a query reads it on a thread of its own.
pub(super) struct SharedView {
    pub(super) snap: StateSnapshot,
    pub(super) overlay: Arc<WriteSet>,
}

impl KvRead for SharedView {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        view::layered_get(&self.overlay, &self.snap, key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        view::layered_range(&self.overlay, &self.snap, start, end, limit)
    }
}

/// One actor's namespace of a [`BatchView`] (or a query's [`SharedView`]):
/// keys are prefixed going in and stripped coming out, so actors never see
/// each other's keys.
pub(super) struct ActorView<B = BatchView> {
    pub(super) prefix: Vec<u8>,
    pub(super) batch: B,
}

impl<B> ActorView<B> {
    pub(super) fn new(actor: &str, batch: B) -> Self {
        ActorView {
            prefix: actor_prefix(actor),
            batch,
        }
    }

    pub(super) fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k
    }
}

impl<B: KvRead> KvRead for ActorView<B> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.batch.get(&self.full(key))
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let start = self.full(start);
        let end = match end {
            Some(e) => Some(self.full(e)),
            None => prefix_end(&self.prefix),
        };
        self.batch
            .range(&start, end.as_deref(), limit)
            .into_iter()
            .map(|(k, v)| (k[self.prefix.len()..].to_vec(), v))
            .collect()
    }
}

pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(super) fn prefixed(prefix: &[u8], writes: WriteSet) -> WriteSet {
    writes
        .into_iter()
        .map(|(k, v)| {
            let mut full = prefix.to_vec();
            full.extend_from_slice(&k);
            (full, v)
        })
        .collect()
}
