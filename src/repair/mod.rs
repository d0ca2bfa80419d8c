//! OS repair engine: detect the migrated OS and apply its recipe so it boots
//! on cloud hardware (virtio/NVMe disks, DHCP network, serial console,
//! cloud-init).
//!
//! [`execute`] is the engine: it detects the OS in a mounted root, picks the
//! recipe from `image-recipes/`, and runs the recipe's steps in order, each
//! idempotent and reporting what it changed. File steps run on the tree
//! directly; the steps that need the migrated system's own tools (GRUB,
//! initramfs) run through a [`GuestRunner`] — a chroot in production.
//!
//! The job runner, after a block transfer and the layout engine's mount:
//!
//! ```ignore
//! let devices = DeviceMap::from_mount_tree(&tree, &[vec!["/dev/sda".into()]]);
//! let report = repair::run(tree.root(), &devices, BootMode::Auto, Mode::Apply)?;
//! ```
//!
//! An error carries the FAQ's code (`GRUB_FAILED` "Do Grub Failed",
//! `VIRTIO_CHECK_FAILED` "check virtio failed", ...); [`run_with_options`]
//! also returns the report of the steps done before it.

pub mod chroot;
pub mod detect;
pub mod devices;
pub mod diff;
pub mod engine;
pub mod esp;
pub mod fstab;
pub mod grub;
pub mod hive;
pub mod hooks;
pub mod initramfs;
pub mod network;
pub mod probe;
pub mod recipe;
pub mod selinux;
pub mod system;
pub mod tree;
pub mod windows;

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use detect::OsInfo;
pub use devices::{DeviceMap, MigratedDisk, Volume};
pub use engine::{Change, GuestOutput, GuestRunner, Mode, Status, StepReport};

use crate::job::errors::{coded, find_coded, ErrorCode};
use engine::StepCtx;
use recipe::{Recipe, StepName};
use tree::Tree;

/// How the migrated system will boot on the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum BootMode {
    /// As the source booted (detected from the tree).
    Auto,
    /// BIOS: GRUB's boot code goes onto this disk (appliance path).
    Bios { disk: PathBuf },
    /// UEFI: GRUB goes to the removable path `EFI/BOOT/BOOTX64.EFI` of the
    /// ESP at this node (the map's vfat volume when None).
    Uefi { esp: Option<PathBuf> },
}

impl BootMode {
    /// The name the reports use: `auto`, `bios` or `uefi`.
    pub fn name(&self) -> &'static str {
        match self {
            BootMode::Auto => "auto",
            BootMode::Bios { .. } => "bios",
            BootMode::Uefi { .. } => "uefi",
        }
    }
}

/// What the engine needs.
#[derive(Debug, Clone)]
pub struct RepairOptions {
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
    /// Run only these of the recipe's steps (all when None).
    pub only: Option<Vec<recipe::StepName>>,
    /// What each source NIC becomes (empty: DHCP on every NIC).
    pub network: network::map::NetworkMap,
    /// The operator's scripts, run after the repair or at the first boot.
    pub hooks: hooks::Hooks,
}

impl RepairOptions {
    pub fn new(
        root: impl Into<PathBuf>,
        devices: DeviceMap,
        boot: BootMode,
        mode: Mode,
    ) -> RepairOptions {
        RepairOptions {
            root: root.into(),
            devices,
            boot,
            mode,
            recipe: None,
            recipes_dir: None,
            datasources: None,
            only: None,
            network: network::map::NetworkMap::default(),
            hooks: hooks::Hooks::default(),
        }
    }
}

/// The JSON report of a repair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairReport {
    pub root: PathBuf,
    pub mode: Mode,
    pub os: Option<OsInfo>,
    pub recipe: Option<String>,
    pub boot: Option<BootMode>,
    /// Whether anything was changed (or, in plan mode, would be).
    pub changed: bool,
    pub steps: Vec<StepReport>,
    pub error: Option<ReportError>,
    /// A Windows system: what its registry says (`os` is for Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<windows::WindowsInfo>,
    /// The operator's hooks: what each did (or, installed, will do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<hooks::HookOutcome>,
}

impl RepairReport {
    fn empty(opts: &RepairOptions) -> RepairReport {
        RepairReport {
            root: opts.root.clone(),
            mode: opts.mode,
            os: None,
            recipe: None,
            boot: None,
            changed: false,
            steps: Vec::new(),
            error: None,
            windows: None,
            hooks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportError {
    pub step: Option<String>,
    pub code: String,
    pub message: String,
    pub hint: String,
}

impl ReportError {
    /// Entering or leaving the chroot failed: no step is to blame.
    fn chroot(e: &anyhow::Error) -> ReportError {
        ReportError {
            step: None,
            code: ErrorCode::RepairFailed.as_str().to_owned(),
            message: format!("{e:#}"),
            hint: ErrorCode::RepairFailed.hint().to_owned(),
        }
    }
}

/// A report and the error that stopped the repair, if one did.
pub struct Outcome {
    pub report: RepairReport,
    pub error: Option<anyhow::Error>,
}

impl Outcome {
    /// The report, or the error (with the step it stopped in as context).
    pub(crate) fn into_result(self) -> Result<RepairReport> {
        match self.error {
            None => Ok(self.report),
            Some(e) => Err(e),
        }
    }
}

/// Repair the migrated system mounted at `root` (the job runner's entry
/// point after a transfer): in apply mode the tools run in a chroot of the
/// root with the migrated disks' device nodes; plan mode enters no chroot
/// and writes nothing.
pub fn run(
    root: &std::path::Path,
    devices: &DeviceMap,
    boot: BootMode,
    mode: Mode,
) -> Result<RepairReport> {
    run_with_options(&RepairOptions::new(root, devices.clone(), boot, mode)).into_result()
}

/// [`run`] with every option.
pub fn run_with_options(opts: &RepairOptions) -> Outcome {
    // A Windows system is prepared through its registry: no chroot, no
    // Linux tool runs in it.
    if opts.mode == Mode::Plan || windows::is_windows(&opts.root) {
        return execute(opts, None);
    }
    let session = match chroot::enter(&opts.root, &opts.devices) {
        Ok(s) => s,
        Err(e) => {
            let mut out = Outcome {
                report: RepairReport::empty(opts),
                error: None,
            };
            let e = e.context(format!("entering a chroot of {}", opts.root.display()));
            out.report.error = Some(ReportError::chroot(&e));
            out.error = Some(e);
            return out;
        }
    };
    let mut out = execute(opts, Some(&*session as &dyn GuestRunner));
    if let Err(e) = session.close() {
        let e = e.context(format!("leaving the chroot of {}", opts.root.display()));
        if out.error.is_none() {
            out.report.error = Some(ReportError::chroot(&e));
            out.error = Some(e);
        } else {
            tracing::error!(error = %format!("{e:#}"), "leaving the chroot failed");
        }
    }
    out
}

/// Run the repair with a runner for the migrated system's own tools (None:
/// the steps that need them fail in apply mode, and are planned in plan mode).
pub fn execute(opts: &RepairOptions, runner: Option<&dyn GuestRunner>) -> Outcome {
    let mut report = RepairReport::empty(opts);
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
    opts: &RepairOptions,
    runner: Option<&dyn GuestRunner>,
    report: &mut RepairReport,
    current: &mut Option<String>,
) -> Result<()> {
    if !opts.root.is_dir() {
        return Err(coded(
            ErrorCode::RepairBadInput,
            format!("{} is not a directory", opts.root.display()),
        ));
    }
    if windows::is_windows(&opts.root) {
        if !opts.hooks.is_empty() {
            return Err(coded(
                ErrorCode::HookInvalid,
                "the migrated system is Windows, and hooks are shell scripts run in a Linux system; remove them (POST /v1/job/hooks with {}) and start the job again",
            ));
        }
        *current = Some("san-policy".to_owned());
        let (info, steps) = windows::prepare(&opts.root, opts.mode)
            .context("preparing the migrated Windows system")?;
        report.windows = Some(info);
        report.steps = steps;
        *current = None;
        return Ok(());
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
    let boot = resolve_boot(opts, &os)?;
    report.boot = Some(boot.clone());
    if recipe.steps.contains(&StepName::Network)
        && opts
            .only
            .as_ref()
            .is_none_or(|o| o.contains(&StepName::Network))
    {
        network::check(&tree, &os, &opts.network)?;
    }
    let mut written: Vec<String> = Vec::new();
    for step in &recipe.steps {
        if opts.only.as_ref().is_some_and(|o| !o.contains(step)) {
            continue;
        }
        *current = Some(step.as_str().to_owned());
        let mut ctx = StepCtx::new(&tree, opts.mode, runner);
        let run = Run {
            opts,
            os: &os,
            recipe: &recipe,
            boot: &boot,
            written: &written,
        };
        run.step(&mut ctx, *step)?;
        let r = ctx.finish(step.as_str());
        for c in &r.changes {
            if let Change::File { path, .. } = c {
                written.push(path.clone());
            }
        }
        tracing::info!(step = step.as_str(), status = ?r.status, changes = r.changes.len(), "repair step done");
        report.steps.push(r);
    }
    // The operator's hooks follow the whole repair (not a part of it run
    // with --only); their step is reported even when one fails the repair.
    if opts.only.is_none() && !opts.hooks.is_empty() {
        *current = Some(hooks::STEP.to_owned());
        let mut ctx = StepCtx::new(&tree, opts.mode, runner);
        let res = hooks::step(&mut ctx, &os, &opts.hooks, &mut report.hooks);
        report.steps.push(ctx.finish(hooks::STEP));
        res?;
    }
    // Last, when everything is written: the labels of what was.
    let selinux_ran = recipe.steps.contains(&StepName::Selinux)
        && opts
            .only
            .as_ref()
            .is_none_or(|o| o.contains(&StepName::Selinux));
    if opts.mode == Mode::Apply && selinux_ran {
        if let selinux::Plan::Label { policy } = selinux::plan(&tree, os.selinux)? {
            *current = Some(selinux::STEP.to_owned());
            let contexts = selinux::FileContexts::load(&tree, &policy)?.with_context(|| {
                format!("the {policy} policy's file_contexts vanished during the repair")
            })?;
            let written: Vec<String> = report
                .steps
                .iter()
                .flat_map(|s| &s.changes)
                .filter_map(|c| match c {
                    Change::File { path, action, .. } if *action != engine::FileAction::Removed => {
                        Some(path.clone())
                    }
                    Change::Symlink { path, .. } => Some(path.clone()),
                    _ => None,
                })
                .collect();
            let mut ctx = StepCtx::new(&tree, opts.mode, runner);
            selinux::label_step(&mut ctx, &contexts, &written)?;
            report.steps.push(ctx.finish(selinux::STEP));
        }
    }
    *current = None;
    Ok(())
}

/// An operator's file in TOML, or in JSON with the same keys (a first `{`
/// says JSON): the network map, the hooks. The error is the parser's.
pub(crate) fn toml_or_json<T: serde::de::DeserializeOwned>(
    text: &str,
) -> std::result::Result<T, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Where GRUB goes: the firmware the migrated OS boots with when the
/// options leave it to the repair (`Auto`), and for UEFI the device map's
/// EFI system partition (the one mounted at /boot/efi, else its vfat).
fn resolve_boot(opts: &RepairOptions, os: &OsInfo) -> Result<BootMode> {
    let boot = match &opts.boot {
        BootMode::Auto => match os.firmware {
            detect::Firmware::Uefi => BootMode::Uefi { esp: None },
            detect::Firmware::Bios => BootMode::Bios {
                disk: opts.devices.bios_disk()?,
            },
        },
        b => b.clone(),
    };
    Ok(match boot {
        BootMode::Uefi { esp: None } => {
            let esp = opts
                .devices
                .by_mountpoint("/boot/efi")
                .or_else(|| {
                    opts.devices
                        .volumes()
                        .find(|v| v.fstype.as_deref() == Some("vfat"))
                })
                .map(|v| v.node.clone());
            BootMode::Uefi { esp }
        }
        b => b,
    })
}

/// What every step of one repair run is given.
struct Run<'a> {
    opts: &'a RepairOptions,
    os: &'a OsInfo,
    recipe: &'a Recipe,
    boot: &'a BootMode,
    /// The files the steps before wrote.
    written: &'a [String],
}

impl Run<'_> {
    fn step(&self, ctx: &mut StepCtx, step: StepName) -> Result<()> {
        let (opts, os, recipe) = (self.opts, self.os, self.recipe);
        match step {
            StepName::Fstab => fstab::step(ctx, &opts.devices),
            StepName::GrubDefaults => grub::defaults_step(ctx, os, recipe, &opts.devices),
            StepName::Network => network::step(ctx, os, &opts.network),
            StepName::NetRules => network::rules_step(ctx),
            StepName::CloudInit => system::cloud_init_step(ctx, os, recipe),
            StepName::Selinux => system::selinux_step(ctx, os),
            StepName::Agents => system::agents_step(ctx, os, recipe),
            StepName::Initramfs => initramfs::step(ctx, os, recipe),
            StepName::GrubInstall => self.grub_install(ctx),
            StepName::GrubConfig => {
                let defaults_changed = self.written.iter().any(|p| {
                    p.starts_with("/etc/default/grub")
                        || p.starts_with("/boot/loader/entries/")
                        || p == "/etc/kernel/cmdline"
                        || p == "/boot/grub2/grubenv"
                });
                grub::config_step(ctx, os, recipe, &opts.devices, defaults_changed)
            }
        }
    }

    fn grub_install(&self, ctx: &mut StepCtx) -> Result<()> {
        let (os, recipe) = (self.os, self.recipe);
        match self.boot {
            BootMode::Bios { disk } => grub::install_bios_step(ctx, os, recipe, disk),
            BootMode::Uefi { esp: Some(node) } => grub::install_uefi_step(
                ctx,
                os,
                recipe,
                &self.opts.devices,
                &esp::FatPartition::new(node),
            ),
            BootMode::Uefi { esp: None } => Err(coded(
                ErrorCode::RepairBadInput,
                "UEFI boot, but the device map has no EFI system partition (a vfat volume)",
            )),
            BootMode::Auto => Err(anyhow::anyhow!(
                "the boot mode was not resolved before installing GRUB"
            )),
        }
    }
}

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod tests;
