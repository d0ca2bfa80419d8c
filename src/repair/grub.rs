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
    .code(ErrorCode::GrubFailed)
}

/// The removable-media path every UEFI firmware boots without an NVRAM entry.
pub const REMOVABLE: &str = "EFI/BOOT/BOOTX64.EFI";
/// Where the loader is built inside the migrated root (its /tmp).
const STAGE: &str = "/tmp/ferry-esp";

/// The configuration embedded in the loader: find /boot by UUID and hand
/// over to the system's grub.cfg. The first line marks what it was built
/// for, so a re-run knows the loader on the ESP is current.
///
/// Partition maps are not loaded on demand, and a failed search must not
/// fall back to the memdisk, whose own grub.cfg is this file.
pub fn early_config(uuid: &str, prefix: &str) -> String {
    format!(
        "# ferry-early-config {uuid} {prefix}\n\
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
         set prefix=($root){prefix}\n\
         configfile $prefix/grub.cfg\n"
    )
}

/// Build a self-contained GRUB EFI loader with the system's own
/// grub-mkstandalone (it probes no devices) and put it on the ESP's
/// removable path.
pub fn install_uefi_step(
    ctx: &mut StepCtx,
    os: &OsInfo,
    recipe: &Recipe,
    map: &DeviceMap,
    esp: &dyn super::esp::Esp,
) -> Result<()> {
    let g = variant(ctx, os, recipe)?;
    let lib = format!("{}/x86_64-efi", g.lib);
    if !ctx.tree.is_dir(&lib) {
        return Err(coded(
            ErrorCode::GrubFailed,
            format!("{lib} is missing: the UEFI GRUB (grub-efi-amd64-bin / grub2-efi-x64-modules) is not installed in the migrated system"),
        ));
    }
    let grub_dir = g
        .config
        .rsplit_once('/')
        .map(|x| x.0)
        .unwrap_or("/boot/grub");
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
    let early = early_config(uuid, &prefix);
    let marker = early.lines().next().unwrap_or_default().as_bytes().to_vec();
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
