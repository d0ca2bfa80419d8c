//! The receiver's memory is bounded whatever disk a token holder announces:
//! a 64 TiB disk in 64 KiB chunks (2^30 chunks: 33 GiB had the manifest
//! been held whole) is opened, written at its first, middle and last chunk,
//! and opened again after a restart, with the appliance's peak RSS under
//! 256 MiB. The target is a 64 TiB sparse file on a loop-mounted XFS (ext4
//! holds no file over 16 TiB). Needs root (mount).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::serve::*;
use bytes::Bytes;
use ferry::send::client::{self, Conn};
use ferry::wire::Frame;

const SIZE: u64 = 64 << 40;
const CHUNK: u32 = 64 << 10;
const RSS_BOUND_KIB: u64 = 256 << 10;

/// A loop-mounted XFS, unmounted when dropped.
struct XfsMount(PathBuf);

impl XfsMount {
    fn new(dir: &Path) -> XfsMount {
        let img = dir.join("xfs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("mkfs.xfs").arg("-q").arg(&img));
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        XfsMount(mnt)
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The peak resident set of a process, from /proc (KiB).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Open the disk; return the committed chunks of its manifest and how many
/// pages it came in.
async fn open(conn: &mut Conn) -> (Vec<u64>, usize) {
    client::send(
        conn,
        Frame::OpenDisk {
            disk: 0,
            size: SIZE,
            chunk_size: CHUNK,
        },
    )
    .await
    .unwrap();
    let (mut committed, mut pages) = (Vec::new(), 0);
    loop {
        match client::recv(conn).await.unwrap() {
            Frame::Manifest { entries, last, .. } => {
                pages += 1;
                committed.extend(entries.iter().map(|(i, _)| *i));
                if last {
                    break;
                }
            }
            other => panic!("expected a manifest, got {other:?}"),
        }
    }
    // Then the key for data streams and the job's bandwidth limit.
    match client::recv(conn).await.unwrap() {
        Frame::StreamKey { disk: 0, .. } => {}
        other => panic!("expected a stream key, got {other:?}"),
    }
    match client::recv(conn).await.unwrap() {
        Frame::Bandwidth { .. } => {}
        other => panic!("expected the bandwidth limit, got {other:?}"),
    }
    (committed, pages)
}

#[test]
fn a_64_tib_disk_in_64_kib_chunks_is_served_in_bounded_memory_across_a_restart() {
    need_root!("mount an XFS file system");
    let dir = tempfile::tempdir().unwrap();
    let xfs = XfsMount::new(dir.path());
    let target = xfs.0.join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let cfg = target_config(dir.path(), "a-long-enough-job-token", &[&target]);
    let state = dir.path().join("state");
    let start = || {
        let mut s = Server::start(&state, &["--config", cfg.to_str().unwrap()]);
        s.token = "a-long-enough-job-token".into();
        s
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let count = SIZE / u64::from(CHUNK);
    let written = [0, count / 2, count - 1];

    let mut server = start();
    rt.block_on(async {
        let mut conn = client::connect(&server.data, &server.token, &server.fingerprint)
            .await
            .unwrap();
        let (committed, pages) = open(&mut conn).await;
        assert_eq!(
            (committed.len(), pages),
            (0, 1),
            "a new disk's manifest is one empty page"
        );
        for (n, &index) in written.iter().enumerate() {
            let payload = Bytes::from(vec![n as u8 + 1; CHUNK as usize]);
            let hash = *blake3::hash(&payload).as_bytes();
            client::send(
                &mut conn,
                Frame::Chunk {
                    disk: 0,
                    index,
                    hash,
                    compressed: false,
                    payload,
                },
            )
            .await
            .unwrap();
        }
        let mut acked = Vec::new();
        while acked.len() < written.len() {
            match client::recv(&mut conn).await.unwrap() {
                Frame::Ack { indices, .. } => acked.extend(indices),
                other => panic!("expected acks, got {other:?}"),
            }
        }
        acked.sort_unstable();
        assert_eq!(acked, written);
    });
    let first = peak_rss_kib(server.child.id());
    server.kill();

    let server = start();
    rt.block_on(async {
        let mut conn = client::connect(&server.data, &server.token, &server.fingerprint)
            .await
            .unwrap();
        let (committed, pages) = open(&mut conn).await;
        assert_eq!(committed, written, "the manifest after the restart");
        assert_eq!(pages, 1);
    });
    // The chunks are on the target where they belong.
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&target).unwrap();
    for (n, &index) in written.iter().enumerate() {
        let mut b = [0u8; 16];
        f.read_exact_at(&mut b, index * u64::from(CHUNK)).unwrap();
        assert_eq!(b, [n as u8 + 1; 16], "chunk {index}");
    }
    let second = peak_rss_kib(server.child.id());
    eprintln!("peak RSS of the appliance: {first} KiB, and {second} KiB after the restart");
    assert!(first <= RSS_BOUND_KIB, "peak RSS {first} KiB");
    assert!(
        second <= RSS_BOUND_KIB,
        "peak RSS after the restart {second} KiB"
    );
}
