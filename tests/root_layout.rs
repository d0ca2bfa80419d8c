#![allow(clippy::unwrap_used)]
//! Root-only tests of the layout engine on sparse image files: apply, read,
//! mount trees, the chroot session, grow, refusals, and cleanup after a kill.
//! Every result is checked by tools ferry did not write (sfdisk, sgdisk,
//! blkid, e2fsck, xfs_repair, fsck.vfat).

#[path = "common/layout.rs"]
mod layout_common;

use std::path::Path;

use ferry::cmd::Cmd;
use ferry::layout::{self, desc::SECTOR, FsType, Layout, Safety, Size};
use layout_common::*;

/// Check one applied disk against its description with outside tools.
fn check_disk(img: &Path, want: &layout::DiskLayout) {
    let (label, id, parts) = sfdisk(img);
    match want.table {
        layout::TableType::Gpt => {
            assert_eq!(label, "gpt");
            assert_eq!(Some(id), want.id.clone());
            let v = run(Cmd::new("sgdisk").arg("-v").arg(img));
            assert!(v.contains("No problems found"), "sgdisk -v: {v}");
        }
        layout::TableType::Mbr => {
            assert_eq!(label, "dos");
            assert_eq!(
                Some(id.trim_start_matches("0x").to_owned()),
                want.id.clone()
            );
        }
    }
    assert_eq!(parts.len(), want.partitions.len(), "partition count");
    let size = std::fs::metadata(img).expect("image").len();
    let extents = layout::desc::plan(want, size).expect("plan");
    for (i, ((start, sectors, ty), (p, e))) in parts
        .iter()
        .zip(want.partitions.iter().zip(&extents))
        .enumerate()
    {
        assert_eq!(*start * SECTOR, e.start, "partition {} start", i + 1);
        assert_eq!(*sectors * SECTOR, e.len, "partition {} size", i + 1);
        assert_eq!(*start % 2048, 0, "partition {} is 1 MiB aligned", i + 1);
        let want_ty = match want.table {
            layout::TableType::Gpt => p.kind.gpt_guid().expect("guid"),
            layout::TableType::Mbr => {
                format!("{:x}", layout::desc::mbr_type_byte(&p.kind).expect("byte"))
            }
        };
        assert_eq!(ty, &want_ty, "partition {} type", i + 1);
        let lo = PartLoop::new(img, *start, *sectors);
        let b = blkid(&lo.0);
        assert_eq!(
            b.get("TYPE").map(String::as_str),
            Some(p.fs.as_str()).filter(|t| *t != "none"),
            "partition {} blkid TYPE",
            i + 1
        );
        assert_eq!(
            b.get("UUID"),
            p.uuid.as_ref(),
            "partition {} blkid UUID",
            i + 1
        );
        assert_eq!(
            b.get("LABEL"),
            p.label.as_ref(),
            "partition {} blkid LABEL",
            i + 1
        );
        match p.fs {
            FsType::Ext4 | FsType::Ext3 => {
                run(Cmd::new("e2fsck").arg("-fn").arg(&lo.0));
            }
            FsType::Xfs => {
                run(Cmd::new("xfs_repair").arg("-n").arg(&lo.0));
            }
            FsType::Vfat => {
                run(Cmd::new("fsck.vfat").arg("-n").arg(&lo.0));
            }
            _ => {}
        }
    }
}

fn apply_and_check(text: &str, mib: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = layout(text);
    let img = sparse_image(dir.path(), "disk.img", mib);
    let applied =
        layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    // Fully specified layouts come back unchanged.
    assert_eq!(applied, l.disks[0]);
    check_disk(&img, &l.disks[0]);
    let read = layout::read(&img).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(read, l.without_mounts().disks[0]);
    assert!(
        loops_of(&img).is_empty(),
        "apply left loop devices: {:?}",
        loops_of(&img)
    );
}

#[test]
fn bios_mbr_one_ext4_root() {
    require_root!();
    apply_and_check(BIOS_MBR, 64);
}

#[test]
fn bios_gpt_with_bios_boot_boot_and_root() {
    require_root!();
    apply_and_check(BIOS_GPT, 128);
}

#[test]
fn uefi_gpt_with_esp_xfs_root_and_swap() {
    require_root!();
    apply_and_check(UEFI_GPT, 448);
}

#[test]
fn data_disk_with_one_ext4_partition() {
    require_root!();
    apply_and_check(DATA_DISK, 64);
}

#[test]
fn open_ids_are_filled_and_read_back() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l: Layout = layout(DATA_DISK);
    l.disks[0].id = None;
    l.disks[0].partitions[0].uuid = None;
    l.disks[0].partitions[0].partuuid = None;
    let img = sparse_image(dir.path(), "d.img", 64);
    let applied =
        layout::apply(&l.disks[0], &img, Safety::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(applied.id.is_some() && applied.partitions[0].uuid.is_some());
    assert_ne!(applied.partitions[0].uuid, l.disks[0].partitions[0].uuid);
    let mut read = layout::read(&img).unwrap_or_else(|e| panic!("{e:#}"));
    read.partitions[0].mount = Some("/srv/data".into());
    assert_eq!(read, applied);
    assert_eq!(read.partitions[0].size, Size::Rest);
}
