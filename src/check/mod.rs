//! Inspection: what will fail, said before anything is moved or changed.
//!
//! One engine for three places: `ferry check` on a live source server
//! ([`live`]), on a mounted tree (`--root`, [`root`]), and on disks — the
//! appliance's received disks before the repair, or disk images
//! (`--disk`, [`disks`]). Per operating system found it reports the
//! distribution, kernels and their VirtIO/NVMe modules, the initramfs
//! generator, the boot loader, BIOS or UEFI, file systems, LVM, free space,
//! the network's static configuration, SELinux and the old platform's
//! agents; for Windows the registry's version, VirtIO drivers and SAN
//! policy. Each finding has a severity, a code of the error catalogue and
//! what to do: a blocker is what the repair would fail on, with the code
//! the appliance would give.
//!
//! Nothing is written: disks are mounted read-only without log replay,
//! NTFS through ntfs-3g read-only, hives read with the hivex tools.

pub mod fs;
pub mod linux;
pub mod windows;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::job::errors::{coded, ErrorCode};
use crate::layout::{self, FsType, Layout, MountOptions, MountTree};
pub use fs::FsInfo;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The migration would fail with this code: fix it first.
    Blocker,
    /// The migration goes on; something may not be as on the source.
    Warning,
    /// What the repair will change, for the operator's information.
    Info,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Blocker => "blocker",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One finding: its code's message and hint, and this occurrence's detail.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: ErrorCode,
    pub message: String,
    pub detail: String,
    pub hint: String,
}

impl Finding {
    pub fn new(severity: Severity, code: ErrorCode, detail: impl Into<String>) -> Finding {
        Finding {
            severity,
            code,
            message: code.message().to_owned(),
            detail: detail.into(),
            hint: code.hint().to_owned(),
        }
    }
}

/// What was checked.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The running server (`ferry check`).
    Live,
    /// A mounted tree (`ferry check --root DIR`).
    Root,
    /// Disks or disk images (`ferry check --disk`, the appliance).
    Disks,
}

/// An operating system found.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum System {
    Linux(Box<linux::LinuxReport>),
    Windows(Box<windows::WindowsReport>),
}

/// The whole report (`ferry check --json`, `/v1/job`'s `check`).
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub source: Source,
    /// The tree or the disks checked.
    pub checked: Vec<String>,
    pub systems: Vec<System>,
    pub filesystems: Vec<FsInfo>,
    /// How a live source's disks will be read consistently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    pub findings: Vec<Finding>,
    pub blockers: usize,
    pub warnings: usize,
}

impl CheckReport {
    fn new(source: Source, checked: Vec<String>) -> CheckReport {
        CheckReport {
            source,
            checked,
            systems: Vec::new(),
            filesystems: Vec::new(),
            consistency: None,
            findings: Vec::new(),
            blockers: 0,
            warnings: 0,
        }
    }

    fn finish(mut self) -> CheckReport {
        // Blockers first, in the order found: the first is what the job's
        // error names.
        self.findings.sort_by_key(|f| f.severity);
        self.blockers = self.count(Severity::Blocker);
        self.warnings = self.count(Severity::Warning);
        self
    }

    fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }

    pub fn blockers(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Blocker)
    }

    /// The Windows system found, if the disks hold one.
    pub fn windows(&self) -> Option<&windows::WindowsReport> {
        self.systems.iter().find_map(|s| match s {
            System::Windows(w) => Some(&**w),
            System::Linux(_) => None,
        })
    }

    /// An error with the first blocker's code (what the repair would have
    /// failed with) naming every blocker; Ok without one.
    pub(crate) fn blocker_error(&self) -> Result<()> {
        let mut blockers = self.blockers();
        let Some(first) = blockers.next() else {
            return Ok(());
        };
        let mut detail = format!("the check before the repair found: {}", first.detail);
        for b in blockers {
            detail.push_str(&format!("; and {}: {}", b.code, b.detail));
        }
        Err(coded(first.code, detail))
    }

    /// The report for a person.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "checked ({}): {}\n",
            match self.source {
                Source::Live => "the running server",
                Source::Root => "a mounted tree",
                Source::Disks => "disks",
            },
            self.checked.join(", ")
        ));
        for s in &self.systems {
            match s {
                System::Linux(l) => out.push_str(&l.render()),
                System::Windows(w) => out.push_str(&w.render()),
            }
        }
        if !self.filesystems.is_empty() {
            out.push_str("file systems:\n");
            for f in &self.filesystems {
                out.push_str(&format!(
                    "  {} {} on {}{}{}: {}{}\n",
                    f.mount.as_deref().unwrap_or("(not mounted)"),
                    f.fstype,
                    f.device,
                    f.uuid
                        .as_deref()
                        .map(|u| format!(" UUID {u}"))
                        .unwrap_or_default(),
                    f.format
                        .as_deref()
                        .map(|v| format!(", {v}"))
                        .unwrap_or_default(),
                    if f.mountable {
                        "the appliance mounts it"
                    } else {
                        "the appliance does not mount it"
                    },
                    f.checker
                        .as_deref()
                        .map(|c| format!(", checks it with {c}"))
                        .unwrap_or_default(),
                ));
            }
        }
        if let Some(c) = &self.consistency {
            out.push_str(&format!("consistency: {c}\n"));
        }
        if !self.findings.is_empty() {
            out.push_str("findings:\n");
        }
        for f in &self.findings {
            out.push_str(&format!(
                "  {} {}: {}: {}\n    what to do: {}\n",
                f.severity, f.code, f.message, f.detail, f.hint
            ));
        }
        out.push_str(&format!(
            "result: {} blocker(s), {} warning(s){}\n",
            self.blockers,
            self.warnings,
            if self.blockers == 0 {
                ": nothing stops the migration"
            } else {
                ": fix the blockers before migrating"
            }
        ));
        out
    }
}

/// What the repair cannot use as a system file system although the kernel
/// may mount it: nothing today (ext2/3/4, XFS and btrfs with its
/// subvolumes are all mounted and repaired).
fn repair_problem(_fstype: &str) -> Option<String> {
    None
}

fn fs_info(
    device: String,
    mount: Option<String>,
    fstype: String,
    uuid: Option<String>,
    sb: Option<fs::Superblock>,
) -> FsInfo {
    FsInfo {
        mountable: fs::kernel_mounts(&fstype) && sb.as_ref().is_none_or(|s| s.problem.is_none()),
        checker: fs::checker(&fstype),
        format: sb.as_ref().map(|s| s.format.clone()),
        problem: sb
            .and_then(|s| s.problem)
            .or_else(|| repair_problem(&fstype)),
        uuid,
        mount,
        device,
        fstype,
    }
}

/// A file system the appliance cannot mount or the repair cannot use: a
/// blocker when it is one of the system's own, a warning for data (copied
/// block for block, not mounted).
fn fs_findings(r: &mut CheckReport) {
    for f in &r.filesystems {
        let Some(problem) = &f.problem else {
            continue;
        };
        let system = f
            .mount
            .as_deref()
            .is_some_and(|m| linux::SYSTEM_MOUNTS.contains(&m));
        let detail = format!(
            "{} on {} ({}): {problem}",
            f.mount.as_deref().unwrap_or("unmounted"),
            f.device,
            f.fstype
        );
        r.findings.push(Finding::new(
            if system {
                Severity::Blocker
            } else {
                Severity::Warning
            },
            ErrorCode::FsUnsupported,
            detail,
        ));
    }
}

/// The running server: its root, its mounts, how its disks will be read.
pub fn live() -> Result<CheckReport> {
    let mut r = inspect_tree(Path::new("/"), Source::Live)?;
    fs_findings(&mut r);
    r.consistency = Some(
        "none: block mode reads each disk while the server runs (no snapshot is taken)".to_owned(),
    );
    r.findings.push(Finding::new(
        Severity::Warning,
        ErrorCode::LiveConsistency,
        "the disks are read live; files written during the transfer may differ on the target",
    ));
    Ok(r.finish())
}

/// A tree mounted at `dir` (a Linux root with its mounts below it, or a
/// Windows system volume).
pub fn root(dir: &Path) -> Result<CheckReport> {
    if !dir.is_dir() {
        return Err(coded(
            ErrorCode::Usage,
            format!("--root {} is not a directory", dir.display()),
        ));
    }
    let mut r = inspect_tree(dir, Source::Root)?;
    fs_findings(&mut r);
    Ok(r.finish())
}

fn inspect_tree(dir: &Path, source: Source) -> Result<CheckReport> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let mut r = CheckReport::new(source, vec![dir.display().to_string()]);
    let mounts = layout::mount::mountinfo()?;
    // The file systems mounted at the tree and below it, the last mount of
    // a point winning as the kernel's does.
    let mut seen: Vec<(String, layout::mount::MountInfo)> = Vec::new();
    for m in mounts {
        let Some(inside) = m.inside(&dir) else {
            continue;
        };
        if !m.source.starts_with("/dev/") {
            continue;
        }
        seen.retain(|(p, _)| *p != inside);
        seen.push((inside, m));
    }
    for (mp, m) in &seen {
        let fstype = if m.fstype.starts_with("fuseblk") {
            "ntfs".to_owned()
        } else {
            m.fstype.clone()
        };
        let sb = fs::superblock(Path::new(&m.source), 0, &fstype);
        r.filesystems.push(fs_info(
            m.source.clone(),
            Some(mp.clone()),
            fstype,
            None,
            sb,
        ));
    }
    if crate::repair::windows::is_windows(&dir) {
        windows::inspect(&dir, None, &mut r)?;
    } else {
        linux::inspect(&dir, None, &mut r)?;
    }
    Ok(r)
}

/// Disks (image files or block devices; the appliance's received disks,
/// disk 0 first): partitions and file systems from the disks, the system
/// mounted read-only under `staging` and inspected, then unmounted.
/// `names` are the names the source knew each disk by (`/dev/sda`).
pub fn disks(paths: &[PathBuf], names: &[Vec<String>], staging: &Path) -> Result<CheckReport> {
    let mut r = CheckReport::new(
        Source::Disks,
        paths.iter().map(|p| p.display().to_string()).collect(),
    );
    let described = match layout::read_all(paths) {
        Ok(l) => l,
        Err(e) => {
            r.findings.push(Finding::new(
                Severity::Blocker,
                ErrorCode::SystemNotFound,
                format!("{e:#}"),
            ));
            return Ok(r.finish());
        }
    };
    let special = file_systems(&described, paths, &mut r)?;
    if let Some(found) = windows_on(&described, paths, &special.ntfs, staging, &mut r)? {
        tracing::info!(volume = %found, "a Windows system disk");
        return Ok(r.finish());
    }
    let mut full = described.clone();
    let found = layout::tree::fill_mount_points_named(&mut full, paths, names);
    if let Err(e) = found {
        no_system_found(&e, &special.lvm, &mut r);
        return Ok(r.finish());
    }
    mount_points(&full, &mut r);
    let mut system = full.clone();
    // What the appliance cannot mount stays unmounted (it is a finding).
    let problems: Vec<String> = r
        .filesystems
        .iter()
        .filter(|f| f.problem.is_some())
        .filter_map(|f| f.mount.clone())
        .chain(
            full.volumes
                .iter()
                .filter(|v| v.refused.is_some())
                .filter_map(|v| v.fs.mount.clone()),
        )
        .collect();
    system.keep_mounts(|m| linux::SYSTEM_MOUNTS.contains(&m) && !problems.iter().any(|p| p == m));
    fs_findings(&mut r);
    let tree = MountTree::mount(&system, paths, staging, MountOptions { read_only: true })
        .context("mounting the received system read-only")?;
    for (_, why) in tree.unmounted() {
        r.findings.push(Finding::new(
            Severity::Warning,
            ErrorCode::MountPointMissing,
            why.clone(),
        ));
    }
    let esp = tree.fat("/boot/efi").ok();
    let inspected = linux::inspect(tree.root(), esp.as_ref(), &mut r);
    let closed = tree.close().context("unmounting the checked system");
    inspected?;
    closed?;
    Ok(r.finish())
}

/// Every file system of the disks, from its superblock, into the report:
/// each partition's, then each logical volume's (reached by the appliance,
/// or not).
fn file_systems(described: &Layout, paths: &[PathBuf], r: &mut CheckReport) -> Result<Special> {
    let mut ntfs = Vec::new();
    let mut lvm = Vec::new();
    for (di, (d, path)) in described.disks.iter().zip(paths).enumerate() {
        let size = layout::devices::disk_size(path)?;
        let extents = layout::desc::plan(d, size)
            .with_context(|| format!("placing the partitions of {}", path.display()))?;
        for ((p, number), e) in d.partitions.iter().zip(d.numbers()).zip(extents) {
            let fstype = p.fs.kind.as_str().to_owned();
            if p.fs.kind == FsType::None || fstype == "swap" {
                continue;
            }
            let device = format!("disk {di} partition {number}");
            if p.fs.kind.is_ntfs() {
                ntfs.push((di, number));
            }
            if fstype == "LVM2_member" {
                lvm.push(device.clone());
            }
            let sb = fs::superblock(path, e.start, &fstype);
            r.filesystems
                .push(fs_info(device, None, fstype, p.fs.uuid.clone(), sb));
        }
    }
    for v in &described.volumes {
        let device = format!("logical volume {}", v.display());
        if v.fs.kind == FsType::None || v.fs.kind == FsType::Swap {
            continue;
        }
        let sb = match v.place {
            Some(p) => {
                let d = &described.disks[p.disk];
                let extents = layout::desc::plan(d, layout::devices::disk_size(&paths[p.disk])?)?;
                fs::superblock(
                    &paths[p.disk],
                    extents[p.partition].start + p.offset,
                    v.fs.kind.as_str(),
                )
            }
            None => None,
        };
        r.filesystems.push(fs_info(
            device,
            None,
            v.fs.kind.as_str().to_owned(),
            v.fs.uuid.clone(),
            sb,
        ));
    }
    Ok(Special { ntfs, lvm })
}

/// Partitions that [`file_systems`] found and the check looks at further.
struct Special {
    /// NTFS partitions, as (disk, partition number): where Windows may be.
    ntfs: Vec<(usize, usize)>,
    /// The devices that are LVM physical volumes.
    lvm: Vec<String>,
}

/// No root file system was found (`e`): say why as precisely as the file
/// systems allow — one the appliance cannot mount, a root on LVM it
/// cannot reach, or none at all.
fn no_system_found(e: &anyhow::Error, lvm: &[String], r: &mut CheckReport) {
    let unmountable: Vec<String> = r
        .filesystems
        .iter()
        .filter(|f| f.problem.is_some())
        .map(|f| {
            format!(
                "{} ({}): {}",
                f.device,
                f.fstype,
                f.problem.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if !unmountable.is_empty() {
        // The root is likely what the appliance cannot mount.
        for detail in unmountable {
            r.findings.push(Finding::new(
                Severity::Blocker,
                ErrorCode::FsUnsupported,
                detail,
            ));
        }
    } else if !lvm.is_empty() {
        r.findings.push(Finding::new(
            Severity::Blocker,
            ErrorCode::LvmUnsupported,
            format!(
                "no plain partition holds the root file system; LVM physical volumes on {}",
                lvm.join(", ")
            ),
        ));
    } else {
        r.findings.push(Finding::new(
            Severity::Blocker,
            ErrorCode::SystemNotFound,
            format!("{e:#}"),
        ));
    }
}

/// The fstab's mount points onto the report's file systems, and a finding
/// for each logical volume the appliance cannot reach: a blocker when the
/// system lives on it, a warning for data (copied block for block).
fn mount_points(full: &Layout, r: &mut CheckReport) {
    for (di, d) in full.disks.iter().enumerate() {
        for (p, number) in d.partitions.iter().zip(d.numbers()) {
            let device = format!("disk {di} partition {number}");
            if let Some(f) = r.filesystems.iter_mut().find(|f| f.device == device) {
                f.mount.clone_from(&p.fs.mount);
            }
        }
    }
    for v in &full.volumes {
        let device = format!("logical volume {}", v.display());
        if let Some(f) = r.filesystems.iter_mut().find(|f| f.device == device) {
            f.mount.clone_from(&v.fs.mount);
        }
        let Some(why) = &v.refused else { continue };
        let mount = v.fs.mount.as_deref();
        let system = mount.is_some_and(|m| linux::SYSTEM_MOUNTS.contains(&m));
        r.findings.push(Finding::new(
            if system {
                Severity::Blocker
            } else {
                Severity::Warning
            },
            ErrorCode::LvmUnsupported,
            format!(
                "logical volume {}{}: {why}",
                v.display(),
                mount.map(|m| format!(" ({m})")).unwrap_or_default()
            ),
        ));
    }
}

/// Look for Windows on the NTFS partitions: each mounted read-only through
/// ntfs-3g, inspected when it holds the SYSTEM hive. Returns the volume.
fn windows_on(
    described: &layout::Layout,
    paths: &[PathBuf],
    ntfs: &[(usize, usize)],
    staging: &Path,
    r: &mut CheckReport,
) -> Result<Option<String>> {
    for &(di, number) in ntfs {
        let d = &described.disks[di];
        let path = &paths[di];
        let extents = layout::desc::plan(d, layout::devices::disk_size(path)?)?;
        let numbered: Vec<(usize, _)> = d.numbers().into_iter().zip(extents).collect();
        let reread = std::fs::metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
        let attached = layout::devices::AttachedDisk::attach(path, &numbered, reread)?;
        let index = d
            .numbers()
            .iter()
            .position(|n| *n == number)
            .context("an NTFS partition vanished from its disk")?;
        let node = attached.partitions()[index].clone();
        std::fs::create_dir_all(staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        let volume = format!("disk {di} partition {number}");
        let found = (|| -> Result<bool> {
            let m = layout::ntfs::NtfsMount::mount(&node, staging, true)?;
            let res = if crate::repair::windows::is_windows(m.dir()) {
                windows::inspect(m.dir(), Some((di, number)), r).map(|()| true)
            } else {
                Ok(false)
            };
            m.close()?;
            res
        })();
        let closed = attached.close();
        let found = found?;
        closed?;
        if found {
            if let Some(f) = r.filesystems.iter_mut().find(|f| f.device == volume) {
                f.mount = Some("C:".to_owned());
            }
            return Ok(Some(volume));
        }
    }
    Ok(None)
}
