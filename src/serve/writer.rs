//! One writer thread per open disk: verifies chunks, writes them at their
//! offsets, and commits them in groups — data durable first (fdatasync),
//! then recorded in the ledger, then acknowledged.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::disk::{chunk_count, chunk_len, disk_digest, zero_hash, Disk};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::ledger::{DiskRecord, Ledger};
use crate::serve::metrics::Metrics;

/// Work for a writer, in the order the sender sent it.
pub enum Work {
    Chunk {
        index: u64,
        hash: [u8; 32],
        compressed: bool,
        payload: Bytes,
    },
    Zero {
        index: u64,
    },
    Finish {
        digest: [u8; 32],
        unchanged: u64,
        zero_skipped: u64,
    },
}

/// What a writer reports back to its session.
pub enum Event {
    Committed { disk: u32, indices: Vec<u64> },
    Finished { disk: u32, digest: [u8; 32] },
    Failed { disk: u32, error: anyhow::Error },
}

/// Most chunks committed in one group.
const MAX_GROUP: usize = 64;

pub struct Writer {
    pub disk_index: u32,
    pub disk: Disk,
    pub record: DiskRecord,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<Metrics>,
}

impl Writer {
    /// Run until the work channel closes or a chunk fails. Committed work is
    /// reported as it becomes durable; a failure stops the writer and leaves
    /// everything committed so far in place.
    pub fn run(self, mut rx: mpsc::Receiver<Work>, events: mpsc::UnboundedSender<Event>) {
        let mut group: Vec<(u64, [u8; 32])> = Vec::new();
        let mut buf = Vec::with_capacity(self.record.chunk_size as usize);
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            let mut finish = None;
            while let Some(work) = next.take() {
                match work {
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
                    other => match self.apply(other, &mut buf) {
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
                if group.len() >= MAX_GROUP {
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

    fn apply(&self, work: Work, buf: &mut Vec<u8>) -> Result<(u64, [u8; 32])> {
        let started = Instant::now();
        let (size, cs) = (self.record.size, self.record.chunk_size);
        let entry = match work {
            Work::Chunk {
                index,
                hash,
                compressed,
                payload,
            } => {
                let len = chunk_len(size, cs, index);
                let data: &[u8] = if compressed {
                    buf.clear();
                    // Decompression is bounded by the chunk's own length: a
                    // payload that expands further is refused, not followed.
                    let mut dec = zstd::bulk::Decompressor::new()
                        .map_err(|e| coded(ErrorCode::Internal, format!("zstd: {e}")))?;
                    dec.decompress_to_buffer(&payload, buf).map_err(|e| {
                        self.metrics.chunk("rejected", 1);
                        coded(
                            ErrorCode::ChunkDecompress,
                            format!("chunk {index} of disk {}: {e}", self.disk_index),
                        )
                    })?;
                    buf
                } else {
                    &payload
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
                if *blake3::hash(data).as_bytes() != hash {
                    self.metrics.chunk("rejected", 1);
                    return Err(coded(
                        ErrorCode::ChunkHashMismatch,
                        format!("chunk {index} of disk {}", self.disk_index),
                    ));
                }
                let offset = index * u64::from(cs);
                self.disk.write_at(data, offset).with_context(|| {
                    format!(
                        "writing chunk {index} of disk {} at offset {offset}",
                        self.disk_index
                    )
                })?;
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
                self.metrics.chunk("zeroed", 1);
                (index, zero_hash(len))
            }
            Work::Finish { .. } => unreachable!("Finish is handled by the caller"),
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
        self.ledger
            .commit_chunks(self.disk_index, group)
            .code(ErrorCode::LedgerFailed)?;
        let indices = group.drain(..).map(|(i, _)| i).collect();
        let _ = events.send(Event::Committed {
            disk: self.disk_index,
            indices,
        });
        Ok(())
    }

    /// Re-read the whole target, compare every chunk with the ledger and
    /// compute the disk digest. Chunks that do not match are forgotten so the
    /// next round sends them again.
    fn verify(&self, sender_digest: [u8; 32]) -> Result<[u8; 32]> {
        let rec = &self.record;
        let count = chunk_count(rec.size, rec.chunk_size);
        let ledger = self
            .ledger
            .chunk_hashes(self.disk_index, count)
            .code(ErrorCode::LedgerFailed)?;
        let mut expected = Vec::with_capacity(ledger.len());
        let mut missing = Vec::new();
        for (i, h) in ledger.iter().enumerate() {
            match (h, rec.fresh) {
                (Some(h), _) => expected.push(*h),
                (None, true) => {
                    expected.push(zero_hash(chunk_len(rec.size, rec.chunk_size, i as u64)))
                }
                (None, false) => {
                    missing.push(i as u64);
                    expected.push([0; 32]);
                }
            }
        }
        if !missing.is_empty() {
            return Err(coded(
                ErrorCode::DigestMismatch,
                format!(
                    "{} chunks of disk {} were never sent (first: {})",
                    missing.len(),
                    self.disk_index,
                    missing[0]
                ),
            ));
        }
        let actual = self.rehash(count)?;
        let bad: Vec<u64> = (0..count)
            .filter(|&i| actual[i as usize] != expected[i as usize])
            .collect();
        if !bad.is_empty() {
            self.ledger
                .forget_chunks(self.disk_index, &bad)
                .code(ErrorCode::LedgerFailed)?;
            return Err(coded(
                ErrorCode::DigestMismatch,
                format!(
                    "{} chunks of disk {} differ from the ledger when re-read (first: {})",
                    bad.len(),
                    self.disk_index,
                    bad[0]
                ),
            ));
        }
        let digest = disk_digest(rec.size, rec.chunk_size, &actual);
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

    /// Hash every chunk of the target, on two threads.
    fn rehash(&self, count: u64) -> Result<Vec<[u8; 32]>> {
        let rec = &self.record;
        debug_assert_eq!(count, chunk_count(rec.size, rec.chunk_size));
        crate::disk::hash_chunks(&self.disk, rec.size, rec.chunk_size)
            .with_context(|| format!("re-reading disk {}", self.disk_index))
    }
}
