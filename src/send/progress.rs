//! The sender's progress: a bar per disk with rate and ETA when stderr is
//! a terminal, plain periodic log lines when it is not (a service, a pipe,
//! a CI log), where bars would be noise.

use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::job::state::DiskProgress;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    /// A line per disk every `interval`, and one when a disk completes.
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

pub struct Progress {
    mode: ProgressMode,
    disks: Vec<DiskProgress>,
    bars: Vec<ProgressBar>,
    _multi: Option<MultiProgress>,
    last_line: Instant,
    /// Where log lines go: tracing in the sender, a buffer in tests.
    sink: Box<dyn FnMut(&str) + Send>,
}

impl Progress {
    /// `disks`: (index, size in bytes, bytes already done, e.g. on resume).
    pub fn new(mode: ProgressMode, disks: &[(u32, u64, u64)]) -> Self {
        Self::with_sink(mode, disks, Box::new(|line| tracing::info!("{line}")))
    }

    pub fn with_sink(
        mode: ProgressMode,
        disks: &[(u32, u64, u64)],
        sink: Box<dyn FnMut(&str) + Send>,
    ) -> Self {
        let disks: Vec<DiskProgress> = disks
            .iter()
            .map(|&(i, size, done)| DiskProgress::new(i, size, done))
            .collect();
        let (multi, bars) = if mode == ProgressMode::Bars {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            // The template is a constant; a failure here is a programming error
            // caught by the tests, and falls back to the default style.
            let style = ProgressStyle::with_template(
                "{prefix:>7} [{bar:40.cyan/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bars = disks
                .iter()
                .map(|d| {
                    let bar = multi.add(ProgressBar::new(d.size));
                    bar.set_style(style.clone());
                    bar.set_prefix(format!("disk {}", d.index));
                    bar.set_position(d.committed);
                    bar
                })
                .collect();
            (Some(multi), bars)
        } else {
            (None, Vec::new())
        };
        Progress {
            mode,
            disks,
            bars,
            _multi: multi,
            last_line: Instant::now(),
            sink,
        }
    }

    /// Disk `index` has `done` bytes acknowledged by the appliance.
    pub fn set(&mut self, index: u32, done: u64) {
        self.set_at(index, done, SystemTime::now(), Instant::now());
    }

    fn set_at(&mut self, index: u32, done: u64, now: SystemTime, instant: Instant) {
        let Some(pos) = self.disks.iter().position(|d| d.index == index) else {
            return;
        };
        let was_done = self.disks[pos].is_committed();
        self.disks[pos].record(done, now);
        match self.mode {
            ProgressMode::Bars => {
                if let Some(bar) = self.bars.get(pos) {
                    bar.set_position(done);
                }
            }
            ProgressMode::Lines { interval } => {
                let completed = !was_done && self.disks[pos].is_committed();
                if completed {
                    let line = line(&self.disks[pos]);
                    (self.sink)(&line);
                }
                if instant.duration_since(self.last_line) >= interval {
                    self.last_line = instant;
                    for d in self.disks.iter().filter(|d| !d.is_committed()) {
                        let line = line(d);
                        (self.sink)(&line);
                    }
                }
            }
            ProgressMode::Quiet => {}
        }
    }

    pub fn finish(&mut self) {
        for bar in &self.bars {
            bar.finish();
        }
    }
}

/// `disk 0: 512.0 MiB of 1.0 GiB (50.0%), 12.3 MB/s, ETA 1m 20s`
pub fn line(d: &DiskProgress) -> String {
    let pct = if d.size == 0 {
        100.0
    } else {
        100.0 * d.committed as f64 / d.size as f64
    };
    let tail = if d.is_committed() {
        "done".to_owned()
    } else {
        let rate = if d.rate_bps > 0.0 {
            format!("{:.1} MB/s", d.rate_bps / 1e6)
        } else {
            "- MB/s".to_owned()
        };
        let eta = d.eta_secs.map_or_else(|| "-".to_owned(), eta);
        format!("{rate}, ETA {eta}")
    };
    format!(
        "disk {}: {} of {} ({pct:.1}%), {tail}",
        d.index,
        bytes(d.committed),
        bytes(d.size)
    )
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

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
    use std::sync::{Arc, Mutex};

    #[test]
    fn log_lines_every_interval_and_on_completion() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let mut p = Progress::with_sink(
            ProgressMode::Lines {
                interval: Duration::from_secs(10),
            },
            &[(0, 1 << 30, 0), (1, 1 << 20, 0)],
            Box::new(move |s| l.lock().unwrap().push(s.to_owned())),
        );
        let (t, i) = (SystemTime::UNIX_EPOCH, p.last_line);
        p.set_at(0, 0, t, i);
        p.set_at(
            0,
            100_000_000,
            t + Duration::from_secs(5),
            i + Duration::from_secs(5),
        );
        assert!(
            lines.lock().unwrap().is_empty(),
            "no line before the interval"
        );
        p.set_at(
            1,
            1 << 20,
            t + Duration::from_secs(6),
            i + Duration::from_secs(6),
        );
        p.set_at(
            0,
            200_000_000,
            t + Duration::from_secs(10),
            i + Duration::from_secs(10),
        );
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "disk 1: 1.0 MiB of 1.0 MiB (100.0%), done",
                "disk 0: 190.7 MiB of 1.0 GiB (18.6%), 20.0 MB/s, ETA 44s",
            ]
        );
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
