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
    /// The auth state the node applied (what the HTTP API checks too).
    pub auth: crate::access::AuthView,
    /// The node's TLS, if any (the HTTP API serves with its client side).
    pub tls: Option<crate::tls::NodeTls>,
    /// The node's metrics.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// With `--join`: resolves with the group's reason if it refused this
    /// node for good (another cluster id, a peer protocol it does not
    /// speak, the id taken by another member); the node has nothing to do
    /// then, and `understudy node` exits with that error.
    pub join_refused: Option<tokio::sync::oneshot::Receiver<String>>,
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
    mut config: NodeConfig,
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
    if let Some(l) = &peer_listener {
        // The address it announces (hellos, `--join`) is the bound one
        // (`--peer-listen 127.0.0.1:0` picks a port).
        config.peer_listen = Some(l.local_addr()?);
    }
    let join = config.join.clone();
    let joining = crate::api::Joining {
        cluster_id: config.cluster_id.clone(),
        peer_protocol: crate::peer::PEER_PROTOCOL_VERSION,
    };
    let join_as = (
        config.node_id,
        crate::api::MemberAddrs {
            peer: config.advertise_peer.clone().unwrap_or_else(|| {
                config
                    .peer_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            }),
            client: config
                .advertise_client
                .clone()
                .unwrap_or_else(|| bound.to_string()),
        },
    );
    let super::shell::Started {
        node,
        identity: me,
        auth,
        metrics,
    } = Node::start_parts(config, natives, Some(bound))?;
    let tls = me.tls.clone();
    let mut peer = None;
    if let Some(l) = peer_listener {
        peer = Some(l.local_addr()?);
        let addr = node.clone();
        crate::peer::serve(l, me, move |inbound| addr.do_send(FromPeer(inbound)));
    }
    server::serve(
        listener,
        node.clone(),
        budget,
        timeouts,
        tls.clone(),
        auth.clone(),
        metrics.clone(),
    );
    let mut join_refused = None;
    if let Some(through) = join {
        let (refused, told) = tokio::sync::oneshot::channel();
        join_refused = Some(told);
        let node = node.clone();
        actix::spawn(async move {
            if let Err(why) = join_group(node, through, join_as, joining).await {
                let _ = refused.send(why);
            }
        });
    }
    Ok(Running {
        node,
        client: bound,
        peer,
        auth,
        tls,
        metrics,
        join_refused,
    })
}

/// Most time between two attempts to join (the attempts double up to it).
pub const JOIN_RETRY_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// `--join`: unless this node's log already holds a configuration (a
/// restart), ask the group at `through` to add it as a learner that the
/// leader promotes once caught up. Retried (same tag) until the group
/// answers. A refusal that retrying cannot fix (another cluster id or
/// peer protocol, the id taken by another member, a bad address) is the
/// error returned: the group changed nothing, and the node stops.
async fn join_group(
    node: Addr<Node>,
    through: String,
    (id, addrs): (crate::types::NodeId, crate::api::MemberAddrs),
    joining: crate::api::Joining,
) -> Result<(), String> {
    use crate::api::{Request, Response};
    let (tx, rx) = tokio::sync::oneshot::channel();
    node.do_send(super::shell::ClientCall {
        request: Request::Status,
        reply: tx,
        by: None,
        span: tracing::Span::none(),
    });
    if let Ok(Response::Status(s)) = rx.await
        && s.membership_index > 0
    {
        tracing::info!(
            index = s.membership_index,
            "this node's log holds the group's configuration: not joining again"
        );
        return Ok(());
    }
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match join_once(&through, id, &addrs, &joining).await {
            Joined::Added { term, index } => {
                tracing::info!(
                    through,
                    term,
                    index,
                    "joined the group as a learner; catching up"
                );
                return Ok(());
            }
            Joined::Already => {
                tracing::info!(through, "already a member of the group");
                return Ok(());
            }
            Joined::Refused(why) => {
                tracing::error!(through, %why, "the group refused to add this node");
                return Err(format!(
                    "the group at {through} refused to add this node: {why}"
                ));
            }
            Joined::Retry(e) => {
                tracing::warn!(through, error = %e, "joining the group failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(JOIN_RETRY_PAUSE_MAX);
            }
        }
    }
}

/// What one attempt to join came to.
enum Joined {
    /// Added, by the configuration at `index`.
    Added {
        term: crate::types::Term,
        index: crate::types::Index,
    },
    /// A member already, with these addresses (an earlier attempt got
    /// through before this node restarted).
    Already,
    /// Refused for good (the id taken by another member, a bad address).
    Refused(String),
    /// Not reached, or not now: try again.
    Retry(anyhow::Error),
}

async fn join_once(
    through: &str,
    id: crate::types::NodeId,
    addrs: &crate::api::MemberAddrs,
    joining: &crate::api::Joining,
) -> Joined {
    use crate::api::client::{Client, ClientError};
    use crate::api::{ErrorCode, MembershipChange};
    let to: SocketAddr = match tokio::net::lookup_host(through).await {
        Ok(mut found) => match found.next() {
            Some(a) => a,
            None => return Joined::Retry(anyhow::anyhow!("{through} resolves to no address")),
        },
        Err(e) => return Joined::Retry(e.into()),
    };
    let client = match Client::connect_group(vec![to]).await {
        Ok(c) => c,
        Err(e) => return Joined::Retry(e.into()),
    };
    let change = MembershipChange::Add {
        id,
        addrs: addrs.clone(),
        voter: true,
    };
    match client.join(change, joining.clone()).await {
        Ok((term, index)) => Joined::Added { term, index },
        Err(ClientError::Api(e)) if e.code == ErrorCode::BadRequest => {
            match client.status().await {
                Ok(s)
                    if s.membership.contains(id) && s.membership.addrs.get(&id) == Some(addrs) =>
                {
                    Joined::Already
                }
                Ok(_) => Joined::Refused(e.message),
                Err(e) => Joined::Retry(e.into()),
            }
        }
        Err(e) => Joined::Retry(e.into()),
    }
}
