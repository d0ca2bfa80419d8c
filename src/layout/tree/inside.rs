//! Paths inside a mounted migrated root, resolved the way they would be
//! after a `chroot`: an absolute symlink (`/boot -> /etc`) or one that
//! climbs (`../../..`) stays inside the root, so neither a repair's write
//! nor a mount point of the migrated system's fstab reaches the
//! appliance's own files.

use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Symlinks followed while resolving one path, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// The host path of `rel` (an absolute path inside `root`), with every
/// symlink on the way resolved inside `root`. What does not exist yet is
/// taken as it is named.
pub fn resolve_inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let host = |inside: &Path| -> PathBuf {
        let rel = inside.strip_prefix("/").unwrap_or(inside);
        if rel.as_os_str().is_empty() {
            root.to_owned()
        } else {
            root.join(rel)
        }
    };
    let mut done = PathBuf::from("/");
    let mut todo: Vec<String> = components(rel);
    todo.reverse();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&c);
        let on_host = host(&candidate);
        match fs::symlink_metadata(&on_host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    bail!(
                        "too many levels of symbolic links resolving {rel} in {}",
                        root.display()
                    );
                }
                let target = fs::read_link(&on_host)
                    .with_context(|| format!("reading the link {}", on_host.display()))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    done = PathBuf::from("/");
                }
                let mut more = components(&target);
                more.reverse();
                todo.extend(more);
            }
            _ => done = candidate,
        }
    }
    Ok(host(&done))
}

fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("srv/data")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("boot")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("var")).unwrap();
        std::os::unix::fs::symlink("srv/data", root.join("home")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let cases: [(&str, PathBuf); 5] = [
            ("/boot", root.join("etc")),
            ("/var/lib", root.join("lib")),
            ("/home/user", root.join("srv/data/user")),
            ("/", root.to_owned()),
            ("/new/dir", root.join("new/dir")),
        ];
        for (rel, want) in cases {
            assert_eq!(resolve_inside(root, rel).unwrap(), want, "{rel}");
        }
        let err = format!("{:#}", resolve_inside(root, "/loop/x").unwrap_err());
        assert!(
            err.starts_with("too many levels of symbolic links resolving /loop/x"),
            "{err}"
        );
    }
}
