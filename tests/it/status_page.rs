//! The status page in a real headless Chromium, driven over the DevTools
//! protocol (tests/common/cdp.rs): it loads from the control API on
//! loopback, authenticates with the token handed over in the URL fragment
//! (then kept in the tab only), shows the job's state, per-disk progress,
//! a transfer without data and the processing step, and stops and starts
//! the job on a click. Screenshots are kept in $FERRY_ARTIFACTS.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::cmd;
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

/// The page has drawn the job from its first answer.
const RENDERED: &str = "document.getElementById('updated').textContent.startsWith('updated')";
/// The page asks for a token.
const LOGIN: &str = "!document.getElementById('login').hidden";

/// Load `url` in a fresh headless Chromium, wait until `ready` holds in
/// the page, and return its DOM (and a screenshot, when asked).
///
/// The page is read when it says it is drawn, not after a fixed budget of
/// the browser's virtual time: on a loaded machine a budget can run out
/// before the page's first fetch is answered, and the DOM is then the
/// empty page.
fn page(url: &str, ready: &str, screenshot: Option<&PathBuf>) -> String {
    let mut b = crate::common::cdp::Browser::launch();
    b.goto(url);
    b.wait_for(60, ready);
    if let Some(path) = screenshot {
        b.screenshot(path);
    }
    b.dom()
}

/// What the page's `x.toFixed(1)` shows: the nearest tenth, a tie rounded
/// up. Rust's `{:.1}` rounds a tie to even, so 6.25 % (16 MiB of 256 MiB,
/// four chunks of 4 MiB) is "6.2" there and "6.3" on the page: the test
/// of an interrupted transfer failed whenever the transfer was cut at such
/// a point, which a loaded machine made likelier.
fn to_fixed_1(x: f64) -> String {
    let tenths = x * 10.0;
    if tenths.fract() == 0.5 {
        format!("{:.1}", (tenths.floor() + 1.0) / 10.0)
    } else {
        format!("{x:.1}")
    }
}

#[test]
fn to_fixed_1_rounds_ties_up_as_the_page_does() {
    for (x, shown) in [
        (6.25, "6.3"),
        (18.75, "18.8"),
        (6.2, "6.2"),
        (0.04, "0.0"),
        (99.96, "100.0"),
    ] {
        assert_eq!(to_fixed_1(x), shown, "{x}");
    }
}

/// An API server on loopback for `job`, with the control token TOKEN.
async fn serve_api(job: Arc<JobHandle>) -> (String, prometheus::IntCounter) {
    let unauthorized = prometheus::IntCounter::new("u", "u").unwrap();
    let state = ApiState::new(
        job,
        Some(TOKEN),
        Identity {
            version: "test",
            tls_fingerprint: None,
            data_port: 8703,
            sender: None,
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
    (base, unauthorized)
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
    // The control plane limited the senders' bandwidth (100 Mbit/s).
    job.set_bandwidth_limit(Some(12_500_000)).unwrap();

    let (base, unauthorized) = serve_api(job.clone()).await;

    let url = format!("{base}/#token={TOKEN}");
    let shot = artifacts().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let s = shot.clone();
    let dom = tokio::task::spawn_blocking(move || page(&url, RENDERED, Some(&s)))
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
        r#"<b id="bwlimit">12.5 MB/s</b>"#,
        r#"<section class="card" id="login" hidden="">"#,
        r#"<div class="card error" id="error" hidden="">"#,
    ];
    for e in expect {
        assert!(dom.contains(e), "the page lacks {e}\n--- DOM ---\n{dom}");
    }
    // Disk 0's rate: the smoothed rate from the two samples, shown in MB/s.
    let d0 = &job.snapshot().disks[0];
    let rate = format!("rate {} MB/s · time left", to_fixed_1(d0.rate_bps / 1e6));
    assert!(dom.contains(&rate), "the page lacks {rate}\n{dom}");
    assert_eq!(unauthorized.get(), 0);

    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());

    // The job fails: the page shows the error with its hint. The limit
    // was lifted meanwhile.
    job.set_bandwidth_limit(None).unwrap();
    job.fail(
        ferry::job::errors::ErrorCode::TargetWriteFailed,
        "disk 0 at offset 4294967296",
    )
    .unwrap();
    let url = format!("{base}/#token={TOKEN}");
    let shot = artifacts().join("status-page-error.png");
    let dom = tokio::task::spawn_blocking(move || page(&url, RENDERED, Some(&shot)))
        .await
        .unwrap();
    for e in [
        r#"<span id="state" class="badge InError">InError</span>"#,
        r#"<code id="error-code">TARGET_WRITE_FAILED</code> <span id="error-message">Do Rsync Disk 0 Failed</span>"#,
        r#"<div id="error-detail" class="muted">disk 0 at offset 4294967296</div>"#,
        // Nothing flows in InError: no rate, no time left.
        r#"<b id="rate">—</b>"#,
        r#"<b id="eta">—</b>"#,
        r#"rate — · time left —</div>"#,
        r#"<b id="bwlimit">none</b>"#,
    ] {
        assert!(dom.contains(e), "the page lacks {e}\n{dom}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_without_a_valid_token_shows_no_job() {
    let job = JobHandle::open(
        Arc::new(MemoryStore::default()),
        Arc::new(ferry::job::state::SystemClock),
        JobSettings::default(),
    )
    .unwrap();
    let (base, unauthorized) = serve_api(job).await;

    let url = format!("{base}/");
    let dom = tokio::task::spawn_blocking(move || page(&url, LOGIN, None))
        .await
        .unwrap();
    assert!(
        dom.contains(r#"<section class="card" id="login">"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<section id="job" hidden="">"#), "{dom}");
    assert_eq!(unauthorized.get(), 0, "no token, no request");

    let url = format!("{base}/#token=not-the-token");
    let dom = tokio::task::spawn_blocking(move || {
        page(&url, "!document.getElementById('login-error').hidden", None)
    })
    .await
    .unwrap();
    assert!(
        dom.contains(r#"<p id="login-error" class="hint">The control token was refused.</p>"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<section id="job" hidden="">"#), "{dom}");
    assert_eq!(unauthorized.get(), 1);
}

fn job_json(s: &crate::common::serve::Server, token: &str) -> serde_json::Value {
    let auth = format!("Bearer {token}");
    let (status, body) =
        crate::common::serve::http(&s.control, "GET", "/v1/job", &[("Authorization", &auth)]);
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
    crate::common::serve::mixed_image(&src, 256, 7);
    let mut s = crate::common::serve::Server::start_job(&state, "127.0.0.1:0", &[]);
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
        crate::common::serve::send_to(&data, &jt, &fp, &[&src2], &["--retries", "0"])
    });
    crate::common::serve::wait_for(60, "committed data while Syncing", || {
        let j = job_json(&s, &token);
        j["business_status"] == "Syncing" && j["committed_bytes"].as_u64().unwrap() > 0
    });
    s.kill();
    let _ = sender.join();

    let s = crate::common::serve::Server::start_job(&state, "127.0.0.1:0", &[]);
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
    let dom = page(
        &url,
        RENDERED,
        Some(&artifacts().join("status-page-resumable.png")),
    );
    let pct = format!(
        "<span class=\"pct\">{} %</span>",
        to_fixed_1(100.0 * committed as f64 / size as f64)
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

    let sent = s.send(&[&src], &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    crate::common::serve::wait_for(10, "Finished", || {
        job_json(&s, &token)["state"] == "Finished"
    });
    let dom = page(
        &url,
        RENDERED,
        Some(&artifacts().join("status-page-finished.png")),
    );
    for e in [
        r#"<span id="state" class="badge Finished">Finished</span>"#,
        r#"<b id="overall">100.0 %</b>"#,
        r#"<div class="disk done" data-index="0">"#,
        r#"<b id="rounds">1</b>"#,
    ] {
        assert!(dom.contains(e), "the page lacks {e}\n{dom}");
    }
}

fn api_state(base: &str) -> serde_json::Value {
    let addr = base.trim_start_matches("http://");
    let auth = format!("Bearer {TOKEN}");
    let (status, body) =
        crate::common::serve::http(addr, "GET", "/v1/job", &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A transfer whose data stopped two minutes ago: the page says so. The
/// operator stops the job with the page's button and starts it again; the
/// API shows each change. The token handed over in the link is taken out
/// of the address, kept for the tab (a reload needs no token) and
/// forgotten on request. In Processing, the page shows the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_stops_and_starts_the_job_and_says_when_data_stopped() {
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    ));
    let job = JobHandle::open(
        Arc::new(MemoryStore::default()),
        clock.clone(),
        JobSettings::default(),
    )
    .unwrap();
    job.admit_sender().unwrap();
    job.syncing(&[(0, 8 * GIB, 0)]).unwrap();
    job.progress(0, 0).unwrap();
    clock.advance(Duration::from_secs(10));
    job.progress(0, GIB).unwrap();
    clock.advance(Duration::from_secs(120));
    let (base, unauthorized) = serve_api(job.clone()).await;

    let url = format!("{base}/#token={TOKEN}");
    let (b2, job2) = (base.clone(), job.clone());
    tokio::task::spawn_blocking(move || {
        let base = b2;
        let mut b = crate::common::cdp::Browser::launch();
        b.goto(&url);
        b.wait_for(60, RENDERED);
        let dom = b.dom();
        for e in [
            r#"<div class="card stall" id="stall">"#,
            r#"<h2 id="stall-text">No data for 2 min: the sender stopped or the link is down.</h2>"#,
            r#"<b id="last-data">2026-09-21 14:13:30 UTC (2 min ago)</b>"#,
            // Nothing arrived within the rate's window: no rate, no ETA.
            r#"<b id="rate">—</b>"#,
            r#"<b id="eta">—</b>"#,
            r#"<b id="step">—</b>"#,
            r#"<button type="button" id="stop" class="stop">Stop the job</button>"#,
            r#"<button type="button" id="start" class="start" disabled="">Start the job</button>"#,
        ] {
            assert!(dom.contains(e), "the page lacks {e}\n{dom}");
        }
        b.screenshot(&artifacts().join("status-page-stalled.png"));
        assert_eq!(b.eval("location.href"), format!("{base}/"), "the token left the address");
        assert_eq!(b.eval("sessionStorage.getItem('ferry-control-token')"), TOKEN);

        b.click("#stop");
        b.wait_for(20, "document.getElementById('state').textContent === 'Stopped'");
        let j = api_state(&base);
        assert_eq!((j["state"].as_str(), j["stalled"].as_bool()), (Some("Stopped"), Some(false)));
        b.wait_for(20, "document.getElementById('stall').hidden && !document.getElementById('start').disabled");
        assert_eq!(b.eval("document.getElementById('stop').disabled"), true);

        b.click("#start");
        b.wait_for(20, "document.getElementById('business').textContent === 'Preparing'");
        let j = api_state(&base);
        assert_eq!(
            (j["state"].as_str(), j["business_status"].as_str()),
            (Some("Running"), Some("Preparing"))
        );

        // The round goes on to its pipeline: the page shows the step.
        job2.syncing(&[(0, 8 * GIB, 8 * GIB)]).unwrap();
        job2.disk_verified(0).unwrap();
        job2.end_of_session(None).unwrap();
        job2.processing_step(ferry::job::step::Step::Repair).unwrap();
        // A reload finds the token in the tab's session storage.
        b.goto(&format!("{base}/"));
        b.wait_for(20, "document.getElementById('step').textContent === 'repair'");
        let dom = b.dom();
        for e in [
            r#"<b id="business">Processing</b>"#,
            r#"<div class="card stall" id="stall" hidden="">"#,
            r#"<button type="button" id="stop" class="stop" disabled="">"#,
            r#"<button type="button" id="start" class="start" disabled="">"#,
        ] {
            assert!(dom.contains(e), "the page lacks {e}\n{dom}");
        }

        b.click("#forget");
        b.wait_for(20, LOGIN);
        assert_eq!(
            b.eval("sessionStorage.getItem('ferry-control-token')"),
            serde_json::Value::Null
        );
        let dom = b.dom();
        assert!(
            dom.contains("<code>control-token</code> of its state directory"),
            "the page tells where the token is\n{dom}"
        );
    })
    .await
    .unwrap();
    assert_eq!(unauthorized.get(), 0);
}
