//! `ferry freeze-watchdog` (hidden): started by `ferry send --consistency
//! freeze` before it freezes, it thaws the file systems if the sender dies.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

/// Arguments of the watchdog.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchdogArgs {
    /// Thaw after this long even if the sender lives.
    #[arg(long, value_name = "MS")]
    pub deadline_ms: u64,
    /// The frozen file systems' mount points.
    #[arg(required = true, last = true)]
    pub mount_points: Vec<PathBuf>,
}

pub fn run(args: WatchdogArgs) -> Result<()> {
    crate::send::consistency::freeze::watch(
        Duration::from_millis(args.deadline_ms),
        &args.mount_points,
    )
}
