//! The sender's data streams: several authenticated TLS connections that
//! carry the chunks of every disk, so that a long link is full although
//! each TCP stream is capped by its window.
//!
//! Each disk keeps its own control connection (OpenDisk, manifest, acks,
//! Finish); its chunks go to whichever stream has the fewest bytes queued.
//! A stream attaches to a disk (Attach, with the key the appliance gave on
//! the disk's control connection) before its first chunk of that disk. The
//! bandwidth limit is taken here, per frame, for every stream together;
//! the in-flight window is the disks' (see `transfer`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{self, Conn};
use super::ratelimit::RateLimit;
use crate::job::errors::{coded, ErrorCode};
use crate::wire::{self, Frame};

/// Chunks queued for one stream beyond the one it writes.
const LANE_QUEUE: usize = 2;

/// The most data streams `--streams` takes.
pub(crate) const MAX_STREAMS: usize = 32;

/// How many data streams by default, from the round trip to the appliance:
/// a TCP stream moves about its window per round trip, so a longer link
/// needs more of them. One per 8 ms of round trip beyond two, at most 16.
pub(crate) fn auto_streams(rtt: Duration) -> usize {
    (2 + rtt.as_millis() as usize / 8).min(16)
}

/// One chunk for a stream.
pub struct Chunk {
    pub disk: u32,
    /// The disk's key for Attach.
    pub key: [u8; 32],
    pub index: u64,
    pub hash: [u8; 32],
    pub compressed: bool,
    pub payload: Bytes,
}

struct Lane {
    tx: mpsc::Sender<Chunk>,
    queued: Arc<AtomicU64>,
}

pub struct Pool {
    lanes: Vec<Lane>,
    failed: CancellationToken,
    error: Arc<Mutex<Option<anyhow::Error>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Pool {
    /// Connect `n` streams (authenticated like any connection).
    pub async fn connect(
        n: usize,
        to: &str,
        token: &str,
        fingerprint: &str,
        limit: Arc<RateLimit>,
    ) -> Result<Pool> {
        let conns = futures::future::try_join_all(
            (0..n.max(1)).map(|_| client::connect(to, token, fingerprint)),
        )
        .await?;
        let failed = CancellationToken::new();
        let error = Arc::new(Mutex::new(None));
        let mut lanes = Vec::new();
        let mut tasks = Vec::new();
        for (i, conn) in conns.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            let queued = Arc::new(AtomicU64::new(0));
            let (q, lim, failed2, error2) = (
                Arc::clone(&queued),
                Arc::clone(&limit),
                failed.clone(),
                Arc::clone(&error),
            );
            tasks.push(tokio::spawn(async move {
                if let Err(e) = lane(conn, rx, q, lim).await {
                    tracing::debug!(stream = i, "data stream failed: {e:#}");
                    let mut slot = error2.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    failed2.cancel();
                }
            }));
            lanes.push(Lane { tx, queued });
        }
        Ok(Pool {
            lanes,
            failed,
            error,
            tasks,
        })
    }

    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Queue a chunk on the stream with the fewest bytes queued; waits
    /// while every stream's queue is full.
    pub async fn send(&self, chunk: Chunk) -> Result<()> {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|l| l.queued.load(Ordering::Relaxed))
            .ok_or_else(|| coded(ErrorCode::Internal, "no data stream"))?;
        let bytes = chunk.payload.len() as u64;
        lane.queued.fetch_add(bytes, Ordering::Relaxed);
        tokio::select! {
            r = lane.tx.send(chunk) => r.map_err(|_| self.error()),
            _ = self.failed.cancelled() => Err(self.error()),
        }
    }

    /// Resolves when a stream failed; its error is [`Pool::error`].
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// The first stream's failure (a copy of its message and code).
    pub fn error(&self) -> anyhow::Error {
        let slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(e) => {
                let (code, detail) = crate::job::errors::describe(e);
                coded(code, format!("a data stream: {detail}"))
            }
            None => coded(ErrorCode::TransferInterrupted, "a data stream stopped"),
        }
    }

    /// Send what is queued, close every stream cleanly, and wait for them.
    pub async fn close(self) -> Result<()> {
        drop(self.lanes);
        for t in self.tasks {
            let _ = t.await;
        }
        let slot = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        match slot {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// One stream: attach, pace and send the chunks it is given; ping while it
/// has nothing to send, so that the appliance knows it is alive.
async fn lane(
    mut conn: Conn,
    mut rx: mpsc::Receiver<Chunk>,
    queued: Arc<AtomicU64>,
    limit: Arc<RateLimit>,
) -> Result<()> {
    let mut attached: HashSet<u32> = HashSet::new();
    let mut heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(heard + wire::HEARTBEAT, wire::HEARTBEAT);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            chunk = rx.recv() => {
                let Some(c) = chunk else { break };
                if attached.insert(c.disk) {
                    client::send(&mut conn, Frame::Attach { disk: c.disk, key: c.key }).await?;
                }
                let bytes = c.payload.len() as u64;
                // Wait for the limit with pings, so that a long wait is not
                // a silent link.
                let paced = limit.acquire(bytes);
                tokio::pin!(paced);
                loop {
                    tokio::select! {
                        _ = &mut paced => break,
                        _ = ping.tick() => client::send(&mut conn, Frame::Ping).await?,
                    }
                }
                send_chunk(&mut conn, &c).await?;
                queued.fetch_sub(bytes, Ordering::Relaxed);
            }
            _ = ping.tick() => client::send(&mut conn, Frame::Ping).await?,
            _ = tokio::time::sleep_until(heard + wire::LINK_TIMEOUT) => return Err(client::silent()),
            frame = client::recv_any(&mut conn) => match frame? {
                Frame::Pong => heard = tokio::time::Instant::now(),
                other => return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("a data stream got {}", other.name()),
                )),
            },
        }
    }
    // close_notify, so the appliance sees a clean end rather than a cut.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.get_mut().shutdown()).await;
    Ok(())
}

/// Send a Chunk frame with its payload written from the chunk's own buffer
/// (the frame codec would copy it into its write buffer first).
async fn send_chunk(conn: &mut Conn, c: &Chunk) -> Result<()> {
    let head = wire::frame::chunk_head(c.disk, c.index, &c.hash, c.compressed, c.payload.len());
    let bound = wire::LINK_TIMEOUT + Duration::from_secs(c.payload.len() as u64 / (64 << 10));
    let write = async {
        // Frames the codec holds (an Attach, a Ping) go first.
        SinkExt::<Frame>::flush(conn)
            .await
            .map_err(std::io::Error::other)?;
        let io = conn.get_mut();
        io.write_all(&head).await?;
        io.write_all(&c.payload).await?;
        io.flush().await
    };
    match tokio::time::timeout(bound, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => Err(coded(
            ErrorCode::TransferInterrupted,
            format!(
                "sending chunk {} of disk {} to the appliance: nothing it was sent was acknowledged for {} s ({e}): the link is silent; reconnecting",
                c.index,
                c.disk,
                wire::LINK_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => Err(coded(
            ErrorCode::TransferInterrupted,
            format!("sending chunk {} of disk {} to the appliance: {e}", c.index, c.disk),
        )),
        Err(_) => Err(coded(
            ErrorCode::TransferInterrupted,
            format!(
                "chunk {} of disk {} could not be sent within {} s: the link is silent; reconnecting",
                c.index,
                c.disk,
                bound.as_secs()
            ),
        )),
    }
}
