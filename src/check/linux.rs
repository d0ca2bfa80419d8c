//! A Linux system: what the repair will meet, read from its files with the
//! repair's own detection and recipes, so that a blocker here is the error
//! the repair would stop with.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Finding, Report, Severity, System};
use crate::job::errors::{find_coded, ErrorCode};
use crate::layout::FatPartition;
use crate::repair::detect::{self, Bootloader, Firmware, OsInfo, SelinuxMode};
use crate::repair::engine::{Mode, StepCtx};
use crate::repair::initramfs::{kernel_modules, DRIVERS, REQUIRED};
use crate::repair::recipe::{self, Recipe};
use crate::repair::tree::Tree;

/// The system's own mount points, which the repair mounts and writes (the
/// pipeline's mount step mounts the same).
pub const SYSTEM_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi", "/usr", "/var"];

const MIB: u64 = 1 << 20;

/// What was found in a Linux system.
#[derive(Debug, Clone, Serialize)]
pub struct LinuxReport {
    pub os: OsInfo,
    pub recipe: String,
    pub kernels: Vec<KernelReport>,
    pub initramfs: InitramfsReport,
    pub bootloader: BootloaderReport,
    pub firmware: FirmwareReport,
    pub lvm: LvmReport,
    pub space: Vec<SpaceReport>,
    pub network: NetworkReport,
    pub agents: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    pub version: String,
    pub image: String,
    /// Each driver of the cloud's hardware: whether the kernel has it
    /// (as a module or built in).
    pub drivers: BTreeMap<String, bool>,
    /// Its initramfs image, if there is one.
    pub initramfs: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InitramfsReport {
    /// The generator the recipe picks (`/usr/sbin/update-initramfs`, `/usr/bin/dracut`).
    pub tool: Option<String>,
    pub runnable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootloaderReport {
    pub kind: Bootloader,
    /// GRUB's package version, when the system says it.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FirmwareReport {
    pub mode: Firmware,
    /// The EFI loaders on the ESP (`EFI/debian/grubx64.efi`...).
    pub efi_loaders: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LvmReport {
    /// The fstab's file systems on logical volumes.
    pub volumes: Vec<String>,
    pub supported: bool,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpaceReport {
    /// The mount points sharing the file system.
    pub mount: String,
    pub free_bytes: u64,
    pub free_inodes: u64,
    pub need_bytes: u64,
    pub need_inodes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkReport {
    pub stacks: Vec<detect::NetStack>,
    /// Static configuration found: `file: interface address`.
    pub static_config: Vec<String>,
}

/// Inspect the Linux system mounted at `root`; `esp` is its EFI system
/// partition when it is not mounted in the tree (the appliance reads FAT
/// in-process).
pub fn inspect(root: &Path, esp: Option<&FatPartition>, r: &mut Report) -> Result<()> {
    let tree = Tree::new(root);
    let os = match detect::detect(&tree) {
        Ok(os) => os,
        Err(e) => {
            let code = find_coded(&e)
                .map(|c| c.code)
                .unwrap_or(ErrorCode::SystemNotFound);
            r.findings
                .push(Finding::new(Severity::Blocker, code, format!("{e:#}")));
            return Ok(());
        }
    };
    let recipes = recipe::load(None)?;
    let recipe = recipe::select(&recipes, &os, None)?.clone();
    let ctx = StepCtx::new(&tree, Mode::Plan, None);
    let mut f = Vec::new();

    let kernels = kernels(&tree, &os, &recipe, &mut f)?;
    let initramfs = initramfs(&ctx, &tree, &recipe, &mut f)?;
    let bootloader = bootloader(&ctx, &tree, &os, &recipe, &mut f);
    let firmware = FirmwareReport {
        mode: os.firmware,
        efi_loaders: efi_loaders(&tree, esp, os.firmware),
    };
    let lvm = lvm(&tree, r)?;
    let space = space(&tree, &kernels, &mut f)?;
    let network = network(&tree, &os, &mut f)?;
    if os.selinux == SelinuxMode::Enforcing {
        f.push(Finding::new(
            Severity::Warning,
            ErrorCode::SelinuxEnforcing,
            "/etc/selinux/config sets SELINUX=enforcing; the repair schedules a relabel on the first boot",
        ));
    }
    let agents = agents(&tree, &recipe);
    if !agents.is_empty() {
        f.push(Finding::new(
            Severity::Info,
            ErrorCode::PlatformAgents,
            format!("the repair masks {}", agents.join(", ")),
        ));
    }
    r.findings.extend(f);
    r.systems.push(System::Linux(Box::new(LinuxReport {
        recipe: recipe.name.clone(),
        os,
        kernels,
        initramfs,
        bootloader,
        firmware,
        lvm,
        space,
        network,
        agents,
    })));
    Ok(())
}

fn kernels(
    tree: &Tree,
    os: &OsInfo,
    recipe: &Recipe,
    f: &mut Vec<Finding>,
) -> Result<Vec<KernelReport>> {
    if os.kernels.is_empty() {
        f.push(Finding::new(
            Severity::Blocker,
            ErrorCode::VirtioCheckFailed,
            "no kernel is installed in the migrated system (no /boot/vmlinuz-* with a module tree)",
        ));
    }
    let image_of = |kver: &str| {
        recipe
            .initramfs
            .iter()
            .map(|i| i.image.replace("{kver}", kver))
            .find(|p| tree.exists(p))
    };
    let mut out = Vec::new();
    for k in &os.kernels {
        let km = kernel_modules(tree, &k.modules_dir)
            .with_context(|| format!("listing the modules of kernel {}", k.version))?;
        let drivers: BTreeMap<String, bool> = DRIVERS
            .iter()
            .map(|d| {
                (
                    d.to_string(),
                    km.loadable.contains(*d) || km.builtin.contains(*d),
                )
            })
            .collect();
        let lacks: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|d| drivers.get(*d) != Some(&true))
            .collect();
        if !lacks.is_empty() {
            f.push(Finding::new(
                Severity::Blocker,
                ErrorCode::VirtioCheckFailed,
                format!("kernel {} lacks {}", k.version, lacks.join(", ")),
            ));
        }
        out.push(KernelReport {
            version: k.version.clone(),
            image: k.image.clone(),
            initramfs: image_of(&k.version),
            drivers,
        });
    }
    Ok(out)
}

fn initramfs(
    ctx: &StepCtx,
    tree: &Tree,
    recipe: &Recipe,
    f: &mut Vec<Finding>,
) -> Result<InitramfsReport> {
    let v = match crate::repair::initramfs::variant(ctx, recipe) {
        Ok(v) => v,
        Err(e) => {
            let (code, detail) = crate::job::errors::describe(&e);
            f.push(Finding::new(Severity::Blocker, code, detail));
            return Ok(InitramfsReport {
                tool: None,
                runnable: false,
            });
        }
    };
    let tool = v
        .tool
        .iter()
        .find(|p| tree.exists(p))
        .cloned()
        .context("the recipe's initramfs generator vanished")?;
    let why_not = runnable(tree, &tool)?;
    if let Some(why) = &why_not {
        f.push(Finding::new(
            Severity::Blocker,
            ErrorCode::RepairToolMissing,
            format!("the initramfs generator {tool} cannot run: {why}"),
        ));
    }
    Ok(InitramfsReport {
        tool: Some(tool),
        runnable: why_not.is_none(),
    })
}

/// Why the tree's program `path` cannot run in a chroot of the tree, if it
/// cannot: not executable, or its script interpreter missing.
fn runnable(tree: &Tree, path: &str) -> Result<Option<String>> {
    let host = tree.path(path)?;
    let meta =
        std::fs::metadata(&host).with_context(|| format!("inspecting {}", host.display()))?;
    if meta.permissions().mode() & 0o111 == 0 {
        return Ok(Some(format!("{path} is not executable")));
    }
    let mut head = [0u8; 128];
    let n = {
        use std::io::Read;
        let mut file =
            std::fs::File::open(&host).with_context(|| format!("opening {}", host.display()))?;
        file.read(&mut head)
            .with_context(|| format!("reading {}", host.display()))?
    };
    if let Some(rest) = head[..n].strip_prefix(b"#!") {
        let line = String::from_utf8_lossy(rest);
        let interp = line
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        if !interp.is_empty() && !tree.exists(interp) {
            return Ok(Some(format!(
                "its interpreter {interp} is missing from the system"
            )));
        }
    }
    Ok(None)
}

fn bootloader(
    ctx: &StepCtx,
    tree: &Tree,
    os: &OsInfo,
    recipe: &Recipe,
    f: &mut Vec<Finding>,
) -> BootloaderReport {
    let version = grub_version(tree, os.bootloader);
    let g = match crate::repair::grub::variant(ctx, os, recipe) {
        Ok(g) => Some(g),
        Err(e) => {
            let (code, mut detail) = crate::job::errors::describe(&e);
            if let (Bootloader::GrubLegacy, Some(v)) = (os.bootloader, &version) {
                detail.push_str(&format!(" (version {v})"));
            }
            f.push(Finding::new(Severity::Blocker, code, detail));
            None
        }
    };
    if let Some(g) = g {
        let (platform, package) = match os.firmware {
            Firmware::Bios => ("i386-pc", "grub-pc / grub2-pc-modules"),
            Firmware::Uefi => ("x86_64-efi", "grub-efi-amd64-bin / grub2-efi-x64-modules"),
        };
        let lib = format!("{}/{platform}", g.lib);
        if !tree.is_dir(&lib) {
            f.push(Finding::new(
                Severity::Blocker,
                ErrorCode::GrubFailed,
                format!("{lib} is missing: the GRUB for this firmware ({package}) is not installed in the migrated system"),
            ));
        }
    }
    BootloaderReport {
        kind: os.bootloader,
        version,
    }
}

/// GRUB's version: GRUB 2's `modinfo.sh`, else the package database.
fn grub_version(tree: &Tree, kind: Bootloader) -> Option<String> {
    if kind == Bootloader::Grub2 {
        for dir in ["/usr/lib/grub", "/boot/grub", "/boot/grub2"] {
            for platform in ["i386-pc", "x86_64-efi"] {
                let text = tree
                    .read(&format!("{dir}/{platform}/modinfo.sh"))
                    .ok()
                    .flatten();
                if let Some(v) = text.as_deref().and_then(|t| {
                    detect::parse_assignments(t)
                        .into_iter()
                        .find(|(k, _)| k == "grub_package_version")
                        .map(|(_, v)| v)
                }) {
                    return Some(v);
                }
            }
        }
    }
    let status = tree.read("/var/lib/dpkg/status").ok().flatten()?;
    let wanted: &[&str] = match kind {
        Bootloader::Grub2 => &["grub-common", "grub2-common"],
        Bootloader::GrubLegacy => &["grub-legacy", "grub"],
        Bootloader::None => return None,
    };
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        if field("Package:").is_some_and(|p| wanted.contains(&p.as_str()))
            && field("Status:").is_some_and(|s| s.ends_with(" installed"))
        {
            return field("Version:");
        }
    }
    None
}

fn efi_loaders(tree: &Tree, esp: Option<&FatPartition>, firmware: Firmware) -> Vec<String> {
    if firmware != Firmware::Uefi {
        return Vec::new();
    }
    let mut out = Vec::new();
    for dir in tree.list("/boot/efi/EFI").unwrap_or_default() {
        for file in tree
            .list(&format!("/boot/efi/EFI/{dir}"))
            .unwrap_or_default()
        {
            if file.to_ascii_lowercase().ends_with(".efi") {
                out.push(format!("EFI/{dir}/{file}"));
            }
        }
    }
    if out.is_empty() {
        if let Some(esp) = esp {
            for d in esp.list("EFI").unwrap_or_default() {
                if !d.is_dir || d.name.starts_with('.') {
                    continue;
                }
                for e in esp.list(&format!("EFI/{}", d.name)).unwrap_or_default() {
                    if !e.is_dir && e.name.to_ascii_lowercase().ends_with(".efi") {
                        out.push(format!("EFI/{}/{}", d.name, e.name));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether an fstab device spec names a logical volume.
fn on_lvm(spec: &str) -> bool {
    if let Some(name) = spec.strip_prefix("/dev/mapper/") {
        return !name.is_empty() && name != "control";
    }
    if spec.starts_with("/dev/dm-") {
        return true;
    }
    // /dev/VG/LV (not /dev/disk/by-*, /dev/md/...).
    let parts: Vec<&str> = spec
        .strip_prefix("/dev/")
        .map(|s| s.split('/').collect())
        .unwrap_or_default();
    parts.len() == 2 && !["disk", "md", "cciss", "mapper"].contains(&parts[0])
}

fn lvm(tree: &Tree, r: &Report) -> Result<LvmReport> {
    let fstab = tree.read("/etc/fstab")?.unwrap_or_default();
    let mut volumes = Vec::new();
    let mut system = Vec::new();
    for e in crate::devname::parse_fstab(&fstab) {
        let (spec, mp) = (e.spec, e.mountpoint);
        if on_lvm(&spec) {
            if SYSTEM_MOUNTS.contains(&mp.as_str()) {
                system.push(format!("{mp} on {spec}"));
            }
            volumes.push(format!("{mp} on {spec}"));
        }
    }
    // A mounted tree says where its system really is.
    for fs in &r.filesystems {
        let mp = fs.mount.as_deref().unwrap_or("");
        if SYSTEM_MOUNTS.contains(&mp)
            && (fs.device.starts_with("/dev/mapper/") || fs.device.starts_with("/dev/dm-"))
            && !system.iter().any(|s| s.starts_with(&format!("{mp} on")))
        {
            system.push(format!("{mp} on {}", fs.device));
            volumes.push(format!("{mp} on {}", fs.device));
        }
    }
    let (supported, why) = if !system.is_empty() {
        (
            true,
            format!(
                "the system is on logical volumes ({}): the appliance reads the LVM metadata and reaches linear volumes through loop devices; others are refused when the disks are checked",
                system.join(", ")
            ),
        )
    } else if !volumes.is_empty() {
        (
            true,
            "only data file systems are on LVM: they are copied block for block and not mounted"
                .to_owned(),
        )
    } else {
        (true, "no LVM in the fstab".to_owned())
    };
    Ok(LvmReport {
        volumes,
        supported,
        why,
    })
}

fn space(tree: &Tree, kernels: &[KernelReport], f: &mut Vec<Finding>) -> Result<Vec<SpaceReport>> {
    // A new initramfs is written beside the old one before it replaces it.
    let largest = kernels
        .iter()
        .filter_map(|k| k.initramfs.as_deref())
        .filter_map(|p| tree.path(p).ok())
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    let needs = [
        ("/", 64 * MIB, 1024),
        ("/boot", (largest + 16 * MIB).max(24 * MIB), 64),
    ];
    let mut out: Vec<(u64, SpaceReport)> = Vec::new();
    for (mp, bytes, inodes) in needs {
        let host = tree.path(mp)?;
        if !host.is_dir() {
            continue;
        }
        let dev = std::fs::metadata(&host)
            .with_context(|| format!("inspecting {}", host.display()))?
            .dev();
        let st = nix::sys::statvfs::statvfs(&host)
            .with_context(|| format!("reading the free space of {}", host.display()))?;
        if let Some((_, s)) = out.iter_mut().find(|(d, _)| *d == dev) {
            s.mount.push_str(&format!(" and {mp}"));
            s.need_bytes += bytes;
            s.need_inodes += inodes;
            continue;
        }
        out.push((
            dev,
            SpaceReport {
                mount: mp.to_owned(),
                free_bytes: st.blocks_free() * st.fragment_size(),
                free_inodes: st.files_free(),
                need_bytes: bytes,
                need_inodes: inodes,
            },
        ));
    }
    for (_, s) in &out {
        let mut short = Vec::new();
        if s.free_bytes < s.need_bytes {
            short.push(format!(
                "{} MiB free, {} MiB needed",
                s.free_bytes / MIB,
                s.need_bytes.div_ceil(MIB)
            ));
        }
        // File systems without an inode count (btrfs) report 0 of 0.
        if s.free_inodes < s.need_inodes && s.free_inodes != 0 {
            short.push(format!(
                "{} inodes free, {} needed",
                s.free_inodes, s.need_inodes
            ));
        }
        if !short.is_empty() {
            f.push(Finding::new(
                Severity::Blocker,
                ErrorCode::SpaceLow,
                format!("{}: {}", s.mount, short.join(", ")),
            ));
        }
    }
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

fn network(tree: &Tree, os: &OsInfo, f: &mut Vec<Finding>) -> Result<NetworkReport> {
    let mut found = Vec::new();
    let mut files = vec!["/etc/network/interfaces".to_owned()];
    for n in tree.list("/etc/network/interfaces.d")? {
        files.push(format!("/etc/network/interfaces.d/{n}"));
    }
    for file in &files {
        let Some(text) = tree.read(file).ok().flatten() else {
            continue;
        };
        let mut iface: Option<String> = None;
        for l in text.lines().map(str::trim) {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["iface", name, "inet" | "inet6", "static", ..] => iface = Some(name.to_string()),
                ["iface", ..] => iface = None,
                ["address", addr, ..] => {
                    if let Some(i) = &iface {
                        found.push(format!("{file}: {i} {addr}"));
                    }
                }
                _ => {}
            }
        }
    }
    for n in tree.list("/etc/sysconfig/network-scripts")? {
        if !n.starts_with("ifcfg-") || n == "ifcfg-lo" {
            continue;
        }
        let file = format!("/etc/sysconfig/network-scripts/{n}");
        let Some(text) = tree.read(&file).ok().flatten() else {
            continue;
        };
        let kv = detect::parse_assignments(&text);
        let get = |k: &str| {
            kv.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let proto = get("BOOTPROTO").unwrap_or_default().to_ascii_lowercase();
        if let Some(addr) = get("IPADDR").or_else(|| get("IPADDR0")) {
            if proto != "dhcp" {
                let dev = get("DEVICE").unwrap_or_else(|| n[6..].to_owned());
                found.push(format!("{file}: {dev} {addr}"));
            }
        }
    }
    for n in detect::yaml_files(tree, "/etc/netplan")? {
        let file = format!("/etc/netplan/{n}");
        if let Some(text) = tree.read(&file).ok().flatten() {
            if text
                .lines()
                .any(|l| l.trim_start().starts_with("addresses:"))
            {
                found.push(format!("{file}: static addresses"));
            }
        }
    }
    for n in tree.list("/etc/NetworkManager/system-connections")? {
        let file = format!("/etc/NetworkManager/system-connections/{n}");
        if let Some(text) = tree.read(&file).ok().flatten() {
            if text.lines().any(|l| l.trim() == "method=manual") {
                found.push(format!("{file}: method=manual"));
            }
        }
    }
    if !found.is_empty() {
        f.push(Finding::new(
            Severity::Info,
            ErrorCode::NetworkStatic,
            found.join("; "),
        ));
    }
    Ok(NetworkReport {
        stacks: os.network.clone(),
        static_config: found,
    })
}

/// The old platform's agents the recipe masks, present in the system.
fn agents(tree: &Tree, recipe: &Recipe) -> Vec<String> {
    let mut out: Vec<String> = recipe
        .agents
        .units
        .iter()
        .filter(|u| crate::repair::system::unit_file_in(tree, u).is_some())
        .cloned()
        .collect();
    for s in [
        "vmware-tools",
        "vmtoolsd",
        "hypervkvpd",
        "xe-linux-distribution",
    ] {
        if tree.exists(&format!("/etc/init.d/{s}")) {
            out.push(format!("/etc/init.d/{s}"));
        }
    }
    out
}

impl LinuxReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "system: {} ({} {}), init {}, {} firmware, recipe {}\n",
            self.os.pretty_name,
            self.os.id,
            self.os.version_id,
            format!("{:?}", self.os.init).to_lowercase(),
            match self.firmware.mode {
                Firmware::Bios => "BIOS",
                Firmware::Uefi => "UEFI",
            },
            self.recipe
        );
        for k in &self.kernels {
            let have: Vec<String> = k
                .drivers
                .iter()
                .map(|(d, ok)| format!("{d} {}", if *ok { "yes" } else { "NO" }))
                .collect();
            out.push_str(&format!(
                "  kernel {}: {}; initramfs {}\n",
                k.version,
                have.join(", "),
                k.initramfs.as_deref().unwrap_or("none")
            ));
        }
        out.push_str(&format!(
            "  initramfs generator: {}\n",
            match (&self.initramfs.tool, self.initramfs.runnable) {
                (Some(t), true) => format!("{t} (runs)"),
                (Some(t), false) => format!("{t} (cannot run)"),
                (None, _) => "none".to_owned(),
            }
        ));
        out.push_str(&format!(
            "  boot loader: {}{}\n",
            match self.bootloader.kind {
                Bootloader::Grub2 => "GRUB 2",
                Bootloader::GrubLegacy => "GRUB legacy",
                Bootloader::None => "none",
            },
            self.bootloader
                .version
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default()
        ));
        if self.firmware.mode == Firmware::Uefi {
            out.push_str(&format!(
                "  EFI loaders: {}\n",
                if self.firmware.efi_loaders.is_empty() {
                    "none found".to_owned()
                } else {
                    self.firmware.efi_loaders.join(", ")
                }
            ));
        }
        out.push_str(&format!("  LVM: {}\n", self.lvm.why));
        for s in &self.space {
            out.push_str(&format!(
                "  space on {}: {} MiB and {} inodes free, {} MiB and {} inodes needed\n",
                s.mount,
                s.free_bytes / MIB,
                s.free_inodes,
                s.need_bytes.div_ceil(MIB),
                s.need_inodes
            ));
        }
        let stacks: Vec<String> = self
            .network
            .stacks
            .iter()
            .map(|s| format!("{s:?}").to_lowercase())
            .collect();
        out.push_str(&format!(
            "  network: {}{}\n",
            if stacks.is_empty() {
                "no known stack".to_owned()
            } else {
                stacks.join(", ")
            },
            if self.network.static_config.is_empty() {
                String::new()
            } else {
                format!("; static: {}", self.network.static_config.join("; "))
            }
        ));
        out.push_str(&format!(
            "  SELinux: {}; cloud-init: {}; old platform's agents: {}\n",
            format!("{:?}", self.os.selinux).to_lowercase(),
            if self.os.cloud_init {
                "installed"
            } else {
                "not installed"
            },
            if self.agents.is_empty() {
                "none".to_owned()
            } else {
                self.agents.join(", ")
            }
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::on_lvm;

    #[test]
    fn lvm_specs_are_told_from_partitions() {
        for (spec, lvm) in [
            ("/dev/mapper/vg0-root", true),
            ("/dev/vg0/root", true),
            ("/dev/dm-0", true),
            ("/dev/sda1", false),
            ("/dev/disk/by-id/ata-X-part1", false),
            ("/dev/md/0", false),
            ("UUID=1234", false),
        ] {
            assert_eq!(on_lvm(spec), lvm, "{spec}");
        }
    }
}

#[cfg(test)]
mod tree_tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::super::{Report, Source};
    use super::*;

    /// A tree of `(path, content)`; a path ending in `/` is a directory, a
    /// content starting with `#!` is an executable script.
    fn inspect_files(files: &[(&str, &str)]) -> Report {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let host = d.path().join(p.trim_start_matches('/'));
            if p.ends_with('/') {
                fs::create_dir_all(&host).unwrap();
                continue;
            }
            fs::create_dir_all(host.parent().unwrap()).unwrap();
            fs::write(&host, c).unwrap();
            if c.starts_with("#!") {
                fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let mut r = Report::new(Source::Root, Vec::new());
        inspect(d.path(), None, &mut r).unwrap();
        r.finish()
    }

    fn codes(r: &Report) -> Vec<(Severity, &str)> {
        r.findings
            .iter()
            .map(|f| (f.severity, f.code.as_str()))
            .collect()
    }

    fn detail(r: &Report, code: ErrorCode) -> &str {
        &r.findings.iter().find(|f| f.code == code).unwrap().detail
    }

    #[test]
    fn an_old_centos_says_all_that_will_fail() {
        let r = inspect_files(&[
            ("/etc/redhat-release", "CentOS release 6.10 (Final)\n"),
            ("/boot/grub/grub.conf", "default=0\n"),
            (
                "/etc/sysconfig/network-scripts/ifcfg-eth0",
                "DEVICE=eth0\nBOOTPROTO=static\nIPADDR=192.168.1.10\n",
            ),
            (
                "/etc/sysconfig/network-scripts/ifcfg-lo",
                "DEVICE=lo\nIPADDR=127.0.0.1\n",
            ),
            ("/etc/selinux/config", "SELINUX=enforcing\n"),
            ("/etc/inittab", ""),
            ("/etc/init.d/vmware-tools", "#!/bin/sh\n"),
            ("/etc/fstab", "/dev/sda1 / ext3 defaults 1 1\n"),
            ("/bin/sh", "#!/bin/sh\n"),
        ]);
        assert_eq!(
            codes(&r),
            [
                (Severity::Blocker, "VIRTIO_CHECK_FAILED"),
                (Severity::Blocker, "REPAIR_TOOL_MISSING"),
                (Severity::Blocker, "GRUB_FAILED"),
                (Severity::Warning, "SELINUX_ENFORCING"),
                (Severity::Info, "NETWORK_STATIC"),
                (Severity::Info, "PLATFORM_AGENTS"),
            ]
        );
        assert_eq!(
            detail(&r, ErrorCode::GrubFailed),
            "the migrated system boots with GRUB legacy (older than 1.9); it needs GRUB 2"
        );
        assert_eq!(
            detail(&r, ErrorCode::NetworkStatic),
            "/etc/sysconfig/network-scripts/ifcfg-eth0: eth0 192.168.1.10"
        );
        assert_eq!(
            detail(&r, ErrorCode::PlatformAgents),
            "the repair masks /etc/init.d/vmware-tools"
        );
        assert_eq!(r.blockers, 3);
        assert!(r.blocker_error().is_err());
    }

    #[test]
    fn a_kernel_without_virtio_a_root_on_lvm_and_a_generator_that_cannot_run() {
        let r = inspect_files(&[
            ("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
            ("/boot/vmlinuz-6.1.0-old", "k"),
            ("/lib/modules/6.1.0-old/kernel/drivers/ata/ahci.ko", ""),
            (
                "/lib/modules/6.1.0-old/modules.builtin",
                "kernel/drivers/virtio/virtio_pci.ko\n",
            ),
            ("/boot/grub/grub.cfg", ""),
            ("/boot/grub/i386-pc/", ""),
            (
                "/usr/lib/grub/i386-pc/modinfo.sh",
                "grub_package_version=\"2.06-13\"\n",
            ),
            ("/usr/sbin/update-grub", "#!/bin/sh\n"),
            ("/usr/sbin/update-initramfs", "#!/bin/bash\n"),
            ("/bin/sh", "#!/bin/sh\n"),
            (
                "/etc/fstab",
                "/dev/mapper/vg0-root / ext4 defaults 0 1\n/dev/vg0/srv /srv xfs defaults 0 2\n",
            ),
        ]);
        assert_eq!(
            codes(&r),
            [
                (Severity::Blocker, "VIRTIO_CHECK_FAILED"),
                (Severity::Blocker, "REPAIR_TOOL_MISSING"),
            ]
        );
        assert_eq!(
            detail(&r, ErrorCode::VirtioCheckFailed),
            "kernel 6.1.0-old lacks virtio_blk, virtio_net"
        );
        assert_eq!(
            detail(&r, ErrorCode::RepairToolMissing),
            "the initramfs generator /usr/sbin/update-initramfs cannot run: its interpreter /bin/bash is missing from the system"
        );
        let System::Linux(l) = &r.systems[0] else {
            panic!("not Linux")
        };
        assert_eq!(l.bootloader.version.as_deref(), Some("2.06-13"));
        assert!(l.kernels[0].drivers["virtio_pci"], "built in");
        assert!(!l.kernels[0].drivers["virtio_blk"]);
        assert_eq!(
            l.lvm.volumes,
            ["/ on /dev/mapper/vg0-root", "/srv on /dev/vg0/srv"]
        );
        // A root on LVM is reached by the appliance; a layout it cannot
        // reach is found on the disks (tests/root_lvm.rs).
        assert!(l.lvm.supported);
        assert!(l
            .lvm
            .why
            .starts_with("the system is on logical volumes (/ on /dev/mapper/vg0-root)"));
    }

    #[test]
    fn a_tree_without_an_os_is_a_blocker_with_the_detection_code() {
        let r = inspect_files(&[("/srv/data/file", "x")]);
        assert_eq!(codes(&r), [(Severity::Blocker, "UNSUPPORTED_OS")]);
        assert!(r.systems.is_empty());
    }
}
