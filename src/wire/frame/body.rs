//! A frame's body: the [`Reader`] every parser reads it with, and the few
//! encodings of more than one field that writers share (texts, byte strings
//! with a u16 length).
//!
//! The reader is told the frame's kind once, so every refusal names it;
//! every read is checked against the bytes left, and no count from the wire
//! sizes an allocation beyond what the body itself holds.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WireError;

/// Longest string in a frame (an Error frame's texts, a disk's names).
pub(super) const MAX_TEXT: usize = 4096;

/// The body of one frame of kind `kind`, read front to back.
pub(super) struct Reader {
    kind: &'static str,
    body: Bytes,
}

impl Reader {
    pub(super) fn new(kind: &'static str, body: Bytes) -> Reader {
        Reader { kind, body }
    }

    /// The refusal of this frame for `why`.
    pub(super) fn malformed(&self, why: &'static str) -> WireError {
        WireError::Malformed {
            kind: self.kind,
            why,
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.body.remaining()
    }

    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.body.remaining() < n {
            Err(self.malformed("payload too short"))
        } else {
            Ok(())
        }
    }

    pub(super) fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.body.get_u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.body.get_u16())
    }

    pub(super) fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.body.get_u32())
    }

    pub(super) fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.body.get_u64())
    }

    pub(super) fn i64(&mut self) -> Result<i64, WireError> {
        self.need(8)?;
        Ok(self.body.get_i64())
    }

    /// 32 bytes: a hash, a nonce, a proof or a key.
    pub(super) fn bytes32(&mut self) -> Result<[u8; 32], WireError> {
        self.need(32)?;
        let mut out = [0u8; 32];
        self.body.copy_to_slice(&mut out);
        Ok(out)
    }

    /// A byte that is 0 or 1; anything else is refused for `why`.
    pub(super) fn flag(&mut self, why: &'static str) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.malformed(why)),
        }
    }

    /// The next `n` bytes, without a copy.
    pub(super) fn take(&mut self, n: usize) -> Result<Bytes, WireError> {
        self.need(n)?;
        Ok(self.body.split_to(n))
    }

    /// Whatever is left of the body (a payload), without a copy.
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    /// Raw bytes with a u16 length (paths, symlink targets, names), at most
    /// `max` of them.
    pub(super) fn bytes16(&mut self, max: usize) -> Result<Vec<u8>, WireError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(self.malformed("a path or name longer than allowed"));
        }
        Ok(self.take(len)?.to_vec())
    }

    /// A length-prefixed text. Its refusals name the Error frame whatever
    /// frame holds the text, as they always have: the messages are part of
    /// what a peer sees.
    pub(super) fn text(&mut self) -> Result<String, WireError> {
        let mut as_error = Reader::new("Error", std::mem::take(&mut self.body));
        let text = as_error.text_of_error();
        self.body = as_error.body;
        text
    }

    fn text_of_error(&mut self) -> Result<String, WireError> {
        let len = self.u16()? as usize;
        if len > MAX_TEXT {
            return Err(self.malformed("text too long"));
        }
        let raw = self.take(len)?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    /// The end of the frame: nothing may follow its last field.
    pub(super) fn finish(self) -> Result<(), WireError> {
        if self.body.has_remaining() {
            return Err(self.malformed("trailing bytes"));
        }
        Ok(())
    }
}

/// A length-prefixed UTF-8 string, cut at MAX_TEXT bytes on a character
/// boundary.
pub(super) fn put_text(dst: &mut BytesMut, s: &str) {
    let end = char_floor(s, MAX_TEXT);
    dst.put_u16(end as u16);
    dst.put_slice(&s.as_bytes()[..end]);
}

/// Raw bytes with a u16 length (paths, symlink targets).
pub(super) fn put_bytes16(dst: &mut BytesMut, b: &[u8]) {
    let b = &b[..b.len().min(u16::MAX as usize)];
    dst.put_u16(b.len() as u16);
    dst.put_slice(b);
}

/// `s` cut to at most MAX_TEXT bytes on a character boundary.
pub(super) fn truncate(mut s: String) -> String {
    s.truncate(char_floor(&s, MAX_TEXT));
    s
}

/// The largest character boundary of `s` at or below `max`.
fn char_floor(s: &str, max: usize) -> usize {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}
