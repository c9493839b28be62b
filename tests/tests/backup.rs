//! Online backup and restore with real processes: `understudy backup` from
//! a follower while a writer keeps writing, `verify --backup`, `restore`
//! into the data directories of a new group, and the new group holds
//! exactly the writes acknowledged at or before the backup's index, at the
//! digest a replay of the old group's log computes for that index.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use understudy::types::Outcome;
use understudy_tests::{
    Group, decode, kv_get as get, kv_put as put, run_cli_within, with_kv, within,
};

fn value(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Ok(b) => decode(b),
        other => panic!("query failed: {other:?}"),
    }
}

/// Every file under `dir` (but the lock file) with its bytes.
fn files_of(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n != "LOCK") {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("JSON output {out:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_into_a_new_group_with_the_same_state() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let old_root = dir.path().join("old");
    let (mut g, leader, c) = with_kv(Group::start(&old_root, 3, &[]).unwrap()).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let highest = Arc::new(AtomicU64::new(0));
    let writer = {
        let (c, stop, highest) = (c.clone(), stop.clone(), highest.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let w = within(
                    30,
                    "a write",
                    c.command("kv", put(&format!("k{i}"), &format!("v{i}"))),
                )
                .await
                .expect("a write under load");
                assert!(w.outcome.is_ok(), "{:?}", w.outcome);
                acked.push((i, w.index));
                highest.fetch_max(w.index, Ordering::SeqCst);
                i += 1;
            }
            acked
        })
    };
    // Load first, then the backup in the middle of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let file = dir.path().join("group.backup");
    let addr = g.node(follower).addr.to_string();
    let acked_before = highest.load(Ordering::SeqCst);
    let (ok, out, err) = run_cli_within(
        120,
        &[
            "backup",
            "--addr",
            &addr,
            "--out",
            file.to_str().unwrap(),
            "--output",
            "json",
        ],
    )
    .await;
    assert!(ok, "backup failed: {err}");
    let taken = json(&out);
    let index = taken["index"].as_u64().unwrap();
    let digest = taken["digest"].as_str().unwrap().to_string();
    assert_eq!(taken["node_id"].as_u64(), Some(follower));
    assert!(
        index >= acked_before,
        "the backup (index {index}) holds every write acknowledged before it began (up to {acked_before})"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = within(60, "the writer", writer).await.unwrap();
    assert!(
        acked.iter().any(|&(_, i)| i <= index) && acked.iter().any(|&(_, i)| i > index),
        "the backup at index {index} was taken while writes went on (acked {} writes, indexes {:?}..{:?})",
        acked.len(),
        acked.first(),
        acked.last()
    );
    assert!(
        !file.with_extension("backup.partial").exists(),
        "no partial file is left"
    );

    // Offline check of the file: what the backup command said.
    let (ok, out, err) = run_cli_within(
        60,
        &[
            "verify",
            "--backup",
            file.to_str().unwrap(),
            "--output",
            "json",
        ],
    )
    .await;
    assert!(ok, "verify --backup failed: {err}");
    let verified = json(&out);
    assert_eq!(verified["index"].as_u64(), Some(index));
    assert_eq!(verified["digest"].as_str(), Some(digest.as_str()));
    assert_eq!(verified["actors"][0][0].as_str(), Some("kv"));

    // The old group's log, replayed independently to the backup's index,
    // gives the backup's digest.
    for id in 1..=3 {
        g.kill9(id);
    }
    let member = old_root.join(format!("node{follower}"));
    let before = files_of(&member);
    let (ok, out, err) = run_cli_within(
        120,
        &[
            "verify",
            "--data-dir",
            old_root.join(format!("node{follower}")).to_str().unwrap(),
            "--at",
            &index.to_string(),
            "--output",
            "json",
        ],
    )
    .await;
    assert!(ok, "verify --at failed: {err}");
    assert_eq!(
        json(&out)["digest"].as_str(),
        Some(digest.as_str()),
        "a replay of the old log to index {index} gives the backup's digest"
    );
    // Verify read only: every file of the member is as it was (its
    // journal still holds what the node's next start moves into the log).
    let after = files_of(&member);
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.display().to_string())
        .collect();
    assert!(
        before.len() == after.len() && changed.is_empty(),
        "verify changed {changed:?} ({} files before, {} after)",
        before.len(),
        after.len()
    );

    // Restore the file into every member of a new group, and start it.
    let new_root = dir.path().join("new");
    for id in 1..=3u64 {
        let (ok, out, err) = run_cli_within(
            60,
            &[
                "restore",
                "--from",
                file.to_str().unwrap(),
                "--data-dir",
                new_root.join(format!("node{id}")).to_str().unwrap(),
                "--node-id",
                &id.to_string(),
                "--cluster-id",
                "test",
            ],
        )
        .await;
        assert!(ok, "restore of node {id} failed: {err}");
        assert!(out.contains(&format!("at index {index}")), "{out}");
    }
    // Restoring over a member's data is refused.
    let (ok, _, err) = run_cli_within(
        60,
        &[
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--data-dir",
            new_root.join("node1").to_str().unwrap(),
            "--node-id",
            "1",
        ],
    )
    .await;
    assert!(!ok && err.contains("is not empty"), "{err}");

    let restored = Group::start(&new_root, 3, &[]).unwrap();
    restored
        .leader(Duration::from_secs(30))
        .await
        .expect("the restored group elects a leader");
    let rc = restored.client().await.unwrap();
    for &(i, at) in &acked {
        let (outcome, _) = within(
            30,
            "a read of the restored group",
            rc.query("kv", get(&format!("k{i}"))),
        )
        .await
        .unwrap();
        let expected = (at <= index).then(|| format!("v{i}"));
        assert_eq!(
            value(&outcome),
            expected,
            "k{i} (written at index {at}) in a restore of the backup at index {index}"
        );
    }
    // Every member starts at the backup's index, and the group goes on
    // from there.
    for s in restored.statuses().await {
        assert!(
            s.applied_index >= index,
            "node {} at {}",
            s.node_id,
            s.applied_index
        );
    }
    let w = within(
        30,
        "a write to the restored group",
        rc.command("kv", put("after", "restore")),
    )
    .await
    .unwrap();
    assert!(w.outcome.is_ok() && w.index > index, "{w:?}");
    restored.assert_same_state(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_backups_keep_the_newest_and_a_damaged_backup_is_refused() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = with_kv(Group::start(&dir.path().join("g"), 3, &[]).unwrap()).await;
    let w = within(30, "a write", c.command("kv", put("a", "1")))
        .await
        .unwrap();
    let backups = dir.path().join("backups");
    let addr = g.node(leader).addr.to_string();
    // Four backups a second apart, keeping two.
    let (ok, out, err) = run_cli_within(
        120,
        &[
            "backup",
            "--addr",
            &addr,
            "--dir",
            backups.to_str().unwrap(),
            "--every-s",
            "1",
            "--keep",
            "2",
            "--count",
            "4",
        ],
    )
    .await;
    assert!(ok, "periodic backup failed: {err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("backup of")).count(),
        4,
        "{out}"
    );
    // A quiet group's backup holds its last write too (the seal closes the
    // run window it is in).
    let first_index: u64 = out
        .split(" at index ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no index in {out}"));
    assert!(
        first_index >= w.index,
        "backup at {first_index}, last write at {}",
        w.index
    );
    let mut kept: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let newest = kept.last().unwrap();
    assert!(
        out.lines()
            .last()
            .unwrap()
            .ends_with(newest.to_str().unwrap()),
        "{out}"
    );

    // `--keep 0` is refused (the newest would be removed).
    let (ok, _, err) = run_cli_within(
        30,
        &[
            "backup",
            "--addr",
            &addr,
            "--dir",
            backups.to_str().unwrap(),
            "--keep",
            "0",
        ],
    )
    .await;
    assert!(!ok && err.contains("--keep"), "{err}");

    // One flipped byte in the middle: verify and restore refuse it.
    let mut bytes = std::fs::read(newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let (ok, _, err) = run_cli_within(30, &["verify", "--backup", damaged.to_str().unwrap()]).await;
    assert!(!ok && err.contains("not a valid backup"), "{err}");
    let target = dir.path().join("restored");
    let (ok, _, err) = run_cli_within(
        30,
        &[
            "restore",
            "--from",
            damaged.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
            "--node-id",
            "1",
        ],
    )
    .await;
    assert!(!ok && err.contains("not a valid backup"), "{err}");
    assert!(
        !target.exists(),
        "nothing is restored from a damaged backup"
    );

    // A wrong path is no data directory: verify says so, and makes nothing.
    let nowhere = dir.path().join("typo");
    let (ok, _, err) =
        run_cli_within(30, &["verify", "--data-dir", nowhere.to_str().unwrap()]).await;
    assert!(
        !ok && err.contains("is not a node's data directory"),
        "{err}"
    );
    assert!(!nowhere.exists(), "verify created {}", nowhere.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stages_backups_within_its_limits() {
    use understudy::api::ErrorCode;
    use understudy::node::{BACKUPS_STAGED_MAX, BACKUPS_WRITING_MAX};
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let (g, leader, c) = with_kv(Group::start(&dir.path().join("g"), 3, &[]).unwrap()).await;
    // Enough state that writing a snapshot takes a while.
    let puts = (0..400).map(|i| c.command("kv", put(&format!("key{i}"), &"x".repeat(1000))));
    for w in within(60, "400 writes", futures::future::join_all(puts)).await {
        assert!(w.unwrap().outcome.is_ok());
    }
    let node = g.client_of(leader).await.unwrap();

    // BACKUPS_WRITING_MAX (1) at once: of two begun together, one is
    // refused while the other is being written.
    assert_eq!(BACKUPS_WRITING_MAX, 1);
    let (a, b) = within(60, "two backups begun together", async {
        tokio::join!(node.backup_begin(0), node.backup_begin(0))
    })
    .await;
    let (begun, refused) = match (a, b) {
        (Ok(x), Err(e)) | (Err(e), Ok(x)) => (x, e),
        other => panic!("expected one begun and one refused: {other:?}"),
    };
    assert_eq!(refused.code(), Some(ErrorCode::Overloaded), "{refused}");
    assert!(
        refused.to_string().contains("BACKUPS_WRITING_MAX"),
        "{refused}"
    );

    // BACKUPS_STAGED_MAX staged: all readable; one more pushes out the
    // least recently used.
    let mut ids = vec![begun.id];
    for _ in 1..BACKUPS_STAGED_MAX {
        ids.push(
            within(60, "a backup", node.backup_begin(0))
                .await
                .unwrap()
                .id,
        );
    }
    for &id in &ids {
        within(30, "a chunk", node.backup_chunk(id, 0))
            .await
            .unwrap();
    }
    let newest = within(60, "one backup more", node.backup_begin(0))
        .await
        .unwrap();
    let gone = within(30, "a chunk", node.backup_chunk(ids[0], 0))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::BadRequest), "{gone}");
    assert!(gone.to_string().contains("BACKUPS_STAGED_MAX"), "{gone}");
    for &id in &ids[1..] {
        within(30, "a chunk", node.backup_chunk(id, 0))
            .await
            .unwrap();
    }
    // A chunk past the last, and the end of a backup (twice: idempotent).
    let past = within(
        30,
        "a chunk",
        node.backup_chunk(newest.id, newest.meta.chunks),
    )
    .await
    .unwrap_err();
    assert!(past.to_string().contains("no chunk"), "{past}");
    within(
        30,
        "a chunk",
        node.backup_chunk(newest.id, newest.meta.chunks - 1),
    )
    .await
    .unwrap();
    within(30, "an end", node.backup_end(newest.id))
        .await
        .unwrap();
    within(30, "an end", node.backup_end(newest.id))
        .await
        .unwrap();
    let ended = within(30, "a chunk", node.backup_chunk(newest.id, 0))
        .await
        .unwrap_err();
    assert!(ended.to_string().contains("no staged backup"), "{ended}");
}
