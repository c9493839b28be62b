//! Starting a node: binding its listeners and starting its actors, the
//! peer acceptor and the client server.

use super::config::NodeConfig;
use super::server;
use super::shell::{FromPeer, Natives, Node};
use actix::Addr;
use std::net::SocketAddr;

/// A started node.
pub struct Running {
    /// The node actor.
    pub node: Addr<Node>,
    /// Bound client address.
    pub client: SocketAddr,
    /// Bound peer address (groups of more than one).
    pub peer: Option<SocketAddr>,
}

/// Start a node and its listeners inside the current actix system.
pub async fn run(config: NodeConfig) -> anyhow::Result<Running> {
    run_with(config, Vec::new()).await
}

/// [`run`] with native machines (benchmarks).
pub async fn run_with(config: NodeConfig, natives: Natives) -> anyhow::Result<Running> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let peer_listener = match config.peer_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the peer address {addr}"))?,
        ),
        None => None,
    };
    run_bound(config, natives, listener, peer_listener)
}

/// Start a node on listeners bound by the caller (so a caller can learn
/// every port of a group before any node starts).
pub fn run_bound(
    config: NodeConfig,
    natives: Natives,
    listener: tokio::net::TcpListener,
    peer_listener: Option<tokio::net::TcpListener>,
) -> anyhow::Result<Running> {
    let bound = listener.local_addr()?;
    anyhow::ensure!(
        peer_listener.is_some() || config.peers.is_empty(),
        "a node with peers needs a peer listener"
    );
    if config.insecure && config.tls.is_none() {
        tracing::warn!(
            listen = %config.listen,
            peer_listen = ?config.peer_listen,
            "INSECURE: started with --insecure and without TLS; anyone who reaches these ports \
             can join the group, deploy, write and read"
        );
    }
    let budget = server::DescriptorBudget::of_process()?;
    let timeouts = server::Timeouts {
        frame_read_ms: config.frame_read_timeout_ms,
        idle_ms: config.idle_timeout_ms,
    };
    let (node, me, auth) = Node::start_parts(config, natives, Some(bound))?;
    let tls = me.tls.clone();
    let mut peer = None;
    if let Some(l) = peer_listener {
        peer = Some(l.local_addr()?);
        let addr = node.clone();
        crate::peer::serve(l, me, move |inbound| addr.do_send(FromPeer(inbound)));
    }
    server::serve(listener, node.clone(), budget, timeouts, tls, auth);
    Ok(Running {
        node,
        client: bound,
        peer,
    })
}
