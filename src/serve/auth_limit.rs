//! Slows down repeated authentication failures, per peer address.
//!
//! Used for the data port's proofs and the control port's tokens alike:
//! the caller checks the credential first and asks here only about a
//! failure, so a correct one is never refused because of anyone's
//! failures from the same address.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures remembered for this long.
const WINDOW: Duration = Duration::from_secs(60);
/// Above this many failures in the window, a peer is refused outright.
const LIMIT: usize = 10;
/// Addresses remembered at most: an attacker with many addresses makes the
/// oldest be forgotten rather than the appliance's memory grow.
const MAX_PEERS: usize = 4096;

#[derive(Default)]
pub struct AuthLimiter {
    /// Per address, its last failures (at most [`LIMIT`]), oldest first.
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl AuthLimiter {
    fn recent(&self, ip: IpAddr, now: Instant) -> usize {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(&ip) else {
            return 0;
        };
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            list.pop_front();
        }
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

    /// How long until a blocked peer may try again (None: it may now).
    /// Every failure while blocked moves this further away.
    pub(crate) fn retry_after(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        if self.recent(ip, now) < LIMIT {
            return None;
        }
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = *map.get(&ip)?.front()?;
        Some(WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    /// Record a failure; returns how long to wait before answering it.
    pub fn fail(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let n = self.recent(ip, now);
        {
            let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_PEERS && !map.contains_key(&ip) {
                forget_one(&mut map, now);
            }
            let list = map.entry(ip).or_default();
            if list.len() >= LIMIT {
                list.pop_front();
            }
            list.push_back(now);
        }
        Self::delay(n)
    }

    /// The wait before answering the failure that follows `n` recent ones:
    /// 250 ms, 500 ms, 1 s, 2 s, then 4 s.
    pub fn delay(n: usize) -> Duration {
        Duration::from_millis(250u64 << n.min(4))
    }
}

/// Make room for one more address: drop those whose failures are all
/// past the window, or else the one whose last failure is the oldest.
fn forget_one(map: &mut HashMap<IpAddr, VecDeque<Instant>>, now: Instant) {
    map.retain(|_, l| l.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
    if map.len() < MAX_PEERS {
        return;
    }
    if let Some(ip) = map
        .iter()
        .min_by_key(|(_, l)| l.back().copied())
        .map(|(ip, _)| *ip)
    {
        map.remove(&ip);
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
        let wait = l.retry_after(ip).unwrap();
        assert!(
            wait > WINDOW - Duration::from_secs(5) && wait <= WINDOW,
            "{wait:?}"
        );
        assert_eq!(l.retry_after(other), None);
        // Failing on while blocked keeps at most LIMIT entries per address.
        for _ in 0..100 {
            l.fail(ip);
        }
        assert_eq!(l.failures.lock().unwrap()[&ip].len(), LIMIT);
    }

    #[test]
    fn many_addresses_do_not_grow_without_bound() {
        let l = AuthLimiter::default();
        for i in 0..(MAX_PEERS as u32 + 100) {
            l.fail(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(l.failures.lock().unwrap().len(), MAX_PEERS);
    }
}
