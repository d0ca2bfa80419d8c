//! The reader thread of a pass: it reads a disk's chunks in order, hashes
//! them, compares each with what the appliance has committed, and decides
//! what to send: nothing, a Zero frame, or the data (zstd-compressed when
//! that saves space). It runs off the async runtime, ahead of the socket by
//! a small queue.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::consistency;
use crate::disk::{chunk_len, is_zero, zero_hash, Disk};
use crate::job::errors::{coded, ErrorCode};

/// What the reader thread decided for one chunk.
pub(crate) enum Item {
    Skip { len: usize, zero: bool },
    Zero { index: u64 },
    Data(DataChunk),
}

/// A chunk whose data is sent.
pub(crate) struct DataChunk {
    pub(crate) index: u64,
    pub(crate) len: usize,
    pub(crate) hash: [u8; 32],
    pub(crate) compressed: bool,
    pub(crate) payload: Bytes,
}

/// What one pass reads, and what it knows before reading.
pub(crate) struct Reader {
    pub(crate) disk: Arc<Disk>,
    /// The volumes' extents from their snapshots (--consistency snapshot).
    pub(crate) overlay: Option<Arc<consistency::snapshot::Overlay>>,
    pub(crate) chunk_size: u32,
    /// Hashes computed in earlier attempts of this run, by chunk.
    pub(crate) known: Vec<Option<[u8; 32]>>,
    /// What the appliance has committed, by chunk.
    pub(crate) manifest: HashMap<u64, [u8; 32]>,
    /// The target is known to read zeros wherever the manifest is silent.
    pub(crate) fresh: bool,
    pub(crate) zstd_level: i32,
}

impl Reader {
    /// Decide for every chunk, in order, what to send, until the queue is
    /// closed. Returns the hashes it knows, for the next attempt and the
    /// digest, and the bytes it read.
    pub(crate) fn run(self, tx: mpsc::Sender<Result<Item>>) -> (Vec<Option<[u8; 32]>>, u64) {
        let Reader {
            disk,
            overlay,
            chunk_size: cs,
            mut known,
            manifest,
            fresh,
            zstd_level: level,
        } = self;
        let size = disk.size();
        // Chunks travel in these buffers to the socket and come back.
        let pool = crate::disk::buffers::BufPool::new(cs as usize, 64);
        let mut read = 0u64;
        let mut compressor = if level > 0 {
            zstd::bulk::Compressor::new(level).ok()
        } else {
            None
        };
        for (i, index) in (0..known.len()).zip(0u64..) {
            let len = chunk_len(size, cs, index);
            let zero_h = zero_hash(len);
            let theirs = manifest
                .get(&index)
                .copied()
                .or(if fresh { Some(zero_h) } else { None });
            // Confirmed in an earlier attempt of this run: no need to read again.
            if let (Some(k), Some(t)) = (known[i], theirs) {
                if k == t {
                    let skip = Item::Skip {
                        len,
                        zero: k == zero_h,
                    };
                    if tx.blocking_send(Ok(skip)).is_err() {
                        return (known, read);
                    }
                    continue;
                }
            }
            let mut buf = pool.get(len);
            let at = index * u64::from(cs);
            let got = match &overlay {
                Some(o) => o.read_at(&disk, &mut buf, at),
                None => disk.read_at(&mut buf, at),
            };
            if let Err(e) = got {
                let _ = tx.blocking_send(Err(coded(ErrorCode::SourceReadFailed, format!("{e:#}"))));
                return (known, read);
            }
            read += len as u64;
            let zero = is_zero(&buf);
            let hash = if zero {
                zero_h
            } else {
                *blake3::hash(&buf).as_bytes()
            };
            known[i] = Some(hash);
            let item = if theirs == Some(hash) {
                Item::Skip { len, zero }
            } else if zero {
                Item::Zero { index }
            } else {
                Item::Data(pack(compressor.as_mut(), buf, index, hash))
            };
            if tx.blocking_send(Ok(item)).is_err() {
                return (known, read);
            }
        }
        (known, read)
    }
}

/// A chunk of data as it travels: compressed when that is worth it and
/// makes it smaller, otherwise the buffer itself.
fn pack(
    compressor: Option<&mut zstd::bulk::Compressor<'_>>,
    buf: crate::disk::buffers::Buf,
    index: u64,
    hash: [u8; 32],
) -> DataChunk {
    let len = buf.len();
    let packed = compressor
        .and_then(|c| {
            worth_compressing(c, &buf)
                .then(|| c.compress(&buf).ok())
                .flatten()
        })
        .filter(|p| p.len() < len);
    let (compressed, payload) = match packed {
        Some(p) => (true, Bytes::from(p)),
        // No copy: the buffer goes back to the pool once sent.
        None => (false, Bytes::from_owner(buf)),
    };
    DataChunk {
        index,
        len,
        hash,
        compressed,
        payload,
    }
}

/// Whether a chunk is worth compressing: zstd is tried on four samples
/// across it, and a chunk none of whose samples shrinks (random or already
/// compressed data) is sent as it is, without compressing it all for
/// nothing; one part that compresses (a stripe of text) is enough.
fn worth_compressing(compressor: &mut zstd::bulk::Compressor<'_>, data: &[u8]) -> bool {
    const SAMPLE: usize = 16 << 10;
    if data.len() < 8 * SAMPLE {
        return true;
    }
    (0..4).any(|k| {
        let at = k * (data.len() / 4);
        compressor
            .compress(&data[at..at + SAMPLE])
            .is_ok_and(|p| p.len() < SAMPLE - SAMPLE / 32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_compressed_when_a_part_of_it_shrinks() {
        use rand::RngCore;
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        let mut random = vec![0u8; 4 << 20];
        rand::thread_rng().fill_bytes(&mut random);
        assert!(!worth_compressing(&mut c, &random), "random data");
        let mut striped = random.clone();
        // A quarter of text after the random start, as a disk's stripes are.
        for (i, b) in striped[2 << 20..3 << 20].iter_mut().enumerate() {
            *b = b"a log line that compresses\n"[i % 27];
        }
        assert!(worth_compressing(&mut c, &striped), "a stripe of text");
        assert!(
            worth_compressing(&mut c, &random[..4096]),
            "a small chunk is always tried"
        );
    }
}
