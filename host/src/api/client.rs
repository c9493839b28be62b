//! The Rust client of the actor message API.
//!
//! One TCP connection, pipelined: any number of requests may be in flight,
//! each answered by id. Writes carry a [`ClientTag`] so that retrying one
//! (for example after a reconnect) applies it once and returns its first
//! result; [`Client::command_tagged`] lets a caller retry with the same tag.

use super::{
    ApiError, ErrorCode, Frame, PROTOCOL_VERSION, Request, Response, Status, WriteConcern,
};
use crate::types::{ClientTag, Index, Outcome, Term};
use futures::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

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
}

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

/// A connection to one node.
pub struct Client {
    addr: SocketAddr,
    tx: mpsc::Sender<Frame<Request>>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
    client_id: u64,
    next_seq: std::sync::atomic::AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

impl Client {
    /// Connect to a node.
    pub async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Connection {
                addr,
                message: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let framed = Framed::new(stream, crate::net::codec());
        let (mut sink, mut stream) = framed.split();
        let (tx, mut rx) = mpsc::channel::<Frame<Request>>(1024);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if sink.send(crate::net::encode(&frame)).await.is_err() {
                    break;
                }
            }
        });
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(bytes)) = stream.next().await {
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
                        // A connection-level error: fail everyone.
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
        Ok(Client {
            addr,
            tx,
            pending,
            next_id: 1.into(),
            client_id: rand::random::<u64>() | 1,
            next_seq: 1.into(),
            in_flight: Mutex::default(),
        })
    }

    /// Send one request and wait for its response.
    pub async fn call(&self, body: Request) -> Result<Response, ClientError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let broken = |message: &str| ClientError::Connection {
            addr: self.addr,
            message: message.to_string(),
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
        match rx.await {
            Ok(Response::Error(e)) => Err(ClientError::Api(e)),
            Ok(r) => Ok(r),
            Err(_) => Err(broken("connection closed before the answer")),
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
    /// first result instead of a second application).
    pub async fn command_tagged(
        &self,
        actor: &str,
        command: Vec<u8>,
        tag: ClientTag,
        concern: WriteConcern,
    ) -> Result<WriteResult, ClientError> {
        let result = self
            .call(Request::Command {
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

    /// Deploy `wasm` as `actor`. Returns the write result (its outcome is
    /// `Ok(module hash)` or `DeployRefused`).
    pub async fn deploy(&self, actor: &str, wasm: Vec<u8>) -> Result<WriteResult, ClientError> {
        written(
            self.call(Request::Deploy {
                actor: actor.to_string(),
                wasm: ByteBuf::from(wasm),
            })
            .await?,
        )
    }

    /// Query `actor` with a CBOR request; returns the outcome and the
    /// applied index it reflects.
    pub async fn query(
        &self,
        actor: &str,
        request: Vec<u8>,
    ) -> Result<(Outcome, Index), ClientError> {
        match self
            .call(Request::Query {
                actor: actor.to_string(),
                request: ByteBuf::from(request),
            })
            .await?
        {
            Response::Read {
                outcome,
                applied_index,
            } => Ok((outcome, applied_index)),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }
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
