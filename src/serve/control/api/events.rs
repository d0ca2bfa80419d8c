//! `GET /v1/job/events?after=N&limit=M`: the job's events after number N
//! (status changes, the pipeline's steps, the round's check), oldest
//! first, with the bodies the webhook POSTs. A control plane that missed a
//! webhook, or was restarted, asks for the events after the last it has;
//! `gap` says when some of those are no longer kept (then GET /v1/job
//! gives the job as it is now).

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;

use super::{ApiError, ApiState};
use crate::job::errors::ErrorCode;
use crate::job::events::Page;

/// Events per page when `limit` is not given, and at most.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

fn bad(msg: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, msg)
}

/// `after` (default 0) and `limit` (default 100, 1 to 1000) of a query.
fn parse(query: Option<&str>) -> Result<(u64, usize), ApiError> {
    let (mut after, mut limit) = (0u64, DEFAULT_LIMIT);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => {
                after = v.parse().map_err(|_| {
                    bad(format!(
                        "after={v:?} is not an event number (a whole number, 0 for the oldest kept)"
                    ))
                })?
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        bad(format!("limit={v:?} is not a number from 1 to {MAX_LIMIT}"))
                    })?
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?}; this endpoint takes after and limit"
                )))
            }
        }
    }
    Ok((after, limit))
}

pub(super) async fn get_events(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page>, ApiError> {
    let (after, limit) = parse(query.as_deref())?;
    // The kept events are in memory: no I/O here.
    Ok(Json(state.job.events().since(after, limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(parse(None).unwrap(), (0, DEFAULT_LIMIT));
        assert_eq!(parse(Some("after=7&limit=2")).unwrap(), (7, 2));
        for (q, want) in [
            ("after=x", "after=\"x\" is not an event number"),
            ("after=-1", "after=\"-1\" is not an event number"),
            ("limit=0", "limit=\"0\" is not a number from 1 to 1000"),
            ("limit=1001", "limit=\"1001\" is not a number"),
            ("since=3", "unknown query parameter \"since\""),
        ] {
            let e = parse(Some(q)).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{q}");
            assert!(e.detail.starts_with(want), "{q}: {e:?}");
        }
    }
}
