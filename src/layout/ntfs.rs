//! NTFS, through ntfs-3g's tools: the kernel here has no NTFS driver, FUSE
//! works. A mount is a guard like the kernel mounts; growing is
//! `ntfsresize`, checking `ntfsfix --no-action`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::Cmd;

/// An NTFS volume mounted through ntfs-3g.
#[derive(Debug)]
pub(crate) struct NtfsMount {
    node: PathBuf,
    dir: Option<PathBuf>,
}

impl NtfsMount {
    /// Mount the NTFS on `node` at `dir` (which must exist).
    pub fn mount(node: &Path, dir: &Path, read_only: bool) -> Result<NtfsMount> {
        let mut c = Cmd::new("ntfs-3g");
        if read_only {
            c = c.args(["-o", "ro"]);
        }
        c.arg(node).arg(dir).run().with_context(|| {
            format!(
                "mounting the NTFS of {} on {}",
                node.display(),
                dir.display()
            )
        })?;
        Ok(NtfsMount {
            node: node.to_owned(),
            dir: Some(dir.to_owned()),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new("/"))
    }

    /// Unmount, and wait until ntfs-3g has let go of the device: it writes
    /// its last changes after the unmount returns.
    pub fn close(mut self) -> Result<()> {
        self.impl_close()
    }

    fn impl_close(&mut self) -> Result<()> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let mut last = None;
        for _ in 0..20 {
            match nix::mount::umount(&dir) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if let Some(e) = last {
            self.dir = Some(dir.clone());
            bail!("unmounting the NTFS at {}: {e}", dir.display());
        }
        wait_released(&self.node, Duration::from_secs(60))
    }
}

impl Drop for NtfsMount {
    fn drop(&mut self) {
        if let Err(e) = self.impl_close() {
            tracing::warn!("{e:#}");
        }
    }
}

/// Wait until no process holds `node` open (an ntfs-3g that is still
/// flushing after its unmount).
fn wait_released(node: &Path, limit: Duration) -> Result<()> {
    let node = std::fs::canonicalize(node).unwrap_or_else(|_| node.to_owned());
    let started = Instant::now();
    loop {
        let holders = holders_of(&node);
        if holders.is_empty() {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!(
                "{} is still held by processes {holders:?} after the NTFS was unmounted",
                node.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn holders_of(node: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == node))
        {
            out.push(pid);
        }
    }
    out
}

/// Grow the NTFS on `node` to fill its partition, then check it.
pub(crate) fn resize(node: &Path) -> Result<()> {
    // --force: the volume of a live copy is marked in use by Windows; the
    // partition already has its new size, which ntfsresize fills.
    Cmd::new("ntfsresize")
        .args(["--force", "--no-progress-bar"])
        .arg(node)
        .stdin_bytes(b"y\n".to_vec())
        .run()
        .with_context(|| format!("growing the NTFS of {}", node.display()))?;
    check(node)
}

/// `ntfsfix --no-action`: reports what it would fix, writes nothing.
pub fn check(node: &Path) -> Result<()> {
    Cmd::new("ntfsfix")
        .arg("--no-action")
        .arg(node)
        .run()
        .with_context(|| format!("checking the NTFS of {}", node.display()))?;
    Ok(())
}
