//! Where the kernel has device-mapper (a cloud instance), the guest's
//! volume groups are activated with a private LVM configuration: a
//! `LVM_SYSTEM_DIR` whose filter accepts only the target's PVs, without
//! udev, caches, backups or a devices file, so the appliance's own LVM
//! never scans, caches or clashes with them (two VGs of the same name; a
//! RHEL 9 `system.devices` in the guest), and each VG is named by its UUID.
//! Deactivated after, in reverse order. This is the plan of commands; the
//! machines ferry is built on have no device-mapper, and there the loop
//! devices of [`super::LvLoop`] reach the volumes instead.

use std::path::{Path, PathBuf};

/// Whether the running kernel has device-mapper.
pub fn have_device_mapper() -> bool {
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
/// partitions) and leaves no trace on the appliance.
pub fn config(pvs: &[PathBuf]) -> String {
    let accept: Vec<String> = pvs
        .iter()
        .map(|p| format!("\"a|^{}$|\"", regex_escape(&p.to_string_lossy())))
        .collect();
    let filter = format!("[ {}, \"r|.*|\" ]", accept.join(", "));
    format!(
        "devices {{\n\tfilter = {filter}\n\tglobal_filter = {filter}\n\tobtain_device_list_from_udev = 0\n\tuse_devicesfile = 0\n\tscan = [ \"/dev\" ]\n}}\n\
         activation {{\n\tudev_sync = 0\n\tudev_rules = 0\n\tmonitoring = 0\n\tverify_udev_operations = 1\n}}\n\
         backup {{\n\tbackup = 0\n\tarchive = 0\n}}\n\
         global {{\n\tuse_lvmpolld = 0\n\tevent_activation = 0\n}}\n"
    )
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
        config: config(pvs),
        activate: vg_ids.iter().map(|id| cmd("y", id)).collect(),
        deactivate: vg_ids.iter().rev().map(|id| cmd("n", id)).collect(),
    }
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
    fn filter_paths_are_escaped() {
        assert_eq!(
            regex_escape("/dev/disk/by-id/x.y+z"),
            "/dev/disk/by-id/x\\.y\\+z"
        );
    }
}
