//! A group of three nodes in one process, for what real processes cannot
//! easily stage: a node whose machine is not deterministic.

use super::writer::HELD_PERSISTS;
use super::*;
use crate::api::client::Client;
use crate::api::{ErrorCode, ReadLevel, Status};
use crate::sandbox::Sandbox;
use crate::sandbox::{CallContext, NativeKv, NativeMachine};
use crate::types::Outcome;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Stands in for a component; writes its `bias` into every result, so
/// nodes with different biases diverge (a non-deterministic machine).
struct Skewed {
    bias: u8,
}

impl NativeMachine for Skewed {
    fn apply(
        &self,
        kv: &mut NativeKv<'_>,
        _: CallContext,
        command: &[u8],
    ) -> Result<Vec<u8>, (String, String)> {
        let mut value = command.to_vec();
        value.push(self.bias);
        kv.put(b"last", &value)
            .map_err(|e| ("host".into(), e.to_string()))?;
        Ok(Vec::new())
    }

    fn query(&self, kv: &mut NativeKv<'_>, _: &[u8]) -> Result<Vec<u8>, (String, String)> {
        let v = kv
            .get(b"last")
            .map_err(|e| ("host".into(), e.to_string()))?;
        Ok(v.unwrap_or_default())
    }
}

async fn status(addr: SocketAddr) -> Status {
    Client::connect(addr).await.unwrap().status().await.unwrap()
}

/// Three nodes in this process, with `natives(id)` registered on node
/// `id`; their client addresses once one of them leads.
async fn group(
    dir: &std::path::Path,
    kind: LogKind,
    natives: impl Fn(u64) -> Natives,
) -> Vec<SocketAddr> {
    let mut bound = Vec::new();
    for id in 1..=3u64 {
        let c = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        bound.push((id, c, p));
    }
    let peers: Vec<(u64, SocketAddr)> = bound
        .iter()
        .map(|(id, _, p)| (*id, p.local_addr().unwrap()))
        .collect();
    let mut addrs = Vec::new();
    for (id, c, p) in bound {
        let mut config = NodeConfig::new(
            id,
            "test",
            c.local_addr().unwrap(),
            dir.join(format!("n{id}")),
        );
        config.log_kind = kind;
        config.peer_listen = Some(p.local_addr().unwrap());
        config.peers = PeerConfig::others(id, &peers);
        // Equal on every member (peers with other timing are refused).
        config.timing = Timing {
            heartbeat_interval_ms: 25,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
        };
        let running = run_bound(config, natives(id), c, Some(p)).unwrap();
        addrs.push(running.client);
    }
    let c = Client::connect_group(addrs.clone()).await.unwrap();
    while c.status().await.unwrap().leader.is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    addrs
}

/// Three nodes in this process; node 3 (not the leader) runs a machine
/// that writes something else than the others' for the same command.
async fn skewed_group(dir: &std::path::Path, kind: LogKind) -> Vec<SocketAddr> {
    let component = Sandbox::normalize(understudy_examples::COUNTER).unwrap();
    let hash = Sandbox::hash(&component);
    {
        let addrs = group(dir, kind, |id| {
            let bias = u8::from(id == 3);
            vec![(hash, Arc::new(Skewed { bias }) as Arc<dyn NativeMachine>)]
        })
        .await;
        let c = Client::connect_group(addrs.clone()).await.unwrap();
        // Node 3, the odd one, must not lead: hand over if it won.
        let leader = loop {
            if let Some(l) = c.status().await.unwrap().leader {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if leader == 3 {
            c.promote(1).await.unwrap();
        }
        let w = c
            .deploy("x", understudy_examples::COUNTER.to_vec())
            .await
            .unwrap();
        assert!(w.outcome.is_ok(), "{:?}", w.outcome);
        for i in 0..(crate::node::applier::DIGEST_SAMPLE_EVERY + 8) {
            let w = c.command("x", i.to_be_bytes().to_vec()).await.unwrap();
            assert!(w.outcome.is_ok(), "{:?}", w.outcome);
        }
        addrs
    }
}

#[test]
fn a_node_whose_state_diverges_from_the_leader_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    actix::System::new().block_on(async move {
        let addrs = skewed_group(dir.path(), LogKind::Statement).await;
        let mut odd = status(addrs[2]).await;
        for _ in 0..200 {
            if odd.quarantined.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            odd = status(addrs[2]).await;
        }
        let why = odd.quarantined.expect("the divergent node is quarantined");
        assert!(why.contains("differs from the leader"), "{why}");
        for &a in &addrs[..2] {
            assert_eq!(status(a).await.quarantined, None, "the others agree");
        }
        // The quarantined node refuses reads at every level; the others serve.
        let r = Client::connect(addrs[2]).await.unwrap();
        let err = r
            .query_at("x", Vec::new(), ReadLevel::Any)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Quarantined), "{err:?}");
        let ok = Client::connect(addrs[0]).await.unwrap();
        ok.query_at("x", Vec::new(), ReadLevel::Any).await.unwrap();
        actix::System::current().stop();
    });
}

#[test]
fn row_kind_followers_apply_effects_without_running_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    actix::System::new().block_on(async move {
        let addrs = skewed_group(dir.path(), LogKind::Row).await;
        // Node 3's machine would write something else; in the row kind it
        // never runs for commands, so its state is the leader's.
        for _ in 0..200 {
            let all = [
                status(addrs[0]).await,
                status(addrs[1]).await,
                status(addrs[2]).await,
            ];
            // Settled: every node applied everything (writes are answered
            // at commit in the row kind, so the last may still be applying).
            if all
                .iter()
                .all(|s| s.applied_index == all[0].applied_index && s.applied_index == s.last_index)
            {
                assert!(all.iter().all(|s| s.digest == all[0].digest), "{all:?}");
                assert!(all.iter().all(|s| s.quarantined.is_none()));
                let read = |a| async move {
                    Client::connect(a)
                        .await
                        .unwrap()
                        .query_at("x", Vec::new(), ReadLevel::Any)
                        .await
                        .unwrap()
                        .0
                };
                let on_3 = read(addrs[2]).await;
                assert_eq!(on_3, read(addrs[0]).await);
                let Outcome::Ok(bytes) = on_3 else {
                    panic!("{on_3:?}")
                };
                assert_eq!(bytes.last(), Some(&0), "the leader's bias, not node 3's");
                actix::System::current().stop();
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the group did not settle");
    });
}

/// A lease read on the leader sees every write acknowledged before it,
/// even when the leader's own disk is slower than its followers': a write
/// is answered once the followers hold it (a majority), before the leader
/// has logged — and so applied — it, and the lease read must then wait
/// (the guard `applied ≥ commit` in `NodeState::query`,
/// `core/src/node/reads.rs`) instead of reading the state without it.
#[test]
fn a_lease_read_sees_a_write_the_slow_leader_has_not_applied_yet() {
    let dir = tempfile::tempdir().unwrap();
    actix::System::new().block_on(async move {
        let addrs = group(dir.path(), LogKind::Statement, |_| Vec::new()).await;
        let c = Client::connect_group(addrs.clone()).await.unwrap();
        let w = c
            .deploy("kv", understudy_examples::KV.to_vec())
            .await
            .unwrap();
        assert!(w.outcome.is_ok(), "{:?}", w.outcome);
        let leader = c.status().await.unwrap().leader.expect("a leader");
        let on_leader = Client::connect(addrs[leader as usize - 1]).await.unwrap();
        let on_leader_reads = Client::connect(addrs[leader as usize - 1]).await.unwrap();
        // The leader's disk stalls (its log writer holds every persist
        // until released, at most 30 s): a write is answered once both
        // followers hold it, before the leader has logged — and so applied
        // — it, whatever the load on the machine.
        let held = (
            dir.path().join(format!("n{leader}")),
            Duration::from_secs(30),
        );
        let cbor = |v: serde_json::Value| crate::codec::to_cbor(&v);
        for i in 0..2 {
            HELD_PERSISTS.lock().unwrap().push(held.clone());
            let put = serde_json::json!({"put": {"key": "k", "value": format!("v{i}")}});
            let w = on_leader.command("kv", cbor(put)).await.unwrap();
            assert!(w.outcome.is_ok(), "{:?}", w.outcome);
            let s = status(addrs[leader as usize - 1]).await;
            assert!(
                s.applied_index < w.index,
                "the leader has not applied the write it acknowledged yet: {s:?}"
            );
            // The lease read is asked while the leader's disk still
            // stalls; it must wait for the apply, which comes once the
            // disk is released.
            let get = cbor(serde_json::json!({"get": {"key": "k"}}));
            let read = on_leader_reads.query_at("kv", get, ReadLevel::Lease);
            let release = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                HELD_PERSISTS.lock().unwrap().clear();
            };
            let (read, ()) = tokio::join!(read, release);
            let (out, at) = read.unwrap();
            let Outcome::Ok(bytes) = out else {
                panic!("{out:?}")
            };
            let value: Option<String> = serde_cbor::from_slice(&bytes).unwrap();
            assert_eq!(value, Some(format!("v{i}")), "read at applied index {at}");
        }
        actix::System::current().stop();
    });
}
