//! What file mode counts and tells: the counters a tree's walk keeps
//! while it runs (read by the progress line), the report of each tree at
//! the end, and `--report`'s JSON of them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::entries;
use super::plan::TreeJob;

/// Counters of one attempt, read by the progress line while it runs.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) entries: AtomicU64,
    pub(crate) dirs: AtomicU64,
    pub(crate) files: AtomicU64,
    pub(crate) content_bytes: AtomicU64,
    pub(crate) wire_bytes: AtomicU64,
    pub(crate) unchanged: AtomicU64,
    /// Bytes of the unchanged files (walked, not sent).
    pub(crate) unchanged_bytes: AtomicU64,
    pub(crate) removed: AtomicU64,
    pub(crate) resent_changed: AtomicU64,
    pub(crate) changed_while_read: AtomicU64,
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

impl TreeReport {
    /// A tree's report from its counts, what its walk passed over, and
    /// what the appliance says it committed (entries, removals, bytes).
    pub(crate) fn of(
        j: &TreeJob,
        c: &Counts,
        skipped: entries::Skipped,
        closed: (u64, u64, u64),
    ) -> TreeReport {
        TreeReport {
            tree: j.tree,
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
        }
    }

    pub(crate) fn print(&self) {
        eprintln!(
            "tree {} ({}): sent {} entries ({} files, {} bytes of content, {} bytes on the wire) and {} directories; {} unchanged; {} removed; {} excluded; {} sockets skipped; {} mount points sent empty; {} re-sent after changing while read; the appliance committed {} entries, {} removals, {} bytes ({:.1} s)",
            self.tree,
            self.root,
            self.sent_entries,
            self.sent_files,
            self.content_bytes,
            self.wire_bytes,
            self.sent_dirs,
            self.unchanged,
            self.removed,
            self.excluded,
            self.sockets_skipped,
            self.mount_points,
            self.resent_changed,
            self.committed_entries,
            self.committed_removals,
            self.committed_bytes,
            self.seconds,
        );
        if self.changed_while_read > 0 {
            eprintln!(
                "ferry send: {} files kept changing while they were read and were sent as last read; run the sender again (or stop what writes them) for a consistent copy",
                self.changed_while_read
            );
        }
    }
}

/// What `--report` writes: the first tree's report (the root file
/// system's), and every tree's.
#[derive(Debug, Serialize)]
pub(crate) struct SendReport<'a> {
    #[serde(flatten)]
    pub(crate) first: &'a TreeReport,
    pub(crate) trees: &'a [TreeReport],
    /// The appliance laid out its targets and processed the round.
    pub(crate) built: bool,
}

pub(crate) fn print_progress(tree: u32, mount: &str, used: u64, c: &Counts, elapsed: Duration) {
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
