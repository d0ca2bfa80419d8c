//! What a round's pipeline did (`processing/report.json`), what a later
//! handoff carries on from a kept one, and what the repair's report says of
//! the system (Windows, its firmware).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{boot, file_mode, mount};

/// What a run did, kept in `<state-dir>/processing/report.json` and, in
/// part, in the handoff manifest.
#[derive(Debug, Default, Serialize)]
pub struct RoundReport {
    pub grown: Vec<crate::layout::GrowReport>,
    pub source_names: Vec<Vec<String>>,
    /// The file systems checked, with their tool.
    pub checked: Vec<String>,
    /// Chunks whose ledger hash was updated to what grow and repair wrote.
    pub resynced_chunks: u64,
    /// Seconds each step took.
    pub seconds: BTreeMap<String, f64>,
    /// The repair's report (also in `processing/repair.json`).
    pub repair: Option<crate::repair::RepairReport>,
    /// The boot test's verdict (also in `processing/boot/verdict.json`).
    pub boot_test: Option<boot::Verdict>,
    /// Why a job with the boot test on did not run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_test_skipped: Option<String>,
    /// File systems that arrived with a journal to replay (a source copied
    /// while mounted), and what was done.
    pub journals: Vec<mount::Replayed>,
    /// A file-mode round: the file systems laid out and written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<file_mode::FilesReport>,
    /// How the repair reached the guest's logical volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvm: Option<crate::layout::lvm::activate::Access>,
}

/// The parts of a kept `report.json` a later handoff carries on.
#[derive(serde::Deserialize)]
pub(super) struct StoredReport {
    #[serde(default)]
    source_names: Vec<Vec<String>>,
    #[serde(default)]
    checked: Vec<String>,
    #[serde(default)]
    resynced_chunks: u64,
    #[serde(default)]
    seconds: BTreeMap<String, f64>,
    /// A repair report this build cannot read (an older one's) is left
    /// out rather than losing the rest.
    #[serde(default, deserialize_with = "lenient")]
    repair: Option<crate::repair::RepairReport>,
}

fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

impl StoredReport {
    pub(super) fn into_report(self) -> RoundReport {
        RoundReport {
            source_names: self.source_names,
            checked: self.checked,
            resynced_chunks: self.resynced_chunks,
            seconds: self.seconds,
            repair: self.repair,
            ..Default::default()
        }
    }
}

/// Whether the repair's report is a Windows system's.
pub(super) fn is_windows(repair: Option<&crate::repair::RepairReport>) -> bool {
    repair.is_some_and(|r| r.windows.is_some())
}

/// How the repaired system boots, from the repair's report (BIOS unless
/// it says UEFI).
pub(crate) fn firmware_of(repair: Option<&crate::repair::RepairReport>) -> boot::Firmware {
    match repair.and_then(|r| r.boot.as_ref()) {
        Some(crate::repair::BootMode::Uefi { .. }) => boot::Firmware::Uefi,
        _ => boot::Firmware::Bios,
    }
}
