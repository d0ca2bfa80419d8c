//! GRUB on UEFI: a loader on the ESP's removable path, either built by the
//! system's grub-mkstandalone around an early configuration that finds
//! /boot by UUID, or the vendor's prebuilt (and possibly signed) one copied.

use anyhow::{Context, Result};

use super::variant;
use crate::job::errors::{coded, Code, ErrorCode};
use crate::repair::detect::OsInfo;
use crate::repair::devices::DeviceMap;
use crate::repair::engine::StepCtx;
use crate::repair::esp::Esp;
use crate::repair::recipe::Recipe;

/// The removable-media path every UEFI firmware boots without an NVRAM entry.
pub(crate) const REMOVABLE: &str = "EFI/BOOT/BOOTX64.EFI";
const REMOVABLE_DIR: &str = "EFI/BOOT";
/// Where the loader is built inside the migrated root (its /tmp).
const STAGE: &str = "/tmp/ferry-esp";

/// The configuration embedded in the loader: find /boot by UUID and hand
/// over to the system's grub.cfg. The first line marks what it was built
/// for, so a re-run knows the loader on the ESP is current.
///
/// Partition maps are not loaded on demand, and a failed search must not
/// fall back to the memdisk, whose own grub.cfg is this file.
///
/// With `modules_on_disk`, the prefix moves to the system's GRUB directory,
/// so that the modules `grub.cfg` loads come from the same GRUB as the
/// modules there. Without (a system whose GRUB has no module directory under
/// /boot), the prefix stays in the loader's memdisk, which holds them all.
pub(crate) fn early_config(uuid: &str, prefix: &str, modules_on_disk: bool) -> String {
    let (mark, enter) = if modules_on_disk {
        (
            "",
            format!("set prefix=($root){prefix}\nconfigfile $prefix/grub.cfg\n"),
        )
    } else {
        (
            " memdisk-modules",
            format!("configfile ($root){prefix}/grub.cfg\n"),
        )
    };
    format!(
        "# ferry-early-config {uuid} {prefix}{mark}\n\
         insmod part_gpt\n\
         insmod part_msdos\n\
         insmod ext2\n\
         insmod xfs\n\
         insmod btrfs\n\
         search --no-floppy --fs-uuid --set=ferry_boot {uuid}\n\
         if [ -z \"$ferry_boot\" ]; then\n\
         \x20 echo \"ferry: no file system with UUID {uuid}\"\n\
         \x20 sleep 30\n\
         \x20 reboot\n\
         fi\n\
         set root=$ferry_boot\n\
         {enter}"
    )
}

/// A loader that the distribution put on the ESP, `EFI/<vendor>/grubx64.efi`
/// with its modules built in (the RHEL family's, and every Secure Boot
/// system's), with the shim that starts it and the `grub.cfg` beside it
/// that leads to the system's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrebuiltLoader {
    pub grub: String,
    pub shim: Option<String>,
    pub config: Option<String>,
}

impl PrebuiltLoader {
    /// (destination, source) on the ESP: the removable path starts what the
    /// old machine's boot entry started (the shim, when there is one, which
    /// loads `grubx64.efi` from its own directory), and `grub.cfg` is found
    /// beside the loader as in the vendor's directory.
    pub fn copies(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match &self.shim {
            Some(shim) => {
                out.push((REMOVABLE.to_owned(), shim.clone()));
                out.push((format!("{REMOVABLE_DIR}/grubx64.efi"), self.grub.clone()));
            }
            None => out.push((REMOVABLE.to_owned(), self.grub.clone())),
        }
        if let Some(cfg) = &self.config {
            out.push((format!("{REMOVABLE_DIR}/grub.cfg"), cfg.clone()));
        }
        out
    }
}

/// The vendor's prebuilt loader on the ESP, if there is one.
pub(crate) fn find_prebuilt(esp: &dyn Esp) -> Result<Option<PrebuiltLoader>> {
    for (vendor, is_dir) in esp.list("EFI")? {
        if !is_dir || vendor.eq_ignore_ascii_case("BOOT") {
            continue;
        }
        let dir = format!("EFI/{vendor}");
        let files = esp.list(&dir)?;
        let find = |n: &str| {
            files
                .iter()
                .find(|(f, d)| !d && f.eq_ignore_ascii_case(n))
                .map(|(f, _)| format!("{dir}/{f}"))
        };
        if let Some(grub) = find("grubx64.efi") {
            return Ok(Some(PrebuiltLoader {
                grub,
                shim: find("shimx64.efi"),
                config: find("grub.cfg"),
            }));
        }
    }
    Ok(None)
}

/// Copy the vendor's loader to the removable path; nothing is written when
/// the ESP has it already.
fn install_prebuilt(ctx: &mut StepCtx, esp: &dyn Esp, loader: &PrebuiltLoader) -> Result<()> {
    ctx.note(format!(
        "the system's GRUB has no module directory under /boot; its prebuilt loader {} goes to the removable path",
        loader.grub
    ));
    for (dest, src) in loader.copies() {
        let data = esp
            .read(&src)?
            .with_context(|| format!("{src} vanished from the ESP"))?;
        let existing = esp.read(&dest)?;
        if existing.as_deref() == Some(data.as_slice()) {
            continue;
        }
        if ctx.apply() {
            esp.write(&dest, &data)
                .with_context(|| format!("copying {src} to {dest} on the ESP"))
                .code(ErrorCode::GrubFailed)?;
        }
        ctx.record_binary(
            &format!("ESP:/{dest}"),
            existing.is_some(),
            &format!("copy of {src}, {} bytes", data.len()),
        );
    }
    Ok(())
}

/// Put a GRUB EFI loader on the ESP's removable path, which every firmware
/// boots without a boot entry (the old machine's entries stay behind).
///
/// A system whose GRUB keeps its modules under /boot gets a self-contained
/// loader built by its own grub-mkstandalone (it probes no devices). A
/// system with no module directory there boots its vendor's prebuilt image
/// (copied as it is, so a signed chain stays signed), or, when it has none,
/// a standalone loader that keeps using the modules of its memdisk.
pub(crate) fn install_uefi_step(
    ctx: &mut StepCtx,
    os: &OsInfo,
    recipe: &Recipe,
    map: &DeviceMap,
    esp: &dyn Esp,
) -> Result<()> {
    let g = variant(ctx, os, recipe)?;
    let grub_dir = g
        .config
        .rsplit_once('/')
        .map(|x| x.0)
        .unwrap_or("/boot/grub");
    let modules_on_disk = ctx.tree.is_dir(&format!("{grub_dir}/x86_64-efi"));
    if !modules_on_disk {
        if let Some(loader) =
            find_prebuilt(esp).context("looking for the vendor's loader on the ESP")?
        {
            return install_prebuilt(ctx, esp, &loader);
        }
    }
    let lib = format!("{}/x86_64-efi", g.lib);
    if !ctx.tree.is_dir(&lib) {
        return Err(coded(
            ErrorCode::GrubFailed,
            format!("{lib} is missing and the ESP holds no EFI/<vendor>/grubx64.efi: the UEFI GRUB (grub-efi-amd64-bin / grub2-efi-x64-modules) is not installed in the migrated system"),
        ));
    }
    let (uuid, prefix) = grub_dir_location(map, grub_dir)?;
    let early = early_config(uuid, &prefix, modules_on_disk);
    if loader_is_current(esp, &early)? {
        return Ok(());
    }
    build_standalone(ctx, esp, &g.install, &early)
}

/// The UUID of the file system that holds GRUB's directory, and the
/// directory's path inside that file system (/boot's own, or the root's).
fn grub_dir_location<'m>(map: &'m DeviceMap, grub_dir: &str) -> Result<(&'m str, String)> {
    let (vol, prefix) = match map.by_mountpoint("/boot") {
        Some(v) => (
            v,
            grub_dir
                .strip_prefix("/boot")
                .unwrap_or(grub_dir)
                .to_owned(),
        ),
        None => (
            map.by_mountpoint("/")
                .context("the device map has no root file system")?,
            grub_dir.to_owned(),
        ),
    };
    let uuid = vol
        .uuid
        .as_deref()
        .with_context(|| format!("the file system holding {grub_dir} has no UUID"))?;
    Ok((uuid, prefix))
}

/// Whether the loader on the removable path was built for this early
/// configuration: it holds the configuration's first line, the mark.
fn loader_is_current(esp: &dyn Esp, early: &str) -> Result<bool> {
    let marker = format!("{}\n", early.lines().next().unwrap_or_default()).into_bytes();
    if let Some(existing) = esp.read(REMOVABLE)? {
        if existing
            .windows(marker.len())
            .any(|w| w == marker.as_slice())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Build the standalone loader with the system's grub-mkstandalone in the
/// migrated root's /tmp, the early configuration as its memdisk's
/// `grub.cfg`, and write it to the ESP's removable path.
fn build_standalone(ctx: &mut StepCtx, esp: &dyn Esp, install: &str, early: &str) -> Result<()> {
    let mkstandalone = install.replace("-install", "-mkstandalone");
    let argv: Vec<String> = vec![
        mkstandalone,
        "-O".into(),
        "x86_64-efi".into(),
        "-o".into(),
        format!("{STAGE}/BOOTX64.EFI"),
        format!("boot/grub/grub.cfg={STAGE}/early.cfg"),
    ];
    if ctx.apply() {
        ctx.tree
            .write(&format!("{STAGE}/early.cfg"), early.as_bytes(), 0o644)?;
    }
    let res = ctx.exec(&argv, &format!("build the UEFI loader for {REMOVABLE}"));
    if ctx.apply() {
        let staged = res.and_then(|_| {
            std::fs::read(ctx.tree.path(&format!("{STAGE}/BOOTX64.EFI"))?)
                .context("reading the staged BOOTX64.EFI")
        });
        let cleanup = ctx.tree.remove(STAGE);
        let staged = staged.code(ErrorCode::GrubFailed)?;
        cleanup.context("removing the loader's staging directory")?;
        esp.write(REMOVABLE, &staged)?;
        ctx.note(format!(
            "{REMOVABLE}: {} bytes written to the ESP",
            staged.len()
        ));
    } else {
        res?;
    }
    Ok(())
}
