//! One attempt of block mode: its connections (a control connection per
//! disk, the data streams), the window of bytes in flight that its disks
//! share, the disks sent in parallel, and then the round's end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::client::{self, Conn};
use super::disk::{DiskJob, DiskSession};
use super::lanes::{Lanes, DEFAULT_WINDOW, PER_STREAM_WINDOW};
use super::{progress, ratelimit, round, streams, SendOptions};
use crate::job::errors::{coded, ErrorCode};
use crate::wire::{self, Frame};

/// The disks not yet done, each on its own control connection, over data
/// streams they share; then, unless --no-wait, the round followed to its end.
pub(crate) async fn attempt(
    args: &SendOptions,
    to: &str,
    fingerprint: &str,
    jobs: &mut [DiskJob],
    progress: &progress::Progress,
    limit: &Arc<ratelimit::RateLimit>,
) -> Result<()> {
    let mut first = client::connect(to, &args.token, fingerprint).await?;
    let pending = jobs.iter().filter(|j| !j.done).count();
    if pending > 0 {
        let n = match args.streams {
            Some(n) => n,
            None => streams::auto_streams(round_trip(&mut first).await?),
        };
        // A control connection per disk (the first is one), and the streams.
        let more = futures::future::try_join_all(
            (1..pending).map(|_| client::connect(to, &args.token, fingerprint)),
        );
        let pool = streams::Pool::connect(n, to, &args.token, fingerprint, Arc::clone(limit));
        let (more, pool) = futures::future::try_join(more, pool).await?;
        let window_bytes = args
            .window
            .unwrap_or(DEFAULT_WINDOW + pool.len() as u64 * PER_STREAM_WINDOW);
        let window = tokio::sync::Semaphore::new(window_bytes as usize);
        let lanes = Lanes {
            pool: &pool,
            window: &window,
            window_bytes,
            limit,
        };
        tracing::debug!(streams = pool.len(), window_bytes, "sending the disks");
        let mut conns: Vec<Conn> = std::iter::once(first).chain(more).collect();
        send_disks(args, jobs, &mut conns, progress, &lanes).await?;
        pool.close().await?;
        // Each disk's session ends; the first connection asks how the round ends.
        let mut rest = conns.split_off(1);
        for c in &mut rest {
            let _ = tokio::io::AsyncWriteExt::shutdown(c.get_mut()).await;
        }
        first = conns
            .pop()
            .ok_or_else(|| coded(ErrorCode::Internal, "no connection"))?;
    }
    if !args.no_wait {
        round::wait_for_round(&mut first, &|line| progress.println(line)).await?;
    }
    // close_notify, so the appliance sees a clean end rather than a cut.
    let _ = tokio::io::AsyncWriteExt::shutdown(first.get_mut()).await;
    Ok(())
}

/// The disks go in parallel, each on its own control connection; a disk
/// that fails does not stop the others (what they commit is kept).
async fn send_disks(
    args: &SendOptions,
    jobs: &mut [DiskJob],
    conns: &mut [Conn],
    progress: &progress::Progress,
    lanes: &Lanes<'_>,
) -> Result<()> {
    let results = futures::future::join_all(
        jobs.iter_mut()
            .filter(|j| !j.done)
            .zip(conns.iter_mut())
            .map(|(job, conn)| async move {
                let mut session = DiskSession {
                    args,
                    conn,
                    job,
                    progress,
                    lanes,
                };
                session.transfer().await.with_context(|| {
                    format!("disk {} ({})", session.job.index, session.job.report.source)
                })?;
                session.job.done = true;
                Ok::<(), anyhow::Error>(())
            }),
    )
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(())
}

/// The round trip to the appliance, measured with a Ping.
async fn round_trip(conn: &mut Conn) -> Result<Duration> {
    let start = Instant::now();
    client::send(conn, Frame::Ping).await?;
    match tokio::time::timeout(wire::LINK_TIMEOUT, client::recv_any(conn)).await {
        Ok(Ok(Frame::Pong)) => Ok(start.elapsed()),
        Ok(Ok(other)) => Err(crate::wire::unexpected("Pong", &other)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(client::silent()),
    }
}
