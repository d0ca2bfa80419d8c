//! Bad input over a real socket: each refusal closes the connection with a
//! code the sender sees, is counted, changes no byte of the target, and the
//! appliance keeps serving.

use crate::common::serve::*;
use bytes::Bytes;
use ferry::job::errors::find_coded;
use ferry::send::client::{self, Conn};
use ferry::wire::Frame;
use tokio::io::AsyncWriteExt;

const SIZE: u64 = 8 << 20;
const CHUNK: u32 = 4 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    server: Server,
    src: std::path::PathBuf,
    before: String,
}

/// A server whose disk 0 already holds an 8 MiB source.
fn fixture(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    mixed_image(&src, SIZE >> 20, 9);
    let server = Server::start(&dir.path().join("state"), extra);
    let sent = server.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    let before = file_hash(&server.disk_path(0));
    // The raw connections below are the next round's senders.
    server.start_next_round_if_held();
    Fixture {
        _dir: dir,
        server,
        src,
        before,
    }
}

impl Fixture {
    /// The refusal was counted, the target is untouched, and a sender still gets through.
    fn assert_intact(&self, code: &str) {
        let counted = self
            .server
            .metric(&format!("ferry_session_errors_total{{code=\"{code}\"}}"));
        assert!(counted >= 1.0, "{code} not counted");
        assert_eq!(
            self.before,
            file_hash(&self.server.disk_path(0)),
            "target changed after {code}"
        );
        let again = self.server.send(&[&self.src], &[]);
        assert!(
            again.ok(),
            "server stopped serving after {code}: {}",
            again.stderr()
        );
        assert_eq!(self.before, file_hash(&self.server.disk_path(0)));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn authed(s: &Server) -> Conn {
    client::connect(&s.data, &s.token, &s.fingerprint)
        .await
        .unwrap()
}

/// Send OpenDisk, and nothing else.
async fn announce(conn: &mut Conn, disk: u32, size: u64, chunk_size: u32) {
    client::send(
        conn,
        Frame::OpenDisk {
            disk,
            size,
            chunk_size,
        },
    )
    .await
    .unwrap();
}

/// Open a disk: OpenDisk, then its whole manifest.
async fn open(conn: &mut Conn, disk: u32, size: u64, chunk_size: u32) {
    announce(conn, disk, size, chunk_size).await;
    loop {
        match client::recv(conn).await.unwrap() {
            Frame::Manifest { last: true, .. } => break,
            Frame::Manifest { .. } => continue,
            other => panic!("expected a manifest, got {other:?}"),
        }
    }
    // The key for data streams, and the job's bandwidth limit.
    match client::recv(conn).await.unwrap() {
        Frame::StreamKey { disk: d, .. } if d == disk => {}
        other => panic!("expected a stream key, got {other:?}"),
    }
    match client::recv(conn).await.unwrap() {
        Frame::Bandwidth { bytes_per_sec: 0 } => {}
        other => panic!("expected the bandwidth limit (none), got {other:?}"),
    }
}

/// Read until the appliance's Error frame; return its code.
async fn refusal(conn: &mut Conn) -> String {
    loop {
        match client::recv(conn).await {
            Ok(Frame::Ack { .. }) => continue,
            Ok(other) => panic!("expected a refusal, got {other:?}"),
            Err(e) => {
                return find_coded(&e)
                    .map(|c| c.code.as_str().to_owned())
                    .unwrap_or_else(|| format!("{e:#}"))
            }
        }
    }
}

#[test]
fn wrong_token_is_refused_counted_and_hinted() {
    let f = fixture(&[]);
    let sent = send_to(
        &f.server.data,
        "wrong-token-wrong-token",
        &f.server.fingerprint,
        &[&f.src],
        &[],
    );
    assert!(!sent.ok());
    let err = sent.stderr();
    assert!(err.contains("AUTH_FAILED: Authentication failed"), "{err}");
    assert!(err.contains("hint: Pass the job's token"), "{err}");
    assert_eq!(f.server.metric("ferry_auth_failures_total"), 1.0);
    f.assert_intact("AUTH_FAILED");
}

#[test]
fn wrong_fingerprint_is_refused_before_anything_is_sent() {
    let f = fixture(&[]);
    let sent = send_to(
        &f.server.data,
        &f.server.token,
        &"ab".repeat(32),
        &[&f.src],
        &[],
    );
    assert!(!sent.ok());
    let err = sent.stderr();
    assert!(err.contains("TLS_FINGERPRINT_MISMATCH"), "{err}");
    assert!(
        err.contains(&format!("presented {}", f.server.fingerprint)),
        "{err}"
    );
    assert_eq!(f.server.metric("ferry_auth_failures_total"), 0.0);
    f.assert_intact("TLS_HANDSHAKE_FAILED");
}

#[test]
fn plaintext_connection_gets_a_framed_refusal() {
    use std::io::{Read, Write};
    let f = fixture(&[]);
    let mut s = std::net::TcpStream::connect(&f.server.data).unwrap();
    s.write_all(b"\x01\x00\x00\x00\x22hello in the clear")
        .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let mut buf = bytes::BytesMut::from(&resp[..]);
    let frame =
        tokio_util::codec::Decoder::decode(&mut ferry::wire::FrameCodec::new(1 << 16), &mut buf)
            .unwrap()
            .unwrap();
    match frame {
        Frame::Error { code, .. } => assert_eq!(code, "TLS_REQUIRED"),
        other => panic!("{other:?}"),
    }
    f.assert_intact("TLS_REQUIRED");
}

#[test]
fn protocol_version_and_preauth_bound() {
    let f = fixture(&[]);
    rt().block_on(async {
        let (mut conn, _) = client::connect_tls(&f.server.data, &f.server.fingerprint)
            .await
            .unwrap();
        client::send(
            &mut conn,
            Frame::Hello {
                version: 99,
                nonce: [0; 32],
            },
        )
        .await
        .unwrap();
        assert_eq!(refusal(&mut conn).await, "PROTOCOL_VERSION");

        // Before authentication a frame may not exceed 1 KiB: a 2 GiB claim
        // is refused from its header alone.
        let (mut conn, _) = client::connect_tls(&f.server.data, &f.server.fingerprint)
            .await
            .unwrap();
        conn.get_mut()
            .write_all(&[0x01, 0x7f, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        conn.get_mut().flush().await.unwrap();
        assert_eq!(refusal(&mut conn).await, "FRAME_TOO_LARGE");
    });
    f.assert_intact("PROTOCOL_VERSION");
    f.assert_intact("FRAME_TOO_LARGE");
}

#[test]
fn truncated_frame() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        // A chunk header promising 1000 bytes, then 10 bytes and the end.
        conn.get_mut()
            .write_all(&[0x12, 0, 0, 0x03, 0xe8])
            .await
            .unwrap();
        conn.get_mut().write_all(&[0u8; 10]).await.unwrap();
        conn.get_mut().shutdown().await.unwrap();
        assert_eq!(refusal(&mut conn).await, "FRAME_MALFORMED");
    });
    f.assert_intact("FRAME_MALFORMED");
}

#[test]
fn frame_over_the_chunk_bound_and_unknown_type() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        let len = CHUNK + 1024 * 1024;
        let mut hdr = vec![0x12];
        hdr.extend_from_slice(&len.to_be_bytes());
        conn.get_mut().write_all(&hdr).await.unwrap();
        conn.get_mut().flush().await.unwrap();
        assert_eq!(refusal(&mut conn).await, "FRAME_TOO_LARGE");

        let mut conn = authed(&f.server).await;
        conn.get_mut().write_all(&[0x7f, 0, 0, 0, 0]).await.unwrap();
        conn.get_mut().flush().await.unwrap();
        assert_eq!(refusal(&mut conn).await, "UNEXPECTED_FRAME");
    });
    f.assert_intact("FRAME_TOO_LARGE");
    f.assert_intact("UNEXPECTED_FRAME");
}

#[test]
fn chunk_whose_hash_does_not_match() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        let payload = Bytes::from(vec![0x5a; CHUNK as usize]);
        let frame = Frame::Chunk {
            disk: 0,
            index: 1,
            hash: [7; 32],
            compressed: false,
            payload,
        };
        client::send(&mut conn, frame).await.unwrap();
        assert_eq!(refusal(&mut conn).await, "CHUNK_HASH_MISMATCH");
    });
    assert_eq!(
        f.server.metric("ferry_chunks_total{outcome=\"rejected\"}"),
        1.0
    );
    f.assert_intact("CHUNK_HASH_MISMATCH");
}

#[test]
fn zstd_payload_that_expands_past_the_chunk() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        let big = vec![0x11u8; 64 << 20];
        let bomb = zstd::bulk::compress(&big, 3).unwrap();
        assert!(bomb.len() < 64 * 1024);
        let hash = *blake3::hash(&big[..CHUNK as usize]).as_bytes();
        let frame = Frame::Chunk {
            disk: 0,
            index: 0,
            hash,
            compressed: true,
            payload: Bytes::from(bomb),
        };
        client::send(&mut conn, frame).await.unwrap();
        assert_eq!(refusal(&mut conn).await, "CHUNK_DECOMPRESS");
    });
    f.assert_intact("CHUNK_DECOMPRESS");
}

#[test]
fn finish_with_a_digest_that_is_not_the_targets_is_refused() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        let frame = Frame::Finish {
            disk: 0,
            digest: [7; 32],
            unchanged: 0,
            zero_skipped: 0,
        };
        client::send(&mut conn, frame).await.unwrap();
        assert_eq!(refusal(&mut conn).await, "DIGEST_MISMATCH");
    });
    // The disk is not verified and the round did not end.
    let (_, body) = f.server.control("GET", "/v1/job");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["disks"][0]["verified"], false, "{job}");
    assert_eq!(job["rounds_completed"], 1, "{job}");
    f.assert_intact("DIGEST_MISMATCH");
}

#[test]
fn chunk_beyond_the_announced_disk() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        let payload = Bytes::from(vec![1u8; 16]);
        let hash = *blake3::hash(&payload).as_bytes();
        client::send(
            &mut conn,
            Frame::Chunk {
                disk: 0,
                index: 2,
                hash,
                compressed: false,
                payload,
            },
        )
        .await
        .unwrap();
        assert_eq!(refusal(&mut conn).await, "CHUNK_OUT_OF_RANGE");
        drop(conn);
        // A short chunk inside the disk is refused too: lengths must match.
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        let payload = Bytes::from(vec![1u8; 16]);
        let hash = *blake3::hash(&payload).as_bytes();
        client::send(
            &mut conn,
            Frame::Chunk {
                disk: 0,
                index: 1,
                hash,
                compressed: false,
                payload,
            },
        )
        .await
        .unwrap();
        assert_eq!(refusal(&mut conn).await, "CHUNK_OUT_OF_RANGE");
    });
    f.assert_intact("CHUNK_OUT_OF_RANGE");
}

#[test]
fn disk_index_not_configured_and_two_senders_on_one_disk() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        announce(&mut conn, 16, SIZE, CHUNK).await;
        assert_eq!(refusal(&mut conn).await, "DISK_NOT_CONFIGURED");

        let mut first = authed(&f.server).await;
        open(&mut first, 0, SIZE, CHUNK).await;
        let mut second = authed(&f.server).await;
        announce(&mut second, 0, SIZE, CHUNK).await;
        assert_eq!(refusal(&mut second).await, "DISK_BUSY");
        first.get_mut().shutdown().await.unwrap();
    });
    f.assert_intact("DISK_NOT_CONFIGURED");
    f.assert_intact("DISK_BUSY");
}

#[test]
fn production_targets_unmapped_and_too_small_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small-target.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    std::fs::write(&small, vec![0xee; 4 << 20]).unwrap();
    let before = file_hash(&small);
    let cfg = target_config(dir.path(), "a-long-enough-job-token", &[&small]);
    let mut server = Server::start(
        &dir.path().join("state"),
        &["--config", cfg.to_str().unwrap()],
    );
    server.token = "a-long-enough-job-token".into();
    let src = dir.path().join("src.img");
    mixed_image(&src, 8, 10);
    let sent = server.send(&[&src], &[]);
    assert!(!sent.ok());
    assert!(
        sent.stderr().contains("TARGET_TOO_SMALL"),
        "{}",
        sent.stderr()
    );
    let src2 = dir.path().join("src2.img");
    mixed_image(&src2, 8, 12);
    let sent = server.send(&[&src, &src2], &[]);
    assert!(!sent.ok());
    assert_eq!(before, file_hash(&small));
    let small_src = dir.path().join("small-src.img");
    mixed_image(&small_src, 3, 11);
    let small_src2 = dir.path().join("small-src2.img");
    mixed_image(&small_src2, 3, 13);
    let sent = server.send(&[&small_src, &small_src2], &[]);
    assert!(
        sent.stderr().contains("DISK_NOT_CONFIGURED"),
        "{}",
        sent.stderr()
    );
    // Disk 0 did arrive, on the configured target, before disk 1 was refused.
    let mut got = vec![0u8; 3 << 20];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(&small)
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert_eq!(got, std::fs::read(&small_src).unwrap());
}

/// A target that fills up (a file on a 48 MiB tmpfs, sparse at 128 MiB):
/// the sender gets TARGET_FULL with its hint, the job goes InError with the
/// same error in /v1/job, and what was committed stays. Once there is room
/// (the tmpfs grown) and the job is started again, the same send finishes
/// bit-exact without re-sending the committed chunks. Needs root (mount).
#[test]
fn a_full_target_puts_the_job_in_error_and_a_start_after_making_room_resumes() {
    need_root!("mounting a tmpfs");
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    ferry::cmd::Cmd::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "ferry-test-full"])
        .arg(&small)
        .run()
        .unwrap();
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = ferry::cmd::Cmd::new("umount").arg(&self.0).run();
        }
    }
    let _umount = Umount(small.clone());
    let target = small.join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let cfg = dir.path().join("ferry.toml");
    let (token, control) = ("a-long-enough-job-token", "a-long-enough-control-token");
    std::fs::write(
        &cfg,
        format!(
            "token = \"{token}\"\ncontrol_token = \"{control}\"\n[[disk]]\nindex = 0\ntarget = \"{}\"\n",
            target.display()
        ),
    )
    .unwrap();
    let mut server = Server::start(
        &dir.path().join("state"),
        &["--config", cfg.to_str().unwrap()],
    );
    server.token = token.into();
    let src = dir.path().join("src.img");
    // Random bytes throughout, so every chunk is written.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..128 {
            for b in buf.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b.copy_from_slice(&state.to_le_bytes()[..b.len()]);
            }
            f.write_all(&buf).unwrap();
        }
    }
    let code = ferry::job::errors::ErrorCode::TargetFull;
    let sent = server.send(&[&src], &["--retries", "0", "--zstd-level", "0"]);
    assert!(!sent.ok(), "the send succeeded on a full target");
    let err = sent.stderr();
    assert!(err.contains("TARGET_FULL"), "{err}");
    assert!(err.contains(code.hint()), "no hint in {err}");
    let auth = format!("Bearer {control}");
    let job = |s: &Server| -> serde_json::Value {
        let (status, body) = http(&s.control, "GET", "/v1/job", &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let j = job(&server);
    assert_eq!(j["state"], "InError", "{j}");
    assert_eq!(j["last_error"]["code"], "TARGET_FULL", "{j}");
    assert_eq!(j["last_error"]["hint"], code.hint(), "{j}");
    let committed = j["disks"][0]["committed"].as_u64().unwrap();
    assert!(
        committed > 0 && committed <= 48 << 20,
        "committed {committed}: {j}"
    );
    // InError refuses senders until started again.
    let refused = server.send(&[&src], &["--retries", "0"]);
    assert!(
        refused.stderr().contains("JOB_IN_ERROR"),
        "{}",
        refused.stderr()
    );

    // Make room, start the job, send again.
    ferry::cmd::Cmd::new("mount")
        .args(["-o", "remount,size=256m"])
        .arg(&small)
        .run()
        .unwrap();
    let (status, body) = http(
        &server.control,
        "POST",
        "/v1/job/start",
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 200, "{body}");
    let sent = server.send(&[&src], &["--zstd-level", "0"]);
    assert!(sent.ok(), "{}", sent.stderr());
    assert_eq!(
        file_hash(&src),
        file_hash(&target),
        "bit-exact after the resume"
    );
    let resent = sent.disk(0, "sent_bytes");
    assert!(
        resent <= (128 << 20) - committed + (64 << 20),
        "re-sent {resent} bytes with {committed} committed"
    );
    assert!(
        sent.disk(0, "unchanged_bytes") >= committed,
        "the committed chunks were not sent again: {}",
        sent.report
    );
    assert_eq!(job(&server)["state"], "Waiting");
}

#[test]
fn a_disk_larger_than_the_state_directory_can_hold_is_refused_before_it_is_recorded() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        announce(&mut conn, 1, 20 << 40, CHUNK).await;
        let err = client::recv(&mut conn).await.unwrap_err();
        let detail = format!("{err:#}");
        assert_eq!(
            find_coded(&err).map(|c| c.code.as_str()),
            Some("TARGET_TOO_SMALL"),
            "{detail}"
        );
        assert!(
            detail.contains("disk 1 of 20.0 TiB (21990232555520 bytes) does not fit in")
                && detail.contains("free; give the state directory a larger file system"),
            "{detail}"
        );
    });
    // Nothing recorded, no image left, and the job goes on.
    assert!(!f.server.disk_path(1).exists());
    let (_, body) = f.server.control("GET", "/v1/job");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["disks"].as_array().map(Vec::len), Some(1), "{job}");
    assert_ne!(job["status"], "InError", "{job}");
    f.assert_intact("TARGET_TOO_SMALL");
}

#[test]
fn a_sender_that_goes_silent_is_closed_after_the_link_timeout_and_its_disk_freed() {
    let f = fixture(&[]);
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        // No frame, no ping: as a sender behind a frozen link looks.
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(std::time::Duration::from_secs(90), client::recv(&mut conn))
            .await
            .expect("the appliance kept a silent session open")
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(
            find_coded(&err).map(|c| c.code.as_str()),
            Some("TRANSFER_INTERRUPTED"),
            "{err:#}"
        );
        assert!(
            format!("{err:#}")
                .contains("nothing heard from the sender for 30 s: the link is silent"),
            "{err:#}"
        );
        assert!(
            waited >= std::time::Duration::from_secs(29),
            "closed after {waited:?}"
        );
        eprintln!("a silent sender was closed after {waited:?}");
    });
    // The disk is free again: the next sender gets it at once.
    f.assert_intact("TRANSFER_INTERRUPTED");
}

#[test]
fn a_target_changed_after_its_chunks_were_committed_fails_the_re_read() {
    use std::os::unix::fs::FileExt;
    let f = fixture(&[]);
    let cs = CHUNK as usize;
    let src = std::fs::read(&f.src).unwrap();
    rt().block_on(async {
        let mut conn = authed(&f.server).await;
        open(&mut conn, 0, SIZE, CHUNK).await;
        // Chunk 1 anew, written in this session (the re-read compares it
        // by the checksum of what was verified); chunk 0 was committed by
        // the earlier round (the re-read hashes it).
        let fresh: Vec<u8> = (0..cs).map(|i| (i * 7 % 251) as u8).collect();
        let hash = *blake3::hash(&fresh).as_bytes();
        let chunk = Frame::Chunk {
            disk: 0,
            index: 1,
            hash,
            compressed: false,
            payload: Bytes::from(fresh),
        };
        client::send(&mut conn, chunk).await.unwrap();
        match client::recv(&mut conn).await.unwrap() {
            Frame::Ack { disk: 0, indices } => assert_eq!(indices, vec![1]),
            other => panic!("expected the ack of chunk 1, got {other:?}"),
        }
        // Both change on the target behind the appliance's back.
        let img = std::fs::OpenOptions::new()
            .write(true)
            .open(f.server.disk_path(0))
            .unwrap();
        img.write_all_at(b"changed", 100).unwrap();
        img.write_all_at(b"changed", CHUNK as u64 + 100).unwrap();
        img.sync_all().unwrap();
        let hashes = [*blake3::hash(&src[..cs]).as_bytes(), hash];
        let digest = ferry::disk::disk_digest(SIZE, CHUNK, &hashes);
        let finish = Frame::Finish {
            disk: 0,
            digest,
            unchanged: 0,
            zero_skipped: 0,
        };
        client::send(&mut conn, finish).await.unwrap();
        let err = loop {
            match client::recv(&mut conn).await {
                Ok(Frame::Ack { .. }) => continue,
                Ok(other) => panic!("expected a refusal, got {other:?}"),
                Err(e) => break e,
            }
        };
        let text = format!("{err:#}");
        assert_eq!(
            find_coded(&err).map(|c| c.code.as_str()),
            Some("DIGEST_MISMATCH"),
            "{text}"
        );
        assert!(
            text.contains("2 chunks of disk 0 differ from the ledger when re-read (first: 0)"),
            "{text}"
        );
    });
    // The changed chunks are forgotten: the next sender sends them again.
    let again = f.server.send(&[&f.src], &[]);
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(again.disk(0, "sent_chunks"), 2, "{}", again.report);
    assert_eq!(file_hash(&f.src), file_hash(&f.server.disk_path(0)));
}
