//! A Linux system: what the repair will meet, read from its files with the
//! repair's own detection and recipes, so that a blocker here is the error
//! the repair would stop with.
//!
//! The checks live by what they look at: `boot` (kernels, initramfs
//! generator, boot loader, EFI loaders), `storage` (LVM, free space),
//! `platform` (static network configuration, the old platform's agents);
//! `render` writes the report as text. `inspect` runs them in order.

mod boot;
mod platform;
mod render;
mod storage;
#[cfg(test)]
mod tests;

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{CheckReport, Finding, Severity, System};
use crate::job::errors::{find_coded, ErrorCode};
use crate::layout::FatPartition;
use crate::repair::detect::{self, OsInfo, SelinuxMode};
use crate::repair::engine::{Mode, StepCtx};
use crate::repair::recipe;
use crate::repair::tree::Tree;
use boot::{bootloader, efi_loaders, initramfs, kernels};
pub use boot::{BootloaderReport, FirmwareReport, InitramfsReport, KernelReport};
pub use platform::NetworkReport;
use platform::{agents, network};
use storage::{lvm, space};
pub use storage::{LvmReport, SpaceReport};

/// The system's own mount points, which the repair mounts and writes (the
/// pipeline's mount step mounts the same).
pub(crate) const SYSTEM_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi", "/usr", "/var"];

const MIB: u64 = 1 << 20;

/// What was found in a Linux system.
#[derive(Debug, Clone, Serialize)]
pub struct LinuxReport {
    pub os: OsInfo,
    pub recipe: String,
    pub kernels: Vec<KernelReport>,
    pub initramfs: InitramfsReport,
    pub bootloader: BootloaderReport,
    pub firmware: FirmwareReport,
    pub lvm: LvmReport,
    pub space: Vec<SpaceReport>,
    pub network: NetworkReport,
    pub agents: Vec<String>,
}

/// Inspect the Linux system mounted at `root`; `esp` is its EFI system
/// partition when it is not mounted in the tree (the appliance reads FAT
/// in-process).
pub(crate) fn inspect(root: &Path, esp: Option<&FatPartition>, r: &mut CheckReport) -> Result<()> {
    let tree = Tree::new(root);
    let os = match detect::detect(&tree) {
        Ok(os) => os,
        Err(e) => {
            let code = find_coded(&e)
                .map(|c| c.code)
                .unwrap_or(ErrorCode::SystemNotFound);
            r.findings
                .push(Finding::new(Severity::Blocker, code, format!("{e:#}")));
            return Ok(());
        }
    };
    let recipes = recipe::load(None)?;
    let recipe = recipe::select(&recipes, &os, None)?.clone();
    let ctx = StepCtx::new(&tree, Mode::Plan, None);
    let mut f = Vec::new();

    let kernels = kernels(&tree, &os, &recipe, &mut f)?;
    let initramfs = initramfs(&ctx, &tree, &recipe, &mut f)?;
    let bootloader = bootloader(&ctx, &tree, &os, &recipe, &mut f);
    let firmware = FirmwareReport {
        mode: os.firmware,
        efi_loaders: efi_loaders(&tree, esp, os.firmware),
    };
    let lvm = lvm(&tree, r)?;
    let space = space(&tree, &kernels, &mut f)?;
    let network = network(&tree, &os, &mut f)?;
    if os.selinux == SelinuxMode::Enforcing {
        f.push(Finding::new(
            Severity::Warning,
            ErrorCode::SelinuxEnforcing,
            "/etc/selinux/config sets SELINUX=enforcing; the repair schedules a relabel on the first boot",
        ));
    }
    let agents = agents(&tree, &recipe);
    if !agents.is_empty() {
        f.push(Finding::new(
            Severity::Info,
            ErrorCode::PlatformAgents,
            format!("the repair masks {}", agents.join(", ")),
        ));
    }
    r.findings.extend(f);
    r.systems.push(System::Linux(Box::new(LinuxReport {
        recipe: recipe.name.clone(),
        os,
        kernels,
        initramfs,
        bootloader,
        firmware,
        lvm,
        space,
        network,
        agents,
    })));
    Ok(())
}
