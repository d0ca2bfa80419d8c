//! The guest's view of the file systems, made in its own mount namespace:
//! the migrated root with its own mounts (each `nodev`, `nosuid`), a fresh
//! /proc, a read-only /sys, a private /dev and /run, and nothing else.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use crate::layout::dev_nodes::{populate_dev, DevNode};

const NONE: Option<&str> = None;

/// Build the view over `root` and pivot into it: on return `/` is the
/// migrated root and the appliance's tree is gone from this namespace.
pub(crate) fn enter(root: &Path, devices: &[DevNode]) -> Result<()> {
    // Nothing done here travels back to the appliance's namespace.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .context("making the guest's mounts private")?;
    mount(
        Some(root),
        root,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .with_context(|| format!("binding {} onto itself", root.display()))?;
    seal_device_nodes(root)?;
    let plain = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_at(root, "proc", "proc", plain, None)?;
    guard_proc(&root.join("proc"))?;
    mount_at(root, "sys", "sysfs", plain | MsFlags::MS_RDONLY, None)?;
    mount_at(
        root,
        "run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=64m"),
    )?;
    mount_at(
        root,
        "dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=8m"),
    )?;
    let dev = root.join("dev");
    populate_dev(&dev, devices).with_context(|| format!("populating {}", dev.display()))?;
    mount_at(
        root,
        "dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount_at(root, "dev/shm", "tmpfs", plain, Some("mode=1777,size=64m"))?;
    nix::unistd::chdir(root).with_context(|| format!("entering {}", root.display()))?;
    // The old root goes on top of the new one and is detached at once.
    nix::unistd::pivot_root(".", ".").context("pivot_root into the migrated root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the appliance's tree")?;
    nix::unistd::chdir("/").context("entering the new /")?;
    Ok(())
}

/// The parts of /proc that reach the whole kernel, not this namespace: the
/// sysctls (`kernel.modprobe` and `kernel.core_pattern` name programs the
/// kernel runs as the appliance's root), sysrq, interrupts and buses are
/// read-only; the kernel's memory, keys and timers are hidden. A fresh
/// /proc has none of the service's protections, so these are made here.
fn guard_proc(proc: &Path) -> Result<()> {
    for rel in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let p = proc.join(rel);
        if fs::symlink_metadata(&p).is_err() {
            continue;
        }
        mount(Some(&p), &p, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE)
            .with_context(|| format!("binding {}", p.display()))?;
        mount(
            NONE,
            &p,
            NONE,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            NONE,
        )
        .with_context(|| format!("making {} read-only", p.display()))?;
    }
    for rel in [
        "kcore",
        "keys",
        "key-users",
        "timer_list",
        "sched_debug",
        "kallsyms",
        "acpi",
        "scsi",
    ] {
        let p = proc.join(rel);
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0"),
            )
        } else {
            mount(Some("/dev/null"), &p, NONE, MsFlags::MS_BIND, NONE)
        }
        .with_context(|| format!("hiding {}", p.display()))?;
    }
    Ok(())
}

/// Every mount of the migrated system (the root and what is mounted below
/// it) is remounted `nodev` and `nosuid` in this namespace: a device node
/// stored on the migrated disks (one of the appliance's own disks, say)
/// cannot be opened, only the nodes of the private /dev made afterwards.
fn seal_device_nodes(root: &Path) -> Result<()> {
    let mut points: Vec<_> = crate::layout::mount::mountinfo()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort();
    points.dedup();
    for p in points {
        let kept = statvfs(&p).with_context(|| format!("reading the flags of {}", p.display()))?;
        let mut flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        let f = kept.flags();
        for (have, keep) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(have) {
                flags |= keep;
            }
        }
        mount(NONE, &p, NONE, flags, NONE)
            .with_context(|| format!("remounting {} nodev,nosuid", p.display()))?;
    }
    Ok(())
}

fn mount_at(
    root: &Path,
    rel: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let target = root.join(rel);
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{} exists and is not a directory", target.display()),
        Err(_) => fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(&target)
            .with_context(|| format!("creating {}", target.display()))?,
    }
    mount(Some(fstype), &target, Some(fstype), flags, data)
        .with_context(|| format!("mounting {fstype} on {}", target.display()))
}
