//! A change of the job's status: what caused it, as told to listeners, and
//! the operations on the record that make one (the operator's start, stop
//! and delete, a sender's arrival, the round's end, an error, expiry).

use std::time::SystemTime;

use anyhow::Result;
use serde::{Serialize, Serializer};

use crate::job::errors::{coded, ErrorCode};
use crate::job::record::{HandoffMark, JobError, JobRecord, JobSettings};
use crate::job::status::{allowed, check_transition, refused_operation, JobStatus};
use crate::job::time::Timestamp;

/// What caused a status change. Listeners (the webhook, the log) see it as
/// the string of [`ChangeCause::as_str`], which the control plane reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeCause {
    /// The operator started the job (Preparing).
    Start,
    /// The operator stopped it.
    Stop,
    /// The operator deleted it.
    Delete,
    /// A sender authenticated and started a round (Preparing).
    Sender,
    /// The sender announced its disks; data flows (Syncing).
    Syncing,
    /// Every disk or tree of the round is committed (Processing).
    Committed,
    /// The round's pipeline reached its handoff (Cleaning).
    Cleaning,
    /// The round's processing ended without a handoff (Finished, Waiting).
    Processed,
    /// The round's disks are handed off (Finished, Waiting).
    Handoff,
    /// The control plane took the disks of a round whose boot test failed
    /// (InError to Cleaning).
    HandoffAnyway,
    /// The job failed (InError).
    Error,
    /// Its validity ended (Expired).
    Expired,
    /// A deleted job's disks are forgotten and it starts over (Ready).
    Renewed,
}

impl ChangeCause {
    /// Every cause, for tables and tests.
    pub const ALL: [ChangeCause; 13] = [
        ChangeCause::Start,
        ChangeCause::Stop,
        ChangeCause::Delete,
        ChangeCause::Sender,
        ChangeCause::Syncing,
        ChangeCause::Committed,
        ChangeCause::Cleaning,
        ChangeCause::Processed,
        ChangeCause::Handoff,
        ChangeCause::HandoffAnyway,
        ChangeCause::Error,
        ChangeCause::Expired,
        ChangeCause::Renewed,
    ];

    /// The cause as webhook events and logs have always written it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeCause::Start => "start",
            ChangeCause::Stop => "stop",
            ChangeCause::Delete => "delete",
            ChangeCause::Sender => "sender",
            ChangeCause::Syncing => "syncing",
            ChangeCause::Committed => "committed",
            ChangeCause::Cleaning => "cleaning",
            ChangeCause::Processed => "processed",
            ChangeCause::Handoff => "handoff",
            ChangeCause::HandoffAnyway => "handoff despite the failed boot test",
            ChangeCause::Error => "error",
            ChangeCause::Expired => "expired",
            ChangeCause::Renewed => "deleted: the job starts over",
        }
    }
}

impl std::fmt::Display for ChangeCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ChangeCause {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One status change, as told to listeners (the webhook, the status page).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    pub seq: u64,
    pub job_id: String,
    pub from: JobStatus,
    pub to: JobStatus,
    pub at: Timestamp,
    /// What caused it, written as its string.
    pub cause: ChangeCause,
    pub error: Option<JobError>,
    /// Set on the change that ends a round with its handoff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffMark>,
}

impl JobRecord {
    /// Move to `to` if the table allows it.
    pub fn transition(
        &mut self,
        to: JobStatus,
        cause: ChangeCause,
        now: SystemTime,
    ) -> Result<StateChange> {
        let from = self.status;
        check_transition(from, to)?;
        self.status = to;
        self.updated_at = Timestamp(now);
        self.seq += 1;
        if !matches!(to, JobStatus::PROCESSING | JobStatus::CLEANING) {
            self.step = None;
        }
        // Another round starts: the control plane has taken its snapshot.
        if to == JobStatus::PREPARING {
            self.held = false;
        }
        // A new round of an incremental job starts with no disk verified.
        if from == JobStatus::Waiting && to == JobStatus::PREPARING {
            for d in &mut self.disks {
                d.verified = false;
                d.committed = 0;
                d.pause();
            }
        }
        match to {
            JobStatus::PREPARING if self.started_at.is_none() => {
                self.started_at = Some(Timestamp(now));
            }
            JobStatus::Finished | JobStatus::Waiting => {
                self.rounds_completed += 1;
                if to == JobStatus::Finished {
                    self.finished_at = Some(Timestamp(now));
                }
            }
            _ => {}
        }
        // Rates and ETAs describe data flowing; shown after a stop or an
        // error they would claim a transfer that is not happening.
        if from == JobStatus::SYNCING {
            for d in &mut self.disks {
                d.pause();
            }
        }
        // A restart after the cause was fixed clears the error it was about.
        if from == JobStatus::InError && to == JobStatus::PREPARING {
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
        let change = self.transition(JobStatus::Ready, ChangeCause::Renewed, now)?;
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

    /// Expire the job if its validity is over and its status is one that
    /// expires (Ready, Stopped, InError, Waiting); a Running job is left
    /// alone, as in the FAQ.
    pub(crate) fn expire_if_due(&mut self, now: SystemTime) -> Option<StateChange> {
        if !self.is_past_validity(now) || !allowed(self.status, JobStatus::Expired) {
            return None;
        }
        self.transition(JobStatus::Expired, ChangeCause::Expired, now)
            .ok()
    }

    /// Operator's start: Ready, Stopped and InError go to Preparing.
    pub fn start(&mut self, now: SystemTime) -> Result<StateChange> {
        self.expire_if_due(now);
        match self.status {
            JobStatus::Ready | JobStatus::Stopped | JobStatus::InError | JobStatus::Waiting => {
                self.transition(JobStatus::PREPARING, ChangeCause::Start, now)
            }
            other => Err(refused_operation("started", other)),
        }
    }

    /// Operator's stop: only while Preparing, Syncing or Waiting.
    pub fn stop(&mut self, now: SystemTime) -> Result<StateChange> {
        self.transition(JobStatus::Stopped, ChangeCause::Stop, now)
            .map_err(|_| refused_operation("stopped", self.status))
    }

    /// Operator's delete: never while Running.
    pub fn delete(&mut self, now: SystemTime) -> Result<StateChange> {
        self.transition(JobStatus::Deleting, ChangeCause::Delete, now)
            .map_err(|_| refused_operation("deleted", self.status))
    }

    /// A sender authenticated: refuse it with the status's code, or move the
    /// job to Preparing (Ready, Waiting) and let it in. A job that was
    /// Preparing or Syncing (a sender resuming, also after a restart of the
    /// appliance) lets it in unchanged.
    pub fn admit_sender(&mut self, now: SystemTime) -> Result<Option<StateChange>> {
        self.expire_if_due(now);
        if self.held && self.status == JobStatus::Waiting {
            let round = self.handoff.as_ref().map_or(0, |h| h.round);
            return Err(coded(
                ErrorCode::JobHandedOff,
                format!("round {round} is handed off for its snapshot"),
            ));
        }
        if let Some(code) = self.status.sender_refusal() {
            let detail = match (&self.last_error, self.status) {
                (Some(e), JobStatus::InError) => format!("last error {}: {}", e.code, e.message),
                (_, JobStatus::Expired) => format!("expired at {}", self.expires_at),
                (_, s) => format!("the job is {s}"),
            };
            return Err(coded(code, detail));
        }
        match self.status {
            JobStatus::Ready | JobStatus::Waiting => self
                .transition(JobStatus::PREPARING, ChangeCause::Sender, now)
                .map(Some),
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
        self.transition(JobStatus::InError, ChangeCause::Error, now)
            .inspect_err(|_| self.last_error = previous)
    }

    /// The control plane hands off the disks of a round whose boot test
    /// failed: InError → Cleaning, only for that error, which is kept for
    /// the record until the round ends.
    pub(crate) fn handoff_anyway(&mut self, now: SystemTime) -> Result<StateChange> {
        let boot_failed = self.status == JobStatus::InError
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
        self.transition(JobStatus::CLEANING, ChangeCause::HandoffAnyway, now)
    }

    /// The end of a round's processing: Finished, or Waiting if incremental.
    pub fn round_done(&mut self, now: SystemTime) -> Result<StateChange> {
        let to = if self.incremental {
            JobStatus::Waiting
        } else {
            JobStatus::Finished
        };
        self.transition(to, ChangeCause::Processed, now)
    }

    /// The round's disks are handed off: Finished, or Waiting (held until
    /// the control plane starts the next round) if incremental.
    pub(crate) fn handed_off(
        &mut self,
        manifest_digest: &str,
        now: SystemTime,
    ) -> Result<StateChange> {
        let mark = HandoffMark {
            round: self.rounds_completed + 1,
            manifest_digest: manifest_digest.to_owned(),
            at: Timestamp(now),
        };
        let to = if self.incremental {
            JobStatus::Waiting
        } else {
            JobStatus::Finished
        };
        let mut change = self.transition(to, ChangeCause::Handoff, now)?;
        self.held = to == JobStatus::Waiting;
        self.handoff = Some(mark.clone());
        change.handoff = Some(mark);
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::errors::find_coded;
    use crate::job::record::testing::{record, t0};
    use crate::job::record::Validity;
    use crate::job::status::TRANSITIONS;
    use std::time::Duration;
    use JobStatus as S;

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
        let allowed_pairs: &[(JobStatus, JobStatus)] = &[
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
                let got = r.transition(to, ChangeCause::Start, t0());
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
        let cases: &[(
            JobStatus,
            Option<JobStatus>,
            Option<JobStatus>,
            Option<JobStatus>,
        )] = &[
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
        let cases: &[(JobStatus, Result<JobStatus, &str>)] = &[
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
            r.transition(S::SYNCING, ChangeCause::Syncing, t0())
                .unwrap();
            r.transition(S::PROCESSING, ChangeCause::Committed, t0())
                .unwrap();
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
        let cases: &[(u32, JobStatus, u64, JobStatus)] = &[
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

    /// The causes are written as the strings the webhook and the log have
    /// always carried: a renamed variant must not change them.
    #[test]
    fn causes_serialize_as_their_strings() {
        let written: Vec<String> = ChangeCause::ALL
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            written,
            [
                "start",
                "stop",
                "delete",
                "sender",
                "syncing",
                "committed",
                "cleaning",
                "processed",
                "handoff",
                "handoff despite the failed boot test",
                "error",
                "expired",
                "deleted: the job starts over",
            ]
        );
        let mut r = record(S::Ready, false);
        let change = r.start(t0()).unwrap();
        assert_eq!(
            serde_json::to_value(&change).unwrap(),
            serde_json::json!({
                "seq": 1,
                "job_id": "job-1",
                "from": {"state": "Ready", "business_status": null},
                "to": {"state": "Running", "business_status": "Preparing"},
                "at": "2026-09-21T14:13:20.000Z",
                "cause": "start",
                "error": null,
            })
        );
    }
}
