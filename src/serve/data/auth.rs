//! Authentication on the data port: Hello, Challenge, Auth and AuthOk
//! within the pre-auth deadline, proofs bound to the TLS session, then a
//! place among the authenticated sessions. An [`Authenticated`] is made
//! only after the proof and owns that place: a session cannot exist
//! without it, and gives the place back when it ends.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::accept::PREAUTH_DEADLINE;
use super::conn::Conn;
use crate::job::errors::{coded, ErrorCode};
use crate::serve::admission::Ticket;
use crate::serve::Appliance;
use crate::wire::{self, auth, Frame};

/// A sender that proved it holds the job token, in one of the
/// `max_sessions` places.
pub(crate) struct Authenticated {
    _place: OwnedSemaphorePermit,
}

/// Authenticate the sender before `deadline`, unless `ticket` is evicted
/// first; the ticket's place in the unauthenticated budget is given back
/// either way, and a place among `sessions` taken after a proof.
pub(crate) async fn authenticate(
    app: &Appliance,
    conn: &mut Conn,
    peer: SocketAddr,
    binding: [u8; 32],
    ticket: Ticket,
    deadline: tokio::time::Instant,
    sessions: &Arc<Semaphore>,
) -> Result<Authenticated> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, prove(app, conn, peer, binding)) => {
            r.map_err(|_| coded(
                ErrorCode::AuthFailed,
                format!("not authenticated within {} s of connecting", PREAUTH_DEADLINE.as_secs()),
            ))??;
        }
        _ = ticket.evicted() => {
            return Err(coded(
                ErrorCode::TransferInterrupted,
                "closed to make room for newer connections: too many unauthenticated ones are open",
            ));
        }
    }
    drop(ticket);
    let place = Arc::clone(sessions).try_acquire_owned().map_err(|_| {
        coded(
            ErrorCode::SessionsFull,
            format!("{} senders are connected", app.config.max_sessions),
        )
    })?;
    Ok(Authenticated { _place: place })
}

/// The challenge and the proofs, both ways; on success the codec takes
/// the frames of an authenticated session.
async fn prove(
    app: &Appliance,
    conn: &mut Conn,
    peer: SocketAddr,
    binding: [u8; 32],
) -> Result<()> {
    let (version, client_nonce) = match next_frame(conn).await? {
        Frame::Hello { version, nonce } => (version, nonce),
        other => return Err(crate::wire::unexpected("Hello", &other)),
    };
    if version != wire::PROTOCOL_VERSION {
        return Err(coded(
            ErrorCode::ProtocolVersion,
            format!(
                "the sender speaks version {version}, the appliance {}",
                wire::PROTOCOL_VERSION
            ),
        ));
    }
    let server_nonce = auth::new_nonce();
    conn.send(Frame::Challenge {
        version: wire::PROTOCOL_VERSION,
        nonce: server_nonce,
    })
    .await
    .context("sending the challenge")?;
    let proof = match next_frame(conn).await? {
        Frame::Auth { proof } => proof,
        other => return Err(crate::wire::unexpected("Auth", &other)),
    };
    // The proof is checked first, in constant time: a correct one is
    // never refused because of anyone's failures (an attacker's from the
    // same address included); only failures are slowed down.
    let expected = auth::client_proof(&app.token, &server_nonce, &client_nonce, &binding);
    if !auth::proofs_equal(&expected, &proof) {
        app.metrics.auth_failures.inc();
        let delay = app.auth.fail(peer.ip());
        let limited = app.auth.blocked(peer.ip());
        tracing::warn!(
            delay_ms = delay.as_millis() as u64,
            limited,
            "authentication failed"
        );
        tokio::time::sleep(delay).await;
        return Err(if limited {
            coded(ErrorCode::AuthRateLimited, peer.ip().to_string())
        } else {
            coded(ErrorCode::AuthFailed, "")
        });
    }
    let mine = auth::server_proof(&app.token, &server_nonce, &client_nonce, &binding);
    conn.send(Frame::AuthOk { proof: mine })
        .await
        .context("sending the authentication result")?;
    // Authenticated: frames may now carry chunks; the bound still depends
    // on the chunk size the sender announces.
    conn.codec_mut()
        .set_max(wire::postauth_max_frame(wire::MIN_CHUNK_SIZE));
    conn.codec_mut().split_chunks(true);
    tracing::info!("sender authenticated");
    Ok(())
}

async fn next_frame(conn: &mut Conn) -> Result<Frame> {
    match conn.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(coded(e.code(), e.to_string())),
        None => Err(coded(
            ErrorCode::TransferInterrupted,
            "the sender closed the connection during authentication",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::errors::describe;

    #[test]
    fn another_frame_than_the_one_awaited_is_named() {
        let (code, detail) = describe(&crate::wire::unexpected("Auth", &Frame::Ping));
        assert_eq!(
            (code, detail.as_str()),
            (ErrorCode::UnexpectedFrame, "expected Auth, got Ping")
        );
    }
}
