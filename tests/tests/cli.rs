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

/// `understudy bench` against a running group: a progress bar on standard
/// error, then a table of writes, reads and both (or one JSON document),
/// with operations counted and no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_prints_its_table_and_its_json() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = understudy_tests::Group::start(dir.path(), 3, &[]).unwrap();
    g.leader(Duration::from_secs(20)).await.unwrap();
    let addr = g.node(2).addr.to_string();
    let (ok, out, err) = understudy_tests::run_cli_within(
        120,
        &[
            "bench",
            "--addr",
            &addr,
            "--seconds",
            "2",
            "--clients",
            "4",
            "--reads",
            "0.5",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("deployed the kv example as actor \"bench\""),
        "{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("4 clients for 2."), "{out}");
    assert!(
        lines[1]
            .split_whitespace()
            .eq(["ops", "ops/s", "p50", "p99", "p99.9", "max", "errors"]),
        "{out}"
    );
    for (row, name) in lines[2..5].iter().zip(["writes", "reads", "total"]) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], name, "{out}");
        assert!(
            cells[1].parse::<u64>().unwrap() > 0,
            "{name}: no operations in {out}"
        );
        assert_eq!(cells.last(), Some(&"0"), "{name}: errors in {out}");
    }
    // JSON, at another level, against the actor deployed by the first run.
    let (ok, out, err) = understudy_tests::run_cli_within(
        120,
        &[
            "bench",
            "--addr",
            &addr,
            "--seconds",
            "1",
            "--clients",
            "2",
            "--reads",
            "1",
            "--level",
            "any",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(!err.contains("deployed"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["level"], "any");
    assert_eq!(v["writes"]["ops"], 0);
    assert!(v["reads"]["ops"].as_u64().unwrap() > 0, "{out}");
    assert!(v["reads"]["p999_us"].as_f64().unwrap() >= v["reads"]["p50_us"].as_f64().unwrap());
    assert_eq!(v["total"]["errors"], 0, "{out}");
    // A plan past a limit is refused before anything runs.
    let (ok, _, err) =
        understudy_tests::run_cli_within(30, &["bench", "--addr", &addr, "--clients", "1025"])
            .await;
    assert!(!ok && err.contains("BENCH_CLIENTS_MAX"), "{err}");
}

/// The Kubernetes example: the manifests parse (PyYAML), the headless
/// Service, the StatefulSet and its volume agree with each other, and the
/// container's script, run for a bootstrap pod and for a pod added later,
/// makes a node configuration the binary accepts (`node … --check`): the
/// pod's id, its announced DNS names, the other bootstrap members as
/// peers, or `join` for a pod past them.
#[test]
fn the_kubernetes_example_makes_valid_member_configurations() {
    understudy_tests::setup!();
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/deploy/kubernetes.yaml"
    );
    let parsed = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            manifest,
        ])
        .output()
        .expect("python3 with PyYAML (scripts/install-tools.sh)");
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&parsed.stdout).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Service", "Service", "StatefulSet", "NetworkPolicy"]
    );
    let (headless, set) = (&docs[0], &docs[2]);
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(set["spec"]["serviceName"], headless["metadata"]["name"]);
    let labels = &set["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&set["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&headless["spec"]["selector"], labels);
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(
        container["volumeMounts"][0]["name"],
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    );
    let ports: Vec<u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    let service_ports: Vec<u64> = headless["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, service_ports);
    let script = container["args"][0].as_str().unwrap();
    let bootstrap = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "BOOTSTRAP_MEMBERS")
        .and_then(|e| e["value"].as_str())
        .unwrap()
        .to_string();

    // The script with an `understudy` that checks instead of starting.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("understudy");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nexec {} \"$@\" --check\n",
            understudy_tests::understudy_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let name = |n: u64| format!("understudy-{n}.understudy.shop.svc.cluster.local");
    for ordinal in [0u64, 1, 2, 3] {
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .env("HOSTNAME", format!("understudy-{ordinal}"))
            .env("POD_NAMESPACE", "shop")
            .env("BOOTSTRAP_MEMBERS", &bootstrap)
            .env("PATH", &path)
            .output()
            .unwrap();
        let (config, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "pod {ordinal}: {config}{err}");
        assert!(
            config.contains(&format!("node_id = {}\n", ordinal + 1)),
            "{config}"
        );
        assert!(
            config.contains(&format!("data_dir = \"{mount}\"")),
            "{config}"
        );
        assert!(
            config.contains(&format!("advertise_client = \"{}:7600\"", name(ordinal)))
                && config.contains(&format!("advertise_peer = \"{}:7700\"", name(ordinal))),
            "{config}"
        );
        if ordinal < 3 {
            for other in (0..3).filter(|&o| o != ordinal) {
                assert!(
                    config.contains(&format!(
                        "id = {}\naddress = \"{}:7700\"\nclient_address = \"{}:7600\"",
                        other + 1,
                        name(other),
                        name(other)
                    )),
                    "pod {ordinal} lacks peer {other}: {config}"
                );
            }
            assert!(!config.contains("join ="), "{config}");
        } else {
            assert!(
                config.contains(&format!("join = \"{}:7600\"", name(0))),
                "{config}"
            );
            assert!(!config.contains("[[peers]]"), "{config}");
        }
    }
}

/// Members that listen on one address and announce another — a host name,
/// as a Kubernetes pod announces its DNS name — are known by that name
/// (status, leader hints), and a client that starts at a follower follows
/// the name it is given to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_announce_host_names_and_clients_follow_them() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free(), free())).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let (client, peer) = ports[id as usize - 1];
        let mut args: Vec<String> = [
            "node",
            "--id",
            &id.to_string(),
            "--cluster",
            "test",
            "--listen",
            &format!("127.0.0.1:{client}"),
            "--peer-listen",
            &format!("127.0.0.1:{peer}"),
            "--advertise-client",
            &format!("localhost:{client}"),
            "--advertise-peer",
            &format!("localhost:{peer}"),
            "--heartbeat-ms",
            "25",
            "--election-timeout-ms",
            "150-300",
        ]
        .map(String::from)
        .to_vec();
        for other in (1..=3u64).filter(|&o| o != id) {
            let (c, p) = ports[other as usize - 1];
            args.push("--peer".into());
            args.push(format!("{other}=localhost:{p},localhost:{c}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(NodeProc::spawn_args(&args, &dir.path().join(format!("node{id}")), id).unwrap());
    }
    let any = understudy_tests::within(
        10,
        "a connection",
        understudy::api::client::Client::connect_node_with(nodes[0].addr, Default::default()),
    )
    .await
    .unwrap();
    let leader = understudy_tests::within(30, "a leader", async {
        loop {
            if let Ok(s) = any.status().await
                && let Some(l) = s.leader
            {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let follower = (1..=3u64).find(|&i| i != leader).unwrap();
    let at_follower = understudy_tests::within(
        10,
        "a connection",
        understudy::api::client::Client::connect_node_with(
            nodes[follower as usize - 1].addr,
            Default::default(),
        ),
    )
    .await
    .unwrap();
    let s = understudy_tests::within(10, "a status", at_follower.status())
        .await
        .unwrap();
    let (leader_client, _) = ports[leader as usize - 1];
    assert_eq!(
        s.leader_address.as_deref(),
        Some(format!("localhost:{leader_client}").as_str())
    );
    assert!(
        s.client_addresses
            .values()
            .all(|a| a.starts_with("localhost:")),
        "{:?}",
        s.client_addresses
    );
    // A client that knows only the follower follows the leader's name.
    let c = understudy_tests::within(
        10,
        "a connection",
        understudy::api::client::Client::connect_group(vec![nodes[follower as usize - 1].addr]),
    )
    .await
    .unwrap();
    let w = understudy_tests::within(
        30,
        "a deploy through the follower",
        c.deploy("kv", understudy_examples::KV.to_vec()),
    )
    .await
    .unwrap();
    assert!(w.outcome.is_ok(), "{:?}", w.outcome);
}

/// `--output json` on the printing commands (each prints one JSON
/// document), `actors` with module hashes and deploy indexes, `deploy`
/// over an existing actor only with `--replace` (printing the old and new
/// module hash), and an unknown actor read the same from `send` and
/// `query`.
#[test]
fn printing_commands_speak_json_and_deploy_replaces_only_when_asked() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("n1"), 1).unwrap();
    let addr = node.addr.to_string();
    let env = [
        ("UNDERSTUDY_ADDR", addr.as_str()),
        ("UNDERSTUDY_OUTPUT", "json"),
    ];
    let cli = |args: &[&str], stdin: &[u8]| -> (bool, serde_json::Value, String) {
        let (ok, out, err) = understudy_tests::run_cli_with(args, &env, stdin).unwrap();
        let v = if ok {
            serde_json::from_str(out.trim())
                .unwrap_or_else(|e| panic!("{args:?} printed no JSON document ({e}): {out}"))
        } else {
            serde_json::Value::Null
        };
        (ok, v, err)
    };
    let (ok, deployed, err) = cli(&["deploy", "kv", "--example", "kv"], b"");
    assert!(ok, "{err}");
    assert_eq!(deployed["actor"], "kv");
    assert!(deployed["replaced"].is_null(), "{deployed}");
    let kv_hash = deployed["module"].as_str().unwrap().to_string();
    // Over an existing actor: refused without --replace, naming its module.
    let (ok, _, err) = cli(&["deploy", "kv", "--example", "counter"], b"");
    assert!(
        !ok && err.contains("--replace") && err.contains(&kv_hash),
        "{err}"
    );
    let (ok, actors, err) = cli(&["actors"], b"");
    assert!(ok, "{err}");
    assert_eq!(actors[0]["name"], "kv");
    assert_eq!(actors[0]["module"].as_str(), Some(kv_hash.as_str()));
    let kv_index = actors[0]["deployed_at"].as_u64().unwrap();
    assert_eq!(Some(kv_index), deployed["index"].as_u64());
    let (ok, replaced, err) = cli(&["deploy", "kv", "--example", "counter", "--replace"], b"");
    assert!(ok, "{err}");
    assert_eq!(replaced["replaced"].as_str(), Some(kv_hash.as_str()));
    assert_ne!(replaced["module"], deployed["module"]);
    // The text form says both hashes.
    let (ok, out, err) = understudy_tests::run_cli_with(
        &["deploy", "kv", "--example", "kv", "--replace"],
        &[("UNDERSTUDY_ADDR", addr.as_str())],
        b"",
    )
    .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.starts_with("replaced actor kv: module ")
            && out.contains(replaced["module"].as_str().unwrap())
            && out.contains(&format!("-> {kv_hash}")),
        "{out}"
    );
    let (ok, sent, err) = cli(&["send", "kv", "-"], br#"{"put":{"key":"k","value":"v"}}"#);
    assert!(ok, "{err}");
    assert!(
        sent["index"].as_u64().unwrap() > kv_index && sent["term"].as_u64().is_some(),
        "{sent}"
    );
    let (ok, read, err) = cli(&["query", "kv", r#"{"get":{"key":"k"}}"#], b"");
    assert!(ok, "{err}");
    assert_eq!(read["value"], "v");
    assert!(read["applied_index"].as_u64().is_some());
    let (ok, status, err) = cli(&["status"], b"");
    assert!(ok, "{err}");
    assert_eq!(status["members"][0]["node_id"], 1);
    let (ok, audit, err) = cli(&["audit", "--limit", "2"], b"");
    assert!(ok, "{err}");
    assert_eq!(audit.as_array().map(Vec::len), Some(2), "{audit}");
    let (ok, auth, err) = cli(&["auth", "show"], b"");
    assert!(ok, "{err}");
    assert_eq!(auth["enabled"], false);
    let (ok, promoted, err) = cli(&["promote", "1"], b"");
    assert!(ok, "{err}");
    assert_eq!(promoted["leader"], 1);
    let (ok, members, err) = cli(&["member", "list", "--addr", &addr], b"");
    assert!(ok, "{err}");
    assert_eq!(members["membership"]["voters"], serde_json::json!([1]));
    // An unknown actor reads the same from a command and a query.
    let (ok, _, send_err) = cli(&["send", "nope", r#"{"a":1}"#], b"");
    assert!(!ok);
    let (ok, _, query_err) = cli(&["query", "nope", r#"{"a":1}"#], b"");
    assert!(!ok);
    assert_eq!(send_err, query_err);
    assert!(
        send_err.starts_with(r#"error: no actor named "nope""#),
        "{send_err}"
    );
    // Refusals are not doubled up.
    let (ok, _, err) = understudy_tests::run_cli_with(
        &["deploy", "bad", "/etc/hostname"],
        &[("UNDERSTUDY_ADDR", addr.as_str())],
        b"",
    )
    .unwrap();
    assert!(!ok);
    assert_eq!(err.matches("refused").count(), 1, "{err}");
}

/// A flag that sets a config field takes the field's name (and the
/// shorter name it always had).
#[test]
fn node_flags_take_the_config_fields_names() {
    understudy_tests::setup!();
    for (names, id) in [
        (
            [
                "--node-id",
                "--cluster-id",
                "--heartbeat-interval-ms",
                "--retain-entries",
            ],
            "5",
        ),
        (
            [
                "--id",
                "--cluster",
                "--heartbeat-ms",
                "--log-retain-entries",
            ],
            "6",
        ),
    ] {
        let (ok, out, err) = run_cli(&[
            "node",
            names[0],
            id,
            names[1],
            "shop",
            names[2],
            "40",
            names[3],
            "777",
            "--data-dir",
            "/nonexistent/understudy",
            "--check",
        ])
        .unwrap();
        assert!(ok, "{err}");
        for line in [
            format!("node_id = {id}\n"),
            "cluster_id = \"shop\"\n".to_string(),
            "heartbeat_interval_ms = 40\n".to_string(),
            "retain_entries = 777\n".to_string(),
        ] {
            assert!(out.contains(&line), "{names:?}: no {line:?} in {out}");
        }
    }
}
