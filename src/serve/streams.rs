//! Data streams: a sender's further connections that carry chunks of a
//! disk another of its sessions opened.
//!
//! One TCP stream cannot fill a long link (its window caps it), so a
//! sender spreads the chunks of its disks over several connections. The
//! session that opens a disk (OpenDisk) owns it as before: its claim, its
//! writer, its acks, Finish and the re-read. It publishes the disk here
//! under a random key, which it tells its sender (StreamKey); any other
//! authenticated connection of the job that presents the key (Attach)
//! feeds the same writer. Acks go back on the owner's connection, since
//! the writer commits what every stream brought in one ledger.
//!
//! When the owner closes the disk, the entry goes and every attached
//! stream is told (`closed`): it drops its handle on the writer, so the
//! writer ends and the disk's claim is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::claims::Link;
use super::writer::Work;

/// What an attached stream needs of a disk opened by another session.
#[derive(Clone)]
pub struct Attached {
    pub work: mpsc::Sender<Work>,
    /// Cancelled when the owner closes the disk.
    pub closed: CancellationToken,
    /// The owner's link: data arriving on any stream keeps it alive.
    pub link: Arc<Link>,
    /// Chunks of the disk (indices are checked against it).
    pub chunks: u64,
    pub chunk_size: u32,
    /// The writer's chunk buffers.
    pub buffers: Arc<crate::disk::buffers::BufPool>,
}

struct Entry {
    key: [u8; 32],
    attached: Attached,
}

#[derive(Default)]
pub struct Streams {
    open: Mutex<HashMap<u32, Entry>>,
}

/// A disk published for data streams; unpublished (and its streams told)
/// when dropped.
pub(crate) struct Published {
    streams: Arc<Streams>,
    disk: u32,
    closed: CancellationToken,
}

impl Streams {
    /// Publish `disk` for the streams of its sender; returns the key to
    /// give it.
    pub(crate) fn publish(
        self: &Arc<Self>,
        disk: u32,
        attached: Attached,
    ) -> (Published, [u8; 32]) {
        let key: [u8; 32] = rand::random();
        let closed = attached.closed.clone();
        let previous = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(disk, Entry { key, attached });
        // A disk has one owner at a time (its claim); an entry left by an
        // owner being taken over is closed with it.
        if let Some(old) = previous {
            old.attached.closed.cancel();
        }
        (
            Published {
                streams: Arc::clone(self),
                disk,
                closed,
            },
            key,
        )
    }

    /// The disk `disk` for a stream that presents `key`; None when it is
    /// not open or the key is not its owner's (compared in constant time).
    pub fn attach(&self, disk: u32, key: &[u8; 32]) -> Option<Attached> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let entry = open.get(&disk)?;
        crate::wire::auth::proofs_equal(&entry.key, key).then(|| entry.attached.clone())
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        self.closed.cancel();
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if open
            .get(&self.disk)
            .is_some_and(|e| e.attached.closed.is_cancelled())
        {
            open.remove(&self.disk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> (Attached, mpsc::Receiver<Work>) {
        let (work, rx) = mpsc::channel(1);
        (
            Attached {
                work,
                closed: CancellationToken::new(),
                link: Link::new(),
                chunks: 4,
                chunk_size: 1 << 20,
                buffers: crate::disk::buffers::BufPool::new(1 << 20, 1),
            },
            rx,
        )
    }

    #[test]
    fn a_stream_attaches_with_the_owners_key_only_while_the_disk_is_open() {
        let streams = Arc::new(Streams::default());
        let (a, _rx) = attached();
        let (published, key) = streams.publish(3, a);
        assert!(streams.attach(3, &key).is_some());
        let mut wrong = key;
        wrong[0] ^= 1;
        assert!(streams.attach(3, &wrong).is_none(), "a wrong key");
        assert!(streams.attach(2, &key).is_none(), "another disk");
        let held = streams.attach(3, &key).unwrap();
        drop(published);
        assert!(held.closed.is_cancelled(), "attached streams are told");
        assert!(streams.attach(3, &key).is_none(), "closed");
    }

    #[test]
    fn a_new_owner_replaces_the_old_entry_and_closes_its_streams() {
        let streams = Arc::new(Streams::default());
        let (a, _r1) = attached();
        let (b, _r2) = attached();
        let (old, old_key) = streams.publish(0, a);
        let (_new, new_key) = streams.publish(0, b);
        assert!(old.closed.is_cancelled());
        assert!(streams.attach(0, &old_key).is_none());
        // The old owner closing later leaves the new entry alone.
        drop(old);
        assert!(streams.attach(0, &new_key).is_some());
    }
}
