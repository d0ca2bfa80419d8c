//! The boot check: boots disk images under QEMU (TCG) on the old server's
//! hardware or on the cloud's, reads the serial console, and tells whether
//! the system reached multi-user.target (its marker line), or how it failed.
//!
//! Source images come from `scripts/make-source-image.sh`; the marker line is
//! printed by a one-shot unit that script puts in (a test fixture, not
//! something ferry adds):
//!
//! `FERRY-BOOT-MARKER root_uuid=<uuid> ipv4=<addr>/<len>@<iface>|none hostname=<name> data=<uuid>|none links=<ifaces>`
//!
//! The stacks of `scripts/make-stack-image.sh` add what their fstab holds:
//! `mounts=<targets mounted> unmounted=<targets not mounted>|none swaps=<n>`.
//!
//! Serial logs, QEMU's own output and its command line are kept under
//! `$FERRY_ARTIFACTS/boot/` (default `./artifacts`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry::cmd::Cmd;
use ferry::pipeline::boot::console::{self, Stop};

pub const MARKER: &str = "FERRY-BOOT-MARKER";
/// The address QEMU's user network hands out by DHCP to the first client.
pub const DHCP_IPV4: &str = "10.0.2.15";
/// Long enough for a UEFI boot under TCG on a busy 2-core machine (about a
/// minute and a half when idle); success and known failures end it early.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hardware {
    /// The source server's: the boot disk on IDE (BIOS) or SATA/AHCI
    /// (UEFI), further disks on a MegaRAID SAS HBA, and an e1000 NIC in PCI
    /// slot 8, which the source's static address names.
    Old,
    /// The cloud's: virtio-blk disks and a virtio-net NIC on QEMU's user
    /// network, which answers DHCP.
    Cloud,
}

/// A source server built by `scripts/make-source-image.sh`, with the facts
/// its `meta.env` records.
#[derive(Clone, Debug)]
pub struct SourceImage {
    pub variant: String,
    pub dir: PathBuf,
    /// disk0.img (the boot disk), then the data disk if there is one.
    pub disks: Vec<PathBuf>,
    pub firmware: Firmware,
    pub hostname: String,
    pub root_uuid: String,
    pub data_uuid: Option<String>,
    pub data_file_text: String,
    /// The source's static address with prefix length, e.g. 10.0.2.50/24.
    pub static_ipv4: String,
    pub old_nic: String,
    /// The fstab's file systems (mount points in fstab order) and swap
    /// areas, for the stacks whose marker reports them.
    pub fstab_mounts: Option<Vec<String>>,
    pub fstab_swaps: Option<usize>,
    /// The old machine's firmware variables, where its boot entry is the
    /// only way to the loader.
    pub ovmf_vars: Option<PathBuf>,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("FERRY_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("artifacts"))
}

impl SourceImage {
    /// Builds the variant's images, or finds them in the cache.
    pub fn build(variant: &str) -> Result<SourceImage> {
        Self::build_with("make-source-image.sh", variant)
    }

    /// Builds a stack of `scripts/make-stack-image.sh`, or finds it in the cache.
    pub fn build_stack(variant: &str) -> Result<SourceImage> {
        Self::build_with("make-stack-image.sh", variant)
    }

    fn build_with(script: &str, variant: &str) -> Result<SourceImage> {
        let script = repo_root().join("scripts").join(script);
        let out = Cmd::new("bash")
            .arg(&script)
            .arg(variant)
            .run()
            .with_context(|| format!("building source image {variant}"))?;
        let text = out.stdout_text();
        let dir = text
            .lines()
            .last()
            .map(PathBuf::from)
            .with_context(|| format!("make-source-image.sh {variant} printed no directory"))?;
        Self::open(&dir)
    }

    /// Reads a built image directory.
    pub fn open(dir: &Path) -> Result<SourceImage> {
        let meta_path = dir.join("meta.env");
        let text = fs::read_to_string(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let meta = parse_env(&text);
        let get = |k: &str| -> Result<String> {
            meta.get(k)
                .cloned()
                .with_context(|| format!("{} has no {k}", meta_path.display()))
        };
        let firmware = match get("FIRMWARE")?.as_str() {
            "bios" => Firmware::Bios,
            "uefi" => Firmware::Uefi,
            other => bail!("{}: unknown FIRMWARE {other}", meta_path.display()),
        };
        let ndisks: usize = get("DISKS")?
            .parse()
            .with_context(|| format!("{}: DISKS is not a number", meta_path.display()))?;
        let disks = (0..ndisks)
            .map(|i| dir.join(format!("disk{i}.img")))
            .collect();
        let data_uuid = Some(get("DATA_UUID")?).filter(|u| u != "none");
        let fstab_mounts = meta
            .get("FSTAB_MOUNTS")
            .map(|m| m.split(',').map(str::to_owned).collect());
        let fstab_swaps = match meta.get("FSTAB_SWAPS") {
            Some(n) => Some(n.parse().with_context(|| {
                format!("{}: FSTAB_SWAPS is not a number", meta_path.display())
            })?),
            None => None,
        };
        let ovmf_vars = meta
            .get("OVMF_VARS")
            .filter(|v| *v != "none")
            .map(|v| dir.join(v));
        Ok(SourceImage {
            variant: get("VARIANT")?,
            dir: dir.to_owned(),
            disks,
            firmware,
            hostname: get("HOSTNAME")?,
            root_uuid: get("ROOT_UUID")?,
            data_uuid,
            data_file_text: get("DATA_FILE_TEXT")?,
            static_ipv4: get("STATIC_IPV4")?,
            old_nic: get("OLD_NIC")?,
            fstab_mounts,
            fstab_swaps,
            ovmf_vars,
        })
    }

    /// The boot of this source on its own hardware: its positive control.
    pub fn old_hardware_boot(&self, name: &str) -> BootSpec {
        BootSpec {
            name: name.to_owned(),
            disks: self.disks.clone(),
            firmware: self.firmware,
            hardware: Hardware::Old,
            snapshot: true,
            timeout: DEFAULT_TIMEOUT,
            ovmf_vars: self.ovmf_vars.clone(),
            cloud_nics: Vec::new(),
        }
    }
}

/// `KEY=value` lines, values optionally in double quotes.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

#[derive(Clone, Debug)]
pub struct BootSpec {
    /// Names the artifacts: `<name>.serial.log`, `<name>.qemu.log`, `<name>.cmdline`.
    pub name: String,
    /// Boot disk first.
    pub disks: Vec<PathBuf>,
    pub firmware: Firmware,
    pub hardware: Hardware,
    /// Leave the image files untouched (writes go to a temporary overlay).
    pub snapshot: bool,
    pub timeout: Duration,
    /// UEFI: the firmware variables to start from (copied, never written),
    /// instead of OVMF's empty ones.
    pub ovmf_vars: Option<PathBuf>,
    /// The cloud's NICs, in PCI order: each a MAC and the IPv4 network of
    /// its own user-mode network (QEMU answers DHCP with .15 and routes
    /// through .2). Empty: one NIC on 10.0.2.0/24.
    pub cloud_nics: Vec<(String, String)>,
}

/// What the booted system said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub root_uuid: String,
    /// Address with prefix length, e.g. 10.0.2.15/24.
    pub ipv4: Option<String>,
    pub iface: Option<String>,
    pub hostname: String,
    pub data_uuid: Option<String>,
    pub links: Vec<String>,
    /// The fstab's mount points that are mounted and those that are not,
    /// and the active swap areas (stack markers only).
    pub mounts: Option<Vec<String>>,
    pub unmounted: Option<Vec<String>>,
    pub swaps: Option<usize>,
}

impl Marker {
    /// The address without its prefix length.
    pub fn ipv4_addr(&self) -> Option<&str> {
        self.ipv4
            .as_deref()
            .map(|a| a.split('/').next().unwrap_or(a))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Booted(Marker),
    /// The initramfs did not find the root file system (the line that said so).
    RootNotFound(String),
    EmergencyMode(String),
    KernelPanic(String),
    /// GRUB found no configuration or kernel and waits at its prompt (the
    /// last GRUB error before it).
    GrubPrompt(String),
    /// Nothing decisive within the timeout.
    TimedOut,
    /// QEMU ended by itself (reboot with -no-reboot, crash) before anything decisive.
    QemuExited(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Booted(m) => write!(f, "booted: {m:?}"),
            Outcome::RootNotFound(l) => write!(f, "initramfs did not find the root: {l}"),
            Outcome::EmergencyMode(l) => write!(f, "emergency mode: {l}"),
            Outcome::KernelPanic(l) => write!(f, "kernel panic: {l}"),
            Outcome::GrubPrompt(l) => write!(f, "stopped at the GRUB prompt: {l}"),
            Outcome::TimedOut => write!(f, "timed out"),
            Outcome::QemuExited(s) => write!(f, "qemu exited: {s}"),
        }
    }
}

#[derive(Debug)]
pub struct BootReport {
    pub outcome: Outcome,
    pub serial_log: PathBuf,
    pub elapsed: Duration,
}

impl BootReport {
    /// The marker, or a panic that quotes the outcome and the end of the log.
    pub fn expect_booted(&self) -> &Marker {
        match &self.outcome {
            Outcome::Booted(m) => m,
            other => panic!(
                "did not boot ({other}) after {:?}; serial log {}:\n{}",
                self.elapsed,
                self.serial_log.display(),
                self.log_tail(3000)
            ),
        }
    }

    pub fn log_tail(&self, bytes: usize) -> String {
        let text = fs::read(&self.serial_log)
            .map(|b| strip_ansi(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        let mut start = text.len().saturating_sub(bytes);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }
}

/// Removes terminal escape sequences (systemd's colours and spinner).
pub fn strip_ansi(text: &str) -> String {
    console::strip_ansi(text)
}

/// Parses the fields of a marker line (text from `FERRY-BOOT-MARKER` on).
pub fn parse_marker(line: &str) -> Result<Marker> {
    let rest = line
        .trim()
        .strip_prefix(MARKER)
        .with_context(|| format!("not a marker line: {line:?}"))?;
    let fields: HashMap<&str, &str> = rest
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect();
    let get = |k: &str| -> Result<&str> {
        fields
            .get(k)
            .copied()
            .with_context(|| format!("marker line lacks {k}=: {line:?}"))
    };
    let none_is_absent = |v: &str| Some(v.to_owned()).filter(|v| v != "none" && !v.is_empty());
    let (ipv4, iface) = match none_is_absent(get("ipv4")?) {
        Some(v) => match v.split_once('@') {
            Some((a, i)) => (Some(a.to_owned()), Some(i.to_owned())),
            None => bail!("marker ipv4= is not <addr>@<iface>: {line:?}"),
        },
        None => (None, None),
    };
    let root_uuid = get("root_uuid")?.to_owned();
    if root_uuid.is_empty() {
        bail!("marker has an empty root_uuid: {line:?}");
    }
    let list = |k: &str| {
        fields.get(k).map(|v| {
            none_is_absent(v)
                .map(|l| l.split(',').map(str::to_owned).collect())
                .unwrap_or_default()
        })
    };
    let swaps = match fields.get("swaps") {
        Some(n) => Some(
            n.parse()
                .with_context(|| format!("marker swaps= is not a number: {line:?}"))?,
        ),
        None => None,
    };
    Ok(Marker {
        mounts: list("mounts"),
        unmounted: list("unmounted"),
        swaps,
        root_uuid,
        ipv4,
        iface,
        hostname: get("hostname")?.to_owned(),
        data_uuid: none_is_absent(get("data")?),
        links: none_is_absent(fields.get("links").copied().unwrap_or("none"))
            .map(|l| l.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// The first decisive event of a serial log: the marker, or a failure as
/// the appliance's boot test tells them apart (one reader of consoles).
pub fn scan_serial(raw: &str) -> Option<Outcome> {
    let text = strip_ansi(raw);
    // Only whole lines: the last one may still be arriving.
    let complete = &text[..text.rfind('\n').unwrap_or(0)];
    for line in complete.lines() {
        if let Some(pos) = line.find(MARKER) {
            // The unit echoes to ttyS0 and, through the journal, to the
            // console; a line garbled by interleaving is skipped, not fatal.
            if let Ok(m) = parse_marker(&line[pos..]) {
                return Some(Outcome::Booted(m));
            }
        }
    }
    Some(match console::read(raw).stop? {
        Stop::GrubPrompt(l) | Stop::NoKernel(l) => Outcome::GrubPrompt(l),
        Stop::RootNotFound(l) => Outcome::RootNotFound(l),
        Stop::EmergencyMode(l) => Outcome::EmergencyMode(l),
        Stop::KernelPanic(l) => Outcome::KernelPanic(l),
    })
}

/// The QEMU argv for a boot, without the serial file.
pub fn qemu_args(spec: &BootSpec, ovmf_vars: Option<&Path>) -> Result<Vec<String>> {
    if spec.disks.is_empty() {
        bail!("boot {}: no disks", spec.name);
    }
    let mut a: Vec<String> = [
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        "1024",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if spec.firmware == Firmware::Uefi {
        let vars = ovmf_vars.context("a UEFI boot needs a copy of OVMF_VARS")?;
        a.push("-drive".into());
        a.push(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
        a.push("-drive".into());
        a.push(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let snapshot = if spec.snapshot { ",snapshot=on" } else { "" };
    for (i, disk) in spec.disks.iter().enumerate() {
        let path = disk
            .to_str()
            .with_context(|| format!("disk path {disk:?} is not UTF-8"))?;
        if path.contains(',') {
            bail!("disk path {path} contains a comma, which QEMU's -drive cannot take");
        }
        a.push("-drive".into());
        a.push(format!("file={path},format=raw,if=none,id=d{i}{snapshot}"));
    }
    match spec.hardware {
        Hardware::Old => {
            match spec.firmware {
                Firmware::Bios => {
                    a.push("-device".into());
                    a.push("ide-hd,drive=d0,bus=ide.0,unit=0,bootindex=0".into());
                }
                Firmware::Uefi => {
                    a.push("-device".into());
                    a.push("ahci,id=ahci,addr=0x6".into());
                    a.push("-device".into());
                    a.push("ide-hd,drive=d0,bus=ahci.0,bootindex=0".into());
                }
            }
            // Data disks on a RAID HBA whose driver is not in the source's
            // initramfs: they appear after the boot disk, so the names in
            // the source's fstab (sda boot, sdb data) hold on every boot.
            // Two disks on one ATA controller are probed in parallel and
            // take sda and sdb in either order.
            if spec.disks.len() > 1 {
                a.push("-device".into());
                a.push("megasas,id=hba,addr=0x7".into());
            }
            for i in 1..spec.disks.len() {
                a.push("-device".into());
                a.push(format!("scsi-hd,drive=d{i},bus=hba.0,scsi-id={i}"));
            }
            a.push("-netdev".into());
            a.push("user,id=n0".into());
            a.push("-device".into());
            a.push("e1000,netdev=n0,addr=0x8,mac=52:54:00:12:34:08".into());
        }
        Hardware::Cloud => {
            for i in 0..spec.disks.len() {
                a.push("-device".into());
                let boot = if i == 0 { ",bootindex=0" } else { "" };
                a.push(format!(
                    "virtio-blk-pci,drive=d{i},addr=0x{:x}{boot}",
                    4 + i
                ));
            }
            if spec.cloud_nics.is_empty() {
                a.push("-netdev".into());
                a.push("user,id=n0".into());
                a.push("-device".into());
                a.push("virtio-net-pci,netdev=n0,addr=0x3,mac=52:54:00:12:34:03".into());
            }
            // Slots 3, then 9 and on: 4 to 8 are the disks'.
            for (i, (mac, net)) in spec.cloud_nics.iter().enumerate() {
                let slot = if i == 0 { 3 } else { 8 + i };
                a.push("-netdev".into());
                a.push(format!("user,id=n{i},net={net}"));
                a.push("-device".into());
                a.push(format!(
                    "virtio-net-pci,netdev=n{i},addr=0x{slot:x},mac={mac}"
                ));
            }
        }
    }
    Ok(a)
}

/// Kills QEMU when the check ends, whichever way.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Boots and watches the serial console until the marker, a known failure,
/// QEMU's exit or the timeout; QEMU is killed as soon as one is seen.
pub fn boot(spec: &BootSpec) -> Result<BootReport> {
    let dir = artifacts_dir().join("boot");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let serial_log = dir.join(format!("{}.serial.log", spec.name));
    let qemu_log = dir.join(format!("{}.qemu.log", spec.name));
    let _ = fs::remove_file(&serial_log);

    let scratch = tempfile::tempdir().context("creating a scratch directory for OVMF vars")?;
    let vars = if spec.firmware == Firmware::Uefi {
        let v = scratch.path().join("OVMF_VARS.fd");
        let from = spec
            .ovmf_vars
            .clone()
            .unwrap_or_else(|| PathBuf::from(OVMF_VARS));
        fs::copy(&from, &v)
            .with_context(|| format!("copying {} (is ovmf installed?)", from.display()))?;
        Some(v)
    } else {
        None
    };
    let mut args = qemu_args(spec, vars.as_deref())?;
    args.push("-serial".into());
    args.push(format!("file:{}", serial_log.display()));
    fs::write(
        dir.join(format!("{}.cmdline", spec.name)),
        format!("qemu-system-x86_64 {}\n", args.join(" ")),
    )
    .context("writing the QEMU command line artifact")?;

    let qemu_out =
        fs::File::create(&qemu_log).with_context(|| format!("creating {}", qemu_log.display()))?;
    let qemu_err = qemu_out
        .try_clone()
        .context("duplicating the QEMU log handle")?;
    // Not through ferry::cmd::Cmd: that runs a tool to completion, and this
    // one must be watched while it runs and killed at the first verdict.
    let child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(qemu_out)
        .stderr(qemu_err)
        .spawn()
        .context("starting qemu-system-x86_64 (is qemu-system-x86 installed?)")?;
    let mut qemu = Qemu(child);

    let start = Instant::now();
    let outcome = loop {
        std::thread::sleep(Duration::from_millis(500));
        let raw = fs::read(&serial_log).unwrap_or_default();
        if let Some(o) = scan_serial(&String::from_utf8_lossy(&raw)) {
            break o;
        }
        if let Some(status) = qemu.0.try_wait().context("polling qemu")? {
            // It may have written its last lines just before exiting.
            let raw = fs::read(&serial_log).unwrap_or_default();
            if let Some(o) = scan_serial(&String::from_utf8_lossy(&raw)) {
                break o;
            }
            let err = fs::read_to_string(&qemu_log).unwrap_or_default();
            break Outcome::QemuExited(format!("{status}: {}", err.trim()));
        }
        if start.elapsed() > spec.timeout {
            break Outcome::TimedOut;
        }
    };
    let elapsed = start.elapsed();
    drop(qemu);
    eprintln!(
        "boot {}: {} after {:.0?} (serial log {})",
        spec.name,
        outcome,
        elapsed,
        serial_log.display()
    );
    Ok(BootReport {
        outcome,
        serial_log,
        elapsed,
    })
}

/// The migrated disks boot on the cloud's hardware as the source server:
/// its root file system and hostname, an address from DHCP, its data disk.
pub fn boots_on_the_cloud(src: &SourceImage, targets: Vec<PathBuf>, name: &str) -> BootReport {
    let report = boot(&BootSpec {
        name: name.to_owned(),
        disks: targets,
        firmware: src.firmware,
        hardware: Hardware::Cloud,
        snapshot: false,
        timeout: DEFAULT_TIMEOUT,
        ovmf_vars: None,
        cloud_nics: Vec::new(),
    })
    .expect("running the boot check");
    let m = report.expect_booted();
    assert_eq!(m.root_uuid, src.root_uuid, "root file system");
    assert_eq!(m.hostname, src.hostname, "hostname");
    assert_eq!(
        m.ipv4_addr(),
        Some(DHCP_IPV4),
        "address from DHCP, not the old static one (links: {:?})",
        m.links
    );
    assert_eq!(m.data_uuid, src.data_uuid, "data disk mounted on /data");
    assert_fstab_in_use(src, m);
    report
}

/// Every file system and swap area of the source's fstab is in use, for
/// the images whose marker reports them.
pub fn assert_fstab_in_use(src: &SourceImage, m: &Marker) {
    if let Some(want) = &src.fstab_mounts {
        assert_eq!(
            m.mounts.as_ref(),
            Some(want),
            "fstab file systems mounted (not mounted: {:?})",
            m.unmounted
        );
        assert_eq!(
            m.unmounted.as_deref(),
            Some(&[][..]),
            "fstab file systems not mounted"
        );
    }
    if let Some(want) = src.fstab_swaps {
        assert_eq!(m.swaps, Some(want), "active swap areas");
    }
}
