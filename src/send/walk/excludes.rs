//! Exclude lists in the migration service's format: `rsync_excludes_linux.txt`
//! for the system disk and `rsync_excludes_linux_disk<N>.txt` for data disk
//! N, in an `Excludes` directory beside the sender (or `--excludes DIR`).
//! One path a line, relative to that file system's root (written with a
//! leading `/`, which may be left out), a trailing `/` for a directory only;
//! blank lines and lines starting with `#` are ignored. A path is taken as
//! it is written (no wildcards).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::job::errors::{coded, ErrorCode};

/// The paths one file system's list excludes.
#[derive(Debug, Default, Clone)]
pub struct Excludes {
    /// Excluded whatever they are.
    any: HashSet<Vec<u8>>,
    /// Excluded when they are directories (written with a trailing `/`).
    dirs: HashSet<Vec<u8>>,
    /// Where the list came from, for the report.
    pub source: Option<PathBuf>,
}

/// The list's file name for disk `disk` (0: the system disk).
pub fn file_name(disk: u32) -> String {
    if disk == 0 {
        "rsync_excludes_linux.txt".to_owned()
    } else {
        format!("rsync_excludes_linux_disk{disk}.txt")
    }
}

/// The default directory of the lists: `Excludes` beside the sender binary.
pub(crate) fn default_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("Excludes")))
}

impl Excludes {
    /// The list of disk `disk` in `dir`; none (nothing excluded) if the
    /// file does not exist.
    pub fn load(dir: &Path, disk: u32) -> Result<Excludes> {
        let path = dir.join(file_name(disk));
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Excludes::default()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the exclude list {}", path.display()))
            }
        };
        let mut ex = Excludes::parse(&text, &path.display().to_string())?;
        ex.source = Some(path);
        Ok(ex)
    }

    /// Parse a list; `name` names it in errors.
    pub fn parse(text: &[u8], name: &str) -> Result<Excludes> {
        let mut ex = Excludes::default();
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() || trimmed.starts_with(b"#") {
                continue;
            }
            let bad = |why: &str| {
                coded(
                    ErrorCode::ExcludesInvalid,
                    format!(
                        "{name} line {}: `{}` {why}",
                        i + 1,
                        crate::entry::display(line)
                    ),
                )
            };
            let mut p = line.strip_prefix(b"/").unwrap_or(line);
            let dir_only = p.ends_with(b"/");
            if dir_only {
                p = &p[..p.len() - 1];
            }
            if p.is_empty() {
                return Err(bad("excludes the whole file system"));
            }
            if let Err(why) = crate::entry::check_path(p) {
                return Err(bad(&why.to_string()));
            }
            if dir_only {
                ex.dirs.insert(p.to_vec());
            } else {
                ex.any.insert(p.to_vec());
            }
        }
        Ok(ex)
    }

    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.dirs.is_empty()
    }

    /// Is this path (a directory or not) excluded itself? The walk does not
    /// enter an excluded directory.
    pub fn excludes(&self, path: &[u8], is_dir: bool) -> bool {
        self.any.contains(path) || (is_dir && self.dirs.contains(path))
    }

    /// Is this path of the target, whatever it is, excluded or beneath an
    /// excluded path? Such a path is never removed from the target.
    pub fn covers(&self, path: &[u8]) -> bool {
        let mut end = path.len();
        loop {
            let p = &path[..end];
            if self.any.contains(p) || self.dirs.contains(p) {
                return true;
            }
            match p.iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faqs_example_and_its_rules() {
        let ex = Excludes::parse(
            b"# system disk\n/var/mydirs/docs/words/\n/var/mydirs/docs/excels/report1.txt\n\n  \nopt/cache\r\n",
            "rsync_excludes_linux.txt",
        )
        .unwrap();
        assert!(ex.excludes(b"var/mydirs/docs/words", true));
        assert!(!ex.excludes(b"var/mydirs/docs/words", false));
        assert!(ex.excludes(b"var/mydirs/docs/excels/report1.txt", false));
        assert!(ex.excludes(b"opt/cache", true));
        assert!(!ex.excludes(b"var/mydirs/docs", true));
        assert!(ex.covers(b"var/mydirs/docs/words/a/b"));
        assert!(ex.covers(b"opt/cache"));
        assert!(!ex.covers(b"var/mydirs/docs/wordsmith"));
        assert_eq!(file_name(0), "rsync_excludes_linux.txt");
        assert_eq!(file_name(2), "rsync_excludes_linux_disk2.txt");
    }

    #[test]
    fn a_malformed_line_names_the_file_and_line() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"/ok\n/var/../etc/shadow\n",
                "x.txt line 2: `/var/../etc/shadow` the path has a `..` component",
            ),
            (b"/\n", "x.txt line 1: `/` excludes the whole file system"),
            (
                b"a\n\n/a//b\n",
                "x.txt line 3: `/a//b` the path has an empty component",
            ),
            (
                b"/a/./b",
                "x.txt line 1: `/a/./b` the path has a `.` component",
            ),
        ];
        for (text, want) in cases {
            let e = Excludes::parse(text, "x.txt").unwrap_err();
            let (code, detail) = crate::job::errors::describe(&e);
            assert_eq!(code, ErrorCode::ExcludesInvalid);
            assert_eq!(detail, want);
        }
    }
}
