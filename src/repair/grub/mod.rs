//! GRUB: the kernel command line (root by UUID, serial console, no stale
//! `resume=`, stable interface names), the generated `grub.cfg`, and the
//! boot code on the target disk.
//!
//! - `cmdline.rs`: the grub-defaults step, the command line wherever the
//!   system keeps it (`/etc/default/grub`, BLS entries, `/etc/kernel/cmdline`,
//!   initramfs-tools' resume device).
//! - `bls.rs`: Boot Loader Specification entries and GRUB's environment
//!   block (`$kernelopts`): their effective command lines, repaired and
//!   checked after grub2-mkconfig.
//! - `config.rs`: the grub-config step, `grub.cfg` checked and regenerated
//!   with the system's own tool.
//! - `bios.rs`: grub-install's BIOS boot code and debconf's install devices.
//! - `uefi.rs`: a loader on the ESP's removable path, built or the vendor's.

mod bios;
mod bls;
mod cmdline;
mod config;
mod uefi;

use anyhow::Result;

use crate::job::errors::{coded, ErrorCode};
use crate::repair::detect::{Bootloader, OsInfo};
use crate::repair::engine::StepCtx;
use crate::repair::recipe::{GrubRecipe, Recipe};

pub(crate) use bios::install_bios_step;
pub(crate) use cmdline::defaults_step;
pub(crate) use config::config_step;
pub(crate) use uefi::install_uefi_step;
// The repair's tests read the loader at its path on the ESP.
#[cfg(test)]
pub(crate) use uefi::REMOVABLE;
// The fixture test reads the environment block ferry wrote.
#[cfg(test)]
pub(crate) use bls::GrubEnv;

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
    crate::repair::recipe::pick(ctx.tree, &recipe.grub, |g| &g.tool).ok_or_else(|| {
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
