//! A Windows system volume: its version and VirtIO drivers from the
//! registry, and the SAN policy the preparation will set.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{CheckReport, Finding, Severity, System};
use crate::job::errors::ErrorCode;
use crate::repair::windows::{self as win, WindowsInfo, SAN_POLICY_ONLINE};

/// What was found in a Windows system.
#[derive(Debug, Clone, Serialize)]
pub struct WindowsReport {
    /// Where the system volume is (`disk 0 partition 2`, `the tree`).
    pub volume: String,
    /// The disk (index) and partition (number) of the volume, on disks.
    pub disk: Option<usize>,
    pub partition: Option<usize>,
    #[serde(flatten)]
    pub info: WindowsInfo,
    /// Whether it can boot on the cloud's virtio hardware.
    pub virtio: bool,
}

/// Inspect the Windows volume mounted at `root`, partition `at.1` of disk
/// `at.0` when it is on disks.
pub(crate) fn inspect(root: &Path, at: Option<(usize, usize)>, r: &mut CheckReport) -> Result<()> {
    let volume = match at {
        Some((d, p)) => format!("disk {d} partition {p}"),
        None => "the tree".to_owned(),
    };
    let info = win::detect(root).context("reading the Windows registry")?;
    let problems = win::virtio_problems(&info);
    if !problems.is_empty() {
        r.findings.push(Finding::new(
            Severity::Blocker,
            ErrorCode::VirtioCheckFailed,
            format!("{}: {}", info.product_name, problems.join("; ")),
        ));
    }
    if info.san_policy != Some(SAN_POLICY_ONLINE) {
        r.findings.push(Finding::new(
            Severity::Info,
            ErrorCode::WindowsSanPolicy,
            format!(
                "{}\\Services\\partmgr\\Parameters\\SanPolicy is {}; the appliance sets it to {SAN_POLICY_ONLINE}",
                info.control_set,
                info.san_policy
                    .map_or("unset".to_owned(), |v| v.to_string())
            ),
        ));
    }
    r.systems.push(System::Windows(Box::new(WindowsReport {
        volume,
        disk: at.map(|a| a.0),
        partition: at.map(|a| a.1),
        virtio: problems.is_empty(),
        info,
    })));
    Ok(())
}

impl WindowsReport {
    pub(crate) fn render(&self) -> String {
        let i = &self.info;
        let mut out = format!(
            "system: {} (Windows {}{}{}) on {}\n",
            i.product_name,
            i.current_version.as_deref().unwrap_or("?"),
            i.current_build
                .as_deref()
                .map(|b| format!(", build {b}"))
                .unwrap_or_default(),
            i.edition
                .as_deref()
                .map(|e| format!(", {e}"))
                .unwrap_or_default(),
            self.volume
        );
        let driver = |d: &win::Driver| {
            format!(
                "{} (start {}, {})",
                d.name,
                d.start.map_or("unset".to_owned(), |s| s.to_string()),
                d.file.as_deref().unwrap_or("no driver file")
            )
        };
        let storage: Vec<String> = i.storage_drivers.iter().map(driver).collect();
        out.push_str(&format!(
            "  VirtIO storage: {}\n  VirtIO network: {}\n  SAN policy: {}\n  control set: {}\n",
            if storage.is_empty() {
                "none".to_owned()
            } else {
                storage.join(", ")
            },
            i.net_driver.as_ref().map_or("none".to_owned(), driver),
            i.san_policy.map_or("unset".to_owned(), |v| v.to_string()),
            i.control_set
        ));
        out
    }
}
