//! The source-side sender.

pub mod progress;

#[derive(Debug, clap::Args)]
pub struct SendArgs {}

pub fn run_blocking(_args: SendArgs) -> anyhow::Result<()> {
    anyhow::bail!("unavailable")
}
