//! Who gets a connection while it has not proven anything yet: on the data
//! port until it is authenticated, on the control port for its whole life
//! (a control request is short; a connection held open is not one).
//!
//! Such connections have a budget of their own, in total and per address,
//! and are always accepted, never left in the kernel's backlog. When a
//! budget is full the newest connection takes the place of the oldest one
//! (of the same address when that address is over its share): holding
//! connections open, or trickling bytes into them, then cannot keep out a
//! sender that authenticates in milliseconds or a health probe — they are
//! cut first, being older. Authenticated senders have their own cap
//! ([`crate::config::Config::max_sessions`]) that unauthenticated
//! connections never count against.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The budget of one port.
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    inner: Mutex<Inner>,
    /// Connections cut to make room, for the metrics.
    pub evicted: prometheus::IntCounter,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Oldest first.
    pending: VecDeque<Entry>,
}

struct Entry {
    id: u64,
    ip: IpAddr,
    cut: CancellationToken,
}

/// One admitted connection; its place is given back when dropped.
pub struct Ticket {
    id: u64,
    admission: Arc<Admission>,
    cut: CancellationToken,
}

impl Ticket {
    /// Resolves when the connection must close to make room for a newer one.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cut.cancelled()
    }

    /// The same, as an owned future (for a stream that polls it).
    pub(crate) fn evicted_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cut.clone().cancelled_owned()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        inner.pending.retain(|e| e.id != self.id);
    }
}

impl Admission {
    pub fn new(
        max_total: usize,
        max_per_address: usize,
        evicted: prometheus::IntCounter,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            max_total: max_total.max(1),
            max_per_address: max_per_address.max(1),
            inner: Mutex::new(Inner::default()),
            evicted,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a connection from `ip`, cutting the oldest one that is over
    /// budget to make room.
    pub fn arrive(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        let mut inner = self.lock();
        let of_ip = inner.pending.iter().filter(|e| e.ip == ip).count();
        let victim = if of_ip >= self.max_per_address {
            inner.pending.iter().position(|e| e.ip == ip)
        } else if inner.pending.len() >= self.max_total {
            Some(0)
        } else {
            None
        };
        if let Some(i) = victim {
            if let Some(e) = inner.pending.remove(i) {
                e.cut.cancel();
                self.evicted.inc();
                tracing::debug!(peer = %e.ip, "cut an unproven connection to make room");
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let cut = CancellationToken::new();
        inner.pending.push_back(Entry {
            id,
            ip,
            cut: cut.clone(),
        });
        Ticket {
            id,
            admission: Arc::clone(self),
            cut,
        }
    }

    /// Connections holding a place now.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: usize, per: usize) -> Arc<Admission> {
        Admission::new(total, per, prometheus::IntCounter::new("t", "t").unwrap())
    }

    #[test]
    fn the_newest_connection_takes_the_place_of_the_oldest() {
        let a = admission(3, 2);
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        let z: IpAddr = "192.0.2.3".parse().unwrap();
        let t1 = a.arrive(x);
        let t2 = a.arrive(y);
        let t3 = a.arrive(x);
        // x is at its share: its own oldest goes.
        let t4 = a.arrive(x);
        assert!(t1.cut.is_cancelled());
        assert!(!t3.cut.is_cancelled() && !t4.cut.is_cancelled());
        assert_eq!(a.pending(), 3);
        // The total is full: the oldest of all (y's) goes.
        let t5 = a.arrive(z);
        assert!(t2.cut.is_cancelled());
        assert!(!t5.cut.is_cancelled());
        assert_eq!(a.evicted.get(), 2);
        // A ticket dropped gives its place back without cutting anyone.
        drop(t3);
        let t6 = a.arrive(y);
        assert!(!t4.cut.is_cancelled() && !t5.cut.is_cancelled() && !t6.cut.is_cancelled());
        assert_eq!(a.pending(), 3);
    }
}
