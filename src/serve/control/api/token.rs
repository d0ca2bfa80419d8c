//! The control token's check on `/v1/job`: compared in constant time,
//! wrong tokens counted and slowed down per address, then refused with
//! `Retry-After`.

use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState};
use crate::job::errors::ErrorCode;
use crate::serve::auth_limit::AuthLimiter;
use crate::serve::control::listener::Peer;

impl ApiState {
    /// Compare in constant time: both sides are hashed to 32 bytes first so
    /// that neither the length nor the position of the first difference
    /// shows in the timing.
    fn token_ok(&self, presented: &str) -> bool {
        let Some(expected) = self.token_digest else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        expected
            .iter()
            .zip(got.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The token is checked first, in constant time: a correct one is let in
/// whatever failed before it from the same address. A wrong one is counted
/// per address and answered after a delay that grows with the address's
/// recent failures (401, with `Retry-After`); past the limit it is refused
/// at once (429 CONTROL_RATE_LIMITED, with `Retry-After`). A request without
/// any token guesses nothing and is answered 401 at once.
pub(super) async fn require_token(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    if presented.is_some_and(|token| state.token_ok(token)) {
        return next.run(req).await;
    }
    state.unauthorized.inc();
    let path = req.uri().path().to_owned();
    if presented.is_none() {
        tracing::warn!(%path, "control API request without a control token");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::ControlUnauthorized,
            "no bearer token in the Authorization header",
        )
        .into_response();
    }
    let ip = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0 .0.ip());
    if let Some(wait) = state.auth.retry_after(ip) {
        state.auth.fail(ip);
        tracing::warn!(%path, %ip, retry_after_s = wait.as_secs(), "wrong control token from a rate-limited address");
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ControlRateLimited,
            format!("{ip} sent too many wrong control tokens in the last minute"),
        )
        .into_response();
        set_retry_after(&mut resp, wait);
        return resp;
    }
    let delay = state.auth.fail(ip);
    // What the next wrong token from here would wait, or how long this
    // address is now refused: the client is told to take that long before
    // trying again.
    let next_wait = state
        .auth
        .retry_after(ip)
        .unwrap_or_else(|| delay.saturating_mul(2).min(AuthLimiter::delay(usize::MAX)));
    tracing::warn!(%path, %ip, delay_ms = delay.as_millis() as u64, "wrong control token");
    tokio::time::sleep(delay).await;
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::ControlUnauthorized,
        "the bearer token is not the control token",
    )
    .into_response();
    set_retry_after(&mut resp, next_wait);
    resp
}

/// `Retry-After` in whole seconds, rounded up (at least 1).
fn set_retry_after(resp: &mut Response, wait: Duration) {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme
/// is case-insensitive (RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::job::handle::JobHandle;
    use crate::job::state::{JobSettings, MemoryStore, SystemClock};
    use crate::serve::control::api::Identity;

    fn state(token: Option<&str>) -> ApiState {
        let job = JobHandle::open(
            Arc::new(MemoryStore::default()),
            Arc::new(SystemClock),
            JobSettings::default(),
        )
        .unwrap();
        ApiState::new(
            job,
            token,
            Identity {
                version: "0",
                tls_fingerprint: None,
                data_port: 8703,
                sender: None,
            },
            prometheus::IntCounter::new("t", "t").unwrap(),
        )
    }

    #[test]
    fn token_comparison() {
        let s = state(Some("secret-token"));
        assert!(s.token_ok("secret-token"));
        for bad in ["", "secret-toke", "secret-token ", "SECRET-TOKEN", "x"] {
            assert!(!s.token_ok(bad), "{bad:?}");
        }
        // No token configured: nothing opens the job API, not even "".
        let s = state(None);
        assert!(!s.token_ok(""));
        let s = state(Some(""));
        assert!(!s.token_ok(""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let cases = [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ];
        for (header, want) in cases {
            assert_eq!(bearer(header), want, "{header:?}");
        }
    }
}
