//! `ferry send`: its command line, turned into the sender's [`SendOptions`].

use std::path::PathBuf;

use crate::job::errors::exit_statuses;
use crate::send::SendOptions;
use crate::wire;

/// Where the token and fingerprint come from, what a second run does, an
/// example, and the exit statuses (from the error catalogue).
fn after_help() -> String {
    let mut help = String::from(
        "The appliance prints its token and fingerprint at start (embedded mode keeps them in \
<state-dir>/token and <state-dir>/tls/fingerprint; GET /v1/identity on port 8080 shows the fingerprint).\n\n\
Run the same command again after an interruption: only what the appliance has not committed is sent. \
Run it again after the source changed: only the changed chunks are sent.\n\nExample:\n  \
ferry send --to 203.0.113.7 --token $TOKEN --fingerprint $FP --disk /dev/sda --disk /dev/sdb\n\n\
Exit status (`ferry errors` shows each code's):\n",
    );
    for (status, meaning) in exit_statuses() {
        help.push_str(&format!("  {status}  {meaning}\n"));
    }
    help
}

/// `--bwlimit`: a rate, 0 for none (clap shows the error).
fn parse_bwlimit(text: &str) -> Result<u64, String> {
    crate::send::ratelimit::parse_rate(text)
        .map(|r| r.unwrap_or(0))
        .map_err(|e| crate::job::errors::describe(&e).1)
}

/// Arguments of `ferry send`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = after_help())]
pub struct SendArgs {
    /// The appliance: HOST or HOST:PORT (default port 8703).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub to: String,
    /// The job token [env FERRY_TOKEN].
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// SHA-256 fingerprint of the appliance's TLS certificate (hex) [env FERRY_FINGERPRINT].
    #[arg(long, env = "FERRY_FINGERPRINT")]
    pub fingerprint: String,
    /// A source disk: block device or raw image file. Repeat for more disks;
    /// the first is disk 0.
    #[arg(long = "disk", value_name = "SRC", conflicts_with = "root")]
    pub disks: Vec<PathBuf>,
    /// block: whole disks, chunk by chunk; file: the files of a tree, entry
    /// by entry (onto a layout that may be smaller than the source's).
    #[arg(long, value_enum, default_value_t = Mode::Block)]
    pub mode: Mode,
    /// File mode: the root of the tree to send. Without it, file mode sends
    /// the running server itself: `/` and every local file system mounted
    /// beneath it (ext4, ext3, xfs, vfat), on the layout read from the disks
    /// they are on; pseudo, network and tmpfs file systems are not entered
    /// (their mount points are sent empty), and file systems of fstab that
    /// are not mounted are not sent.
    #[arg(long, value_name = "DIR", requires = "layout")]
    pub root: Option<PathBuf>,
    /// File mode with --root: the source's layout, as `ferry layout read` prints it.
    #[arg(long, value_name = "FILE", requires = "root")]
    pub layout: Option<PathBuf>,
    /// File mode: the directory of the exclude lists (rsync_excludes_linux.txt
    /// for the system disk, rsync_excludes_linux_disk<N>.txt for data disk N)
    /// [default: Excludes beside this binary].
    #[arg(long, value_name = "DIR")]
    pub excludes: Option<PathBuf>,
    /// File mode of a live server (no --root): print the file systems that
    /// would be sent and the layout read from the disks (TOML, as `ferry
    /// layout read` prints it), and exit without contacting the appliance.
    #[arg(long, conflicts_with_all = ["root", "disks"])]
    pub dry_run: bool,
    /// Chunk size in bytes: a power of two from 64 KiB to 16 MiB.
    #[arg(long, default_value_t = wire::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// Most bytes of chunks in flight (sent, not yet committed by the
    /// appliance), all disks together [default: 64 MiB and 16 MiB per data stream].
    #[arg(long, value_name = "BYTES")]
    pub window: Option<u64>,
    /// TLS connections that carry the chunks, all disks together (each disk
    /// has its own connection for its manifest and acks besides) [default:
    /// 2, and one more per 8 ms of round trip to the appliance, at most 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::send::streams::MAX_STREAMS as u64))]
    pub streams: Option<u64>,
    /// Most bytes per second to send: 50M (MiB/s; K, M, G are binary) or
    /// 400mbit (bits per second). The appliance's limit, which the control
    /// plane sets and changes during the transfer, applies when it is lower.
    #[arg(long, value_name = "RATE", value_parser = parse_bwlimit)]
    pub bwlimit: Option<u64>,
    /// zstd level for chunks that compress (0 turns compression off; file
    /// mode compresses only while the link, not the sender, is the bottleneck).
    #[arg(long, default_value_t = 1)]
    pub zstd_level: i32,
    /// How many times to reconnect after a dropped connection.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Write a JSON report of what was sent and skipped to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Measure the transfer rate to the appliance (TLS, same framing) for
    /// --probe-seconds, write nothing, and print MB/s and the estimated time
    /// for the given disks.
    #[arg(long)]
    pub probe: bool,
    /// Do not wait for the appliance to process the round (grow, repair,
    /// verify) after every disk is verified; its outcome is then only in
    /// the job (GET /v1/job on port 8080). With --mode file the round is
    /// then not ended: the trees are committed and a later run (a final
    /// pass of a live server) ends it.
    #[arg(long)]
    pub no_wait: bool,
    /// How long --probe sends.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub probe_seconds: u64,
    /// Block mode: how to copy file systems that are mounted read-write on
    /// a source disk (required when there is one): freeze (live passes,
    /// then the file systems frozen for the final one), snapshot (LVM
    /// snapshots), none (as they are: crash-consistent at best). File mode
    /// refuses it: it copies each file as it is when read.
    #[arg(long, value_enum)]
    pub consistency: Option<crate::send::consistency::Mode>,
    /// With --consistency freeze: the longest the file systems stay frozen;
    /// past it they are thawed and the sender stops (1 s to a day).
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub max_freeze: u64,
    /// With --consistency freeze: do not track the source disks' writes.
    /// By default the sender follows the block layer's writes to them
    /// (through the kernel's trace buffers; no module is loaded), and each
    /// pass after the first reads only the chunks written since the pass
    /// before began, so the file systems stay frozen for as long as the
    /// last live pass's changes take to read. With --no-track every pass
    /// re-reads the whole disk.
    #[arg(long)]
    pub no_track: bool,
}

/// How `ferry send` copies the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Block,
    File,
}

impl From<SendArgs> for SendOptions {
    fn from(a: SendArgs) -> SendOptions {
        let files = (a.mode == Mode::File).then(|| crate::send::walk::FileOptions {
            root: a.root.clone().unwrap_or_default(),
            layout: a.layout.clone(),
            excludes: a.excludes.clone(),
            dry_run: a.dry_run,
        });
        SendOptions {
            files,
            to: a.to,
            token: a.token,
            fingerprint: a.fingerprint,
            disks: a.disks,
            chunk_size: a.chunk_size,
            window: a.window,
            streams: a.streams.map(|n| n as usize),
            bwlimit: a.bwlimit.filter(|&n| n > 0),
            zstd_level: a.zstd_level,
            retries: a.retries,
            report: a.report,
            probe: a.probe,
            no_wait: a.no_wait,
            probe_seconds: a.probe_seconds,
            consistency: crate::send::consistency::ConsistencySettings {
                mode: a.consistency,
                max_freeze: std::time::Duration::from_secs(a.max_freeze),
                track: !a.no_track,
            },
        }
    }
}
