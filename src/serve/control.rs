//! The control port (8080): health and metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Appliance;

pub fn router(app: Arc<Appliance>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

pub async fn serve(app: Arc<Appliance>, listener: TcpListener, shutdown: CancellationToken) {
    let r = axum::serve(listener, router(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "control port failed");
    }
}

async fn readyz(State(app): State<Arc<Appliance>>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if !app.data_bound.load(Ordering::SeqCst) {
        reasons.push("the data port is not bound yet");
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons })),
    )
}

async fn metrics(State(app): State<Arc<Appliance>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
