//! The device nodes a migrated system's tools see in their private /dev:
//! the basic nodes, the target's disk nodes and the /dev/disk/by-* links
//! that udev would have made. The host's /dev is never touched: no udev
//! runs on the appliance's build machines, and tools like grub-mkconfig
//! write `root=/dev/loop0p2` instead of `root=UUID=...` when the by-uuid
//! links are missing. The guest sandbox makes the /dev with these.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::devname::udev_escape;

/// A device node to show inside the chroot, under the same name as on the
/// host, with the ids its by-uuid/by-label/by-partuuid links carry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevNode {
    pub host_path: PathBuf,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub partuuid: Option<String>,
    /// Further names (relative to /dev) the node answers to in the chroot,
    /// as symlinks: a logical volume's `mapper/<vg>-<lv>` and `<vg>/<lv>`.
    pub aliases: Vec<String>,
}

/// The character devices every program expects: (name, major, minor, mode).
pub(crate) const BASIC_NODES: &[(&str, u64, u64, u32)] = &[
    ("null", 1, 3, 0o666),
    ("zero", 1, 5, 0o666),
    ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666),
    ("tty", 5, 0, 0o666),
    ("console", 5, 1, 0o600),
];

/// Fill the private /dev at `dev` (a fresh tmpfs): the basic nodes
/// (null, zero, full, random, urandom, tty, console, pts/ptmx, shm), the
/// `devices` under the same names as on the host (made with mknod of the
/// same major:minor), and /dev/disk/by-uuid, by-label, by-partuuid links.
pub(crate) fn populate_dev(dev: &Path, devices: &[DevNode]) -> Result<()> {
    for (name, maj, min, mode) in BASIC_NODES {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(*mode),
            makedev(*maj, *min),
        )
        .with_context(|| format!("making {}", p.display()))?;
        // mknod's mode passes through the umask.
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("setting the mode of {}", p.display()))?;
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dev.join("pts"))
        .context("creating pts")?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).context("creating shm")?;
    fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777))
        .context("setting the mode of shm")?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .with_context(|| format!("linking {link}"))?;
    }
    // A device-mapper volume among them: the migrated system's tools
    // (grub-probe, the initramfs hooks) ask the kernel about it through
    // the control node, as they would on the server.
    if devices.iter().any(|d| is_device_mapper(&d.host_path)) {
        let host = Path::new("/dev/mapper/control");
        let meta = fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
        let p = dev.join("mapper/control");
        fs::create_dir_all(dev.join("mapper")).context("creating mapper")?;
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            meta.rdev(),
        )
        .with_context(|| format!("making {}", p.display()))?;
    }
    for d in devices {
        let rel = d
            .host_path
            .strip_prefix("/dev")
            .with_context(|| format!("{} is not under /dev", d.host_path.display()))?;
        let meta = fs::metadata(&d.host_path)
            .with_context(|| format!("reading {}", d.host_path.display()))?;
        if !meta.file_type().is_block_device() {
            bail!("{} is not a block device", d.host_path.display());
        }
        let p = dev.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        mknod(
            &p,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            meta.rdev(),
        )
        .with_context(|| format!("making {}", p.display()))?;
        // A logical volume's loop also answers to the names the migrated
        // system knows it by: /dev/mapper/<vg>-<lv> and /dev/<vg>/<lv>.
        for alias in &d.aliases {
            let a = dev.join(alias);
            if let Some(parent) = a.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let up = "../".repeat(Path::new(alias).components().count() - 1);
            std::os::unix::fs::symlink(format!("{up}{}", rel.display()), &a)
                .with_context(|| format!("linking {}", a.display()))?;
        }
        let depth_up = "../../".to_owned() + &"../".repeat(rel.components().count() - 1);
        let target = format!("{depth_up}{}", rel.display());
        for (kind, value) in [
            ("by-uuid", &d.uuid),
            ("by-label", &d.label),
            ("by-partuuid", &d.partuuid),
        ] {
            if let Some(v) = value {
                let dir = dev.join("disk").join(kind);
                fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let link = dir.join(udev_escape(v));
                // Two devices with one id (a cloned disk beside its source)
                // keep the first link, as udev's priority rules would.
                if fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(&target, &link)
                        .with_context(|| format!("linking {}", link.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Whether block node `p` is a device-mapper device.
fn is_device_mapper(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| {
        m.file_type().is_block_device()
            && Path::new(&format!(
                "/sys/dev/block/{}:{}/dm",
                nix::sys::stat::major(m.rdev()),
                nix::sys::stat::minor(m.rdev())
            ))
            .exists()
    })
}
