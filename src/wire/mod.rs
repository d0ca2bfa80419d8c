//! The wire protocol shared by `ferry serve` and `ferry send` (port 8703).
//!
//! Every frame is `[type: u8][length: u32 BE][payload]`. The decoder checks
//! the length against its bound before it reserves a byte for the payload,
//! and the bound is tiny until the peer has authenticated.

pub mod auth;
pub mod frame;
pub mod tls;

pub(crate) use frame::unexpected;
pub use frame::{Frame, FrameCodec, RoundEvent, WireError, MAX_DISK_NAMES};

/// Bumped on any incompatible change of the frames below.
pub const PROTOCOL_VERSION: u16 = 4;

/// The smallest bandwidth limit (bytes per second): below it a 4 MiB
/// chunk takes a minute, and a limit that low is a typo more likely than
/// a link.
pub(crate) const MIN_BANDWIDTH: u64 = 64 << 10;

/// Default data port of the appliance.
pub(crate) const DEFAULT_DATA_PORT: u16 = 8703;

/// Frames allowed before authentication: Hello, Challenge, Auth, AuthOk, Error.
pub(crate) const PREAUTH_MAX_FRAME: usize = 1024;

/// Chunk sizes a sender may choose: powers of two in this range.
pub(crate) const MIN_CHUNK_SIZE: u32 = 64 * 1024;
pub(crate) const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
pub(crate) const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// Fixed part of a chunk frame besides its payload (disk, index, hash, flags).
pub(crate) const CHUNK_HEADER_LEN: usize = 4 + 8 + 32 + 1;

/// Entries (committed chunks) in one manifest page, and chunk indices in one ack.
pub(crate) const MANIFEST_PAGE: usize = 8192;
pub(crate) const MAX_ACK_ENTRIES: usize = 8192;

/// A side that has sent nothing for this long sends a Ping (the sender) or
/// hears one (the appliance).
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// A link on which nothing arrived for this long, while the peer owed a
/// frame (a Pong, an ack, a heartbeat), is silent: a cut that left both ends
/// half-open. Each side then closes it; the sender reconnects and its new
/// session takes the disks over. Also the bound on one frame's write, and the
/// TCP_USER_TIMEOUT of both sockets (unacknowledged data for this long).
pub const LINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest frame after authentication for a session using `chunk_size`.
pub(crate) fn postauth_max_frame(chunk_size: u32) -> usize {
    let manifest = 4 + 8 + 8 + 1 + 4 + MANIFEST_PAGE * 40;
    (chunk_size as usize + CHUNK_HEADER_LEN).max(manifest)
}

/// Is this a chunk size the protocol allows?
pub(crate) fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size)
}

/// Socket options both ends set on a data connection: no Nagle delay, and
/// a cut link noticed by the kernel too — keepalive probes on an idle link,
/// and TCP_USER_TIMEOUT on data (or a zero window) left unacknowledged for
/// [`LINK_TIMEOUT`], which also ends a write that would wait forever.
pub(crate) fn tune_socket(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(HEARTBEAT)
            .with_interval(std::time::Duration::from_secs(5))
            .with_retries(4),
    )?;
    sock.set_tcp_user_timeout(Some(LINK_TIMEOUT))
}
