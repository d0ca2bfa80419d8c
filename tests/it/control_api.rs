//! The control API over real HTTP on loopback: auth on /v1/job (401s
//! counted), operations by state with their error codes, identity, body
//! limit, and the connection cap with its idle timeout.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferry::job::handle::JobHandle;
use ferry::job::state::{JobSettings, ManualClock, MemoryStore};
use ferry::serve::api::{self, ApiState, HttpLimits, Identity};
use serde_json::Value;

pub(crate) const TOKEN: &str = "control-token-0123456789";

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) job: Arc<JobHandle>,
    unauthorized: prometheus::IntCounter,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

pub(crate) async fn start(limits: HttpLimits) -> Server {
    start_with(limits, |state| state).await
}

pub(crate) async fn start_with(
    limits: HttpLimits,
    with: impl FnOnce(ApiState) -> ApiState,
) -> Server {
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    ));
    let job = JobHandle::open(
        Arc::new(MemoryStore::default()),
        clock,
        JobSettings::default(),
    )
    .unwrap();
    let unauthorized = prometheus::IntCounter::new("unauth", "unauth").unwrap();
    let state = ApiState::new(
        job.clone(),
        Some(TOKEN),
        Identity {
            version: env!("CARGO_PKG_VERSION"),
            tls_fingerprint: Some("ab".repeat(32)),
            data_port: 8703,
            sender: None,
        },
        unauthorized.clone(),
    );
    let state = with(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api::serve(
        listener,
        api::router(state, limits),
        limits,
        async {
            let _ = rx.await;
        },
    ));
    Server {
        base,
        job,
        unauthorized,
        _shutdown: tx,
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn job_api_needs_the_control_token() {
    let s = start(HttpLimits::default()).await;
    let c = client();
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "GET",
            "/v1/job",
            None,
            "no bearer token in the Authorization header",
        ),
        (
            "GET",
            "/v1/job",
            Some("wrong"),
            "the bearer token is not the control token",
        ),
        (
            "POST",
            "/v1/job/stop",
            Some("job-token-of-the-sender"),
            "the bearer token is not the control token",
        ),
        (
            "POST",
            "/v1/job/start",
            None,
            "no bearer token in the Authorization header",
        ),
        (
            "POST",
            "/v1/job/delete",
            Some(""),
            "no bearer token in the Authorization header",
        ),
    ];
    for (i, (method, path, token, detail)) in cases.iter().enumerate() {
        let mut req = c.request(method.parse().unwrap(), format!("{}{path}", s.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"ferry\"");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "CONTROL_UNAUTHORIZED");
        assert_eq!(body["message"], "The control token is missing or not valid");
        assert_eq!(body["detail"], *detail);
        assert_eq!(s.unauthorized.get(), i as u64 + 1);
    }
    // Nothing changed the job.
    assert_eq!(s.job.snapshot().seq, 0);
    // Identity and the page are open.
    let id: Value = c
        .get(format!("{}/v1/identity", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(id["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(id["tls_fingerprint"], "ab".repeat(32));
    assert_eq!(id["data_port"], 8703);
    let page = c.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    assert_eq!(page.text().await.unwrap(), api::STATUS_PAGE);
    assert_eq!(s.unauthorized.get(), 5);
}

pub(crate) async fn call(
    c: &reqwest::Client,
    s: &Server,
    method: &str,
    path: &str,
) -> (u16, Value) {
    let resp = c
        .request(method.parse().unwrap(), format!("{}{path}", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn operations_follow_the_state_table() {
    let s = start(HttpLimits::default()).await;
    let c = client();
    let (status, job) = call(&c, &s, "GET", "/v1/job").await;
    assert_eq!(status, 200);
    assert_eq!(job["state"], "Ready");
    assert_eq!(job["business_status"], Value::Null);
    assert_eq!(job["validity_days"], 30);
    assert_eq!(job["created_at"], "2026-09-21T14:13:20.000Z");
    assert_eq!(job["expires_at"], "2026-10-21T14:13:20.000Z");
    assert_eq!(job["last_error"], Value::Null);
    assert_eq!(job["disks"], serde_json::json!([]));

    // (method, path, expected HTTP status, expected state or error detail)
    let steps: &[(&str, u16, &str)] = &[
        ("/v1/job/stop", 409, "a job that is Ready cannot be stopped"),
        ("/v1/job/start", 200, "Running/Preparing"),
        (
            "/v1/job/delete",
            409,
            "a job that is Running/Preparing cannot be deleted",
        ),
        (
            "/v1/job/start",
            409,
            "a job that is Running/Preparing cannot be started",
        ),
        ("/v1/job/stop", 200, "Stopped"),
        (
            "/v1/job/stop",
            409,
            "a job that is Stopped cannot be stopped",
        ),
        ("/v1/job/start", 200, "Running/Preparing"),
        ("/v1/job/stop", 200, "Stopped"),
        ("/v1/job/delete", 200, "Deleting"),
        (
            "/v1/job/start",
            409,
            "a job that is Deleting cannot be started",
        ),
    ];
    for (path, want, text) in steps {
        let (status, body) = call(&c, &s, "POST", path).await;
        assert_eq!(status, *want, "{path}: {body}");
        if *want == 200 {
            let shown = match body["business_status"].as_str() {
                Some(b) => format!("{}/{b}", body["state"].as_str().unwrap()),
                None => body["state"].as_str().unwrap().to_owned(),
            };
            assert_eq!(shown, *text);
        } else {
            assert_eq!(body["code"], "JOB_TRANSITION_REFUSED");
            assert_eq!(body["detail"], *text);
            assert_eq!(
                body["hint"],
                ferry::job::errors::ErrorCode::JobTransitionRefused.hint()
            );
        }
    }
    assert_eq!(s.unauthorized.get(), 0);
}

#[tokio::test]
async fn job_shows_progress_and_the_last_error() {
    let s = start(HttpLimits::default()).await;
    let c = client();
    // No pipeline on this appliance: the job says nothing of one.
    let (_, j) = call(&c, &s, "GET", "/v1/job").await;
    assert!(j.get("pipeline").is_none(), "{j}");
    s.job.admit_sender().unwrap();
    s.job
        .syncing(&[(0, 1 << 20, 1 << 19), (1, 4096, 0)])
        .unwrap();
    let (_, job) = call(&c, &s, "GET", "/v1/job").await;
    assert_eq!(
        (job["state"].as_str(), job["business_status"].as_str()),
        (Some("Running"), Some("Syncing"))
    );
    assert_eq!(job["total_bytes"], (1 << 20) + 4096);
    assert_eq!(job["committed_bytes"], 1 << 19);
    assert_eq!(job["disks"][0]["size"], 1 << 20);
    assert_eq!(job["disks"][0]["committed"], 1 << 19);
    assert_eq!(job["disks"][1]["committed"], 0);
    s.job
        .fail(ferry::job::errors::ErrorCode::TargetFull, "disk 1")
        .unwrap();
    let (_, job) = call(&c, &s, "GET", "/v1/job").await;
    assert_eq!(job["state"], "InError");
    assert_eq!(job["last_error"]["code"], "TARGET_FULL");
    assert_eq!(job["last_error"]["detail"], "disk 1");
    assert_eq!(
        job["last_error"]["hint"],
        ferry::job::errors::ErrorCode::TargetFull.hint()
    );
    // Restart after fixing the cause: the error is cleared.
    let (status, job) = call(&c, &s, "POST", "/v1/job/start").await;
    assert_eq!(
        (status, job["business_status"].as_str()),
        (200, Some("Preparing"))
    );
    assert_eq!(job["last_error"], Value::Null);
}

#[tokio::test]
async fn body_limit() {
    let s = start(HttpLimits {
        body_limit: 1024,
        ..Default::default()
    })
    .await;
    let resp = client()
        .post(format!("{}/v1/job/stop", s.base))
        .bearer_auth(TOKEN)
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "the refusal is the API's error body"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "REQUEST_TOO_LARGE", "{body}");
    assert_eq!(
        s.job.snapshot().seq,
        0,
        "the refused request changed nothing"
    );
}

#[tokio::test]
async fn a_held_connection_gives_way_and_trickled_bytes_do_not_keep_one_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = HttpLimits {
        max_connections: 1,
        idle_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let s = start(limits).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    // One client connects and says nothing: it holds the only place, and
    // gives it up to the next client, which is answered.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = client()
        .get(format!("{}/v1/identity", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buf))
        .await
        .expect("the held connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");

    // A client that trickles a header byte every 100 ms is cut by the
    // deadline, long before its 30 s of trickling end.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /v1/identity HTTP/1.1\r\nX-Pad: "
        .iter()
        .chain([b'a'; 300].iter())
    {
        if trickle.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cut, "still open after {:?} of trickling", started.elapsed());
}

/// Wrong control tokens from one address are answered 401 with a
/// `Retry-After` that grows with the address's failures, then refused at
/// once with 429 CONTROL_RATE_LIMITED; the right token is answered 200
/// throughout, also from the same address while it is limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_control_tokens_are_slowed_down_and_never_lock_out_the_right_one() {
    let s = start(HttpLimits::default()).await;
    let c = client();
    let wrong = |i: usize| {
        let req = c
            .get(format!("{}/v1/job", s.base))
            .bearer_auth(format!("guess-{i}"));
        async move {
            let resp = req.send().await.unwrap();
            let retry: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (status, retry, body["code"].as_str().unwrap().to_owned())
        }
    };
    // Ten guesses at once: each is answered after its own delay; the
    // Retry-After of each tells the wait of the one after it.
    let mut answers = futures::future::join_all((0..10).map(wrong)).await;
    answers.sort_by_key(|a| a.1);
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [401; 10]);
    assert!(answers.iter().all(|a| a.2 == "CONTROL_UNAUTHORIZED"));
    let waits: Vec<u64> = answers.iter().map(|a| a.1).collect();
    assert_eq!(&waits[..9], &[1, 1, 2, 4, 4, 4, 4, 4, 4], "{waits:?}");
    assert!((50..=60).contains(&waits[9]), "the tenth blocks: {waits:?}");

    // The right token from the same address: answered, and nothing about
    // the guesses changes that.
    let (status, job) = call(&c, &s, "GET", "/v1/job").await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "Ready");

    // Further guesses are refused at once, as long as they go on.
    for i in 10..13 {
        let (status, retry, code) = wrong(i).await;
        assert_eq!((status, code.as_str()), (429, "CONTROL_RATE_LIMITED"));
        assert!((50..=60).contains(&retry), "{retry}");
    }
    let (status, _) = call(&c, &s, "POST", "/v1/job/start").await;
    assert_eq!(status, 200, "a limited address still starts the job");
    assert_eq!(s.unauthorized.get(), 13);
    // A request without a token guessed nothing: 401 at once, no limit.
    let resp = c.get(format!("{}/v1/job", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

/// A verdict as the boot stage writes it, failed at the initramfs.
fn failed_verdict() -> ferry::pipeline::boot::Verdict {
    serde_json::from_value(serde_json::json!({
        "verdict": "failed", "stage": "initramfs", "failure": "root_not_found",
        "reason": "the initramfs did not find the root file system: ALERT!",
        "stage_seconds": {"kernel": 3.0, "initramfs": 4.0}, "dhcp_seconds": null,
        "seconds": 200.0, "accelerator": "tcg", "accelerator_note": null,
        "firmware": "bios", "cpus": 1, "memory_mib": 1024, "console_tail": ["ALERT!"]
    }))
    .unwrap()
}

#[tokio::test]
async fn only_a_failed_boot_test_is_handed_off_anyway_and_only_when_asked_to() {
    use ferry::job::errors::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_owned();
    let ledger =
        Arc::new(ferry::job::ledger::Ledger::open(&state_dir.join("ledger.redb")).unwrap());
    let runner_slot = Arc::new(std::sync::Mutex::new(None));
    let slot = Arc::clone(&runner_slot);
    let s = start_with(HttpLimits::default(), move |state: ApiState| {
        let runner = Arc::new(ferry::pipeline::Runner::new(
            ferry::pipeline::PipelineSettings {
                build: true,
                boot_test: Default::default(),
                repair: Default::default(),
                state_dir: state_dir.clone(),
            },
            ledger,
            state.job.clone(),
        ));
        *slot.lock().unwrap() = Some(Arc::clone(&runner));
        state
            .with_manifest(ferry::pipeline::handoff::manifest_path(&state_dir))
            .with_pipeline(runner)
    })
    .await;
    let c = client();
    let post = |body: Option<&'static str>| {
        let mut req = c
            .post(format!("{}/v1/job/handoff", s.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = call(&c, &s, "GET", "/v1/job/boot-test").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("BOOT_TEST_NOT_FOUND")),
        "{body}"
    );
    let (status, body) = call(&c, &s, "GET", "/v1/job/boot-test/console").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("BOOT_TEST_NOT_FOUND")),
        "{body}"
    );

    // Without the flag, or with a body that is not the request: refused.
    for body in [
        None,
        Some("{}"),
        Some(r#"{"despite_failed_boot_test": false}"#),
        Some("yes please"),
        Some(r#"{"force": true}"#),
    ] {
        let (status, e) = post(body).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{body:?}: {e}"
        );
    }
    let anyway = Some(r#"{"despite_failed_boot_test": true}"#);
    let refused = |state: &str| {
        format!("a job that is {state} cannot be handed off anyway: only a round whose boot test failed (BOOT_TEST_FAILED) can be")
    };
    let (status, e) = post(anyway).await;
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["detail"], refused("Ready"));
    // Another error is not a boot test's.
    s.job.start().unwrap();
    s.job.fail(ErrorCode::GrubFailed, "no grub").unwrap();
    let (status, e) = post(anyway).await;
    assert_eq!(
        (status, e["detail"].as_str()),
        (409, Some(refused("InError").as_str())),
        "{e}"
    );

    // A failed boot test: the round is handed off, and the manifest says how.
    s.job.start().unwrap();
    s.job
        .fail(
            ErrorCode::BootTestFailed,
            "the boot reached stage initramfs",
        )
        .unwrap();
    std::fs::create_dir_all(dir.path().join("processing/boot")).unwrap();
    ferry::pipeline::boot::save_verdict(&dir.path().join("processing"), &failed_verdict()).unwrap();
    let (status, body) = call(&c, &s, "GET", "/v1/job/boot-test").await;
    assert_eq!(
        (status, &body["failure"]),
        (200, &Value::from("root_not_found")),
        "{body}"
    );
    let (status, view) = post(anyway).await;
    assert_eq!(status, 200, "{view}");
    let runner = runner_slot.lock().unwrap().clone().unwrap();
    let mut phase = runner.current().unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        phase.wait_for(|p| p.done.is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        runner.current().unwrap().borrow().done,
        Some(Ok(ferry::job::state::JobStatus::Finished))
    );
    let (_, job) = call(&c, &s, "GET", "/v1/job").await;
    assert_eq!(job["state"], "Finished", "{job}");
    let (status, m) = call(&c, &s, "GET", "/v1/job/handoff").await;
    assert_eq!(status, 200);
    assert_eq!(m["boot_test"]["verdict"], "failed", "{m}");
    assert_eq!(m["boot_test"]["handed_off_anyway"], true, "{m}");
    assert_eq!(m["boot_test"]["stage"], "initramfs", "{m}");
    // The verdict on record says so too, and there is nothing left to force.
    let (_, v) = call(&c, &s, "GET", "/v1/job/boot-test").await;
    assert_eq!(v["handed_off_anyway"], true, "{v}");
    let (status, e) = post(anyway).await;
    assert_eq!(
        (status, e["detail"].as_str()),
        (409, Some(refused("Finished").as_str())),
        "{e}"
    );
}

/// Errors that axum or the API make before a handler runs are the API's
/// JSON error body too, with a code of HTTP's kind (not the command
/// line's USAGE, not text/plain), the catalogue's message and hint, and a
/// detail that names what was wrong.
#[tokio::test]
async fn every_error_is_the_json_error_body_with_an_http_code() {
    let s = start(HttpLimits::default()).await;
    let c = client();
    // (what, request, body, status, code, a part of the detail)
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        u16,
        &'static str,
        &'static str,
    );
    let cases: [Case; 6] = [
        (
            "a handoff without a body",
            "POST /v1/job/handoff",
            None,
            400,
            "BAD_REQUEST",
            "needs {\"despite_failed_boot_test\": true}",
        ),
        (
            "a handoff with a body that is not its request",
            "POST /v1/job/handoff",
            Some("yes please"),
            400,
            "BAD_REQUEST",
            "the body is not {\"despite_failed_boot_test\": true}",
        ),
        (
            "a disk index that is not a number",
            "POST /v1/job/disks/abc/reset",
            None,
            400,
            "BAD_REQUEST",
            "the disk index \"abc\" is not a whole number from 0 to 4294967295",
        ),
        (
            "a disk index past u32",
            "POST /v1/job/disks/4294967296/reset",
            None,
            400,
            "BAD_REQUEST",
            "the disk index \"4294967296\" is not a whole number",
        ),
        (
            "no such endpoint",
            "GET /v1/jobs",
            None,
            404,
            "NOT_FOUND",
            "Not Found",
        ),
        (
            "a method the endpoint does not take",
            "DELETE /v1/job",
            None,
            405,
            "METHOD_NOT_ALLOWED",
            "Method Not Allowed",
        ),
    ];
    for (what, request, body, want_status, want_code, want_detail) in cases {
        let (method, path) = request.split_once(' ').unwrap();
        let mut req = c
            .request(method.parse().unwrap(), format!("{}{path}", s.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want_status, "{what}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{what}");
        let e: Value = resp.json().await.unwrap();
        let code: ferry::job::errors::ErrorCode =
            serde_json::from_value(e["code"].clone()).unwrap();
        assert_eq!(e["code"], want_code, "{what}: {e}");
        assert_eq!(e["message"], code.message(), "{what}: {e}");
        assert_eq!(e["hint"], code.hint(), "{what}: {e}");
        assert!(
            e["detail"].as_str().unwrap().contains(want_detail),
            "{what}: {e}"
        );
    }
}
