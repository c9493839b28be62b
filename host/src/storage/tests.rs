//! Storage tests: identity and format checks, log invariants, exactly-once
//! batch commits, and a full map that refuses without losing data.

use super::*;
use crate::types::{EntryContext, Payload};
use serde_bytes::ByteBuf;

fn ident(node: u64) -> Identity {
    Identity {
        format_version: FORMAT_VERSION,
        cluster_id: "test".into(),
        node_id: node,
    }
}

fn entry(index: Index, term: Term, bytes: usize) -> Entry {
    Entry {
        index,
        term,
        context: EntryContext {
            timestamp_ms: index,
            seed: index,
        },
        payload: Payload::Command {
            actor: "a".into(),
            client: None,
            command: ByteBuf::from(vec![7u8; bytes]),
        },
    }
}

#[test]
fn log_appends_reads_and_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
    log.append(&[entry(1, 1, 4), entry(2, 1, 4), entry(3, 2, 4)])
        .unwrap();
    assert_eq!(log.last().unwrap(), (3, 2));
    assert_eq!(log.read(2, 3, usize::MAX).unwrap().len(), 2);
    log.truncate_from(3).unwrap();
    assert_eq!(log.last().unwrap(), (2, 1));
}

#[test]
fn log_refuses_gaps_and_decreasing_terms() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
    log.append(&[entry(1, 2, 1)]).unwrap();
    assert!(matches!(
        log.append(&[entry(3, 2, 1)]),
        Err(StorageError::Invariant(_))
    ));
    assert!(matches!(
        log.append(&[entry(2, 1, 1)]),
        Err(StorageError::Invariant(_))
    ));
    assert_eq!(log.last().unwrap(), (1, 2), "refused appends wrote nothing");
}

#[test]
fn directory_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), &ident(1), &StorageOptions::default()).unwrap());
    let err = open(dir.path(), &ident(2), &StorageOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::WrongIdentity { .. }), "{err}");
    assert!(err.to_string().contains("node 1"), "{err}");
}

#[test]
fn directory_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut newer = ident(1);
    newer.format_version = FORMAT_VERSION + 1;
    drop(open(dir.path(), &newer, &StorageOptions::default()).unwrap());
    let err = open(dir.path(), &ident(1), &StorageOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::NewerFormat { .. }), "{err}");
}

#[test]
fn second_process_lock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DirLock::acquire(dir.path()).unwrap();
    // flock locks are per open file description, so a second open in this
    // process conflicts just as another process would.
    assert!(matches!(
        DirLock::acquire(dir.path()),
        Err(StorageError::Locked(_))
    ));
}

#[test]
fn full_map_refuses_the_write_and_keeps_what_was_there() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions {
        map_size_bytes: 1 << 20,
    };
    let (_l, log, _s) = open(dir.path(), &ident(1), &opts).unwrap();
    log.append(&[entry(1, 1, 100)]).unwrap();
    let mut next = 2;
    let err = loop {
        match log.append(&[entry(next, 1, 64 << 10)]) {
            Ok(()) => next += 1,
            Err(e) => break e,
        }
        assert!(next < 1000, "a 1 MiB map must fill up");
    };
    assert!(matches!(err, StorageError::MapFull { .. }), "{err}");
    assert!(err.to_string().contains("map_size_bytes"), "{err}");
    assert_eq!(
        log.last().unwrap(),
        (next - 1, 1),
        "nothing lost, nothing half-written"
    );
    assert_eq!(
        log.read(1, next - 1, usize::MAX).unwrap().len() as u64,
        next - 1
    );
}

#[test]
fn state_commit_is_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, _log, state) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
    let mut batch = StateBatch {
        applied_index: 2,
        ..StateBatch::default()
    };
    batch.kv.insert(actor_key("a", b"k"), Some(b"v".to_vec()));
    state.commit(&batch).unwrap();
    assert_eq!(state.applied().unwrap().index, 2);
    let err = state.commit(&batch).unwrap_err();
    assert!(
        matches!(err, StorageError::Invariant(_)),
        "re-applying is refused: {err}"
    );
    let snap = state.snapshot().unwrap();
    assert_eq!(
        KvRead::get(&snap, &actor_key("a", b"k")),
        Some(b"v".to_vec())
    );
}
