//! The appliance tells the truth about a transfer whose sender stopped: a
//! real `ferry serve` and a real `ferry send`, frozen with SIGSTOP after
//! its first chunks and then killed. The last arrival of data stops
//! moving, the rate falls to 0, the job is marked stalled (in /v1/job and
//! /metrics) once no data came for `stall_after_secs`, and the sessions
//! gauge is back to 0 as soon as the killed sender's socket is closed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::serve::Server;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn job(s: &Server) -> Value {
    let (status, body) = s.control("GET", "/v1/job");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn unix_seconds(rfc3339: &str) -> f64 {
    let t = humantime::parse_rfc3339(rfc3339).unwrap();
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_frozen_then_killed_sender_is_reported_stalled_and_its_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    crate::common::serve::mixed_image(&src, 256, 11);
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "stall_after_secs = 2\n").unwrap();
    let s = Server::start_job(
        &state,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );

    // A slow path: 64 KiB chunks with one chunk in flight, each waiting for
    // the appliance's commit before the next goes.
    let mut sender = Command::new(crate::common::serve::FERRY)
        .args(["send", "--to", &s.data, "--token", &s.token])
        .args(["--fingerprint", &s.fingerprint, "--disk"])
        .arg(&src)
        .args([
            "--chunk-size",
            "65536",
            "--window",
            "65536",
            "--retries",
            "0",
            "--streams",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(sender.id() as i32);
    crate::common::serve::wait_for(60, "the first committed chunks", || {
        let j = job(&s);
        j["business_status"] == "Syncing" && j["committed_bytes"].as_u64().unwrap() > 0
    });
    let j = job(&s);
    assert_eq!(j["stalled"], false, "{j}");
    assert_eq!(j["stall_after_secs"], 2);
    assert!(j["disks"][0]["last_progress_at"].is_string(), "{j}");
    // The disk's control connection and its one data stream.
    assert_eq!(s.metric("ferry_sessions_active"), 2.0);

    kill(pid, Signal::SIGSTOP).unwrap();
    // What was in flight is committed; then nothing more arrives.
    let mut last = job(&s)["committed_bytes"].as_u64().unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = job(&s)["committed_bytes"].as_u64().unwrap();
        if now == last {
            break;
        }
        last = now;
    }
    let j = job(&s);
    let size = j["total_bytes"].as_u64().unwrap();
    assert!(last < size, "the transfer ended before the sender stopped");
    let arrived = j["disks"][0]["last_progress_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(j["last_progress_at"], arrived.as_str());

    crate::common::serve::wait_for(30, "the job marked stalled", || job(&s)["stalled"] == true);
    // The rate is measured over a recent window: it falls to 0, the ETA goes.
    crate::common::serve::wait_for(30, "the rate at 0", || job(&s)["sync_rate_bps"] == 0.0);
    let j = job(&s);
    assert_eq!(
        (
            &j["state"],
            &j["business_status"],
            &j["stalled"],
            &j["eta_secs"]
        ),
        (
            &Value::from("Running"),
            &Value::from("Syncing"),
            &Value::from(true),
            &Value::Null
        ),
        "{j}"
    );
    assert_eq!(j["disks"][0]["rate_bps"], 0.0);
    assert_eq!(j["disks"][0]["eta_secs"], Value::Null);
    assert_eq!(j["committed_bytes"], last, "nothing arrived meanwhile");
    assert_eq!(
        j["disks"][0]["last_progress_at"], arrived,
        "the last arrival stopped moving"
    );
    assert!(j["no_data_secs"].as_u64().unwrap() >= 2, "{j}");
    // The same in /metrics.
    assert_eq!(s.metric("ferry_job_stalled"), 1.0);
    assert_eq!(
        s.metric("ferry_disk_sync_rate_bytes_per_second{disk=\"0\"}"),
        0.0
    );
    let at = s.metric("ferry_disk_last_progress_timestamp_seconds{disk=\"0\"}");
    assert!(
        (at - unix_seconds(&arrived)).abs() < 0.002,
        "{at} vs {arrived}"
    );
    // The frozen sender's connections are still open.
    assert_eq!(s.metric("ferry_sessions_active"), 2.0);

    // Killed: the kernel closes its socket, the session ends at once.
    sender.kill().unwrap();
    sender.wait().unwrap();
    crate::common::serve::wait_for(10, "the sessions gauge at 0", || {
        s.metric("ferry_sessions_active") == 0.0
    });
    let j = job(&s);
    assert_eq!(
        (&j["business_status"], &j["stalled"]),
        (&Value::from("Syncing"), &Value::from(true)),
        "still waiting for data: {j}"
    );

    // The sender runs again: the transfer resumes and ends; nothing is
    // stalled any more, no session is left.
    let sent = s.send_only(&[&src], &["--chunk-size", "65536"]);
    assert!(sent.ok(), "{}", sent.stderr());
    crate::common::serve::wait_for(30, "Finished", || job(&s)["state"] == "Finished");
    let j = job(&s);
    assert_eq!(
        (&j["stalled"], &j["no_data_secs"]),
        (&Value::from(false), &Value::Null)
    );
    assert_eq!(s.metric("ferry_job_stalled"), 0.0);
    crate::common::serve::wait_for(10, "the sessions gauge at 0", || {
        s.metric("ferry_sessions_active") == 0.0
    });
    assert_eq!(
        crate::common::serve::file_hash(&src),
        crate::common::serve::file_hash(&s.disk_path(0))
    );
}
