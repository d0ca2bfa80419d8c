//! The round's handoff and its boot test: the manifest of the last round
//! handed off, the handoff of a round whose boot test failed, and the boot
//! test's verdict, console and capture.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::job::{get_job, JobView};
use super::{job_call, ApiError, ApiState};
use crate::job::errors::{coded, ErrorCode};

/// `GET /v1/job/handoff`: the manifest of the last round handed off, as
/// written (its BLAKE3 is the digest the webhook carries).
pub(super) async fn get_handoff(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let Some(path) = state.manifest.clone() else {
        return Err(coded(
            ErrorCode::HandoffNotFound,
            "this appliance keeps no manifest",
        )
        .into());
    };
    let read = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            )
        })?;
    match read {
        Ok(bytes) => {
            let mut resp = bytes.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(coded(
            ErrorCode::HandoffNotFound,
            "no round of this job has been handed off yet",
        )
        .into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("reading the handoff manifest: {e}"),
        )),
    }
}

/// What `POST /v1/job/handoff` takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffRequest {
    #[serde(default)]
    despite_failed_boot_test: bool,
}

/// `POST /v1/job/handoff` with `{"despite_failed_boot_test": true}`: the
/// control plane takes the disks of a round whose boot test failed; the
/// manifest records it (`boot_test.handed_off_anyway`).
pub(super) async fn post_handoff(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<JobView>, ApiError> {
    let req: HandoffRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HandoffRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                format!("the body is not {{\"despite_failed_boot_test\": true}}: {e}"),
            )
        })?
    };
    if !req.despite_failed_boot_test {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "a round is handed off by its pipeline; this call only hands off a round whose boot test failed, and needs {\"despite_failed_boot_test\": true} to say so",
        ));
    }
    let Some(pipeline) = state.pipeline.clone() else {
        return Err(anyhow::anyhow!("this appliance runs no pipeline").into());
    };
    job_call(&state, |job| job.handoff_anyway()).await?;
    pipeline.start_handoff_anyway();
    get_job(State(state)).await
}

/// A file of the boot test, read off the async threads.
async fn boot_test_file(
    state: &ApiState,
    name: &'static str,
    kind: &'static str,
) -> Result<Response, ApiError> {
    let Some(pipeline) = state.pipeline.clone() else {
        return Err(coded(
            ErrorCode::BootTestNotFound,
            "this appliance runs no pipeline",
        )
        .into());
    };
    let path = pipeline.boot_test_dir().join(name);
    let read = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .map_err(|e| anyhow::anyhow!("reading the boot test's {name}: {e}"))?;
    match read {
        Ok(bytes) => {
            let mut resp = bytes.into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(coded(
            ErrorCode::BootTestNotFound,
            format!("no boot test of this job has written its {name}"),
        )
        .into()),
        Err(e) => Err(anyhow::anyhow!("reading the boot test's {name}: {e}").into()),
    }
}

/// `GET /v1/job/boot-test`: the last boot test's verdict.
pub(super) async fn get_boot_test(State(state): State<ApiState>) -> Result<Response, ApiError> {
    boot_test_file(&state, crate::pipeline::boot::VERDICT, "application/json").await
}

/// `GET /v1/job/boot-test/console`: the test machine's serial console.
pub(super) async fn get_boot_console(State(state): State<ApiState>) -> Result<Response, ApiError> {
    boot_test_file(
        &state,
        crate::pipeline::boot::CONSOLE,
        "text/plain; charset=utf-8",
    )
    .await
}

/// `GET /v1/job/boot-test/capture`: the test machine's network traffic (pcap).
pub(super) async fn get_boot_capture(State(state): State<ApiState>) -> Result<Response, ApiError> {
    boot_test_file(
        &state,
        crate::pipeline::boot::CAPTURE,
        "application/vnd.tcpdump.pcap",
    )
    .await
}
