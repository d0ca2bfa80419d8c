//! File mode's sender: walk a tree, compare it with the appliance's
//! manifest of committed entries, and send what changed (entries, content
//! in pieces with holes left out), then remove on the target what is gone
//! from the source (never an excluded path).
//!
//! The walk and the reads run on a blocking thread that hands frames to
//! the connection's task through a bounded queue.

pub mod discover;
pub mod excludes;
pub mod live;
pub mod walk;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rustix::fs::{Mode, OFlags, SeekFrom};
use serde::Serialize;
use tokio::sync::mpsc;

use super::client::{self, Conn};
use super::Options;
use crate::files::{self, ContentHash, Entry, Kind, Stamp, Time};
use crate::job::errors::{coded, find_coded, ErrorCode, Retry};
use crate::wire::{self, Frame};
use excludes::Excludes;

/// What file mode is asked to send.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// The root of the tree (`--root`).
    pub root: PathBuf,
    /// The layout of the source, as `ferry layout read` prints it.
    pub layout: Option<PathBuf>,
    /// Where the exclude lists are (`--excludes`); default: `Excludes`
    /// beside the sender.
    pub excludes: Option<PathBuf>,
    /// A live server: print what would be sent and its layout, send nothing.
    pub dry_run: bool,
}

/// Counters of one attempt, read by the progress line while it runs.
#[derive(Debug, Default)]
struct Counts {
    entries: AtomicU64,
    dirs: AtomicU64,
    files: AtomicU64,
    content_bytes: AtomicU64,
    wire_bytes: AtomicU64,
    unchanged: AtomicU64,
    /// Bytes of the unchanged files (walked, not sent).
    unchanged_bytes: AtomicU64,
    removed: AtomicU64,
    resent_changed: AtomicU64,
    changed_while_read: AtomicU64,
}

/// What happened to the tree (the last attempt's counts).
#[derive(Debug, Default, Clone, Serialize)]
pub struct TreeReport {
    pub tree: u32,
    pub root: String,
    pub attempts: u32,
    pub seconds: f64,
    /// Entries sent other than directories, and files among them.
    pub sent_entries: u64,
    pub sent_files: u64,
    /// Directories: always sent (their metadata is set after their content).
    pub sent_dirs: u64,
    pub content_bytes: u64,
    pub wire_bytes: u64,
    pub unchanged: u64,
    pub removed: u64,
    pub excluded: u64,
    pub sockets_skipped: u64,
    pub mount_points: u64,
    /// Files re-sent because they changed while they were read.
    pub resent_changed: u64,
    /// Files that kept changing: sent as last read.
    pub changed_while_read: u64,
    pub committed_entries: u64,
    pub committed_removals: u64,
    pub committed_bytes: u64,
    pub excludes: Option<String>,
}

/// Most frames, and content bytes, sent with one flush.
const SEND_BATCH: usize = 256;
const SEND_BATCH_BYTES: usize = 4 << 20;

/// One tree to send: its number, its mount point in the layout, where it
/// is read, what it leaves out, and the other trees' mount points beneath
/// it (sent as empty directories, not entered).
#[derive(Debug, Clone)]
struct TreeJob {
    tree: u32,
    mount: String,
    root: PathBuf,
    excludes: Excludes,
    stops: Vec<Vec<u8>>,
    /// Bytes the tree holds (measured before the layout is sent): what
    /// the progress line's estimate of the time left counts against.
    used: u64,
}

/// What `--report` writes: the first tree's report (the root file
/// system's), and every tree's.
#[derive(Debug, Serialize)]
struct SendReport<'a> {
    #[serde(flatten)]
    first: &'a TreeReport,
    trees: &'a [TreeReport],
    /// The appliance laid out its targets and processed the round.
    built: bool,
}

/// The trees of `layout` beneath `root`: the root file system first, then
/// every other file system ferry writes (ext4, ext3, xfs, vfat), in the
/// layout's order. The system disk's exclude list applies to the root file
/// system, data disk N's to the file systems of disk N.
fn tree_jobs(
    root: &Path,
    layout: &crate::layout::Layout,
    excludes_dir: Option<&Path>,
) -> Result<Vec<TreeJob>> {
    use crate::layout::FsType;
    let writable =
        |fs: &FsType| matches!(fs, FsType::Ext4 | FsType::Ext3 | FsType::Xfs | FsType::Vfat);
    let mut mounts: Vec<(String, usize)> = Vec::new();
    for (d, disk) in layout.disks.iter().enumerate() {
        for p in &disk.partitions {
            if let Some(m) = p.mount.as_ref().filter(|_| writable(&p.fs)) {
                mounts.push((m.trim_end_matches('/').to_owned(), d));
            }
        }
    }
    // A logical volume is on the disk of its physical volume.
    for v in &layout.volumes {
        if let (Some(m), Some(place)) = (v.mount.as_ref().filter(|_| writable(&v.fs)), v.place) {
            mounts.push((m.trim_end_matches('/').to_owned(), place.disk));
        }
    }
    for m in &mut mounts {
        if m.0.is_empty() {
            m.0 = "/".into();
        }
    }
    mounts.sort_by_key(|(m, _)| m != "/");
    if mounts.first().is_none_or(|(m, _)| m != "/") {
        return Err(coded(
            ErrorCode::LayoutInvalid,
            "the layout has no ext4, ext3 or xfs file system mounted on /",
        ));
    }
    let mut jobs = Vec::new();
    for (i, (mount, disk)) in mounts.iter().enumerate() {
        let rel = mount.trim_start_matches('/');
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(rel)
        };
        if !dir.is_dir() {
            return Err(coded(
                ErrorCode::Usage,
                format!(
                    "--root {}: no directory {} for the file system the layout mounts on {mount}",
                    root.display(),
                    dir.display()
                ),
            ));
        }
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        let stops = mounts
            .iter()
            .filter_map(|(m, _)| m.trim_start_matches('/').strip_prefix(&prefix))
            .filter(|r| !r.is_empty())
            .map(|r| r.as_bytes().to_vec())
            .collect();
        let excludes = match (excludes_dir, i, *disk) {
            (Some(d), 0, _) => Excludes::load(d, 0)?,
            (Some(d), _, n) if n > 0 => Excludes::load(d, n as u32)?,
            _ => Excludes::default(),
        };
        jobs.push(TreeJob {
            tree: i as u32,
            mount: mount.clone(),
            root: dir,
            excludes,
            stops,
            used: 0,
        });
    }
    Ok(jobs)
}

/// Send the trees of `f`: the layout first, then each file system as its
/// own tree; then, when the appliance laid out its targets, end the round
/// and follow its Processing to its end (not with --no-wait: the round
/// stays open for a later pass).
pub async fn run(args: &Options, f: &FileOptions) -> Result<()> {
    let live = f.root.as_os_str().is_empty();
    // A live server: its layout first, so that --dry-run needs no appliance.
    let live_layout = if live {
        let found = tokio::task::spawn_blocking(live_source)
            .await
            .context("discovering the server's file systems")??;
        if f.dry_run {
            print!("{}", found.0.to_toml().context("printing the layout")?);
            return Ok(());
        }
        Some(found)
    } else {
        None
    };
    let fingerprint = super::pin::normalize(&args.fingerprint).ok_or_else(|| {
        coded(
            ErrorCode::Usage,
            format!(
                "--fingerprint `{}` is not a SHA-256 fingerprint (64 hex digits; GET /v1/identity on the appliance's port 8080 shows it)",
                args.fingerprint
            ),
        )
    })?;
    let to = super::data_address(&args.to)?;
    let (root, layout, views) = match live_layout {
        Some((layout, views)) => (PathBuf::from("/"), layout, Some(views)),
        None => (f.root.clone(), given_layout(f)?, None),
    };
    let excludes = f.excludes.as_deref();
    send_source(
        args,
        &to,
        &fingerprint,
        &root,
        layout,
        excludes,
        views.as_ref(),
    )
    .await
}

/// The running server's layout, read from its disks, with the mount
/// points of what it has mounted, and where each of its file systems is
/// read alone; what is sent is printed.
fn live_source() -> Result<(crate::layout::Layout, live::Views)> {
    let mounts = crate::layout::mount::mountinfo()?;
    let fstab = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
    let found = discover::discover(
        &mounts,
        &crate::layout::tree::parse_fstab(&fstab),
        Path::new("/sys/firmware"),
    );
    let source = live::source(&found, Path::new("/sys"), Path::new("/dev"))?;
    eprint!("{}", live::describe(&found, &source));
    let views = live::Views::open(&source.mounts);
    Ok((source.layout, views))
}

/// `--root DIR --layout FILE`: the layout given.
fn given_layout(f: &FileOptions) -> Result<crate::layout::Layout> {
    if !f.root.is_dir() {
        return Err(coded(
            ErrorCode::Usage,
            format!("--root {}: not a directory", f.root.display()),
        ));
    }
    let layout_path = f.layout.as_ref().ok_or_else(|| {
        coded(
            ErrorCode::Usage,
            "--root needs --layout FILE (the source's layout, as `ferry layout read` prints it)",
        )
    })?;
    let text = std::fs::read_to_string(layout_path)
        .with_context(|| format!("reading the layout {}", layout_path.display()))
        .map_err(|e| coded(ErrorCode::Usage, format!("{e:#}")))?;
    crate::layout::desc::Layout::parse(&text)
        .with_context(|| format!("parsing the layout {}", layout_path.display()))
}

/// Send the tree at `root` with its `layout`: a live server's (`/`) and a
/// given tree's alike; a live server's file systems are read through
/// `views`.
async fn send_source(
    args: &Options,
    to: &str,
    fingerprint: &str,
    root: &Path,
    layout: crate::layout::Layout,
    excludes: Option<&Path>,
    views: Option<&live::Views>,
) -> Result<()> {
    let dir = excludes.map(Path::to_owned).or_else(excludes::default_dir);
    let mut jobs = tree_jobs(root, &layout, dir.as_deref())?;
    for j in &mut jobs {
        if let Some(alone) = views.and_then(|v| v.root_of(&j.mount)) {
            eprintln!(
                "ferry send: tree {} ({}) is read alone at {}, without what is mounted on it",
                j.tree,
                j.mount,
                alone.display()
            );
            j.root = alone;
        }
    }
    let mut trees = Vec::new();
    for j in &mut jobs {
        if let Some(src) = &j.excludes.source {
            eprintln!(
                "ferry send: excluding from {} the paths listed in {}",
                j.mount,
                src.display()
            );
        }
        let (root, ex, stops) = (j.root.clone(), j.excludes.clone(), j.stops.clone());
        let used = tokio::task::spawn_blocking(move || walk::used_bytes(&root, &ex, &stops))
            .await
            .context("measuring the trees")??;
        j.used = used;
        trees.push(crate::layout::fit::TreeSource {
            mount: j.mount.clone(),
            used,
        });
    }
    let plan = crate::layout::fit::SourcePlan { layout, trees };
    // What the appliance will lay out, checked here first.
    let (_, lvm) = plan.flattened()?;
    for v in &lvm.volumes {
        eprintln!(
            "ferry send: the logical volume {} ({}) becomes a plain partition on the target; the migrated system boots without its volume group",
            v.volume,
            v.mount.as_deref().unwrap_or(&v.fs)
        );
    }
    for v in &lvm.left_out {
        eprintln!(
            "ferry send: the logical volume {v} is not mounted and not swap: nothing of it is sent"
        );
    }
    let plan_json = Bytes::from(plan.to_json(crate::wire::frame::MAX_SOURCE_LAYOUT)?);
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut sent: Option<(Vec<TreeReport>, bool)> = None;
    let result = loop {
        attempts += 1;
        let r = match &sent {
            // Every tree is committed: only the round's end is left.
            Some(_) => follow(args, to, fingerprint).await,
            None => attempt(args, to, fingerprint, &jobs, &plan_json, &mut sent).await,
        };
        match r {
            Ok(()) => break Ok(()),
            Err(e) => {
                let code = find_coded(&e)
                    .map(|c| c.code)
                    .unwrap_or(ErrorCode::Internal);
                if code.retry() == Retry::Final || attempts > args.retries {
                    break Err(e);
                }
                let wait = Duration::from_secs(1u64 << (attempts - 1).min(4));
                eprintln!(
                    "ferry send: {e:#}; retrying in {} s (attempt {} of {})",
                    wait.as_secs(),
                    attempts + 1,
                    args.retries + 1
                );
                tokio::time::sleep(wait).await;
            }
        }
    };
    // The reports are printed whatever the round's end was.
    if let Some((reports, built)) = &mut sent {
        for report in reports.iter_mut() {
            report.attempts = attempts;
            report.seconds = started.elapsed().as_secs_f64();
            print_report(report);
        }
        if let (Some(path), Some(first)) = (&args.report, reports.first()) {
            let all = SendReport {
                first,
                trees: reports,
                built: *built,
            };
            std::fs::write(
                path,
                serde_json::to_vec_pretty(&all).context("encoding the report")?,
            )
            .with_context(|| format!("writing the report {}", path.display()))?;
        }
    }
    result
}

fn print_report(report: &TreeReport) {
    eprintln!(
        "tree {} ({}): sent {} entries ({} files, {} bytes of content, {} bytes on the wire) and {} directories; {} unchanged; {} removed; {} excluded; {} sockets skipped; {} mount points sent empty; {} re-sent after changing while read; the appliance committed {} entries, {} removals, {} bytes ({:.1} s)",
        report.tree,
        report.root,
        report.sent_entries,
        report.sent_files,
        report.content_bytes,
        report.wire_bytes,
        report.sent_dirs,
        report.unchanged,
        report.removed,
        report.excluded,
        report.sockets_skipped,
        report.mount_points,
        report.resent_changed,
        report.committed_entries,
        report.committed_removals,
        report.committed_bytes,
        report.seconds,
    );
    if report.changed_while_read > 0 {
        eprintln!(
            "ferry send: {} files kept changing while they were read and were sent as last read; run the sender again (or stop what writes them) for a consistent copy",
            report.changed_while_read
        );
    }
}

/// The layout, every tree, and the round's end, on one connection. Once
/// every tree is committed, `sent` holds their reports (and whether the
/// appliance laid out its targets), so that a retry only follows the
/// round.
async fn attempt(
    args: &Options,
    to: &str,
    fingerprint: &str,
    jobs: &[TreeJob],
    plan: &Bytes,
    sent: &mut Option<(Vec<TreeReport>, bool)>,
) -> Result<()> {
    let mut conn = client::connect(to, &args.token, fingerprint).await?;
    client::send(&mut conn, Frame::SourceLayout { json: plan.clone() }).await?;
    let built = loop {
        match client::recv(&mut conn).await? {
            Frame::TargetsReady { built, detail } => {
                eprintln!("ferry send: the appliance's targets: {detail}");
                break built;
            }
            Frame::Bandwidth { .. } => continue,
            other => {
                return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("expected TargetsReady, got {}", other.name()),
                ))
            }
        }
    };
    let mut reports = Vec::new();
    for j in jobs {
        reports.push(send_tree(&mut conn, args, j).await?);
    }
    *sent = Some((reports, built));
    if built && !args.no_wait {
        super::wait_for_round(&mut conn, &|line| eprintln!("{line}")).await?;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(conn.get_mut()).await;
    Ok(())
}

/// A new connection that only follows the round's end.
async fn follow(args: &Options, to: &str, fingerprint: &str) -> Result<()> {
    if args.no_wait {
        return Ok(());
    }
    let mut conn = client::connect(to, &args.token, fingerprint).await?;
    super::wait_for_round(&mut conn, &|line| eprintln!("{line}")).await?;
    let _ = tokio::io::AsyncWriteExt::shutdown(conn.get_mut()).await;
    Ok(())
}

/// One tree: its manifest, what changed, the removals, its close.
async fn send_tree(conn: &mut Conn, args: &Options, j: &TreeJob) -> Result<TreeReport> {
    let tree = j.tree;
    client::send(conn, Frame::OpenTree { tree }).await?;
    let manifest = read_manifest(conn, tree).await?;
    let counts = Arc::new(Counts::default());
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let producer = {
        let (j, counts) = (j.clone(), Arc::clone(&counts));
        let level = args.zstd_level;
        tokio::task::spawn_blocking(move || produce(&j, manifest, &tx, level, &counts))
    };
    let started = Instant::now();
    let mut ping = tokio::time::interval(wire::HEARTBEAT);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    let sent = loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => {
                    // What else is queued goes with it, in one flush.
                    let mut batch = vec![frame];
                    let mut bytes = 0usize;
                    while batch.len() < SEND_BATCH && bytes < SEND_BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(f) => {
                                if let Frame::FileData { payload, .. } = &f {
                                    bytes += payload.len();
                                }
                                batch.push(f);
                            }
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = client::send_all(conn, batch).await {
                        break Err(e);
                    }
                }
                None => break Ok(()),
            },
            incoming = client::recv_any(conn) => match incoming {
                Ok(Frame::Pong | Frame::Bandwidth { .. }) => {}
                Ok(other) => break Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("{} while the tree was sent", other.name()),
                )),
                Err(e) => break Err(e),
            },
            _ = ping.tick() => {
                if let Err(e) = client::send(conn, Frame::Ping).await {
                    break Err(e);
                }
            }
            _ = progress.tick() => print_progress(tree, &j.mount, j.used, &counts, started.elapsed()),
        }
    };
    // The producer stops when the queue is gone.
    drop(rx);
    let produced = producer.await.context("walking the tree")?;
    sent?;
    let skipped = produced?;
    client::send(conn, Frame::CloseTree { tree }).await?;
    let closed = loop {
        match client::recv_live(conn).await? {
            Frame::TreeClosed {
                tree: t,
                entries,
                removed,
                bytes,
            } if t == tree => break (entries, removed, bytes),
            Frame::Bandwidth { .. } => continue,
            other => {
                return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("expected TreeClosed, got {}", other.name()),
                ))
            }
        }
    };
    let c = &counts;
    Ok(TreeReport {
        tree,
        root: j.root.display().to_string(),
        sent_entries: c.entries.load(Ordering::Relaxed),
        sent_files: c.files.load(Ordering::Relaxed),
        sent_dirs: c.dirs.load(Ordering::Relaxed),
        content_bytes: c.content_bytes.load(Ordering::Relaxed),
        wire_bytes: c.wire_bytes.load(Ordering::Relaxed),
        unchanged: c.unchanged.load(Ordering::Relaxed),
        removed: c.removed.load(Ordering::Relaxed),
        excluded: skipped.excluded,
        sockets_skipped: skipped.sockets,
        mount_points: skipped.mount_points,
        resent_changed: c.resent_changed.load(Ordering::Relaxed),
        changed_while_read: c.changed_while_read.load(Ordering::Relaxed),
        committed_entries: closed.0,
        committed_removals: closed.1,
        committed_bytes: closed.2,
        excludes: j.excludes.source.as_ref().map(|p| p.display().to_string()),
        ..Default::default()
    })
}

fn print_progress(tree: u32, mount: &str, used: u64, c: &Counts, elapsed: Duration) {
    let bytes = c.content_bytes.load(Ordering::Relaxed);
    let done = bytes + c.unchanged_bytes.load(Ordering::Relaxed);
    let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001) / 1e6;
    eprintln!(
        "ferry send: tree {tree} ({mount}): {} entries sent ({} files, {} of content, {rate:.1} MB/s), {} unchanged; {}",
        c.entries.load(Ordering::Relaxed),
        c.files.load(Ordering::Relaxed),
        crate::disk::human_bytes(bytes),
        c.unchanged.load(Ordering::Relaxed),
        time_left(used, done, bytes, elapsed),
    );
}

/// The progress line's estimate: of the `used` bytes of the tree, `done`
/// were walked (sent or unchanged), `sent` of them sent in `elapsed`.
/// The rest is expected at the rate so far.
fn time_left(used: u64, done: u64, sent: u64, elapsed: Duration) -> String {
    let pct = if used == 0 {
        100.0
    } else {
        (done as f64 * 100.0 / used as f64).min(100.0)
    };
    let left = used.saturating_sub(done);
    let secs = elapsed.as_secs_f64();
    if sent == 0 || secs <= 0.0 {
        return format!("{pct:.0} % of {} walked", crate::disk::human_bytes(used));
    }
    let eta = (left as f64 / (sent as f64 / secs)).ceil() as u64;
    format!(
        "{pct:.0} % of {} walked, about {} left",
        crate::disk::human_bytes(used),
        if eta >= 120 {
            format!("{} min", eta.div_ceil(60))
        } else {
            format!("{eta} s")
        }
    )
}

async fn read_manifest(conn: &mut Conn, tree: u32) -> Result<HashMap<Vec<u8>, Stamp>> {
    let mut manifest = HashMap::new();
    loop {
        match client::recv(conn).await? {
            Frame::TreeManifest {
                tree: t,
                last,
                entries,
            } if t == tree => {
                manifest.extend(entries);
                if last {
                    return Ok(manifest);
                }
            }
            Frame::Bandwidth { .. } => continue,
            other => {
                return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("expected TreeManifest, got {}", other.name()),
                ))
            }
        }
    }
}

/// The queue to the connection's task is gone: that task has the error.
fn queue_gone() -> anyhow::Error {
    coded(
        ErrorCode::TransferInterrupted,
        "the connection to the appliance closed while the tree was sent",
    )
}

/// Walk, compare and queue the frames of the tree; then the removals.
fn produce(
    j: &TreeJob,
    mut manifest: HashMap<Vec<u8>, Stamp>,
    tx: &mpsc::Sender<Frame>,
    level: i32,
    counts: &Counts,
) -> Result<walk::Skipped> {
    let (root, excludes, tree) = (&j.root, &j.excludes, j.tree);
    let mut compressor = if level > 0 {
        Some(zstd::bulk::Compressor::new(level).context("starting zstd")?)
    } else {
        None
    };
    let skipped = walk::walk_with(root, excludes, &j.stops, |found| {
        let old = manifest.remove(&found.entry.path);
        // Directories are always sent: their metadata is applied after
        // their content, which may have changed beneath them.
        if found.entry.kind != Kind::Dir {
            if let Some(s) = old {
                if s.same_as(&found.entry.stamp([0; 32])) {
                    counts.unchanged.fetch_add(1, Ordering::Relaxed);
                    counts
                        .unchanged_bytes
                        .fetch_add(found.entry.size, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
        if found.entry.kind == Kind::File {
            send_file(tree, found, tx, compressor.as_mut(), counts)
        } else {
            if found.entry.kind == Kind::Dir {
                counts.dirs.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.entries.fetch_add(1, Ordering::Relaxed);
            }
            tx.blocking_send(Frame::Entry {
                tree,
                entry: Box::new(found.entry),
            })
            .map_err(|_| queue_gone())
        }
    })?;
    let mut gone: Vec<Vec<u8>> = manifest
        .into_keys()
        .filter(|p| p != b"." && !excludes.covers(p))
        .collect();
    gone.sort();
    let mut last: Option<Vec<u8>> = None;
    for p in gone {
        if let Some(r) = &last {
            if p.starts_with(r) && p.get(r.len()) == Some(&b'/') {
                continue;
            }
        }
        counts.removed.fetch_add(1, Ordering::Relaxed);
        tx.blocking_send(Frame::Remove {
            tree,
            path: p.clone(),
        })
        .map_err(|_| queue_gone())?;
        last = Some(p);
    }
    Ok(skipped)
}

/// How many times a file that changes while it is read is read again.
const REREADS: u32 = 3;

fn open_source(path: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    // O_NOATIME keeps the source's access times; it needs the file's owner
    // or root.
    match rustix::fs::open(path, flags | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::PERM) => Ok(rustix::fs::open(path, flags, Mode::empty())?),
        Err(e) => Err(e.into()),
    }
}

/// What tells a file's content changed: its length, mtime and ctime.
fn version(st: &rustix::fs::Stat) -> (u64, Time, Time) {
    (
        st.st_size as u64,
        Time {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec as u32,
        },
        Time {
            sec: st.st_ctime,
            nsec: st.st_ctime_nsec as u32,
        },
    )
}

/// Send a regular file: its entry as opened, its data pieces (holes left
/// out), its hash; again when it changed while it was read.
fn send_file(
    tree: u32,
    found: walk::Found,
    tx: &mpsc::Sender<Frame>,
    mut compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    counts: &Counts,
) -> Result<()> {
    let shown = || {
        files::display(std::os::unix::ffi::OsStrExt::as_bytes(
            found.source.as_os_str(),
        ))
    };
    let unreadable = |e: &dyn std::fmt::Display| {
        coded(ErrorCode::SourceTreeUnreadable, format!("{}: {e}", shown()))
    };
    let mut entry: Entry = found.entry;
    for round in 0..REREADS {
        let fd = match open_source(&found.source) {
            Ok(fd) => fd,
            // Gone, or replaced by a symlink, since the walk saw it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ELOOP)) => {
                return Ok(())
            }
            Err(e) => return Err(unreadable(&e)),
        };
        let before = rustix::fs::fstat(&fd).map_err(|e| unreadable(&e))?;
        if rustix::fs::FileType::from_raw_mode(before.st_mode) != rustix::fs::FileType::RegularFile
        {
            return Ok(());
        }
        let (size, mtime, ctime) = version(&before);
        entry.size = size;
        entry.mtime = mtime;
        entry.ctime = ctime;
        entry.mode = before.st_mode & 0o7777;
        entry.uid = before.st_uid;
        entry.gid = before.st_gid;
        counts.entries.fetch_add(1, Ordering::Relaxed);
        counts.files.fetch_add(1, Ordering::Relaxed);
        tx.blocking_send(Frame::Entry {
            tree,
            entry: Box::new(entry.clone()),
        })
        .map_err(|_| queue_gone())?;
        let mut hash = ContentHash::default();
        let mut pos = 0u64;
        let mut short = false;
        while pos < size {
            let data = match rustix::fs::seek(&fd, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(unreadable(&e)),
            };
            if data >= size {
                break;
            }
            let hole = match rustix::fs::seek(&fd, SeekFrom::Hole(data)) {
                Ok(h) => h.min(size),
                Err(e) => return Err(unreadable(&e)),
            };
            let mut off = data;
            while off < hole {
                let want = ((hole - off) as usize).min(files::FILE_CHUNK);
                let mut buf = vec![0u8; want];
                let mut got = 0usize;
                while got < want {
                    let n = rustix::io::pread(&fd, &mut buf[got..], off + got as u64)
                        .map_err(|e| unreadable(&e))?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                buf.truncate(got);
                if got == 0 {
                    short = true;
                    break;
                }
                hash.piece(off, &buf);
                counts
                    .content_bytes
                    .fetch_add(got as u64, Ordering::Relaxed);
                // Compress only while the link is what holds the transfer
                // back (the queue to it more than half full): on a link
                // faster than zstd, compressing costs time and saves none.
                let link_bound = tx.capacity() < tx.max_capacity() / 2;
                let (compressed, payload) =
                    pack(compressor.as_deref_mut().filter(|_| link_bound), buf);
                counts
                    .wire_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                tx.blocking_send(Frame::FileData {
                    tree,
                    offset: off,
                    compressed,
                    payload,
                })
                .map_err(|_| queue_gone())?;
                off += got as u64;
                if got < want {
                    short = true;
                    break;
                }
            }
            if short {
                break;
            }
            pos = hole;
        }
        tx.blocking_send(Frame::FileEnd {
            tree,
            hash: hash.finish(size),
        })
        .map_err(|_| queue_gone())?;
        let after = rustix::fs::fstat(&fd).map_err(|e| unreadable(&e))?;
        if !short && version(&after) == (size, mtime, ctime) {
            return Ok(());
        }
        if round + 1 < REREADS {
            counts.resent_changed.fetch_add(1, Ordering::Relaxed);
        }
    }
    counts.changed_while_read.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(path = %shown(), "the file kept changing while it was read; sent as last read");
    Ok(())
}

/// A piece compressed when that saves an eighth of it.
fn pack(compressor: Option<&mut zstd::bulk::Compressor<'static>>, buf: Vec<u8>) -> (bool, Bytes) {
    if let Some(c) = compressor {
        if buf.len() >= 512 {
            if let Ok(z) = c.compress(&buf) {
                if z.len() < buf.len() - buf.len() / 8 {
                    return (true, Bytes::from(z));
                }
            }
        }
    }
    (false, Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_is_what_remains_at_the_rate_so_far() {
        const MIB: u64 = 1 << 20;
        // 1 GiB to walk: 256 MiB sent in 4 s, 256 MiB found unchanged;
        // 512 MiB left at 64 MiB/s.
        assert_eq!(
            time_left(1024 * MIB, 512 * MIB, 256 * MIB, Duration::from_secs(4)),
            "50 % of 1.0 GiB walked, about 8 s left"
        );
        assert_eq!(
            time_left(10240 * MIB, 10 * MIB, 10 * MIB, Duration::from_secs(5)),
            "0 % of 10.0 GiB walked, about 86 min left"
        );
        // Nothing sent yet (a rerun walking unchanged files): no estimate.
        assert_eq!(
            time_left(1024 * MIB, 100 * MIB, 0, Duration::from_secs(5)),
            "10 % of 1.0 GiB walked"
        );
        // More walked than measured (files grew): never over 100 %.
        assert_eq!(
            time_left(MIB, 2 * MIB, 2 * MIB, Duration::from_secs(1)),
            "100 % of 1.0 MiB walked, about 0 s left"
        );
    }
}
