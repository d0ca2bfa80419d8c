//! The frames that steer a session rather than carry its data: the
//! throughput probe, the link's heartbeat, the bandwidth limit, and the end
//! of a round with the appliance's reports of where it is.

use bytes::{BufMut, BytesMut};

use super::body::Reader;
use super::{ty, Frame, RoundEvent, WireError};
use crate::job::state::JobStatus;
use crate::job::step::Step;

pub(super) fn encode(frame: &Frame, dst: &mut BytesMut) {
    match frame {
        Frame::Probe { payload } => dst.put_slice(payload),
        Frame::ProbeAck { bytes } => dst.put_u64(*bytes),
        Frame::EndRound | Frame::Ping | Frame::Pong => {}
        Frame::Bandwidth { bytes_per_sec } => dst.put_u64(*bytes_per_sec),
        Frame::RoundStatus { status, event } => {
            dst.put_u8(status.wire_code());
            let (kind, step) = match event {
                RoundEvent::Step(s) => (0, s.wire_code()),
                RoundEvent::Done => (1, 0),
                RoundEvent::AwaitingDisks => (2, 0),
            };
            dst.put_u8(kind);
            dst.put_u8(step);
        }
        // Invariant: the frame's type byte chose this family.
        other => unreachable!("{} is not a control frame", other.name()),
    }
}

pub(super) fn parse(ty: u8, r: &mut Reader) -> Result<Frame, WireError> {
    Ok(match ty {
        ty::PROBE => Frame::Probe { payload: r.rest() },
        ty::PROBE_ACK => Frame::ProbeAck { bytes: r.u64()? },
        ty::END_ROUND => Frame::EndRound,
        ty::PING => Frame::Ping,
        ty::PONG => Frame::Pong,
        ty::BANDWIDTH => Frame::Bandwidth {
            bytes_per_sec: r.u64()?,
        },
        ty::ROUND_STATUS => {
            let status =
                JobStatus::from_wire_code(r.u8()?).ok_or_else(|| r.malformed("unknown status"))?;
            let kind = r.u8()?;
            let step = r.u8()?;
            let event = match (kind, step) {
                (0, s) => RoundEvent::Step(
                    Step::from_wire_code(s).ok_or_else(|| r.malformed("unknown step"))?,
                ),
                (1, 0) => RoundEvent::Done,
                (2, 0) => RoundEvent::AwaitingDisks,
                _ => return Err(r.malformed("unknown event")),
            };
            Frame::RoundStatus { status, event }
        }
        other => return Err(WireError::UnknownType(other)),
    })
}
