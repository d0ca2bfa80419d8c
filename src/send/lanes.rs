//! What one attempt of block mode shares among its disks: the data
//! streams, the window of bytes in flight and the bandwidth limit.

use super::{progress, ratelimit, streams};

/// The window without a data stream: what a LAN needs.
pub(crate) const DEFAULT_WINDOW: u64 = 64 << 20;

/// And more per data stream: a long link holds what its streams carry in a
/// round trip, and the commit (fdatasync) adds its own time. The sender
/// keeps nothing of what is in flight (a retry reads again), so a large
/// window costs no memory; it bounds what a retry sends again.
pub(crate) const PER_STREAM_WINDOW: u64 = 16 << 20;

/// What one attempt shares among its disks: the data streams, the window
/// of bytes in flight, the bandwidth limit.
pub(crate) struct Lanes<'a> {
    pub(crate) pool: &'a streams::Pool,
    /// Bytes of chunks in flight (sent, not acknowledged), in permits.
    pub(crate) window: &'a tokio::sync::Semaphore,
    pub(crate) window_bytes: u64,
    pub(crate) limit: &'a ratelimit::RateLimit,
}

impl Lanes<'_> {
    /// Permits a chunk of `len` bytes takes (a chunk larger than the whole
    /// window takes it all).
    pub(crate) fn permits(&self, len: u64) -> u32 {
        len.min(self.window_bytes) as u32
    }

    /// The appliance told its bandwidth limit: apply it, and say so when
    /// the limit that applies changed.
    pub(crate) fn bandwidth(&self, bytes_per_sec: u64, progress: &progress::Progress) {
        if self.limit.set_remote(bytes_per_sec) {
            let now = match self.limit.limit() {
                Some(n) => format!("{}/s", crate::disk::human_bytes(n)),
                None => "none".to_owned(),
            };
            progress.println(&format!(
                "ferry send: the appliance's bandwidth limit is {}; the limit now is {now}",
                if bytes_per_sec == 0 {
                    "lifted".to_owned()
                } else {
                    format!("{}/s", crate::disk::human_bytes(bytes_per_sec))
                }
            ));
        }
    }
}
