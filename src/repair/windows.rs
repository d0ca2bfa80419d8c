//! Windows system disks: recognised by their registry, inspected offline
//! (version, VirtIO drivers) and prepared for the cloud (the SAN policy
//! that brings data disks online with their letters). The volume is an
//! NTFS mounted through ntfs-3g; the hives are read and written with the
//! hivex tools ([`super::hive`]). No Linux repair step ever runs here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::engine::{Change, Mode, Status, StepReport};
use super::hive::{Hive, RegValue};
use crate::job::errors::{coded, ErrorCode};

/// Where the SYSTEM hive is on a Windows system volume.
pub(crate) const SYSTEM_HIVE: &str = "Windows/System32/config/SYSTEM";
const SOFTWARE_HIVE: &str = "Windows/System32/config/SOFTWARE";

/// Storage drivers that let Windows boot from a virtio disk.
pub(crate) const STORAGE_DRIVERS: &[&str] = &["viostor", "vioscsi"];
/// The virtio network driver.
pub(crate) const NET_DRIVER: &str = "netkvm";

/// `SanPolicy` of partmgr: 1 brings every disk online (VDS_SP_ONLINE).
pub(crate) const SAN_POLICY_ONLINE: u32 = 1;

/// `path` under `root`, each component matched without regard to case
/// (NTFS names are case-insensitive to Windows, not through ntfs-3g).
pub(crate) fn find_ci(root: &Path, path: &str) -> Option<PathBuf> {
    let mut at = root.to_owned();
    for c in path.split(['/', '\\']).filter(|c| !c.is_empty()) {
        let exact = at.join(c);
        if exact.symlink_metadata().is_ok() {
            at = exact;
            continue;
        }
        let found = std::fs::read_dir(&at)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(c))?;
        at = found.path();
    }
    Some(at)
}

/// Whether the volume mounted at `root` is a Windows system volume.
pub(crate) fn is_windows(root: &Path) -> bool {
    find_ci(root, SYSTEM_HIVE).is_some_and(|p| p.is_file())
}

/// A driver service of the SYSTEM hive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Driver {
    pub name: String,
    /// `Start`: 0 boot, 1 system, 2 automatic, 3 on demand, 4 disabled.
    pub start: Option<u32>,
    pub image_path: Option<String>,
    /// The driver's file, as found on the volume.
    pub file: Option<String>,
}

impl Driver {
    /// A storage driver Windows loads early enough to boot from its disk.
    pub fn boots(&self) -> bool {
        self.start == Some(0) && self.file.is_some()
    }
    /// Installed and not disabled, with its file.
    pub fn usable(&self) -> bool {
        self.start.is_some_and(|s| s <= 3) && self.file.is_some()
    }
}

/// What the registry says about the system.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WindowsInfo {
    /// `ProductName` of `SOFTWARE\Microsoft\Windows NT\CurrentVersion`.
    pub product_name: String,
    pub current_version: Option<String>,
    pub current_build: Option<String>,
    pub edition: Option<String>,
    /// The control set the system boots with (`Select\Current`).
    pub control_set: String,
    pub storage_drivers: Vec<Driver>,
    pub net_driver: Option<Driver>,
    /// partmgr's `SanPolicy` (absent: the edition's default, offline
    /// shared on Windows Server).
    pub san_policy: Option<u32>,
}

impl WindowsInfo {
    /// The storage driver the system can boot from on virtio, if any.
    pub(crate) fn boot_storage(&self) -> Option<&Driver> {
        self.storage_drivers.iter().find(|d| d.boots())
    }
}

fn hives(root: &Path) -> Result<(Hive, Option<Hive>)> {
    let system = find_ci(root, SYSTEM_HIVE)
        .with_context(|| format!("{} holds no {SYSTEM_HIVE}", root.display()))?;
    Ok((
        Hive::new(system),
        find_ci(root, SOFTWARE_HIVE).map(Hive::new),
    ))
}

fn text(v: Option<RegValue>) -> Option<String> {
    v.and_then(|v| v.as_text().map(str::to_owned))
}

/// The control set the system boots with: `ControlSet00N` from
/// `Select\Current` (offline there is no CurrentControlSet).
fn control_set(system: &Hive) -> Result<String> {
    let current = system
        .value("\\Select", "Current")?
        .and_then(|v| v.as_dword())
        .ok_or_else(|| {
            coded(
                ErrorCode::SystemNotFound,
                format!(
                    "the SYSTEM hive {} has no Select\\Current",
                    system.path().display()
                ),
            )
        })?;
    Ok(format!("ControlSet{current:03}"))
}

/// The driver file an `ImagePath` names (`\SystemRoot\System32\drivers\x.sys`,
/// `System32\drivers\x.sys`, `system32\DRIVERS\x.sys`), on the volume.
fn driver_file(root: &Path, name: &str, image_path: Option<&str>) -> Option<String> {
    let default = format!("System32\\drivers\\{name}.sys");
    let p = image_path.unwrap_or(&default);
    let lower = p.to_ascii_lowercase();
    let rel = if let Some(i) = lower.find("system32\\") {
        format!("Windows\\{}", &p[i..])
    } else {
        p.trim_start_matches('\\').to_owned()
    };
    find_ci(root, &rel)
        .filter(|f| f.is_file())
        .map(|f| f.strip_prefix(root).unwrap_or(&f).display().to_string())
}

fn driver(root: &Path, system: &Hive, set: &str, name: &str) -> Result<Option<Driver>> {
    let key = format!("\\{set}\\Services\\{name}");
    let Some(values) = system.values(&key)? else {
        return Ok(None);
    };
    let get = |n: &str| {
        values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let image_path = text(get("ImagePath"));
    Ok(Some(Driver {
        name: name.to_owned(),
        start: get("Start").and_then(|v| v.as_dword()),
        file: driver_file(root, name, image_path.as_deref()),
        image_path,
    }))
}

/// Read the system mounted at `root`.
pub fn detect(root: &Path) -> Result<WindowsInfo> {
    let (system, software) = hives(root)?;
    let set = control_set(&system)?;
    let cv = "\\Microsoft\\Windows NT\\CurrentVersion";
    let version = |n: &str| -> Result<Option<String>> {
        match &software {
            Some(h) => Ok(text(h.value(cv, n)?)),
            None => Ok(None),
        }
    };
    let mut storage_drivers = Vec::new();
    for name in STORAGE_DRIVERS {
        if let Some(d) = driver(root, &system, &set, name)? {
            storage_drivers.push(d);
        }
    }
    Ok(WindowsInfo {
        product_name: version("ProductName")?.unwrap_or_else(|| "Windows".to_owned()),
        current_version: version("CurrentVersion")?,
        current_build: version("CurrentBuild")?,
        edition: version("EditionID")?,
        net_driver: driver(root, &system, &set, NET_DRIVER)?,
        san_policy: system
            .value(
                &format!("\\{set}\\Services\\partmgr\\Parameters"),
                "SanPolicy",
            )?
            .and_then(|v| v.as_dword()),
        storage_drivers,
        control_set: set,
    })
}

/// Why the system cannot boot on virtio hardware, if it cannot.
pub(crate) fn virtio_problems(info: &WindowsInfo) -> Vec<String> {
    let mut out = Vec::new();
    if info.boot_storage().is_none() {
        let found: Vec<String> = info
            .storage_drivers
            .iter()
            .map(|d| {
                format!(
                    "{} (start {}, file {})",
                    d.name,
                    d.start.map_or("unset".to_owned(), |s| s.to_string()),
                    d.file.as_deref().unwrap_or("missing")
                )
            })
            .collect();
        out.push(if found.is_empty() {
            "no VirtIO storage driver (viostor or vioscsi) is installed".to_owned()
        } else {
            format!(
                "no VirtIO storage driver starts at boot with its file present: {}",
                found.join(", ")
            )
        });
    }
    match &info.net_driver {
        Some(d) if d.usable() => {}
        Some(d) => out.push(format!(
            "the VirtIO network driver netkvm is disabled or its file is missing (start {}, file {})",
            d.start.map_or("unset".to_owned(), |s| s.to_string()),
            d.file.as_deref().unwrap_or("missing")
        )),
        None => out.push("the VirtIO network driver netkvm is not installed".to_owned()),
    }
    out
}

/// The preparation of a Windows system for the cloud: partmgr's SAN
/// policy set so that every disk comes online with its drive letter.
/// Idempotent; in plan mode nothing is written.
pub fn prepare(root: &Path, mode: Mode) -> Result<(WindowsInfo, Vec<StepReport>)> {
    let info = detect(root).context("reading the Windows registry")?;
    let (system, _) = hives(root)?;
    let set = &info.control_set;
    let services = format!("\\{set}\\Services");
    let key = format!("{services}\\partmgr\\Parameters");
    let hive_rel = system
        .path()
        .strip_prefix(root)
        .unwrap_or(system.path())
        .display()
        .to_string();
    let mut step = StepReport {
        step: "san-policy".to_owned(),
        status: Status::Unchanged,
        changes: Vec::new(),
        notes: Vec::new(),
        output: Vec::new(),
    };
    if info.san_policy == Some(SAN_POLICY_ONLINE) {
        step.notes.push(format!(
            "{key}\\SanPolicy is already {SAN_POLICY_ONLINE} (online)"
        ));
    } else {
        step.status = Status::Changed;
        step.changes.push(Change::Registry {
            hive: hive_rel,
            key: key.clone(),
            value: "SanPolicy".to_owned(),
            old: info.san_policy.map(|v| v.to_string()),
            new: SAN_POLICY_ONLINE.to_string(),
        });
        if mode == Mode::Apply {
            system.ensure_key(&services, "partmgr")?;
            system.ensure_key(&format!("{services}\\partmgr"), "Parameters")?;
            system
                .set_value(&key, "SanPolicy", &RegValue::Dword(SAN_POLICY_ONLINE))
                .with_context(|| format!("setting {key}\\SanPolicy"))?;
        }
    }
    Ok((info, vec![step]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(start: Option<u32>, file: bool) -> Driver {
        Driver {
            name: "viostor".into(),
            start,
            image_path: None,
            file: file.then(|| "Windows/System32/drivers/viostor.sys".into()),
        }
    }

    fn info(storage: Vec<Driver>, net: Option<Driver>) -> WindowsInfo {
        WindowsInfo {
            product_name: "Windows Server 2016 Standard".into(),
            current_version: None,
            current_build: None,
            edition: None,
            control_set: "ControlSet001".into(),
            storage_drivers: storage,
            net_driver: net,
            san_policy: None,
        }
    }

    #[test]
    fn virtio_needs_a_boot_start_storage_driver_with_its_file_and_netkvm() {
        let net = || {
            Some(Driver {
                name: "netkvm".into(),
                ..driver(Some(3), true)
            })
        };
        let cases: Vec<(&str, WindowsInfo, Vec<&str>)> = vec![
            ("installed", info(vec![driver(Some(0), true)], net()), vec![]),
            (
                "demand start",
                info(vec![driver(Some(3), true)], net()),
                vec!["no VirtIO storage driver starts at boot with its file present: viostor (start 3, file Windows/System32/drivers/viostor.sys)"],
            ),
            (
                "file missing",
                info(vec![driver(Some(0), false)], net()),
                vec!["no VirtIO storage driver starts at boot with its file present: viostor (start 0, file missing)"],
            ),
            (
                "nothing",
                info(vec![], None),
                vec![
                    "no VirtIO storage driver (viostor or vioscsi) is installed",
                    "the VirtIO network driver netkvm is not installed",
                ],
            ),
            (
                "netkvm disabled",
                info(
                    vec![driver(Some(0), true)],
                    Some(Driver { name: "netkvm".into(), ..driver(Some(4), true) }),
                ),
                vec!["the VirtIO network driver netkvm is disabled or its file is missing (start 4, file Windows/System32/drivers/viostor.sys)"],
            ),
        ];
        for (name, i, want) in cases {
            assert_eq!(virtio_problems(&i), want, "{name}");
        }
    }

    #[test]
    fn paths_are_found_whatever_their_case() {
        let d = tempfile::tempdir().unwrap();
        let hive = d.path().join("WINDOWS/system32/CONFIG");
        std::fs::create_dir_all(&hive).unwrap();
        std::fs::write(hive.join("system"), b"regf").unwrap();
        assert!(is_windows(d.path()));
        assert_eq!(find_ci(d.path(), SYSTEM_HIVE), Some(hive.join("system")));
        assert_eq!(
            driver_file(
                d.path(),
                "viostor",
                Some("\\SystemRoot\\System32\\drivers\\viostor.sys")
            ),
            None
        );
        let drivers = d.path().join("WINDOWS/system32/DRIVERS");
        std::fs::create_dir_all(&drivers).unwrap();
        std::fs::write(drivers.join("viostor.sys"), b"MZ").unwrap();
        assert_eq!(
            driver_file(
                d.path(),
                "viostor",
                Some("\\SystemRoot\\System32\\drivers\\viostor.sys")
            )
            .as_deref(),
            Some("WINDOWS/system32/DRIVERS/viostor.sys")
        );
        assert_eq!(
            driver_file(d.path(), "viostor", None).as_deref(),
            Some("WINDOWS/system32/DRIVERS/viostor.sys"),
            "without an ImagePath, the default place"
        );
        assert!(!is_windows(&drivers));
    }
}
