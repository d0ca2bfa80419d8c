//! Boot test: before the handoff, the repaired disks are booted under QEMU
//! as the cloud's machine would boot them (virtio-blk disks, a virtio-net
//! NIC that gets its address by DHCP, OVMF for a UEFI system), through
//! qcow2 overlays whose backing files are the targets, opened read-only:
//! nothing is written to them.
//!
//! The verdict needs nothing inside the guest: the serial console is read
//! for the stages of the boot ([`console`]), and the guest's traffic,
//! captured by QEMU's `filter-dump`, for its DHCP request ([`dhcp`]). A
//! system that reached its default target (or a login prompt) and asked
//! for an address passed; one that stopped (GRUB prompt, no kernel, root not
//! found, emergency mode, kernel panic), never asked for an address, or ran
//! out of time did not, and the stage it reached says where.
//!
//! The guest's network is QEMU's user network with `restrict=on`: the
//! migrated server gets its DHCP answer and reaches nothing else, neither
//! the appliance nor the internet, so its services cannot act on the world
//! while it is tested.
//!
//! The console log, the capture and the verdict stay in
//! `<state-dir>/processing/boot/` (served by the control API).

pub mod console;
pub mod dhcp;
mod machine;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use self::console::{Stage, Stop};
pub use self::machine::Firmware;
use super::Target;

/// Where the boot test keeps its files, under the round's work directory.
pub const DIR: &str = "boot";
pub(crate) const CONSOLE: &str = "console.log";
pub(crate) const CAPTURE: &str = "capture.pcap";
pub(crate) const VERDICT: &str = "verdict.json";

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when `/dev/kvm` can be opened, else TCG; a KVM boot that shows
    /// nothing at all on its console for 30 s is started again on TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    /// `auto`, `kvm` or `tcg`, as the config names them.
    pub(crate) fn from_name(name: &str) -> Option<AccelChoice> {
        match name {
            "auto" => Some(AccelChoice::Auto),
            "kvm" => Some(AccelChoice::Kvm),
            "tcg" => Some(AccelChoice::Tcg),
            _ => None,
        }
    }
}

/// The boot test's settings (from the appliance's config).
#[derive(Debug, Clone)]
pub struct BootTestSettings {
    pub enabled: bool,
    pub timeout: Duration,
    pub memory_mib: u64,
    pub cpus: u32,
    pub accel: AccelChoice,
}

impl Default for BootTestSettings {
    fn default() -> Self {
        BootTestSettings {
            enabled: true,
            timeout: Duration::from_secs(600),
            memory_mib: 1024,
            cpus: 2,
            accel: AccelChoice::Auto,
        }
    }
}

/// How long a system that reached its default target may take to ask for
/// an address before it is judged to have no working network.
const DHCP_GRACE: Duration = Duration::from_secs(120);
/// How long a KVM boot may show nothing at all before TCG is tried.
const KVM_SILENCE: Duration = Duration::from_secs(30);
/// How long a KVM boot may take to reach the kernel before TCG is tried:
/// where the host's KVM runs no guest properly (nested virtualisation),
/// the guest can show GRUB and then hang while it loads the kernel.
const KVM_STALL: Duration = Duration::from_secs(90);

/// Why a KVM boot is given up for TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KvmGaveUp {
    /// Nothing at all on the console within [`KVM_SILENCE`].
    Silent,
    /// No kernel within [`KVM_STALL`].
    Stalled,
}

impl KvmGaveUp {
    /// Whether a KVM boot that has shown `console_bytes` and reached
    /// `stage` after `elapsed` is to be given up.
    fn judge(console_bytes: usize, stage: Stage, elapsed: Duration) -> Option<KvmGaveUp> {
        if console_bytes == 0 && elapsed >= KVM_SILENCE {
            Some(KvmGaveUp::Silent)
        } else if stage < Stage::Kernel && elapsed >= KVM_STALL {
            Some(KvmGaveUp::Stalled)
        } else {
            None
        }
    }

    fn note(self) -> String {
        match self {
            KvmGaveUp::Silent => format!(
                "kvm showed nothing on the console within {} s; tcg used",
                KVM_SILENCE.as_secs()
            ),
            KvmGaveUp::Stalled => format!(
                "kvm showed nothing past the bootloader within {} s; tcg used",
                KVM_STALL.as_secs()
            ),
        }
    }
}
/// Console lines kept in the verdict and the error's detail.
const TAIL_LINES: usize = 15;

/// The boot test's verdict, kept in `processing/boot/verdict.json` and in
/// the handoff manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `passed` or `failed`.
    pub verdict: String,
    /// The furthest stage the boot reached.
    pub stage: Stage,
    /// Why it failed: `grub_prompt`, `no_kernel`, `root_not_found`,
    /// `emergency_mode`, `kernel_panic`, `no_dhcp`, `timeout`, `powered_off`,
    /// `qemu_exited`.
    pub failure: Option<String>,
    /// What happened, in words.
    pub reason: String,
    /// Seconds from the start of the machine to each stage seen.
    pub stage_seconds: BTreeMap<Stage, f64>,
    /// Seconds to the guest's first DHCP request, if it made one.
    pub dhcp_seconds: Option<f64>,
    pub seconds: f64,
    /// `kvm` or `tcg`, and why when it is not what was asked for.
    pub accelerator: String,
    pub accelerator_note: Option<String>,
    pub firmware: Firmware,
    pub cpus: u32,
    pub memory_mib: u64,
    /// The console's last lines.
    pub console_tail: Vec<String>,
    /// Set when the control plane took the disks despite a failed test.
    #[serde(default)]
    pub handed_off_anyway: bool,
    /// The operator's first-boot hooks that ran in the test and the
    /// status each printed on the console (`ferry-first-boot NAME exit=N`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub first_boot_hooks: BTreeMap<String, i32>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.verdict == "passed"
    }

    /// The detail of the BOOT_TEST_FAILED error: stage, reason, last lines.
    /// A passed boot in which a first-boot hook that must succeed did
    /// not (its status, or none on the console) becomes a failed one;
    /// returns the failure's detail.
    pub(crate) fn judge_hooks(&mut self, must_succeed: &[&str]) -> Option<String> {
        if !self.passed() {
            return None;
        }
        let failed: Vec<String> = must_succeed
            .iter()
            .filter_map(|name| match self.first_boot_hooks.get(*name) {
                Some(0) => None,
                Some(code) => Some(format!("the first-boot hook {name} exited with status {code}")),
                None => Some(format!(
                    "the first-boot hook {name} printed no status on the console: it did not run before the default target"
                )),
            })
            .collect();
        if failed.is_empty() {
            return None;
        }
        self.verdict = "failed".to_owned();
        self.failure = Some("hook_failed".to_owned());
        self.reason = failed.join("; ");
        Some(format!(
            "the system booted, but {}; last console lines:\n{}",
            self.reason,
            self.console_tail.join("\n")
        ))
    }

    pub(crate) fn failure_detail(&self) -> String {
        format!(
            "the boot reached stage {} and {} ({} after {:.0} s); last console lines:\n{}",
            self.stage,
            self.reason,
            self.accelerator,
            self.seconds,
            self.console_tail.join("\n")
        )
    }
}

/// The verdict of an earlier run in this work directory, if any.
pub(crate) fn load_verdict(work_dir: &Path) -> Option<Verdict> {
    let raw = std::fs::read(work_dir.join(DIR).join(VERDICT)).ok()?;
    serde_json::from_slice(&raw).ok()
}

pub fn save_verdict(work_dir: &Path, verdict: &Verdict) -> Result<()> {
    let json = serde_json::to_vec_pretty(verdict).context("encoding the boot test's verdict")?;
    crate::disk::write_atomic(&work_dir.join(DIR).join(VERDICT), &json)
}

/// Boots the targets (disk 0 first) and judges the boot.
pub fn run(
    settings: &BootTestSettings,
    targets: &[Target],
    firmware: Firmware,
    work_dir: &Path,
) -> Result<Verdict> {
    let dir = work_dir.join(DIR);
    machine::stop_leftover(&dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the last boot test's {}", dir.display()))?;
    }
    crate::disk::private_dir(&dir)?;
    let (accel, mut note) = machine::pick_accel(settings.accel)?;
    let spec = machine::Spec {
        dir: dir.clone(),
        disks: targets.iter().map(|t| t.path.clone()).collect(),
        firmware,
        cpus: settings.cpus.min(machine::host_cpus()).max(1),
        memory_mib: settings
            .memory_mib
            .min(machine::host_memory_mib() / 2)
            .max(256),
    };
    let overlays = machine::overlays(&spec)?;
    let mut outcome = watch(&spec, &overlays, accel, settings.timeout)?;
    if let (machine::Accel::Kvm, Some(why)) = (accel, outcome.kvm_gave_up) {
        tracing::warn!("{}: starting the boot again on TCG", why.note());
        note = Some(why.note());
        let overlays = machine::overlays(&spec)?;
        outcome = watch(&spec, &overlays, machine::Accel::Tcg, settings.timeout)?;
    }
    let _ = machine::remove_overlays(&spec);
    let verdict = Verdict {
        verdict: if outcome.failure.is_none() {
            "passed"
        } else {
            "failed"
        }
        .to_owned(),
        stage: outcome.reading.stage(),
        failure: outcome.failure.as_ref().map(|(k, _)| k.clone()),
        reason: outcome
            .failure
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| {
                format!(
                    "reached {} and asked for an address by DHCP",
                    outcome.reading.stage()
                )
            }),
        stage_seconds: outcome.stage_seconds,
        dhcp_seconds: outcome.dhcp_seconds,
        seconds: outcome.elapsed.as_secs_f64(),
        accelerator: outcome.accel.as_str().to_owned(),
        accelerator_note: note,
        firmware,
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        console_tail: console::last_lines(&read_console(&spec.dir), TAIL_LINES),
        handed_off_anyway: false,
        first_boot_hooks: crate::repair::hooks::first_boot_statuses(&console::strip_ansi(
            &read_console(&spec.dir),
        ))
        .into_iter()
        .collect(),
    };
    save_verdict(work_dir, &verdict)?;
    tracing::info!(
        verdict = %verdict.verdict,
        stage = %verdict.stage,
        reason = %verdict.reason,
        seconds = verdict.seconds,
        accelerator = %verdict.accelerator,
        "boot test"
    );
    Ok(verdict)
}

/// What one boot showed.
struct Outcome {
    reading: console::Reading,
    /// (kind, reason) when the boot failed.
    failure: Option<(String, String)>,
    stage_seconds: BTreeMap<Stage, f64>,
    dhcp_seconds: Option<f64>,
    elapsed: Duration,
    accel: machine::Accel,
    /// Nothing at all on the console before the machine was stopped.
    /// A KVM boot given up for TCG, and why.
    kvm_gave_up: Option<KvmGaveUp>,
}

fn read_console(dir: &Path) -> String {
    std::fs::read(dir.join(CONSOLE))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs the machine and reads its console and capture until a verdict.
fn watch(
    spec: &machine::Spec,
    overlays: &[PathBuf],
    accel: machine::Accel,
    timeout: Duration,
) -> Result<Outcome> {
    let mut qemu = machine::start(spec, overlays, accel)?;
    let start = Instant::now();
    let mut stage_seconds = BTreeMap::new();
    let mut dhcp_seconds = None;
    let mut target_at: Option<Instant> = None;
    let mut raw_len = 0;
    let finish = |reading: console::Reading,
                  failure: Option<(String, String)>,
                  stage_seconds: BTreeMap<Stage, f64>,
                  dhcp_seconds: Option<f64>,
                  kvm_gave_up: Option<KvmGaveUp>| Outcome {
        reading,
        failure,
        stage_seconds,
        dhcp_seconds,
        elapsed: start.elapsed(),
        accel,
        kvm_gave_up,
    };
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let exited = qemu.exited()?;
        let raw = read_console(&spec.dir);
        raw_len = raw_len.max(raw.len());
        let reading = console::read(&raw);
        let now = start.elapsed().as_secs_f64();
        for (stage, _) in &reading.reached {
            stage_seconds.entry(*stage).or_insert(now);
        }
        if dhcp_seconds.is_none() {
            let capture = dhcp::read_file(&spec.dir.join(CAPTURE), machine::GUEST_MAC)?;
            if capture.requested {
                dhcp_seconds = Some(now);
            }
        }
        if let Some(stop) = &reading.stop {
            let failure = Some((stop.kind().to_owned(), stop_reason(stop)));
            return Ok(finish(reading, failure, stage_seconds, dhcp_seconds, None));
        }
        let up = reading.stage() >= Stage::Target;
        if up && target_at.is_none() {
            target_at = Some(Instant::now());
        }
        if up && dhcp_seconds.is_some() {
            return Ok(finish(reading, None, stage_seconds, dhcp_seconds, None));
        }
        if let Some(status) = exited {
            let failure = Some(stopped_by_itself(
                status.success(),
                &status.to_string(),
                reading.stage(),
                &qemu.log_tail(),
            ));
            return Ok(finish(reading, failure, stage_seconds, dhcp_seconds, None));
        }
        if let Some(at) = target_at {
            if at.elapsed() >= DHCP_GRACE {
                let failure = Some((
                    "no_dhcp".to_owned(),
                    format!(
                        "reached {} but asked for no address by DHCP within {} s: its network configuration did not come up on the cloud's NIC",
                        reading.stage(),
                        DHCP_GRACE.as_secs()
                    ),
                ));
                return Ok(finish(reading, failure, stage_seconds, dhcp_seconds, None));
            }
        }
        if accel == machine::Accel::Kvm {
            if let Some(why) = KvmGaveUp::judge(raw_len, reading.stage(), start.elapsed()) {
                return Ok(finish(
                    reading,
                    None,
                    stage_seconds,
                    dhcp_seconds,
                    Some(why),
                ));
            }
        }
        if start.elapsed() >= timeout {
            let failure = Some((
                "timeout".to_owned(),
                format!(
                    "did not finish booting within {} s (the last stage seen was {})",
                    timeout.as_secs(),
                    reading.stage()
                ),
            ));
            return Ok(finish(reading, failure, stage_seconds, dhcp_seconds, None));
        }
    }
}

/// The machine ended before the boot did. QEMU exits cleanly (with
/// `-no-reboot`) when the guest powers off or reboots: that is the
/// guest's own doing, said as such with the stage it had reached; any
/// other exit is QEMU's failure.
fn stopped_by_itself(clean: bool, status: &str, stage: Stage, log_tail: &str) -> (String, String) {
    if clean {
        (
            "powered_off".to_owned(),
            format!(
                "the guest powered itself off (or rebooted) after reaching {stage}, before a login prompt"
            ),
        )
    } else {
        (
            "qemu_exited".to_owned(),
            format!("the machine stopped by itself ({status}): {log_tail}"),
        )
    }
}

fn stop_reason(stop: &Stop) -> String {
    let what = match stop {
        Stop::GrubPrompt(_) => "stopped at the GRUB prompt",
        Stop::NoKernel(_) => "GRUB could not load the kernel",
        Stop::RootNotFound(_) => "the initramfs did not find the root file system",
        Stop::EmergencyMode(_) => "systemd stopped in emergency mode",
        Stop::KernelPanic(_) => "the kernel panicked",
    };
    format!("{what}: {}", stop.line())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_that_powers_itself_off_is_its_own_failure() {
        assert_eq!(
            stopped_by_itself(true, "exit status: 0", Stage::Kernel, "qemu: terminating"),
            (
                "powered_off".to_owned(),
                "the guest powered itself off (or rebooted) after reaching kernel, before a login prompt".to_owned()
            )
        );
        assert_eq!(
            stopped_by_itself(
                false,
                "exit status: 1",
                Stage::Bootloader,
                "qemu: could not open disk"
            ),
            (
                "qemu_exited".to_owned(),
                "the machine stopped by itself (exit status: 1): qemu: could not open disk"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_kvm_boot_is_given_up_when_silent_or_stuck_before_the_kernel() {
        let s = Duration::from_secs;
        let cases = [
            ("quiet at first", 0, Stage::Firmware, s(10), None),
            ("silent", 0, Stage::Firmware, s(30), Some(KvmGaveUp::Silent)),
            ("GRUB, soon", 900, Stage::Bootloader, s(60), None),
            // GRUB shown, then a hang loading the kernel (seen on a host
            // whose KVM runs no guest properly).
            (
                "stuck in GRUB",
                900,
                Stage::Bootloader,
                s(90),
                Some(KvmGaveUp::Stalled),
            ),
            ("kernel running", 9000, Stage::Kernel, s(300), None),
            ("at its target", 9000, Stage::Target, s(500), None),
        ];
        for (name, bytes, stage, elapsed, want) in cases {
            assert_eq!(KvmGaveUp::judge(bytes, stage, elapsed), want, "{name}");
        }
        // The note keeps the words a reader of the manifest looks for.
        assert!(KvmGaveUp::Stalled.note().starts_with("kvm showed nothing"));
    }

    #[test]
    fn the_detail_names_the_stage_the_reason_and_the_last_lines() {
        let v = Verdict {
            verdict: "failed".into(),
            stage: Stage::Initramfs,
            failure: Some("root_not_found".into()),
            reason:
                "the initramfs did not find the root file system: ALERT!  UUID=1 does not exist."
                    .into(),
            stage_seconds: BTreeMap::new(),
            dhcp_seconds: None,
            seconds: 200.4,
            accelerator: "tcg".into(),
            accelerator_note: None,
            firmware: Firmware::Bios,
            cpus: 1,
            memory_mib: 1024,
            console_tail: vec![
                "Gave up waiting for root file system device.".into(),
                "(initramfs)".into(),
            ],
            handed_off_anyway: false,
            first_boot_hooks: BTreeMap::new(),
        };
        assert!(!v.passed());
        assert_eq!(
            v.failure_detail(),
            "the boot reached stage initramfs and the initramfs did not find the root file system: ALERT!  UUID=1 does not exist. (tcg after 200 s); last console lines:\nGave up waiting for root file system device.\n(initramfs)"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["stage"], "initramfs");
        assert_eq!(json["firmware"], "bios");
        let back: Verdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_first_boot_hook_that_must_succeed_and_did_not_fails_a_passed_boot() {
        let passed = |hooks: &[(&str, i32)]| Verdict {
            verdict: "passed".into(),
            stage: Stage::Target,
            failure: None,
            reason: "reached target and asked for an address by DHCP".into(),
            stage_seconds: BTreeMap::new(),
            dhcp_seconds: Some(9.0),
            seconds: 20.0,
            accelerator: "kvm".into(),
            accelerator_note: None,
            firmware: Firmware::Bios,
            cpus: 1,
            memory_mib: 1024,
            console_tail: vec!["ferry-first-boot agent exit=3".into()],
            handed_off_anyway: false,
            first_boot_hooks: hooks.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
        };
        let mut ok = passed(&[("agent", 0), ("other", 2)]);
        assert_eq!(ok.judge_hooks(&["agent"]), None, "other need not succeed");
        assert!(ok.passed());
        let mut bad = passed(&[("agent", 3)]);
        assert_eq!(
            bad.judge_hooks(&["agent", "missing"]).as_deref(),
            Some("the system booted, but the first-boot hook agent exited with status 3; the first-boot hook missing printed no status on the console: it did not run before the default target; last console lines:\nferry-first-boot agent exit=3")
        );
        assert!(!bad.passed());
        assert_eq!(bad.failure.as_deref(), Some("hook_failed"));
        // A boot that failed already stays as it failed.
        let mut failed = passed(&[]);
        failed.verdict = "failed".into();
        failed.failure = Some("timeout".into());
        assert_eq!(failed.judge_hooks(&["agent"]), None);
        assert_eq!(failed.failure.as_deref(), Some("timeout"));
    }
}
