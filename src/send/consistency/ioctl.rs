//! FIFREEZE and FITHAW, the only ioctls of the sender. `unsafe_code` is
//! denied crate-wide and allowed here alone.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

// linux/fs.h: #define FIFREEZE _IOWR('X', 119, int), FITHAW _IOWR('X', 120, int).
nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// Freeze the file system `dir` (a directory of it, opened) is on: the
/// kernel flushes it and blocks every writer until it is thawed.
pub fn freeze(dir: &File) -> nix::Result<()> {
    let mut unused: libc::c_int = 0;
    // SAFETY: `dir` is an open descriptor for the call's duration, and the
    // kernel reads nothing through the pointer (FIFREEZE ignores its
    // argument), which points at a live int anyway.
    unsafe { fifreeze(dir.as_raw_fd(), &mut unused) }.map(|_| ())
}

/// Thaw it again; EINVAL when it was not frozen.
pub fn thaw(dir: &File) -> nix::Result<()> {
    let mut unused: libc::c_int = 0;
    // SAFETY: as for `freeze`: a live descriptor, an argument the kernel ignores.
    unsafe { fithaw(dir.as_raw_fd(), &mut unused) }.map(|_| ())
}
