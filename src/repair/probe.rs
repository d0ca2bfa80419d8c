//! Building a [`DeviceMap`] from the appliance's view of the target disks:
//! partitions from sysfs, identities from `blkid`, mount points from the
//! mount table. The job runner knows the source names from the transfer;
//! `ferry repair` takes them as `--disk SOURCE=TARGET`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::devices::{MigratedDisk, Volume};
use crate::cmd::Cmd;

/// `KEY=value` lines of `blkid -o export`.
fn blkid(dev: &Path) -> Result<Vec<(String, String)>> {
    let (status, out) = Cmd::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .with_context(|| format!("probing {}", dev.display()))?;
    // Exit status 2: nothing recognizable on the device.
    if status.code() == Some(2) {
        return Ok(Vec::new());
    }
    if !status.success() {
        bail!(
            "`blkid -p -o export {}` failed ({status}): {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(crate::devname::parse_blkid_export(&out.stdout_text()))
}

fn volume(node: PathBuf, partition: Option<u32>) -> Result<Option<Volume>> {
    let kv = blkid(&node)?;
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let Some(fstype) = get("TYPE") else {
        return Ok(None);
    };
    Ok(Some(Volume {
        partition,
        node,
        fstype: Some(fstype),
        uuid: get("UUID"),
        label: get("LABEL"),
        partuuid: get("PART_ENTRY_UUID"),
        mountpoint: None,
        aliases: Vec::new(),
    }))
}

/// `major:minor` of a block device, from sysfs.
fn devnum(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Mounts under `root`: (major:minor, mount point inside the tree).
pub fn mounts_under(root: &Path) -> Result<Vec<(String, String)>> {
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;
    Ok(crate::layout::mount::mountinfo()?
        .into_iter()
        .filter_map(|m| {
            let inside = m.inside(&root)?;
            Some((m.devno, inside))
        })
        .collect())
}

/// A migrated disk as the appliance sees it: every partition (and a file
/// system on the whole disk) with its identity and where it is mounted
/// under `root`.
pub fn probe_disk(source_names: Vec<String>, target: &Path, root: &Path) -> Result<MigratedDisk> {
    let target = target
        .canonicalize()
        .with_context(|| format!("resolving {}", target.display()))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no device name", target.display()))?;
    let sys = PathBuf::from(format!("/sys/class/block/{name}"));
    if !sys.exists() {
        bail!(
            "{} is not a block device known to the kernel (no {})",
            target.display(),
            sys.display()
        );
    }
    let mut parts: Vec<(u32, String)> = Vec::new();
    for e in std::fs::read_dir(&sys).with_context(|| format!("listing {}", sys.display()))? {
        let e = e.with_context(|| format!("listing {}", sys.display()))?;
        let child = e.file_name().to_string_lossy().into_owned();
        if !child.starts_with(&name) {
            continue;
        }
        if let Ok(n) = std::fs::read_to_string(e.path().join("partition")) {
            if let Ok(n) = n.trim().parse() {
                parts.push((n, child));
            }
        }
    }
    parts.sort();
    let mounts = mounts_under(root)?;
    let mp_of = |dev: &str| {
        devnum(dev).and_then(|d| mounts.iter().find(|(m, _)| *m == d).map(|(_, p)| p.clone()))
    };
    let mut volumes = Vec::new();
    if parts.is_empty() {
        if let Some(mut v) = volume(target.clone(), None)? {
            v.mountpoint = mp_of(&name);
            volumes.push(v);
        }
    }
    for (n, child) in parts {
        if let Some(mut v) = volume(PathBuf::from(format!("/dev/{child}")), Some(n))? {
            v.mountpoint = mp_of(&child);
            volumes.push(v);
        }
    }
    Ok(MigratedDisk {
        source_names,
        target,
        volumes,
    })
}
