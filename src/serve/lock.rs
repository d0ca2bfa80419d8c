//! One `ferry serve` per state directory: an exclusive `flock` on
//! `<state-dir>/lock`, which holds the PID of the process that has it.
//!
//! The kernel drops the lock when its holder dies, even by SIGKILL, so a
//! stale file never keeps the next start out; the PID in it is only for the
//! message that names who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The state directory's lock, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    file: Flock<File>,
    path: PathBuf,
}

impl StateLock {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("lock")
    }

    /// Take the lock if its file exists already, writing nothing: a second
    /// appliance is told so before it binds the ports (whose error would
    /// otherwise hide the cause). None when there is no lock file yet.
    pub(crate) fn take_existing(state_dir: &Path) -> Result<Option<StateLock>> {
        let path = Self::path(state_dir);
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Self::lock(file, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening the lock file {}", path.display())),
        }
    }

    /// Take the lock, creating its file (mode 0600) in an existing state
    /// directory, and write this process's PID into it.
    pub fn take(state_dir: &Path) -> Result<StateLock> {
        let path = Self::path(state_dir);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating the lock file {}", path.display()))?;
        let mut lock = Self::lock(file, path)?;
        lock.write_pid()?;
        Ok(lock)
    }

    /// Record this process's PID in a lock it holds.
    pub(crate) fn write_pid(&mut self) -> Result<()> {
        let pid = std::process::id();
        let path = &self.path;
        let f: &mut File = &mut self.file;
        f.set_len(0)
            .with_context(|| format!("emptying {}", path.display()))?;
        f.seek(SeekFrom::Start(0))
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(f, "{pid}").with_context(|| format!("writing {}", path.display()))?;
        f.sync_data()
            .with_context(|| format!("flushing {}", path.display()))
    }

    fn lock(file: File, path: PathBuf) -> Result<StateLock> {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(StateLock { file, path }),
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("process {pid}"),
                    Err(_) => "another process".to_owned(),
                };
                let dir = path.parent().unwrap_or(Path::new("."));
                anyhow::bail!(
                    "the state directory {} is in use by another ferry serve ({holder}, holding {}): \
                     stop it, or give this one another --state-dir",
                    dir.display(),
                    path.display()
                )
            }
            Err((_, errno)) => Err(anyhow::Error::new(errno))
                .with_context(|| format!("locking {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StateLock::take_existing(dir.path()).unwrap().is_none());
        let first = StateLock::take(dir.path()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(StateLock::path(dir.path()))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let err = StateLock::take(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the state directory {} is in use by another ferry serve (process {}, holding {}): \
                 stop it, or give this one another --state-dir",
                dir.path().display(),
                std::process::id(),
                StateLock::path(dir.path()).display()
            )
        );
        assert!(StateLock::take_existing(dir.path()).is_err());
        drop(first);
        let mut again = StateLock::take_existing(dir.path()).unwrap().unwrap();
        again.write_pid().unwrap();
    }
}
