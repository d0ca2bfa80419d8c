//! The job's resource: `GET /v1/job` (the record, its totals and whether
//! data still arrives), stop, start, delete, a disk's reset, and the
//! senders' bandwidth limit.

use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::{job_call, ApiError, ApiState};
use crate::job::errors::ErrorCode;
use crate::job::state::{JobRecord, Timestamp};

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
    pub files: Option<crate::serve::data::tree::progress::FilesView>,
    /// What a round does once its data is in (the appliance's settings,
    /// `build` and `boot_test`); absent where no pipeline runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineView>,
}

/// What a round does after the data.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PipelineView {
    /// Grow, repair and verify the OS (false: the disks are replicated only).
    pub build: bool,
    /// Boot the repaired disks under QEMU before the handoff.
    pub boot_test: bool,
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
            pipeline: None,
        }
    }
}

pub(super) async fn get_job(State(state): State<ApiState>) -> Result<Json<JobView>, ApiError> {
    let mut view = job_call(&state, |job| {
        let record = job.snapshot();
        Ok(JobView::at(record, job.now(), job.stall_after()))
    })
    .await?;
    view.files = state.files.as_ref().and_then(|f| f.view());
    view.pipeline = state.pipeline.as_ref().map(|p| {
        let (build, boot_test) = p.does();
        PipelineView { build, boot_test }
    });
    Ok(Json(view))
}

pub(super) async fn stop_job(State(state): State<ApiState>) -> Result<Json<JobView>, ApiError> {
    job_call(&state, |job| job.stop()).await?;
    get_job(State(state)).await
}

pub(super) async fn start_job(State(state): State<ApiState>) -> Result<Json<JobView>, ApiError> {
    job_call(&state, |job| job.start()).await?;
    get_job(State(state)).await
}

/// Delete: the job goes Deleting, its disks are forgotten, and a fresh
/// Ready job takes its place (same token and TLS identity).
pub(super) async fn delete_job(State(state): State<ApiState>) -> Result<Json<JobView>, ApiError> {
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
pub(super) async fn reset_disk(
    State(state): State<ApiState>,
    axum::extract::Path(index): axum::extract::Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let index: u32 = index.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!(
                "the disk index {index:?} is not a whole number from 0 to {}",
                u32::MAX
            ),
        )
    })?;
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
pub(super) async fn set_bandwidth(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::state::JobSettings;

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
        r.transition(
            crate::job::state::JobStatus::SYNCING,
            crate::job::state::ChangeCause::Syncing,
            t0,
        )
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
