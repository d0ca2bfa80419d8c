//! The handshake's frames (Hello, Challenge, Auth, AuthOk) and Error, the
//! refusal either side may send at any time: the frames allowed before
//! authentication.

use bytes::{BufMut, BytesMut};

use super::body::{put_text, truncate, Reader};
use super::{ty, Frame, WireError};
use crate::job::errors::ErrorCode;

impl Frame {
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
}

pub(super) fn encode(frame: &Frame, dst: &mut BytesMut) {
    match frame {
        Frame::Hello { version, nonce } | Frame::Challenge { version, nonce } => {
            dst.put_u16(*version);
            dst.put_slice(nonce);
        }
        Frame::Auth { proof } | Frame::AuthOk { proof } => dst.put_slice(proof),
        Frame::Error {
            code,
            message,
            hint,
        } => {
            for s in [code, message, hint] {
                put_text(dst, s);
            }
        }
        // Invariant: the frame's type byte chose this family.
        other => unreachable!("{} is not a handshake frame", other.name()),
    }
}

pub(super) fn parse(ty: u8, r: &mut Reader) -> Result<Frame, WireError> {
    Ok(match ty {
        ty::HELLO => Frame::Hello {
            version: r.u16()?,
            nonce: r.bytes32()?,
        },
        ty::CHALLENGE => Frame::Challenge {
            version: r.u16()?,
            nonce: r.bytes32()?,
        },
        ty::AUTH => Frame::Auth {
            proof: r.bytes32()?,
        },
        ty::AUTH_OK => Frame::AuthOk {
            proof: r.bytes32()?,
        },
        ty::ERROR => Frame::Error {
            code: r.text()?,
            message: r.text()?,
            hint: r.text()?,
        },
        other => return Err(WireError::UnknownType(other)),
    })
}
