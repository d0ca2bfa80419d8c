//! Which session writes which disk, and how a newer session of the job takes
//! a disk over from one whose link went silent.
//!
//! A cut link often leaves both ends half-open: the old session holds its
//! disk until it notices, while the sender has already reconnected. The new
//! session waits a moment for the disk (an old connection that closed
//! cleanly releases it within that moment), and when the holder has heard
//! nothing from its sender for [`SILENT_AFTER`], it closes the holder and
//! takes the disk: the holder's writer commits what is durable and stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::errors::{coded, ErrorCode};
use crate::wire;

/// A holder that heard nothing for this long is silent: its sender pings
/// every [`wire::HEARTBEAT`], so a live one is never this quiet.
pub const SILENT_AFTER: Duration = Duration::from_secs(wire::HEARTBEAT.as_secs() + 5);

/// How long a session waits for a disk before it is DISK_BUSY.
pub(crate) const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// What the appliance knows of one session's link.
pub struct Link {
    heard: Mutex<Instant>,
    taken_over: CancellationToken,
}

impl Link {
    pub fn new() -> Arc<Link> {
        Arc::new(Link {
            heard: Mutex::new(Instant::now()),
            taken_over: CancellationToken::new(),
        })
    }

    /// A frame arrived from the sender.
    pub fn heard(&self) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub(crate) fn last_heard(&self) -> Instant {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when a newer session took one of this session's disks.
    pub(crate) async fn taken_over(&self) {
        self.taken_over.cancelled().await
    }
}

#[derive(Default)]
pub struct Claims {
    held: Mutex<HashMap<u32, Arc<Link>>>,
    released: Notify,
}

/// Holds a disk for one session; released when dropped.
pub struct Claim {
    claims: Arc<Claims>,
    disk: u32,
}

impl Claims {
    /// Hold `disk` now, if no session does (for a reset).
    pub fn hold(self: &Arc<Self>, disk: u32) -> Option<Claim> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.contains_key(&disk) {
            return None;
        }
        held.insert(disk, Link::new());
        Some(Claim {
            claims: Arc::clone(self),
            disk,
        })
    }

    /// Claim `disk` for the session on `link`: at once when it is free,
    /// after a wait when its holder closes or is silent and taken over, or
    /// DISK_BUSY when a live session keeps it.
    pub async fn claim(self: &Arc<Self>, disk: u32, link: &Arc<Link>) -> Result<Claim> {
        let deadline = Instant::now() + CLAIM_WAIT;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                match held.get(&disk) {
                    None => {
                        held.insert(disk, Arc::clone(link));
                        return Ok(Claim {
                            claims: Arc::clone(self),
                            disk,
                        });
                    }
                    Some(holder) => {
                        let quiet = holder.last_heard().elapsed();
                        if quiet >= SILENT_AFTER && !holder.taken_over.is_cancelled() {
                            tracing::warn!(
                                disk,
                                quiet_secs = quiet.as_secs(),
                                "the session writing this disk is silent: a newer session takes it over"
                            );
                            holder.taken_over.cancel();
                        }
                    }
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(coded(
                    ErrorCode::DiskBusy,
                    format!(
                        "disk {disk}: another session of the job is writing it and was heard from within the last {} s",
                        SILENT_AFTER.as_secs()
                    ),
                ));
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.disk);
        self.claims.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_free_disk_at_once_a_live_holder_busy_a_silent_one_taken_over() {
        let claims = Arc::new(Claims::default());
        let (old, new) = (Link::new(), Link::new());
        let held = claims.claim(0, &old).await.unwrap();
        // Another disk is free.
        let other = claims.claim(1, &new).await.unwrap();
        drop(other);

        // A live holder keeps the disk: DISK_BUSY after the wait.
        old.heard();
        let err = claims.claim(0, &new).await.err().unwrap();
        assert_eq!(
            crate::job::errors::find_coded(&err).map(|c| c.code),
            Some(ErrorCode::DiskBusy)
        );
        assert!(!old.taken_over.is_cancelled());

        // A holder that closes within the wait hands the disk over.
        let waiter = {
            let (claims, new) = (Arc::clone(&claims), Arc::clone(&new));
            tokio::spawn(async move { claims.claim(0, &new).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        waiter.await.unwrap().unwrap();

        // A silent holder is told to close; its disk goes to the newer session
        // once it has.
        let held = claims.claim(0, &old).await.unwrap();
        tokio::time::sleep(SILENT_AFTER).await;
        let waiter = {
            let (claims, new) = (Arc::clone(&claims), Arc::clone(&new));
            tokio::spawn(async move { claims.claim(0, &new).await.map(|_| ()) })
        };
        old.taken_over().await;
        drop(held);
        waiter.await.unwrap().unwrap();
    }
}
