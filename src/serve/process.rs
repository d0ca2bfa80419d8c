//! The Processing stage of a round: what the appliance does by itself once
//! every disk of the job is committed and verified, before the round ends
//! (Finished, or Waiting for an incremental job):
//!
//! 1. **grow** each disk whose target is larger than its source (GPT backup
//!    header to the end, last partition and its file system grown);
//! 2. **mount** the received system as a tree (partitions from the disks,
//!    mount points from the root's fstab, source device names from the
//!    sender) — only the system's own file systems (`/`, `/boot`,
//!    `/boot/efi`, `/usr`, `/var`); data file systems stay unmounted and
//!    exactly as they arrived;
//! 3. **repair** it with the recipe of its distribution (fstab, GRUB,
//!    initramfs with virtio, DHCP, cloud-init...), the report kept in
//!    `<state-dir>/processing/repair.json`;
//! 4. **verify**: every file system of the disks is checked read-only by its
//!    own tool (`e2fsck -fn`, `xfs_repair -n`, `fsck.vfat -n`) after the
//!    repair unmounted it;
//! 5. for an incremental job, or when a step failed, the ledger is brought
//!    in line with what grow and the repair wrote, so that the next round
//!    re-sends exactly the chunks that differ from the source (and the
//!    repair runs again on them) and its re-read verification holds.
//!
//! A failure puts the job InError with the step's code (`GRUB_FAILED`,
//! `VIRTIO_CHECK_FAILED`, `SYSTEM_NOT_FOUND`, ...). A job that only
//! replicates disks (`--no-build`, config `build = false`) skips all of it.
//! The stage runs on its own thread, whether or not a sender waits for it;
//! an appliance restarted in the middle of it runs it again (every step is
//! idempotent).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::watch;

use super::Appliance;
use crate::cmd::Cmd;
use crate::job::errors::{coded, find_coded, ErrorCode};
use crate::job::ledger::DiskRecord;
use crate::job::state::Status;
use crate::layout::{self, MountOptions, MountTree, Safety};
use crate::repair::{self, BootMode, DeviceMap, Mode};

/// Where a processing run is: the steps started so far, in order, and once
/// it is over, the status the job reached or the error that put it InError.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phase {
    pub steps: Vec<&'static str>,
    pub done: Option<Result<Status, Failure>>,
}

/// Why processing failed: a catalogue code and this occurrence's detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub detail: String,
}

/// At most one processing run at a time; later callers watch the same one.
#[derive(Default)]
pub struct Processor {
    current: Mutex<Option<watch::Receiver<Phase>>>,
}

/// The ledger key of the names the source knew disk `index` by.
pub fn names_key(index: u32) -> String {
    format!("names/{index}")
}

/// What the stage did, kept in `<state-dir>/processing/report.json`.
#[derive(Debug, Default, Serialize)]
struct StageReport {
    grown: Vec<layout::GrowReport>,
    source_names: Vec<Vec<String>>,
    verified: Vec<String>,
    /// Chunks whose ledger hash was updated to the repaired content.
    ledger_updated_chunks: u64,
}

impl Processor {
    /// Start processing the round (or join the run in progress) and watch it.
    pub fn start(app: &Arc<Appliance>) -> watch::Receiver<Phase> {
        let mut current = app
            .processing
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = current.as_ref() {
            if rx.borrow().done.is_none() {
                return rx.clone();
            }
        }
        let (tx, rx) = watch::channel(Phase::default());
        *current = Some(rx.clone());
        let app = Arc::clone(app);
        let spawned = std::thread::Builder::new()
            .name("ferry-process".into())
            .spawn(move || {
                let result = run(&app, &|step| {
                    tracing::info!(step, "processing");
                    if let Err(e) = app.job.processing_step(step) {
                        tracing::warn!("recording the processing step: {e:#}");
                    }
                    tx.send_modify(|p| p.steps.push(step));
                });
                let done = match result {
                    Ok(status) => {
                        tracing::info!(%status, "processing done: the round is over");
                        Ok(status)
                    }
                    Err(err) => {
                        let code = find_coded(&err)
                            .map(|c| c.code)
                            .unwrap_or(ErrorCode::RepairFailed);
                        let detail = format!("{err:#}");
                        tracing::error!(%code, error = %detail, "processing failed");
                        if let Err(e) = app.job.fail(code, detail.clone()) {
                            tracing::error!("recording the processing error: {e:#}");
                        }
                        Err(Failure { code, detail })
                    }
                };
                tx.send_modify(|p| p.done = Some(done));
            });
        if let Err(e) = spawned {
            tracing::error!("starting the processing thread: {e}");
            let (tx, rx) = watch::channel(Phase {
                steps: Vec::new(),
                done: Some(Err(Failure {
                    code: ErrorCode::Internal,
                    detail: format!("starting the processing thread: {e}"),
                })),
            });
            drop(tx);
            *current = Some(rx.clone());
            return rx;
        }
        rx
    }
}

/// The stage itself; returns the status the round ended in.
fn run(app: &Appliance, step: &dyn Fn(&'static str)) -> Result<Status> {
    if !app.config.build {
        return Ok(app.job.round_done()?.to);
    }
    let dir = app.config.state_dir.join("processing");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let disks = app.ledger.disks().context("reading the job's disks")?;
    if disks.is_empty() {
        return Err(coded(ErrorCode::SystemNotFound, "the job has no disks"));
    }
    let targets: Vec<PathBuf> = disks
        .iter()
        .map(|(_, r)| PathBuf::from(&r.target))
        .collect();
    let mut report = StageReport {
        source_names: disks
            .iter()
            .map(|(i, _)| source_names(app, *i))
            .collect::<Result<_>>()?,
        ..Default::default()
    };

    // Everything from here on may write to the disks: when it fails, or when
    // another round follows, the ledger must learn what changed.
    let processed = grow_repair_verify(&targets, &disks, &dir, &mut report, step);
    if app.config.incremental || processed.is_err() {
        step("ledger");
        for ((index, rec), target) in disks.iter().zip(&targets) {
            match resync_ledger(app, *index, rec, target) {
                Ok(n) => report.ledger_updated_chunks += n,
                Err(e) => {
                    let e = e.context(format!("updating the ledger of disk {index}"));
                    match &processed {
                        // The processing error is what the operator must act on.
                        Err(_) => tracing::error!("{e:#}"),
                        Ok(()) => return Err(e),
                    }
                }
            }
        }
    }
    processed?;
    let path = dir.join("report.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).context("encoding the processing report")?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(app.job.round_done()?.to)
}

/// Grow, mount, repair and verify the received disks.
fn grow_repair_verify(
    targets: &[PathBuf],
    disks: &[(u32, DiskRecord)],
    dir: &Path,
    report: &mut StageReport,
    step: &dyn Fn(&'static str),
) -> Result<()> {
    step("grow");
    for ((index, rec), target) in disks.iter().zip(targets) {
        if let Some(g) = grow(rec, target).with_context(|| format!("growing disk {index}"))? {
            report.grown.push(g);
        }
    }

    step("mount");
    let staging = dir.join("root");
    layout::tree::clean_leftovers(&staging, targets)
        .context("cleaning up after an interrupted processing run")?;
    let (tree, full) = mount_system(targets, &staging, &report.source_names).map_err(|e| {
        if find_coded(&e).is_some() {
            e
        } else {
            coded(ErrorCode::SystemNotFound, format!("{e:#}"))
        }
    })?;

    step("repair");
    let mut devices = DeviceMap::from_mount_tree(&tree, &report.source_names);
    restore_mount_points(&mut devices, &full);
    let outcome = repair::run_with_options(&repair::Options::new(
        tree.root(),
        devices,
        BootMode::Auto,
        Mode::Apply,
    ));
    let repair_report = dir.join("repair.json");
    let written = serde_json::to_vec_pretty(&outcome.report)
        .context("encoding the repair report")
        .and_then(|json| {
            std::fs::write(&repair_report, json)
                .with_context(|| format!("writing {}", repair_report.display()))
        });
    let closed = tree.close().context("unmounting the repaired system");
    outcome.into_result()?;
    written?;
    closed?;

    step("verify");
    report.verified = verify(targets)?;
    Ok(())
}

/// The mount points of the system itself, which the repair reads and
/// writes; other file systems (data) are not mounted, so they stay exactly
/// as they arrived.
const SYSTEM_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi", "/usr", "/var"];

/// Mount the received system's own file systems under `staging`. Returns
/// the tree and the full layout (every mount point from the fstab).
fn mount_system(
    targets: &[PathBuf],
    staging: &Path,
    names: &[Vec<String>],
) -> Result<(MountTree, layout::Layout)> {
    let mut full = layout::read_all(targets).context("reading the received disks")?;
    layout::tree::fill_mount_points_named(&mut full, targets, names)?;
    let mut system = full.clone();
    for p in system
        .disks
        .iter_mut()
        .flat_map(|d| d.partitions.iter_mut())
    {
        if p.mount
            .as_deref()
            .is_some_and(|m| !SYSTEM_MOUNTS.contains(&m))
        {
            p.mount = None;
        }
    }
    let tree = MountTree::mount(&system, targets, staging, MountOptions::default())?;
    Ok((tree, full))
}

/// Give the device map the mount points of the volumes left unmounted, as
/// the source's fstab has them.
fn restore_mount_points(devices: &mut DeviceMap, full: &layout::Layout) {
    for (disk, desc) in devices.disks.iter_mut().zip(&full.disks) {
        let described = desc
            .partitions
            .iter()
            .filter(|p| p.fs != layout::FsType::None);
        for (v, p) in disk.volumes.iter_mut().zip(described) {
            if v.mountpoint.is_none() {
                v.mountpoint.clone_from(&p.mount);
            }
        }
    }
}

/// The names the source knew disk `index` by: what the sender announced,
/// else the usual kernel names of the index-th disk (`/dev/sda`,
/// `/dev/vda`, `/dev/hda`, `/dev/xvda` for disk 0).
fn source_names(app: &Appliance, index: u32) -> Result<Vec<String>> {
    if let Some(raw) = app.ledger.get_meta(&names_key(index))? {
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

/// Grow a disk whose target is larger than the source was.
fn grow(rec: &DiskRecord, target: &Path) -> Result<Option<layout::GrowReport>> {
    let size = layout::devices::disk_size(target)?;
    if size <= rec.size {
        return Ok(None);
    }
    tracing::info!(target = %target.display(), from = rec.size, to = size, "growing onto a larger target");
    layout::grow(target, Safety::default()).map(Some)
}

/// Check every file system of the disks read-only with its own tool.
fn verify(targets: &[PathBuf]) -> Result<Vec<String>> {
    let described = layout::read_all(targets).context("reading the repaired disks")?;
    let mut checked = Vec::new();
    for (d, target) in described.disks.iter().zip(targets) {
        let extents = layout::desc::plan(d, layout::devices::disk_size(target)?)?;
        let numbered: Vec<(usize, _)> = d.numbers().into_iter().zip(extents).collect();
        let attached = layout::devices::AttachedDisk::attach(target, &numbered, false)?;
        let mut failure = None;
        for (p, node) in d.partitions.iter().zip(attached.partitions()) {
            let check = match p.fs {
                layout::FsType::Ext4 | layout::FsType::Ext3 => {
                    Cmd::new("e2fsck").arg("-fn").arg(node)
                }
                layout::FsType::Xfs => Cmd::new("xfs_repair").arg("-n").arg(node),
                layout::FsType::Vfat => Cmd::new("fsck.vfat").arg("-n").arg(node),
                _ => continue,
            };
            let what = format!("{} of {} ({})", node.display(), target.display(), p.fs);
            match check.run() {
                Ok(_) => checked.push(what),
                Err(e) => {
                    failure = Some(coded(
                        ErrorCode::VerifyFailed,
                        format!("the {} file system of {what} is not clean: {e:#}", p.fs),
                    ));
                    break;
                }
            }
        }
        attached.close()?;
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(checked)
}

/// Record in the ledger the hash of every chunk the repair changed, so the
/// next round's sender sees them differ from the source and sends them
/// again (the repair then runs on the new data). Returns how many changed.
fn resync_ledger(app: &Appliance, index: u32, rec: &DiskRecord, target: &Path) -> Result<u64> {
    let disk = crate::disk::Disk::open_source(target)?;
    let actual = crate::disk::hash_chunks(&disk, rec.size, rec.chunk_size)?;
    let known = app.ledger.chunk_hashes(index, rec.chunks())?;
    let changed: Vec<(u64, [u8; 32])> = actual
        .iter()
        .zip(&known)
        .enumerate()
        .filter_map(|(i, (a, k))| {
            let expected = match k {
                Some(h) => *h,
                None if rec.fresh => crate::disk::zero_hash(crate::disk::chunk_len(
                    rec.size,
                    rec.chunk_size,
                    i as u64,
                )),
                None => [0; 32],
            };
            (*a != expected).then_some((i as u64, *a))
        })
        .collect();
    for part in changed.chunks(4096) {
        app.ledger.commit_chunks(index, part)?;
    }
    Ok(changed.len() as u64)
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
