//! Boot Loader Specification entries (RHEL 8 and later, Fedora) and GRUB's
//! environment block, where EL8 keeps the command line its entries name as
//! `$kernelopts`.
//!
//! GRUB boots an entry with its `options` after expanding the variables of
//! the environment block (`load_env` in grub.cfg), so the command line that
//! reaches the kernel is neither the entry's text nor `grubenv` alone. The
//! repair computes that effective line before and after, and puts each
//! argument where the entry takes it: into `kernelopts` when the entry
//! names it, into the entry's own `options` otherwise — never both, so an
//! argument is never given twice.
//!
//! `grubby` is not run: the files it would edit are written here exactly,
//! and what grubby does to them differs between releases (EL8's rewrites
//! `kernelopts`, EL 9.3's entries' `options`), so the result would depend
//! on which grubby the server has. What is written is read back and checked
//! after `grub2-mkconfig` ran (see `check_entries`).

use anyhow::{bail, Result};

use super::cmdline::fix_args;
use super::config::name_roots;
use crate::job::errors::{coded, Code, ErrorCode};
use crate::repair::detect::unquote;
use crate::repair::devices::DeviceMap;
use crate::repair::engine::StepCtx;

/// Where the RHEL family keeps GRUB's environment block (on EL8 UEFI a
/// symlink into the ESP, followed inside the migrated root).
pub(crate) const GRUBENV: &str = "/boot/grub2/grubenv";
/// The Boot Loader Specification entries.
pub(crate) const ENTRIES: &str = "/boot/loader/entries";

const HEADER: &str = "# GRUB Environment Block\n";
/// The size grub-editenv gives a new block; GRUB rewrites a block in place
/// and never changes its size.
const BLOCK: usize = 1024;

/// GRUB's environment block: a fixed header, `name=value` lines (a
/// backslash escapes the next character, so a value can hold a newline),
/// padded with `#` to the block's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrubEnv {
    vars: Vec<(String, String)>,
    size: usize,
}

impl GrubEnv {
    pub(crate) fn new() -> GrubEnv {
        GrubEnv {
            vars: Vec::new(),
            size: BLOCK,
        }
    }

    /// Parse a block as GRUB reads it: `#` lines are padding, a line
    /// without `=` ends the variables.
    pub(crate) fn parse(text: &str) -> Result<GrubEnv> {
        let Some(body) = text.strip_prefix(HEADER) else {
            bail!("it does not start with GRUB's header `# GRUB Environment Block`");
        };
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            if rest.starts_with('#') || rest.starts_with('\n') {
                rest = rest.split_once('\n').map(|x| x.1).unwrap_or("");
                continue;
            }
            let Some((name, after)) = rest.split_once('=') else {
                break;
            };
            if name.contains('\n') {
                bail!(
                    "a line without `=`: {:?}",
                    name.lines().next().unwrap_or("")
                );
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\n' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            vars.retain(|(k, _)| k != name);
            vars.push((name.to_owned(), value));
            rest = &after[end.min(after.len())..];
        }
        Ok(GrubEnv {
            vars,
            size: text.len().max(BLOCK),
        })
    }

    /// The variables in the block's order.
    #[cfg(test)]
    pub(crate) fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set a variable, in place when it exists, last otherwise.
    pub(crate) fn set(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.vars.push((name.to_owned(), value.to_owned())),
        }
    }

    /// The block as GRUB and grub-editenv write it, padded to its size.
    pub(crate) fn render(&self) -> Result<String> {
        let mut out = String::from(HEADER);
        for (k, v) in &self.vars {
            out.push_str(k);
            out.push('=');
            for c in v.chars() {
                if c == '\\' || c == '\n' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('\n');
        }
        if out.len() > self.size {
            bail!(
                "its variables need {} bytes, more than the block's {}",
                out.len(),
                self.size
            );
        }
        out.push_str(&"#".repeat(self.size - out.len()));
        Ok(out)
    }
}

/// The values of an entry's `options` lines (the specification allows
/// several; they are joined).
fn options(entry: &str) -> Vec<&str> {
    entry
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("options")?;
            rest.starts_with(char::is_whitespace).then(|| rest.trim())
        })
        .collect()
}

/// The variable a token names when it is `$name` or `${name}`.
fn var_name(token: &str) -> Option<&str> {
    let t = token.strip_prefix('$')?;
    let name = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(t);
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

/// Does the entry take its command line from `$kernelopts`?
fn uses_kernelopts(entry: &str) -> bool {
    options(entry)
        .iter()
        .flat_map(|o| o.split_whitespace())
        .any(|t| var_name(t) == Some("kernelopts"))
}

/// The command line GRUB gives the kernel for this entry: its options with
/// `$name` and `${name}` replaced by the block's values (an unset one by
/// nothing), spaces collapsed.
pub(crate) fn effective(entry: &str, env: &GrubEnv) -> String {
    let mut out: Vec<&str> = Vec::new();
    for t in options(entry).iter().flat_map(|o| o.split_whitespace()) {
        match var_name(t) {
            Some(name) => out.extend(env.get(name).unwrap_or("").split_whitespace()),
            None => out.push(t),
        }
    }
    out.join(" ")
}

/// One entry's options line rewritten: its literal arguments fixed (with
/// the recipe's `add` when the entry carries its own command line), its
/// variables kept where they stood (those before the first literal before
/// it, the others after).
fn rewrite_options(value: &str, map: &DeviceMap, add: &[String], via_env: bool) -> String {
    let tokens: Vec<&str> = value.split_whitespace().collect();
    let first_literal = tokens
        .iter()
        .position(|t| !t.contains('$'))
        .unwrap_or(tokens.len());
    let literal: Vec<&str> = tokens
        .iter()
        .copied()
        .filter(|t| !t.contains('$'))
        .collect();
    let fixed = if via_env {
        // The recipe's arguments are in kernelopts; the same keys here
        // would be given twice.
        let keys: Vec<String> = add
            .iter()
            .map(|a| format!("{}=", a.split('=').next().unwrap_or(a)))
            .collect();
        fix_args(&literal.join(" "), map, &[])
            .split_whitespace()
            .filter(|a| {
                !keys.iter().any(|k| a.starts_with(k.as_str())) && !add.contains(&(*a).to_owned())
            })
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        fix_args(&literal.join(" "), map, add)
    };
    let mut out: Vec<&str> = tokens[..first_literal].to_vec();
    out.extend(fixed.split_whitespace());
    out.extend(
        tokens[first_literal..]
            .iter()
            .copied()
            .filter(|t| t.contains('$')),
    );
    out.join(" ")
}

/// An entry with every `options` line rewritten (the recipe's arguments
/// added to the first only).
fn rewrite_entry(text: &str, map: &DeviceMap, add: &[String], via_env: bool) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut first = true;
    for l in text.lines() {
        match l.strip_prefix("options") {
            Some(rest) if rest.starts_with(char::is_whitespace) => {
                let add: &[String] = if first { add } else { &[] };
                first = false;
                out.push_str(&format!(
                    "options {}",
                    rewrite_options(rest.trim(), map, add, via_env)
                ));
            }
            _ => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

/// What the repair of the entries gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlsRepair {
    /// Each entry's name and its new text.
    pub entries: Vec<(String, String)>,
    /// The new environment block, when an entry takes `$kernelopts`.
    pub grubenv: Option<String>,
    /// Each entry's effective command line before and after.
    pub lines: Vec<Effective>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effective {
    pub entry: String,
    pub before: String,
    pub after: String,
}

/// Repair the entries (name, text) and the environment block (None when
/// the system has none). `fallback` is the command line for `kernelopts`
/// when an entry names it and the block has none: what grub2-mkconfig of
/// EL8 puts there (the root, `ro`, GRUB_CMDLINE_LINUX).
pub(crate) fn repair(
    entries: &[(String, String)],
    grubenv: Option<&str>,
    map: &DeviceMap,
    add: &[String],
    fallback: impl FnOnce() -> Result<String>,
) -> Result<BlsRepair> {
    let old_env = match grubenv {
        Some(t) => GrubEnv::parse(t).map_err(|e| {
            anyhow::anyhow!(
                "{GRUBENV} is not a GRUB environment block: {e}; recreate it in the source with `grub2-editenv {GRUBENV} create` and send again"
            )
        })?,
        None => GrubEnv::new(),
    };
    let mut env = old_env.clone();
    let via_env = entries.iter().any(|(_, t)| uses_kernelopts(t));
    if via_env {
        let base = match old_env.get("kernelopts") {
            Some(k) => k.to_owned(),
            None => fallback()?,
        };
        env.set("kernelopts", &fix_args(&base, map, add));
    }
    let mut out = BlsRepair {
        entries: Vec::new(),
        grubenv: None,
        lines: Vec::new(),
    };
    for (name, text) in entries {
        let new = rewrite_entry(text, map, add, uses_kernelopts(text));
        out.lines.push(Effective {
            entry: name.clone(),
            before: effective(text, &old_env),
            after: effective(&new, &env),
        });
        out.entries.push((name.clone(), new));
    }
    if via_env {
        out.grubenv = Some(
            env.render()
                .map_err(|e| anyhow::anyhow!("the repaired {GRUBENV} does not fit: {e}"))?,
        );
    }
    Ok(out)
}

/// What is wrong with the entries' effective command lines: no `root=`, a
/// root by a kernel name the cloud does not have, a recipe argument missing.
pub(crate) fn check_entries(
    entries: &[(String, String)],
    env: &GrubEnv,
    required: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, text) in entries {
        let line = effective(text, env);
        let args: Vec<&str> = line.split_whitespace().collect();
        match args.iter().rev().find_map(|a| a.strip_prefix("root=")) {
            None => problems.push(format!("entry {name} boots without root=")),
            Some(r) if r.starts_with("/dev/") && !r.starts_with("/dev/mapper/") => {
                problems.push(format!("entry {name} boots root={r}, a kernel name"))
            }
            Some(_) => {}
        }
        for a in required {
            if !args.contains(&a.as_str()) {
                problems.push(format!("entry {name} lacks {a}"));
            }
        }
    }
    problems
}

/// The entries of the migrated system, by name (`*.conf` only).
fn read_entries(ctx: &StepCtx) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for name in ctx.tree.list(ENTRIES)? {
        if !name.ends_with(".conf") {
            continue;
        }
        if let Some(t) = ctx.tree.read(&format!("{ENTRIES}/{name}"))? {
            out.push((name, t));
        }
    }
    Ok(out)
}

/// The command line grub2-mkconfig of EL8 gives `kernelopts` when the
/// block has none: the migrated root by the name the system knows it by,
/// `ro`, and GRUB_CMDLINE_LINUX of the (repaired) defaults file.
fn kernelopts_fallback(map: &DeviceMap, defaults: &str) -> Result<String> {
    let root = map
        .by_mountpoint("/")
        .and_then(|v| {
            v.aliases
                .first()
                .map(|a| format!("root=/dev/{a}"))
                .or_else(|| v.uuid.as_ref().map(|u| format!("root=UUID={u}")))
        })
        .ok_or_else(|| {
            coded(
                ErrorCode::GrubFailed,
                "the boot entries take their command line from $kernelopts, which grubenv does not have, and the migrated root has neither a UUID nor a volume name to put there",
            )
        })?;
    let linux = defaults
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("GRUB_CMDLINE_LINUX="))
        .map(|v| unquote(v.trim()))
        .unwrap_or_default();
    Ok(format!("{root} ro {linux}"))
}

/// The grub-defaults step's part for BLS entries: each entry and the
/// environment block repaired, each entry's effective command line in the
/// report.
pub(crate) fn entries_step(
    ctx: &mut StepCtx,
    map: &DeviceMap,
    add: &[String],
    defaults: &str,
) -> Result<()> {
    let entries = read_entries(ctx)?;
    if entries.is_empty() {
        return Ok(());
    }
    let grubenv = ctx.tree.read(GRUBENV)?;
    let r = repair(&entries, grubenv.as_deref(), map, add, || {
        kernelopts_fallback(map, defaults)
    })
    .code(ErrorCode::GrubFailed)?;
    if let Some(env) = &r.grubenv {
        if grubenv.is_none() {
            ctx.note(format!(
                "the boot entries take $kernelopts and the system has no {GRUBENV}: written with the command line grub2-mkconfig would give"
            ));
        }
        ctx.write(GRUBENV, env, 0o644)?;
    }
    for (name, text) in &r.entries {
        ctx.write(&format!("{ENTRIES}/{name}"), text, 0o644)?;
    }
    for l in &r.lines {
        if l.before == l.after {
            ctx.note(format!("boot entry {} boots with: {}", l.entry, l.after));
        } else {
            ctx.note(format!(
                "boot entry {} boots with: {} (was: {})",
                l.entry,
                l.after,
                if l.before.is_empty() {
                    "nothing"
                } else {
                    &l.before
                }
            ));
        }
    }
    Ok(())
}

/// After the system's grub2-mkconfig ran (which on some releases rewrites
/// `kernelopts` or the entries' options from what it probes on the
/// appliance): a root named by an appliance node gets its stable name
/// back, and every entry's effective command line is checked.
pub(crate) fn verify_step(ctx: &mut StepCtx, map: &DeviceMap, required: &[String]) -> Result<()> {
    let entries = read_entries(ctx)?;
    if entries.is_empty() {
        return Ok(());
    }
    let mut fixed = Vec::with_capacity(entries.len());
    for (name, text) in entries {
        let named = name_roots(&text, map);
        if named != text {
            ctx.write(&format!("{ENTRIES}/{name}"), &named, 0o644)?;
        }
        fixed.push((name, named));
    }
    let env = match ctx.tree.read(GRUBENV)? {
        Some(t) => {
            let mut env = GrubEnv::parse(&t)
                .map_err(|e| anyhow::anyhow!("{GRUBENV} after grub2-mkconfig: {e}"))
                .code(ErrorCode::GrubFailed)?;
            if let Some(k) = env.get("kernelopts").map(str::to_owned) {
                let named = name_roots(&k, map);
                if named != k {
                    env.set("kernelopts", &named);
                    let text = env.render().code(ErrorCode::GrubFailed)?;
                    ctx.write(GRUBENV, &text, 0o644)?;
                }
            }
            env
        }
        None => GrubEnv::new(),
    };
    let problems = check_entries(&fixed, &env, required);
    if !problems.is_empty() {
        return Err(coded(
            ErrorCode::GrubFailed,
            format!(
                "the boot entries would not boot the migrated system: {}",
                problems.join("; ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repair::fstab::tests::map;

    fn add() -> Vec<String> {
        crate::repair::recipe::KernelArgs::default().add
    }

    const ROOT: &str = "root=UUID=22222222-2222-4222-8222-222222222222";
    const ADDED: &str = "console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0";

    fn block(vars: &str) -> String {
        let s = format!("{HEADER}{vars}");
        format!("{s}{}", "#".repeat(BLOCK - s.len()))
    }

    #[test]
    fn the_environment_block_reads_and_writes_as_grub_does() {
        let text = block("saved_entry=abc-4.18.0-348.el8.x86_64\nkernelopts=root=/dev/sda2 ro quiet\nboot_success=0\n");
        let env = GrubEnv::parse(&text).unwrap();
        assert_eq!(env.get("kernelopts"), Some("root=/dev/sda2 ro quiet"));
        assert_eq!(env.get("saved_entry"), Some("abc-4.18.0-348.el8.x86_64"));
        assert_eq!(env.render().unwrap(), text, "unchanged, byte for byte");
        let mut e = env.clone();
        e.set("kernelopts", "a\\b\nc");
        let r = e.render().unwrap();
        assert_eq!(r.len(), BLOCK);
        assert!(
            r.contains("kernelopts=a\\\\b\\\nc\nboot_success=0\n#"),
            "{r}"
        );
        assert_eq!(
            GrubEnv::parse(&r).unwrap().get("kernelopts"),
            Some("a\\b\nc")
        );
        // Too much for the block is an error, not a longer file GRUB would
        // not write back.
        e.set("kernelopts", &"x".repeat(1100));
        assert!(e
            .render()
            .unwrap_err()
            .to_string()
            .contains("more than the block's 1024"));
        assert!(GrubEnv::parse("kernelopts=x\n").is_err());
        // A block of another size keeps it.
        let big = format!("{HEADER}a=1\n{}", "#".repeat(2048 - HEADER.len() - 4));
        assert_eq!(GrubEnv::parse(&big).unwrap().render().unwrap(), big);
    }

    fn entry(options: &str) -> String {
        format!("title Rocky Linux (4.18.0-513.el8.x86_64) 8.9 (Green Obsidian)\nversion 4.18.0-513.el8.x86_64\nlinux /vmlinuz-4.18.0-513.el8.x86_64\ninitrd /initramfs-4.18.0-513.el8.x86_64.img $tuned_initrd\noptions {options}\nid rocky-20231113-4.18.0-513.el8.x86_64\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class rocky\n")
    }

    /// The tables: entries that take `$kernelopts`, literal options, and a
    /// block without `kernelopts`; each row the effective command line
    /// before and after, and the block's `kernelopts` after.
    #[test]
    fn effective_command_lines() {
        struct Row {
            name: &'static str,
            options: &'static str,
            env: Option<&'static str>,
            before: &'static str,
            after: String,
            kernelopts: Option<String>,
        }
        let rows = [
            Row {
                name: "EL8: $kernelopts from the block",
                options: "$kernelopts $tuned_params",
                env: Some("saved_entry=x\nkernelopts=root=/dev/sda2 ro crashkernel=auto resume=/dev/sda5 rhgb quiet \nboot_success=0\n"),
                before: "root=/dev/sda2 ro crashkernel=auto resume=/dev/sda5 rhgb quiet",
                after: format!("{ROOT} ro crashkernel=auto resume=UUID=55555555-5555-4555-8555-555555555555 rhgb quiet {ADDED}"),
                kernelopts: Some(format!("{ROOT} ro crashkernel=auto resume=UUID=55555555-5555-4555-8555-555555555555 rhgb quiet {ADDED}")),
            },
            Row {
                name: "EL8: $kernelopts and the tuned profile's arguments",
                options: "$kernelopts $tuned_params",
                env: Some("kernelopts=root=/dev/sda2 ro\ntuned_params=skew_tick=1 console=tty1\n"),
                before: "root=/dev/sda2 ro skew_tick=1 console=tty1",
                after: format!("{ROOT} ro {ADDED} skew_tick=1 console=tty1"),
                kernelopts: Some(format!("{ROOT} ro {ADDED}")),
            },
            Row {
                name: "EL8: a literal argument beside $kernelopts",
                options: "${kernelopts} console=tty1 nomodeset",
                env: Some("kernelopts=root=/dev/sda2 ro\n"),
                before: "root=/dev/sda2 ro console=tty1 nomodeset",
                after: format!("{ROOT} ro {ADDED} nomodeset"),
                kernelopts: Some(format!("{ROOT} ro {ADDED}")),
            },
            Row {
                name: "EL9: literal options",
                options: "root=/dev/sda2 ro resume=/dev/sdb1 rhgb quiet $tuned_params",
                env: Some("saved_entry=x\n"),
                before: "root=/dev/sda2 ro resume=/dev/sdb1 rhgb quiet",
                after: format!("{ROOT} ro rhgb quiet {ADDED}"),
                kernelopts: None,
            },
            Row {
                name: "EL8: $kernelopts and a block without it",
                options: "$kernelopts $tuned_params",
                env: Some("saved_entry=x\n"),
                before: "",
                after: format!("{ROOT} ro crashkernel=auto rhgb {ADDED}"),
                kernelopts: Some(format!("{ROOT} ro crashkernel=auto rhgb {ADDED}")),
            },
            Row {
                name: "EL8: $kernelopts and no block at all",
                options: "$kernelopts",
                env: None,
                before: "",
                after: format!("{ROOT} ro crashkernel=auto rhgb {ADDED}"),
                kernelopts: Some(format!("{ROOT} ro crashkernel=auto rhgb {ADDED}")),
            },
        ];
        for r in &rows {
            let text = entry(r.options);
            let env = r.env.map(block);
            let entries = vec![("e.conf".to_owned(), text.clone())];
            let fallback = || Ok(format!("{ROOT} ro crashkernel=auto rhgb"));
            let got = repair(&entries, env.as_deref(), &map(), &add(), fallback).unwrap();
            assert_eq!(got.lines[0].before, r.before, "{}: before", r.name);
            assert_eq!(got.lines[0].after, r.after, "{}: after", r.name);
            let new_env = got.grubenv.as_deref().map(|t| GrubEnv::parse(t).unwrap());
            assert_eq!(
                new_env
                    .as_ref()
                    .and_then(|e| e.get("kernelopts"))
                    .map(str::to_owned),
                r.kernelopts,
                "{}: kernelopts",
                r.name
            );
            if let Some(t) = &got.grubenv {
                assert_eq!(t.len(), BLOCK, "{}", r.name);
            }
            // Only the options line changes.
            for (a, b) in text.lines().zip(got.entries[0].1.lines()) {
                if !a.starts_with("options ") {
                    assert_eq!(a, b, "{}", r.name);
                }
            }
            // The repaired files pass the check and a second repair
            // changes nothing.
            let env_after = new_env
                .clone()
                .or_else(|| env.as_deref().map(|t| GrubEnv::parse(t).unwrap()))
                .unwrap_or_else(GrubEnv::new);
            assert_eq!(
                check_entries(&got.entries, &env_after, &add()),
                Vec::<String>::new(),
                "{}",
                r.name
            );
            let again = repair(
                &got.entries,
                got.grubenv.as_deref().or(env.as_deref()),
                &map(),
                &add(),
                || unreachable!("the block has kernelopts now"),
            )
            .unwrap();
            assert_eq!(again.entries, got.entries, "{}: idempotent", r.name);
            if uses_kernelopts(&text) {
                assert_eq!(again.grubenv, got.grubenv, "{}: idempotent", r.name);
            }
        }
    }

    #[test]
    fn what_the_check_finds() {
        let env = GrubEnv::parse(&block("kernelopts=root=/dev/sda2 ro\n")).unwrap();
        let entries = vec![
            ("a.conf".to_owned(), entry("$kernelopts")),
            ("b.conf".to_owned(), entry("ro quiet")),
        ];
        assert_eq!(
            check_entries(&entries, &env, &add()[..1]),
            [
                "entry a.conf boots root=/dev/sda2, a kernel name",
                "entry a.conf lacks console=tty0",
                "entry b.conf boots without root=",
                "entry b.conf lacks console=tty0",
            ]
        );
    }

    #[test]
    fn a_broken_block_is_refused_with_what_to_do() {
        let entries = vec![("a.conf".to_owned(), entry("$kernelopts"))];
        let err = repair(&entries, Some("kernelopts=x\n"), &map(), &add(), || {
            Ok(String::new())
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/boot/grub2/grubenv is not a GRUB environment block"),
            "{err}"
        );
        assert!(
            err.contains("grub2-editenv /boot/grub2/grubenv create"),
            "{err}"
        );
    }
}
