//! The test machine: QEMU with the cloud's devices, booting qcow2 overlays
//! of the targets, its console in a file and its NIC's traffic in a pcap.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{CAPTURE, CONSOLE};
use crate::cmd::Cmd;
use crate::job::errors::{coded, ErrorCode};

pub const QEMU: &str = "qemu-system-x86_64";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// The test machine's NIC, as the capture knows it.
pub(crate) const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xfe, 0x12, 0x01];
const PIDFILE: &str = "qemu.pid";
const LOG: &str = "qemu.log";

/// How the system boots, as the repair found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// The accelerator a machine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator for a setting, with a note when it is not the one asked for.
pub(crate) fn pick_accel(want: super::AccelChoice) -> Result<(Accel, Option<String>)> {
    let kvm = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    Ok(match (want, kvm) {
        (super::AccelChoice::Tcg, _) => (Accel::Tcg, None),
        (super::AccelChoice::Auto | super::AccelChoice::Kvm, Ok(_)) => (Accel::Kvm, None),
        (super::AccelChoice::Auto, Err(e)) => (
            Accel::Tcg,
            Some(format!("/dev/kvm cannot be opened ({e}); tcg used")),
        ),
        (super::AccelChoice::Kvm, Err(e)) => {
            return Err(coded(
                ErrorCode::ToolMissing,
                format!("boot_test_accel = \"kvm\" but /dev/kvm cannot be opened ({e}); set it to \"auto\" or \"tcg\""),
            ))
        }
    })
}

pub(crate) fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// MemTotal of /proc/meminfo, in MiB (2 GiB when unreadable).
pub(crate) fn host_memory_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(2048)
}

/// One boot's machine.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Where the overlays, the console, the capture and QEMU's log go.
    pub dir: PathBuf,
    /// The targets, disk 0 (the boot disk) first.
    pub disks: Vec<PathBuf>,
    pub firmware: Firmware,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// A fresh qcow2 overlay per target, backed by the target as raw: the
/// guest's writes land in the overlay, the target is only read.
pub fn overlays(spec: &Spec) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let overlay = spec.dir.join(format!("disk{i}.qcow2"));
        let _ = fs::remove_file(&overlay);
        let backing = fs::canonicalize(disk)
            .with_context(|| format!("resolving target {}", disk.display()))?;
        Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&backing)
            .arg(&overlay)
            .run()
            .with_context(|| format!("creating the boot test's overlay of {}", disk.display()))?;
        out.push(overlay);
    }
    Ok(out)
}

pub(crate) fn remove_overlays(spec: &Spec) -> Result<()> {
    for i in 0..spec.disks.len() {
        let overlay = spec.dir.join(format!("disk{i}.qcow2"));
        match fs::remove_file(&overlay) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", overlay.display())),
        }
    }
    Ok(())
}

/// QEMU's argv for a boot (`vars`: the machine's copy of OVMF's variables).
pub fn args(
    spec: &Spec,
    overlays: &[PathBuf],
    accel: Accel,
    vars: Option<&Path>,
) -> Result<Vec<String>> {
    if overlays.is_empty() {
        bail!("the boot test has no disks");
    }
    let path = |p: &Path| -> Result<String> {
        let s = p
            .to_str()
            .with_context(|| format!("path {} is not UTF-8", p.display()))?;
        if s.contains(',') {
            bail!("path {s} contains a comma, which QEMU's options cannot take");
        }
        Ok(s.to_owned())
    };
    let mut a: Vec<String> = vec![
        "-accel".into(),
        accel.as_str().into(),
        "-machine".into(),
        "pc".into(),
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", path(&spec.dir.join(CONSOLE))?),
        "-pidfile".into(),
        path(&spec.dir.join(PIDFILE))?,
    ];
    if spec.firmware == Firmware::Uefi {
        let vars = vars.context("a UEFI boot needs a copy of OVMF's variables")?;
        a.push("-drive".into());
        a.push(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
        a.push("-drive".into());
        a.push(format!("if=pflash,format=raw,file={}", path(vars)?));
    }
    for (i, overlay) in overlays.iter().enumerate() {
        a.push("-drive".into());
        a.push(format!(
            "file={},format=qcow2,if=none,id=d{i}",
            path(overlay)?
        ));
        a.push("-device".into());
        let boot = if i == 0 { ",bootindex=0" } else { "" };
        a.push(format!(
            "virtio-blk-pci,drive=d{i},addr=0x{:x}{boot}",
            4 + i
        ));
    }
    // The user network answers DHCP; restrict=on keeps the migrated server
    // from reaching the appliance or anything beyond it while it runs.
    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    a.extend([
        "-netdev".into(),
        "user,id=n0,restrict=on".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,addr=0x3,mac={mac}"),
        "-object".into(),
        format!(
            "filter-dump,id=dump0,netdev=n0,file={}",
            path(&spec.dir.join(CAPTURE))?
        ),
    ]);
    Ok(a)
}

/// A running machine; killed when dropped.
pub(crate) struct Machine {
    child: Child,
    log: PathBuf,
}

impl Machine {
    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().context("polling qemu")
    }

    /// The end of QEMU's own output.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(5)..].join("; ")
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                tracing::warn!("stopping the boot test's qemu: {e}");
            }
        }
        let _ = self.child.wait();
    }
}

/// Starts the machine.
pub fn start(spec: &Spec, overlays: &[PathBuf], accel: Accel) -> Result<Machine> {
    for f in [CONSOLE, CAPTURE, PIDFILE] {
        let _ = fs::remove_file(spec.dir.join(f));
    }
    let vars = if spec.firmware == Firmware::Uefi {
        let v = spec.dir.join("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &v).map_err(|e| {
            coded(
                ErrorCode::ToolMissing,
                format!("{OVMF_VARS} cannot be read ({e}): a UEFI system's boot test needs OVMF (Debian package: ovmf)"),
            )
        })?;
        Some(v)
    } else {
        None
    };
    let argv = args(spec, overlays, accel, vars.as_deref())?;
    let log = spec.dir.join(LOG);
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .context("duplicating the qemu log's handle")?;
    fs::write(
        spec.dir.join("qemu.cmdline"),
        format!("{QEMU} {}\n", argv.join(" ")),
    )
    .context("writing the boot test's command line")?;
    tracing::info!(accel = accel.as_str(), command = %argv.join(" "), "starting the boot test's machine");
    // Not through crate::cmd::Cmd, which runs a tool to its end: this one
    // is watched while it runs and stopped at the verdict.
    let child = match Command::new(QEMU)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(coded(
                ErrorCode::ToolMissing,
                format!("`{QEMU}` is not installed (Debian package: qemu-system-x86; needed for the boot test, or set boot_test = false)"),
            ))
        }
        Err(e) => return Err(e).with_context(|| format!("starting {QEMU}")),
    };
    Ok(Machine { child, log })
}

/// A machine left running by an appliance that died mid-test (its pidfile
/// names it) is stopped, or the next run's overlays would be in use.
pub(crate) fn stop_leftover(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join(PIDFILE)) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    // Only a QEMU whose command line names this directory is ours.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy());
    if ours {
        tracing::warn!(pid, "stopping the boot test's machine of an earlier run");
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(firmware: Firmware, disks: usize) -> Spec {
        Spec {
            dir: PathBuf::from("/var/lib/ferry/processing/boot"),
            disks: (0..disks)
                .map(|i| PathBuf::from(format!("/dev/vd{}", (b'b' + i as u8) as char)))
                .collect(),
            firmware,
            cpus: 2,
            memory_mib: 1024,
        }
    }

    #[test]
    fn the_machine_is_the_clouds_and_writes_only_its_overlays() {
        let s = spec(Firmware::Bios, 2);
        let overlays: Vec<PathBuf> = (0..2)
            .map(|i| s.dir.join(format!("disk{i}.qcow2")))
            .collect();
        let a = args(&s, &overlays, Accel::Tcg, None).unwrap().join(" ");
        assert!(
            a.starts_with("-accel tcg -machine pc -m 1024 -smp 2 -nodefaults"),
            "{a}"
        );
        assert!(a.contains("-drive file=/var/lib/ferry/processing/boot/disk0.qcow2,format=qcow2,if=none,id=d0 -device virtio-blk-pci,drive=d0,addr=0x4,bootindex=0"), "{a}");
        assert!(
            a.contains("-device virtio-blk-pci,drive=d1,addr=0x5 "),
            "{a}"
        );
        assert!(a.contains("-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,addr=0x3,mac=52:54:00:fe:12:01"), "{a}");
        assert!(a.contains("-object filter-dump,id=dump0,netdev=n0,file=/var/lib/ferry/processing/boot/capture.pcap"), "{a}");
        assert!(
            !a.contains("/dev/vd"),
            "the targets are never QEMU's drives: {a}"
        );
        assert!(!a.contains("pflash"), "{a}");
    }

    #[test]
    fn a_uefi_machine_has_ovmf_and_its_own_variables() {
        let s = spec(Firmware::Uefi, 1);
        let overlays = vec![s.dir.join("disk0.qcow2")];
        assert_eq!(
            args(&s, &overlays, Accel::Kvm, None)
                .unwrap_err()
                .to_string(),
            "a UEFI boot needs a copy of OVMF's variables"
        );
        let a = args(&s, &overlays, Accel::Kvm, Some(&s.dir.join("OVMF_VARS.fd")))
            .unwrap()
            .join(" ");
        assert!(a.starts_with("-accel kvm "), "{a}");
        assert!(a.contains(&format!("-drive if=pflash,format=raw,readonly=on,file={OVMF_CODE} -drive if=pflash,format=raw,file=/var/lib/ferry/processing/boot/OVMF_VARS.fd")), "{a}");
    }

    #[test]
    fn paths_qemu_cannot_take_are_refused() {
        let mut s = spec(Firmware::Bios, 1);
        s.dir = PathBuf::from("/srv/a,b");
        let err = args(&s, &[PathBuf::from("/srv/x.qcow2")], Accel::Tcg, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "path /srv/a,b/console.log contains a comma, which QEMU's options cannot take"
        );
        assert_eq!(
            args(&s, &[], Accel::Tcg, None).unwrap_err().to_string(),
            "the boot test has no disks"
        );
    }
}
