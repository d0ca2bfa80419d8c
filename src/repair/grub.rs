//! GRUB: the kernel command line (root by UUID, serial console, no stale
//! `resume=`, stable interface names), the generated `grub.cfg`, and the
//! boot code on the target disk.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::detect::{unquote, Bootloader, OsInfo};
use super::devices::{DeviceMap, Resolved};
use super::engine::StepCtx;
use super::recipe::{GrubRecipe, Recipe};
use crate::job::errors::{coded, Code, ErrorCode};

/// Settings written into GRUB's defaults file.
const SETTINGS: &[(&str, &str)] = &[
    ("GRUB_TERMINAL", "console serial"),
    (
        "GRUB_SERIAL_COMMAND",
        "serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1",
    ),
    // os-prober in the appliance's chroot would add the appliance's own disks.
    ("GRUB_DISABLE_OS_PROBER", "true"),
    // grub-mkconfig writes root=/dev/... when this is true.
    ("GRUB_DISABLE_LINUX_UUID", "false"),
];

/// The GRUB variant of the recipe present in the tree, or the FAQ's error.
pub fn variant<'a>(ctx: &StepCtx, os: &OsInfo, recipe: &'a Recipe) -> Result<&'a GrubRecipe> {
    match os.bootloader {
        Bootloader::Grub2 => {}
        Bootloader::GrubLegacy => {
            return Err(coded(
                ErrorCode::GrubFailed,
                "the migrated system boots with GRUB legacy (older than 1.9); it needs GRUB 2",
            ))
        }
        Bootloader::None => {
            return Err(coded(
                ErrorCode::GrubFailed,
                "no GRUB is installed in the migrated system",
            ))
        }
    }
    super::recipe::pick(ctx.tree, &recipe.grub, |g| &g.tool).ok_or_else(|| {
        let tools: Vec<String> = recipe.grub.iter().flat_map(|g| g.tool.clone()).collect();
        coded(
            ErrorCode::GrubFailed,
            format!(
                "recipe {} expects one of {} in the migrated system",
                recipe.name,
                tools.join(", ")
            ),
        )
    })
}

/// Rewrite kernel arguments: `root=` by UUID, stale `resume=` out, the
/// recipe's arguments replacing any of the same key.
pub fn fix_args(args: &str, map: &DeviceMap, add: &[String]) -> String {
    let key = |a: &str| a.split('=').next().unwrap_or(a).to_owned();
    let add_keys: Vec<String> = add.iter().map(|a| key(a)).collect();
    let mut out: Vec<String> = Vec::new();
    for a in args.split_whitespace() {
        if add_keys.contains(&key(a)) {
            continue;
        }
        // dracut's and the RHEL family's: activate this volume group or
        // volume. One laid out as plain partitions is gone, and a dracut
        // told to wait for it would wait in vain.
        let vg_arg = a
            .strip_prefix("rd.lvm.lv=")
            .and_then(|v| v.split('/').next())
            .or_else(|| a.strip_prefix("rd.lvm.vg="));
        if vg_arg.is_some_and(|vg| map.vg_flattened(vg)) {
            continue;
        }
        if let Some(dev) = a.strip_prefix("root=") {
            match map.resolve(dev, Some("/")) {
                Resolved::Migrated(v) if dev.starts_with("/dev/") && v.uuid.is_some() => {
                    out.push(format!(
                        "root=UUID={}",
                        v.uuid.as_deref().unwrap_or_default()
                    ));
                }
                _ => out.push(a.to_owned()),
            }
            continue;
        }
        if let Some(dev) = a.strip_prefix("resume=") {
            match map.resolve(dev, None) {
                Resolved::Migrated(v) if v.fstype.as_deref() == Some("swap") => match &v.uuid {
                    Some(u) if dev.starts_with("/dev/") => out.push(format!("resume=UUID={u}")),
                    _ => out.push(a.to_owned()),
                },
                // LVM swap names stay valid.
                Resolved::Other if dev.starts_with("/dev/mapper/") => out.push(a.to_owned()),
                _ => {}
            }
            continue;
        }
        out.push(a.to_owned());
    }
    out.extend(add.iter().cloned());
    out.join(" ")
}

/// The repaired defaults file (`/etc/default/grub`).
pub fn rewrite_defaults(text: &str, map: &DeviceMap, add: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let find = |lines: &[String], k: &str| {
        lines.iter().rposition(|l| {
            let t = l.trim_start();
            t.strip_prefix(k).is_some_and(|r| r.starts_with('='))
        })
    };
    for k in ["GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"] {
        let extra: &[String] = if k == "GRUB_CMDLINE_LINUX" { add } else { &[] };
        // Arguments we set go only into GRUB_CMDLINE_LINUX (also used by
        // recovery entries); the same keys are dropped from the default.
        let drop_keys: Vec<String> = add
            .iter()
            .map(|a| format!("{}=", a.split('=').next().unwrap_or(a)))
            .collect();
        match find(&lines, k) {
            Some(i) => {
                let v = unquote(lines[i].split_once('=').map(|x| x.1).unwrap_or("").trim());
                let mut fixed = fix_args(&v, map, extra);
                if extra.is_empty() {
                    fixed = fixed
                        .split_whitespace()
                        .filter(|a| !drop_keys.iter().any(|d| a.starts_with(d.as_str())))
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                if fixed != v {
                    lines[i] = format!("{k}=\"{fixed}\"");
                }
            }
            None if !extra.is_empty() => {
                lines.push(format!("{k}=\"{}\"", fix_args("", map, extra)))
            }
            None => {}
        }
    }
    for (k, v) in SETTINGS {
        let want = format!("{k}=\"{v}\"");
        match find(&lines, k) {
            Some(i) => {
                let cur = unquote(lines[i].split_once('=').map(|x| x.1).unwrap_or("").trim());
                if cur != *v {
                    lines[i] = want;
                }
            }
            None => lines.push(want),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The step that edits the kernel command line wherever the system keeps it.
pub fn defaults_step(
    ctx: &mut StepCtx,
    os: &OsInfo,
    recipe: &Recipe,
    map: &DeviceMap,
) -> Result<()> {
    let g = variant(ctx, os, recipe)?;
    let old = ctx.tree.read(&g.defaults)?.unwrap_or_default();
    let new = rewrite_defaults(&old, map, &recipe.kernel_args.add);
    ctx.write(&g.defaults, &new, 0o644)?;
    // Boot Loader Specification entries (RHEL 8+, Fedora) carry the command
    // line themselves.
    for name in ctx.tree.list("/boot/loader/entries")? {
        if !name.ends_with(".conf") {
            continue;
        }
        let p = format!("/boot/loader/entries/{name}");
        let Some(t) = ctx.tree.read(&p)? else {
            continue;
        };
        let new = rewrite_bls(&t, map, &recipe.kernel_args.add);
        ctx.write(&p, &new, 0o644)?;
    }
    if let Some(t) = ctx.tree.read("/etc/kernel/cmdline")? {
        let new = format!("{}\n", fix_args(t.trim(), map, &recipe.kernel_args.add));
        ctx.write("/etc/kernel/cmdline", &new, 0o644)?;
    }
    // initramfs-tools waits for a resume device that no longer exists.
    let resume = "/etc/initramfs-tools/conf.d/resume";
    if let Some(t) = ctx.tree.read(resume)? {
        let new = rewrite_resume_conf(&t, map);
        ctx.write(resume, &new, 0o644)?;
    }
    Ok(())
}

pub fn rewrite_bls(text: &str, map: &DeviceMap, add: &[String]) -> String {
    let mut out = String::new();
    for l in text.lines() {
        match l.strip_prefix("options") {
            Some(rest) if rest.starts_with(char::is_whitespace) => {
                out.push_str(&format!("options {}", fix_args(rest.trim(), map, add)));
            }
            _ => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

pub fn rewrite_resume_conf(text: &str, map: &DeviceMap) -> String {
    let mut out = String::new();
    for l in text.lines() {
        if let Some(v) = l.trim().strip_prefix("RESUME=") {
            let v = unquote(v);
            let new = match map.resolve(&v, None) {
                Resolved::Migrated(vol) if vol.fstype.as_deref() == Some("swap") => match &vol.uuid
                {
                    Some(u) if v.starts_with("/dev/") => format!("RESUME=UUID={u}"),
                    _ => l.to_owned(),
                },
                Resolved::Other => l.to_owned(),
                _ => "RESUME=none".to_owned(),
            };
            out.push_str(&new);
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    out
}

/// What is wrong with a generated grub.cfg, if anything.
pub fn check_config(
    cfg: &str,
    os: &OsInfo,
    root_uuid: Option<&str>,
    required: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    let linux: Vec<&str> = cfg
        .lines()
        .map(str::trim)
        .filter(|l| {
            matches!(
                l.split_whitespace().next(),
                Some("linux" | "linux16" | "linuxefi")
            )
        })
        .collect();
    let bls = cfg.contains("blscfg");
    if linux.is_empty() && !bls {
        problems.push("no kernel entry".to_owned());
    }
    for l in &linux {
        let root = l.split_whitespace().find_map(|a| a.strip_prefix("root="));
        match (root, root_uuid) {
            (Some(r), Some(u)) if r.starts_with("/dev/") && !r.starts_with("/dev/mapper/") => {
                problems.push(format!("an entry boots root={r} instead of root=UUID={u}"))
            }
            (None, _) => problems.push("an entry has no root=".to_owned()),
            _ => {}
        }
        // The recipe's arguments (serial console, stable NIC names...):
        // a grub.cfg made before grub-defaults changed, by the source or by
        // an interrupted repair, lacks them.
        for arg in required {
            if !l.split_whitespace().any(|a| a == arg) {
                problems.push(format!("an entry lacks {arg}"));
            }
        }
    }
    if !bls {
        for k in &os.kernels {
            if !linux.iter().any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|img| img.ends_with(&format!("-{}", k.version)))
            }) {
                problems.push(format!("no entry for kernel {}", k.version));
            }
        }
    }
    problems.dedup();
    problems
}

/// `root=` arguments that name a migrated volume by its node on the
/// appliance: a logical volume by `/dev/mapper/<vg>-<lv>`, anything else
/// by `UUID=`.
pub fn name_roots(cfg: &str, map: &DeviceMap) -> String {
    let mut out = String::with_capacity(cfg.len());
    for line in cfg.split_inclusive('\n') {
        let fixed: Option<String> = line.split_whitespace().find_map(|a| {
            let node = a.strip_prefix("root=")?;
            let v = map.volumes().find(|v| v.node.as_os_str() == node)?;
            let name = crate::layout::lvm::names_of(&v.node)
                .into_iter()
                .next()
                .map(|n| format!("/dev/{n}"))
                .or_else(|| v.uuid.as_ref().map(|u| format!("UUID={u}")))?;
            Some(line.replacen(a, &format!("root={name}"), 1))
        });
        out.push_str(fixed.as_deref().unwrap_or(line));
    }
    out
}

/// Regenerate grub.cfg with the system's own tool when it is stale.
pub fn config_step(
    ctx: &mut StepCtx,
    os: &OsInfo,
    recipe: &Recipe,
    map: &DeviceMap,
    defaults_changed: bool,
) -> Result<()> {
    let g = variant(ctx, os, recipe)?;
    let root_uuid = map.by_mountpoint("/").and_then(|v| v.uuid.clone());
    let current = ctx.tree.read(&g.config)?;
    let problems = match &current {
        None => vec!["missing".to_owned()],
        Some(c) => check_config(c, os, root_uuid.as_deref(), &recipe.kernel_args.add),
    };
    if !defaults_changed && problems.is_empty() {
        return Ok(());
    }
    if !problems.is_empty() {
        ctx.note(format!("{}: {}", g.config, problems.join("; ")));
    }
    let tool = g.mkconfig[0].clone();
    ctx.exec(
        &g.mkconfig,
        &format!("regenerate {} with the migrated system's {tool}", g.config),
    )
    .code(ErrorCode::GrubFailed)?;
    if ctx.apply() {
        let mut cfg = ctx.tree.read(&g.config)?.unwrap_or_default();
        let named = name_roots(&cfg, map);
        if named != cfg {
            // The tool named the appliance's node of the root (a logical
            // volume seen as a partition node it cannot map to GRUB's
            // view of the disk): the name the system knows it by instead.
            let mode = std::fs::metadata(ctx.tree.path(&g.config)?)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                .unwrap_or(0o444);
            ctx.tree
                .write(&g.config, named.as_bytes(), mode)
                .with_context(|| format!("writing {} in the migrated root", g.config))?;
            cfg = named;
        }
        ctx.record_written(&g.config, current.as_deref(), Some(&cfg));
        let left = check_config(&cfg, os, root_uuid.as_deref(), &recipe.kernel_args.add);
        if !left.is_empty() {
            return Err(coded(
                ErrorCode::GrubFailed,
                format!(
                    "{tool} wrote {} with problems: {}",
                    g.config,
                    left.join("; ")
                ),
            ));
        }
    }
    Ok(())
}

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
fn bios_digest(disk: &Path, tree: &super::tree::Tree, dir: &str) -> Result<String> {
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
pub fn install_bios_step(
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
pub const DEBCONF: &str = "/var/cache/debconf/config.dat";
/// The boot disk on the cloud: the first virtio-blk disk.
pub const CLOUD_BOOT_DISK: &str = "/dev/vda";

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
pub fn rewrite_install_devices(text: &str, disk: &str) -> Option<String> {
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

/// The removable-media path every UEFI firmware boots without an NVRAM entry.
pub const REMOVABLE: &str = "EFI/BOOT/BOOTX64.EFI";
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
pub fn early_config(uuid: &str, prefix: &str, modules_on_disk: bool) -> String {
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
pub struct PrebuiltLoader {
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
pub fn find_prebuilt(esp: &dyn super::esp::Esp) -> Result<Option<PrebuiltLoader>> {
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
fn install_prebuilt(
    ctx: &mut StepCtx,
    esp: &dyn super::esp::Esp,
    loader: &PrebuiltLoader,
) -> Result<()> {
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
pub fn install_uefi_step(
    ctx: &mut StepCtx,
    os: &OsInfo,
    recipe: &Recipe,
    map: &DeviceMap,
    esp: &dyn super::esp::Esp,
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
    let early = early_config(uuid, &prefix, modules_on_disk);
    let marker = format!("{}\n", early.lines().next().unwrap_or_default()).into_bytes();
    if let Some(existing) = esp.read(REMOVABLE)? {
        if existing
            .windows(marker.len())
            .any(|w| w == marker.as_slice())
        {
            return Ok(());
        }
    }
    let mkstandalone = g.install.replace("-install", "-mkstandalone");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repair::fstab::tests::map;

    #[test]
    fn a_root_named_by_the_appliances_node_gets_its_stable_name() {
        use crate::repair::devices::{MigratedDisk, Volume};
        let map = DeviceMap {
            renamed: Vec::new(),
            disks: vec![MigratedDisk {
                source_names: vec!["/dev/sda".into()],
                target: "/dev/loop1".into(),
                volumes: vec![Volume {
                    partition: None,
                    node: "/dev/loop1p129".into(),
                    fstype: Some("ext4".into()),
                    uuid: Some("f6f8".into()),
                    mountpoint: Some("/".into()),
                    ..Default::default()
                }],
            }],
        };
        let cfg = "menuentry 'Debian' {\n\tlinux\t/vmlinuz-6.1 root=/dev/loop1p129 ro quiet\n}\n\tlinux /vmlinuz root=UUID=x ro\n";
        assert_eq!(
            name_roots(cfg, &map),
            "menuentry 'Debian' {\n\tlinux\t/vmlinuz-6.1 root=UUID=f6f8 ro quiet\n}\n\tlinux /vmlinuz root=UUID=x ro\n"
        );
    }

    fn add() -> Vec<String> {
        crate::repair::recipe::KernelArgs::default().add
    }

    #[test]
    fn kernel_args() {
        let m = map();
        let cases: &[(&str, &str)] = &[
            ("", "console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"),
            (
                "root=/dev/sda2 ro quiet console=tty1 resume=/dev/sda5",
                "root=UUID=22222222-2222-4222-8222-222222222222 ro quiet resume=UUID=55555555-5555-4555-8555-555555555555 console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0",
            ),
            ("resume=/dev/sdb2 rhgb", "rhgb console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"),
            ("resume=UUID=deadbeef crashkernel=auto", "crashkernel=auto console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"),
            ("root=/dev/mapper/cl-root resume=/dev/mapper/cl-swap rd.lvm.lv=cl/root", "root=/dev/mapper/cl-root resume=/dev/mapper/cl-swap rd.lvm.lv=cl/root console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"),
        ];
        for (input, want) in cases {
            let got = fix_args(input, &m, &add());
            assert_eq!(got, *want, "{input}");
            assert_eq!(fix_args(&got, &m, &add()), got, "idempotent: {input}");
        }
    }

    /// The map of a system whose volume group `cl` was laid out as plain
    /// partitions: root and swap by their UUIDs.
    fn flattened_map() -> DeviceMap {
        use crate::layout::flatten::Renamed;
        let mut m = map();
        for (from, to) in [
            (
                "/dev/mapper/cl-root",
                "UUID=22222222-2222-4222-8222-222222222222",
            ),
            ("/dev/cl/root", "UUID=22222222-2222-4222-8222-222222222222"),
            (
                "/dev/mapper/cl-swap",
                "UUID=55555555-5555-4555-8555-555555555555",
            ),
            ("/dev/cl/swap", "UUID=55555555-5555-4555-8555-555555555555"),
        ] {
            m.renamed.push(Renamed {
                from: from.into(),
                to: to.into(),
            });
        }
        m
    }

    #[test]
    fn a_flattened_volume_group_leaves_the_command_line() {
        let m = flattened_map();
        let input = "root=/dev/mapper/cl-root ro resume=/dev/mapper/cl-swap rd.lvm.lv=cl/root rd.lvm.lv=cl/swap rd.lvm.vg=cl rd.lvm.lv=data/srv rhgb";
        let got = fix_args(input, &m, &add());
        assert_eq!(
            got,
            "root=UUID=22222222-2222-4222-8222-222222222222 ro resume=UUID=55555555-5555-4555-8555-555555555555 rd.lvm.lv=data/srv rhgb console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
        );
        assert_eq!(fix_args(&got, &m, &add()), got, "idempotent");
        assert_eq!(
            rewrite_resume_conf("RESUME=/dev/mapper/cl-swap\n", &m),
            "RESUME=UUID=55555555-5555-4555-8555-555555555555\n"
        );
        // Without the renaming, LVM names stay.
        assert_eq!(
            rewrite_resume_conf("RESUME=/dev/mapper/cl-swap\n", &map()),
            "RESUME=/dev/mapper/cl-swap\n"
        );
    }

    #[test]
    fn defaults_file() {
        let input = "# If you change this file, run 'update-grub'\nGRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet console=tty1\"\nGRUB_CMDLINE_LINUX=\"resume=/dev/sdb2\"\n#GRUB_TERMINAL=console\nGRUB_DISABLE_LINUX_UUID=true\n";
        let want = "# If you change this file, run 'update-grub'\nGRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0\"\n#GRUB_TERMINAL=console\nGRUB_DISABLE_LINUX_UUID=\"false\"\nGRUB_TERMINAL=\"console serial\"\nGRUB_SERIAL_COMMAND=\"serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1\"\nGRUB_DISABLE_OS_PROBER=\"true\"\n";
        let got = rewrite_defaults(input, &map(), &add());
        assert_eq!(got, want);
        assert_eq!(rewrite_defaults(&got, &map(), &add()), got);
    }

    #[test]
    fn bls_and_resume_conf() {
        let bls = "title CentOS Stream (5.14.0-70.el9.x86_64) 9\nversion 5.14.0-70.el9.x86_64\nlinux /vmlinuz-5.14.0-70.el9.x86_64\noptions root=/dev/sda2 ro resume=/dev/sdb1 rhgb quiet\n";
        let want = "title CentOS Stream (5.14.0-70.el9.x86_64) 9\nversion 5.14.0-70.el9.x86_64\nlinux /vmlinuz-5.14.0-70.el9.x86_64\noptions root=UUID=22222222-2222-4222-8222-222222222222 ro rhgb quiet console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0\n";
        assert_eq!(rewrite_bls(bls, &map(), &add()), want);
        assert_eq!(
            rewrite_resume_conf("RESUME=/dev/sda5\n", &map()),
            "RESUME=UUID=55555555-5555-4555-8555-555555555555\n"
        );
        assert_eq!(
            rewrite_resume_conf("RESUME=/dev/sdc1\n", &map()),
            "RESUME=none\n"
        );
        assert_eq!(
            rewrite_resume_conf("RESUME=none\n", &map()),
            "RESUME=none\n"
        );
    }

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

    #[test]
    fn grub_cfg_checks() {
        use crate::repair::detect::*;
        let os = OsInfo {
            id: "debian".into(),
            id_like: vec![],
            version_id: "12".into(),
            pretty_name: String::new(),
            source: String::new(),
            kernels: vec![Kernel {
                version: "6.1.0-27-amd64".into(),
                image: String::new(),
                modules_dir: String::new(),
            }],
            bootloader: Bootloader::Grub2,
            firmware: Firmware::Bios,
            init: InitSystem::Systemd,
            network: vec![],
            cloud_init: false,
            selinux: SelinuxMode::Absent,
        };
        let required = crate::repair::recipe::KernelArgs::default().add;
        let good = "\tlinux\t/boot/vmlinuz-6.1.0-27-amd64 root=UUID=2222 ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0\n";
        assert!(check_config(good, &os, Some("2222"), &required).is_empty());
        let bad = "\tlinux\t/boot/vmlinuz-6.1.0-27-amd64 root=/dev/loop0p1 ro quiet\n";
        assert_eq!(
            check_config(bad, &os, Some("2222"), &required[1..2]),
            [
                "an entry boots root=/dev/loop0p1 instead of root=UUID=2222",
                "an entry lacks console=ttyS0,115200n8"
            ]
        );
        // A source's own grub.cfg with a serial console but the old NIC
        // naming (what an interrupted repair leaves when it stopped before
        // grub-config): stale, so grub-config runs even though the
        // defaults are already right.
        let source = "\tlinux\t/boot/vmlinuz-6.1.0-27-amd64 root=UUID=2222 ro console=tty0 console=ttyS0,115200n8\n";
        assert_eq!(
            check_config(source, &os, Some("2222"), &required),
            [
                "an entry lacks net.ifnames=0",
                "an entry lacks biosdevname=0"
            ]
        );
        assert_eq!(
            check_config("", &os, Some("2222"), &required),
            ["no kernel entry", "no entry for kernel 6.1.0-27-amd64"]
        );
    }
}
