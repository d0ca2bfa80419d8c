//! SELinux labels for what the repair wrote, from the migrated system's own
//! policy, instead of a full relabel at its first boot (which takes tens
//! of minutes to hours on a large server before it is reachable).
//!
//! The appliance runs without SELinux: every file the repair or the
//! system's tools in the sandbox write (a file replaced atomically is a new
//! inode) carries no `security.selinux` attribute. Where the migrated file
//! systems carry labels (a block copy, or a file copy that kept them),
//! those files get the label the policy's `file_contexts` gives their path,
//! read here the way libselinux reads it; where labels are missing
//! altogether, the first boot relabels everything (`/.autorelabel`), and
//! the report says why.
//!
//! libselinux's rules, kept here: the specifications of `file_contexts`,
//! then `file_contexts.homedirs`, then `file_contexts.local`, each regex
//! anchored at both ends; those without regex characters (exact paths)
//! take precedence over all others, and among each kind the last that
//! matches the path and the file's type wins; `<<none>>` means "leave
//! unlabelled"; a path is first rewritten by the `file_contexts.subs_dist`
//! and then the `file_contexts.subs` aliases (`/lib64 /usr/lib`).

use anyhow::{Context, Result};
use regex::Regex;

use super::detect::{parse_assignments, unquote, SelinuxMode};
use super::tree::Tree;

/// The attribute that holds a file's label.
pub const XATTR: &str = "security.selinux";

/// A file's type, as `file_contexts` names them (`--`, `-d`, `-l`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    fn from_flag(f: &str) -> Option<Kind> {
        Some(match f {
            "--" => Kind::File,
            "-d" => Kind::Dir,
            "-l" => Kind::Link,
            "-c" => Kind::Char,
            "-b" => Kind::Block,
            "-p" => Kind::Fifo,
            "-s" => Kind::Socket,
            _ => return None,
        })
    }

    pub fn of(meta: &std::fs::Metadata) -> Kind {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_symlink() {
            Kind::Link
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_char_device() {
            Kind::Char
        } else if t.is_block_device() {
            Kind::Block
        } else if t.is_fifo() {
            Kind::Fifo
        } else if t.is_socket() {
            Kind::Socket
        } else {
            Kind::File
        }
    }
}

#[derive(Debug)]
struct Spec {
    regex: Regex,
    kind: Option<Kind>,
    /// None: `<<none>>`.
    context: Option<String>,
}

/// A policy's file contexts.
#[derive(Debug, Default)]
pub struct FileContexts {
    /// In lookup order reversed: the regex specifications, then the exact
    /// ones (the last that matches wins).
    specs: Vec<Spec>,
    dist_subs: Vec<(String, String)>,
    subs: Vec<(String, String)>,
    /// Lines that could not be read (kept for the report).
    pub skipped: Vec<String>,
}

/// Does a specification's path hold regex characters (libselinux's test:
/// an escaped character is literal)?
fn has_meta(re: &str) -> bool {
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '.' | '^' | '$' | '?' | '*' | '+' | '|' | '[' | '(' | '{' => return true,
            _ => {}
        }
    }
    false
}

fn parse_subs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

/// The first alias whose source is the path or a directory above it.
fn substitute(subs: &[(String, String)], path: &str) -> Option<String> {
    subs.iter().find_map(|(from, to)| {
        let rest = path.strip_prefix(from.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then(|| format!("{to}{rest}"))
    })
}

impl FileContexts {
    /// Specifications from `files` in order (the main file, homedirs,
    /// local), and the aliases.
    pub fn parse(files: &[&str], dist_subs: &str, subs: &str) -> FileContexts {
        let mut meta = Vec::new();
        let mut exact = Vec::new();
        let mut skipped = Vec::new();
        for text in files {
            for line in text.lines() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let fields: Vec<&str> = l.split_whitespace().collect();
                let (re, kind, context) = match fields[..] {
                    [re, ctx] => (re, None, ctx),
                    [re, flag, ctx] => match Kind::from_flag(flag) {
                        Some(k) => (re, Some(k), ctx),
                        None => {
                            skipped.push(l.to_owned());
                            continue;
                        }
                    },
                    _ => {
                        skipped.push(l.to_owned());
                        continue;
                    }
                };
                let Ok(regex) = Regex::new(&format!("^(?:{re})$")) else {
                    skipped.push(l.to_owned());
                    continue;
                };
                let spec = Spec {
                    regex,
                    kind,
                    context: (context != "<<none>>").then(|| context.to_owned()),
                };
                if has_meta(re) {
                    meta.push(spec);
                } else {
                    exact.push(spec);
                }
            }
        }
        meta.extend(exact);
        FileContexts {
            specs: meta,
            dist_subs: parse_subs(dist_subs),
            subs: parse_subs(subs),
            skipped,
        }
    }

    /// The policy's file contexts in the migrated system, if it has them.
    pub fn load(tree: &Tree, policy: &str) -> Result<Option<FileContexts>> {
        let dir = format!("/etc/selinux/{policy}/contexts/files");
        let Some(main) = tree.read(&format!("{dir}/file_contexts"))? else {
            return Ok(None);
        };
        let homedirs = tree
            .read(&format!("{dir}/file_contexts.homedirs"))?
            .unwrap_or_default();
        let local = tree
            .read(&format!("{dir}/file_contexts.local"))?
            .unwrap_or_default();
        let dist_subs = tree
            .read(&format!("{dir}/file_contexts.subs_dist"))?
            .unwrap_or_default();
        let subs = tree
            .read(&format!("{dir}/file_contexts.subs"))?
            .unwrap_or_default();
        Ok(Some(FileContexts::parse(
            &[&main, &homedirs, &local],
            &dist_subs,
            &subs,
        )))
    }

    /// The label the policy gives `path` (an absolute path in the migrated
    /// system) of type `kind`; None for `<<none>>` or no specification.
    pub fn lookup(&self, path: &str, kind: Kind) -> Option<&str> {
        let path = substitute(&self.dist_subs, path).unwrap_or_else(|| path.to_owned());
        let path = substitute(&self.subs, &path).unwrap_or(path);
        self.specs
            .iter()
            .rev()
            .find(|s| s.kind.is_none_or(|k| k == kind) && s.regex.is_match(&path))
            .and_then(|s| s.context.as_deref())
    }
}

/// The policy named by `SELINUXTYPE` in `/etc/selinux/config`.
pub fn policy_name(tree: &Tree) -> Result<String> {
    let text = tree.read("/etc/selinux/config")?.unwrap_or_default();
    Ok(parse_assignments(&text)
        .into_iter()
        .rev()
        .find(|(k, _)| k == "SELINUXTYPE")
        .map(|(_, v)| unquote(&v))
        .unwrap_or_else(|| "targeted".to_owned()))
}

/// A path's label, if it has one.
pub fn label_of(host: &std::path::Path) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    let n = rustix::fs::lgetxattr(host, XATTR, &mut buf[..]).ok()?;
    let v = &buf[..n];
    let v = v.strip_suffix(&[0]).unwrap_or(v);
    Some(String::from_utf8_lossy(v).into_owned())
}

/// Set a path's label (without following a last symlink), with the NUL
/// libselinux writes after it.
pub fn set_label(host: &std::path::Path, context: &str) -> Result<()> {
    let mut v = context.as_bytes().to_vec();
    v.push(0);
    rustix::fs::lsetxattr(host, XATTR, &v, rustix::fs::XattrFlags::empty())
        .with_context(|| format!("labelling {} {context}", host.display()))
}

/// How the repair deals with labels.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// SELinux is not in use.
    None,
    /// Label what the repair writes from this policy (its file contexts
    /// are read once, by the labelling step).
    Label { policy: String },
    /// Relabel at first boot, for this reason.
    Relabel(String),
}

/// Decide: labels where the file systems carry them and the policy has
/// its file contexts, else a relabel at the first boot.
pub fn plan(tree: &Tree, mode: SelinuxMode) -> Result<Plan> {
    if matches!(mode, SelinuxMode::Absent | SelinuxMode::Disabled) {
        return Ok(Plan::None);
    }
    let policy = policy_name(tree)?;
    let labelled = ["/etc", "/"]
        .iter()
        .any(|p| tree.path(p).ok().and_then(|h| label_of(&h)).is_some());
    if !labelled {
        return Ok(Plan::Relabel(
            "the migrated file systems carry no SELinux labels (a copy that did not keep security.selinux): the first boot relabels every file".to_owned(),
        ));
    }
    if tree.exists(&format!(
        "/etc/selinux/{policy}/contexts/files/file_contexts"
    )) {
        Ok(Plan::Label { policy })
    } else {
        Ok(Plan::Relabel(format!(
            "the policy {policy} has no contexts/files/file_contexts in the migrated system: the first boot relabels every file"
        )))
    }
}

/// The name of the labelling step in the report.
pub const STEP: &str = "selinux-labels";

/// Where the repair and the tools it runs write: every file without a
/// label there is one of theirs.
const WRITTEN_UNDER: &[&str] = &["/etc", "/boot", "/var/lib/ferry", "/var/cache/debconf"];

/// Every path under `rel` (not crossing symlinks), with its host path.
fn walk(tree: &Tree, rel: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
    let Ok(host) = tree.path(rel) else { return };
    let mut stack = vec![(rel.trim_end_matches('/').to_owned(), host)];
    while let Some((r, h)) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&h) else {
            continue;
        };
        let is_dir = meta.is_dir();
        out.push((
            if r.is_empty() {
                "/".to_owned()
            } else {
                r.clone()
            },
            h.clone(),
        ));
        if !is_dir {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&h) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            stack.push((format!("{r}/{name}"), e.path()));
        }
    }
}

/// The labelling step, at the end of the repair: every file without a
/// label where the repair writes (and each path it reported writing, and
/// the directories above them) gets the label the policy gives it. A file
/// that has a label keeps it, even one the policy would not give: the
/// administrator's `chcon` stays. A file system without labels (an ESP's
/// vfat) is passed over.
pub(crate) fn label_step(
    ctx: &mut super::engine::StepCtx,
    contexts: &FileContexts,
    written: &[String],
) -> Result<()> {
    let mut candidates: Vec<(String, std::path::PathBuf)> = Vec::new();
    for dir in WRITTEN_UNDER {
        walk(ctx.tree, dir, &mut candidates);
    }
    // What the repair reported writing (and the directories it made for
    // them) is reported labelled; the rest are files the system's tools
    // rewrote (grub-install's modules on every run, identical), labelled
    // and counted in a note, as the identical rewrite was.
    let mut reported: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for p in written {
        let mut rel = p.as_str();
        loop {
            let (parent, name) = super::tree::split(rel);
            if name.is_empty() {
                break;
            }
            if let Ok(h) = ctx.tree.path(parent) {
                candidates.push((rel.to_owned(), h.join(name)));
            }
            reported.insert(rel.to_owned());
            rel = parent;
        }
    }
    candidates.sort();
    candidates.dedup();
    let (mut labelled, mut rewritten, mut unsupported, mut none) = (0usize, 0usize, 0usize, 0usize);
    for (rel, host) in candidates {
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        match rustix::fs::lgetxattr(&host, XATTR, &mut [0u8; 256][..]) {
            Ok(_) => continue,
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::RANGE) => {}
            Err(rustix::io::Errno::NOTSUP) => {
                unsupported += 1;
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading the label of {rel}"));
            }
        }
        let Some(context) = contexts.lookup(&rel, Kind::of(&meta)) else {
            none += 1;
            continue;
        };
        let context = context.to_owned();
        if reported.contains(&rel) {
            ctx.label(&rel, &host, &context)?;
            labelled += 1;
        } else {
            if ctx.apply() {
                set_label(&host, &context)?;
            }
            rewritten += 1;
        }
    }
    if labelled > 0 {
        ctx.note(format!(
            "{labelled} files the repair wrote labelled from the policy's file_contexts"
        ));
    }
    if rewritten > 0 {
        ctx.note(format!(
            "{rewritten} files the system's tools wrote (grub.cfg, the initramfs, GRUB's modules) labelled from the policy's file_contexts"
        ));
    }
    if unsupported > 0 {
        ctx.note(format!(
            "{unsupported} files on file systems without labels (an ESP) left as they are"
        ));
    }
    if none > 0 {
        ctx.note(format!(
            "{none} files the policy leaves unlabelled (<<none>>, or no specification)"
        ));
    }
    if !contexts.skipped.is_empty() {
        ctx.note(format!(
            "{} lines of file_contexts could not be read and were passed over: {}",
            contexts.skipped.len(),
            contexts
                .skipped
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FC: &str = r#"
# a policy's file_contexts, as semodule writes it
/.*				system_u:object_r:default_t:s0
/etc(/.*)?			system_u:object_r:etc_t:s0
/etc/fstab		--	system_u:object_r:fstab_t:s0
/etc/systemd/system(/.*)?	system_u:object_r:systemd_unit_t:s0
/usr/lib/systemd/system(/.*)?	system_u:object_r:systemd_unit_t:s0
/etc/sysconfig/network-scripts(/.*)?	system_u:object_r:net_conf_t:s0
/boot(/.*)?			system_u:object_r:boot_t:s0
/boot/grub2/grubenv	--	system_u:object_r:boot_t:s0
/etc/selinux/.*		--	system_u:object_r:selinux_config_t:s0
/etc/selinux/config	--	system_u:object_r:selinux_config_t:s0
/etc/l[a-z]+		--	system_u:object_r:etc_t:s0
/etc/link		-l	system_u:object_r:link_t:s0
/tmp/.*				<<none>>
/var/broken(		system_u:object_r:x_t:s0
"#;

    fn contexts() -> FileContexts {
        FileContexts::parse(
            &[FC, "", "/etc/fstab\t--\tsystem_u:object_r:local_t:s0\n"],
            "/lib64 /usr/lib\n/etc/systemd/system /usr/lib/systemd/system\n",
            "",
        )
    }

    #[test]
    fn lookups_follow_libselinux() {
        let fc = contexts();
        let cases: &[(&str, Kind, Option<&str>)] = &[
            // Exact specifications win over regexes, and a later one
            // (file_contexts.local) over an earlier.
            (
                "/etc/fstab",
                Kind::File,
                Some("system_u:object_r:local_t:s0"),
            ),
            // ...for their file type only.
            ("/etc/fstab", Kind::Dir, Some("system_u:object_r:etc_t:s0")),
            (
                "/etc/default/grub",
                Kind::File,
                Some("system_u:object_r:etc_t:s0"),
            ),
            (
                "/etc/sysconfig/network-scripts/ifcfg-eth0",
                Kind::File,
                Some("system_u:object_r:net_conf_t:s0"),
            ),
            (
                "/etc/systemd/system/multi-user.target.wants/x.service",
                Kind::Link,
                Some("system_u:object_r:systemd_unit_t:s0"),
            ),
            (
                "/boot/loader/entries/a.conf",
                Kind::File,
                Some("system_u:object_r:boot_t:s0"),
            ),
            (
                "/etc/selinux/config",
                Kind::File,
                Some("system_u:object_r:selinux_config_t:s0"),
            ),
            // Anchored at both ends: /etc/lx matches [a-z]+, /etc/l does not.
            ("/etc/lx", Kind::File, Some("system_u:object_r:etc_t:s0")),
            ("/etc/link", Kind::Link, Some("system_u:object_r:link_t:s0")),
            ("/etc/link", Kind::File, Some("system_u:object_r:etc_t:s0")),
            // Aliases: /lib64/x is labelled as /usr/lib/x.
            (
                "/lib64/x",
                Kind::File,
                Some("system_u:object_r:default_t:s0"),
            ),
            ("/tmp/x", Kind::File, None),
            ("/var/x", Kind::File, Some("system_u:object_r:default_t:s0")),
        ];
        for (path, kind, want) in cases {
            assert_eq!(fc.lookup(path, *kind), *want, "{path} {kind:?}");
        }
        assert_eq!(fc.skipped, ["/var/broken(\t\tsystem_u:object_r:x_t:s0"]);
    }

    #[test]
    fn meta_characters_as_libselinux_counts_them() {
        assert!(!has_meta("/etc/fstab"));
        assert!(!has_meta("/boot/grub/grub\\.cfg"));
        assert!(has_meta("/etc/ld.so.cache"));
        assert!(has_meta("/etc(/.*)?"));
        assert!(has_meta("/dev/[shmxv]d[^/]*"));
    }
}
