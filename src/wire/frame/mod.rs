//! Frames: what each one carries, its type byte and its name, and the
//! dispatch of encoding and parsing to the frame's family — a room each
//! (handshake, disk, tree, control), with a frame's encoding beside its
//! parsing. The codec that cuts frames out of a stream is [`codec`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::entry::{Entry, Stamp};
use crate::job::errors::{coded, ErrorCode};
use crate::job::state::JobStatus;
use crate::job::step::Step;

mod body;
mod codec;
mod control;
mod disk;
mod handshake;
mod tree;

#[cfg(test)]
mod tests;

use body::Reader;
pub use codec::FrameCodec;
pub use disk::chunk_head;

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

/// A committed chunk in a manifest page: its index and hash.
pub(crate) type ManifestEntry = (u64, [u8; 32]);

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
    /// appliance → sender: the disk is re-read from the target and its
    /// digest matched the sender's Finish; `digest` is the one re-read.
    /// (Known as "Finished" in errors, the name of its frame type.)
    DiskVerified { disk: u32, digest: [u8; 32] },
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
    RoundStatus {
        status: JobStatus,
        event: RoundEvent,
    },
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

/// The type byte of each frame; the families own the ranges 0x01..=0x0f
/// (handshake), 0x10..=0x1f (disk), 0x60..=0x6f (tree) and the rest (control).
mod ty {
    pub(crate) const HELLO: u8 = 0x01;
    pub(crate) const CHALLENGE: u8 = 0x02;
    pub(crate) const AUTH: u8 = 0x03;
    pub(crate) const AUTH_OK: u8 = 0x04;
    pub(crate) const ERROR: u8 = 0x05;
    pub(crate) const OPEN_DISK: u8 = 0x10;
    pub(crate) const MANIFEST: u8 = 0x11;
    pub const CHUNK: u8 = 0x12;
    pub(crate) const ZERO: u8 = 0x13;
    pub(crate) const ACK: u8 = 0x14;
    pub(crate) const FINISH: u8 = 0x15;
    pub(crate) const DISK_VERIFIED: u8 = 0x16;
    pub(crate) const PROBE: u8 = 0x20;
    pub(crate) const PROBE_ACK: u8 = 0x21;
    pub(crate) const DISK_NAMES: u8 = 0x17;
    pub(crate) const END_ROUND: u8 = 0x30;
    pub(crate) const ROUND_STATUS: u8 = 0x31;
    pub(crate) const PING: u8 = 0x40;
    pub(crate) const PONG: u8 = 0x41;
    pub(crate) const STREAM_KEY: u8 = 0x18;
    pub(crate) const ATTACH: u8 = 0x19;
    pub(crate) const BANDWIDTH: u8 = 0x50;
    pub(crate) const OPEN_TREE: u8 = 0x60;
    pub(crate) const TREE_MANIFEST: u8 = 0x61;
    pub(crate) const ENTRY: u8 = 0x62;
    pub(crate) const FILE_DATA: u8 = 0x63;
    pub(crate) const FILE_END: u8 = 0x64;
    pub(crate) const REMOVE: u8 = 0x65;
    pub(crate) const CLOSE_TREE: u8 = 0x66;
    pub(crate) const TREE_CLOSED: u8 = 0x67;
    pub(crate) const SOURCE_LAYOUT: u8 = 0x68;
    pub(crate) const TARGETS_READY: u8 = 0x69;
}

/// Most bytes of a SourceLayout frame's JSON.
pub const MAX_SOURCE_LAYOUT: usize = 48 << 10;

/// Most names in a DiskNames frame.
pub const MAX_DISK_NAMES: usize = 32;

/// Bytes of a frame's head: its type and its length.
const HEADER: usize = 5;

/// Which room encodes and parses frames of type `ty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Handshake,
    Disk,
    Tree,
    Control,
}

impl Family {
    fn of(ty: u8) -> Family {
        match ty {
            0x01..=0x0f => Family::Handshake,
            0x10..=0x1f => Family::Disk,
            0x60..=0x6f => Family::Tree,
            _ => Family::Control,
        }
    }
}

/// The name of frame type `ty`, as errors and logs write it; None for a
/// type the protocol does not have.
fn kind_name(ty: u8) -> Option<&'static str> {
    Some(match ty {
        ty::HELLO => "Hello",
        ty::CHALLENGE => "Challenge",
        ty::AUTH => "Auth",
        ty::AUTH_OK => "AuthOk",
        ty::ERROR => "Error",
        ty::OPEN_DISK => "OpenDisk",
        ty::MANIFEST => "Manifest",
        ty::CHUNK => "Chunk",
        ty::ZERO => "Zero",
        ty::ACK => "Ack",
        ty::FINISH => "Finish",
        // The frame's name from before its variant was DiskVerified: peers'
        // errors and logs name it so.
        ty::DISK_VERIFIED => "Finished",
        ty::PROBE => "Probe",
        ty::PROBE_ACK => "ProbeAck",
        ty::DISK_NAMES => "DiskNames",
        ty::END_ROUND => "EndRound",
        ty::ROUND_STATUS => "RoundStatus",
        ty::PING => "Ping",
        ty::PONG => "Pong",
        ty::STREAM_KEY => "StreamKey",
        ty::ATTACH => "Attach",
        ty::BANDWIDTH => "Bandwidth",
        ty::OPEN_TREE => "OpenTree",
        ty::TREE_MANIFEST => "TreeManifest",
        ty::ENTRY => "Entry",
        ty::FILE_DATA => "FileData",
        ty::FILE_END => "FileEnd",
        ty::REMOVE => "Remove",
        ty::CLOSE_TREE => "CloseTree",
        ty::TREE_CLOSED => "TreeClosed",
        ty::SOURCE_LAYOUT => "SourceLayout",
        ty::TARGETS_READY => "TargetsReady",
        _ => return None,
    })
}

impl Frame {
    /// The frame's type byte on the wire.
    fn ty(&self) -> u8 {
        match self {
            Frame::Hello { .. } => ty::HELLO,
            Frame::Challenge { .. } => ty::CHALLENGE,
            Frame::Auth { .. } => ty::AUTH,
            Frame::AuthOk { .. } => ty::AUTH_OK,
            Frame::Error { .. } => ty::ERROR,
            Frame::OpenDisk { .. } => ty::OPEN_DISK,
            Frame::Manifest { .. } => ty::MANIFEST,
            Frame::Chunk { .. } | Frame::ChunkHead { .. } => ty::CHUNK,
            Frame::Zero { .. } => ty::ZERO,
            Frame::Ack { .. } => ty::ACK,
            Frame::Finish { .. } => ty::FINISH,
            Frame::DiskVerified { .. } => ty::DISK_VERIFIED,
            Frame::Probe { .. } => ty::PROBE,
            Frame::ProbeAck { .. } => ty::PROBE_ACK,
            Frame::DiskNames { .. } => ty::DISK_NAMES,
            Frame::EndRound => ty::END_ROUND,
            Frame::RoundStatus { .. } => ty::ROUND_STATUS,
            Frame::Ping => ty::PING,
            Frame::Pong => ty::PONG,
            Frame::StreamKey { .. } => ty::STREAM_KEY,
            Frame::Attach { .. } => ty::ATTACH,
            Frame::Bandwidth { .. } => ty::BANDWIDTH,
            Frame::OpenTree { .. } => ty::OPEN_TREE,
            Frame::TreeManifest { .. } => ty::TREE_MANIFEST,
            Frame::Entry { .. } => ty::ENTRY,
            Frame::FileData { .. } => ty::FILE_DATA,
            Frame::FileEnd { .. } => ty::FILE_END,
            Frame::Remove { .. } => ty::REMOVE,
            Frame::CloseTree { .. } => ty::CLOSE_TREE,
            Frame::TreeClosed { .. } => ty::TREE_CLOSED,
            Frame::SourceLayout { .. } => ty::SOURCE_LAYOUT,
            Frame::TargetsReady { .. } => ty::TARGETS_READY,
        }
    }

    pub fn name(&self) -> &'static str {
        // Invariant: every type byte of `ty()` is in the table of names
        // (the round-trip test names every variant).
        kind_name(self.ty()).unwrap_or("unnamed")
    }

    fn encode_into(&self, dst: &mut BytesMut) {
        let ty = self.ty();
        let start = dst.len();
        dst.put_u8(ty);
        dst.put_u32(0);
        match Family::of(ty) {
            Family::Handshake => handshake::encode(self, dst),
            Family::Disk => disk::encode(self, dst),
            Family::Tree => tree::encode(self, dst),
            Family::Control => control::encode(self, dst),
        }
        let len = (dst.len() - start - HEADER) as u32;
        dst[start + 1..start + HEADER].copy_from_slice(&len.to_be_bytes());
    }

    /// Parse the body of a frame of type `ty`: the whole body, nothing
    /// after its last field.
    fn parse(ty: u8, body: Bytes) -> Result<Frame, WireError> {
        let kind = kind_name(ty).ok_or(WireError::UnknownType(ty))?;
        let mut r = Reader::new(kind, body);
        let frame = match Family::of(ty) {
            Family::Handshake => handshake::parse(ty, &mut r),
            Family::Disk => disk::parse(ty, &mut r),
            Family::Tree => tree::parse(ty, &mut r),
            Family::Control => control::parse(ty, &mut r),
        }?;
        r.finish()?;
        Ok(frame)
    }
}

/// Encode one frame into fresh bytes (tests and raw writers).
pub fn encode(frame: &Frame) -> BytesMut {
    let mut b = BytesMut::new();
    frame.encode_into(&mut b);
    b
}

/// The error for a frame other than the one the protocol expects next:
/// UNEXPECTED_FRAME, naming both.
pub(crate) fn unexpected(expected: &str, got: &Frame) -> anyhow::Error {
    coded(
        ErrorCode::UnexpectedFrame,
        format!("expected {expected}, got {}", got.name()),
    )
}
