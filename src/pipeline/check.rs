//! Check: the received disks inspected by `ferry check`'s engine before
//! anything is changed (mounted read-only, NTFS through ntfs-3g read-only).
//! The report is kept in `<state-dir>/processing/check.json` and in the job
//! (`/v1/job`'s `check`); a blocker stops the round with its code and hint,
//! the disks exactly as they arrived.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Target;
use crate::check::{self, CheckReport};
use crate::job::handle::JobHandle;

pub fn run(targets: &[Target], staging: &Path, dir: &Path, job: &JobHandle) -> Result<CheckReport> {
    let paths: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    let names: Vec<Vec<String>> = targets.iter().map(|t| t.names.clone()).collect();
    let report = check::disks(&paths, &names, staging).context("checking the received disks")?;
    let value = serde_json::to_value(&report).context("encoding the check report")?;
    super::write_json(&dir.join("check.json"), &value)?;
    job.checked(value).context("keeping the check report")?;
    tracing::info!(
        blockers = report.blockers,
        warnings = report.warnings,
        "the received disks are checked"
    );
    report.blocker_error()?;
    Ok(report)
}
