//! Repair: the migrated OS made to boot on the cloud's hardware by the
//! recipe of its distribution, in a chroot of the mounted system; the
//! report kept beside the round's. The system is unmounted afterwards,
//! whatever the outcome.

use std::path::Path;

use anyhow::{Context, Result};

use super::mount::Mounted;
use super::resync::Scope;
use super::Target;
use crate::check::windows::WindowsReport;
use crate::job::errors::{coded, ErrorCode};
use crate::layout::{self, GrowReport};
use crate::repair::{self, BootMode, DeviceMap, Mode};

/// Returns the repair's report, as kept in `report_path`.
pub fn run(
    mounted: Mounted,
    targets: &[Target],
    report_path: &Path,
    choices: &super::RepairChoices,
    renamed: &[layout::flatten::Renamed],
) -> Result<repair::RepairReport> {
    let _umask = SystemUmask::set();
    let Mounted { tree, full, .. } = mounted;
    let names: Vec<Vec<String>> = targets.iter().map(|t| t.names.clone()).collect();
    let mut devices = DeviceMap::from_mount_tree(&tree, &names);
    devices.renamed = renamed.to_vec();
    restore_mount_points(&mut devices, &full);
    let mut options = repair::RepairOptions::new(tree.root(), devices, BootMode::Auto, Mode::Apply);
    options.recipes_dir = choices.recipes_dir.clone();
    options.network = choices.network.clone();
    options.hooks = choices.hooks.clone();
    let outcome = repair::run_with_options(&options);
    // The report is kept whether the repair succeeded or not, and the
    // system is unmounted either way.
    let json = serde_json::to_vec_pretty(&outcome.report).context("encoding the repair report");
    let written = json
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|j| crate::disk::write_atomic(report_path, j));
    let closed = tree.close().context("unmounting the repaired system");
    let report = outcome.into_result()?;
    written?;
    closed?;
    Ok(report)
}

/// A Windows system: its volume mounted read-write through ntfs-3g and
/// prepared through its registry (the SAN policy), never a Linux step.
/// Returns what may have been written and the report, as kept in
/// `report_path`.
pub fn windows(
    targets: &[Target],
    found: &WindowsReport,
    staging: &Path,
    report_path: &Path,
    grown: &[GrowReport],
) -> Result<(Scope, repair::RepairReport)> {
    let (Some(di), Some(number)) = (found.disk, found.partition) else {
        return Err(coded(
            ErrorCode::SystemNotFound,
            "the check found Windows, but not on which disk",
        ));
    };
    let paths: Vec<std::path::PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    // Read again: grow may have changed the partition.
    let full = layout::read_all(&paths).context("reading the received disks")?;
    let mut mounted = full.clone();
    let disk = full
        .disks
        .get(di)
        .with_context(|| format!("the Windows disk {di} vanished"))?;
    let index = disk
        .numbers()
        .iter()
        .position(|n| *n == number)
        .with_context(|| format!("partition {number} of disk {di} vanished"))?;
    mounted.disks[di].partitions[index].fs.mount = Some("/".to_owned());
    let scope = Scope::of(targets, &full, &mounted, grown)?;
    let size = layout::devices::disk_size(&paths[di])?;
    let extents = layout::desc::plan(disk, size)?;
    let numbered: Vec<(usize, _)> = disk.numbers().into_iter().zip(extents).collect();
    let reread = std::fs::metadata(&paths[di])
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let attached = layout::devices::AttachedDisk::attach(&paths[di], &numbered, reread)?;
    let node = attached.partitions()[index].clone();
    std::fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
    let prepared = (|| -> Result<repair::RepairReport> {
        let m = layout::ntfs::NtfsMount::mount(&node, staging, false)?;
        let outcome = repair::run_with_options(&repair::RepairOptions::new(
            m.dir(),
            DeviceMap::default(),
            BootMode::Auto,
            Mode::Apply,
        ));
        let json =
            serde_json::to_vec_pretty(&outcome.report).context("encoding the repair report")?;
        crate::disk::write_atomic(report_path, &json)?;
        let closed = m.close().context("unmounting the prepared Windows volume");
        let report = outcome.into_result()?;
        closed?;
        Ok(report)
    })();
    let closed = attached.close();
    let report = prepared?;
    closed?;
    Ok((scope, report))
}

/// Give the device map the mount points of the volumes left unmounted, as
/// the source's fstab has them.
fn restore_mount_points(devices: &mut DeviceMap, full: &layout::Layout) {
    for (disk, desc) in devices.disks.iter_mut().zip(&full.disks) {
        let described = desc
            .partitions
            .iter()
            .filter(|p| p.fs.kind != layout::FsType::None);
        for (v, p) in disk.volumes.iter_mut().zip(described) {
            if v.mountpoint.is_none() {
                v.mountpoint.clone_from(&p.fs.mount);
            }
        }
    }
    // Logical volumes, which follow the partitions of their disk, by uuid.
    for lv in full.volumes.iter().filter(|v| v.fs.mount.is_some()) {
        let hit = devices
            .disks
            .iter_mut()
            .flat_map(|d| d.volumes.iter_mut())
            .find(|v| {
                v.partition.is_none()
                    && v.mountpoint.is_none()
                    && v.uuid.is_some()
                    && v.uuid == lv.fs.uuid
            });
        if let Some(v) = hit {
            v.mountpoint.clone_from(&lv.fs.mount);
        }
    }
}

/// The umask of a server (022) while the migrated system is repaired, the
/// unit's private 077 restored after. What the system's own tools make in
/// it (grub-mkconfig, update-initramfs, dracut) and the directories the
/// repair adds get the modes they would get on the server. The umask is the
/// process's: meanwhile, the appliance's own files stay private because
/// each is created with an explicit mode (0600, 0700).
struct SystemUmask(nix::sys::stat::Mode);

impl SystemUmask {
    fn set() -> SystemUmask {
        use nix::sys::stat::{umask, Mode};
        SystemUmask(umask(Mode::from_bits_truncate(0o022)))
    }
}

impl Drop for SystemUmask {
    fn drop(&mut self) {
        nix::sys::stat::umask(self.0);
    }
}
