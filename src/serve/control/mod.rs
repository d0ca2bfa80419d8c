//! The control port (8080): health, readiness ([`ready`]), metrics (with
//! the control token), and the job API with the status page ([`api`]),
//! served by one listener with its limits ([`listener`]).

pub mod api;
mod error;
pub mod listener;
mod ready;
pub mod sender;
mod status_page;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Appliance;
use api::{ApiState, HttpLimits, Identity};
pub(crate) use ready::targets_writable;

pub fn router(app: Arc<Appliance>, limits: HttpLimits) -> Router {
    let api_state = ApiState::new(
        Arc::clone(&app.job),
        app.control_token.as_deref(),
        Identity {
            version: env!("CARGO_PKG_VERSION"),
            tls_fingerprint: Some(app.fingerprint.clone()),
            data_port: data_port(&app),
            sender: app.sender.as_ref().map(|s| s.release.clone()),
        },
        app.unauthorized.clone(),
    )
    .with_manifest(crate::pipeline::handoff::manifest_path(
        &app.config.state_dir,
    ))
    .with_resets(Arc::new(Arc::clone(&app)))
    .with_pipeline(Arc::clone(&app.pipeline))
    .with_files_progress(Arc::clone(&app.files_progress))
    .with_sender(app.sender.clone());
    // The metrics carry the job's detail (its state, each disk's size and
    // progress): they need the control token, as `/v1/job` does. Health
    // and readiness stay open for load balancers and probes.
    let metrics = api::behind_token(Router::new().route("/metrics", get(metrics)), &api_state);
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::readyz))
        .merge(metrics)
        .with_state(app)
        .merge(api::router(api_state, limits))
}

fn data_port(app: &Appliance) -> u16 {
    app.config
        .data_listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(crate::wire::DEFAULT_DATA_PORT)
}

pub async fn serve(app: Arc<Appliance>, listener: TcpListener, shutdown: CancellationToken) {
    let limits = HttpLimits::default();
    let r = api::serve(listener, router(app, limits), limits, async move {
        shutdown.cancelled().await
    })
    .await;
    if let Err(e) = r {
        tracing::error!(error = %format!("{e:#}"), "control port failed");
    }
}

async fn metrics(State(app): State<Arc<Appliance>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
