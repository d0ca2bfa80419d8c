//! The staging directory's lock, and the cleaning of what a killed run left
//! under it: processes in its chroot, mounts, active volumes, loop devices.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::job::errors::{coded, ErrorCode};
use crate::layout::devices::{detach, loops_backed_by};
use crate::layout::lvm::activate;
use crate::layout::mount::unmount_below;

/// Take the lock of staging dir `root` (canonical), or say who holds it.
pub(super) fn lock_staging(root: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let dir = Path::new("/run/ferry");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let hash = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
    let path = dir.join(format!("mount-{}.lock", &hash[..16]));
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            coded(
                ErrorCode::TargetInUse,
                format!(
                    "{} is mounted by another running ferry process (lock {})",
                    root.display(),
                    path.display()
                ),
            )
        } else {
            anyhow::anyhow!("locking {}: {e}", path.display())
        }
    })
}

/// What a killed run left: mounts under the staging dir, loop devices over
/// the image files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Processes a killed run left running in a chroot of the staging dir
    /// (an orphaned update-initramfs, say): killed before the unmount.
    pub killed: Vec<i32>,
    pub unmounted: Vec<PathBuf>,
    /// Device-mapper devices of a guest's volumes left active.
    pub deactivated: Vec<String>,
    pub detached: Vec<PathBuf>,
}

/// Remove what an earlier, interrupted run left for the same staging dir
/// and images, so that a fresh run never stacks mounts or leaks loops.
/// Refuses while a live process holds the staging dir.
pub(crate) fn clean_leftovers(staging: &Path, targets: &[PathBuf]) -> Result<Leftovers> {
    if staging.exists() {
        let staging = fs::canonicalize(staging)
            .with_context(|| format!("resolving {}", staging.display()))?;
        let _lock = lock_staging(&staging)?;
        return clean_leftovers_locked(&staging, targets);
    }
    clean_leftovers_locked(staging, targets)
}

pub(super) fn clean_leftovers_locked(staging: &Path, targets: &[PathBuf]) -> Result<Leftovers> {
    let mut l = Leftovers::default();
    if staging.exists() {
        l.killed = kill_chrooted(staging)?;
        l.unmounted = unmount_below(staging)?;
    }
    let dm = activate::have_device_mapper();
    for t in targets {
        let is_file = fs::metadata(t)
            .with_context(|| format!("reading {}", t.display()))?
            .is_file();
        if !is_file {
            if dm {
                let node =
                    fs::canonicalize(t).with_context(|| format!("resolving {}", t.display()))?;
                l.deactivated.extend(activate::remove_holders(&node)?);
            }
            continue;
        }
        for lo in loops_backed_by(t)? {
            if dm {
                l.deactivated.extend(activate::remove_holders(&lo)?);
            }
            detach(&lo).with_context(|| {
                format!("detaching leftover {} over {}", lo.display(), t.display())
            })?;
            l.detached.push(lo);
        }
    }
    if l != Leftovers::default() {
        tracing::warn!(killed = ?l.killed, unmounted = ?l.unmounted, deactivated = ?l.deactivated, detached = ?l.detached, "cleaned up after an interrupted run");
    }
    Ok(l)
}

/// Kill every process whose root directory is `staging` or below it (the
/// tools of a chroot session whose ferry died), and wait until they are
/// gone, so that the leftover mounts can be unmounted and nothing writes to
/// them afterwards.
fn kill_chrooted(staging: &Path) -> Result<Vec<i32>> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let in_chroot = || -> Result<Vec<i32>> {
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").context("listing /proc")?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // Processes that exit meanwhile, or kernel threads, have no root.
            if fs::read_link(e.path().join("root")).is_ok_and(|r| r.starts_with(staging)) {
                pids.push(pid);
            }
        }
        Ok(pids)
    };
    let found = in_chroot()?;
    for &pid in &found {
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => bail!(
                "killing process {pid}, left in a chroot of {}: {e}",
                staging.display()
            ),
        }
    }
    for _ in 0..200 {
        if in_chroot()?.is_empty() {
            return Ok(found);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!(
        "processes left in a chroot of {} do not exit after SIGKILL: {:?}",
        staging.display(),
        in_chroot()?
    )
}
