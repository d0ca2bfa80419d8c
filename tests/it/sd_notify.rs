//! sd_notify against a datagram socket standing in for systemd's: READY=1
//! with a status, then watchdog pings at half the interval. One test in
//! this file, as it sets the process's environment.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[tokio::test]
async fn ready_and_watchdog_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // Without the variables nothing is sent and nothing fails.
    std::env::remove_var("NOTIFY_SOCKET");
    std::env::remove_var("WATCHDOG_USEC");
    ferry::serve::notify::ready("not under systemd").unwrap();
    assert!(ferry::serve::notify::spawn_watchdog().is_none());

    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "200000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert_eq!(
        ferry::serve::notify::watchdog_interval(),
        Some(Duration::from_millis(200))
    );
    ferry::serve::notify::ready("serving: data port 8703, control port 8080").unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        "READY=1\nSTATUS=serving: data port 8703, control port 8080\n"
    );

    let t = Instant::now();
    let task = ferry::serve::notify::spawn_watchdog().unwrap();
    let mut pings = Vec::new();
    for _ in 0..3 {
        let sock = sock.try_clone().unwrap();
        let msg = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            let n = sock.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        })
        .await
        .unwrap();
        pings.push(msg);
    }
    let elapsed = t.elapsed();
    assert_eq!(pings, ["WATCHDOG=1\n"; 3]);
    // The first ping is immediate, then one every 100 ms.
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    task.abort();
}
