//! A connection to the appliance: TLS with a pinned certificate, then the
//! challenge–response, then frames.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

use super::pin::Pin;
use crate::job::errors::{coded, CodedError, ErrorCode};
use crate::wire::{self, auth, Frame, FrameCodec};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

pub type Conn = Framed<TlsStream<TcpStream>, FrameCodec>;

/// Turn an Error frame from the appliance into a coded error.
pub(crate) fn remote_error(code: &str, message: &str) -> anyhow::Error {
    let parsed = ErrorCode::parse(code).unwrap_or(ErrorCode::Internal);
    let mut e = CodedError::new(parsed, "");
    e.message = if parsed.as_str() == code {
        message.to_owned()
    } else {
        format!("{code}: {message}")
    };
    anyhow::Error::new(e).context("the appliance refused")
}

/// Read the next frame other than a Pong; an Error frame becomes an error,
/// a closed connection an interruption.
pub async fn recv(conn: &mut Conn) -> Result<Frame> {
    loop {
        match recv_any(conn).await? {
            Frame::Pong => continue,
            f => return Ok(f),
        }
    }
}

/// Read the next frame, waiting as long as it takes (the caller watches the
/// link); a Pong is returned too.
pub(crate) async fn recv_any(conn: &mut Conn) -> Result<Frame> {
    match conn.next().await {
        Some(Ok(Frame::Error { code, message, .. })) => Err(remote_error(&code, &message)),
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(coded(e.code(), e.to_string())),
        None => Err(coded(
            ErrorCode::TransferInterrupted,
            "the appliance closed the connection",
        )),
    }
}

/// Read the next frame other than a Pong, pinging the appliance every
/// [`wire::HEARTBEAT`] while waiting; a link on which nothing arrives for
/// [`wire::LINK_TIMEOUT`] is silent: TRANSFER_INTERRUPTED, and the caller
/// reconnects.
pub(crate) async fn recv_live(conn: &mut Conn) -> Result<Frame> {
    let mut heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(heard + wire::HEARTBEAT, wire::HEARTBEAT);
    // After a long write, one ping, not a burst of the ticks it missed.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = recv_any(conn) => match frame? {
                Frame::Pong => heard = tokio::time::Instant::now(),
                f => return Ok(f),
            },
            _ = ping.tick() => send(conn, Frame::Ping).await?,
            _ = tokio::time::sleep_until(heard + wire::LINK_TIMEOUT) => return Err(silent()),
        }
    }
}

/// The error of a link on which nothing arrived for [`wire::LINK_TIMEOUT`].
pub fn silent() -> anyhow::Error {
    coded(
        ErrorCode::TransferInterrupted,
        format!(
            "nothing heard from the appliance for {} s: the link is silent (cut or frozen on the way); reconnecting",
            wire::LINK_TIMEOUT.as_secs()
        ),
    )
}

/// Send a frame. A write that cannot go out is bounded: the socket's
/// TCP_USER_TIMEOUT ends it after [`wire::LINK_TIMEOUT`] without progress,
/// and this bound (which allows a slow link 64 KiB/s) catches the rest.
pub async fn send(conn: &mut Conn, frame: Frame) -> Result<()> {
    let bound = wire::LINK_TIMEOUT + Duration::from_secs(frame_len(&frame) / (64 << 10));
    sent_within(bound, conn.send(frame)).await
}

/// Send frames with one flush at the end (one TLS record and one write for
/// many small frames), bounded as [`send`] is for their bytes together.
pub(crate) async fn send_all(conn: &mut Conn, frames: Vec<Frame>) -> Result<()> {
    let bytes: u64 = frames.iter().map(frame_len).sum();
    let bound = wire::LINK_TIMEOUT + Duration::from_secs(bytes / (64 << 10));
    let mut items = futures::stream::iter(frames.into_iter().map(Ok));
    sent_within(bound, conn.send_all(&mut items)).await
}

async fn sent_within(
    bound: Duration,
    sending: impl std::future::Future<Output = Result<(), wire::WireError>>,
) -> Result<()> {
    match tokio::time::timeout(bound, sending).await {
        Ok(Err(wire::WireError::Io(e))) if e.kind() == std::io::ErrorKind::TimedOut => Err(coded(
            ErrorCode::TransferInterrupted,
            format!(
                "sending to the appliance: nothing it was sent was acknowledged for {} s ({e}): the link is silent; reconnecting",
                wire::LINK_TIMEOUT.as_secs()
            ),
        )),
        Ok(r) => r.map_err(|e| {
            coded(
                ErrorCode::TransferInterrupted,
                format!("sending to the appliance: {e}"),
            )
        }),
        Err(_) => Err(coded(
            ErrorCode::TransferInterrupted,
            format!(
                "a frame could not be sent within {} s: the link is silent; reconnecting",
                bound.as_secs()
            ),
        )),
    }
}

fn frame_len(frame: &Frame) -> u64 {
    match frame {
        Frame::Chunk { payload, .. }
        | Frame::Probe { payload }
        | Frame::FileData { payload, .. } => payload.len() as u64,
        _ => 0,
    }
}

/// Connect, verify the pinned certificate, and authenticate with the token.
pub async fn connect(to: &str, token: &str, fingerprint: &str) -> Result<Conn> {
    let (mut conn, binding) = connect_tls(to, fingerprint).await?;
    authenticate(&mut conn, token, &binding).await?;
    Ok(conn)
}

/// Connect and verify the pinned certificate; returns the framed connection
/// (bounded as after authentication) and the session's binding for proofs.
pub async fn connect_tls(to: &str, fingerprint: &str) -> Result<(Conn, [u8; 32])> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(coded(
                ErrorCode::ConnectFailed,
                format!("{to}: {e}; {}", is_the_port_open(to)),
            ))
        }
        Err(_) => {
            return Err(coded(
                ErrorCode::ConnectFailed,
                format!("{to}: no answer within 15 s; {}", is_the_port_open(to)),
            ))
        }
    };
    if let Err(e) = wire::tune_socket(&tcp) {
        tracing::debug!("setting the socket options: {e}");
    }
    let provider = Arc::new(wire::tls::provider());
    let pin = Arc::new(Pin::new(fingerprint.to_owned(), Arc::clone(&provider)));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&pin) as Arc<_>)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("ferry").context("server name")?;
    let tls = match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let seen = pin.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(match seen {
                Some(seen) if seen != fingerprint => coded(
                    ErrorCode::TlsFingerprintMismatch,
                    format!("expected {fingerprint}, the appliance at {to} presented {seen}"),
                ),
                Some(_) => coded(
                    ErrorCode::ConnectFailed,
                    format!("TLS handshake with {to}: {e}"),
                ),
                None => match super::peer::wrong_service(to, &e).await {
                    Some(wrong) => wrong,
                    None => coded(
                        ErrorCode::ConnectFailed,
                        format!("TLS handshake with {to}: {e}"),
                    ),
                },
            });
        }
        Err(_) => {
            return Err(coded(
                ErrorCode::ConnectFailed,
                format!("TLS handshake with {to} timed out"),
            ))
        }
    };
    let mut binding = [0u8; 32];
    tls.get_ref()
        .1
        .export_keying_material(&mut binding, auth::TLS_EXPORTER_LABEL, None)
        .map_err(|e| coded(ErrorCode::Internal, format!("TLS exporter: {e}")))?;
    // The appliance's frames are bounded too: the largest is a manifest page.
    let conn = Framed::new(
        tls,
        FrameCodec::new(wire::postauth_max_frame(wire::MIN_CHUNK_SIZE)),
    );
    Ok((conn, binding))
}

/// The question a failed connection asks, with the data port this sender
/// used: the catalogue's hint cannot know it.
fn is_the_port_open(to: &str) -> String {
    let port = to
        .rsplit_once(':')
        .map_or(wire::DEFAULT_DATA_PORT.to_string(), |(_, p)| p.to_owned());
    format!(
        "is the appliance listening on port {port}, and is that port open to this server in its security group and firewall?"
    )
}

/// The challenge–response, both ways.
pub async fn authenticate(conn: &mut Conn, token: &str, binding: &[u8; 32]) -> Result<()> {
    let nonce = auth::new_nonce();
    send(
        conn,
        Frame::Hello {
            version: wire::PROTOCOL_VERSION,
            nonce,
        },
    )
    .await?;
    let server_nonce = match recv(conn).await? {
        Frame::Challenge { version, nonce: sn } => {
            if version != wire::PROTOCOL_VERSION {
                return Err(coded(
                    ErrorCode::ProtocolVersion,
                    format!(
                        "the appliance speaks version {version}, this sender {}",
                        wire::PROTOCOL_VERSION
                    ),
                ));
            }
            sn
        }
        other => return Err(wire::unexpected("Challenge", &other)),
    };
    let proof = auth::client_proof(token, &server_nonce, &nonce, binding);
    send(conn, Frame::Auth { proof }).await?;
    match recv(conn).await? {
        Frame::AuthOk { proof } => {
            let expected = auth::server_proof(token, &server_nonce, &nonce, binding);
            if !auth::proofs_equal(&expected, &proof) {
                return Err(coded(
                    ErrorCode::AuthFailed,
                    "the appliance could not prove it holds the job token",
                ));
            }
        }
        other => return Err(wire::unexpected("AuthOk", &other)),
    }
    Ok(())
}
