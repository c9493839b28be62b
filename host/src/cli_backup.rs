//! `understudy backup`, `understudy restore` and `understudy verify
//! --backup` (part of the CLI binary; `main.rs` dispatches here). The
//! file format and the checks are `understudy::backup`'s.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;
use understudy::api::client::Client;
use understudy::auth::hex;
use understudy::backup::{self, BackupSummary};

/// The file extension of the backups `backup --dir` writes (and counts
/// for `--keep`).
pub const BACKUP_EXTENSION: &str = "backup";

/// The connections a backup takes: a client of the group (following the
/// leader, for the seal), and two of the node backed up (one that waits
/// as long as writing the snapshot may take, one for the chunks).
pub struct Clients {
    /// Of the group.
    pub leader: Client,
    /// Of the node, for `Begin`.
    pub begin: Client,
    /// Of the node, for the chunks.
    pub chunks: Client,
}

/// Where and how often `understudy backup` writes.
pub struct BackupPlan {
    /// One file.
    pub out: Option<PathBuf>,
    /// Or a directory of timestamped files.
    pub dir: Option<PathBuf>,
    /// Seconds between backups into `dir` (none: one backup).
    pub every_s: Option<u64>,
    /// Backups kept in `dir` (the newest).
    pub keep: usize,
    /// Stop after this many backups (none: run until stopped).
    pub count: Option<u64>,
}

/// Take one backup, or (with `every_s`) one every so often, each through
/// a fresh connection from `connect`.
pub async fn run<C, F>(connect: C, plan: BackupPlan, json: bool) -> Result<()>
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<Clients>>,
{
    let mut taken = 0u64;
    loop {
        let out = match (&plan.out, &plan.dir) {
            (Some(out), _) => out.clone(),
            (None, Some(dir)) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                dir.join(format!(
                    "understudy-{}.{BACKUP_EXTENSION}",
                    stamp(understudy_now_ms())
                ))
            }
            (None, None) => bail!("give --out FILE or --dir DIR"),
        };
        let result = take(&connect, &out, json).await;
        taken += 1;
        match (&result, plan.every_s) {
            (Err(e), Some(_)) => eprintln!("error: backup {}: {e:#}", out.display()),
            (Err(_), None) => return result,
            (Ok(()), _) => {}
        }
        if let Some(dir) = &plan.dir {
            prune(dir, plan.keep)?;
        }
        let Some(every) = plan.every_s else {
            return Ok(());
        };
        if plan.count.is_some_and(|c| taken >= c) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(every)).await;
    }
}

async fn take<C, F>(connect: &C, out: &Path, json: bool) -> Result<()>
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<Clients>>,
{
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let clients = connect().await?;
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("backup [{bar:40}] {pos}/{len} chunks ({elapsed})")?
            .progress_chars("=> "),
    );
    let header = backup::fetch(
        &clients.leader,
        &clients.begin,
        &clients.chunks,
        out,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await;
    bar.finish_and_clear();
    let header = header.with_context(|| format!("backup into {}", out.display()))?;
    let m = &header.meta;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "file": out,
                "cluster_id": header.cluster_id,
                "node_id": header.node_id,
                "taken_at_ms": header.taken_at_ms,
                "index": m.index,
                "term": m.term,
                "digest": hex(&m.digest),
                "chunks": m.chunks,
                "bytes": m.bytes,
            })
        );
    } else {
        println!(
            "backup of cluster {:?} from node {} at index {} (term {}), digest {}: {} chunks, {} bytes in {}",
            header.cluster_id,
            header.node_id,
            m.index,
            m.term,
            hex(&m.digest),
            m.chunks,
            m.bytes,
            out.display()
        );
    }
    Ok(())
}

/// Keep the newest `keep` backups in `dir` (by name: the names are
/// timestamps), remove the others.
fn prune(dir: &Path, keep: usize) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == BACKUP_EXTENSION)
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("understudy-"))
        })
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(keep);
    for old in &files[..excess] {
        std::fs::remove_file(old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

fn understudy_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `20261201T093015.123Z`: sorts as time does.
fn stamp(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Print what a backup holds (`verify --backup`, `restore`).
pub fn show(what: &str, summary: &BackupSummary, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(summary).expect("a summary serializes")
        );
        return;
    }
    println!(
        "{what}: cluster {:?}, taken from node {} at index {} (term {}), digest {}",
        summary.cluster_id, summary.node_id, summary.index, summary.term, summary.digest
    );
    println!(
        "  {} chunks, {} bytes: {} kv pairs, {} modules, {} session records",
        summary.chunks, summary.bytes, summary.kv_pairs, summary.modules, summary.sessions
    );
    for (name, module, deployed_at) in &summary.actors {
        println!("  actor {name}: module {module}, deployed at index {deployed_at}");
    }
}
