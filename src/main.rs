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
