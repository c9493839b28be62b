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

/// The walk-through a new user follows against `understudy dev` (with
/// `dev_flags`), every command through the CLI with `client_flags`:
/// deploy, send, read on another node, status, a switchover, and a write
/// and read after it.
async fn cli_walk_through(
    dev_flags: &[&str],
    client_flags: impl Fn(&std::path::Path) -> Vec<String>,
) {
    use understudy_tests::run_cli_within;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let node = NodeProc::start_dev_with(&data, dev_flags).unwrap();
    let flags = client_flags(&data);
    let addr = node.addr.to_string();
    let cli = |args: &[&str]| {
        let mut all: Vec<String> = flags.clone();
        all.extend(args.iter().map(|a| a.to_string()));
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            run_cli_within(120, &args).await
        }
    };
    // The group is up once status names a leader and lists three members,
    // and dev has deployed `kv` (as its "group is up" line says).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let (ok, out, err) = cli(&["status", "--addr", &addr]).await;
        if ok
            && out.contains("; leader ")
            && !out.contains("leader none")
            && out.contains("actors: kv")
            && out.lines().count() >= 5
        {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "no group: {out}{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (ok, out, err) = cli(&["deploy", "--addr", &addr, "counter", "--example", "counter"]).await;
    assert!(ok && out.contains("deployed actor counter"), "{out}{err}");
    let (ok, out, err) = cli(&[
        "send",
        "--addr",
        &addr,
        "counter",
        r#"{"add":{"name":"c","by":5}}"#,
    ])
    .await;
    assert!(ok, "{out}{err}");
    // Read on every member, linearizably.
    let c =
        understudy::api::client::Client::connect_node_with(node.addr, walk_through_options(&flags));
    let members = understudy_tests::within(10, "a status", async {
        c.await.unwrap().status().await.unwrap()
    })
    .await
    .client_addresses;
    assert_eq!(members.len(), 3, "{status}");
    for a in members.values() {
        let (ok, out, err) = cli(&[
            "query",
            "--addr",
            a,
            "--level",
            "linearizable",
            "counter",
            r#"{"name":"c"}"#,
        ])
        .await;
        assert!(ok && out.trim() == "5", "{a}: {out}{err}");
    }
    // Hand leadership to a follower, then write and read through it.
    let leader: u64 = status
        .lines()
        .last()
        .and_then(|l| l.split("leader ").nth(1))
        .and_then(|l| l.split(';').next())
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{status}"));
    let to = (1..=3).find(|&i| i != leader).unwrap().to_string();
    let (ok, out, err) = cli(&["promote", "--addr", &addr, &to]).await;
    assert!(
        ok && out.contains(&format!("node {to} leads")),
        "{out}{err}"
    );
    let (ok, out, err) = cli(&[
        "send",
        "--addr",
        &addr,
        "counter",
        r#"{"add":{"name":"c","by":2}}"#,
    ])
    .await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&["query", "--addr", &addr, "counter", r#"{"name":"c"}"#]).await;
    assert!(ok && out.trim() == "7", "{out}{err}");
    let (ok, out, err) = cli(&["status", "--addr", &addr]).await;
    assert!(ok && out.contains(&format!("; leader {to};")), "{out}{err}");
}

/// The client options the CLI flags of a walk-through stand for.
fn walk_through_options(flags: &[String]) -> understudy::api::client::ClientOptions {
    let mut options = understudy::api::client::ClientOptions::default();
    let arg = |name: &str| {
        flags
            .iter()
            .position(|f| f == name)
            .map(|i| std::path::PathBuf::from(&flags[i + 1]))
    };
    if let Some(ca) = arg("--ca") {
        let (cert, key) = (arg("--cert").unwrap(), arg("--key").unwrap());
        options.tls = Some(understudy::tls::ClientTls::load(&ca, Some((&cert, &key))).unwrap());
    }
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_walk_through_works_against_dev() {
    understudy_tests::setup!();
    cli_walk_through(&[], |_| Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_walk_through_works_against_dev_with_tls() {
    understudy_tests::setup!();
    cli_walk_through(&["--tls"], |data| {
        let tls = data.join("tls");
        [
            ("--ca", "ca.pem"),
            ("--cert", "user-admin.pem"),
            ("--key", "user-admin-key.pem"),
        ]
        .iter()
        .flat_map(|(flag, file)| [flag.to_string(), tls.join(file).display().to_string()])
        .collect()
    })
    .await;
}

/// CLI habits: the node's address from UNDERSTUDY_ADDR and as a host
/// name, a command's JSON from standard input (`-`) or a file (`@FILE`),
/// `promote` of the current leader a no-op that succeeds, and a machine's
/// refusal in plain words.
#[test]
fn the_cli_takes_its_address_from_the_environment_and_json_from_stdin_or_a_file() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n1"), 1).unwrap();
    let addr = node.addr.to_string();
    let env = [("UNDERSTUDY_ADDR", addr.as_str())];
    let (ok, out, err) =
        understudy_tests::run_cli_with(&["deploy", "kv", "--example", "kv"], &env, b"").unwrap();
    assert!(ok, "{out}{err}");
    // Standard input, and a file.
    let put = br#"{"put":{"key":"hello","value":"world"}}"#;
    let (ok, out, err) = understudy_tests::run_cli_with(&["send", "kv", "-"], &env, put).unwrap();
    assert!(ok, "{out}{err}");
    let query = dir.path().join("get.json");
    std::fs::write(&query, br#"{"get":{"key":"hello"}}"#).unwrap();
    let at_file = format!("@{}", query.display());
    let (ok, out, err) =
        understudy_tests::run_cli_with(&["query", "kv", &at_file], &env, b"").unwrap();
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().next(), Some(r#""world""#), "{out}");
    // A host name in --addr.
    let by_name = format!("localhost:{}", node.addr.port());
    let (ok, out, err) = run_cli(&["status", "--addr", &by_name]).unwrap();
    assert!(ok, "{out}{err}");
    // The leader promoted: nothing to do, and done.
    let (ok, out, err) = understudy_tests::run_cli_with(&["promote", "1"], &env, b"").unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("node 1 leads"), "{out}");
    // A refusal in plain words (no `Some("…")`).
    let cas = br#"{"cas":{"key":"hello","expected":"x","new":"y"}}"#;
    let (ok, _, err) = understudy_tests::run_cli_with(&["send", "kv", "-"], &env, cas).unwrap();
    assert!(!ok);
    assert!(
        err.contains(r#"hello is "world", not the expected value"#) && !err.contains("Some("),
        "{err}"
    );
}

/// The deployment examples: the commented sample `node.toml` is a node
/// configuration whose every shown default is the real one, and the
/// systemd unit passes `systemd-analyze verify` (with this build's binary
/// where the unit expects the installed one).
#[test]
fn the_deployment_examples_are_valid() {
    understudy_tests::setup!();
    use understudy::node::NodeConfig;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deploy");
    let text = std::fs::read_to_string(root.join("node.toml")).unwrap();
    let sample: NodeConfig = toml::from_str(&text).expect("the sample parses as a NodeConfig");
    let mut defaults = NodeConfig::new(
        sample.node_id,
        &sample.cluster_id,
        sample.listen,
        sample.data_dir.clone(),
    );
    defaults.peer_listen = sample.peer_listen;
    defaults.http_listen = sample.http_listen;
    defaults.peers = sample.peers.clone();
    assert_eq!(
        toml::to_string(&sample).unwrap(),
        toml::to_string(&defaults).unwrap(),
        "every value the sample shows is the default"
    );
    assert_eq!(sample.peers.len(), 2);
    let unit = std::fs::read_to_string(root.join("understudy.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/understudy "),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = understudy_tests::understudy_bin();
    let here = dir.path().join("understudy.service");
    std::fs::write(
        &here,
        unit.replace("/usr/local/bin/understudy", &bin.display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&here)
        .output()
        .expect("systemd-analyze (Debian `systemd`)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
