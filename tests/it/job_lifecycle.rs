//! The job's lifecycle through a real `ferry serve` and `ferry send` on
//! loopback: state on /v1/job, refusals on the data port by state with the
//! codes and hints the sender prints, persistence across kill -9, expiry,
//! readiness 503 → 200, and the job metrics.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::common::serve::{file_hash, http, mixed_image, send_to, wait_for, Sent, Server};
use ferry::job::errors::ErrorCode;
use ferry::job::state::{JobRecord, JobSettings, JobStore, Validity};
use serde_json::Value;

fn control_token(state: &Path) -> String {
    std::fs::read_to_string(state.join("control-token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn job(s: &Server) -> Value {
    let auth = format!("Bearer {}", control_token(&s.state));
    let (status, body) = http(&s.control, "GET", "/v1/job", &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn post(s: &Server, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {}", control_token(&s.state));
    let (status, body) = http(&s.control, "POST", path, &[("Authorization", &auth)]);
    (status, serde_json::from_str(&body).unwrap())
}

fn shown(job: &Value) -> String {
    match job["business_status"].as_str() {
        Some(b) => format!("{}/{b}", job["state"].as_str().unwrap()),
        None => job["state"].as_str().unwrap().to_owned(),
    }
}

/// The sender failed with `code`, and printed its message and hint.
fn assert_refused(sent: &Sent, code: ErrorCode) {
    assert!(!sent.ok(), "the sender succeeded");
    let err = sent.stderr();
    assert!(
        err.contains(&format!("{code}: {}", code.message())),
        "no {code} in:\n{err}"
    );
    assert!(
        err.contains(&format!("hint: {}", code.hint())),
        "no hint in:\n{err}"
    );
}

#[test]
fn one_shot_job_finishes_then_refuses_with_the_advice_to_create_a_new_task() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    mixed_image(&src, 24, 1);
    let s = Server::start_job(&state, "127.0.0.1:0", &[]);
    assert_eq!(shown(&job(&s)), "Ready");
    // It names the data port it bound, though the config asked for any.
    let (_, body) = http(&s.control, "GET", "/v1/identity", &[]);
    let identity: Value = serde_json::from_str(&body).unwrap();
    let port: u64 = s.data.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(identity["data_port"], port, "{identity}");
    // Stop is not allowed in Ready; start is.
    let (status, body) = post(&s, "/v1/job/stop");
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("JOB_TRANSITION_REFUSED"))
    );
    let (status, body) = post(&s, "/v1/job/start");
    assert_eq!((status, shown(&body)), (200, "Running/Preparing".into()));
    let (status, body) = post(&s, "/v1/job/stop");
    assert_eq!((status, shown(&body)), (200, "Stopped".into()));
    let sent = s.send(&[&src], &["--retries", "0"]);
    assert_refused(&sent, ErrorCode::JobStopped);
    assert_eq!(shown(&job(&s)), "Stopped");

    post(&s, "/v1/job/start");
    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    // The round ends when the sender has closed its session cleanly.
    wait_for(10, "the job to be Finished", || {
        shown(&job(&s)) == "Finished"
    });
    let j = job(&s);
    assert_eq!(j["rounds_completed"], 1);
    assert_eq!(j["disks"][0]["size"], 24 << 20);
    assert_eq!(j["disks"][0]["committed"], 24 << 20);
    assert_eq!(j["disks"][0]["verified"], true);
    assert_eq!(
        s.metric("ferry_job_state{business_status=\"\",state=\"Finished\"}"),
        1.0
    );
    assert_eq!(
        s.metric("ferry_disk_committed_bytes{disk=\"0\"}"),
        (24 << 20) as f64
    );
    assert_eq!(
        s.metric("ferry_disk_size_bytes{disk=\"0\"}"),
        (24 << 20) as f64
    );

    let sent = s.send(&[&src], &["--retries", "0"]);
    assert_refused(&sent, ErrorCode::JobFinished);
    assert!(sent.stderr().contains("create a new migration task"));
    // A probe writes nothing and is allowed in any state.
    assert_eq!(shown(&job(&s)), "Finished");
}

#[test]
fn syncing_survives_kill_9_and_the_sender_resumes_to_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    mixed_image(&src, 192, 2);
    let mut s = Server::start(&state, &[]);
    let id = job(&s)["id"].as_str().unwrap().to_owned();
    // Send in the background and kill the appliance while Syncing.
    let (data, token, fp) = (s.data.clone(), s.token.clone(), s.fingerprint.clone());
    let src2 = src.clone();
    let sender =
        std::thread::spawn(move || send_to(&data, &token, &fp, &[&src2], &["--retries", "0"]));
    wait_for(60, "the job to be Syncing", || {
        shown(&job(&s)) == "Running/Syncing"
    });
    s.kill();
    let _ = sender.join();

    let s = Server::start(&state, &[]);
    let j = job(&s);
    assert_eq!(j["id"], id.as_str(), "the same job after the restart");
    assert_eq!(shown(&j), "Running/Syncing");
    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    wait_for(10, "the job to be Waiting", || shown(&job(&s)) == "Waiting");
    assert_eq!(file_hash(&src), file_hash(&s.disk_path(0)));

    // The round is handed off: no sender writes the disks until the control
    // plane, having taken its snapshot, starts the next round.
    let refused = s.send_only(&[&src], &["--retries", "0"]);
    assert!(!refused.ok());
    assert!(
        refused.stderr().contains("JOB_HANDED_OFF"),
        "{}",
        refused.stderr()
    );
    assert_eq!(file_hash(&src), file_hash(&s.disk_path(0)));
    let (status, body) = post(&s, "/v1/job/start");
    assert_eq!(status, 200, "{body}");
    // Incremental: the next round is accepted and ends Waiting again.
    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    wait_for(10, "the second round to end", || {
        job(&s)["rounds_completed"] == 2
    });
    assert_eq!(shown(&job(&s)), "Waiting");
    // Delete from Waiting: the disks are forgotten and a fresh job is Ready.
    let id = job(&s)["id"].clone();
    let (status, body) = post(&s, "/v1/job/delete");
    assert_eq!((status, shown(&body)), (200, "Ready".into()));
    assert_ne!(body["id"], id);
    assert!(!s.disk_path(0).exists());
}

#[test]
fn an_expired_job_refuses_senders() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // A job created 8 days ago with a validity of 7 days.
    {
        let ledger = ferry::job::ledger::Ledger::open(&state.join("ledger.redb")).unwrap();
        let created = SystemTime::now() - Duration::from_secs(8 * 86_400);
        let record = JobRecord::new(
            "old-job".into(),
            JobSettings {
                incremental: false,
                validity: Validity::days(7).unwrap(),
            },
            created,
        );
        ledger.save(&record).unwrap();
    }
    let src = dir.path().join("src.img");
    mixed_image(&src, 4, 3);
    let s = Server::start_job(&state, "127.0.0.1:0", &[]);
    let j = job(&s);
    assert_eq!(
        (j["id"].as_str(), shown(&j)),
        (Some("old-job"), "Expired".into())
    );
    let sent = s.send(&[&src], &["--retries", "0"]);
    assert_refused(&sent, ErrorCode::JobExpired);
    assert!(!s.disk_path(0).exists(), "nothing was written");
}

#[test]
fn readiness_waits_for_writable_targets() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let target = dir.path().join("target.img");
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!("[[disk]]\nindex = 0\ntarget = \"{}\"\n", target.display()),
    )
    .unwrap();
    let token =
        crate::common::serve::secret_file(dir.path(), "job-token", "job-token-0123456789abcdef");
    let control_token =
        crate::common::serve::secret_file(dir.path(), "control-token", "control-token-0123456789");
    let mut s = Server::start(
        &state,
        &[
            "--config",
            config.to_str().unwrap(),
            "--token-file",
            &token,
            "--control-token-file",
            &control_token,
        ],
    );
    s.control_token = "control-token-0123456789".to_owned();
    let (status, body) = s.http("GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["reasons"],
        serde_json::json!([format!(
            "the target of disk 0 ({}) is not writable: No such file or directory (os error 2)",
            target.display()
        )])
    );
    assert_eq!(v["checks"]["data_port_bound"], true);
    assert_eq!(v["checks"]["job_store_open"], true);
    std::fs::File::create(&target)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let (status, body) = s.http("GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    // The production control token works; no control-token file was made.
    assert!(!state.join("control-token").exists());
    let (status, _) = http(
        &s.control,
        "GET",
        "/v1/job",
        &[("Authorization", "Bearer control-token-0123456789")],
    );
    assert_eq!(status, 200);
    let (status, _) = http(
        &s.control,
        "GET",
        "/v1/job",
        &[("Authorization", "Bearer job-token-0123456789abcdef")],
    );
    assert_eq!(
        status, 401,
        "the sender's token does not open the control API"
    );
    assert_eq!(s.metric("ferry_control_unauthorized_total"), 1.0);
}

#[test]
fn probe_reports_a_positive_rate_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    // A sparse 10 GiB "disk": only its size matters to the probe.
    std::fs::File::create(&src)
        .unwrap()
        .set_len(10 << 30)
        .unwrap();
    let s = Server::start_job(&state, "127.0.0.1:0", &[]);
    let before = job(&s);
    let sent = send_to(
        &s.data,
        &s.token,
        &s.fingerprint,
        &[&src],
        &["--probe", "--probe-seconds", "2"],
    );
    assert!(sent.ok(), "{}", sent.stderr());
    let out = String::from_utf8(sent.output.stdout.clone()).unwrap();
    let r = &sent.report;
    let rate = r["rate_bps"].as_f64().unwrap();
    assert!(rate > 1e6, "rate {rate} B/s");
    assert!(r["bytes"].as_u64().unwrap() > 0);
    let eta = r["disks"][0]["eta_secs"].as_u64().unwrap();
    assert_eq!(eta, ((10u64 << 30) as f64 / rate).ceil() as u64);
    let first = out.lines().next().unwrap();
    assert_eq!(
        first.split(' ').take(3).collect::<Vec<_>>(),
        ["probe:", &format!("{:.1}", rate / 1e6), "MB/s"],
        "{out}"
    );
    assert!(
        out.contains(&format!("disk 0 ({}): 10.0 GiB, about ", src.display())),
        "{out}"
    );
    // Nothing written, the job untouched.
    assert!(!s.disk_path(0).exists());
    let after = job(&s);
    assert_eq!(
        (shown(&after), &after["seq"]),
        ("Ready".into(), &before["seq"])
    );
    assert!(s.metric("ferry_received_bytes_total") == 0.0);
}

#[test]
fn webhook_from_ferry_serve_reports_every_state_change_signed() {
    use std::io::{BufRead, BufReader, Read, Write};
    // A minimal control plane: an HTTP/1.1 endpoint that records each
    // request's signature header and body and answers 204.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let (mut sig, mut len) = (String::new(), 0usize);
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let (k, v) = l.split_once(": ").unwrap();
                    match k.to_ascii_lowercase().as_str() {
                        "x-ferry-signature" => sig = v.to_owned(),
                        "content-length" => len = v.parse().unwrap(),
                        _ => {}
                    }
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap();
                tx.send((sig, body)).unwrap();
                let mut w = &stream;
                w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            }
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    mixed_image(&src, 8, 5);
    let secret = "webhook-secret-for-the-test";
    let url = format!("http://{addr}/ferry/events");
    let secret_path = crate::common::serve::secret_file(dir.path(), "hook-secret", secret);
    let s = Server::start_job(
        &state,
        "127.0.0.1:0",
        &["--webhook-url", &url, "--webhook-secret-file", &secret_path],
    );
    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    // Every event is posted: the status changes and the pipeline's steps,
    // numbered without a gap, until the round ends (Finished).
    let mut all: Vec<Value> = Vec::new();
    while !all.iter().any(|e| e["to"]["state"] == "Finished") {
        let (sig, body) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a webhook event");
        assert!(
            ferry::serve::webhook::verify(secret.as_bytes(), &body, &sig),
            "bad signature {sig}"
        );
        assert_eq!(sig, ferry::serve::webhook::sign(secret.as_bytes(), &body));
        all.push(serde_json::from_slice::<Value>(&body).unwrap());
    }
    let numbers: Vec<u64> = all
        .iter()
        .map(|e| e["event_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=all.len() as u64).collect::<Vec<_>>());
    assert!(
        all.iter()
            .any(|e| e["event"] == "job.step_changed" && e["step"] == "handoff"),
        "{all:?}"
    );
    // The same events, read back: a control plane that missed them
    // catches up with GET /v1/job/events.
    let auth = format!("Bearer {}", s.control_token);
    let (status, page) = crate::common::serve::http(
        &s.control,
        "GET",
        "/v1/job/events?after=0",
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["events"].as_array().unwrap(), &all);
    assert_eq!(page["last_event_seq"], all.len());
    assert_eq!(page["gap"], false);
    let (_, later) = crate::common::serve::http(
        &s.control,
        "GET",
        &format!("/v1/job/events?after={}", all.len() - 1),
        &[("Authorization", &auth)],
    );
    let later: Value = serde_json::from_str(&later).unwrap();
    assert_eq!(later["events"].as_array().unwrap(), &all[all.len() - 1..]);
    let events: Vec<Value> = all
        .iter()
        .filter(|e| e["event"] == "job.status_changed")
        .cloned()
        .collect();
    let id = job(&s)["id"].clone();
    let steps: Vec<(u64, String, String, String)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["event"], "job.status_changed");
            assert_eq!(e["job_id"], id);
            (
                e["seq"].as_u64().unwrap(),
                shown(&e["from"]),
                shown(&e["to"]),
                e["cause"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = [
        (1, "Ready", "Running/Preparing", "sender"),
        (2, "Running/Preparing", "Running/Syncing", "syncing"),
        (3, "Running/Syncing", "Running/Processing", "committed"),
        (4, "Running/Processing", "Running/Cleaning", "cleaning"),
        (5, "Running/Cleaning", "Finished", "handoff"),
    ];
    let expect: Vec<(u64, String, String, String)> = expect
        .iter()
        .map(|(n, a, b, c)| (*n, a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(steps, expect);
    // The handoff's event names the manifest by the digest of its bytes.
    let manifest = std::fs::read(state.join("handoff.json")).unwrap();
    assert_eq!(
        events[4]["handoff"]["manifest_digest"],
        blake3::hash(&manifest).to_hex().as_str()
    );
    assert_eq!(events[4]["handoff"]["round"], 1);
    assert!(events[3].get("handoff").is_none());
    wait_for(10, "every delivery counted", || {
        s.metric("ferry_webhook_events_total{outcome=\"delivered\"}") == all.len() as f64
    });
    assert_eq!(
        s.metric("ferry_webhook_events_total{outcome=\"dropped\"}"),
        0.0
    );
}

#[test]
fn stopping_a_syncing_job_cuts_the_sender_and_start_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    mixed_image(&src, 256, 6);
    let s = Server::start_job(&state, "127.0.0.1:0", &[]);
    let (data, token, fp, src2) = (
        s.data.clone(),
        s.token.clone(),
        s.fingerprint.clone(),
        src.clone(),
    );
    let sender =
        std::thread::spawn(move || send_to(&data, &token, &fp, &[&src2], &["--retries", "0"]));
    wait_for(60, "the job to be Syncing", || {
        shown(&job(&s)) == "Running/Syncing"
    });
    let (status, body) = post(&s, "/v1/job/stop");
    assert_eq!((status, shown(&body)), (200, "Stopped".into()));
    let sent = sender.join().unwrap();
    assert_refused(&sent, ErrorCode::JobStopped);
    assert!(
        sent.stderr()
            .contains("the job became Stopped during the transfer"),
        "{}",
        sent.stderr()
    );
    let j = job(&s);
    assert_eq!(shown(&j), "Stopped");
    assert!(j["disks"][0]["committed"].as_u64().unwrap() < 256 << 20);
    // Start again: the sender resumes and the job finishes, bit-exact.
    let (status, body) = post(&s, "/v1/job/start");
    assert_eq!((status, shown(&body)), (200, "Running/Preparing".into()));
    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    wait_for(10, "the job to be Finished", || {
        shown(&job(&s)) == "Finished"
    });
    assert_eq!(file_hash(&src), file_hash(&s.disk_path(0)));
}

#[test]
fn serve_tells_systemd_it_is_ready() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = std::process::Command::new(crate::common::serve::FERRY)
        .args([
            "serve",
            "--data-listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    let msg = String::from_utf8(buf[..n.unwrap()].to_vec()).unwrap();
    assert!(
        msg.starts_with("READY=1\nSTATUS=job Ready: data port 127.0.0.1:"),
        "{msg}"
    );
}

#[test]
fn a_disk_sent_wrongly_is_reset_and_a_deleted_job_starts_over_with_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (wrong, right) = (dir.path().join("wrong.img"), dir.path().join("right.img"));
    mixed_image(&wrong, 8, 2);
    mixed_image(&right, 12, 3);
    let s = Server::start_job(&state, "127.0.0.1:0", &[]);
    // The wrong disk first: the job Finishes with it, and the right one is
    // refused as a disk whose size changed.
    let sent = s.send(&[&wrong], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    wait_for(10, "the job to be Finished", || {
        shown(&job(&s)) == "Finished"
    });
    let before = job(&s);

    // A disk the job never saw is not there to reset.
    let (status, body) = post(&s, "/v1/job/disks/5/reset");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("DISK_NOT_CONFIGURED")),
        "{body}"
    );

    // Finished refuses senders; delete starts the job over.
    let (status, body) = post(&s, "/v1/job/delete");
    assert_eq!((status, shown(&body)), (200, "Ready".into()), "{body}");
    assert_ne!(body["id"], before["id"], "a fresh job has a new id");
    assert_eq!(body["disks"].as_array().map(Vec::len), Some(0), "{body}");
    assert_eq!(body["rounds_completed"], 0);
    assert!(!s.disk_path(0).exists(), "the deleted job's image is gone");
    // The same token and fingerprint: the same command now migrates the
    // right disk, from the start.
    let sent = s.send(&[&right], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    assert_eq!(file_hash(&right), file_hash(&s.disk_path(0)));
    wait_for(10, "the new job to be Finished", || {
        shown(&job(&s)) == "Finished"
    });

    // A Finished job's disks are handed off, named by its manifest: a
    // reset is refused and changes nothing.
    assert_reset_refused_as_handed_off(&s, &right);
}

/// `POST /v1/job/disks/0/reset` is refused with 409 DISK_HANDED_OFF; the
/// image the handoff manifest names is still `source`'s bytes and the
/// manifest is still served.
fn assert_reset_refused_as_handed_off(s: &Server, source: &std::path::Path) {
    let (status, body) = post(s, "/v1/job/disks/0/reset");
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("DISK_HANDED_OFF")),
        "{body}"
    );
    assert_eq!(
        body["hint"],
        ErrorCode::DiskHandedOff.hint(),
        "the hint says what to do"
    );
    assert_eq!(file_hash(source), file_hash(&s.disk_path(0)));
    let auth = format!("Bearer {}", control_token(&s.state));
    let (status, manifest) = http(
        &s.control,
        "GET",
        "/v1/job/handoff",
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 200, "{manifest}");
    let image = s.disk_path(0);
    assert!(
        manifest.contains(image.to_str().unwrap()),
        "the manifest names {}: {manifest}",
        image.display()
    );
}

#[test]
fn a_handed_off_disk_is_not_reset_until_the_next_round_starts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    mixed_image(&src, 8, 6);
    let s = Server::start(&state, &[]);
    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    wait_for(10, "the round to be held", || job(&s)["held"] == true);
    assert_eq!(shown(&job(&s)), "Waiting");
    assert_reset_refused_as_handed_off(&s, &src);
    // Stopped while held, the round is still handed off.
    let (status, body) = post(&s, "/v1/job/stop");
    assert_eq!((status, shown(&body)), (200, "Stopped".into()), "{body}");
    assert_reset_refused_as_handed_off(&s, &src);
    // Once the next round starts the snapshot is taken: the reset is let
    // through (after a stop, as for any round).
    let (status, body) = post(&s, "/v1/job/start");
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&s, "/v1/job/stop");
    assert_eq!((status, shown(&body)), (200, "Stopped".into()), "{body}");
    let (status, body) = post(&s, "/v1/job/disks/0/reset");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disks"].as_array().map(Vec::len), Some(0), "{body}");
    assert!(!s.disk_path(0).exists(), "the reset disk's image is gone");
}

#[test]
fn a_wrongly_announced_disk_is_reset_between_rounds_and_sent_again_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (wrong, right) = (dir.path().join("wrong.img"), dir.path().join("right.img"));
    mixed_image(&wrong, 8, 4);
    mixed_image(&right, 12, 5);
    let s = Server::start(&state, &[]);
    let sent = s.send(&[&wrong], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    let sent = s.send(&[&right], &["--retries", "0"]);
    assert_refused(&sent, ErrorCode::DiskSizeChanged);
    // The refused round is still Preparing: no reset while a round runs.
    let (status, body) = post(&s, "/v1/job/disks/0/reset");
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("JOB_TRANSITION_REFUSED")),
        "{body}"
    );
    // Stopped, disk 0 is reset; the next round sends the right disk whole.
    let (status, body) = post(&s, "/v1/job/stop");
    assert_eq!((status, shown(&body)), (200, "Stopped".into()), "{body}");
    let (status, body) = post(&s, "/v1/job/disks/0/reset");
    assert_eq!(status, 200, "{body}");
    post(&s, "/v1/job/start");
    let sent = s.send_only(&[&right], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    assert_eq!(file_hash(&right), file_hash(&s.disk_path(0)));
    assert_eq!(
        sent.disk(0, "unchanged_bytes"),
        0,
        "nothing of the wrong disk is reused"
    );
}
