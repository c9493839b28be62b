//! The peer transport: how members of a group reach each other.
//!
//! Every node dials every other member twice, one TCP connection per
//! [`Lane`]: the `data` lane carries log shipping ([`Message::Append`]), the
//! `control` lane everything else (heartbeats, votes, answers, read-index
//! rounds). So a heartbeat never waits behind megabytes of appends in a
//! socket buffer; and no lane waits for an fsync or an apply, because the
//! node actor that feeds them never blocks (the log writer and the applier
//! have their own threads).
//!
//! A connection is one-way: the dialer sends, the acceptor receives. It
//! starts with a [`Hello`] naming the protocol version, cluster, sender and
//! intended receiver; the acceptor answers [`HelloReply`] and refuses, with a
//! logged reason, a newer protocol, another cluster, a node that is not a
//! member, or a hello meant for another node. Then frames carry one
//! [`Message`] each, with the same length-delimited framing as clients
//! ([`crate::net`]). Messages are fire-and-forget: the protocol tolerates
//! loss, so a full queue or a broken connection drops them (logged at
//! debug) and the dialer reconnects with backoff.

pub mod snapshot;
mod wire;

use wire::HelloHead;
pub use wire::{
    DialError, Hello, HelloReply, Lane, PEER_PROTOCOL_VERSION, PeerConn, PeerMessage, dial_member,
};

/// Messages queued per control lane before new ones are dropped.
const CONTROL_QUEUE: usize = 4096;
/// Appends queued per data lane (the core bounds appends in flight, so this
/// is only reached while a peer is unreachable).
const DATA_QUEUE: usize = 64;
/// How long a hello (or its reply) may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest hello frame accepted before the peer is known.
pub const HELLO_BYTES_MAX: usize = 4 << 10;
/// Most inbound peer connections a node holds at once (each member dials
/// three lanes; the rest is room for reconnects). Past it a new connection
/// is closed at once and logged.
pub const PEER_CONNECTIONS_MAX: usize = 256;
/// The longest pause between two dials of an unreachable peer (the
/// pauses double up to this).
pub const REDIAL_BACKOFF_MAX: Duration = Duration::from_millis(500);

use crate::net;
use crate::tls::{BoxedIo, CertIdentity, NodeTls, TLS_HANDSHAKE_BYTE};
use crate::types::NodeId;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use understudy_core::membership::Membership;

/// Who this node is, for hellos and for checking them.
#[derive(Clone, Debug)]
pub struct LocalIdentity {
    /// Cluster id.
    pub cluster_id: String,
    /// This node.
    pub node_id: NodeId,
    /// The members whose hellos it takes: those of the configuration in
    /// effect, kept current by the node (empty: anyone of the cluster —
    /// a node that joins knows no configuration yet).
    pub members: MemberSet,
    /// Where this node serves clients.
    pub client_address: String,
    /// Where this node takes peer connections (announced in hellos).
    pub peer_address: String,
    /// Where incoming snapshots are staged.
    pub snapshot_root: std::path::PathBuf,
    /// The largest snapshot this node takes: what its state environment
    /// can hold (`storage.map_size_bytes`).
    pub snapshot_bytes_max: u64,
    /// This group's replication-log kind.
    pub log_kind: crate::config::LogKind,
    /// This group's timing.
    pub timing: crate::config::Timing,
    /// This node's data-directory incarnation, sent in every hello.
    pub incarnation: u64,
    /// Where the acceptor records its peers' incarnations (`None`: it
    /// does not, as in tests of the hello alone).
    pub book: Option<PeerBook>,
    /// Mutual TLS on the peer port and on every dial (`None`: plaintext).
    pub tls: Option<NodeTls>,
}

/// The members a node takes hellos from (see [`LocalIdentity::members`]),
/// shared between the node, which keeps it current, and its acceptor.
#[derive(Clone, Debug, Default)]
pub struct MemberSet(std::sync::Arc<std::sync::RwLock<std::collections::BTreeSet<NodeId>>>);

impl MemberSet {
    /// A set holding `ids`.
    pub fn of(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let set = MemberSet::default();
        set.set(ids);
        set
    }

    /// Replace the members.
    pub fn set(&self, ids: impl IntoIterator<Item = NodeId>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ids.into_iter().collect();
    }

    /// The members.
    pub fn get(&self) -> Vec<NodeId> {
        let set = self.0.read().unwrap_or_else(|p| p.into_inner());
        set.iter().copied().collect()
    }

    /// Whether `id` may say hello: a member, or anyone while the set is
    /// empty.
    fn admits(&self, id: NodeId) -> bool {
        let set = self.0.read().unwrap_or_else(|p| p.into_inner());
        set.is_empty() || set.contains(&id)
    }
}

/// What a node tells its peers in hello answers: its term, log position
/// (last term, last index) and configuration, kept current by the node.
#[derive(Clone, Default)]
pub struct Published(std::sync::Arc<std::sync::Mutex<PublishedState>>);

#[derive(Clone, Default)]
struct PublishedState {
    term: crate::types::Term,
    log: (crate::types::Term, crate::types::Index),
    membership: (crate::types::Index, Membership),
}

impl Published {
    /// Publish the node's `term` and log position.
    pub fn set(&self, term: crate::types::Term, log: (crate::types::Term, crate::types::Index)) {
        let mut p = self.0.lock().unwrap_or_else(|p| p.into_inner());
        p.term = term;
        p.log = log;
    }

    /// Publish the node's configuration in effect (when it changes).
    pub fn set_membership(&self, index: crate::types::Index, membership: Membership) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).membership = (index, membership);
    }

    fn get(&self) -> PublishedState {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a node remembers of its peers' data directories: the incarnation
/// each one last said hello with (durable, in the log environment), and
/// what it tells a peer in its hello answer.
#[derive(Clone)]
pub struct PeerBook {
    log: crate::storage::LogStore,
    published: Published,
}

impl std::fmt::Debug for PeerBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerBook").finish_non_exhaustive()
    }
}

impl PeerBook {
    /// A book over `log`, telling what `published` holds.
    pub fn new(log: crate::storage::LogStore, published: Published) -> Self {
        PeerBook { log, published }
    }

    /// Record that `peer` said hello with `incarnation` (durably, before it
    /// is welcomed). True if it had another one: it lost its data.
    async fn observe(&self, peer: NodeId, incarnation: u64) -> Result<bool, HelloRefused> {
        let log = self.log.clone();
        let before = tokio::task::spawn_blocking(move || log.observe_peer(peer, incarnation))
            .await
            .map_err(|e| HelloRefused::Book(e.to_string()))?
            .map_err(|e| HelloRefused::Book(e.to_string()))?;
        Ok(before.is_some())
    }
}

impl LocalIdentity {
    /// Check a hello received by this node.
    pub fn check(&self, hello: &Hello) -> Result<(), HelloRefused> {
        use HelloRefused as R;
        if hello.v > PEER_PROTOCOL_VERSION {
            return Err(R::Newer(hello.v));
        }
        if hello.v < PEER_PROTOCOL_VERSION {
            return Err(R::Older(hello.v));
        }
        if hello.cluster_id != self.cluster_id {
            return Err(R::Cluster {
                theirs: hello.cluster_id.clone(),
                ours: self.cluster_id.clone(),
            });
        }
        if hello.to != self.node_id {
            return Err(R::WrongNode {
                to: hello.to,
                me: self.node_id,
            });
        }
        if hello.log_kind != self.log_kind {
            return Err(R::LogKind {
                from: hello.from,
                theirs: hello.log_kind,
                ours: self.log_kind,
            });
        }
        if hello.timing != self.timing {
            return Err(R::Timing {
                from: hello.from,
                theirs: hello.timing,
                ours: self.timing,
            });
        }
        if hello.from == self.node_id || !self.members.admits(hello.from) {
            return Err(R::NotAMember {
                from: hello.from,
                members: self.members.get(),
            });
        }
        Ok(())
    }
}

/// Why a hello is refused (the reason goes back to the dialer, and to
/// this node's log with the remote address).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloRefused {
    /// Not a hello.
    #[error("not a peer hello: {0}")]
    NotAHello(String),
    /// A newer peer protocol.
    #[error("peer protocol version {0} is newer than this node's {PEER_PROTOCOL_VERSION}")]
    Newer(u16),
    /// An older peer protocol.
    #[error(
        "peer protocol version {0} is older than this node's {PEER_PROTOCOL_VERSION}: \
         every node of a group must run the same version"
    )]
    Older(u16),
    /// Another group.
    #[error("cluster id {theirs:?} is not this node's {ours:?}")]
    Cluster {
        /// The hello's.
        theirs: String,
        /// This node's.
        ours: String,
    },
    /// Meant for another member.
    #[error("hello meant for node {to} reached node {me}")]
    WrongNode {
        /// The member it was meant for.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// Another log kind.
    #[error("node {from} runs the {theirs:?} log kind, this node {ours:?}: a group has one kind")]
    LogKind {
        /// The peer.
        from: NodeId,
        /// Its kind.
        theirs: crate::config::LogKind,
        /// This node's.
        ours: crate::config::LogKind,
    },
    /// Other failure-detection timing.
    #[error(
        "node {from} runs with timing {theirs:?}, this node {ours:?}: every member needs the same"
    )]
    Timing {
        /// The peer.
        from: NodeId,
        /// Its timing.
        theirs: crate::config::Timing,
        /// This node's.
        ours: crate::config::Timing,
    },
    /// Not a member of this group.
    #[error("node {from} is not a member of this group {members:?}")]
    NotAMember {
        /// The claimed id.
        from: NodeId,
        /// The members.
        members: Vec<NodeId>,
    },
    /// The certificate names another member.
    #[error(
        "the hello claims to come from node {claimed}, but the certificate names node {certified}"
    )]
    NotCertified {
        /// The id the hello claims.
        claimed: NodeId,
        /// The id its certificate names.
        certified: NodeId,
    },
    /// The peer's incarnation could not be recorded.
    #[error("cannot record the peer's incarnation: {0}")]
    Book(String),
}

/// Why an accepted peer connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// No hello within `HELLO_TIMEOUT`.
    #[error("no hello in time")]
    NoHello,
    /// Closed before its hello.
    #[error("closed before its hello")]
    ClosedBeforeHello,
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Its hello was refused.
    #[error("{0}")]
    Refused(#[from] HelloRefused),
    /// A message that does not decode.
    #[error("{0}")]
    Decode(#[from] crate::codec::CodecError),
    /// A message on the lane of another kind.
    #[error("message on the wrong lane")]
    WrongLane,
    /// The snapshot transfer of a snapshot lane failed.
    #[error("{0}")]
    Snapshot(#[from] snapshot::TransferError),
}

/// What the acceptor hands to the node.
pub enum Inbound {
    /// A peer connected (its client address, for leader hints).
    Connected {
        /// The peer.
        from: NodeId,
        /// Its client address.
        client_address: String,
        /// Where it takes peer connections (as its hello says).
        peer_address: String,
    },
    /// Progress of a snapshot from a peer (the leader).
    Snapshot {
        /// The peer.
        from: NodeId,
        /// What happened.
        progress: snapshot::Progress,
    },
    /// A peer said hello under another incarnation than this node knew
    /// it by: it lost its data (see [`HelloReply::LostData`]).
    PeerLostData {
        /// The peer.
        from: NodeId,
    },
    /// A message from a peer.
    Message {
        /// The peer.
        from: NodeId,
        /// The message.
        msg: PeerMessage,
    },
}

/// Accept peer connections forever; every accepted message goes to `sink`.
pub fn serve(listener: TcpListener, me: LocalIdentity, sink: impl Fn(Inbound) + Clone + 'static) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PEER_CONNECTIONS_MAX));
    actix::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(
                            %addr,
                            "peer connection refused: PEER_CONNECTIONS_MAX = {PEER_CONNECTIONS_MAX} held"
                        );
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (me, sink) = (me.clone(), sink.clone());
                    actix::spawn(async move {
                        match accept_member(stream, me.tls.as_ref()).await {
                            Ok((io, certified)) => {
                                if let Err(e) = receive(io, addr, certified, &me, sink).await {
                                    tracing::debug!(%addr, error = %e, "peer connection ended");
                                }
                            }
                            Err(NotAdmitted::Silent(reason)) => {
                                tracing::debug!(%addr, %reason, "peer connection ended");
                            }
                            Err(NotAdmitted::Refused(reason)) => {
                                tracing::warn!(%addr, %reason, "peer connection refused");
                            }
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// Why a peer connection was not taken.
enum NotAdmitted {
    /// It sent nothing, or closed: not worth a warning (a port scan, a
    /// proxy's probe).
    Silent(String),
    /// It was refused for what it sent or presented (logged at warn).
    Refused(String),
}

/// Take a new peer connection through the port's transport: with TLS, a
/// handshake in which the dialer proves with its certificate which member
/// it is (returned); without, plaintext. A connection in the other
/// transport is answered with a refusal naming the mistake, in plaintext
/// (what a dialer of the other kind can read, if anything), and closed.
async fn accept_member(
    stream: TcpStream,
    tls: Option<&NodeTls>,
) -> Result<(BoxedIo, Option<NodeId>), NotAdmitted> {
    use NotAdmitted::{Refused, Silent};
    let first = crate::tls::first_byte(&stream, HELLO_TIMEOUT.as_millis() as u64)
        .await
        .map_err(|e| Silent(format!("no hello: {e}")))?;
    let Some(first) = first else {
        return Err(Silent("closed before its hello".into()));
    };
    let Some(tls) = tls else {
        if first == TLS_HANDSHAKE_BYTE {
            let reason = "a TLS handshake reached a plaintext peer port: this node runs without \
                          [tls], its members must too"
                .to_string();
            refuse_io(Box::new(stream), &reason).await;
            return Err(Refused(reason));
        }
        return Ok((Box::new(stream), None));
    };
    if first != TLS_HANDSHAKE_BYTE {
        let reason = "plaintext reached a peer port that speaks only mutual TLS: configure [tls] \
                      on every member"
            .to_string();
        refuse_io(Box::new(stream), &reason).await;
        return Err(Refused(reason));
    }
    let stream = tokio::time::timeout(HELLO_TIMEOUT, tls.peer_acceptor.accept(stream))
        .await
        .map_err(|_| Refused(format!("TLS handshake not done within {HELLO_TIMEOUT:?}")))?
        .map_err(|e| Refused(format!("TLS handshake failed: {e}")))?;
    let identity = crate::tls::peer_identity(stream.get_ref().1.peer_certificates());
    match identity {
        Some(Ok(CertIdentity::Node(id))) => Ok((Box::new(stream), Some(id))),
        Some(Ok(other)) => {
            let reason = format!(
                "the certificate names {other}: only node certificates are valid on the peer port"
            );
            refuse_io(Box::new(stream), &reason).await;
            Err(Refused(reason))
        }
        Some(Err(e)) => {
            let reason = format!("bad peer certificate: {e}");
            refuse_io(Box::new(stream), &reason).await;
            Err(Refused(reason))
        }
        None => Err(Refused(
            "no peer certificate (mutual TLS requires one)".into(),
        )),
    }
}

/// Send a hello refusal on a connection not yet framed, and close it.
async fn refuse_io(io: BoxedIo, reason: &str) {
    let mut framed = Framed::new(io, net::codec());
    let _ = tokio::time::timeout(HELLO_TIMEOUT, async {
        let _ = framed
            .send(net::encode(&HelloReply::Refused(reason.to_string())))
            .await;
    })
    .await;
    crate::tls::linger(framed.get_mut()).await;
}

async fn receive(
    io: BoxedIo,
    addr: std::net::SocketAddr,
    certified: Option<NodeId>,
    me: &LocalIdentity,
    sink: impl Fn(Inbound),
) -> Result<(), ReceiveError> {
    // Until it has said who it is, a connection may send only a small hello.
    let mut framed = Framed::new(io, net::FrameCodec::with_max(HELLO_BYTES_MAX));
    let first = tokio::time::timeout(HELLO_TIMEOUT, framed.next())
        .await
        .map_err(|_| ReceiveError::NoHello)?
        .ok_or(ReceiveError::ClosedBeforeHello)??;
    let hello = match read_hello(&first) {
        Ok(h) => h,
        Err(reason) => return Err(refuse(&mut framed, addr, reason).await.into()),
    };
    if let Err(reason) = me.check(&hello) {
        return Err(refuse(&mut framed, addr, reason).await.into());
    }
    if let Some(id) = certified
        && id != hello.from
    {
        let reason = HelloRefused::NotCertified {
            claimed: hello.from,
            certified: id,
        };
        return Err(refuse(&mut framed, addr, reason).await.into());
    }
    let lost = match (&me.book, hello.incarnation) {
        (Some(book), incarnation) if incarnation != 0 => {
            match book.observe(hello.from, incarnation).await {
                Ok(lost) => lost,
                Err(reason) => return Err(refuse(&mut framed, addr, reason).await.into()),
            }
        }
        _ => false,
    };
    framed.codec_mut().set_max_frame_bytes(net::FRAME_BYTES_MAX);
    let PublishedState {
        term,
        log,
        membership,
    } = me
        .book
        .as_ref()
        .map(|b| b.published.get())
        .unwrap_or_default();
    let reply = if lost {
        tracing::warn!(
            from = hello.from,
            "a peer came back without its data (new incarnation): it votes only for logs at \
             least as up-to-date as its peers'"
        );
        sink(Inbound::PeerLostData { from: hello.from });
        HelloReply::LostData {
            term,
            log,
            membership,
        }
    } else {
        HelloReply::Welcome {
            term,
            log,
            membership,
        }
    };
    framed.send(net::encode(&reply)).await?;
    tracing::debug!(from = hello.from, lane = ?hello.lane, "peer connected");
    sink(Inbound::Connected {
        from: hello.from,
        client_address: hello.client_address.clone(),
        peer_address: hello.peer_address.clone(),
    });
    if hello.lane == Lane::Snapshot {
        let from = hello.from;
        let received = snapshot::receive_snapshot(
            framed,
            &me.snapshot_root,
            me.snapshot_bytes_max,
            |progress| sink(Inbound::Snapshot { from, progress }),
        )
        .await;
        if let Err(e) = &received {
            tracing::warn!(from, error = %e, "a snapshot from a peer was refused or broke off");
        }
        return Ok(received?);
    }
    while let Some(frame) = framed.next().await {
        let frame = frame?;
        let msg: PeerMessage = match net::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(from = hello.from, error = %e, "unreadable peer message; closing");
                return Err(e.into());
            }
        };
        if Lane::of(&msg) != hello.lane {
            tracing::warn!(from = hello.from, "peer message on the wrong lane; closing");
            return Err(ReceiveError::WrongLane);
        }
        sink(Inbound::Message {
            from: hello.from,
            msg,
        });
    }
    Ok(())
}

fn read_hello(frame: &BytesMut) -> Result<Hello, HelloRefused> {
    let not_a_hello = |e: crate::codec::CodecError| HelloRefused::NotAHello(e.to_string());
    let head: HelloHead = net::decode(frame).map_err(not_a_hello)?;
    if head.v > PEER_PROTOCOL_VERSION {
        return Err(HelloRefused::Newer(head.v));
    }
    net::decode(frame).map_err(not_a_hello)
}

async fn refuse(
    framed: &mut PeerConn,
    addr: std::net::SocketAddr,
    reason: HelloRefused,
) -> HelloRefused {
    tracing::warn!(%addr, %reason, "peer refused");
    let _ = framed
        .send(net::encode(&HelloReply::Refused(reason.to_string())))
        .await;
    let _ = SinkExt::<Bytes>::close(framed).await;
    reason
}

/// Outgoing lanes to every peer.
pub struct Peers {
    lanes: BTreeMap<NodeId, (String, [mpsc::Sender<PeerMessage>; 2])>,
    me: LocalIdentity,
    answered: std::rc::Rc<dyn Fn(NodeId, HelloAnswer)>,
}

impl Peers {
    /// Start dialing every peer (id → peer address). `answered(peer,
    /// answer)` is called with every peer's answer to a hello.
    pub fn start(
        me: &LocalIdentity,
        peers: &BTreeMap<NodeId, String>,
        answered: impl Fn(NodeId, HelloAnswer) + 'static,
    ) -> Peers {
        let mut all = Peers {
            lanes: BTreeMap::new(),
            me: me.clone(),
            answered: std::rc::Rc::new(answered),
        };
        all.dial_only(peers);
        all
    }

    /// Dial exactly `peers` (id → peer address) from now on: lanes to new
    /// peers (or to a new address) start, lanes to the others close (their
    /// dialers end with them).
    pub fn dial_only(&mut self, peers: &BTreeMap<NodeId, String>) {
        self.lanes
            .retain(|id, (address, _)| peers.get(id) == Some(address));
        for (&id, address) in peers {
            if id == self.me.node_id || self.lanes.contains_key(&id) {
                continue;
            }
            let me = &self.me;
            let answered = self.answered.clone();
            let answered = move |peer, answer| answered(peer, answer);
            let mut pair = Vec::new();
            for (lane, queue) in [(Lane::Control, CONTROL_QUEUE), (Lane::Data, DATA_QUEUE)] {
                let (tx, rx) = mpsc::channel(queue);
                let hello = Hello {
                    v: PEER_PROTOCOL_VERSION,
                    cluster_id: me.cluster_id.clone(),
                    from: me.node_id,
                    to: id,
                    client_address: me.client_address.clone(),
                    lane,
                    log_kind: me.log_kind,
                    timing: me.timing,
                    incarnation: me.incarnation,
                    peer_address: me.peer_address.clone(),
                };
                actix::spawn(dial(
                    address.clone(),
                    hello,
                    me.tls.clone(),
                    rx,
                    answered.clone(),
                ));
                pair.push(tx);
            }
            let [control, data]: [mpsc::Sender<PeerMessage>; 2] =
                pair.try_into().expect("two lanes");
            self.lanes.insert(id, (address.clone(), [control, data]));
        }
    }

    /// The address `peer` is dialed at, if it is.
    pub fn address(&self, peer: NodeId) -> Option<&str> {
        self.lanes.get(&peer).map(|(a, _)| a.as_str())
    }

    /// Dial `peer` at `address` if no lane to it is open (a member that
    /// said hello before this node read the configuration naming it).
    pub fn dial_back(&mut self, peer: NodeId, address: &str) {
        if address.is_empty() || self.lanes.contains_key(&peer) {
            return;
        }
        let mut wanted: BTreeMap<NodeId, String> = self
            .lanes
            .iter()
            .map(|(&id, (a, _))| (id, a.clone()))
            .collect();
        wanted.insert(peer, address.to_string());
        tracing::info!(peer, address, "dialing back a member that said hello");
        self.dial_only(&wanted);
    }

    /// Queue a message; dropped (the protocol retries) if the lane is full.
    pub fn send(&self, to: NodeId, msg: PeerMessage) {
        let Some((_, lanes)) = self.lanes.get(&to) else {
            tracing::debug!(to, "message for a node this node does not dial; dropped");
            return;
        };
        let lane = Lane::of(&msg) as usize;
        if let Err(e) = lanes[lane].try_send(msg) {
            tracing::debug!(to, error = %e, "peer lane full or closed; message dropped");
        }
    }
}

/// Keep one lane to one peer connected and drain its queue into it.
async fn dial(
    address: String,
    hello: Hello,
    tls: Option<NodeTls>,
    mut rx: mpsc::Receiver<PeerMessage>,
    answered: impl Fn(NodeId, HelloAnswer),
) {
    let mut backoff = Duration::from_millis(20);
    let mut refused_logged = false;
    loop {
        match connect(&address, &hello, tls.as_ref()).await {
            Ok((mut framed, answer)) => {
                answered(hello.to, answer);
                backoff = Duration::from_millis(20);
                refused_logged = false;
                tracing::debug!(to = hello.to, lane = ?hello.lane, %address, "peer lane up");
                loop {
                    let Some(msg) = rx.recv().await else {
                        return; // node stopped
                    };
                    let mut batch = vec![msg];
                    while batch.len() < 64
                        && let Ok(m) = rx.try_recv()
                    {
                        batch.push(m);
                    }
                    let mut failed = false;
                    for m in &batch {
                        if framed.feed(net::encode(m)).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed || SinkExt::<Bytes>::flush(&mut framed).await.is_err() {
                        tracing::debug!(to = hello.to, lane = ?hello.lane, "peer lane broke");
                        break;
                    }
                }
            }
            Err(DialError::Refused(reason)) => {
                if !refused_logged {
                    tracing::warn!(to = hello.to, %address, %reason, "peer refused our hello");
                    refused_logged = true;
                }
                backoff = Duration::from_secs(1);
            }
            Err(DialError::Io(e)) => {
                tracing::trace!(to = hello.to, %address, error = %e, "peer unreachable");
            }
        }
        // Drop what queued up while unreachable, then wait.
        while rx.try_recv().is_ok() {}
        if rx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(REDIAL_BACKOFF_MAX);
    }
}

/// What a peer's answer to a hello says of the peer and of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloAnswer {
    /// The peer's term.
    pub term: crate::types::Term,
    /// The peer's durable log position (term, index).
    pub log: (crate::types::Term, crate::types::Index),
    /// The peer's configuration in effect, and its index.
    pub membership: (crate::types::Index, Membership),
    /// The peer knew this node under another incarnation: this node lost
    /// its data.
    pub lost_data: bool,
}

/// A welcomed connection and the answer.
type Welcomed = (PeerConn, HelloAnswer);

async fn connect(
    address: &str,
    hello: &Hello,
    tls: Option<&NodeTls>,
) -> Result<Welcomed, DialError> {
    let io = |e: std::io::Error| DialError::Io(e.to_string());
    let stream = dial_member(address, hello.to, tls, HELLO_TIMEOUT).await?;
    let mut framed = Framed::new(stream, net::codec());
    framed.send(net::encode(hello)).await.map_err(io)?;
    let reply = tokio::time::timeout(HELLO_TIMEOUT, framed.next())
        .await
        .map_err(|_| DialError::Io("no hello reply in time".into()))?
        .ok_or_else(|| DialError::Io("closed during hello".into()))?
        .map_err(io)?;
    match net::decode::<HelloReply>(&reply) {
        Ok(HelloReply::Welcome {
            term,
            log,
            membership,
        }) => Ok((
            framed,
            HelloAnswer {
                term,
                log,
                membership,
                lost_data: false,
            },
        )),
        Ok(HelloReply::LostData {
            term,
            log,
            membership,
        }) => Ok((
            framed,
            HelloAnswer {
                term,
                log,
                membership,
                lost_data: true,
            },
        )),
        Ok(HelloReply::Refused(reason)) => Err(DialError::Refused(reason)),
        Err(e) => Err(DialError::Refused(format!("unreadable hello reply: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Message;

    fn me() -> LocalIdentity {
        LocalIdentity {
            cluster_id: "c".into(),
            node_id: 1,
            members: MemberSet::of([1, 2, 3]),
            client_address: "127.0.0.1:1".into(),
            peer_address: String::new(),
            snapshot_root: std::path::PathBuf::from("/nonexistent"),
            snapshot_bytes_max: u64::MAX,
            log_kind: crate::config::LogKind::Statement,
            timing: crate::config::Timing::default(),
            incarnation: 1,
            book: None,
            tls: None,
        }
    }

    fn hello() -> Hello {
        Hello {
            v: PEER_PROTOCOL_VERSION,
            cluster_id: "c".into(),
            from: 2,
            to: 1,
            client_address: "127.0.0.1:2".into(),
            lane: Lane::Control,
            log_kind: crate::config::LogKind::Statement,
            timing: crate::config::Timing::default(),
            incarnation: 2,
            peer_address: String::new(),
        }
    }

    #[test]
    fn hellos_of_strangers_are_refused() {
        assert_eq!(me().check(&hello()), Ok(()));
        let cases = [
            (
                Hello {
                    cluster_id: "other".into(),
                    ..hello()
                },
                "cluster id",
            ),
            (Hello { from: 9, ..hello() }, "not a member"),
            (Hello { from: 1, ..hello() }, "not a member"),
            (Hello { to: 3, ..hello() }, "meant for node 3"),
            (
                Hello {
                    log_kind: crate::config::LogKind::Row,
                    ..hello()
                },
                "log kind",
            ),
            (
                Hello {
                    timing: crate::config::Timing {
                        heartbeat_interval_ms: 1,
                        ..crate::config::Timing::default()
                    },
                    ..hello()
                },
                "timing",
            ),
            (
                Hello {
                    v: PEER_PROTOCOL_VERSION + 1,
                    ..hello()
                },
                "newer",
            ),
            (
                Hello {
                    v: PEER_PROTOCOL_VERSION - 1,
                    ..hello()
                },
                "older",
            ),
        ];
        for (h, why) in cases {
            let err = me().check(&h).unwrap_err().to_string();
            assert!(err.contains(why), "{err} should say {why}");
        }
    }

    #[test]
    fn appends_travel_apart_from_heartbeats() {
        let append = Message::Append {
            term: 1,
            prev_index: 0,
            prev_term: 0,
            entries: Vec::new(),
            commit: 0,
        };
        let beat = Message::Heartbeat {
            term: 1,
            commit: 0,
            seq: 1,
        };
        assert_eq!(Lane::of(&PeerMessage::Raft(append)), Lane::Data);
        assert_eq!(Lane::of(&PeerMessage::Raft(beat)), Lane::Control);
        let digest = PeerMessage::Digest {
            index: 64,
            digest: [0; 32],
        };
        assert_eq!(Lane::of(&digest), Lane::Control);
        let precompile = PeerMessage::Precompile {
            wasm: serde_bytes::ByteBuf::from(vec![0; 8]),
        };
        assert_eq!(Lane::of(&precompile), Lane::Data);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever bytes a peer (or a stranger) sends as a hello or a
        /// message are refused with a reason, never a panic.
        #[test]
        fn fuzz_peer_frames_never_panic_the_decoders(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            let frame = BytesMut::from(&bytes[..]);
            if let Ok(hello) = read_hello(&frame) {
                let _ = me().check(&hello);
            }
            let _ = net::decode::<PeerMessage>(&frame);
            let _ = net::decode::<HelloReply>(&frame);
            let _ = net::decode::<snapshot::Offer>(&frame);
            let mut codec = net::codec();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf) {}
        }

        /// Valid envelopes with a damaged body: the codec's version byte
        /// followed by mutated CBOR of real messages.
        #[test]
        fn fuzz_mutated_peer_messages_never_panic_the_decoder(
            at in 0..200usize,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let msg = PeerMessage::Raft(Message::Heartbeat { term: 3, commit: 9, seq: 1 });
            let mut bytes = crate::codec::encode(&msg);
            let i = at % bytes.len();
            bytes[i] = byte;
            let _ = net::decode::<PeerMessage>(&BytesMut::from(&bytes[..]));
            let mut hello = crate::codec::encode(&hello());
            let i = at % hello.len();
            hello[i] = byte;
            let _ = read_hello(&BytesMut::from(&hello[..]));
        }
    }
}
