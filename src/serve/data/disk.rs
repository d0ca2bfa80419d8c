//! Block mode in a session: a disk opened (its target, its manifest, its
//! writer thread), its chunks routed to that writer or to the writer of
//! the session that opened it (a data stream attached by key), and the
//! checks a chunk passes before its payload is read or copied.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::{send_within, Conn};
use super::manifest::{self, DiskManifest};
use super::open::OpenDisk;
use super::session::Session;
use super::target::open_target;
use crate::disk::buffers::{Buf, BufPool};
use crate::disk::{chunk_count, Disk};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::ledger::DiskRecord;
use crate::serve::claims::Claim;
use crate::serve::streams::Attached;
use crate::serve::writer::{Event, Payload, Work, Writer};
use crate::wire::{self, Frame};

/// Chunks queued for one disk's writer beyond the one it is writing.
const WRITER_QUEUE: usize = 4;

impl Session {
    /// Admit the sender, claim the disk, open its target, send the
    /// manifest of its committed chunks, and start its writer.
    pub(crate) async fn open_disk(
        &mut self,
        conn: &mut Conn,
        disk: u32,
        size: u64,
        chunk_size: u32,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        if !wire::valid_chunk_size(chunk_size) {
            return Err(coded(
                ErrorCode::BadChunkSize,
                format!("{chunk_size} bytes"),
            ));
        }
        if self.disks.contains_key(&disk) {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                format!("disk {disk} is already open"),
            ));
        }
        self.admit().await?;
        let guard = self.app.claims.claim(disk, &self.link).await?;
        let app = Arc::clone(&self.app);
        let (target, record) = tokio::task::spawn_blocking(move || {
            let (mut target, record) = open_target(&app, disk, size, chunk_size)?;
            target.use_direct_io();
            Ok::<_, anyhow::Error>((target, record))
        })
        .await
        .context("opening the target disk")??;
        let count = chunk_count(size, chunk_size);
        let codec_max = conn.codec().max().max(wire::postauth_max_frame(chunk_size));
        conn.codec_mut().set_max(codec_max);
        let ledger = Arc::clone(&self.app.ledger);
        let rec = record.clone();
        let committed_bytes =
            tokio::task::spawn_blocking(move || ledger.committed_bytes(disk, &rec))
                .await
                .context("reading the ledger")?
                .code(ErrorCode::LedgerFailed)?;
        {
            let job = Arc::clone(&self.app.job);
            tokio::task::spawn_blocking(move || job.syncing(&[(disk, size, committed_bytes)]))
                .await
                .context("recording the disk in the job")??;
        }
        tracing::info!(disk, size, chunk_size, committed_bytes, target = %record.target, "disk opened");
        let pages = DiskManifest::new(disk, count, record.fresh);
        manifest::send(conn, &self.app.ledger, pages).await?;
        let key = self.start_writer(disk, target, record, committed_bytes, guard, events)?;
        send_within(conn, Frame::StreamKey { disk, key })
            .await
            .context("sending the stream key")?;
        self.tell_bandwidth(conn).await
    }

    /// Start the writer of an opened disk on its own thread and open the
    /// disk to the sender's data streams; the key they attach with.
    fn start_writer(
        &mut self,
        disk: u32,
        target: Disk,
        record: DiskRecord,
        committed: u64,
        guard: Claim,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<[u8; 32]> {
        let (work_tx, work_rx) = mpsc::channel(WRITER_QUEUE);
        // Enough for the queue, the chunk being written, and one being
        // filled by each connection that feeds the writer.
        let buffers = BufPool::new(record.chunk_size as usize, 2 * WRITER_QUEUE + 4);
        let (published, key) = self.app.streams.publish(
            disk,
            Attached {
                work: work_tx.clone(),
                closed: CancellationToken::new(),
                link: Arc::clone(&self.link),
                // The record's size and chunk size are the sender's
                // (open_target refuses others).
                chunks: record.chunks(),
                chunk_size: record.chunk_size,
                buffers: Arc::clone(&buffers),
            },
        );
        let writer = Writer {
            disk_index: disk,
            written: HashMap::new(),
            disk: target,
            record: record.clone(),
            ledger: Arc::clone(&self.app.ledger),
            metrics: Arc::clone(&self.app.metrics),
            buffers: Arc::clone(&buffers),
        };
        let events = events.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ferry-writer-{disk}"))
            .spawn(move || {
                // The disk stays claimed until its writer has stopped.
                let _guard: Claim = guard;
                writer.run(work_rx, events);
            })
            .context("starting a writer thread")?;
        self.disks.insert(
            disk,
            OpenDisk {
                record,
                committed,
                work: work_tx,
                thread,
                buffers,
                _published: published,
            },
        );
        Ok(key)
    }

    /// A chunk whose payload came with its frame.
    pub(crate) async fn chunk(
        &mut self,
        disk: u32,
        index: u64,
        hash: [u8; 32],
        compressed: bool,
        payload: bytes::Bytes,
    ) -> Result<()> {
        self.app.metrics.received_bytes.inc_by(payload.len() as u64);
        let work = Work::Chunk {
            index,
            hash,
            payload: self.payload(disk, compressed, payload)?,
        };
        if let Some(a) = self.attached.get(&disk) {
            return attached_work(a, disk, index, work).await;
        }
        let d = self.disk(disk)?;
        check_index(disk, index, d.record.chunks(), d.record.chunk_size)?;
        d.work.send(work).await.map_err(|_| writer_gone(disk))
    }

    /// A chunk whose head came alone: checked before its payload is read.
    pub async fn chunk_head(
        &mut self,
        conn: &mut Conn,
        disk: u32,
        index: u64,
        hash: [u8; 32],
        len: usize,
    ) -> Result<()> {
        let attached = self.attached.get(&disk).cloned();
        if attached.is_none() {
            let d = self.disk(disk)?;
            check_index(disk, index, d.record.chunks(), d.record.chunk_size)?;
        }
        let buf = self.read_payload(conn, disk, len).await?;
        self.app.metrics.received_bytes.inc_by(len as u64);
        let work = Work::Chunk {
            index,
            hash,
            payload: Payload::Plain(buf),
        };
        match attached {
            Some(a) => attached_work(&a, disk, index, work).await,
            None => self
                .disk(disk)?
                .work
                .send(work)
                .await
                .map_err(|_| writer_gone(disk)),
        }
    }

    pub(crate) async fn zero(&mut self, disk: u32, index: u64) -> Result<()> {
        if let Some(a) = self.attached.get(&disk) {
            return attached_work(a, disk, index, Work::Zero { index }).await;
        }
        let d = self.disk(disk)?;
        check_index(disk, index, d.record.chunks(), d.record.chunk_size)?;
        d.work
            .send(Work::Zero { index })
            .await
            .map_err(|_| writer_gone(disk))
    }

    /// The sender's digest of the disk, to its writer (only the session
    /// that opened the disk finishes it).
    pub(crate) async fn finish(&mut self, disk: u32, finish: Work) -> Result<()> {
        let d = self.disk(disk)?;
        d.work.send(finish).await.map_err(|_| writer_gone(disk))
    }

    /// A chunk's payload for its writer. An uncompressed one is copied out
    /// of the connection's read buffer now, so that the buffer is free
    /// again for the next frame rather than a fresh allocation (fresh
    /// pages) for every chunk, into a pooled buffer O_DIRECT can write.
    fn payload(&self, disk: u32, compressed: bool, payload: bytes::Bytes) -> Result<Payload> {
        if compressed {
            return Ok(Payload::Packed(payload));
        }
        let pool = self.buffers(disk)?;
        check_len(disk, payload.len(), pool.size())?;
        let mut buf = pool.get(payload.len());
        buf.copy_from_slice(&payload);
        Ok(Payload::Plain(buf))
    }

    /// The payload of a chunk whose head came alone: what the codec has
    /// of it already, then the rest straight from the connection into a
    /// buffer of the disk's writer (one copy less than through the codec's
    /// buffer). Bounded like a frame's write: a payload that stops coming
    /// is a silent link.
    async fn read_payload(&self, conn: &mut Conn, disk: u32, len: usize) -> Result<Buf> {
        use tokio::io::AsyncReadExt;
        let pool = self.buffers(disk)?;
        check_len(disk, len, pool.size())?;
        let mut buf = pool.get(len);
        let have = conn.read_buffer().len().min(len);
        buf[..have].copy_from_slice(&conn.read_buffer()[..have]);
        bytes::Buf::advance(conn.read_buffer_mut(), have);
        match tokio::time::timeout(
            wire::LINK_TIMEOUT,
            conn.get_mut().read_exact(&mut buf[have..]),
        )
        .await
        {
            Ok(Ok(_)) => Ok(buf),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(coded(
                ErrorCode::FrameMalformed,
                format!("connection cut in the middle of a chunk of disk {disk}"),
            )),
            Ok(Err(e)) => Err(coded(
                ErrorCode::TransferInterrupted,
                format!("reading a chunk of disk {disk}: {e}"),
            )),
            Err(_) => Err(coded(
                ErrorCode::TransferInterrupted,
                format!(
                    "a chunk of disk {disk} did not arrive within {} s: the link is silent",
                    wire::LINK_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// The chunk buffers of `disk`'s writer, opened here or attached to.
    fn buffers(&self, disk: u32) -> Result<&Arc<BufPool>> {
        match (self.disks.get(&disk), self.attached.get(&disk)) {
            (Some(d), _) => Ok(&d.buffers),
            (None, Some(a)) => Ok(&a.buffers),
            (None, None) => Err(self.disk(disk).err().unwrap_or_else(|| writer_gone(disk))),
        }
    }

    /// This connection is a data stream of the sender that opened `disk`
    /// in another session: its chunks go to that session's writer.
    pub(crate) fn attach(&mut self, conn: &mut Conn, disk: u32, key: &[u8; 32]) -> Result<()> {
        if self.disks.contains_key(&disk) || self.attached.contains_key(&disk) {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                format!("Attach to disk {disk}, which this connection already carries"),
            ));
        }
        let a = self.app.streams.attach(disk, key).ok_or_else(|| {
            coded(
                ErrorCode::TransferInterrupted,
                format!("a data stream asked for disk {disk}, which no session of the job has open with that key (its session ended)"),
            )
        })?;
        let codec_max = conn
            .codec()
            .max()
            .max(wire::postauth_max_frame(a.chunk_size));
        conn.codec_mut().set_max(codec_max);
        self.attached.insert(disk, a);
        Ok(())
    }

    /// Keep the names the source knew a disk by, for the repair.
    pub(crate) async fn disk_names(&mut self, disk: u32, names: Vec<String>) -> Result<()> {
        // Only for a disk this sender opened (so admitted and configured).
        self.disk(disk)?;
        let app = Arc::clone(&self.app);
        tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec(&names).context("encoding disk names")?;
            app.ledger
                .put_meta(&crate::job::ledger::names_key(disk), &json)
                .with_context(|| format!("recording the source names of disk {disk}"))
        })
        .await
        .context("recording disk names")?
        .code(ErrorCode::LedgerFailed)
    }

    fn disk(&self, disk: u32) -> Result<&OpenDisk> {
        self.disks.get(&disk).ok_or_else(|| {
            coded(
                ErrorCode::UnexpectedFrame,
                format!("disk {disk} was not opened in this connection"),
            )
        })
    }

    /// Stop the disks' writers; each commits what it wrote first.
    pub(crate) async fn close_disks(&mut self) {
        for (disk, d) in self.disks.drain() {
            // The sender's data streams hold the queue too: the writer
            // stops when told, not when every handle is gone.
            drop(d._published);
            let _ = d.work.send(Work::Close).await;
            drop(d.work);
            let joined = tokio::task::spawn_blocking(move || d.thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(disk, "writer thread panicked");
            }
        }
    }
}

/// A chunk index within the disk's `chunks` (of `chunk_size` bytes).
fn check_index(disk: u32, index: u64, chunks: u64, chunk_size: u32) -> Result<()> {
    if index >= chunks {
        return Err(coded(
            ErrorCode::ChunkOutOfRange,
            format!(
                "chunk {index} of disk {disk}, which has {chunks} chunks of {chunk_size} bytes"
            ),
        ));
    }
    Ok(())
}

/// A chunk's payload no longer than the disk's chunk size.
fn check_len(disk: u32, len: usize, chunk_size: usize) -> Result<()> {
    if len > chunk_size {
        return Err(coded(
            ErrorCode::ChunkOutOfRange,
            format!(
                "a chunk of disk {disk} holds {len} bytes, more than its chunk size {chunk_size}"
            ),
        ));
    }
    Ok(())
}

/// Chunks of a disk another session of the sender opened.
async fn attached_work(a: &Attached, disk: u32, index: u64, work: Work) -> Result<()> {
    check_index(disk, index, a.chunks, a.chunk_size)?;
    a.link.heard();
    tokio::select! {
        r = a.work.send(work) => r.map_err(|_| closed_by_owner(disk)),
        _ = a.closed.cancelled() => Err(closed_by_owner(disk)),
    }
}

fn closed_by_owner(disk: u32) -> anyhow::Error {
    coded(
        ErrorCode::TransferInterrupted,
        format!("disk {disk} was closed by the session that opened it"),
    )
}

fn writer_gone(disk: u32) -> anyhow::Error {
    coded(
        ErrorCode::Internal,
        format!("the writer of disk {disk} has stopped"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::errors::describe;

    #[test]
    fn a_chunk_index_past_the_disk_is_out_of_range() {
        assert!(check_index(0, 9, 10, 4096).is_ok());
        let cases = [
            (
                10,
                10,
                "chunk 10 of disk 3, which has 10 chunks of 4096 bytes",
            ),
            (
                u64::MAX,
                10,
                "chunk 18446744073709551615 of disk 3, which has 10 chunks of 4096 bytes",
            ),
            (0, 0, "chunk 0 of disk 3, which has 0 chunks of 4096 bytes"),
        ];
        for (index, chunks, want) in cases {
            let err = check_index(3, index, chunks, 4096).unwrap_err();
            assert_eq!(
                describe(&err),
                (ErrorCode::ChunkOutOfRange, want.to_owned()),
                "{index} of {chunks}"
            );
        }
    }

    #[test]
    fn a_payload_longer_than_the_chunk_size_is_out_of_range() {
        assert!(check_len(1, 4096, 4096).is_ok());
        assert!(check_len(1, 0, 4096).is_ok());
        let err = check_len(1, 4097, 4096).unwrap_err();
        assert_eq!(
            describe(&err),
            (
                ErrorCode::ChunkOutOfRange,
                "a chunk of disk 1 holds 4097 bytes, more than its chunk size 4096".to_owned()
            )
        );
    }
}
