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

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::job::errors::{coded, describe, ErrorCode};
use crate::job::handle::JobHandle;
use crate::job::state::{JobRecord, Timestamp};
use crate::serve::auth_limit::AuthLimiter;

/// The status page: one self-contained file, no external assets.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// What `/v1/identity` tells.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub version: &'static str,
    /// SHA-256 of the data port's TLS certificate (DER), hex; the sender pins it.
    pub tls_fingerprint: Option<String>,
    pub data_port: u16,
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
    resets: Option<Arc<dyn super::reset::Resets>>,
    /// The round's pipeline: its boot test's files, the handoff of a round
    /// whose boot test failed.
    pipeline: Option<Arc<crate::pipeline::Runner>>,
    /// File mode's progress, shown under `files`.
    files: Option<Arc<super::files::progress::FilesProgress>>,
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
    pub fn with_files_progress(
        mut self,
        progress: Arc<super::files::progress::FilesProgress>,
    ) -> Self {
        self.files = Some(progress);
        self
    }

    /// Reset disks and finish deletions through `resets`.
    pub fn with_resets(mut self, resets: Arc<dyn super::reset::Resets>) -> Self {
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
            auth: Arc::new(AuthLimiter::default()),
        }
    }

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

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time for a request to be answered.
    pub request_timeout: Duration,
    /// A connection is closed when the server has had nothing to answer
    /// for this long since it was opened or last answered: a deadline for
    /// the request's headers that bytes trickled in do not move.
    pub idle_timeout: Duration,
    /// Largest request body.
    pub body_limit: usize,
    /// Connections open at once, in all and from one address; past either,
    /// the oldest is closed for the newest, so held connections never keep
    /// a probe out.
    pub max_connections: usize,
    pub max_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            body_limit: 16 * 1024,
            max_connections: 256,
            max_per_address: 64,
        }
    }
}

/// The job as GET /v1/job shows it: the record plus totals, and whether
/// data still arrives.
#[derive(Debug, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub record: JobRecord,
    pub total_bytes: u64,
    pub committed_bytes: u64,
    pub sync_rate_bps: f64,
    /// Seconds until every disk is committed at the current rate.
    pub eta_secs: Option<u64>,
    /// When data last arrived for any disk (or a sender opened one).
    pub last_progress_at: Option<Timestamp>,
    /// Seconds without data while Syncing with disks still to commit;
    /// None when the job waits for no data.
    pub no_data_secs: Option<u64>,
    /// No data for `stall_after_secs` while Syncing: the sender stopped or
    /// the link is down.
    pub stalled: bool,
    pub stall_after_secs: u64,
    /// File mode: what the round's trees received so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<super::files::progress::FilesView>,
}

impl JobView {
    /// The view of `record` at `now` (its rates already measured to now).
    pub fn at(record: JobRecord, now: SystemTime, stall_after: Duration) -> Self {
        let total_bytes = record.disks.iter().map(|d| d.size).sum();
        let committed_bytes = record.disks.iter().map(|d| d.committed).sum();
        let sync_rate_bps = record.sync_rate_bps();
        // The disks go in parallel: the round ends with its slowest disk.
        let eta_secs = if record.disks.is_empty() {
            None
        } else {
            record
                .disks
                .iter()
                .map(|d| d.eta_secs)
                .try_fold(0u64, |acc, e| e.map(|e| acc.max(e)))
        };
        let no_data = record.no_data_for(now);
        JobView {
            last_progress_at: record.last_progress_at(),
            no_data_secs: no_data.map(|d| d.as_secs()),
            stalled: no_data.is_some_and(|d| d >= stall_after),
            stall_after_secs: stall_after.as_secs(),
            record,
            total_bytes,
            committed_bytes,
            sync_rate_bps,
            eta_secs,
            files: None,
        }
    }
}

/// An error answer: `{"code", "message", "hint", "detail"}`.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub hint: &'static str,
    pub detail: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
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
            ErrorCode::JobTransitionRefused | ErrorCode::DiskBusy => StatusCode::CONFLICT,
            ErrorCode::HandoffNotFound
            | ErrorCode::DiskNotConfigured
            | ErrorCode::BootTestNotFound => StatusCode::NOT_FOUND,
            ErrorCode::Usage | ErrorCode::BadBandwidth => StatusCode::BAD_REQUEST,
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

/// The API's routes, with auth on `/v1/job` and the body limit. Callers
/// add `/livez`, `/readyz` and `/metrics` beside it.
pub fn router(state: ApiState, limits: HttpLimits) -> Router {
    let job = Router::new()
        .route("/v1/job", get(get_job))
        .route("/v1/job/stop", post(stop_job))
        .route("/v1/job/start", post(start_job))
        .route("/v1/job/delete", post(delete_job))
        .route("/v1/job/disks/{index}/reset", post(reset_disk))
        .route("/v1/job/handoff", get(get_handoff).post(post_handoff))
        .route("/v1/job/boot-test", get(get_boot_test))
        .route("/v1/job/boot-test/console", get(get_boot_console))
        .route("/v1/job/boot-test/capture", get(get_boot_capture))
        .route("/v1/job/bandwidth", post(set_bandwidth))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(status_page))
        .route("/v1/identity", get(identity))
        .merge(job)
        // Refuses a declared Content-Length over the limit before reading,
        // and cuts a chunked body when it goes over.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.body_limit,
        ))
        .layer(DefaultBodyLimit::max(limits.body_limit))
        .with_state(state)
}

/// The token is checked first, in constant time: a correct one is let in
/// whatever failed before it from the same address. A wrong one is counted
/// per address and answered after a delay that grows with the address's
/// recent failures (401, with `Retry-After`); past the limit it is refused
/// at once (429 CONTROL_RATE_LIMITED, with `Retry-After`). A request without
/// any token guesses nothing and is answered 401 at once.
async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
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

/// The peer of a control connection, for the per-address limits.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CappedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, CappedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
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

/// `GET /v1/job/handoff`: the manifest of the last round handed off, as
/// written (its BLAKE3 is the digest the webhook carries).
async fn get_handoff(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let Some(path) = state.manifest.clone() else {
        return Err(coded(
            ErrorCode::HandoffNotFound,
            "this appliance keeps no manifest",
        )
        .into());
    };
    let read = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            )
        })?;
    match read {
        Ok(bytes) => {
            let mut resp = bytes.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(coded(
            ErrorCode::HandoffNotFound,
            "no round of this job has been handed off yet",
        )
        .into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("reading the handoff manifest: {e}"),
        )),
    }
}

/// What `POST /v1/job/handoff` takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffRequest {
    #[serde(default)]
    despite_failed_boot_test: bool,
}

/// `POST /v1/job/handoff` with `{"despite_failed_boot_test": true}`: the
/// control plane takes the disks of a round whose boot test failed; the
/// manifest records it (`boot_test.handed_off_anyway`).
async fn post_handoff(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<JobView>, ApiError> {
    let req: HandoffRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HandoffRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Usage,
                format!("the body is not {{\"despite_failed_boot_test\": true}}: {e}"),
            )
        })?
    };
    if !req.despite_failed_boot_test {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Usage,
            "a round is handed off by its pipeline; this call only hands off a round whose boot test failed, and needs {\"despite_failed_boot_test\": true} to say so",
        ));
    }
    let Some(pipeline) = state.pipeline.clone() else {
        return Err(anyhow::anyhow!("this appliance runs no pipeline").into());
    };
    job_call(&state, |job| job.handoff_anyway()).await?;
    pipeline.start_handoff_anyway();
    get_job(State(state)).await
}

/// A file of the boot test, read off the async threads.
async fn boot_test_file(
    state: &ApiState,
    name: &'static str,
    kind: &'static str,
) -> Result<Response, ApiError> {
    let Some(pipeline) = state.pipeline.clone() else {
        return Err(coded(
            ErrorCode::BootTestNotFound,
            "this appliance runs no pipeline",
        )
        .into());
    };
    let path = pipeline.boot_test_dir().join(name);
    let read = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .map_err(|e| anyhow::anyhow!("reading the boot test's {name}: {e}"))?;
    match read {
        Ok(bytes) => {
            let mut resp = bytes.into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(coded(
            ErrorCode::BootTestNotFound,
            format!("no boot test of this job has written its {name}"),
        )
        .into()),
        Err(e) => Err(anyhow::anyhow!("reading the boot test's {name}: {e}").into()),
    }
}

/// `GET /v1/job/boot-test`: the last boot test's verdict.
async fn get_boot_test(State(state): State<ApiState>) -> Result<Response, ApiError> {
    boot_test_file(&state, crate::pipeline::boot::VERDICT, "application/json").await
}

/// `GET /v1/job/boot-test/console`: the test machine's serial console.
async fn get_boot_console(State(state): State<ApiState>) -> Result<Response, ApiError> {
    boot_test_file(
        &state,
        crate::pipeline::boot::CONSOLE,
        "text/plain; charset=utf-8",
    )
    .await
}

/// `GET /v1/job/boot-test/capture`: the test machine's network traffic (pcap).
async fn get_boot_capture(State(state): State<ApiState>) -> Result<Response, ApiError> {
    boot_test_file(
        &state,
        crate::pipeline::boot::CAPTURE,
        "application/vnd.tcpdump.pcap",
    )
    .await
}

async fn status_page() -> Response {
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

async fn identity(State(state): State<ApiState>) -> Json<Identity> {
    Json(state.identity.clone())
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

async fn get_job(State(state): State<ApiState>) -> Result<Json<JobView>, ApiError> {
    let mut view = job_call(&state, |job| {
        let record = job.snapshot();
        Ok(JobView::at(record, job.now(), job.stall_after()))
    })
    .await?;
    view.files = state.files.as_ref().and_then(|f| f.view());
    Ok(Json(view))
}

async fn stop_job(State(state): State<ApiState>) -> Result<Json<JobView>, ApiError> {
    job_call(&state, |job| job.stop()).await?;
    get_job(State(state)).await
}

async fn start_job(State(state): State<ApiState>) -> Result<Json<JobView>, ApiError> {
    job_call(&state, |job| job.start()).await?;
    get_job(State(state)).await
}

/// Delete: the job goes Deleting, its disks are forgotten, and a fresh
/// Ready job takes its place (same token and TLS identity).
async fn delete_job(State(state): State<ApiState>) -> Result<Json<JobView>, ApiError> {
    job_call(&state, |job| job.delete()).await?;
    if let Some(resets) = state.resets.clone() {
        tokio::task::spawn_blocking(move || resets.finish_delete())
            .await
            .map_err(|e| anyhow::anyhow!("deletion task failed: {e}"))??;
    }
    get_job(State(state)).await
}

/// Forget one disk (announced wrongly, say): its ledger entries and, in
/// embedded mode, its image. The next sender sends it from the start.
async fn reset_disk(
    State(state): State<ApiState>,
    axum::extract::Path(index): axum::extract::Path<u32>,
) -> Result<Json<JobView>, ApiError> {
    let Some(resets) = state.resets.clone() else {
        return Err(anyhow::anyhow!("this appliance cannot reset disks").into());
    };
    tokio::task::spawn_blocking(move || resets.reset_disk(index))
        .await
        .map_err(|e| anyhow::anyhow!("reset task failed: {e}"))??;
    get_job(State(state)).await
}

/// The body of `POST /v1/job/bandwidth`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BandwidthRequest {
    /// Bytes per second; 0 or null lifts the limit. The field must be
    /// there: an empty body lifting the limit would hide a typo.
    #[serde(deserialize_with = "present")]
    bytes_per_sec: Option<u64>,
}

/// A field that may be null but not missing (`Option` fields are otherwise
/// taken as null when missing).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    serde::Deserialize::deserialize(d)
}

/// The highest limit taken: far above any link, and exact as a JSON number
/// in every control plane's language (2^53 - 1 is the most a double holds).
const MAX_BANDWIDTH: u64 = 1 << 50;

/// Set or lift the senders' bandwidth limit: saved in the job and pushed
/// to every connected sender, which applies it at once.
async fn set_bandwidth(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<JobView>, ApiError> {
    let bad =
        |detail: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadBandwidth, detail);
    let req: BandwidthRequest = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("the body is not {{\"bytes_per_sec\": N}}: {e}")))?;
    let limit = req.bytes_per_sec.filter(|&n| n > 0);
    if let Some(n) = limit.filter(|&n| n < crate::wire::MIN_BANDWIDTH) {
        return Err(bad(format!(
            "{n} bytes per second is below the smallest limit, {}",
            crate::wire::MIN_BANDWIDTH
        )));
    }
    if let Some(n) = limit.filter(|&n| n > MAX_BANDWIDTH) {
        return Err(bad(format!(
            "{n} bytes per second is above the largest limit, {MAX_BANDWIDTH} (1 PiB/s); 0 or null lifts the limit"
        )));
    }
    job_call(&state, move |job| job.set_bandwidth_limit(limit)).await?;
    match limit {
        Some(n) => tracing::info!(bytes_per_sec = n, "bandwidth limit set"),
        None => tracing::info!("bandwidth limit lifted"),
    }
    get_job(State(state)).await
}

/// Serve `router` on `listener` over HTTP/1.1 with the limits: a request
/// timeout, an idle timeout per connection, and at most
/// `max_connections` connections at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let listener = CappedListener {
        inner: listener,
        admission: super::admission::Admission::new(
            limits.max_connections,
            limits.max_per_address,
            prometheus::IntCounter::new(
                "ferry_control_connections_evicted_total",
                "Control connections closed to make room for newer ones",
            )
            .context("the eviction counter")?,
        ),
        idle_timeout: limits.idle_timeout,
    };
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving the control API")
}

/// A listener whose connections hold a place in the port's budget.
pub struct CappedListener {
    inner: TcpListener,
    admission: Arc<super::admission::Admission>,
    idle_timeout: Duration,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let ticket = self.admission.arrive(addr.ip());
                    return (
                        CappedStream {
                            inner: stream,
                            evicted: Box::pin(ticket.evicted_owned()),
                            _ticket: ticket,
                            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
                            idle_timeout: self.idle_timeout,
                        },
                        addr,
                    );
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("accepting a control connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its place back when closed, is closed when a
/// newer one needs the place, and is cut when the server has answered
/// nothing for `idle_timeout` (what the client trickles in does not count).
pub struct CappedStream {
    inner: TcpStream,
    _ticket: super::admission::Ticket,
    evicted: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "control connection closed to make room for a newer one",
            )));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(res) => Poll::Ready(res),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "control connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            // An answer went out: the next request has its own deadline.
            let deadline = tokio::time::Instant::now() + self.idle_timeout;
            self.idle.as_mut().reset(deadline);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::state::{JobSettings, MemoryStore, SystemClock};

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

    #[test]
    fn job_view_totals_and_eta_of_the_slowest_disk() {
        let now = std::time::SystemTime::now();
        let after = Duration::from_secs(30);
        let mut r = JobRecord::new("j".into(), JobSettings::default(), now);
        r.set_disk(0, 100, 50);
        r.set_disk(1, 300, 0);
        r.disks[0].eta_secs = Some(10);
        r.disks[0].rate_bps = 5.0;
        r.disks[1].eta_secs = Some(60);
        r.disks[1].rate_bps = 5.0;
        let v = JobView::at(r.clone(), now, after);
        assert_eq!(
            (
                v.total_bytes,
                v.committed_bytes,
                v.sync_rate_bps,
                v.eta_secs
            ),
            (400, 50, 10.0, Some(60))
        );
        r.disks[1].eta_secs = None;
        assert_eq!(JobView::at(r, now, after).eta_secs, None);
    }

    #[test]
    fn a_syncing_job_without_data_is_stalled() {
        let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let after = Duration::from_secs(30);
        let mut r = JobRecord::new("j".into(), JobSettings::default(), t0);
        let view = |r: &JobRecord, secs: u64| {
            let v = JobView::at(r.clone(), t0 + Duration::from_secs(secs), after);
            (v.stalled, v.no_data_secs)
        };
        assert_eq!(view(&r, 100), (false, None), "Ready waits for no data");
        r.admit_sender(t0).unwrap();
        r.transition(crate::job::state::Status::SYNCING, "syncing", t0)
            .unwrap();
        r.disk_opened(0, 1000, 0, t0 + Duration::from_secs(5));
        r.record_progress(0, 100, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(view(&r, 39), (false, Some(29)));
        assert_eq!(view(&r, 40), (true, Some(30)));
        let v = JobView::at(r.clone(), t0 + Duration::from_secs(40), after);
        assert_eq!(
            v.last_progress_at,
            Some(Timestamp(t0 + Duration::from_secs(10)))
        );
        // Every byte committed: the disk is being verified, nothing is missing.
        r.record_progress(0, 1000, t0 + Duration::from_secs(50))
            .unwrap();
        assert_eq!(view(&r, 500), (false, None));
    }
}
