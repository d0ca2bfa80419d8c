//! File mode's layout of the targets: the source's layout as the sender
//! describes it (with what each file system holds), fitted onto target
//! disks that may be smaller than the source's.
//!
//! A file system needs room for what it holds plus headroom
//! ([`needed_bytes`]): the used bytes × 1.10 + 64 MiB, plus what the file
//! system itself takes (ext4: the 5 % reserved for root, inode tables and
//! bitmaps, the journal; xfs: its log and metadata, and its 300 MiB
//! minimum). The 10 % covers what the target allocates differently from
//! the source (block rounding of small files, directory blocks, no inline
//! data) and the first updates after the migration; the 64 MiB the
//! repair's own writes: a new initramfs for every kernel (30–60 MiB each,
//! written beside the old one before it replaces it), GRUB's files, the
//! logs of the first boot.
//!
//! The source's partition sizes are kept where they fit (one smaller than
//! its file system needs, such as a nearly full `/boot`, grows to what it
//! needs); otherwise every
//! sent file system but the disk's last partition shrinks to what it
//! needs, and the last takes the rest of the disk; if that is still too
//! little, a swap partition shrinks to 64 MiB (it holds nothing that is
//! migrated). Other partitions without a tree (BIOS boot, an ESP nothing
//! is sent to) keep their size. What a refusal counts for a disk: the
//! partition table, every partition without a tree at its size, every
//! sent file system at what it needs.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::desc::{align_up, plan, DiskLayout, FsType, Layout, Size, ALIGN, MIB};
use super::flatten::{flatten_layout, FlatLvm};
use crate::job::errors::{coded, ErrorCode};

/// The size of a swap partition on a target too small for the source's.
const SMALL_SWAP: u64 = 64 * MIB;

/// Most file systems of a plan: a job's trees (`files::MAX_TREES`).
pub const MAX_TREES: usize = 64;

/// What the file-mode sender tells the appliance before any tree: the
/// source's layout and, for each tree it will send (tree N is `trees[N]`),
/// where it is mounted and how many bytes it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePlan {
    pub layout: Layout,
    pub trees: Vec<TreeSource>,
}

/// One file system the sender walks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeSource {
    /// Its mount point in the source system (a partition's `mount`).
    pub mount: String,
    /// Bytes its files, directories and symlinks take on the source
    /// (allocated blocks; hard links once; excluded paths left out).
    pub used: u64,
}

/// Where a tree lies in the layout: disk and partition positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreePlace {
    pub disk: usize,
    pub part: usize,
}

impl SourcePlan {
    /// The plan as JSON, refused when longer than `max` bytes (what the
    /// protocol carries).
    pub(crate) fn to_json(&self, max: usize) -> Result<Vec<u8>> {
        let v = serde_json::to_vec(self).map_err(|e| {
            coded(
                ErrorCode::LayoutInvalid,
                format!("encoding the layout: {e}"),
            )
        })?;
        if v.len() > max {
            bail!(coded(
                ErrorCode::LayoutInvalid,
                format!(
                    "the layout takes {} bytes, more than the {max} the protocol carries",
                    v.len()
                )
            ));
        }
        Ok(v)
    }

    pub fn from_json(raw: &[u8]) -> Result<SourcePlan> {
        let p: SourcePlan = serde_json::from_slice(raw).map_err(|e| {
            coded(
                ErrorCode::LayoutInvalid,
                format!("parsing the sender's layout: {e}"),
            )
        })?;
        // The sender's own layout first: its volumes' names and places
        // feed the flattening.
        p.layout.validate()?;
        p.flattened()?;
        Ok(p)
    }

    /// The plan as the appliance lays it out: each LVM physical volume
    /// replaced by a plain partition per logical volume it carries
    /// ([`flatten_layout`]), checked as [`SourcePlan::places`] does.
    pub fn flattened(&self) -> Result<(SourcePlan, FlatLvm)> {
        let (layout, lvm) = flatten_layout(&self.layout)?;
        let plan = SourcePlan {
            layout,
            trees: self.trees.clone(),
        };
        plan.places()?;
        Ok((plan, lvm))
    }

    /// Each tree's partition, checked: the layout is valid, tree 0 is `/`,
    /// every tree names a distinct mount point of a file system ferry
    /// makes and writes (ext4, ext3, xfs, vfat).
    pub fn places(&self) -> Result<Vec<TreePlace>> {
        self.layout.validate()?;
        let invalid = |d: String| coded(ErrorCode::LayoutInvalid, d);
        if self.trees.is_empty() {
            bail!(invalid("the layout names no file system to send".into()));
        }
        if self.trees.len() > MAX_TREES {
            bail!(invalid(format!(
                "{} file systems; a job has at most {MAX_TREES}",
                self.trees.len(),
            )));
        }
        if self.trees[0].mount != "/" {
            bail!(invalid(format!(
                "tree 0 is {}, not the root file system /",
                self.trees[0].mount
            )));
        }
        let mut out: Vec<TreePlace> = Vec::new();
        for t in &self.trees {
            let place = self
                .layout
                .disks
                .iter()
                .enumerate()
                .flat_map(|(d, disk)| {
                    disk.partitions
                        .iter()
                        .enumerate()
                        .map(move |(p, part)| (d, p, part))
                })
                .find(|(_, _, part)| part.fs.mount.as_deref() == Some(t.mount.as_str()));
            let Some((disk, part, p)) = place else {
                bail!(invalid(format!(
                    "the file system {} is not a mount point of the layout",
                    t.mount
                )));
            };
            if !matches!(
                p.fs.kind,
                FsType::Ext4 | FsType::Ext3 | FsType::Xfs | FsType::Vfat
            ) {
                bail!(invalid(format!(
                    "the file system {} is {}; file mode writes ext4, ext3, xfs and vfat",
                    t.mount, p.fs.kind
                )));
            }
            let place = TreePlace { disk, part };
            if out.contains(&place) {
                bail!(invalid(format!("{} is sent twice", t.mount)));
            }
            out.push(place);
        }
        Ok(out)
    }
}

/// Bytes a file system of type `fs` must have to hold `used` bytes with
/// the headroom of this module's documentation, rounded up to 1 MiB.
pub fn needed_bytes(fs: &FsType, used: u64) -> u64 {
    let data = used + used / 10 + 64 * MIB;
    let size = match fs {
        // 5 % reserved, ~2 % inode tables and bitmaps, the journal
        // (mke2fs takes at most 1/64 of the file system up to 1 GiB).
        FsType::Ext4 | FsType::Ext3 => {
            let s = data * 100 / 91 + 4 * MIB;
            s.max(data + MIB.max(s / 64))
        }
        // The log and the allocation groups' metadata; mkfs.xfs refuses
        // file systems under 300 MiB.
        FsType::Xfs => (data * 100 / 96 + 16 * MIB).max(300 * MIB),
        FsType::Vfat => (data * 100 / 98 + MIB).max(34 * MIB),
        _ => data,
    };
    align_up(size, MIB)
}

/// One file system that does not fit, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub mount: String,
    pub used: u64,
    pub needed: u64,
}

/// Fit the plan's layout onto targets of `sizes` bytes (disk i on
/// target i): the source's sizes where each sent file system gets what it
/// needs, else every sent file system but the last partition shrunk to
/// what it needs; refused, before anything is written, with
/// `FILES_DO_NOT_FIT` and the numbers of every file system when even that
/// does not fit.
pub fn fit(plan: &SourcePlan, sizes: &[u64]) -> Result<Layout> {
    let places = plan.places()?;
    plan.layout.validate_for(
        &sizes
            .iter()
            .map(|_| std::path::PathBuf::new())
            .collect::<Vec<_>>(),
    )?;
    let mut out = Layout::default();
    let mut refusals = Vec::new();
    for (d, (disk, &size)) in plan.layout.disks.iter().zip(sizes).enumerate() {
        let needs: Vec<Option<(u64, u64)>> = (0..disk.partitions.len())
            .map(|p| {
                places
                    .iter()
                    .position(|pl| pl.disk == d && pl.part == p)
                    .map(|t| {
                        let used = plan.trees[t].used;
                        (used, needed_bytes(&disk.partitions[p].fs.kind, used))
                    })
            })
            .collect();
        match fit_disk(disk, &needs, size) {
            Ok(l) => out.disks.push(l),
            Err(()) => refusals.push(describe_refusal(d, disk, &needs, size)),
        }
    }
    if !refusals.is_empty() {
        bail!(coded(ErrorCode::FilesDoNotFit, refusals.join("; ")));
    }
    Ok(out)
}

fn fit_disk(disk: &DiskLayout, needs: &[Option<(u64, u64)>], size: u64) -> Result<DiskLayout, ()> {
    let last = disk.partitions.len().checked_sub(1).ok_or(())?;
    let enough = |l: &DiskLayout| -> bool {
        match plan(l, size) {
            Ok(ext) => ext
                .iter()
                .zip(needs)
                .all(|(e, n)| n.is_none_or(|(_, need)| e.len >= need)),
            Err(_) => false,
        }
    };
    // The source's sizes, the last partition taking the rest of the disk.
    // A sent file system on a partition smaller than it needs (a /boot
    // nearly full on the source) grows to what it needs.
    let mut kept = disk.clone();
    kept.partitions[last].size = Size::Rest;
    for (i, p) in kept.partitions.iter_mut().enumerate() {
        p.start = None;
        p.number = None;
        if let (true, Some((_, need))) = (i != last, needs[i]) {
            if p.size.bytes().is_some_and(|b| b < need) {
                p.size = Size::Bytes(need);
            }
        }
    }
    if enough(&kept) {
        return Ok(kept);
    }
    let mut shrunk = kept;
    for (i, p) in shrunk.partitions.iter_mut().enumerate() {
        if let (true, Some((_, need))) = (i != last, needs[i]) {
            if p.size.bytes().is_none_or(|b| b > need) {
                p.size = Size::Bytes(need);
            }
        }
    }
    if enough(&shrunk) {
        return Ok(shrunk);
    }
    // Swap holds nothing that is migrated: on a disk that small it keeps
    // 64 MiB at most.
    for p in &mut shrunk.partitions {
        if p.fs.kind == FsType::Swap && p.size.bytes().is_some_and(|b| b > SMALL_SWAP) {
            p.size = Size::Bytes(SMALL_SWAP);
        }
    }
    if enough(&shrunk) {
        return Ok(shrunk);
    }
    Err(())
}

fn describe_refusal(
    d: usize,
    disk: &DiskLayout,
    needs: &[Option<(u64, u64)>],
    size: u64,
) -> String {
    // What the disk needs at least: partition table, alignment, every
    // partition without a tree at its size, every sent file system at
    // what it needs.
    let mut total = ALIGN;
    let mut parts = Vec::new();
    for (p, n) in disk.partitions.iter().zip(needs) {
        let b = match n {
            Some((used, need)) => {
                parts.push(format!(
                    "{} ({}): {} MiB used, {} MiB needed",
                    p.fs.mount.as_deref().unwrap_or("?"),
                    p.fs.kind,
                    used.div_ceil(MIB),
                    need / MIB
                ));
                *need
            }
            None => p.size.bytes().unwrap_or(MIB),
        };
        total = align_up(total, ALIGN) + b;
    }
    total += ALIGN;
    format!(
        "disk {d}: needs {} MiB, the target has {} MiB ({})",
        total.div_ceil(MIB),
        size / MIB,
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPT: &str = r#"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "1MiB"
type = "bios-boot"
[[disk.partition]]
size = "200MiB"
type = "linux"
fs = "ext4"
uuid = "11111111-2222-3333-4444-555555555555"
mount = "/boot"
[[disk.partition]]
size = "128MiB"
type = "swap"
fs = "swap"
[[disk.partition]]
size = "1205MiB"
type = "linux"
fs = "ext4"
uuid = "21111111-2222-3333-4444-555555555555"
mount = "/"
"#;

    fn plan_of(root: u64, boot: u64) -> SourcePlan {
        SourcePlan {
            layout: Layout::from_toml(GPT).unwrap(),
            trees: vec![
                TreeSource {
                    mount: "/".into(),
                    used: root,
                },
                TreeSource {
                    mount: "/boot".into(),
                    used: boot,
                },
            ],
        }
    }

    #[test]
    fn headroom_per_file_system() {
        let cases = [
            // 64 MiB / 0.91 + 4 MiB, rounded up.
            (FsType::Ext4, 0, 75 * MIB),
            // (1000 + 100 + 64) / 0.91 + 4
            (FsType::Ext4, 1000 * MIB, 1284 * MIB),
            (FsType::Xfs, 10 * MIB, 300 * MIB),
            // (1000 + 100 + 64) / 0.96 + 16
            (FsType::Xfs, 1000 * MIB, 1229 * MIB),
            // (5 + 0.5 + 64) / 0.98 + 1
            (FsType::Vfat, 5 * MIB, 72 * MIB),
        ];
        for (fs, used, want) in cases {
            assert_eq!(needed_bytes(&fs, used), want, "{fs} {used}");
        }
    }

    #[test]
    fn the_source_sizes_stay_when_they_fit() {
        let l = fit(&plan_of(300 * MIB, 50 * MIB), &[1024 * MIB]).unwrap();
        let p = &l.disks[0].partitions;
        assert_eq!(p[1].size, Size::Bytes(200 * MIB));
        assert_eq!(p[2].size, Size::Bytes(128 * MIB));
        assert_eq!(p[3].size, Size::Rest);
        assert_eq!(
            p[3].fs.uuid.as_deref(),
            Some("21111111-2222-3333-4444-555555555555")
        );
    }

    #[test]
    fn a_nearly_full_partition_grows_to_what_it_needs() {
        // /boot holds 190 of its 200 MiB: it needs 1.1 × 190 + 64 MiB and
        // its overhead, on a target with room for it.
        let l = fit(&plan_of(300 * MIB, 190 * MIB), &[2048 * MIB]).unwrap();
        let p = &l.disks[0].partitions;
        assert_eq!(
            p[1].size,
            Size::Bytes(needed_bytes(&FsType::Ext4, 190 * MIB))
        );
        assert_eq!(p[1].size, Size::Bytes(304 * MIB));
        assert_eq!(p[2].size, Size::Bytes(128 * MIB));
    }

    #[test]
    fn a_smaller_target_shrinks_what_precedes_the_last() {
        // /boot needs 1.1 × 50 + 64 MiB and its overhead (135 MiB), not
        // its 200; the root gets the rest of 768 MiB.
        let l = fit(&plan_of(400 * MIB, 50 * MIB), &[768 * MIB]).unwrap();
        let p = &l.disks[0].partitions;
        assert_eq!(
            p[1].size,
            Size::Bytes(needed_bytes(&FsType::Ext4, 50 * MIB))
        );
        assert_eq!(p[1].size, Size::Bytes(135 * MIB));
        let ext = plan(&l.disks[0], 768 * MIB).unwrap();
        assert!(ext[3].len >= needed_bytes(&FsType::Ext4, 400 * MIB));
    }

    #[test]
    fn swap_shrinks_when_nothing_else_makes_room() {
        // Holding 300 MiB, / needs 437 MiB: it fits the 502 MiB left
        // beside 1 + 135 + 128 MiB of 768. Holding 400, it needs 558:
        // only beside a 64 MiB swap (566 MiB left).
        let l = fit(&plan_of(300 * MIB, 50 * MIB), &[768 * MIB]).unwrap();
        assert_eq!(l.disks[0].partitions[2].size, Size::Bytes(128 * MIB));
        let l = fit(&plan_of(400 * MIB, 50 * MIB), &[768 * MIB]).unwrap();
        assert_eq!(l.disks[0].partitions[2].size, Size::Bytes(64 * MIB));
        let ext = plan(&l.disks[0], 768 * MIB).unwrap();
        assert_eq!(ext[3].len, 566 * MIB);
    }

    #[test]
    fn too_small_is_refused_with_the_numbers() {
        let err = fit(&plan_of(900 * MIB, 50 * MIB), &[768 * MIB]).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "FILES_DO_NOT_FIT: The used data of the source's file systems does not fit the target disks with headroom (disk 0: needs 1429 MiB, the target has 768 MiB (/boot (ext4): 50 MiB used, 135 MiB needed, / (ext4): 900 MiB used, 1163 MiB needed))"
        );
    }

    #[test]
    fn trees_must_name_file_systems_of_the_layout() {
        let mut p = plan_of(1, 1);
        p.trees[1].mount = "/var".into();
        let err = format!("{:#}", p.places().unwrap_err());
        assert!(
            err.contains("the file system /var is not a mount point of the layout"),
            "{err}"
        );
        let mut p = plan_of(1, 1);
        p.trees.swap(0, 1);
        let err = format!("{:#}", p.places().unwrap_err());
        assert!(err.contains("tree 0 is /boot, not the root"), "{err}");
        let p = plan_of(1, 1);
        assert_eq!(
            SourcePlan::from_json(&p.to_json(1 << 16).unwrap()).unwrap(),
            p
        );
    }
}
