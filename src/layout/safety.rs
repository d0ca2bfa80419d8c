//! Refusals before anything is written: a target that is mounted, in use or
//! the appliance's own system disk.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::devices::{kernel_name, loops_backed_by, major, minor};
use crate::job::errors::{coded, ErrorCode};

/// Overrides for the refusals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Safety {
    /// Write even to a target that looks mounted or in use (never to the
    /// system disk).
    pub force: bool,
}

/// The kernel name of the disk holding `/` (`vda` for `/dev/vda1`).
pub fn system_disk() -> Result<Option<String>> {
    let dev = fs::metadata("/").context("reading /")?.dev();
    let link = format!("/sys/dev/block/{}:{}", major(dev), minor(dev));
    let Ok(path) = fs::canonicalize(&link) else {
        // / on a virtual file system (overlay, tmpfs): no disk to protect.
        return Ok(None);
    };
    let disk = if path.join("partition").exists() {
        path.parent().map(Path::to_path_buf).unwrap_or(path)
    } else {
        path
    };
    Ok(disk.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Refuse `target` when writing it would hurt something that uses it.
pub fn check_target(target: &Path, safety: Safety) -> Result<()> {
    let meta = fs::metadata(target).with_context(|| format!("reading {}", target.display()))?;
    if meta.file_type().is_block_device() {
        let name = kernel_name(target)?;
        let whole = whole_disk_name(&name);
        if system_disk()?.as_deref() == Some(whole.as_str()) {
            return Err(coded(
                ErrorCode::TargetInUse,
                format!("{} is the appliance's own system disk", target.display()),
            ));
        }
        if safety.force {
            return Ok(());
        }
        if let Some(what) = mounted_parts(&whole)? {
            return Err(coded(
                ErrorCode::TargetInUse,
                format!("{} is mounted ({what})", target.display()),
            ));
        }
        // The kernel's own test: an exclusive open fails while anything
        // (a mount, swap, a holder like LVM or a loop) uses the device.
        if let Err(e) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(target)
        {
            return Err(coded(
                ErrorCode::TargetInUse,
                format!("{} is in use ({e})", target.display()),
            ));
        }
        Ok(())
    } else {
        if safety.force {
            return Ok(());
        }
        let loops = loops_backed_by(target)?;
        if !loops.is_empty() {
            let names: Vec<String> = loops.iter().map(|p| p.display().to_string()).collect();
            return Err(coded(
                ErrorCode::TargetInUse,
                format!(
                    "{} is attached to {} (detach it, or pass --force)",
                    target.display(),
                    names.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

fn whole_disk_name(name: &str) -> String {
    let p = PathBuf::from(format!("/sys/class/block/{name}"));
    if p.join("partition").exists() {
        if let Ok(c) = fs::canonicalize(&p) {
            if let Some(parent) = c.parent().and_then(|d| d.file_name()) {
                return parent.to_string_lossy().into_owned();
            }
        }
    }
    name.to_owned()
}

/// The first mount or swap that uses disk `whole` or one of its partitions.
fn mounted_parts(whole: &str) -> Result<Option<String>> {
    let mut devs = vec![whole.to_owned()];
    for (n, _, _) in super::devices::kernel_partitions(whole)? {
        let p = super::devices::partition_node(Path::new(whole), n);
        devs.push(p.to_string_lossy().into_owned());
    }
    let mut numbers = Vec::new();
    for d in &devs {
        if let Ok(t) = fs::read_to_string(format!("/sys/class/block/{d}/dev")) {
            numbers.push((t.trim().to_owned(), d.clone()));
        }
    }
    for m in super::mount::mountinfo()? {
        if let Some((_, d)) = numbers.iter().find(|(n, _)| *n == m.devno) {
            return Ok(Some(format!("/dev/{d} on {}", m.mount_point.display())));
        }
    }
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(dev) = line.split_whitespace().next() {
            if devs.iter().any(|d| dev == format!("/dev/{d}")) {
                return Ok(Some(format!("{dev} is swap")));
            }
        }
    }
    Ok(None)
}
