//! The HTTP/JSON API with real node processes: a round trip of every
//! route (a write sent to a follower is passed on to the leader, an
//! idempotency key makes a retried write one write), and bad input answered
//! with a problem document — never a 5xx or a dropped connection. Every
//! request has a timeout (`http` takes one).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use understudy::http::{HTTP_JSON_BODY_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, ROUTES};
use understudy_tests::{Group, HttpAnswer, http, kv_put, with_kv, within};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// The routes a test went through, as (method, template).
#[derive(Default)]
struct Seen(BTreeSet<(String, String)>);

impl Seen {
    async fn call(
        &mut self,
        addr: SocketAddr,
        method: &str,
        (template, path): (&str, &str),
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpAnswer {
        self.0.insert((method.to_string(), template.to_string()));
        http(20, addr, method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

fn http_of(g: &Group, id: u64) -> SocketAddr {
    g.node(id).http_addr.expect("the node serves HTTP")
}

/// A problem document with this status and title.
fn problem(a: &HttpAnswer, status: u16, title: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.header("content-type"),
        Some("application/problem+json"),
        "{a:?}"
    );
    let p = a.json();
    assert_eq!(p["title"], title, "{p}");
    assert_eq!(p["status"], status, "{p}");
    assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
}

/// A started group of three with HTTP ports, once it has a leader: its
/// leader and a follower, and their HTTP addresses.
struct Three {
    g: Group,
    leader: u64,
    follower: u64,
    l: SocketAddr,
    f: SocketAddr,
}

async fn three_with_http(g: Group) -> Three {
    let leader = g
        .leader(Duration::from_secs(20))
        .await
        .expect("a leader within 20 s");
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let (l, f) = (http_of(&g, leader), http_of(&g, follower));
    Three {
        g,
        leader,
        follower,
        l,
        f,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_and_a_follower_passes_writes_on() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start(dir.path(), 3, &["--http-listen", "127.0.0.1:0"]).unwrap();
    // (`_g` keeps the group running to the end of the test.)
    let Three {
        g: _g,
        leader,
        follower,
        l,
        f,
    } = three_with_http(g).await;
    let mut seen = Seen::default();

    // Status.
    let a = seen
        .call(l, "GET", ("/v1/status", "/v1/status"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["node_id"], leader);

    // Deploy, through a follower (passed on to the leader).
    let a = seen
        .call(
            f,
            "PUT",
            ("/v1/actors/{actor}", "/v1/actors/kv"),
            &[("Content-Type", "application/wasm")],
            understudy_examples::KV,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["outcome"], "ok");

    // Commands: at the leader, at a follower, and keyed twice.
    let commands = ("/v1/actors/{actor}/commands", "/v1/actors/kv/commands");
    let put = |k: &str, v: &str| format!(r#"{{"put":{{"key":"{k}","value":"{v}"}}}}"#);
    let a = seen
        .call(l, "POST", commands, &[JSON], put("a", "1").as_bytes())
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["state"], "written");
    let a = seen
        .call(f, "POST", commands, &[JSON], put("b", "2").as_bytes())
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let token = (a.json()["term"].clone(), a.json()["index"].clone());
    // A keyed write, another write of the same key, then the keyed one
    // retried (at another node): answered with its first outcome, and not
    // applied again (c keeps the later value).
    let key = ("Idempotency-Key", "order-17");
    let first = seen
        .call(f, "POST", commands, &[JSON, key], put("c", "3").as_bytes())
        .await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let a = seen
        .call(l, "POST", commands, &[JSON], put("c", "4").as_bytes())
        .await;
    assert_eq!(a.status, 200);
    let again = seen
        .call(l, "POST", commands, &[JSON, key], put("c", "3").as_bytes())
        .await;
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(first.json()["outcome"], again.json()["outcome"]);
    assert_eq!(first.json()["value"], again.json()["value"]);
    let accepted = seen
        .call(
            l,
            "POST",
            (
                "/v1/actors/{actor}/commands",
                "/v1/actors/kv/commands?concern=leader",
            ),
            &[JSON],
            put("d", "4").as_bytes(),
        )
        .await;
    assert_eq!(accepted.status, 202);
    assert_eq!(accepted.json()["state"], "accepted");

    // Queries, at a follower: linearizable, and a session read of the
    // follower's own write.
    let queries = ("/v1/actors/{actor}/queries", "/v1/actors/kv/queries");
    let a = seen
        .call(f, "POST", queries, &[JSON], br#"{"get":{"key":"a"}}"#)
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["value"], "1");
    let a = seen
        .call(f, "POST", queries, &[JSON], br#"{"get":{"key":"c"}}"#)
        .await;
    assert_eq!(
        a.json()["value"],
        "4",
        "the retried keyed write was applied again"
    );
    let session = format!(
        "/v1/actors/kv/queries?level=session:{}:{}",
        token.0, token.1
    );
    let a = seen
        .call(
            f,
            "POST",
            ("/v1/actors/{actor}/queries", &session),
            &[JSON],
            br#"{"get":{"key":"b"}}"#,
        )
        .await;
    assert_eq!(a.json()["value"], "2", "{}", a.json());

    // Membership: list, and a learner added through a follower then
    // removed.
    let a = seen
        .call(f, "GET", ("/v1/members", "/v1/members"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json()["membership"]["voters"].as_array().map(Vec::len),
        Some(3),
        "{}",
        a.json()
    );
    let add =
        br#"{"Add":{"id":9,"addrs":{"peer":"127.0.0.1:9","client":"127.0.0.1:10"},"voter":false}}"#;
    let a = seen
        .call(f, "POST", ("/v1/members", "/v1/members"), &[JSON], add)
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = seen
        .call(
            l,
            "POST",
            ("/v1/members", "/v1/members"),
            &[JSON],
            br#"{"Remove":{"id":9}}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));

    // Auth and audit (auth is off: everyone is admin on a plaintext port).
    let a = seen
        .call(l, "GET", ("/v1/auth", "/v1/auth"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["enabled"], false, "{}", a.json());
    let a = seen
        .call(
            f,
            "POST",
            ("/v1/auth", "/v1/auth"),
            &[JSON],
            br#"{"UserAdd":{"name":"alice","roles":["reader"]}}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = seen
        .call(l, "GET", ("/v1/audit", "/v1/audit?limit=5"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    assert!(a.json().is_array(), "{}", a.json());

    // Metrics (checked in `metrics_pass_promtool_and_change_with_load`).
    let a = seen
        .call(l, "GET", ("/metrics", "/metrics"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    // The cluster view and its page (rendered in
    // `the_cluster_page_shows_the_members_and_the_new_leader_after_a_kill`).
    let a = seen
        .call(f, "GET", ("/v1/cluster", "/v1/cluster"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    let view = a.json();
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{view}");
    assert!(
        members.iter().all(|m| m["status"]["node_id"] == m["id"]),
        "every member answered: {view}"
    );
    let a = seen.call(f, "GET", ("/", "/"), &[], b"").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&a.body).contains("/v1/cluster"));
    // The OpenAPI document is the one in the repository.
    let a = seen
        .call(f, "GET", ("/openapi.json", "/openapi.json"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    let kept = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json")).unwrap();
    assert_eq!(a.body, kept);

    // A switchover asked of a follower (passed on to the leader).
    let a = seen
        .call(
            f,
            "POST",
            ("/v1/promote", "/v1/promote"),
            &[JSON],
            format!(r#"{{"node":{follower}}}"#).as_bytes(),
        )
        .await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = http(10, f, "GET", "/v1/status", &[], b"")
            .await
            .unwrap()
            .json();
        if s["role"] == "Leader" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no switchover: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(seen.0, routes, "every route had a round trip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_a_problem_document_never_a_5xx() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start(dir.path(), 1, &["--http-listen", "127.0.0.1:0"]).unwrap();
    g.leader(Duration::from_secs(20))
        .await
        .expect("a leader within 20 s");
    let n = http_of(&g, 1);
    let c = within(10, "a client", g.client()).await.unwrap();
    within(30, "a deploy", understudy_tests::deploy_kv(&c)).await;
    let ask = |method: &'static str,
               path: &'static str,
               headers: Vec<(&'static str, String)>,
               body: Vec<u8>| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(20, n, method, path, &h, &body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    let json = || vec![("Content-Type", "application/json".to_string())];
    // Malformed JSON, JSON the machine cannot decode, a wrong media type.
    problem(
        &ask(
            "POST",
            "/v1/actors/kv/commands",
            json(),
            b"{not json".to_vec(),
        )
        .await,
        400,
        "BadRequest",
    );
    let a = ask(
        "POST",
        "/v1/actors/kv/commands",
        json(),
        b"[1,2,3]".to_vec(),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_ne!(a.json()["outcome"], "ok", "{}", a.json());
    problem(
        &ask(
            "POST",
            "/v1/actors/kv/commands",
            vec![("Content-Type", "text/plain".into())],
            b"{}".to_vec(),
        )
        .await,
        415,
        "UnsupportedMediaType",
    );
    // The JSON body limit, at and one past (whitespace pads a small query).
    let padded = |len: usize| {
        let q = br#"{"get":{"key":"a"}}"#;
        let mut b = q.to_vec();
        b.resize(len, b' ');
        b
    };
    let a = ask(
        "POST",
        "/v1/actors/kv/queries",
        json(),
        padded(HTTP_JSON_BODY_BYTES_MAX),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = ask(
        "POST",
        "/v1/actors/kv/queries",
        json(),
        padded(HTTP_JSON_BODY_BYTES_MAX + 1),
    )
    .await;
    problem(&a, 413, "TooLarge");
    assert!(
        a.json()["detail"]
            .as_str()
            .unwrap()
            .contains("HTTP_JSON_BODY_BYTES_MAX")
    );
    // Past every body limit of the server.
    let a = ask(
        "POST",
        "/v1/actors/kv/queries",
        json(),
        vec![b' '; understudy::limits::MODULE_BYTES_MAX + 1],
    )
    .await;
    problem(&a, 413, "TooLarge");
    // A command whose CBOR is over COMMAND_BYTES_MAX: the node's refusal.
    let big = format!(
        r#"{{"put":{{"key":"k","value":"{}"}}}}"#,
        "x".repeat(understudy::limits::COMMAND_BYTES_MAX)
    );
    problem(
        &ask("POST", "/v1/actors/kv/commands", json(), big.into_bytes()).await,
        413,
        "TooLarge",
    );
    // Unknown routes and methods.
    problem(
        &ask("GET", "/v2/nothing", vec![], vec![]).await,
        404,
        "NotFound",
    );
    let a = ask("DELETE", "/v1/status", vec![], vec![]).await;
    problem(&a, 405, "MethodNotAllowed");
    assert_eq!(a.header("allow"), Some("GET"));
    // An unknown actor reads the same from a command and a query.
    let a = ask("POST", "/v1/actors/nope/commands", json(), b"{}".to_vec()).await;
    let b = ask("POST", "/v1/actors/nope/queries", json(), b"{}".to_vec()).await;
    problem(&a, 404, "NoSuchActor");
    problem(&b, 404, "NoSuchActor");
    assert_eq!(a.json()["detail"], b.json()["detail"]);
    // Actor names at and one past their limit.
    let name = |n: usize| "a".repeat(n);
    let at: &'static str = Box::leak(format!("/v1/actors/{}/queries", name(64)).into_boxed_str());
    let past: &'static str = Box::leak(format!("/v1/actors/{}/queries", name(65)).into_boxed_str());
    problem(
        &ask("POST", at, json(), b"{}".to_vec()).await,
        404,
        "NoSuchActor",
    );
    problem(
        &ask("POST", past, json(), b"{}".to_vec()).await,
        400,
        "BadRequest",
    );
    // Bad parameters and headers.
    problem(
        &ask(
            "POST",
            "/v1/actors/kv/commands?concern=most",
            json(),
            b"{}".to_vec(),
        )
        .await,
        400,
        "BadRequest",
    );
    problem(
        &ask(
            "POST",
            "/v1/actors/kv/queries?level=fresh",
            json(),
            b"{}".to_vec(),
        )
        .await,
        400,
        "BadRequest",
    );
    let mut h = json();
    h.push(("Authorization", "Basic xyz".into()));
    problem(
        &ask("POST", "/v1/actors/kv/queries", h, b"{}".to_vec()).await,
        401,
        "Unauthenticated",
    );
    // Idempotency keys at and one past their limit.
    let mut h = json();
    h.push(("Idempotency-Key", "k".repeat(IDEMPOTENCY_KEY_BYTES_MAX)));
    let a = ask(
        "POST",
        "/v1/actors/kv/commands",
        h,
        br#"{"put":{"key":"i","value":"1"}}"#.to_vec(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let mut h = json();
    h.push(("Idempotency-Key", "k".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1)));
    problem(
        &ask(
            "POST",
            "/v1/actors/kv/commands",
            h,
            br#"{"put":{"key":"i","value":"1"}}"#.to_vec(),
        )
        .await,
        400,
        "BadRequest",
    );
    // A deploy that is not a module, and one of the wrong media type.
    let a = ask(
        "PUT",
        "/v1/actors/other",
        vec![("Content-Type", "application/wasm".into())],
        b"not wasm".to_vec(),
    )
    .await;
    assert!((400..500).contains(&a.status), "{a:?}");
    problem(
        &ask("PUT", "/v1/actors/other", json(), b"{}".to_vec()).await,
        415,
        "UnsupportedMediaType",
    );
}

/// Validate a metrics exposition with `promtool check metrics`.
fn promtool(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian `prometheus`; scripts/install-tools.sh installs it)");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("promtool reads its input");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sample's value (0 if the series is absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_change_with_load() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start(dir.path(), 3, &["--http-listen", "127.0.0.1:0"]).unwrap();
    let (g, leader, c) = with_kv(g).await;
    let l = http_of(&g, leader);
    let scrape = || async move {
        let a = http(20, l, "GET", "/metrics", &[], b"").await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(
            a.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        String::from_utf8(a.body).unwrap()
    };
    let before = scrape().await;
    promtool(&before);
    for i in 0..20 {
        within(
            10,
            "a write",
            c.command("kv", kv_put(&format!("k{i}"), "v")),
        )
        .await
        .unwrap();
    }
    let after = scrape().await;
    promtool(&after);
    let grew = |series: &str, by: f64| {
        let (b, a) = (sample(&before, series), sample(&after, series));
        assert!(a >= b + by, "{series}: {b} then {a}\n{after}");
    };
    grew("understudy_commit_index", 20.0);
    // (Applying follows committing: a majority write is answered with the
    // outcome of its execution ahead of commit.)
    grew("understudy_applied_index", 1.0);
    grew(
        r#"understudy_request_seconds_count{kind="command",port="cbor"}"#,
        20.0,
    );
    grew(r#"understudy_machine_calls_total{actor="kv"}"#, 20.0);
    grew(r#"understudy_machine_fuel_total{actor="kv"}"#, 1.0);
    grew("understudy_fsync_seconds_count", 1.0);
    grew("understudy_apply_seconds_count", 1.0);
    assert_eq!(sample(&after, r#"understudy_role{role="leader"}"#), 1.0);
    assert_eq!(sample(&after, r#"understudy_members{role="voter"}"#), 3.0);
    assert!(sample(&after, r#"understudy_elections_total{outcome="won"}"#) >= 1.0);
    for f in (1..=3).filter(|&i| i != leader) {
        let series = format!(r#"understudy_follower_lag_entries{{peer="{f}"}}"#);
        assert!(after.contains(&series), "{series}\n{after}");
    }
    // A follower shows itself as one, and no followers of its own.
    let f = http_of(&g, (1..=3).find(|&i| i != leader).unwrap());
    let text =
        String::from_utf8(http(20, f, "GET", "/metrics", &[], b"").await.unwrap().body).unwrap();
    promtool(&text);
    assert_eq!(sample(&text, r#"understudy_role{role="follower"}"#), 1.0);
    assert!(!text.contains("understudy_follower_lag_entries{"), "{text}");
}

/// `--log-format json`: every line is a JSON object, and the lines of a
/// request carry its id and the client's address; text logs written to a
/// file have no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_and_the_client_address() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--log-format",
        "json",
        "--log-level",
        "info",
        "--http-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    let node = understudy_tests::NodeProc::start_member(&dir.path().join("json"), 1, "test", &args)
        .unwrap();
    let h = node.http_addr.expect("HTTP");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = http(10, h, "GET", "/v1/status", &[], b"")
            .await
            .unwrap()
            .json();
        if s["role"] == "Leader" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no leader: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = http(
        10,
        h,
        "PUT",
        "/v1/actors/x",
        &[("Content-Type", "application/wasm")],
        b"garbage",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 400);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let logs = node.stderr();
        let lines: Vec<serde_json::Value> = logs
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if let Some(l) = lines
            .into_iter()
            .find(|l| l["fields"]["message"] == "admin request")
        {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request line: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line["span"]["request_id"].as_u64().is_some(), "{line}");
    assert!(
        line["span"]["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert_eq!(line["fields"]["request"], "deploy", "{line}");
    // A text node logging to a file: no colour codes.
    let info = ["--log-level".to_string(), "info".to_string()];
    let text = understudy_tests::NodeProc::start_member(&dir.path().join("text"), 1, "test", &info)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while text.stderr().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the text node logged nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!text.stderr().contains('\u{1b}'), "{}", text.stderr());
}

/// The page as headless Chromium renders it (its DOM once its script has
/// drawn), within 60 s.
async fn rendered(page: SocketAddr, profile: &std::path::Path) -> String {
    let run = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{page}/"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = within(60, "chromium", run)
        .await
        .expect("chromium (Debian `chromium`; scripts/install-tools.sh installs it)");
    assert!(out.status.success(), "chromium: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Render until `done` holds (each render a fresh browser), within 30 s.
async fn rendered_until(
    page: SocketAddr,
    profile: &std::path::Path,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let dom = rendered(page, profile).await;
        if done(&dom) {
            return dom;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not shown within 30 s:\n{dom}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_the_members_and_the_new_leader_after_a_kill() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start(dir.path(), 3, &["--http-listen", "127.0.0.1:0"]).unwrap();
    let (mut g, leader, _c) = with_kv(g).await;
    let viewer = (1..=3).find(|&i| i != leader).unwrap();
    let page = http_of(&g, viewer);
    let profile = dir.path().join("chromium");
    let row = |id: u64, role: &str| format!(r#"data-node="{id}" data-role="{role}""#);
    let dom = rendered_until(page, &profile, "the three members", |dom| {
        dom.contains(&row(leader, "Leader"))
            && (1..=3)
                .filter(|&i| i != leader)
                .all(|i| dom.contains(&row(i, "Follower")))
    })
    .await;
    assert!(
        dom.contains(&format!(r#"<b id="leader">{leader}</b>"#)),
        "{dom}"
    );
    assert!(dom.contains("<code>kv</code>"), "the actors: {dom}");
    g.kill9(leader);
    let dom = rendered_until(page, &profile, "a new leader", |dom| {
        dom.contains(&row(leader, "unreachable"))
            && (1..=3)
                .filter(|&i| i != leader)
                .any(|i| dom.contains(&row(i, "Leader")))
    })
    .await;
    let new = (1..=3)
        .find(|&i| i != leader && dom.contains(&row(i, "Leader")))
        .unwrap();
    assert!(
        dom.contains(&format!(r#"<b id="leader">{new}</b>"#)),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("node {new} leads")),
        "the election is listed: {dom}"
    );
}

/// With TLS, the HTTP port speaks HTTPS with the node's certificate and
/// takes the client port's client certificates: the admin's certificate
/// is let in, a client without one is refused while auth is off (as on
/// the client port), plaintext gets no answer, and a write at a follower
/// by a caller known only by its certificate is answered `421` naming the
/// leader (the follower cannot present that certificate to the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_speaks_tls_with_the_client_ports_certificates() {
    use understudy::tls::ClientTls;
    use understudy_tests::https;
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start_tls(dir.path(), 3, &["--http-listen", "127.0.0.1:0"]).unwrap();
    // (`_g` keeps the group running to the end of the test.)
    let Three {
        g: _g,
        leader,
        l,
        f,
        ..
    } = three_with_http(g).await;
    let layout = understudy::tls::issue::Layout {
        dir: dir.path().join("tls"),
    };
    let admin = ClientTls::load(
        &layout.ca_cert(),
        Some((&layout.user_cert("admin"), &layout.user_key("admin"))),
    )
    .unwrap();
    let anonymous = ClientTls::load(&layout.ca_cert(), None).unwrap();
    let a = https(20, l, Some(&admin), "GET", "/v1/status", &[], b"")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["node_id"], leader);
    let a = https(20, l, Some(&anonymous), "GET", "/v1/status", &[], b"")
        .await
        .unwrap();
    problem(&a, 401, "Unauthenticated");
    let plain = http(10, l, "GET", "/v1/status", &[], b"").await;
    assert!(
        plain.as_ref().map_or(true, |a| a.status != 200),
        "plaintext was served: {plain:?}"
    );
    let a = https(
        20,
        f,
        Some(&admin),
        "POST",
        "/v1/actors/kv/commands",
        &[JSON],
        br#"{"put":{"key":"a","value":"1"}}"#,
    )
    .await
    .unwrap();
    problem(&a, 421, "NotLeader");
    assert_eq!(a.json()["leader"], leader, "{}", a.json());
}
