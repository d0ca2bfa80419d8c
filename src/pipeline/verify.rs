//! Verify, before anything is handed off: every file system is checked
//! read-only by its own tool, and every disk is re-read and compared chunk
//! by chunk with the ledger (which holds the source's hashes and, after
//! resync, those of what grow and repair wrote). Any difference is
//! `VERIFY_FAILED` naming disk, chunk and offset.

use anyhow::{Context, Result};

use super::Target;
use crate::cmd::Cmd;
use crate::disk::{chunk_count, chunk_len, hash_chunks, zero_hash, Disk, DiskDigester};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::ledger::{windows, Ledger};
use crate::layout;

/// The digest of one disk's final content, as the handoff manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDigest {
    pub index: u32,
    /// The bytes from the start of the disk that the digest covers.
    pub bytes: u64,
    pub chunk_size: u32,
    pub digest: [u8; 32],
}

#[derive(Debug, Default)]
pub struct Verified {
    pub checked: Vec<String>,
    pub digests: Vec<DiskDigest>,
}

pub fn run(ledger: &Ledger, targets: &[Target]) -> Result<Verified> {
    let mut out = Verified {
        checked: check_file_systems(targets)?,
        ..Default::default()
    };
    for t in targets {
        out.digests
            .push(compare_with_ledger(ledger, t).code(ErrorCode::VerifyFailed)?);
    }
    Ok(out)
}

/// The digests of a job that only replicated its disks: the ledger's
/// hashes, which each disk was re-read and compared with when its sender
/// finished it.
pub(crate) fn digests_from_ledger(ledger: &Ledger, targets: &[Target]) -> Result<Vec<DiskDigest>> {
    targets
        .iter()
        .map(|t| {
            let rec = &t.record;
            let mut digester = DiskDigester::new(rec.size, rec.chunk_size);
            for w in windows(rec.chunks()) {
                let known = ledger
                    .chunk_window(t.index, w.clone())
                    .with_context(|| format!("reading the ledger of disk {}", t.index))?;
                for (i, h) in (w.start..).zip(known) {
                    let h = match h {
                        Some(h) => h,
                        None if rec.fresh => zero_hash(chunk_len(rec.size, rec.chunk_size, i)),
                        None => {
                            return Err(coded(
                                ErrorCode::VerifyFailed,
                                format!("chunk {i} of disk {} was never committed", t.index),
                            ))
                        }
                    };
                    digester.push(&h);
                }
            }
            Ok(DiskDigest {
                index: t.index,
                bytes: rec.size,
                chunk_size: rec.chunk_size,
                digest: digester.finish(),
            })
        })
        .collect()
}

/// Re-read the whole target; compare the source's extent with the ledger.
/// The digest covers the whole target (a grown disk's new space too).
/// Window by window: memory stays bounded whatever the disk's size.
fn compare_with_ledger(ledger: &Ledger, t: &Target) -> Result<DiskDigest> {
    let rec = &t.record;
    let disk = Disk::open_source(&t.path)
        .with_context(|| format!("opening disk {} ({})", t.index, t.path.display()))?;
    let total = layout::devices::disk_size(&t.path)
        .with_context(|| format!("reading the size of {}", t.path.display()))?
        .max(rec.size);
    let cs = u64::from(rec.chunk_size);
    let mut digester = DiskDigester::new(total, rec.chunk_size);
    for w in windows(chunk_count(total, rec.chunk_size)) {
        let hashes = hash_chunks(&disk, total, rec.chunk_size, w.clone())
            .with_context(|| format!("re-reading disk {} ({})", t.index, t.path.display()))?;
        let source = w.start.min(rec.chunks())..w.end.min(rec.chunks());
        let known = ledger
            .chunk_window(t.index, source.clone())
            .with_context(|| format!("reading the ledger of disk {}", t.index))?;
        for (i, k) in (source.start..).zip(&known) {
            let len = chunk_len(rec.size, rec.chunk_size, i);
            let read = hashes[(i - w.start) as usize];
            // The source's last chunk may be shorter than the target's.
            let actual = if len as u64 == cs || total == rec.size {
                read
            } else {
                let mut buf = vec![0u8; len];
                disk.read_at(&mut buf, i * cs)
                    .with_context(|| format!("reading chunk {i} of disk {}", t.index))?;
                *blake3::hash(&buf).as_bytes()
            };
            let expected = match k {
                Some(h) => *h,
                None if rec.fresh => zero_hash(len),
                None => {
                    return Err(coded(
                        ErrorCode::VerifyFailed,
                        format!("chunk {i} of disk {} was never committed", t.index),
                    ))
                }
            };
            if actual != expected {
                return Err(coded(
                    ErrorCode::VerifyFailed,
                    format!(
                        "disk {} ({}): chunk {i} at offset {} differs from the ledger (read {}, expected {})",
                        t.index,
                        t.path.display(),
                        i * cs,
                        &hex::encode(actual)[..16],
                        &hex::encode(expected)[..16],
                    ),
                ));
            }
        }
        for h in &hashes {
            digester.push(h);
        }
    }
    Ok(DiskDigest {
        index: t.index,
        bytes: total,
        chunk_size: rec.chunk_size,
        digest: digester.finish(),
    })
}

/// Check every file system of the disks read-only with its own tool.
pub(super) fn check_file_systems(targets: &[Target]) -> Result<Vec<String>> {
    let paths: Vec<_> = targets.iter().map(|t| t.path.clone()).collect();
    let described = layout::read_all(&paths).context("reading the repaired disks")?;
    let mut checked = Vec::new();
    for (di, (d, target)) in described.disks.iter().zip(&paths).enumerate() {
        let extents = layout::desc::plan(d, layout::devices::disk_size(target)?)?;
        let starts: Vec<u64> = extents.iter().map(|e| e.start).collect();
        let numbered: Vec<(usize, _)> = d.numbers().into_iter().zip(extents).collect();
        let attached = layout::devices::AttachedDisk::attach(target, &numbered, false)?;
        let mut failure = None;
        let mut nodes: Vec<(layout::FsType, std::path::PathBuf)> = d
            .partitions
            .iter()
            .zip(attached.partitions())
            .map(|(p, n)| (p.fs.kind.clone(), n.clone()))
            .collect();
        // The logical volumes of the disk's PVs, each through its loop.
        let mut loops = Vec::new();
        for v in &described.volumes {
            let Some(place) = v.place.filter(|p| p.disk == di) else {
                continue;
            };
            let lo = layout::lvm::LvNode::attach(target, starts[place.partition], v, true)?;
            nodes.push((v.fs.kind.clone(), lo.path().to_owned()));
            loops.push(lo);
        }
        for (fs, node) in &nodes {
            let check = match *fs {
                ref ext if ext.is_ext() => Cmd::new("e2fsck").arg("-fn").arg(node),
                layout::FsType::Btrfs => Cmd::new("btrfs").args(["check", "--readonly"]).arg(node),
                layout::FsType::Xfs => Cmd::new("xfs_repair").arg("-n").arg(node),
                layout::FsType::Vfat => Cmd::new("fsck.vfat").arg("-n").arg(node),
                ref ntfs if ntfs.is_ntfs() => Cmd::new("ntfsfix").arg("--no-action").arg(node),
                _ => continue,
            };
            let what = format!("{} of {} ({fs})", node.display(), target.display());
            match check
                .run()
                .with_context(|| format!("the file system {what} is not clean"))
                .code(ErrorCode::VerifyFailed)
            {
                Ok(_) => checked.push(what),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        for lo in loops {
            lo.close()?;
        }
        attached.close()?;
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(checked)
}
