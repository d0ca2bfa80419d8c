//! One pass over a disk: every chunk read (on a thread of its own), what
//! the appliance lacks sent over the data streams within the shared window,
//! until the appliance has acknowledged all of it as committed. A frozen
//! pass must end before its deadline, and tells the consistency mode when
//! it has read all it sends, so that the file systems run again while the
//! data travels.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client::{self, Conn};
use super::consistency;
use super::disk::{Committed, DiskSession};
use super::reader::{DataChunk, Item, Reader};
use super::streams;
use crate::disk::{chunk_count, chunk_len};
use crate::job::errors::{coded, describe, ErrorCode};
use crate::wire::{self, Frame};

/// Most chunks of one disk sent and not yet acknowledged.
const MAX_IN_FLIGHT: usize = 4096;

/// A pass's chunks between the reader and the appliance's acks.
#[derive(Default)]
struct Flight {
    in_flight: HashSet<u64>,
    /// Raw bytes of each chunk in flight (0 for a Zero frame).
    lens: HashMap<u64, u64>,
    /// Permits of the shared window this disk holds.
    held: u64,
    /// Bytes of the disk settled: skipped as unchanged or zero, or committed.
    settled: u64,
    unchanged: u64,
    zero_skipped: u64,
    reader_done: bool,
    /// A data chunk waiting for room in the window.
    waiting: Option<DataChunk>,
}

impl DiskSession<'_> {
    /// One pass: returns the chunks left as they were and the zero chunks
    /// skipped.
    pub(crate) async fn send_pass(
        &mut self,
        committed: Committed,
        pass: &consistency::Pass,
        passes: &mut consistency::Passes,
        key: [u8; 32],
    ) -> Result<(u64, u64)> {
        let deadline = freeze_deadline(pass).await;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(self.past_deadline());
        }
        // Reading, hashing and compressing run on a thread of their own.
        let (tx, mut rx) = mpsc::channel::<Result<Item>>(4);
        let reader = self.reader(committed, pass);
        let reader = tokio::task::spawn_blocking(move || reader.run(tx));
        let mut flight = Flight::default();
        self.progress.set(self.job.index, 0);
        let result = self.fly(&mut flight, &mut rx, deadline, passes, key).await;
        // What this disk holds of the window goes back to the other disks.
        self.lanes.window.add_permits(flight.held as usize);
        drop(rx);
        let (known, read) = reader.await.context("joining the reader thread")?;
        self.job.known = known;
        self.job.report.read_bytes += read;
        result?;
        Ok((flight.unchanged, flight.zero_skipped))
    }

    /// What the reader thread of this pass reads, and what it knows.
    fn reader(&mut self, committed: Committed, pass: &consistency::Pass) -> Reader {
        let cs = self.args.chunk_size;
        let mut known = std::mem::take(&mut self.job.known);
        let count = chunk_count(self.job.disk.size(), cs);
        if known.len() as u64 != count {
            // An earlier attempt's reader was stopped before it gave them back.
            known = vec![None; count as usize];
        }
        let overlay = match pass {
            consistency::Pass::Snapshot { overlay, .. } => Some(Arc::clone(overlay)),
            _ => None,
        };
        Reader {
            disk: Arc::clone(&self.job.disk),
            overlay,
            chunk_size: cs,
            known,
            manifest: committed.manifest,
            fresh: committed.fresh,
            zstd_level: self.args.zstd_level,
        }
    }

    /// Send what the reader decides and take the acks until every chunk of
    /// the pass is settled.
    ///
    /// A silent link is noticed here: the sender pings while it has nothing
    /// to send, the appliance answers, and nothing heard for LINK_TIMEOUT
    /// ends the attempt (the next one reconnects and takes the disk over).
    async fn fly(
        &mut self,
        flight: &mut Flight,
        rx: &mut mpsc::Receiver<Result<Item>>,
        deadline: Option<Instant>,
        passes: &mut consistency::Passes,
        key: [u8; 32],
    ) -> Result<()> {
        let lanes = self.lanes;
        let mut heard = Instant::now();
        let mut ping = tokio::time::interval_at(heard + wire::HEARTBEAT, wire::HEARTBEAT);
        // After a long write, one ping, not a burst of the ticks it missed.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if flight.reader_done && flight.waiting.is_none() && flight.in_flight.is_empty() {
                return Ok(());
            }
            let can_read = !flight.reader_done
                && flight.waiting.is_none()
                && flight.in_flight.len() < MAX_IN_FLIGHT;
            let permits = flight
                .waiting
                .as_ref()
                .map_or(0, |w| lanes.permits(w.len as u64));
            tokio::select! {
                item = rx.recv(), if can_read => match item {
                    None => {
                        flight.reader_done = true;
                        if deadline.is_some() {
                            // The frozen pass has read all it sends: the file
                            // systems run again while it travels and commits.
                            tokio::task::block_in_place(|| passes.read_done())?;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    Some(Ok(item)) => self.take(flight, item).await?,
                },
                permit = lanes.window.acquire_many(permits), if flight.waiting.is_some() => {
                    permit.map_err(|_| coded(ErrorCode::Internal, "the window is closed"))?.forget();
                    flight.held += u64::from(permits);
                    self.send_waiting(flight, key).await?;
                }
                _ = lanes.pool.failed() => return Err(why_streams_failed(self.conn, lanes.pool.error()).await),
                _ = ping.tick() => client::send(self.conn, Frame::Ping).await?,
                _ = tokio::time::sleep_until(heard + wire::LINK_TIMEOUT) => return Err(client::silent()),
                _ = tokio::time::sleep_until(deadline.unwrap_or(heard)), if deadline.is_some() => return Err(self.past_deadline()),
                frame = client::recv_any(self.conn) => self.answer(flight, frame?, &mut heard)?,
            }
        }
    }

    /// What the reader decided for a chunk: count a skipped one, send a
    /// Zero frame, or hold the data until the window has room for it.
    async fn take(&mut self, flight: &mut Flight, item: Item) -> Result<()> {
        let job = &mut *self.job;
        match item {
            Item::Skip { len, zero } => {
                flight.settled += len as u64;
                self.progress.set(job.index, flight.settled);
                if zero {
                    flight.zero_skipped += 1;
                    job.report.zero_skipped_chunks += 1;
                    job.report.zero_skipped_bytes += len as u64;
                } else {
                    flight.unchanged += 1;
                    job.report.unchanged_chunks += 1;
                    job.report.unchanged_bytes += len as u64;
                }
            }
            Item::Zero { index } => {
                flight.in_flight.insert(index);
                flight.lens.insert(index, 0u64);
                job.report.zero_sent_chunks += 1;
                client::send(
                    self.conn,
                    Frame::Zero {
                        disk: job.index,
                        index,
                    },
                )
                .await?;
            }
            Item::Data(data) => flight.waiting = Some(data),
        }
        Ok(())
    }

    /// The waiting chunk has its room in the window: onto a data stream.
    async fn send_waiting(&mut self, flight: &mut Flight, key: [u8; 32]) -> Result<()> {
        let w = flight
            .waiting
            .take()
            .ok_or_else(|| coded(ErrorCode::Internal, "no chunk waits"))?;
        let job = &mut *self.job;
        flight.in_flight.insert(w.index);
        flight.lens.insert(w.index, w.len as u64);
        job.report.sent_chunks += 1;
        job.report.sent_bytes += w.len as u64;
        job.report.wire_bytes += w.payload.len() as u64;
        let sent = self
            .lanes
            .pool
            .send(streams::Chunk {
                disk: job.index,
                key,
                index: w.index,
                hash: w.hash,
                compressed: w.compressed,
                payload: w.payload,
            })
            .await;
        if let Err(e) = sent {
            return Err(why_streams_failed(self.conn, e).await);
        }
        Ok(())
    }

    /// A frame on the disk's control connection while the pass runs: a
    /// Pong or an Ack is the appliance heard; an Ack settles its chunks and
    /// gives their room in the window back.
    fn answer(&mut self, flight: &mut Flight, frame: Frame, heard: &mut Instant) -> Result<()> {
        let (size, cs) = (self.job.disk.size(), self.args.chunk_size);
        match frame {
            Frame::Pong => *heard = Instant::now(),
            Frame::Bandwidth { bytes_per_sec } => {
                self.lanes.bandwidth(bytes_per_sec, self.progress)
            }
            Frame::Ack { disk, indices } if disk == self.job.index => {
                *heard = Instant::now();
                for i in indices {
                    if flight.in_flight.remove(&i) {
                        let len = flight.lens.remove(&i).unwrap_or(0);
                        let p = u64::from(self.lanes.permits(len));
                        self.lanes.window.add_permits(p as usize);
                        flight.held -= p;
                        flight.settled += chunk_len(size, cs, i) as u64;
                    }
                }
                self.progress.set(self.job.index, flight.settled);
            }
            other => return Err(crate::wire::unexpected("Ack", &other)),
        }
        Ok(())
    }

    fn past_deadline(&self) -> anyhow::Error {
        coded(
            ErrorCode::FreezeTooLong,
            format!(
                "disk {}: the final pass did not end within --max-freeze ({} s)",
                self.job.index,
                self.args.consistency.max_freeze.as_secs_f64()
            ),
        )
    }
}

/// A frozen pass's deadline, after the hold it asks for before it reads
/// (none for a live or a snapshot pass).
async fn freeze_deadline(pass: &consistency::Pass) -> Option<Instant> {
    match pass {
        consistency::Pass::Frozen { deadline, hold, .. } => {
            let deadline = Instant::from_std(*deadline);
            if !hold.is_zero() {
                tokio::time::sleep_until(deadline.min(Instant::now() + *hold)).await;
            }
            Some(deadline)
        }
        consistency::Pass::Live { .. } | consistency::Pass::Snapshot { .. } => None,
    }
}

/// A data stream failed: when the appliance failed the disk (a full target,
/// a chunk that did not verify), it says why on the disk's control
/// connection, and that is the error, not the stream's symptom.
async fn why_streams_failed(conn: &mut Conn, stream_error: anyhow::Error) -> anyhow::Error {
    let told = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Err(e) = client::recv_any(conn).await {
                return e;
            }
        }
    })
    .await;
    match told {
        Ok(e) if describe(&e).0 != ErrorCode::TransferInterrupted => e,
        _ => stream_error,
    }
}
