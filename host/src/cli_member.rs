//! `understudy member …`: show and change a group's configuration (part
//! of the CLI binary; `main.rs` dispatches here).

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::net::SocketAddr;
use std::time::Duration;
use understudy::api::client::Client;
use understudy::api::{MemberAddrs, Membership, MembershipChange, Status};
use understudy::types::NodeId;

/// How often `member replace` looks at the leader while it waits.
const WATCH_EVERY: Duration = Duration::from_millis(200);

#[derive(Subcommand)]
pub enum MemberCommand {
    /// List the members: voters and learners, their addresses, and (from the leader) how far behind each one is.
    List,
    /// Add a member. It starts as a learner; the leader promotes it to voter once it has caught up (with --learner it stays a learner, a read replica).
    Add {
        /// The new member's id (not in use).
        id: NodeId,
        /// Where it takes peer connections (HOST:PORT).
        #[arg(long)]
        peer_addr: String,
        /// Where it serves clients (HOST:PORT).
        #[arg(long)]
        client_addr: String,
        /// Keep it a learner (it never votes; promote it later with `member promote`).
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Demote a voter to learner (it keeps receiving the log; it no longer votes or counts for commit).
    Demote {
        /// The voter.
        id: NodeId,
    },
    /// Bring back a voter that lost its disk, under its id (restart it on an empty data directory first): it becomes a learner and gets its vote back once it has caught up.
    Rejoin {
        /// The voter.
        id: NodeId,
    },
    /// Remove a member. Removing the leader hands leadership to the most up-to-date voter first.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// Replace voter DEAD with a new member (one command): the new one is added as a learner, catches up (a snapshot, then the log), and is swapped in for DEAD in one configuration change. Waits until done; if it does not catch up within the group's catch_up_timeout_ms, it is removed again and the configuration is as before.
    Replace {
        /// The voter to replace (typically dead).
        dead: NodeId,
        /// The new member, as ID=PEER-HOST:PORT,CLIENT-HOST:PORT.
        #[arg(long = "with", value_parser = parse_new_member)]
        with: (NodeId, MemberAddrs),
        /// Stop waiting after this many seconds (the replacement goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
}

fn parse_new_member(s: &str) -> Result<(NodeId, MemberAddrs)> {
    let bad = || anyhow::anyhow!("expected ID=PEER-HOST:PORT,CLIENT-HOST:PORT, got {s:?}");
    let (id, rest) = s.split_once('=').ok_or_else(bad)?;
    let (peer, client) = rest.split_once(',').ok_or_else(bad)?;
    let id = id
        .parse()
        .map_err(|e| anyhow::anyhow!("bad node id {id:?}: {e}"))?;
    Ok((
        id,
        MemberAddrs {
            peer: peer.to_string(),
            client: client.to_string(),
        },
    ))
}

/// Run one `member` command against the group at `addr` (the client
/// follows leader hints).
pub async fn run(c: Client, cmd: MemberCommand) -> Result<()> {
    match cmd {
        MemberCommand::List => {
            let s = leader_status(&c).await?;
            crate::emit(
                || {
                    serde_json::json!({
                        "node": s.node_id,
                        "index": s.membership_index,
                        "membership": s.membership,
                        "followers": s.followers,
                    })
                },
                || print_members(&s),
            );
            Ok(())
        }
        MemberCommand::Add {
            id,
            peer_addr,
            client_addr,
            learner,
        } => {
            let addrs = MemberAddrs {
                peer: peer_addr,
                client: client_addr,
            };
            let change = MembershipChange::Add {
                id,
                addrs,
                voter: !learner,
            };
            let (term, index) = c.change_membership(change).await?;
            let what = if learner {
                "a learner"
            } else {
                "a learner; the leader promotes it to voter once it has caught up"
            };
            crate::emit(
                || serde_json::json!({"node": id, "change": "add", "index": index, "term": term}),
                || {
                    println!(
                        "added node {id} as {what} (configuration at index {index}, term {term})"
                    )
                },
            );
            Ok(())
        }
        MemberCommand::Promote { id } => {
            let (term, index) = c
                .change_membership(MembershipChange::Promote { id })
                .await?;
            crate::emit(
                || serde_json::json!({"node": id, "change": "promote", "index": index, "term": term}),
                || println!("node {id} is a voter (configuration at index {index}, term {term})"),
            );
            Ok(())
        }
        MemberCommand::Demote { id } => {
            let (term, index) = c.change_membership(MembershipChange::Demote { id }).await?;
            crate::emit(
                || serde_json::json!({"node": id, "change": "demote", "index": index, "term": term}),
                || println!("node {id} is a learner (configuration at index {index}, term {term})"),
            );
            Ok(())
        }
        MemberCommand::Rejoin { id } => {
            let (term, index) = c.change_membership(MembershipChange::Rejoin { id }).await?;
            crate::emit(
                || serde_json::json!({"node": id, "change": "rejoin", "index": index, "term": term}),
                || {
                    println!(
                        "node {id} is a learner, a voter again once it has caught up (configuration at \
                 index {index}, term {term})"
                    )
                },
            );
            Ok(())
        }
        MemberCommand::Remove { id } => {
            let (term, index) = c.change_membership(MembershipChange::Remove { id }).await?;
            crate::emit(
                || serde_json::json!({"node": id, "change": "remove", "index": index, "term": term}),
                || println!("node {id} was removed (configuration at index {index}, term {term})"),
            );
            Ok(())
        }
        MemberCommand::Replace {
            dead,
            with: (id, addrs),
            timeout_s,
        } => replace(&c, dead, id, addrs, Duration::from_secs(timeout_s)).await,
    }
}

async fn replace(
    c: &Client,
    dead: NodeId,
    id: NodeId,
    addrs: MemberAddrs,
    timeout: Duration,
) -> Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    let started = tokio::time::Instant::now();
    let change = MembershipChange::Replace {
        out: dead,
        id,
        addrs,
    };
    let (_, added) = c.change_membership(change).await?;
    eprintln!(
        "added node {id} as a learner to replace voter {dead} (configuration at index {added})"
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("node {msg} [{bar:40}] {pos}/{len} entries ({elapsed})")?
            .progress_chars("=> "),
    );
    bar.set_message(id.to_string());
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let s = match leader_status(c).await {
            Ok(s) => s,
            Err(_) if started.elapsed() < timeout => continue,
            Err(e) => return Err(e),
        };
        let m = &s.membership;
        if m.voters.contains(&id) && !m.contains(dead) && !m.is_joint() {
            bar.finish_and_clear();
            crate::emit(
                || {
                    serde_json::json!({
                        "node": id, "change": "replace", "replaced": dead,
                        "index": s.membership_index, "term": s.term,
                        "seconds": started.elapsed().as_secs_f64(),
                    })
                },
                || {
                    println!(
                        "replaced voter {dead} with node {id} in {:.1} s (configuration at index {}, term {}): {m}",
                        started.elapsed().as_secs_f64(),
                        s.membership_index,
                        s.term
                    )
                },
            );
            return Ok(());
        }
        if !m.contains(id) {
            bar.abandon();
            bail!(
                "node {id} did not catch up within the group's catch_up_timeout_ms and was \
                 removed again; voter {dead} stays (configuration at index {})",
                s.membership_index
            );
        }
        if let Some(f) = s.followers.iter().find(|f| f.id == id) {
            bar.set_length(s.last_index);
            bar.set_position(f.matched);
        }
        if started.elapsed() >= timeout {
            bar.abandon();
            bail!(
                "node {id} has not replaced voter {dead} within {timeout:?}; the replacement goes \
                 on (watch it with `understudy member list`)"
            );
        }
    }
}

/// The leader's status (the one that knows every member's progress), or
/// the node's own when no leader is known.
async fn leader_status(c: &Client) -> Result<Status> {
    let s = c.status().await?;
    if s.role == understudy::replication::Role::Leader {
        return Ok(s);
    }
    let Some(address) = s.leader_address.clone() else {
        return Ok(s);
    };
    let addr: SocketAddr = address
        .parse()
        .with_context(|| format!("bad leader address {address}"))?;
    match Client::connect(addr).await {
        Ok(l) => Ok(l.status().await.unwrap_or(s)),
        Err(_) => Ok(s),
    }
}

fn print_members(s: &Status) {
    let m: &Membership = &s.membership;
    let at = if s.membership_index == 0 {
        "the bootstrap member list (no change made yet)".to_string()
    } else {
        format!("the configuration at index {}", s.membership_index)
    };
    println!("node {} reports {at}: {m}", s.node_id);
    println!(
        "{:<6} {:<22} {:<22} {:<22} {:>10} {:>10}",
        "ID", "ROLE", "PEER", "CLIENT", "MATCHED", "LAG"
    );
    for id in m.members() {
        let mut role = if m.voters.contains(&id) {
            "voter".to_string()
        } else if m.is_voter(id) {
            "voter (leaving)".to_string()
        } else if m.catching_up.contains_key(&id) {
            "learner (catching up)".to_string()
        } else {
            "learner".to_string()
        };
        if s.leader == Some(id) {
            role.push_str(", leader");
        }
        let addrs = m.addrs.get(&id).cloned().unwrap_or_default();
        let client = if addrs.client.is_empty() {
            s.client_addresses.get(&id).cloned().unwrap_or_default()
        } else {
            addrs.client
        };
        let (matched, lag) = match s.followers.iter().find(|f| f.id == id) {
            Some(f) => (f.matched.to_string(), f.lag_entries.to_string()),
            None if s.node_id == id => (s.last_index.to_string(), "0".into()),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<6} {:<22} {:<22} {:<22} {:>10} {:>10}",
            id, role, addrs.peer, client, matched, lag
        );
    }
}
