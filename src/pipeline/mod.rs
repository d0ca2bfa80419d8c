//! The round's pipeline: what the appliance does by itself once every disk
//! of a round is committed, before the round ends (Finished, or Waiting for
//! an incremental job's next round).
//!
//! | step | file | what it does |
//! |---|---|---|
//! | (file mode) | [`targets`], [`file_mode`] | before the data: the targets laid out from the sender's layout and recorded in the ledger; after it, the same steps without grow and resync |
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
//! Narrow inputs: the driver takes the [`PipelineSettings`], the ledger and the job
//! handle, never the whole appliance. [`runner`] runs it on its thread, one
//! run at a time; [`report`] is what a run did.

pub mod boot;
pub mod check;
pub mod file_mode;
pub mod grow;
pub mod handoff;
pub mod mount;
pub mod repair;
pub mod report;
pub mod resync;
pub mod runner;
pub mod targets;
pub mod verify;

use std::path::PathBuf;

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::job::errors::{coded, ErrorCode};
use crate::job::handle::JobHandle;
use crate::job::ledger::{names_key, DiskRecord, Ledger};
use crate::job::state::JobStatus;
pub use crate::job::step::Step;
pub use report::RoundReport;
use report::{firmware_of, is_windows, StoredReport};
pub use runner::{Failure, Phase, Runner};

/// What the pipeline needs of the appliance's configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Grow, mount, repair, resync and verify before the handoff; false for
    /// a job that only replicates disks.
    pub build: bool,
    /// The boot test before the handoff (a job that builds only).
    pub boot_test: boot::BootTestSettings,
    /// What the repair is told beyond the system it finds.
    pub repair: RepairChoices,
    /// Where `processing/` (reports, the staging mount point) and
    /// `handoff.json` live.
    pub state_dir: PathBuf,
}

/// The operator's and the control plane's choices for the repair.
#[derive(Debug, Clone, Default)]
pub struct RepairChoices {
    /// Repair recipes from this directory instead of the built-in ones.
    pub recipes_dir: Option<PathBuf>,
    /// What each source NIC becomes.
    pub network: crate::repair::network::map::NetworkMap,
    /// The operator's scripts, after the repair or at the first boot.
    pub hooks: crate::repair::hooks::Hooks,
}

/// Where the control plane's network map is kept in the state directory
/// (`POST /v1/job/network`); it takes the place of the configuration's.
pub const NETWORK_MAP_FILE: &str = "network-map.json";

/// Where the control plane's hooks are kept (`POST /v1/job/hooks`); they
/// take the place of the configuration's.
pub const HOOKS_FILE: &str = "hooks.json";

/// Where a network map comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapFrom {
    /// `POST /v1/job/network`.
    Control,
    /// `network_map` of the configuration.
    Config,
    /// Neither: DHCP on every NIC.
    None,
}

impl RepairChoices {
    /// The choices of a round: the control plane's network map where it
    /// set one, else the configuration's.
    pub(crate) fn for_round(&self, state_dir: &std::path::Path) -> Result<RepairChoices> {
        let mut choices = self.clone();
        if let Some(map) = stored_network_map(state_dir)? {
            choices.network = map;
        }
        if let Some(hooks) = stored_hooks(state_dir)? {
            choices.hooks = hooks;
        }
        Ok(choices)
    }

    /// The hooks a round would run now, and where they come from.
    pub fn hooks(
        &self,
        state_dir: &std::path::Path,
    ) -> Result<(crate::repair::hooks::Hooks, MapFrom)> {
        Ok(match stored_hooks(state_dir)? {
            Some(h) => (h, MapFrom::Control),
            None if self.hooks.is_empty() => (Default::default(), MapFrom::None),
            None => (self.hooks.clone(), MapFrom::Config),
        })
    }

    /// The network map a round would follow now, and where it comes from.
    pub fn network_map(
        &self,
        state_dir: &std::path::Path,
    ) -> Result<(crate::repair::network::map::NetworkMap, MapFrom)> {
        Ok(match stored_network_map(state_dir)? {
            Some(map) => (map, MapFrom::Control),
            None if self.network == Default::default() => (Default::default(), MapFrom::None),
            None => (self.network.clone(), MapFrom::Config),
        })
    }
}

/// The control plane's network map, if it set one.
fn stored_network_map(
    state_dir: &std::path::Path,
) -> Result<Option<crate::repair::network::map::NetworkMap>> {
    read_stored(
        state_dir,
        NETWORK_MAP_FILE,
        "network map",
        crate::repair::network::map::NetworkMap::parse,
    )
}

/// Keep the control plane's network map for the rounds to come; an empty
/// map removes it (the configuration's applies again).
pub(crate) fn store_network_map(
    state_dir: &std::path::Path,
    map: &crate::repair::network::map::NetworkMap,
) -> Result<()> {
    keep_stored(state_dir, NETWORK_MAP_FILE, map, *map == Default::default())
}

/// The control plane's hooks, if it set some.
fn stored_hooks(state_dir: &std::path::Path) -> Result<Option<crate::repair::hooks::Hooks>> {
    read_stored(
        state_dir,
        HOOKS_FILE,
        "hooks",
        crate::repair::hooks::Hooks::parse,
    )
}

/// Keep the control plane's hooks for the rounds to come; none removes
/// them (the configuration's apply again).
pub(crate) fn store_hooks(
    state_dir: &std::path::Path,
    hooks: &crate::repair::hooks::Hooks,
) -> Result<()> {
    keep_stored(state_dir, HOOKS_FILE, hooks, hooks.is_empty())
}

/// A choice the control plane keeps in the state directory (`file`), read
/// with its own parser; None when it set none.
fn read_stored<T>(
    state_dir: &std::path::Path,
    file: &str,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T>,
) -> Result<Option<T>> {
    let path = state_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Ok(Some(parse(&text).with_context(|| {
                format!("the stored {what} {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Keep a choice of the control plane as JSON in `file`; an empty one
/// removes the file.
fn keep_stored<T: Serialize>(
    state_dir: &std::path::Path,
    file: &str,
    value: &T,
    empty: bool,
) -> Result<()> {
    let path = state_dir.join(file);
    if empty {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let json =
        serde_json::to_vec_pretty(value).with_context(|| format!("encoding {}", path.display()))?;
    crate::disk::write_atomic(&path, &json)
}

impl PipelineSettings {
    pub(crate) fn work_dir(&self) -> PathBuf {
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

/// The pipeline itself; returns the status the round ended in.
pub fn run(
    settings: &PipelineSettings,
    ledger: &Ledger,
    job: &JobHandle,
    on_step: &dyn Fn(Step),
) -> Result<JobStatus> {
    let dir = settings.work_dir();
    // The round's reports and the mount points of the migrated system.
    crate::disk::private_dir(&dir)?;
    // A handoff despite a failed boot test that a restart interrupted.
    if job.status() == JobStatus::CLEANING
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
        if let Some(ft) = file_mode::FileTargets::load(ledger)? {
            return file_mode::run(settings, job, &ft, on_step);
        }
    }
    let targets = Target::all(ledger)?;
    if targets.is_empty() {
        return Err(coded(ErrorCode::SystemNotFound, "the job has no disks"));
    }
    let mut report = begin(&dir, &targets)?;
    let steps = Steps(on_step);

    let digests = if settings.build {
        // From here on the disks may be written: whatever happens, the
        // ledger must learn what changed, or a restarted job would verify
        // against hashes the disks no longer have.
        let built = build(&targets, &dir, job, settings, &mut report, &steps);
        let scope = match &built {
            Ok(scope) => scope.clone(),
            // A failed run may have written anywhere it had reached: the
            // whole disks, so the next round re-sends whatever differs.
            Err(_) => resync::Scope::whole(&targets),
        };
        let resynced = steps.run(&mut report, Step::Resync, |_| {
            resync::run(ledger, &targets, &scope)
        });
        match (built, resynced) {
            (Err(e), Err(r)) => {
                // The run's own error is what the operator must act on.
                tracing::error!("updating the ledger after a failed run: {r:#}");
                return Err(e);
            }
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
            (Ok(_), Ok(n)) => report.resynced_chunks = n,
        }
        let verified = steps.run(&mut report, Step::Verify, |_| verify::run(ledger, &targets))?;
        report.checked = verified.checked;
        boot_test(settings, &targets, &dir, &mut report, &steps)?;
        verified.digests
    } else {
        verify::digests_from_ledger(ledger, &targets)?
    };
    hand_off(settings, job, &targets, &digests, report, &steps)
}

/// What every run does first: clean up what a run killed midway left (its
/// chroot's processes, its mounts and its loop devices, or grow and mount
/// would meet busy partitions and fail with them still in place), and
/// begin the round's report.
fn begin(dir: &std::path::Path, targets: &[Target]) -> Result<RoundReport> {
    let paths: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    crate::layout::tree::clean_leftovers(&dir.join(STAGING), &paths)
        .context("cleaning up after an interrupted run")?;
    Ok(RoundReport {
        source_names: targets.iter().map(|t| t.names.clone()).collect(),
        ..Default::default()
    })
}

/// Announces each step as it starts, and keeps how long it took in the
/// round's report when it succeeded.
struct Steps<'a>(&'a dyn Fn(Step));

impl Steps<'_> {
    fn run<T>(
        &self,
        report: &mut RoundReport,
        step: Step,
        f: impl FnOnce(&mut RoundReport) -> Result<T>,
    ) -> Result<T> {
        (self.0)(step);
        let started = Instant::now();
        let out = f(report)?;
        report
            .seconds
            .insert(step.to_string(), started.elapsed().as_secs_f64());
        Ok(out)
    }
}

/// The boot test, when the job asks for it: the verdict goes into the
/// report; a failed one ends the run with `BOOT_TEST_FAILED` after the
/// report is written.
fn boot_test(
    settings: &PipelineSettings,
    targets: &[Target],
    dir: &std::path::Path,
    report: &mut RoundReport,
    steps: &Steps,
) -> Result<()> {
    if !settings.boot_test.enabled {
        return Ok(());
    }
    if is_windows(report.repair.as_ref()) {
        // Windows says nothing on a serial console and answers no
        // console reader; its boot is judged on the cloud.
        report.boot_test_skipped = Some(
            "a Windows system: its boot shows nothing on the serial console the test reads"
                .to_owned(),
        );
        return Ok(());
    }
    let verdict = steps.run(report, Step::Boot, |r| {
        boot::run(
            &settings.boot_test,
            targets,
            firmware_of(r.repair.as_ref()),
            dir,
        )
    })?;
    let mut verdict = verdict;
    // The operator's first-boot hooks ran in the test: one that must
    // succeed and did not fails the round with its own code.
    let must: Vec<&str> = report
        .repair
        .as_ref()
        .map(|r| {
            r.hooks
                .iter()
                .filter(|h| h.phase == crate::repair::hooks::Phase::FirstBoot && h.must_succeed)
                .map(|h| h.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    let hook_failure = verdict.judge_hooks(&must);
    if hook_failure.is_some() {
        boot::save_verdict(dir, &verdict)?;
    }
    let passed = verdict.passed();
    let detail = verdict.failure_detail();
    report.boot_test = Some(verdict);
    if let Some(detail) = hook_failure {
        write_json(&dir.join("report.json"), report)?;
        return Err(coded(ErrorCode::HookFailed, detail));
    }
    if !passed {
        write_json(&dir.join("report.json"), report)?;
        return Err(coded(ErrorCode::BootTestFailed, detail));
    }
    Ok(())
}

/// The end of every run: Cleaning, the manifest, the round's end.
fn hand_off(
    settings: &PipelineSettings,
    job: &JobHandle,
    targets: &[Target],
    digests: &[verify::DiskDigest],
    mut report: RoundReport,
    steps: &Steps,
) -> Result<JobStatus> {
    let path = settings.work_dir().join("report.json");
    let digest = steps.run(&mut report, Step::Handoff, |report| {
        job.cleaning().context("moving the job to Cleaning")?;
        write_json(&path, report)?;
        let (_, digest) = handoff::run(settings, job, targets, digests, report)?;
        Ok(digest)
    })?;
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
    settings: &PipelineSettings,
    ledger: &Ledger,
    job: &JobHandle,
    on_step: &dyn Fn(Step),
) -> Result<JobStatus> {
    let dir = settings.work_dir();
    let mut verdict = boot::load_verdict(&dir)
        .filter(|v| !v.passed())
        .ok_or_else(|| {
            coded(
                ErrorCode::HandoffNotFound,
                "no failed boot test of this round is on record",
            )
        })?;
    let (targets, digests) = match file_mode::FileTargets::load(ledger)? {
        Some(ft)
            if ledger
                .disks()
                .context("reading the job's disks")?
                .is_empty() =>
        {
            let targets = ft.pipeline_targets()?;
            let digests = targets
                .iter()
                .map(file_mode::digest)
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
    hand_off(settings, job, &targets, &digests, report, &Steps(on_step))
}

/// Where the migrated system is mounted, under the work directory.
const STAGING: &str = "root";

/// Grow, mount and repair; returns what they may have written.
fn build(
    targets: &[Target],
    dir: &std::path::Path,
    job: &JobHandle,
    settings: &PipelineSettings,
    report: &mut RoundReport,
    steps: &Steps,
) -> Result<resync::Scope> {
    let checked = steps.run(report, Step::Check, |_| {
        check::run(targets, &dir.join(STAGING), dir, job)
    })?;
    steps.run(report, Step::Grow, |report| {
        // Before anything grows or mounts them: a file system copied while
        // it was mounted is brought to the state its next mount would make.
        report.journals = mount::replay_journals(targets, &dir.join("journal"))?;
        report.grown = grow::run(targets)?;
        Ok(())
    })?;

    if let Some(windows) = checked.windows() {
        // Prepared through its registry; no Linux step touches it.
        return steps.run(report, Step::Repair, |report| {
            let (scope, repaired) = repair::windows(
                targets,
                windows,
                &dir.join(STAGING),
                &dir.join("repair.json"),
                &report.grown,
            )?;
            report.repair = Some(repaired);
            Ok(scope)
        });
    }

    let mounted = steps.run(report, Step::Mount, |report| {
        let mounted = mount::system(targets, &dir.join(STAGING), &[])?;
        report.lvm = mounted.tree.lvm_access().cloned();
        Ok(mounted)
    })?;
    steps.run(report, Step::Repair, |report| {
        let mut scope = resync::Scope::of(targets, &mounted.full, &mounted.mounted, &report.grown)?;
        for r in &report.journals {
            if let Some(pos) = targets.iter().position(|t| t.index == r.disk) {
                scope.add(pos, r.range.0, r.range.1);
            }
        }
        // The control plane may have changed the network map since the
        // appliance started.
        let choices = settings.repair.for_round(&settings.state_dir)?;
        report.repair = Some(repair::run(
            mounted,
            targets,
            &dir.join("repair.json"),
            &choices,
            &[],
        )?);
        Ok(scope)
    })
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

    /// A round's repair follows the control plane's map where it set one,
    /// else the configuration's.
    #[test]
    fn a_round_takes_the_control_planes_network_map_over_the_configurations() {
        use crate::repair::network::map::NetworkMap;
        let dir = tempfile::tempdir().unwrap();
        let config = RepairChoices {
            recipes_dir: None,
            network: NetworkMap::parse("[[nic]]\nsource = \"eth0\"\n").unwrap(),
            hooks: Default::default(),
        };
        assert_eq!(
            config.for_round(dir.path()).unwrap().network,
            config.network
        );
        let control = NetworkMap::parse("[[nic]]\nsource = \"ens8\"\nmode = \"keep\"\n").unwrap();
        store_network_map(dir.path(), &control).unwrap();
        assert_eq!(config.for_round(dir.path()).unwrap().network, control);
        store_network_map(dir.path(), &NetworkMap::default()).unwrap();
        assert_eq!(
            config.for_round(dir.path()).unwrap().network,
            config.network
        );
        std::fs::write(dir.path().join(NETWORK_MAP_FILE), "{not json").unwrap();
        let err = config.for_round(dir.path()).unwrap_err();
        assert_eq!(
            crate::job::errors::describe(&err).0,
            crate::job::errors::ErrorCode::NetworkMapInvalid
        );
    }

    #[test]
    fn a_round_takes_the_control_planes_hooks_over_the_configurations() {
        use crate::repair::hooks::Hooks;
        let dir = tempfile::tempdir().unwrap();
        let config = RepairChoices {
            hooks: Hooks::parse(
                "[[hook]]\nname = \"a\"\nphase = \"first-boot\"\nscript = \"true\"\n",
            )
            .unwrap(),
            ..Default::default()
        };
        assert_eq!(config.for_round(dir.path()).unwrap().hooks, config.hooks);
        let control =
            Hooks::parse("[[hook]]\nname = \"b\"\nphase = \"after-repair\"\nscript = \"true\"\n")
                .unwrap();
        store_hooks(dir.path(), &control).unwrap();
        assert_eq!(config.for_round(dir.path()).unwrap().hooks, control);
        store_hooks(dir.path(), &Hooks::default()).unwrap();
        assert_eq!(config.for_round(dir.path()).unwrap().hooks, config.hooks);
        std::fs::write(dir.path().join(HOOKS_FILE), "{\"hook\": 3}").unwrap();
        let err = config.for_round(dir.path()).unwrap_err();
        assert_eq!(
            crate::job::errors::describe(&err).0,
            crate::job::errors::ErrorCode::HookInvalid
        );
    }
}
