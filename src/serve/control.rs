//! The control port (8080): health, readiness, metrics, and the job API
//! with the status page (`api`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::api::{self, ApiState, HttpLimits, Identity};
use super::Appliance;

pub fn router(app: Arc<Appliance>, limits: HttpLimits) -> Router {
    let api_state = ApiState::new(
        Arc::clone(&app.job),
        app.control_token.as_deref(),
        Identity {
            version: env!("CARGO_PKG_VERSION"),
            tls_fingerprint: Some(app.fingerprint.clone()),
            data_port: data_port(&app),
        },
        app.unauthorized.clone(),
    )
    .with_manifest(crate::pipeline::handoff::manifest_path(
        &app.config.state_dir,
    ));
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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

/// 503 with the reasons until the job store answers, the targets are
/// writable, the ledger's disk records were accepted at start
/// ([`super::records`]) and the data port is bound. (The config is loaded before this
/// port is served at all.) Checked on every request: a target that goes
/// away makes the appliance unready again.
async fn readyz(State(app): State<Arc<Appliance>>) -> impl IntoResponse {
    let checker = Arc::clone(&app);
    let (store, targets) = tokio::task::spawn_blocking(move || {
        let store = checker
            .ledger
            .get_meta(crate::job::state::JOB_RECORD_KEY)
            .map(|_| ())
            .map_err(|e| format!("the job store does not answer: {e:#}"));
        (store, targets_writable(&checker.config))
    })
    .await
    .unwrap_or_else(|e| (Err(format!("readiness check failed: {e}")), Vec::new()));
    let mut reasons: Vec<String> = Vec::new();
    if let Err(r) = &store {
        reasons.push(r.clone());
    }
    reasons.extend(targets.iter().cloned());
    reasons.extend(app.refused_records.iter().cloned());
    let data_bound = app.data_bound.load(Ordering::SeqCst);
    if !data_bound {
        reasons.push("the data port is not bound yet".into());
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": reasons.is_empty(),
            "checks": {
                "config_loaded": true,
                "job_store_open": store.is_ok(),
                "targets_writable": targets.is_empty(),
                "ledger_records_valid": app.refused_records.is_empty(),
                "data_port_bound": data_bound,
            },
            "reasons": reasons,
        })),
    )
}

/// Why targets cannot be written, one reason per target (empty: all fine).
/// Opening for writing without writing proves the device or file exists
/// and that this process may write it.
pub(crate) fn targets_writable(config: &crate::config::Config) -> Vec<String> {
    if config.embedded() {
        let dir = config.state_dir.join("disks");
        let probe = crate::disk::private_dir(&dir)
            .and_then(|()| tempfile::tempfile_in(&dir).map_err(anyhow::Error::from));
        return match probe {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!(
                "the embedded disks' directory {} is not writable: {e:#}",
                dir.display()
            )],
        };
    }
    config
        .disks
        .iter()
        .filter_map(|d| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&d.target)
                .err()
                .map(|e| {
                    format!(
                        "the target of disk {} ({}) is not writable: {e}",
                        d.index,
                        d.target.display()
                    )
                })
        })
        .collect()
}

async fn metrics(State(app): State<Arc<Appliance>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
