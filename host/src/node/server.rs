//! The client-facing listener: one actor per TCP connection.
//!
//! A connection decodes frames, checks the protocol version, and hands each
//! request to the [`Node`] as a [`ClientCall`]; answers are written back as
//! they arrive, tagged with the request id, so a client may pipeline. A frame
//! that is too large, truncated, not CBOR or of a newer protocol gets one
//! error frame and the connection is closed; the node keeps serving others.

use super::{ClientCall, Node};
use crate::api::{ApiError, ErrorCode, Frame, PROTOCOL_VERSION, Request, Response};
use crate::net;
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Accept connections forever on the current arbiter.
pub fn serve(listener: TcpListener, node: Addr<Node>) {
    actix::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%peer, "client connected");
                    let node = node.clone();
                    let (r, w) = stream.into_split();
                    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
                    // The writer task owns the write half: it sends frames
                    // in order and, when the connection drops its sender,
                    // flushes what is left and shuts the socket down.
                    actix::spawn(async move {
                        let mut sink = FramedWrite::new(w, net::codec());
                        while let Some(frame) = rx.recv().await {
                            if sink.send(frame).await.is_err() {
                                break;
                            }
                        }
                        let _ = SinkExt::<Bytes>::close(&mut sink).await;
                    });
                    Connection::create(move |ctx| {
                        ctx.add_stream(FramedRead::new(r, net::codec()));
                        Connection {
                            node,
                            writer: tx,
                            closing: false,
                        }
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

/// One client connection.
pub struct Connection {
    node: Addr<Node>,
    writer: mpsc::UnboundedSender<Bytes>,
    /// Set after a refused frame: ignore further input.
    closing: bool,
}

impl Actor for Connection {
    type Context = Context<Self>;
}

/// Just the header, decoded before the body so a newer protocol is named
/// as such rather than reported as garbage.
#[derive(Deserialize)]
struct Head {
    v: u16,
    id: u64,
}

impl Connection {
    fn respond(&mut self, id: u64, body: Response) {
        // Fails only when the writer task ended (peer gone): nothing to do.
        let _ = self.writer.send(net::encode(&Frame {
            v: PROTOCOL_VERSION,
            id,
            body,
        }));
    }

    fn refuse(&mut self, id: u64, code: ErrorCode, message: String, ctx: &mut Context<Self>) {
        tracing::warn!(?code, %message, "refusing client frame; closing connection");
        self.respond(id, Response::Error(ApiError::new(code, message)));
        self.closing = true;
        // Stopping drops the sender: the writer task flushes the error
        // frame, then closes the socket.
        ctx.stop();
    }
}

impl StreamHandler<Result<BytesMut, std::io::Error>> for Connection {
    fn finished(&mut self, ctx: &mut Context<Self>) {
        if !self.closing {
            ctx.stop();
        }
    }

    fn handle(&mut self, item: Result<BytesMut, std::io::Error>, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let frame = match item {
            Ok(f) => f,
            Err(e) => {
                return self.refuse(
                    0,
                    ErrorCode::BadFrame,
                    format!("unreadable frame: {e}"),
                    ctx,
                );
            }
        };
        let head: Head = match net::decode(&frame) {
            Ok(h) => h,
            Err(e) => {
                return self.refuse(
                    0,
                    ErrorCode::BadFrame,
                    format!("frame is not a request: {e}"),
                    ctx,
                );
            }
        };
        if head.v > PROTOCOL_VERSION {
            return self.refuse(
                head.id,
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is newer than this node's {PROTOCOL_VERSION}",
                    head.v
                ),
                ctx,
            );
        }
        let request: Frame<Request> = match net::decode(&frame) {
            Ok(r) => r,
            Err(e) => {
                return self.refuse(
                    head.id,
                    ErrorCode::BadFrame,
                    format!("unknown request: {e}"),
                    ctx,
                );
            }
        };
        let id = request.id;
        let (tx, rx) = oneshot::channel();
        self.node.do_send(ClientCall {
            request: request.body,
            reply: tx,
        });
        ctx.spawn(rx.into_actor(self).map(move |res, act, _| {
            let body = res.unwrap_or_else(|_| {
                Response::Error(ApiError::new(
                    ErrorCode::Unavailable,
                    "the node dropped the request",
                ))
            });
            act.respond(id, body);
        }));
    }
}
