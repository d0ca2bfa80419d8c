//! The sender's bandwidth limit: `--bwlimit` on its command line and the
//! limit the control plane sets on the appliance (pushed to the sender in
//! Bandwidth frames, changed during the transfer); the lower applies, to
//! every stream of every disk together.
//!
//! A token bucket that may go into debt: a frame waits until the balance is
//! not negative, then takes all its bytes at once, so a chunk goes out at
//! the link's speed (the appliance hears whole frames, and a chunk trickled
//! out at a low rate would look like a silent link) and the average over a
//! few chunks is the limit. A change applies to the next frame: a waiting
//! one is woken and waits by the new rate.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::job::errors::{coded, ErrorCode};

/// Credit a bucket keeps while the sender has nothing to send, so that a
/// pause is not followed by a burst above the limit.
const BURST: Duration = Duration::from_millis(50);

/// The longest a frame sleeps before it looks at the limit again.
const RECHECK: Duration = Duration::from_millis(200);

pub struct RateLimit {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    /// --bwlimit, bytes per second.
    local: Option<u64>,
    /// The appliance's, bytes per second.
    remote: Option<u64>,
    /// Bytes that may go now; negative: owed.
    balance: f64,
    at: Instant,
}

impl State {
    fn limit(&self) -> Option<u64> {
        match (self.local, self.remote) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.limit() {
            let rate = rate as f64;
            let earned = now.duration_since(self.at).as_secs_f64() * rate;
            self.balance = (self.balance + earned).min(rate * BURST.as_secs_f64());
        }
        self.at = now;
    }
}

impl RateLimit {
    pub fn new(local: Option<u64>) -> RateLimit {
        RateLimit {
            state: Mutex::new(State {
                local,
                remote: None,
                balance: 0.0,
                at: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The appliance's limit, bytes per second (0: none). Returns whether
    /// the limit that applies changed.
    pub(crate) fn set_remote(&self, bytes_per_sec: u64) -> bool {
        let mut s = self.lock();
        let before = s.limit();
        let now = Instant::now();
        s.refill(now);
        s.remote = (bytes_per_sec > 0).then_some(bytes_per_sec);
        let after = s.limit();
        if let Some(rate) = after {
            // No credit carried over from a faster (or no) limit.
            s.balance = s.balance.min(rate as f64 * BURST.as_secs_f64());
        }
        drop(s);
        self.changed.notify_waiters();
        before != after
    }

    /// The limit that applies now, bytes per second.
    pub fn limit(&self) -> Option<u64> {
        self.lock().limit()
    }

    /// Wait until `bytes` may go, and take them.
    pub(crate) async fn acquire(&self, bytes: u64) {
        loop {
            let wake = self.changed.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let wait = {
                let mut s = self.lock();
                let now = Instant::now();
                s.refill(now);
                let Some(rate) = s.limit() else {
                    return;
                };
                if s.balance >= 0.0 {
                    s.balance -= bytes as f64;
                    return;
                }
                Duration::from_secs_f64(-s.balance / rate as f64)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.min(RECHECK)) => {}
                _ = &mut wake => {}
            }
        }
    }
}

/// A rate as `--bwlimit` takes it: bytes per second with an optional K, M
/// or G (binary: 50M is 50 MiB/s), or bits per second ending in `bit`
/// with an optional k, m or g (decimal, as network links are sold:
/// 400mbit is 50 000 000 bytes per second). 0 means no limit.
pub(crate) fn parse_rate(text: &str) -> anyhow::Result<Option<u64>> {
    let bad = |why: &str| {
        coded(
            ErrorCode::Usage,
            format!("--bwlimit {text}: {why} (e.g. 50M for 50 MiB/s, or 400mbit)"),
        )
    };
    let t = text.trim().to_ascii_lowercase();
    let (number, factor): (&str, f64) = if let Some(n) = t.strip_suffix("bit") {
        let (n, f) = match n.chars().last() {
            Some('k') => (&n[..n.len() - 1], 1e3),
            Some('m') => (&n[..n.len() - 1], 1e6),
            Some('g') => (&n[..n.len() - 1], 1e9),
            _ => (n, 1.0),
        };
        (n, f / 8.0)
    } else {
        let t = t
            .strip_suffix("ib")
            .or_else(|| t.strip_suffix('b'))
            .unwrap_or(&t);
        match t.chars().last() {
            Some('k') => (&t[..t.len() - 1], 1024.0),
            Some('m') => (&t[..t.len() - 1], 1024.0 * 1024.0),
            Some('g') => (&t[..t.len() - 1], 1024.0 * 1024.0 * 1024.0),
            _ => (t, 1.0),
        }
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| bad("not a number with an optional unit"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad("not a rate"));
    }
    let bytes = (n * factor).round() as u64;
    if bytes == 0 {
        return Ok(None);
    }
    if bytes < crate::wire::MIN_BANDWIDTH {
        return Err(bad(&format!(
            "{bytes} bytes per second is below the smallest limit, {} (64 KiB/s)",
            crate::wire::MIN_BANDWIDTH
        )));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::errors::describe;

    #[test]
    fn rates_in_bytes_and_bits() {
        let cases = [
            ("50M", Ok(Some(50 << 20))),
            ("50MiB", Ok(Some(50 << 20))),
            ("1.5g", Ok(Some(3 << 29))),
            ("800k", Ok(Some(800 << 10))),
            ("100000", Ok(Some(100_000))),
            ("400mbit", Ok(Some(50_000_000))),
            ("1Gbit", Ok(Some(125_000_000))),
            ("0", Ok(None)),
            ("fast", Err("--bwlimit fast: not a number with an optional unit")),
            ("-5M", Err("--bwlimit -5M: not a rate")),
            (
                "1k",
                Err("--bwlimit 1k: 1024 bytes per second is below the smallest limit, 65536 (64 KiB/s)"),
            ),
        ];
        for (text, want) in cases {
            match (parse_rate(text).map_err(|e| describe(&e)), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{text}"),
                (Err((code, detail)), Err(w)) => {
                    assert_eq!(code, ErrorCode::Usage, "{text}");
                    assert!(detail.starts_with(w), "{text}: {detail}");
                }
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_lower_limit_applies_and_changes_are_told() {
        let r = RateLimit::new(Some(10 << 20));
        assert_eq!(r.limit(), Some(10 << 20));
        assert!(r.set_remote(1 << 20));
        assert_eq!(r.limit(), Some(1 << 20));
        assert!(!r.set_remote(1 << 20), "the same limit again");
        assert!(r.set_remote(100 << 20));
        assert_eq!(r.limit(), Some(10 << 20), "--bwlimit is the lower");
        let none = RateLimit::new(None);
        assert_eq!(none.limit(), None);
        assert!(!none.set_remote(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_paces_frames_to_its_rate() {
        let r = RateLimit::new(Some(1 << 20));
        let start = Instant::now();
        // 10 frames of 256 KiB at 1 MiB/s: the first goes at once, the
        // other nine wait for the debt of the one before.
        for _ in 0..10 {
            r.acquire(256 << 10).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((took - 2.25).abs() < 0.06, "took {took} s");
        // Without a limit: no wait at all.
        let none = RateLimit::new(None);
        let t = Instant::now();
        none.acquire(1 << 30).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_wakes_a_waiting_frame() {
        let r = std::sync::Arc::new(RateLimit::new(None));
        r.set_remote(64 << 10);
        r.acquire(64 << 20).await; // 1024 s of debt at this rate
        let waiter = {
            let r = std::sync::Arc::clone(&r);
            tokio::spawn(async move { r.acquire(1).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        // The control plane lifts the limit: the frame goes within a moment.
        r.set_remote(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(waiter.is_finished());
    }
}
