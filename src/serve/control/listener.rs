//! The control port's listener: HTTP/1.1 with a request timeout, an idle
//! timeout per connection that trickled bytes do not move, a body limit,
//! and a budget of connections in all and per address where the oldest
//! makes room for the newest.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time for a request to be answered.
    pub request_timeout: Duration,
    /// A connection is closed when the server has had nothing to answer
    /// for this long since it was opened or last answered: a deadline for
    /// the request's headers that bytes trickled in do not move.
    pub idle_timeout: Duration,
    /// Largest request body.
    pub body_limit: usize,
    /// Connections open at once, in all and from one address; past either,
    /// the oldest is closed for the newest, so held connections never keep
    /// a probe out.
    pub max_connections: usize,
    pub max_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            body_limit: 16 * 1024,
            max_connections: 256,
            max_per_address: 64,
        }
    }
}

/// The peer of a control connection, for the per-address limits.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CappedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, CappedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Serve `router` on `listener` over HTTP/1.1 with the limits: a request
/// timeout, an idle timeout per connection, and at most
/// `max_connections` connections at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let router = router
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::from_fn(super::error::json_errors));
    let listener = CappedListener {
        inner: listener,
        admission: crate::serve::admission::Admission::new(
            limits.max_connections,
            limits.max_per_address,
            prometheus::IntCounter::new(
                "ferry_control_connections_evicted_total",
                "Control connections closed to make room for newer ones",
            )
            .context("the eviction counter")?,
        ),
        idle_timeout: limits.idle_timeout,
    };
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving the control API")
}

/// A listener whose connections hold a place in the port's budget.
pub struct CappedListener {
    inner: TcpListener,
    admission: Arc<crate::serve::admission::Admission>,
    idle_timeout: Duration,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let ticket = self.admission.arrive(addr.ip());
                    return (
                        CappedStream {
                            inner: stream,
                            evicted: Box::pin(ticket.evicted_owned()),
                            _ticket: ticket,
                            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
                            idle_timeout: self.idle_timeout,
                        },
                        addr,
                    );
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("accepting a control connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its place back when closed, is closed when a
/// newer one needs the place, and is cut when the server has answered
/// nothing for `idle_timeout` (what the client trickles in does not count).
pub struct CappedStream {
    inner: TcpStream,
    _ticket: crate::serve::admission::Ticket,
    evicted: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "control connection closed to make room for a newer one",
            )));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(res) => Poll::Ready(res),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "control connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            // An answer went out: the next request has its own deadline.
            let deadline = tokio::time::Instant::now() + self.idle_timeout;
            self.idle.as_mut().reset(deadline);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
