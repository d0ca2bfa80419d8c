//! File mode's round: the targets the appliance laid out from the sender's
//! layout ([`FileTargets`], kept in the ledger), written tree by tree, then
//! the same Processing as block mode's on them — mount the system by its
//! own fstab, repair it, check every file system, boot it (when the job
//! asks), hand it off. Nothing is grown (the layout was made for the
//! targets) and there is no chunk ledger to resync or compare with: the
//! digest of each disk is taken from what was read after the repair.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{mount, repair, verify, PipelineSettings, Step, Target, STAGING};
use crate::disk::{chunk_count, hash_chunks, Disk, DiskDigester};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::handle::JobHandle;
use crate::job::ledger::{windows, DiskRecord, Ledger};
use crate::job::state::JobStatus;
use crate::layout::fit::SourcePlan;
use crate::layout::flatten::FlatLvm;
use crate::layout::Layout;

/// The ledger's meta key of the file-mode targets.
pub(crate) const META_KEY: &str = "files/targets";

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
    pub(crate) fn pipeline_targets(&self) -> Result<Vec<Target>> {
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
            fs: p.fs.kind.to_string(),
            uuid: p.fs.uuid.clone(),
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
    settings: &PipelineSettings,
    job: &JobHandle,
    ft: &FileTargets,
    on_step: &dyn Fn(Step),
) -> Result<JobStatus> {
    let dir = settings.work_dir();
    let targets = ft.pipeline_targets()?;
    let mut report = super::begin(&dir, &targets)?;
    report.file_mode = Some(describe(ft)?);
    let steps = super::Steps(on_step);
    if settings.build {
        let mounted = steps.run(&mut report, Step::Mount, |_| {
            mount::system(&targets, &dir.join(STAGING), &ft.lvm.renamed)
        })?;
        steps.run(&mut report, Step::Repair, |report| {
            let choices = settings.repair.for_round(&settings.state_dir)?;
            report.repair = Some(repair::run(
                mounted,
                &targets,
                &dir.join("repair.json"),
                &choices,
                &ft.lvm.renamed,
            )?);
            Ok(())
        })?;
    }
    let digests = steps.run(&mut report, Step::Verify, |report| {
        report.checked = verify::check_file_systems(&targets)?;
        targets
            .iter()
            .map(digest)
            .collect::<Result<Vec<_>>>()
            .code(ErrorCode::VerifyFailed)
    })?;
    if settings.build {
        super::boot_test(settings, &targets, &dir, &mut report, &steps)?;
    }
    super::hand_off(settings, job, &targets, &digests, report, &steps)
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
