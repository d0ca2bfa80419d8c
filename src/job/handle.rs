//! The one job of an appliance, shared between the data path, the control
//! API and the status page.
//!
//! Every change is saved to the job store before it is visible: a status
//! that a client has seen survives a crash. Listeners (the webhook) are told
//! of status changes after the save, outside the lock, and must not block.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::job::change::{ChangeCause, StateChange};
use crate::job::errors::ErrorCode;
use crate::job::events::{Event, EventLog};
use crate::job::record::{JobRecord, JobSettings};
use crate::job::state::Timestamp;
use crate::job::status::{allowed, refused_operation, JobStatus};
use crate::job::step::Step;
use crate::job::store::JobStore;
use crate::job::time::Clock;

type Listener = Box<dyn Fn(&StateChange) + Send + Sync>;

/// The kinds of the job's events.
pub const STATUS_CHANGED: &str = "job.status_changed";
pub const STEP_CHANGED: &str = "job.step_changed";
pub const CHECKED: &str = "job.checked";
pub const STALLED: &str = "job.stalled";
pub const STALL_ENDED: &str = "job.stall_ended";
type EventListener = Box<dyn Fn(&Event) + Send + Sync>;

pub struct JobHandle {
    record: Mutex<Inner>,
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
    /// Bumped on every change (status or progress), for waiters.
    version: watch::Sender<u64>,
    listeners: Mutex<Vec<Listener>>,
    /// The job's events (status changes, steps, the check), numbered.
    events: std::sync::RwLock<Arc<EventLog>>,
    event_listeners: Mutex<Vec<EventListener>>,
    /// Seconds without data after which a Syncing job is stalled.
    stall_after_secs: AtomicU64,
    /// Whether the last look found the job stalled (its event was sent).
    stall_told: std::sync::atomic::AtomicBool,
}

struct Inner {
    record: JobRecord,
    /// When progress was last saved; progress alone is saved at most every
    /// [`JobHandle::PROGRESS_SAVE_INTERVAL`] (the ledger holds the exact
    /// committed chunks; this is for display after a restart).
    progress_saved: SystemTime,
}

impl JobHandle {
    pub const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_secs(5);
    /// A Syncing job without data for this long is stalled, unless the
    /// configuration says otherwise.
    pub(crate) const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30);

    /// Load the job from the store, or create a new Ready one with
    /// `settings`. A loaded job keeps its own settings and status: a job that
    /// was Syncing when the appliance stopped is Syncing again, awaiting the
    /// sender's resume.
    pub fn open(
        store: Arc<dyn JobStore>,
        clock: Arc<dyn Clock>,
        settings: JobSettings,
    ) -> Result<Arc<JobHandle>> {
        let now = clock.now();
        let record = match store.load().context("loading the job record")? {
            Some(mut record) => {
                // Rates were measured by the previous process; none flows now.
                record.disks.iter_mut().for_each(|d| d.pause());
                if record.incremental != settings.incremental {
                    tracing::info!(
                        job = %record.id,
                        incremental = settings.incremental,
                        "job mode changed by the configuration"
                    );
                    record.incremental = settings.incremental;
                }
                record
            }
            None => {
                let record = JobRecord::new(uuid::Uuid::new_v4().to_string(), settings, now);
                store.save(&record).context("saving the new job record")?;
                tracing::info!(job = %record.id, validity_days = record.validity_days.as_days(), "created the job");
                record
            }
        };
        let (version, _) = watch::channel(0);
        let handle = Arc::new(JobHandle {
            record: Mutex::new(Inner {
                record,
                progress_saved: now,
            }),
            store,
            clock,
            version,
            listeners: Mutex::new(Vec::new()),
            events: std::sync::RwLock::new(Arc::new(EventLog::in_memory())),
            event_listeners: Mutex::new(Vec::new()),
            stall_after_secs: AtomicU64::new(Self::DEFAULT_STALL_AFTER.as_secs()),
            stall_told: std::sync::atomic::AtomicBool::new(false),
        });
        handle.tick().context("checking the job's validity")?;
        Ok(handle)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a record that was either
        // saved whole or not changed (changes are made on a copy).
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell `f` of every status change from now on. `f` runs on the thread
    /// that made the change and must return at once.
    pub fn on_change(&self, f: impl Fn(&StateChange) + Send + Sync + 'static) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    /// Keep the job's events in this log from now on (the appliance's is
    /// on disk, in the state directory).
    pub fn keep_events(&self, log: EventLog) {
        *self.events.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(log);
    }

    /// The job's event log.
    pub fn events(&self) -> Arc<EventLog> {
        Arc::clone(&self.events.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Tell `f` of every event (with its number) from now on, in order.
    /// `f` runs on the thread that made the event and must return at once.
    pub fn on_event(&self, f: impl Fn(&Event) + Send + Sync + 'static) {
        self.event_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    /// Log an event and tell the listeners. The listeners' lock is held
    /// across the append, so that they see events in their numbers' order.
    fn emit(&self, kind: &str, body: &impl serde::Serialize) {
        let listeners = self
            .event_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match self.events().append(kind, body) {
            Ok(event) => {
                for l in listeners.iter() {
                    l(&event);
                }
            }
            Err(e) => tracing::error!(kind, "keeping a job event: {e:#}"),
        }
    }

    /// A receiver that sees a new value on every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The job as it is now (after expiring it if its time has come), its
    /// rates measured up to now.
    pub fn snapshot(&self) -> JobRecord {
        if let Err(err) = self.tick() {
            tracing::warn!("checking the job's validity: {err:#}");
        }
        let mut record = self.lock().record.clone();
        record.refresh_rates(self.clock.now());
        record
    }

    /// A Syncing job without data for this long is stalled.
    pub(crate) fn stall_after(&self) -> Duration {
        Duration::from_secs(self.stall_after_secs.load(Ordering::Relaxed))
    }

    pub(crate) fn set_stall_after(&self, after: Duration) {
        self.stall_after_secs
            .store(after.as_secs().max(1), Ordering::Relaxed);
    }

    pub fn status(&self) -> JobStatus {
        self.lock().record.status
    }

    /// Apply `f` to a copy of the record, save it, then make it current and
    /// tell listeners of the status change it made, if any.
    fn update<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut JobRecord, SystemTime) -> Result<T>,
        changes: impl Fn(&T) -> Vec<StateChange>,
    ) -> Result<T> {
        let now = self.clock.now();
        let (out, events) = {
            let mut inner = self.lock();
            let mut next = inner.record.clone();
            let out = f(&mut next, now)?;
            let events = changes(&out);
            self.store
                .save(&next)
                .with_context(|| format!("saving the job record ({what})"))?;
            inner.record = next;
            inner.progress_saved = now;
            // Logged while the record is held: the events' numbers follow
            // the order in which the changes were saved.
            for e in &events {
                self.emit(STATUS_CHANGED, e);
            }
            (out, events)
        };
        self.version.send_modify(|v| *v += 1);
        if !events.is_empty() {
            let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                tracing::info!(job = %e.job_id, from = %e.from, to = %e.to, cause = e.cause.as_str(), "job status changed");
                for l in listeners.iter() {
                    l(e);
                }
            }
        }
        Ok(out)
    }

    /// Expire the job if its validity is over. Called by readers and by a
    /// periodic tick of the appliance.
    pub fn tick(&self) -> Result<Option<StateChange>> {
        let now = self.clock.now();
        {
            let inner = self.lock();
            let r = &inner.record;
            if !r.is_past_validity(now) || !allowed(r.status, JobStatus::Expired) {
                return Ok(None);
            }
        }
        self.update(
            "expiring",
            |r, now| Ok(r.expire_if_due(now)),
            |c| c.iter().cloned().collect(),
        )
    }

    pub fn start(&self) -> Result<StateChange> {
        self.tick()?;
        self.update("start", |r, now| r.start(now), |c| vec![c.clone()])
    }

    pub fn stop(&self) -> Result<StateChange> {
        self.update("stop", |r, now| r.stop(now), |c| vec![c.clone()])
    }

    pub fn delete(&self) -> Result<StateChange> {
        self.update("delete", |r, now| r.delete(now), |c| vec![c.clone()])
    }

    /// Deleting → a fresh Ready job (see [`JobRecord::renew`]).
    pub fn renew(&self) -> Result<StateChange> {
        let id = uuid::Uuid::new_v4().to_string();
        self.update("renew", |r, now| r.renew(id, now), |c| vec![c.clone()])
    }

    /// The senders' bandwidth limit (bytes per second), if any.
    pub(crate) fn bandwidth_limit(&self) -> Option<u64> {
        self.lock().record.bandwidth_limit_bytes_per_sec
    }

    /// Set or lift (None) the senders' bandwidth limit; sessions push it to
    /// their senders at once (they watch the job's changes).
    pub fn set_bandwidth_limit(&self, limit: Option<u64>) -> Result<()> {
        self.update(
            "setting the bandwidth limit",
            |r, _| {
                r.bandwidth_limit_bytes_per_sec = limit;
                Ok(())
            },
            |_| Vec::new(),
        )
    }

    /// Forget a disk's progress in the job record.
    pub(crate) fn forget_disk(&self, index: u32) -> Result<()> {
        self.update("reset a disk", |r, _| r.forget_disk(index), |_| Vec::new())
    }

    /// A sender authenticated: refuse it by the job's status (with the
    /// status's code), or let it in, moving Ready and Waiting to Preparing.
    pub fn admit_sender(&self) -> Result<()> {
        // Expire first, saved on its own, so that the refusal below is
        // JOB_EXPIRED and the expiry is announced even though the
        // admission fails.
        self.tick()?;
        self.update(
            "admitting a sender",
            |r, now| r.admit_sender(now),
            |c| c.iter().cloned().collect(),
        )
        .map(|_| ())
    }

    /// The sender announced its disks and data flows: Preparing → Syncing.
    /// Each disk's size and already committed bytes (from the ledger, when a
    /// round resumes) are set. A job already Syncing (a resume) stays so.
    pub fn syncing(&self, disks: &[(u32, u64, u64)]) -> Result<()> {
        self.update(
            "syncing",
            |r, now| {
                // Stopped (or worse) since this sender was admitted.
                if let Some(code) = r.status.sender_refusal() {
                    return Err(crate::job::errors::coded(
                        code,
                        format!("the job is {}", r.status),
                    ));
                }
                let change = match r.status {
                    JobStatus::SYNCING => None,
                    _ => Some(r.transition(JobStatus::SYNCING, ChangeCause::Syncing, now)?),
                };
                for &(index, size, committed) in disks {
                    r.disk_opened(index, size, committed, now);
                }
                Ok(change)
            },
            |c| c.iter().cloned().collect(),
        )
        .map(|_| ())
    }

    /// Set each known disk's committed bytes from the ledger (at start-up:
    /// the record's progress is saved only every few seconds, the ledger's
    /// chunks at every commit).
    pub(crate) fn restore_progress(&self, committed: &[(u32, u64)]) -> Result<()> {
        self.update(
            "restoring progress",
            |r, _| {
                for &(index, bytes) in committed {
                    if let Some(d) = r.disks.iter_mut().find(|d| d.index == index) {
                        if !d.verified {
                            d.committed = bytes.min(d.size);
                        }
                    }
                }
                Ok(())
            },
            |_| Vec::new(),
        )
    }

    /// Record committed bytes of a disk. Cheap: saved at most every few seconds.
    pub fn progress(&self, index: u32, committed: u64) -> Result<()> {
        let now = self.clock.now();
        let save = {
            let mut inner = self.lock();
            inner.record.record_progress(index, committed, now)?;
            let due = now
                .duration_since(inner.progress_saved)
                .map_or(true, |d| d >= Self::PROGRESS_SAVE_INTERVAL);
            if due {
                inner.progress_saved = now;
                Some(inner.record.clone())
            } else {
                None
            }
        };
        if let Some(record) = save {
            self.store
                .save(&record)
                .context("saving the job record (progress)")?;
        }
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// The sender of disk `index` pinged: alive, reading (kept in memory;
    /// the next progress saves it).
    pub fn sender_alive(&self, index: u32) {
        let now = self.clock.now();
        self.lock().record.sender_alive(index, now);
        self.version.send_modify(|v| *v += 1);
    }

    /// The appliance verified disk `index` (its digest matched the sender's).
    pub fn disk_verified(&self, index: u32) -> Result<()> {
        self.update(
            "disk verified",
            |r, _| r.disk_verified(index),
            |_| Vec::new(),
        )
    }

    /// A sender ended its session cleanly: if every expected disk is
    /// verified, the round is committed: Syncing → Processing. The caller
    /// then runs the Processing stage, which ends the round with
    /// [`JobHandle::round_done`] or [`JobHandle::fail`]. Returns the status
    /// reached, if it changed.
    pub fn end_of_session(&self, expected: Option<&[u32]>) -> Result<Option<JobStatus>> {
        let done = {
            let inner = self.lock();
            inner.record.status == JobStatus::SYNCING && inner.record.round_verified(expected)
        };
        if !done {
            return Ok(None);
        }
        Ok(Some(self.round_committed()?.to))
    }

    /// File mode: every tree of the laid-out targets is committed; the
    /// round ends as a block-mode one whose disks are verified.
    pub(crate) fn trees_committed(&self) -> Result<Option<JobStatus>> {
        if self.status() != JobStatus::SYNCING {
            return Ok(None);
        }
        Ok(Some(self.round_committed()?.to))
    }

    /// Every disk is committed: Syncing → Processing.
    pub fn round_committed(&self) -> Result<StateChange> {
        self.update(
            "round committed",
            |r, now| r.transition(JobStatus::PROCESSING, ChangeCause::Committed, now),
            |c| vec![c.clone()],
        )
    }

    /// Processing (or Cleaning) done: Finished, or Waiting if incremental.
    pub fn round_done(&self) -> Result<StateChange> {
        self.update(
            "round done",
            |r, now| r.round_done(now),
            |c| vec![c.clone()],
        )
    }

    /// The round's pipeline started `step`; shown in the job until the
    /// job leaves Processing and Cleaning.
    pub fn processing_step(&self, step: Step) -> Result<()> {
        let changed = self.update(
            "processing step",
            |r, now| {
                let changed = matches!(r.status, JobStatus::PROCESSING | JobStatus::CLEANING)
                    && r.step != Some(step);
                if changed {
                    r.step = Some(step);
                }
                Ok(changed.then(|| (r.id.clone(), now)))
            },
            |_| Vec::new(),
        )?;
        if let Some((job_id, at)) = changed {
            #[derive(serde::Serialize)]
            struct StepChanged {
                job_id: String,
                step: Step,
                at: Timestamp,
            }
            self.emit(
                STEP_CHANGED,
                &StepChanged {
                    job_id,
                    step,
                    at: Timestamp(at),
                },
            );
        }
        Ok(())
    }

    /// Tell the events (and the webhook) when the job becomes stalled (a
    /// Syncing job without data for the stall time) and when data flows
    /// again. Called every few seconds by the appliance; a stall is
    /// otherwise only seen by a reader of GET /v1/job.
    pub fn check_stall(&self) {
        #[derive(serde::Serialize)]
        struct Stall {
            job_id: String,
            at: Timestamp,
            #[serde(skip_serializing_if = "Option::is_none")]
            no_data_secs: Option<u64>,
        }
        let now = self.clock.now();
        let (stalled, job_id, no_data) = {
            let inner = self.lock();
            let r = &inner.record;
            (
                r.stalled(now, self.stall_after()),
                r.id.clone(),
                r.no_data_for(now).map(|d| d.as_secs()),
            )
        };
        if self.stall_told.swap(stalled, Ordering::SeqCst) == stalled {
            return;
        }
        let (kind, no_data_secs) = if stalled {
            tracing::warn!(no_data_secs = ?no_data, "the transfer is stalled: no data from the sender");
            (STALLED, no_data)
        } else {
            (STALL_ENDED, None)
        };
        self.emit(
            kind,
            &Stall {
                job_id,
                at: Timestamp(now),
                no_data_secs,
            },
        );
    }

    /// Keep the report of the round's check of the received disks.
    pub fn checked(&self, report: serde_json::Value) -> Result<()> {
        #[derive(serde::Serialize)]
        struct Checked {
            job_id: String,
            at: Timestamp,
            check: serde_json::Value,
        }
        let event = self.update(
            "check report",
            |r, now| {
                r.check = Some(report.clone());
                Ok(Checked {
                    job_id: r.id.clone(),
                    at: Timestamp(now),
                    check: report,
                })
            },
            |_| Vec::new(),
        )?;
        self.emit(CHECKED, &event);
        Ok(())
    }

    /// Processing → Cleaning (the handoff); a job already Cleaning (a run
    /// started again after a restart) stays so.
    pub fn cleaning(&self) -> Result<Option<StateChange>> {
        self.update(
            "cleaning",
            |r, now| {
                if r.status == JobStatus::CLEANING {
                    return Ok(None);
                }
                if r.status != JobStatus::PROCESSING {
                    return Err(refused_operation("moved to Cleaning", r.status));
                }
                r.transition(JobStatus::CLEANING, ChangeCause::Cleaning, now)
                    .map(Some)
            },
            |c| c.iter().cloned().collect(),
        )
    }

    /// The control plane takes the disks of a round whose boot test failed.
    pub(crate) fn handoff_anyway(&self) -> Result<StateChange> {
        self.update(
            "handoff anyway",
            |r, now| r.handoff_anyway(now),
            |c| vec![c.clone()],
        )
    }

    /// The handoff is done: the round ends Finished (or Waiting, held for
    /// the control plane's snapshot) with the manifest's digest.
    pub(crate) fn handed_off(&self, manifest_digest: &str) -> Result<StateChange> {
        self.update(
            "handoff",
            |r, now| r.handed_off(manifest_digest, now),
            |c| vec![c.clone()],
        )
    }

    /// The job failed with `code`: InError, the error kept for the API.
    pub fn fail(&self, code: ErrorCode, detail: impl Into<String>) -> Result<StateChange> {
        let detail = detail.into();
        self.update(
            "failing",
            |r, now| r.fail(code, detail, now),
            |c| vec![c.clone()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::errors::find_coded;
    use crate::job::state::{ManualClock, MemoryStore, Validity};
    use std::sync::atomic::Ordering;

    fn setup(incremental: bool) -> (Arc<MemoryStore>, Arc<ManualClock>, Arc<JobHandle>) {
        let store = Arc::new(MemoryStore::default());
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        ));
        let settings = JobSettings {
            incremental,
            validity: Validity::days(7).unwrap(),
        };
        let job = JobHandle::open(store.clone(), clock.clone(), settings).unwrap();
        (store, clock, job)
    }

    #[test]
    fn syncing_survives_a_restart() {
        let (store, clock, job) = setup(false);
        job.admit_sender().unwrap();
        job.syncing(&[(0, 1000, 0), (1, 500, 0)]).unwrap();
        clock.advance(Duration::from_secs(6));
        job.progress(0, 400).unwrap();
        let id = job.snapshot().id;
        drop(job);
        // The appliance comes back: same job, Syncing, progress as saved.
        let job = JobHandle::open(store, clock, JobSettings::default()).unwrap();
        let r = job.snapshot();
        assert_eq!((r.id, r.status), (id, JobStatus::SYNCING));
        assert_eq!(r.disks[0].committed, 400);
        assert_eq!(r.validity_days.as_days(), 7, "the stored validity wins");
        // The sender resumes without a status change.
        job.admit_sender().unwrap();
        job.syncing(&[(0, 1000, 400), (1, 500, 0)]).unwrap();
        assert_eq!(job.status(), JobStatus::SYNCING);
    }

    #[test]
    fn listeners_see_every_change_in_order_with_seq() {
        let (_store, clock, job) = setup(true);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        job.on_change(move |c| {
            s.lock()
                .unwrap()
                .push((c.seq, c.from, c.to, c.cause.as_str()))
        });
        job.admit_sender().unwrap();
        job.syncing(&[(0, 10, 0)]).unwrap();
        job.progress(0, 10).unwrap();
        job.round_committed().unwrap();
        job.round_done().unwrap();
        job.stop().unwrap();
        clock.advance(Duration::from_secs(7 * 86_400));
        assert_eq!(job.snapshot().status, JobStatus::Expired);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (1, JobStatus::Ready, JobStatus::PREPARING, "sender"),
                (2, JobStatus::PREPARING, JobStatus::SYNCING, "syncing"),
                (3, JobStatus::SYNCING, JobStatus::PROCESSING, "committed"),
                (4, JobStatus::PROCESSING, JobStatus::Waiting, "processed"),
                (5, JobStatus::Waiting, JobStatus::Stopped, "stop"),
                (6, JobStatus::Stopped, JobStatus::Expired, "expired"),
            ]
        );
    }

    #[test]
    fn expiry_seen_by_a_sender_is_announced_before_the_refusal() {
        let (_store, clock, job) = setup(false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        job.on_change(move |c| s.lock().unwrap().push((c.seq, c.to)));
        clock.advance(Duration::from_secs(7 * 86_400));
        let err = job.admit_sender().unwrap_err();
        assert_eq!(find_coded(&err).unwrap().code, ErrorCode::JobExpired);
        assert_eq!(job.snapshot().status, JobStatus::Expired);
        assert_eq!(*seen.lock().unwrap(), vec![(1, JobStatus::Expired)]);
    }

    #[test]
    fn a_round_ends_when_every_disk_is_verified() {
        for (incremental, end) in [(false, JobStatus::Finished), (true, JobStatus::Waiting)] {
            let (store, _clock, job) = setup(incremental);
            job.admit_sender().unwrap();
            job.syncing(&[(0, 10, 0), (1, 10, 0)]).unwrap();
            job.disk_verified(0).unwrap();
            assert_eq!(job.end_of_session(None).unwrap(), None);
            assert_eq!(job.status(), JobStatus::SYNCING);
            job.disk_verified(1).unwrap();
            assert_eq!(job.end_of_session(Some(&[0, 1, 2])).unwrap(), None);
            assert_eq!(
                job.end_of_session(None).unwrap(),
                Some(JobStatus::PROCESSING)
            );
            assert_eq!(store.load().unwrap().unwrap().status, JobStatus::PROCESSING);
            assert_eq!(job.end_of_session(None).unwrap(), None, "once per round");
            assert_eq!(job.round_done().unwrap().to, end);
            assert_eq!(store.load().unwrap().unwrap().status, end);
        }
    }

    #[test]
    fn the_processing_step_shows_only_while_processing() {
        let (store, _clock, job) = setup(false);
        job.processing_step(Step::Grow).unwrap();
        assert_eq!(job.snapshot().step, None, "not processing yet");
        job.admit_sender().unwrap();
        job.syncing(&[(0, 10, 0)]).unwrap();
        job.disk_verified(0).unwrap();
        job.end_of_session(None).unwrap();
        job.processing_step(Step::Repair).unwrap();
        assert_eq!(job.snapshot().step, Some(Step::Repair));
        assert_eq!(store.load().unwrap().unwrap().step, Some(Step::Repair));
        job.fail(ErrorCode::GrubFailed, "no grub").unwrap();
        assert_eq!(job.snapshot().step, None, "cleared with the status change");
    }

    #[test]
    fn a_stopped_job_refuses_further_disks_of_an_admitted_sender() {
        let (_store, _clock, job) = setup(false);
        job.admit_sender().unwrap();
        job.syncing(&[(0, 10, 0)]).unwrap();
        job.stop().unwrap();
        let err = job.syncing(&[(1, 10, 0)]).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "JOB_STOPPED: The migration task is stopped (the job is Stopped)"
        );
        assert_eq!(job.snapshot().disks.len(), 1);
    }

    #[test]
    fn a_failed_save_changes_nothing() {
        let (store, _clock, job) = setup(false);
        store.fail_saves.store(true, Ordering::SeqCst);
        let err = job.start().unwrap_err();
        assert_eq!(find_coded(&err).unwrap().code, ErrorCode::LedgerFailed);
        assert_eq!(
            format!("{err:#}"),
            "saving the job record (start): LEDGER_FAILED: The job's ledger could not be read or written (saving the job record (test))"
        );
        assert_eq!(job.status(), JobStatus::Ready);
        store.fail_saves.store(false, Ordering::SeqCst);
        assert_eq!(store.load().unwrap().unwrap().status, JobStatus::Ready);
        job.start().unwrap();
        assert_eq!(store.load().unwrap().unwrap().status, JobStatus::PREPARING);
    }
}
