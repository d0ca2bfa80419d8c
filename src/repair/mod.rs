//! OS repair engine: detect the migrated OS and apply its recipe so it boots
//! on cloud hardware (virtio/NVMe disks, DHCP network, serial console,
//! cloud-init).
//!
//! [`execute`] is the engine: it detects the OS in a mounted root, picks the
//! recipe from `image-recipes/`, and runs the recipe's steps in order, each
//! idempotent and reporting what it changed. File steps run on the tree
//! directly; the steps that need the migrated system's own tools (GRUB,
//! initramfs) run through a [`Runner`] — a chroot in production.

pub mod cli;
pub mod detect;
pub mod devices;
pub mod diff;
pub mod engine;
pub mod fstab;
pub mod grub;
pub mod initramfs;
pub mod network;
pub mod recipe;
pub mod system;
pub mod tree;

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

pub use detect::OsInfo;
pub use devices::{DeviceMap, MigratedDisk, Volume};
pub use engine::{Change, Mode, Runner, Status, StepReport};

use crate::job::errors::{coded, find_coded, ErrorCode};
use engine::StepCtx;
use recipe::StepName;
use tree::Tree;

/// How the migrated system will boot on the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum BootMode {
    /// As the source booted (detected from the tree).
    Auto,
    /// BIOS: GRUB's boot code goes onto this disk (appliance path).
    Bios { disk: PathBuf },
    /// UEFI: GRUB goes to the ESP's removable path `EFI/BOOT/BOOTX64.EFI`.
    Uefi,
}

/// What the engine needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub devices: DeviceMap,
    pub boot: BootMode,
    pub mode: Mode,
    /// A recipe name to use instead of the detected one.
    pub recipe: Option<String>,
    /// Read recipes from this directory instead of the built-in ones.
    pub recipes_dir: Option<PathBuf>,
    /// cloud-init datasources; the recipe's when None.
    pub datasources: Option<Vec<String>>,
}

impl Options {
    pub fn new(
        root: impl Into<PathBuf>,
        devices: DeviceMap,
        boot: BootMode,
        mode: Mode,
    ) -> Options {
        Options {
            root: root.into(),
            devices,
            boot,
            mode,
            recipe: None,
            recipes_dir: None,
            datasources: None,
        }
    }
}

/// The JSON report of a repair.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub root: PathBuf,
    pub mode: Mode,
    pub os: Option<OsInfo>,
    pub recipe: Option<String>,
    pub boot: Option<BootMode>,
    /// Whether anything was changed (or, in plan mode, would be).
    pub changed: bool,
    pub steps: Vec<StepReport>,
    pub error: Option<ReportError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportError {
    pub step: Option<String>,
    pub code: String,
    pub message: String,
    pub hint: String,
}

/// A report and the error that stopped the repair, if one did.
pub struct Outcome {
    pub report: Report,
    pub error: Option<anyhow::Error>,
}

impl Outcome {
    /// The report, or the error (with the step it stopped in as context).
    pub fn into_result(self) -> Result<Report> {
        match self.error {
            None => Ok(self.report),
            Some(e) => Err(e),
        }
    }
}

/// Run the repair with a runner for the migrated system's own tools (None:
/// the steps that need them fail in apply mode, and are planned in plan mode).
pub fn execute(opts: &Options, runner: Option<&dyn Runner>) -> Outcome {
    let mut report = Report {
        root: opts.root.clone(),
        mode: opts.mode,
        os: None,
        recipe: None,
        boot: None,
        changed: false,
        steps: Vec::new(),
        error: None,
    };
    let mut current: Option<String> = None;
    let res = execute_inner(opts, runner, &mut report, &mut current);
    report.changed = report.steps.iter().any(|s| s.status == Status::Changed);
    let error = match res {
        Ok(()) => None,
        Err(e) => {
            let e = match &current {
                Some(s) => e.context(format!("repair step {s}")),
                None => e,
            };
            let (code, hint) = match find_coded(&e) {
                Some(c) => (c.code, c.code.hint()),
                None => (ErrorCode::RepairFailed, ErrorCode::RepairFailed.hint()),
            };
            report.error = Some(ReportError {
                step: current,
                code: code.as_str().to_owned(),
                message: format!("{e:#}"),
                hint: hint.to_owned(),
            });
            Some(e)
        }
    };
    Outcome { report, error }
}

fn execute_inner(
    opts: &Options,
    runner: Option<&dyn Runner>,
    report: &mut Report,
    current: &mut Option<String>,
) -> Result<()> {
    if !opts.root.is_dir() {
        return Err(coded(
            ErrorCode::RepairBadInput,
            format!("{} is not a directory", opts.root.display()),
        ));
    }
    let tree = Tree::new(&opts.root);
    let os = detect::detect(&tree).context("detecting the migrated OS")?;
    report.os = Some(os.clone());
    let recipes = recipe::load(opts.recipes_dir.as_deref())?;
    let mut recipe = recipe::select(&recipes, &os, opts.recipe.as_deref())?.clone();
    if let Some(ds) = &opts.datasources {
        recipe.cloud_init.datasources = ds.clone();
    }
    report.recipe = Some(recipe.name.clone());
    if opts.devices.by_mountpoint("/").is_none() {
        return Err(coded(
            ErrorCode::RepairBadInput,
            "the device map has no volume mounted at / (the migrated root file system)",
        ));
    }
    let boot = match &opts.boot {
        BootMode::Auto => match os.firmware {
            detect::Firmware::Uefi => BootMode::Uefi,
            detect::Firmware::Bios => {
                let disk = opts
                    .devices
                    .disk_of_mountpoint("/boot")
                    .or_else(|| opts.devices.disk_of_mountpoint("/"))
                    .map(|d| d.target.clone())
                    .context("no migrated disk holds / or /boot")?;
                BootMode::Bios { disk }
            }
        },
        b => b.clone(),
    };
    report.boot = Some(boot.clone());
    let mut written: Vec<String> = Vec::new();
    for step in &recipe.steps {
        *current = Some(step.as_str().to_owned());
        let mut ctx = StepCtx::new(&tree, opts.mode, runner);
        match step {
            StepName::Fstab => fstab::step(&mut ctx, &opts.devices)?,
            StepName::GrubDefaults => grub::defaults_step(&mut ctx, &os, &recipe, &opts.devices)?,
            StepName::Network => network::step(&mut ctx, &os)?,
            StepName::NetRules => network::rules_step(&mut ctx)?,
            StepName::CloudInit => system::cloud_init_step(&mut ctx, &os, &recipe)?,
            StepName::Selinux => system::selinux_step(&mut ctx, &os)?,
            StepName::Agents => system::agents_step(&mut ctx, &os, &recipe)?,
            StepName::Initramfs => initramfs::step(&mut ctx, &os, &recipe)?,
            StepName::GrubInstall => match &boot {
                BootMode::Bios { disk } => grub::install_bios_step(&mut ctx, &os, &recipe, disk)?,
                BootMode::Uefi => ctx
                    .skip("UEFI: the removable-path loader is written by the layout's ESP writer"),
                BootMode::Auto => unreachable!("resolved above"),
            },
            StepName::GrubConfig => {
                let defaults_changed = written.iter().any(|p| {
                    p.starts_with("/etc/default/grub")
                        || p.starts_with("/boot/loader/entries/")
                        || p == "/etc/kernel/cmdline"
                });
                grub::config_step(&mut ctx, &os, &recipe, &opts.devices, defaults_changed)?
            }
        }
        let r = ctx.finish(step.as_str());
        for c in &r.changes {
            if let Change::File { path, .. } = c {
                written.push(path.clone());
            }
        }
        tracing::info!(step = step.as_str(), status = ?r.status, changes = r.changes.len(), "repair step done");
        report.steps.push(r);
    }
    *current = None;
    Ok(())
}

#[cfg(test)]
mod tests;
