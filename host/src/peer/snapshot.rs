//! Streaming a state snapshot to a follower that needs entries the leader
//! has compacted.
//!
//! The leader dials the follower's peer address with a [`Hello`] on the
//! `Snapshot` lane; unlike the other lanes this connection is a dialogue:
//!
//! ```text
//! leader → Offer { meta }            the snapshot: index, term, chunk checksums
//! leader ← Resume { from }           chunks the follower already has staged
//! leader → Chunk { seq, data }  ┐    one at a time; the follower checks the
//! leader ← Ack { next }         ┘    chunk's BLAKE3 and re-requests a bad one
//! leader ← Installed | Failed        after the last chunk, once installed
//! ```
//!
//! The follower stages verified chunks in files named by the snapshot's
//! (index, term), so a broken connection resumes where it stopped when the
//! leader offers the same snapshot again (it keeps offering its latest one
//! while that one is still ahead of its compacted log).

use super::wire::{
    DialError, Hello, HelloReply, Lane, PEER_PROTOCOL_VERSION, PeerConn, dial_member,
};
use crate::net;
use crate::storage::SnapshotMeta;
pub use crate::storage::chunk_name;
use crate::types::NodeId;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::codec::Framed;

/// How long one step of the dialogue may take (installing a large snapshot
/// gets [`INSTALL_TIMEOUT`]).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the follower may take to install a complete snapshot.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Leader → follower.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Offer {
    /// The snapshot on offer.
    Offer(SnapshotMeta),
    /// One chunk.
    Chunk {
        /// Chunk number.
        seq: u64,
        /// Its bytes.
        data: serde_bytes::ByteBuf,
    },
}

/// Follower → leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Send chunks from `from` on.
    Resume {
        /// First chunk wanted.
        from: u64,
    },
    /// Chunk `next - 1` was good; send `next`.
    Ack {
        /// Next chunk wanted.
        next: u64,
    },
    /// Chunk `seq` did not match its checksum: send it again.
    Resend {
        /// The chunk.
        seq: u64,
    },
    /// The snapshot is installed (or was not needed any more).
    Installed,
    /// The follower could not install it.
    Failed(String),
}

type Conn = PeerConn;

/// Why a snapshot transfer failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer sent nothing within the step's bound.
    #[error("timed out")]
    TimedOut,
    /// The peer did not take a frame within the step's bound.
    #[error("the peer did not take a frame within {0:?}")]
    SendTimedOut(Duration),
    /// The connection closed.
    #[error("connection closed")]
    Closed,
    /// The connection or the staging directory failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A frame did not decode.
    #[error("{0}")]
    Decode(#[from] crate::codec::CodecError),
    /// The member could not be reached (or was not the one expected).
    #[error("{0}")]
    Dial(#[from] DialError),
    /// The member refused the hello.
    #[error("refused: {0}")]
    Refused(String),
    /// An answer out of the dialogue.
    #[error("unexpected answer {0}")]
    Unexpected(String),
    /// A chunk of the snapshot being sent could not be read.
    #[error("reading chunk {seq}: {source}")]
    ReadChunk {
        /// The chunk.
        seq: u64,
        /// Why.
        source: std::io::Error,
    },
    /// The follower asked for a chunk again too often.
    #[error("chunk {0} refused too often")]
    ResentTooOften(u64),
    /// The follower could not stage or install the snapshot (its words).
    #[error("{0}")]
    Failed(String),
    /// The leader broke the dialogue.
    #[error("{0}")]
    Protocol(&'static str),
    /// A chunk out of order.
    #[error("chunk {seq} arrived, {expected} expected")]
    OutOfOrder {
        /// The chunk that came.
        seq: u64,
        /// The chunk expected.
        expected: u64,
    },
    /// The offer is larger than this node's state can hold.
    #[error(
        "a snapshot of {bytes} bytes is larger than this node's state can hold \
         (storage.map_size_bytes = {max})"
    )]
    TooLarge {
        /// The offer's size.
        bytes: u64,
        /// The state environment's map size.
        max: u64,
    },
    /// The chunks hold more than the offer said.
    #[error("the snapshot's chunks hold more than the {0} bytes its offer said")]
    OverOffer(u64),
    /// The node did not install the staged snapshot.
    #[error("{0}")]
    NotInstalled(#[from] NotInstalled),
}

/// Why the node did not install a staged snapshot (sent to the leader as
/// the follower's answer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NotInstalled {
    /// The node's reason, as the leader logs it.
    pub reason: String,
}

impl NotInstalled {
    /// From any error of the node's.
    pub fn because(why: impl std::fmt::Display) -> Self {
        NotInstalled {
            reason: why.to_string(),
        }
    }
}

async fn recv<T: serde::de::DeserializeOwned>(
    c: &mut Conn,
    within: Duration,
) -> Result<T, TransferError> {
    let frame = tokio::time::timeout(within, c.next())
        .await
        .map_err(|_| TransferError::TimedOut)?
        .ok_or(TransferError::Closed)??;
    Ok(net::decode(&frame)?)
}

async fn send<T: Serialize>(c: &mut Conn, value: &T) -> Result<(), TransferError> {
    // Bounded like a receive: a peer that stops reading cannot hold the
    // transfer (or a refusal) forever.
    match tokio::time::timeout(STEP_TIMEOUT, c.send(net::encode(value))).await {
        Ok(sent) => Ok(sent?),
        Err(_) => Err(TransferError::SendTimedOut(STEP_TIMEOUT)),
    }
}

/// Leader side: offer the snapshot in `dir` to the peer at `address`.
#[allow(clippy::too_many_arguments)]
pub async fn send_snapshot(
    address: &str,
    cluster_id: &str,
    from: NodeId,
    to: NodeId,
    client_address: &str,
    log_kind: crate::config::LogKind,
    timing: crate::config::Timing,
    tls: Option<&crate::tls::NodeTls>,
    dir: &Path,
    meta: &SnapshotMeta,
) -> Result<(), TransferError> {
    let stream = dial_member(address, to, tls, STEP_TIMEOUT).await?;
    let mut c = Framed::new(stream, net::codec());
    let hello = Hello {
        v: PEER_PROTOCOL_VERSION,
        cluster_id: cluster_id.to_string(),
        from,
        to,
        client_address: client_address.to_string(),
        lane: Lane::Snapshot,
        log_kind,
        timing,
        // The control and data lanes carry the incarnation and address.
        incarnation: 0,
        peer_address: String::new(),
    };
    send(&mut c, &hello).await?;
    match recv::<HelloReply>(&mut c, STEP_TIMEOUT).await? {
        HelloReply::Welcome { .. } | HelloReply::LostData { .. } => {}
        HelloReply::Refused(why) => return Err(TransferError::Refused(why)),
    }
    send(&mut c, &Offer::Offer(meta.clone())).await?;
    let mut next = match recv::<Answer>(&mut c, STEP_TIMEOUT).await? {
        Answer::Resume { from } => from,
        Answer::Installed => return Ok(()),
        other => return Err(TransferError::Unexpected(format!("{other:?}"))),
    };
    if next > 0 {
        tracing::info!(to, index = meta.index, from = next, "resuming a snapshot");
    }
    let mut resends = 0;
    while next < meta.chunks {
        let data = tokio::fs::read(dir.join(chunk_name(next)))
            .await
            .map_err(|source| TransferError::ReadChunk { seq: next, source })?;
        let chunk = Offer::Chunk {
            seq: next,
            data: serde_bytes::ByteBuf::from(data),
        };
        send(&mut c, &chunk).await?;
        match recv::<Answer>(&mut c, STEP_TIMEOUT).await? {
            Answer::Ack { next: n } => next = n,
            Answer::Resend { seq } => {
                resends += 1;
                if resends > 10 {
                    return Err(TransferError::ResentTooOften(seq));
                }
                tracing::warn!(
                    to,
                    seq,
                    "snapshot chunk refused (checksum); sending it again"
                );
                next = seq;
            }
            Answer::Failed(why) => return Err(TransferError::Failed(why)),
            other => return Err(TransferError::Unexpected(format!("{other:?}"))),
        }
    }
    match recv::<Answer>(&mut c, INSTALL_TIMEOUT).await? {
        Answer::Installed => Ok(()),
        Answer::Failed(why) => Err(TransferError::Failed(why)),
        other => Err(TransferError::Unexpected(format!("{other:?}"))),
    }
}

pub use crate::storage::staging_dir;

/// What the follower's receiving side reports to the node.
pub enum Progress {
    /// Chunks staged so far.
    Chunk {
        /// The snapshot.
        meta: SnapshotMeta,
        /// Chunks staged.
        done: u64,
    },
    /// All chunks are staged and verified: install them, then answer.
    Complete {
        /// The snapshot.
        meta: SnapshotMeta,
        /// Its chunks.
        dir: PathBuf,
        /// Install result.
        done: tokio::sync::oneshot::Sender<Result<(), NotInstalled>>,
    },
}

/// Follower side of an accepted `Snapshot` lane.
pub async fn receive_snapshot(
    mut c: Conn,
    root: &Path,
    bytes_max: u64,
    report: impl Fn(Progress),
) -> Result<(), TransferError> {
    let meta = match recv::<Offer>(&mut c, STEP_TIMEOUT).await? {
        Offer::Offer(meta) => meta,
        Offer::Chunk { .. } => return Err(TransferError::Protocol("chunk before the offer")),
    };
    if meta.checksums.len() as u64 != meta.chunks {
        return Err(TransferError::Protocol(
            "snapshot offer with a wrong number of checksums",
        ));
    }
    // A snapshot larger than the state environment could hold can never
    // be installed: refused before anything is staged.
    if meta.bytes > bytes_max {
        let refused = TransferError::TooLarge {
            bytes: meta.bytes,
            max: bytes_max,
        };
        let _ = send(&mut c, &Answer::Failed(refused.to_string())).await;
        return Err(refused);
    }
    let dir = staging_dir(root, &meta);
    // Other incoming snapshots are outdated: only the latest is resumed.
    crate::storage::remove_other_stagings(root, &dir);
    std::fs::create_dir_all(&dir)?;
    // Resume after the chunks already staged (each was verified on arrival).
    let mut next = 0;
    let mut staged = 0u64;
    while next < meta.chunks && dir.join(chunk_name(next)).exists() {
        staged += std::fs::metadata(dir.join(chunk_name(next))).map_or(0, |m| m.len());
        next += 1;
    }
    report(Progress::Chunk {
        meta: meta.clone(),
        done: next,
    });
    send(&mut c, &Answer::Resume { from: next }).await?;
    while next < meta.chunks {
        let (seq, data) = match recv::<Offer>(&mut c, STEP_TIMEOUT).await? {
            Offer::Chunk { seq, data } => (seq, data),
            Offer::Offer(_) => return Err(TransferError::Protocol("second offer")),
        };
        if seq != next {
            return Err(TransferError::OutOfOrder {
                seq,
                expected: next,
            });
        }
        if *blake3::hash(&data).as_bytes() != meta.checksums[seq as usize] {
            tracing::warn!(
                seq,
                "snapshot chunk with a bad checksum refused; asking again"
            );
            send(&mut c, &Answer::Resend { seq }).await?;
            continue;
        }
        // The chunks hold what the offer said, and no more: the disk a
        // sender can fill is bounded by an offer already checked.
        staged += data.len() as u64;
        if staged > meta.bytes {
            let refused = TransferError::OverOffer(meta.bytes);
            let _ = send(&mut c, &Answer::Failed(refused.to_string())).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(refused);
        }
        // Staged atomically: a crash never leaves half a chunk named.
        let tmp = dir.join(format!("{}.tmp", chunk_name(seq)));
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, dir.join(chunk_name(seq)))?;
        next += 1;
        report(Progress::Chunk {
            meta: meta.clone(),
            done: next,
        });
        send(&mut c, &Answer::Ack { next }).await?;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    report(Progress::Complete {
        meta: meta.clone(),
        dir: dir.clone(),
        done: tx,
    });
    let result = rx
        .await
        .unwrap_or_else(|_| Err(NotInstalled::because("the node stopped")));
    let answer = match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            Answer::Installed
        }
        Err(why) => Answer::Failed(why.reason.clone()),
    };
    send(&mut c, &answer).await?;
    let _ = SinkExt::<Bytes>::close(&mut c).await;
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(chunks: &[Vec<u8>]) -> SnapshotMeta {
        SnapshotMeta {
            index: 42,
            term: 3,
            digest: [7; 32],
            chunks: chunks.len() as u64,
            bytes: chunks.iter().map(|c| c.len() as u64).sum(),
            checksums: chunks.iter().map(|c| *blake3::hash(c).as_bytes()).collect(),
            last_timestamp_ms: 0,
            membership: None,
        }
    }

    async fn dial(addr: std::net::SocketAddr) -> Conn {
        let stream = tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .expect("connected in time")
            .unwrap();
        Framed::new(Box::new(stream) as crate::tls::BoxedIo, net::codec())
    }

    fn chunk(seq: u64, data: &[u8]) -> Offer {
        Offer::Chunk {
            seq,
            data: serde_bytes::ByteBuf::from(data.to_vec()),
        }
    }

    /// Offer `m` on a new connection; the chunk the follower resumes from.
    async fn offer(addr: std::net::SocketAddr, m: &SnapshotMeta) -> (Conn, Answer) {
        let mut c = dial(addr).await;
        send(&mut c, &Offer::Offer(m.clone())).await.unwrap();
        let answer = recv::<Answer>(&mut c, STEP_TIMEOUT).await.unwrap();
        (c, answer)
    }

    /// Send `chunks[from..]`, each acknowledged, then expect `Installed`.
    async fn send_rest(c: &mut Conn, chunks: &[Vec<u8>], from: u64) {
        for seq in from..chunks.len() as u64 {
            send(c, &chunk(seq, &chunks[seq as usize])).await.unwrap();
            assert_eq!(
                recv::<Answer>(c, STEP_TIMEOUT).await.unwrap(),
                Answer::Ack { next: seq + 1 }
            );
        }
        assert_eq!(
            recv::<Answer>(c, STEP_TIMEOUT).await.unwrap(),
            Answer::Installed
        );
    }

    /// An offer larger than the state can hold is refused before anything
    /// is staged (at the limit it is taken); chunks holding more than the
    /// offer said are refused and their staging removed.
    #[tokio::test]
    async fn snapshots_over_the_size_limit_or_their_offer_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let chunks: Vec<Vec<u8>> = (0..2u8).map(|i| vec![i; 1000]).collect();
        let m = meta(&chunks);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let root_path = root.path().to_path_buf();
        let limit = m.bytes;
        let ended = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ended.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let c = Framed::new(Box::new(stream) as crate::tls::BoxedIo, net::codec());
                let r = receive_snapshot(c, &root_path, limit, |p| {
                    if let Progress::Complete { done, .. } = p {
                        let _ = done.send(Ok(()));
                    }
                })
                .await;
                seen.lock().unwrap().push(r);
            }
        });
        // One byte over the limit: refused at the offer.
        let mut over = m.clone();
        over.bytes = limit + 1;
        let (_, a) = offer(addr, &over).await;
        assert!(
            matches!(&a, Answer::Failed(w) if w.contains("storage.map_size_bytes")),
            "{a:?}"
        );
        assert!(!staging_dir(root.path(), &over).exists(), "nothing staged");
        // An offer that understates its chunks: refused at the chunk
        // that passes it.
        let mut under = m.clone();
        under.bytes = 1500;
        let (mut c, answer) = offer(addr, &under).await;
        assert_eq!(answer, Answer::Resume { from: 0 });
        send(&mut c, &chunk(0, &chunks[0])).await.unwrap();
        assert_eq!(
            recv::<Answer>(&mut c, STEP_TIMEOUT).await.unwrap(),
            Answer::Ack { next: 1 }
        );
        send(&mut c, &chunk(1, &chunks[1])).await.unwrap();
        let a = recv::<Answer>(&mut c, STEP_TIMEOUT).await.unwrap();
        assert!(
            matches!(&a, Answer::Failed(w) if w.contains("more than the 1500 bytes")),
            "{a:?}"
        );
        assert!(
            !staging_dir(root.path(), &under).exists(),
            "its staging is removed"
        );
        // At the limit: installed.
        let (mut c, answer) = offer(addr, &m).await;
        assert_eq!(answer, Answer::Resume { from: 0 });
        send_rest(&mut c, &chunks, 0).await;
    }

    #[tokio::test]
    async fn a_bad_chunk_is_asked_again_and_a_broken_transfer_resumes() {
        let root = tempfile::tempdir().unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
        let m = meta(&chunks);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let root_path = root.path().to_path_buf();
        let installed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = installed.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let c = Framed::new(Box::new(stream) as crate::tls::BoxedIo, net::codec());
                let seen = seen.clone();
                let _ = receive_snapshot(c, &root_path, u64::MAX, move |p| {
                    if let Progress::Complete { meta, dir, done } = p {
                        // Everything staged is what was offered.
                        for seq in 0..meta.chunks {
                            let bytes = std::fs::read(dir.join(chunk_name(seq))).unwrap();
                            assert_eq!(
                                *blake3::hash(&bytes).as_bytes(),
                                meta.checksums[seq as usize]
                            );
                        }
                        *seen.lock().unwrap() = Some(meta.index);
                        let _ = done.send(Ok(()));
                    }
                })
                .await;
            }
        });

        // First attempt: chunk 0 arrives, chunk 1 is corrupted in transit
        // (refused and asked again), then the connection breaks.
        let mut c = dial(addr).await;
        send(&mut c, &Offer::Offer(m.clone())).await.unwrap();
        assert_eq!(
            recv::<Answer>(&mut c, STEP_TIMEOUT).await.unwrap(),
            Answer::Resume { from: 0 }
        );
        send(&mut c, &chunk(0, &chunks[0])).await.unwrap();
        assert_eq!(
            recv::<Answer>(&mut c, STEP_TIMEOUT).await.unwrap(),
            Answer::Ack { next: 1 }
        );
        send(&mut c, &chunk(1, b"garbled")).await.unwrap();
        assert_eq!(
            recv::<Answer>(&mut c, STEP_TIMEOUT).await.unwrap(),
            Answer::Resend { seq: 1 }
        );
        drop(c);

        // Second attempt resumes after the chunk already staged.
        let (mut c, answer) = offer(addr, &m).await;
        assert_eq!(answer, Answer::Resume { from: 1 });
        send_rest(&mut c, &chunks, 1).await;
        assert_eq!(*installed.lock().unwrap(), Some(42));
        assert!(
            !staging_dir(root.path(), &m).exists(),
            "an installed snapshot's staging is removed"
        );
    }
}
