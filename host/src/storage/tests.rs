//! Storage tests: identity and format checks, log invariants, exactly-once
//! batch commits, and a full map that refuses without losing data.

use super::state::{seal, unseal};
use super::*;
use crate::kv::KvRead;
use crate::types::{Entry, Index, Term};
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
            by: None,
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
    // With the journal, the map fills when the journaled tail moves into
    // LMDB; without it, at an append.
    for journal_bytes in [0, 4 << 20] {
        full_map_refuses(journal_bytes);
    }
}

fn full_map_refuses(journal_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions {
        map_size_bytes: 1 << 20,
        journal_bytes,
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
    // The compacted point keeps its entry's timestamp (here, the index).
    assert_eq!(log.compacted_timestamp_ms().unwrap(), 10);
    assert_eq!(log.timestamp_of(10).unwrap(), Some(10));
    assert_eq!(log.timestamp_of(11).unwrap(), Some(11));
    assert_eq!(log.timestamp_of(9).unwrap(), None);
    // A snapshot install resets the log to its point.
    log.reset_to(50, 4, 777, None).unwrap();
    assert_eq!(log.last().unwrap(), (50, 4));
    assert_eq!(log.first_index(), 51);
    assert_eq!(log.timestamp_of(50).unwrap(), Some(777));
    assert_eq!(
        crate::replication::LogRead::compacted_timestamp_ms(&log),
        777
    );
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
    let meta = sa
        .write_snapshot(&snap, 1024, |_| Some((4, 0, None)))
        .unwrap();
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

fn journaled(journal_bytes: u64) -> StorageOptions {
    StorageOptions {
        journal_bytes,
        ..StorageOptions::default()
    }
}

fn whole_log(log: &LogStore) -> Vec<(Index, Term)> {
    let first = crate::replication::LogRead::first_index(log);
    log.read(first, Index::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

#[test]
fn journaled_appends_survive_a_crash_and_move_into_lmdb_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
        log.append(&[entry(1, 1, 4), entry(2, 1, 4)]).unwrap();
        log.append(&[entry(3, 2, 4)]).unwrap();
        // Dropped without moving the tail: what a SIGKILL leaves.
    }
    let opts = journaled(0);
    let (_l, log, _s) = open(dir.path(), &ident(1), &opts).unwrap();
    assert_eq!(whole_log(&log), vec![(1, 1), (2, 1), (3, 2)]);
    // Without a journal now, the old one is still read once, then inert.
    log.append(&[entry(4, 2, 4)]).unwrap();
    drop((_l, log, _s));
    let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
    assert_eq!(whole_log(&log), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
}

#[test]
fn a_torn_journal_write_loses_only_the_batch_that_was_never_acknowledged() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
        log.append(&[entry(1, 1, 4), entry(2, 1, 4)]).unwrap();
        log.append(&[entry(3, 1, 100)]).unwrap();
    }
    // Tear the last record: flip a byte in its payload.
    let path = dir.path().join("log/journal");
    let first_two = 2 * journal::HEADER_BYTES as usize
        + crate::codec::encode(&entry(1, 1, 4)).len()
        + crate::codec::encode(&entry(2, 1, 4)).len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"\xff", (first_two + 40) as u64).unwrap();
    let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
    assert_eq!(whole_log(&log), vec![(1, 1), (2, 1)]);
    log.append(&[entry(3, 2, 4)]).unwrap();
}

#[test]
fn a_damaged_journal_record_before_acknowledged_ones_refuses_to_open() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
        log.append(&[entry(1, 1, 4), entry(2, 1, 4)]).unwrap();
        log.append(&[entry(3, 1, 100)]).unwrap();
    }
    // One flipped bit in the first record: batches were written after it.
    let path = dir.path().join("log/journal");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let at = journal::HEADER_BYTES + 2;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    match open(dir.path(), &ident(1), &StorageOptions::default()) {
        Err(e @ StorageError::JournalCorrupt { .. }) => {
            let message = e.to_string();
            assert!(message.contains("offset 0"), "{message}");
            assert!(message.contains("refuses to start"), "{message}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a log with a damaged acknowledged record opened"),
    }
}

#[test]
fn a_truncated_suffix_never_comes_back_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
        log.append(&(1..=5).map(|i| entry(i, 1, 4)).collect::<Vec<_>>())
            .unwrap();
        log.persist_with(None, Some(3), &[entry(3, 2, 4)]).unwrap();
        assert_eq!(whole_log(&log), vec![(1, 1), (2, 1), (3, 2)]);
        log.append(&[entry(4, 2, 4)]).unwrap();
    }
    let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
    assert_eq!(whole_log(&log), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
}

#[test]
fn reads_span_lmdb_and_the_journaled_tail_within_their_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, log, _s) = open(dir.path(), &ident(1), &StorageOptions::default()).unwrap();
    // A hard state with entries goes through LMDB; plain appends journal.
    let hs = HardState {
        term: 1,
        vote: Some(1),
    };
    log.persist(
        Some(&hs),
        &(1..=10).map(|i| entry(i, 1, 4)).collect::<Vec<_>>(),
    )
    .unwrap();
    log.append(&(11..=20).map(|i| entry(i, 1, 4)).collect::<Vec<_>>())
        .unwrap();
    let read = log.read(5, 15, usize::MAX).unwrap();
    assert_eq!(
        read.iter().map(|e| e.index).collect::<Vec<_>>(),
        (5..=15).collect::<Vec<_>>()
    );
    let one = crate::codec::encode(&entry(5, 1, 4)).len();
    assert_eq!(
        log.read(8, 15, 3 * one).unwrap().len(),
        3,
        "across the seam"
    );
    assert_eq!(log.read(12, 15, 1).unwrap().len(), 1, "at least one");
    assert_eq!(log.hard_state().unwrap(), hs);
    assert_eq!(log.last().unwrap(), (20, 1));
}

/// Microseconds a move of the journaled tail waits between its LMDB commit
/// and emptying the tail (all threads), and a read between reading the
/// tail and reading LMDB (this thread): a test widens those windows to
/// catch a reader and a truncation in them.
static MOVE_COMMITTED_PAUSE_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
thread_local! {
    static READ_PAUSE_US: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn sleep_us(us: u64) {
    if us > 0 {
        std::thread::sleep(std::time::Duration::from_micros(us));
    }
}

pub(super) fn pause_after_move_commit() {
    sleep_us(MOVE_COMMITTED_PAUSE_US.load(std::sync::atomic::Ordering::Relaxed));
}

pub(super) fn pause_between_tail_and_lmdb() {
    sleep_us(READ_PAUSE_US.with(|p| p.get()));
}

/// Readers racing appends and truncations never see two logs mixed: one
/// reader reads back to back (it lands inside a truncating move: caught
/// without the move keeping readers out), one pauses between the tail and
/// LMDB (a truncation lands in between: caught without the version check).
#[test]
fn readers_always_see_one_consistent_log_while_it_is_appended_and_truncated() {
    // Other tests' moves get slower meanwhile, nothing else.
    MOVE_COMMITTED_PAUSE_US.store(300, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let (_l, log, _s) = open(dir.path(), &ident(1), &journaled(8 << 10)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [0u64, 2_000]
        .into_iter()
        .map(|pause_us| {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                READ_PAUSE_US.with(|p| p.set(pause_us));
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Short reads near the end: mostly the seam between
                    // LMDB and the tail, where a truncation lands.
                    let (end, _) = log.last().unwrap();
                    let got = log
                        .read(end.saturating_sub(40).max(1), Index::MAX, usize::MAX)
                        .unwrap();
                    for w in got.windows(2) {
                        assert_eq!(w[1].index, w[0].index + 1, "a gap in one read");
                        assert!(w[1].term >= w[0].term, "terms went back in one read");
                        // Every entry's seed names its term: one log, not two.
                        assert_eq!(w[1].context.seed, w[1].term);
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut last = 0;
    for term in 1..=1200u64 {
        let mut batch = Vec::new();
        for _ in 0..7 {
            last += 1;
            let mut e = entry(last, term, 40);
            e.context.seed = term;
            batch.push(e);
        }
        if term % 3 == 0 && last > 40 {
            // Back into what has moved into LMDB, often enough.
            let from = last - 10 - term % 30;
            let rewrite: Vec<Entry> = (from..=last)
                .map(|i| {
                    let mut e = entry(i, term, 40);
                    e.context.seed = term;
                    e
                })
                .collect();
            log.persist_with(None, Some(from), &rewrite).unwrap();
        } else {
            log.append(&batch).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    MOVE_COMMITTED_PAUSE_US.store(0, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

mod model {
    //! The journaled log against a plain vector, through random appends,
    //! truncations, hard states, compactions, resets and reopenings, with a
    //! journal small enough to start over often.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Append(usize, u16),
        Truncate(u8, usize),
        Vote(usize),
        Compact(u8),
        Reset(u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1..6usize, 0..300u16).prop_map(|(n, b)| Op::Append(n, b)),
            2 => (0..255u8, 1..4usize).prop_map(|(at, n)| Op::Truncate(at, n)),
            1 => (0..3usize).prop_map(Op::Vote),
            1 => any::<u8>().prop_map(Op::Compact),
            1 => any::<u8>().prop_map(Op::Reset),
            2 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn the_log_equals_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let opts = journaled(2048);
            let mut store = Some(open(dir.path(), &ident(1), &opts).unwrap());
            // Model: compacted point and the entries after it.
            let (mut compacted, mut entries): ((Index, Term), Vec<(Index, Term)>) = ((0, 0), vec![]);
            let mut term = 1;
            let mut hard = HardState::default();
            for op in ops {
                let log = &store.as_ref().unwrap().1;
                let last = entries.last().copied().unwrap_or(compacted);
                match op {
                    Op::Append(n, bytes) => {
                        let batch: Vec<Entry> =
                            (1..=n as u64).map(|k| entry(last.0 + k, term, bytes as usize)).collect();
                        log.append(&batch).unwrap();
                        entries.extend(batch.iter().map(|e| (e.index, e.term)));
                    }
                    Op::Truncate(at, n) => {
                        if entries.is_empty() { continue; }
                        let keep = at as usize % entries.len();
                        let from = entries[keep].0;
                        term += 1;
                        entries.truncate(keep);
                        let batch: Vec<Entry> =
                            (0..n as u64).map(|k| entry(from + k, term, 8)).collect();
                        log.persist_with(None, Some(from), &batch).unwrap();
                        entries.extend(batch.iter().map(|e| (e.index, e.term)));
                    }
                    Op::Vote(n) => {
                        term += 1;
                        hard = HardState { term, vote: Some(1) };
                        let batch: Vec<Entry> =
                            (1..=n as u64).map(|k| entry(last.0 + k, term, 8)).collect();
                        log.persist(Some(&hard), &batch).unwrap();
                        entries.extend(batch.iter().map(|e| (e.index, e.term)));
                    }
                    Op::Compact(k) => {
                        if entries.is_empty() { continue; }
                        let upto = entries[k as usize % entries.len()].0;
                        let done = log.compact(upto, 1_000).unwrap();
                        prop_assert_eq!(done, upto);
                        let pos = entries.iter().position(|e| e.0 == upto).unwrap();
                        compacted = entries[pos];
                        entries.drain(..=pos);
                    }
                    Op::Reset(k) => {
                        let at = last.0 + k as u64;
                        term += 1;
                        log.reset_to(at, term, 0, None).unwrap();
                        compacted = (at, term);
                        entries.clear();
                    }
                    Op::Reopen => {
                        // Close first: one process opens an environment once.
                        drop(store.take());
                        store = Some(open(dir.path(), &ident(1), &opts).unwrap());
                    }
                }
                let log = &store.as_ref().unwrap().1;
                prop_assert_eq!(whole_log(log), entries.clone());
                prop_assert_eq!(log.last().unwrap(), entries.last().copied().unwrap_or(compacted));
                prop_assert_eq!(log.compacted().unwrap(), compacted);
                prop_assert_eq!(log.hard_state().unwrap(), hard);
            }
        }
    }
}

#[test]
fn a_stored_value_fails_its_checksum_if_any_bit_flips_or_it_moves_to_another_key() {
    let sealed = seal(b"key", b"value");
    assert_eq!(unseal(b"key", &sealed), Some(&b"value"[..]));
    assert_eq!(unseal(b"other", &sealed), None, "found under another key");
    for byte in 0..sealed.len() {
        for bit in 0..8 {
            let mut damaged = sealed.clone();
            damaged[byte] ^= 1 << bit;
            assert_eq!(unseal(b"key", &damaged), None, "byte {byte} bit {bit}");
        }
    }
    assert_eq!(
        unseal(b"key", &sealed[..3]),
        None,
        "shorter than a checksum"
    );
    assert_eq!(unseal(b"", &seal(b"", b"")), Some(&b""[..]));
}

/// The log's configuration table follows its configuration entries
/// through appends (journaled or not), truncation, compaction, a reset to
/// a snapshot and a reopen.
#[test]
fn the_log_keeps_its_configurations_through_truncation_compaction_and_reset() {
    use understudy_core::membership::Membership;
    let config = |index: Index, voters: &[u64]| Entry {
        payload: Payload::Config(Box::new(Membership::of_voters(voters.iter().copied()))),
        ..entry(index, 1, 0)
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions::default();
    let indexes = |log: &LogStore| -> Vec<Index> {
        log.memberships()
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    };
    {
        let (_l, log, _s) = open(dir.path(), &ident(1), &opts).unwrap();
        log.append(&[entry(1, 1, 1), config(2, &[1, 2, 3]), entry(3, 1, 1)])
            .unwrap();
        log.append(&[config(4, &[1, 2]), entry(5, 1, 1), config(6, &[1])])
            .unwrap();
        assert_eq!(indexes(&log), vec![2, 4, 6]);
        assert_eq!(
            log.membership_at(5).unwrap(),
            Some(Membership::of_voters([1, 2]))
        );
        // A conflicting suffix takes its configurations with it.
        log.truncate_from(6).unwrap();
        assert_eq!(indexes(&log), vec![2, 4]);
        // Compaction keeps the one in effect at the compacted point.
        log.append(&[entry(6, 1, 1), entry(7, 1, 1)]).unwrap();
        log.compact(5, 100).unwrap();
        assert_eq!(indexes(&log), vec![4]);
        assert_eq!(log.membership_at(1).unwrap(), None);
    }
    {
        let (_l, log, _s) = open(dir.path(), &ident(1), &opts).unwrap();
        assert_eq!(indexes(&log), vec![4], "durable across a reopen");
        let installed = Membership::of_voters([7, 8, 9]);
        log.reset_to(50, 4, 777, Some(&installed)).unwrap();
        assert_eq!(log.memberships().unwrap(), vec![(50, installed.clone())]);
        log.reset_to(60, 4, 777, None).unwrap();
        assert!(log.memberships().unwrap().is_empty());
    }
}
