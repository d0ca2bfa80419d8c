//! One writer thread per open disk: verifies chunks, writes them at their
//! offsets, and commits them in groups — data durable first (fdatasync),
//! then recorded in the ledger, then acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::disk::buffers::{Buf, BufPool};
use crate::disk::{chunk_count, chunk_len, zero_hash, Disk, DiskDigester};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::ledger::{windows, DiskRecord, Ledger};
use crate::serve::metrics::Metrics;

/// A chunk's bytes as they came.
pub enum Payload {
    /// zstd-compressed, as the frame carried them.
    Packed(Bytes),
    /// Uncompressed, already copied out of the connection's buffer (which
    /// is then free for the next frame) into a buffer that O_DIRECT takes.
    Plain(Buf),
}

/// Work for a writer, in the order the sender sent it.
pub enum Work {
    Chunk {
        index: u64,
        hash: [u8; 32],
        payload: Payload,
    },
    Zero {
        index: u64,
    },
    Finish {
        digest: [u8; 32],
        unchanged: u64,
        zero_skipped: u64,
    },
    /// The session that opened the disk closes it: commit and stop, even
    /// while data streams of the sender still hold the queue.
    Close,
}

/// What a writer reports back to its session.
pub enum Event {
    /// Chunks durable and in the ledger; `new_bytes`: how many of their
    /// bytes were not committed before (the job's progress).
    Committed {
        disk: u32,
        indices: Vec<u64>,
        new_bytes: u64,
    },
    Finished {
        disk: u32,
        digest: [u8; 32],
    },
    Failed {
        disk: u32,
        error: anyhow::Error,
    },
    /// File mode: the writer of a tree stopped with this error.
    TreeFailed {
        tree: u32,
        error: anyhow::Error,
    },
}

/// Most chunks committed in one group.
const MAX_GROUP: usize = 64;

/// Most chunks whose checksum a writer keeps for its re-read (about 16 MiB;
/// a 2 TiB disk in 4 MiB chunks): memory stays bounded whatever the disk,
/// and chunks past it are compared by BLAKE3, as those it did not write.
const MAX_WRITTEN: usize = 1 << 19;

/// Most bytes committed in one group: acks come back while data keeps
/// coming, so that the sender's window, not one long fdatasync, paces a
/// long link.
const MAX_GROUP_BYTES: u64 = 64 << 20;

/// Longest a group collects before it is committed: acks keep coming on a
/// slow target, so the sender never mistakes it for a silent link.
const MAX_GROUP_TIME: std::time::Duration = std::time::Duration::from_secs(3);

pub struct Writer {
    pub disk_index: u32,
    /// A fast 128-bit checksum (xxh3) of each chunk this writer wrote,
    /// taken from the bytes whose BLAKE3 it verified: the re-read compares
    /// with it rather than hashing the chunk with BLAKE3 a second time.
    pub written: HashMap<u64, u128>,
    pub disk: Disk,
    pub record: DiskRecord,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<Metrics>,
    /// Buffers of the disk's chunks (the session fills them too).
    pub buffers: Arc<BufPool>,
}

impl Writer {
    /// Run until the work channel closes or a chunk fails. Committed work is
    /// reported as it becomes durable; a failure stops the writer and leaves
    /// everything committed so far in place.
    pub fn run(mut self, mut rx: mpsc::Receiver<Work>, events: mpsc::UnboundedSender<Event>) {
        let mut group: Vec<(u64, [u8; 32])> = Vec::new();
        let mut dec = match zstd::bulk::Decompressor::new() {
            Ok(d) => d,
            Err(e) => {
                let _ = events.send(Event::Failed {
                    disk: self.disk_index,
                    error: coded(ErrorCode::Internal, format!("zstd: {e}")),
                });
                return;
            }
        };
        while let Some(first) = rx.blocking_recv() {
            let collecting = Instant::now();
            let mut next = Some(first);
            let mut finish = None;
            let mut close = false;
            while let Some(work) = next.take() {
                match work {
                    Work::Close => {
                        close = true;
                        break;
                    }
                    Work::Finish {
                        digest,
                        unchanged,
                        zero_skipped,
                    } => {
                        self.metrics.chunk("unchanged", unchanged);
                        self.metrics.chunk("zero_skipped", zero_skipped);
                        finish = Some(digest);
                        break;
                    }
                    other => match self.apply(other, &mut dec) {
                        Ok(entry) => group.push(entry),
                        Err(error) => {
                            // Chunks before the bad one are sound: commit them.
                            let _ = self.commit(&mut group, &events);
                            let _ = events.send(Event::Failed {
                                disk: self.disk_index,
                                error,
                            });
                            return;
                        }
                    },
                }
                if group.len() >= MAX_GROUP
                    || group.len() as u64 * u64::from(self.record.chunk_size) >= MAX_GROUP_BYTES
                    || collecting.elapsed() >= MAX_GROUP_TIME
                {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if let Err(error) = self.commit(&mut group, &events) {
                let _ = events.send(Event::Failed {
                    disk: self.disk_index,
                    error,
                });
                return;
            }
            if close {
                return;
            }
            if let Some(digest) = finish {
                match self.verify(digest) {
                    Ok(d) => {
                        let _ = events.send(Event::Finished {
                            disk: self.disk_index,
                            digest: d,
                        });
                    }
                    Err(error) => {
                        let _ = events.send(Event::Failed {
                            disk: self.disk_index,
                            error,
                        });
                        return;
                    }
                }
            }
        }
        let _ = self.commit(&mut group, &events);
    }

    fn apply(
        &mut self,
        work: Work,
        dec: &mut zstd::bulk::Decompressor<'_>,
    ) -> Result<(u64, [u8; 32])> {
        let started = Instant::now();
        let (size, cs) = (self.record.size, self.record.chunk_size);
        let entry = match work {
            Work::Chunk {
                index,
                hash,
                payload,
            } => {
                let len = chunk_len(size, cs, index);
                let data = match payload {
                    Payload::Plain(buf) => buf,
                    Payload::Packed(packed) => {
                        let mut buf = self.buffers.get(0);
                        // Decompression is bounded by the chunk's own
                        // length: a payload that expands further is
                        // refused, not followed.
                        let n = dec
                            .decompress_to_buffer(&packed, &mut buf.spare()[..len])
                            .map_err(|e| {
                                self.metrics.chunk("rejected", 1);
                                coded(
                                    ErrorCode::ChunkDecompress,
                                    format!("chunk {index} of disk {}: {e}", self.disk_index),
                                )
                            })?;
                        buf.set_len(n);
                        buf
                    }
                };
                if data.len() != len {
                    self.metrics.chunk("rejected", 1);
                    return Err(coded(
                        ErrorCode::ChunkOutOfRange,
                        format!(
                            "chunk {index} of disk {} holds {} bytes, expected {len}",
                            self.disk_index,
                            data.len()
                        ),
                    ));
                }
                if *blake3::hash(&data).as_bytes() != hash {
                    self.metrics.chunk("rejected", 1);
                    return Err(coded(
                        ErrorCode::ChunkHashMismatch,
                        format!("chunk {index} of disk {}", self.disk_index),
                    ));
                }
                let offset = index * u64::from(cs);
                self.disk.write_chunk(&data, offset).with_context(|| {
                    format!(
                        "writing chunk {index} of disk {} at offset {offset}",
                        self.disk_index
                    )
                })?;
                if self.written.len() < MAX_WRITTEN || self.written.contains_key(&index) {
                    self.written
                        .insert(index, xxhash_rust::xxh3::xxh3_128(&data));
                }
                self.metrics.written_bytes.inc_by(len as u64);
                self.metrics.chunk("written", 1);
                (index, hash)
            }
            Work::Zero { index } => {
                let len = chunk_len(size, cs, index);
                let offset = index * u64::from(cs);
                self.disk.zero_range(offset, len).with_context(|| {
                    format!(
                        "zeroing chunk {index} of disk {} at offset {offset}",
                        self.disk_index
                    )
                })?;
                self.written.remove(&index);
                self.metrics.chunk("zeroed", 1);
                (index, zero_hash(len))
            }
            Work::Finish { .. } | Work::Close => {
                unreachable!("Finish and Close are handled by the caller")
            }
        };
        self.metrics
            .chunk_write_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(entry)
    }

    /// Data durable, then ledger, then ack — in that order.
    fn commit(
        &self,
        group: &mut Vec<(u64, [u8; 32])>,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        self.disk.sync_data()?;
        let new = self
            .ledger
            .commit_chunks(self.disk_index, group)
            .code(ErrorCode::LedgerFailed)?;
        let (size, cs) = (self.record.size, self.record.chunk_size);
        let new_bytes = new.iter().map(|&i| chunk_len(size, cs, i) as u64).sum();
        let indices = group.drain(..).map(|(i, _)| i).collect();
        let _ = events.send(Event::Committed {
            disk: self.disk_index,
            indices,
            new_bytes,
        });
        Ok(())
    }

    /// Re-read the whole target, compare every chunk with the ledger and
    /// compute the disk digest, window by window (memory stays bounded
    /// whatever the disk's size). Chunks that do not match are forgotten so
    /// the next round sends them again.
    fn verify(&self, sender_digest: [u8; 32]) -> Result<[u8; 32]> {
        let rec = &self.record;
        let count = chunk_count(rec.size, rec.chunk_size);
        let mut digester = DiskDigester::new(rec.size, rec.chunk_size);
        let (mut missing, mut first_missing) = (0u64, None);
        let (mut bad, mut first_bad) = (0u64, None);
        for w in windows(count) {
            let known = self
                .ledger
                .chunk_window(self.disk_index, w.clone())
                .code(ErrorCode::LedgerFailed)?;
            // Each chunk's hash as re-read: the ledger's when the bytes are
            // those this writer verified and wrote (same checksum), zeros'
            // when they are zeros, else BLAKE3 of what the disk holds.
            let start = w.start;
            let actual = crate::disk::reread_chunks(
                &self.disk,
                rec.size,
                rec.chunk_size,
                w.clone(),
                &|i, data| {
                    let ledger = known[(i - start) as usize];
                    if let (Some(sum), Some(h)) = (self.written.get(&i), ledger) {
                        if xxhash_rust::xxh3::xxh3_128(data) == *sum {
                            return h;
                        }
                    }
                    if crate::disk::is_zero(data) {
                        return zero_hash(data.len());
                    }
                    *blake3::hash(data).as_bytes()
                },
            )
            .with_context(|| format!("re-reading disk {}", self.disk_index))?;
            let mut forget = Vec::new();
            for (i, (k, a)) in (w.start..).zip(known.iter().zip(&actual)) {
                digester.push(a);
                let expected = match (k, rec.fresh) {
                    (Some(h), _) => *h,
                    (None, true) => zero_hash(chunk_len(rec.size, rec.chunk_size, i)),
                    (None, false) => {
                        missing += 1;
                        first_missing.get_or_insert(i);
                        continue;
                    }
                };
                if *a != expected {
                    bad += 1;
                    first_bad.get_or_insert(i);
                    forget.push(i);
                }
            }
            if !forget.is_empty() {
                self.ledger
                    .forget_chunks(self.disk_index, &forget)
                    .code(ErrorCode::LedgerFailed)?;
            }
        }
        if let Some(first) = first_missing {
            return Err(coded(
                ErrorCode::DigestMismatch,
                format!(
                    "{missing} chunks of disk {} were never sent (first: {first})",
                    self.disk_index
                ),
            ));
        }
        if let Some(first) = first_bad {
            return Err(coded(
                ErrorCode::DigestMismatch,
                format!(
                    "{bad} chunks of disk {} differ from the ledger when re-read (first: {first})",
                    self.disk_index
                ),
            ));
        }
        let digest = digester.finish();
        if digest != sender_digest {
            // The target holds what the ledger says, but not what the sender
            // read: the disk is not verified, and the round does not end.
            return Err(coded(
                ErrorCode::DigestMismatch,
                format!(
                    "disk {}: the target's digest {} differs from the sender's {}",
                    self.disk_index,
                    &hex::encode(digest)[..16],
                    &hex::encode(sender_digest)[..16],
                ),
            ));
        }
        Ok(digest)
    }
}
