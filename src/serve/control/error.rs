//! The control port's error answers: every refusal of the API, and every
//! answer axum and tower-http make themselves, as one JSON body with a
//! stable code (`{"code", "message", "hint", "detail"}`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::job::errors::{describe, ErrorCode};

/// An error answer: `{"code", "message", "hint", "detail"}`.
#[derive(Debug, Serialize)]
pub(crate) struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub hint: &'static str,
    pub detail: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        ApiError {
            status,
            code,
            message: code.message_for(&detail),
            hint: code.hint(),
            detail,
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        let (code, detail) = describe(&err);
        let status = match code {
            ErrorCode::JobTransitionRefused | ErrorCode::DiskBusy | ErrorCode::DiskHandedOff => {
                StatusCode::CONFLICT
            }
            ErrorCode::HandoffNotFound
            | ErrorCode::DiskNotConfigured
            | ErrorCode::BootTestNotFound
            | ErrorCode::SenderNotFound => StatusCode::NOT_FOUND,
            ErrorCode::Usage
            | ErrorCode::BadBandwidth
            | ErrorCode::BadRequest
            | ErrorCode::NetworkMapInvalid
            | ErrorCode::HookInvalid => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, code, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut resp = (status, Json(self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        resp
    }
}

/// Every error of the control port as the API's error body: the answers
/// that axum and tower-http make themselves (no route, a method the route
/// does not take, a path parameter or body their extractors refuse, the
/// body limit, the request timeout) come as text or empty, and are turned
/// into `{"code", "message", "hint", "detail"}` with a code of HTTP's
/// kind, their text as the detail. Headers such as `Allow` and
/// `Retry-After` are kept.
pub(crate) async fn json_errors(req: axum::extract::Request, next: middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::RequestTooLarge,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
        s if s.is_client_error() => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    };
    let (mut parts, body) = resp.into_parts();
    // These answers are a line of text at most; a longer one is cut.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let detail = match text.trim() {
        "" => status.canonical_reason().unwrap_or("").to_owned(),
        t => t.to_owned(),
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut out = ApiError::new(status, code, detail).into_response();
    for (name, value) in &parts.headers {
        out.headers_mut().insert(name.clone(), value.clone());
    }
    out
}
