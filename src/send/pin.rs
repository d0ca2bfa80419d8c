//! TLS with a pinned certificate: the sender trusts exactly the appliance
//! whose certificate has the SHA-256 fingerprint it was given.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::job::errors::{coded, ErrorCode};

/// Normalise a fingerprint as users paste it: hex, any case, colons allowed.
pub(crate) fn normalize(fp: &str) -> Option<String> {
    let s: String = fp
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())).then_some(s)
}

/// `--fingerprint` as given on the command line, normalised; anything that
/// is not a fingerprint is a usage error saying where to find it.
pub(crate) fn fingerprint_option(given: &str) -> anyhow::Result<String> {
    normalize(given).ok_or_else(|| {
        coded(
            ErrorCode::Usage,
            format!(
                "--fingerprint `{given}` is not a SHA-256 fingerprint (64 hex digits; GET /v1/identity on the appliance's port 8080 shows it)"
            ),
        )
    })
}

#[derive(Debug)]
pub(crate) struct Pin {
    want: String,
    /// The fingerprint the appliance presented, for the error message.
    pub seen: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl Pin {
    pub fn new(want: String, provider: Arc<CryptoProvider>) -> Pin {
        Pin {
            want,
            seen: Mutex::new(None),
            provider,
        }
    }
}

impl ServerCertVerifier for Pin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = crate::wire::tls::fingerprint(end_entity.as_ref());
        let matches = blake3::hash(got.as_bytes()) == blake3::hash(self.want.as_bytes());
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint mismatch".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalised() {
        let hex64 = "AB".repeat(32);
        assert_eq!(normalize(&hex64), Some("ab".repeat(32)));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(normalize(&colons), Some("ab".repeat(32)));
        assert_eq!(normalize("abc"), None);
        assert_eq!(normalize(&"zz".repeat(32)), None);
    }
}
