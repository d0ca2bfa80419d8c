//! Block-mode transfer over loopback with real `ferry serve` and `ferry send`
//! processes: bit-exact arrival, resume after kill -9, incremental rounds.

use crate::common::serve::*;
use std::path::Path;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;

#[test]
fn mixed_gib_arrives_bit_exact_and_unchanged_resend_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    mixed_image(&src, 1024, 1);
    let server = Server::start(&dir.path().join("state"), &[]);
    let sent = server.send(&[&src], &[]);
    assert!(sent.ok(), "send failed: {}", sent.stderr());
    assert_eq!(file_hash(&src), file_hash(&server.disk_path(0)));
    // 192 of 256 chunks hold data; the zero quarter is not sent at all.
    assert_eq!(sent.disk(0, "sent_chunks"), 192);
    assert_eq!(sent.disk(0, "zero_skipped_chunks"), 64);
    assert!(
        sent.disk(0, "wire_bytes") < sent.disk(0, "sent_bytes"),
        "text chunks compress"
    );
    assert_eq!(
        server.metric("ferry_chunks_total{outcome=\"written\"}"),
        192.0
    );
    assert_eq!(
        server.metric("ferry_written_bytes_total"),
        (192 * CHUNK) as f64
    );

    let again = server.send(&[&src], &[]);
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(again.disk(0, "sent_chunks"), 0);
    assert_eq!(again.disk(0, "wire_bytes"), 0);
    assert_eq!(
        again.disk(0, "unchanged_chunks") + again.disk(0, "zero_skipped_chunks"),
        256
    );
    assert!(
        again.stderr().contains("sent 0 bytes in 0 chunks"),
        "{}",
        again.stderr()
    );
}

#[test]
fn incremental_round_sends_only_changed_chunks_and_zeroes_cleared_ones() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    mixed_image(&src, 1024, 2);
    let server = Server::start(&dir.path().join("state"), &[]);
    assert!(server.send(&[&src], &[]).ok());

    // Change 1 % of the chunks: three chunks get new bytes, one of them in the
    // zero quarter; and one data chunk is cleared to zeros.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    for chunk in [3u64, 100, 250] {
        f.write_all_at(b"changed by the source server", chunk * CHUNK + 12345)
            .unwrap();
    }
    f.write_all_at(&vec![0u8; CHUNK as usize], 7 * CHUNK)
        .unwrap();
    f.sync_all().unwrap();

    let inc = server.send(&[&src], &[]);
    assert!(inc.ok(), "{}", inc.stderr());
    assert_eq!(inc.disk(0, "sent_chunks"), 3);
    assert_eq!(
        inc.disk(0, "zero_sent_chunks"),
        1,
        "a cleared chunk is zeroed on the target"
    );
    assert!(inc.disk(0, "sent_bytes") as f64 <= 0.015 * (1024 * MIB) as f64);
    assert_eq!(file_hash(&src), file_hash(&server.disk_path(0)));
}

#[test]
fn kill_9_of_the_receiver_then_resume_ends_bit_exact_resending_at_most_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    mixed_image(&src, 512, 3);
    let data_chunks = 96; // 3/4 of 128 chunks
    let state = dir.path().join("state");
    let mut total_sent = 0;
    let mut kills = 0;
    // Kill the receiver at several points of the transfer.
    for fraction in [0.2, 0.5, 0.8] {
        let mut server = Server::start(&state, &[]);
        let target = (fraction * (data_chunks as f64) * CHUNK as f64) as u64;
        let (to, token, fp) = (
            server.data.clone(),
            server.token.clone(),
            server.fingerprint.clone(),
        );
        let src2 = src.clone();
        let sender = std::thread::spawn(move || {
            send_to(
                &to,
                &token,
                &fp,
                &[&src2],
                &["--retries", "0", "--window", &(16 * CHUNK).to_string()],
            )
        });
        let mut reached = false;
        wait_for(120, "progress or the sender's end", || {
            reached = server.metric("ferry_written_bytes_total") as u64 >= target;
            reached || sender.is_finished()
        });
        server.kill();
        let sent = sender.join().unwrap();
        total_sent += sent.disk(0, "sent_chunks");
        if reached && !sent.ok() {
            kills += 1;
            let err = sent.stderr();
            assert!(
                err.contains("TRANSFER_INTERRUPTED") || err.contains("CONNECT_FAILED"),
                "{err}"
            );
        }
    }
    assert!(
        kills >= 2,
        "the receiver was killed mid-transfer only {kills} times"
    );
    let server = Server::start(&state, &[]);
    let last = server.send(&[&src], &[]);
    assert!(last.ok(), "{}", last.stderr());
    total_sent += last.disk(0, "sent_chunks");
    assert_eq!(file_hash(&src), file_hash(&server.disk_path(0)));
    // Each kill costs at most one window (16 chunks) of re-sent data.
    assert!(
        total_sent <= data_chunks + 16 * kills,
        "sent {total_sent} chunks for {data_chunks} data chunks and {kills} kills"
    );
}

#[test]
fn sender_retries_by_itself_when_the_receiver_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    mixed_image(&src, 256, 4);
    let state = dir.path().join("state");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start_on(&state, &addr, &[]);
    let (token, fp) = (server.token.clone(), server.fingerprint.clone());
    let (to, src2) = (addr.clone(), src.clone());
    let sender = std::thread::spawn(move || {
        send_to(&to, &token, &fp, &[&src2], &["--chunk-size", "1048576"])
    });
    wait_for(120, "first bytes", || {
        server.metric("ferry_written_bytes_total") as u64 >= 40 * MIB
    });
    server.kill();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let server = Server::start_on(&state, &addr, &[]);
    let sent = sender.join().unwrap();
    assert!(sent.ok(), "{}", sent.stderr());
    assert!(
        sent.report["attempts"].as_u64().unwrap() >= 2,
        "{}",
        sent.report
    );
    assert!(sent.stderr().contains("retrying in"), "{}", sent.stderr());
    assert_eq!(file_hash(&src), file_hash(&server.disk_path(0)));
}

#[test]
fn two_disks_arrive_and_a_changed_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    mixed_image(&a, 40, 5);
    mixed_image(&b, 21, 6); // not a multiple of the chunk size
    let server = Server::start(&dir.path().join("state"), &[]);
    let sent = server.send(&[&a, &b], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    assert_eq!(file_hash(&a), file_hash(&server.disk_path(0)));
    assert_eq!(file_hash(&b), file_hash(&server.disk_path(1)));
    let before = file_hash(&server.disk_path(1));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(22 * MIB)
        .unwrap();
    let refused = server.send(&[Path::new(&a), &b], &[]);
    assert!(!refused.ok());
    assert!(
        refused.stderr().contains("DISK_SIZE_CHANGED"),
        "{}",
        refused.stderr()
    );
    assert!(refused.stderr().contains("hint: "), "{}", refused.stderr());
    assert_eq!(before, file_hash(&server.disk_path(1)));
}
