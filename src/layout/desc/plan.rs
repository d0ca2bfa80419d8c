//! Where a layout's partitions lie once it meets a disk of a given size:
//! the usable range of the table, alignment, and the error that says by
//! how much a layout does not fit.

use anyhow::{bail, Result};

use super::validate::invalid;
use super::{DiskLayout, Size, TableType, ALIGN, MIB, SECTOR};
use crate::job::errors::{coded, ErrorCode};

/// Where each partition lies, in bytes, once a layout meets a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

pub fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

/// The byte range partitions may use on a disk of `disk_size` bytes:
/// after the primary GPT (34 sectors) / the MBR, and before the backup GPT.
pub fn usable_range(table: TableType, disk_size: u64) -> (u64, u64) {
    match table {
        TableType::Gpt => (
            34 * SECTOR,
            (disk_size / SECTOR).saturating_sub(33) * SECTOR,
        ),
        TableType::Mbr => {
            // MBR addresses at most 2^32-1 sectors.
            let max = u64::from(u32::MAX) * SECTOR;
            (SECTOR, disk_size.min(max) / SECTOR * SECTOR)
        }
    }
}

/// Where a "rest" partition ends: the end of the usable range, aligned down
/// so that a copy of the disk onto one a little larger still reads the same.
pub fn rest_end(table: TableType, disk_size: u64) -> u64 {
    align_down(usable_range(table, disk_size).1, ALIGN)
}

/// Place the partitions of `disk` on a disk of `disk_size` bytes, or say by
/// how much the layout does not fit.
pub fn plan(disk: &DiskLayout, disk_size: u64) -> Result<Vec<Extent>> {
    let (first, last) = usable_range(disk.table, disk_size);
    let rest = rest_end(disk.table, disk_size);
    let mut cursor = first;
    let mut out = Vec::new();
    for (i, p) in disk.partitions.iter().enumerate() {
        let start = match p.start {
            Some(Size::Bytes(s)) => s,
            _ => align_up(cursor, ALIGN),
        };
        if start < first || start < cursor {
            bail!(invalid(format!(
                "partition {} starts at byte {start}, before the end of what precedes it (byte {})",
                i + 1,
                cursor.max(first)
            )));
        }
        let len = match p.size {
            Size::Bytes(b) => b,
            Size::Rest => {
                if rest <= start {
                    bail!(too_small(disk, disk_size, start + MIB, last));
                }
                rest - start
            }
        };
        let end = start + len;
        if end > last {
            let needed = disk
                .partitions
                .iter()
                .skip(i + 1)
                // A "rest" partition needs at least 1 MiB.
                .map(|p| p.size.bytes().unwrap_or(MIB))
                .fold(end, |acc, b| align_up(acc, ALIGN) + b);
            bail!(too_small(disk, disk_size, needed, last));
        }
        out.push(Extent { start, len });
        cursor = end;
    }
    Ok(out)
}

fn too_small(
    _disk: &DiskLayout,
    disk_size: u64,
    needed_end: u64,
    usable_end: u64,
) -> anyhow::Error {
    let trailer = disk_size - usable_end;
    let needed_total = needed_end + trailer;
    coded(
        ErrorCode::LayoutTooLarge,
        format!(
            "the layout needs {needed_total} bytes ({} MiB) including the partition table, the disk has {disk_size} bytes ({} MiB): {} bytes ({} MiB) short",
            needed_total.div_ceil(MIB),
            disk_size / MIB,
            needed_total.saturating_sub(disk_size),
            needed_total.saturating_sub(disk_size).div_ceil(MIB)
        ),
    )
}
