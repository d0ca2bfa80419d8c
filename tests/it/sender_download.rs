//! The sender's release served by the appliance on 8080: named with its
//! SHA-256 in `/v1/identity`, fetched byte for byte without a token, any
//! other name a JSON 404, and a release that does not match its sum
//! refused at start before anything is written.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::serve::{http, Server, FERRY};
use sha2::{Digest, Sha256};

const FILE: &str = "ferry-9.9.9-x86_64-linux.tar.gz";

/// A release directory: a tarball of arbitrary bytes (every byte value)
/// and its SHA256SUMS.
fn release_dir(dir: &Path) -> (Vec<u8>, String) {
    let bytes: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join(FILE), &bytes).unwrap();
    let sum = hex::encode(Sha256::digest(&bytes));
    std::fs::write(dir.join("SHA256SUMS"), format!("{sum}  {FILE}\n")).unwrap();
    (bytes, sum)
}

/// GET with no token: status, headers, body bytes.
fn get_bytes(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, resp[end + 4..].to_vec())
}

#[test]
fn the_release_is_named_in_identity_and_served_byte_for_byte_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let rel = dir.path().join("release");
    std::fs::create_dir(&rel).unwrap();
    let (bytes, sum) = release_dir(&rel);
    let state = dir.path().join("state");
    let s = Server::start(&state, &["--sender-dir", rel.to_str().unwrap()]);

    let (status, body) = http(&s.control, "GET", "/v1/identity", &[]);
    assert_eq!(status, 200, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        id["sender"],
        serde_json::json!({
            "file": FILE,
            "sha256": sum,
            "bytes": bytes.len(),
            "path": format!("/v1/sender/{FILE}"),
        }),
        "{id}"
    );

    let (status, head, got) = get_bytes(&s.control, &format!("/v1/sender/{FILE}"));
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/gzip"),
        "{head}"
    );
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "the served tarball differs from the release");

    for other in ["SHA256SUMS", "ferry", "..%2Fstate%2Ftoken", "x.tar.gz"] {
        let (status, body) = http(&s.control, "GET", &format!("/v1/sender/{other}"), &[]);
        assert_eq!(status, 404, "{other}: {body}");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["code"], "SENDER_NOT_FOUND", "{other}: {body}");
        assert!(
            err["detail"].as_str().unwrap().contains(FILE),
            "the 404 names what is served: {body}"
        );
    }
}

#[test]
fn without_a_release_identity_says_none_and_every_name_is_not_found() {
    if Path::new("/usr/lib/ferry/sender").exists() {
        eprintln!("skipped: this machine carries a release in the default directory");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("state"), &[]);
    let (status, body) = http(&s.control, "GET", "/v1/identity", &[]);
    assert_eq!(status, 200, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(id["sender"].is_null(), "{id}");
    let (status, body) = http(&s.control, "GET", &format!("/v1/sender/{FILE}"), &[]);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("SENDER_NOT_FOUND") && body.contains("no sender release"),
        "{body}"
    );
}

#[test]
fn a_release_that_does_not_match_its_sum_stops_the_start_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let rel = dir.path().join("release");
    std::fs::create_dir(&rel).unwrap();
    let (mut bytes, sum) = release_dir(&rel);
    bytes[1000] ^= 1;
    std::fs::write(rel.join(FILE), &bytes).unwrap();
    let state = dir.path().join("state");
    let out = Command::new(FERRY)
        .args(["serve", "--no-build", "--control-listen", "127.0.0.1:0"])
        .args(["--data-listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .arg("--sender-dir")
        .arg(&rel)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("does not match") && err.contains(&sum),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "loading the sender's release from {}",
            rel.display()
        )),
        "{err}"
    );
    assert!(
        !state.exists(),
        "the state directory was made before the refusal"
    );
}
