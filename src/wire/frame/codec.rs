//! The codec that cuts frames out of a connection's bytes and writes them
//! back: `[type: u8][length: u32 BE][body]`, the length checked against a
//! bound that the owner tightens or widens as the session goes.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{disk, ty, Frame, WireError, HEADER};
use crate::wire::CHUNK_HEADER_LEN;

/// Length-prefixed frames with a bound that the owner tightens or widens as
/// the session goes (tiny before authentication).
#[derive(Debug)]
pub struct FrameCodec {
    max: usize,
    split: bool,
}

/// Smallest payload a codec that splits chunks leaves to its reader.
const SPLIT_MIN: usize = 64 << 10;

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

    pub(crate) fn set_max(&mut self, max: usize) {
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
            let head = HEADER + CHUNK_HEADER_LEN;
            if self.split
                && ty == ty::CHUNK
                && len >= CHUNK_HEADER_LEN + SPLIT_MIN
                && src.len() >= head
                && src[head - 1] == 0
            {
                let mut h = src.split_to(head).freeze();
                h.advance(HEADER);
                return disk::parse_chunk_head(h, len).map(Some);
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
