//! TLS on both ports (rustls, with ring as its cryptography).
//!
//! A node configured with [`TlsSettings`] speaks only TLS on its client
//! and peer ports:
//! - **peer port**: mutual TLS. Both ends present a node certificate
//!   signed by the group's peer CA, naming the node as the URI
//!   `urn:understudy:node:<id>` in its subject alternative names. The
//!   acceptor takes a hello only from the node its client certificate
//!   names ([`crate::peer`]); the dialer checks that the certificate of the
//!   node it reached names the node it meant to reach.
//! - **client port**: the node presents its certificate; a client may
//!   present one signed by the client CA, naming a user as
//!   `urn:understudy:user:<name>`, or authenticate later with a token. A
//!   node certificate is refused on the client port and a user certificate
//!   on the peer port: who a certificate names decides where it is valid,
//!   even when one CA signs both kinds.
//!
//! A TLS connection starts with a handshake record (first byte 0x16); a
//! frame of ours starts with a length whose first byte is 0 (no frame is
//! 369 MB), so each port tells plaintext from TLS by its first byte and
//! answers the wrong one with a plaintext error naming the mistake, in the
//! protocol the other side speaks, before closing.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::types::NodeId;

pub mod issue;

/// Prefix of the URI a node certificate names its node by.
pub const NODE_URI_PREFIX: &str = "urn:understudy:node:";
/// Prefix of the URI a client certificate names its user by.
pub const USER_URI_PREFIX: &str = "urn:understudy:user:";
/// First byte of a TLS connection (a handshake record).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Where a node finds its certificates (`[tls]` in the node's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of this node; the first certificate names the
    /// node (`urn:understudy:node:<id>`) and the host names or addresses
    /// it is reached at.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM certificate(s) of the CA that signs members' certificates.
    pub peer_ca: PathBuf,
    /// PEM certificate(s) of the CA that signs client certificates
    /// (default: `peer_ca`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The node's certificate does not name it.
    #[error("{0}")]
    Identity(String),
}

/// Who a certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertIdentity {
    /// A member of the group.
    Node(NodeId),
    /// A client user.
    User(String),
}

impl std::fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertIdentity::Node(id) => write!(f, "node {id}"),
            CertIdentity::User(name) => write!(f, "user {name:?}"),
        }
    }
}

/// Who the (leaf) certificate `der` names, from its URI subject
/// alternative names.
pub fn identity_of(der: &CertificateDer<'_>) -> Result<CertIdentity, CertError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| CertError::Unreadable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::BadNames(e.to_string()))?;
    let mut found = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
                let id = id
                    .parse::<NodeId>()
                    .map_err(|_| CertError::BadNodeId(uri.to_string()))?;
                found.push(CertIdentity::Node(id));
            } else if let Some(user) = uri.strip_prefix(USER_URI_PREFIX) {
                found.push(CertIdentity::User(user.to_string()));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(CertError::Anonymous),
        _ => Err(CertError::Several(found)),
    }
}

/// Why a certificate names no identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not an X.509 certificate.
    #[error("unreadable certificate: {0}")]
    Unreadable(String),
    /// Its subject alternative names do not parse.
    #[error("unreadable subject alternative names: {0}")]
    BadNames(String),
    /// A node URI without a number.
    #[error("certificate names a bad node id {0:?}")]
    BadNodeId(String),
    /// No node and no user.
    #[error(
        "the certificate names neither a node ({NODE_URI_PREFIX}<id>) nor a user \
         ({USER_URI_PREFIX}<name>)"
    )]
    Anonymous,
    /// More than one identity.
    #[error("the certificate names more than one identity: {0:?}")]
    Several(Vec<CertIdentity>),
}

/// A member address whose host is not a valid TLS server name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad host name {host:?}: {message}")]
pub struct BadServerName {
    /// The host part.
    pub host: String,
    /// Why.
    pub message: String,
}

/// The identity of the peer of a finished handshake (its leaf
/// certificate), if it presented one.
pub fn peer_identity(
    certs: Option<&[CertificateDer<'static>]>,
) -> Option<Result<CertIdentity, CertError>> {
    certs.and_then(|c| c.first()).map(identity_of)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            message: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            message: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        message: format!("no PEM private key: {e}"),
    })
}

fn roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        store.add(cert).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(store))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A node's TLS: acceptors for both ports, and the connector its peer
/// lanes and snapshot transfers dial with.
#[derive(Clone)]
pub struct NodeTls {
    /// Accepts clients (client certificate optional).
    pub client_acceptor: TlsAcceptor,
    /// Accepts members (node certificate required).
    pub peer_acceptor: TlsAcceptor,
    /// Dials members, presenting this node's certificate.
    pub peer_connector: TlsConnector,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Load `settings` for node `node_id`: its certificate must name it.
    pub fn load(settings: &TlsSettings, node_id: NodeId) -> Result<NodeTls, TlsError> {
        let chain = load_certs(&settings.cert)?;
        let key = load_key(&settings.key)?;
        match identity_of(&chain[0]) {
            Ok(CertIdentity::Node(id)) if id == node_id => {}
            Ok(other) => {
                return Err(TlsError::Identity(format!(
                    "{} names {other}, not node {node_id}: each member needs its own node \
                     certificate (`understudy certs`)",
                    settings.cert.display()
                )));
            }
            Err(e) => {
                return Err(TlsError::Identity(format!(
                    "{}: {e}",
                    settings.cert.display()
                )));
            }
        }
        let peer_roots = roots(&settings.peer_ca)?;
        let client_roots = match &settings.client_ca {
            Some(path) => roots(path)?,
            None => peer_roots.clone(),
        };
        let server = |verifier| {
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(config_error)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(config_error)
        };
        let peer_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            peer_roots.clone(),
            provider(),
        )
        .build()
        .map_err(config_error)?;
        // Clients may come without a certificate (and give a token).
        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(client_roots, provider())
                .allow_unauthenticated()
                .build()
                .map_err(config_error)?;
        let dial = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(peer_roots)
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?;
        Ok(NodeTls {
            client_acceptor: TlsAcceptor::from(Arc::new(server(client_verifier)?)),
            peer_acceptor: TlsAcceptor::from(Arc::new(server(peer_verifier)?)),
            peer_connector: TlsConnector::from(Arc::new(dial)),
        })
    }
}

/// A client's TLS: the CA it trusts and, optionally, its certificate.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trust the CA(s) in `ca`; present `identity` (certificate chain and
    /// key files) if given.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots(ca)?);
        let config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(config_error)?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Handshake with the node at `addr` over `stream`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connector.connect(server_name(addr), stream).await
    }
}

/// The name a node at `addr` is checked against (its IP address).
pub fn server_name(addr: SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

/// The name a member at `address` (HOST:PORT) is checked against.
pub fn server_name_of(address: &str) -> Result<ServerName<'static>, BadServerName> {
    let host = match address.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    };
    ServerName::try_from(host.to_string()).map_err(|e| BadServerName {
        host: host.to_string(),
        message: e.to_string(),
    })
}

/// Wait (at most `timeout_ms`) for the first byte a connection sends and
/// return it without consuming it; `None` if it closed first.
pub async fn first_byte(
    stream: &tokio::net::TcpStream,
    timeout_ms: u64,
) -> std::io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(
        std::time::Duration::from_millis(timeout_ms),
        stream.peek(&mut b),
    )
    .await
    {
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) => Ok(Some(b[0])),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("sent nothing within {timeout_ms} ms"),
        )),
    }
}

/// Bytes a refusing side reads and drops before it closes ([`linger`]).
pub const LINGER_BYTES_MAX: usize = 64 << 10;

/// What `linger` reads at a time.
const LINGER_READ_CHUNK_BYTES: usize = 4096;
/// How long a refusing side waits for the other to close ([`linger`]).
pub const LINGER_MS: u64 = 1_000;

/// After writing a refusal: stop writing, then read and drop what the
/// other side had already sent (at most [`LINGER_BYTES_MAX`] within
/// [`LINGER_MS`]) before closing, so the close is a FIN. Closing with
/// unread bytes sends a reset, which can destroy the refusal before the
/// other side reads it.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(std::time::Duration::from_millis(LINGER_MS), async {
        let _ = io.shutdown().await;
        let mut buf = [0u8; LINGER_READ_CHUNK_BYTES];
        let mut read = 0;
        while read < LINGER_BYTES_MAX {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// A connection either side may have (plaintext or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed [`Io`].
pub type BoxedIo = Box<dyn Io>;

/// Explain a failed handshake: a plaintext port answers a TLS hello with
/// one of our frames, which rustls reports as a corrupt message.
pub fn explain_handshake_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    // tokio-rustls hands rustls' error over inside the I/O error.
    let not_tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)));
    if not_tls {
        format!(
            "TLS handshake failed ({text}): the port does not speak TLS (the node runs \
             without [tls]; a client reaches it without --ca)"
        )
    } else {
        format!("TLS handshake failed: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_of_member_addresses() {
        assert!(matches!(
            server_name_of("127.0.0.1:7700").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name_of("[::1]:7700").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name_of("node-1.example:7700").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
