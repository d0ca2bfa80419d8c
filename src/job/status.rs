//! The job's status: the task states of the migration service, the business
//! status of a Running job, and the transitions allowed between them.
//!
//! The states are the FAQ's, so the control plane can map them one to one:
//! Ready, Running (with its business status Preparing, Syncing, Processing or
//! Cleaning), Stopped, InError, Finished, Waiting (incremental jobs between
//! rounds), Expired and Deleting. Every change goes through [`TRANSITIONS`];
//! anything not listed there is refused with `JOB_TRANSITION_REFUSED`.

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::job::errors::{coded, ErrorCode};

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
pub enum JobStatus {
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

impl JobStatus {
    pub(crate) const PREPARING: JobStatus = JobStatus::Running(Preparing);
    pub const SYNCING: JobStatus = JobStatus::Running(Syncing);
    pub(crate) const PROCESSING: JobStatus = JobStatus::Running(Processing);
    pub(crate) const CLEANING: JobStatus = JobStatus::Running(Cleaning);

    /// Every status, for tables and tests.
    pub const ALL: [JobStatus; 11] = [
        JobStatus::Ready,
        JobStatus::PREPARING,
        JobStatus::SYNCING,
        JobStatus::PROCESSING,
        JobStatus::CLEANING,
        JobStatus::Stopped,
        JobStatus::InError,
        JobStatus::Finished,
        JobStatus::Waiting,
        JobStatus::Expired,
        JobStatus::Deleting,
    ];

    pub fn state(self) -> JobState {
        match self {
            JobStatus::Ready => JobState::Ready,
            JobStatus::Running(_) => JobState::Running,
            JobStatus::Stopped => JobState::Stopped,
            JobStatus::InError => JobState::InError,
            JobStatus::Finished => JobState::Finished,
            JobStatus::Waiting => JobState::Waiting,
            JobStatus::Expired => JobState::Expired,
            JobStatus::Deleting => JobState::Deleting,
        }
    }

    pub fn business(self) -> Option<BusinessStatus> {
        match self {
            JobStatus::Running(b) => Some(b),
            _ => None,
        }
    }

    /// A small stable number per status, for the Prometheus gauge.
    pub(crate) fn metric_value(self) -> i64 {
        match self {
            JobStatus::Ready => 0,
            JobStatus::Running(Preparing) => 1,
            JobStatus::Running(Syncing) => 2,
            JobStatus::Running(Processing) => 3,
            JobStatus::Running(Cleaning) => 4,
            JobStatus::Stopped => 5,
            JobStatus::InError => 6,
            JobStatus::Finished => 7,
            JobStatus::Waiting => 8,
            JobStatus::Expired => 9,
            JobStatus::Deleting => 10,
        }
    }

    /// The status's number on the wire: the metric's value, which is stable.
    pub(crate) fn wire_code(self) -> u8 {
        self.metric_value() as u8
    }

    pub(crate) fn from_wire_code(code: u8) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.wire_code() == code)
    }

    /// The code a sender is refused with in this status, if it is refused.
    pub(crate) fn sender_refusal(self) -> Option<ErrorCode> {
        match self {
            JobStatus::Ready | JobStatus::Waiting | JobStatus::PREPARING | JobStatus::SYNCING => {
                None
            }
            JobStatus::PROCESSING | JobStatus::CLEANING => Some(ErrorCode::JobBusy),
            JobStatus::Stopped => Some(ErrorCode::JobStopped),
            JobStatus::InError => Some(ErrorCode::JobInError),
            JobStatus::Finished => Some(ErrorCode::JobFinished),
            JobStatus::Expired => Some(ErrorCode::JobExpired),
            JobStatus::Deleting => Some(ErrorCode::JobDeleting),
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobStatus::Running(b) => write!(f, "Running/{b:?}"),
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

impl From<JobStatus> for StatusRepr {
    fn from(s: JobStatus) -> Self {
        StatusRepr {
            state: s.state(),
            business_status: s.business(),
        }
    }
}

impl TryFrom<StatusRepr> for JobStatus {
    type Error = String;
    fn try_from(r: StatusRepr) -> std::result::Result<Self, String> {
        Ok(match (r.state, r.business_status) {
            (JobState::Running, Some(b)) => JobStatus::Running(b),
            (JobState::Running, None) => return Err("state Running needs a business_status".into()),
            (s, Some(b)) => return Err(format!("state {s:?} has no business status, got {b:?}")),
            (JobState::Ready, None) => JobStatus::Ready,
            (JobState::Stopped, None) => JobStatus::Stopped,
            (JobState::InError, None) => JobStatus::InError,
            (JobState::Finished, None) => JobStatus::Finished,
            (JobState::Waiting, None) => JobStatus::Waiting,
            (JobState::Expired, None) => JobStatus::Expired,
            (JobState::Deleting, None) => JobStatus::Deleting,
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
pub const TRANSITIONS: &[(JobStatus, JobStatus)] = &[
    // Started by the operator or by a sender authenticating.
    (JobStatus::Ready, JobStatus::PREPARING),
    (JobStatus::Ready, JobStatus::Expired),
    (JobStatus::Ready, JobStatus::Deleting),
    // The sender announced its disks; data flows.
    (JobStatus::PREPARING, JobStatus::SYNCING),
    (JobStatus::PREPARING, JobStatus::Stopped),
    (JobStatus::PREPARING, JobStatus::InError),
    // Every disk committed.
    (JobStatus::SYNCING, JobStatus::PROCESSING),
    (JobStatus::SYNCING, JobStatus::Stopped),
    (JobStatus::SYNCING, JobStatus::InError),
    // Layout, repair and verification done; Cleaning is the handoff.
    (JobStatus::PROCESSING, JobStatus::CLEANING),
    (JobStatus::PROCESSING, JobStatus::Finished),
    (JobStatus::PROCESSING, JobStatus::Waiting),
    (JobStatus::PROCESSING, JobStatus::InError),
    (JobStatus::CLEANING, JobStatus::Finished),
    (JobStatus::CLEANING, JobStatus::Waiting),
    (JobStatus::CLEANING, JobStatus::InError),
    // Restart after a stop or after the cause of an error was fixed.
    (JobStatus::Stopped, JobStatus::PREPARING),
    (JobStatus::Stopped, JobStatus::Expired),
    (JobStatus::Stopped, JobStatus::Deleting),
    (JobStatus::InError, JobStatus::PREPARING),
    (JobStatus::InError, JobStatus::Expired),
    (JobStatus::InError, JobStatus::Deleting),
    // The control plane takes the disks of a round whose boot test failed.
    (JobStatus::InError, JobStatus::CLEANING),
    // Incremental: the next round, or an end to it.
    (JobStatus::Waiting, JobStatus::PREPARING),
    (JobStatus::Waiting, JobStatus::Stopped),
    (JobStatus::Waiting, JobStatus::Expired),
    (JobStatus::Waiting, JobStatus::Deleting),
    (JobStatus::Finished, JobStatus::Deleting),
    (JobStatus::Expired, JobStatus::Deleting),
    // Deleted: its disks forgotten, the job starts over as a fresh one.
    (JobStatus::Deleting, JobStatus::Ready),
];

/// Whether `from → to` is in the table.
pub fn allowed(from: JobStatus, to: JobStatus) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// Check a transition; the error names both ends and carries
/// `JOB_TRANSITION_REFUSED` with the per-state advice as its hint.
pub fn check_transition(from: JobStatus, to: JobStatus) -> Result<()> {
    if allowed(from, to) {
        Ok(())
    } else {
        Err(coded(
            ErrorCode::JobTransitionRefused,
            format!("the job is {from} and cannot go to {to}"),
        ))
    }
}

pub(crate) fn refused_operation(what: &str, status: JobStatus) -> anyhow::Error {
    coded(
        ErrorCode::JobTransitionRefused,
        format!("a job that is {status} cannot be {what}"),
    )
}
