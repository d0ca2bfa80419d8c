//! File mode's sender: walk a tree, compare it with the appliance's
//! manifest of committed entries, and send what changed (entries, content
//! in pieces with holes left out), then remove on the target what is gone
//! from the source (never an excluded path).
//!
//! The walk and the reads run on a blocking thread (the producer) that
//! hands frames to the connection's task through a bounded queue.

mod attempt;
pub mod discover;
pub mod entries;
pub mod excludes;
pub mod live;
mod plan;
mod producer;
mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::SendOptions;
use crate::job::errors::{coded, ErrorCode};
use report::SendReport;
pub use report::TreeReport;

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

/// Send the trees of `f`: the layout first, then each file system as its
/// own tree; then, when the appliance laid out its targets, end the round
/// and follow its Processing to its end (not with --no-wait: the round
/// stays open for a later pass).
pub async fn run(args: &SendOptions, f: &FileOptions) -> Result<()> {
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
    let fingerprint = super::pin::fingerprint_option(&args.fingerprint)?;
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
    args: &SendOptions,
    to: &str,
    fingerprint: &str,
    root: &Path,
    layout: crate::layout::Layout,
    excludes: Option<&Path>,
    views: Option<&live::Views>,
) -> Result<()> {
    let dir = excludes.map(Path::to_owned).or_else(excludes::default_dir);
    let mut jobs = plan::tree_jobs(root, &layout, dir.as_deref())?;
    plan::read_alone(&mut jobs, views);
    let trees = plan::measure(&mut jobs).await?;
    let plan_json = plan::source_plan(layout, trees)?;
    let started = Instant::now();
    let mut sent: Option<(Vec<TreeReport>, bool)> = None;
    let (attempts, result) = super::retry::run(
        &super::retry::Policy::trees(args),
        &|line| eprintln!("{line}"),
        async || {
            let result = match &sent {
                // Every tree is committed: only the round's end is left.
                Some(_) => attempt::follow(args, to, fingerprint).await,
                None => attempt::attempt(args, to, fingerprint, &jobs, &plan_json, &mut sent).await,
            };
            super::retry::Outcome {
                result,
                committed: sent.is_some(),
            }
        },
    )
    .await;
    // The reports are printed whatever the round's end was.
    if let Some((reports, built)) = &mut sent {
        for report in reports.iter_mut() {
            report.attempts = attempts;
            report.seconds = started.elapsed().as_secs_f64();
            report.print();
        }
        if let (Some(path), Some(first)) = (&args.report, reports.first()) {
            let all = SendReport {
                first,
                trees: reports,
                built: *built,
            };
            super::report::write_json(path, &all, "the report")?;
        }
    }
    result
}
