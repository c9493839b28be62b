//! The Rust client of the actor message API.
//!
//! One TCP connection, pipelined: any number of requests may be in flight,
//! each answered by id. Writes carry a [`ClientTag`] so that retrying one
//! (for example after a reconnect) applies it once and returns its first
//! result; [`Client::command_tagged`] lets a caller retry with the same tag.

use super::{
    ApiError, AuthRequest, ErrorCode, Frame, PROTOCOL_VERSION, ReadLevel, Request, Response,
    Status, WriteConcern,
};
use crate::types::{ClientTag, Index, NodeId, Outcome, Term};
use futures::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

/// The longest pause between two tries of a request while no leader is
/// known (the pauses double from a few milliseconds up to this).
pub const RETRY_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(200);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect, or the connection broke.
    #[error("connection to {addr}: {message}")]
    Connection {
        /// Server address.
        addr: SocketAddr,
        /// What happened.
        message: String,
    },
    /// The node answered with an error.
    #[error("node refused: {0}")]
    Api(ApiError),
    /// The node answered with something else than expected.
    #[error("unexpected response: {0:?}")]
    Unexpected(Box<Response>),
    /// No answer (or no connection) within the client's time limit. For a
    /// write the outcome is unknown: retry it with the same tag.
    #[error("no answer from {addr} within {after_ms} ms ({what})")]
    Timeout {
        /// Server address.
        addr: SocketAddr,
        /// The limit that passed.
        after_ms: u64,
        /// `connect` or `request`.
        what: &'static str,
    },
}

/// How long a client waits to connect to a node, by default.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long a client waits for the answer to one request, by default
/// (longer than a node's own read and write timeouts, so a node's
/// `Timeout` answer comes first when the node is alive).
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// A committed write's result and its position (the session token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult {
    /// The deterministic outcome.
    pub outcome: Outcome,
    /// Term of the entry.
    pub term: Term,
    /// Index of the entry.
    pub index: Index,
}

/// Requests waiting for their answer; `None` once the connection is gone,
/// so a request can never be registered after the reader has given up.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Response>>>>>;

/// How a client reaches nodes: how long it waits to connect, and over
/// what transport.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long to wait for a connection (and its TLS handshake).
    pub connect_timeout: Duration,
    /// TLS: the CA to trust and, optionally, a client certificate (`None`:
    /// plaintext).
    pub tls: Option<crate::tls::ClientTls>,
    /// A token to authenticate every connection with (`ust_…`).
    pub token: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            tls: None,
            token: None,
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Debug)]
enum Farewell {
    /// The node refused the whole connection with this error.
    Refused(ApiError),
    /// The transport broke (the text of its error).
    Broken(String),
}

/// One TCP connection to one node.
struct Conn {
    addr: SocketAddr,
    tx: mpsc::Sender<Frame<Request>>,
    pending: Pending,
    /// Why the connection ended, if it did with a reason: the error a
    /// node sent for the whole connection (id 0), or the transport's
    /// (a TLS alert, say). What later calls on it are told.
    farewell: Arc<Mutex<Option<Farewell>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Conn {
    async fn open(addr: SocketAddr, options: &ClientOptions) -> Result<Self, ClientError> {
        let timeout = options.connect_timeout;
        let timed_out = || ClientError::Timeout {
            addr,
            after_ms: timeout.as_millis() as u64,
            what: "connect",
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| ClientError::Connection {
                addr,
                message: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let io: crate::tls::BoxedIo = match &options.tls {
            None => Box::new(stream),
            Some(tls) => Box::new(
                tokio::time::timeout(timeout, tls.connect(addr, stream))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| ClientError::Connection {
                        addr,
                        message: crate::tls::explain_handshake_error(&e),
                    })?,
            ),
        };
        let framed = Framed::new(io, crate::net::codec());
        let (mut sink, mut stream) = framed.split();
        let (tx, mut rx) = mpsc::channel::<Frame<Request>>(crate::limits::IN_FLIGHT_MAX);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if sink.send(crate::net::encode(&frame)).await.is_err() {
                    break;
                }
            }
        });
        let reader_pending = pending.clone();
        let farewell = Arc::new(Mutex::new(None));
        let reader_farewell = farewell.clone();
        tokio::spawn(async move {
            while let Some(read) = stream.next().await {
                let bytes = match read {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let mut farewell = reader_farewell.lock().expect("farewell lock");
                        farewell.get_or_insert(Farewell::Broken(e.to_string()));
                        break;
                    }
                };
                let Ok(frame) = crate::net::decode::<Frame<Response>>(&bytes) else {
                    break;
                };
                let mut guard = reader_pending.lock().expect("pending lock");
                let Some(pending) = guard.as_mut() else { break };
                match pending.remove(&frame.id) {
                    Some(w) => {
                        let _ = w.send(frame.body);
                    }
                    None if frame.id == 0 => {
                        // A connection-level error: fail everyone, and
                        // tell later calls.
                        if let Response::Error(e) = &frame.body {
                            *reader_farewell.lock().expect("farewell lock") =
                                Some(Farewell::Refused(e.clone()));
                        }
                        for (_, w) in pending.drain() {
                            let _ = w.send(frame.body.clone());
                        }
                    }
                    None => {}
                }
            }
            // Connection closed: dropping the senders wakes every waiter, and
            // `None` refuses new requests.
            reader_pending.lock().expect("pending lock").take();
        });
        let conn = Conn {
            addr,
            tx,
            pending,
            farewell,
            next_id: 1.into(),
        };
        if let Some(token) = &options.token {
            let answer = conn
                .call(
                    Request::Authenticate {
                        token: token.clone(),
                    },
                    timeout,
                )
                .await?;
            if !matches!(answer, Response::Authenticated { .. }) {
                return Err(ClientError::Unexpected(Box::new(answer)));
            }
        }
        Ok(conn)
    }

    fn is_closed(&self) -> bool {
        self.pending.lock().expect("pending lock").is_none()
    }

    async fn call(
        &self,
        body: Request,
        timeout: std::time::Duration,
    ) -> Result<Response, ClientError> {
        // What a node would refuse at its door is refused here, at once,
        // with the same error (and a frame the node could not read is
        // never sent: it would close the connection).
        body.admit().map_err(ClientError::Api)?;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let broken = |message: &str| match self.farewell.lock().expect("farewell lock").clone() {
            Some(Farewell::Refused(e)) => ClientError::Api(e),
            Some(Farewell::Broken(why)) => ClientError::Connection {
                addr: self.addr,
                message: format!("{message}: {why}"),
            },
            None => ClientError::Connection {
                addr: self.addr,
                message: message.to_string(),
            },
        };
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err(broken("connection closed")),
        };
        let frame = Frame {
            v: PROTOCOL_VERSION,
            id,
            body,
        };
        if self.tx.send(frame).await.is_err() {
            if let Some(pending) = self.pending.lock().expect("pending lock").as_mut() {
                pending.remove(&id);
            }
            return Err(broken("connection closed"));
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(answer) => answer,
            Err(_) => {
                if let Some(pending) = self.pending.lock().expect("pending lock").as_mut() {
                    pending.remove(&id);
                }
                return Err(ClientError::Timeout {
                    addr: self.addr,
                    after_ms: timeout.as_millis() as u64,
                    what: "request",
                });
            }
        };
        match answer {
            Ok(Response::Error(e)) => Err(ClientError::Api(e)),
            Ok(r) => Ok(r),
            Err(_) => Err(broken("connection closed before the answer")),
        }
    }
}

/// A client of one node ([`Client::connect`]) or of a group
/// ([`Client::connect_group`]).
///
/// A group client follows the leader: when a node answers `NotLeader` with
/// the leader's address, or a connection breaks, or a write's entry was
/// superseded, it reconnects (to the hinted leader, else the next known
/// node) and retries the same request with the same exactly-once tag, for
/// up to [`Client::retry_for`]. A single-node client reports every error
/// as it comes.
pub struct Client {
    nodes: Vec<SocketAddr>,
    follow: bool,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Index into `nodes` of the last node tried.
    cursor: std::sync::atomic::AtomicUsize,
    retry_for: std::time::Duration,
    options: ClientOptions,
    request_timeout: std::time::Duration,
    client_id: u64,
    next_seq: std::sync::atomic::AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

impl Client {
    /// Connect to one node (within [`CONNECT_TIMEOUT_MS`]).
    pub async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        Self::connect_with(addr, Duration::from_millis(CONNECT_TIMEOUT_MS)).await
    }

    /// Connect to one node within `connect_timeout` (also used for its
    /// reconnects).
    pub async fn connect_with(
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_node_with(
            addr,
            ClientOptions {
                connect_timeout,
                ..ClientOptions::default()
            },
        )
        .await
    }

    /// Connect to exactly the node at `addr` with `options` (also used
    /// for its reconnects).
    pub async fn connect_node_with(
        addr: SocketAddr,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let conn = Conn::open(addr, &options).await?;
        Ok(Self::new(vec![addr], false, Some(conn), options))
    }

    /// Connect to a group through any of its nodes; follows the leader.
    pub async fn connect_group(nodes: Vec<SocketAddr>) -> Result<Self, ClientError> {
        Self::connect_group_with(nodes, Duration::from_millis(CONNECT_TIMEOUT_MS)).await
    }

    /// [`Client::connect_group`] with a connect timeout per node.
    pub async fn connect_group_with(
        nodes: Vec<SocketAddr>,
        connect_timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_group_with_options(
            nodes,
            ClientOptions {
                connect_timeout,
                ..ClientOptions::default()
            },
        )
        .await
    }

    /// [`Client::connect_group`] with `options`.
    pub async fn connect_group_with_options(
        nodes: Vec<SocketAddr>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let mut last = None;
        for (i, &addr) in nodes.iter().enumerate() {
            match Conn::open(addr, &options).await {
                Ok(conn) => {
                    let c = Self::new(nodes.clone(), true, Some(conn), options.clone());
                    c.cursor.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connection {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            message: "no node addresses given".into(),
        }))
    }

    fn new(
        nodes: Vec<SocketAddr>,
        follow: bool,
        conn: Option<Conn>,
        options: ClientOptions,
    ) -> Self {
        Client {
            nodes,
            follow,
            conn: Mutex::new(conn.map(Arc::new)),
            cursor: 0.into(),
            retry_for: std::time::Duration::from_secs(10),
            options,
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            client_id: rand::random::<u64>() | 1,
            next_seq: 1.into(),
            in_flight: Mutex::default(),
        }
    }

    /// How long a group client keeps retrying one request.
    pub fn retry_for(mut self, d: std::time::Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// How long to wait for a connection to a node (default
    /// [`CONNECT_TIMEOUT_MS`]).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.options.connect_timeout = d;
        self
    }

    /// How long to wait for the answer to one request (default
    /// [`REQUEST_TIMEOUT_MS`]); past it the call fails with
    /// [`ClientError::Timeout`]. A group client may try several times
    /// within [`Client::retry_for`].
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// The node this client currently talks to.
    pub fn current(&self) -> Option<SocketAddr> {
        self.conn
            .lock()
            .expect("conn lock")
            .as_ref()
            .map(|c| c.addr)
    }

    async fn conn(&self) -> Result<Arc<Conn>, ClientError> {
        if let Some(c) = self.conn.lock().expect("conn lock").as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        if !self.follow {
            // A single-node client reconnects to its node, once per call.
            let conn = Arc::new(Conn::open(self.nodes[0], &self.options).await?);
            *self.conn.lock().expect("conn lock") = Some(conn.clone());
            return Ok(conn);
        }
        self.switch(None).await
    }

    /// Connect to `to`, or else to the next node after the current one.
    async fn switch(&self, to: Option<SocketAddr>) -> Result<Arc<Conn>, ClientError> {
        use std::sync::atomic::Ordering::Relaxed;
        let addr = match to {
            Some(a) => a,
            None => {
                let i = (self.cursor.fetch_add(1, Relaxed) + 1) % self.nodes.len();
                self.nodes[i]
            }
        };
        let conn = Arc::new(Conn::open(addr, &self.options).await?);
        *self.conn.lock().expect("conn lock") = Some(conn.clone());
        Ok(conn)
    }

    /// Send one request to the current node and wait for its response (no
    /// retries).
    pub async fn call(&self, body: Request) -> Result<Response, ClientError> {
        self.conn().await?.call(body, self.request_timeout).await
    }

    /// [`Client::call`], and for a group client: follow leader hints and
    /// retry on broken connections, elections and superseded entries.
    /// Only for requests that are safe to repeat (tagged writes, reads).
    async fn call_following(&self, body: Request) -> Result<Response, ClientError> {
        if !self.follow {
            return self.call(body).await;
        }
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut pause = std::time::Duration::from_millis(10);
        loop {
            let result = match self.conn().await {
                Ok(c) => c.call(body.clone(), self.request_timeout).await,
                Err(e) => Err(e),
            };
            let hint = match &result {
                Ok(_) => return result,
                Err(ClientError::Api(e)) => match e.code {
                    ErrorCode::NotLeader | ErrorCode::Superseded | ErrorCode::Unavailable => {
                        match e.leader_address.as_deref() {
                            Some(a) => crate::net::resolve(a).await,
                            None => None,
                        }
                    }
                    _ => return result,
                },
                Err(ClientError::Connection { .. } | ClientError::Timeout { .. }) => None,
                Err(_) => return result,
            };
            if tokio::time::Instant::now() >= deadline {
                return result;
            }
            let current = self.current();
            match hint {
                Some(leader) if Some(leader) != current => {
                    let _ = self.switch(Some(leader)).await;
                }
                _ => {
                    // No usable hint (an election is running, or the hinted
                    // node is the one we are on): wait a little, move on.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                    if matches!(
                        result,
                        Err(ClientError::Connection { .. } | ClientError::Timeout { .. })
                    ) || hint.is_none()
                    {
                        let _ = self.switch(None).await;
                    }
                }
            }
        }
    }

    /// A fresh exactly-once tag for the next write.
    pub fn next_tag(&self) -> ClientTag {
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        in_flight.insert(seq);
        let acked_below = *in_flight.first().expect("just inserted");
        ClientTag {
            client_id: self.client_id,
            seq,
            acked_below,
        }
    }

    /// Send a CBOR command to `actor` with a new tag.
    pub async fn command(&self, actor: &str, command: Vec<u8>) -> Result<WriteResult, ClientError> {
        let tag = self.next_tag();
        self.command_tagged(actor, command, tag, WriteConcern::Majority)
            .await
    }

    /// Send a command with a given tag (retry with the same tag to get the
    /// first result instead of a second application). With the `leader`
    /// concern use [`Client::command_leader`]: this one expects the
    /// committed outcome.
    pub async fn command_tagged(
        &self,
        actor: &str,
        command: Vec<u8>,
        tag: ClientTag,
        concern: WriteConcern,
    ) -> Result<WriteResult, ClientError> {
        let result = self
            .call_following(Request::Command {
                actor: actor.to_string(),
                command: ByteBuf::from(command),
                client: Some(tag),
                concern,
            })
            .await;
        if tag.client_id == self.client_id && result.is_ok() {
            self.in_flight
                .lock()
                .expect("in-flight lock")
                .remove(&tag.seq);
        }
        written(result?)
    }

    /// Send a command with the `leader` write concern: acknowledged once it
    /// is durable on the leader, before it commits, so it may be lost on
    /// failover. Returns its session token (term, index); read its effect
    /// with [`ReadLevel::Session`].
    pub async fn command_leader(
        &self,
        actor: &str,
        command: Vec<u8>,
        tag: ClientTag,
    ) -> Result<(Term, Index), ClientError> {
        let result = self
            .call_following(Request::Command {
                actor: actor.to_string(),
                command: ByteBuf::from(command),
                client: Some(tag),
                concern: WriteConcern::Leader,
            })
            .await;
        match result? {
            Response::Accepted { term, index } => Ok((term, index)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Deploy `wasm` as `actor`. Returns the write result (its outcome is
    /// `Ok(module hash)` or `DeployRefused`).
    pub async fn deploy(&self, actor: &str, wasm: Vec<u8>) -> Result<WriteResult, ClientError> {
        written(
            self.call_following(Request::Deploy {
                actor: actor.to_string(),
                wasm: ByteBuf::from(wasm),
            })
            .await?,
        )
    }

    /// Query `actor` with a CBOR request, linearizably; returns the
    /// outcome and the applied index it reflects.
    pub async fn query(
        &self,
        actor: &str,
        request: Vec<u8>,
    ) -> Result<(Outcome, Index), ClientError> {
        self.query_at(actor, request, ReadLevel::Linearizable).await
    }

    /// Query `actor` at a consistency level (see [`ReadLevel`]).
    pub async fn query_at(
        &self,
        actor: &str,
        request: Vec<u8>,
        level: ReadLevel,
    ) -> Result<(Outcome, Index), ClientError> {
        let body = Request::Query {
            actor: actor.to_string(),
            request: ByteBuf::from(request),
            level,
        };
        let response = match level {
            // Only a linearizable read needs a leader; the others are
            // answered by the node asked (or refused, as asked).
            ReadLevel::Linearizable => self.call_following(body).await?,
            _ => self.call(body).await?,
        };
        match response {
            Response::Read {
                outcome,
                applied_index,
            } => Ok((outcome, applied_index)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Manual switchover: ask the leader to hand over to `node`, then wait
    /// (up to the retry window) until `node` leads. Returns its term.
    pub async fn promote(&self, node: NodeId) -> Result<Term, ClientError> {
        let from_term = match self
            .call_following(Request::Promote { node, force: false })
            .await?
        {
            Response::Promoting { term, .. } => term,
            other => return Err(ClientError::Unexpected(Box::new(other))),
        };
        let deadline = tokio::time::Instant::now() + self.retry_for;
        loop {
            // The leader that answered hands over in a later term; if the
            // answer came from `node` itself, it led already (a no-op).
            if let Ok(s) = self.status().await
                && s.leader == Some(node)
                && (s.term > from_term
                    || (s.node_id == node && s.role == crate::replication::Role::Leader))
            {
                return Ok(s.term);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Api(ApiError::new(
                    ErrorCode::Timeout,
                    format!("node {node} did not take over in time; the old leader leads on"),
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Forced promotion (a group that lost its majority): the node this
    /// client is connected to, `node`, becomes a group of one and leads.
    /// Writes the lost majority acknowledged and `node` lacks are lost.
    pub async fn force_promote(&self, node: NodeId) -> Result<Term, ClientError> {
        match self.call(Request::Promote { node, force: true }).await? {
            Response::Promoting { term, .. } => Ok(term),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Change the group's configuration through its leader (following
    /// leader hints, retrying with one tag while another change is in
    /// progress or the leader hands over): the term and index of the
    /// configuration that completed it.
    pub async fn change_membership(
        &self,
        change: crate::api::MembershipChange,
    ) -> Result<(Term, Index), ClientError> {
        self.membership_call(change, None).await
    }

    /// A node's request to join (`node --join`): `change` adds it, and
    /// `joining` names its cluster and peer protocol, which the group
    /// checks first (a mismatch is `BadRequest` and changes nothing).
    pub async fn join(
        &self,
        change: crate::api::MembershipChange,
        joining: crate::api::Joining,
    ) -> Result<(Term, Index), ClientError> {
        self.membership_call(change, Some(joining)).await
    }

    async fn membership_call(
        &self,
        change: crate::api::MembershipChange,
        joining: Option<crate::api::Joining>,
    ) -> Result<(Term, Index), ClientError> {
        let tag = self.next_tag();
        let result = self
            .call_following(Request::Membership {
                change,
                client: Some(tag),
                joining,
            })
            .await;
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .remove(&tag.seq);
        match result? {
            Response::Written { term, index, .. } => Ok((term, index)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Change the group's auth state through its leader (answered
    /// `Written`, or `TokenCreated` for a new token), or show it
    /// ([`AuthRequest::Show`], from the node asked).
    pub async fn auth(&self, request: AuthRequest) -> Result<Response, ClientError> {
        let show = matches!(request, AuthRequest::Show);
        let body = Request::Auth(request);
        let response = if show {
            self.call(body).await?
        } else {
            self.call_following(body).await?
        };
        match response {
            Response::Error(e) => Err(ClientError::Api(e)),
            r => Ok(r),
        }
    }

    /// The audit trail of the node asked, newest first (at most `limit`).
    pub async fn audit(&self, limit: u32) -> Result<Vec<crate::access::AuditRecord>, ClientError> {
        match self.call(Request::Audit { limit }).await? {
            Response::Audit(records) => Ok(records),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Seal the group's writes for a backup, through its leader (see
    /// [`crate::api::BackupRequest::Seal`]): returns the index a backup
    /// must reach to hold every write acknowledged so far.
    pub async fn backup_seal(&self) -> Result<Index, ClientError> {
        match self
            .call_following(Request::Backup(crate::api::BackupRequest::Seal))
            .await?
        {
            Response::BackupSealed { index } => Ok(index),
            Response::Error(e) => Err(ClientError::Api(e)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Begin an online backup on the node asked: once its durable state
    /// is at or past `at_least`, it writes a snapshot of it and stages it
    /// (see [`crate::api::BackupRequest`]).
    /// Returns the backup's id, the node, its cluster, the time, and the
    /// snapshot's meta.
    pub async fn backup_begin(&self, at_least: Index) -> Result<BackupBegun, ClientError> {
        match self
            .call(Request::Backup(crate::api::BackupRequest::Begin {
                at_least,
            }))
            .await?
        {
            Response::BackupBegun {
                id,
                node_id,
                cluster_id,
                taken_at_ms,
                meta,
            } => Ok(BackupBegun {
                id,
                node_id,
                cluster_id,
                taken_at_ms,
                meta: *meta,
            }),
            Response::Error(e) => Err(ClientError::Api(e)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Chunk `seq` of the staged backup `id` (unchecked: the caller checks
    /// it against the meta's checksum).
    pub async fn backup_chunk(&self, id: u64, seq: u64) -> Result<Vec<u8>, ClientError> {
        match self
            .call(Request::Backup(crate::api::BackupRequest::Chunk {
                id,
                seq,
            }))
            .await?
        {
            Response::BackupChunk { data } => Ok(data.into_vec()),
            Response::Error(e) => Err(ClientError::Api(e)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Tell the node the staged backup `id` can go.
    pub async fn backup_end(&self, id: u64) -> Result<(), ClientError> {
        match self
            .call(Request::Backup(crate::api::BackupRequest::End { id }))
            .await?
        {
            Response::BackupEnded => Ok(()),
            Response::Error(e) => Err(ClientError::Api(e)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(*s),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }
}

/// A backup the node asked has staged ([`Client::backup_begin`]).
#[derive(Clone, Debug)]
pub struct BackupBegun {
    /// Its id on that node.
    pub id: u64,
    /// The node.
    pub node_id: NodeId,
    /// Its group.
    pub cluster_id: String,
    /// When it was written (ms since the Unix epoch).
    pub taken_at_ms: u64,
    /// The snapshot.
    pub meta: crate::storage::SnapshotMeta,
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> Self {
        ClientError::Api(e)
    }
}

fn written(r: Response) -> Result<WriteResult, ClientError> {
    match r {
        Response::Written {
            outcome,
            term,
            index,
        } => Ok(WriteResult {
            outcome,
            term,
            index,
        }),
        Response::Error(e) => Err(ClientError::Api(e)),
        other => Err(ClientError::Unexpected(Box::new(other))),
    }
}

impl ClientError {
    /// The API error code, if the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }
}
