//! Block mode's frames: a disk opened, its manifest, its chunks (whole, as
//! zeros, or as a head whose payload the reader takes itself), their acks,
//! its end and verification, the names the source knew it by, and the key
//! with which other streams attach to it.

use bytes::{BufMut, Bytes, BytesMut};

use super::body::{put_text, Reader};
use super::{ty, Frame, ManifestEntry, WireError, HEADER, MAX_DISK_NAMES};
use crate::wire::{CHUNK_HEADER_LEN, MANIFEST_PAGE, MAX_ACK_ENTRIES};

pub(super) fn encode(frame: &Frame, dst: &mut BytesMut) {
    match frame {
        Frame::OpenDisk {
            disk,
            size,
            chunk_size,
        } => {
            dst.put_u32(*disk);
            dst.put_u64(*size);
            dst.put_u32(*chunk_size);
        }
        Frame::Manifest {
            disk,
            first,
            end,
            fresh,
            last,
            entries,
        } => {
            dst.put_u32(*disk);
            dst.put_u64(*first);
            dst.put_u64(*end);
            dst.put_u8(u8::from(*fresh) | (u8::from(*last) << 1));
            dst.put_u32(entries.len() as u32);
            for (index, hash) in entries {
                dst.put_u64(*index);
                dst.put_slice(hash);
            }
        }
        Frame::Chunk {
            disk,
            index,
            hash,
            compressed,
            payload,
        } => {
            put_chunk_fields(dst, *disk, *index, hash, *compressed);
            dst.put_slice(payload);
        }
        // A head is only ever decoded; its frame was a Chunk, written here
        // without the payload that its reader took.
        Frame::ChunkHead {
            disk, index, hash, ..
        } => put_chunk_fields(dst, *disk, *index, hash, false),
        Frame::Zero { disk, index } => {
            dst.put_u32(*disk);
            dst.put_u64(*index);
        }
        Frame::Ack { disk, indices } => {
            dst.put_u32(*disk);
            dst.put_u32(indices.len() as u32);
            for i in indices {
                dst.put_u64(*i);
            }
        }
        Frame::Finish {
            disk,
            digest,
            unchanged,
            zero_skipped,
        } => {
            dst.put_u32(*disk);
            dst.put_slice(digest);
            dst.put_u64(*unchanged);
            dst.put_u64(*zero_skipped);
        }
        Frame::DiskVerified { disk, digest } => {
            dst.put_u32(*disk);
            dst.put_slice(digest);
        }
        Frame::DiskNames { disk, names } => {
            dst.put_u32(*disk);
            let names = &names[..names.len().min(MAX_DISK_NAMES)];
            dst.put_u8(names.len() as u8);
            for n in names {
                put_text(dst, n);
            }
        }
        Frame::StreamKey { disk, key } | Frame::Attach { disk, key } => {
            dst.put_u32(*disk);
            dst.put_slice(key);
        }
        // Invariant: the frame's type byte chose this family.
        other => unreachable!("{} is not a disk frame", other.name()),
    }
}

fn put_chunk_fields(dst: &mut BytesMut, disk: u32, index: u64, hash: &[u8; 32], compressed: bool) {
    dst.put_u32(disk);
    dst.put_u64(index);
    dst.put_slice(hash);
    dst.put_u8(u8::from(compressed));
}

pub(super) fn parse(ty: u8, r: &mut Reader) -> Result<Frame, WireError> {
    Ok(match ty {
        ty::OPEN_DISK => Frame::OpenDisk {
            disk: r.u32()?,
            size: r.u64()?,
            chunk_size: r.u32()?,
        },
        ty::MANIFEST => parse_manifest(r)?,
        ty::CHUNK => Frame::Chunk {
            disk: r.u32()?,
            index: r.u64()?,
            hash: r.bytes32()?,
            compressed: r.flag("unknown encoding")?,
            // The rest of the frame is the payload, without a copy.
            payload: r.rest(),
        },
        ty::ZERO => Frame::Zero {
            disk: r.u32()?,
            index: r.u64()?,
        },
        ty::ACK => {
            let disk = r.u32()?;
            let count = r.u32()? as usize;
            if count > MAX_ACK_ENTRIES || count.saturating_mul(8) > r.remaining() {
                return Err(r.malformed("entry count exceeds the frame"));
            }
            let mut indices = Vec::with_capacity(count);
            for _ in 0..count {
                indices.push(r.u64()?);
            }
            Frame::Ack { disk, indices }
        }
        ty::FINISH => Frame::Finish {
            disk: r.u32()?,
            digest: r.bytes32()?,
            unchanged: r.u64()?,
            zero_skipped: r.u64()?,
        },
        ty::DISK_VERIFIED => Frame::DiskVerified {
            disk: r.u32()?,
            digest: r.bytes32()?,
        },
        ty::DISK_NAMES => {
            let disk = r.u32()?;
            let count = r.u8()? as usize;
            if count > MAX_DISK_NAMES {
                return Err(r.malformed("too many names"));
            }
            let mut names = Vec::with_capacity(count);
            for _ in 0..count {
                names.push(r.text()?);
            }
            Frame::DiskNames { disk, names }
        }
        ty::STREAM_KEY => Frame::StreamKey {
            disk: r.u32()?,
            key: r.bytes32()?,
        },
        ty::ATTACH => Frame::Attach {
            disk: r.u32()?,
            key: r.bytes32()?,
        },
        other => return Err(WireError::UnknownType(other)),
    })
}

/// A manifest page: its entries ascend within `first..end`, and their
/// count is bounded by the page and by the bytes that hold them.
fn parse_manifest(r: &mut Reader) -> Result<Frame, WireError> {
    let disk = r.u32()?;
    let first = r.u64()?;
    let end = r.u64()?;
    let flags = r.u8()?;
    let count = r.u32()? as usize;
    if count > MANIFEST_PAGE || count.saturating_mul(40) > r.remaining() {
        return Err(r.malformed("entry count exceeds the page"));
    }
    if end < first {
        return Err(r.malformed("the range ends before it starts"));
    }
    let mut entries: Vec<ManifestEntry> = Vec::with_capacity(count);
    for _ in 0..count {
        let index = r.u64()?;
        let in_order = entries
            .last()
            .map_or(index >= first, |&(prev, _)| index > prev);
        if !in_order || index >= end {
            return Err(r.malformed("entries out of order or out of the range"));
        }
        entries.push((index, r.bytes32()?));
    }
    Ok(Frame::Manifest {
        disk,
        first,
        end,
        fresh: flags & 1 != 0,
        last: flags & 2 != 0,
        entries,
    })
}

/// The head of an uncompressed Chunk frame of `len` bytes whose payload
/// has not all arrived: `head` holds its fields before the payload.
pub(super) fn parse_chunk_head(head: Bytes, len: usize) -> Result<Frame, WireError> {
    let mut r = Reader::new("Chunk", head);
    Ok(Frame::ChunkHead {
        disk: r.u32()?,
        index: r.u64()?,
        hash: r.bytes32()?,
        len: len - CHUNK_HEADER_LEN,
    })
}

/// The bytes of a Chunk frame before its payload, for a writer that sends
/// the payload from its own buffer rather than copying it into a frame's.
pub fn chunk_head(
    disk: u32,
    index: u64,
    hash: &[u8; 32],
    compressed: bool,
    payload_len: usize,
) -> [u8; HEADER + CHUNK_HEADER_LEN] {
    let mut head = [0u8; HEADER + CHUNK_HEADER_LEN];
    let len = (CHUNK_HEADER_LEN + payload_len) as u32;
    head[0] = ty::CHUNK;
    head[1..5].copy_from_slice(&len.to_be_bytes());
    head[5..9].copy_from_slice(&disk.to_be_bytes());
    head[9..17].copy_from_slice(&index.to_be_bytes());
    head[17..49].copy_from_slice(hash);
    head[49] = u8::from(compressed);
    head
}
