//! The bandwidth limit: `ferry send --bwlimit`, and the limit the control
//! plane sets and changes on the appliance during the transfer
//! (`POST /v1/job/bandwidth`), pushed to the sender at once. The rate the
//! appliance receives stays within 10 % of the limit; a change takes effect
//! within 2 s. The limits are low (a few MiB/s), which a loaded machine
//! keeps up with: the rates measured are the limit's, not the machine's.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::serve::*;
use serde_json::Value;

const MIB: f64 = (1 << 20) as f64;

/// Seeded random bytes: every chunk is sent, and uncompressed.
fn random_image(path: &Path, mib: u64, seed: u64) {
    use rand::{RngCore, SeedableRng};
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill_bytes(&mut buf);
        f.write_all(&buf).unwrap();
    }
}

fn spawn_send(s: &Server, src: &Path, extra: &[&str]) -> Child {
    Command::new(FERRY)
        .args(["send", "--to", &s.data, "--token", &s.token])
        .args(["--fingerprint", &s.fingerprint, "--disk"])
        .arg(src)
        .args(["--chunk-size", "1048576", "--zstd-level", "0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The appliance's received bytes, and when they were read.
fn received(s: &Server) -> (Instant, f64) {
    (Instant::now(), s.metric("ferry_received_bytes_total"))
}

/// The rate received over `window`, starting now.
fn rate_over(s: &Server, window: Duration) -> f64 {
    let (t0, b0) = received(s);
    std::thread::sleep(window);
    let (t1, b1) = received(s);
    (b1 - b0) / (t1 - t0).as_secs_f64()
}

fn set_limit(s: &Server, body: &str) -> (u16, Value) {
    let (status, body) = s.control_json("POST", "/v1/job/bandwidth", body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn assert_near(rate: f64, limit: f64, what: &str) {
    let ratio = rate / limit;
    eprintln!(
        "{what}: {:.2} MiB/s against a limit of {:.2} MiB/s ({ratio:.3})",
        rate / MIB,
        limit / MIB
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: {:.2} MiB/s is not within 10 % of {:.2} MiB/s",
        rate / MIB,
        limit / MIB
    );
}

#[test]
fn the_control_planes_limit_holds_and_a_change_takes_effect_within_2_s() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    random_image(&src, 160, 3);
    let s = Server::start_job(&dir.path().join("state"), "127.0.0.1:0", &[]);

    // Set before the sender connects: it is told when it opens the disk.
    let (status, job) = set_limit(&s, r#"{"bytes_per_sec": 4194304}"#);
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["bandwidth_limit_bytes_per_sec"], 4194304);
    let sender = spawn_send(&s, &src, &[]);
    wait_for(60, "the first bytes", || {
        s.metric("ferry_received_bytes_total") > 2.0 * MIB
    });
    assert_near(
        rate_over(&s, Duration::from_secs(5)),
        4.0 * MIB,
        "at 4 MiB/s",
    );

    // Raised during the transfer: the rate from 2 s after the change on is
    // the new limit's.
    let (status, job) = set_limit(&s, r#"{"bytes_per_sec": 16777216}"#);
    assert_eq!(status, 200, "{job}");
    std::thread::sleep(Duration::from_secs(2));
    assert_near(
        rate_over(&s, Duration::from_secs(3)),
        16.0 * MIB,
        "raised to 16 MiB/s",
    );

    // Lowered again.
    let (status, _) = set_limit(&s, r#"{"bytes_per_sec": 3145728}"#);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_near(
        rate_over(&s, Duration::from_secs(4)),
        3.0 * MIB,
        "lowered to 3 MiB/s",
    );

    // Lifted: the rest goes at once, and arrives bit-exact.
    let (status, job) = set_limit(&s, r#"{"bytes_per_sec": null}"#);
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["bandwidth_limit_bytes_per_sec"], Value::Null);
    let out = sender.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(file_hash(&src), file_hash(&s.disk_path(0)));
    for told in [
        "the appliance's bandwidth limit is 4.0 MiB/s; the limit now is 4.0 MiB/s",
        "the appliance's bandwidth limit is 16.0 MiB/s; the limit now is 16.0 MiB/s",
        "the appliance's bandwidth limit is lifted; the limit now is none",
    ] {
        assert!(
            stderr.contains(told),
            "the sender did not say `{told}`:\n{stderr}"
        );
    }
}

#[test]
fn bwlimit_holds_and_the_lower_of_the_two_limits_applies() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    random_image(&src, 64, 4);
    let s = Server::start_job(&dir.path().join("state"), "127.0.0.1:0", &[]);
    // The appliance's limit is higher: --bwlimit applies.
    let (status, _) = set_limit(&s, r#"{"bytes_per_sec": 104857600}"#);
    assert_eq!(status, 200);
    let mut sender = spawn_send(&s, &src, &["--bwlimit", "5M"]);
    wait_for(60, "the first bytes", || {
        s.metric("ferry_received_bytes_total") > 2.0 * MIB
    });
    assert_near(
        rate_over(&s, Duration::from_secs(5)),
        5.0 * MIB,
        "--bwlimit 5M",
    );
    // Now the appliance's is lower.
    let (status, _) = set_limit(&s, r#"{"bytes_per_sec": 2097152}"#);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_near(
        rate_over(&s, Duration::from_secs(4)),
        2.0 * MIB,
        "the appliance's 2 MiB/s",
    );
    let _ = sender.kill();
    let _ = sender.wait();
}

#[test]
fn the_bandwidth_api_refuses_what_is_not_a_limit_and_needs_the_control_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_job(&dir.path().join("state"), "127.0.0.1:0", &[]);
    let cases = [
        ("not JSON", "fast", "the body is not {\"bytes_per_sec\": N}"),
        (
            "a string",
            r#"{"bytes_per_sec": "10M"}"#,
            "the body is not {\"bytes_per_sec\": N}",
        ),
        (
            "another field",
            r#"{"rate": 5}"#,
            "the body is not {\"bytes_per_sec\": N}",
        ),
        (
            "no field (a typo must not lift the limit)",
            "{}",
            "the body is not {\"bytes_per_sec\": N}: missing field `bytes_per_sec`",
        ),
        (
            "above the largest",
            r#"{"bytes_per_sec": 18446744073709551615}"#,
            "18446744073709551615 bytes per second is above the largest limit",
        ),
        (
            "below the smallest",
            r#"{"bytes_per_sec": 1000}"#,
            "1000 bytes per second is below the smallest limit, 65536",
        ),
    ];
    for (name, body, detail) in cases {
        let (status, err) = set_limit(&s, body);
        assert_eq!(status, 400, "{name}: {err}");
        assert_eq!(err["code"], "BAD_BANDWIDTH", "{name}: {err}");
        assert!(
            err["detail"].as_str().unwrap_or("").starts_with(detail),
            "{name}: {err}"
        );
        assert!(
            err["hint"].as_str().unwrap_or("").contains("bytes_per_sec"),
            "{name}: {err}"
        );
    }
    // 0 lifts the limit, as null does.
    let (status, job) = set_limit(&s, r#"{"bytes_per_sec": 0}"#);
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["bandwidth_limit_bytes_per_sec"], Value::Null);
    // Without the control token: refused, and nothing is set.
    let (status, _) = http_body(
        &s.control,
        "POST",
        "/v1/job/bandwidth",
        &[],
        r#"{"bytes_per_sec": 1048576}"#,
    );
    assert_eq!(status, 401);
    let (_, body) = s.control("GET", "/v1/job");
    let job: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["bandwidth_limit_bytes_per_sec"], Value::Null, "{job}");
    // Kept across a restart of the appliance.
    let (status, _) = set_limit(&s, r#"{"bytes_per_sec": 1048576}"#);
    assert_eq!(status, 200);
    let state = s.state.clone();
    drop(s);
    let s = Server::start_job(&state, "127.0.0.1:0", &[]);
    let (_, body) = s.control("GET", "/v1/job");
    let job: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["bandwidth_limit_bytes_per_sec"], 1048576, "{job}");
}
