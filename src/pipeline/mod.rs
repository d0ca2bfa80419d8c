//! The round's pipeline: what the appliance does by itself once every disk
//! of a round is committed, before the round ends (Finished, or Waiting for
//! an incremental job's next round).
//!
//! | step | file | what it does |
//! |---|---|---|
//! | check | [`check`] | `ferry check` on the received disks, read-only: a blocker stops the round with its code before anything is changed; report in `<state-dir>/processing/check.json` and `/v1/job` |
//! | grow | [`grow`] | each disk whose target is larger than its source: GPT backup header to the end, last partition and its file system grown |
//! | mount | [`mount`] | the received system's own file systems (`/`, `/boot`, `/boot/efi`, `/usr`, `/var`); data file systems stay unmounted and exactly as they arrived |
//! | repair | [`repair`] | the recipe of its distribution (fstab, GRUB, initramfs with virtio, DHCP, cloud-init...); report in `<state-dir>/processing/repair.json` |
//! | resync | [`resync`] | the ledger learns the new hash of every chunk that grow and repair changed, and only those: chunks outside what they may write keep the source's hash |
//! | verify | [`verify`] | every file system checked read-only by its own tool; every disk re-read and compared chunk by chunk with the ledger |
//! | boot | [`boot`] | the disks booted under QEMU as the cloud's machine, through copy-on-write overlays (nothing written to them): the console read for each stage of the boot, the capture for the guest's DHCP request; verdict in `processing/boot/verdict.json` and the manifest |
//! | handoff | [`handoff`] | targets flushed and dropped from the page cache, `<state-dir>/handoff.json` written, the control plane told |
//!
//! A job that only replicates disks (`build = false`) runs only the handoff:
//! and a job with `boot_test = false` skips the boot.
//! its disks were re-read and compared with the ledger when each was
//! committed. A failure puts the job InError with the innermost code of the
//! error (`GRUB_FAILED`, `TOOL_MISSING`, `VERIFY_FAILED`...) and nothing is
//! handed off. The pipeline runs on its own thread, whether or not a sender
//! follows it; an appliance restarted in the middle runs it again (every
//! step is idempotent).
//!
//! Narrow inputs: the driver takes the [`Settings`], the ledger and the job
//! handle, never the whole appliance.

pub mod boot;
pub mod check;
pub mod files;
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
    /// The boot test before the handoff (a job that builds only).
    pub boot_test: boot::Settings,
    /// Repair recipes from this directory instead of the built-in ones.
    pub recipes_dir: Option<PathBuf>,
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

    /// Where the boot test keeps its console, capture and verdict.
    pub fn boot_test_dir(&self) -> PathBuf {
        self.settings.work_dir().join(boot::DIR)
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
        self.start_with(run)
    }

    /// Hand off a round whose boot test failed, as the control plane asked
    /// (or join the run in progress).
    pub fn start_handoff_anyway(self: &Arc<Self>) -> watch::Receiver<Phase> {
        self.start_with(handoff_anyway)
    }

    fn start_with(self: &Arc<Self>, what: RunFn) -> watch::Receiver<Phase> {
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
                let result = what(&me.settings, &me.ledger, &me.job, &|step| {
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

/// A run of the pipeline (or of a part of it).
type RunFn = fn(&Settings, &Ledger, &JobHandle, &dyn Fn(Step)) -> Result<Status>;

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
    /// The boot test's verdict (also in `processing/boot/verdict.json`).
    pub boot_test: Option<boot::Verdict>,
    /// Why a job with the boot test on did not run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_test_skipped: Option<String>,
    /// File systems that arrived with a journal to replay (a source copied
    /// while mounted), and what was done.
    pub journals: Vec<mount::Replayed>,
    /// A file-mode round: the file systems laid out and written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<files::FilesReport>,
    /// How the repair reached the guest's logical volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvm: Option<crate::layout::lvm::activate::Access>,
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
    // A handoff despite a failed boot test that a restart interrupted.
    if job.status() == Status::CLEANING
        && boot::load_verdict(&dir).is_some_and(|v| v.handed_off_anyway)
    {
        return handoff_anyway(settings, ledger, job, on_step);
    }
    // A file-mode job: its targets were laid out from the sender's layout.
    if ledger
        .disks()
        .context("reading the job's disks")?
        .is_empty()
    {
        if let Some(ft) = files::FileTargets::load(ledger)? {
            return files::run(settings, job, &ft, on_step);
        }
    }
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
    let timed = record_seconds;
    let mut timer = |step: Step| {
        on_step(step);
        (step, Instant::now())
    };

    let digests = if settings.build {
        // From here on the disks may be written: whatever happens, the
        // ledger must learn what changed, or a restarted job would verify
        // against hashes the disks no longer have.
        let built = build(
            &targets,
            &dir,
            job,
            settings.recipes_dir.as_deref(),
            &mut report,
            &mut timer,
            &timed,
        );
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
        let windows = report
            .repair
            .as_ref()
            .and_then(|r| r.get("windows"))
            .is_some_and(|w| !w.is_null());
        if settings.boot_test.enabled && windows {
            // Windows says nothing on a serial console and answers no
            // console reader; its boot is judged on the cloud.
            report.boot_test_skipped = Some(
                "a Windows system: its boot shows nothing on the serial console the test reads"
                    .to_owned(),
            );
        } else if settings.boot_test.enabled {
            let (step, t) = timer(Step::Boot);
            let firmware = firmware_of(report.repair.as_ref());
            let verdict = boot::run(&settings.boot_test, &targets, firmware, &dir)?;
            timed(&mut report, step, t);
            let passed = verdict.passed();
            let detail = verdict.failure_detail();
            report.boot_test = Some(verdict);
            if !passed {
                write_json(&dir.join("report.json"), &report)?;
                return Err(coded(ErrorCode::BootTestFailed, detail));
            }
        }
        verified.digests
    } else {
        verify::digests_from_ledger(ledger, &targets)?
    };
    hand_off(
        settings, job, &targets, &digests, report, &mut timer, &timed,
    )
}

/// The end of every run: Cleaning, the manifest, the round's end.
fn hand_off(
    settings: &Settings,
    job: &JobHandle,
    targets: &[Target],
    digests: &[verify::DiskDigest],
    mut report: RoundReport,
    timer: &mut dyn FnMut(Step) -> (Step, Instant),
    timed: &dyn Fn(&mut RoundReport, Step, Instant),
) -> Result<Status> {
    let dir = settings.work_dir();
    let (step, t) = timer(Step::Handoff);
    job.cleaning().context("moving the job to Cleaning")?;
    let path = dir.join("report.json");
    write_json(&path, &report)?;
    let (_, digest) = handoff::run(settings, job, targets, digests, &report)?;
    timed(&mut report, step, t);
    write_json(&path, &report)?;
    let end = job.handed_off(&digest).context("ending the round")?;
    Ok(end.to)
}

/// The control plane takes the disks of a round whose boot test failed:
/// InError → Cleaning → the handoff, the verdict marked as overridden in
/// the manifest. Nothing is built, verified or booted again: the disks are
/// as the failed run verified them (the boot test writes nothing to them),
/// and the ledger holds their hashes.
fn handoff_anyway(
    settings: &Settings,
    ledger: &Ledger,
    job: &JobHandle,
    on_step: &dyn Fn(Step),
) -> Result<Status> {
    let dir = settings.work_dir();
    let mut verdict = boot::load_verdict(&dir)
        .filter(|v| !v.passed())
        .ok_or_else(|| {
            coded(
                ErrorCode::HandoffNotFound,
                "no failed boot test of this round is on record",
            )
        })?;
    let (targets, digests) = match files::FileTargets::load(ledger)? {
        Some(ft)
            if ledger
                .disks()
                .context("reading the job's disks")?
                .is_empty() =>
        {
            let targets = ft.pipeline_targets()?;
            let digests = targets
                .iter()
                .map(files::digest)
                .collect::<Result<Vec<_>>>()?;
            (targets, digests)
        }
        _ => {
            let targets = Target::all(ledger)?;
            let digests = verify::digests_from_ledger(ledger, &targets)?;
            (targets, digests)
        }
    };
    verdict.handed_off_anyway = true;
    boot::save_verdict(&dir, &verdict)?;
    let mut report: RoundReport = std::fs::read(dir.join("report.json"))
        .ok()
        .and_then(|raw| serde_json::from_slice::<StoredReport>(&raw).ok())
        .map(StoredReport::into_report)
        .unwrap_or_default();
    report.boot_test = Some(verdict);
    let timed = record_seconds;
    let mut timer = |step: Step| {
        on_step(step);
        (step, Instant::now())
    };
    hand_off(
        settings, job, &targets, &digests, report, &mut timer, &timed,
    )
}

/// The parts of a kept `report.json` a later handoff carries on.
#[derive(serde::Deserialize)]
struct StoredReport {
    #[serde(default)]
    source_names: Vec<Vec<String>>,
    #[serde(default)]
    checked: Vec<String>,
    #[serde(default)]
    resynced_chunks: u64,
    #[serde(default)]
    seconds: BTreeMap<String, f64>,
    #[serde(default)]
    repair: Option<serde_json::Value>,
}

impl StoredReport {
    fn into_report(self) -> RoundReport {
        RoundReport {
            source_names: self.source_names,
            checked: self.checked,
            resynced_chunks: self.resynced_chunks,
            seconds: self.seconds,
            repair: self.repair,
            ..Default::default()
        }
    }
}

/// How the repaired system boots, from the repair's report (`bios` unless
/// it says `uefi`).
pub fn firmware_of(repair: Option<&serde_json::Value>) -> boot::Firmware {
    match boot_mode(repair) {
        Some("uefi") => boot::Firmware::Uefi,
        _ => boot::Firmware::Bios,
    }
}

/// The repair report's boot mode: `{"mode": "bios", ...}`.
pub fn boot_mode(repair: Option<&serde_json::Value>) -> Option<&str> {
    let boot = repair?.get("boot")?;
    boot.as_str()
        .or_else(|| boot.get("mode").and_then(|m| m.as_str()))
}

/// Where the migrated system is mounted, under the work directory.
const STAGING: &str = "root";

/// Grow, mount and repair; returns what they may have written.
fn build(
    targets: &[Target],
    dir: &std::path::Path,
    job: &JobHandle,
    recipes_dir: Option<&std::path::Path>,
    report: &mut RoundReport,
    timer: &mut dyn FnMut(Step) -> (Step, Instant),
    timed: &dyn Fn(&mut RoundReport, Step, Instant),
) -> Result<resync::Scope> {
    let (step, t) = timer(Step::Check);
    let checked = check::run(targets, &dir.join(STAGING), dir, job)?;
    timed(report, step, t);

    let (step, t) = timer(Step::Grow);
    // Before anything grows or mounts them: a file system copied while it
    // was mounted is brought to the state its next mount would make.
    report.journals = mount::replay_journals(targets, &dir.join("journal"))?;
    report.grown = grow::run(targets)?;
    timed(report, step, t);

    if let Some(windows) = checked.windows() {
        // Prepared through its registry; no Linux step touches it.
        let (step, t) = timer(Step::Repair);
        let (scope, repaired) = repair::windows(
            targets,
            windows,
            &dir.join(STAGING),
            &dir.join("repair.json"),
            &report.grown,
        )?;
        report.repair = Some(repaired);
        timed(report, step, t);
        return Ok(scope);
    }

    let (step, t) = timer(Step::Mount);
    let mounted = mount::system(targets, &dir.join(STAGING), &[])?;
    report.lvm = mounted.tree.lvm_access().cloned();
    timed(report, step, t);

    let (step, t) = timer(Step::Repair);
    let mut scope = resync::Scope::of(targets, &mounted.full, &mounted.mounted, &report.grown)?;
    for r in &report.journals {
        if let Some(pos) = targets.iter().position(|t| t.index == r.disk) {
            scope.add(pos, r.range.0, r.range.1);
        }
    }
    report.repair = Some(repair::run(
        mounted,
        targets,
        &dir.join("repair.json"),
        recipes_dir,
        &[],
    )?);
    timed(report, step, t);
    Ok(scope)
}

/// Keeps how long a step took in the round's report.
fn record_seconds(report: &mut RoundReport, step: Step, started: Instant) {
    report
        .seconds
        .insert(step.to_string(), started.elapsed().as_secs_f64());
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
