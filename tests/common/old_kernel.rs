//! A Linux 3.10 kernel as a process sees it: every system call added after
//! 3.10 answers `ENOSYS`, through a seccomp filter set in the child before
//! it runs its program (and inherited by everything it starts). The
//! released sender must work this way, since CentOS 7 runs 3.10.
//!
//! `unsafe_code` is allowed here alone: installing a filter between fork
//! and exec has no safe interface in std or the crates the tests use.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// The first x86_64 system call Linux 3.10 does not have:
/// `sched_setattr` (3.14). Every later one (`getrandom`, `memfd_create`,
/// `copy_file_range`, `statx`, `rseq`, `clone3`, `openat2`, `open_tree`,
/// `close_range`, …) has a larger number.
pub const FIRST_AFTER_3_10: u32 = 314;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
// BPF instruction classes and modes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// Run `cmd` as on Linux 3.10.
pub fn refuse_newer_syscalls(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec; it calls only
    // async-signal-safe prctl(2) on data it owns.
    unsafe {
        cmd.pre_exec(install);
    }
}

fn install() -> std::io::Result<()> {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let filter = [
        // The architecture (seccomp_data.arch at offset 4): x86_64 only.
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        // The call's number (offset 0).
        op(LD_W_ABS, 0, 0, 0),
        op(JGE_K, 0, 1, FIRST_AFTER_3_10),
        op(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with constant arguments and a pointer to a filter that
    // outlives the call (the kernel copies it).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
