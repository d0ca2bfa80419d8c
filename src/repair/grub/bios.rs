//! GRUB's BIOS boot code: grub-install on the target disk (compared by a
//! hash of what it writes), and debconf's `grub-pc/install_devices` pointed
//! at the cloud's boot disk.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::variant;
use crate::job::errors::{coded, Code, ErrorCode};
use crate::repair::detect::OsInfo;
use crate::repair::engine::StepCtx;
use crate::repair::recipe::Recipe;

/// Bytes before the first partition (boot sector and GRUB's embedding area),
/// at most 1 MiB: what lies beyond belongs to a file system whose
/// superblock changes while it is mounted.
fn boot_area_len(disk: &Path) -> u64 {
    const MAX: u64 = 1 << 20;
    let Some(name) = disk
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return MAX;
    };
    let Ok(rd) = std::fs::read_dir(format!("/sys/class/block/{name}")) else {
        return MAX;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("start")).ok())
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .filter(|b| *b > 0)
        .min()
        .unwrap_or(MAX)
        .min(MAX)
}

/// Hash of what grub-install writes for BIOS: the boot area of the disk and
/// GRUB's module directory (whose core.img is what goes into a BIOS boot
/// partition on GPT).
fn bios_digest(disk: &Path, tree: &crate::repair::tree::Tree, dir: &str) -> Result<String> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let len = usize::try_from(boot_area_len(disk)).unwrap_or(1 << 20);
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < buf.len() {
        let n = f
            .read(&mut buf[got..])
            .with_context(|| format!("reading {}", disk.display()))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    h.update(&buf[..got]);
    let d = tree.path(dir)?;
    let mut names: Vec<PathBuf> = match std::fs::read_dir(&d) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for p in names {
        if p.is_file() {
            h.update(p.to_string_lossy().as_bytes());
            h.update(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Install GRUB's BIOS boot code on the disk that holds /boot.
pub(crate) fn install_bios_step(
    ctx: &mut StepCtx,
    os: &OsInfo,
    recipe: &Recipe,
    disk: &Path,
) -> Result<()> {
    let g = variant(ctx, os, recipe)?;
    let lib = format!("{}/i386-pc", g.lib);
    if !ctx.tree.is_dir(&lib) {
        return Err(coded(
            ErrorCode::GrubFailed,
            format!("{lib} is missing: the BIOS GRUB (grub-pc / grub2-pc-modules) is not installed in the migrated system"),
        ));
    }
    let boot_dir = if g.config.starts_with("/boot/grub2/") {
        "/boot/grub2/i386-pc"
    } else {
        "/boot/grub/i386-pc"
    };
    let argv = vec![
        g.install.clone(),
        "--target=i386-pc".to_owned(),
        disk.display().to_string(),
    ];
    let tree = ctx.tree.clone();
    let disk = disk.to_owned();
    ctx.exec_compared(
        &argv,
        "install GRUB's BIOS boot code on the target disk",
        &|| bios_digest(&disk, &tree, boot_dir),
    )
    .code(ErrorCode::GrubFailed)?;
    debconf_step(ctx)
}

/// Where Debian's debconf keeps its answers.
pub(crate) const DEBCONF: &str = "/var/cache/debconf/config.dat";
/// The boot disk on the cloud: the first virtio-blk disk.
pub(crate) const CLOUD_BOOT_DISK: &str = "/dev/vda";

/// grub-pc's postinst installs the boot code on the disks of
/// `grub-pc/install_devices`; the old machine's (`/dev/sda`, a by-id name
/// of its disk) are gone, and the next GRUB update stops at "the GRUB boot
/// loader was previously installed to a disk that is no longer present".
fn debconf_step(ctx: &mut StepCtx) -> Result<()> {
    let Some(text) = ctx.tree.read(DEBCONF)? else {
        return Ok(());
    };
    if let Some(new) = rewrite_install_devices(&text, CLOUD_BOOT_DISK) {
        ctx.write(DEBCONF, &new, 0o644)?;
    }
    Ok(())
}

/// debconf's `config.dat` (RFC 822-like records separated by blank lines)
/// with `grub-pc/install_devices` set to `disk`; None when it has no such
/// question.
pub(crate) fn rewrite_install_devices(text: &str, disk: &str) -> Option<String> {
    const NAME: &str = "grub-pc/install_devices";
    let mut out = String::with_capacity(text.len() + 32);
    let mut found = false;
    let mut in_record = false;
    let mut value_done = false;
    for raw in text.split_inclusive('\n') {
        let line = raw.trim_end_matches('\n');
        if line.is_empty() {
            if in_record && !value_done {
                out.push_str(&format!("Value: {disk}\n"));
            }
            in_record = false;
            out.push_str(raw);
            continue;
        }
        if let Some(name) = line.strip_prefix("Name:") {
            in_record = name.trim() == NAME;
            value_done = false;
            found |= in_record;
        } else if in_record && line.starts_with("Value:") {
            out.push_str(&format!("Value: {disk}\n"));
            value_done = true;
            continue;
        }
        out.push_str(raw);
    }
    if in_record && !value_done {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("Value: {disk}\n"));
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debconf_install_devices() {
        let record = |v: Option<&str>| {
            let value = v.map(|v| format!("Value: {v}\n")).unwrap_or_default();
            format!("Name: grub-pc/install_devices\nTemplate: grub-pc/install_devices\n{value}Owners: grub-pc\nFlags: seen\nVariables:\n CHOICES = /dev/sda (2147 MB; QEMU_HARDDISK)\n RAW_CHOICES = /dev/sda\n")
        };
        let before = "Name: grub-pc/hidden_timeout\nTemplate: grub-pc/hidden_timeout\nValue: false\nOwners: grub-pc\n\n";
        let after = "\nName: grub-pc/install_devices_disks_changed\nTemplate: grub-pc/install_devices_disks_changed\nOwners: grub-pc\n";
        let cases: &[(&str, String, Option<String>)] = &[
            (
                "a kernel name",
                format!("{before}{}{after}", record(Some("/dev/sda"))),
                Some(format!("{before}{}{after}", record(Some("/dev/vda")))),
            ),
            (
                "a by-id name",
                format!("{before}{}{after}", record(Some("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001"))),
                Some(format!("{before}{}{after}", record(Some("/dev/vda")))),
            ),
            (
                "no value yet: inserted at the end of its record",
                format!("{before}{}{after}", record(None)),
                Some(format!(
                    "{before}Name: grub-pc/install_devices\nTemplate: grub-pc/install_devices\nOwners: grub-pc\nFlags: seen\nVariables:\n CHOICES = /dev/sda (2147 MB; QEMU_HARDDISK)\n RAW_CHOICES = /dev/sda\nValue: /dev/vda\n{after}"
                )),
            ),
            (
                "the last record, no trailing newline",
                "Name: grub-pc/install_devices\nTemplate: grub-pc/install_devices\nValue: /dev/sda".to_owned(),
                Some("Name: grub-pc/install_devices\nTemplate: grub-pc/install_devices\nValue: /dev/vda\n".to_owned()),
            ),
            (
                "no grub-pc (a UEFI system)",
                before.to_owned(),
                None,
            ),
        ];
        for (name, input, want) in cases {
            let got = rewrite_install_devices(input, "/dev/vda");
            assert_eq!(got.as_deref(), want.as_deref(), "{name}");
            if let Some(g) = got {
                assert_eq!(
                    rewrite_install_devices(&g, "/dev/vda").as_deref(),
                    Some(g.as_str()),
                    "{name}: idempotent"
                );
            }
        }
        // The other questions of the database are not touched.
        let g = rewrite_install_devices(&cases[0].1, "/dev/vda").unwrap();
        assert!(g.contains(
            "Name: grub-pc/hidden_timeout\nTemplate: grub-pc/hidden_timeout\nValue: false\n"
        ));
    }
}
