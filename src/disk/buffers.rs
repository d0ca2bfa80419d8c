//! Chunk buffers that are used again rather than allocated for every chunk:
//! a fresh buffer of a few MiB is fresh pages, and the kernel's page faults
//! and zeroing of them cost as much CPU as hashing the chunk. They are
//! aligned to [`ALIGN`], so a target opened with O_DIRECT can be written
//! from them and read into them.

use std::sync::{Arc, Mutex};

/// Alignment of every buffer (O_DIRECT needs the logical block size; a
/// page covers every disk).
pub const ALIGN: usize = 4096;

pub struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Bytes each buffer holds at most.
    size: usize,
    /// Buffers kept for later; more are freed.
    keep: usize,
}

/// A buffer of the pool; back to it when dropped.
pub struct Buf {
    v: Vec<u8>,
    off: usize,
    len: usize,
    pool: Arc<BufPool>,
}

impl BufPool {
    pub fn new(size: usize, keep: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: Mutex::new(Vec::new()),
            size,
            keep,
        })
    }

    /// Bytes each buffer holds at most.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A buffer of `len` bytes (at most the pool's size), aligned; its
    /// bytes are whatever the last user left.
    pub fn get(self: &Arc<Self>, len: usize) -> Buf {
        assert!(
            len <= self.size,
            "a buffer of {len} bytes from a pool of {}",
            self.size
        );
        let v = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size + ALIGN]);
        let off = v.as_ptr().align_offset(ALIGN);
        Buf {
            v,
            off,
            len,
            pool: Arc::clone(self),
        }
    }
}

impl Buf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Use `len` bytes of the buffer (at most the pool's size).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.pool.size);
        self.len = len;
    }

    /// The whole capacity, for a decompressor to fill.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.pool.size]
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.pool.keep {
            free.push(std::mem::take(&mut self.v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_come_back() {
        let pool = BufPool::new(1 << 20, 2);
        let mut a = pool.get(1000);
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        assert_eq!(a.len(), 1000);
        a[..3].copy_from_slice(b"abc");
        let ptr = a.as_ptr();
        drop(a);
        let b = pool.get(1 << 20);
        assert_eq!(b.as_ptr(), ptr, "the same memory again");
        assert_eq!(&b[..3], b"abc");
        let bytes = bytes::Bytes::from_owner(b);
        assert_eq!(bytes.len(), 1 << 20);
        drop(bytes);
        assert_eq!(pool.free.lock().unwrap().len(), 1, "back from Bytes too");
    }
}
