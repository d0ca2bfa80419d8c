//! `ferry check`: what will fail, before the move.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Arguments of `ferry check`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
ferry check                          # the running server (as root), before `ferry send`\n  \
ferry check --root /mnt/server       # a system mounted at /mnt/server\n  \
ferry check --disk disk0.img --json  # disks or disk images, mounted read-only by ferry\n\n\
Exit status 0 when nothing stops the migration (warnings and information only); \
1 when a blocker was found (its code and what to do are in the report) or the check \
itself failed; 2 for a command line that is not valid.")]
pub struct CheckArgs {
    /// Check the system mounted at DIR (its own mounts below it) instead
    /// of the running one.
    #[arg(long, value_name = "DIR", conflicts_with = "disk")]
    pub root: Option<PathBuf>,
    /// Check the system on these disks (block devices or image files,
    /// the system disk first), as the appliance does with received disks.
    #[arg(long, value_name = "PATH")]
    pub disk: Vec<PathBuf>,
    /// Where the disks' file systems are mounted read-only meanwhile.
    #[arg(long, value_name = "DIR", default_value = "/run/ferry/check")]
    pub staging: PathBuf,
    /// Print the report as JSON (for the control plane) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CheckArgs) -> Result<()> {
    let report = if !args.disk.is_empty() {
        let names: Vec<Vec<String>> = (0..args.disk.len())
            .map(|i| vec![format!("/dev/sd{}", (b'a' + (i % 26) as u8) as char)])
            .collect();
        crate::check::disks(&args.disk, &names, &args.staging)?
    } else if let Some(root) = &args.root {
        crate::check::root(root)?
    } else {
        crate::check::live()?
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        print!("{}", report.render());
    }
    if report.blockers > 0 {
        let codes: Vec<&str> = report.blockers().map(|f| f.code.as_str()).collect();
        bail!(
            "the check found {} blocker(s): {}",
            report.blockers,
            codes.join(", ")
        );
    }
    Ok(())
}
