//! What the sender prints and writes at the end: block mode's account of
//! every disk and of how consistent its copy is, and the JSON file that
//! `--report` names (block mode's, file mode's and the probe's alike).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::consistency;

/// What happened to one disk, over every attempt.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DiskReport {
    pub index: u32,
    pub source: String,
    pub size: u64,
    pub chunks: u64,
    /// Chunks with data sent, their raw bytes and their bytes on the wire.
    pub sent_chunks: u64,
    pub sent_bytes: u64,
    pub wire_bytes: u64,
    /// Zero chunks sent as Zero frames (the target held other data).
    pub zero_sent_chunks: u64,
    /// Chunks not sent: the appliance already had them.
    pub unchanged_chunks: u64,
    pub unchanged_bytes: u64,
    /// Zero chunks not sent: the target is known to read zeros there.
    pub zero_skipped_chunks: u64,
    pub zero_skipped_bytes: u64,
    /// Bytes read from the source disk, every pass together.
    pub read_bytes: u64,
    pub digest: String,
    pub verified: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct SendReport {
    pub attempts: u32,
    pub seconds: f64,
    pub disks: Vec<DiskReport>,
    pub consistency: consistency::ConsistencyReport,
}

impl SendReport {
    /// A line per disk, then how the mounted file systems were copied.
    pub(crate) fn print(&self) {
        for d in &self.disks {
            eprintln!(
                "disk {} ({}): {} bytes; sent {} bytes in {} chunks ({} bytes on the wire); skipped {} bytes unchanged and {} bytes of zeros; {}",
                d.index,
                d.source,
                d.size,
                d.sent_bytes,
                d.sent_chunks,
                d.wire_bytes,
                d.unchanged_bytes,
                d.zero_skipped_bytes,
                if d.verified { format!("verified, digest {}", d.digest) } else { "NOT verified".to_owned() }
            );
        }
        for line in consistency::summary(&self.consistency) {
            eprintln!("{line}");
        }
    }
}

/// Write `value` as `--report`'s JSON file; `what` names it in an error.
pub(crate) fn write_json(path: &Path, value: &impl Serialize, what: &str) -> Result<()> {
    std::fs::write(
        path,
        serde_json::to_vec_pretty(value).with_context(|| format!("encoding {what}"))?,
    )
    .with_context(|| format!("writing the report {}", path.display()))
}
