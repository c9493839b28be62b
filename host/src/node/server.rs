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

use super::{ClientCall, Node};
use crate::api::{ApiError, ErrorCode, Frame, PROTOCOL_VERSION, Request, Response};
use crate::net;
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Requests of one connection read and not yet answered on the wire.
pub const IN_FLIGHT_MAX: usize = 1024;

/// Accept connections forever on the current arbiter.
pub fn serve(listener: TcpListener, node: Addr<Node>) {
    actix::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%peer, "client connected");
                    actix::spawn(connection(stream, node.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// An answer on its way to the wire, holding its request's slot.
type Answer = (Bytes, OwnedSemaphorePermit);

/// Serve one connection until the client closes it or sends a bad frame.
async fn connection(stream: tokio::net::TcpStream, node: Addr<Node>) {
    let (r, w) = stream.into_split();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
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
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(item) = frames.next().await else {
            return; // the client closed
        };
        match request(item) {
            Ok((id, request)) => {
                let (reply, answer) = oneshot::channel();
                node.do_send(ClientCall { request, reply });
                let tx = tx.clone();
                actix::spawn(async move {
                    let body = answer.await.unwrap_or_else(|_| {
                        Response::Error(ApiError::new(
                            ErrorCode::Unavailable,
                            "the node dropped the request",
                        ))
                    });
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
