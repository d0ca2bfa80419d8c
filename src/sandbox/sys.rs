//! The two calls of the sandbox that the safe crates do not wrap.
#![allow(unsafe_code)]

use anyhow::{Context, Result};

/// fork(2).
///
/// # Safety
/// Only in a process with a single thread (the sandbox's keeper starts
/// none), so that the child may allocate and run any code.
pub(crate) fn fork() -> Result<nix::unistd::ForkResult> {
    // SAFETY: the keeper is single-threaded; see above.
    unsafe { nix::unistd::fork() }.context("forking the guest's first process")
}

/// `ip link set lo up` in the guest's network namespace.
pub(crate) fn loopback_up() -> Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket to configure lo")?;
    // SAFETY: ifreq is plain data, all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq given,
    // which lives across both calls; the flags field is the union's member
    // these requests use.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error()).context("reading lo's flags");
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error()).context("setting lo up");
        }
    }
    Ok(())
}
