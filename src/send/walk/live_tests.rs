//! Tests of `live`: the running server's layout read from fake sysfs and
//! disk trees.

use super::*;
use crate::job::errors::find_coded;
use crate::layout::FsType;
use crate::send::walk::discover::Boot;
use std::os::unix::fs::symlink;

/// A fake sysfs: `sda` with partitions 1 and 2, `sdb` without a table,
/// `sdc1` and `sdd1` as the PVs of the LV `vg-0/var` (`vg--0-var`), a
/// dm-crypt device, `md0` on `sde1`, `loop3` on a file, `nbd0`.
fn fake_sys() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let s = t.path();
    let dev = |rel: &str, devno: &str, files: &[(&str, &str)]| {
        let d = s.join("devices").join(rel);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in files {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        std::fs::create_dir_all(s.join("dev/block")).unwrap();
        symlink(&d, s.join("dev/block").join(devno)).unwrap();
        d
    };
    dev("pci/block/sda", "8:0", &[("size", "2097152")]);
    dev("pci/block/sda/sda1", "8:1", &[("partition", "1")]);
    dev(
        "pci/block/sda/sda2",
        "8:2",
        &[("partition", "2"), ("size", "1048576")],
    );
    dev("pci/block/sdb", "8:16", &[]);
    let sdc1 = dev("pci/block/sdc/sdc1", "8:33", &[("partition", "1")]);
    let sdd1 = dev("pci/block/sdd/sdd1", "8:49", &[("partition", "1")]);
    let lv = dev(
        "virtual/block/dm-0",
        "253:0",
        &[("dm/name", "vg--0-var"), ("dm/uuid", "LVM-abcdef")],
    );
    std::fs::create_dir(lv.join("slaves")).unwrap();
    symlink(&sdd1, lv.join("slaves/sdd1")).unwrap();
    symlink(&sdc1, lv.join("slaves/sdc1")).unwrap();
    let sdb = s.join("devices/pci/block/sdb");
    let on_disk = dev(
        "virtual/block/dm-2",
        "253:2",
        &[("dm/name", "vg-home"), ("dm/uuid", "LVM-123")],
    );
    std::fs::create_dir(on_disk.join("slaves")).unwrap();
    symlink(&sdb, on_disk.join("slaves/sdb")).unwrap();
    dev(
        "virtual/block/dm-1",
        "253:1",
        &[("dm/name", "cryptdata"), ("dm/uuid", "CRYPT-LUKS2-xyz")],
    );
    dev("pci/block/sde/sde1", "8:65", &[("partition", "1")]);
    dev("virtual/block/md0", "9:0", &[("md/level", "raid1")]);
    dev(
        "virtual/block/loop3",
        "7:3",
        &[("loop/backing_file", "/srv/disk.img")],
    );
    dev("virtual/block/nbd0", "43:0", &[]);
    t
}

fn fs(mp: &str, fstype: &str, source: &str, devno: &str) -> SourceFs {
    SourceFs {
        mount_point: mp.into(),
        fstype: fstype.into(),
        source: source.into(),
        devno: devno.into(),
    }
}

#[test]
fn block_devices_behind_file_systems() {
    let sys = fake_sys();
    let ok = [
        (
            "a partition",
            fs("/", "ext4", "/dev/sda2", "8:2"),
            Backing::Partition {
                disk: "sda".into(),
                number: 2,
            },
        ),
        (
            "an LVM logical volume on two partitions",
            fs("/var", "xfs", "/dev/mapper/vg--0-var", "253:0"),
            Backing::Volume {
                vg: "vg-0".into(),
                lv: "var".into(),
                pvs: vec![("sdc".into(), 1), ("sdd".into(), 1)],
            },
        ),
    ];
    for (name, f, want) in ok {
        assert_eq!(backing(sys.path(), &f).unwrap(), want, "{name}");
    }
    let refused = [
            (
                "a whole disk",
                fs("/data", "ext4", "/dev/sdb", "8:16"),
                "/data (ext4, /dev/sdb) is on the whole disk /dev/sdb, without a partition table",
            ),
            (
                "md",
                fs("/srv", "ext4", "/dev/md0", "9:0"),
                "/srv (ext4, /dev/md0) is on the md RAID array /dev/md0",
            ),
            (
                "a loop file",
                fs("/mnt/img", "ext4", "/dev/loop3", "7:3"),
                "/mnt/img (ext4, /dev/loop3) is on the loop device /dev/loop3 (backed by the file /srv/disk.img)",
            ),
            (
                "nbd",
                fs("/net", "xfs", "/dev/nbd0", "43:0"),
                "/net (xfs, /dev/nbd0) is on the network block device /dev/nbd0",
            ),
            (
                "dm-crypt",
                fs("/secret", "ext4", "/dev/mapper/cryptdata", "253:1"),
                "/secret (ext4, /dev/mapper/cryptdata) is on the device-mapper device cryptdata (CRYPT-LUKS2-xyz), which is not an LVM logical volume",
            ),
            (
                "an LV on a whole disk",
                fs("/home", "ext4", "/dev/mapper/vg-home", "253:2"),
                "/home (ext4, /dev/mapper/vg-home) is on the LVM logical volume vg/home, whose physical volume is the whole disk /dev/sdb, without a partition table",
            ),
        ];
    for (name, f, want) in refused {
        let e = backing(sys.path(), &f).unwrap_err();
        let c = find_coded(&e).unwrap_or_else(|| panic!("{name}: no code in {e:#}"));
        assert_eq!(c.code, ErrorCode::SourceDeviceUnsupported, "{name}");
        assert_eq!(c.detail, want, "{name}");
    }
    let e = backing(sys.path(), &fs("/x", "ext4", "/dev/zz", "1:99")).unwrap_err();
    assert_eq!(
        find_coded(&e).map(|c| c.code),
        Some(ErrorCode::SourceDeviceUnsupported)
    );
}

#[test]
fn dm_names_split_into_vg_and_lv() {
    let cases = [
        ("vg0-root", Some(("vg0", "root"))),
        ("vg--0-var", Some(("vg-0", "var"))),
        ("vg-lv--with--dashes", Some(("vg", "lv-with-dashes"))),
        ("nodash", None),
        ("-lv", None),
    ];
    for (name, want) in cases {
        let got = split_dm_name(name);
        assert_eq!(
            got.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
            want,
            "{name}"
        );
    }
}

fn discovery(fss: Vec<SourceFs>) -> Discovery {
    Discovery {
        file_systems: fss,
        not_mounted: vec![],
        boot: Boot::Bios,
    }
}

#[test]
fn root_must_be_a_file_system_ferry_writes() {
    let sys = fake_sys();
    for (fss, want) in [
        (
            vec![fs("/", "btrfs", "/dev/sda2", "8:2")],
            "/ is btrfs on /dev/sda2; file mode writes ext4, ext3 and xfs",
        ),
        (
            vec![fs("/boot", "ext4", "/dev/sda1", "8:1")],
            "/ is not on a local file system in /proc/self/mountinfo",
        ),
    ] {
        let e = placements(&discovery(fss), sys.path()).unwrap_err();
        let c = find_coded(&e).unwrap();
        assert_eq!(
            (c.code, c.detail.as_str()),
            (ErrorCode::RootFsUnsupported, want)
        );
    }
}

#[test]
fn disks_in_order_of_first_appearance_and_mounts_on_their_partitions() {
    let sys = fake_sys();
    let d = discovery(vec![
        fs("/", "ext4", "/dev/sda2", "8:2"),
        fs("/boot", "ext4", "/dev/sda1", "8:1"),
        fs("/data", "btrfs", "/dev/sdb", "8:16"),
        fs("/var", "xfs", "/dev/mapper/vg--0-var", "253:0"),
    ]);
    let (placed, not_sent) = placements(&d, sys.path()).unwrap();
    assert_eq!(
            not_sent,
            ["/data (btrfs, /dev/sdb) is not sent: file mode writes ext4, ext3, xfs and vfat; its mount point is created empty"]
        );
    let disks = disks_of(&placed);
    assert_eq!(disks, ["sda", "sdc", "sdd"]);
    let mut layout = Layout::from_toml(
        r#"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "256MiB"
type = "linux"
fs = "ext4"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "rest"
type = "lvm"
fs = "LVM2_member"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "rest"
type = "lvm"
fs = "LVM2_member"
[[volume]]
vg = "vg-0"
name = "var"
fs = "xfs"
"#,
    )
    .unwrap();
    set_mounts(&mut layout, &disks, &placed).unwrap();
    let mounts: Vec<Option<&str>> = layout.disks[0]
        .partitions
        .iter()
        .map(|p| p.fs.mount.as_deref())
        .collect();
    assert_eq!(mounts, [Some("/boot"), Some("/")]);
    assert_eq!(layout.volumes[0].fs.mount.as_deref(), Some("/var"));
    // A partition the table does not have, a type blkid disagrees with.
    let mut wrong = layout.clone();
    wrong.disks[0].partitions.pop();
    let e = set_mounts(&mut wrong, &disks, &placed).unwrap_err();
    assert_eq!(
        find_coded(&e).map(|c| c.detail.as_str()),
        Some("/ is on partition 2 of /dev/sda, which its partition table does not have")
    );
    let mut ext3 = layout.clone();
    ext3.disks[0].partitions[1].fs.kind = FsType::Ext3;
    set_mounts(&mut ext3, &disks, &placed).unwrap();
    assert_eq!(ext3.disks[0].partitions[1].fs.mount.as_deref(), Some("/"));
    let mut ext2 = layout.clone();
    ext2.disks[0].partitions[1].fs.kind = FsType::Ext2;
    let e = set_mounts(&mut ext2, &disks, &placed).unwrap_err();
    let c = find_coded(&e).unwrap();
    assert_eq!(
        (c.code, c.detail.as_str()),
        (
            ErrorCode::RootFsUnsupported,
            "/ is ext2 on its disk; file mode writes ext4, ext3 and xfs"
        )
    );
    let mut wrong = layout.clone();
    wrong.disks[0].partitions[1].fs.kind = FsType::Xfs;
    let e = set_mounts(&mut wrong, &disks, &placed).unwrap_err();
    assert_eq!(
        find_coded(&e).map(|c| c.detail.as_str()),
        Some("/ is ext4 on partition 2 of /dev/sda, where blkid finds xfs")
    );
    let mut wrong = layout;
    wrong.volumes.clear();
    let e = set_mounts(&mut wrong, &disks, &placed).unwrap_err();
    assert_eq!(
        find_coded(&e).map(|c| c.code),
        Some(ErrorCode::LayoutInvalid)
    );
}

#[test]
fn what_is_sent_is_printed_one_line_per_file_system() {
    let found = Discovery {
        file_systems: vec![],
        not_mounted: vec![("LABEL=backup".into(), "/mnt/backup".into())],
        boot: Boot::Uefi,
    };
    let row = |mp: &str, ty: &str, dev: &str, size: u64, used: u64| Row {
        mount_point: mp.into(),
        fstype: ty.into(),
        device: dev.into(),
        size,
        used,
    };
    let live = LiveSource {
        disks: vec!["/dev/sda".into(), "/dev/sdb".into()],
        mounts: vec![],
        layout: Layout::default(),
        rows: vec![
            row("/", "ext4", "/dev/sda2", 20 << 30, 3 << 30),
            row("/boot/efi", "vfat", "/dev/sda1", 512 << 20, 6 << 20),
            row("/var", "xfs", "/dev/mapper/vg0-var", 10 << 30, 1 << 29),
        ],
        not_sent: vec![
            "/mnt/backup (LABEL=backup) is in fstab but not mounted: it is not sent".into(),
        ],
    };
    assert_eq!(
        describe(&found, &live),
        "ferry send: this server boots by Uefi; its disks: disk 0 /dev/sda, disk 1 /dev/sdb
ferry send: the file systems sent:
  /  ext4  /dev/sda2  20.0 GiB  3.0 GiB used
  /boot/efi  vfat  /dev/sda1  512.0 MiB  6.0 MiB used
  /var  xfs  /dev/mapper/vg0-var  10.0 GiB  512.0 MiB used
ferry send: /mnt/backup (LABEL=backup) is in fstab but not mounted: it is not sent
"
    );
}
