//! The data port's TLS identity: generated on first start, kept in the state
//! directory, pinned by the sender through its SHA-256 fingerprint.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub(crate) struct TlsIdentity {
    pub config: Arc<rustls::ServerConfig>,
    /// Lowercase hex SHA-256 of the certificate (DER).
    pub fingerprint: String,
    /// The certificate and key were missing and have just been generated.
    pub created: bool,
}

/// SHA-256 of a DER certificate, as lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

pub(crate) fn load_or_create(dir: &Path) -> Result<TlsIdentity> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    crate::disk::private_dir(dir)?;
    let created = !cert_path.exists() || !key_path.exists();
    if created {
        let ck = rcgen::generate_simple_self_signed(vec!["ferry".to_owned()])
            .context("generating the data port's TLS certificate")?;
        write_private(&key_path, ck.key_pair.serialize_pem().as_bytes())?;
        write_private(&cert_path, ck.cert.pem().as_bytes())?;
    }
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&cert_path)
            .with_context(|| format!("opening {}", cert_path.display()))?,
    ))
    .collect::<Result<_, _>>()
    .with_context(|| format!("reading {}", cert_path.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&key_path)
            .with_context(|| format!("opening {}", key_path.display()))?,
    ))
    .with_context(|| format!("reading {}", key_path.display()))?
    .with_context(|| format!("{} holds no private key", key_path.display()))?;
    let first = certs
        .first()
        .with_context(|| format!("{} holds no certificate", cert_path.display()))?;
    let fingerprint = fingerprint(first.as_ref());
    let fingerprint_path = dir.join("fingerprint");
    if std::fs::read_to_string(&fingerprint_path).ok().as_deref()
        != Some(&format!("{fingerprint}\n"))
    {
        write_private(&fingerprint_path, format!("{fingerprint}\n").as_bytes())?;
    }
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("loading the data port's TLS certificate")?;
    Ok(TlsIdentity {
        config: Arc::new(config),
        fingerprint,
        created,
    })
}

/// The TLS provider of both ends: ring's, with AES-128-GCM first. Chunks
/// are encrypted and decrypted at the rate of the link, and AES-128 does
/// that with 10 rounds where AES-256 takes 14 (both are TLS 1.3's own
/// suites, neither is weak).
pub fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}

/// Written atomically and private (0600): the key is the appliance's identity.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    crate::disk::write_atomic(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!((a.created, b.created), (true, false));
        assert_eq!(a.fingerprint, b.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        for (name, mode) in [
            ("", 0o700),
            ("cert.pem", 0o600),
            ("key.pem", 0o600),
            ("fingerprint", 0o600),
        ] {
            let m = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, mode, "{name}");
        }
        assert_eq!(a.fingerprint.len(), 64);
        let on_disk = std::fs::read_to_string(dir.path().join("fingerprint")).unwrap();
        assert_eq!(on_disk.trim(), a.fingerprint);
    }
}
