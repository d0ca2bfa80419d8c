//! The status page in a real headless Chromium: it loads from the control
//! API on loopback, authenticates with the token from the URL fragment,
//! and shows the job's state and per-disk progress. A screenshot is kept
//! in $FERRY_ARTIFACTS.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "common/serve.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::cmd::{self, Cmd};
use ferry::job::handle::JobHandle;
use ferry::job::state::{JobSettings, ManualClock, MemoryStore};
use ferry::serve::api::{self, ApiState, HttpLimits, Identity};

const TOKEN: &str = "page-token-4f1c";
const GIB: u64 = 1 << 30;

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("FERRY_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run headless Chromium on `url` with a fresh profile; returns the DOM
/// after the page's scripts ran (virtual time lets its fetches finish).
fn chromium(url: &str, screenshot: Option<&PathBuf>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1100,900",
        "--virtual-time-budget=4000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => args.push(format!("--screenshot={}", path.display())),
        None => args.push("--dump-dom".into()),
    }
    args.push(url.into());
    Cmd::new("chromium")
        .args(&args)
        .run()
        .unwrap()
        .stdout_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_state_and_disk_progress() {
    assert!(
        cmd::have("chromium"),
        "chromium is not installed (scripts/packages.txt has it)"
    );
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    ));
    let job = JobHandle::open(
        Arc::new(MemoryStore::default()),
        clock.clone(),
        JobSettings::default(),
    )
    .unwrap();
    // A transfer under way: disk 0 half done, disk 1 committed.
    job.admit_sender().unwrap();
    job.syncing(&[(0, 8 * GIB, 0), (1, 2 * GIB, 0)]).unwrap();
    job.progress(0, 0).unwrap();
    job.progress(1, 0).unwrap();
    clock.advance(Duration::from_secs(10));
    job.progress(0, 400_000_000).unwrap();
    job.progress(1, 2 * GIB).unwrap();
    clock.advance(Duration::from_secs(10));
    job.progress(0, 4 * GIB).unwrap();

    let unauthorized = prometheus::IntCounter::new("u", "u").unwrap();
    let state = ApiState::new(
        job.clone(),
        Some(TOKEN),
        Identity {
            version: "test",
            tls_fingerprint: None,
            data_port: 8703,
        },
        unauthorized.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = HttpLimits::default();
    tokio::spawn(api::serve(
        listener,
        api::router(state, limits),
        limits,
        std::future::pending(),
    ));

    let url = format!("{base}/#token={TOKEN}");
    let dom = tokio::task::spawn_blocking(move || chromium(&url, None))
        .await
        .unwrap();
    let expect = [
        r#"<span id="state" class="badge Running">Running</span>"#,
        r#"<b id="business">Syncing</b>"#,
        // (4 GiB + 2 GiB) of 10 GiB.
        r#"<b id="overall">60.0 %</b>"#,
        r#"<div class="disk" data-index="0"><div class="head"><span class="name">disk 0 · 4.0 GiB of 8.0 GiB</span><span class="pct">50.0 %</span></div><div class="bar"><span style="width: 50%;"></span></div>"#,
        r#"<div class="disk done" data-index="1"><div class="head"><span class="name">disk 1 · 2.0 GiB of 2.0 GiB</span><span class="pct">100.0 %</span></div>"#,
        r#"time left done</div>"#,
        r#"<b id="mode">one-shot</b>"#,
        r#"<section class="card" id="login" hidden="">"#,
        r#"<div class="card error" id="error" hidden="">"#,
    ];
    for e in expect {
        assert!(dom.contains(e), "the page lacks {e}\n--- DOM ---\n{dom}");
    }
    // Disk 0's rate: the smoothed rate from the two samples, shown in MB/s.
    let d0 = &job.snapshot().disks[0];
    let rate = format!("rate {:.1} MB/s · time left", d0.rate_bps / 1e6);
    assert!(dom.contains(&rate), "the page lacks {rate}\n{dom}");
    assert_eq!(unauthorized.get(), 0);

    let shot = artifacts().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("{base}/#token={TOKEN}");
    let s = shot.clone();
    tokio::task::spawn_blocking(move || chromium(&url, Some(&s)))
        .await
        .unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());

    // The job fails: the page shows the error with its hint.
    job.fail(
        ferry::job::errors::ErrorCode::TargetWriteFailed,
        "disk 0 at offset 4294967296",
    )
    .unwrap();
    let url = format!("{base}/#token={TOKEN}");
    let dom = tokio::task::spawn_blocking(move || chromium(&url, None))
        .await
        .unwrap();
    for e in [
        r#"<span id="state" class="badge InError">InError</span>"#,
        r#"<code id="error-code">TARGET_WRITE_FAILED</code> <span id="error-message">Do Rsync Disk x Failed</span>"#,
        r#"<div id="error-detail" class="muted">disk 0 at offset 4294967296</div>"#,
        // Nothing flows in InError: no rate, no time left.
        r#"<b id="rate">—</b>"#,
        r#"<b id="eta">—</b>"#,
        r#"rate — · time left —</div>"#,
    ] {
        assert!(dom.contains(e), "the page lacks {e}\n{dom}");
    }
    let shot = artifacts().join("status-page-error.png");
    let url = format!("{base}/#token={TOKEN}");
    tokio::task::spawn_blocking(move || chromium(&url, Some(&shot)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_without_a_valid_token_shows_no_job() {
    let job = JobHandle::open(
        Arc::new(MemoryStore::default()),
        Arc::new(ferry::job::state::SystemClock),
        JobSettings::default(),
    )
    .unwrap();
    let unauthorized = prometheus::IntCounter::new("u", "u").unwrap();
    let state = ApiState::new(
        job,
        Some(TOKEN),
        Identity {
            version: "test",
            tls_fingerprint: None,
            data_port: 8703,
        },
        unauthorized.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = HttpLimits::default();
    tokio::spawn(api::serve(
        listener,
        api::router(state, limits),
        limits,
        std::future::pending(),
    ));

    let url = format!("{base}/");
    let dom = tokio::task::spawn_blocking(move || chromium(&url, None))
        .await
        .unwrap();
    assert!(
        dom.contains(r#"<section class="card" id="login">"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<section id="job" hidden="">"#), "{dom}");
    assert_eq!(unauthorized.get(), 0, "no token, no request");

    let url = format!("{base}/#token=not-the-token");
    let dom = tokio::task::spawn_blocking(move || chromium(&url, None))
        .await
        .unwrap();
    assert!(
        dom.contains(r#"<p id="login-error" class="hint">The control token was refused.</p>"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<section id="job" hidden="">"#), "{dom}");
    assert_eq!(unauthorized.get(), 1);
}

fn job_json(s: &harness::Server, token: &str) -> serde_json::Value {
    let auth = format!("Bearer {token}");
    let (status, body) = harness::http(&s.control, "GET", "/v1/job", &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The page of a real `ferry serve` whose transfer was cut by kill -9:
/// after the restart the job is Syncing with the ledger's progress; after
/// the sender's resume it is Finished.
#[test]
fn status_page_of_a_real_interrupted_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = dir.path().join("src.img");
    harness::mixed_image(&src, 256, 7);
    let mut s = harness::Server::start_job(&state, "127.0.0.1:0", &[]);
    let token = std::fs::read_to_string(state.join("control-token"))
        .unwrap()
        .trim()
        .to_owned();
    let (data, jt, fp, src2) = (
        s.data.clone(),
        s.token.clone(),
        s.fingerprint.clone(),
        src.clone(),
    );
    let sender = std::thread::spawn(move || {
        harness::send_to(&data, &jt, &fp, &[&src2], &["--retries", "0"])
    });
    harness::wait_for(60, "committed data while Syncing", || {
        let j = job_json(&s, &token);
        j["business_status"] == "Syncing" && j["committed_bytes"].as_u64().unwrap() > 0
    });
    s.kill();
    let _ = sender.join();

    let s = harness::Server::start_job(&state, "127.0.0.1:0", &[]);
    let j = job_json(&s, &token);
    assert_eq!(
        (j["state"].as_str(), j["business_status"].as_str()),
        (Some("Running"), Some("Syncing"))
    );
    let (committed, size) = (
        j["disks"][0]["committed"].as_u64().unwrap(),
        j["disks"][0]["size"].as_u64().unwrap(),
    );
    assert!(committed > 0 && committed < size, "{committed} of {size}");
    let url = format!("http://{}/#token={token}", s.control);
    let dom = chromium(&url, None);
    let pct = format!(
        "<span class=\"pct\">{:.1} %</span>",
        100.0 * committed as f64 / size as f64
    );
    for e in [
        r#"<span id="state" class="badge Running">Running</span>"#,
        r#"<b id="business">Syncing</b>"#,
        pct.as_str(),
        "disk 0 · ",
        // Nothing flows after the restart until the sender resumes.
        r#"rate — · time left —</div>"#,
    ] {
        assert!(dom.contains(e), "the page lacks {e}\n{dom}");
    }
    chromium(&url, Some(&artifacts().join("status-page-resumable.png")));

    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    harness::wait_for(10, "Finished", || {
        job_json(&s, &token)["state"] == "Finished"
    });
    let dom = chromium(&url, None);
    for e in [
        r#"<span id="state" class="badge Finished">Finished</span>"#,
        r#"<b id="overall">100.0 %</b>"#,
        r#"<div class="disk done" data-index="0">"#,
        r#"<b id="rounds">1</b>"#,
    ] {
        assert!(dom.contains(e), "the page lacks {e}\n{dom}");
    }
    chromium(&url, Some(&artifacts().join("status-page-finished.png")));
}
