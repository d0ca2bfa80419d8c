//! The appliance.

pub mod api;
pub mod job_metrics;
pub mod notify;
pub mod webhook;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

pub fn run_blocking(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("unavailable")
}
