//! `ferry send`: stream this server's disks to an appliance.
//!
//! Each disk is read in fixed chunks. Every chunk is hashed (BLAKE3) and
//! compared with what the appliance has committed: unchanged chunks are not
//! sent, all-zero chunks travel as a bare Zero frame (or not at all when the
//! target is known to be zero), the rest go zstd-compressed when that saves
//! space. A bounded window of chunks is in flight; the appliance acks only
//! committed chunks. Dropped connections are retried with backoff, and a
//! retry re-sends only what was not committed.

pub mod client;
pub mod consistency;
pub mod files;
pub mod peer;
pub mod pin;
pub mod probe;
pub mod progress;
pub mod ratelimit;
pub mod streams;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::disk::{chunk_count, chunk_len, disk_digest, is_zero, zero_hash, Disk};
use crate::job::errors::{coded, describe, find_coded, ErrorCode, Retry};
use crate::job::state::Status;
use crate::job::step::Step;
use crate::wire::{self, Frame, RoundEvent};
use client::Conn;

/// What `ferry send` is asked to do (its command line: `cli::send`).
#[derive(Debug, Clone)]
pub struct Options {
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
    pub consistency: consistency::Settings,
    /// File mode (`--mode file`): the tree to send instead of disks.
    pub files: Option<files::FileOptions>,
}

/// What happened to one disk, over every attempt.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DiskReport {
    pub index: u32,
    pub source: String,
    pub size: u64,
    pub chunks: u64,
    /// Chunks with data sent, their raw bytes and their bytes on the wire.
    pub sent_chunks: u64,
    pub sent_bytes: u64,
    pub wire_bytes: u64,
    /// Zero chunks sent as Zero frames (the target held other data).
    pub zero_sent_chunks: u64,
    /// Chunks not sent: the appliance already had them.
    pub unchanged_chunks: u64,
    pub unchanged_bytes: u64,
    /// Zero chunks not sent: the target is known to read zeros there.
    pub zero_skipped_chunks: u64,
    pub zero_skipped_bytes: u64,
    pub digest: String,
    pub verified: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub attempts: u32,
    pub seconds: f64,
    pub disks: Vec<DiskReport>,
    pub consistency: consistency::Report,
}

pub fn run_blocking(args: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(args))
}

struct DiskJob {
    index: u32,
    disk: Arc<Disk>,
    /// Hashes this process has computed, kept across attempts so a retry
    /// need not re-read what the appliance confirms it has.
    known: Vec<Option<[u8; 32]>>,
    report: DiskReport,
    done: bool,
    /// The names this system knows the disk by (none for an image file).
    names: Vec<String>,
    /// Its mounted file systems, and how its last attempt copied them.
    plan: Option<consistency::DiskPlan>,
    consistency: Option<consistency::DiskConsistency>,
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

pub async fn run(args: Options) -> Result<()> {
    if let Some(f) = &args.files {
        return files::run(&args, f).await;
    }
    if args.disks.is_empty() {
        return Err(coded(
            ErrorCode::Usage,
            "give the source disks with --disk SRC (block mode), or --mode file for the file systems of this server (or of a tree: --root DIR --layout FILE)",
        ));
    }
    let fingerprint = pin::normalize(&args.fingerprint).ok_or_else(|| {
        coded(
            ErrorCode::Usage,
            format!(
                "--fingerprint `{}` is not a SHA-256 fingerprint (64 hex digits; GET /v1/identity on the appliance's port 8080 shows it)",
                args.fingerprint
            ),
        )
    })?;
    check_disks(&args.disks)?;
    if !wire::valid_chunk_size(args.chunk_size) {
        return Err(coded(
            ErrorCode::BadChunkSize,
            format!("--chunk-size {}", args.chunk_size),
        ));
    }
    let to = data_address(&args.to)?;
    let mut jobs = Vec::new();
    for (i, path) in args.disks.iter().enumerate() {
        let disk = Disk::open_source(path)
            .with_context(|| format!("opening source disk {}", path.display()))?;
        let count = chunk_count(disk.size(), args.chunk_size);
        jobs.push(DiskJob {
            index: i as u32,
            report: DiskReport {
                index: i as u32,
                source: path.display().to_string(),
                size: disk.size(),
                chunks: count,
                ..Default::default()
            },
            known: vec![None; count as usize],
            names: disk_names(path),
            disk: Arc::new(disk),
            done: false,
            plan: None,
            consistency: None,
        });
    }
    if args.probe {
        return run_probe(&args, &to, &fingerprint, &jobs).await;
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
    let mut progress = progress::Progress::new(
        progress::ProgressMode::detect(),
        &jobs
            .iter()
            .map(|j| (j.index, j.report.size, 0))
            .collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let mut attempts = 0u32;
    let limit = Arc::new(ratelimit::RateLimit::new(args.bwlimit));
    let result = loop {
        attempts += 1;
        match attempt(&args, &to, &fingerprint, &mut jobs, &progress, &limit).await {
            Ok(()) => break Ok(()),
            Err(e) => {
                let code = find_coded(&e)
                    .map(|c| c.code)
                    .unwrap_or(ErrorCode::Internal);
                if code.retry() == Retry::Final || attempts > args.retries {
                    if jobs.iter().all(|j| j.done) && code.retry() == Retry::Retry && !args.no_wait
                    {
                        // Not data at risk: the disks are committed; the
                        // outcome is in the job.
                        break Err(coded(
                            ErrorCode::ProcessingUnknown,
                            format!(
                                "every disk is committed and verified, but the appliance could not be reached to follow the round to its end ({})",
                                describe(&e).1
                            ),
                        ));
                    }
                    break Err(e);
                }
                let wait = Duration::from_secs(1u64 << (attempts - 1).min(4));
                progress.println(&format!(
                    "ferry send: {e:#}; retrying in {} s (attempt {} of {})",
                    wait.as_secs(),
                    attempts + 1,
                    args.retries + 1
                ));
                tokio::time::sleep(wait).await;
            }
        }
    };
    progress.finish();
    let report = Report {
        attempts,
        seconds: started.elapsed().as_secs_f64(),
        disks: jobs.iter().map(|j| j.report.clone()).collect(),
        consistency: consistency::Report {
            mode: args.consistency.mode,
            max_freeze_seconds: args.consistency.max_freeze.as_secs_f64(),
            disks: jobs.iter().filter_map(|j| j.consistency.clone()).collect(),
        },
    };
    for d in &report.disks {
        eprintln!(
            "disk {} ({}): {} bytes; sent {} bytes in {} chunks ({} bytes on the wire); skipped {} bytes unchanged and {} bytes of zeros; {}",
            d.index,
            d.source,
            d.size,
            d.sent_bytes,
            d.sent_chunks,
            d.wire_bytes,
            d.unchanged_bytes,
            d.zero_skipped_bytes,
            if d.verified { format!("verified, digest {}", d.digest) } else { "NOT verified".to_owned() }
        );
    }
    for line in consistency::summary(&report.consistency) {
        eprintln!("{line}");
    }
    if let Some(path) = &args.report {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&report).context("encoding the report")?,
        )
        .with_context(|| format!("writing the report {}", path.display()))?;
    }
    result?;
    eprintln!(
        "ferry send: every disk is committed and verified ({:.1} s)",
        report.seconds
    );
    Ok(())
}

async fn run_probe(args: &Options, to: &str, fingerprint: &str, jobs: &[DiskJob]) -> Result<()> {
    let mut conn = client::connect(to, &args.token, fingerprint).await?;
    let (bytes, seconds) = probe::measure(
        &mut conn,
        Duration::from_secs(args.probe_seconds.max(1)),
        args.window.unwrap_or(DEFAULT_WINDOW),
    )
    .await
    .context("measuring the transfer rate")?;
    let _ = tokio::io::AsyncWriteExt::shutdown(conn.get_mut()).await;
    let disks: Vec<(u32, String, u64)> = jobs
        .iter()
        .map(|j| (j.index, j.report.source.clone(), j.report.size))
        .collect();
    let report = probe::report(bytes, seconds, &disks);
    print!("{}", probe::render(&report));
    if let Some(path) = &args.report {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&report).context("encoding the probe report")?,
        )
        .with_context(|| format!("writing the report {}", path.display()))?;
    }
    Ok(())
}

/// The window without a data stream: what a LAN needs.
const DEFAULT_WINDOW: u64 = 64 << 20;

/// And more per data stream: a long link holds what its streams carry in a
/// round trip, and the commit (fdatasync) adds its own time. The sender
/// keeps nothing of what is in flight (a retry reads again), so a large
/// window costs no memory; it bounds what a retry sends again.
const PER_STREAM_WINDOW: u64 = 16 << 20;

/// What one attempt shares among its disks: the data streams, the window
/// of bytes in flight, the bandwidth limit.
struct Lanes<'a> {
    pool: &'a streams::Pool,
    /// Bytes of chunks in flight (sent, not acknowledged), in permits.
    window: &'a tokio::sync::Semaphore,
    window_bytes: u64,
    limit: &'a ratelimit::RateLimit,
}

impl Lanes<'_> {
    /// Permits a chunk of `len` bytes takes (a chunk larger than the whole
    /// window takes it all).
    fn permits(&self, len: u64) -> u32 {
        len.min(self.window_bytes) as u32
    }
}

async fn attempt(
    args: &Options,
    to: &str,
    fingerprint: &str,
    jobs: &mut [DiskJob],
    progress: &progress::Progress,
    limit: &Arc<ratelimit::RateLimit>,
) -> Result<()> {
    let mut first = client::connect(to, &args.token, fingerprint).await?;
    let pending = jobs.iter().filter(|j| !j.done).count();
    if pending > 0 {
        let n = match args.streams {
            Some(n) => n,
            None => streams::auto_streams(round_trip(&mut first).await?),
        };
        // A control connection per disk (the first is one), and the streams.
        let more = futures::future::try_join_all(
            (1..pending).map(|_| client::connect(to, &args.token, fingerprint)),
        );
        let pool = streams::Pool::connect(n, to, &args.token, fingerprint, Arc::clone(limit));
        let (more, pool) = futures::future::try_join(more, pool).await?;
        let window_bytes = args
            .window
            .unwrap_or(DEFAULT_WINDOW + pool.len() as u64 * PER_STREAM_WINDOW);
        let window = tokio::sync::Semaphore::new(window_bytes as usize);
        let lanes = Lanes {
            pool: &pool,
            window: &window,
            window_bytes,
            limit,
        };
        tracing::debug!(streams = pool.len(), window_bytes, "sending the disks");
        let mut conns: Vec<Conn> = std::iter::once(first).chain(more).collect();
        // The disks go in parallel, each on its own control connection; a
        // disk that fails does not stop the others (what they commit is kept).
        let results = futures::future::join_all(
            jobs.iter_mut()
                .filter(|j| !j.done)
                .zip(conns.iter_mut())
                .map(|(job, conn)| {
                    let lanes = &lanes;
                    async move {
                        transfer(args, conn, job, progress, lanes)
                            .await
                            .with_context(|| {
                                format!("disk {} ({})", job.index, job.report.source)
                            })?;
                        job.done = true;
                        Ok::<(), anyhow::Error>(())
                    }
                }),
        )
        .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        pool.close().await?;
        // Each disk's session ends; the first connection asks how the round ends.
        let mut rest = conns.split_off(1);
        for c in &mut rest {
            let _ = tokio::io::AsyncWriteExt::shutdown(c.get_mut()).await;
        }
        first = conns
            .pop()
            .ok_or_else(|| coded(ErrorCode::Internal, "no connection"))?;
    }
    if !args.no_wait {
        wait_for_round(&mut first, &|line| progress.println(line)).await?;
    }
    // close_notify, so the appliance sees a clean end rather than a cut.
    let _ = tokio::io::AsyncWriteExt::shutdown(first.get_mut()).await;
    Ok(())
}

/// The round trip to the appliance, measured with a Ping.
async fn round_trip(conn: &mut Conn) -> Result<Duration> {
    let start = Instant::now();
    client::send(conn, Frame::Ping).await?;
    match tokio::time::timeout(wire::LINK_TIMEOUT, client::recv_any(conn)).await {
        Ok(Ok(Frame::Pong)) => Ok(start.elapsed()),
        Ok(Ok(other)) => Err(coded(
            ErrorCode::UnexpectedFrame,
            format!("expected Pong, got {}", other.name()),
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(client::silent()),
    }
}

/// Every disk is verified: ask the appliance how the round ends and follow
/// its pipeline (grow, repair, verify, handoff) to the end. A failure there
/// comes back as the appliance's error (code, message, hint). A connection
/// that drops meanwhile is a TRANSFER_INTERRUPTED, which the caller retries:
/// the next attempt has no disk to send and follows the round again.
pub(crate) async fn wait_for_round(conn: &mut Conn, say: &(dyn Fn(&str) + Sync)) -> Result<()> {
    client::send(conn, Frame::EndRound).await?;
    let mut steps: Vec<Step> = Vec::new();
    loop {
        // The appliance tells a step at least every 10 s while it runs.
        let frame = match tokio::time::timeout(2 * wire::LINK_TIMEOUT, client::recv(conn)).await {
            Ok(f) => f.context("following the appliance's pipeline")?,
            Err(_) => return Err(client::silent()),
        };
        let (status, event) = match frame {
            Frame::RoundStatus { status, event } => (status, event),
            // Told as the disks ended; nothing is sent any more.
            Frame::Bandwidth { .. } => continue,
            other => {
                return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("expected RoundStatus, got {}", other.name()),
                ))
            }
        };
        match event {
            RoundEvent::Step(step) => {
                // The same step again is the appliance's heartbeat.
                if steps.last() != Some(&step) {
                    say(&format!(
                        "ferry send: the appliance runs the round's pipeline: {step}"
                    ));
                    steps.push(step);
                }
            }
            RoundEvent::Done => {
                say(&format!("ferry send: {}", round_outcome(&steps, status)));
                return Ok(());
            }
            RoundEvent::AwaitingDisks => {
                say(&format!(
                    "ferry send: this sender's disks are committed; the job ({status}) waits for its other disks before it ends the round"
                ));
                return Ok(());
            }
        }
    }
}

/// How the round ended, from the steps this sender saw: "processed" only
/// when the appliance ran more than the handoff (a job that only
/// replicates disks has nothing else to run), and nothing about the steps
/// when the round had ended before this sender asked.
fn round_outcome(steps: &[Step], status: Status) -> String {
    let processing: Vec<&str> = steps
        .iter()
        .filter(|s| **s != Step::Handoff)
        .map(|s| s.as_str())
        .collect();
    let round = if !processing.is_empty() {
        format!(
            "the round is processed ({}) and handed off",
            processing.join(", ")
        )
    } else if steps.contains(&Step::Handoff) {
        "the disks are verified and handed off; the job only replicates disks, so nothing was processed".to_owned()
    } else {
        "the round had already ended".to_owned()
    };
    match status {
        Status::Waiting => format!(
            "{round}; the job is Waiting: the next round starts when the control plane has taken its snapshot"
        ),
        other => format!("{round}; the job is {other}"),
    }
}

/// The names this system knows a source block device by, for the
/// appliance's repair of device names: the path given, the kernel's name,
/// and the /dev/disk/by-id and by-path links to it. None for image files.
fn disk_names(path: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let is_block = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block {
        return Vec::new();
    }
    let mut names = vec![path.display().to_string()];
    let Ok(real) = std::fs::canonicalize(path) else {
        return names;
    };
    names.push(real.display().to_string());
    for dir in ["/dev/disk/by-id", "/dev/disk/by-path"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if std::fs::canonicalize(&p).is_ok_and(|t| t == real) {
                names.push(p.display().to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names.truncate(wire::MAX_DISK_NAMES);
    names
}

/// What the reader thread decided for one chunk.
enum Item {
    Skip {
        len: usize,
        zero: bool,
    },
    Zero {
        index: u64,
    },
    Data {
        index: u64,
        len: usize,
        hash: [u8; 32],
        compressed: bool,
        payload: Bytes,
    },
}

/// A data chunk waiting for room in the window.
struct Waiting {
    index: u64,
    len: usize,
    hash: [u8; 32],
    compressed: bool,
    payload: Bytes,
}

async fn transfer(
    args: &Options,
    conn: &mut Conn,
    job: &mut DiskJob,
    progress: &progress::Progress,
    lanes: &Lanes<'_>,
) -> Result<()> {
    let (size, cs) = (job.disk.size(), args.chunk_size);
    let count = chunk_count(size, cs);
    client::send(
        conn,
        Frame::OpenDisk {
            disk: job.index,
            size,
            chunk_size: cs,
        },
    )
    .await?;
    if !job.names.is_empty() {
        client::send(
            conn,
            Frame::DiskNames {
                disk: job.index,
                names: job.names.clone(),
            },
        )
        .await?;
    }
    // The manifest: what the appliance has committed of this disk, sparse
    // (a fresh disk's is one empty page).
    let mut manifest: HashMap<u64, [u8; 32]> = HashMap::new();
    let mut expected_first = 0u64;
    let fresh = loop {
        match client::recv_live(conn).await? {
            Frame::Manifest {
                disk,
                first,
                end,
                fresh,
                last,
                entries,
            } => {
                if disk != job.index
                    || first != expected_first
                    || end > count
                    || (last && end != count)
                    || (!last && end == first)
                {
                    return Err(coded(
                        ErrorCode::UnexpectedFrame,
                        format!(
                            "manifest page {first}..{end} out of order (expected it to start at {expected_first}, of {count} chunks)"
                        ),
                    ));
                }
                manifest.extend(entries);
                expected_first = end;
                if last {
                    break fresh;
                }
            }
            other => {
                return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("expected Manifest, got {}", other.name()),
                ))
            }
        }
    };
    // The key with which the data streams attach to the disk.
    let key = match client::recv_live(conn).await? {
        Frame::StreamKey { disk, key } if disk == job.index => key,
        other => {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                format!("expected StreamKey, got {}", other.name()),
            ))
        }
    };

    let mut passes = consistency::Passes::new(job.index, job.plan.as_ref(), &args.consistency);
    let (mut manifest, mut fresh) = (manifest, fresh);
    let (mut unchanged, mut zero_skipped) = (0u64, 0u64);
    loop {
        let (p, next) = off_runtime(passes, |p| p.next_pass()).await?;
        passes = p;
        let pass = match next {
            Ok(Some(pass)) => pass,
            Ok(None) => break,
            Err(e) => {
                job.consistency = Some(passes.report.clone());
                return Err(e);
            }
        };
        if pass.number() > 1 {
            // What the last pass read is committed: this one re-reads every
            // chunk and sends those that changed since.
            manifest = job
                .known
                .iter()
                .zip(0u64..)
                .filter_map(|(h, i)| h.map(|h| (i, h)))
                .collect();
            fresh = false;
            job.known = vec![None; count as usize];
        }
        if let Some(line) = pass.announce(job.index) {
            progress.println(&line);
        }
        let before = (
            job.report.sent_chunks,
            job.report.zero_sent_chunks,
            job.report.sent_bytes,
        );
        let sent = send_pass(
            args,
            conn,
            job,
            std::mem::take(&mut manifest),
            fresh,
            &pass,
            progress,
            &mut passes,
            lanes,
            key,
        )
        .await;
        let changed_chunks =
            job.report.sent_chunks - before.0 + job.report.zero_sent_chunks - before.1;
        let changed_bytes = job.report.sent_bytes - before.2
            + (job.report.zero_sent_chunks - before.1) * u64::from(cs);
        let (p, ended) = off_runtime(passes, move |p| match sent {
            Ok(counts) => p.done(changed_chunks, changed_bytes).map(|()| counts),
            Err(e) => {
                if let Err(t) = p.abort() {
                    tracing::error!("{t:#}");
                }
                Err(e)
            }
        })
        .await?;
        passes = p;
        job.consistency = Some(passes.report.clone());
        if let consistency::Pass::Frozen { .. } = pass {
            for f in &passes.report.frozen {
                progress.println(&format!(
                    "ferry send: disk {}: thawed {} (frozen {:.2} s)",
                    job.index,
                    f.mount_point.display(),
                    f.frozen_seconds
                ));
            }
        }
        (unchanged, zero_skipped) = ended?;
    }

    // Every chunk is committed; compare whole-disk digests.
    let hashes: Vec<[u8; 32]> = job
        .known
        .iter()
        .enumerate()
        .map(|(i, h)| {
            h.ok_or_else(|| coded(ErrorCode::Internal, format!("chunk {i} was never hashed")))
        })
        .collect::<Result<_>>()?;
    let digest = disk_digest(size, cs, &hashes);
    client::send(
        conn,
        Frame::Finish {
            disk: job.index,
            digest,
            unchanged,
            zero_skipped,
        },
    )
    .await?;
    // The appliance re-reads the whole disk before it answers: minutes for a
    // large one, during which it answers pings.
    let theirs = loop {
        match client::recv_live(conn).await? {
            Frame::Finished { disk, digest } if disk == job.index => break digest,
            Frame::Ack { .. } => continue,
            Frame::Bandwidth { bytes_per_sec } => bandwidth(lanes.limit, bytes_per_sec, progress),
            other => {
                return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("expected Finished, got {}", other.name()),
                ))
            }
        }
    };
    if theirs != digest {
        return Err(coded(
            ErrorCode::DigestMismatch,
            format!(
                "source digest {}, appliance digest {}",
                hex::encode(digest),
                hex::encode(theirs)
            ),
        ));
    }
    job.report.digest = hex::encode(digest);
    job.report.verified = true;
    progress.finish_disk(job.index);
    Ok(())
}

/// Run `f` on `value` off the async runtime (it may block: ioctls that
/// flush a file system, processes started), and hand both back.
async fn off_runtime<T: Send + 'static, R: Send + 'static>(
    mut value: T,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<(T, R)> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut value);
        (value, r)
    })
    .await
    .context("joining a blocking task")
}

/// One pass over a disk: every chunk read (on a thread of its own), what
/// the appliance lacks sent, until all of it is committed. A frozen pass
/// must end before its deadline. Returns the chunks left as they were and
/// the zero chunks skipped.
#[allow(clippy::too_many_arguments)] // the transfer's state, lent for one pass
async fn send_pass(
    args: &Options,
    conn: &mut Conn,
    job: &mut DiskJob,
    manifest: HashMap<u64, [u8; 32]>,
    fresh: bool,
    pass: &consistency::Pass,
    progress: &progress::Progress,
    passes: &mut consistency::Passes,
    lanes: &Lanes<'_>,
    key: [u8; 32],
) -> Result<(u64, u64)> {
    let (size, cs) = (job.disk.size(), args.chunk_size);
    let deadline = match pass {
        consistency::Pass::Frozen { deadline, hold, .. } => {
            let deadline = tokio::time::Instant::from_std(*deadline);
            if !hold.is_zero() {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + *hold)).await;
            }
            Some(deadline)
        }
        consistency::Pass::Live { .. } | consistency::Pass::Snapshot { .. } => None,
    };
    let past_deadline = || {
        coded(
            ErrorCode::FreezeTooLong,
            format!(
                "disk {}: the final pass did not end within --max-freeze ({} s)",
                job.index,
                args.consistency.max_freeze.as_secs_f64()
            ),
        )
    };
    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
        return Err(past_deadline());
    }
    // Reading, hashing and compressing run on a thread of their own.
    let (tx, mut rx) = mpsc::channel::<Result<Item>>(4);
    let disk = Arc::clone(&job.disk);
    let mut known = std::mem::take(&mut job.known);
    let count = chunk_count(size, cs);
    if known.len() as u64 != count {
        // An earlier attempt's reader was stopped before it gave them back.
        known = vec![None; count as usize];
    }
    let level = args.zstd_level;
    let overlay = match pass {
        consistency::Pass::Snapshot { overlay, .. } => Some(Arc::clone(overlay)),
        _ => None,
    };
    let reader = tokio::task::spawn_blocking(move || {
        read_chunks(&disk, overlay, cs, known, manifest, fresh, level, tx)
    });

    let mut in_flight: HashSet<u64> = HashSet::new();
    // Permits of the shared window this disk holds.
    let mut held = 0u64;
    let mut lens = HashMap::new();
    let (mut unchanged, mut zero_skipped) = (0u64, 0u64);
    // Bytes of the disk settled: skipped as unchanged or zero, or committed.
    let mut settled = 0u64;
    progress.set(job.index, 0);
    let mut reader_done = false;
    let mut waiting: Option<Waiting> = None;
    // A silent link is noticed here: the sender pings while it has nothing
    // to send, the appliance answers, and nothing heard for LINK_TIMEOUT
    // ends the attempt (the next one reconnects and takes the disk over).
    let mut heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(heard + wire::HEARTBEAT, wire::HEARTBEAT);
    // After a long write, one ping, not a burst of the ticks it missed.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result: Result<()> = async {
        loop {
            if reader_done && waiting.is_none() && in_flight.is_empty() {
                return Ok(());
            }
            let can_read = !reader_done && waiting.is_none() && in_flight.len() < 4096;
            let permits = waiting.as_ref().map_or(0, |w| lanes.permits(w.len as u64));
            tokio::select! {
                item = rx.recv(), if can_read => match item {
                    None => {
                        reader_done = true;
                        if deadline.is_some() {
                            // The frozen pass has read all it sends: the file
                            // systems run again while it travels and commits.
                            tokio::task::block_in_place(|| passes.read_done())?;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    Some(Ok(Item::Skip { len, zero, .. })) => {
                        settled += len as u64;
                        progress.set(job.index, settled);
                        if zero {
                            zero_skipped += 1;
                            job.report.zero_skipped_chunks += 1;
                            job.report.zero_skipped_bytes += len as u64;
                        } else {
                            unchanged += 1;
                            job.report.unchanged_chunks += 1;
                            job.report.unchanged_bytes += len as u64;
                        }
                    }
                    Some(Ok(Item::Zero { index })) => {
                        in_flight.insert(index);
                        lens.insert(index, 0u64);
                        job.report.zero_sent_chunks += 1;
                        client::send(conn, Frame::Zero { disk: job.index, index }).await?;
                    }
                    Some(Ok(Item::Data { index, len, hash, compressed, payload })) => {
                        waiting = Some(Waiting { index, len, hash, compressed, payload });
                    }
                },
                permit = lanes.window.acquire_many(permits), if waiting.is_some() => {
                    permit.map_err(|_| coded(ErrorCode::Internal, "the window is closed"))?.forget();
                    held += u64::from(permits);
                    let w = waiting.take().ok_or_else(|| coded(ErrorCode::Internal, "no chunk waits"))?;
                    in_flight.insert(w.index);
                    lens.insert(w.index, w.len as u64);
                    job.report.sent_chunks += 1;
                    job.report.sent_bytes += w.len as u64;
                    job.report.wire_bytes += w.payload.len() as u64;
                    let sent = lanes.pool.send(streams::Chunk {
                        disk: job.index,
                        key,
                        index: w.index,
                        hash: w.hash,
                        compressed: w.compressed,
                        payload: w.payload,
                    }).await;
                    if let Err(e) = sent {
                        return Err(why_streams_failed(conn, e).await);
                    }
                }
                _ = lanes.pool.failed() => return Err(why_streams_failed(conn, lanes.pool.error()).await),
                _ = ping.tick() => client::send(conn, Frame::Ping).await?,
                _ = tokio::time::sleep_until(heard + wire::LINK_TIMEOUT) => return Err(client::silent()),
                _ = tokio::time::sleep_until(deadline.unwrap_or(heard)), if deadline.is_some() => return Err(past_deadline()),
                frame = client::recv_any(conn) => match frame? {
                    Frame::Pong => heard = tokio::time::Instant::now(),
                    Frame::Bandwidth { bytes_per_sec } => bandwidth(lanes.limit, bytes_per_sec, progress),
                    Frame::Ack { disk, indices } if disk == job.index => {
                        heard = tokio::time::Instant::now();
                        for i in indices {
                            if in_flight.remove(&i) {
                                let len = lens.remove(&i).unwrap_or(0);
                                let p = u64::from(lanes.permits(len));
                                lanes.window.add_permits(p as usize);
                                held -= p;
                                settled += chunk_len(size, cs, i) as u64;
                            }
                        }
                        progress.set(job.index, settled);
                    }
                    other => return Err(coded(ErrorCode::UnexpectedFrame, format!("expected Ack, got {}", other.name()))),
                },
            }
        }
    }
    .await;
    // What this disk holds of the window goes back to the other disks.
    lanes.window.add_permits(held as usize);
    drop(rx);
    let known = reader.await.context("joining the reader thread")?;
    job.known = known;
    result?;
    Ok((unchanged, zero_skipped))
}

/// A data stream failed: when the appliance failed the disk (a full target,
/// a chunk that did not verify), it says why on the disk's control
/// connection, and that is the error, not the stream's symptom.
async fn why_streams_failed(conn: &mut Conn, stream_error: anyhow::Error) -> anyhow::Error {
    let told = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Err(e) = client::recv_any(conn).await {
                return e;
            }
        }
    })
    .await;
    match told {
        Ok(e) if describe(&e).0 != ErrorCode::TransferInterrupted => e,
        _ => stream_error,
    }
}

/// The appliance told its bandwidth limit: apply it, and say so when the
/// limit that applies changed.
fn bandwidth(limit: &ratelimit::RateLimit, bytes_per_sec: u64, progress: &progress::Progress) {
    if limit.set_remote(bytes_per_sec) {
        let now = match limit.limit() {
            Some(n) => format!("{}/s", crate::disk::human_bytes(n)),
            None => "none".to_owned(),
        };
        progress.println(&format!(
            "ferry send: the appliance's bandwidth limit is {}; the limit now is {now}",
            if bytes_per_sec == 0 {
                "lifted".to_owned()
            } else {
                format!("{}/s", crate::disk::human_bytes(bytes_per_sec))
            }
        ));
    }
}

/// Whether a chunk is worth compressing: zstd is tried on four samples
/// across it, and a chunk none of whose samples shrinks (random or already
/// compressed data) is sent as it is, without compressing it all for
/// nothing; one part that compresses (a stripe of text) is enough.
fn worth_compressing(compressor: &mut zstd::bulk::Compressor<'_>, data: &[u8]) -> bool {
    const SAMPLE: usize = 16 << 10;
    if data.len() < 8 * SAMPLE {
        return true;
    }
    (0..4).any(|k| {
        let at = k * (data.len() / 4);
        compressor
            .compress(&data[at..at + SAMPLE])
            .is_ok_and(|p| p.len() < SAMPLE - SAMPLE / 32)
    })
}

/// The reader thread: decide for every chunk, in order, what to send.
/// Returns the hashes it knows, for the next attempt and the digest.
#[allow(clippy::too_many_arguments)]
fn read_chunks(
    disk: &Disk,
    overlay: Option<Arc<consistency::snapshot::Overlay>>,
    cs: u32,
    mut known: Vec<Option<[u8; 32]>>,
    manifest: HashMap<u64, [u8; 32]>,
    fresh: bool,
    level: i32,
    tx: mpsc::Sender<Result<Item>>,
) -> Vec<Option<[u8; 32]>> {
    let size = disk.size();
    // Chunks travel in these buffers to the socket and come back.
    let pool = crate::disk::buffers::BufPool::new(cs as usize, 64);
    let mut compressor = if level > 0 {
        zstd::bulk::Compressor::new(level).ok()
    } else {
        None
    };
    for (i, index) in (0..known.len()).zip(0u64..) {
        let len = chunk_len(size, cs, index);
        let zero_h = zero_hash(len);
        let theirs = manifest
            .get(&index)
            .copied()
            .or(if fresh { Some(zero_h) } else { None });
        // Confirmed in an earlier attempt of this run: no need to read again.
        if let (Some(k), Some(t)) = (known[i], theirs) {
            if k == t {
                if tx
                    .blocking_send(Ok(Item::Skip {
                        len,
                        zero: k == zero_h,
                    }))
                    .is_err()
                {
                    return known;
                }
                continue;
            }
        }
        let mut buf = pool.get(len);
        let at = index * u64::from(cs);
        let read = match &overlay {
            // The volumes' extents from their snapshots (--consistency snapshot).
            Some(o) => o.read_at(disk, &mut buf, at),
            None => disk.read_at(&mut buf, at),
        };
        if let Err(e) = read {
            let _ = tx.blocking_send(Err(coded(ErrorCode::SourceReadFailed, format!("{e:#}"))));
            return known;
        }
        let zero = is_zero(&buf);
        let hash = if zero {
            zero_h
        } else {
            *blake3::hash(&buf).as_bytes()
        };
        known[i] = Some(hash);
        let item = if theirs == Some(hash) {
            Item::Skip { len, zero }
        } else if zero {
            Item::Zero { index }
        } else {
            let packed = compressor
                .as_mut()
                .and_then(|c| {
                    worth_compressing(c, &buf)
                        .then(|| c.compress(&buf).ok())
                        .flatten()
                })
                .filter(|p| p.len() < len);
            match packed {
                Some(p) => Item::Data {
                    index,
                    len,
                    hash,
                    compressed: true,
                    payload: Bytes::from(p),
                },
                None => Item::Data {
                    index,
                    len,
                    hash,
                    compressed: false,
                    // No copy: the buffer goes back to the pool once sent.
                    payload: Bytes::from_owner(buf),
                },
            }
        };
        if tx.blocking_send(Ok(item)).is_err() {
            return known;
        }
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_compressed_when_a_part_of_it_shrinks() {
        use rand::RngCore;
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        let mut random = vec![0u8; 4 << 20];
        rand::thread_rng().fill_bytes(&mut random);
        assert!(!worth_compressing(&mut c, &random), "random data");
        let mut striped = random.clone();
        // A quarter of text after the random start, as a disk's stripes are.
        for (i, b) in striped[2 << 20..3 << 20].iter_mut().enumerate() {
            *b = b"a log line that compresses\n"[i % 27];
        }
        assert!(worth_compressing(&mut c, &striped), "a stripe of text");
        assert!(
            worth_compressing(&mut c, &random[..4096]),
            "a small chunk is always tried"
        );
    }

    #[test]
    fn processed_is_said_only_of_a_round_that_was() {
        let all = [
            Step::Grow,
            Step::Mount,
            Step::Repair,
            Step::Resync,
            Step::Verify,
            Step::Handoff,
        ];
        let cases: [(&str, &[Step], Status, &str); 4] = [
            (
                "a round with its pipeline",
                &all,
                Status::Finished,
                "the round is processed (grow, mount, repair, resync, verify) and handed off; the job is Finished",
            ),
            (
                "a job that only replicates",
                &[Step::Handoff],
                Status::Finished,
                "the disks are verified and handed off; the job only replicates disks, so nothing was processed; the job is Finished",
            ),
            (
                "an incremental round",
                &[Step::Handoff],
                Status::Waiting,
                "the disks are verified and handed off; the job only replicates disks, so nothing was processed; the job is Waiting: the next round starts when the control plane has taken its snapshot",
            ),
            (
                "a round that had ended before",
                &[],
                Status::CLEANING,
                "the round had already ended; the job is Running/Cleaning",
            ),
        ];
        for (name, steps, status, want) in cases {
            assert_eq!(round_outcome(steps, status), want, "{name}");
        }
    }

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
