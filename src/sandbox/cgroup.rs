//! The guest's cgroups, on cgroup v1: a pids limit (a fork bomb stops at
//! the limit, not at the appliance's) and, with the device controller, an
//! allow list of the devices it may open or make. On cgroup v2 the guest
//! stays in the service's cgroup: its tasks count against the unit's
//! `TasksMax=`, and the devices are held by the mounts (every mount it
//! sees is `nodev` but its private /dev, and it can make neither a node,
//! without `CAP_MKNOD`, nor a mount) and by the unit's device policy.
//!
//! Each cgroup is made beside the keeper's own and removed when the guest
//! is gone.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::Spec;
use crate::layout::dev_nodes::BASIC_NODES;

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub(crate) struct Cgroups {
    dirs: Vec<PathBuf>,
    /// Whether a device cgroup holds the guest (v1), or only its mounts.
    pub(crate) devices: bool,
}

impl Cgroups {
    pub(crate) fn create(spec: &Spec) -> Result<Cgroups> {
        let name = format!("ferry-guest-{}", std::process::id());
        let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let mut groups = Cgroups {
            dirs: Vec::new(),
            devices: false,
        };
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            // cgroup v2: a cgroup of its own would need the service's
            // subtree rearranged under systemd's delegation; the guest's
            // tasks count against the service's TasksMax= instead (and
            // end with the command, at most after the timeout).
            return Ok(groups);
        }
        let pids = Path::new(ROOT).join("pids");
        if !pids.join("cgroup.procs").exists() {
            bail!("no pids cgroup controller is mounted (neither cgroup v2 at {ROOT} nor v1 at {ROOT}/pids)");
        }
        let dir = groups.make(&pids.join(own_path(&own, "pids")?), &name)?;
        write(&dir.join("pids.max"), &spec.pids_max.to_string())?;
        let devices = Path::new(ROOT).join("devices");
        if devices.join("devices.allow").exists() {
            let dir = groups.make(&devices.join(own_path(&own, "devices")?), &name)?;
            write(&dir.join("devices.deny"), "a")?;
            for rule in allowed_devices(spec)? {
                write(&dir.join("devices.allow"), &rule)?;
            }
            groups.devices = true;
        }
        Ok(groups)
    }

    fn make(&mut self, base: &Path, name: &str) -> Result<PathBuf> {
        remove_stale(base);
        let dir = base.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // A keeper of this pid that was killed left it; it is empty.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating the cgroup {}", dir.display()))
            }
        }
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// Put `pid` (the guest's PID 1, which waits for it before it starts
    /// anything) into every cgroup.
    pub(crate) fn add(&self, pid: nix::unistd::Pid) -> Result<()> {
        for d in &self.dirs {
            let procs = d.join("cgroup.procs");
            if let Err(e) = fs::write(&procs, pid.to_string()) {
                let kind = |p: &Path| {
                    fs::read_to_string(p.join("cgroup.type"))
                        .map(|t| t.trim().to_owned())
                        .unwrap_or_else(|_| "-".to_owned())
                };
                return Err(e).with_context(|| {
                    format!(
                        "moving {pid} into {} (its type {}, its parent's {})",
                        d.display(),
                        kind(d),
                        d.parent().map(kind).unwrap_or_default()
                    )
                });
            }
        }
        Ok(())
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            // The killed tasks leave the cgroup as the kernel reaps them.
            let mut tries = 0;
            while let Err(e) = fs::remove_dir(d) {
                tries += 1;
                if e.kind() == std::io::ErrorKind::NotFound {
                    break;
                }
                if tries > 100 {
                    tracing::warn!("removing the cgroup {}: {e}", d.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The cgroups of keepers that were killed (with the appliance, by
/// SIGKILL) before they could remove them: empty, and named after a
/// process that is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ferry-guest-"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone {
            // Still holding a task, it stays (and is not ours to kill).
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// This process's cgroup in the hierarchy of `controller` ("" for v2),
/// relative to the hierarchy's root.
fn own_path(text: &str, controller: &str) -> Result<PathBuf> {
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        if hit {
            return Ok(PathBuf::from(path.trim_start_matches('/')));
        }
    }
    bail!("this process is in no {controller} cgroup (/proc/self/cgroup)")
}

/// The v1 device controller's rules: the basic character devices, the
/// terminal nodes, the migrated disks (and the device-mapper control node
/// when one of them is a volume); read, write and mknod of these only.
fn allowed_devices(spec: &Spec) -> Result<Vec<String>> {
    let mut rules: Vec<String> = BASIC_NODES
        .iter()
        .map(|(_, maj, min, _)| format!("c {maj}:{min} rwm"))
        .collect();
    // /dev/ptmx and the devpts terminals.
    rules.push("c 5:2 rwm".to_owned());
    rules.push("c 136:* rw".to_owned());
    let mut dm = false;
    for d in &spec.devices {
        let meta = fs::metadata(&d.host_path)
            .with_context(|| format!("reading {}", d.host_path.display()))?;
        if !meta.file_type().is_block_device() {
            bail!("{} is not a block device", d.host_path.display());
        }
        let (maj, min) = (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        );
        dm |= Path::new(&format!("/sys/dev/block/{maj}:{min}/dm")).exists();
        rules.push(format!("b {maj}:{min} rwm"));
    }
    if dm {
        let meta = fs::metadata("/dev/mapper/control").context("reading /dev/mapper/control")?;
        rules.push(format!(
            "c {}:{} rwm",
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev())
        ));
    }
    Ok(rules)
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {text:?} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_path_finds_the_v1_controller_and_the_v2_line() {
        let text = "9:name=systemd:/\n8:pids:/a/b\n5:devices:/\n4:memory:/x\n0::/system.slice/ferry.service\n";
        assert_eq!(own_path(text, "pids").unwrap(), PathBuf::from("a/b"));
        assert_eq!(own_path(text, "devices").unwrap(), PathBuf::from(""));
        assert_eq!(
            own_path(text, "").unwrap(),
            PathBuf::from("system.slice/ferry.service")
        );
        let err = own_path("4:memory:/x\n", "pids").unwrap_err();
        assert_eq!(
            err.to_string(),
            "this process is in no pids cgroup (/proc/self/cgroup)"
        );
    }
}
