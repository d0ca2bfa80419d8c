//! Frames and their codec.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::files::{self, Entry, Kind, Stamp, Time};
use crate::job::errors::ErrorCode;
use crate::job::state::Status;
use crate::job::step::Step;

/// Everything that can go wrong reading frames. Each maps to a stable code.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the bound of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        kind: &'static str,
        why: &'static str,
    },
    #[error("connection cut in the middle of a frame")]
    Truncated,
    #[error("i/o error on the connection: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::UnknownType(_) => ErrorCode::UnexpectedFrame,
            WireError::Malformed { .. } | WireError::Truncated => ErrorCode::FrameMalformed,
            WireError::Io(_) => ErrorCode::TransferInterrupted,
        }
    }
}

/// One entry of a disk manifest: what the appliance has committed for a chunk.
/// A committed chunk in a manifest page: its index and hash.
pub type ManifestEntry = (u64, [u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// sender → appliance: protocol version and the sender's nonce.
    Hello { version: u16, nonce: [u8; 32] },
    /// appliance → sender: its version and nonce.
    Challenge { version: u16, nonce: [u8; 32] },
    /// sender → appliance: proof of the token.
    Auth { proof: [u8; 32] },
    /// appliance → sender: accepted, with the appliance's own proof.
    AuthOk { proof: [u8; 32] },
    /// either way: a refusal or failure; the connection closes after it.
    Error {
        code: String,
        message: String,
        hint: String,
    },
    /// sender → appliance: this session will write disk `disk` of `size` bytes.
    OpenDisk {
        disk: u32,
        size: u64,
        chunk_size: u32,
    },
    /// appliance → sender: the committed chunks among `first..end`, in
    /// ascending order (a chunk of the range without an entry is not
    /// committed). Sparse, so a page costs what is committed, not what the
    /// disk's size is. `fresh`: the target was zero when the job began, so a
    /// chunk without an entry reads as zeros. `last`: no more pages follow
    /// (`end` is then the disk's chunk count).
    Manifest {
        disk: u32,
        first: u64,
        end: u64,
        fresh: bool,
        last: bool,
        entries: Vec<ManifestEntry>,
    },
    /// sender → appliance: one chunk; `hash` is BLAKE3 of the uncompressed bytes.
    Chunk {
        disk: u32,
        index: u64,
        hash: [u8; 32],
        compressed: bool,
        payload: Bytes,
    },
    /// sender → appliance: this chunk is all zeros.
    Zero { disk: u32, index: u64 },
    /// appliance → sender: these chunks are durable and in the ledger.
    Ack { disk: u32, indices: Vec<u64> },
    /// sender → appliance: every chunk is sent; the sender's whole-disk digest
    /// and what it skipped (for the appliance's metrics).
    Finish {
        disk: u32,
        digest: [u8; 32],
        unchanged: u64,
        zero_skipped: u64,
    },
    /// appliance → sender: the digest of the disk as re-read from the target.
    Finished { disk: u32, digest: [u8; 32] },
    /// sender → appliance: throughput probe payload, discarded after reading.
    Probe { payload: Bytes },
    /// appliance → sender: probe bytes received so far.
    ProbeAck { bytes: u64 },
    /// sender → appliance: the names the source system knew disk `disk` by
    /// (`/dev/sda`, its `/dev/disk/by-id/...` links), for the repair of
    /// device names in its fstab and boot configuration.
    DiskNames { disk: u32, names: Vec<String> },
    /// sender → appliance: every disk of this sender is verified; report how
    /// the round ends (the appliance processes the disks first when the
    /// job's last disk arrived).
    EndRound,
    /// appliance → sender: where the round is, with the job's status.
    RoundStatus { status: Status, event: RoundEvent },
    /// sender → appliance, when it has sent nothing for a while: the link
    /// is alive. The appliance answers at once with Pong.
    Ping,
    /// appliance → sender: the answer to Ping.
    Pong,
    /// appliance → sender, after the manifest of a disk: the key with which
    /// the sender's other connections of the job attach to the disk.
    StreamKey { disk: u32, key: [u8; 32] },
    /// sender → appliance, on a data stream (an authenticated connection
    /// that opens no disk): the Chunk frames of `disk` that follow on this
    /// connection go to the writer of the session that opened it.
    Attach { disk: u32, key: [u8; 32] },
    /// appliance → sender: the job's bandwidth limit in bytes per second,
    /// 0 for none; sent when a disk is opened and whenever it changes.
    Bandwidth { bytes_per_sec: u64 },
    /// sender → appliance: this session sends the entries of file system
    /// `tree` (file mode; 0 is the root file system).
    OpenTree { tree: u32 },
    /// appliance → sender: committed entries of the tree, in pages in the
    /// ledger's order; `last`: no more pages follow.
    TreeManifest {
        tree: u32,
        last: bool,
        entries: Vec<(Vec<u8>, Stamp)>,
    },
    /// sender → appliance: one entry; a regular file's content follows in
    /// FileData frames and a FileEnd.
    Entry { tree: u32, entry: Box<Entry> },
    /// sender → appliance: a piece of the current file's content at
    /// `offset` (pieces ascend; what lies between them is a hole).
    FileData {
        tree: u32,
        offset: u64,
        compressed: bool,
        payload: Bytes,
    },
    /// sender → appliance: the current file is complete; `hash` is its
    /// [`files::ContentHash`].
    FileEnd { tree: u32, hash: [u8; 32] },
    /// sender → appliance: this path is gone from the source (a directory
    /// goes with what it holds).
    Remove { tree: u32, path: Vec<u8> },
    /// sender → appliance: every entry of the tree is sent.
    CloseTree { tree: u32 },
    /// appliance → sender: the tree is durable and in the ledger: entries
    /// written, paths removed, content bytes written in this session.
    TreeClosed {
        tree: u32,
        entries: u64,
        removed: u64,
        bytes: u64,
    },
    /// sender → appliance, before the first OpenTree of a file-mode
    /// session: the source's layout and the trees that will be sent
    /// (the layout's `SourcePlan` as JSON, at most [`MAX_SOURCE_LAYOUT`]
    /// bytes).
    SourceLayout { json: Bytes },
    /// appliance → sender: the targets are laid out and mounted (`built`),
    /// or the job keeps the trees in its state directory (a job that only
    /// replicates); `detail` says which, for the sender's output.
    TargetsReady { built: bool, detail: String },
    /// Not a frame of its own: the head of an uncompressed Chunk frame
    /// whose `len` payload bytes have not all arrived, from a codec told
    /// to [`FrameCodec::split_chunks`]. The reader takes the payload from
    /// the connection itself, into a buffer of its own.
    ChunkHead {
        disk: u32,
        index: u64,
        hash: [u8; 32],
        len: usize,
    },
}

/// What a RoundStatus frame tells the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundEvent {
    /// The pipeline runs this step (sent when it starts, and every few
    /// seconds while it runs, so the sender knows the appliance is alive).
    Step(Step),
    /// The round is over: verified and handed off; `status` is Finished
    /// (or Waiting for an incremental job's next round).
    Done,
    /// This sender's disks are committed, but the job waits for other disks
    /// before its round can end; `status` is the job's.
    AwaitingDisks,
}

impl RoundEvent {
    /// Whether more frames follow.
    pub fn is_final(self) -> bool {
        !matches!(self, RoundEvent::Step(_))
    }
}

mod ty {
    pub const HELLO: u8 = 0x01;
    pub const CHALLENGE: u8 = 0x02;
    pub const AUTH: u8 = 0x03;
    pub const AUTH_OK: u8 = 0x04;
    pub const ERROR: u8 = 0x05;
    pub const OPEN_DISK: u8 = 0x10;
    pub const MANIFEST: u8 = 0x11;
    pub const CHUNK: u8 = 0x12;
    pub const ZERO: u8 = 0x13;
    pub const ACK: u8 = 0x14;
    pub const FINISH: u8 = 0x15;
    pub const FINISHED: u8 = 0x16;
    pub const PROBE: u8 = 0x20;
    pub const PROBE_ACK: u8 = 0x21;
    pub const DISK_NAMES: u8 = 0x17;
    pub const END_ROUND: u8 = 0x30;
    pub const ROUND_STATUS: u8 = 0x31;
    pub const PING: u8 = 0x40;
    pub const PONG: u8 = 0x41;
    pub const STREAM_KEY: u8 = 0x18;
    pub const ATTACH: u8 = 0x19;
    pub const BANDWIDTH: u8 = 0x50;
    pub const OPEN_TREE: u8 = 0x60;
    pub const TREE_MANIFEST: u8 = 0x61;
    pub const ENTRY: u8 = 0x62;
    pub const FILE_DATA: u8 = 0x63;
    pub const FILE_END: u8 = 0x64;
    pub const REMOVE: u8 = 0x65;
    pub const CLOSE_TREE: u8 = 0x66;
    pub const TREE_CLOSED: u8 = 0x67;
    pub const SOURCE_LAYOUT: u8 = 0x68;
    pub const TARGETS_READY: u8 = 0x69;
}

/// Most bytes of a SourceLayout frame's JSON.
pub const MAX_SOURCE_LAYOUT: usize = 48 << 10;

/// Most names in a DiskNames frame.
pub const MAX_DISK_NAMES: usize = 32;

/// Longest string in an Error frame.
const MAX_TEXT: usize = 4096;

impl Frame {
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Challenge { .. } => "Challenge",
            Frame::Auth { .. } => "Auth",
            Frame::AuthOk { .. } => "AuthOk",
            Frame::Error { .. } => "Error",
            Frame::OpenDisk { .. } => "OpenDisk",
            Frame::Manifest { .. } => "Manifest",
            Frame::Chunk { .. } => "Chunk",
            Frame::Zero { .. } => "Zero",
            Frame::Ack { .. } => "Ack",
            Frame::Finish { .. } => "Finish",
            Frame::Finished { .. } => "Finished",
            Frame::Probe { .. } => "Probe",
            Frame::ProbeAck { .. } => "ProbeAck",
            Frame::DiskNames { .. } => "DiskNames",
            Frame::EndRound => "EndRound",
            Frame::RoundStatus { .. } => "RoundStatus",
            Frame::Ping => "Ping",
            Frame::Pong => "Pong",
            Frame::StreamKey { .. } => "StreamKey",
            Frame::Attach { .. } => "Attach",
            Frame::Bandwidth { .. } => "Bandwidth",
            Frame::ChunkHead { .. } => "Chunk",
            Frame::OpenTree { .. } => "OpenTree",
            Frame::TreeManifest { .. } => "TreeManifest",
            Frame::Entry { .. } => "Entry",
            Frame::FileData { .. } => "FileData",
            Frame::FileEnd { .. } => "FileEnd",
            Frame::Remove { .. } => "Remove",
            Frame::CloseTree { .. } => "CloseTree",
            Frame::TreeClosed { .. } => "TreeClosed",
            Frame::SourceLayout { .. } => "SourceLayout",
            Frame::TargetsReady { .. } => "TargetsReady",
        }
    }

    /// An Error frame for a catalogue code with this occurrence's detail.
    pub fn error(code: ErrorCode, detail: &str) -> Frame {
        let message = if detail.is_empty() {
            code.message().to_owned()
        } else {
            format!("{} ({detail})", code.message_for(detail))
        };
        Frame::Error {
            code: code.as_str().to_owned(),
            message: truncate(message),
            hint: code.hint().to_owned(),
        }
    }

    fn encode_into(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u8(0);
        dst.put_u32(0);
        let ty = match self {
            Frame::Hello { version, nonce } => {
                dst.put_u16(*version);
                dst.put_slice(nonce);
                ty::HELLO
            }
            Frame::Challenge { version, nonce } => {
                dst.put_u16(*version);
                dst.put_slice(nonce);
                ty::CHALLENGE
            }
            Frame::Auth { proof } => {
                dst.put_slice(proof);
                ty::AUTH
            }
            Frame::AuthOk { proof } => {
                dst.put_slice(proof);
                ty::AUTH_OK
            }
            Frame::Error {
                code,
                message,
                hint,
            } => {
                for s in [code, message, hint] {
                    put_text(dst, s);
                }
                ty::ERROR
            }
            Frame::OpenDisk {
                disk,
                size,
                chunk_size,
            } => {
                dst.put_u32(*disk);
                dst.put_u64(*size);
                dst.put_u32(*chunk_size);
                ty::OPEN_DISK
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
                ty::MANIFEST
            }
            Frame::Chunk {
                disk,
                index,
                hash,
                compressed,
                payload,
            } => {
                dst.put_u32(*disk);
                dst.put_u64(*index);
                dst.put_slice(hash);
                dst.put_u8(u8::from(*compressed));
                dst.put_slice(payload);
                ty::CHUNK
            }
            Frame::Zero { disk, index } => {
                dst.put_u32(*disk);
                dst.put_u64(*index);
                ty::ZERO
            }
            Frame::Ack { disk, indices } => {
                dst.put_u32(*disk);
                dst.put_u32(indices.len() as u32);
                for i in indices {
                    dst.put_u64(*i);
                }
                ty::ACK
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
                ty::FINISH
            }
            Frame::Finished { disk, digest } => {
                dst.put_u32(*disk);
                dst.put_slice(digest);
                ty::FINISHED
            }
            Frame::Probe { payload } => {
                dst.put_slice(payload);
                ty::PROBE
            }
            Frame::ProbeAck { bytes } => {
                dst.put_u64(*bytes);
                ty::PROBE_ACK
            }
            Frame::DiskNames { disk, names } => {
                dst.put_u32(*disk);
                let names = &names[..names.len().min(MAX_DISK_NAMES)];
                dst.put_u8(names.len() as u8);
                for n in names {
                    put_text(dst, n);
                }
                ty::DISK_NAMES
            }
            Frame::EndRound => ty::END_ROUND,
            Frame::Ping => ty::PING,
            Frame::Pong => ty::PONG,
            Frame::StreamKey { disk, key } => {
                dst.put_u32(*disk);
                dst.put_slice(key);
                ty::STREAM_KEY
            }
            Frame::Attach { disk, key } => {
                dst.put_u32(*disk);
                dst.put_slice(key);
                ty::ATTACH
            }
            Frame::Bandwidth { bytes_per_sec } => {
                dst.put_u64(*bytes_per_sec);
                ty::BANDWIDTH
            }
            Frame::OpenTree { tree } => {
                dst.put_u32(*tree);
                ty::OPEN_TREE
            }
            Frame::TreeManifest {
                tree,
                last,
                entries,
            } => {
                dst.put_u32(*tree);
                dst.put_u8(u8::from(*last));
                dst.put_u32(entries.len() as u32);
                for (path, stamp) in entries {
                    put_bytes16(dst, path);
                    dst.put_slice(&stamp.to_bytes());
                }
                ty::TREE_MANIFEST
            }
            Frame::Entry { tree, entry } => {
                dst.put_u32(*tree);
                put_entry(dst, entry);
                ty::ENTRY
            }
            Frame::FileData {
                tree,
                offset,
                compressed,
                payload,
            } => {
                dst.put_u32(*tree);
                dst.put_u64(*offset);
                dst.put_u8(u8::from(*compressed));
                dst.put_slice(payload);
                ty::FILE_DATA
            }
            Frame::FileEnd { tree, hash } => {
                dst.put_u32(*tree);
                dst.put_slice(hash);
                ty::FILE_END
            }
            Frame::Remove { tree, path } => {
                dst.put_u32(*tree);
                put_bytes16(dst, path);
                ty::REMOVE
            }
            Frame::CloseTree { tree } => {
                dst.put_u32(*tree);
                ty::CLOSE_TREE
            }
            Frame::TreeClosed {
                tree,
                entries,
                removed,
                bytes,
            } => {
                dst.put_u32(*tree);
                dst.put_u64(*entries);
                dst.put_u64(*removed);
                dst.put_u64(*bytes);
                ty::TREE_CLOSED
            }
            Frame::SourceLayout { json } => {
                dst.put_slice(json);
                ty::SOURCE_LAYOUT
            }
            Frame::TargetsReady { built, detail } => {
                dst.put_u8(u8::from(*built));
                put_text(dst, detail);
                ty::TARGETS_READY
            }
            // A head is only ever decoded; its frame was a Chunk.
            Frame::ChunkHead {
                disk,
                index,
                hash,
                len,
            } => {
                dst.put_slice(&chunk_head(*disk, *index, hash, false, *len)[HEADER..]);
                ty::CHUNK
            }
            Frame::RoundStatus { status, event } => {
                dst.put_u8(status.wire_code());
                let (kind, step) = match event {
                    RoundEvent::Step(s) => (0, s.wire_code()),
                    RoundEvent::Done => (1, 0),
                    RoundEvent::AwaitingDisks => (2, 0),
                };
                dst.put_u8(kind);
                dst.put_u8(step);
                ty::ROUND_STATUS
            }
        };
        let len = (dst.len() - start - 5) as u32;
        dst[start] = ty;
        dst[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }

    /// Parse a payload of frame type `ty`. Every read is checked against the
    /// payload's remaining length; no count from the wire sizes an allocation
    /// beyond what the payload itself holds.
    fn parse(ty: u8, mut p: Bytes) -> Result<Frame, WireError> {
        let frame = match ty {
            ty::HELLO => Frame::Hello {
                version: get_u16(&mut p, "Hello")?,
                nonce: get32(&mut p, "Hello")?,
            },
            ty::CHALLENGE => Frame::Challenge {
                version: get_u16(&mut p, "Challenge")?,
                nonce: get32(&mut p, "Challenge")?,
            },
            ty::AUTH => Frame::Auth {
                proof: get32(&mut p, "Auth")?,
            },
            ty::AUTH_OK => Frame::AuthOk {
                proof: get32(&mut p, "AuthOk")?,
            },
            ty::ERROR => Frame::Error {
                code: get_text(&mut p)?,
                message: get_text(&mut p)?,
                hint: get_text(&mut p)?,
            },
            ty::OPEN_DISK => Frame::OpenDisk {
                disk: get_u32(&mut p, "OpenDisk")?,
                size: get_u64(&mut p, "OpenDisk")?,
                chunk_size: get_u32(&mut p, "OpenDisk")?,
            },
            ty::MANIFEST => {
                let disk = get_u32(&mut p, "Manifest")?;
                let first = get_u64(&mut p, "Manifest")?;
                let end = get_u64(&mut p, "Manifest")?;
                let flags = get_u8(&mut p, "Manifest")?;
                let count = get_u32(&mut p, "Manifest")? as usize;
                if count > crate::wire::MANIFEST_PAGE || count.saturating_mul(40) > p.remaining() {
                    return Err(malformed("Manifest", "entry count exceeds the page"));
                }
                if end < first {
                    return Err(malformed("Manifest", "the range ends before it starts"));
                }
                let mut entries: Vec<ManifestEntry> = Vec::with_capacity(count);
                for _ in 0..count {
                    let index = get_u64(&mut p, "Manifest")?;
                    let in_order = entries
                        .last()
                        .map_or(index >= first, |&(prev, _)| index > prev);
                    if !in_order || index >= end {
                        return Err(malformed(
                            "Manifest",
                            "entries out of order or out of the range",
                        ));
                    }
                    entries.push((index, get32(&mut p, "Manifest")?));
                }
                Frame::Manifest {
                    disk,
                    first,
                    end,
                    fresh: flags & 1 != 0,
                    last: flags & 2 != 0,
                    entries,
                }
            }
            ty::CHUNK => {
                let disk = get_u32(&mut p, "Chunk")?;
                let index = get_u64(&mut p, "Chunk")?;
                let hash = get32(&mut p, "Chunk")?;
                let compressed = match get_u8(&mut p, "Chunk")? {
                    0 => false,
                    1 => true,
                    _ => return Err(malformed("Chunk", "unknown encoding")),
                };
                // The rest of the frame is the payload, without a copy.
                let payload = std::mem::take(&mut p);
                Frame::Chunk {
                    disk,
                    index,
                    hash,
                    compressed,
                    payload,
                }
            }
            ty::ZERO => Frame::Zero {
                disk: get_u32(&mut p, "Zero")?,
                index: get_u64(&mut p, "Zero")?,
            },
            ty::ACK => {
                let disk = get_u32(&mut p, "Ack")?;
                let count = get_u32(&mut p, "Ack")? as usize;
                if count > crate::wire::MAX_ACK_ENTRIES || count.saturating_mul(8) > p.remaining() {
                    return Err(malformed("Ack", "entry count exceeds the frame"));
                }
                let mut indices = Vec::with_capacity(count);
                for _ in 0..count {
                    indices.push(get_u64(&mut p, "Ack")?);
                }
                Frame::Ack { disk, indices }
            }
            ty::FINISH => Frame::Finish {
                disk: get_u32(&mut p, "Finish")?,
                digest: get32(&mut p, "Finish")?,
                unchanged: get_u64(&mut p, "Finish")?,
                zero_skipped: get_u64(&mut p, "Finish")?,
            },
            ty::FINISHED => Frame::Finished {
                disk: get_u32(&mut p, "Finished")?,
                digest: get32(&mut p, "Finished")?,
            },
            ty::PROBE => Frame::Probe {
                payload: std::mem::take(&mut p),
            },
            ty::PROBE_ACK => Frame::ProbeAck {
                bytes: get_u64(&mut p, "ProbeAck")?,
            },
            ty::DISK_NAMES => {
                let disk = get_u32(&mut p, "DiskNames")?;
                let count = get_u8(&mut p, "DiskNames")? as usize;
                if count > MAX_DISK_NAMES {
                    return Err(malformed("DiskNames", "too many names"));
                }
                let mut names = Vec::with_capacity(count);
                for _ in 0..count {
                    names.push(get_text(&mut p)?);
                }
                Frame::DiskNames { disk, names }
            }
            ty::END_ROUND => Frame::EndRound,
            ty::PING => Frame::Ping,
            ty::PONG => Frame::Pong,
            ty::STREAM_KEY => Frame::StreamKey {
                disk: get_u32(&mut p, "StreamKey")?,
                key: get32(&mut p, "StreamKey")?,
            },
            ty::ATTACH => Frame::Attach {
                disk: get_u32(&mut p, "Attach")?,
                key: get32(&mut p, "Attach")?,
            },
            ty::BANDWIDTH => Frame::Bandwidth {
                bytes_per_sec: get_u64(&mut p, "Bandwidth")?,
            },
            ty::ROUND_STATUS => {
                let status = Status::from_wire_code(get_u8(&mut p, "RoundStatus")?)
                    .ok_or_else(|| malformed("RoundStatus", "unknown status"))?;
                let kind = get_u8(&mut p, "RoundStatus")?;
                let step = get_u8(&mut p, "RoundStatus")?;
                let event = match (kind, step) {
                    (0, s) => RoundEvent::Step(
                        Step::from_wire_code(s)
                            .ok_or_else(|| malformed("RoundStatus", "unknown step"))?,
                    ),
                    (1, 0) => RoundEvent::Done,
                    (2, 0) => RoundEvent::AwaitingDisks,
                    _ => return Err(malformed("RoundStatus", "unknown event")),
                };
                Frame::RoundStatus { status, event }
            }
            ty::OPEN_TREE => Frame::OpenTree {
                tree: get_u32(&mut p, "OpenTree")?,
            },
            ty::TREE_MANIFEST => {
                let k = "TreeManifest";
                let tree = get_u32(&mut p, k)?;
                let last = match get_u8(&mut p, k)? {
                    0 => false,
                    1 => true,
                    _ => return Err(malformed(k, "unknown flag")),
                };
                let count = get_u32(&mut p, k)? as usize;
                // Each entry takes at least its length prefix and stamp.
                if count > files::MANIFEST_PAGE_ENTRIES
                    || count.saturating_mul(2 + files::STAMP_LEN) > p.remaining()
                {
                    return Err(malformed(k, "entry count exceeds the page"));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let path = get_bytes16(&mut p, k, files::MAX_PATH)?;
                    need(&p, files::STAMP_LEN, k)?;
                    let raw = p.split_to(files::STAMP_LEN);
                    let stamp = Stamp::from_bytes(&raw)
                        .ok_or_else(|| malformed(k, "unknown entry kind"))?;
                    entries.push((path, stamp));
                }
                Frame::TreeManifest {
                    tree,
                    last,
                    entries,
                }
            }
            ty::ENTRY => Frame::Entry {
                tree: get_u32(&mut p, "Entry")?,
                entry: Box::new(get_entry(&mut p)?),
            },
            ty::FILE_DATA => {
                let tree = get_u32(&mut p, "FileData")?;
                let offset = get_u64(&mut p, "FileData")?;
                let compressed = match get_u8(&mut p, "FileData")? {
                    0 => false,
                    1 => true,
                    _ => return Err(malformed("FileData", "unknown encoding")),
                };
                if p.remaining() > files::FILE_CHUNK {
                    return Err(malformed("FileData", "piece larger than the file chunk"));
                }
                Frame::FileData {
                    tree,
                    offset,
                    compressed,
                    payload: std::mem::take(&mut p),
                }
            }
            ty::FILE_END => Frame::FileEnd {
                tree: get_u32(&mut p, "FileEnd")?,
                hash: get32(&mut p, "FileEnd")?,
            },
            ty::REMOVE => Frame::Remove {
                tree: get_u32(&mut p, "Remove")?,
                path: get_bytes16(&mut p, "Remove", files::MAX_PATH)?,
            },
            ty::CLOSE_TREE => Frame::CloseTree {
                tree: get_u32(&mut p, "CloseTree")?,
            },
            ty::TREE_CLOSED => Frame::TreeClosed {
                tree: get_u32(&mut p, "TreeClosed")?,
                entries: get_u64(&mut p, "TreeClosed")?,
                removed: get_u64(&mut p, "TreeClosed")?,
                bytes: get_u64(&mut p, "TreeClosed")?,
            },
            ty::SOURCE_LAYOUT => {
                if p.remaining() > MAX_SOURCE_LAYOUT {
                    return Err(malformed("SourceLayout", "a layout longer than allowed"));
                }
                Frame::SourceLayout {
                    json: std::mem::take(&mut p),
                }
            }
            ty::TARGETS_READY => {
                let built = match get_u8(&mut p, "TargetsReady")? {
                    0 => false,
                    1 => true,
                    _ => return Err(malformed("TargetsReady", "unknown flag")),
                };
                Frame::TargetsReady {
                    built,
                    detail: get_text(&mut p)?,
                }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        if p.has_remaining() {
            return Err(malformed(frame.name(), "trailing bytes"));
        }
        Ok(frame)
    }
}

/// A length-prefixed UTF-8 string, cut at MAX_TEXT bytes on a character
/// boundary.
fn put_text(dst: &mut BytesMut, s: &str) {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    dst.put_u16(end as u16);
    dst.put_slice(&s.as_bytes()[..end]);
}

/// Raw bytes with a u16 length (paths, symlink targets).
fn put_bytes16(dst: &mut BytesMut, b: &[u8]) {
    let b = &b[..b.len().min(u16::MAX as usize)];
    dst.put_u16(b.len() as u16);
    dst.put_slice(b);
}

fn get_bytes16(p: &mut Bytes, kind: &'static str, max: usize) -> Result<Vec<u8>, WireError> {
    let len = get_u16(p, kind)? as usize;
    if len > max {
        return Err(malformed(kind, "a path or name longer than allowed"));
    }
    need(p, len, kind)?;
    Ok(p.split_to(len).to_vec())
}

fn put_entry(dst: &mut BytesMut, e: &Entry) {
    put_bytes16(dst, &e.path);
    dst.put_u8(e.kind.wire_code());
    dst.put_u32(e.mode);
    dst.put_u32(e.uid);
    dst.put_u32(e.gid);
    dst.put_u64(e.size);
    for t in [e.mtime, e.ctime] {
        dst.put_i64(t.sec);
        dst.put_u32(t.nsec);
    }
    dst.put_u64(e.rdev);
    put_bytes16(dst, &e.target);
    dst.put_u16(e.xattrs.len() as u16);
    for (name, value) in &e.xattrs {
        put_bytes16(dst, name);
        dst.put_u32(value.len() as u32);
        dst.put_slice(value);
    }
}

/// An entry, every length bounded before it is read: a path, a target, a
/// count of xattrs and their bytes.
fn get_entry(p: &mut Bytes) -> Result<Entry, WireError> {
    let k = "Entry";
    let path = get_bytes16(p, k, files::MAX_PATH)?;
    let kind =
        Kind::from_wire_code(get_u8(p, k)?).ok_or_else(|| malformed(k, "unknown entry kind"))?;
    let mode = get_u32(p, k)?;
    if mode & !0o7777 != 0 {
        return Err(malformed(k, "mode bits beyond 07777"));
    }
    let uid = get_u32(p, k)?;
    let gid = get_u32(p, k)?;
    let size = get_u64(p, k)?;
    let mut times = [Time::default(); 2];
    for t in &mut times {
        need(p, 12, k)?;
        let sec = p.get_i64();
        let nsec = p.get_u32();
        if nsec >= 1_000_000_000 {
            return Err(malformed(k, "nanoseconds of a time beyond a second"));
        }
        *t = Time { sec, nsec };
    }
    let rdev = get_u64(p, k)?;
    let target = get_bytes16(p, k, files::MAX_TARGET)?;
    let count = get_u16(p, k)? as usize;
    if count > files::MAX_XATTRS || count.saturating_mul(6) > p.remaining() {
        return Err(malformed(k, "too many extended attributes"));
    }
    let mut xattrs = Vec::with_capacity(count);
    let mut total = 0usize;
    for _ in 0..count {
        let name = get_bytes16(p, k, files::MAX_NAME)?;
        let len = get_u32(p, k)? as usize;
        total = total.saturating_add(name.len() + len);
        if total > files::MAX_XATTR_BYTES {
            return Err(malformed(k, "extended attributes larger than allowed"));
        }
        need(p, len, k)?;
        xattrs.push((name, p.split_to(len).to_vec()));
    }
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        size,
        mtime: times[0],
        ctime: times[1],
        rdev,
        target,
        xattrs,
    })
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn malformed(kind: &'static str, why: &'static str) -> WireError {
    WireError::Malformed { kind, why }
}

fn need(p: &Bytes, n: usize, kind: &'static str) -> Result<(), WireError> {
    if p.remaining() < n {
        Err(malformed(kind, "payload too short"))
    } else {
        Ok(())
    }
}

fn get_u8(p: &mut Bytes, kind: &'static str) -> Result<u8, WireError> {
    need(p, 1, kind)?;
    Ok(p.get_u8())
}
fn get_u16(p: &mut Bytes, kind: &'static str) -> Result<u16, WireError> {
    need(p, 2, kind)?;
    Ok(p.get_u16())
}
fn get_u32(p: &mut Bytes, kind: &'static str) -> Result<u32, WireError> {
    need(p, 4, kind)?;
    Ok(p.get_u32())
}
fn get_u64(p: &mut Bytes, kind: &'static str) -> Result<u64, WireError> {
    need(p, 8, kind)?;
    Ok(p.get_u64())
}
fn get32(p: &mut Bytes, kind: &'static str) -> Result<[u8; 32], WireError> {
    need(p, 32, kind)?;
    let mut out = [0u8; 32];
    p.copy_to_slice(&mut out);
    Ok(out)
}
fn get_text(p: &mut Bytes) -> Result<String, WireError> {
    let len = get_u16(p, "Error")? as usize;
    if len > MAX_TEXT {
        return Err(malformed("Error", "text too long"));
    }
    need(p, len, "Error")?;
    let raw = p.split_to(len);
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// Length-prefixed frames with a bound that the owner tightens or widens as
/// the session goes (tiny before authentication).
#[derive(Debug)]
pub struct FrameCodec {
    max: usize,
    split: bool,
}

/// Smallest payload a codec that splits chunks leaves to its reader.
const SPLIT_MIN: usize = 64 << 10;

const HEADER: usize = 5;

impl FrameCodec {
    pub fn new(max: usize) -> Self {
        FrameCodec { max, split: false }
    }

    /// Decode an uncompressed chunk whose payload has not all arrived as
    /// a [`Frame::ChunkHead`], leaving the payload to the reader: it reads
    /// it straight into its own buffer rather than into this codec's (which
    /// is copied out of again, and is fresh memory for every chunk).
    pub fn split_chunks(&mut self, on: bool) {
        self.split = on;
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if src.len() < HEADER {
            return Ok(None);
        }
        let ty = src[0];
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        // The bound is checked before a single byte is reserved for the payload.
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        if src.len() < HEADER + len {
            let head = HEADER + crate::wire::CHUNK_HEADER_LEN;
            if self.split
                && ty == ty::CHUNK
                && len >= crate::wire::CHUNK_HEADER_LEN + SPLIT_MIN
                && src.len() >= head
                && src[head - 1] == 0
            {
                let mut h = src.split_to(head).freeze();
                h.advance(HEADER);
                return Ok(Some(Frame::ChunkHead {
                    disk: get_u32(&mut h, "Chunk")?,
                    index: get_u64(&mut h, "Chunk")?,
                    hash: get32(&mut h, "Chunk")?,
                    len: len - crate::wire::CHUNK_HEADER_LEN,
                }));
            }
            src.reserve(HEADER + len - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(HEADER + len);
        frame.advance(HEADER);
        Frame::parse(ty, frame.freeze()).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Truncated),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        item.encode_into(dst);
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        item.encode_into(dst);
        Ok(())
    }
}

/// The bytes of a Chunk frame before its payload, for a writer that sends
/// the payload from its own buffer rather than copying it into a frame's.
pub fn chunk_head(
    disk: u32,
    index: u64,
    hash: &[u8; 32],
    compressed: bool,
    payload_len: usize,
) -> [u8; HEADER + crate::wire::CHUNK_HEADER_LEN] {
    let mut head = [0u8; HEADER + crate::wire::CHUNK_HEADER_LEN];
    let len = (crate::wire::CHUNK_HEADER_LEN + payload_len) as u32;
    head[0] = ty::CHUNK;
    head[1..5].copy_from_slice(&len.to_be_bytes());
    head[5..9].copy_from_slice(&disk.to_be_bytes());
    head[9..17].copy_from_slice(&index.to_be_bytes());
    head[17..49].copy_from_slice(hash);
    head[49] = u8::from(compressed);
    head
}

/// Encode one frame into fresh bytes (tests and raw writers).
pub fn encode(frame: &Frame) -> BytesMut {
    let mut b = BytesMut::new();
    frame.encode_into(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_error_frame_names_the_disk_of_its_detail() {
        match Frame::error(ErrorCode::TransferInterrupted, "disk 2: cut") {
            Frame::Error { message, .. } => assert_eq!(
                message,
                "Do Rsync Disk 2 Failed: the data transfer was interrupted (disk 2: cut)"
            ),
            other => panic!("{other:?}"),
        }
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                nonce: [7; 32],
            },
            Frame::Challenge {
                version: 1,
                nonce: [8; 32],
            },
            Frame::Auth { proof: [9; 32] },
            Frame::AuthOk { proof: [10; 32] },
            Frame::error(ErrorCode::DiskBusy, "disk 0"),
            Frame::OpenDisk {
                disk: 3,
                size: 1 << 40,
                chunk_size: 1 << 22,
            },
            Frame::Manifest {
                disk: 1,
                first: 8192,
                end: 1 << 30,
                fresh: true,
                last: false,
                entries: vec![(8193, [1; 32]), (1 << 29, [2; 32])],
            },
            Frame::Chunk {
                disk: 0,
                index: 5,
                hash: [2; 32],
                compressed: true,
                payload: Bytes::from_static(b"abc"),
            },
            Frame::Zero { disk: 0, index: 6 },
            Frame::Ack {
                disk: 0,
                indices: vec![1, 2, 3],
            },
            Frame::Finish {
                disk: 0,
                digest: [3; 32],
                unchanged: 4,
                zero_skipped: 5,
            },
            Frame::Finished {
                disk: 0,
                digest: [4; 32],
            },
            Frame::Probe {
                payload: Bytes::from_static(&[0; 100]),
            },
            Frame::ProbeAck { bytes: 100 },
            Frame::DiskNames {
                disk: 1,
                names: vec!["/dev/sdb".into(), "/dev/disk/by-id/ata-X".into()],
            },
            Frame::EndRound,
            Frame::RoundStatus {
                status: Status::Finished,
                event: RoundEvent::Done,
            },
            Frame::RoundStatus {
                status: Status::PROCESSING,
                event: RoundEvent::Step(Step::Verify),
            },
            Frame::RoundStatus {
                status: Status::SYNCING,
                event: RoundEvent::AwaitingDisks,
            },
            Frame::Ping,
            Frame::Pong,
            Frame::StreamKey {
                disk: 2,
                key: [11; 32],
            },
            Frame::Attach {
                disk: 2,
                key: [11; 32],
            },
            Frame::Bandwidth {
                bytes_per_sec: 12_500_000,
            },
            Frame::OpenTree { tree: 1 },
            Frame::TreeManifest {
                tree: 1,
                last: true,
                entries: vec![(
                    b"etc/\xffx".to_vec(),
                    Stamp {
                        kind: Kind::Symlink,
                        size: 3,
                        mtime: Time { sec: 1, nsec: 2 },
                        ctime: Time { sec: 3, nsec: 4 },
                        mode: 0o777,
                        uid: 0,
                        gid: 0,
                        hash: [1; 32],
                    },
                )],
            },
            Frame::Entry {
                tree: 0,
                entry: Box::new(Entry {
                    path: b"usr/bin/ping".to_vec(),
                    kind: Kind::File,
                    mode: 0o4755,
                    uid: 0,
                    gid: 0,
                    size: 12345,
                    mtime: Time {
                        sec: 1_700_000_000,
                        nsec: 123_456_789,
                    },
                    ctime: Time {
                        sec: 1_700_000_001,
                        nsec: 0,
                    },
                    rdev: 0,
                    target: Vec::new(),
                    xattrs: vec![(b"security.capability".to_vec(), vec![1, 0, 0, 2])],
                }),
            },
            Frame::FileData {
                tree: 0,
                offset: 1 << 20,
                compressed: false,
                payload: Bytes::from_static(b"data"),
            },
            Frame::FileEnd {
                tree: 0,
                hash: [5; 32],
            },
            Frame::Remove {
                tree: 0,
                path: b"tmp/gone".to_vec(),
            },
            Frame::CloseTree { tree: 0 },
            Frame::TreeClosed {
                tree: 0,
                entries: 10,
                removed: 1,
                bytes: 100,
            },
            Frame::SourceLayout {
                json: Bytes::from_static(b"{\"layout\":{},\"trees\":[]}"),
            },
            Frame::TargetsReady {
                built: true,
                detail: "laid out".into(),
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            let mut buf = encode(&f);
            let got = FrameCodec::new(1 << 20).decode(&mut buf).unwrap();
            assert_eq!(got.as_ref(), Some(&f), "{}", f.name());
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_chunk_head_is_the_start_of_its_frame() {
        let payload = Bytes::from_static(b"payload bytes");
        let frame = Frame::Chunk {
            disk: 7,
            index: 1 << 33,
            hash: [5; 32],
            compressed: true,
            payload: payload.clone(),
        };
        let head = chunk_head(7, 1 << 33, &[5; 32], true, payload.len());
        assert_eq!([&head[..], &payload[..]].concat(), encode(&frame).to_vec());
    }

    #[test]
    fn a_splitting_codec_leaves_a_plain_chunks_payload_to_its_reader() {
        let payload = Bytes::from(vec![7u8; 256 << 10]);
        let chunk = |compressed| Frame::Chunk {
            disk: 1,
            index: 9,
            hash: [3; 32],
            compressed,
            payload: payload.clone(),
        };
        let mut codec = FrameCodec::new(1 << 20);
        codec.split_chunks(true);
        // Whole in the buffer: the frame as it is.
        let mut buf = encode(&chunk(false));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(chunk(false)));
        // Its head and part of its payload: the head; the rest stays.
        let mut buf = encode(&chunk(false));
        buf.truncate(50 + 1000);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::ChunkHead {
                disk: 1,
                index: 9,
                hash: [3; 32],
                len: 256 << 10
            })
        );
        assert_eq!(buf.len(), 1000);
        // A compressed chunk waits whole, as does any chunk without splitting.
        let mut buf = encode(&chunk(true));
        buf.truncate(50 + 1000);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        let mut buf = encode(&chunk(false));
        buf.truncate(50 + 1000);
        assert_eq!(FrameCodec::new(1 << 20).decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn refusals_are_exact() {
        struct Case {
            name: &'static str,
            bytes: Vec<u8>,
            max: usize,
            want: &'static str,
        }
        let cases = [
            Case {
                name: "over bound",
                bytes: vec![0x12, 0, 0x10, 0, 1],
                max: 1024,
                want: "frame of 1048577 bytes exceeds the bound of 1024 bytes",
            },
            Case {
                name: "unknown type",
                bytes: vec![0x7f, 0, 0, 0, 0],
                max: 1024,
                want: "unknown frame type 0x7f",
            },
            Case {
                name: "short hello",
                bytes: vec![0x01, 0, 0, 0, 2, 0, 1],
                max: 1024,
                want: "malformed Hello frame: payload too short",
            },
            Case {
                name: "trailing",
                bytes: [vec![0x14, 0, 0, 0, 9], vec![0; 9]].concat(),
                max: 1024,
                want: "malformed Ack frame: trailing bytes",
            },
            Case {
                name: "ack count lies",
                bytes: [vec![0x14, 0, 0, 0, 8, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]].concat(),
                max: 1024,
                want: "malformed Ack frame: entry count exceeds the frame",
            },
            Case {
                name: "chunk encoding",
                bytes: [vec![0x12, 0, 0, 0, 45], vec![0; 44], vec![9]].concat(),
                max: 1024,
                want: "malformed Chunk frame: unknown encoding",
            },
            Case {
                name: "entry with a path longer than allowed",
                bytes: [vec![0x62, 0, 0, 0, 6, 0, 0, 0, 0, 0x10, 0x01]].concat(),
                max: 1024,
                want: "malformed Entry frame: a path or name longer than allowed",
            },
            Case {
                name: "entry whose xattr count lies",
                bytes: [
                    vec![0x62, 0, 0, 0, 64, 0, 0, 0, 0, 0, 1, b'a', 1],
                    vec![0; 4 + 4 + 4 + 8 + 12 + 12 + 8 + 2],
                    vec![0, 100],
                ]
                .concat(),
                max: 1024,
                want: "malformed Entry frame: too many extended attributes",
            },
            Case {
                name: "manifest count lies",
                bytes: vec![0x61, 0, 0, 0, 9, 0, 0, 0, 0, 1, 0, 0, 0x10, 0],
                max: 1024,
                want: "malformed TreeManifest frame: entry count exceeds the page",
            },
            Case {
                name: "round status with an unknown step",
                bytes: vec![0x31, 0, 0, 0, 3, 3, 0, 42],
                max: 1024,
                want: "malformed RoundStatus frame: unknown step",
            },
            Case {
                name: "round status with an unknown status",
                bytes: vec![0x31, 0, 0, 0, 3, 77, 1, 0],
                max: 1024,
                want: "malformed RoundStatus frame: unknown status",
            },
            Case {
                name: "round status with a step on a final event",
                bytes: vec![0x31, 0, 0, 0, 3, 7, 1, 5],
                max: 1024,
                want: "malformed RoundStatus frame: unknown event",
            },
        ];
        for c in cases {
            let mut buf = BytesMut::from(&c.bytes[..]);
            let err = FrameCodec::new(c.max).decode(&mut buf).unwrap_err();
            assert_eq!(err.to_string(), c.want, "case {}", c.name);
        }
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error_and_clean_eof_is_not() {
        let mut buf = encode(&Frame::Zero { disk: 0, index: 1 });
        buf.truncate(buf.len() - 1);
        let mut codec = FrameCodec::new(1024);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(WireError::Truncated)
        ));
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_reserves_nothing() {
        let mut buf = BytesMut::with_capacity(8);
        buf.extend_from_slice(&[0x12, 0xff, 0xff, 0xff, 0xff]);
        let cap = buf.capacity();
        assert!(FrameCodec::new(4096).decode(&mut buf).is_err());
        assert_eq!(buf.capacity(), cap);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decoder_never_panics_nor_grows_past_bound(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let max = 1024;
            let mut codec = FrameCodec::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            prop_assert!(buf.capacity() <= bytes.len().max(HEADER + max) + 64);
        }

        #[test]
        fn mutated_frames_never_panic(idx in 0usize..14, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = encode(&samples()[idx]).to_vec();
            for (pos, val) in flips {
                let n = bytes.len();
                bytes[pos % n] = val;
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = FrameCodec::new(1024).decode_eof(&mut buf);
        }
    }
}
