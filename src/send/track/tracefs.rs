//! The kernel's trace file system, as the tracker uses it: a private trace
//! instance (its own buffers, its own events enabled, so that nothing else
//! that traces on the machine is disturbed and nothing it does disturbs the
//! tracker), drained through its `trace_pipe`, with the per-CPU counters
//! that say when events were lost.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::event::EVENTS;

/// Where the trace file system is found: tracefs (4.1 and newer), or the
/// tracing directory of debugfs (every kernel since 2.6.27).
const PLACES: [(&str, &str, &str); 2] = [
    ("/sys/kernel/tracing", "tracefs", "/sys/kernel/tracing"),
    ("/sys/kernel/debug/tracing", "debugfs", "/sys/kernel/debug"),
];

/// The instances of trace buffers are named after the sender's pid.
const PREFIX: &str = "ferry-track-";

/// The trace file system's root, mounting it when nothing has (it stays
/// mounted, as systemd mounts it on most systems: another tracer may
/// start using it meanwhile).
fn root() -> Result<PathBuf> {
    for (dir, _, _) in PLACES {
        if Path::new(dir).join("instances").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let mut tried = Vec::new();
    for (dir, fstype, at) in PLACES {
        let mounted = nix::mount::mount(
            Some("nodev"),
            at,
            Some(fstype),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        match mounted {
            Ok(()) if Path::new(dir).join("instances").is_dir() => return Ok(PathBuf::from(dir)),
            Ok(()) => tried.push(format!(
                "{dir} has no trace instances (Linux 3.10 or newer has)"
            )),
            Err(e) => tried.push(format!("mounting {fstype} on {at}: {}", e.desc())),
        }
    }
    anyhow::bail!("no trace file system: {}", tried.join("; "))
}

/// A trace instance of this process, removed when dropped.
pub(crate) struct Instance {
    dir: PathBuf,
    /// Closed before the instance is removed (the kernel refuses to remove
    /// an instance whose pipe is open).
    pipe: Option<File>,
    /// A line cut by the end of a read, completed by the next.
    carry: Vec<u8>,
}

impl Instance {
    /// Make the instance with `buffer_kb` per CPU, enable the block
    /// events with `filter` (a trace filter over `dev`; none when empty),
    /// and open its pipe.
    pub(crate) fn create(buffer_kb: u64, filter: &str) -> Result<Instance> {
        let root = root()?;
        remove_stale(&root);
        let dir = root
            .join("instances")
            .join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir(&dir)
            .with_context(|| format!("making the trace instance {}", dir.display()))?;
        // From here on, the instance is removed whatever fails.
        let mut made = Instance {
            pipe: None,
            dir,
            carry: Vec::new(),
        };
        made.write("buffer_size_kb", &buffer_kb.to_string())?;
        for e in EVENTS {
            let event = made.dir.join("events/block").join(e);
            if !event.is_dir() {
                // block_bio_complete is not on every kernel; the others are.
                tracing::debug!("no {e} tracepoint");
                continue;
            }
            if !filter.is_empty() {
                if let Err(err) = std::fs::write(event.join("filter"), filter) {
                    // Without it, every device's events come and are ignored.
                    tracing::debug!("the filter of {e}: {err}");
                }
            }
            std::fs::write(event.join("enable"), "1")
                .with_context(|| format!("enabling the {e} tracepoint"))?;
        }
        made.pipe = Some(
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(made.dir.join("trace_pipe"))
                .context("opening the trace pipe")?,
        );
        Ok(made)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("writing {value} to {}", self.dir.join(file).display()))
    }

    /// Every line the buffers hold now, handed to `line` one by one;
    /// returns when the pipe is empty.
    pub(crate) fn drain(&mut self, line: &mut dyn FnMut(&str)) -> Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        let pipe = self.pipe.as_mut().context("the trace pipe is closed")?;
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the trace pipe"),
            };
            self.carry.extend_from_slice(&buf[..n]);
            let end = match self.carry.iter().rposition(|b| *b == b'\n') {
                Some(end) => end,
                None => continue,
            };
            for l in self.carry[..end].split(|b| *b == b'\n') {
                line(&String::from_utf8_lossy(l));
            }
            self.carry.drain(..=end);
        }
    }

    /// Events the kernel lost in this instance since it was made, all
    /// CPUs together: overwritten before they were read (`overrun`) or
    /// refused (`dropped events`, where the kernel counts them).
    pub(crate) fn lost(&self) -> Result<u64> {
        let per_cpu = self.dir.join("per_cpu");
        let mut lost = 0u64;
        for cpu in
            std::fs::read_dir(&per_cpu).with_context(|| format!("listing {}", per_cpu.display()))?
        {
            let stats = cpu.context("listing the CPUs")?.path().join("stats");
            let text = std::fs::read_to_string(&stats)
                .with_context(|| format!("reading {}", stats.display()))?;
            lost += lost_in(&text);
        }
        Ok(lost)
    }
}

/// The lost events one CPU's `stats` counts.
fn lost_in(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| matches!(k.trim(), "overrun" | "commit overrun" | "dropped events"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("events/enable"), "0");
        drop(self.pipe.take());
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!("removing the trace instance {}: {e}", self.dir.display());
        }
    }
}

/// Instances left by senders that were killed (SIGKILL leaves them):
/// removed when their process is gone.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join("instances")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::write(e.path().join("events/enable"), "0");
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// A trace filter that keeps the events of these devices (the kernel's
/// `dev` is MAJOR << 20 | MINOR).
pub(crate) fn dev_filter(devs: &[(u32, u32)]) -> String {
    let mut terms: Vec<String> = devs
        .iter()
        .map(|(major, minor)| format!("dev == {}", (u64::from(*major) << 20) | u64::from(*minor)))
        .collect();
    terms.sort();
    terms.dedup();
    terms.join(" || ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_events_are_every_counter_of_loss() {
        let six = "entries: 125\noverrun: 3\ncommit overrun: 0\nbytes: 7284\n\
                   oldest event ts: 22023.060713\nnow ts: 22023.233769\n\
                   dropped events: 4\nread events: 44\n";
        assert_eq!(lost_in(six), 7);
        let old = "entries: 0\noverrun: 0\ncommit overrun: 0\nbytes: 0\n";
        assert_eq!(lost_in(old), 0);
    }

    #[test]
    fn the_filter_names_each_device_once() {
        assert_eq!(
            dev_filter(&[(7, 0), (8, 16), (7, 0)]),
            "dev == 7340032 || dev == 8388624"
        );
        assert_eq!(dev_filter(&[]), "");
    }
}
