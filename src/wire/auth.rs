//! Challenge–response authentication with the job token.
//!
//! The token never crosses the wire. Each side sends a fresh nonce; the
//! sender proves it holds the token with a keyed BLAKE3 hash over both nonces
//! and the TLS session's exported keying material (so a proof cannot be
//! relayed into another TLS session), and the appliance answers with its own
//! proof so the sender knows the appliance holds the token too.

/// Label for the TLS exporter (RFC 5705) that binds proofs to the session.
pub(crate) const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry-auth-v1";

pub(crate) type Nonce = [u8; 32];

pub(crate) fn new_nonce() -> Nonce {
    rand::random()
}

fn key(token: &str) -> [u8; 32] {
    blake3::derive_key("ferry job token v1", token.as_bytes())
}

fn proof(
    token: &str,
    role: &[u8],
    first: &Nonce,
    second: &Nonce,
    binding: &[u8; 32],
) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(&key(token));
    h.update(role);
    h.update(first);
    h.update(second);
    h.update(binding);
    h.finalize()
}

/// The sender's proof.
pub(crate) fn client_proof(
    token: &str,
    server: &Nonce,
    client: &Nonce,
    binding: &[u8; 32],
) -> [u8; 32] {
    *proof(token, b"client", server, client, binding).as_bytes()
}

/// The appliance's proof.
pub(crate) fn server_proof(
    token: &str,
    server: &Nonce,
    client: &Nonce,
    binding: &[u8; 32],
) -> [u8; 32] {
    *proof(token, b"server", client, server, binding).as_bytes()
}

/// Constant-time comparison of a received proof with the expected one.
pub(crate) fn proofs_equal(expected: &[u8; 32], received: &[u8; 32]) -> bool {
    // blake3::Hash's equality is constant-time.
    blake3::Hash::from_bytes(*expected) == blake3::Hash::from_bytes(*received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_every_input() {
        let (s, c, b) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let p = client_proof("tok", &s, &c, &b);
        assert!(proofs_equal(&p, &client_proof("tok", &s, &c, &b)));
        assert!(!proofs_equal(&p, &client_proof("tok2", &s, &c, &b)));
        assert!(!proofs_equal(&p, &client_proof("tok", &c, &s, &b)));
        assert!(!proofs_equal(&p, &client_proof("tok", &s, &c, &[4u8; 32])));
        // A server proof can never be replayed as a client proof.
        assert!(!proofs_equal(&p, &server_proof("tok", &s, &c, &b)));
    }
}
