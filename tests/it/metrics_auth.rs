//! `/metrics` carries the job's detail (its state, each disk's size and
//! progress): it needs the control token, as `/v1/job` does, while
//! `/livez` and `/readyz` stay open.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use serde_json::Value;

use crate::common::serve::{http, Server};

#[test]
fn metrics_need_the_control_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("state"), &[]);
    assert!(!s.control_token.is_empty());

    // Without a token, and with a wrong one (the job token is not it):
    // 401 with the API's error body, and none of the job's series.
    let wrong = format!("Bearer {}", s.token);
    for (what, headers) in [
        ("no token", vec![]),
        ("the job token", vec![("Authorization", wrong.as_str())]),
    ] {
        let (status, body) = http(&s.control, "GET", "/metrics", &headers);
        assert_eq!(status, 401, "{what}: {body}");
        let err: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
        assert_eq!(err["code"], "CONTROL_UNAUTHORIZED", "{what}: {body}");
        assert!(!body.contains("ferry_"), "{what}: {body}");
    }

    // With the control token: the job's series.
    let (status, body) = s.control("GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.lines().any(|l| l.starts_with("ferry_job_state{")),
        "{body}"
    );

    // Health and readiness need nothing.
    let (status, body) = s.http("GET", "/livez");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = s.http("GET", "/readyz");
    assert_eq!(status, 200, "{body}");
}
