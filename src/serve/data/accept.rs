//! A data connection's first seconds: the socket tuned, a plaintext client
//! refused in our own framing, the TLS handshake within the pre-auth
//! deadline, and the channel binding the proof is made over. Until it is
//! authenticated a connection may be evicted for newer ones (its
//! [`Ticket`]); a refused one is drained before it is closed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

use super::conn::{Conn, READ_BUFFER};
use super::count_error;
use crate::job::errors::ErrorCode;
use crate::serve::admission::Ticket;
use crate::serve::Appliance;
use crate::wire::{self, auth, Frame, FrameCodec};

/// Time from accept to authenticated: TLS, hello, challenge and proof, all
/// together (a sender needs milliseconds; a trickling client gets no more).
pub(crate) const PREAUTH_DEADLINE: Duration = Duration::from_secs(10);

/// A connection past its TLS handshake, not yet authenticated.
pub(crate) struct Accepted {
    pub(crate) conn: Conn,
    /// The TLS session's exported keying material, which the proof covers.
    pub(crate) binding: [u8; 32],
    /// When the pre-auth time, started at accept, runs out.
    pub(crate) deadline: tokio::time::Instant,
}

/// Tune the socket, refuse a plaintext client, and shake hands; None when
/// the connection is over (refused, evicted, timed out, failed).
pub(crate) async fn handshake(
    app: &Appliance,
    mut tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    ticket: &Ticket,
) -> Option<Accepted> {
    if let Err(e) = wire::tune_socket(&tcp) {
        tracing::debug!("setting the socket options of {peer}: {e}");
    }
    let deadline = tokio::time::Instant::now() + PREAUTH_DEADLINE;
    // A TLS connection starts with a handshake record (0x16). Anything else
    // is a plaintext client: tell it, in our own framing, and close.
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        _ = ticket.evicted() => return None,
        r = tokio::time::timeout_at(deadline, tcp.peek(&mut first)) => r,
    };
    match peeked {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            refuse_plaintext(app, &mut tcp).await;
            return None;
        }
        _ => return None,
    }
    let accepted = tokio::select! {
        _ = ticket.evicted() => return None,
        r = tokio::time::timeout_at(deadline, acceptor.accept(tokio::io::BufReader::with_capacity(READ_BUFFER, tcp))) => r,
    };
    let tls = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            count_error(app, ErrorCode::TlsHandshakeFailed);
            tracing::warn!(error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::warn!("TLS handshake timed out");
            return None;
        }
    };
    let mut binding = [0u8; 32];
    if tls
        .get_ref()
        .1
        .export_keying_material(&mut binding, auth::TLS_EXPORTER_LABEL, None)
        .is_err()
    {
        tracing::warn!("TLS exporter unavailable");
        return None;
    }
    Some(Accepted {
        conn: Framed::new(tls, FrameCodec::new(wire::PREAUTH_MAX_FRAME)),
        binding,
        deadline,
    })
}

async fn refuse_plaintext(app: &Appliance, tcp: &mut TcpStream) {
    count_error(app, ErrorCode::TlsRequired);
    tracing::warn!("refused a plaintext connection");
    let frame = wire::frame::encode(&Frame::error(
        ErrorCode::TlsRequired,
        "port 8703 speaks TLS only",
    ));
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&frame)).await;
    let _ = tcp.shutdown().await;
    drain(tcp).await;
}

/// After a refusal, read and discard what the peer still sends for a moment:
/// closing a socket with unread input resets the connection, and a reset can
/// destroy the refusal in the peer's receive queue before it reads it.
pub(crate) async fn drain<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut total = 0usize;
    while total < (64 << 20) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}
