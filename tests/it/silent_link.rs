//! A link that goes silent mid-transfer — a relay that stops passing bytes
//! either way and closes nothing, as a cut often leaves a TCP connection —
//! is noticed by both ends; the sender reconnects, its new session takes
//! the disk over from the silent one, and the send completes bit-exact.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::serve::*;

#[test]
fn a_frozen_link_mid_transfer_is_noticed_and_the_send_completes_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    mixed_image(&src, 96, 21);
    let server = Server::start(&dir.path().join("state"), &[]);
    let relay = CutProxy::start(&server.data);
    // Freeze the first connection once a third of its 24 MiB of random data went up.
    relay.freeze_after(8 << 20);
    let started = Instant::now();
    let sent = send_to_within(
        &relay.addr,
        &server.token,
        &server.fingerprint,
        &[&src],
        &["--chunk-size", "1048576"],
        Duration::from_secs(150),
    );
    let took = started.elapsed();
    let stderr = sent.stderr();
    assert!(sent.ok(), "{stderr}");
    assert_eq!(
        relay.frozen.load(Ordering::SeqCst),
        1,
        "the relay froze no connection"
    );
    // The sender notices by its own silence timer or, under load, sees the
    // stream end first (a data stream stopped); either way it retries.
    assert!(
        stderr.contains("the link is silent")
            || stderr
                .contains("the data transfer was interrupted (a data stream stopped); retrying"),
        "the sender did not notice the silent link:\n{stderr}"
    );
    assert_eq!(file_hash(&src), file_hash(&server.disk_path(0)));
    assert!(
        took < Duration::from_secs(120),
        "the send took {took:?} over a link frozen once"
    );
    eprintln!("send over a link frozen mid-transfer completed in {took:?}");
    // The appliance closed the silent session too: no session is left.
    wait_for(60, "the appliance to close the silent session", || {
        server.metric("ferry_sessions_active") == 0.0
    });
    let log = std::fs::read_to_string(dir.path().join("state.serve.log")).unwrap_or_default();
    assert!(
        log.contains("took this session's disk over") || log.contains("the link is silent"),
        "the appliance's log does not say how the silent session ended:\n{log}"
    );
}
