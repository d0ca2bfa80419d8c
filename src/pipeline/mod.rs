//! The round's pipeline: what the appliance does by itself once every disk
//! of a round is committed, before the round ends (Finished, or Waiting for
//! an incremental job's next round).
//!
//! | step | file | what it does |
//! |---|---|---|
//! | grow | [`grow`] | each disk whose target is larger than its source: GPT backup header to the end, last partition and its file system grown |
//! | mount | [`mount`] | the received system's own file systems (`/`, `/boot`, `/boot/efi`, `/usr`, `/var`); data file systems stay unmounted and exactly as they arrived |
//! | repair | [`repair`] | the recipe of its distribution (fstab, GRUB, initramfs with virtio, DHCP, cloud-init...); report in `<state-dir>/processing/repair.json` |
//! | resync | [`resync`] | the ledger learns the new hash of every chunk that grow and repair changed, and only those: chunks outside what they may write keep the source's hash |
//! | verify | [`verify`] | every file system checked read-only by its own tool; every disk re-read and compared chunk by chunk with the ledger |
//! | handoff | [`handoff`] | targets flushed and dropped from the page cache, `<state-dir>/handoff.json` written, the control plane told |
//!
//! A job that only replicates disks (`build = false`) runs only the handoff:
//! its disks were re-read and compared with the ledger when each was
//! committed. A failure puts the job InError with the innermost code of the
//! error (`GRUB_FAILED`, `TOOL_MISSING`, `VERIFY_FAILED`...) and nothing is
//! handed off. The pipeline runs on its own thread, whether or not a sender
//! follows it; an appliance restarted in the middle runs it again (every
//! step is idempotent).
//!
//! Narrow inputs: the driver takes the [`Settings`], the ledger and the job
//! handle, never the whole appliance.

pub mod grow;
pub mod handoff;
pub mod mount;
pub mod repair;
pub mod resync;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::watch;

use crate::job::errors::{coded, describe, ErrorCode};
use crate::job::handle::JobHandle;
use crate::job::ledger::{names_key, DiskRecord, Ledger};
use crate::job::state::Status;
pub use crate::job::step::Step;

/// What the pipeline needs of the appliance's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Grow, mount, repair, resync and verify before the handoff; false for
    /// a job that only replicates disks.
    pub build: bool,
    /// Where `processing/` (reports, the staging mount point) and
    /// `handoff.json` live.
    pub state_dir: PathBuf,
}

impl Settings {
    pub fn work_dir(&self) -> PathBuf {
        self.state_dir.join("processing")
    }
}

/// One received disk, as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct Target {
    pub index: u32,
    pub record: DiskRecord,
    /// The kernel's node of the target (`/dev/vdc`, a loop device, an image
    /// file): links are resolved, because the migrated system's tools in
    /// the chroot (grub-install, grub-probe) relate a partition to its disk
    /// by the kernel's names only.
    pub path: PathBuf,
    /// The target as configured (`/dev/disk/by-id/virtio-...`), which the
    /// control plane knows its disks by.
    pub configured: PathBuf,
    /// The names the source knew the disk by (`/dev/sda`, by-id links).
    pub names: Vec<String>,
}

impl Target {
    /// Every disk of the job, from the ledger.
    pub fn all(ledger: &Ledger) -> Result<Vec<Target>> {
        ledger
            .disks()
            .context("reading the job's disks")?
            .into_iter()
            .map(|(index, record)| {
                let configured = PathBuf::from(&record.target);
                let path =
                    std::fs::canonicalize(&configured).unwrap_or_else(|_| configured.clone());
                Ok(Target {
                    index,
                    path,
                    configured,
                    names: source_names(ledger, index)?,
                    record,
                })
            })
            .collect()
    }
}

/// Where a run is: the steps started so far, in order, and once it is over,
/// the status the job reached or the error that put it InError.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phase {
    pub steps: Vec<Step>,
    pub done: Option<Result<Status, Failure>>,
}

/// Why a run failed: the catalogue code and this occurrence's detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub detail: String,
}

/// Runs the pipeline on its own thread, at most one run at a time; later
/// callers watch the run in progress.
pub struct Runner {
    settings: Settings,
    ledger: Arc<Ledger>,
    job: Arc<JobHandle>,
    current: Mutex<Option<watch::Receiver<Phase>>>,
}

impl Runner {
    pub fn new(settings: Settings, ledger: Arc<Ledger>, job: Arc<JobHandle>) -> Runner {
        Runner {
            settings,
            ledger,
            job,
            current: Mutex::new(None),
        }
    }

    /// The run in progress or the last one, if any ran in this process.
    pub fn current(&self) -> Option<watch::Receiver<Phase>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Start the pipeline (or join the run in progress) and watch it.
    pub fn start(self: &Arc<Self>) -> watch::Receiver<Phase> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = current.as_ref() {
            if rx.borrow().done.is_none() {
                return rx.clone();
            }
        }
        let (tx, rx) = watch::channel(Phase::default());
        *current = Some(rx.clone());
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("ferry-pipeline".into())
            .spawn(move || {
                let result = run(&me.settings, &me.ledger, &me.job, &|step| {
                    tracing::info!(%step, "pipeline step");
                    if let Err(e) = me.job.processing_step(step) {
                        tracing::warn!("recording the pipeline step: {e:#}");
                    }
                    tx.send_modify(|p| p.steps.push(step));
                });
                let done = match result {
                    Ok(status) => {
                        tracing::info!(%status, "the round is handed off");
                        Ok(status)
                    }
                    Err(err) => {
                        let (code, detail) = describe(&err);
                        tracing::error!(%code, error = %format!("{err:#}"), "the round's pipeline failed");
                        if let Err(e) = me.job.fail(code, detail.clone()) {
                            tracing::error!("recording the pipeline's error: {e:#}");
                        }
                        Err(Failure { code, detail })
                    }
                };
                tx.send_modify(|p| p.done = Some(done));
            });
        if let Err(e) = spawned {
            tracing::error!("starting the pipeline thread: {e}");
            let (_, rx) = watch::channel(Phase {
                steps: Vec::new(),
                done: Some(Err(Failure {
                    code: ErrorCode::Internal,
                    detail: format!("starting the pipeline thread: {e}"),
                })),
            });
            *current = Some(rx.clone());
            return rx;
        }
        rx
    }
}

/// What a run did, kept in `<state-dir>/processing/report.json` and, in
/// part, in the handoff manifest.
#[derive(Debug, Default, Serialize)]
pub struct RoundReport {
    pub grown: Vec<crate::layout::GrowReport>,
    pub source_names: Vec<Vec<String>>,
    /// The file systems checked, with their tool.
    pub checked: Vec<String>,
    /// Chunks whose ledger hash was updated to what grow and repair wrote.
    pub resynced_chunks: u64,
    /// Seconds each step took.
    pub seconds: BTreeMap<String, f64>,
    /// The repair's report (also in `processing/repair.json`).
    pub repair: Option<serde_json::Value>,
    /// File systems that arrived with a journal to replay (a source copied
    /// while mounted), and what was done.
    pub journals: Vec<mount::Replayed>,
}

/// The pipeline itself; returns the status the round ended in.
pub fn run(
    settings: &Settings,
    ledger: &Ledger,
    job: &JobHandle,
    on_step: &dyn Fn(Step),
) -> Result<Status> {
    let dir = settings.work_dir();
    // The round's reports and the mount points of the migrated system.
    crate::disk::private_dir(&dir)?;
    let targets = Target::all(ledger)?;
    if targets.is_empty() {
        return Err(coded(ErrorCode::SystemNotFound, "the job has no disks"));
    }
    // First of all, what a run killed midway left: its chroot's processes,
    // its mounts and its loop devices, or grow would meet busy partitions
    // and fail with them still in place.
    let paths: Vec<std::path::PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    crate::layout::tree::clean_leftovers(&dir.join(STAGING), &paths)
        .context("cleaning up after an interrupted run")?;
    let mut report = RoundReport {
        source_names: targets.iter().map(|t| t.names.clone()).collect(),
        ..Default::default()
    };
    let timed = |report: &mut RoundReport, step: Step, started: Instant| {
        report
            .seconds
            .insert(step.to_string(), started.elapsed().as_secs_f64());
    };
    let mut timer = |step: Step| {
        on_step(step);
        (step, Instant::now())
    };

    let digests = if settings.build {
        // From here on the disks may be written: whatever happens, the
        // ledger must learn what changed, or a restarted job would verify
        // against hashes the disks no longer have.
        let built = build(&targets, &dir, &mut report, &mut timer, &timed);
        let (step, t) = timer(Step::Resync);
        let scope = match &built {
            Ok(scope) => scope.clone(),
            // A failed run may have written anywhere it had reached: the
            // whole disks, so the next round re-sends whatever differs.
            Err(_) => resync::Scope::whole(&targets),
        };
        let resynced = resync::run(ledger, &targets, &scope);
        timed(&mut report, step, t);
        match (built, resynced) {
            (Err(e), Err(r)) => {
                // The run's own error is what the operator must act on.
                tracing::error!("updating the ledger after a failed run: {r:#}");
                return Err(e);
            }
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
            (Ok(_), Ok(n)) => report.resynced_chunks = n,
        }
        let (step, t) = timer(Step::Verify);
        let verified = verify::run(ledger, &targets)?;
        timed(&mut report, step, t);
        report.checked = verified.checked;
        verified.digests
    } else {
        verify::digests_from_ledger(ledger, &targets)?
    };

    let (step, t) = timer(Step::Handoff);
    job.cleaning().context("moving the job to Cleaning")?;
    let path = dir.join("report.json");
    write_json(&path, &report)?;
    let (_, digest) = handoff::run(
        settings,
        job,
        &targets,
        &digests,
        &report,
        report.repair.as_ref(),
    )?;
    timed(&mut report, step, t);
    write_json(&path, &report)?;
    let end = job.handed_off(&digest).context("ending the round")?;
    Ok(end.to)
}

/// Where the migrated system is mounted, under the work directory.
const STAGING: &str = "root";

/// Grow, mount and repair; returns what they may have written.
fn build(
    targets: &[Target],
    dir: &std::path::Path,
    report: &mut RoundReport,
    timer: &mut dyn FnMut(Step) -> (Step, Instant),
    timed: &dyn Fn(&mut RoundReport, Step, Instant),
) -> Result<resync::Scope> {
    let (step, t) = timer(Step::Grow);
    // Before anything grows or mounts them: a file system copied while it
    // was mounted is brought to the state its next mount would make.
    report.journals = mount::replay_journals(targets, &dir.join("journal"))?;
    report.grown = grow::run(targets)?;
    timed(report, step, t);

    let (step, t) = timer(Step::Mount);
    let mounted = mount::system(targets, &dir.join(STAGING))?;
    timed(report, step, t);

    let (step, t) = timer(Step::Repair);
    let mut scope = resync::Scope::of(targets, &mounted.full, &mounted.mounted, &report.grown)?;
    for r in &report.journals {
        if let Some(pos) = targets.iter().position(|t| t.index == r.disk) {
            scope.add(pos, r.range.0, r.range.1);
        }
    }
    report.repair = Some(repair::run(mounted, targets, &dir.join("repair.json"))?);
    timed(report, step, t);
    Ok(scope)
}

fn write_json(path: &std::path::Path, value: &impl Serialize) -> Result<()> {
    let json =
        serde_json::to_vec_pretty(value).with_context(|| format!("encoding {}", path.display()))?;
    crate::disk::write_atomic(path, &json)
}

/// The names the source knew disk `index` by: what the sender announced,
/// else the usual kernel names of the index-th disk (`/dev/sda`,
/// `/dev/vda`, `/dev/hda`, `/dev/xvda` for disk 0).
fn source_names(ledger: &Ledger, index: u32) -> Result<Vec<String>> {
    if let Some(raw) = ledger.get_meta(&names_key(index))? {
        let names: Vec<String> =
            serde_json::from_slice(&raw).context("reading the source's disk names")?;
        if !names.is_empty() {
            return Ok(names);
        }
    }
    Ok(conventional_names(index))
}

fn conventional_names(index: u32) -> Vec<String> {
    let mut letters = String::new();
    let mut n = index as usize;
    loop {
        letters.insert(0, (b'a' + (n % 26) as u8) as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    ["sd", "vd", "hd", "xvd"]
        .iter()
        .map(|p| format!("/dev/{p}{letters}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventional_names_follow_the_kernels_lettering() {
        assert_eq!(
            conventional_names(0),
            ["/dev/sda", "/dev/vda", "/dev/hda", "/dev/xvda"]
        );
        assert_eq!(conventional_names(1)[0], "/dev/sdb");
        assert_eq!(conventional_names(25)[0], "/dev/sdz");
        assert_eq!(conventional_names(26)[0], "/dev/sdaa");
        assert_eq!(conventional_names(27)[1], "/dev/vdab");
    }
}
