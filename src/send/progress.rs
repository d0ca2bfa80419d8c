//! The sender's progress: a bar per disk with rate and ETA when stderr is
//! a terminal, plain periodic log lines when it is not (a service, a pipe,
//! a CI log), where bars would be noise.
//!
//! Rates are measured over a recent window ([`RateWindow`]), not since the
//! command started, so a stalled link shows as a rate falling to 0 rather
//! than as a slowly sinking average with a hopeful ETA. A disk that has not
//! started shows no ETA. A finished disk is printed once, as a line above
//! the bars still running, and is not redrawn; once [`Progress::finish`]
//! has run nothing is drawn any more, so the outcome printed after it stays
//! on the screen.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How far back the rate looks: long enough to smooth the bursts of a
/// window of acks, short enough that a stall shows within seconds.
pub const RATE_WINDOW: Duration = Duration::from_secs(15);

/// A rate over less than this is noise: no rate (and no ETA) before it.
const MIN_SPAN: Duration = Duration::from_secs(1);

/// A disk whose count has not moved for this long says so.
const STALL: Duration = Duration::from_secs(10);

/// How often bars are refreshed when nothing else moves them.
const BAR_TICK: Duration = Duration::from_secs(1);

/// The rate of a growing byte count over the last `span`.
#[derive(Debug, Clone)]
pub struct RateWindow {
    span: Duration,
    /// (when, bytes done), oldest first. The oldest may lie before the
    /// window: it anchors the count at the window's start.
    samples: VecDeque<(Instant, u64)>,
    /// When the count last grew (or was first recorded).
    last_change: Option<Instant>,
}

impl RateWindow {
    pub fn new(span: Duration) -> Self {
        RateWindow {
            span,
            samples: VecDeque::new(),
            last_change: None,
        }
    }

    /// `done` bytes are done at `now`. A count lower than the last one (a
    /// retry that starts the disk over) starts the window over.
    pub fn record(&mut self, now: Instant, done: u64) {
        match self.samples.back() {
            Some(&(_, last)) if done < last => {
                self.samples.clear();
                self.last_change = Some(now);
            }
            Some(&(_, last)) if done == last => {}
            _ => self.last_change = Some(now),
        }
        self.samples.push_back((now, done));
        // Keep one sample at or before the window's start, as its anchor.
        if let Some(start) = now.checked_sub(self.span) {
            while self.samples.len() > 1 && self.samples[1].0 <= start {
                self.samples.pop_front();
            }
        }
    }

    /// Whether anything was recorded: a disk not yet started has no rate.
    pub fn started(&self) -> bool {
        !self.samples.is_empty()
    }

    /// Bytes per second over the window ending at `now` (counting the
    /// silence since the last sample); None until samples span a second.
    pub fn rate(&self, now: Instant) -> Option<f64> {
        let &(_, last) = self.samples.back()?;
        let &(first_t, first) = self.samples.front()?;
        let window_start = now.checked_sub(self.span).unwrap_or(first_t);
        let (start, base) = if first_t >= window_start {
            (first_t, first)
        } else {
            // The count at the window's start, between the samples around it.
            let after = self.samples.iter().position(|&(t, _)| t > window_start);
            let base = match after {
                None => last,
                Some(i) => {
                    let ((t0, d0), (t1, d1)) = (self.samples[i - 1], self.samples[i]);
                    let f = window_start.duration_since(t0).as_secs_f64()
                        / t1.duration_since(t0).as_secs_f64();
                    let between = d0 as f64 + (d1 - d0) as f64 * f;
                    between.round() as u64
                }
            };
            (window_start, base)
        };
        let span = now.saturating_duration_since(start);
        if span < MIN_SPAN {
            return None;
        }
        Some(last.saturating_sub(base) as f64 / span.as_secs_f64())
    }

    /// Time to do `remaining` more bytes at the window's rate: None when
    /// nothing was recorded, too little to tell, or nothing moves.
    pub fn eta(&self, now: Instant, remaining: u64) -> Option<Duration> {
        if !self.started() {
            return None;
        }
        if remaining == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.rate(now).filter(|r| *r > 0.0)?;
        Some(Duration::from_secs((remaining as f64 / rate).ceil() as u64))
    }

    /// How long the count has not grown.
    pub fn idle(&self, now: Instant) -> Option<Duration> {
        self.last_change.map(|t| now.saturating_duration_since(t))
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    /// A line per unfinished disk every `interval`, and one when a disk is
    /// finished.
    Lines {
        interval: Duration,
    },
    Quiet,
}

impl ProgressMode {
    /// Bars on a terminal, a line every 10 seconds otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines {
                interval: Duration::from_secs(10),
            }
        }
    }
}

/// One disk as the sender sees it.
#[derive(Debug)]
struct DiskState {
    index: u32,
    size: u64,
    /// Bytes settled: committed by the appliance, or skipped.
    done: u64,
    window: RateWindow,
    /// Verified: its last line is printed, its bar gone.
    finished: bool,
}

impl DiskState {
    /// `disk 0: 512.0 MiB of 1.0 GiB (50.0%), 12.3 MB/s, ETA 1m 20s`
    fn line(&self, now: Instant) -> String {
        let pct = if self.size == 0 {
            100.0
        } else {
            100.0 * self.done as f64 / self.size as f64
        };
        format!(
            "disk {}: {} of {} ({pct:.1}%), {}",
            self.index,
            bytes(self.done),
            bytes(self.size),
            self.status(now)
        )
    }

    /// What the disk is doing: its rate and ETA while it moves.
    fn status(&self, now: Instant) -> String {
        if self.finished {
            return "done".to_owned();
        }
        if !self.window.started() {
            return "not started".to_owned();
        }
        if self.done >= self.size {
            return "verifying".to_owned();
        }
        let rate = self
            .window
            .rate(now)
            .map_or_else(|| "- MB/s".to_owned(), |r| format!("{:.1} MB/s", r / 1e6));
        match self.window.idle(now).filter(|d| *d >= STALL) {
            Some(idle) => format!("{rate}, no progress for {}", eta(idle.as_secs())),
            None => {
                let left = self.window.eta(now, self.size - self.done);
                let left = left.map_or_else(|| "-".to_owned(), |d| eta(d.as_secs()));
                format!("{rate}, ETA {left}")
            }
        }
    }
}

/// Where finished lines go.
type Sink = Box<dyn FnMut(&str) + Send>;

/// What the ticker thread and the sender share.
struct State {
    mode: ProgressMode,
    disks: Vec<DiskState>,
    /// Live while bars are drawn; None in the other modes and after finish.
    multi: Option<MultiProgress>,
    /// A bar per disk not finished; None once it is.
    bars: Vec<Option<ProgressBar>>,
    style: ProgressStyle,
    last_line: Instant,
    /// Where lines go: stderr beside bars, tracing for log lines, a buffer
    /// in tests.
    sink: Sink,
}

impl State {
    fn set(&mut self, index: u32, done: u64, now: Instant) {
        let Some(pos) = self.disks.iter().position(|d| d.index == index) else {
            return;
        };
        let d = &mut self.disks[pos];
        d.done = done.min(d.size);
        d.window.record(now, d.done);
        if d.finished {
            if d.done == d.size {
                return;
            }
            // Started over (its digest differed): it runs again.
            d.finished = false;
        }
        if let Some(multi) = &self.multi {
            let bar = self.bars[pos].get_or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(d.size));
                bar.set_style(self.style.clone());
                bar.set_prefix(format!("disk {}", d.index));
                bar
            });
            bar.set_position(d.done);
            bar.set_message(d.status(now));
        }
    }

    fn finish_disk(&mut self, index: u32, now: Instant) {
        let Some(pos) = self.disks.iter().position(|d| d.index == index) else {
            return;
        };
        let d = &mut self.disks[pos];
        if d.finished {
            return;
        }
        d.done = d.size;
        d.window.record(now, d.size);
        d.finished = true;
        let line = d.line(now);
        match self.mode {
            ProgressMode::Bars => {
                if let (Some(multi), Some(bar)) = (&self.multi, self.bars[pos].take()) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                    // Printed once, above the bars still running: the
                    // bars step aside for it (a println of indicatif's
                    // own leaves the cursor on its line when no bar is
                    // left, and the next line runs on after it).
                    let sink = &mut self.sink;
                    multi.suspend(|| sink(&line));
                }
            }
            ProgressMode::Lines { .. } => (self.sink)(&line),
            ProgressMode::Quiet => {}
        }
    }

    fn tick(&mut self, now: Instant) {
        match self.mode {
            ProgressMode::Bars => {
                for (d, bar) in self.disks.iter().zip(&self.bars) {
                    if let Some(bar) = bar {
                        bar.set_message(d.status(now));
                    }
                }
            }
            ProgressMode::Lines { interval } => {
                if now.saturating_duration_since(self.last_line) < interval {
                    return;
                }
                self.last_line = now;
                for d in self.disks.iter().filter(|d| !d.finished) {
                    let line = d.line(now);
                    (self.sink)(&line);
                }
            }
            ProgressMode::Quiet => {}
        }
    }

    /// Take the bars down: nothing is drawn after this.
    fn close(&mut self) {
        for bar in self.bars.iter_mut().filter_map(Option::take) {
            bar.finish_and_clear();
        }
        if let Some(multi) = self.multi.take() {
            let _ = multi.clear();
        }
        self.mode = ProgressMode::Quiet;
    }
}

/// The thread that refreshes rates when no ack arrives (a stall is when
/// nothing else would redraw them).
struct Ticker {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

pub struct Progress {
    state: Arc<Mutex<State>>,
    ticker: Option<Ticker>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while drawing leaves nothing half-done that matters here.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Progress {
    /// `disks`: (index, size in bytes, bytes already done, e.g. on resume).
    pub fn new(mode: ProgressMode, disks: &[(u32, u64, u64)]) -> Self {
        let (draw, sink): (_, Sink) = if mode == ProgressMode::Bars {
            (
                Some(ProgressDrawTarget::stderr_with_hz(4)),
                Box::new(|line| eprintln!("{line}")),
            )
        } else {
            (None, Box::new(|line| tracing::info!("{line}")))
        };
        let mut p = Self::build(mode, disks, draw, sink);
        let every = match mode {
            ProgressMode::Bars => Some(BAR_TICK),
            ProgressMode::Lines { interval } => Some(interval.min(BAR_TICK)),
            ProgressMode::Quiet => None,
        };
        if let Some(every) = every {
            p.ticker = spawn_ticker(Arc::clone(&p.state), every);
        }
        p
    }

    /// Without a ticker: the tests drive the clock.
    pub fn with_sink(mode: ProgressMode, disks: &[(u32, u64, u64)], sink: Sink) -> Self {
        let draw = (mode == ProgressMode::Bars).then(ProgressDrawTarget::hidden);
        Self::build(mode, disks, draw, sink)
    }

    fn build(
        mode: ProgressMode,
        disks: &[(u32, u64, u64)],
        draw: Option<ProgressDrawTarget>,
        sink: Sink,
    ) -> Self {
        // The template is a constant; a failure here is a programming error
        // caught by the tests, and falls back to the default style.
        let style = ProgressStyle::with_template(
            "{prefix:>7} [{bar:40.cyan/blue}] {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let multi = draw.map(MultiProgress::with_draw_target);
        let disks: Vec<DiskState> = disks
            .iter()
            .map(|&(index, size, done)| DiskState {
                index,
                size,
                done: done.min(size),
                window: RateWindow::new(RATE_WINDOW),
                finished: false,
            })
            .collect();
        let bars = disks
            .iter()
            .map(|d| {
                multi.as_ref().map(|multi| {
                    let bar = multi.add(ProgressBar::new(d.size));
                    bar.set_style(style.clone());
                    bar.set_prefix(format!("disk {}", d.index));
                    bar.set_position(d.done);
                    bar.set_message("not started");
                    bar
                })
            })
            .collect();
        Progress {
            state: Arc::new(Mutex::new(State {
                mode,
                disks,
                multi,
                bars,
                style,
                last_line: Instant::now(),
                sink,
            })),
            ticker: None,
        }
    }

    /// Disk `index` has `done` bytes settled (acknowledged or skipped).
    pub fn set(&self, index: u32, done: u64) {
        lock(&self.state).set(index, done, Instant::now());
    }

    /// Disk `index` is committed and its digest verified: its last line is
    /// printed, once.
    pub(crate) fn finish_disk(&self, index: u32) {
        lock(&self.state).finish_disk(index, Instant::now());
    }

    /// Print a line for the operator above the bars, which would otherwise
    /// draw over it.
    pub fn println(&self, line: &str) {
        let state = lock(&self.state);
        match &state.multi {
            Some(multi) => multi.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Stop drawing: the bars are taken down and nothing is drawn again,
    /// so what is printed next stays.
    pub fn finish(&mut self) {
        if let Some(t) = self.ticker.take() {
            drop(t.stop);
            let _ = t.thread.join();
        }
        lock(&self.state).close();
    }

    #[cfg(test)]
    fn set_at(&self, index: u32, done: u64, now: Instant) {
        lock(&self.state).set(index, done, now);
    }

    #[cfg(test)]
    fn finish_disk_at(&self, index: u32, now: Instant) {
        lock(&self.state).finish_disk(index, now);
    }

    #[cfg(test)]
    fn tick_at(&self, now: Instant) {
        lock(&self.state).tick(now);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn spawn_ticker(state: Arc<Mutex<State>>, every: Duration) -> Option<Ticker> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("progress".to_owned())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                lock(&state).tick(Instant::now());
            }
        });
    match thread {
        Ok(thread) => Some(Ticker { stop, thread }),
        Err(e) => {
            // Progress is drawn on every ack still; only stalls go unseen.
            tracing::warn!("starting the progress thread: {e}");
            None
        }
    }
}

pub use crate::disk::human_bytes as bytes;

pub fn eta(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_rate_is_the_recent_windows_and_falls_to_zero_in_a_stall() {
        let t = Instant::now();
        let mut w = RateWindow::new(secs(10));
        assert!(!w.started());
        assert_eq!(w.rate(t), None);
        assert_eq!(w.eta(t, 100 * MB), None, "no ETA before the disk starts");
        w.record(t, 0);
        assert!(w.started());
        assert_eq!(w.rate(t), None, "one sample tells no rate");
        assert_eq!(w.eta(t, 100 * MB), None);
        // 30 s at 10 MB/s, then 10 s at 2 MB/s: the window sees only the
        // recent 2 MB/s, where an average since the start would say 8.
        for s in 1..=30 {
            w.record(t + secs(s), s * 10 * MB);
        }
        assert_eq!(w.rate(t + secs(30)), Some(10e6));
        for s in 31..=40 {
            w.record(t + secs(s), 300 * MB + (s - 30) * 2 * MB);
        }
        assert_eq!(w.rate(t + secs(40)), Some(2e6));
        assert_eq!(w.eta(t + secs(40), 100 * MB), Some(secs(50)));
        // Then nothing arrives: half a window later the rate has halved...
        assert_eq!(w.rate(t + secs(45)), Some(1e6));
        assert_eq!(w.idle(t + secs(45)), Some(secs(5)));
        // ...and a whole window later it is 0, with no ETA.
        assert_eq!(w.rate(t + secs(50)), Some(0.0));
        assert_eq!(w.rate(t + secs(500)), Some(0.0));
        assert_eq!(w.eta(t + secs(50), 100 * MB), None);
        // Acks of nothing new (the same count again) do not hide the stall.
        w.record(t + secs(60), 320 * MB);
        assert_eq!(w.rate(t + secs(60)), Some(0.0));
        assert_eq!(w.idle(t + secs(60)), Some(secs(20)));
        // Data again: the rate comes back from the window's anchor.
        w.record(t + secs(62), 340 * MB);
        assert_eq!(w.rate(t + secs(62)), Some(2e6));
        assert_eq!(w.idle(t + secs(62)), Some(Duration::ZERO));
        assert_eq!(w.eta(t + secs(62), 0), Some(Duration::ZERO));
    }

    #[test]
    fn a_count_that_goes_back_starts_the_window_over() {
        let t = Instant::now();
        let mut w = RateWindow::new(secs(10));
        w.record(t, 0);
        w.record(t + secs(5), 50 * MB);
        // A retry settles the disk again from 0.
        w.record(t + secs(6), 0);
        assert_eq!(w.rate(t + secs(6)), None);
        w.record(t + secs(8), 40 * MB);
        assert_eq!(w.rate(t + secs(8)), Some(20e6));
    }

    fn lines_progress(disks: &[(u32, u64, u64)]) -> (Progress, Arc<Mutex<Vec<String>>>, Instant) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&lines);
        let p = Progress::with_sink(
            ProgressMode::Lines { interval: secs(10) },
            disks,
            Box::new(move |s| l.lock().unwrap().push(s.to_owned())),
        );
        let t = lock(&p.state).last_line;
        (p, lines, t)
    }

    #[test]
    fn log_lines_every_interval_once_per_finished_disk_and_no_eta_before_the_start() {
        let (p, lines, t) = lines_progress(&[(0, 1 << 30, 0), (1, 1 << 20, 0), (2, 1 << 30, 0)]);
        p.set_at(0, 0, t);
        p.set_at(0, 100 * MB, t + secs(5));
        p.tick_at(t + secs(5));
        assert!(
            lines.lock().unwrap().is_empty(),
            "no line before the interval"
        );
        p.set_at(1, 0, t + secs(5));
        p.set_at(1, 1 << 20, t + secs(6));
        p.finish_disk_at(1, t + secs(6));
        p.finish_disk_at(1, t + secs(7));
        p.set_at(0, 200 * MB, t + secs(10));
        p.tick_at(t + secs(10));
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "disk 1: 1.0 MiB of 1.0 MiB (100.0%), done",
                "disk 0: 190.7 MiB of 1.0 GiB (18.6%), 20.0 MB/s, ETA 44s",
                "disk 2: 0 B of 1.0 GiB (0.0%), not started",
            ]
        );
        lines.lock().unwrap().clear();
        // The link stalls: the rate falls, the ETA goes, the stall is named.
        p.tick_at(t + secs(20));
        p.tick_at(t + secs(30));
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "disk 0: 190.7 MiB of 1.0 GiB (18.6%), 6.7 MB/s, no progress for 10s",
                "disk 2: 0 B of 1.0 GiB (0.0%), not started",
                "disk 0: 190.7 MiB of 1.0 GiB (18.6%), 0.0 MB/s, no progress for 20s",
                "disk 2: 0 B of 1.0 GiB (0.0%), not started",
            ]
        );
        lines.lock().unwrap().clear();
        // Every byte acknowledged: verifying until the digests match.
        p.set_at(0, 1 << 30, t + secs(31));
        p.set_at(2, 0, t + Duration::from_millis(39_500));
        p.tick_at(t + secs(40));
        p.finish_disk_at(0, t + secs(41));
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "disk 0: 1.0 GiB of 1.0 GiB (100.0%), verifying",
                "disk 2: 0 B of 1.0 GiB (0.0%), - MB/s, ETA -",
                "disk 0: 1.0 GiB of 1.0 GiB (100.0%), done",
            ]
        );
    }

    /// A terminal that records what is written to it.
    #[derive(Debug, Default, Clone)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            self.0.lock().unwrap().push(format!("<up {n}>"));
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.is_empty() {
                self.0.lock().unwrap().push(s.to_owned());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_finished_bar_is_printed_once_and_nothing_is_drawn_after_finish() {
        let screen = Screen::default();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&printed);
        let mut p = Progress::build(
            ProgressMode::Bars,
            &[(0, 1 << 20, 0), (1, 1 << 30, 0)],
            Some(ProgressDrawTarget::term_like(Box::new(screen.clone()))),
            Box::new(move |s| l.lock().unwrap().push(s.to_owned())),
        );
        let t = Instant::now();
        p.set_at(0, 0, t);
        p.set_at(0, 1 << 20, t + secs(1));
        p.finish_disk_at(0, t + secs(1));
        p.finish_disk_at(0, t + secs(2));
        p.set_at(1, 10 * MB, t + secs(2));
        p.tick_at(t + secs(3));
        assert_eq!(
            *printed.lock().unwrap(),
            ["disk 0: 1.0 MiB of 1.0 MiB (100.0%), done"]
        );
        let drawn = screen.0.lock().unwrap().clone();
        assert!(
            drawn.iter().any(|l| l.contains("disk 1 [")),
            "disk 1's bar: {drawn:#?}"
        );
        p.finish();
        let before = screen.0.lock().unwrap().len();
        p.set_at(1, 20 * MB, t + secs(4));
        p.tick_at(t + secs(5));
        p.finish_disk_at(1, t + secs(6));
        assert_eq!(
            screen.0.lock().unwrap().len(),
            before,
            "drawn after finish: {:#?}",
            &screen.0.lock().unwrap()[before..]
        );
        assert_eq!(printed.lock().unwrap().len(), 1);
    }

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10 << 30), "10.0 GiB");
        assert_eq!(eta(59), "59s");
        assert_eq!(eta(80), "1m 20s");
        assert_eq!(eta(3 * 3600 + 61), "3h 1m");
    }
}
