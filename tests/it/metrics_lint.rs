//! /metrics of a real `ferry serve` passes `promtool check metrics` (the
//! Prometheus project's own lint: types, `_total` only on counters, help
//! texts, units) in each configuration: embedded without and with a
//! webhook, and with a configured target, before and after a transfer.
//! Without promtool (Debian's `prometheus` package, in
//! scripts/packages.txt) the test says so and checks nothing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use crate::common::serve::{target_config, Server};
use ferry::cmd::{self, Cmd};

const JOB_TOKEN: &str = "job-token-0123456789abcdef";

/// `promtool check metrics` of the server's /metrics: every problem it
/// names fails the test.
fn lint(s: &Server, what: &str) -> String {
    let (status, text) = s.control("GET", "/metrics");
    assert_eq!(status, 200, "{what}: {text}");
    let out = Cmd::new("promtool")
        .args(["check", "metrics"])
        .stdin_bytes(text.clone())
        .run();
    match out {
        Ok(out) => {
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                said.trim().is_empty(),
                "{what}: promtool says\n{said}\n{text}"
            );
        }
        Err(e) => panic!("{what}: promtool check metrics failed: {e:#}\n{text}"),
    }
    text
}

fn have_promtool() -> bool {
    if cmd::have("promtool") {
        return true;
    }
    eprintln!(
        "SKIPPED: promtool is not installed (Debian package `prometheus`, listed in scripts/packages.txt)"
    );
    false
}

/// The build-info gauge, with this build's version.
fn assert_build_info(text: &str) {
    let line = format!(
        "ferry_build_info{{protocol_version=\"{}\",version=\"{}\"}} 1",
        ferry::wire::PROTOCOL_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    assert!(text.contains("# TYPE ferry_build_info gauge"), "{text}");
}

/// An HTTP endpoint that answers every webhook POST with 200.
fn webhook_receiver() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let resp = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if r.get_mut().write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn metrics_pass_promtool_embedded_without_a_webhook() {
    if !have_promtool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    crate::common::serve::mixed_image(&src, 16, 3);
    let s = Server::start_job(&dir.path().join("state"), "127.0.0.1:0", &[]);
    let text = lint(&s, "a fresh appliance");
    assert_build_info(&text);
    assert!(!text.contains("ferry_webhook"), "{text}");
    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    let text = lint(&s, "after a transfer");
    for name in [
        "ferry_disk_committed_bytes{disk=\"0\"}",
        "ferry_disk_last_progress_timestamp_seconds{disk=\"0\"}",
        "ferry_job_stalled 0",
        "ferry_sync_rate_bytes_per_second 0",
    ] {
        assert!(text.contains(name), "no {name} in\n{text}");
    }
}

#[test]
fn metrics_pass_promtool_with_a_webhook() {
    if !have_promtool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    crate::common::serve::mixed_image(&src, 16, 4);
    let url = webhook_receiver();
    let secret = crate::common::serve::secret_file(dir.path(), "hook-secret", "hook-secret");
    let s = Server::start_job(
        &dir.path().join("state"),
        "127.0.0.1:0",
        &["--webhook-url", &url, "--webhook-secret-file", &secret],
    );
    lint(&s, "a fresh appliance with a webhook");
    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    crate::common::serve::wait_for(20, "the webhook's deliveries", || {
        s.metric("ferry_webhook_events_total{outcome=\"delivered\"}") >= 1.0
    });
    let text = lint(&s, "after a transfer with a webhook");
    assert_build_info(&text);
    for line in [
        "# TYPE ferry_webhook_events_total counter",
        "# TYPE ferry_webhook_attempts_total counter",
        "ferry_webhook_events_total{outcome=\"dropped\"} 0",
        "ferry_webhook_events_total{outcome=\"failed\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
    // Attempts are counted apart from outcomes, never as an outcome.
    assert!(!text.contains("outcome=\"attempts\""), "{text}");
    assert!(s.metric("ferry_webhook_attempts_total") >= 1.0);
}

#[test]
fn metrics_pass_promtool_with_a_configured_target() {
    if !have_promtool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    crate::common::serve::mixed_image(&src, 16, 5);
    let target = dir.path().join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let config = target_config(dir.path(), JOB_TOKEN, &[&target]);
    let s = Server::start_job(
        &dir.path().join("state"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    lint(&s, "an appliance with a target disk");
    let sent = crate::common::serve::send_to(&s.data, JOB_TOKEN, &s.fingerprint, &[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    let text = lint(&s, "after a transfer to a target disk");
    assert_build_info(&text);
    assert_eq!(
        crate::common::serve::file_hash(&src),
        crate::common::serve::file_hash(&target)
    );
}
