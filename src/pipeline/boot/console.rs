//! The guest's serial console, read as a boot goes: how far the boot got
//! (firmware, boot loader, kernel, initramfs, root file system, the
//! default target, a login prompt) and, if it stopped, why. A real server
//! carries no marker of ours: the verdict rests on what GRUB, the kernel,
//! the initramfs and systemd print, and on the console's last line when a
//! prompt waits there for input.
//!
//! One parser for the appliance's boot stage and the test suite's boot
//! check, so both tell failures apart the same way.

use serde::{Deserialize, Serialize};

/// How far a boot got, in the order a boot passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Nothing on the console yet: the firmware runs, or found nothing to boot.
    Firmware,
    /// GRUB runs (its menu, its messages).
    Bootloader,
    /// The kernel started.
    Kernel,
    /// The initramfs runs and looks for the root file system.
    Initramfs,
    /// The root file system is mounted and the system's init runs.
    Root,
    /// systemd reached the default target (multi-user or graphical).
    Target,
    /// A login prompt waits on the console.
    Login,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Firmware,
        Stage::Bootloader,
        Stage::Kernel,
        Stage::Initramfs,
        Stage::Root,
        Stage::Target,
        Stage::Login,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Firmware => "firmware",
            Stage::Bootloader => "bootloader",
            Stage::Kernel => "kernel",
            Stage::Initramfs => "initramfs",
            Stage::Root => "root",
            Stage::Target => "target",
            Stage::Login => "login",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a boot stopped, with the console line that shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "line", rename_all = "snake_case")]
pub enum Stop {
    /// GRUB waits at its prompt (the last GRUB error before it).
    GrubPrompt(String),
    /// GRUB could not load a kernel or an initrd.
    NoKernel(String),
    /// The initramfs did not find the root file system.
    RootNotFound(String),
    /// systemd gave up on a unit the boot needs and waits for a root password.
    EmergencyMode(String),
    KernelPanic(String),
}

impl Stop {
    /// The stable word for the kind of failure (reports, error details).
    pub fn kind(&self) -> &'static str {
        match self {
            Stop::GrubPrompt(_) => "grub_prompt",
            Stop::NoKernel(_) => "no_kernel",
            Stop::RootNotFound(_) => "root_not_found",
            Stop::EmergencyMode(_) => "emergency_mode",
            Stop::KernelPanic(_) => "kernel_panic",
        }
    }

    pub fn line(&self) -> &str {
        match self {
            Stop::GrubPrompt(l)
            | Stop::NoKernel(l)
            | Stop::RootNotFound(l)
            | Stop::EmergencyMode(l)
            | Stop::KernelPanic(l) => l,
        }
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::GrubPrompt(l) => write!(f, "stopped at the GRUB prompt: {l}"),
            Stop::NoKernel(l) => write!(f, "GRUB loaded no kernel: {l}"),
            Stop::RootNotFound(l) => {
                write!(f, "the initramfs did not find the root file system: {l}")
            }
            Stop::EmergencyMode(l) => write!(f, "emergency mode: {l}"),
            Stop::KernelPanic(l) => write!(f, "kernel panic: {l}"),
        }
    }
}

/// What the console shows so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// Each stage seen, in order, with the byte offset (of the stripped
    /// text) of its first evidence.
    pub reached: Vec<(Stage, usize)>,
    pub stop: Option<Stop>,
}

impl Reading {
    /// The furthest stage seen (Firmware when nothing was).
    pub fn stage(&self) -> Stage {
        self.reached
            .iter()
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(Stage::Firmware)
    }

    pub fn has(&self, stage: Stage) -> bool {
        self.reached.iter().any(|(s, _)| *s == stage)
    }
}

/// Lines that show a stage was reached. Quiet kernels print little, so each
/// stage has several signs; the first found counts.
const SIGNS: &[(Stage, &[&str])] = &[
    (
        Stage::Bootloader,
        &[
            "GNU GRUB",
            "Welcome to GRUB",
            "Booting `",
            "Loading Linux",
            "Loading initial ramdisk",
        ],
    ),
    (
        Stage::Kernel,
        &[
            "Linux version ",
            "Decompressing Linux",
            "Command line: ",
            "Freeing unused kernel",
        ],
    ),
    (
        Stage::Initramfs,
        &[
            "Run /init as init process",
            "Loading, please wait...",
            "dracut-",
            "Begin: Loading essential drivers",
        ],
    ),
    (
        Stage::Root,
        &[
            "Welcome to ",
            "VFS: Mounted root",
            "): mounted filesystem",
            "Ending clean mount",
            "Switching root",
            "systemd[1]: Detected virtualization",
            "Run /sbin/init as init process",
        ],
    ),
];

/// The default targets a server boots to, as systemd names them on the
/// console (with and without the unit name, by version).
const TARGETS: &[&str] = &[
    "multi-user.target",
    "Multi-User System",
    "graphical.target",
    "Graphical Interface",
];

/// Reads a serial log (raw bytes as QEMU wrote them).
pub fn read(raw: &str) -> Reading {
    let text = strip_ansi(raw);
    let mut reading = Reading::default();
    // Only whole lines are judged: the last one may still be arriving.
    let (complete, tail) = match text.rfind('\n') {
        Some(end) => (&text[..end], text[end + 1..].trim()),
        None => ("", text.trim()),
    };
    let mut offset = 0;
    for line in complete.split('\n') {
        note_signs(&mut reading, line, offset);
        if reading.stop.is_none() {
            reading.stop = stop_of(line);
        }
        offset += line.len() + 1;
    }
    // A prompt ends no line: it waits after it.
    if tail == "grub>" || tail == "grub rescue>" {
        note(&mut reading, Stage::Bootloader, offset);
        if reading.stop.is_none() {
            let last_error = complete
                .lines()
                .rev()
                .find(|l| l.contains("error:"))
                .unwrap_or(tail);
            reading.stop = Some(Stop::GrubPrompt(last_error.trim().to_owned()));
        }
    } else if is_login_prompt(tail) && reading.stop.is_none() {
        note(&mut reading, Stage::Login, offset);
    }
    reading
}

fn note_signs(reading: &mut Reading, line: &str, offset: usize) {
    // The kernel's messages carry its clock (`[    1.234567] ...`) even
    // on a console too quiet to show any of the signs below.
    if printk_time(line) {
        note(reading, Stage::Kernel, offset);
    }
    for (stage, signs) in SIGNS {
        // systemd's "Welcome to <OS>!" is a root sign; GRUB's welcome is not.
        let grub_welcome = *stage == Stage::Root && line.contains("Welcome to GRUB");
        if !grub_welcome && signs.iter().any(|s| line.contains(s)) {
            note(reading, *stage, offset);
        }
    }
    if line.contains("Reached target") {
        // systemd runs (in the initramfs or the system); only the default
        // target counts as the end of the boot.
        let stage = if TARGETS.iter().any(|t| line.contains(t)) {
            Stage::Target
        } else {
            Stage::Kernel
        };
        note(reading, stage, offset);
    }
    // A login prompt that is followed by more output (a message printed
    // after it) still was a login prompt.
    if is_login_prompt(line.trim()) {
        note(reading, Stage::Login, offset);
    }
}

/// Records a stage, and every earlier one the boot must have passed
/// through though a quiet console did not show it (a login prompt means
/// the kernel ran).
fn note(reading: &mut Reading, stage: Stage, offset: usize) {
    for s in Stage::ALL {
        if s == Stage::Firmware || s > stage || reading.has(s) {
            continue;
        }
        // The initramfs and the boot loader leave no sign on every system:
        // only what was seen, or what must have been, is claimed.
        if matches!(s, Stage::Initramfs | Stage::Bootloader) && s != stage {
            continue;
        }
        reading.reached.push((s, offset));
    }
    reading.reached.sort_by_key(|(s, _)| *s);
}

fn stop_of(line: &str) -> Option<Stop> {
    let l = line.trim();
    if l.contains("ALERT!") && l.contains("does not exist") {
        return Some(Stop::RootNotFound(l.to_owned()));
    }
    // initramfs-tools' "Gave up waiting for root" is followed by its ALERT
    // line, which names the device; dracut ends with "Could not boot".
    if l.contains("Could not boot.") {
        return Some(Stop::RootNotFound(l.to_owned()));
    }
    if l.contains("You are in emergency mode")
        || l.contains("Give root password for maintenance")
        || l.contains("Cannot open access to console, the root account is locked")
    {
        return Some(Stop::EmergencyMode(l.to_owned()));
    }
    if l.contains("Kernel panic - not syncing") {
        return Some(Stop::KernelPanic(l.to_owned()));
    }
    if l.contains("error:")
        && (l.contains("you need to load the kernel first")
            || (l.contains("not found") && (l.contains("vmlinuz") || l.contains("initrd"))))
    {
        return Some(Stop::NoKernel(l.to_owned()));
    }
    None
}

/// Whether a line starts with the kernel's timestamp: `[`, seconds (padded
/// with spaces), `.`, six digits, `]`.
fn printk_time(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once(']') else {
        return false;
    };
    let Some((secs, micros)) = stamp.trim_start().split_once('.') else {
        return false;
    };
    !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && micros.len() == 6
        && micros.bytes().all(|b| b.is_ascii_digit())
}

/// `<hostname> login:` as getty prints it, waiting for a name.
fn is_login_prompt(line: &str) -> bool {
    let Some(host) = line.strip_suffix("login:") else {
        return false;
    };
    let host = host.trim_end();
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Removes terminal escape sequences (systemd's colours and spinner) and
/// carriage returns.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// The last `lines` non-empty lines of a console, escapes removed.
pub(crate) fn last_lines(raw: &str, lines: usize) -> Vec<String> {
    let text = strip_ansi(raw);
    let mut out: Vec<String> = text
        .lines()
        .rev()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .take(lines)
        .map(str::to_owned)
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIOS_GRUB: &str = "\x1b[2J\x1b[1;1HGNU GRUB  version 2.06-13+deb12u1\r\n\
        Booting `Debian GNU/Linux'\r\nLoading Linux 6.1.0-27-amd64 ...\r\nLoading initial ramdisk ...\r\n";

    #[test]
    fn stages_of_a_verbose_boot_to_a_login_prompt() {
        let log = format!(
            "{BIOS_GRUB}[    0.000000] Linux version 6.1.0-27-amd64 (debian-kernel@lists.debian.org)\n\
             [    1.2] Run /init as init process\nLoading, please wait...\n\
             [    3.1] EXT4-fs (vda1): mounted filesystem with ordered data mode.\n\
             Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!\n\
             [  \x1b[0;32mOK\x1b[0m  ] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\n\
             \nDebian GNU/Linux 12 web01 ttyS0\n\nweb01 login: "
        );
        let r = read(&log);
        let stages: Vec<Stage> = r.reached.iter().map(|(s, _)| *s).collect();
        assert_eq!(stages, &Stage::ALL[1..]);
        assert_eq!(r.stop, None);
        assert_eq!(r.stage(), Stage::Login);
        // Offsets follow the boot's order.
        let offsets: Vec<usize> = r.reached.iter().map(|(_, o)| *o).collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    }

    #[test]
    fn a_quiet_kernel_is_known_by_its_clock() {
        // `quiet` and no "Linux version": the kernel's own timestamped
        // lines, then a service's message, then nothing (it powered off).
        let text = format!(
            "{BIOS_GRUB}\n[    1.734021] virtio_net virtio0 enp0s3: renamed from eth0\nFERRY-MARKER up\n[   12.000001] reboot: Power down\n"
        );
        let r = read(&text);
        assert_eq!(r.stage(), Stage::Kernel);
        assert_eq!(r.stop, None);
        // systemd's status column and other brackets are no clock.
        for line in [
            "[  OK  ] Started foo.service.",
            "[12.5] x",
            "[ 1.1234567] x",
            "[] x",
            "[ .123456] x",
        ] {
            assert_eq!(
                read(&format!("{line}\n")).stage(),
                Stage::Firmware,
                "{line}"
            );
        }
        assert_eq!(read("[    0.000000] Linux\n").stage(), Stage::Kernel);
    }

    #[test]
    fn a_quiet_boot_still_reaches_its_login_prompt() {
        // `quiet`: the kernel and systemd print nothing but errors.
        let r = read(&format!("{BIOS_GRUB}\nweb-01.example login: "));
        let stages: Vec<Stage> = r.reached.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            stages,
            [
                Stage::Bootloader,
                Stage::Kernel,
                Stage::Root,
                Stage::Target,
                Stage::Login
            ]
        );
    }

    #[test]
    fn older_systemd_names_the_target_without_its_unit() {
        let r = read("Welcome to Debian GNU/Linux 11 (bullseye)!\n[  OK  ] Reached target Multi-User System.\n");
        assert_eq!(r.stage(), Stage::Target);
        let r = read("[  OK  ] Reached target Network.\n[  OK  ] Reached target Basic System.\n");
        assert_eq!(
            r.stage(),
            Stage::Kernel,
            "other targets are not the default one"
        );
    }

    #[test]
    fn failures_are_told_apart() {
        let cases: &[(&str, &str, Option<&str>, Stage)] = &[
            (
                "grub prompt",
                "GNU GRUB  version 2.06\nerror: file '/boot/grub/x86_64-efi/configfile.mod' not found.\ngrub> ",
                Some("grub_prompt"),
                Stage::Bootloader,
            ),
            (
                "grub rescue",
                "error: unknown filesystem.\nEntering rescue mode...\ngrub rescue> ",
                Some("grub_prompt"),
                Stage::Bootloader,
            ),
            (
                "no kernel",
                "Booting `Debian GNU/Linux'\nLoading Linux 6.1.0-27-amd64 ...\nerror: file `/boot/vmlinuz-6.1.0-27-amd64' not found.\nerror: you need to load the kernel first.\n",
                Some("no_kernel"),
                Stage::Bootloader,
            ),
            (
                "root not found",
                "[    0.0] Linux version 6.1.0\nLoading, please wait...\nGave up waiting for root file system device.  Common problems:\nALERT!  UUID=1234 does not exist.  Dropping to a shell!\n",
                Some("root_not_found"),
                Stage::Initramfs,
            ),
            (
                "emergency",
                "Welcome to Debian GNU/Linux 12 (bookworm)!\n[FAILED] Failed to mount srv.mount - /srv.\nYou are in emergency mode. After logging in, type \"journalctl -xb\" to view\n",
                Some("emergency_mode"),
                Stage::Root,
            ),
            (
                "panic",
                "[    0.0] Linux version 6.1.0\n[    2.0] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n",
                Some("kernel_panic"),
                Stage::Kernel,
            ),
            ("nothing", "", None, Stage::Firmware),
            ("half a line", "GNU GR", None, Stage::Firmware),
        ];
        for (name, log, kind, stage) in cases {
            let r = read(log);
            assert_eq!(r.stop.as_ref().map(Stop::kind), *kind, "{name}: {r:?}");
            assert_eq!(r.stage(), *stage, "{name}: {r:?}");
        }
        let r = read(cases[0].1);
        assert_eq!(
            r.stop.as_ref().map(Stop::line),
            Some("error: file '/boot/grub/x86_64-efi/configfile.mod' not found.")
        );
    }

    #[test]
    fn a_login_prompt_needs_a_host_name() {
        for (line, want) in [
            ("web01 login:", true),
            ("ip-10-0-2-15.ec2.internal login:", true),
            ("login:", false),
            ("Last login: Mon", false),
            ("please enter your login:", false),
        ] {
            assert_eq!(is_login_prompt(line), want, "{line}");
        }
    }

    #[test]
    fn last_lines_skip_blank_ones_and_escapes() {
        let log = "one\r\n\r\n\x1b[0;31mtwo\x1b[0m\nthree\n\n";
        assert_eq!(last_lines(log, 2), ["two", "three"]);
        assert_eq!(last_lines(log, 10), ["one", "two", "three"]);
    }
}
