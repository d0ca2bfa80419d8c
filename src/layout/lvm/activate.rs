//! Where the kernel has device-mapper (a cloud instance), the guest's
//! volume groups are activated with a private LVM configuration: a
//! `LVM_SYSTEM_DIR` whose filter accepts only the target's PVs, without
//! udev, caches, backups or a devices file, so the appliance's own LVM
//! never scans, caches or clashes with them (two VGs of the same name; a
//! RHEL 9 `system.devices` in the guest), and each VG is named by its UUID.
//! Deactivated after, in reverse order, by [`Activation`]. Where the
//! kernel has no device-mapper (the machines ferry is built on), the loop
//! devices of [`super::LvNode`] reach the volumes instead.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cmd::Cmd;
use crate::layout::desc::LogicalVolume;

/// Whether the running kernel has device-mapper.
pub(crate) fn have_device_mapper() -> bool {
    Path::new("/dev/mapper/control").exists()
        || std::fs::read_to_string("/proc/misc")
            .is_ok_and(|t| t.lines().any(|l| l.ends_with(" device-mapper")))
}

/// The commands that activate and deactivate the guest's VGs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `LVM_SYSTEM_DIR` for every command: it holds `lvm.conf`.
    pub system_dir: PathBuf,
    /// The text of `lvm.conf` there.
    pub config: String,
    pub activate: Vec<Vec<String>>,
    pub deactivate: Vec<Vec<String>>,
}

/// A configuration that sees only `pvs` (the nodes of the target's PV
/// partitions) and leaves no trace on the appliance: its locks in
/// `system_dir`, no hints, caches or backups under /run or /etc.
pub fn config(system_dir: &Path, pvs: &[PathBuf]) -> String {
    let accept: Vec<String> = pvs
        .iter()
        .map(|p| format!("\"a|^{}$|\"", regex_escape(&p.to_string_lossy())))
        .collect();
    let filter = format!("[ {}, \"r|.*|\" ]", accept.join(", "));
    let locks = config_string(&system_dir.join("lock").to_string_lossy());
    format!(
        "devices {{\n\tfilter = {filter}\n\tglobal_filter = {filter}\n\tobtain_device_list_from_udev = 0\n\tuse_devicesfile = 0\n\thints = \"none\"\n\tscan = [ \"/dev\" ]\n}}\n\
         activation {{\n\tudev_sync = 0\n\tudev_rules = 0\n\tmonitoring = 0\n\tverify_udev_operations = 1\n}}\n\
         backup {{\n\tbackup = 0\n\tarchive = 0\n}}\n\
         global {{\n\tuse_lvmpolld = 0\n\tevent_activation = 0\n\tlocking_dir = {locks}\n}}\n"
    )
}

/// A string of LVM's configuration syntax.
fn config_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The LVM configuration's filters are regular expressions between `|`.
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()[]{}^$|".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Activate each VG (by its UUID: a VG of the same name elsewhere is never
/// meant) and deactivate them after, the last activated first.
pub fn plan(system_dir: &Path, pvs: &[PathBuf], vg_ids: &[String]) -> Plan {
    let cmd = |on: &str, id: &str| -> Vec<String> {
        [
            "vgchange",
            "--activate",
            on,
            "--devicesfile",
            "",
            "--select",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([format!("vg_uuid={id}")])
        .collect()
    };
    Plan {
        system_dir: system_dir.to_owned(),
        config: config(system_dir, pvs),
        activate: vg_ids.iter().map(|id| cmd("y", id)).collect(),
        deactivate: vg_ids.iter().rev().map(|id| cmd("n", id)).collect(),
    }
}

/// How the volumes of a mounted tree were reached, for the round's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `device-mapper` (the guest's VGs activated under a private
    /// configuration) or `loop` (each linear LV through a loop device).
    pub via: String,
    /// The volumes reached, `vg/lv`.
    pub volumes: Vec<String>,
    /// Why device-mapper was not used on a kernel that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// An LVM id as the metadata writes it (`aBcD12-...`): LVM's id alphabet
/// and dashes, nothing a `--select` expression could read otherwise.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-!#".contains(&c))
}

/// Why the volumes of `vgs` cannot be activated here, if they cannot:
/// an id LVM would not accept, or a device-mapper device of one of their
/// names already present (a volume group of the same name active on the
/// appliance, which must not be touched).
pub(crate) fn obstacle(vols: &[&LogicalVolume]) -> Option<String> {
    obstacle_in(vols, &|p| std::fs::symlink_metadata(p).is_ok())
}

fn obstacle_in(vols: &[&LogicalVolume], exists: &dyn Fn(&Path) -> bool) -> Option<String> {
    for v in vols {
        match v.vg_uuid.as_deref() {
            Some(id) if valid_id(id) => {}
            Some(id) => return Some(format!("volume group {} has the id {id:?}", v.vg)),
            None => return Some(format!("volume group {} has no id", v.vg)),
        }
        let mapper = v.mapper_path();
        if exists(Path::new(&mapper)) {
            return Some(format!(
                "{mapper} exists already: a volume group named {} is active on the appliance",
                v.vg
            ));
        }
    }
    None
}

/// The guest's volume groups, active under a private configuration in a
/// temporary `LVM_SYSTEM_DIR`; deactivated by `close` or, best effort, on
/// drop.
#[derive(Debug)]
pub struct Activation {
    dir: Option<tempfile::TempDir>,
    plan: Plan,
}

impl Activation {
    /// Activate the VGs `vg_ids`, seeing nothing but `pvs`. On failure,
    /// what was activated is deactivated again.
    pub fn up(pvs: &[PathBuf], vg_ids: &[String]) -> Result<Activation> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-lvm-")
            .tempdir()
            .context("making a private LVM configuration directory")?;
        let plan = plan(dir.path(), pvs, vg_ids);
        std::fs::create_dir(dir.path().join("lock")).context("making the LVM lock directory")?;
        std::fs::write(dir.path().join("lvm.conf"), &plan.config)
            .context("writing the private lvm.conf")?;
        let mut a = Activation {
            dir: Some(dir),
            plan,
        };
        for c in a.plan.activate.clone() {
            if let Err(e) = a.run(&c) {
                if let Err(e2) = a.impl_close() {
                    tracing::warn!("{e2:#}");
                }
                return Err(e.context(format!(
                    "activating the migrated volume groups on {}",
                    pvs.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        tracing::info!(vgs = ?vg_ids, "volume groups activated under a private LVM configuration");
        Ok(a)
    }

    fn run(&self, c: &[String]) -> Result<()> {
        let dir = self
            .dir
            .as_ref()
            .context("the LVM configuration is gone")?
            .path();
        Cmd::new(&c[0])
            .args(&c[1..])
            .env("LVM_SYSTEM_DIR", dir)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .run()
            .map(|_| ())
    }

    /// The node of active volume `v`: the kernel's `/dev/dm-N` behind its
    /// `/dev/mapper` name, which LVM makes (waited for briefly: on an
    /// appliance with udev, udev may be the one to make it).
    pub fn node(&self, v: &LogicalVolume) -> Result<PathBuf> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mapper = v.mapper_path();
        let deadline = Instant::now() + Duration::from_secs(10);
        let meta = loop {
            match std::fs::metadata(&mapper) {
                Ok(m) => break m,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!(
                            "logical volume {} is active but {mapper} did not appear",
                            v.display()
                        )
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        if !meta.file_type().is_block_device() {
            bail!("{mapper} is not a block device");
        }
        let (major, minor) = (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        );
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let name = std::fs::read_link(&sys)
            .with_context(|| format!("reading {}", sys.display()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} names no device", sys.display()))?;
        let node = Path::new("/dev").join(&name);
        if !std::fs::metadata(&node).is_ok_and(|m| m.rdev() == meta.rdev()) {
            bail!(
                "{} is not the node of {mapper} ({major}:{minor})",
                node.display()
            );
        }
        Ok(node)
    }

    pub fn close(mut self) -> Result<()> {
        self.impl_close()
    }

    fn impl_close(&mut self) -> Result<()> {
        if self.dir.is_none() {
            return Ok(());
        }
        let mut first = None;
        for c in self.plan.deactivate.clone() {
            if let Err(e) = self.run(&c) {
                first.get_or_insert(e);
            }
        }
        if let Some(e) = first {
            // The configuration stays for the next try; the next run's
            // cleanup removes what holds the targets.
            return Err(e.context("deactivating the migrated volume groups"));
        }
        self.dir = None;
        tracing::info!("volume groups deactivated");
        Ok(())
    }
}

impl Drop for Activation {
    fn drop(&mut self) {
        if let Err(e) = self.impl_close() {
            tracing::warn!("{e:#}");
        }
    }
}

/// Remove the device-mapper devices that hold `dev` or one of its
/// partitions: volumes of a guest's VG that a killed run left active. On
/// the appliance nothing else stacks on a target (its own LVM is blind).
/// Returns their names.
pub(crate) fn remove_holders(dev: &Path) -> Result<Vec<String>> {
    let Some(name) = dev.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(Vec::new());
    };
    let base = Path::new("/sys/class/block").join(&name);
    if !base.exists() {
        return Ok(Vec::new());
    }
    let mut holders = Vec::new();
    let mut dirs = vec![base.join("holders")];
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            if e.path().join("partition").exists() {
                dirs.push(e.path().join("holders"));
            }
        }
    }
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let dm = e.path().join("dm/name");
            if let Ok(n) = std::fs::read_to_string(&dm) {
                holders.push(n.trim().to_owned());
            }
        }
    }
    holders.sort();
    holders.dedup();
    for h in &holders {
        Cmd::new("dmsetup")
            .args(["remove", "--noudevsync", "--noudevrules", "--"])
            .arg(h)
            .run()
            .with_context(|| format!("removing {h}, left holding {}", dev.display()))?;
    }
    Ok(holders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_sees_only_the_targets_pvs_and_names_vgs_by_uuid() {
        let p = plan(
            Path::new("/run/ferry/lvm"),
            &[PathBuf::from("/dev/vdb2"), PathBuf::from("/dev/nvme1n1p3")],
            &["aaaa-1111".to_owned(), "bbbb-2222".to_owned()],
        );
        assert!(p
            .config
            .contains("filter = [ \"a|^/dev/vdb2$|\", \"a|^/dev/nvme1n1p3$|\", \"r|.*|\" ]\n"));
        assert!(p.config.contains("global_filter = [ \"a|^/dev/vdb2$|\""));
        for must in [
            "use_devicesfile = 0",
            "obtain_device_list_from_udev = 0",
            "udev_rules = 0",
            "backup = 0",
            "archive = 0",
            "event_activation = 0",
        ] {
            assert!(p.config.contains(must), "{must}");
        }
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            p.activate,
            [
                s(&[
                    "vgchange",
                    "--activate",
                    "y",
                    "--devicesfile",
                    "",
                    "--select",
                    "vg_uuid=aaaa-1111"
                ]),
                s(&[
                    "vgchange",
                    "--activate",
                    "y",
                    "--devicesfile",
                    "",
                    "--select",
                    "vg_uuid=bbbb-2222"
                ]),
            ]
        );
        assert_eq!(
            p.deactivate,
            [
                s(&[
                    "vgchange",
                    "--activate",
                    "n",
                    "--devicesfile",
                    "",
                    "--select",
                    "vg_uuid=bbbb-2222"
                ]),
                s(&[
                    "vgchange",
                    "--activate",
                    "n",
                    "--devicesfile",
                    "",
                    "--select",
                    "vg_uuid=aaaa-1111"
                ]),
            ]
        );
    }

    #[test]
    fn locks_stay_in_the_private_directory_and_hints_are_off() {
        let c = config(
            Path::new("/tmp/ferry-lvm-x\"y"),
            &[PathBuf::from("/dev/vdb2")],
        );
        assert!(
            c.contains("\tlocking_dir = \"/tmp/ferry-lvm-x\\\"y/lock\"\n"),
            "{c}"
        );
        assert!(c.contains("\thints = \"none\"\n"), "{c}");
    }

    fn volume(vg: &str, id: Option<&str>, name: &str) -> LogicalVolume {
        LogicalVolume {
            vg_uuid: id.map(str::to_owned),
            ..LogicalVolume::test(vg, name)
        }
    }

    #[test]
    fn what_keeps_a_volume_group_from_being_activated() {
        let ok = "Vg1234-aaaa-bbbb-cccc-dddd-eeee-ffffff";
        let a = volume("ferry-vg", Some(ok), "root");
        assert_eq!(obstacle_in(&[&a], &|_| false), None);
        let b = volume("ferry-vg", None, "root");
        assert_eq!(
            obstacle_in(&[&a, &b], &|_| false).as_deref(),
            Some("volume group ferry-vg has no id")
        );
        let c = volume("ferry-vg", Some("x || vg_name=other"), "root");
        assert_eq!(
            obstacle_in(&[&c], &|_| false).as_deref(),
            Some("volume group ferry-vg has the id \"x || vg_name=other\"")
        );
        for good in [ok, "abc!#-09"] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", "a b", "a=b", "a|b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_device_of_the_same_name_on_the_appliance_keeps_the_vg_inactive() {
        let v = volume("ferry-vg", Some("Vg1234"), "swap_1");
        let active = |p: &Path| p == Path::new("/dev/mapper/ferry--vg-swap_1");
        assert_eq!(
            obstacle_in(&[&v], &active).as_deref(),
            Some("/dev/mapper/ferry--vg-swap_1 exists already: a volume group named ferry-vg is active on the appliance")
        );
        assert_eq!(obstacle_in(&[&v], &|_| false), None);
    }

    #[test]
    fn filter_paths_are_escaped() {
        assert_eq!(
            regex_escape("/dev/disk/by-id/x.y+z"),
            "/dev/disk/by-id/x\\.y\\+z"
        );
    }
}
