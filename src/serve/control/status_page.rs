//! The operator's status page at `/`: one static, self-contained file
//! that holds no data; it asks for the control token and reads `/v1/job`
//! with it (see [`super::api`] for why).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The status page: one self-contained file, no external assets.
pub const STATUS_PAGE: &str = include_str!("status.html");

pub(crate) async fn status_page() -> Response {
    let mut resp = STATUS_PAGE.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page loads nothing from anywhere and talks only to this server.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}
