//! initramfs: the drivers of the cloud's disks and NIC (virtio, NVMe) in the
//! image of every installed kernel. A system built for VMware or bare metal
//! often has none of them in its initramfs and panics at "unable to mount
//! root fs" on the first cloud boot.

use std::collections::BTreeSet;

use anyhow::{Context, Result};

use super::detect::OsInfo;
use super::engine::StepCtx;
use super::recipe::{expand, ConfigFormat, InitramfsRecipe, Recipe};
use crate::job::errors::{coded, Code, ErrorCode};

/// Included when the kernel has them.
pub const DRIVERS: &[&str] = &[
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_pci",
    "nvme",
];
/// Without these a kernel cannot boot on the cloud's virtio hardware.
pub const REQUIRED: &[&str] = &["virtio_blk", "virtio_net", "virtio_pci"];

const HEADER: &str = "# Added by ferry: drivers of the cloud's disks and network (virtio, NVMe).";

fn norm(m: &str) -> String {
    m.replace('-', "_")
}

/// The module name of a `.ko` file name, if it is one.
fn module_name(file: &str) -> Option<String> {
    let base = file.rsplit('/').next().unwrap_or(file);
    for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
        if let Some(n) = base.strip_suffix(ext) {
            return Some(norm(n));
        }
    }
    None
}

/// Modules a kernel has: loadable (files in its module tree) and built in.
#[derive(Debug, Default)]
pub struct KernelModules {
    pub loadable: BTreeSet<String>,
    pub builtin: BTreeSet<String>,
}

pub fn kernel_modules(tree: &super::tree::Tree, modules_dir: &str) -> Result<KernelModules> {
    let mut km = KernelModules::default();
    if let Some(t) = tree.read(&format!("{modules_dir}/modules.builtin"))? {
        km.builtin.extend(t.lines().filter_map(module_name));
    }
    let mut stack = vec![tree.path(modules_dir)?];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(_) => continue,
        };
        for e in rd {
            let e = e.with_context(|| format!("listing {}", d.display()))?;
            let ft = e
                .file_type()
                .with_context(|| format!("inspecting {}", e.path().display()))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if let Some(n) = module_name(&e.file_name().to_string_lossy()) {
                km.loadable.insert(n);
            }
        }
    }
    Ok(km)
}

/// initramfs-tools' `modules` file with the drivers appended once.
pub fn rewrite_modules_list(text: &str, drivers: &[String]) -> String {
    let present: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| !w.starts_with('#'))
        .map(norm)
        .collect();
    let missing: Vec<&String> = drivers
        .iter()
        .filter(|d| !present.contains(&norm(d)))
        .collect();
    if missing.is_empty() {
        return text.to_owned();
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.contains(HEADER) {
        out.push_str(HEADER);
        out.push('\n');
    }
    for d in missing {
        out.push_str(d);
        out.push('\n');
    }
    out
}

pub fn dracut_conf(drivers: &[String]) -> String {
    format!("{HEADER}\nadd_drivers+=\" {} \"\n", drivers.join(" "))
}

/// Which of `drivers` a listing of an image lacks.
pub fn missing_in_listing(listing: &str, drivers: &[String]) -> Vec<String> {
    let have: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(module_name)
        .collect();
    drivers
        .iter()
        .filter(|d| !have.contains(&norm(d)))
        .cloned()
        .collect()
}

pub fn variant<'a>(ctx: &StepCtx, recipe: &'a Recipe) -> Result<&'a InitramfsRecipe> {
    super::recipe::pick(ctx.tree, &recipe.initramfs, |i| &i.tool).ok_or_else(|| {
        let tools: Vec<String> = recipe
            .initramfs
            .iter()
            .flat_map(|i| i.tool.clone())
            .collect();
        coded(
            ErrorCode::RepairToolMissing,
            format!(
                "no initramfs generator in the migrated system (recipe {} looks for {})",
                recipe.name,
                tools.join(", ")
            ),
        )
    })
}

pub fn step(ctx: &mut StepCtx, os: &OsInfo, recipe: &Recipe) -> Result<()> {
    if os.kernels.is_empty() {
        return Err(coded(
            ErrorCode::VirtioCheckFailed,
            "no kernel is installed in the migrated system (no /boot/vmlinuz-* with a module tree)",
        ));
    }
    let v = variant(ctx, recipe)?;
    // Per kernel: the drivers it has as modules (to put into the image).
    let mut per_kernel = Vec::new();
    let mut all_loadable: BTreeSet<String> = BTreeSet::new();
    let mut failures = Vec::new();
    for k in &os.kernels {
        let km = kernel_modules(ctx.tree, &k.modules_dir)?;
        let absent: Vec<&str> = DRIVERS
            .iter()
            .copied()
            .filter(|d| !km.loadable.contains(*d) && !km.builtin.contains(*d))
            .collect();
        let req: Vec<&str> = absent
            .iter()
            .copied()
            .filter(|d| REQUIRED.contains(d))
            .collect();
        if !req.is_empty() {
            failures.push(format!("kernel {} lacks {}", k.version, req.join(", ")));
        } else if !absent.is_empty() {
            ctx.note(format!(
                "kernel {} has no {} (not needed to boot on virtio)",
                k.version,
                absent.join(", ")
            ));
        }
        let loadable: Vec<String> = DRIVERS
            .iter()
            .filter(|d| km.loadable.contains(**d))
            .map(|d| d.to_string())
            .collect();
        all_loadable.extend(loadable.iter().cloned());
        per_kernel.push((k, loadable));
    }
    if !failures.is_empty() {
        return Err(coded(ErrorCode::VirtioCheckFailed, failures.join("; ")));
    }
    let drivers: Vec<String> = DRIVERS
        .iter()
        .filter(|d| all_loadable.contains(**d))
        .map(|d| d.to_string())
        .collect();
    let config_changed = if drivers.is_empty() {
        false
    } else {
        let old = ctx.tree.read(&v.config)?.unwrap_or_default();
        let new = match v.config_format {
            ConfigFormat::Lines => rewrite_modules_list(&old, &drivers),
            ConfigFormat::Dracut => dracut_conf(&drivers),
        };
        ctx.write(&v.config, &new, 0o644)?
    };
    for (k, loadable) in per_kernel {
        let image = expand(std::slice::from_ref(&v.image), &[("kver", &k.version)]).remove(0);
        let vars = [
            ("kver", k.version.as_str()),
            ("image", image.as_str()),
            ("drivers", &loadable.join(" ")),
        ];
        let exists = ctx.tree.exists(&image);
        let why = if !exists {
            Some(format!("{image} does not exist"))
        } else if config_changed {
            Some(format!("{} now names the drivers", v.config))
        } else if loadable.is_empty() {
            None
        } else {
            match ctx.query(&expand(&v.list, &vars))? {
                Some(out) => {
                    let miss = missing_in_listing(&out.stdout_text(), &loadable);
                    (!miss.is_empty()).then(|| format!("{image} lacks {}", miss.join(", ")))
                }
                None => {
                    ctx.note(format!(
                        "{image}: its contents are checked when the repair is applied"
                    ));
                    None
                }
            }
        };
        let Some(why) = why else { continue };
        let argv = if !exists && !v.create.is_empty() {
            expand(&v.create, &vars)
        } else {
            expand(&v.regenerate, &vars)
        };
        ctx.exec(
            &argv,
            &format!("regenerate the initramfs of {}: {why}", k.version),
        )
        .code(ErrorCode::RepairFailed)?;
        if let Some(out) = ctx.query(&expand(&v.list, &vars))? {
            let miss = missing_in_listing(&out.stdout_text(), &loadable);
            if !miss.is_empty() {
                return Err(coded(
                    ErrorCode::VirtioCheckFailed,
                    format!(
                        "{image} still lacks {} after `{}`",
                        miss.join(", "),
                        argv.join(" ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Vec<String> {
        DRIVERS.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn modules_list() {
        let cases: &[(&str, &str)] = &[
            (
                "# List of modules\nloop\n",
                "# List of modules\nloop\n# Added by ferry: drivers of the cloud's disks and network (virtio, NVMe).\nvirtio_blk\nvirtio_scsi\nvirtio_net\nvirtio_pci\nnvme\n",
            ),
            (
                "virtio-blk\nnvme",
                "virtio-blk\nnvme\n# Added by ferry: drivers of the cloud's disks and network (virtio, NVMe).\nvirtio_scsi\nvirtio_net\nvirtio_pci\n",
            ),
        ];
        for (input, want) in cases {
            let got = rewrite_modules_list(input, &d());
            assert_eq!(got, *want);
            assert_eq!(rewrite_modules_list(&got, &d()), got);
        }
        assert_eq!(
            dracut_conf(&d()),
            "# Added by ferry: drivers of the cloud's disks and network (virtio, NVMe).\nadd_drivers+=\" virtio_blk virtio_scsi virtio_net virtio_pci nvme \"\n"
        );
    }

    #[test]
    fn listings() {
        let lsinitramfs = "usr/lib/modules/6.1.0-27-amd64/kernel/drivers/block/virtio_blk.ko\nusr/lib/modules/6.1.0-27-amd64/kernel/drivers/nvme/host/nvme.ko.xz\n";
        assert_eq!(
            missing_in_listing(lsinitramfs, &d()),
            ["virtio_scsi", "virtio_net", "virtio_pci"]
        );
        let lsinitrd = "-rw-r--r--   1 root     root        41432 Oct  4 12:00 usr/lib/modules/5.14.0/kernel/drivers/net/virtio_net.ko.xz\n";
        assert_eq!(
            missing_in_listing(lsinitrd, &["virtio_net".into()]),
            Vec::<String>::new()
        );
    }
}
