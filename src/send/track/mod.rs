//! The change tracker: which chunks of each source disk were written
//! while the sender ran, so that a pass after the first reads only those,
//! and the frozen pass lasts as long as what changed during the last live
//! pass takes to read, not as long as the disk.
//!
//! # Why tracepoints through a trace instance
//!
//! Every kernel the sender runs on (3.10 and newer) has the block layer's
//! tracepoints; a private trace instance (3.10 and newer) gives the
//! tracker buffers of its own, per CPU, with counters of what they lost,
//! and needs neither a kernel module nor BPF (which 3.10 lacks for
//! tracepoints) nor `blktrace`'s relay files (which some kernels refuse,
//! this project's build machines among them). The instance is filtered to
//! the source disks' devices in the kernel, and a thread drains its pipe
//! every few milliseconds, so the buffers hold only what arrived since.
//!
//! # Which writes, and why the order is safe
//!
//! A chunk is marked when a write to it is submitted (`block_bio_queue`)
//! and again when a write to it completes (`block_rq_complete` for
//! request-based disks, `block_bio_complete` for bio-based ones such as
//! device-mapper volumes). Discards and write-zeroes count as writes.
//!
//! Each pass begins by taking the window: every event up to now, cleared
//! for the next one. The pass then re-reads the chunks of that window (and
//! any chunk whose content it does not know). A write that completed
//! before a pass began reading is therefore either in an earlier window
//! (and was completed before that window's pass read its chunk) or in this
//! one (and this pass reads its chunk after it completed); a write that
//! completes later is in a later window. Nothing completed is missed
//! because the completion event, not only the submission, marks the
//! chunk: a write submitted before a pass began and still in flight when
//! it read the chunk is marked again when it completes. The frozen pass
//! takes its window after FIFREEZE has returned, and FIFREEZE returns only
//! once every write of the frozen file systems has completed: all of them
//! are in the windows taken by then.
//!
//! # When it cannot know
//!
//! A window is lost — and its pass re-reads the whole disk, saying why in
//! the report — when the kernel dropped events (the buffer overflowed: its
//! counters grew, or the pipe said `LOST`), or when the draining thread
//! failed. A source that no block device reads (an image file without a
//! loop device) or a machine without a trace file system is not tracked
//! at all: its passes read the whole disk as they always did.

mod event;
mod source;
mod tracefs;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::send::consistency::Host;
use source::Range;

/// The trace buffer's size per CPU, in KiB.
const BUFFER_KB: u64 = 2048;
/// How often the thread drains the buffers.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Test hooks: a smaller buffer and a slower drain, to make it overflow.
pub const BUFFER_KB_ENV: &str = "FERRY_TRACK_BUFFER_KB";
pub const DRAIN_MS_ENV: &str = "FERRY_TRACK_DRAIN_MS";

/// What a pass learns from the tracker when it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Window {
    /// The chunks written since the last window, and the bytes the events
    /// covered.
    Changed { chunks: ChunkSet, bytes: u64 },
    /// The tracker may have missed a write: read the whole disk.
    Lost(String),
}

/// A set of chunks, a bit each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ChunkSet(Vec<u64>);

impl ChunkSet {
    fn new(chunks: u64) -> ChunkSet {
        ChunkSet(vec![0; chunks.div_ceil(64) as usize])
    }

    fn insert(&mut self, chunk: u64) {
        self.0[(chunk / 64) as usize] |= 1 << (chunk % 64);
    }

    /// The chunks, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .iter()
            .zip(0u64..)
            .filter(|(word, _)| **word != 0)
            .flat_map(|(word, w)| {
                (0..64)
                    .filter(move |b| word & (1 << b) != 0)
                    .map(move |b| w * 64 + b)
            })
    }
}

/// A source disk as the tracker sees it.
struct Tracked {
    ranges: Vec<Range>,
    size: u64,
    chunk_size: u64,
    dirty: ChunkSet,
    bytes: u64,
    /// Why the current window cannot be trusted.
    lost: Option<String>,
    /// The kernel's count of lost events when the last window was taken.
    lost_before: u64,
}

impl Tracked {
    fn mark(&mut self, w: &event::Written) {
        for r in &self.ranges {
            if (r.major, r.minor) != (w.major, w.minor) {
                continue;
            }
            let start = (w.sector as i64)
                .saturating_mul(512)
                .saturating_add(r.shift);
            let end = start.saturating_add((w.sectors as i64).saturating_mul(512));
            let (start, end) = (start.max(0) as u64, (end.max(0) as u64).min(self.size));
            if start >= end {
                continue;
            }
            self.bytes += end - start;
            for c in start / self.chunk_size..=(end - 1) / self.chunk_size {
                self.dirty.insert(c);
            }
        }
    }

    fn take(&mut self, lost_now: u64) -> Window {
        let lost = self.lost.take().or_else(|| {
            (lost_now > self.lost_before).then(|| overflowed(lost_now - self.lost_before))
        });
        self.lost_before = lost_now;
        let chunks = std::mem::replace(
            &mut self.dirty,
            ChunkSet::new(self.size.div_ceil(self.chunk_size)),
        );
        let bytes = std::mem::take(&mut self.bytes);
        if let Some(why) = lost {
            return Window::Lost(why);
        }
        Window::Changed { chunks, bytes }
    }
}

/// Why a window is lost when the kernel dropped `n` events.
fn overflowed(n: u64) -> String {
    format!("the kernel's trace buffer overflowed: {n} block events lost")
}

/// The events lost, from the line the trace pipe prints in their place
/// (`CPU:1 [LOST 911 EVENTS]`).
fn lost_line(line: &str) -> Option<u64> {
    let at = line.find("[LOST ")?;
    line[at + 6..].split(' ').next()?.parse().ok()
}

struct State {
    instance: tracefs::Instance,
    disks: Vec<Result<Tracked, String>>,
    /// Set when the draining thread failed: every window is lost.
    failed: Option<String>,
}

impl State {
    fn drain(&mut self) -> Result<()> {
        let disks = &mut self.disks;
        self.instance.drain(&mut |line| {
            if let Some(n) = lost_line(line) {
                for d in disks.iter_mut().flatten() {
                    d.lost.get_or_insert_with(|| overflowed(n));
                }
            } else if let Some(w) = event::parse(line) {
                for d in disks.iter_mut().flatten() {
                    d.mark(&w);
                }
            }
        })
    }
}

/// The tracker of one `ferry send`: its trace instance, and the thread
/// that drains it; both end when it is dropped.
pub(crate) struct Tracker {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tracker {
    /// Start tracking the source disks `(path, size)`, in chunks of
    /// `chunk_size`. Fails when nothing can be tracked on this machine;
    /// a disk that cannot be is told by [`Tracker::untracked`].
    pub(crate) fn start(host: &Host, disks: &[(PathBuf, u64)], chunk_size: u32) -> Result<Tracker> {
        let cs = u64::from(chunk_size);
        let disks: Vec<Result<Tracked, String>> = disks
            .iter()
            .map(|(path, size)| {
                let ranges = source::ranges(host, path).map_err(|e| format!("{e:#}"))?;
                let count = size.div_ceil(cs);
                Ok(Tracked {
                    ranges,
                    size: *size,
                    chunk_size: cs,
                    dirty: ChunkSet::new(count),
                    bytes: 0,
                    lost: None,
                    lost_before: 0,
                })
            })
            .collect();
        let devs: Vec<(u32, u32)> = disks
            .iter()
            .flatten()
            .flat_map(|d| d.ranges.iter().map(|r| (r.major, r.minor)))
            .collect();
        anyhow::ensure!(
            !devs.is_empty(),
            "no source disk is a block device or read through one"
        );
        let buffer_kb = env_u64(BUFFER_KB_ENV).unwrap_or(BUFFER_KB);
        let instance = tracefs::Instance::create(buffer_kb, &tracefs::dev_filter(&devs))?;
        let state = Arc::new(Mutex::new(State {
            instance,
            disks,
            failed: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let every = env_u64(DRAIN_MS_ENV).map_or(DRAIN_EVERY, Duration::from_millis);
        let thread = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("ferry-track".into())
                .spawn(move || drain_loop(&state, &stop, every))
                .context("starting the tracker's thread")?
        };
        Ok(Tracker {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Why disk `index` is not tracked, when it is not.
    pub(crate) fn untracked(&self, index: usize) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.disks.get(index) {
            Some(Ok(_)) => None,
            Some(Err(why)) => Some(why.clone()),
            None => Some("not a disk of this sender".into()),
        }
    }

    /// The window of disk `index`: what was written since its last one.
    /// Blocking (it drains the buffers first).
    pub(crate) fn take(&self, index: usize) -> Window {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.failed.is_none() {
            if let Err(e) = state.drain() {
                state.failed = Some(format!("{e:#}"));
            }
        }
        let lost_now = state.instance.lost();
        let failed = state.failed.clone();
        let Some(Ok(disk)) = state.disks.get_mut(index) else {
            return Window::Lost("not tracked".into());
        };
        match (failed, lost_now) {
            (Some(why), _) => {
                disk.take(disk.lost_before);
                Window::Lost(format!("the change tracker stopped: {why}"))
            }
            (None, Err(e)) => {
                disk.take(disk.lost_before);
                Window::Lost(format!("reading the trace buffer's counters: {e:#}"))
            }
            (None, Ok(lost)) => disk.take(lost),
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn drain_loop(state: &Mutex<State>, stop: &AtomicBool, every: Duration) {
    while !stop.load(Ordering::Relaxed) {
        {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if s.failed.is_some() {
                return;
            }
            if let Err(e) = s.drain() {
                tracing::warn!("the change tracker stopped: {e:#}");
                s.failed = Some(format!("{e:#}"));
                return;
            }
        }
        std::thread::sleep(every);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(ranges: Vec<Range>, size: u64, cs: u64) -> Tracked {
        Tracked {
            ranges,
            size,
            chunk_size: cs,
            dirty: ChunkSet::new(size.div_ceil(cs)),
            bytes: 0,
            lost: None,
            lost_before: 0,
        }
    }

    fn write(major: u32, minor: u32, sector: u64, sectors: u64) -> event::Written {
        event::Written {
            major,
            minor,
            sector,
            sectors,
        }
    }

    /// A window's chunks as a list, for comparing.
    fn listed(w: Window) -> Result<(Vec<u64>, u64), String> {
        match w {
            Window::Changed { chunks, bytes } => Ok((chunks.iter().collect(), bytes)),
            Window::Lost(why) => Err(why),
        }
    }

    #[test]
    fn writes_mark_the_chunks_they_touch_and_a_window_clears_them() {
        let cs = 64 << 10;
        // A disk of 130 chunks (the last one short) on 7:0, its partition
        // 259:0 starting at 1 MiB.
        let size = 129 * cs + 4096;
        let mut d = tracked(
            vec![
                Range {
                    major: 7,
                    minor: 0,
                    shift: 0,
                },
                Range {
                    major: 259,
                    minor: 0,
                    shift: 1 << 20,
                },
            ],
            size,
            cs,
        );
        d.mark(&write(7, 0, 0, 1)); // chunk 0
        d.mark(&write(7, 0, 127, 2)); // bytes 65024..66048: chunks 0 and 1
        d.mark(&write(259, 0, 0, 8)); // 1 MiB in: chunk 16
        d.mark(&write(7, 0, (129 * cs) / 512, 1 << 20)); // past the end: clipped to chunk 129
        d.mark(&write(8, 0, 0, 8)); // another disk
        assert_eq!(
            listed(d.take(0)),
            Ok((vec![0, 1, 16, 129], 512 + 1024 + 4096 + 4096))
        );
        assert_eq!(listed(d.take(0)), Ok((vec![], 0)));
    }

    #[test]
    fn a_window_with_lost_events_is_lost_once() {
        let mut d = tracked(
            vec![Range {
                major: 7,
                minor: 0,
                shift: 0,
            }],
            1 << 20,
            64 << 10,
        );
        d.mark(&write(7, 0, 0, 1));
        assert_eq!(
            listed(d.take(5)),
            Err("the kernel's trace buffer overflowed: 5 block events lost".into())
        );
        // The counter did not move since: the next window is whole again.
        d.mark(&write(7, 0, 200, 1));
        assert_eq!(listed(d.take(5)), Ok((vec![1], 512)));
        d.lost = lost_line("CPU:1 [LOST 911 EVENTS]").map(overflowed);
        assert_eq!(
            listed(d.take(5)),
            Err("the kernel's trace buffer overflowed: 911 block events lost".into())
        );
        assert_eq!(
            lost_line("x-1 [0] .... 1.0: block_bio_queue: 7,0 WS 640 + 128 [dd]"),
            None
        );
    }
}
