//! Security at the ports: with TLS on, only members join the group (mutual
//! TLS, the certificate's node id must be the hello's), and clients reach
//! a node only over TLS with a certificate of the right CA, if any.
//! Every network wait has a timeout (`within`).

use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use understudy::api::ErrorCode;
use understudy::api::client::{Client, ClientError, ClientOptions};
use understudy::peer::{HelloReply, Lane, PeerMessage};
use understudy::replication::Message;
use understudy::tls::ClientTls;
use understudy::tls::issue::{Ca, Layout, Validity, write_file, write_private};
use understudy_tests::{Group, kv_get, kv_put, member_hello, within};

/// How a forger reaches a member's peer port.
enum Forger {
    Plain,
    Tls(ClientTls),
}

/// Say hello as member `from` to member `to` at `peer`, and if welcomed,
/// send `then`. `Ok(reply)` if the hello was answered, `Err(why)` if the
/// connection failed first (a refused handshake).
async fn forge(
    peer: SocketAddr,
    forger: &Forger,
    from: u64,
    to: u64,
    then: Vec<PeerMessage>,
) -> Result<HelloReply, String> {
    let stream = within(
        10,
        "a peer connection",
        tokio::net::TcpStream::connect(peer),
    )
    .await
    .map_err(|e| e.to_string())?;
    let io: understudy::tls::BoxedIo = match forger {
        Forger::Plain => Box::new(stream),
        Forger::Tls(tls) => Box::new(
            within(10, "a TLS handshake", tls.connect(peer, stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?,
        ),
    };
    let mut framed = tokio_util::codec::Framed::new(io, understudy::net::codec());
    let hello = understudy::peer::Hello {
        // A forger would redirect clients to itself.
        client_address: "127.0.0.1:1".into(),
        ..member_hello(from, to, Lane::Data)
    };
    within(10, "a hello", framed.send(understudy::net::encode(&hello)))
        .await
        .map_err(|e| format!("hello: {e}"))?;
    let reply = within(10, "a hello reply", framed.next())
        .await
        .ok_or("closed without a reply")?
        .map_err(|e| format!("reply: {e}"))?;
    let reply: HelloReply = understudy::net::decode(&reply).map_err(|e| e.to_string())?;
    if matches!(reply, HelloReply::Welcome { .. }) {
        for m in then {
            within(
                10,
                "a forged message",
                framed.send(understudy::net::encode(&m)),
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        // Give the messages time to land before the connection closes.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(reply)
}

/// A heartbeat of a term far ahead: it deposes whoever leads.
fn deposing_heartbeat(term: u64) -> PeerMessage {
    PeerMessage::Raft(Message::Append {
        term: term + 1000,
        prev_index: 0,
        prev_term: 0,
        entries: Vec::new(),
        commit: 0,
    })
}

async fn max_term(g: &Group) -> u64 {
    g.statuses().await.iter().map(|s| s.term).max().unwrap_or(0)
}

/// Issue a certificate with `ca` into `dir` as NAME.pem / NAME-key.pem.
fn save(
    dir: &std::path::Path,
    name: &str,
    issued: understudy::tls::issue::Issued,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    write_file(&cert, &issued.cert_pem).unwrap();
    write_private(&key, &issued.key_pem).unwrap();
    (cert, key)
}

/// Without TLS a forged heartbeat deposes the leader (the attack is
/// real); with TLS every way a non-member may try is refused at the
/// handshake or the hello, logged with its address, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peers_are_refused_once_tls_is_on() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();

    // Control: the same forgery against a plaintext group is welcomed.
    {
        let g = Group::start(&dir.path().join("plain"), 3, &[]).unwrap();
        let leader = g.leader(Duration::from_secs(30)).await.unwrap();
        let target = (1..=3).find(|&i| i != leader).unwrap();
        let term = max_term(&g).await;
        let reply = forge(
            g.node(target).peer_addr.unwrap(),
            &Forger::Plain,
            leader,
            target,
            vec![deposing_heartbeat(term)],
        )
        .await;
        assert!(matches!(reply, Ok(HelloReply::Welcome { .. })), "{reply:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while max_term(&g).await < term + 1000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the forged term never landed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And its hello's client address became the leader hint.
        let status = within(10, "a status", async {
            g.client_of(target).await.unwrap().status().await.unwrap()
        })
        .await;
        assert_eq!(
            status.client_addresses.get(&leader).map(String::as_str),
            Some("127.0.0.1:1"),
            "the forged hello redirects clients of a plaintext group"
        );
        // TLS to this plaintext peer port: refused, said on both sides.
        let layout = understudy_tests::tls_layout(&dir.path().join("other-tls"), 3).unwrap();
        let member = Forger::Tls(
            ClientTls::load(
                &layout.ca_cert(),
                Some((&layout.node_cert(leader), &layout.node_key(leader))),
            )
            .unwrap(),
        );
        let reply = forge(
            g.node(target).peer_addr.unwrap(),
            &member,
            leader,
            target,
            vec![],
        )
        .await;
        let err = reply.expect_err("a TLS hello cannot reach a plaintext port");
        assert!(err.contains("handshake"), "{err}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !g
            .node(target)
            .stderr()
            .contains("a TLS handshake reached a plaintext peer port")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                g.node(target).stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let g = Group::start_tls(&dir.path().join("tls-group"), 3, &[]).unwrap();
    let leader = g.leader(Duration::from_secs(30)).await.unwrap();
    let c = within(10, "a client", g.client()).await.unwrap();
    let w = within(
        120,
        "a deploy",
        c.deploy("kv", understudy_examples::KV.to_vec()),
    )
    .await
    .unwrap();
    assert!(w.outcome.is_ok(), "{:?}", w.outcome);
    let w = within(30, "a write", c.command("kv", kv_put("before", "1")))
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
    let target = (1..=3).find(|&i| i != leader).unwrap();
    let third = (1..=3).find(|&i| i != leader && i != target).unwrap();
    let peer = g.node(target).peer_addr.unwrap();
    let term = max_term(&g).await;

    // The attacker's material: the group's CA certificate is public; its
    // key is not.
    let layout = g.tls.as_ref().unwrap();
    let forged = dir.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    let rogue = Ca::new("rogue CA", Validity::days(1)).unwrap();
    let hosts = ["127.0.0.1".to_string()];
    let (rogue_cert, rogue_key) = save(
        &forged,
        "rogue-leader",
        rogue.node(leader, &hosts, Validity::days(1)).unwrap(),
    );
    let (real_ca, _) = Layout {
        dir: layout.dir.clone(),
    }
    .ca(Validity::days(1))
    .unwrap();
    let expired = Validity {
        from_s: -7200,
        until_s: -3600,
    };
    let (old_cert, old_key) = save(
        &forged,
        "expired-leader",
        real_ca.node(leader, &hosts, expired).unwrap(),
    );
    let (user_cert, user_key) = save(
        &forged,
        "user",
        real_ca.user("mallory", Validity::days(1)).unwrap(),
    );
    let tls = |cert: Option<(&std::path::Path, &std::path::Path)>| {
        Forger::Tls(ClientTls::load(&layout.ca_cert(), cert).unwrap())
    };
    let (third_cert, third_key) = (layout.node_cert(third), layout.node_key(third));
    let attempts = [
        ("plaintext", Forger::Plain, "speaks only mutual TLS"),
        (
            "TLS without a certificate",
            tls(None),
            "TLS handshake failed",
        ),
        (
            "a certificate of another CA",
            tls(Some((&rogue_cert, &rogue_key))),
            "TLS handshake failed",
        ),
        (
            "an expired certificate",
            tls(Some((&old_cert, &old_key))),
            "TLS handshake failed",
        ),
        (
            "a client's certificate",
            tls(Some((&user_cert, &user_key))),
            "only node certificates",
        ),
        (
            "another member's certificate",
            tls(Some((&third_cert, &third_key))),
            "but the certificate names node",
        ),
    ];
    for (what, forger, logged) in &attempts {
        let reply = forge(peer, forger, leader, target, vec![deposing_heartbeat(term)]).await;
        assert!(
            !matches!(
                reply,
                Ok(HelloReply::Welcome { .. }) | Ok(HelloReply::LostData { .. })
            ),
            "{what}: welcomed ({reply:?})"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = g.node(target).stderr();
            if log.contains(logged) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not logged ({logged:?}): {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A forged snapshot, offered as the leader over plaintext.
    let snap = dir.path().join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(
        snap.join(understudy::peer::snapshot::chunk_name(0)),
        b"forged",
    )
    .unwrap();
    let meta = understudy::storage::SnapshotMeta {
        index: 1_000_000,
        term: term + 1000,
        digest: [0; 32],
        chunks: 1,
        bytes: 6,
        checksums: vec![[0; 32]],
        last_timestamp_ms: 0,
        membership: None,
    };
    let hello = member_hello(leader, target, Lane::Snapshot);
    let sent = within(
        30,
        "a snapshot offer",
        understudy::peer::snapshot::send_snapshot(
            &peer.to_string(),
            "test",
            leader,
            target,
            &hello.client_address,
            hello.log_kind,
            hello.timing,
            None,
            &snap,
            &meta,
        ),
    )
    .await;
    let err = sent.expect_err("a forged snapshot is refused").to_string();
    assert!(err.contains("TLS"), "{err}");

    // Nothing changed: the same leader and term, the real client address
    // for the leader, and the group takes and serves writes.
    let log = g.node(target).stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("peer connection refused") && l.contains("127.0.0.1:")),
        "refusals are logged with the remote address: {log}"
    );
    assert_eq!(
        max_term(&g).await,
        term,
        "a forged message changed the term"
    );
    assert_eq!(g.leader(Duration::from_secs(10)).await.unwrap(), leader);
    let status = within(10, "a status", async {
        g.client_of(target).await.unwrap().status().await.unwrap()
    })
    .await;
    assert_eq!(
        status.client_addresses.get(&leader),
        Some(&g.node(leader).addr.to_string()),
        "the leader hint comes from an authenticated hello only"
    );
    let w = within(30, "a write", c.command("kv", kv_put("after", "2")))
        .await
        .unwrap();
    assert!(w.outcome.is_ok());
    for id in 1..=3 {
        let n = within(10, "a client", g.client_of(id)).await.unwrap();
        for (key, value) in [("before", "1"), ("after", "2")] {
            let (out, _) = within(30, "a read", n.query("kv", kv_get(key)))
                .await
                .unwrap();
            let understudy::types::Outcome::Ok(b) = out else {
                panic!("{out:?}")
            };
            let got: Option<String> = understudy_tests::decode(&b);
            assert_eq!(got.as_deref(), Some(value), "node {id}, key {key}");
        }
    }
    g.assert_same_state(Duration::from_secs(30)).await;
}

/// The wrong transport or the wrong certificate on the client port is
/// refused at once, with an error that says what is wrong on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_the_wrong_transport_or_certificate_are_refused_clearly() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start_tls(&dir.path().join("g"), 1, &[]).unwrap();
    let node = g.node(1);
    let layout = g.tls.as_ref().unwrap();
    let connect = |tls: Option<ClientTls>| {
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(5),
            tls,
            ..ClientOptions::default()
        };
        async move {
            let c = Client::connect_node_with(node.addr, options).await?;
            c.request_timeout(Duration::from_secs(10)).status().await
        }
    };
    // The harness's admin certificate works.
    within(20, "a status", connect(g.client_options().unwrap().tls))
        .await
        .unwrap();

    // Plaintext to the TLS port.
    let err = within(20, "a plaintext status", connect(None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
    assert!(err.to_string().contains("speaks only TLS"), "{err}");

    // A client that trusts another CA refuses the node.
    let forged = dir.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    let rogue = Ca::new("rogue CA", Validity::days(1)).unwrap();
    write_file(&forged.join("rogue-ca.pem"), &rogue.cert_pem).unwrap();
    let err = within(
        20,
        "a status",
        connect(Some(
            ClientTls::load(&forged.join("rogue-ca.pem"), None).unwrap(),
        )),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Connection { .. }) && err.to_string().contains("certificate"),
        "{err}"
    );

    // Certificates the node refuses: another CA's, expired, a node's.
    let (real_ca, _) = Layout {
        dir: layout.dir.clone(),
    }
    .ca(Validity::days(1))
    .unwrap();
    let (rc, rk) = save(
        &forged,
        "rogue-user",
        rogue.user("admin", Validity::days(1)).unwrap(),
    );
    let (ec, ek) = save(
        &forged,
        "expired-user",
        real_ca
            .user(
                "admin",
                Validity {
                    from_s: -7200,
                    until_s: -3600,
                },
            )
            .unwrap(),
    );
    let (nc, nk) = (layout.node_cert(1), layout.node_key(1));
    for (what, cert, key, says) in [
        ("another CA's", &rc, &rk, "UnknownIssuer"),
        ("an expired", &ec, &ek, "certificate expired"),
        (
            "a node's",
            &nc,
            &nk,
            "node certificates are not valid on the client port",
        ),
    ] {
        let tls = ClientTls::load(&layout.ca_cert(), Some((cert, key))).unwrap();
        let err = within(20, "a status", connect(Some(tls)))
            .await
            .unwrap_err();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !node.stderr().contains(says) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} certificate: node did not log {says:?}: {}",
                node.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if what == "a node's" {
            assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
        } else {
            // The node's alert reaches the client as the reason.
            assert!(
                err.to_string().contains("alert"),
                "{what} certificate: {err}"
            );
        }
    }

    // The CLI without --ca says what to do.
    let addr = node.addr.to_string();
    let (ok, _, err) = understudy_tests::run_cli_within(30, &["status", "--addr", &addr]).await;
    assert!(
        !ok && err.contains("speaks only TLS") && err.contains("--ca"),
        "{err}"
    );

    // TLS to a plaintext node: the client says the port is not TLS.
    let plain = understudy_tests::NodeProc::start(&dir.path().join("plain"), 1).unwrap();
    let tls = g.client_options().unwrap().tls;
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        tls,
        ..ClientOptions::default()
    };
    let err = within(
        20,
        "a TLS connect",
        Client::connect_node_with(plain.addr, options),
    )
    .await
    .err()
    .expect("a TLS client cannot talk to a plaintext port");
    assert!(err.to_string().contains("does not speak TLS"), "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !plain
        .stderr()
        .contains("a TLS handshake reached a plaintext client port")
    {
        assert!(std::time::Instant::now() < deadline, "{}", plain.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a client reaches the TLS group `g` proving itself with `token` only.
fn token_options(g: &Group, token: &str) -> ClientOptions {
    let layout = g.tls.as_ref().unwrap();
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        tls: Some(ClientTls::load(&layout.ca_cert(), None).unwrap()),
        token: Some(token.to_string()),
    }
}

/// A client of the group over TLS that proves itself with `token` only.
async fn with_token(g: &Group, token: &str) -> Result<Client, ClientError> {
    Ok(
        Client::connect_group_with_options(g.addrs(), token_options(g, token))
            .await?
            .request_timeout(Duration::from_secs(20))
            .retry_for(Duration::from_secs(20)),
    )
}

/// The same, to exactly node `id`.
async fn with_token_to(g: &Group, id: u64, token: &str) -> Result<Client, ClientError> {
    Ok(
        Client::connect_node_with(g.node(id).addr, token_options(g, token))
            .await?
            .request_timeout(Duration::from_secs(20)),
    )
}

fn denied(r: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode, what: &str) {
    match r {
        Err(e) => assert_eq!(e.code(), Some(code), "{what}: {e}"),
        Ok(v) => panic!("{what}: allowed ({v:?})"),
    }
}

/// What a user without `admin` may not do: deploy, promote, read the
/// audit trail.
async fn cannot_administer(c: &Client, who: &str) {
    let deploy = c.deploy("orders", understudy_examples::KV.to_vec());
    let code = ErrorCode::PermissionDenied;
    denied(
        within(30, "a deploy", deploy).await,
        code,
        &format!("{who} deploys"),
    );
    denied(
        within(30, "a promote", c.promote(1)).await,
        code,
        &format!("{who} promotes"),
    );
    denied(
        within(30, "an audit", c.audit(10)).await,
        code,
        &format!("{who} reads the audit trail"),
    );
}

/// The CLI, as the group's admin (the harness's admin certificate).
async fn admin_cli(g: &Group, args: &[&str]) -> String {
    let layout = g.tls.as_ref().unwrap();
    let (ca, cert, key) = (
        layout.ca_cert().display().to_string(),
        layout.user_cert("admin").display().to_string(),
        layout.user_key("admin").display().to_string(),
    );
    let addr = g.addrs()[0].to_string();
    let mut all = vec!["--ca", &ca, "--cert", &cert, "--key", &key];
    let (command, rest) = args.split_at(1);
    all.extend(command);
    all.extend(["--addr", &addr]);
    all.extend(rest);
    let (ok, out, err) = understudy_tests::run_cli_within(60, &all).await;
    assert!(ok, "{args:?}: {out}{err}");
    out
}

/// Roles decide what each user may do, checked on the node that takes the
/// request and again, deterministically, where the entry applies; a
/// revoked token stops working on every node once the revocation is
/// applied there; admin actions land in the audit trail with who did them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_may_do_what_their_roles_grant_and_revocation_reaches_every_node() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start_tls(&dir.path().join("g"), 3, &[]).unwrap();
    g.leader(Duration::from_secs(30)).await.unwrap();
    let admin = within(10, "a client", g.client()).await.unwrap();
    for actor in ["orders", "billing"] {
        let w = within(
            120,
            "a deploy",
            admin.deploy(actor, understudy_examples::KV.to_vec()),
        )
        .await
        .unwrap();
        assert!(w.outcome.is_ok(), "{:?}", w.outcome);
    }
    // Set up users and roles through the CLI, as an operator would.
    admin_cli(
        &g,
        &["auth", "role", "grant", "orders-writer", "write:orders"],
    )
    .await;
    admin_cli(&g, &["auth", "role", "grant", "reader", "read:*"]).await;
    admin_cli(&g, &["auth", "user", "add", "admin", "--role", "admin"]).await;
    admin_cli(&g, &["auth", "user", "add", "w", "--role", "orders-writer"]).await;
    admin_cli(&g, &["auth", "user", "add", "r", "--role", "reader"]).await;
    let w_token = admin_cli(&g, &["auth", "token", "create", "w"])
        .await
        .trim()
        .to_string();
    let r_token = admin_cli(&g, &["auth", "token", "create", "r"])
        .await
        .trim()
        .to_string();
    assert!(w_token.starts_with("ust_"), "{w_token}");
    let out = admin_cli(&g, &["auth", "enable"]).await;
    assert!(out.contains("done at index"), "{out}");

    // The writer of `orders`.
    let w = within(20, "a client", with_token(&g, &w_token))
        .await
        .unwrap();
    let put = within(30, "a write", w.command("orders", kv_put("a", "1")))
        .await
        .unwrap();
    assert!(put.outcome.is_ok(), "{:?}", put.outcome);
    denied(
        within(30, "a write", w.command("billing", kv_put("a", "1"))).await,
        ErrorCode::PermissionDenied,
        "w writes billing",
    );
    denied(
        within(30, "a read", w.query("orders", kv_get("a"))).await,
        ErrorCode::PermissionDenied,
        "w reads",
    );
    cannot_administer(&w, "w").await;
    // The reader.
    let r = within(20, "a client", with_token(&g, &r_token))
        .await
        .unwrap();
    let (out, _) = within(30, "a read", r.query("orders", kv_get("a")))
        .await
        .unwrap();
    assert!(out.is_ok(), "{out:?}");
    denied(
        within(30, "a write", r.command("orders", kv_put("b", "2"))).await,
        ErrorCode::PermissionDenied,
        "r writes",
    );
    cannot_administer(&r, "r").await;
    // Nobody: TLS without a certificate or a token.
    let layout = g.tls.as_ref().unwrap();
    let nobody = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        tls: Some(ClientTls::load(&layout.ca_cert(), None).unwrap()),
        token: None,
    };
    let anon = within(
        20,
        "a client",
        Client::connect_node_with(g.node(1).addr, nobody),
    )
    .await
    .unwrap();
    denied(
        within(20, "a status", anon.status()).await,
        ErrorCode::Unauthenticated,
        "nobody",
    );
    // A token that is not one.
    // The last hex digit changed (to another one, whatever it was).
    let last = if w_token.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &w_token[..w_token.len() - 1]);
    denied(
        within(20, "a client", with_token_to(&g, 1, &forged))
            .await
            .map(|_| "a client"),
        ErrorCode::Unauthenticated,
        "a forged token",
    );

    // A client certificate of a user: valid until revoked.
    let (real_ca, _) = Layout {
        dir: layout.dir.clone(),
    }
    .ca(Validity::days(1))
    .unwrap();
    let carol_dir = dir.path().join("carol");
    std::fs::create_dir_all(&carol_dir).unwrap();
    let (cc, ck) = save(
        &carol_dir,
        "carol",
        real_ca.user("r", Validity::days(1)).unwrap(),
    );
    let carol = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        tls: Some(ClientTls::load(&layout.ca_cert(), Some((&cc, &ck))).unwrap()),
        token: None,
    };
    let by_cert = within(
        20,
        "a client",
        Client::connect_node_with(g.node(1).addr, carol),
    )
    .await
    .unwrap();
    let (out, _) = within(
        30,
        "a read",
        by_cert.query_at("orders", kv_get("a"), understudy::api::ReadLevel::Any),
    )
    .await
    .unwrap();
    assert!(out.is_ok(), "{out:?}");
    let cc_arg = cc.display().to_string();
    let out = admin_cli(&g, &["auth", "revoke-cert", &cc_arg]).await;
    let at: u64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    g.converged(at, Duration::from_secs(30)).await.unwrap();
    let err = within(
        30,
        "a read",
        by_cert.query_at("orders", kv_get("a"), understudy::api::ReadLevel::Any),
    )
    .await
    .unwrap_err();
    assert!(
        err.code() == Some(ErrorCode::Unauthenticated) && err.to_string().contains("revoked"),
        "{err}"
    );

    // Revoke w's token; its connections on every node fail once the
    // revocation is applied there.
    let connecting = futures::future::join_all((1..=3).map(|id| with_token_to(&g, id, &w_token)));
    let on_each: Vec<Client> = within(30, "three clients", connecting)
        .await
        .into_iter()
        .map(|c| c.unwrap())
        .collect();
    for c in &on_each {
        within(20, "a status", c.status()).await.unwrap();
    }
    let id = w_token
        .trim_start_matches("ust_")
        .split('_')
        .next()
        .unwrap()
        .to_string();
    let out = admin_cli(&g, &["auth", "token", "revoke", &id]).await;
    let at: u64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    g.converged(at, Duration::from_secs(30)).await.unwrap();
    for (i, c) in on_each.iter().enumerate() {
        denied(
            within(20, "a status", c.status()).await,
            ErrorCode::Unauthenticated,
            &format!("revoked token, node {}", i + 1),
        );
        denied(
            within(20, "a client", with_token_to(&g, i as u64 + 1, &w_token))
                .await
                .map(|_| "a client"),
            ErrorCode::Unauthenticated,
            "revoked token, new connection",
        );
    }

    // The module allow-list: once on, only listed modules deploy.
    admin_cli(&g, &["auth", "module", "allow", "--example", "kv"]).await;
    let refused = within(
        60,
        "a deploy",
        admin.deploy("c", understudy_examples::COUNTER.to_vec()),
    )
    .await;
    denied(
        refused,
        ErrorCode::PermissionDenied,
        "a module off the allow-list",
    );
    let w = within(
        120,
        "a deploy",
        admin.deploy("kv2", understudy_examples::KV.to_vec()),
    )
    .await
    .unwrap();
    assert!(w.outcome.is_ok(), "{:?}", w.outcome);

    // The admin promotes; the audit trail names who did what.
    let leader = g.leader(Duration::from_secs(10)).await.unwrap();
    let to = (1..=3).find(|&i| i != leader).unwrap();
    within(30, "a promote", admin.promote(to)).await.unwrap();
    let out = admin_cli(&g, &["audit"]).await;
    for expected in [
        "deploy orders",
        "deploy billing",
        "role grant orders-writer write:orders",
        "user add w",
        "token create",
        "auth enable",
        &format!("token revoke {id}"),
        "certificate revoke",
        "module allow",
        "deploy kv2",
        &format!("promote node {to}"),
    ] {
        assert!(out.contains(expected), "audit misses {expected:?}: {out}");
    }
    assert!(out.contains("admin (certificate): auth enable"), "{out}");
    g.assert_same_state(Duration::from_secs(30)).await;
}

/// Secure by default: a node that listens beyond loopback without TLS
/// refuses to start and says what to do; with --insecure it starts and
/// says so in its log; `understudy certs` makes what a TLS node and its
/// clients need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_beyond_loopback_need_tls_or_insecure_and_certs_makes_what_tls_needs() {
    understudy_tests::setup!();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n").display().to_string();
    let (ok, _, err) = understudy_tests::run_cli_within(
        30,
        &[
            "node",
            "--id",
            "1",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            &data,
        ],
    )
    .await;
    assert!(
        !ok && err.contains("not loopback") && err.contains("--insecure"),
        "{err}"
    );
    let node = understudy_tests::NodeProc::spawn_args(
        &["node", "--id", "1", "--listen", "0.0.0.0:0", "--insecure"],
        &dir.path().join("insecure"),
        1,
    )
    .unwrap();
    assert!(node.stderr().contains("INSECURE"), "{}", node.stderr());
    drop(node);

    // `certs`, then a TLS node from its files, reached by the CLI.
    let certs = dir.path().join("certs").display().to_string();
    let (ok, out, err) = understudy_tests::run_cli_within(
        60,
        &["certs", "--out", &certs, "--nodes", "1", "--user", "bob"],
    )
    .await;
    assert!(
        ok && out.contains("made a CA") && out.contains("user bob"),
        "{out}{err}"
    );
    let file = |f: &str| format!("{certs}/{f}");
    let tls_node = understudy_tests::NodeProc::spawn_args(
        &[
            "node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &file("node-1.pem"),
            "--tls-key",
            &file("node-1-key.pem"),
            "--peer-ca",
            &file("ca.pem"),
        ],
        &dir.path().join("tls"),
        1,
    )
    .unwrap();
    let addr = tls_node.addr.to_string();
    let (ca, cert, key) = (
        file("ca.pem"),
        file("user-bob.pem"),
        file("user-bob-key.pem"),
    );
    let (ok, out, err) = understudy_tests::run_cli_within(
        30,
        &[
            "status", "--ca", &ca, "--cert", &cert, "--key", &key, "--addr", &addr,
        ],
    )
    .await;
    assert!(ok && out.contains("Leader"), "{out}{err}");
    // A second run reuses the CA: a certificate it makes is trusted too.
    let (ok, out, err) = understudy_tests::run_cli_within(
        60,
        &["certs", "--out", &certs, "--nodes", "0", "--user", "carol"],
    )
    .await;
    assert!(ok && out.contains("using the CA"), "{out}{err}");
    let (cert, key) = (file("user-carol.pem"), file("user-carol-key.pem"));
    let (ok, out, err) = understudy_tests::run_cli_within(
        30,
        &[
            "status", "--ca", &ca, "--cert", &cert, "--key", &key, "--addr", &addr,
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
}
