//! `ferry sandbox --spec JSON -- PROGRAM ARGS…` (hidden): one guest
//! command, confined. This process (the keeper) stays on the appliance's
//! side: it makes the cgroups and the new namespaces, forks the guest's
//! PID 1, collects what it prints within bounds, kills it at the deadline
//! and passes its exit status on. Everything here runs in a fresh
//! single-threaded process, so `fork` is safe.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::{cgroup, confine, mounts, sys, Spec};
use crate::job::errors::{coded, ErrorCode};

/// The exit status of a guest command that ran out of time (as timeout(1)).
pub const TIMED_OUT: i32 = 124;

/// The exit status when the sandbox could not be made (nothing ran).
pub const UNAVAILABLE: i32 = 125;

/// The exit status when the program is not in the migrated system (as
/// chroot(1) and the shells).
pub const NOT_FOUND: i32 = 127;

/// Run the keeper; returns the guest's exit status.
pub fn run(spec_json: &str, argv: &[OsString]) -> Result<i32> {
    let spec: Spec = serde_json::from_str(spec_json).context("reading the sandbox's spec")?;
    anyhow::ensure!(!argv.is_empty(), "no program to run in the sandbox");
    if !nix::unistd::geteuid().is_root() {
        return Err(unavailable("the sandbox runs as root"));
    }
    // The keeper dies with ferry (a kill -9 of the appliance), and its
    // guest with it: nothing of a repair outlives the process that ran it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("setting the keeper's death signal")?;
    let groups = cgroup::Cgroups::create(&spec).map_err(|e| unavailable_from(e, "cgroups"))?;
    nix::sched::unshare(
        CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(|e| {
        unavailable(format!(
            "the kernel refused new PID, network, IPC and UTS namespaces: {e}"
        ))
    })?;
    let (out_r, out_w) = nix::unistd::pipe().context("making the guest's stdout pipe")?;
    let (err_r, err_w) = nix::unistd::pipe().context("making the guest's stderr pipe")?;
    // Whatever goes wrong in the guest before its program starts is told
    // on this pipe (the program's own stderr is the other one).
    let (setup_r, setup_w) = nix::unistd::pipe().context("making the setup pipe")?;
    // The guest waits on this until the keeper has put it in its cgroups.
    let (go_r, go_w) = nix::unistd::pipe().context("making the start pipe")?;
    set_cloexec(&setup_w)?;
    match sys::fork()? {
        ForkResult::Child => {
            drop((out_r, err_r, setup_r, go_w));
            let e = guest(&spec, go_r, argv, out_w, err_w);
            // Only reached when the program could not be started.
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::NotFound {
                    // As chroot(1) says it, on the program's own stderr.
                    eprintln!(
                        "ferry sandbox: failed to run command '{}': No such file or directory",
                        argv[0].to_string_lossy()
                    );
                    std::process::exit(NOT_FOUND);
                }
            }
            let mut w = std::fs::File::from(setup_w);
            let _ = write!(w, "{e:#}");
            std::process::exit(UNAVAILABLE);
        }
        ForkResult::Parent { child } => {
            drop((out_w, err_w, setup_w, go_r));
            if let Err(e) = groups.add(child) {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(unavailable_from(e, "cgroups"));
            }
            nix::unistd::write(&go_w, b"g").context("starting the guest")?;
            drop(go_w);
            let res = keep(&spec, child, out_r, err_r, setup_r);
            // The guest's PID 1 is gone and with it every process of its
            // namespace: the cgroups are empty.
            drop(groups);
            res
        }
    }
}

fn set_cloexec(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .context("marking the setup pipe close-on-exec")?;
    Ok(())
}

/// The guest's PID 1: into the cgroups, a mount namespace of its own over
/// the migrated root, confined, then the program. Returns only on failure.
fn guest(spec: &Spec, go: OwnedFd, argv: &[OsString], out: OwnedFd, err: OwnedFd) -> anyhow::Error {
    let res = (|| -> Result<std::convert::Infallible> {
        // The guest dies with its keeper (killed at the deadline, or by
        // ferry's stop): PID 1 gone, the kernel kills the rest.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("setting the death signal")?;
        let mut byte = [0u8; 1];
        let n = nix::unistd::read(go.as_raw_fd(), &mut byte).context("waiting for the keeper")?;
        anyhow::ensure!(n == 1, "the keeper did not put the guest in its cgroups");
        drop(go);
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)
            .map_err(|e| unavailable(format!("the kernel refused a new mount namespace: {e}")))?;
        mounts::enter(&spec.root, &spec.devices)?;
        // A loopback of its own where ferry may configure one
        // (CAP_NET_ADMIN); the unit grants none, and there the guest's
        // network namespace has no usable interface at all.
        match sys::loopback_up() {
            Ok(()) => {}
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM)) => {}
            Err(e) => return Err(e.context("bringing up the guest's loopback")),
        }
        let null = std::fs::File::open("/dev/null").context("opening the guest's /dev/null")?;
        nix::unistd::dup2(null.as_raw_fd(), 0).context("redirecting stdin")?;
        nix::unistd::dup2(out.as_raw_fd(), 1).context("redirecting stdout")?;
        nix::unistd::dup2(err.as_raw_fd(), 2).context("redirecting stderr")?;
        drop((null, out, err));
        let program = confine::prepare().context("preparing the seccomp filter")?;
        confine::drop_capabilities()?;
        confine::apply(&program)?;
        let (prog, args) = argv.split_first().expect("checked not empty");
        let mut cmd = std::process::Command::new(prog);
        cmd.args(args).env_clear().current_dir("/");
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        use std::os::unix::process::CommandExt;
        let e = cmd.exec();
        Err(anyhow::Error::new(e).context(format!(
            "starting `{}` in the migrated system",
            prog.to_string_lossy()
        )))
    })();
    match res {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// The end of a stream kept within a bound, and how much was dropped.
struct Tail {
    buf: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl Tail {
    fn new(limit: usize) -> Tail {
        Tail {
            buf: Vec::new(),
            limit,
            dropped: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.limit {
            let cut = self.buf.len() - self.limit;
            self.buf.drain(..cut);
            self.dropped += cut as u64;
        }
    }
}

/// Collect the guest's output until both pipes close, within the
/// deadline; then its status.
fn keep(spec: &Spec, child: Pid, out: OwnedFd, err: OwnedFd, setup: OwnedFd) -> Result<i32> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + Duration::from_secs(spec.timeout_secs);
    let mut tails = [Tail::new(spec.output_limit), Tail::new(spec.output_limit)];
    let mut setup_msg = Tail::new(64 << 10);
    let fds = [out, err, setup];
    let mut open = [true, true, true];
    let mut timed_out = false;
    let mut buf = vec![0u8; 64 << 10];
    while open.iter().any(|o| *o) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            break;
        }
        let mut polls: Vec<PollFd> = fds
            .iter()
            .zip(open)
            .filter(|(_, o)| *o)
            .map(|(fd, _)| {
                use std::os::fd::AsFd;
                PollFd::new(fd.as_fd(), PollFlags::POLLIN)
            })
            .collect();
        let ms = left.as_millis().min(1000) as u16;
        match poll(&mut polls, PollTimeout::from(ms)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("waiting for the guest's output")),
        }
        let ready: Vec<bool> = polls
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(polls);
        let mut k = 0;
        for i in 0..3 {
            if !open[i] {
                continue;
            }
            let r = ready[k];
            k += 1;
            if !r {
                continue;
            }
            match nix::unistd::read(fds[i].as_raw_fd(), &mut buf) {
                Ok(0) => open[i] = false,
                Ok(n) => match i {
                    2 => setup_msg.push(&buf[..n]),
                    _ => tails[i].push(&buf[..n]),
                },
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(anyhow::Error::new(e).context("reading the guest's output")),
            }
        }
    }
    let status = loop {
        match waitpid(child, Some(WaitPidFlag::empty())) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.context("waiting for the guest")?,
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&tails[0].buf);
    let _ = stdout.flush();
    let mut stderr = std::io::stderr().lock();
    if tails[1].dropped > 0 {
        let _ = writeln!(
            stderr,
            "[ferry sandbox: the first {} bytes of this output were dropped]",
            tails[1].dropped
        );
    }
    let _ = stderr.write_all(&tails[1].buf);
    if tails[0].dropped > 0 {
        let _ = writeln!(
            stderr,
            "[ferry sandbox: the first {} bytes of stdout were dropped]",
            tails[0].dropped
        );
    }
    if timed_out {
        let _ = writeln!(
            stderr,
            "ferry sandbox: the command ran out of its {} s and was killed with everything it started",
            spec.timeout_secs
        );
        return Ok(TIMED_OUT);
    }
    let code = match status {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 1,
    };
    if code == UNAVAILABLE && !setup_msg.buf.is_empty() {
        return Err(unavailable(String::from_utf8_lossy(&setup_msg.buf)));
    }
    Ok(code)
}

fn unavailable(msg: impl std::fmt::Display) -> anyhow::Error {
    coded(
        ErrorCode::SandboxUnavailable,
        format!("the migrated system's tools cannot be confined: {msg}"),
    )
}

fn unavailable_from(e: anyhow::Error, what: &str) -> anyhow::Error {
    unavailable(format!("{what}: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::Tail;

    #[test]
    fn a_tail_keeps_the_end_and_counts_what_it_dropped() {
        let mut t = Tail::new(5);
        t.push(b"abc");
        assert_eq!((t.buf.as_slice(), t.dropped), (&b"abc"[..], 0));
        t.push(b"defg");
        assert_eq!((t.buf.as_slice(), t.dropped), (&b"cdefg"[..], 2));
        t.push(b"0123456789");
        assert_eq!((t.buf.as_slice(), t.dropped), (&b"56789"[..], 12));
    }
}
