//! `ferry layout ...` subcommands.

use anyhow::{bail, Result};

/// Operate on partition tables and file systems of target disks.
#[derive(Debug, clap::Subcommand)]
pub enum LayoutCmd {}

pub fn run(cmd: LayoutCmd) -> Result<()> {
    match cmd {}
    #[allow(unreachable_code)]
    {
        bail!("no layout command given")
    }
}
