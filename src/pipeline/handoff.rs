//! Handoff (the job's Cleaning state): the targets are flushed and dropped
//! from the page cache, `<state-dir>/handoff.json` is written atomically,
//! and the job ends its round with the manifest's digest, which the
//! webhook carries to the control plane. The control plane snapshots the
//! disks the manifest names; until it starts another round the targets are
//! not written (senders are refused with `JOB_HANDED_OFF`) nor mounted.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::verify::DiskDigest;
use super::{PipelineSettings, RoundReport, Target};
use crate::disk::{read_digest, Disk};
use crate::job::errors::{coded, ErrorCode};
use crate::job::handle::JobHandle;
use crate::layout;

/// The manifest's format version.
pub(crate) const MANIFEST_VERSION: u32 = 1;

/// `handoff.json`: what the control plane needs to make an image of the
/// round, and to check that the disks it snapshots are what was verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub job_id: String,
    /// 1 for the first round of the job, 2 for the next...
    pub round: u32,
    pub created_at: String,
    /// `bios` or `uefi`, as the repair found it; absent for a job that
    /// only replicated its disks.
    pub boot_mode: Option<String>,
    /// The detected OS (`/etc/os-release`) and the recipe applied.
    pub os: Option<serde_json::Value>,
    pub recipe: Option<String>,
    /// The repair's steps and what each changed.
    pub repairs: Option<serde_json::Value>,
    pub disks: Vec<ManifestDisk>,
    /// Seconds each step of the pipeline took.
    pub seconds: BTreeMap<String, f64>,
    /// The boot test's verdict: stages reached and their times, the
    /// accelerator, and `handed_off_anyway` when the control plane took
    /// the disks despite a failed test; absent when no test ran.
    pub boot_test: Option<super::boot::Verdict>,
    /// File systems that arrived with a journal to replay (copied while
    /// mounted), and what the appliance did: `{disk, partition, node, fs,
    /// action}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journals: Vec<serde_json::Value>,
    /// How the repair reached the guest's logical volumes: `via`
    /// `device-mapper` (its VGs activated under a private configuration,
    /// deactivated before the handoff) or `loop`, and why not
    /// device-mapper where the kernel has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<crate::layout::lvm::activate::Access>,
    /// The operator's hooks: each with its phase, status (`succeeded`,
    /// `failed`, `timed_out`, `installed` for first-boot), exit code,
    /// seconds and the end of its output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::repair::hooks::HookOutcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestDisk {
    pub index: u32,
    /// The target as configured (what the control plane attached).
    pub target: PathBuf,
    /// The kernel's node it resolved to on the appliance.
    pub device: PathBuf,
    pub source_size: u64,
    pub target_size: u64,
    /// `gpt`, `mbr`, or absent for a disk without a partition table.
    pub table: Option<String>,
    pub partitions: Vec<ManifestPartition>,
    /// ferry's disk digest (BLAKE3 over the chunk size and every chunk's
    /// hash) of the first `digest_bytes` bytes: `ferry verify --manifest`
    /// recomputes it from the disk.
    pub digest: String,
    pub digest_bytes: u64,
    pub chunk_size: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestPartition {
    pub number: usize,
    pub start: u64,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub fs: String,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub mount: Option<String>,
}

/// Where the manifest of the last handoff is.
pub fn manifest_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handoff.json")
}

/// Flush the targets, write the manifest; returns it with the digest of its
/// bytes as written.
pub fn run(
    settings: &PipelineSettings,
    job: &JobHandle,
    targets: &[Target],
    digests: &[DiskDigest],
    report: &RoundReport,
) -> Result<(Manifest, String)> {
    let repair = report.repair.as_ref();
    for t in targets {
        flush(&t.path)
            .with_context(|| format!("flushing disk {} ({})", t.index, t.path.display()))?;
    }
    let record = job.snapshot();
    let mut disks = Vec::new();
    for (t, d) in targets.iter().zip(digests) {
        let target_size = layout::devices::disk_size(&t.path)
            .with_context(|| format!("reading the size of {}", t.path.display()))?;
        let (table, partitions) = describe(&t.path, target_size);
        disks.push(ManifestDisk {
            index: t.index,
            target: t.configured.clone(),
            device: t.path.clone(),
            source_size: t.record.size,
            target_size,
            table,
            partitions,
            digest: hex::encode(d.digest),
            digest_bytes: d.bytes,
            chunk_size: d.chunk_size,
        });
    }
    // The manifest keeps the repair's parts as JSON: a contract read by
    // control planes and by `ferry verify` of any later version. A Windows
    // system's registry facts stand where a Linux OS would.
    let os = repair.and_then(|r| match (&r.os, &r.windows) {
        (Some(os), _) => serde_json::to_value(os).ok(),
        (None, Some(w)) => serde_json::to_value(w).ok(),
        (None, None) => None,
    });
    let repairs = repair.and_then(|r| serde_json::to_value(&r.steps).ok());
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        job_id: record.id.clone(),
        round: record.rounds_completed + 1,
        created_at: crate::job::state::Timestamp(job.now()).to_string(),
        boot_mode: repair
            .and_then(|r| r.boot.as_ref())
            .map(|b| b.name().to_owned()),
        os,
        recipe: repair.and_then(|r| r.recipe.clone()),
        repairs,
        disks,
        seconds: report.seconds.clone(),
        boot_test: report.boot_test.clone(),
        journals: report
            .journals
            .iter()
            .filter_map(|j| serde_json::to_value(j).ok())
            .collect(),
        lvm: report.lvm.clone(),
        hooks: repair.map(|r| r.hooks.clone()).unwrap_or_default(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).context("encoding the handoff manifest")?;
    let path = manifest_path(&settings.state_dir);
    crate::disk::write_atomic(&path, &bytes)?;
    let digest = hex::encode(blake3::hash(&bytes).as_bytes());
    tracing::info!(path = %path.display(), %digest, "handoff manifest written");
    Ok((manifest, digest))
}

/// Make the target's content durable and drop it from the page cache, so
/// that a snapshot taken below the instance sees what was verified.
fn flush(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync of {}", path.display()))?;
    nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .with_context(|| format!("dropping {} from the page cache", path.display()))?;
    Ok(())
}

/// The disk's partition table, if it has one ferry reads.
fn describe(path: &Path, size: u64) -> (Option<String>, Vec<ManifestPartition>) {
    let Ok(d) = layout::read(path) else {
        return (None, Vec::new());
    };
    let table = Some(
        match d.table {
            layout::TableType::Gpt => "gpt",
            layout::TableType::Mbr => "mbr",
        }
        .to_owned(),
    );
    let Ok(extents) = layout::desc::plan(&d, size) else {
        return (table, Vec::new());
    };
    let parts = d
        .partitions
        .iter()
        .zip(d.numbers())
        .zip(extents)
        .map(|((p, number), e)| ManifestPartition {
            number,
            start: e.start,
            size: e.len,
            kind: p.kind.as_str().to_owned(),
            fs: p.fs.kind.to_string(),
            uuid: p.fs.uuid.clone(),
            label: p.fs.label.clone(),
            mount: p.fs.mount.clone(),
        })
        .collect();
    (table, parts)
}

/// `ferry verify --manifest`: re-read each disk and compare its digest with
/// the manifest's. Returns one line per disk.
pub fn check(manifest: &Manifest, disks: &[(u32, PathBuf)]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (index, path) in disks {
        let entry = manifest
            .disks
            .iter()
            .find(|d| d.index == *index)
            .ok_or_else(|| {
                coded(
                    ErrorCode::VerifyFailed,
                    format!("the manifest has no disk {index}"),
                )
            })?;
        let disk = Disk::open_source(path)?;
        if disk.size() < entry.digest_bytes {
            return Err(coded(
                ErrorCode::VerifyFailed,
                format!(
                    "{} holds {} bytes, the manifest's digest covers {}",
                    path.display(),
                    disk.size(),
                    entry.digest_bytes
                ),
            ));
        }
        let got = hex::encode(
            read_digest(&disk, entry.digest_bytes, entry.chunk_size)
                .with_context(|| format!("reading {}", path.display()))?,
        );
        if got != entry.digest {
            return Err(coded(
                ErrorCode::VerifyFailed,
                format!(
                    "disk {index} ({}) does not match the manifest: digest {got}, expected {}",
                    path.display(),
                    entry.digest
                ),
            ));
        }
        lines.push(format!(
            "disk {index} ({}): matches the manifest, digest {got}",
            path.display()
        ));
    }
    Ok(lines)
}
