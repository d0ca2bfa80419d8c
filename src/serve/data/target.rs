//! The target of a disk in block mode: found from the ledger's record
//! (checked against what the sender announces now) or created — a sparse
//! image in embedded mode, sized only if its file system has room, or the
//! configured device — and its record written before any chunk.

use anyhow::{Context, Result};

use crate::disk::{chunk_count, Disk};
use crate::job::errors::{coded, Code, ErrorCode};
use crate::job::ledger::DiskRecord;
use crate::serve::Appliance;

/// Find or create the target of `disk` and its ledger record.
pub(crate) fn open_target(
    app: &Appliance,
    disk: u32,
    size: u64,
    chunk_size: u32,
) -> Result<(Disk, DiskRecord)> {
    let cfg = &app.config;
    let existing = app.ledger.disk(disk).code(ErrorCode::LedgerFailed)?;
    if let Some(rec) = &existing {
        check_record(app, disk, rec, size, chunk_size)?;
    }
    if chunk_count(size, chunk_size) > crate::serve::records::MAX_CHUNKS {
        return Err(coded(
            ErrorCode::BadChunkSize,
            format!(
                "disk {disk} of {size} bytes in chunks of {chunk_size} bytes would have more than {} chunks; send with a larger --chunk-size",
                crate::serve::records::MAX_CHUNKS
            ),
        ));
    }
    if cfg.embedded() {
        return open_embedded(app, disk, size, chunk_size, existing);
    }
    let path = cfg.target_for(disk).ok_or_else(|| {
        coded(
            ErrorCode::DiskNotConfigured,
            format!("disk {disk} is not mapped in the config"),
        )
    })?;
    let d = Disk::open_target(path)?;
    if d.size() < size {
        return Err(coded(
            ErrorCode::TargetTooSmall,
            format!(
                "disk {disk}: target {} has {} bytes, the source {size}",
                path.display(),
                d.size()
            ),
        ));
    }
    let rec = match existing {
        Some(rec) => rec,
        None => {
            // What the device held before is unknown: zero chunks must be written.
            let rec = DiskRecord {
                size,
                chunk_size,
                fresh: false,
                target: path.display().to_string(),
            };
            app.ledger
                .put_disk(disk, &rec)
                .code(ErrorCode::LedgerFailed)?;
            rec
        }
    };
    Ok((d, rec))
}

/// A record of an earlier session: accepted at start, and for the same
/// size and chunk size as the sender announces now.
fn check_record(
    app: &Appliance,
    disk: u32,
    rec: &DiskRecord,
    size: u64,
    chunk_size: u32,
) -> Result<()> {
    let cfg = &app.config;
    crate::serve::records::check(cfg, disk, rec).map_err(|why| {
        coded(
            ErrorCode::LedgerFailed,
            crate::serve::refused_record(cfg, disk, &why),
        )
    })?;
    if rec.size != size {
        return Err(coded(
            ErrorCode::DiskSizeChanged,
            format!(
                "disk {disk} was {} bytes, the sender now announces {size}",
                rec.size
            ),
        ));
    }
    if rec.chunk_size != chunk_size {
        return Err(coded(
            ErrorCode::BadChunkSize,
            format!(
                "this job writes disk {disk} in chunks of {} bytes; send with --chunk-size {}",
                rec.chunk_size, rec.chunk_size
            ),
        ));
    }
    Ok(())
}

/// An embedded disk: its image beneath the state directory, kept when
/// the record and the image are both there, created anew otherwise.
fn open_embedded(
    app: &Appliance,
    disk: u32,
    size: u64,
    chunk_size: u32,
    existing: Option<DiskRecord>,
) -> Result<(Disk, DiskRecord)> {
    let cfg = &app.config;
    if disk >= cfg.max_embedded_disks {
        return Err(coded(
            ErrorCode::DiskNotConfigured,
            format!(
                "disk {disk}: embedded mode takes disks 0 to {}",
                cfg.max_embedded_disks - 1
            ),
        ));
    }
    if size > cfg.max_embedded_disk_bytes {
        return Err(coded(
            ErrorCode::TargetTooSmall,
            format!(
                "disk {disk} of {size} bytes exceeds the embedded limit of {} bytes",
                cfg.max_embedded_disk_bytes
            ),
        ));
    }
    let path = cfg.embedded_disk_path(disk);
    if let Some(rec) = existing {
        if path.exists() {
            return Ok((Disk::open_target(&path)?, rec));
        }
        tracing::warn!(disk, path = %path.display(), "target image is gone; starting the disk over");
    }
    // Nothing of this disk is committed (or its image is gone): the image
    // is created anew, so every chunk not yet written reads as zeros.
    // It must fit beside what the job's other images still need, or the
    // job would fail half-way: refused now, before the disk is recorded.
    // The check, the creation and the record are one step: two disks
    // opened at once must not both count on the same free space, and the
    // other disks are found by their records.
    let _one_at_a_time = EMBEDDED_SPACE.lock().unwrap_or_else(|p| p.into_inner());
    let others = still_needed_by_others(app, disk)?;
    room_for_image(&path, disk, size, &others)?;
    let d = Disk::create_sparse(&path, size).inspect_err(|_| {
        let _ = std::fs::remove_file(&path);
    })?;
    let rec = DiskRecord {
        size,
        chunk_size,
        fresh: true,
        target: path.display().to_string(),
    };
    app.ledger
        .put_disk(disk, &rec)
        .code(ErrorCode::LedgerFailed)?;
    Ok((d, rec))
}

/// Held while an embedded image is checked for room and created.
static EMBEDDED_SPACE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the job's other embedded images still need of the state
/// directory's file system: each image is sparse, and takes the rest of
/// its size as its chunks arrive. By disk index, only those that need
/// anything.
fn still_needed_by_others(app: &Appliance, disk: u32) -> Result<Vec<(u32, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for (index, _) in app.ledger.disks().code(ErrorCode::LedgerFailed)? {
        if index == disk {
            continue;
        }
        let path = app.config.embedded_disk_path(index);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
        };
        // st_blocks counts 512-byte units whatever the file system's block size.
        let needed = meta.len().saturating_sub(meta.blocks().saturating_mul(512));
        if needed > 0 {
            out.push((index, needed));
        }
    }
    Ok(out)
}

/// An embedded disk's image lives on the state directory's file system:
/// refuse a disk larger than its free space less what the job's `others`
/// (disk index, bytes) still need, with the numbers.
fn room_for_image(
    path: &std::path::Path,
    disk: u32,
    size: u64,
    others: &[(u32, u64)],
) -> Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let reserved: u64 = others.iter().map(|(_, n)| n).sum();
    if size.saturating_add(reserved) <= free {
        return Ok(());
    }
    let human = crate::disk::human_bytes;
    let besides = if others.is_empty() {
        String::new()
    } else {
        let each: Vec<String> = others
            .iter()
            .map(|(i, n)| format!("disk {i} {} ({n} bytes)", human(*n)))
            .collect();
        format!(
            ", and the job's other disks still need {} ({reserved} bytes) of it: {}",
            human(reserved),
            each.join(", ")
        )
    };
    Err(coded(
        ErrorCode::TargetTooSmall,
        format!(
            "disk {disk} of {} ({size} bytes) does not fit in {}: its file system has {} ({free} bytes) free{besides}; give the state directory a larger file system, or configure a target device for disk {disk}",
            human(size),
            dir.display(),
            human(free)
        ),
    ))
}
