//! The connection a session speaks over, and the two things every room of
//! the data port does with it: send a frame within the link's timeout, and
//! tell whether the read buffer holds another whole frame.

use anyhow::Result;
use futures::SinkExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;

use crate::job::errors::{coded, ErrorCode};
use crate::wire::{self, Frame, FrameCodec};

/// TLS over a buffered socket: rustls reads its records a few KiB at a
/// time, and a read buffer turns those reads into one system call per
/// [`READ_BUFFER`] rather than one per record.
pub(crate) type Conn = Framed<TlsStream<tokio::io::BufReader<TcpStream>>, FrameCodec>;

/// Bytes read from a data socket at once.
pub(crate) const READ_BUFFER: usize = 256 << 10;

/// Send a frame within [`wire::LINK_TIMEOUT`]: a write that cannot go out
/// for that long meets a silent link (the kernel's TCP_USER_TIMEOUT says the
/// same a moment later).
pub(crate) async fn send_within(conn: &mut Conn, frame: Frame) -> Result<()> {
    match tokio::time::timeout(wire::LINK_TIMEOUT, conn.send(frame)).await {
        Ok(r) => r.map_err(|e| {
            coded(
                ErrorCode::TransferInterrupted,
                format!("sending to the sender: {e}"),
            )
        }),
        Err(_) => Err(coded(
            ErrorCode::TransferInterrupted,
            format!(
                "a frame could not be sent for {} s: the link is silent",
                wire::LINK_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Whether the connection's buffer holds another whole frame.
pub(crate) fn frame_ready(buf: &[u8]) -> bool {
    buf.len() >= 5 && buf.len() - 5 >= u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ready_needs_a_whole_frame_in_the_buffer() {
        // A frame: kind (1 byte), body length (u32, big-endian), body.
        let cases: [(&str, &[u8], bool); 6] = [
            ("empty", &[], false),
            ("header cut", &[7, 0, 0, 0], false),
            ("empty body", &[7, 0, 0, 0, 0], true),
            ("body cut", &[7, 0, 0, 0, 3, 1, 2], false),
            ("whole body", &[7, 0, 0, 0, 3, 1, 2, 3], true),
            ("and more", &[7, 0, 0, 0, 1, 1, 9, 0], true),
        ];
        for (name, buf, want) in cases {
            assert_eq!(frame_ready(buf), want, "{name}");
        }
    }

    #[test]
    fn a_length_past_the_buffer_is_not_ready() {
        assert!(!frame_ready(&[7, 0xff, 0xff, 0xff, 0xff, 0]));
        assert!(!frame_ready(&[7, 0, 1, 0, 0]));
    }
}
