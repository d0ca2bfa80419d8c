//! The grub-config step: the generated `grub.cfg` checked (a kernel entry
//! per kernel, root by UUID, the recipe's arguments) and regenerated with
//! the migrated system's own tool when it is stale.

use anyhow::{Context, Result};

use super::variant;
use crate::job::errors::{coded, Code, ErrorCode};
use crate::repair::detect::OsInfo;
use crate::repair::devices::DeviceMap;
use crate::repair::engine::StepCtx;
use crate::repair::recipe::Recipe;

/// What is wrong with a generated grub.cfg, if anything.
pub(crate) fn check_config(
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
pub(crate) fn name_roots(cfg: &str, map: &DeviceMap) -> String {
    let mut out = String::with_capacity(cfg.len());
    for line in cfg.split_inclusive('\n') {
        let fixed: Option<String> = line.split_whitespace().find_map(|a| {
            let node = a.strip_prefix("root=")?;
            let v = map.volumes().find(|v| v.node.as_os_str() == node)?;
            let name = v
                .aliases
                .first()
                .map(|n| format!("/dev/{n}"))
                .or_else(|| v.uuid.as_ref().map(|u| format!("UUID={u}")))?;
            Some(line.replacen(a, &format!("root={name}"), 1))
        });
        out.push_str(fixed.as_deref().unwrap_or(line));
    }
    out
}

/// Regenerate grub.cfg with the system's own tool when it is stale.
pub(crate) fn config_step(
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
        super::bls::verify_step(ctx, map, &recipe.kernel_args.add)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_root_on_a_logical_volume_gets_its_mapper_name() {
        use crate::repair::devices::{MigratedDisk, Volume};
        let map = DeviceMap {
            renamed: Vec::new(),
            disks: vec![MigratedDisk {
                source_names: vec!["/dev/sda".into()],
                target: "/dev/loop1".into(),
                volumes: vec![Volume {
                    node: "/dev/loop7".into(),
                    fstype: Some("ext4".into()),
                    uuid: Some("f6f8".into()),
                    mountpoint: Some("/".into()),
                    aliases: vec!["mapper/vg0-root".into(), "vg0/root".into()],
                    ..Default::default()
                }],
            }],
        };
        assert_eq!(
            name_roots("\tlinux /vmlinuz root=/dev/loop7 ro\n", &map),
            "\tlinux /vmlinuz root=/dev/mapper/vg0-root ro\n"
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
