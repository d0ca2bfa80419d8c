//! `GET`/`POST /v1/job/network`: the network map the repair follows (per
//! source NIC DHCP or its static configuration kept, and which new NIC it
//! becomes). The control plane's map is kept in the state directory and
//! takes the place of the configuration's; an empty map (`{}`) removes it.
//! What needs the source's NICs is checked when the repair reads them.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::{runner, ApiError, ApiState};
use crate::job::errors::{coded, ErrorCode};
use crate::pipeline::MapFrom;
use crate::repair::network::map::NetworkMap;

/// What `/v1/job/network` answers.
#[derive(Debug, Serialize)]
pub struct NetworkView {
    /// `control` (set through this endpoint), `config` or `none`.
    pub from: MapFrom,
    pub map: NetworkMap,
}

pub(super) async fn get_network(
    State(state): State<ApiState>,
) -> Result<Json<NetworkView>, ApiError> {
    let pipeline = runner(&state)?;
    let (map, from) = tokio::task::spawn_blocking(move || pipeline.network_map())
        .await
        .map_err(|e| anyhow::anyhow!("reading the network map: {e}"))??;
    Ok(Json(NetworkView { from, map }))
}

pub(super) async fn set_network(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<NetworkView>, ApiError> {
    let map: NetworkMap = serde_json::from_slice(&body).map_err(|e| {
        coded(
            ErrorCode::NetworkMapInvalid,
            format!("the network map cannot be read: {e}"),
        )
    })?;
    map.check_alone()?;
    let pipeline = runner(&state)?;
    let (map, from) = tokio::task::spawn_blocking(move || {
        pipeline.set_network_map(&map)?;
        pipeline.network_map()
    })
    .await
    .map_err(|e| anyhow::anyhow!("keeping the network map: {e}"))??;
    tracing::info!(from = ?from, nics = map.nics.len(), "network map set");
    Ok(Json(NetworkView { from, map }))
}
