use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ferry: the server-migration appliance.
///
/// On the migration's intermediate instance, `ferry serve` receives a source
/// server's disks (port 8703, TLS), writes them onto the attached disks,
/// repairs the migrated OS so it boots on cloud hardware, verifies and hands
/// the disks off. Health, metrics and the job API are on port 8080.
///
/// On the source server, `ferry send` streams the server's disks to it.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about)]
struct Cli {
    /// Log format on stderr: text or json. Levels come from RUST_LOG.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance: receive disks on 8703, serve health and the job API on 8080.
    Serve(Box<ferry::serve::ServeArgs>),
    /// Send this server's disks (block devices or image files) to an appliance.
    Send(Box<ferry::send::SendArgs>),
    /// List the error codes the appliance and the sender report, with hints.
    Errors(ferry::job::errors::ErrorsArgs),
    /// Partition tables, file systems, loop devices, mounts and growing.
    #[command(subcommand)]
    Layout(ferry::layout::cli::LayoutCmd),
    /// Repair a migrated root so it boots on cloud hardware (`--plan` shows diffs only).
    Repair(ferry::repair::cli::RepairArgs),
    /// Check disks against a round's handoff manifest (what the control plane snapshots).
    Verify(VerifyArgs),
}

/// Arguments of `ferry verify`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example, on the appliance or wherever the snapshot's disks are readable:\n  \
curl -s -H \"Authorization: Bearer $CONTROL_TOKEN\" http://appliance:8080/v1/job/handoff > handoff.json\n  \
ferry verify --manifest handoff.json --disk 0=/dev/vdb --disk 1=/dev/vdc\n\n\
Exit status 0 when every disk named matches the manifest's digest; VERIFY_FAILED otherwise."
)]
struct VerifyArgs {
    /// The handoff manifest (`<state-dir>/handoff.json`, or GET /v1/job/handoff).
    #[arg(long, value_name = "FILE")]
    manifest: std::path::PathBuf,
    /// A disk to check: the manifest's disk index and the device or image
    /// that holds it now (repeat for each disk; default: every disk of the
    /// manifest at its target path).
    #[arg(long, value_name = "INDEX=PATH", value_parser = parse_disk)]
    disk: Vec<(u32, std::path::PathBuf)>,
}

fn parse_disk(s: &str) -> Result<(u32, std::path::PathBuf), String> {
    let (i, p) = s
        .split_once('=')
        .ok_or_else(|| format!("expected INDEX=PATH, e.g. 0=/dev/vdb; got {s:?}"))?;
    let i = i
        .parse()
        .map_err(|_| format!("the disk index {i:?} is not a number"))?;
    Ok((i, p.into()))
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read(&args.manifest)
        .with_context(|| format!("reading {}", args.manifest.display()))?;
    let manifest: ferry::pipeline::handoff::Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("parsing the manifest {}", args.manifest.display()))?;
    let disks = if args.disk.is_empty() {
        manifest
            .disks
            .iter()
            .map(|d| (d.index, d.target.clone()))
            .collect()
    } else {
        args.disk
    };
    for line in ferry::pipeline::handoff::check(&manifest, &disks)? {
        println!("{line}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry::logging::init(&cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => ferry::serve::run_blocking(*args),
        Command::Send(args) => ferry::send::run_blocking(*args),
        Command::Errors(args) => ferry::job::errors::print_catalogue(&args),
        Command::Layout(cmd) => ferry::layout::cli::run(cmd),
        Command::Repair(args) => ferry::repair::cli::run(args),
        Command::Verify(args) => verify(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if let Some(coded) = ferry::job::errors::find_coded(&err) {
                eprintln!("hint: {}", coded.code.hint());
            }
            ExitCode::FAILURE
        }
    }
}
