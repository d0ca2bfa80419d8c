//! `ferry repair` arguments.

use anyhow::{bail, Result};

/// Repair a migrated root file system so it boots on cloud hardware.
#[derive(Debug, clap::Args)]
pub struct RepairArgs {}

pub fn run(_args: RepairArgs) -> Result<()> {
    bail!("ferry repair is not available in this build")
}
