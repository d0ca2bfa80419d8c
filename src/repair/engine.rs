//! The step engine: every step reads the tree and asks for changes through a
//! [`StepCtx`], which writes them (apply) or only records them with a diff
//! (plan). What was recorded is the step's report, so the report can never
//! claim less or more than what was written.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::diff;
use super::tree::Tree;
use crate::cmd::Output;

/// Plan prints what would change and writes nothing; apply writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Plan,
    Apply,
}

/// Runs a command inside the migrated system (a chroot in production).
pub trait GuestRunner {
    /// Run it; a status other than 0 is an error.
    fn run(&self, argv: &[String]) -> Result<Output>;

    /// Run it within `timeout` (killed with all it started after it) and
    /// say how it ended: for a program whose failure is an outcome to
    /// report (the operator's hooks), not an error of the repair.
    fn run_bounded(&self, argv: &[String], timeout: std::time::Duration) -> Result<Bounded> {
        let _ = timeout;
        self.run(argv).map(|output| Bounded {
            code: Some(0),
            timed_out: false,
            output,
        })
    }
}

/// How a bounded command ended.
#[derive(Debug)]
pub struct Bounded {
    /// Its exit status (None: killed by a signal).
    pub code: Option<i32>,
    /// It ran out of its time and was killed.
    pub timed_out: bool,
    pub output: Output,
}

/// One thing a step changed (or, in plan mode, would change).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A file written, created or removed, with its unified diff.
    File {
        path: String,
        action: FileAction,
        diff: String,
    },
    /// A symlink created (systemd enable/mask).
    Symlink { path: String, target: String },
    /// A file renamed aside so that the system stops reading it.
    Rename { from: String, to: String },
    /// Something removed that is state, not configuration (cloud-init's cache).
    Removed { path: String },
    /// A command run in the migrated system.
    Command { argv: Vec<String>, why: String },
    /// An SELinux label set on a file the repair (or a tool it ran) wrote.
    Label { path: String, context: String },
    /// A registry value of a Windows hive set (`old` None: it was absent).
    Registry {
        hive: String,
        key: String,
        value: String,
        old: Option<String>,
        new: String,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Created,
    Modified,
    Removed,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Changed,
    Unchanged,
    Skipped,
}

/// What one step did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: String,
    pub status: Status,
    pub changes: Vec<Change>,
    /// Facts worth a reader's attention (what was found, why something was left).
    pub notes: Vec<String>,
    /// What the commands run in the migrated system printed, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<GuestOutput>,
}

/// The end of what one command run in the migrated system printed (its
/// hooks included), for the round's report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestOutput {
    pub argv: Vec<String>,
    pub stdout: String,
    pub stderr: String,
}

/// How much of each stream a report keeps (the end of it).
const REPORT_TAIL: usize = 16 << 10;

pub(crate) fn report_tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match crate::cmd::last_bytes(&text, REPORT_TAIL) {
        (end, false) => end.to_owned(),
        (end, true) => format!("[…]{end}"),
    }
}

/// The context a step works through.
pub struct StepCtx<'a> {
    pub tree: &'a Tree,
    pub mode: Mode,
    runner: Option<&'a dyn GuestRunner>,
    changes: Vec<Change>,
    notes: Vec<String>,
    /// Commands run that turned out to change nothing (hash before = after).
    skipped: bool,
    /// What the commands run in the migrated system printed.
    output: std::cell::RefCell<Vec<GuestOutput>>,
}

impl<'a> StepCtx<'a> {
    pub fn new(tree: &'a Tree, mode: Mode, runner: Option<&'a dyn GuestRunner>) -> StepCtx<'a> {
        StepCtx {
            tree,
            mode,
            runner,
            changes: Vec::new(),
            notes: Vec::new(),
            skipped: false,
            output: Default::default(),
        }
    }

    /// Run `argv` in the migrated system and keep the end of what it
    /// printed for the report.
    fn guest(&self, runner: &dyn GuestRunner, argv: &[String]) -> Result<Output> {
        let out = runner.run(argv)?;
        self.output.borrow_mut().push(GuestOutput {
            argv: argv.to_vec(),
            stdout: report_tail(&out.stdout),
            stderr: report_tail(&out.stderr),
        });
        Ok(out)
    }

    pub fn apply(&self) -> bool {
        self.mode == Mode::Apply
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    /// Mark the step as not applicable (reported as skipped).
    pub fn skip(&mut self, why: impl Into<String>) {
        self.skipped = true;
        self.notes.push(why.into());
    }

    /// Make the file at `path` hold `new`; returns whether it changed.
    pub fn write(&mut self, path: &str, new: &str, new_mode: u32) -> Result<bool> {
        let old = self.tree.read(path)?;
        if old.as_deref() == Some(new) {
            return Ok(false);
        }
        let d = diff::unified(path, old.as_deref(), Some(new));
        if self.apply() {
            self.tree
                .write(path, new.as_bytes(), new_mode)
                .with_context(|| format!("writing {path} in the migrated root"))?;
        }
        self.changes.push(Change::File {
            path: path.to_owned(),
            action: if old.is_some() {
                FileAction::Modified
            } else {
                FileAction::Created
            },
            diff: d,
        });
        Ok(true)
    }

    /// Record a file that a command of the migrated system wrote (grub.cfg),
    /// with its diff.
    pub(crate) fn record_written(&mut self, path: &str, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        self.changes.push(Change::File {
            path: path.to_owned(),
            action: match (old, new) {
                (None, _) => FileAction::Created,
                (_, None) => FileAction::Removed,
                _ => FileAction::Modified,
            },
            diff: diff::unified(path, old, new),
        });
    }

    /// Record a binary file written outside the tree (a loader on the ESP).
    pub(crate) fn record_binary(&mut self, path: &str, existed: bool, what: &str) {
        self.changes.push(Change::File {
            path: path.to_owned(),
            action: if existed {
                FileAction::Modified
            } else {
                FileAction::Created
            },
            diff: format!("   {path}: {what}\n"),
        });
    }

    /// Rename a configuration file aside (kept, no longer read).
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        if self.apply() {
            self.tree
                .rename(from, to)
                .with_context(|| format!("renaming {from} to {to} in the migrated root"))?;
        }
        self.changes.push(Change::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        Ok(())
    }

    /// Remove state (never configuration: that is renamed or edited).
    pub(crate) fn remove_state(&mut self, path: &str) -> Result<()> {
        if self.apply() {
            self.tree
                .remove(path)
                .with_context(|| format!("removing {path} in the migrated root"))?;
        }
        self.changes.push(Change::Removed {
            path: path.to_owned(),
        });
        Ok(())
    }

    /// Label the file at `path` (its host path `host`, the last symlink
    /// not followed).
    pub(crate) fn label(
        &mut self,
        path: &str,
        host: &std::path::Path,
        context: &str,
    ) -> Result<()> {
        if self.apply() {
            super::selinux::set_label(host, context)?;
        }
        self.changes.push(Change::Label {
            path: path.to_owned(),
            context: context.to_owned(),
        });
        Ok(())
    }

    /// Make `path` a symlink to `target`; returns whether it changed.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<bool> {
        if self.tree.link_target(path).as_deref() == Some(target) {
            return Ok(false);
        }
        if self.apply() {
            self.tree
                .symlink(path, target)
                .with_context(|| format!("linking {path} in the migrated root"))?;
        }
        self.changes.push(Change::Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        });
        Ok(true)
    }

    /// Run a command that changes the system. In plan mode it is only
    /// recorded; `None` is returned.
    pub fn exec(&mut self, argv: &[String], why: &str) -> Result<Option<Output>> {
        let out = if self.apply() {
            let runner = self.runner.with_context(|| {
                format!(
                    "running `{}` needs the migrated system mounted as a chroot",
                    argv.join(" ")
                )
            })?;
            Some(self.guest(runner, argv)?)
        } else {
            None
        };
        self.changes.push(Change::Command {
            argv: argv.to_vec(),
            why: why.to_owned(),
        });
        Ok(out)
    }

    /// Run a command within `timeout` whose failure is an outcome (an
    /// operator's hook): recorded like `exec`, its status returned.
    pub(crate) fn exec_bounded(
        &mut self,
        argv: &[String],
        why: &str,
        timeout: std::time::Duration,
    ) -> Result<Bounded> {
        let runner = self.runner.with_context(|| {
            format!(
                "running `{}` needs the migrated system mounted as a chroot",
                argv.join(" ")
            )
        })?;
        let ran = runner.run_bounded(argv, timeout)?;
        self.output.borrow_mut().push(GuestOutput {
            argv: argv.to_vec(),
            stdout: report_tail(&ran.output.stdout),
            stderr: report_tail(&ran.output.stderr),
        });
        self.changes.push(Change::Command {
            argv: argv.to_vec(),
            why: why.to_owned(),
        });
        Ok(ran)
    }

    /// Run a command that only reads (a listing); `None` without a runner
    /// (plan mode does not enter the chroot).
    pub(crate) fn query(&self, argv: &[String]) -> Result<Option<Output>> {
        match (self.mode, self.runner) {
            (Mode::Apply, Some(r)) => self.guest(r, argv).map(Some),
            _ => Ok(None),
        }
    }

    /// Run a command whose effect is judged by comparing a digest of what it
    /// writes before and after: a re-run that rewrites identical bytes is no
    /// change.
    pub(crate) fn exec_compared(
        &mut self,
        argv: &[String],
        why: &str,
        digest: &dyn Fn() -> Result<String>,
    ) -> Result<()> {
        if !self.apply() {
            self.changes.push(Change::Command {
                argv: argv.to_vec(),
                why: why.to_owned(),
            });
            return Ok(());
        }
        let before = digest()?;
        let runner = self.runner.with_context(|| {
            format!(
                "running `{}` needs the migrated system mounted as a chroot",
                argv.join(" ")
            )
        })?;
        self.guest(runner, argv)?;
        let after = digest()?;
        if before != after {
            self.changes.push(Change::Command {
                argv: argv.to_vec(),
                why: why.to_owned(),
            });
        } else {
            self.notes
                .push(format!("`{}` rewrote identical content", argv.join(" ")));
        }
        Ok(())
    }

    pub fn finish(self, step: &str) -> StepReport {
        let status = if !self.changes.is_empty() {
            Status::Changed
        } else if self.skipped {
            Status::Skipped
        } else {
            Status::Unchanged
        };
        StepReport {
            step: step.to_owned(),
            status,
            changes: self.changes,
            notes: self.notes,
            output: self.output.into_inner(),
        }
    }
}

/// Human-readable rendering of step reports (the `--plan` output).
pub(crate) fn render(steps: &[StepReport], mode: Mode) -> String {
    let mut out = String::new();
    for s in steps {
        let status = match (s.status, mode) {
            (Status::Changed, Mode::Plan) => "would change",
            (Status::Changed, Mode::Apply) => "changed",
            (Status::Unchanged, _) => "no change",
            (Status::Skipped, _) => "skipped",
        };
        out.push_str(&format!("== {}: {status}\n", s.step));
        for n in &s.notes {
            out.push_str(&format!("   note: {n}\n"));
        }
        for c in &s.changes {
            match c {
                Change::File { diff, .. } => out.push_str(diff),
                Change::Symlink { path, target } => {
                    out.push_str(&format!("   link {path} -> {target}\n"))
                }
                Change::Rename { from, to } => out.push_str(&format!("   rename {from} -> {to}\n")),
                Change::Removed { path } => out.push_str(&format!("   remove {path}\n")),
                Change::Label { path, context } => {
                    out.push_str(&format!("   label {path} {context}\n"))
                }
                Change::Registry {
                    hive,
                    key,
                    value,
                    old,
                    new,
                } => out.push_str(&format!(
                    "   registry {hive} {key}\\{value}: {} -> {new}\n",
                    old.as_deref().unwrap_or("(absent)")
                )),
                Change::Command { argv, why } => {
                    let verb = if mode == Mode::Plan {
                        "would run"
                    } else {
                        "ran"
                    };
                    out.push_str(&format!(
                        "   {verb} (in chroot): {}   # {why}\n",
                        argv.join(" ")
                    ))
                }
            }
        }
    }
    out
}
