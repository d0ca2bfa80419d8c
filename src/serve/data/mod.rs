//! The data port (8703): one task per connection, TLS only, authenticated
//! before anything is read beyond the handshake or written anywhere.
//!
//! The rooms follow a connection's life: [`accept`] (TLS within the
//! pre-auth deadline, plaintext refused), [`auth`] (challenge and proof,
//! which yield the [`auth::Authenticated`] a session needs), [`session`]
//! and what it holds open ([`open`]), its frame loop ([`dispatch`]) over the
//! connection ([`conn`]), then by mode [`disk`] with its [`target`] (block mode)
//! or [`tree`] (file mode), both opened with a [`manifest`] of what the
//! ledger holds, and [`round`] (the end of the round the sender waits for).

pub(crate) mod accept;
pub(crate) mod auth;
pub(crate) mod conn;
pub(crate) mod disk;
pub(crate) mod dispatch;
pub(crate) mod manifest;
pub(crate) mod open;
pub(crate) mod round;
pub(crate) mod session;
pub(crate) mod target;
pub mod tree;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::Ticket;
use super::Appliance;
use crate::job::errors::{describe, ErrorCode, JobEffect};
use crate::wire::Frame;
use conn::Conn;
use session::Session;

/// Accept connections until `shutdown`. Every connection is accepted; until
/// it is authenticated it holds a place in the port's unauthenticated
/// budget (see [`super::admission`]), and then one of `max_sessions`
/// authenticated places.
pub async fn serve(
    app: Arc<Appliance>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) {
    let sessions = Arc::new(Semaphore::new(app.config.max_sessions.max(1)));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a data connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ticket = app.data_admission.arrive(peer.ip());
        let (app, acceptor, shutdown) = (Arc::clone(&app), acceptor.clone(), shutdown.clone());
        let sessions = Arc::clone(&sessions);
        tracker.spawn(
            async move {
                // Counted down however the connection ends (a panic in it
                // included), so the gauge cannot stay up after a session.
                let _open = OpenGuard::new(&app.metrics.sessions_active);
                connection(&app, tcp, peer, acceptor, shutdown, ticket, sessions).await;
            }
            .instrument(tracing::info_span!("session", %peer)),
        );
    }
    tracker.close();
    tracker.wait().await;
}

/// One open data connection in the `ferry_sessions_active` gauge.
struct OpenGuard(prometheus::IntGauge);

impl OpenGuard {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        OpenGuard(gauge.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One connection from accept to close: TLS, authentication, the session,
/// and the end of the round when the sender waits for it.
async fn connection(
    app: &Arc<Appliance>,
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    ticket: Ticket,
    sessions: Arc<Semaphore>,
) {
    let Some(accepted) = accept::handshake(app, tcp, peer, &acceptor, &ticket).await else {
        return;
    };
    let mut conn = accepted.conn;
    let proven = auth::authenticate(
        app,
        &mut conn,
        peer,
        accepted.binding,
        ticket,
        accepted.deadline,
        &sessions,
    )
    .await;
    let authenticated = match proven {
        Ok(a) => a,
        Err(err) => {
            refuse(app, &mut conn, &err, false).await;
            accept::drain(conn.get_mut()).await;
            return;
        }
    };
    let mut session = Session::new(Arc::clone(app), authenticated);
    if let Err(err) = session.run(&mut conn, shutdown).await {
        refuse(app, &mut conn, &err, session.admitted).await;
        // Release the disks before lingering, so a sender that reconnects
        // at once finds them free.
        session.close().await;
        accept::drain(conn.get_mut()).await;
        return;
    }
    session.close().await;
    if session.admitted || session.end_round {
        // File mode ends the round only when the sender asks: a run with
        // --no-wait is a pass whose trees a later one completes.
        let files_done = session.files_done() && session.end_round;
        round::end_round(
            app,
            &mut conn,
            session.admitted,
            session.end_round,
            files_done,
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.get_mut().shutdown()).await;
}

/// Close a connection with the error that ended it: counted, put on the
/// job when it `puts_job_in_error` for an admitted sender, logged, and told
/// to the sender before the write side is shut.
async fn refuse(app: &Arc<Appliance>, conn: &mut Conn, err: &anyhow::Error, admitted: bool) {
    let (code, detail) = describe(err);
    count_error(app, code);
    if admitted && puts_job_in_error(code) {
        let (job, detail) = (Arc::clone(&app.job), detail.clone());
        match tokio::task::spawn_blocking(move || job.fail(code, detail)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("recording the job's error: {e:#}"),
            Err(e) => tracing::warn!("recording the job's error: {e}"),
        }
    }
    tracing::warn!(code = %code, error = %format!("{err:#}"), "closing the connection");
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        conn.send(Frame::error(code, &detail)),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.get_mut().shutdown()).await;
}

/// Failures while writing, which need someone to act on the appliance: the
/// job goes InError with the error until it is started again. Refusals
/// before anything is written (a target too small or missing, a disk not
/// configured) and sender-side problems (a cut connection, a bad frame)
/// leave the job as it is, so that the sender's next attempt succeeds once
/// the cause is fixed on either side.
fn puts_job_in_error(code: ErrorCode) -> bool {
    code.job_effect() == JobEffect::FailsJob
}

fn count_error(app: &Appliance, code: ErrorCode) {
    app.metrics
        .session_errors
        .with_label_values(&[code.as_str()])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_while_writing_put_the_job_in_error() {
        let cases = [
            ("target write failed", ErrorCode::TargetWriteFailed, true),
            ("ledger failed", ErrorCode::LedgerFailed, true),
            ("target too small", ErrorCode::TargetTooSmall, false),
            ("disk not configured", ErrorCode::DiskNotConfigured, false),
            ("cut connection", ErrorCode::TransferInterrupted, false),
            ("bad frame", ErrorCode::FrameMalformed, false),
            ("wrong token", ErrorCode::AuthFailed, false),
        ];
        for (name, code, fails) in cases {
            assert_eq!(puts_job_in_error(code), fails, "{name}: {code}");
        }
    }
}
