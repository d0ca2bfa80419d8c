//! The job record: what is persisted in the job store and shown by
//! GET /v1/job — the job's settings and validity, its status, its last
//! error, its disks' progress and its last handoff.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::job::errors::{coded, ErrorCode};
use crate::job::progress::DiskProgress;
use crate::job::status::{refused_operation, JobState, JobStatus};
use crate::job::time::Timestamp;

/// How long a job is valid: 7 to 90 days, as in the FAQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Validity(u32);

impl Validity {
    pub(crate) const MIN_DAYS: u32 = 7;
    pub(crate) const MAX_DAYS: u32 = 90;
    pub(crate) const DEFAULT_DAYS: u32 = 30;

    pub fn days(days: u32) -> Result<Validity> {
        if (Self::MIN_DAYS..=Self::MAX_DAYS).contains(&days) {
            Ok(Validity(days))
        } else {
            Err(coded(ErrorCode::BadValidity, format!("got {days} days")))
        }
    }

    pub(crate) fn as_days(self) -> u32 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(u64::from(self.0) * 86_400)
    }
}

impl Default for Validity {
    fn default() -> Self {
        Validity(Self::DEFAULT_DAYS)
    }
}

impl TryFrom<u32> for Validity {
    type Error = String;
    fn try_from(days: u32) -> std::result::Result<Self, String> {
        Validity::days(days).map_err(|e| format!("{e:#}"))
    }
}

impl From<Validity> for u32 {
    fn from(v: Validity) -> u32 {
        v.0
    }
}

/// The error that put a job InError (or the last one a round reported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
    pub hint: String,
    /// Specifics of this occurrence (which disk, which offset).
    #[serde(default)]
    pub detail: String,
    pub at: Timestamp,
}

impl JobError {
    pub fn new(code: ErrorCode, detail: impl Into<String>, at: SystemTime) -> Self {
        let detail = detail.into();
        JobError {
            code,
            message: code.message_for(&detail),
            hint: code.hint().to_owned(),
            detail,
            at: Timestamp(at),
        }
    }
}

/// Settings a new job is created with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobSettings {
    /// Waiting after each round (ready for the next) instead of Finished.
    pub incremental: bool,
    pub validity: Validity,
}

/// The job as persisted in the job store and shown by GET /v1/job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    #[serde(flatten)]
    pub status: JobStatus,
    pub incremental: bool,
    pub validity_days: Validity,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// When the status last changed.
    pub updated_at: Timestamp,
    /// When a sender first started a round.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Rounds that reached Finished or Waiting.
    #[serde(default)]
    pub rounds_completed: u32,
    /// Number of status changes so far; webhook events carry it so the
    /// control plane can order them and spot gaps, across restarts too.
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub last_error: Option<JobError>,
    #[serde(default)]
    pub disks: Vec<DiskProgress>,
    /// The pipeline step running now; absent when the job is not Running
    /// its pipeline (Processing or Cleaning).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::job::step::lenient"
    )]
    pub step: Option<crate::job::step::Step>,
    /// The last round's handoff: its manifest's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffMark>,
    /// The report of the last round's check of the received disks before
    /// the repair (`ferry check`'s JSON): what the repair would meet, and
    /// the blockers that put the job InError.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<serde_json::Value>,
    /// The disks are handed off and the control plane has not started
    /// another round: senders are refused, nothing writes the targets.
    #[serde(default)]
    pub held: bool,
    /// The bandwidth limit the control plane set for the senders, in bytes
    /// per second (POST /v1/job/bandwidth); None: no limit.
    #[serde(default)]
    pub bandwidth_limit_bytes_per_sec: Option<u64>,
}

/// A round that was handed off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffMark {
    pub round: u32,
    /// BLAKE3 (hex) of `handoff.json` as written.
    pub manifest_digest: String,
    pub at: Timestamp,
}

impl JobRecord {
    pub fn new(id: String, settings: JobSettings, now: SystemTime) -> Self {
        JobRecord {
            id,
            status: JobStatus::Ready,
            incremental: settings.incremental,
            validity_days: settings.validity,
            created_at: Timestamp(now),
            expires_at: Timestamp(now + settings.validity.duration()),
            updated_at: Timestamp(now),
            started_at: None,
            finished_at: None,
            rounds_completed: 0,
            seq: 0,
            last_error: None,
            disks: Vec::new(),
            step: None,
            handoff: None,
            check: None,
            held: false,
            bandwidth_limit_bytes_per_sec: None,
        }
    }

    /// Forget one disk's progress (its ledger entries are forgotten by the
    /// caller): only while no round runs, and not while a round is handed
    /// off (Finished, or held until the next start, also when the held job
    /// was stopped meanwhile): the handoff manifest names the disk as it
    /// is, for the snapshot.
    pub(crate) fn forget_disk(&mut self, index: u32) -> Result<()> {
        if self.status.state() == JobState::Running || self.status == JobStatus::Deleting {
            return Err(refused_operation(
                &format!("reset (disk {index}): stop it first"),
                self.status,
            ));
        }
        if self.status == JobStatus::Finished || self.held {
            let round = self.handoff.as_ref().map_or(0, |h| h.round);
            return Err(coded(
                ErrorCode::DiskHandedOff,
                format!(
                    "disk {index}: round {round} is handed off and the job is {}",
                    self.status
                ),
            ));
        }
        self.disks.retain(|d| d.index != index);
        Ok(())
    }

    /// Whether the validity period is over at `now`.
    pub(crate) fn is_past_validity(&self, now: SystemTime) -> bool {
        now >= self.expires_at.0
    }
}

/// The round's disks on the record: their progress, whether they are
/// committed and verified, and how long data has not arrived.
impl JobRecord {
    /// Set (or reset, at the start of a round) a disk's size and committed bytes.
    pub(crate) fn set_disk(&mut self, index: u32, size: u64, committed: u64) {
        let disk = DiskProgress::new(index, size, committed);
        match self.disks.iter_mut().find(|d| d.index == index) {
            Some(d) => *d = disk,
            None => {
                self.disks.push(disk);
                self.disks.sort_by_key(|d| d.index);
            }
        }
    }

    /// A sender opened disk `index` for this round: its size and the bytes
    /// already committed (from the ledger, when a round resumes). The disk
    /// moved now, which is where its silence is counted from.
    pub(crate) fn disk_opened(&mut self, index: u32, size: u64, committed: u64, now: SystemTime) {
        self.set_disk(index, size, committed);
        if let Some(d) = self.disks.iter_mut().find(|d| d.index == index) {
            d.last_progress_at = Some(Timestamp(now));
        }
    }

    /// The sender of disk `index` is alive and reading it (it pinged):
    /// a resume that skips what is committed sends no data for a while, and
    /// is not a stall.
    pub fn sender_alive(&mut self, index: u32, now: SystemTime) {
        if let Some(d) = self.disks.iter_mut().find(|d| d.index == index) {
            d.last_progress_at = Some(Timestamp(now));
        }
    }

    /// Bring every disk's rate and ETA to `now` (they fall to 0 when data
    /// stops, without a sample to say so).
    pub(crate) fn refresh_rates(&mut self, now: SystemTime) {
        for d in &mut self.disks {
            d.refresh(now);
        }
    }

    /// When data last arrived for any disk (or a sender opened one).
    pub fn last_progress_at(&self) -> Option<Timestamp> {
        self.disks.iter().filter_map(|d| d.last_progress_at).max()
    }

    /// How long a Syncing job has received no data while some disk still
    /// waits for it; None when it is not waiting for data (not Syncing, or
    /// every disk committed and being verified).
    pub(crate) fn no_data_for(&self, now: SystemTime) -> Option<Duration> {
        if self.status != JobStatus::SYNCING || self.all_committed() {
            return None;
        }
        let since = self
            .last_progress_at()
            .map_or(self.updated_at, |t| t.max(self.updated_at));
        Some(now.duration_since(since.0).unwrap_or_default())
    }

    /// A Syncing job that has received no data for `after`: the sender
    /// stopped, or the link is down.
    pub fn stalled(&self, now: SystemTime, after: Duration) -> bool {
        self.no_data_for(now).is_some_and(|d| d >= after)
    }

    /// Record a disk's committed bytes.
    pub(crate) fn record_progress(
        &mut self,
        index: u32,
        committed: u64,
        now: SystemTime,
    ) -> Result<()> {
        let disk = self
            .disks
            .iter_mut()
            .find(|d| d.index == index)
            .with_context(|| {
                format!("recording progress of disk {index}, which the job does not know")
            })?;
        disk.record(committed, now);
        Ok(())
    }

    /// The disk's digest was verified: it is committed whole in this round.
    pub fn disk_verified(&mut self, index: u32) -> Result<()> {
        let disk = self
            .disks
            .iter_mut()
            .find(|d| d.index == index)
            .with_context(|| format!("verifying disk {index}, which the job does not know"))?;
        disk.committed = disk.size;
        disk.verified = true;
        disk.pause();
        Ok(())
    }

    /// Whether every disk of the round is verified: `expected` are the
    /// disks the appliance is configured with, or None (embedded mode) for
    /// the disks the sender announced.
    pub(crate) fn round_verified(&self, expected: Option<&[u32]>) -> bool {
        match expected {
            Some(list) => {
                !list.is_empty()
                    && list
                        .iter()
                        .all(|i| self.disks.iter().any(|d| d.index == *i && d.verified))
            }
            None => !self.disks.is_empty() && self.disks.iter().all(|d| d.verified),
        }
    }

    /// Whether the round has disks and every one is committed.
    pub(crate) fn all_committed(&self) -> bool {
        !self.disks.is_empty() && self.disks.iter().all(DiskProgress::is_committed)
    }

    /// Sum of the disks' rates, bytes per second.
    pub fn sync_rate_bps(&self) -> f64 {
        // A fold from +0.0: the sum of no floats is -0.0, which /metrics
        // would show as "-0".
        self.disks.iter().fold(0.0, |acc, d| acc + d.rate_bps)
    }
}

/// A record and a time to build the job's unit tests on.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    pub(crate) fn record(status: JobStatus, incremental: bool) -> JobRecord {
        let mut r = JobRecord::new(
            "job-1".into(),
            JobSettings {
                incremental,
                validity: Validity::default(),
            },
            t0(),
        );
        r.status = status;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::change::ChangeCause;
    use crate::job::record::testing::{record, t0};
    use JobStatus as S;

    #[test]
    fn validity_bounds() {
        for (days, ok) in [
            (6, false),
            (7, true),
            (30, true),
            (90, true),
            (91, false),
            (0, false),
        ] {
            let v = Validity::days(days);
            assert_eq!(v.is_ok(), ok, "{days}");
            if let Err(e) = v {
                assert_eq!(
                    format!("{e:#}"),
                    format!("BAD_VALIDITY: The validity period of a migration task must be between 7 and 90 days (got {days} days)")
                );
            }
        }
        assert_eq!(Validity::default().as_days(), 30);
        let err = serde_json::from_str::<Validity>("120").unwrap_err();
        assert!(err.to_string().contains("got 120 days"), "{err}");
    }

    #[test]
    fn record_round_trips_through_json() {
        let mut r = record(S::Ready, true);
        r.set_disk(1, 2048, 0);
        r.set_disk(0, 1 << 30, 512);
        r.transition(S::PREPARING, ChangeCause::Sender, t0())
            .unwrap();
        r.transition(S::SYNCING, ChangeCause::Syncing, t0())
            .unwrap();
        r.fail(ErrorCode::TargetWriteFailed, "disk 0 at offset 4096", t0())
            .unwrap();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["state"], "InError");
        assert_eq!(json["business_status"], serde_json::Value::Null);
        assert_eq!(json["last_error"]["code"], "TARGET_WRITE_FAILED");
        assert_eq!(json["last_error"]["message"], "Do Rsync Disk 0 Failed");
        assert_eq!(json["created_at"], "2026-09-21T14:13:20.000Z");
        assert_eq!(json["expires_at"], "2026-10-21T14:13:20.000Z");
        assert_eq!(json["disks"][0]["index"], 0);
        let back: JobRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);

        let running = serde_json::to_value(record(S::SYNCING, false)).unwrap();
        assert_eq!(
            (&running["state"], &running["business_status"]),
            (&"Running".into(), &"Syncing".into())
        );
        let bad = serde_json::json!({"state": "Running"});
        assert!(serde_json::from_value::<JobStatus>(bad).is_err());
        let bad = serde_json::json!({"state": "Stopped", "business_status": "Syncing"});
        assert!(serde_json::from_value::<JobStatus>(bad).is_err());
    }

    #[test]
    fn progress_rate_over_a_recent_window_and_eta() {
        const MB: u64 = 1_000_000;
        let mut r = record(S::SYNCING, false);
        r.set_disk(0, 1000 * MB, 100 * MB);
        let at = |ms: u64| t0() + Duration::from_millis(ms);
        let rate_eta = |r: &JobRecord| (r.disks[0].rate_bps / MB as f64, r.disks[0].eta_secs);
        // The first sample is the baseline: no rate yet, nothing arrived.
        r.record_progress(0, 100 * MB, at(0)).unwrap();
        assert_eq!(rate_eta(&r), (0.0, None));
        assert_eq!(r.disks[0].last_progress_at, None);
        // 100 MB in 5 s: 20 MB/s, 800 MB left: 40 s.
        r.record_progress(0, 200 * MB, at(5_000)).unwrap();
        assert_eq!(rate_eta(&r), (20.0, Some(40)));
        assert_eq!(r.disks[0].last_progress_at, Some(Timestamp(at(5_000))));
        // 300 MB more by 10 s: 400 MB in the 10 s window.
        r.record_progress(0, 500 * MB, at(10_000)).unwrap();
        assert_eq!(rate_eta(&r), (40.0, Some(13)));
        // Nothing more arrives: the window slides past the data, the rate
        // falls and reaches 0, the ETA goes, the last arrival stays.
        r.refresh_rates(at(15_000));
        assert_eq!(rate_eta(&r), (30.0, Some(17)));
        r.refresh_rates(at(20_000));
        assert_eq!(rate_eta(&r), (0.0, None));
        assert_eq!(r.disks[0].last_progress_at, Some(Timestamp(at(10_000))));
        // A sender that pings while it skips committed chunks moved the
        // disk without data: its silence counts from then, the rate stays 0.
        r.sender_alive(0, at(19_000));
        assert_eq!(r.disks[0].last_progress_at, Some(Timestamp(at(19_000))));
        assert_eq!(rate_eta(&r), (0.0, None));
        r.sender_alive(7, at(19_500));
        r.disks[0].last_progress_at = Some(Timestamp(at(10_000)));
        // The window starts between the samples of 10 s and 20 s.
        r.record_progress(0, 600 * MB, at(20_000)).unwrap();
        r.record_progress(0, 610 * MB, at(20_100)).unwrap();
        assert!((rate_eta(&r).0 - 10.9).abs() < 1e-6, "{:?}", rate_eta(&r));
        assert_eq!(r.disks[0].committed, 610 * MB);
        // A steady flow keeps a bounded number of samples.
        for i in 1..=400u64 {
            r.record_progress(0, 610 * MB + i * MB / 2, at(20_100 + i * 100))
                .unwrap();
        }
        assert!(
            r.disks[0].sample_count() <= 82,
            "{}",
            r.disks[0].sample_count()
        );
        assert!((rate_eta(&r).0 - 5.0).abs() < 1e-6, "{:?}", rate_eta(&r));
        // Done.
        r.record_progress(0, 1000 * MB, at(70_000)).unwrap();
        assert_eq!(rate_eta(&r), (0.0, Some(0)));
        assert!(r.all_committed());
        let err = r.record_progress(3, 1, t0()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "recording progress of disk 3, which the job does not know"
        );
    }

    #[test]
    fn leaving_syncing_clears_rates() {
        let mut r = record(S::SYNCING, false);
        r.set_disk(0, 100, 0);
        r.set_disk(1, 100, 100);
        r.record_progress(0, 0, t0()).unwrap();
        r.record_progress(0, 50, t0() + Duration::from_secs(1))
            .unwrap();
        assert_eq!((r.disks[0].rate_bps, r.disks[0].eta_secs), (50.0, Some(1)));
        r.stop(t0()).unwrap();
        assert_eq!((r.disks[0].rate_bps, r.disks[0].eta_secs), (0.0, None));
        assert_eq!((r.disks[1].rate_bps, r.disks[1].eta_secs), (0.0, Some(0)));
        assert_eq!(r.disks[0].committed, 50);
    }

    #[test]
    fn round_completion_and_reset_for_the_next_round() {
        let mut r = record(S::SYNCING, true);
        r.set_disk(0, 100, 0);
        r.set_disk(1, 100, 0);
        assert!(!r.round_verified(None));
        r.disk_verified(0).unwrap();
        assert!(!r.round_verified(None));
        assert!(r.round_verified(Some(&[0])));
        assert!(!r.round_verified(Some(&[0, 2])));
        r.disk_verified(1).unwrap();
        assert!(r.round_verified(None));
        assert!(!r.round_verified(Some(&[])));
        assert_eq!(r.disks[1].committed, 100);
        r.transition(
            S::PROCESSING,
            crate::job::change::ChangeCause::Committed,
            t0(),
        )
        .unwrap();
        r.round_done(t0()).unwrap();
        r.admit_sender(t0()).unwrap();
        assert_eq!(r.status, S::PREPARING);
        assert!(!r.round_verified(None));
        assert_eq!((r.disks[0].committed, r.disks[0].verified), (0, false));
        let err = r.disk_verified(7).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "verifying disk 7, which the job does not know"
        );
    }
}
