//! cloud-init, SELinux relabelling and the old platform's guest agents.
//! Units are enabled and masked the way `systemctl` does it offline: with
//! symlinks under /etc/systemd/system, so no systemd runs on the appliance.

use anyhow::Result;

use super::detect::{InitSystem, OsInfo, SelinuxMode};
use super::engine::StepCtx;
use super::recipe::Recipe;

const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The in-tree path of a unit's file (not following a mask).
fn unit_file(ctx: &StepCtx, unit: &str) -> Option<String> {
    unit_file_in(ctx.tree, unit)
}

/// The path of a unit's file in `tree` (not following a mask).
pub(crate) fn unit_file_in(tree: &super::tree::Tree, unit: &str) -> Option<String> {
    UNIT_DIRS
        .iter()
        .map(|d| format!("{d}/{unit}"))
        .find(|p| tree.link_target(p).as_deref() != Some("/dev/null") && tree.exists(p))
}

fn masked(ctx: &StepCtx, unit: &str) -> bool {
    ctx.tree
        .link_target(&format!("/etc/systemd/system/{unit}"))
        .as_deref()
        == Some("/dev/null")
}

/// `WantedBy=` of a unit file.
fn wanted_by(text: &str) -> Vec<String> {
    let mut in_install = false;
    let mut out = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            in_install = t == "[Install]";
        } else if in_install {
            if let Some(v) = t
                .strip_prefix("WantedBy=")
                .or_else(|| t.strip_prefix("RequiredBy="))
            {
                out.extend(v.split_whitespace().map(str::to_owned));
            }
        }
    }
    out
}

/// Enable a unit: unmask it and link it into its targets' wants.
fn enable(ctx: &mut StepCtx, unit: &str) -> Result<()> {
    if masked(ctx, unit) {
        ctx.remove_state(&format!("/etc/systemd/system/{unit}"))?;
    }
    let Some(file) = unit_file(ctx, unit) else {
        return Ok(());
    };
    let text = ctx.tree.read(&file)?.unwrap_or_default();
    for target in wanted_by(&text) {
        ctx.symlink(&format!("/etc/systemd/system/{target}.wants/{unit}"), &file)?;
    }
    Ok(())
}

pub(crate) const CLOUD_INIT_CFG: &str = "/etc/cloud/cloud.cfg.d/99-ferry-datasource.cfg";
const CLOUD_INIT_UNITS: &[&str] = &[
    "cloud-init.target",
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-config.service",
    "cloud-final.service",
];
/// What `cloud-init clean` removes: the record of the instances it ran on.
const CLOUD_INIT_STATE: &[&str] = &["instance", "instances", "data", "sem", "handlers"];

pub(crate) fn cloud_init_datasource(datasources: &[String]) -> String {
    format!(
        "# Written by ferry: the datasource of the cloud this system was migrated to.\ndatasource_list: [ {} ]\n",
        datasources.join(", ")
    )
}

pub(crate) fn cloud_init_step(ctx: &mut StepCtx, os: &OsInfo, recipe: &Recipe) -> Result<()> {
    if !os.cloud_init {
        ctx.skip(
            "cloud-init is not installed: the instance's hostname, SSH keys and network will not be set by the cloud \
             (the hostname may keep the old platform's name); install cloud-init on the source server",
        );
        return Ok(());
    }
    ctx.write(
        CLOUD_INIT_CFG,
        &cloud_init_datasource(&recipe.cloud_init.datasources),
        0o644,
    )?;
    for s in CLOUD_INIT_STATE {
        let p = format!("/var/lib/cloud/{s}");
        if ctx.tree.link_target(&p).is_some() || ctx.tree.exists(&p) {
            ctx.remove_state(&p)?;
        }
    }
    if ctx.tree.exists("/etc/cloud/cloud-init.disabled") {
        ctx.rename(
            "/etc/cloud/cloud-init.disabled",
            "/etc/cloud/cloud-init.disabled.ferry-disabled",
        )?;
    }
    if os.init == InitSystem::Systemd {
        for u in CLOUD_INIT_UNITS {
            enable(ctx, u)?;
        }
    }
    Ok(())
}

pub(crate) fn selinux_step(ctx: &mut StepCtx, os: &OsInfo) -> Result<()> {
    match os.selinux {
        SelinuxMode::Absent | SelinuxMode::Disabled => {
            ctx.skip("SELinux is not enabled");
            Ok(())
        }
        _ => match super::selinux::plan(ctx.tree, os.selinux)? {
            super::selinux::Plan::Label { policy, .. } => {
                ctx.note(format!(
                    "the migrated file systems carry SELinux labels: what the repair writes is labelled from the {policy} policy's file_contexts at its end (step {}), and no relabel is scheduled",
                    super::selinux::STEP
                ));
                Ok(())
            }
            super::selinux::Plan::Relabel(why) => {
                ctx.note(why);
                ctx.write("/.autorelabel", "", 0o644)?;
                Ok(())
            }
            super::selinux::Plan::None => {
                ctx.skip("SELinux is not enabled");
                Ok(())
            }
        },
    }
}

pub(crate) fn agents_step(ctx: &mut StepCtx, os: &OsInfo, recipe: &Recipe) -> Result<()> {
    if os.init != InitSystem::Systemd {
        let present: Vec<&str> = [
            "vmware-tools",
            "vmtoolsd",
            "hypervkvpd",
            "xe-linux-distribution",
        ]
        .into_iter()
        .filter(|s| ctx.tree.exists(&format!("/etc/init.d/{s}")))
        .collect();
        if present.is_empty() {
            ctx.skip("no other platform's agent found");
        } else {
            ctx.note(format!(
                "init system is not systemd; not disabled: {}",
                present.join(", ")
            ));
        }
        return Ok(());
    }
    let mut found = false;
    for unit in &recipe.agents.units {
        if masked(ctx, unit) {
            found = true;
            continue;
        }
        let Some(file) = unit_file(ctx, unit) else {
            continue;
        };
        found = true;
        // An administrator's unit in /etc would be replaced by the mask:
        // keep it aside.
        if file.starts_with("/etc/") {
            ctx.rename(&file, &format!("{file}.ferry-disabled"))?;
        }
        ctx.symlink(&format!("/etc/systemd/system/{unit}"), "/dev/null")?;
    }
    if !found {
        ctx.skip("no other platform's agent found");
    }
    Ok(())
}
