//! The control API on 8080: identity, the job (read, stop, start, delete)
//! and the operator's status page.
//!
//! Everything under `/v1/job` needs `Authorization: Bearer <control token>`;
//! the control token is not the sender's job token, so a leaked sender
//! command line cannot stop or delete the job. `/v1/identity` is open: the
//! sender reads the fingerprint it pins from there before it has any token.
//!
//! The status page at `/` is open but holds no data: it is a static page
//! that asks for the control token (or takes it once from a link's fragment,
//! `/#token=...`, which it then removes from the address) and keeps it in
//! the tab's memory and session storage only, never in a URL the browser
//! sends: the token does not end up in access logs, proxies, Referer headers
//! or the history. It fetches `/v1/job` with it and stops or starts the job
//! on the operator's click. Without a token the page asks for one and says
//! where to find it. Serving coarse progress openly was the alternative; it would tell
//! anyone who can reach 8080 what is being migrated and how far, which the
//! design rules out ("everything that reads job detail needs the control
//! token").
//!
//! The handlers are split by resource: the job and its bandwidth
//! ([`job`]), the handoff and the boot test's files ([`handoff`]), the
//! network map ([`network`]), the operator's hooks ([`hooks`]), the job's
//! events ([`events`]), and the control token's check ([`token`]).

mod events;
mod handoff;
mod hooks;
mod job;
mod network;
mod token;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub(crate) use super::error::ApiError;
pub use super::listener::{serve, CappedListener, CappedStream, HttpLimits, Peer};
pub use super::status_page::STATUS_PAGE;
use crate::job::errors::ErrorCode;
use crate::job::handle::JobHandle;
use crate::serve::auth_limit::AuthLimiter;
use crate::serve::data::tree::progress::FilesProgress;
pub use job::JobView;

/// What `/v1/identity` tells.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub version: &'static str,
    /// SHA-256 of the data port's TLS certificate (DER), hex; the sender pins it.
    pub tls_fingerprint: Option<String>,
    pub data_port: u16,
    /// The sender's release this appliance serves (`GET` its `path`), with
    /// its SHA-256; null when it carries none.
    pub sender: Option<super::sender::SenderRelease>,
}

/// State shared by the API's handlers.
#[derive(Clone)]
pub struct ApiState {
    pub job: Arc<JobHandle>,
    /// SHA-256 of the control token; None refuses every `/v1/job` request
    /// (an appliance without a token must not be controllable by anyone).
    token_digest: Option<[u8; 32]>,
    pub identity: Identity,
    /// Requests refused for a missing or wrong control token.
    pub unauthorized: prometheus::IntCounter,
    /// Where the last round's handoff manifest is written.
    manifest: Option<std::path::PathBuf>,
    /// Wrong control tokens, per address.
    auth: Arc<AuthLimiter>,
    /// Disk resets and the end of a deletion; None: refused (501).
    resets: Option<Arc<dyn crate::serve::reset::Resets>>,
    /// The round's pipeline: its boot test's files, the handoff of a round
    /// whose boot test failed.
    pipeline: Option<Arc<crate::pipeline::Runner>>,
    /// File mode's progress, shown under `files`.
    files: Option<Arc<FilesProgress>>,
    /// The sender's release, served at `/v1/sender/<file>`.
    sender: Option<Arc<super::sender::SenderFiles>>,
}

impl ApiState {
    /// Serve the handoff manifest at `path` as `GET /v1/job/handoff`.
    pub fn with_manifest(mut self, path: std::path::PathBuf) -> Self {
        self.manifest = Some(path);
        self
    }

    /// Serve the boot test's files and hand off failed ones through `pipeline`.
    pub fn with_pipeline(mut self, pipeline: Arc<crate::pipeline::Runner>) -> Self {
        self.pipeline = Some(pipeline);
        self
    }

    /// Show file mode's progress under `files`.
    pub(crate) fn with_files_progress(mut self, progress: Arc<FilesProgress>) -> Self {
        self.files = Some(progress);
        self
    }

    /// Serve the sender's release (none: every `/v1/sender/` request is 404).
    pub(crate) fn with_sender(mut self, sender: Option<Arc<super::sender::SenderFiles>>) -> Self {
        self.sender = sender;
        self
    }

    /// Reset disks and finish deletions through `resets`.
    pub(crate) fn with_resets(mut self, resets: Arc<dyn crate::serve::reset::Resets>) -> Self {
        self.resets = Some(resets);
        self
    }

    pub fn new(
        job: Arc<JobHandle>,
        control_token: Option<&str>,
        identity: Identity,
        unauthorized: prometheus::IntCounter,
    ) -> Self {
        ApiState {
            job,
            token_digest: control_token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            identity,
            unauthorized,
            manifest: None,
            resets: None,
            pipeline: None,
            files: None,
            sender: None,
            auth: Arc::new(AuthLimiter::default()),
        }
    }
}

/// `routes` behind the control token's check: for routes outside this
/// router (`/metrics`).
pub fn behind_token<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    state: &ApiState,
) -> Router<S> {
    routes.route_layer(middleware::from_fn_with_state(
        state.clone(),
        token::require_token,
    ))
}

/// The API's routes, with auth on `/v1/job` and the body limit. Callers
/// add `/livez`, `/readyz` and `/metrics` (behind [`behind_token`])
/// beside it.
pub fn router(state: ApiState, limits: HttpLimits) -> Router {
    let job = Router::new()
        .route("/v1/job", get(job::get_job))
        .route("/v1/job/stop", post(job::stop_job))
        .route("/v1/job/start", post(job::start_job))
        .route("/v1/job/delete", post(job::delete_job))
        .route("/v1/job/disks/{index}/reset", post(job::reset_disk))
        .route(
            "/v1/job/handoff",
            get(handoff::get_handoff).post(handoff::post_handoff),
        )
        .route("/v1/job/boot-test", get(handoff::get_boot_test))
        .route("/v1/job/boot-test/console", get(handoff::get_boot_console))
        .route("/v1/job/boot-test/capture", get(handoff::get_boot_capture))
        .route("/v1/job/bandwidth", post(job::set_bandwidth))
        .route("/v1/job/events", get(events::get_events))
        .route(
            "/v1/job/network",
            get(network::get_network).post(network::set_network),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            token::require_token,
        ));
    // Scripts make a larger body than the other endpoints take.
    let hooks = Router::new()
        .route(
            "/v1/job/hooks",
            get(hooks::get_hooks).post(hooks::set_hooks),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            token::require_token,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            hooks::BODY_LIMIT,
        ))
        .layer(DefaultBodyLimit::max(hooks::BODY_LIMIT));
    Router::new()
        .route("/", get(super::status_page::status_page))
        .route("/v1/identity", get(identity))
        .route("/v1/sender/{file}", get(sender_file))
        .merge(job)
        // Refuses a declared Content-Length over the limit before reading,
        // and cuts a chunked body when it goes over.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.body_limit,
        ))
        .layer(DefaultBodyLimit::max(limits.body_limit))
        .merge(hooks)
        .with_state(state)
}

/// The appliance's pipeline, for the endpoints that set its choices.
fn runner(state: &ApiState) -> Result<Arc<crate::pipeline::Runner>, ApiError> {
    state
        .pipeline
        .clone()
        .ok_or_else(|| anyhow::anyhow!("this appliance runs no pipeline").into())
}

async fn identity(State(state): State<ApiState>) -> Json<Identity> {
    Json(state.identity.clone())
}

/// `GET /v1/sender/<file>`: the sender's release, open to all (it is the
/// program source servers run, not job detail); any other name is 404.
async fn sender_file(
    State(state): State<ApiState>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let Some(sender) = state.sender.as_ref().filter(|s| s.release.file == file) else {
        let detail = match &state.sender {
            Some(s) => format!(
                "{file:?} is not served here; the release is {:?}",
                s.release.file
            ),
            None => {
                format!("{file:?} is not served here: this appliance carries no sender release")
            }
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::SenderNotFound,
            detail,
        ));
    };
    let disposition = format!("attachment; filename=\"{}\"", sender.release.file);
    let mut resp = sender.tarball.clone().into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", sender.release.sha256)) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Job calls may save to the ledger (a durable write): off the async threads.
async fn job_call<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&JobHandle) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let job = state.job.clone();
    tokio::task::spawn_blocking(move || f(&job))
        .await
        .map_err(|e| anyhow::anyhow!("job task failed: {e}"))?
        .map_err(ApiError::from)
}
