//! The grub-defaults step: the kernel command line rewritten wherever the
//! system keeps it — GRUB's defaults file, Boot Loader Specification
//! entries, `/etc/kernel/cmdline` — and initramfs-tools' resume device.

use anyhow::Result;

use super::variant;
use crate::repair::detect::{unquote, OsInfo};
use crate::repair::devices::{DeviceMap, Resolved};
use crate::repair::engine::StepCtx;
use crate::repair::recipe::Recipe;

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

/// Rewrite kernel arguments: `root=` by UUID, stale `resume=` out, the
/// recipe's arguments replacing any of the same key.
pub(crate) fn fix_args(args: &str, map: &DeviceMap, add: &[String]) -> String {
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
pub(crate) fn rewrite_defaults(text: &str, map: &DeviceMap, add: &[String]) -> String {
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
pub(crate) fn defaults_step(
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
    // line themselves, or name grubenv's.
    super::bls::entries_step(ctx, map, &recipe.kernel_args.add, &new)?;
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

pub(crate) fn rewrite_resume_conf(text: &str, map: &DeviceMap) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repair::fstab::tests::map;

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
    fn resume_conf() {
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
}
