//! Bad input of every kind gets a clear error, loses nothing, and the node
//! keeps serving. Each test runs a real node process.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use understudy::api::{ErrorCode, Frame, PROTOCOL_VERSION, Request, Response};
use understudy::types::Outcome;
use understudy_tests::{NodeProc, cbor, decode};

async fn node_with(actors: &[(&str, &[u8])]) -> (tempfile::TempDir, NodeProc) {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n1"), 1).unwrap();
    let c = node.client().await.unwrap();
    for (name, wasm) in actors {
        let w = c.deploy(name, wasm.to_vec()).await.unwrap();
        assert!(w.outcome.is_ok(), "{:?}", w.outcome);
    }
    (dir, node)
}

/// The node still takes a write and answers a read after the abuse.
async fn assert_still_serving(node: &NodeProc) {
    let c = node.client().await.unwrap();
    let w = c
        .command("kv", cbor(r#"{"put":{"key":"alive","value":"yes"}}"#))
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
    let (out, _) = c
        .query("kv", cbor(r#"{"get":{"key":"alive"}}"#))
        .await
        .unwrap();
    let Outcome::Ok(b) = out else {
        panic!("{out:?}")
    };
    assert_eq!(decode::<Option<String>>(&b).as_deref(), Some("yes"));
}

async fn raw(node: &NodeProc) -> Framed<TcpStream, understudy::net::FrameCodec> {
    let s = TcpStream::connect(node.addr).await.unwrap();
    Framed::new(s, understudy::net::codec())
}

async fn read_error(f: &mut Framed<TcpStream, understudy::net::FrameCodec>) -> ErrorCode {
    let bytes = f.next().await.expect("an error frame").unwrap();
    let frame: Frame<Response> = understudy::net::decode(&bytes).unwrap();
    match frame.body {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_frame_is_refused_and_node_keeps_serving() {
    understudy_tests::setup!();
    let (_d, node) = node_with(&[("kv", understudy_examples::KV)]).await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let len = (understudy::net::FRAME_BYTES_MAX as u32) + 1;
    s.write_all(&len.to_be_bytes()).await.unwrap();
    s.write_all(&[0u8; 1024]).await.unwrap();
    let mut f = Framed::new(s, understudy::net::codec());
    assert_eq!(read_error(&mut f).await, ErrorCode::BadFrame);
    assert!(
        f.next().await.is_none(),
        "connection closed after a bad frame"
    );
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn truncated_frame_is_dropped_and_node_keeps_serving() {
    understudy_tests::setup!();
    let (_d, node) = node_with(&[("kv", understudy_examples::KV)]).await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(&100u32.to_be_bytes()).await.unwrap();
    s.write_all(&[1u8; 10]).await.unwrap();
    drop(s);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn unknown_frame_gets_bad_frame() {
    understudy_tests::setup!();
    let (_d, node) = node_with(&[("kv", understudy_examples::KV)]).await;
    let mut f = raw(&node).await;
    f.send(Bytes::from_static(b"\x01\xa1\x63foo\x63bar"))
        .await
        .unwrap();
    assert_eq!(read_error(&mut f).await, ErrorCode::BadFrame);
    let mut f = raw(&node).await;
    f.send(Bytes::from_static(b"definitely not cbor"))
        .await
        .unwrap();
    assert_eq!(read_error(&mut f).await, ErrorCode::BadFrame);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn newer_protocol_version_is_refused_by_name() {
    understudy_tests::setup!();
    let (_d, node) = node_with(&[("kv", understudy_examples::KV)]).await;
    let mut f = raw(&node).await;
    let frame = Frame {
        v: PROTOCOL_VERSION + 1,
        id: 9,
        body: Request::Status,
    };
    f.send(understudy::net::encode(&frame)).await.unwrap();
    assert_eq!(read_error(&mut f).await, ErrorCode::UnsupportedVersion);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn modules_that_are_not_machines_are_refused_with_the_reason() {
    understudy_tests::setup!();
    let (_d, node) = node_with(&[("kv", understudy_examples::KV)]).await;
    let c = node.client().await.unwrap();
    let err = c.deploy("junk", b"hello".to_vec()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    assert!(err.to_string().contains("not a WebAssembly"), "{err}");

    let wasi =
        wat::parse_str(r#"(component (import "wasi:filesystem/types@0.2.0" (instance)))"#).unwrap();
    let err = c.deploy("wasi", wasi).await.unwrap_err();
    assert!(
        err.to_string().contains("wasi:filesystem/types@0.2.0"),
        "{err}"
    );

    let err = c
        .deploy("Bad Name", understudy_examples::KV.to_vec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid actor name"), "{err}");
    assert!(
        !c.status()
            .await
            .unwrap()
            .actors
            .contains(&"wasi".to_string())
    );
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn misbehaving_machine_commands_fail_deterministically_and_roll_back() {
    understudy_tests::setup!();
    let (_d, node) = node_with(&[
        ("kv", understudy_examples::KV),
        ("mis", understudy_examples::MISBEHAVE),
    ])
    .await;
    let c = node.client().await.unwrap();
    let cases = [
        (r#"{"loop":{"key":"a"}}"#, "fuel"),
        (r#"{"alloc":{"key":"b","mib":200}}"#, "memory"),
        (r#"{"panic":{"key":"c"}}"#, "trap"),
        (r#"{"refuse":{"key":"d"}}"#, "refused"),
    ];
    for (cmd, what) in cases {
        let w = c.command("mis", cbor(cmd)).await.unwrap();
        let ok = match what {
            "fuel" => w.outcome == Outcome::OutOfFuel,
            "memory" => w.outcome == Outcome::MemoryLimit,
            "trap" => matches!(w.outcome, Outcome::Trapped { .. }),
            _ => matches!(w.outcome, Outcome::Refused { .. }),
        };
        assert!(ok, "{cmd}: {:?}", w.outcome);
    }
    for key in ["a", "b", "c", "d"] {
        let (out, _) = c
            .query("mis", cbor(&format!(r#"{{"read":{{"key":"{key}"}}}}"#)))
            .await
            .unwrap();
        assert_eq!(
            out,
            Outcome::Ok(understudy::codec::to_cbor(&None::<String>).into()),
            "{key} rolled back"
        );
    }
    let (out, _) = c
        .query("mis", cbor(r#"{"write":{"key":"q"}}"#))
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Trapped { .. }), "{out:?}");
    let (out, _) = c.query("mis", cbor(r#""loop""#)).await.unwrap();
    assert_eq!(out, Outcome::OutOfFuel);
    let w = c.command("nobody", cbor("1")).await.unwrap();
    assert_eq!(w.outcome, Outcome::NoSuchActor);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn retried_write_is_applied_once_and_returns_its_first_result() {
    understudy_tests::setup!();
    let (_d, node) = node_with(&[("counter", understudy_examples::COUNTER)]).await;
    let c = node.client().await.unwrap();
    let tag = c.next_tag();
    let add = cbor(r#"{"add":{"name":"n","by":5}}"#);
    let first = c
        .command_tagged("counter", add.clone(), tag, Default::default())
        .await
        .unwrap();
    // A retry from another connection, as after a reconnect.
    let c2 = node.client().await.unwrap();
    let again = c2
        .command_tagged("counter", add, tag, Default::default())
        .await
        .unwrap();
    assert_eq!(first.outcome, again.outcome);
    let (out, _) = c.query("counter", cbor(r#"{"name":"n"}"#)).await.unwrap();
    assert_eq!(
        out,
        Outcome::Ok(understudy::codec::to_cbor(&5i64).into()),
        "applied once"
    );
}

#[test]
fn data_directory_of_another_node_is_refused_at_start() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n1");
    drop(NodeProc::start(&path, 1).unwrap());
    let err = NodeProc::start(&path, 2)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(err.contains("belongs to node 1"), "{err}");
    let err = NodeProc::start_in_cluster(&path, 1, "other")
        .err()
        .expect("must refuse")
        .to_string();
    assert!(err.contains("cluster"), "{err}");
    // The rightful owner still starts.
    NodeProc::start(&path, 1).unwrap();
}

#[test]
fn data_directory_of_another_format_is_refused_at_start() {
    understudy_tests::setup!();
    use understudy::storage::{FORMAT_VERSION, Identity, StorageOptions, open};
    for (version, reason) in [
        (FORMAT_VERSION + 1, "upgrade Understudy"),
        (FORMAT_VERSION - 1, "older than this build's"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1");
        let other = Identity {
            format_version: version,
            cluster_id: "test".into(),
            node_id: 1,
        };
        drop(open(&path, &other, &StorageOptions::default()).unwrap());
        let err = NodeProc::start(&path, 1)
            .err()
            .expect("must refuse")
            .to_string();
        assert!(err.contains(reason), "{err}");
    }
}

/// Send one hello to a peer port; returns the reply.
async fn hello(
    addr: std::net::SocketAddr,
    h: &understudy::peer::Hello,
) -> understudy::peer::HelloReply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, understudy::net::codec());
    framed.send(understudy::net::encode(h)).await.unwrap();
    let reply = framed.next().await.expect("a reply").unwrap();
    understudy::net::decode(&reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_another_cluster_unknown_nodes_other_protocols_and_stale_terms_are_refused() {
    use understudy::peer::{Hello, HelloReply, Lane, PEER_PROTOCOL_VERSION};
    use understudy::replication::Message;
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = understudy_tests::Group::start(dir.path(), 3, &[]).unwrap();
    let leader = g.leader(std::time::Duration::from_secs(20)).await.unwrap();
    let c = g.client().await.unwrap();
    let w = c
        .deploy("kv", understudy_examples::KV.to_vec())
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
    let target = (1..=3).find(|&i| i != leader).unwrap();
    let node = g.node(target);
    let peer_addr = node.peer_addr.unwrap();
    let from = (1..=3).find(|&i| i != target).unwrap();
    // The harness's test timing, as the members run it.
    let good = understudy_tests::member_hello(from, target, Lane::Control);
    for (bad, why) in [
        (
            Hello {
                cluster_id: "another".into(),
                ..good.clone()
            },
            "cluster id",
        ),
        (
            Hello {
                from: 9,
                ..good.clone()
            },
            "not a member",
        ),
        (
            Hello {
                v: PEER_PROTOCOL_VERSION + 1,
                ..good.clone()
            },
            "newer",
        ),
        (
            Hello {
                v: PEER_PROTOCOL_VERSION - 1,
                ..good.clone()
            },
            "older",
        ),
        (
            Hello {
                to: from,
                ..good.clone()
            },
            "meant for node",
        ),
        (
            Hello {
                log_kind: understudy::node::LogKind::Row,
                ..good.clone()
            },
            "log kind",
        ),
    ] {
        match hello(peer_addr, &bad).await {
            HelloReply::Refused(reason) => assert!(reason.contains(why), "{reason}"),
            HelloReply::Welcome { .. } | HelloReply::LostData { .. } => {
                panic!("hello accepted: {bad:?}")
            }
        }
    }
    let log = node.stderr();
    assert!(log.contains("peer refused"), "refusals are logged: {log}");

    // A message of a stale term is refused: it neither changes the node's
    // term nor its log.
    let before = g.client_of(target).await.unwrap().status().await.unwrap();
    let stream = TcpStream::connect(peer_addr).await.unwrap();
    let mut framed = Framed::new(stream, understudy::net::codec());
    framed
        .send(understudy::net::encode(&Hello {
            lane: Lane::Data,
            ..good.clone()
        }))
        .await
        .unwrap();
    let reply = framed.next().await.unwrap().unwrap();
    assert!(matches!(
        understudy::net::decode::<HelloReply>(&reply).unwrap(),
        HelloReply::Welcome { .. }
    ));
    let stale = Message::Append {
        term: 0,
        prev_index: 0,
        prev_term: 0,
        entries: vec![understudy::types::Entry {
            index: 1,
            term: 0,
            context: understudy::types::EntryContext {
                timestamp_ms: 0,
                seed: 0,
            },
            payload: understudy::types::Payload::Noop,
        }],
        commit: 1,
    };
    framed
        .send(understudy::net::encode(
            &understudy::peer::PeerMessage::Raft(stale),
        ))
        .await
        .unwrap();
    // Garbage on an accepted connection closes it, nothing else.
    framed.send(Bytes::from_static(b"\xff\xfe")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = g.client_of(target).await.unwrap().status().await.unwrap();
    assert_eq!(after.term, before.term);
    assert!(after.last_index >= before.last_index);
    assert_eq!(
        g.leader(std::time::Duration::from_secs(20)).await.unwrap(),
        leader
    );
    let w = c
        .command("kv", cbor(r#"{"put":{"key":"still","value":"here"}}"#))
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
}

/// A client that pipelines requests and never reads its answers is paused
/// (the node stops reading its connection once
/// `server::IN_FLIGHT_MAX` answers are pending) instead of making the
/// node buffer answers without bound; once it reads, every request it sent
/// is answered, and the node served others all along.
#[tokio::test]
async fn a_client_that_does_not_read_its_answers_is_paused_and_loses_nothing() {
    understudy_tests::setup!();
    let (_d, node) = node_with(&[("kv", understudy_examples::KV)]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(16 << 10).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    // Each answer is a 64 KiB value, so the node's socket buffers fill
    // after a few dozen; each request carries 16 KiB of padding, so the
    // node's receive buffer holds only a few thousand.
    let value = "v".repeat(64 << 10);
    let c = node.client().await.unwrap();
    let put = format!(r#"{{"put":{{"key":"big","value":"{value}"}}}}"#);
    assert!(c.command("kv", cbor(&put)).await.unwrap().outcome.is_ok());
    let get = cbor(&format!(
        r#"{{"get":{{"key":"big","pad":"{}"}}}}"#,
        "p".repeat(16 << 10)
    ));
    let request = |id: u64| {
        let body = understudy::net::encode(&Frame {
            v: PROTOCOL_VERSION,
            id,
            body: Request::Query {
                actor: "kv".into(),
                request: serde_bytes::ByteBuf::from(get.clone()),
                level: understudy::api::ReadLevel::Any,
            },
        });
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    };
    // Far more than the node may hold in flight plus what the sockets buffer.
    let limit = 10_000u64;
    let mut sent = 0u64;
    let mut rest: Vec<u8> = Vec::new();
    while sent < limit {
        let frame = request(sent);
        let mut done = 0;
        while done < frame.len() {
            let wrote =
                tokio::time::timeout(std::time::Duration::from_secs(2), w.write(&frame[done..]))
                    .await;
            match wrote {
                Ok(n) => done += n.unwrap(),
                Err(_) => break, // stalled: the node stopped reading
            }
        }
        if done < frame.len() {
            rest = frame[done..].to_vec();
            break;
        }
        sent += 1;
    }
    assert!(
        sent < limit,
        "the node read {sent} requests from a client that reads no answers"
    );
    assert!(
        sent >= understudy::node::server::IN_FLIGHT_MAX as u64,
        "paused after {sent} requests, before its in-flight limit"
    );
    // Others are served meanwhile.
    assert_still_serving(&node).await;
    // Read every answer while finishing the last request.
    let reader = tokio::spawn(async move {
        let mut f = tokio_util::codec::FramedRead::new(&mut r, understudy::net::codec());
        let mut ids = std::collections::BTreeSet::new();
        while ids.len() as u64 <= sent {
            let bytes = f.next().await.expect("an answer").unwrap();
            let frame: Frame<Response> = understudy::net::decode(&bytes).unwrap();
            match frame.body {
                Response::Read { outcome, .. } => assert!(outcome.is_ok(), "{outcome:?}"),
                other => panic!("{other:?}"),
            }
            assert!(ids.insert(frame.id), "answered twice: {}", frame.id);
        }
        ids
    });
    tokio::time::timeout(std::time::Duration::from_secs(60), w.write_all(&rest))
        .await
        .expect("the node reads the rest of the last request")
        .unwrap();
    let ids = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
        .await
        .expect("every answer arrives")
        .unwrap();
    assert_eq!(ids, (0..=sent).collect());
}
