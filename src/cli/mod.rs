//! The command line: every subcommand's arguments, each in its own file,
//! and the dispatch. The library's rooms take plain options (a
//! [`crate::config::Config`], [`crate::send::Options`]); this room turns
//! arguments into them.

pub mod check;
pub mod errors;
pub mod layout;
pub mod repair;
pub mod send;
pub mod serve;
pub mod verify;
pub mod watchdog;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::job::errors::{ErrorCode, Exit};

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
pub struct Cli {
    /// Log format on stderr: text or json. Levels come from RUST_LOG.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: receive disks on 8703, serve health and the job API on 8080.
    Serve(Box<serve::ServeArgs>),
    /// Send this server's disks (block devices or image files) to an appliance.
    Send(Box<send::SendArgs>),
    /// List the error codes the appliance and the sender report, with hints.
    Errors(errors::ErrorsArgs),
    /// Partition tables, file systems, loop devices, mounts and growing.
    #[command(subcommand)]
    Layout(layout::LayoutCmd),
    /// Repair a migrated root so it boots on cloud hardware (`--plan` shows diffs only).
    Repair(repair::RepairArgs),
    /// Inspect a server (running, mounted, or its disks) and say what will fail, before the move.
    Check(check::CheckArgs),
    /// Check disks against a round's handoff manifest (what the control plane snapshots).
    Verify(verify::VerifyArgs),
    /// The watchdog `ferry send --consistency freeze` starts: thaws the
    /// file systems if the sender dies while they are frozen.
    #[command(name = "freeze-watchdog", hide = true)]
    FreezeWatchdog(watchdog::WatchdogArgs),
    /// One command of the migrated system, run confined (the repair starts it).
    #[command(name = "sandbox", hide = true)]
    Sandbox(SandboxArgs),
}

/// Arguments of the sandbox's keeper.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// The root, devices and bounds, as JSON.
    #[arg(long)]
    pub spec: String,
    /// The program and its arguments.
    #[arg(required = true, last = true)]
    pub argv: Vec<std::ffi::OsString>,
}

/// Parse the command line, run the subcommand, print the error chain (and
/// the code's hint) on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(&cli.log_format);
    let send = matches!(cli.command, Command::Send(_));
    let result = match cli.command {
        Command::Serve(args) => args.config().and_then(crate::serve::run_blocking),
        Command::Send(args) => crate::send::run_blocking((*args).into()),
        Command::Errors(args) => errors::run(&args),
        Command::Layout(cmd) => layout::run(cmd),
        Command::Repair(args) => repair::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Check(args) => check::run(args),
        Command::FreezeWatchdog(args) => watchdog::run(args),
        Command::Sandbox(args) => match crate::sandbox::child::run(&args.spec, &args.argv) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("ferry sandbox: {e:#}");
                std::process::exit(crate::sandbox::child::UNAVAILABLE);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let code = crate::job::errors::find_coded(&err).map(|c| c.code);
            if let Some(code) = code {
                eprintln!("hint: {}", code.hint());
            }
            // The sender's status tells the kind of failure (its --help
            // lists them); elsewhere usage errors exit 2 like clap's own.
            let status = match code {
                Some(code) if send => code.exit().status(),
                Some(ErrorCode::Usage) => Exit::Usage.status(),
                _ => 1,
            };
            ExitCode::from(status)
        }
    }
}
