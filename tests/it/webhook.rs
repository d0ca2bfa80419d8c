//! The webhook against a real HTTP server on loopback: exact payloads, a
//! valid HMAC signature, order, and a retry after a server error.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ferry::job::handle::JobHandle;
use ferry::job::state::{JobSettings, ManualClock, MemoryStore};
use ferry::serve::webhook::{sign, verify, Webhook, WebhookConfig, SEQ_HEADER, SIGNATURE_HEADER};

#[derive(Default)]
struct Received {
    requests: Vec<(HeaderMap, Bytes)>,
    /// Answer 503 to this many requests first.
    fail_first: usize,
}

async fn receiver(
    received: Arc<Mutex<Received>>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let received = received.clone();
            async move {
                let mut r = received.lock().unwrap();
                r.requests.push((headers, body));
                if r.requests.len() <= r.fail_first {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

#[tokio::test]
async fn status_changes_are_posted_signed_in_order_with_retry() {
    let received = Arc::new(Mutex::new(Received {
        fail_first: 1,
        ..Default::default()
    }));
    let (addr, server) = receiver(received.clone()).await;

    let secret = b"control-plane-shared-secret".to_vec();
    let mut config = WebhookConfig::new(format!("http://{addr}/hook"), secret.clone());
    config.backoff = Duration::from_millis(50);
    let (hook, task) = Webhook::spawn(config).unwrap();

    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    ));
    let job = JobHandle::open(
        Arc::new(MemoryStore::default()),
        clock.clone(),
        JobSettings::default(),
    )
    .unwrap();
    let h = hook.clone();
    job.on_event(move |e| h.push(e));

    job.admit_sender().unwrap();
    clock.advance(Duration::from_secs(2));
    job.syncing(&[(0, 4096, 0)]).unwrap();
    clock.advance(Duration::from_secs(3));
    job.fail(
        ferry::job::errors::ErrorCode::TargetWriteFailed,
        "disk 0 at offset 0",
    )
    .unwrap();
    hook.close();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("webhook task ends after close")
        .unwrap();

    let stats = hook.stats();
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 3);
    assert_eq!(stats.attempts.load(Ordering::Relaxed), 4);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);

    let id = job.snapshot().id;
    let expected = [
        format!(
            r#"{{"event_seq":1,"event":"job.status_changed","seq":1,"job_id":"{id}","from":{{"state":"Ready","business_status":null}},"to":{{"state":"Running","business_status":"Preparing"}},"at":"2026-09-21T14:13:20.000Z","cause":"sender","error":null}}"#
        ),
        format!(
            r#"{{"event_seq":2,"event":"job.status_changed","seq":2,"job_id":"{id}","from":{{"state":"Running","business_status":"Preparing"}},"to":{{"state":"Running","business_status":"Syncing"}},"at":"2026-09-21T14:13:22.000Z","cause":"syncing","error":null}}"#
        ),
        format!(
            r#"{{"event_seq":3,"event":"job.status_changed","seq":3,"job_id":"{id}","from":{{"state":"Running","business_status":"Syncing"}},"to":{{"state":"InError","business_status":null}},"at":"2026-09-21T14:13:25.000Z","cause":"error","error":{{"code":"TARGET_WRITE_FAILED","message":"Do Rsync Disk 0 Failed","hint":"{}","detail":"disk 0 at offset 0","at":"2026-09-21T14:13:25.000Z"}}}}"#,
            ferry::job::errors::ErrorCode::TargetWriteFailed.hint()
        ),
    ];
    let r = received.lock().unwrap();
    // The first event was answered 503 and sent again, byte for byte.
    let bodies: Vec<String> = r
        .requests
        .iter()
        .map(|(_, b)| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies.len(), 4);
    assert_eq!(bodies[0], expected[0]);
    assert_eq!(bodies[1..], expected[..]);
    for (headers, body) in &r.requests {
        let sig = headers[SIGNATURE_HEADER].to_str().unwrap();
        assert_eq!(sig, sign(&secret, body));
        assert!(verify(&secret, body, sig));
        assert!(!verify(b"wrong secret", body, sig));
        assert_eq!(headers["content-type"], "application/json");
    }
    let seqs: Vec<&str> = r
        .requests
        .iter()
        .map(|(h, _)| h[SEQ_HEADER].to_str().unwrap())
        .collect();
    assert_eq!(seqs, ["1", "1", "2", "3"]);
    server.abort();
}

#[tokio::test]
async fn an_unreachable_control_plane_never_blocks_and_events_are_given_up() {
    // A port with nothing listening: bind, note the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = WebhookConfig::new(format!("http://127.0.0.1:{port}/hook"), b"s".to_vec());
    config.backoff = Duration::from_millis(10);
    config.max_attempts = 3;
    config.queue = 2;
    let (hook, task) = Webhook::spawn(config).unwrap();
    let job = JobHandle::open(
        Arc::new(MemoryStore::default()),
        Arc::new(ferry::job::state::SystemClock),
        JobSettings {
            incremental: true,
            ..Default::default()
        },
    )
    .unwrap();
    let h = hook.clone();
    job.on_event(move |e| h.push(e));
    let started = std::time::Instant::now();
    // Five changes in a row: the pushes return at once whatever the network does.
    job.admit_sender().unwrap();
    job.syncing(&[(0, 1, 0)]).unwrap();
    job.progress(0, 1).unwrap();
    job.round_committed().unwrap();
    job.round_done().unwrap();
    job.stop().unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    hook.close();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    let s = hook.stats();
    let (dropped, failed) = (
        s.dropped.load(Ordering::Relaxed),
        s.failed.load(Ordering::Relaxed),
    );
    assert_eq!(s.delivered.load(Ordering::Relaxed), 0);
    // The test runs on one thread: the delivery task had not run yet when
    // the five events came, so the queue of two kept the last two.
    assert_eq!((dropped, failed), (3, 2));
    assert_eq!(s.attempts.load(Ordering::Relaxed), failed * 3);
}
