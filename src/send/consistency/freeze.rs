//! Freezing a disk's mounted file systems for the final pass, and the
//! watchdog that thaws them whatever happens to the sender.
//!
//! A frozen file system blocks every writer of a running server, so a
//! thaw must follow on every path: [`Frozen::thaw`], its `Drop` (an error,
//! a panic), and for a sender that dies without either (SIGKILL, the OOM
//! killer) a watchdog process started before the freeze. It holds a pipe
//! from the sender and thaws when the pipe closes without a word, or when
//! the freeze has lasted longer than the sender may hold it.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;

use super::ioctl;
use super::mounts::MountedFs;
use crate::cmd::Cmd;
use crate::job::errors::{coded, ErrorCode};

/// How much longer than `--max-freeze` the watchdog waits before it thaws
/// a sender that is alive but stuck: the sender thaws by itself at its bound.
pub(crate) const WATCHDOG_GRACE: Duration = Duration::from_secs(5);

/// The subcommand the watchdog runs as (hidden from `ferry --help`).
pub(crate) const WATCHDOG_COMMAND: &str = "freeze-watchdog";

/// What the sender tells the watchdog once it has thawed by itself.
const RELEASE: &str = "thawed";
/// What the watchdog says once it holds every file system's directory.
const READY: &str = "ready";

/// How long one file system was frozen.
#[derive(Debug, Clone, Serialize)]
pub struct FreezeRecord {
    pub mount_point: PathBuf,
    pub source: String,
    pub fstype: String,
    /// When the freeze was asked for, in microseconds since the Unix epoch:
    /// everything durable before this instant is in the copy.
    pub frozen_at_unix_us: u64,
    pub frozen_seconds: f64,
}

struct Held {
    fs: MountedFs,
    dir: File,
    /// When it was frozen, while it is.
    since: Option<(Instant, u64)>,
}

/// File systems frozen by this process, thawed by [`Frozen::thaw`] or on drop.
pub struct Frozen {
    held: Vec<Held>,
    watchdog: Option<Watchdog>,
    records: Vec<FreezeRecord>,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn open_dir(point: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(point)
}

impl Frozen {
    /// Start the watchdog, then freeze each file system in turn. A failure
    /// thaws those already frozen.
    pub fn freeze(fss: &[MountedFs], max_freeze: Duration) -> Result<Frozen> {
        let mut held = Vec::new();
        for fs in fss {
            let dir = open_dir(fs.mount_point()).map_err(|e| {
                coded(
                    ErrorCode::FreezeFailed,
                    format!("opening {}: {e}", fs.describe()),
                )
            })?;
            held.push(Held {
                fs: fs.clone(),
                dir,
                since: None,
            });
        }
        let points: Vec<PathBuf> = fss.iter().map(|f| f.mount_point().to_owned()).collect();
        let watchdog = Watchdog::start(&points, max_freeze + WATCHDOG_GRACE)?;
        let mut frozen = Frozen {
            held,
            watchdog: Some(watchdog),
            records: Vec::new(),
        };
        for h in &mut frozen.held {
            let at = unix_us();
            let started = Instant::now();
            if let Err(e) = ioctl::freeze(&h.dir) {
                let err = coded(
                    ErrorCode::FreezeFailed,
                    format!("freezing {}: {}", h.fs.describe(), e.desc()),
                );
                if let Err(t) = frozen.impl_thaw() {
                    tracing::error!("thawing after a failed freeze: {t:#}");
                }
                return Err(err);
            }
            h.since = Some((started, at));
            tracing::debug!(mount_point = %h.fs.mount_point().display(), "frozen");
        }
        Ok(frozen)
    }

    /// The file systems frozen, for messages.
    pub fn describe(&self) -> String {
        self.held
            .iter()
            .map(|h| h.fs.describe())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How long the first file system has been frozen.
    pub fn elapsed(&self) -> Duration {
        self.held
            .iter()
            .filter_map(|h| h.since.map(|(s, _)| s.elapsed()))
            .max()
            .unwrap_or_default()
    }

    /// Thaw every file system and say how long each was frozen.
    pub fn thaw(mut self) -> Result<Vec<FreezeRecord>> {
        self.impl_thaw()?;
        Ok(std::mem::take(&mut self.records))
    }

    fn impl_thaw(&mut self) -> Result<()> {
        let mut first_error = None;
        for h in self.held.iter_mut().rev() {
            let Some((started, at)) = h.since.take() else {
                continue;
            };
            match ioctl::thaw(&h.dir) {
                // EINVAL: not frozen any more (the watchdog was quicker).
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => {
                    tracing::error!(mount_point = %h.fs.mount_point().display(), "thawing: {}", e.desc());
                    first_error.get_or_insert(coded(
                        ErrorCode::FreezeFailed,
                        format!("thawing {}: {}", h.fs.describe(), e.desc()),
                    ));
                    continue;
                }
            }
            self.records.push(FreezeRecord {
                mount_point: h.fs.mount_point().to_owned(),
                source: h.fs.source.clone(),
                fstype: h.fs.fstype.clone(),
                frozen_at_unix_us: at,
                frozen_seconds: started.elapsed().as_secs_f64(),
            });
        }
        self.records.reverse();
        match first_error {
            // The watchdog stays: it thaws what this process could not.
            Some(e) => Err(e),
            None => {
                if let Some(w) = self.watchdog.take() {
                    w.release();
                }
                Ok(())
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.held.iter().any(|h| h.since.is_some()) {
            tracing::warn!("thawing the file systems of an ended pass");
            if let Err(e) = self.impl_thaw() {
                tracing::error!("{e:#}");
            }
        }
    }
}

/// The watchdog process, seen from the sender.
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Start it and wait until it holds every file system's directory.
    fn start(points: &[PathBuf], deadline: Duration) -> Result<Watchdog> {
        let exe = std::env::current_exe().context("finding the sender's own executable")?;
        let mut child = Cmd::new(exe)
            .arg(WATCHDOG_COMMAND)
            .arg("--deadline-ms")
            .arg(deadline.as_millis().to_string())
            .arg("--")
            .args(points)
            .spawn_detached()
            .map_err(|e| coded(ErrorCode::FreezeFailed, format!("{e:#}")))?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        if line.trim() != READY {
            let _ = child.kill();
            let _ = child.wait();
            return Err(coded(
                ErrorCode::FreezeFailed,
                format!(
                    "the watchdog that thaws the file systems if the sender dies did not start ({read:?}, said {:?})",
                    line.trim()
                ),
            ));
        }
        Ok(Watchdog { child, stdin })
    }

    /// The sender has thawed: the watchdog may go.
    fn release(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{RELEASE}");
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        tracing::warn!("the freeze watchdog did not exit; leaving it");
    }
}

/// The watchdog itself (`ferry freeze-watchdog`): hold the file systems'
/// directories, say so, and wait for the sender's word. Without it — the
/// pipe closed, the sender gone, or the deadline past — thaw them all.
pub fn watch(deadline: Duration, points: &[PathBuf]) -> Result<()> {
    let dirs: Vec<(PathBuf, File)> = points
        .iter()
        .map(|p| {
            open_dir(p)
                .map(|d| (p.clone(), d))
                .with_context(|| format!("opening {}", p.display()))
        })
        .collect::<Result<_>>()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY}").context("telling the sender")?;
        out.flush().context("telling the sender")?;
    }
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let until = Instant::now() + deadline;
    let why = loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(l)) if l.trim() == RELEASE => return Ok(()),
            Ok(Some(_)) => continue,
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break "the sender ended without thawing"
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                break "the freeze lasted longer than the sender may hold it"
            }
        }
    };
    for (point, dir) in &dirs {
        match ioctl::thaw(dir) {
            Ok(()) => eprintln!("ferry freeze-watchdog: {why}: thawed {}", point.display()),
            Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => eprintln!(
                "ferry freeze-watchdog: {why}: thawing {} failed: {}",
                point.display(),
                e.desc()
            ),
        }
    }
    Ok(())
}
