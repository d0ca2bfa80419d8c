//! File mode's round: the targets the appliance laid out from the sender's
//! layout ([`FileTargets`], kept in the ledger), written tree by tree, then
//! the same Processing as block mode's on them — mount the system by its
//! own fstab, repair it, check every file system, boot it (when the job
//! asks), hand it off. Nothing is grown (the layout was made for the
//! targets) and there is no chunk ledger to resync or compare with: the
//! digest of each disk is taken from what was read after the repair.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{boot, mount, repair, verify, RoundReport, Settings, Step, Target, STAGING};
use crate::disk::{chunk_count, hash_chunks, Disk, DiskDigester};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::handle::JobHandle;
use crate::job::ledger::{windows, DiskRecord, Ledger};
use crate::job::state::Status;
use crate::layout::fit::SourcePlan;
use crate::layout::flatten::FlatLvm;
use crate::layout::Layout;

/// The ledger's meta key of the file-mode targets.
pub const META_KEY: &str = "files/targets";

/// Chunk size of the digests of file-mode disks.
const DIGEST_CHUNK: u32 = 4 << 20;

/// The targets of a file-mode job, as laid out: recorded in the ledger
/// right after the file systems are made and before any entry is written,
/// so that a rerun finds them (and their UUIDs) and never makes them again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTargets {
    /// What the sender described, its LVM physical volumes flattened
    /// ([`SourcePlan::flattened`]).
    pub plan: SourcePlan,
    /// The source's logical volumes laid out as plain partitions, and
    /// their old names, which the repair replaces.
    #[serde(default, skip_serializing_if = "FlatLvm::is_empty")]
    pub lvm: FlatLvm,
    /// What was laid out on the targets (ids resolved, sizes fitted), with
    /// the source's mount points.
    pub layout: Layout,
    /// Disk i of the layout is `targets[i]`.
    pub targets: Vec<PathBuf>,
}

impl FileTargets {
    pub fn load(ledger: &Ledger) -> Result<Option<FileTargets>> {
        let Some(raw) = ledger.get_meta(META_KEY).code(ErrorCode::LedgerFailed)? else {
            return Ok(None);
        };
        let t = serde_json::from_slice(&raw)
            .map_err(|e| {
                coded(
                    ErrorCode::LedgerFailed,
                    format!("the ledger's file-mode targets are damaged: {e}"),
                )
            })
            .context("reading the file-mode targets")?;
        Ok(Some(t))
    }

    pub fn save(&self, ledger: &Ledger) -> Result<()> {
        let raw = serde_json::to_vec(self).context("encoding the file-mode targets")?;
        ledger
            .put_meta(META_KEY, &raw)
            .code(ErrorCode::LedgerFailed)
            .context("recording the file-mode targets")
    }

    /// The disks as the pipeline sees them.
    pub fn pipeline_targets(&self) -> Result<Vec<Target>> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, configured)| {
                let path = std::fs::canonicalize(configured).unwrap_or_else(|_| configured.clone());
                let size = crate::layout::devices::disk_size(&path)?;
                Ok(Target {
                    index: i as u32,
                    record: DiskRecord {
                        size,
                        chunk_size: DIGEST_CHUNK,
                        fresh: false,
                        target: configured.display().to_string(),
                    },
                    path,
                    configured: configured.clone(),
                    names: super::conventional_names(i as u32),
                })
            })
            .collect()
    }
}

/// What the round's report says of a file-mode round.
#[derive(Debug, Clone, Serialize)]
pub struct FilesReport {
    /// Each sent file system: its mount point, type, UUID, the bytes it held
    /// on the source and its partition's size on the target.
    pub file_systems: Vec<FileSystemReport>,
    /// The source's logical volumes, each laid out as a plain partition
    /// with its file system's UUID: the migrated system boots without its
    /// volume group.
    #[serde(skip_serializing_if = "FlatLvm::is_empty")]
    pub lvm_flattened: FlatLvm,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileSystemReport {
    pub mount: String,
    pub fs: String,
    pub uuid: Option<String>,
    pub used: u64,
    pub size: u64,
}

fn describe(ft: &FileTargets) -> Result<FilesReport> {
    let places = ft.plan.places()?;
    let mut out = Vec::new();
    for (t, pl) in ft.plan.trees.iter().zip(places) {
        let d = &ft.layout.disks[pl.disk];
        let size = crate::layout::devices::disk_size(&ft.targets[pl.disk])?;
        let ext = crate::layout::desc::plan(d, size)?;
        let p = &d.partitions[pl.part];
        out.push(FileSystemReport {
            mount: t.mount.clone(),
            fs: p.fs.to_string(),
            uuid: p.uuid.clone(),
            used: t.used,
            size: ext[pl.part].len,
        });
    }
    Ok(FilesReport {
        file_systems: out,
        lvm_flattened: ft.lvm.clone(),
    })
}

/// The round of a file-mode job: mount, repair, verify, boot, handoff.
pub fn run(
    settings: &Settings,
    job: &JobHandle,
    ft: &FileTargets,
    on_step: &dyn Fn(Step),
) -> Result<Status> {
    let dir = settings.work_dir();
    let targets = ft.pipeline_targets()?;
    let paths: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    crate::layout::tree::clean_leftovers(&dir.join(STAGING), &paths)
        .context("cleaning up after an interrupted run")?;
    let mut report = RoundReport {
        source_names: targets.iter().map(|t| t.names.clone()).collect(),
        file_mode: Some(describe(ft)?),
        ..Default::default()
    };
    let timed = super::record_seconds;
    let mut timer = |step: Step| {
        on_step(step);
        (step, Instant::now())
    };
    if settings.build {
        let (step, t) = timer(Step::Mount);
        let mounted = mount::system(&targets, &dir.join(STAGING), &ft.lvm.renamed)?;
        timed(&mut report, step, t);
        let (step, t) = timer(Step::Repair);
        report.repair = Some(repair::run(
            mounted,
            &targets,
            &dir.join("repair.json"),
            settings.recipes_dir.as_deref(),
            &ft.lvm.renamed,
        )?);
        timed(&mut report, step, t);
    }
    let (step, t) = timer(Step::Verify);
    report.checked = verify::check_file_systems(&targets)?;
    let digests = targets
        .iter()
        .map(digest)
        .collect::<Result<Vec<_>>>()
        .code(ErrorCode::VerifyFailed)?;
    timed(&mut report, step, t);
    if settings.build && settings.boot_test.enabled {
        let (step, t) = timer(Step::Boot);
        let firmware = super::firmware_of(report.repair.as_ref());
        let verdict = boot::run(&settings.boot_test, &targets, firmware, &dir)?;
        timed(&mut report, step, t);
        let passed = verdict.passed();
        let detail = verdict.failure_detail();
        report.boot_test = Some(verdict);
        if !passed {
            super::write_json(&dir.join("report.json"), &report)?;
            return Err(coded(ErrorCode::BootTestFailed, detail));
        }
    }
    super::hand_off(
        settings, job, &targets, &digests, report, &mut timer, &timed,
    )
}

/// The digest of a whole disk as it is now, chunk by chunk.
pub(super) fn digest(t: &Target) -> Result<verify::DiskDigest> {
    let disk = Disk::open_source(&t.path)
        .with_context(|| format!("opening disk {} ({})", t.index, t.path.display()))?;
    let size = t.record.size;
    let mut digester = DiskDigester::new(size, DIGEST_CHUNK);
    for w in windows(chunk_count(size, DIGEST_CHUNK)) {
        for h in hash_chunks(&disk, size, DIGEST_CHUNK, w)
            .with_context(|| format!("reading disk {} ({})", t.index, t.path.display()))?
        {
            digester.push(&h);
        }
    }
    Ok(verify::DiskDigest {
        index: t.index,
        bytes: size,
        chunk_size: DIGEST_CHUNK,
        digest: digester.finish(),
    })
}
