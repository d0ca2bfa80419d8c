//! `GET`/`POST /v1/job/hooks`: the operator's scripts, run in the migrated
//! system after the repair (`after-repair`) or once at its first boot
//! (`first-boot`). The control plane's hooks are kept in the state
//! directory and take the place of the configuration's; `{}` removes them.
//! A body may be larger than the other endpoints' (scripts), up to
//! [`BODY_LIMIT`].

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::{runner, ApiError, ApiState};
use crate::pipeline::MapFrom;
use crate::repair::hooks::Hooks;

/// The largest body `POST /v1/job/hooks` reads.
pub const BODY_LIMIT: usize = 512 << 10;

/// What `/v1/job/hooks` answers.
#[derive(Debug, Serialize)]
pub struct HooksView {
    /// `control` (set through this endpoint), `config` or `none`.
    pub from: MapFrom,
    pub hooks: Hooks,
}

pub(super) async fn get_hooks(State(state): State<ApiState>) -> Result<Json<HooksView>, ApiError> {
    let pipeline = runner(&state)?;
    let (hooks, from) = tokio::task::spawn_blocking(move || pipeline.hooks())
        .await
        .map_err(|e| anyhow::anyhow!("reading the hooks: {e}"))??;
    Ok(Json(HooksView { from, hooks }))
}

pub(super) async fn set_hooks(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<HooksView>, ApiError> {
    // JSON only here: the TOML form is for files.
    let text = std::str::from_utf8(&body).map_err(|_| {
        crate::job::errors::coded(
            crate::job::errors::ErrorCode::HookInvalid,
            "the hooks cannot be read: the body is not UTF-8",
        )
    })?;
    let hooks = if text.trim_start().starts_with('{') {
        Hooks::parse(text)?
    } else {
        return Err(crate::job::errors::coded(
            crate::job::errors::ErrorCode::HookInvalid,
            "the hooks cannot be read: the body is not a JSON object ({\"hook\": [...]})",
        )
        .into());
    };
    let pipeline = runner(&state)?;
    if !hooks.is_empty() && !pipeline.does().0 {
        return Err(crate::job::errors::coded(
            crate::job::errors::ErrorCode::HookInvalid,
            "this appliance does not build the OS (build = false): no repair runs, so no hook would",
        )
        .into());
    }
    let (hooks, from) = tokio::task::spawn_blocking(move || {
        pipeline.set_hooks(&hooks)?;
        pipeline.hooks()
    })
    .await
    .map_err(|e| anyhow::anyhow!("keeping the hooks: {e}"))??;
    let names: Vec<&str> = hooks.hook.iter().map(|h| h.name.as_str()).collect();
    tracing::info!(from = ?from, hooks = ?names, "hooks set");
    Ok(Json(HooksView { from, hooks }))
}
