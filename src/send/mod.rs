//! The source-side sender.

#[derive(Debug, clap::Args)]
pub struct SendArgs {}

pub fn run_blocking(_args: SendArgs) -> anyhow::Result<()> {
    anyhow::bail!("unavailable")
}
