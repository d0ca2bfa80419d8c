//! `ferry serve` at start, as real processes: a port in use, a second
//! appliance on the same state directory, a damaged ledger, a refused disk
//! record, a missing target (not ready, said in systemd's STATUS=), a
//! regenerated TLS identity, the modes of what the state directory holds,
//! and logs and secrets when the output is not a terminal.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::serve::{http, mixed_image, Server, FERRY};
use ferry::job::errors::ErrorCode;
use ferry::job::ledger::{DiskRecord, Ledger};
use ferry::job::state::{JobRecord, JobSettings, JobStatus, JobStore, Validity};
use serde_json::Value;

/// `ferry serve` that is expected to exit: its output, within 30 s.
fn serve_exits(state: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(FERRY)
        .args(["serve", "--no-build", "--state-dir"])
        .arg(state)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("ferry serve {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn log_of(state: &Path) -> String {
    std::fs::read_to_string(state.with_extension("serve.log")).unwrap_or_default()
}

#[test]
fn a_port_in_use_is_named_with_what_to_do_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    for (which, args, key) in [
        (
            "data",
            [
                "--data-listen",
                addr.as_str(),
                "--control-listen",
                "127.0.0.1:0",
            ],
            "data_listen (--data-listen)",
        ),
        (
            "control",
            [
                "--data-listen",
                "127.0.0.1:0",
                "--control-listen",
                addr.as_str(),
            ],
            "control_listen (--control-listen)",
        ),
    ] {
        let state = dir.path().join(format!("state-{which}"));
        let out = serve_exits(&state, &args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{which}: {err}");
        assert!(
            err.contains(&format!(
                "error: binding the {which} port {addr}: port {port} is in use by another process; stop it or set {key}"
            )),
            "{which}: {err}"
        );
        assert!(!state.exists(), "{which}: the state directory was created");
    }
    // An existing, empty state directory stays empty.
    let state = dir.path().join("state-empty");
    std::fs::create_dir(&state).unwrap();
    let out = serve_exits(&state, &["--data-listen", &addr]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}

#[test]
fn a_second_appliance_on_the_same_state_directory_names_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let first = Server::start(&state, &[]);
    let ledger = std::fs::read(state.join("ledger.redb")).unwrap();
    let out = serve_exits(
        &state,
        &[
            "--data-listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "the state directory {} is in use by another ferry serve (process {}, holding {}): stop it, or give this one another --state-dir",
            state.display(),
            first.child.id(),
            state.join("lock").display()
        )),
        "{err}"
    );
    // The same ports as the first: the lock is what is named, not the ports.
    let out = serve_exits(
        &state,
        &[
            "--data-listen",
            &first.data,
            "--control-listen",
            &first.control,
        ],
    );
    assert!(
        stderr(&out).contains(&format!("(process {},", first.child.id())),
        "{}",
        stderr(&out)
    );
    assert_eq!(first.http("GET", "/livez").0, 200);
    assert_eq!(std::fs::read(state.join("ledger.redb")).unwrap(), ledger);
    // Once the first is gone (even killed), the next one starts.
    drop(first);
    let again = Server::start(&state, &[]);
    assert_eq!(
        std::fs::read_to_string(state.join("lock")).unwrap().trim(),
        again.child.id().to_string()
    );
}

#[test]
fn a_damaged_ledger_is_named_with_what_to_do_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    mixed_image(&src, 8, 1);
    {
        let s = Server::start(&state, &[]);
        assert!(s.send(&[&src], &[]).ok());
    }
    let path = state.join("ledger.redb");
    let good = std::fs::read(&path).unwrap();
    let token = std::fs::read(state.join("token")).unwrap();
    let cert = std::fs::read(state.join("tls/cert.pem")).unwrap();
    for (name, bytes) in [
        ("garbage", b"garbage ".repeat(4096)),
        ("truncated", good[..good.len() / 2].to_vec()),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let out = serve_exits(
            &state,
            &[
                "--data-listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
            ],
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            err.contains(&format!("LEDGER_FAILED: The job's ledger could not be read or written (the ledger {} is damaged (", path.display()))
                && err.contains("): move it aside to start the job over; the token and certificate are kept)"),
            "{name}: {err}"
        );
    }
    // As the message says: moved aside, the job starts over with the same
    // token and certificate.
    std::fs::rename(&path, state.join("ledger.redb.damaged")).unwrap();
    let s = Server::start(&state, &[]);
    assert_eq!(std::fs::read(state.join("token")).unwrap(), token);
    assert_eq!(std::fs::read(state.join("tls/cert.pem")).unwrap(), cert);
    assert!(s.send(&[&src], &[]).ok());
}

#[test]
fn a_disk_record_no_sender_could_make_is_refused_without_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    {
        let l = Ledger::open(&state.join("ledger.redb")).unwrap();
        let rec = |size, chunk_size| DiskRecord {
            size,
            chunk_size,
            fresh: true,
            target: "disk".into(),
        };
        l.put_disk(0, &rec(8 << 20, 3)).unwrap();
        // 15 TiB in 64 KiB chunks: valid, and must not need its chunks in
        // memory to start.
        l.put_disk(1, &rec(15 << 40, 64 << 10)).unwrap();
        l.commit_chunks(1, &[(7, [1; 32]), ((15 << 24) - 1, [2; 32])])
            .unwrap();
        // The job was Syncing with it when the appliance stopped.
        let mut job = JobRecord::new(
            "syncing-job".into(),
            JobSettings {
                incremental: true,
                validity: Validity::days(30).unwrap(),
            },
            SystemTime::now(),
        );
        job.status = JobStatus::SYNCING;
        l.save(&job).unwrap();
    }
    let s = Server::start(&state, &[]);
    let (status, body) = s.http("GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let reason = format!(
        "the ledger's record of disk 0 is refused: its chunk size of 3 bytes is not a power of two from 64 KiB to 16 MiB; move the ledger {} aside to start the job over (the token and certificate are kept)",
        state.join("ledger.redb").display()
    );
    assert_eq!(v["reasons"], serde_json::json!([reason.clone()]));
    assert_eq!(v["checks"]["ledger_records_valid"], false);
    assert_eq!(s.http("GET", "/livez").0, 200);
    // A job running with it is InError with the reason, not crash-looping.
    let auth = format!("Bearer {}", s.control_token);
    let (status, body) = http(&s.control, "GET", "/v1/job", &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{body}");
    let job: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["state"], "InError", "{body}");
    assert!(
        body.contains("LEDGER_FAILED") && body.contains("the ledger's record of disk 0 is refused"),
        "{body}"
    );
    s.control("POST", "/v1/job/start");
    let src = dir.path().join("src.img");
    mixed_image(&src, 8, 2);
    let sent = s.send(&[&src], &["--retries", "0"]);
    assert!(!sent.ok());
    assert!(
        sent.stderr().contains("LEDGER_FAILED") && sent.stderr().contains(&reason),
        "{}",
        sent.stderr()
    );
    let log = log_of(&state);
    assert!(log.contains(&reason), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A NOTIFY_SOCKET standing in for systemd's, and `ferry serve` told of it.
struct Notified {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    child: std::process::Child,
    control: String,
}

impl Notified {
    fn start(state: &Path, args: &[&str]) -> Notified {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let log = std::fs::File::create(state.with_extension("serve.log")).unwrap();
        let mut child = Command::new(FERRY)
            .args([
                "serve",
                "--no-build",
                "--data-listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(state)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &path)
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut control = String::new();
        let mut line = String::new();
        while control.is_empty() {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "{}", log_of(state));
            if let Some(v) = line.trim().strip_prefix("control-listen: ") {
                control = v.to_owned();
            }
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Notified {
            sock,
            _dir: dir,
            child,
            control,
        }
    }

    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_missing_target_starts_not_ready_with_one_warning_and_the_reason_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let target = dir.path().join("target.img");
    // No control token configured: one is generated and kept.
    let config =
        crate::common::serve::target_config(dir.path(), "job-token-0123456789abcdef", &[&target]);
    let s = Notified::start(&state, &["--config", config.to_str().unwrap()]);
    let reason = format!(
        "the target of disk 0 ({}) is not writable: No such file or directory (os error 2)",
        target.display()
    );
    let first = s.next();
    assert!(
        first.starts_with(&format!(
            "READY=1\nSTATUS=not ready: {reason} (job Ready: data port 127.0.0.1:"
        )),
        "{first}"
    );
    let log = log_of(&state);
    assert_eq!(
        log.matches(&format!("WARN ferry::serve: not ready: {reason}"))
            .count(),
        1,
        "{log}"
    );
    let (status, body) = http(&s.control, "GET", "/readyz", &[]);
    assert_eq!(status, 503, "{body}");
    // The generated control token opens /v1/job; it was never printed.
    let control_token = std::fs::read_to_string(state.join("control-token")).unwrap();
    assert_eq!(mode(&state.join("control-token")), 0o600);
    let auth = format!("Bearer {}", control_token.trim());
    assert_eq!(
        http(&s.control, "GET", "/v1/job", &[("Authorization", &auth)]).0,
        200
    );
    assert!(log.contains(&format!(
        "no control token was configured (--control-token-file, FERRY_CONTROL_TOKEN, control_token): generated one, kept in {}",
        state.join("control-token").display()
    )), "{log}");
    assert!(!log.contains(control_token.trim()));
    // The disk is attached: ready, and systemd is told, without a restart.
    std::fs::File::create(&target)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let next = s.next();
    assert!(
        next.starts_with("STATUS=job Ready: data port 127.0.0.1:"),
        "{next}"
    );
    assert_eq!(http(&s.control, "GET", "/readyz", &[]).0, 200);
}

#[test]
fn piped_output_has_no_colour_codes_and_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut child = Command::new(FERRY)
        .args([
            "serve",
            "--no-build",
            "--data-listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(&state)
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut stdout = String::new();
    while !stdout.contains("control-listen: ") {
        assert!(out.read_line(&mut stdout).unwrap() > 0, "{stdout}");
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains("\x1b["), "{err:?}");
    let token = std::fs::read_to_string(state.join("token")).unwrap();
    assert_eq!(token.trim().len(), 48);
    assert!(!stdout.contains(token.trim()), "{stdout}");
    assert!(!err.contains(token.trim()), "{err}");
    assert!(
        stdout.contains(&format!(
            "token: generated, kept in {}",
            state.join("token").display()
        )),
        "{stdout}"
    );
}

/// On a terminal, `ferry serve` prints the sender's command line ready to
/// paste: its data port, its fingerprint, the token (in the environment).
/// Run under `script`, which gives it a terminal.
#[test]
fn on_a_terminal_serve_prints_the_senders_command() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let command = format!(
        "{FERRY} serve --no-build --data-listen 127.0.0.1:0 --control-listen 127.0.0.1:0 --state-dir {}",
        state.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    // The command comes before the mode line, which every start prints.
    while !text.contains("mode: ") {
        assert!(out.read_line(&mut text).unwrap() > 0, "{text}");
    }
    let _ = child.kill();
    // The appliance under the terminal `script` made.
    let _ = Command::new("pkill")
        .args(["-f", "--", &format!("--state-dir {}", state.display())])
        .status();
    let _ = child.wait();
    let token = std::fs::read_to_string(state.join("token")).unwrap();
    let fingerprint = std::fs::read_to_string(state.join("tls/fingerprint")).unwrap();
    let data = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("data-listen: "))
        .unwrap_or_else(|| panic!("no data-listen line: {text}"))
        .to_owned();
    let want = format!(
        "FERRY_TOKEN={} ferry send --to {data} --fingerprint {} --disk /dev/sda",
        token.trim(),
        fingerprint.trim()
    );
    assert!(text.contains(&want), "{want:?} not in {text}");
}

/// Every file and directory under `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = vec![(dir.to_owned(), mode(dir))];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(modes(&p));
        } else {
            out.push((p.clone(), mode(&p)));
        }
    }
    out
}

#[test]
fn what_the_state_directory_holds_is_private_after_a_send() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    mixed_image(&src, 8, 3);
    let s = Server::start(&state, &[]);
    assert!(s.send(&[&src], &[]).ok());
    let all = modes(&state);
    for name in [
        "ledger.redb",
        "token",
        "control-token",
        "lock",
        "tls/key.pem",
        "tls/cert.pem",
        "disks/disk-0.img",
    ] {
        assert!(
            all.iter().any(|(p, _)| *p == state.join(name)),
            "no {name} in {all:?}"
        );
    }
    for (p, m) in &all {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*m, want, "{}: {m:04o}", p.display());
    }
}

#[test]
fn a_regenerated_tls_identity_is_a_warning_that_pinned_senders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let old = Server::start(&state, &[]).fingerprint.clone();
    std::fs::remove_dir_all(state.join("tls")).unwrap();
    let s = Server::start(&state, &[]);
    assert_ne!(s.fingerprint, old);
    let log = log_of(&state);
    assert!(
        log.contains(&format!(
            "the data port's TLS identity was missing from {} and has been generated anew: senders that pinned the old fingerprint are refused (TLS_FINGERPRINT_MISMATCH); give them the new one (--fingerprint {}, kept in {}, also GET /v1/identity)",
            state.join("tls").display(),
            s.fingerprint,
            state.join("tls/fingerprint").display()
        )),
        "{log}"
    );
    assert_eq!(log.matches("generated anew").count(), 1, "{log}");
}

/// A secret given as a plain argument would be readable by every local
/// user in /proc/<pid>/cmdline: refused as a usage error (status 2) that
/// names the alternatives, before anything is written. From a file it is
/// taken, and the command line then holds no secret.
#[test]
fn a_secret_on_the_command_line_is_refused_and_a_secret_file_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let secret = "a-secret-of-the-test-0123456789";
    for (option, env, key) in [
        ("token", "FERRY_TOKEN", "token"),
        ("control-token", "FERRY_CONTROL_TOKEN", "control_token"),
        ("webhook-secret", "FERRY_WEBHOOK_SECRET", "webhook_secret"),
    ] {
        let flag = format!("--{option}");
        let out = serve_exits(
            &state,
            &[
                "--data-listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
                &flag,
                secret,
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains(&format!(
                "USAGE: The command line is not valid (--{option} puts a secret on the command line, \
                 which every local user can read in /proc/<pid>/cmdline: give it with \
                 --{option}-file FILE, in the environment as {env}, or as `{key}` in the config file)"
            )),
            "{flag}: {err}"
        );
        assert!(
            !err.contains(secret),
            "{flag}: the error repeats the secret: {err}"
        );
        assert!(!state.exists(), "{flag}: the state directory was written");
    }

    // From files: the sender proves the job token of the file, the control
    // token of the file opens /v1/job, and neither is on the command line.
    let token = crate::common::serve::secret_file(dir.path(), "token", secret);
    let control =
        crate::common::serve::secret_file(dir.path(), "control", "control-secret-0123456789");
    let s = Server::start(
        &state,
        &["--token-file", &token, "--control-token-file", &control],
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(!cmdline.contains(secret), "{cmdline}");
    assert!(!cmdline.contains("control-secret"), "{cmdline}");
    assert_eq!(
        http(
            &s.control,
            "GET",
            "/v1/job",
            &[("Authorization", "Bearer control-secret-0123456789")]
        )
        .0,
        200
    );
    let src = dir.path().join("src.img");
    mixed_image(&src, 4, 9);
    let sent = crate::common::serve::send_to(&s.data, secret, &s.fingerprint, &[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
}

/// Bytes flipped inside the ledger's last pages (a few bytes of a page
/// header: its type, its entry count, its entries' offsets) are
/// LEDGER_FAILED with its hint, as a damaged header or a truncation is,
/// never a panic of the store ("entered unreachable code", "task 3
/// panicked"). A flip in a page the start does not walk lets the appliance
/// start; at least one of them must be found damaged, or the test proves
/// nothing.
#[test]
fn a_ledger_damaged_in_its_last_pages_is_named_with_what_to_do_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    mixed_image(&src, 8, 1);
    {
        // Stopped as systemd stops it (SIGTERM): the ledger is closed
        // cleanly, so the next start trusts it without a repair pass, and
        // damage shows only when the store walks the damaged page.
        let mut s = Server::start(&state, &[]);
        assert!(s.send(&[&src], &[]).ok());
        let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = s.child.wait().unwrap();
        assert!(status.success(), "ferry serve stopped with {status}");
    }
    let path = state.join("ledger.redb");
    let good = std::fs::read(&path).unwrap();
    // The file ends in pages not used yet (zeros): the last pages that
    // hold anything.
    const PAGE: usize = 4096;
    let last_pages: Vec<usize> = (0..good.len() / PAGE)
        .rev()
        .filter(|p| good[p * PAGE..(p + 1) * PAGE].iter().any(|&b| b != 0))
        .take(8)
        .collect();
    let mut damaged = Vec::new();
    for page in last_pages {
        for at in [0usize, 2, 5, 7] {
            let offset = page * PAGE + at;
            let mut bytes = good.clone();
            bytes[offset] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
            let what = format!("byte {offset} of {}", good.len());
            let Some(err) = serve_fails_to_start(&state) else {
                continue;
            };
            assert!(!err.contains("panicked"), "{what}: {err}");
            assert!(
                err.contains(&format!(
                    "LEDGER_FAILED: The job's ledger could not be read or written (the ledger {} is damaged (",
                    path.display()
                )) && err.contains(
                    "): move it aside to start the job over; the token and certificate are kept)"
                ),
                "{what}: {err}"
            );
            assert!(
                err.contains(&format!("hint: {}", ErrorCode::LedgerFailed.hint())),
                "{what}: {err}"
            );
            damaged.push(offset);
        }
    }
    assert!(!damaged.is_empty(), "no flip was found damaged");
    eprintln!("found damaged: bytes {damaged:?} of {}", good.len());
}

/// `ferry serve` on `state`: None once it has started (it prints its
/// addresses after the state directory was read; it is then stopped), or
/// the stderr of a start that failed, with a status of 1.
fn serve_fails_to_start(state: &Path) -> Option<String> {
    let mut child = Command::new(FERRY)
        .args(["serve", "--no-build", "--data-listen", "127.0.0.1:0"])
        .args(["--control-listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        if line.unwrap().starts_with("control-listen: ") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    Some(stderr(&out))
}

/// A configuration that cannot work is refused before the state directory
/// is written: a webhook URL that is not http(s), one without its secret,
/// and hooks for an appliance that does not build (serve_exits runs with
/// --no-build).
#[test]
fn a_configuration_that_cannot_work_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let secret =
        crate::common::serve::secret_file(dir.path(), "hook-secret", "s3cret-for-the-hook");
    let hooks = dir.path().join("hooks.toml");
    std::fs::write(
        &hooks,
        "[[hook]]\nname = \"x\"\nphase = \"after-repair\"\nscript = \"true\"\n",
    )
    .unwrap();
    let ports = [
        "--data-listen",
        "127.0.0.1:0",
        "--control-listen",
        "127.0.0.1:0",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--webhook-url",
                "ftp://cp.example/hook",
                "--webhook-secret-file",
                &secret,
            ],
            "the webhook URL \"ftp://cp.example/hook\" is neither http:// nor https://",
        ),
        (
            vec!["--webhook-url", "http://cp.example/hook"],
            "--webhook-url needs a webhook secret",
        ),
        (
            vec!["--hooks", hooks.to_str().unwrap()],
            "hooks are given, and this appliance does not build the OS",
        ),
    ];
    for (args, want) in cases {
        let state = dir.path().join("state");
        let all: Vec<&str> = ports.iter().copied().chain(args.iter().copied()).collect();
        let out = serve_exits(&state, &all);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!state.exists(), "{args:?}: the state directory was written");
    }
}
