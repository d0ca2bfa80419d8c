//! The operator's own steps: scripts the control plane gives, run in the
//! migrated system's sandbox right after the repair (`after-repair`), or
//! once at the migrated system's first boot (`first-boot`, a oneshot unit
//! the repair installs and that removes itself).
//!
//! An after-repair hook runs each time the repair runs (every round, and
//! again after an appliance restart in the middle of one): its script must
//! be safe to run twice. A first-boot hook runs once on the cloud: the unit
//! deletes its script, itself and its link when it has run, whatever the
//! script's status, and prints `ferry-first-boot NAME exit=N` on the
//! console, where the appliance's boot test reads it (the boot test boots
//! an overlay: the disks keep the hook for the real first boot).

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::detect::{InitSystem, OsInfo};
use super::engine::{Bounded, StepCtx};
use crate::job::errors::{coded, ErrorCode};

/// The name of the hooks' step in the report.
pub const STEP: &str = "hooks";

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// In the migrated system's sandbox, after every repair step.
    AfterRepair,
    /// Once, at the migrated system's first boot on the cloud.
    FirstBoot,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::AfterRepair => "after-repair",
            Phase::FirstBoot => "first-boot",
        }
    }
}

/// The default time a hook may take.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// The longest a hook may be given.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// The largest script accepted.
pub const MAX_SCRIPT_BYTES: usize = 64 << 10;
/// The most hooks a job may have.
pub const MAX_HOOKS: usize = 32;

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// One hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Letters, digits, `-`, `_` and `.`; unique in the job; names the
    /// hook in reports and the first-boot unit (`ferry-first-boot-NAME`).
    pub name: String,
    pub phase: Phase,
    /// The script: run by its `#!` interpreter when it has one (which the
    /// migrated system must have), else by `/bin/sh`.
    pub script: String,
    /// Seconds it may take (default 300, at most 3600); an after-repair
    /// hook is killed with everything it started when they are up.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// A failure fails the round with HOOK_FAILED (after-repair: at the
    /// repair; first-boot: at the boot test, when it runs).
    #[serde(default)]
    pub must_succeed: bool,
}

/// The hooks of a job (`[[hook]]` tables in TOML, `{"hook": [...]}` in JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default)]
    pub hook: Vec<Hook>,
}

fn invalid(msg: impl Into<String>) -> anyhow::Error {
    coded(ErrorCode::HookInvalid, msg.into())
}

impl Hooks {
    /// Parse hooks from TOML or JSON (a first `{` says JSON), checked.
    pub fn parse(text: &str) -> Result<Hooks> {
        let hooks: Hooks = super::toml_or_json(text)
            .map_err(|e| invalid(format!("the hooks cannot be read: {e}")))?;
        hooks.check()?;
        Ok(hooks)
    }

    pub fn load(path: &std::path::Path) -> Result<Hooks> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the hooks {}", path.display()))?;
        Hooks::parse(&text).with_context(|| format!("the hooks {}", path.display()))
    }

    pub fn is_empty(&self) -> bool {
        self.hook.is_empty()
    }

    /// Names, sizes and timeouts within bounds, names unique.
    pub fn check(&self) -> Result<()> {
        if self.hook.len() > MAX_HOOKS {
            return Err(invalid(format!(
                "{} hooks given; at most {MAX_HOOKS}",
                self.hook.len()
            )));
        }
        for (i, h) in self.hook.iter().enumerate() {
            let which = format!("hook {} ({:?})", i + 1, h.name);
            let name_ok = !h.name.is_empty()
                && h.name.len() <= 64
                && h.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !h.name.starts_with('.');
            if !name_ok {
                return Err(invalid(format!(
                    "{which}: a name is 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`"
                )));
            }
            if self.hook[..i].iter().any(|o| o.name == h.name) {
                return Err(invalid(format!(
                    "{which}: two hooks are named {:?}",
                    h.name
                )));
            }
            if h.script.trim().is_empty() {
                return Err(invalid(format!("{which}: the script is empty")));
            }
            if h.script.len() > MAX_SCRIPT_BYTES {
                return Err(invalid(format!(
                    "{which}: the script has {} bytes; at most {MAX_SCRIPT_BYTES}",
                    h.script.len()
                )));
            }
            if h.script.contains('\0') {
                return Err(invalid(format!("{which}: the script holds a NUL byte")));
            }
            if !(1..=MAX_TIMEOUT_SECS).contains(&h.timeout) {
                return Err(invalid(format!(
                    "{which}: timeout {} s is outside 1 to {MAX_TIMEOUT_SECS}",
                    h.timeout
                )));
            }
        }
        Ok(())
    }
}

/// How a hook ended (or what was done with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStatus {
    /// Plan mode: it would run or be installed.
    Planned,
    Succeeded,
    Failed,
    TimedOut,
    /// A first-boot hook, installed to run at the first boot.
    Installed,
}

/// One hook's outcome, for the round's report and `handoff.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookOutcome {
    pub name: String,
    pub phase: Phase,
    pub must_succeed: bool,
    pub status: HookStatus,
    /// The script's exit status (after-repair hooks that ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// The end of what it printed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// Where an after-repair hook's script is put while it runs.
const RUN_DIR: &str = "/var/lib/ferry/hooks";
/// Where the first-boot hooks wait for the first boot.
pub const FIRST_BOOT_DIR: &str = "/var/lib/ferry/first-boot";
const UNIT_DIR: &str = "/etc/systemd/system";
/// What a first-boot unit prints on the console when its script ended.
pub const CONSOLE_TAG: &str = "ferry-first-boot";

/// The command line that runs a script at `path`.
fn argv(script: &str, path: &str) -> Vec<String> {
    if script.starts_with("#!") {
        vec![path.to_owned()]
    } else {
        vec!["/bin/sh".to_owned(), path.to_owned()]
    }
}

fn unit_name(hook: &Hook) -> String {
    format!("ferry-first-boot-{}.service", hook.name)
}

/// The wrapper a first-boot unit runs: the script, its status on the
/// console, then the hook removed (script, unit, link) whatever the status,
/// and the removal (with what the script wrote) flushed to disk.
fn wrapper(hook: &Hook) -> String {
    let script = format!("{FIRST_BOOT_DIR}/{}", hook.name);
    let unit = unit_name(hook);
    let run = argv(&hook.script, &script).join(" ");
    format!(
        "#!/bin/sh\n\
         # Written by ferry: runs the first-boot hook {name} once, then removes it.\n\
         {run}\n\
         status=$?\n\
         echo \"{CONSOLE_TAG} {name} exit=$status\"\n\
         rm -f {UNIT_DIR}/multi-user.target.wants/{unit} {UNIT_DIR}/{unit} {script} {script}.run\n\
         # Durable before anything else: a power loss must not run it twice.\n\
         sync\n\
         exit $status\n",
        name = hook.name,
    )
}

fn unit(hook: &Hook) -> String {
    format!(
        "# Written by ferry: the first-boot hook {name}; it removes itself once run.\n\
         [Unit]\n\
         Description=ferry first-boot hook {name}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         ConditionPathExists={dir}/{name}.run\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/bin/sh {dir}/{name}.run\n\
         TimeoutStartSec={timeout}\n\
         StandardOutput=journal+console\n\
         StandardError=journal+console\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = hook.name,
        dir = FIRST_BOOT_DIR,
        timeout = hook.timeout,
    )
}

/// The hooks step: first-boot hooks installed, after-repair hooks run in
/// order. A must-succeed hook that fails stops the step with HOOK_FAILED
/// (its outcome is in `outcomes` all the same); another that fails is
/// reported and the repair goes on.
pub(crate) fn step(
    ctx: &mut StepCtx,
    os: &OsInfo,
    hooks: &Hooks,
    outcomes: &mut Vec<HookOutcome>,
) -> Result<()> {
    let first_boot: Vec<&Hook> = hooks
        .hook
        .iter()
        .filter(|h| h.phase == Phase::FirstBoot)
        .collect();
    if !first_boot.is_empty() && os.init != InitSystem::Systemd {
        return Err(invalid(format!(
            "first-boot hooks run as systemd units, and the migrated system's init is {:?}; give them as after-repair hooks, or not at all",
            os.init
        )));
    }
    for h in &first_boot {
        let dir = FIRST_BOOT_DIR;
        ctx.write(&format!("{dir}/{}", h.name), &h.script, 0o700)?;
        ctx.write(&format!("{dir}/{}.run", h.name), &wrapper(h), 0o700)?;
        let unit_path = format!("{UNIT_DIR}/{}", unit_name(h));
        ctx.write(&unit_path, &unit(h), 0o644)?;
        ctx.symlink(
            &format!("{UNIT_DIR}/multi-user.target.wants/{}", unit_name(h)),
            &unit_path,
        )?;
        outcomes.push(HookOutcome {
            name: h.name.clone(),
            phase: h.phase,
            must_succeed: h.must_succeed,
            status: if ctx.apply() {
                HookStatus::Installed
            } else {
                HookStatus::Planned
            },
            exit_code: None,
            seconds: None,
            stdout: String::new(),
            stderr: String::new(),
        });
    }
    for h in hooks.hook.iter().filter(|h| h.phase == Phase::AfterRepair) {
        let outcome = run_after_repair(ctx, h)?;
        let failed = matches!(outcome.status, HookStatus::Failed | HookStatus::TimedOut);
        let what = match outcome.status {
            HookStatus::TimedOut => format!("ran out of its {} s", h.timeout),
            _ => format!("exited with status {}", outcome.exit_code.unwrap_or(-1)),
        };
        let tail = crate::cmd::tail(outcome.stderr.as_bytes(), outcome.stdout.as_bytes());
        outcomes.push(outcome);
        if failed && h.must_succeed {
            return Err(coded(
                ErrorCode::HookFailed,
                format!("the after-repair hook {} {what}: {tail}", h.name),
            ));
        }
        if failed {
            ctx.note(format!(
                "the after-repair hook {} {what} (not must_succeed: the repair goes on): {tail}",
                h.name
            ));
        }
    }
    Ok(())
}

/// Put the script in the migrated root, run it in the sandbox, remove it.
fn run_after_repair(ctx: &mut StepCtx, h: &Hook) -> Result<HookOutcome> {
    let path = format!("{RUN_DIR}/{}", h.name);
    let args = argv(&h.script, &path);
    let why = format!("the after-repair hook {}", h.name);
    let mut outcome = HookOutcome {
        name: h.name.clone(),
        phase: h.phase,
        must_succeed: h.must_succeed,
        status: HookStatus::Planned,
        exit_code: None,
        seconds: None,
        stdout: String::new(),
        stderr: String::new(),
    };
    if !ctx.apply() {
        ctx.exec(&args, &why)?;
        return Ok(outcome);
    }
    // The script is the operator's, not a change of the system's: put in
    // place and taken away again, not reported as a file written.
    ctx.tree
        .write(&path, h.script.as_bytes(), 0o700)
        .map_err(|e| e.context(format!("putting the hook {} in the migrated root", h.name)))?;
    let started = Instant::now();
    let ran = ctx.exec_bounded(&args, &why, Duration::from_secs(h.timeout));
    let removed = ctx.tree.remove(&path);
    let Bounded {
        code,
        timed_out,
        output,
    } = ran?;
    removed.map_err(|e| {
        e.context(format!(
            "removing the hook {} from the migrated root",
            h.name
        ))
    })?;
    outcome.seconds = Some((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    outcome.exit_code = code;
    outcome.stdout = super::engine::report_tail(&output.stdout);
    outcome.stderr = super::engine::report_tail(&output.stderr);
    outcome.status = match (timed_out, code) {
        (true, _) => HookStatus::TimedOut,
        (false, Some(0)) => HookStatus::Succeeded,
        _ => HookStatus::Failed,
    };
    Ok(outcome)
}

/// The first-boot hooks' statuses a console shows (`ferry-first-boot NAME
/// exit=N` lines), by name.
pub fn first_boot_statuses(console: &str) -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = Vec::new();
    for l in console.lines() {
        let Some(rest) = l.find(CONSOLE_TAG).map(|i| &l[i + CONSOLE_TAG.len()..]) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let (Some(name), Some(status)) = (it.next(), it.next()) else {
            continue;
        };
        let Some(code) = status.strip_prefix("exit=").and_then(|c| c.parse().ok()) else {
            continue;
        };
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_owned(), code));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r##"
[[hook]]
name = "install-agent"
phase = "after-repair"
script = "echo hi"
must_succeed = true

[[hook]]
name = "hostname"
phase = "first-boot"
script = """#!/bin/bash
hostnamectl set-hostname web-1
"""
timeout = 60
"##;

    #[test]
    fn hooks_read_from_toml_and_json_alike() {
        let t = Hooks::parse(TOML).unwrap();
        assert_eq!(t.hook.len(), 2);
        assert_eq!(t.hook[0].timeout, DEFAULT_TIMEOUT_SECS);
        assert!(t.hook[0].must_succeed);
        assert_eq!(t.hook[1].phase, Phase::FirstBoot);
        assert!(!t.hook[1].must_succeed);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(Hooks::parse(&json).unwrap(), t);
        assert_eq!(Hooks::parse("").unwrap(), Hooks::default());
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let hook = |name: &str, script: &str, timeout: u64| {
            format!("[[hook]]\nname = {name:?}\nphase = \"after-repair\"\nscript = {script:?}\ntimeout = {timeout}\n")
        };
        let cases: Vec<(String, &str)> = vec![
            (hook("a b", "true", 5), "a name is 1 to 64 letters"),
            (hook("../x", "true", 5), "a name is 1 to 64 letters"),
            (hook(".x", "true", 5), "not starting with `.`"),
            (hook("", "true", 5), "a name is 1 to 64"),
            (hook("x", "  \n", 5), "the script is empty"),
            (hook("x", "true", 0), "timeout 0 s is outside 1 to 3600"),
            (hook("x", "true", 3601), "timeout 3601 s is outside"),
            (
                format!("{}{}", hook("x", "true", 5), hook("x", "false", 5)),
                "two hooks are named \"x\"",
            ),
            (
                hook("x", &"y".repeat(MAX_SCRIPT_BYTES + 1), 5),
                "the script has 65537 bytes",
            ),
            (
                "[[hook]]\nname = \"x\"\nphase = \"at-dawn\"\nscript = \"true\"\n".into(),
                "unknown variant `at-dawn`",
            ),
            (
                "[[hook]]\nname = \"x\"\nphase = \"first-boot\"\nscript = \"true\"\nmust = true\n"
                    .into(),
                "unknown field `must`",
            ),
            (
                (0..33).map(|i| hook(&format!("h{i}"), "true", 5)).collect(),
                "33 hooks given; at most 32",
            ),
        ];
        for (text, want) in cases {
            let e = Hooks::parse(&text).unwrap_err();
            let code = crate::job::errors::find_coded(&e).map(|c| c.code);
            assert_eq!(code, Some(ErrorCode::HookInvalid), "{want}");
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
    }

    #[test]
    fn the_first_boot_unit_runs_once_and_says_how_it_ended() {
        let t = Hooks::parse(TOML).unwrap();
        let h = &t.hook[1];
        let w = wrapper(h);
        // A script with its own interpreter runs by it.
        assert!(
            w.contains("\n/var/lib/ferry/first-boot/hostname\nstatus=$?\n"),
            "{w}"
        );
        assert!(w.contains("rm -f /etc/systemd/system/multi-user.target.wants/ferry-first-boot-hostname.service /etc/systemd/system/ferry-first-boot-hostname.service /var/lib/ferry/first-boot/hostname /var/lib/ferry/first-boot/hostname.run\n"), "{w}");
        let u = unit(h);
        assert!(u.contains("ExecStart=/bin/sh /var/lib/ferry/first-boot/hostname.run\n"));
        assert!(u.contains("TimeoutStartSec=60\n"));
        assert!(u.contains("ConditionPathExists=/var/lib/ferry/first-boot/hostname.run\n"));
        // A plain script runs by /bin/sh.
        assert!(wrapper(&t.hook[0]).contains("\n/bin/sh /var/lib/ferry/first-boot/install-agent\n"));
    }

    #[test]
    fn console_lines_give_each_hooks_status() {
        let console = "[  OK  ] Started foo\r\nferry-first-boot hostname exit=0\r\n[   12.1] sh[402]: ferry-first-boot agent exit=3\nferry-first-boot agent exit=0\nferry-first-boot broken exit=x\n";
        assert_eq!(
            first_boot_statuses(console),
            [("hostname".to_owned(), 0), ("agent".to_owned(), 3)]
        );
    }
}
