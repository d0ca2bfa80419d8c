//! The frames' tests: every frame type round-trips and keeps its golden
//! bytes, the codec splits and bounds what it reads, and every refusal's
//! text is exact.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use super::*;
use crate::entry::{Kind, Time};

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
        Frame::DiskVerified {
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
            status: JobStatus::Finished,
            event: RoundEvent::Done,
        },
        Frame::RoundStatus {
            status: JobStatus::PROCESSING,
            event: RoundEvent::Step(Step::Verify),
        },
        Frame::RoundStatus {
            status: JobStatus::SYNCING,
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

/// Every frame type the protocol has is among the samples, so the round
/// trip and the golden bytes below cover them all.
#[test]
fn the_samples_hold_every_frame_type() {
    let sampled: std::collections::BTreeSet<u8> = samples().iter().map(Frame::ty).collect();
    let known: std::collections::BTreeSet<u8> =
        (0..=u8::MAX).filter(|t| kind_name(*t).is_some()).collect();
    assert_eq!(sampled, known);
    for f in samples() {
        assert_ne!(f.name(), "unnamed", "{f:?}");
    }
}

/// The bytes of some frames as the protocol fixes them, and a digest of
/// every sample's bytes: a change to any frame's encoding fails here.
#[test]
fn frames_encode_to_their_golden_bytes() {
    let samples = samples();
    let first = |name: &str| {
        let f = samples.iter().find(|f| f.name() == name).unwrap();
        hex::encode(encode(f))
    };
    let cases = [
        ("Hello", "010000002200010707070707070707070707070707070707070707070707070707070707070707"),
        ("Manifest", "1100000069000000010000000000002000000000004000000001000000020000000000002001010101010101010101010101010101010101010101010101010101010101010100000000200000000202020202020202020202020202020202020202020202020202020202020202"),
        ("Chunk", "1200000030000000000000000000000005020202020202020202020202020202020202020202020202020202020202020201616263"),
        ("Finish", "150000003400000000030303030303030303030303030303030303030303030303030303030303030300000000000000040000000000000005"),
        ("Finished", "1600000024000000000404040404040404040404040404040404040404040404040404040404040404"),
        ("RoundStatus", "3100000003070100"),
        ("TreeManifest", "610000005e00000001010000000100066574632fff78030000000000000003000000000000000100000002000000000000000300000004000001ff00000000000000000101010101010101010101010101010101010101010101010101010101010101"),
        ("TargetsReady", "690000000b0100086c616964206f7574"),
    ];
    for (name, hex) in cases {
        assert_eq!(first(name), hex, "{name}");
    }
    let all: Vec<u8> = samples.iter().flat_map(|f| encode(f).to_vec()).collect();
    assert_eq!(
        blake3::hash(&all).to_hex().as_str(),
        "986f42b2004ecab8c9cc0d631e92c1c6cd72268ad046150be3a4773c3f40380a"
    );
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
