//! initramfs: the drivers of the cloud's disks and NIC (virtio, NVMe) in the
//! image of every installed kernel. A system built for VMware or bare metal
//! often has none of them in its initramfs and panics at "unable to mount
//! root fs" on the first cloud boot.

use std::collections::BTreeSet;

use anyhow::{Context, Result};

use super::detect::{Kernel, OsInfo};
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
pub(crate) const REQUIRED: &[&str] = &["virtio_blk", "virtio_net", "virtio_pci"];

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
pub(crate) struct KernelModules {
    pub loadable: BTreeSet<String>,
    pub builtin: BTreeSet<String>,
}

pub(crate) fn kernel_modules(tree: &super::tree::Tree, modules_dir: &str) -> Result<KernelModules> {
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
pub(crate) fn rewrite_modules_list(text: &str, drivers: &[String]) -> String {
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

/// A dracut.conf.d drop-in that adds the drivers. dracut sources these files
/// with bash, in order, and drops every module that an `omit_drivers`
/// pattern (a regular expression, `virtio.*`) of an earlier file matches,
/// even one named in `add_drivers`; so the patterns that would drop one of
/// ours are taken out of the list. `add_drivers` is installed whether the
/// image is host-only or not, and beside an exclusive `drivers=` list.
pub(crate) fn dracut_conf(drivers: &[String]) -> String {
    let list = drivers.join(" ");
    format!(
        "{HEADER}\n\
         add_drivers+=\" {list} \"\n\
         # An omit_drivers pattern that matches one of them would drop it again.\n\
         read -r -a ferry_omit <<< \"$omit_drivers\"\n\
         omit_drivers=\" \"\n\
         for ferry_p in \"${{ferry_omit[@]}}\"; do\n\
         \x20   ferry_keep=1\n\
         \x20   for ferry_d in {list}; do\n\
         \x20       [[ $ferry_d =~ $ferry_p ]] && ferry_keep=0\n\
         \x20   done\n\
         \x20   [[ $ferry_keep = 1 ]] && omit_drivers+=\" $ferry_p \"\n\
         done\n\
         unset ferry_omit ferry_p ferry_keep ferry_d\n"
    )
}

/// Which of `drivers` a listing of an image lacks.
pub(crate) fn missing_in_listing(listing: &str, drivers: &[String]) -> Vec<String> {
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

/// The initramfs step: every kernel's image holds the virtio drivers the
/// kernel has as modules; an image that lacks one (or whose generator's
/// configuration now names them) is regenerated by the migrated system's
/// own tool, and checked again.
pub fn step(ctx: &mut StepCtx, os: &OsInfo, recipe: &Recipe) -> Result<()> {
    if os.kernels.is_empty() {
        return Err(coded(
            ErrorCode::VirtioCheckFailed,
            "no kernel is installed in the migrated system (no /boot/vmlinuz-* with a module tree)",
        ));
    }
    let v = variant(ctx, recipe)?;
    let per_kernel = kernel_drivers(ctx, os)?;
    let all_loadable: BTreeSet<&String> = per_kernel.iter().flat_map(|(_, l)| l).collect();
    let drivers: Vec<String> = DRIVERS
        .iter()
        .filter(|d| all_loadable.iter().any(|l| l.as_str() == **d))
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
        kernel_image(ctx, v, k, &loadable, config_changed)?;
    }
    Ok(())
}

/// Per kernel, the drivers it has as modules (to put into its image). A
/// kernel without a driver the boot needs fails the step; one without an
/// optional driver is noted.
fn kernel_drivers<'a>(ctx: &mut StepCtx, os: &'a OsInfo) -> Result<Vec<(&'a Kernel, Vec<String>)>> {
    let mut per_kernel = Vec::new();
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
        per_kernel.push((k, loadable));
    }
    if !failures.is_empty() {
        return Err(coded(ErrorCode::VirtioCheckFailed, failures.join("; ")));
    }
    Ok(per_kernel)
}

/// Regenerate kernel `k`'s image when it is missing, lacks one of its
/// `loadable` drivers, or the generator's configuration changed; then
/// check that it holds them.
fn kernel_image(
    ctx: &mut StepCtx,
    v: &InitramfsRecipe,
    k: &Kernel,
    loadable: &[String],
    config_changed: bool,
) -> Result<()> {
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
                let miss = missing_in_listing(&out.stdout_text(), loadable);
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
    let Some(why) = why else { return Ok(()) };
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
        let miss = missing_in_listing(&out.stdout_text(), loadable);
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
        let conf = dracut_conf(&d());
        assert!(
            conf.starts_with("# Added by ferry: drivers of the cloud's disks and network (virtio, NVMe).\nadd_drivers+=\" virtio_blk virtio_scsi virtio_net virtio_pci nvme \"\n"),
            "{conf}"
        );
    }

    /// The drop-in as dracut reads it: sourced by bash after the old
    /// hardware's configuration.
    #[test]
    fn dracut_drop_in_survives_an_exclusive_configuration() {
        let d_ = tempfile::tempdir().unwrap();
        let old = d_.path().join("10-old-hardware.conf");
        std::fs::write(
            &old,
            "hostonly=\"yes\"\ndrivers=\" ahci sd_mod ext4 \"\nomit_drivers+=\" virtio.* nd_virtio floppy \"\nomit_drivers+=\" nvm[e] \"\n",
        )
        .unwrap();
        // dracut warns of `+=` values without surrounding spaces.
        for l in dracut_conf(&d()).lines().filter(|l| l.contains("+=\"")) {
            assert!(
                l.contains("+=\" ") && l.ends_with(" \""),
                "dracut would warn about: {l}"
            );
        }
        let ours = d_.path().join("90-ferry-virtio.conf");
        std::fs::write(&ours, dracut_conf(&d())).unwrap();
        // A file in the working directory must not be globbed into a pattern.
        std::fs::write(d_.path().join("virtio.x"), "").unwrap();
        let out = crate::cmd::Cmd::new("bash")
            .arg("-c")
            .arg(format!(
                "cd {0} && . ./10-old-hardware.conf && . ./90-ferry-virtio.conf && printf '%s|%s|%s|%s' \"$drivers\" \"$add_drivers\" \"$omit_drivers\" \"${{ferry_p-unset}}\"",
                d_.path().display()
            ))
            .run()
            .unwrap()
            .stdout_text();
        assert_eq!(
            out,
            " ahci sd_mod ext4 | virtio_blk virtio_scsi virtio_net virtio_pci nvme |  nd_virtio  floppy |unset"
        );
        // Sourced twice (a second repair), nothing changes.
        let again = crate::cmd::Cmd::new("bash")
            .arg("-c")
            .arg(format!(
                "cd {0} && . ./10-old-hardware.conf && . ./90-ferry-virtio.conf && . ./90-ferry-virtio.conf && printf '%s' \"$omit_drivers\"",
                d_.path().display()
            ))
            .run()
            .unwrap()
            .stdout_text();
        assert_eq!(again, "  nd_virtio  floppy ");
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
