//! The `understudy` CLI as a user runs it: `dev` starts a node with the kv
//! machine, the client subcommands round-trip JSON, and every error is one
//! clear line with a non-zero exit code.

use std::time::Duration;
use understudy::types::Outcome;
use understudy_tests::{NodeProc, cbor, decode, run_cli};

#[tokio::test]
async fn dev_starts_a_three_node_group_with_the_kv_machine_deployed() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start_dev(&dir.path().join("dev")).unwrap();
    // The first line names node 1; the client finds the leader from it.
    let c = understudy::api::client::Client::connect_group(vec![node.addr])
        .await
        .unwrap();
    // Node 1 lists `kv` once it applied the deploy (a follower compiles
    // the module first: seconds on a busy machine).
    let mut deployed = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if c.status().await.unwrap().actors.contains(&"kv".to_string()) {
            deployed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(deployed, "dev deploys the kv example as actor `kv`");
    let w = c
        .command("kv", cbor(r#"{"put":{"key":"hello","value":"world"}}"#))
        .await
        .unwrap();
    assert!(w.outcome.is_ok(), "{:?}", w.outcome);
    let (out, _) = c
        .query("kv", cbor(r#"{"get":{"key":"hello"}}"#))
        .await
        .unwrap();
    let Outcome::Ok(b) = out else {
        panic!("{out:?}")
    };
    assert_eq!(decode::<Option<String>>(&b).as_deref(), Some("world"));
}

#[test]
fn client_subcommands_round_trip_json() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n1"), 1).unwrap();
    let addr = node.addr.to_string();
    let (ok, out, err) =
        run_cli(&["deploy", "--addr", &addr, "bank", "--example", "bank"]).unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("deployed actor bank"), "{out}");
    for cmd in [
        r#"{"open":{"account":"alice","deposit":100}}"#,
        r#"{"open":{"account":"bob","deposit":5}}"#,
        r#"{"transfer":{"from":"alice","to":"bob","amount":30}}"#,
    ] {
        let (ok, out, err) = run_cli(&["send", "--addr", &addr, "bank", cmd]).unwrap();
        assert!(ok, "{cmd}: {out}{err}");
    }
    let (ok, out, _) = run_cli(&[
        "query",
        "--addr",
        &addr,
        "bank",
        r#"{"balance":{"account":"bob"}}"#,
    ])
    .unwrap();
    assert!(ok);
    assert_eq!(out.trim(), "35");
    let (ok, out, _) = run_cli(&["query", "--addr", &addr, "bank", r#""total""#]).unwrap();
    assert!(ok);
    assert_eq!(out.trim(), "105", "transfers never create or destroy money");
    // An overdraft is refused, changes nothing, and exits non-zero.
    let (ok, _, err) = run_cli(&[
        "send",
        "--addr",
        &addr,
        "bank",
        r#"{"transfer":{"from":"bob","to":"alice","amount":1000}}"#,
    ])
    .unwrap();
    assert!(!ok);
    assert!(err.contains("insufficient-funds"), "{err}");
    let (_, out, _) = run_cli(&["query", "--addr", &addr, "bank", r#""total""#]).unwrap();
    assert_eq!(out.trim(), "105");
    let (ok, out, _) = run_cli(&["status", "--addr", &addr]).unwrap();
    assert!(ok);
    assert!(out.contains("Leader") && out.contains("bank"), "{out}");
}

#[test]
fn errors_are_one_clear_line_and_a_nonzero_exit() {
    understudy_tests::setup!();
    // Nothing listens on this port: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cases: [(&[&str], &str); 3] = [
        (
            &["send", "--addr", &addr, "kv", r#"{"put":{}}"#],
            "is a node running",
        ),
        (
            &["send", "--addr", &addr, "kv", "{not json"],
            "not valid JSON",
        ),
        (
            &["deploy", "--addr", &addr, "x", "--example", "nope"],
            "no example named",
        ),
    ];
    for (args, expect) in cases {
        let (ok, out, err) = run_cli(args).unwrap();
        assert!(!ok, "{args:?} must fail");
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(expect),
            "{args:?}: {err}"
        );
    }
}
