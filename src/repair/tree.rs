//! A migrated root seen from the appliance: paths inside it resolve the way
//! they would after a `chroot`, so an absolute symlink in the migrated system
//! (`/etc/resolv.conf -> /run/...`) never reaches the appliance's own files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The root directory of a migrated system.
#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    pub fn new(root: impl Into<PathBuf>) -> Tree {
        Tree { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `rel` (an absolute path inside the tree), with every
    /// symlink on the way resolved inside the tree.
    pub fn path(&self, rel: &str) -> Result<PathBuf> {
        crate::layout::tree::resolve_inside(&self.root, rel)
    }

    /// The file's text, or None when it does not exist. A file that is not
    /// UTF-8 is an error rather than a lossy copy that an edit would write
    /// back.
    pub fn read(&self, rel: &str) -> Result<Option<String>> {
        let p = self.path(rel)?;
        match fs::read(&p) {
            Ok(b) => String::from_utf8(b).map(Some).map_err(|_| {
                anyhow::anyhow!(
                    "{rel} in the migrated root is not UTF-8 text; ferry does not edit it"
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).map(|p| p.exists()).unwrap_or(false)
    }

    pub fn is_dir(&self, rel: &str) -> bool {
        self.path(rel).map(|p| p.is_dir()).unwrap_or(false)
    }

    /// Is the last component itself a symlink (not followed)?
    pub(crate) fn link_target(&self, rel: &str) -> Option<String> {
        let (parent, name) = split(rel);
        let p = self.path(parent).ok()?.join(name);
        fs::read_link(p)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }

    /// Names in a directory of the tree, sorted; empty when it does not exist.
    pub fn list(&self, rel: &str) -> Result<Vec<String>> {
        let p = self.path(rel)?;
        let rd = match fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", p.display())),
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e.with_context(|| format!("listing {}", p.display()))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Write a file atomically (temporary file, fsync, rename), keeping the
    /// mode and owner of the file it replaces; `new_mode` is for new files.
    pub fn write(&self, rel: &str, content: &[u8], new_mode: u32) -> Result<()> {
        let p = self.path(rel)?;
        let dir = p
            .parent()
            .with_context(|| format!("{} has no parent directory", p.display()))?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let old = fs::metadata(&p).ok();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.ferry-tmp"));
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(content)
            .with_context(|| format!("writing {}", tmp.display()))?;
        let (mode, owner) = match &old {
            Some(m) => (m.mode() & 0o7777, Some((m.uid(), m.gid()))),
            None => (new_mode, None),
        };
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .with_context(|| format!("setting the owner of {}", tmp.display()))?;
        }
        f.sync_all()
            .with_context(|| format!("flushing {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, &p)
            .with_context(|| format!("renaming {} to {}", tmp.display(), p.display()))?;
        if let Ok(d) = fs::File::open(dir) {
            // The rename is durable only once the directory is flushed.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Remove a file or symlink (not followed), or a directory tree.
    pub fn remove(&self, rel: &str) -> Result<()> {
        let (parent, name) = split(rel);
        let p = self.path(parent)?.join(name);
        let m = fs::symlink_metadata(&p).with_context(|| format!("inspecting {}", p.display()))?;
        if m.is_dir() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))
        } else {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
        }
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (fp, fname) = split(from);
        let (tp, tname) = split(to);
        let f = self.path(fp)?.join(fname);
        let t = self.path(tp)?.join(tname);
        fs::rename(&f, &t).with_context(|| format!("renaming {} to {}", f.display(), t.display()))
    }

    /// Create (or replace) a symlink at `rel` pointing to `target`.
    pub fn symlink(&self, rel: &str, target: &str) -> Result<()> {
        let (parent, name) = split(rel);
        let dir = self.path(parent)?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let p = dir.join(name);
        if fs::symlink_metadata(&p).is_ok() {
            fs::remove_file(&p).with_context(|| format!("replacing {}", p.display()))?;
        }
        std::os::unix::fs::symlink(target, &p)
            .with_context(|| format!("linking {} to {target}", p.display()))
    }
}

/// Split an absolute in-tree path into its parent and last name.
pub fn split(rel: &str) -> (&str, &str) {
    let t = rel.trim_end_matches('/');
    match t.rfind('/') {
        Some(0) => ("/", &t[1..]),
        Some(i) => (&t[..i], &t[i + 1..]),
        None => ("/", t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_links_stay_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let t = Tree::new(d.path());
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::create_dir_all(d.path().join("run")).unwrap();
        fs::write(d.path().join("run/real"), "inside").unwrap();
        std::os::unix::fs::symlink("/run/real", d.path().join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../run/real", d.path().join("etc/rel")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/host")).unwrap();
        assert_eq!(t.read("/etc/abs").unwrap().as_deref(), Some("inside"));
        assert_eq!(t.read("/etc/rel").unwrap().as_deref(), Some("inside"));
        assert_eq!(t.path("/etc/host").unwrap(), d.path().join("etc/passwd"));
        assert_eq!(t.read("/etc/host").unwrap(), None);
    }

    #[test]
    fn link_loops_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/b", d.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/a", d.path().join("b")).unwrap();
        let err = Tree::new(d.path()).path("/a/x").unwrap_err();
        assert!(format!("{err}").contains("too many levels of symbolic links"));
    }

    #[test]
    fn write_keeps_mode() {
        let d = tempfile::tempdir().unwrap();
        let t = Tree::new(d.path());
        t.write("/etc/x", b"one", 0o600).unwrap();
        let m = fs::metadata(d.path().join("etc/x")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        fs::set_permissions(d.path().join("etc/x"), fs::Permissions::from_mode(0o640)).unwrap();
        t.write("/etc/x", b"two", 0o600).unwrap();
        let m = fs::metadata(d.path().join("etc/x")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640);
        assert_eq!(fs::read_to_string(d.path().join("etc/x")).unwrap(), "two");
    }
}
