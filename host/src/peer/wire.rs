//! What members say to each other: the peer protocol's version, the lanes
//! and their messages, the hello and its answer, and dialing a member (TCP,
//! then mutual TLS in which it proves who it is). The lanes of [`super`]
//! and the snapshot transfer ([`super::snapshot`]) both start this way.

use crate::net;
use crate::replication::Message;
use crate::tls::{BoxedIo, CertIdentity, NodeTls};
use crate::types::NodeId;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use understudy_core::membership::Membership;

/// Version of the peer protocol spoken by this build. 2: commands share
/// instances within runs (`node::applier::RUN_WINDOW`), which may compute
/// other results than version 1's fresh instances, so the two never mix in
/// a group. 3: the content limits of [`crate::limits`] refuse some
/// commands that version 2 applied. 4: hello answers carry the receiver's
/// term and durable log position (a node that lost its data votes by
/// them), and `FUNCTION_BODY_BYTES_MAX` refuses some modules 3 deployed.
/// 5: followers precompile deployed modules. 6: entries carry who asked
/// for them and are checked against the replicated auth state (auth and
/// audit entries, the `Denied` outcome). 7: configurations are log
/// entries (`Payload::Config`), hello answers carry the receiver's
/// configuration, and members are who the configuration names.
pub const PEER_PROTOCOL_VERSION: u16 = 7;

/// Which connection a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lane {
    /// Heartbeats, votes, answers.
    Control,
    /// Log shipping.
    Data,
    /// A snapshot transfer (a dialogue, see [`snapshot`]).
    Snapshot,
}

/// What travels between members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// The replication protocol.
    Raft(Message),
    /// "My state digest after applying `index` is `digest`" (sent at every
    /// sample index; a mismatch is a determinism alarm).
    Digest {
        /// A sample index.
        index: crate::types::Index,
        /// The chained state digest there.
        #[serde(with = "serde_bytes")]
        digest: [u8; 32],
    },
    /// The leader took a deploy of `wasm` and is compiling it before it
    /// proposes it: compile it now too, so the artifact is ready when the
    /// entry is applied (the applier does not stall on it).
    Precompile {
        /// The module as the client sent it (at most `MODULE_BYTES_MAX`).
        wasm: serde_bytes::ByteBuf,
    },
}

impl Lane {
    /// The lane of a message.
    pub fn of(msg: &PeerMessage) -> Lane {
        match msg {
            PeerMessage::Raft(Message::Append { .. }) | PeerMessage::Precompile { .. } => {
                Lane::Data
            }
            _ => Lane::Control,
        }
    }
}

/// First frame of a peer connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Peer protocol version of the sender.
    pub v: u16,
    /// Cluster the sender belongs to.
    pub cluster_id: String,
    /// Sender.
    pub from: NodeId,
    /// Intended receiver.
    pub to: NodeId,
    /// Where the sender serves clients (for leader hints).
    pub client_address: String,
    /// Which lane this connection is.
    pub lane: Lane,
    /// The sender's replication-log kind (must match the receiver's).
    #[serde(default)]
    pub log_kind: crate::config::LogKind,
    /// The sender's failure-detection timing (must match: leases and
    /// elections count on every member waiting as long).
    #[serde(default)]
    pub timing: crate::config::Timing,
    /// The sender's data-directory incarnation (see
    /// [`crate::storage::LogStore::incarnation`]); 0: not given.
    #[serde(default)]
    pub incarnation: u64,
    /// Where the sender takes peer connections: a receiver that has no
    /// lane to the sender yet (it joins, or has not read the
    /// configuration that names it) dials it back there.
    #[serde(default)]
    pub peer_address: String,
}

/// Answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Accepted: messages may follow. `term` is the receiver's current
    /// term (a node that lost its data learns its peers' terms from it).
    Welcome {
        /// The receiver's term.
        term: crate::types::Term,
        /// The receiver's durable log position (term, index).
        log: (crate::types::Term, crate::types::Index),
        /// The receiver's configuration in effect, and its index.
        #[serde(default)]
        membership: (crate::types::Index, Membership),
    },
    /// Accepted, but the receiver knew the sender under another
    /// incarnation: the sender lost its data directory (and with it its
    /// log and its votes). It must not vote until it has heard enough
    /// peers' terms and log positions, and then only for logs at least as
    /// up-to-date as theirs. Messages may follow.
    LostData {
        /// The receiver's term.
        term: crate::types::Term,
        /// The receiver's durable log position (term, index).
        log: (crate::types::Term, crate::types::Index),
        /// The receiver's configuration in effect, and its index (the
        /// sender lost its own).
        #[serde(default)]
        membership: (crate::types::Index, Membership),
    },
    /// Refused, and why; the connection is closed.
    Refused(String),
}

/// Just the version, decoded first so a newer protocol is named as such.
#[derive(Deserialize)]
pub(super) struct HelloHead {
    pub(super) v: u16,
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Unreachable, or the connection broke (retried quietly).
    #[error("{0}")]
    Io(String),
    /// The peer (or its certificate) refused us, or we refused it (logged).
    #[error("refused: {0}")]
    Refused(String),
}

/// A peer connection's frames, over plaintext or TLS.
pub type PeerConn = Framed<BoxedIo, net::FrameCodec>;

/// Reach member `to` at `address` within `timeout`: TCP, then with `tls`
/// a mutual-TLS handshake in which the member must prove with its
/// certificate that it is `to`.
pub async fn dial_member(
    address: &str,
    to: NodeId,
    tls: Option<&NodeTls>,
    timeout: Duration,
) -> Result<BoxedIo, DialError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| DialError::Io("connect timed out".into()))?
        .map_err(|e| DialError::Io(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Box::new(stream));
    };
    let name =
        crate::tls::server_name_of(address).map_err(|e| DialError::Refused(e.to_string()))?;
    let stream = tokio::time::timeout(timeout, tls.peer_connector.connect(name, stream))
        .await
        .map_err(|_| DialError::Io("TLS handshake timed out".into()))?
        .map_err(|e| match e.kind() {
            // The peer went away mid-handshake (it is starting or
            // stopping, or a proxy lost it): retried quietly.
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                DialError::Io(format!("TLS handshake: {e}"))
            }
            _ => DialError::Refused(crate::tls::explain_handshake_error(&e)),
        })?;
    match crate::tls::peer_identity(stream.get_ref().1.peer_certificates()) {
        Some(Ok(CertIdentity::Node(id))) if id == to => Ok(Box::new(stream)),
        Some(Ok(other)) => Err(DialError::Refused(format!(
            "the member at {address} presented a certificate of {other}, not of node {to}"
        ))),
        Some(Err(e)) => Err(DialError::Refused(format!(
            "the member at {address} presented a bad certificate: {e}"
        ))),
        None => Err(DialError::Refused(format!(
            "the member at {address} presented no certificate"
        ))),
    }
}
