//! Grow: each disk whose target is larger than its source gets its GPT
//! backup header moved to the end and its last partition and file system
//! grown to fill it.

use anyhow::{Context, Result};

use super::Target;
use crate::layout::{self, GrowReport, Safety};

pub fn run(targets: &[Target]) -> Result<Vec<GrowReport>> {
    let mut grown = Vec::new();
    for t in targets {
        let size = layout::devices::disk_size(&t.path).with_context(|| {
            format!(
                "reading the size of disk {} ({})",
                t.index,
                t.path.display()
            )
        })?;
        if size <= t.record.size {
            continue;
        }
        tracing::info!(target = %t.path.display(), from = t.record.size, to = size, "growing onto a larger target");
        grown.push(
            layout::grow(&t.path, Safety::default())
                .with_context(|| format!("growing disk {} ({})", t.index, t.path.display()))?,
        );
    }
    Ok(grown)
}
