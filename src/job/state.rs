//! The job's lifecycle: the task states of the migration service, the
//! transitions allowed between them, validity, the last error and per-disk
//! progress.
//!
//! The states are the FAQ's, so the control plane can map them one to one:
//! Ready, Running (with its business status Preparing, Syncing, Processing or
//! Cleaning), Stopped, InError, Finished, Waiting (incremental jobs between
//! rounds), Expired and Deleting. Every change goes through [`TRANSITIONS`];
//! anything not listed there is refused with `JOB_TRANSITION_REFUSED`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::job::errors::{coded, Code, ErrorCode};

/// The task status of the migration service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Ready,
    Running,
    Stopped,
    InError,
    Finished,
    Waiting,
    Expired,
    Deleting,
}

/// What a Running job is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BusinessStatus {
    /// Started, waiting for the sender to announce its disks.
    Preparing,
    /// Receiving data from the sender.
    Syncing,
    /// Every disk is committed; the disks are being laid out and repaired.
    Processing,
    /// Handing off: unmounting and flushing.
    Cleaning,
}

/// A job's status: its state, and the business status when Running.
///
/// One type for both so that "Running without a business status" or
/// "Stopped while Syncing" cannot be represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "StatusRepr", try_from = "StatusRepr")]
pub enum Status {
    Ready,
    Running(BusinessStatus),
    Stopped,
    InError,
    Finished,
    Waiting,
    Expired,
    Deleting,
}

use BusinessStatus::*;

impl Status {
    pub const PREPARING: Status = Status::Running(Preparing);
    pub const SYNCING: Status = Status::Running(Syncing);
    pub const PROCESSING: Status = Status::Running(Processing);
    pub const CLEANING: Status = Status::Running(Cleaning);

    /// Every status, for tables and tests.
    pub const ALL: [Status; 11] = [
        Status::Ready,
        Status::PREPARING,
        Status::SYNCING,
        Status::PROCESSING,
        Status::CLEANING,
        Status::Stopped,
        Status::InError,
        Status::Finished,
        Status::Waiting,
        Status::Expired,
        Status::Deleting,
    ];

    pub fn state(self) -> JobState {
        match self {
            Status::Ready => JobState::Ready,
            Status::Running(_) => JobState::Running,
            Status::Stopped => JobState::Stopped,
            Status::InError => JobState::InError,
            Status::Finished => JobState::Finished,
            Status::Waiting => JobState::Waiting,
            Status::Expired => JobState::Expired,
            Status::Deleting => JobState::Deleting,
        }
    }

    pub fn business(self) -> Option<BusinessStatus> {
        match self {
            Status::Running(b) => Some(b),
            _ => None,
        }
    }

    /// A small stable number per status, for the Prometheus gauge.
    pub fn metric_value(self) -> i64 {
        match self {
            Status::Ready => 0,
            Status::Running(Preparing) => 1,
            Status::Running(Syncing) => 2,
            Status::Running(Processing) => 3,
            Status::Running(Cleaning) => 4,
            Status::Stopped => 5,
            Status::InError => 6,
            Status::Finished => 7,
            Status::Waiting => 8,
            Status::Expired => 9,
            Status::Deleting => 10,
        }
    }

    /// The status's number on the wire: the metric's value, which is stable.
    pub fn wire_code(self) -> u8 {
        self.metric_value() as u8
    }

    pub fn from_wire_code(code: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.wire_code() == code)
    }

    /// The code a sender is refused with in this status, if it is refused.
    pub fn sender_refusal(self) -> Option<ErrorCode> {
        match self {
            Status::Ready | Status::Waiting | Status::PREPARING | Status::SYNCING => None,
            Status::PROCESSING | Status::CLEANING => Some(ErrorCode::JobBusy),
            Status::Stopped => Some(ErrorCode::JobStopped),
            Status::InError => Some(ErrorCode::JobInError),
            Status::Finished => Some(ErrorCode::JobFinished),
            Status::Expired => Some(ErrorCode::JobExpired),
            Status::Deleting => Some(ErrorCode::JobDeleting),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Running(b) => write!(f, "Running/{b:?}"),
            other => write!(f, "{:?}", other.state()),
        }
    }
}

/// How a status is written: `{"state": "Running", "business_status": "Syncing"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatusRepr {
    state: JobState,
    #[serde(default)]
    business_status: Option<BusinessStatus>,
}

impl From<Status> for StatusRepr {
    fn from(s: Status) -> Self {
        StatusRepr {
            state: s.state(),
            business_status: s.business(),
        }
    }
}

impl TryFrom<StatusRepr> for Status {
    type Error = String;
    fn try_from(r: StatusRepr) -> std::result::Result<Self, String> {
        Ok(match (r.state, r.business_status) {
            (JobState::Running, Some(b)) => Status::Running(b),
            (JobState::Running, None) => return Err("state Running needs a business_status".into()),
            (s, Some(b)) => return Err(format!("state {s:?} has no business status, got {b:?}")),
            (JobState::Ready, None) => Status::Ready,
            (JobState::Stopped, None) => Status::Stopped,
            (JobState::InError, None) => Status::InError,
            (JobState::Finished, None) => Status::Finished,
            (JobState::Waiting, None) => Status::Waiting,
            (JobState::Expired, None) => Status::Expired,
            (JobState::Deleting, None) => Status::Deleting,
        })
    }
}

/// Every allowed transition. Whatever is not here is refused.
///
/// Following the FAQ: a Ready task can only be started (or deleted); a
/// Running task can be stopped while Preparing or Syncing but never deleted;
/// Stopped and InError tasks can be restarted or deleted; Finished and
/// Expired tasks can only be deleted; only incremental tasks reach Waiting,
/// from which the next round starts. Ready, Stopped, InError and Waiting
/// tasks expire; a Running one is left alone until it leaves Running.
pub const TRANSITIONS: &[(Status, Status)] = &[
    // Started by the operator or by a sender authenticating.
    (Status::Ready, Status::PREPARING),
    (Status::Ready, Status::Expired),
    (Status::Ready, Status::Deleting),
    // The sender announced its disks; data flows.
    (Status::PREPARING, Status::SYNCING),
    (Status::PREPARING, Status::Stopped),
    (Status::PREPARING, Status::InError),
    // Every disk committed.
    (Status::SYNCING, Status::PROCESSING),
    (Status::SYNCING, Status::Stopped),
    (Status::SYNCING, Status::InError),
    // Layout, repair and verification done; Cleaning is the handoff.
    (Status::PROCESSING, Status::CLEANING),
    (Status::PROCESSING, Status::Finished),
    (Status::PROCESSING, Status::Waiting),
    (Status::PROCESSING, Status::InError),
    (Status::CLEANING, Status::Finished),
    (Status::CLEANING, Status::Waiting),
    (Status::CLEANING, Status::InError),
    // Restart after a stop or after the cause of an error was fixed.
    (Status::Stopped, Status::PREPARING),
    (Status::Stopped, Status::Expired),
    (Status::Stopped, Status::Deleting),
    (Status::InError, Status::PREPARING),
    (Status::InError, Status::Expired),
    (Status::InError, Status::Deleting),
    // The control plane takes the disks of a round whose boot test failed.
    (Status::InError, Status::CLEANING),
    // Incremental: the next round, or an end to it.
    (Status::Waiting, Status::PREPARING),
    (Status::Waiting, Status::Stopped),
    (Status::Waiting, Status::Expired),
    (Status::Waiting, Status::Deleting),
    (Status::Finished, Status::Deleting),
    (Status::Expired, Status::Deleting),
    // Deleted: its disks forgotten, the job starts over as a fresh one.
    (Status::Deleting, Status::Ready),
];

/// Whether `from → to` is in the table.
pub fn allowed(from: Status, to: Status) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// Check a transition; the error names both ends and carries
/// `JOB_TRANSITION_REFUSED` with the per-state advice as its hint.
pub fn check_transition(from: Status, to: Status) -> Result<()> {
    if allowed(from, to) {
        Ok(())
    } else {
        Err(coded(
            ErrorCode::JobTransitionRefused,
            format!("the job is {from} and cannot go to {to}"),
        ))
    }
}

/// How long a job is valid: 7 to 90 days, as in the FAQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Validity(u32);

impl Validity {
    pub const MIN_DAYS: u32 = 7;
    pub const MAX_DAYS: u32 = 90;
    pub const DEFAULT_DAYS: u32 = 30;

    pub fn days(days: u32) -> Result<Validity> {
        if (Self::MIN_DAYS..=Self::MAX_DAYS).contains(&days) {
            Ok(Validity(days))
        } else {
            Err(coded(ErrorCode::BadValidity, format!("got {days} days")))
        }
    }

    pub fn as_days(self) -> u32 {
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

/// Where the time comes from: the system, or a hand-moved clock in tests
/// (expiry is tested by moving the clock, never by waiting).
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A point in time, written as RFC 3339 with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
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

/// Progress of one disk in the current round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskProgress {
    pub index: u32,
    /// Size of the source disk in bytes.
    pub size: u64,
    /// Bytes of the disk that are committed (durable and in the ledger).
    pub committed: u64,
    /// Commit rate over the last [`DiskProgress::RATE_WINDOW`], in bytes per
    /// second: 0 once no data has arrived for that long.
    #[serde(default)]
    pub rate_bps: f64,
    /// Seconds until the disk is committed at the current rate.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// The appliance re-read the disk and its digest matched the sender's in
    /// this round.
    #[serde(default)]
    pub verified: bool,
    /// When the disk last moved: a sender opened it, data arrived and its
    /// committed bytes grew, or its sender said it is still reading it (a
    /// ping while it skips unchanged or zero chunks, which send nothing).
    #[serde(default)]
    pub last_progress_at: Option<Timestamp>,
    /// (when, committed bytes from then on), oldest first, spanning the rate
    /// window and one sample before it.
    #[serde(skip)]
    samples: VecDeque<(SystemTime, u64)>,
}

impl DiskProgress {
    pub fn new(index: u32, size: u64, committed: u64) -> Self {
        DiskProgress {
            index,
            size,
            committed: committed.min(size),
            rate_bps: 0.0,
            eta_secs: None,
            verified: false,
            last_progress_at: None,
            samples: VecDeque::new(),
        }
    }

    /// The rate is what was committed in this window, divided by it: it
    /// follows the link within seconds and falls to 0 when data stops,
    /// where an average since the start would go on claiming a transfer.
    pub const RATE_WINDOW: Duration = Duration::from_secs(10);
    /// A new sample replaces the last one while the one before that is
    /// closer than this: at most two are kept per this span of the window.
    const SAMPLE_EVERY: Duration = Duration::from_millis(250);
    /// Less time than this since the first sample gives no rate yet: a
    /// rate over a few milliseconds is noise.
    const MIN_SPAN: Duration = Duration::from_millis(500);

    /// Record that `committed` bytes are committed at `now`, updating the
    /// rate and the ETA.
    pub fn record(&mut self, committed: u64, now: SystemTime) {
        let committed = committed.min(self.size);
        if committed > self.committed {
            self.last_progress_at = Some(Timestamp(now));
        }
        self.committed = committed;
        // The last sample is always now; it replaces the one before when
        // that is closer than SAMPLE_EVERY to the one before it.
        let n = self.samples.len();
        let close = n >= 2
            && now
                .duration_since(self.samples[n - 2].0)
                .unwrap_or_default()
                < Self::SAMPLE_EVERY;
        if close {
            self.samples[n - 1] = (now, committed);
        } else {
            self.samples.push_back((now, committed));
        }
        // Keep one sample at or before the window's start: the baseline.
        let start = now.checked_sub(Self::RATE_WINDOW).unwrap_or(now);
        while self.samples.len() > 1 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        self.refresh(now);
    }

    /// Bring the rate and the ETA to `now`: what was committed in the
    /// window before it.
    pub fn refresh(&mut self, now: SystemTime) {
        let remaining = self.size.saturating_sub(self.committed);
        self.rate_bps = self.rate_at(now);
        self.eta_secs = if remaining == 0 {
            Some(0)
        } else if self.rate_bps > 0.0 {
            Some((remaining as f64 / self.rate_bps).ceil() as u64)
        } else {
            None
        };
    }

    fn rate_at(&self, now: SystemTime) -> f64 {
        let Some(&(first, _)) = self.samples.front() else {
            return 0.0;
        };
        if self.is_committed() {
            return 0.0;
        }
        let window_start = now.checked_sub(Self::RATE_WINDOW).unwrap_or(first);
        // Committed bytes at the window's start, interpolated between the
        // samples around it; when the samples begin inside the window, the
        // span is shorter.
        let before = self.samples.iter().rposition(|(t, _)| *t <= window_start);
        let (from, base) = match before {
            None => self.samples[0],
            Some(k) => match self.samples.get(k + 1) {
                None => (window_start, self.samples[k].1),
                Some(&(t1, c1)) => {
                    let (t0, c0) = self.samples[k];
                    let part = window_start
                        .duration_since(t0)
                        .unwrap_or_default()
                        .as_secs_f64()
                        / t1.duration_since(t0)
                            .unwrap_or_default()
                            .as_secs_f64()
                            .max(1e-9);
                    let base = c0 as f64 + (c1.saturating_sub(c0)) as f64 * part;
                    (window_start, base as u64)
                }
            },
        };
        let span = now.duration_since(from).unwrap_or_default();
        if span < Self::MIN_SPAN {
            return 0.0;
        }
        self.committed.saturating_sub(base) as f64 / span.as_secs_f64()
    }

    /// Forget the rate: no data flows until the next samples.
    pub fn pause(&mut self) {
        self.rate_bps = 0.0;
        self.eta_secs = self.is_committed().then_some(0);
        self.samples.clear();
    }

    pub fn is_committed(&self) -> bool {
        self.committed >= self.size
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
    pub status: Status,
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

/// One status change, as told to listeners (the webhook, the status page).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    pub seq: u64,
    pub job_id: String,
    pub from: Status,
    pub to: Status,
    pub at: Timestamp,
    /// What caused it: "start", "stop", "delete", "sender", "syncing",
    /// "committed", "processed", "error", "expired".
    pub cause: &'static str,
    pub error: Option<JobError>,
    /// Set on the change that ends a round with its handoff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffMark>,
}

impl JobRecord {
    pub fn new(id: String, settings: JobSettings, now: SystemTime) -> Self {
        JobRecord {
            id,
            status: Status::Ready,
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

    /// Move to `to` if the table allows it.
    pub fn transition(
        &mut self,
        to: Status,
        cause: &'static str,
        now: SystemTime,
    ) -> Result<StateChange> {
        let from = self.status;
        check_transition(from, to)?;
        self.status = to;
        self.updated_at = Timestamp(now);
        self.seq += 1;
        if !matches!(to, Status::PROCESSING | Status::CLEANING) {
            self.step = None;
        }
        // Another round starts: the control plane has taken its snapshot.
        if to == Status::PREPARING {
            self.held = false;
        }
        // A new round of an incremental job starts with no disk verified.
        if from == Status::Waiting && to == Status::PREPARING {
            for d in &mut self.disks {
                d.verified = false;
                d.committed = 0;
                d.pause();
            }
        }
        match to {
            Status::PREPARING if self.started_at.is_none() => {
                self.started_at = Some(Timestamp(now));
            }
            Status::Finished | Status::Waiting => {
                self.rounds_completed += 1;
                if to == Status::Finished {
                    self.finished_at = Some(Timestamp(now));
                }
            }
            _ => {}
        }
        // Rates and ETAs describe data flowing; shown after a stop or an
        // error they would claim a transfer that is not happening.
        if from == Status::SYNCING {
            for d in &mut self.disks {
                d.pause();
            }
        }
        // A restart after the cause was fixed clears the error it was about.
        if from == Status::InError && to == Status::PREPARING {
            self.last_error = None;
        }
        Ok(StateChange {
            seq: self.seq,
            job_id: self.id.clone(),
            from,
            to,
            at: Timestamp(now),
            cause,
            error: self.last_error.clone(),
            handoff: None,
        })
    }

    /// A Deleting job whose disks are forgotten starts over: a fresh job
    /// (new id, Ready, a new validity period) that keeps the settings. The
    /// sequence of state changes goes on, so the control plane sees the
    /// change from Deleting to Ready in order.
    pub fn renew(&mut self, id: String, now: SystemTime) -> Result<StateChange> {
        let change = self.transition(Status::Ready, "deleted: the job starts over", now)?;
        let settings = JobSettings {
            incremental: self.incremental,
            validity: self.validity_days,
        };
        let (seq, bandwidth) = (self.seq, self.bandwidth_limit_bytes_per_sec);
        *self = JobRecord::new(id.clone(), settings, now);
        self.seq = seq;
        // The control plane's limit is the link's, not the job's data.
        self.bandwidth_limit_bytes_per_sec = bandwidth;
        Ok(StateChange {
            job_id: id,
            ..change
        })
    }

    /// Forget one disk's progress (its ledger entries are forgotten by the
    /// caller): only while no round runs.
    pub fn forget_disk(&mut self, index: u32) -> Result<()> {
        if self.status.state() == JobState::Running || self.status == Status::Deleting {
            return Err(refused_operation(
                &format!("reset (disk {index}): stop it first"),
                self.status,
            ));
        }
        self.disks.retain(|d| d.index != index);
        Ok(())
    }

    /// Whether the validity period is over at `now`.
    pub fn is_past_validity(&self, now: SystemTime) -> bool {
        now >= self.expires_at.0
    }

    /// Expire the job if its validity is over and its status is one that
    /// expires (Ready, Stopped, InError, Waiting); a Running job is left
    /// alone, as in the FAQ.
    pub fn expire_if_due(&mut self, now: SystemTime) -> Option<StateChange> {
        if !self.is_past_validity(now) || !allowed(self.status, Status::Expired) {
            return None;
        }
        self.transition(Status::Expired, "expired", now).ok()
    }

    /// Operator's start: Ready, Stopped and InError go to Preparing.
    pub fn start(&mut self, now: SystemTime) -> Result<StateChange> {
        self.expire_if_due(now);
        match self.status {
            Status::Ready | Status::Stopped | Status::InError | Status::Waiting => {
                self.transition(Status::PREPARING, "start", now)
            }
            other => Err(refused_operation("started", other)),
        }
    }

    /// Operator's stop: only while Preparing, Syncing or Waiting.
    pub fn stop(&mut self, now: SystemTime) -> Result<StateChange> {
        self.transition(Status::Stopped, "stop", now)
            .map_err(|_| refused_operation("stopped", self.status))
    }

    /// Operator's delete: never while Running.
    pub fn delete(&mut self, now: SystemTime) -> Result<StateChange> {
        self.transition(Status::Deleting, "delete", now)
            .map_err(|_| refused_operation("deleted", self.status))
    }

    /// A sender authenticated: refuse it with the status's code, or move the
    /// job to Preparing (Ready, Waiting) and let it in. A job that was
    /// Preparing or Syncing (a sender resuming, also after a restart of the
    /// appliance) lets it in unchanged.
    pub fn admit_sender(&mut self, now: SystemTime) -> Result<Option<StateChange>> {
        self.expire_if_due(now);
        if self.held && self.status == Status::Waiting {
            let round = self.handoff.as_ref().map_or(0, |h| h.round);
            return Err(coded(
                ErrorCode::JobHandedOff,
                format!("round {round} is handed off for its snapshot"),
            ));
        }
        if let Some(code) = self.status.sender_refusal() {
            let detail = match (&self.last_error, self.status) {
                (Some(e), Status::InError) => format!("last error {}: {}", e.code, e.message),
                (_, Status::Expired) => format!("expired at {}", self.expires_at),
                (_, s) => format!("the job is {s}"),
            };
            return Err(coded(code, detail));
        }
        match self.status {
            Status::Ready | Status::Waiting => {
                self.transition(Status::PREPARING, "sender", now).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The job failed: InError with the error kept for GET /v1/job.
    pub fn fail(
        &mut self,
        code: ErrorCode,
        detail: impl Into<String>,
        now: SystemTime,
    ) -> Result<StateChange> {
        let previous = self.last_error.replace(JobError::new(code, detail, now));
        self.transition(Status::InError, "error", now)
            .inspect_err(|_| self.last_error = previous)
    }

    /// The control plane hands off the disks of a round whose boot test
    /// failed: InError → Cleaning, only for that error, which is kept for
    /// the record until the round ends.
    pub fn handoff_anyway(&mut self, now: SystemTime) -> Result<StateChange> {
        let boot_failed = self.status == Status::InError
            && self
                .last_error
                .as_ref()
                .is_some_and(|e| e.code == ErrorCode::BootTestFailed);
        if !boot_failed {
            return Err(refused_operation(
                "handed off anyway: only a round whose boot test failed (BOOT_TEST_FAILED) can be",
                self.status,
            ));
        }
        self.transition(
            Status::CLEANING,
            "handoff despite the failed boot test",
            now,
        )
    }

    /// The end of a round's processing: Finished, or Waiting if incremental.
    pub fn round_done(&mut self, now: SystemTime) -> Result<StateChange> {
        let to = if self.incremental {
            Status::Waiting
        } else {
            Status::Finished
        };
        self.transition(to, "processed", now)
    }

    /// The round's disks are handed off: Finished, or Waiting (held until
    /// the control plane starts the next round) if incremental.
    pub fn handed_off(&mut self, manifest_digest: &str, now: SystemTime) -> Result<StateChange> {
        let mark = HandoffMark {
            round: self.rounds_completed + 1,
            manifest_digest: manifest_digest.to_owned(),
            at: Timestamp(now),
        };
        let to = if self.incremental {
            Status::Waiting
        } else {
            Status::Finished
        };
        let mut change = self.transition(to, "handoff", now)?;
        self.held = to == Status::Waiting;
        self.handoff = Some(mark.clone());
        change.handoff = Some(mark);
        Ok(change)
    }

    /// Set (or reset, at the start of a round) a disk's size and committed bytes.
    pub fn set_disk(&mut self, index: u32, size: u64, committed: u64) {
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
    pub fn disk_opened(&mut self, index: u32, size: u64, committed: u64, now: SystemTime) {
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
    pub fn refresh_rates(&mut self, now: SystemTime) {
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
    pub fn no_data_for(&self, now: SystemTime) -> Option<Duration> {
        if self.status != Status::SYNCING || self.all_committed() {
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
    pub fn record_progress(&mut self, index: u32, committed: u64, now: SystemTime) -> Result<()> {
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
    pub fn round_verified(&self, expected: Option<&[u32]>) -> bool {
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
    pub fn all_committed(&self) -> bool {
        !self.disks.is_empty() && self.disks.iter().all(DiskProgress::is_committed)
    }

    /// Sum of the disks' rates, bytes per second.
    pub fn sync_rate_bps(&self) -> f64 {
        // A fold from +0.0: the sum of no floats is -0.0, which /metrics
        // would show as "-0".
        self.disks.iter().fold(0.0, |acc, d| acc + d.rate_bps)
    }
}

pub(crate) fn refused_operation(what: &str, status: Status) -> anyhow::Error {
    coded(
        ErrorCode::JobTransitionRefused,
        format!("a job that is {status} cannot be {what}"),
    )
}

/// Where the job record lives: the ledger in the appliance, memory in tests.
pub trait JobStore: Send + Sync {
    fn load(&self) -> Result<Option<JobRecord>>;
    fn save(&self, record: &JobRecord) -> Result<()>;
}

/// A store in memory that still goes through JSON, so what a test saves is
/// exactly what a durable store would read back.
#[derive(Debug, Default)]
pub struct MemoryStore {
    bytes: Mutex<Option<Vec<u8>>>,
    /// Make the next saves fail, to test that a failed save changes nothing.
    pub fail_saves: std::sync::atomic::AtomicBool,
}

impl JobStore for MemoryStore {
    fn load(&self) -> Result<Option<JobRecord>> {
        let bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        bytes
            .as_deref()
            .map(|b| serde_json::from_slice(b).context("decoding the job record"))
            .transpose()
    }

    fn save(&self, record: &JobRecord) -> Result<()> {
        if self.fail_saves.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(coded(
                ErrorCode::LedgerFailed,
                "saving the job record (test)",
            ));
        }
        let json = serde_json::to_vec(record).context("encoding the job record")?;
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = Some(json);
        Ok(())
    }
}

/// The key of the job record in a key-value store such as the ledger's meta table.
pub const JOB_RECORD_KEY: &str = "job";

/// The appliance keeps the job record in the ledger's meta table: one
/// durable redb transaction per save, beside the committed chunks.
impl JobStore for crate::job::ledger::Ledger {
    fn load(&self) -> Result<Option<JobRecord>> {
        self.get_meta(JOB_RECORD_KEY)
            .code(ErrorCode::LedgerFailed)?
            .map(|b| serde_json::from_slice(&b).context("decoding the job record from the ledger"))
            .transpose()
    }

    fn save(&self, record: &JobRecord) -> Result<()> {
        let json = serde_json::to_vec(record).context("encoding the job record")?;
        self.put_meta(JOB_RECORD_KEY, &json)
            .code(ErrorCode::LedgerFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::errors::find_coded;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    fn record(status: Status, incremental: bool) -> JobRecord {
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

    use Status as S;

    #[test]
    fn only_a_failed_boot_test_is_handed_off_anyway() {
        let refused = "JOB_TRANSITION_REFUSED: The operation is not allowed in the job's current state (a job that is InError cannot be handed off anyway: only a round whose boot test failed (BOOT_TEST_FAILED) can be)";
        for (code, ok) in [
            (ErrorCode::BootTestFailed, true),
            (ErrorCode::GrubFailed, false),
            (ErrorCode::VerifyFailed, false),
        ] {
            let mut r = record(S::PROCESSING, false);
            r.fail(code, "x", t0()).unwrap();
            let got = r.handoff_anyway(t0());
            if ok {
                let change = got.unwrap();
                assert_eq!((change.from, change.to), (S::InError, S::CLEANING));
                assert_eq!(r.last_error.as_ref().map(|e| e.code), Some(code));
            } else {
                assert_eq!(format!("{:#}", got.unwrap_err()), refused, "{code}");
                assert_eq!(r.status, S::InError);
            }
        }
        let mut r = record(S::Finished, false);
        assert!(r.handoff_anyway(t0()).is_err());
        assert_eq!(r.status, S::Finished);
    }

    /// Every pair of statuses, with whether it is allowed: the table above,
    /// written out again by hand so that a change to it shows up here.
    #[test]
    fn every_transition_allowed_or_refused() {
        let allowed_pairs: &[(Status, Status)] = &[
            (S::Ready, S::PREPARING),
            (S::Ready, S::Expired),
            (S::Ready, S::Deleting),
            (S::PREPARING, S::SYNCING),
            (S::PREPARING, S::Stopped),
            (S::PREPARING, S::InError),
            (S::SYNCING, S::PROCESSING),
            (S::SYNCING, S::Stopped),
            (S::SYNCING, S::InError),
            (S::PROCESSING, S::CLEANING),
            (S::PROCESSING, S::Finished),
            (S::PROCESSING, S::Waiting),
            (S::PROCESSING, S::InError),
            (S::CLEANING, S::Finished),
            (S::CLEANING, S::Waiting),
            (S::CLEANING, S::InError),
            (S::Stopped, S::PREPARING),
            (S::Stopped, S::Expired),
            (S::Stopped, S::Deleting),
            (S::InError, S::PREPARING),
            (S::InError, S::Expired),
            (S::InError, S::Deleting),
            (S::InError, S::CLEANING),
            (S::Waiting, S::PREPARING),
            (S::Waiting, S::Stopped),
            (S::Waiting, S::Expired),
            (S::Waiting, S::Deleting),
            (S::Finished, S::Deleting),
            (S::Expired, S::Deleting),
            (S::Deleting, S::Ready),
        ];
        let mut refused = 0;
        for from in S::ALL {
            for to in S::ALL {
                let expect = allowed_pairs.contains(&(from, to));
                let mut r = record(from, false);
                let got = r.transition(to, "test", t0());
                match (expect, got) {
                    (true, Ok(change)) => {
                        assert_eq!((change.from, change.to, r.status), (from, to, to));
                        assert_eq!(r.seq, 1);
                    }
                    (false, Err(e)) => {
                        refused += 1;
                        assert_eq!(r.status, from, "{from} -> {to} changed the status");
                        assert_eq!(r.seq, 0);
                        assert_eq!(
                            format!("{e:#}"),
                            format!(
                                "JOB_TRANSITION_REFUSED: The operation is not allowed in the job's current state (the job is {from} and cannot go to {to})"
                            )
                        );
                    }
                    (true, Err(e)) => panic!("{from} -> {to} refused: {e:#}"),
                    (false, Ok(_)) => panic!("{from} -> {to} allowed"),
                }
            }
        }
        assert_eq!(allowed_pairs.len(), TRANSITIONS.len());
        assert_eq!(refused, 11 * 11 - allowed_pairs.len());
    }

    #[test]
    fn operator_operations_by_status() {
        // (status, start, stop, delete): the resulting status or None if refused.
        #[allow(clippy::type_complexity)]
        let cases: &[(Status, Option<Status>, Option<Status>, Option<Status>)] = &[
            (S::Ready, Some(S::PREPARING), None, Some(S::Deleting)),
            (S::PREPARING, None, Some(S::Stopped), None),
            (S::SYNCING, None, Some(S::Stopped), None),
            (S::PROCESSING, None, None, None),
            (S::CLEANING, None, None, None),
            (S::Stopped, Some(S::PREPARING), None, Some(S::Deleting)),
            (S::InError, Some(S::PREPARING), None, Some(S::Deleting)),
            (S::Finished, None, None, Some(S::Deleting)),
            (
                S::Waiting,
                Some(S::PREPARING),
                Some(S::Stopped),
                Some(S::Deleting),
            ),
            (S::Expired, None, None, Some(S::Deleting)),
            (S::Deleting, None, None, None),
        ];
        assert_eq!(cases.len(), S::ALL.len());
        type Op = fn(&mut JobRecord, SystemTime) -> Result<StateChange>;
        let ops: [(&str, Op); 3] = [
            ("started", JobRecord::start),
            ("stopped", JobRecord::stop),
            ("deleted", JobRecord::delete),
        ];
        for (status, start, stop, delete) in cases {
            for ((what, op), expect) in ops.iter().zip([start, stop, delete]) {
                let mut r = record(*status, false);
                match (op(&mut r, t0()), expect) {
                    (Ok(_), Some(to)) => assert_eq!(r.status, *to, "{status} {what}"),
                    (Err(e), None) => {
                        assert_eq!(r.status, *status);
                        assert_eq!(
                            format!("{e:#}"),
                            format!("JOB_TRANSITION_REFUSED: The operation is not allowed in the job's current state (a job that is {status} cannot be {what})")
                        );
                    }
                    (got, expect) => panic!("{status} {what}: got {got:?}, expected {expect:?}"),
                }
            }
        }
    }

    #[test]
    fn senders_are_refused_by_status_with_its_code() {
        let cases: &[(Status, Result<Status, &str>)] = &[
            (S::Ready, Ok(S::PREPARING)),
            (S::PREPARING, Ok(S::PREPARING)),
            (S::SYNCING, Ok(S::SYNCING)),
            (S::Waiting, Ok(S::PREPARING)),
            (S::PROCESSING, Err("JOB_BUSY: The migration task is processing the received data and accepts no data now (the job is Running/Processing)")),
            (S::CLEANING, Err("JOB_BUSY: The migration task is processing the received data and accepts no data now (the job is Running/Cleaning)")),
            (S::Stopped, Err("JOB_STOPPED: The migration task is stopped (the job is Stopped)")),
            (S::InError, Err("JOB_IN_ERROR: The migration task fails (last error TARGET_WRITE_FAILED: Do Rsync Disk 0 Failed)")),
            (S::Finished, Err("JOB_FINISHED: The migration task is completed (the job is Finished)")),
            (S::Expired, Err("JOB_EXPIRED: The migration task has expired (expired at 2026-10-21T14:13:20.000Z)")),
            (S::Deleting, Err("JOB_DELETING: The migration task is being deleted (the job is Deleting)")),
        ];
        assert_eq!(cases.len(), S::ALL.len());
        for (status, expect) in cases {
            let mut r = record(*status, true);
            if *status == S::InError {
                r.last_error = Some(JobError::new(ErrorCode::TargetWriteFailed, "disk 0", t0()));
            }
            match (r.admit_sender(t0()), expect) {
                (Ok(_), Ok(to)) => assert_eq!(r.status, *to),
                (Err(e), Err(text)) => {
                    assert_eq!(format!("{e:#}"), *text);
                    assert_eq!(r.status, *status);
                    let code = find_coded(&e).map(|c| c.code);
                    assert_eq!(code, status.sender_refusal());
                }
                (got, expect) => panic!("{status}: got {got:?}, expected {expect:?}"),
            }
        }
    }

    #[test]
    fn finished_refusal_hint_says_create_a_new_task() {
        assert!(ErrorCode::JobFinished
            .hint()
            .contains("create a new migration task"));
    }

    #[test]
    fn one_shot_finishes_and_incremental_waits() {
        for (incremental, end) in [(false, S::Finished), (true, S::Waiting)] {
            let mut r = record(S::Ready, incremental);
            r.admit_sender(t0()).unwrap();
            r.transition(S::SYNCING, "syncing", t0()).unwrap();
            r.transition(S::PROCESSING, "committed", t0()).unwrap();
            let change = r.round_done(t0()).unwrap();
            assert_eq!((change.from, change.to), (S::PROCESSING, end));
            assert_eq!(r.rounds_completed, 1);
            assert_eq!(r.finished_at.is_some(), !incremental);
            // The next sender: the incremental job starts round two, the
            // one-shot job refuses with the advice to create a new task.
            let next = r.admit_sender(t0());
            if incremental {
                assert_eq!(r.status, S::PREPARING);
                assert!(next.is_ok());
            } else {
                let err = next.unwrap_err();
                assert_eq!(find_coded(&err).unwrap().code, ErrorCode::JobFinished);
            }
        }
    }

    #[test]
    fn expiry_by_status_and_time() {
        let day = Duration::from_secs(86_400);
        // (validity days, status, days elapsed, expected status after a check)
        let cases: &[(u32, Status, u64, Status)] = &[
            (30, S::Ready, 29, S::Ready),
            (30, S::Ready, 30, S::Expired),
            (7, S::Ready, 7, S::Expired),
            (7, S::Stopped, 6, S::Stopped),
            (7, S::Stopped, 8, S::Expired),
            (90, S::InError, 89, S::InError),
            (90, S::InError, 90, S::Expired),
            (30, S::Waiting, 31, S::Expired),
            // Running jobs are left alone; so are Finished ones.
            (30, S::SYNCING, 45, S::SYNCING),
            (30, S::PREPARING, 45, S::PREPARING),
            (30, S::PROCESSING, 45, S::PROCESSING),
            (30, S::Finished, 45, S::Finished),
            (30, S::Expired, 45, S::Expired),
            (30, S::Deleting, 45, S::Deleting),
        ];
        for (days, status, elapsed, expect) in cases {
            let mut r = JobRecord::new(
                "j".into(),
                JobSettings {
                    incremental: false,
                    validity: Validity::days(*days).unwrap(),
                },
                t0(),
            );
            r.status = *status;
            let now = t0() + day * (*elapsed as u32);
            let change = r.expire_if_due(now);
            assert_eq!(r.status, *expect, "{days}d {status} after {elapsed}d");
            assert_eq!(change.is_some(), status != expect);
        }
    }

    #[test]
    fn syncing_job_past_validity_expires_once_stopped() {
        let mut r = record(S::SYNCING, false);
        let late = t0() + Duration::from_secs(31 * 86_400);
        let stop = r.stop(late).unwrap();
        assert_eq!(stop.to, S::Stopped);
        let err = r.admit_sender(late).unwrap_err();
        assert_eq!(find_coded(&err).unwrap().code, ErrorCode::JobExpired);
        assert_eq!(r.status, S::Expired);
        let err = r.start(late).unwrap_err();
        assert_eq!(
            find_coded(&err).unwrap().code,
            ErrorCode::JobTransitionRefused
        );
    }

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
        r.transition(S::PREPARING, "sender", t0()).unwrap();
        r.transition(S::SYNCING, "syncing", t0()).unwrap();
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
        assert!(serde_json::from_value::<Status>(bad).is_err());
        let bad = serde_json::json!({"state": "Stopped", "business_status": "Syncing"});
        assert!(serde_json::from_value::<Status>(bad).is_err());
    }

    #[test]
    fn restart_after_error_clears_it() {
        let mut r = record(S::SYNCING, false);
        r.fail(ErrorCode::TargetFull, "", t0()).unwrap();
        assert_eq!(r.last_error.as_ref().unwrap().code, ErrorCode::TargetFull);
        r.start(t0()).unwrap();
        assert_eq!(r.status, S::PREPARING);
        assert!(r.last_error.is_none());
    }

    #[test]
    fn failing_from_a_status_without_error_transition_keeps_the_old_error() {
        let mut r = record(S::Finished, false);
        assert!(r.fail(ErrorCode::Internal, "late", t0()).is_err());
        assert_eq!(r.status, S::Finished);
        assert!(r.last_error.is_none());
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
            r.disks[0].samples.len() <= 82,
            "{}",
            r.disks[0].samples.len()
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
        r.transition(S::PROCESSING, "committed", t0()).unwrap();
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

    #[test]
    fn ledger_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let r = record(S::SYNCING, true);
        {
            let ledger = crate::job::ledger::Ledger::open(&path).unwrap();
            assert_eq!(JobStore::load(&ledger).unwrap(), None);
            JobStore::save(&ledger, &r).unwrap();
        }
        let ledger = crate::job::ledger::Ledger::open(&path).unwrap();
        assert_eq!(JobStore::load(&ledger).unwrap(), Some(r));
    }

    #[test]
    fn memory_store_round_trip() {
        let store = MemoryStore::default();
        assert_eq!(store.load().unwrap(), None);
        let r = record(S::SYNCING, true);
        store.save(&r).unwrap();
        assert_eq!(store.load().unwrap(), Some(r));
    }
}
