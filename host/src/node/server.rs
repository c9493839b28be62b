//! The client-facing listener: one task per TCP connection.
//!
//! A connection decodes frames, checks the protocol version, and hands each
//! request to the [`Node`] as a [`ClientCall`]; answers are written back as
//! they arrive, tagged with the request id, so a client may pipeline. A frame
//! that is too large, truncated, not CBOR or of a newer protocol gets one
//! error frame and the connection is closed (after the answers to the
//! requests before it); the node keeps serving others.
//!
//! At most [`IN_FLIGHT_MAX`] requests of one connection are between being
//! read and having their answer written: a client that pipelines without
//! reading its answers stops being read (TCP pushes back on it) instead of
//! making the node buffer answers without bound.
//!
//! At most [`CLIENT_CONNECTIONS_MAX`] connections are served at once; one
//! more gets an `Overloaded` error frame naming the limit and is closed.
//! The process's open-file limit bounds them too: at start it raises its
//! soft `RLIMIT_NOFILE` to the hard one (as Go's runtime does), keeps
//! [`FDS_RESERVED`] descriptors for its peers, stores and snapshots, and
//! lets all its nodes' client connections share the rest
//! ([`DescriptorBudget`]), so a flood of connections is refused at the door
//! instead of failing `accept`, the log's files or a snapshot with
//! `EMFILE`. A refusal holds no descriptor past its accept: its one frame
//! goes into the new socket's empty send buffer without waiting, and the
//! socket is closed.
//! A frame must arrive whole within `frame_read_timeout_ms` of its first
//! byte, and a connection with no request in flight that sends nothing for
//! `idle_timeout_ms` is closed ([`Timeouts`], from the node's config; the
//! read buffer grows only with bytes that arrived, never by a frame's
//! announced length): slow or idle clients cannot pin the
//! node's memory or file descriptors.

use super::shell::{ClientCall, Node};
use crate::access::AuthView;
use crate::api::{ApiError, ErrorCode, Frame, PROTOCOL_VERSION, Request, Response};
use crate::auth::{Action, AuthState, Denied, Principal};
use crate::net;
use crate::tls::{CertIdentity, HANDSHAKE_TIMEOUT_MS, NodeTls, TLS_HANDSHAKE_BYTE};
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

pub use crate::limits::IN_FLIGHT_MAX;

/// Queries of one connection between being read and having their answer
/// written: past it the connection is not read until one is answered, so
/// one client's queries cannot fill the node's query queue
/// (`QUERIES_WAITING_MAX`) ahead of everyone else's.
pub const QUERIES_PER_CONNECTION_MAX: usize = 8;

/// Client connections one node serves at once.
pub const CLIENT_CONNECTIONS_MAX: usize = 4096;

/// The open-file limit assumed when it cannot be read (Linux's usual
/// soft limit).
pub const NOFILE_ASSUMED: u64 = 1024;

/// File descriptors a node process keeps out of its client connections'
/// share: peer connections (at most `PEER_CONNECTIONS_MAX` = 256 per node),
/// its stores, journal, snapshot and module files, refusals in flight, and
/// standard streams.
pub const FDS_RESERVED: u64 = 512;

/// The fewest client connections a process must be able to hold; with an
/// open-file limit below `FDS_RESERVED` + this a node refuses to start.
pub const CLIENT_CONNECTIONS_MIN: u64 = 64;

/// The client connections every node of this process may hold together,
/// from the open-file limit (see the module docs).
#[derive(Clone, Debug)]
pub struct DescriptorBudget {
    slots: Arc<Semaphore>,
    /// Its size, for messages.
    pub connections: u64,
    /// The open-file limit it came from.
    pub open_files: u64,
}

/// The open-file limit is too low for a node.
#[derive(Debug, thiserror::Error)]
#[error(
    "the open-file limit (RLIMIT_NOFILE) is {open_files}; a node needs at least      FDS_RESERVED + CLIENT_CONNECTIONS_MIN = {needed}: raise it (`ulimit -n`, or      systemd's LimitNOFILE=)"
)]
pub struct TooFewDescriptors {
    /// The limit found (after trying to raise it).
    pub open_files: u64,
    /// What a node needs.
    pub needed: u64,
}

impl DescriptorBudget {
    /// The process's budget, made on first use: raise the soft open-file
    /// limit to the hard one, and share what `FDS_RESERVED` leaves.
    pub fn of_process() -> Result<DescriptorBudget, TooFewDescriptors> {
        static BUDGET: std::sync::OnceLock<DescriptorBudget> = std::sync::OnceLock::new();
        if let Some(b) = BUDGET.get() {
            return Ok(b.clone());
        }
        let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not read or raise the open-file limit");
                rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(NOFILE_ASSUMED, |(soft, _)| soft)
            }
        };
        let budget = Self::from_limit(open_files)?;
        if budget.connections < CLIENT_CONNECTIONS_MAX as u64 {
            tracing::warn!(
                open_files,
                connections = budget.connections,
                "the open-file limit leaves fewer client connections than \
                 CLIENT_CONNECTIONS_MAX = {CLIENT_CONNECTIONS_MAX} (shared by this process's nodes)"
            );
        }
        Ok(BUDGET.get_or_init(|| budget).clone())
    }

    /// The budget an open-file limit of `open_files` leaves.
    pub fn from_limit(open_files: u64) -> Result<DescriptorBudget, TooFewDescriptors> {
        let needed = FDS_RESERVED + CLIENT_CONNECTIONS_MIN;
        if open_files < needed {
            return Err(TooFewDescriptors { open_files, needed });
        }
        let connections = open_files - FDS_RESERVED;
        Ok(DescriptorBudget {
            slots: Arc::new(Semaphore::new(
                connections.min(Semaphore::MAX_PERMITS as u64) as usize,
            )),
            connections,
            open_files,
        })
    }
}

/// How often a connection checks its two timeouts (at most).
const TIMEOUT_CHECK_MS: u64 = 1_000;

/// A client connection's two timeouts (`NodeConfig::frame_read_timeout_ms`
/// and `idle_timeout_ms`).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long a frame may take to arrive, from its first byte to its last.
    pub frame_read_ms: u64,
    /// How long a connection with nothing in flight may stay silent.
    pub idle_ms: u64,
}

/// Accept connections forever on the current arbiter, within
/// `CLIENT_CONNECTIONS_MAX` and the process's descriptor `budget`.
pub fn serve(
    listener: TcpListener,
    node: Addr<Node>,
    budget: DescriptorBudget,
    timeouts: Timeouts,
    tls: Option<NodeTls>,
    auth: AuthView,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let connections = Arc::new(Semaphore::new(CLIENT_CONNECTIONS_MAX));
    actix::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let held = connections.clone().try_acquire_owned().map_err(|_| {
                        format!(
                            "this node serves at most CLIENT_CONNECTIONS_MAX = \
                             {CLIENT_CONNECTIONS_MAX} client connections"
                        )
                    });
                    let held = held.and_then(|node_slot| {
                        let fd_slot = budget.slots.clone().try_acquire_owned().map_err(|_| {
                            format!(
                                "this node's process holds all the {} client connections its \
                                 open-file limit ({}) leaves past FDS_RESERVED = {FDS_RESERVED}",
                                budget.connections, budget.open_files
                            )
                        })?;
                        Ok((node_slot, fd_slot))
                    });
                    let held = match held {
                        Ok(held) => held,
                        Err(why) => {
                            tracing::warn!(%peer, "client connection refused: {why}");
                            let why = format!("{why}; retry later or close idle ones");
                            refuse_connection(&stream, ErrorCode::Overloaded, why);
                            continue;
                        }
                    };
                    tracing::debug!(%peer, "client connected");
                    let (node, tls) = (node.clone(), tls.clone());
                    let auth = auth.clone();
                    let metrics = metrics.clone();
                    actix::spawn(async move {
                        metrics.connections.inc();
                        match admit(stream, tls.as_ref(), timeouts).await {
                            Ok(Admitted::Plain(stream)) => {
                                let caller = Caller {
                                    peer,
                                    tls: false,
                                    cert: None,
                                    auth,
                                    metrics: metrics.clone(),
                                };
                                let (r, w) = stream.into_split();
                                connection(r, w, node, timeouts, caller).await;
                            }
                            Ok(Admitted::Tls(stream, cert)) => {
                                let caller = Caller {
                                    peer,
                                    tls: true,
                                    cert,
                                    auth,
                                    metrics: metrics.clone(),
                                };
                                let (r, w) = tokio::io::split(stream);
                                connection(r, w, node, timeouts, caller).await;
                            }
                            Err(NotAdmitted::Silent(why)) => {
                                tracing::debug!(%peer, reason = %why, "client connection ended");
                            }
                            Err(NotAdmitted::Refused(why)) => {
                                tracing::warn!(%peer, reason = %why, "client connection refused");
                            }
                        }
                        metrics.connections.dec();
                        drop(held);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// Tell a client why its connection is refused, in plaintext, and close
/// at once: the frame is small and the socket's send buffer empty, so it
/// is written without waiting (if not, the client sees the connection
/// closed).
fn refuse_connection(stream: &tokio::net::TcpStream, code: ErrorCode, why: String) {
    let _ = stream.try_write(&refusal(code, why));
}

/// A connection-level error frame (id 0), length prefix included.
fn refusal(code: ErrorCode, why: String) -> BytesMut {
    use tokio_util::codec::Encoder as _;
    let body = Response::Error(ApiError::new(code, why));
    let mut bytes = BytesMut::new();
    // A refusal is far under the frame limit: encoding cannot fail.
    let _ = net::codec().encode(frame(0, body), &mut bytes);
    bytes
}

/// A client connection past its transport's checks.
enum Admitted {
    /// Plaintext (the node runs without TLS).
    Plain(tokio::net::TcpStream),
    /// TLS, and the user its client certificate names, if it gave one.
    Tls(
        Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        Option<Principal>,
    ),
}

/// Who is at the other end of a client connection, as far as its
/// transport tells, and the auth state its requests are checked against.
struct Caller {
    peer: std::net::SocketAddr,
    /// Whether the connection is TLS.
    tls: bool,
    /// The user its client certificate names (with the fingerprint).
    cert: Option<Principal>,
    auth: AuthView,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Whether `principal` may make `request` by `state` at `now_ms`, on a
/// connection that is TLS or not. Until auth is enabled, a TLS port takes
/// only clients that proved who they are (a client certificate of its CA,
/// or a token made earlier); a plaintext one takes everyone.
pub(crate) fn allowed(
    state: &AuthState,
    tls: bool,
    principal: Option<&Principal>,
    request: &Request,
    now_ms: u64,
) -> Result<(), ApiError> {
    if !state.enabled {
        if tls && principal.is_none() {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this node takes only clients with a certificate of its client CA (--cert, \
                 --key) until auth is enabled; then a certificate or a token (--token) of a \
                 user of the group",
            ));
        }
        return Ok(());
    }
    let action = match request {
        Request::Command { actor, .. } => Action::Write(actor),
        Request::Query { actor, .. } => Action::Read(actor),
        Request::Status => Action::Status,
        Request::Deploy { .. }
        | Request::Promote { .. }
        | Request::Auth(_)
        | Request::Audit { .. }
        | Request::Membership { .. }
        | Request::Backup(_)
        | Request::Authenticate { .. } => Action::Admin,
    };
    state.check(principal, action, now_ms).map_err(|d| match d {
        Denied::Unauthenticated(m) => ApiError::new(ErrorCode::Unauthenticated, m),
        Denied::Permission(m) => ApiError::new(ErrorCode::PermissionDenied, m),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a client connection was not taken.
enum NotAdmitted {
    /// It sent nothing, or closed (logged at debug).
    Silent(String),
    /// It was refused for what it sent or presented (logged at warn).
    Refused(String),
}

/// Take a new client connection through the port's transport: its first
/// byte tells TLS from our plaintext frames, and a connection in the
/// wrong one gets an error frame in plaintext naming the mistake (a
/// plaintext client reads it; a TLS client reports the handshake broke
/// on a plaintext answer). With TLS, the handshake must finish within
/// `HANDSHAKE_TIMEOUT_MS`, and a client certificate must name a user.
async fn admit(
    stream: tokio::net::TcpStream,
    tls: Option<&NodeTls>,
    timeouts: Timeouts,
) -> Result<Admitted, NotAdmitted> {
    use NotAdmitted::{Refused, Silent};
    let wait_ms = if tls.is_some() {
        HANDSHAKE_TIMEOUT_MS
    } else {
        timeouts.idle_ms
    };
    let first = match crate::tls::first_byte(&stream, wait_ms).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(Silent("closed before sending anything".into())),
        Err(e) => return Err(Silent(e.to_string())),
    };
    let Some(tls) = tls else {
        if first == TLS_HANDSHAKE_BYTE {
            let why = "a TLS handshake reached a plaintext client port: this node runs without \
                       [tls]; connect without --ca"
                .to_string();
            refuse_connection(&stream, ErrorCode::BadFrame, why.clone());
            crate::tls::linger(&mut { stream }).await;
            return Err(Refused(why));
        }
        return Ok(Admitted::Plain(stream));
    };
    if first != TLS_HANDSHAKE_BYTE {
        let why = "plaintext reached a client port that speaks only TLS: connect with --ca \
                   (the CA that signed the node's certificate)"
            .to_string();
        refuse_connection(&stream, ErrorCode::Unauthenticated, why.clone());
        crate::tls::linger(&mut { stream }).await;
        return Err(Refused(why));
    }
    let handshake = tokio::time::timeout(
        std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        tls.client_acceptor.accept(stream),
    );
    let mut stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Refused(format!("TLS handshake failed: {e}"))),
        Err(_) => {
            return Err(Refused(format!(
                "TLS handshake not done within HANDSHAKE_TIMEOUT_MS = {HANDSHAKE_TIMEOUT_MS} ms"
            )));
        }
    };
    let certs = stream.get_ref().1.peer_certificates();
    let fingerprint = certs
        .and_then(|c| c.first())
        .map(|der| crate::access::fingerprint(der));
    let why = match crate::tls::peer_identity(certs) {
        None => return Ok(Admitted::Tls(Box::new(stream), None)),
        Some(Ok(CertIdentity::User(user))) => {
            let principal = Principal {
                user,
                token: None,
                cert: fingerprint,
            };
            return Ok(Admitted::Tls(Box::new(stream), Some(principal)));
        }
        Some(Ok(other)) => format!(
            "the client certificate names {other}: node certificates are not valid on the \
             client port"
        ),
        Some(Err(e)) => format!("bad client certificate: {e}"),
    };
    // Over TLS now: one error frame, written within the handshake bound.
    use tokio::io::AsyncWriteExt as _;
    let bytes = refusal(ErrorCode::Unauthenticated, why.clone());
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        stream.write_all(&bytes),
    )
    .await;
    crate::tls::linger(&mut stream).await;
    Err(Refused(why))
}

/// An answer on its way to the wire, holding its request's slot.
type Answer = (Bytes, OwnedSemaphorePermit);

/// Serve one connection (its read and write halves) until the client
/// closes it or sends a bad frame.
async fn connection<R, W>(r: R, w: W, node: Addr<Node>, timeouts: Timeouts, caller: Caller)
where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin + 'static,
{
    let Timeouts {
        frame_read_ms,
        idle_ms,
    } = timeouts;
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let query_slots = Arc::new(Semaphore::new(QUERIES_PER_CONNECTION_MAX));
    // Never full: every answer holds one of the slots.
    let (tx, mut rx) = mpsc::channel::<Answer>(IN_FLIGHT_MAX);
    // The writer owns the write half: it sends answers as they come and
    // frees their slots once written; when every sender is gone (the
    // reader stopped and every request was answered) it flushes and shuts
    // the socket down.
    actix::spawn(async move {
        let mut sink = FramedWrite::new(w, net::codec());
        while let Some((frame, slot)) = rx.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
            drop(slot);
        }
        let _ = SinkExt::<Bytes>::close(&mut sink).await;
    });
    let mut frames = FramedRead::new(r, net::codec());
    let check = std::time::Duration::from_millis(
        TIMEOUT_CHECK_MS.min(frame_read_ms.min(idle_ms) / 4).max(10),
    );
    // When the frame being read had its first byte (seen at a check), and
    // since when nothing was read or in flight.
    let mut frame_started: Option<std::time::Instant> = None;
    let mut idle_since = std::time::Instant::now();
    // Who a token said this connection is (it outranks a certificate).
    let mut token_principal: Option<Principal> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let item = loop {
            match tokio::time::timeout(check, frames.next()).await {
                Ok(item) => break item,
                Err(_) => {
                    let now = std::time::Instant::now();
                    if frames.read_buffer().is_empty() {
                        frame_started = None;
                        let busy = slots.available_permits() < IN_FLIGHT_MAX - 1;
                        if busy {
                            idle_since = now;
                        } else if now.duration_since(idle_since).as_millis() as u64 >= idle_ms {
                            tracing::debug!("closing a client connection idle for idle_timeout_ms");
                            return;
                        }
                        continue;
                    }
                    let started = *frame_started.get_or_insert(now);
                    if now.duration_since(started).as_millis() as u64 >= frame_read_ms {
                        let message = format!(
                            "a frame did not arrive whole within frame_read_timeout_ms = \
                             {frame_read_ms} ms ({} bytes of it came)",
                            frames.read_buffer().len()
                        );
                        tracing::warn!(%message, "refusing client frame; closing connection");
                        let body = Response::Error(ApiError::new(ErrorCode::BadFrame, message));
                        let _ = tx.send((frame(0, body), slot)).await;
                        return;
                    }
                }
            }
        };
        frame_started = None;
        idle_since = std::time::Instant::now();
        let Some(item) = item else {
            return; // the client closed
        };
        match request(item) {
            Ok((id, Request::Authenticate { token })) => {
                let answer = match crate::access::verify_token(&caller.auth.get(), &token, now_ms())
                {
                    Ok(p) => {
                        let user = p.user.clone();
                        tracing::debug!(peer = %caller.peer, %user, "client authenticated");
                        token_principal = Some(p);
                        Response::Authenticated { user }
                    }
                    Err(d) => {
                        // A failed attempt leaves no identity behind.
                        token_principal = None;
                        tracing::warn!(peer = %caller.peer, reason = %d, "client token refused");
                        Response::Error(ApiError::new(ErrorCode::Unauthenticated, d.to_string()))
                    }
                };
                let _ = tx.send((frame(id, answer), slot)).await;
            }
            Ok((id, request)) => {
                let principal = token_principal.clone().or_else(|| caller.cert.clone());
                let state = caller.auth.get();
                if let Err(e) = allowed(&state, caller.tls, principal.as_ref(), &request, now_ms())
                {
                    tracing::info!(
                        peer = %caller.peer,
                        user = principal.as_ref().map(|p| p.user.as_str()),
                        code = ?e.code,
                        reason = %e.message,
                        "client request refused"
                    );
                    let kind = crate::metrics::kind_of(&request);
                    caller
                        .metrics
                        .request(kind, "cbor", 0.0, Some(format!("{:?}", e.code)));
                    let _ = tx.send((frame(id, Response::Error(e)), slot)).await;
                    continue;
                }
                let query_slot = match request {
                    Request::Query { .. } => match query_slots.clone().acquire_owned().await {
                        Ok(s) => Some(s),
                        Err(_) => return,
                    },
                    _ => None,
                };
                let (reply, answer) = oneshot::channel();
                let kind = crate::metrics::kind_of(&request);
                node.do_send(ClientCall {
                    request,
                    reply,
                    by: principal,
                    span: request_span(caller.peer),
                });
                let tx = tx.clone();
                let metrics = caller.metrics.clone();
                let started = std::time::Instant::now();
                actix::spawn(async move {
                    let _query_slot = query_slot;
                    let body = answer.await.unwrap_or_else(|_| {
                        Response::Error(ApiError::new(
                            ErrorCode::Unavailable,
                            "the node dropped the request",
                        ))
                    });
                    let refused = match &body {
                        Response::Error(e) => Some(format!("{:?}", e.code)),
                        _ => None,
                    };
                    metrics.request(kind, "cbor", started.elapsed().as_secs_f64(), refused);
                    // Fails only when the writer ended (client gone).
                    let _ = tx.send((frame(id, body), slot)).await;
                });
            }
            Err((id, code, message)) => {
                tracing::warn!(?code, %message, "refusing client frame; closing connection");
                let body = Response::Error(ApiError::new(code, message));
                let _ = tx.send((frame(id, body), slot)).await;
                return;
            }
        }
    }
}

/// Request ids of this process, for the logs (unique within it).
static REQUEST_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new request's span: its id and the client's address ride on every
/// line the node logs while it handles the request.
pub fn request_span(client: std::net::SocketAddr) -> tracing::Span {
    let id = REQUEST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info_span!("request", request_id = id, client = %client)
}

fn frame(id: u64, body: Response) -> Bytes {
    net::encode(&Frame {
        v: PROTOCOL_VERSION,
        id,
        body,
    })
}

/// Just the header, decoded before the body so a newer protocol is named
/// as such rather than reported as garbage.
#[derive(Deserialize)]
struct Head {
    v: u16,
    id: u64,
}

/// The request in a frame, or why it is refused (with the id to answer).
fn request(
    item: Result<BytesMut, std::io::Error>,
) -> Result<(u64, Request), (u64, ErrorCode, String)> {
    let frame = item.map_err(|e| (0, ErrorCode::BadFrame, format!("unreadable frame: {e}")))?;
    let head: Head = net::decode(&frame).map_err(|e| {
        (
            0,
            ErrorCode::BadFrame,
            format!("frame is not a request: {e}"),
        )
    })?;
    if head.v > PROTOCOL_VERSION {
        return Err((
            head.id,
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is newer than this node's {PROTOCOL_VERSION}",
                head.v
            ),
        ));
    }
    let request: Frame<Request> = net::decode(&frame).map_err(|e| {
        (
            head.id,
            ErrorCode::BadFrame,
            format!("unknown request: {e}"),
        )
    })?;
    Ok((request.id, request.body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_descriptor_budget_is_what_the_open_file_limit_leaves_at_and_one_below_its_minimum() {
        let at = FDS_RESERVED + CLIENT_CONNECTIONS_MIN;
        let b = DescriptorBudget::from_limit(at).unwrap();
        assert_eq!(b.connections, CLIENT_CONNECTIONS_MIN);
        assert_eq!(b.slots.available_permits() as u64, CLIENT_CONNECTIONS_MIN);
        let e = DescriptorBudget::from_limit(at - 1).unwrap_err();
        assert!(e.to_string().contains(&format!("is {}", at - 1)), "{e}");
        assert!(e.to_string().contains("ulimit -n"), "{e}");
        let big = DescriptorBudget::from_limit(1 << 20).unwrap();
        assert_eq!(big.connections, (1 << 20) - FDS_RESERVED);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a client sends is a request or a refusal with a code,
        /// never a panic; a request that decodes passes the door check or
        /// is refused by it.
        #[test]
        fn fuzz_client_frames_never_panic_the_decoder(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut codec = net::codec();
            let mut buf = BytesMut::from(&bytes[..]);
            let mut frames = vec![Ok(BytesMut::from(&bytes[..]))];
            while let Ok(Some(f)) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf) {
                frames.push(Ok(f));
            }
            for item in frames {
                if let Ok((_, r)) = request(item) {
                    let _ = r.admit();
                }
            }
        }

        /// Real requests with one byte changed.
        #[test]
        fn fuzz_mutated_requests_never_panic_the_decoder(
            at in 0..400usize,
            byte in any::<u8>(),
        ) {
            let frame = Frame {
                v: PROTOCOL_VERSION,
                id: 7,
                body: Request::Command {
                    actor: "kv".into(),
                    command: serde_bytes::ByteBuf::from(vec![1, 2, 3]),
                    client: None,
                    concern: crate::api::WriteConcern::Majority,
                },
            };
            let mut bytes = crate::codec::encode(&frame);
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok((_, r)) = request(Ok(BytesMut::from(&bytes[..]))) {
                let _ = r.admit();
            }
        }
    }
}
