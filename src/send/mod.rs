//! `ferry send`: stream this server's disks to an appliance.
//!
//! Each disk is read in fixed chunks. Every chunk is hashed (BLAKE3) and
//! compared with what the appliance has committed: unchanged chunks are not
//! sent, all-zero chunks travel as a bare Zero frame (or not at all when the
//! target is known to be zero), the rest go zstd-compressed when that saves
//! space. A bounded window of chunks is in flight; the appliance acks only
//! committed chunks. Dropped connections are retried with backoff, and a
//! retry re-sends only what was not committed.

mod attempt;
pub mod client;
pub mod consistency;
mod disk;
mod lanes;
mod pass;
pub mod peer;
pub mod pin;
pub mod probe;
pub mod progress;
pub mod ratelimit;
mod reader;
mod report;
mod retry;
mod round;
pub mod streams;
mod track;
pub mod walk;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::job::errors::{coded, ErrorCode};
use crate::wire;
use disk::DiskJob;
pub use report::{DiskReport, SendReport};

/// What `ferry send` is asked to do (its command line: `cli::send`).
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The appliance: HOST or HOST:PORT (default port 8703).
    pub to: String,
    pub token: String,
    /// SHA-256 fingerprint of the appliance's TLS certificate (hex).
    pub fingerprint: String,
    /// Source disks, disk 0 first.
    pub disks: Vec<PathBuf>,
    pub chunk_size: u32,
    /// Most bytes of chunks in flight, all disks together; None: 64 MiB
    /// and 4 MiB more per data stream.
    pub window: Option<u64>,
    /// Data streams (TLS connections carrying chunks); None: by the round
    /// trip to the appliance.
    pub streams: Option<usize>,
    /// Most bytes per second (`--bwlimit`); the appliance may set a lower one.
    pub bwlimit: Option<u64>,
    /// zstd level; 0 turns compression off.
    pub zstd_level: i32,
    /// Reconnects after a dropped connection.
    pub retries: u32,
    /// Where to write the JSON report.
    pub report: Option<PathBuf>,
    /// Measure the rate for `probe_seconds` instead of sending.
    pub probe: bool,
    /// Do not follow the round's pipeline.
    pub no_wait: bool,
    pub probe_seconds: u64,
    /// What to do about file systems mounted read-write on a source disk.
    pub consistency: consistency::ConsistencySettings,
    /// File mode (`--mode file`): the tree to send instead of disks.
    pub files: Option<walk::FileOptions>,
}

pub(crate) fn run_blocking(args: SendOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(args))
}

pub async fn run(args: SendOptions) -> Result<()> {
    if let Some(f) = &args.files {
        // Taken silently, it would promise a frozen last pass that file
        // mode does not make.
        if let Some(mode) = args.consistency.mode {
            return Err(coded(
                ErrorCode::Usage,
                format!(
                    "--consistency {} is for block mode: file mode copies each file as it is \
                     when read; for a consistent copy stop the services that write, then run the \
                     same ferry send --mode file again (it sends only what changed)",
                    mode.as_str()
                ),
            ));
        }
        return walk::run(&args, f).await;
    }
    send_disks(args).await
}

/// Block mode: check what was asked, open the disks, find their mounted
/// file systems, send them (with retries), then report.
async fn send_disks(args: SendOptions) -> Result<()> {
    if args.disks.is_empty() {
        return Err(coded(
            ErrorCode::Usage,
            "give the source disks with --disk SRC (block mode), or --mode file for the file systems of this server (or of a tree: --root DIR --layout FILE)",
        ));
    }
    let fingerprint = pin::fingerprint_option(&args.fingerprint)?;
    check_disks(&args.disks)?;
    if !wire::valid_chunk_size(args.chunk_size) {
        return Err(coded(
            ErrorCode::BadChunkSize,
            format!("--chunk-size {}", args.chunk_size),
        ));
    }
    let to = data_address(&args.to)?;
    let mut jobs = args
        .disks
        .iter()
        .zip(0u32..)
        .map(|(path, i)| DiskJob::open(i, path, args.chunk_size))
        .collect::<Result<Vec<_>>>()?;
    if args.probe {
        return probe::run(&args, &to, &fingerprint, &jobs).await;
    }
    let (disks, settings) = (args.disks.clone(), args.consistency.clone());
    let plans = tokio::task::spawn_blocking(move || {
        consistency::plan(&consistency::Host::default(), &disks, &settings)
    })
    .await
    .context("finding the mounted file systems of the source disks")??;
    for (job, plan) in jobs.iter_mut().zip(plans) {
        job.plan = Some(plan);
    }
    start_tracker(&args, &mut jobs).await?;
    let mut progress = progress::Progress::new(
        progress::ProgressMode::detect(),
        &jobs
            .iter()
            .map(|j| (j.index, j.report.size, 0))
            .collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let limit = Arc::new(ratelimit::RateLimit::new(args.bwlimit));
    let (attempts, result) = retry::run(
        &retry::Policy::disks(&args),
        &|line| progress.println(line),
        async || {
            let result =
                attempt::attempt(&args, &to, &fingerprint, &mut jobs, &progress, &limit).await;
            retry::Outcome {
                result,
                committed: jobs.iter().all(|j| j.done),
            }
        },
    )
    .await;
    progress.finish();
    let report = SendReport {
        attempts,
        seconds: started.elapsed().as_secs_f64(),
        disks: jobs.iter().map(|j| j.report.clone()).collect(),
        consistency: consistency::ConsistencyReport {
            mode: args.consistency.mode,
            max_freeze_seconds: args.consistency.max_freeze.as_secs_f64(),
            disks: jobs.iter().filter_map(|j| j.consistency.clone()).collect(),
        },
    };
    report.print();
    if let Some(path) = &args.report {
        report::write_json(path, &report, "the report")?;
    }
    result?;
    eprintln!(
        "ferry send: every disk is committed and verified ({:.1} s)",
        report.seconds
    );
    Ok(())
}

/// With `--consistency freeze` and file systems mounted read-write, the
/// change tracker follows the source disks from before the first pass
/// reads, so that later passes read only what changed. A machine or a disk
/// where it cannot is told, and copied as without it.
async fn start_tracker(args: &SendOptions, jobs: &mut [DiskJob]) -> Result<()> {
    let live = jobs.iter().any(DiskJob::live);
    if !args.consistency.track || args.consistency.mode != Some(consistency::Mode::Freeze) || !live
    {
        return Ok(());
    }
    let (disks, cs) = (args.disks.clone(), args.chunk_size);
    let sizes: Vec<u64> = jobs.iter().map(|j| j.report.size).collect();
    let started = tokio::task::spawn_blocking(move || {
        let sources: Vec<(PathBuf, u64)> = disks.into_iter().zip(sizes).collect();
        track::Tracker::start(&consistency::Host::default(), &sources, cs)
    })
    .await
    .context("starting the change tracker")?;
    let tracker = match started {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("ferry send: no change tracking ({e:#}): every pass re-reads the whole disk");
            return Ok(());
        }
    };
    for job in jobs.iter_mut() {
        match tracker.untracked(job.index as usize) {
            None => job.tracker = Some(Arc::clone(&tracker)),
            // A disk with nothing mounted read-write gets one pass anyway.
            Some(_) if !job.live() => {}
            Some(why) => eprintln!(
                "ferry send: disk {}: no change tracking ({why}): every pass re-reads the whole disk",
                job.index
            ),
        }
    }
    Ok(())
}

/// The appliance's address with the default data port when none is given;
/// a port that is not a number is a usage error.
fn data_address(to: &str) -> Result<String> {
    let bracketed_v6 = to.starts_with('[') && to.ends_with(']');
    match to.rsplit_once(':') {
        Some((host, port)) if !bracketed_v6 && !host.is_empty() => {
            port.parse::<u16>().map_err(|_| {
                coded(
                    ErrorCode::Usage,
                    format!("--to {to}: the port `{port}` is not a number (the data port is 8703)"),
                )
            })?;
            Ok(to.to_owned())
        }
        _ if to.is_empty() => Err(coded(
            ErrorCode::Usage,
            "--to is empty: give the appliance's HOST or HOST:PORT",
        )),
        _ => Ok(format!("{to}:{}", wire::DEFAULT_DATA_PORT)),
    }
}

/// Refuse, before connecting, what cannot be a source disk: a directory,
/// a character device, an empty file, or the same disk twice.
fn check_disks(disks: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let mut seen: Vec<(PathBuf, usize)> = Vec::new();
    for (i, path) in disks.iter().enumerate() {
        let what = |why: &str| {
            coded(
                ErrorCode::Usage,
                format!("--disk {} (disk {i}) {why}: name a block device (/dev/sda) or a raw image file", path.display()),
            )
        };
        let Ok(meta) = std::fs::metadata(path) else {
            continue; // opening it says what is wrong
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            return Err(what("is a directory"));
        }
        if ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            return Err(what("is not a disk"));
        }
        if ft.is_file() && meta.len() == 0 {
            return Err(what("is empty"));
        }
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        if let Some((_, first)) = seen.iter().find(|(p, _)| *p == real) {
            return Err(what(&format!("is disk {first} again")));
        }
        seen.push((real, i));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::errors::describe;

    #[test]
    fn data_addresses_and_usage_errors() {
        let cases = [
            ("203.0.113.7", Ok("203.0.113.7:8703")),
            ("appliance:9000", Ok("appliance:9000")),
            ("[2001:db8::1]", Ok("[2001:db8::1]:8703")),
            ("[2001:db8::1]:8703", Ok("[2001:db8::1]:8703")),
            (
                "host:notaport",
                Err("--to host:notaport: the port `notaport` is not a number"),
            ),
            ("", Err("--to is empty")),
        ];
        for (to, want) in cases {
            let got = data_address(to).map_err(|e| describe(&e));
            match (got, want) {
                (Ok(a), Ok(w)) => assert_eq!(a, w, "{to}"),
                (Err((code, detail)), Err(w)) => {
                    assert_eq!(code, ErrorCode::Usage, "{to}");
                    assert!(detail.starts_with(w), "{to}: {detail}");
                }
                (got, want) => panic!("{to}: got {got:?}, want {want:?}"),
            }
        }
    }
}
