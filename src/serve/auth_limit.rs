//! Slows down repeated authentication failures, per peer address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures remembered for this long.
const WINDOW: Duration = Duration::from_secs(60);
/// Above this many failures in the window, a peer is refused outright.
const LIMIT: usize = 10;

#[derive(Default)]
pub struct AuthLimiter {
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl AuthLimiter {
    fn recent(&self, ip: IpAddr, now: Instant) -> usize {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(ip).or_default();
        list.retain(|t| now.duration_since(*t) < WINDOW);
        let n = list.len();
        if n == 0 {
            map.remove(&ip);
        }
        n
    }

    /// Is this peer over its limit of failures?
    pub fn blocked(&self, ip: IpAddr) -> bool {
        self.recent(ip, Instant::now()) >= LIMIT
    }

    /// Record a failure; returns how long to wait before answering it.
    pub fn fail(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let n = self.recent(ip, now);
        {
            let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(ip).or_default().push(now);
        }
        // 250 ms, 500 ms, 1 s, 2 s, then 4 s per further failure.
        Duration::from_millis(250u64 << n.min(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_peers_get_blocked() {
        let l = AuthLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let delays: Vec<u64> = (0..LIMIT).map(|_| l.fail(ip).as_millis() as u64).collect();
        assert_eq!(&delays[..6], &[250, 500, 1000, 2000, 4000, 4000]);
        assert!(l.blocked(ip));
        assert!(!l.blocked(other));
    }
}
