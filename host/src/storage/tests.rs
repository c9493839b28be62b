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

#[test]
fn compaction_keeps_the_last_compacted_term_and_the_log_continues() {
    use crate::replication::LogRead;
    let dir = tempfile::tempdir().unwrap();
    let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
    let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 5, 4)).collect();
    log.append(&entries).unwrap();
    assert_eq!(
        log.first_at_or_after(4, 1, 10).unwrap(),
        4,
        "timestamps are the index here"
    );
    // In batches: a call never removes more than it is allowed to.
    assert_eq!(log.compact(7, 3).unwrap(), 3);
    assert_eq!(log.compact(7, 100).unwrap(), 7);
    assert_eq!(log.compacted().unwrap(), (7, 2));
    assert_eq!(log.first_index(), 8);
    assert_eq!(
        LogRead::term(&log, 7),
        Some(2),
        "the compacted point keeps its term"
    );
    assert_eq!(LogRead::term(&log, 6), None);
    assert!(log.read(1, 7, usize::MAX).unwrap().is_empty());
    assert_eq!(log.last().unwrap(), (10, 3));
    // Compacting everything: the log still knows where it ends.
    log.compact(10, 100).unwrap();
    assert_eq!(log.last().unwrap(), (10, 3));
    log.append(&[entry(11, 3, 4)]).unwrap();
    assert!(log.append(&[entry(13, 3, 4)]).is_err(), "still no gaps");
    // A snapshot install resets the log to its point.
    log.reset_to(50, 4).unwrap();
    assert_eq!(log.last().unwrap(), (50, 4));
    assert_eq!(log.first_index(), 51);
    log.append(&[entry(51, 4, 4)]).unwrap();
}

#[test]
fn a_state_snapshot_installs_into_another_store_exactly() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (_la, _log_a, sa) = open(a.path(), &ident(1), &StorageOptions::default()).unwrap();
    let (_lb, _log_b, sb) = open(b.path(), &ident(2), &StorageOptions::default()).unwrap();
    let mut batch = StateBatch {
        applied_index: 9,
        digest: [9; 32],
        ..StateBatch::default()
    };
    for i in 0..300u32 {
        batch
            .kv
            .insert(i.to_be_bytes().to_vec(), Some(vec![i as u8; 40]));
    }
    sa.commit(&batch).unwrap();
    // The receiving store had other state, which the snapshot replaces.
    let old = StateBatch {
        applied_index: 3,
        kv: [(b"stale".to_vec(), Some(b"x".to_vec()))]
            .into_iter()
            .collect(),
        ..StateBatch::default()
    };
    sb.commit(&old).unwrap();
    let snap = a.path().join("snap");
    let meta = sa.write_snapshot(&snap, 1024, |_| Some(4)).unwrap();
    assert!(meta.chunks > 5, "small chunks: {}", meta.chunks);
    assert_eq!((meta.index, meta.term, meta.digest), (9, 4, [9; 32]));
    let chunks = (0..meta.chunks).map(|seq| {
        let bytes = std::fs::read(snap.join(format!("chunk-{seq:08}"))).unwrap();
        assert_eq!(
            *blake3::hash(&bytes).as_bytes(),
            meta.checksums[seq as usize]
        );
        Ok(crate::codec::decode("chunk", &bytes).unwrap())
    });
    sb.install_snapshot(&meta, chunks).unwrap();
    assert_eq!(sb.dump_kv().unwrap(), sa.dump_kv().unwrap());
    assert_eq!(sb.applied().unwrap(), sa.applied().unwrap());
    assert_eq!(sb.installed_snapshot().unwrap(), Some((9, 4)));
}
