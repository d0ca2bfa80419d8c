//! `ferry send`'s exit status tells the kind of failure (a refusal, the
//! network, a wrong address), and its messages name what it met, over real
//! sockets against a real `ferry serve` on loopback.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::serve::*;

const FP: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    mixed_image(&img, 4, 7);
    img
}

fn status(sent: &Sent) -> i32 {
    sent.output.status.code().unwrap_or(-1)
}

/// A loopback listener that answers every connection with `reply` and
/// closes it, as a service that is not ferry's would.
fn listener_replying(reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.write_all(reply);
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = conn.read(&mut [0u8; 1024]);
        }
    });
    addr
}

#[test]
fn a_send_to_a_replicating_job_exits_0_and_does_not_claim_processing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), &[]);
    let img = image(dir.path());
    let sent = server.send(&[&img], &[]);
    let err = sent.stderr();
    assert_eq!(status(&sent), 0, "{err}");
    assert!(err.contains("runs the round's pipeline: handoff"), "{err}");
    assert!(
        err.contains(
            "the disks are verified and handed off; the job only replicates disks, so nothing was processed; the job is Waiting"
        ),
        "{err}"
    );
    assert!(!err.contains("is processed"), "{err}");
    assert_eq!(file_hash(&img), file_hash(&server.disk_path(0)));
}

#[test]
fn a_wrong_token_is_a_refusal_exit_3_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), &[]);
    let img = image(dir.path());
    let sent = send_to(
        &server.data,
        "not-the-token-of-this-job",
        &server.fingerprint,
        &[&img],
        &["--retries", "3"],
    );
    let err = sent.stderr();
    assert_eq!(status(&sent), 3, "{err}");
    assert!(err.contains("AUTH_FAILED"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
}

#[test]
fn a_closed_port_is_a_network_failure_exit_4_whose_message_names_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let port = free_port();
    let to = format!("127.0.0.1:{port}");
    // Retried (a network failure may pass), then given up.
    let sent = send_to(
        &to,
        "a-token-of-sixteen-chars",
        FP,
        &[&img],
        &["--retries", "1"],
    );
    let err = sent.stderr();
    assert_eq!(status(&sent), 4, "{err}");
    assert!(err.contains("CONNECT_FAILED"), "{err}");
    assert!(
        err.contains(&format!(
            "is the appliance listening on port {port}, and is that port open to this server"
        )),
        "{err}"
    );
    assert_eq!(
        err.matches("retrying in 1 s (attempt 2 of 2)").count(),
        1,
        "{err}"
    );
}

#[test]
fn the_control_port_is_named_with_the_data_port_exit_2_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    // A data port given by number, as on an instance: /v1/identity names it.
    let data_port = free_port();
    let server = Server::start_on(
        &dir.path().join("state"),
        &format!("127.0.0.1:{data_port}"),
        &[],
    );
    let img = image(dir.path());
    let sent = send_to(
        &server.control,
        &server.token,
        &server.fingerprint,
        &[&img],
        &["--retries", "3"],
    );
    let err = sent.stderr();
    assert_eq!(status(&sent), 2, "{err}");
    assert!(err.contains("WRONG_SERVICE"), "{err}");
    assert!(
        err.contains(&format!(
            "{}: this is ferry's control port (HTTP); the data port is {data_port}",
            server.control
        )),
        "{err}"
    );
    assert!(!err.contains("retrying"), "{err}");
}

#[test]
fn a_service_that_is_not_ferry_is_named_exit_2_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let cases = [
        (
            "an SSH server",
            listener_replying(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
            "does not speak ferry's protocol",
        ),
        (
            "a web server",
            listener_replying(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            ),
            "does not speak ferry's protocol (it answers HTTP)",
        ),
    ];
    for (name, addr, want) in cases {
        let sent = send_to(
            &addr,
            "a-token-of-sixteen-chars",
            FP,
            &[&img],
            &["--retries", "3"],
        );
        let err = sent.stderr();
        assert_eq!(status(&sent), 2, "{name}: {err}");
        assert!(
            err.contains("WRONG_SERVICE") && err.contains(&format!("the service at {addr} {want}")),
            "{name}: {err}"
        );
        assert!(!err.contains("retrying"), "{name}: {err}");
    }
}

#[test]
fn help_lists_the_exit_statuses() {
    let out = Command::new(FERRY)
        .args(["send", "--help"])
        .output()
        .expect("running ferry send --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for (status, meaning) in ferry::job::errors::exit_statuses() {
        // clap wraps long lines: compare the words.
        let words: Vec<&str> = meaning.split_whitespace().collect();
        let flat: String = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(&format!("{status} {}", words.join(" "))),
            "status {status} missing from:\n{help}"
        );
    }
}
