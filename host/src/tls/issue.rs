//! Issuing certificates for a group (`understudy certs`), with rcgen: a CA,
//! one node certificate per member, client certificates per user.
//!
//! Meant for trying TLS and for small groups; production groups may use
//! their own PKI, as long as node certificates carry
//! `urn:understudy:node:<id>` and client certificates
//! `urn:understudy:user:<name>` as a URI subject alternative name.

use super::{NODE_URI_PREFIX, USER_URI_PREFIX};
use crate::types::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// A CA that signs certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub cert_pem: String,
}

/// A certificate and its key, in PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// Validity of an issued certificate.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Start (seconds relative to now; negative: in the past).
    pub from_s: i64,
    /// End (seconds relative to now).
    pub until_s: i64,
}

impl Validity {
    /// From an hour ago for `days` days.
    pub fn days(days: u32) -> Validity {
        Validity {
            from_s: -3600,
            until_s: i64::from(days) * 86_400,
        }
    }
}

fn apply(params: &mut CertificateParams, validity: Validity) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(validity.from_s);
    params.not_after = now + time::Duration::seconds(validity.until_s);
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str, validity: Validity) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        apply(&mut params, validity);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA whose certificate and key are `cert_pem` and `key_pem`.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A node certificate for member `id`, valid for `hosts` (names or IP
    /// addresses it is reached at), for both ends of TLS.
    pub fn node(
        &self,
        id: NodeId,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params
            .subject_alt_names
            .push(SanType::URI(format!("{NODE_URI_PREFIX}{id}").try_into()?));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("understudy node {id}"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, validity)
    }

    /// A client certificate for `user`.
    pub fn user(&self, user: &str, validity: Validity) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .subject_alt_names
            .push(SanType::URI(format!("{USER_URI_PREFIX}{user}").try_into()?));
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        validity: Validity,
    ) -> Result<Issued, rcgen::Error> {
        apply(&mut params, validity);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The files `understudy certs` writes into a directory.
pub struct Layout {
    /// The directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    /// Node `id`'s certificate.
    pub fn node_cert(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }
    /// Node `id`'s key.
    pub fn node_key(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}-key.pem"))
    }
    /// User `name`'s certificate.
    pub fn user_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("user-{name}.pem"))
    }
    /// User `name`'s key.
    pub fn user_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("user-{name}-key.pem"))
    }

    /// The TLS settings of node `id` with these files.
    pub fn node_settings(&self, id: NodeId) -> super::TlsSettings {
        super::TlsSettings {
            cert: self.node_cert(id),
            key: self.node_key(id),
            peer_ca: self.ca_cert(),
            client_ca: None,
        }
    }

    /// The CA in this directory, made (and written) if there is none.
    pub fn ca(&self, validity: Validity) -> anyhow::Result<(Ca, bool)> {
        use anyhow::Context as _;
        if self.ca_cert().exists() {
            let cert = std::fs::read_to_string(self.ca_cert())
                .with_context(|| format!("reading {}", self.ca_cert().display()))?;
            let key = std::fs::read_to_string(self.ca_key())
                .with_context(|| format!("reading {}", self.ca_key().display()))?;
            let ca = Ca::load(&cert, &key)
                .with_context(|| format!("loading the CA in {}", self.dir.display()))?;
            return Ok((ca, false));
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let ca = Ca::new("understudy CA", validity)?;
        write_private(&self.ca_key(), &ca.key_pem())?;
        write_file(&self.ca_cert(), &ca.cert_pem)?;
        Ok((ca, true))
    }
}

/// Write a public file.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Write a file only its owner may read (a private key).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertIdentity, identity_of, load_certs};

    #[test]
    fn issued_certificates_name_who_they_are_for() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA", Validity::days(1)).unwrap();
        let node = ca
            .node(
                7,
                &["127.0.0.1".into(), "localhost".into()],
                Validity::days(1),
            )
            .unwrap();
        let user = ca.user("alice", Validity::days(1)).unwrap();
        let p = dir.path().join("n.pem");
        write_file(&p, &node.cert_pem).unwrap();
        assert_eq!(
            identity_of(&load_certs(&p).unwrap()[0]).unwrap(),
            CertIdentity::Node(7)
        );
        write_file(&p, &user.cert_pem).unwrap();
        assert_eq!(
            identity_of(&load_certs(&p).unwrap()[0]).unwrap(),
            CertIdentity::User("alice".into())
        );
        // A CA loaded back from its files signs as the one that made them.
        let again = Ca::load(&ca.cert_pem, &ca.key_pem()).unwrap();
        assert!(
            again
                .node(1, &["127.0.0.1".into()], Validity::days(1))
                .is_ok()
        );
    }
}
