//! Resync: the ledger learns the new hash of every chunk that grow and
//! repair changed, so that verify can compare the whole disk with it and
//! the next round of an incremental job re-sends exactly those chunks
//! (restoring the source's content before the repair runs again).
//!
//! Only chunks that the pipeline may have written are learnt: the partition
//! tables and boot code (the first and last MiB), the BIOS boot and EFI
//! system partitions, the file systems that were mounted, and the partition
//! that was grown. Everything else keeps the hash the source sent, so a
//! change there (a data disk touched, a flipped byte) fails verification
//! instead of being recorded as if the repair had made it.

use anyhow::{Context, Result};

use super::Target;
use crate::disk::{chunk_len, zero_hash, Disk};
use crate::job::ledger::{windows, Ledger};
use crate::layout::{self, GrowReport, PartType};

const MIB: u64 = 1 << 20;

/// The byte ranges of each disk (in the order of the targets) that the
/// pipeline may have written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    ranges: Vec<Vec<(u64, u64)>>,
}

impl Scope {
    /// Every byte of every disk: after a failed run, which may have written
    /// anywhere it had reached.
    pub fn whole(targets: &[Target]) -> Scope {
        Scope {
            ranges: targets.iter().map(|t| vec![(0, t.record.size)]).collect(),
        }
    }

    /// What grow and repair may write on disks laid out as `full` (read
    /// after grow), of which `mounted` were mounted for the repair.
    pub fn of(
        targets: &[Target],
        full: &layout::Layout,
        mounted: &layout::Layout,
        grown: &[GrowReport],
    ) -> Result<Scope> {
        let mut ranges = Vec::new();
        for ((t, d), m) in targets.iter().zip(&full.disks).zip(&mounted.disks) {
            let size = layout::devices::disk_size(&t.path)
                .with_context(|| format!("reading the size of {}", t.path.display()))?;
            let extents = layout::desc::plan(d, size)
                .with_context(|| format!("placing the partitions of {}", t.path.display()))?;
            let grown_number = grown
                .iter()
                .find(|g| g.disk == t.path)
                .and_then(|g| g.partition.as_ref())
                .map(|p| p.number);
            let mut r = vec![(0, MIB.min(size)), (size.saturating_sub(MIB), size)];
            for ((p, mp), (number, e)) in d
                .partitions
                .iter()
                .zip(&m.partitions)
                .zip(d.numbers().into_iter().zip(extents.iter().copied()))
            {
                let written = matches!(p.kind, PartType::BiosBoot | PartType::Esp)
                    || mp.fs.mount.is_some()
                    || grown_number == Some(number);
                if written {
                    r.push((e.start, e.end()));
                }
            }
            // Logical volumes mounted for the repair, inside their PV.
            let di = ranges.len();
            for v in mounted.volumes.iter().filter(|v| v.fs.mount.is_some()) {
                if let Some(p) = v.place.filter(|p| p.disk == di) {
                    if let Some(e) = extents.get(p.partition) {
                        r.push((e.start + p.offset, e.start + p.offset + p.size));
                    }
                }
            }
            ranges.push(r);
        }
        Ok(Scope { ranges })
    }

    /// Add bytes `start..end` of disk number `pos` (in target order).
    pub fn add(&mut self, pos: usize, start: u64, end: u64) {
        if let Some(r) = self.ranges.get_mut(pos) {
            r.push((start, end));
        }
    }

    /// Whether chunk `index` of disk number `pos` (in target order) overlaps
    /// what the pipeline may have written.
    pub fn covers(&self, pos: usize, start: u64, len: u64) -> bool {
        self.ranges
            .get(pos)
            .is_some_and(|r| r.iter().any(|&(a, b)| start < b && a < start + len))
    }
}

/// Learn the chunks in `scope` that differ from the ledger; returns how many.
pub fn run(ledger: &Ledger, targets: &[Target], scope: &Scope) -> Result<u64> {
    let mut total = 0;
    for (pos, t) in targets.iter().enumerate() {
        let rec = &t.record;
        let disk = Disk::open_source(&t.path)
            .with_context(|| format!("opening disk {} to update its ledger", t.index))?;
        let cs = u64::from(rec.chunk_size);
        let mut buf = vec![0u8; rec.chunk_size as usize];
        let mut count = 0u64;
        for w in windows(rec.chunks()) {
            if !scope.covers(pos, w.start * cs, (w.end - w.start) * cs) {
                continue;
            }
            let known = ledger
                .chunk_window(t.index, w.clone())
                .with_context(|| format!("reading the ledger of disk {}", t.index))?;
            let mut changed = Vec::new();
            for (i, k) in (w.start..).zip(known) {
                let len = chunk_len(rec.size, rec.chunk_size, i);
                if !scope.covers(pos, i * cs, len as u64) {
                    continue;
                }
                disk.read_at(&mut buf[..len], i * cs)
                    .with_context(|| format!("reading chunk {i} of disk {}", t.index))?;
                let actual = *blake3::hash(&buf[..len]).as_bytes();
                let expected = match k {
                    Some(h) => Some(h),
                    None if rec.fresh => Some(zero_hash(len)),
                    None => None,
                };
                if expected != Some(actual) {
                    changed.push((i, actual));
                }
            }
            ledger
                .commit_chunks(t.index, &changed)
                .with_context(|| format!("recording the changed chunks of disk {}", t.index))?;
            count += changed.len() as u64;
        }
        tracing::info!(
            disk = t.index,
            chunks = count,
            "ledger updated with the pipeline's changes"
        );
        total += count;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_covered_when_it_overlaps_a_range() {
        let scope = Scope {
            ranges: vec![vec![(0, MIB), (10 * MIB, 20 * MIB)]],
        };
        let cases = [
            ("first chunk holds the table", 0, 4 * MIB, true),
            ("between the ranges", 4 * MIB, 4 * MIB, false),
            ("ends where a range starts", 6 * MIB, 4 * MIB, false),
            ("overlaps a range's start", 8 * MIB, 4 * MIB, true),
            ("starts where a range ends", 20 * MIB, 4 * MIB, false),
        ];
        for (name, start, len, want) in cases {
            assert_eq!(scope.covers(0, start, len), want, "{name}");
        }
        assert!(!scope.covers(1, 0, MIB), "no such disk");
    }
}
