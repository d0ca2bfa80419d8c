//! The wire protocol shared by `ferry serve` and `ferry send` (port 8703).
//!
//! Every frame is `[type: u8][length: u32 BE][payload]`. The decoder checks
//! the length against its bound before it reserves a byte for the payload,
//! and the bound is tiny until the peer has authenticated.

pub mod auth;
pub mod frame;
pub mod tls;

pub use frame::{Frame, FrameCodec, RoundEvent, WireError, MAX_DISK_NAMES};

/// Bumped on any incompatible change of the frames below.
pub const PROTOCOL_VERSION: u16 = 2;

/// Default data port of the appliance.
pub const DEFAULT_DATA_PORT: u16 = 8703;

/// Frames allowed before authentication: Hello, Challenge, Auth, AuthOk, Error.
pub const PREAUTH_MAX_FRAME: usize = 1024;

/// Chunk sizes a sender may choose: powers of two in this range.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// Fixed part of a chunk frame besides its payload (disk, index, hash, flags).
pub const CHUNK_HEADER_LEN: usize = 4 + 8 + 32 + 1;

/// Hash entries in one manifest page, and chunk indices in one ack.
pub const MANIFEST_PAGE: usize = 8192;
pub const MAX_ACK_ENTRIES: usize = 8192;

/// Largest frame after authentication for a session using `chunk_size`.
pub fn postauth_max_frame(chunk_size: u32) -> usize {
    let manifest = 4 + 8 + 1 + 4 + MANIFEST_PAGE * 33;
    (chunk_size as usize + CHUNK_HEADER_LEN).max(manifest)
}

/// Is this a chunk size the protocol allows?
pub fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size)
}
