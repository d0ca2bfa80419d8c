//! Progress of one disk in the round: committed bytes, the commit rate
//! over a recent window and the ETA, when the disk last moved, and whether
//! it is verified.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::job::time::Timestamp;

/// Progress of one disk in the current round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskProgress {
    pub index: u32,
    /// Size of the source disk in bytes.
    pub size: u64,
    /// Bytes of the disk that are committed (durable and in the ledger).
    pub committed: u64,
    /// Commit rate over the last [`DiskProgress::RATE_WINDOW`], in bytes per
    /// second: 0 once no data has arrived for that long.
    #[serde(default)]
    pub rate_bps: f64,
    /// Seconds until the disk is committed at the current rate.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// The appliance re-read the disk and its digest matched the sender's in
    /// this round.
    #[serde(default)]
    pub verified: bool,
    /// When the disk last moved: a sender opened it, data arrived and its
    /// committed bytes grew, or its sender said it is still reading it (a
    /// ping while it skips unchanged or zero chunks, which send nothing).
    #[serde(default)]
    pub last_progress_at: Option<Timestamp>,
    /// (when, committed bytes from then on), oldest first, spanning the rate
    /// window and one sample before it.
    #[serde(skip)]
    samples: VecDeque<(SystemTime, u64)>,
}

impl DiskProgress {
    pub fn new(index: u32, size: u64, committed: u64) -> Self {
        DiskProgress {
            index,
            size,
            committed: committed.min(size),
            rate_bps: 0.0,
            eta_secs: None,
            verified: false,
            last_progress_at: None,
            samples: VecDeque::new(),
        }
    }

    /// The rate is what was committed in this window, divided by it: it
    /// follows the link within seconds and falls to 0 when data stops,
    /// where an average since the start would go on claiming a transfer.
    pub const RATE_WINDOW: Duration = Duration::from_secs(10);
    /// A new sample replaces the last one while the one before that is
    /// closer than this: at most two are kept per this span of the window.
    const SAMPLE_EVERY: Duration = Duration::from_millis(250);
    /// Less time than this since the first sample gives no rate yet: a
    /// rate over a few milliseconds is noise.
    const MIN_SPAN: Duration = Duration::from_millis(500);

    /// Record that `committed` bytes are committed at `now`, updating the
    /// rate and the ETA.
    pub fn record(&mut self, committed: u64, now: SystemTime) {
        let committed = committed.min(self.size);
        if committed > self.committed {
            self.last_progress_at = Some(Timestamp(now));
        }
        self.committed = committed;
        // The last sample is always now; it replaces the one before when
        // that is closer than SAMPLE_EVERY to the one before it.
        let n = self.samples.len();
        let close = n >= 2
            && now
                .duration_since(self.samples[n - 2].0)
                .unwrap_or_default()
                < Self::SAMPLE_EVERY;
        if close {
            self.samples[n - 1] = (now, committed);
        } else {
            self.samples.push_back((now, committed));
        }
        // Keep one sample at or before the window's start: the baseline.
        let start = now.checked_sub(Self::RATE_WINDOW).unwrap_or(now);
        while self.samples.len() > 1 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        self.refresh(now);
    }

    /// Bring the rate and the ETA to `now`: what was committed in the
    /// window before it.
    pub(crate) fn refresh(&mut self, now: SystemTime) {
        let remaining = self.size.saturating_sub(self.committed);
        self.rate_bps = self.rate_at(now);
        self.eta_secs = if remaining == 0 {
            Some(0)
        } else if self.rate_bps > 0.0 {
            Some((remaining as f64 / self.rate_bps).ceil() as u64)
        } else {
            None
        };
    }

    fn rate_at(&self, now: SystemTime) -> f64 {
        let Some(&(first, _)) = self.samples.front() else {
            return 0.0;
        };
        if self.is_committed() {
            return 0.0;
        }
        let window_start = now.checked_sub(Self::RATE_WINDOW).unwrap_or(first);
        // Committed bytes at the window's start, interpolated between the
        // samples around it; when the samples begin inside the window, the
        // span is shorter.
        let before = self.samples.iter().rposition(|(t, _)| *t <= window_start);
        let (from, base) = match before {
            None => self.samples[0],
            Some(k) => match self.samples.get(k + 1) {
                None => (window_start, self.samples[k].1),
                Some(&(t1, c1)) => {
                    let (t0, c0) = self.samples[k];
                    let part = window_start
                        .duration_since(t0)
                        .unwrap_or_default()
                        .as_secs_f64()
                        / t1.duration_since(t0)
                            .unwrap_or_default()
                            .as_secs_f64()
                            .max(1e-9);
                    let base = c0 as f64 + (c1.saturating_sub(c0)) as f64 * part;
                    (window_start, base as u64)
                }
            },
        };
        let span = now.duration_since(from).unwrap_or_default();
        if span < Self::MIN_SPAN {
            return 0.0;
        }
        self.committed.saturating_sub(base) as f64 / span.as_secs_f64()
    }

    /// Forget the rate: no data flows until the next samples.
    pub fn pause(&mut self) {
        self.rate_bps = 0.0;
        self.eta_secs = self.is_committed().then_some(0);
        self.samples.clear();
    }

    pub(crate) fn is_committed(&self) -> bool {
        self.committed >= self.size
    }

    /// Samples kept for the rate, for tests that bound them.
    #[cfg(test)]
    pub(crate) fn sample_count(&self) -> usize {
        self.samples.len()
    }
}
