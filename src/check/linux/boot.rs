//! What boots the system: its kernels and their drivers, the initramfs
//! generator, the boot loader, and the EFI loaders under UEFI.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result};
use serde::Serialize;

use super::super::{Finding, Severity};
use crate::job::errors::ErrorCode;
use crate::layout::FatPartition;
use crate::repair::detect::{self, Bootloader, Firmware, OsInfo};
use crate::repair::engine::StepCtx;
use crate::repair::initramfs::{kernel_modules, DRIVERS, REQUIRED};
use crate::repair::recipe::Recipe;
use crate::repair::tree::Tree;

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

pub(super) fn kernels(
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

pub(super) fn initramfs(
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

pub(super) fn bootloader(
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

pub(super) fn efi_loaders(
    tree: &Tree,
    esp: Option<&FatPartition>,
    firmware: Firmware,
) -> Vec<String> {
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
