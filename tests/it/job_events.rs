//! The job's events over real HTTP: numbered, read back after any number,
//! behind the control token; a stall and its end among them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::job::handle::JobHandle;
use ferry::job::state::{JobSettings, ManualClock, MemoryStore};
use ferry::serve::api::HttpLimits;
use serde_json::Value;

use crate::control_api::{call, client, start};

#[tokio::test]
async fn events_are_numbered_read_back_after_any_number_and_need_the_token() {
    let s = start(HttpLimits::default()).await;
    let c = client();
    s.job.admit_sender().unwrap();
    s.job.syncing(&[(0, 4096, 0)]).unwrap();
    s.job.stop().unwrap();

    let resp = c
        .get(format!("{}/v1/job/events", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let (status, page) = call(&c, &s, "GET", "/v1/job/events").await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    let kinds: Vec<(u64, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event_seq"].as_u64().unwrap(),
                e["event"].as_str().unwrap(),
                e["cause"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "job.status_changed", "sender"),
            (2, "job.status_changed", "syncing"),
            (3, "job.status_changed", "stop"),
        ]
    );
    assert_eq!(events[2]["seq"], 3);
    assert_eq!(
        (
            &page["last_event_seq"],
            &page["oldest_kept"],
            &page["gap"],
            &page["more"]
        ),
        (
            &Value::from(3),
            &Value::from(1),
            &Value::from(false),
            &Value::from(false)
        )
    );
    let (_, page) = call(&c, &s, "GET", "/v1/job/events?after=1&limit=1").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_seq"], 2);
    assert_eq!(page["more"], true);
    let (_, page) = call(&c, &s, "GET", "/v1/job/events?after=3").await;
    assert_eq!(page["events"], Value::Array(Vec::new()));

    for (q, detail) in [
        ("after=soon", "after=\"soon\" is not an event number"),
        (
            "limit=5000",
            "limit=\"5000\" is not a number from 1 to 1000",
        ),
        ("from=2", "unknown query parameter \"from\""),
    ] {
        let (status, e) = call(&c, &s, "GET", &format!("/v1/job/events?{q}")).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{q}: {e}"
        );
        assert!(e["detail"].as_str().unwrap().contains(detail), "{q}: {e}");
    }
}

#[tokio::test]
async fn a_stall_and_its_end_are_events() {
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
    job.syncing(&[(0, 1 << 20, 0)]).unwrap();
    job.check_stall();
    clock.advance(Duration::from_secs(29));
    job.check_stall();
    let kinds = |job: &JobHandle| -> Vec<String> {
        job.events()
            .since(2, 10)
            .events
            .iter()
            .map(|e| e.event.clone())
            .collect()
    };
    assert!(kinds(&job).is_empty(), "not stalled before 30 s");
    clock.advance(Duration::from_secs(2));
    job.check_stall();
    job.check_stall();
    assert_eq!(kinds(&job), ["job.stalled"], "told once");
    let stalled: Value = serde_json::from_str(job.events().since(2, 1).events[0].json()).unwrap();
    assert_eq!(stalled["no_data_secs"], 31, "{stalled}");
    job.progress(0, 4096).unwrap();
    job.check_stall();
    assert_eq!(kinds(&job), ["job.stalled", "job.stall_ended"]);
}
