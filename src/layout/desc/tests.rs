use super::*;

const SAMPLE: &str = r#"
[[disk]]
table = "gpt"
id = "8c5f1d8e-2f35-4c2a-9d0b-4b1b8a0f0e11"

[[disk.partition]]
size = "1MiB"
type = "bios-boot"

[[disk.partition]]
size = "100MiB"
type = "esp"
fs = "vfat"
uuid = "ABCD-1234"
label = "ESP"
mount = "/boot/efi"

[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
uuid = "2f1e6a4c-8b1d-4d6e-9a55-0f6c2c1e7b90"
label = "root"
mount = "/"
"#;

#[test]
fn toml_and_json_round_trip() {
    let l = Layout::from_toml(SAMPLE).unwrap();
    l.validate().unwrap();
    assert_eq!(l.disks[0].partitions[1].size, Size::Bytes(100 * MIB));
    assert_eq!(l.disks[0].partitions[2].size, Size::Rest);
    assert_eq!(l.disks[0].partitions[0].kind, PartType::BiosBoot);
    assert_eq!(Layout::from_toml(&l.to_toml().unwrap()).unwrap(), l);
    assert_eq!(Layout::parse(&l.to_json().unwrap()).unwrap(), l);
}

#[test]
fn sizes_parse() {
    let cases = [
        ("rest", Ok(Size::Rest)),
        ("512MiB", Ok(Size::Bytes(512 * MIB))),
        ("2G", Ok(Size::Bytes(2048 * MIB))),
        ("4096", Ok(Size::Bytes(4096))),
        (
            "12XB",
            Err("size \"12XB\" has an unknown unit \"XB\" (use KiB, MiB, GiB, TiB)".to_owned()),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(text.parse::<Size>(), want, "{text}");
    }
}

#[test]
fn plan_aligns_and_fills_the_rest() {
    let l = Layout::from_toml(SAMPLE).unwrap();
    let ext = plan(&l.disks[0], 256 * MIB).unwrap();
    assert_eq!(
        ext[0],
        Extent {
            start: MIB,
            len: MIB
        }
    );
    assert_eq!(
        ext[1],
        Extent {
            start: 2 * MIB,
            len: 100 * MIB
        }
    );
    // The backup GPT takes the last 33 sectors, so the rest ends one MiB early.
    assert_eq!(
        ext[2],
        Extent {
            start: 102 * MIB,
            len: 153 * MIB
        }
    );
}

#[test]
fn too_small_says_by_how_much() {
    let mut l = Layout::from_toml(SAMPLE).unwrap();
    l.disks[0].partitions[2].size = Size::Bytes(300 * MIB);
    let err = plan(&l.disks[0], 256 * MIB).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "LAYOUT_TOO_LARGE: The layout does not fit the target disk (the layout needs 421544448 bytes (403 MiB) including the partition table, the disk has 268435456 bytes (256 MiB): 153108992 bytes (147 MiB) short)"
    );
}

#[test]
fn invalid_layouts_are_refused_with_reasons() {
    let base = Layout::from_toml(SAMPLE).unwrap();
    type Case = (&'static str, Box<dyn Fn(&mut Layout)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "rest not last",
            Box::new(|l| l.disks[0].partitions[1].size = Size::Rest),
            "partition 2 has size \"rest\" but is not the last partition",
        ),
        (
            "bad uuid",
            Box::new(|l| l.disks[0].partitions[2].fs.uuid = Some("nope".into())),
            "file system uuid \"nope\" is not a UUID",
        ),
        (
            "long xfs label",
            Box::new(|l| {
                l.disks[0].partitions[2].fs.kind = FsType::Xfs;
                l.disks[0].partitions[2].fs.label = Some("0123456789abc".into())
            }),
            "label \"0123456789abc\" is 13 bytes, xfs labels hold at most 12",
        ),
        (
            "bios boot on mbr",
            Box::new(|l| {
                l.disks[0].table = TableType::Mbr;
                l.disks[0].id = None
            }),
            "a BIOS boot partition exists only on GPT",
        ),
        (
            "duplicate mount",
            Box::new(|l| l.disks[0].partitions[1].fs.mount = Some("/".into())),
            "mount point / appears twice",
        ),
        (
            "subvolume mount escaping the root",
            Box::new(|l| {
                l.disks[0].partitions[2].fs.subvolumes = vec![SubvolumeMount {
                    subvol: "@home".into(),
                    mount: "/../../etc".into(),
                }]
            }),
            "mount point \"/../../etc\" contains . or ..",
        ),
        (
            "relative subvolume mount",
            Box::new(|l| {
                l.disks[0].partitions[2].fs.subvolumes = vec![SubvolumeMount {
                    subvol: "@home".into(),
                    mount: "home".into(),
                }]
            }),
            "mount point \"home\" is not an absolute path",
        ),
        (
            "subvolume adding mount options",
            Box::new(|l| l.disks[0].partitions[2].fs.subvol = Some("@,device=/dev/vda1".into())),
            "btrfs subvolume \"@,device=/dev/vda1\" is not a path a mount option can carry",
        ),
        (
            "mount point with a newline",
            Box::new(|l| l.disks[0].partitions[1].fs.mount = Some("/boot\n/".into())),
            "mount point \"/boot\\n/\" holds a control character or is too long",
        ),
        (
            "volume group named ..",
            Box::new(|l| l.volumes = vec![lv("..", "root", None)]),
            "logical volume \"..\"/\"root\": not a name LVM allows",
        ),
        (
            "volume on a partition the layout lacks",
            Box::new(|l| {
                l.volumes = vec![lv(
                    "vg",
                    "root",
                    Some(crate::layout::desc::Place {
                        disk: 0,
                        partition: 9,
                        offset: 0,
                        size: 1,
                    }),
                )]
            }),
            "logical volume vg/root lies on partition 9 of disk 0, which the layout does not have",
        ),
        (
            "volume mounted outside the root",
            Box::new(|l| {
                let mut v = lv("vg", "var", None);
                v.fs.mount = Some("/var/../..".into());
                l.volumes = vec![v];
            }),
            "mount point \"/var/../..\" contains . or ..",
        ),
    ];
    for (name, f, want) in cases {
        let mut l = base.clone();
        f(&mut l);
        let err = format!("{:#}", l.validate().unwrap_err());
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains("LAYOUT_INVALID"), "{name}: {err}");
    }
}

fn lv(
    vg: &str,
    name: &str,
    place: Option<crate::layout::desc::Place>,
) -> crate::layout::desc::LogicalVolume {
    crate::layout::desc::LogicalVolume {
        place,
        ..crate::layout::desc::LogicalVolume::test(vg, name)
    }
}

#[test]
fn fat_ids() {
    assert_eq!(fat_volume_id("ABCD-1234").unwrap(), 0xABCD1234);
    assert_eq!(
        fat_volume_id("12345678-9abc-def0-1234-56789abcdef0").unwrap(),
        0x12345678
    );
    assert_eq!(fat_volume_id_string(0xABCD1234), "ABCD-1234");
}

const LVM_BTRFS: &str = r#"
[[disk]]
table = "mbr"

[[disk.partition]]
size = "rest"
type = "lvm"
fs = "LVM2_member"

[[volume]]
vg = "vg0"
name = "root"
fs = "btrfs"
uuid = "3f1e6a4c-8b1d-4d6e-9a55-0f6c2c1e7b90"
mount = "/"
subvol = "@"
subvolumes = [{ subvol = "@home", mount = "/home" }]
"#;

#[test]
fn a_logical_volume_describes_its_file_system_as_a_partition_does() {
    let l = Layout::from_toml(LVM_BTRFS).unwrap();
    let v = &l.volumes[0];
    assert_eq!(v.fs.kind, FsType::Btrfs);
    assert_eq!(v.fs.subvol.as_deref(), Some("@"));
    // Its further subvolumes are mount points like a partition's.
    assert_eq!(l.mount_points(), ["/", "/home"]);
    let mounts: Vec<_> = v.fs.mounts().collect();
    assert_eq!(mounts, [("/", Some("@")), ("/home", Some("@home"))]);
    assert_eq!(Layout::from_toml(&l.to_toml().unwrap()).unwrap(), l);
    assert_eq!(Layout::parse(&l.to_json().unwrap()).unwrap(), l);
    // Without its own mount, a file system's further subvolumes go too.
    let mut kept = l.clone();
    kept.keep_mounts(|m| m != "/");
    assert_eq!(
        kept.volumes[0].fs,
        FsSpec {
            mount: None,
            subvol: None,
            subvolumes: Vec::new(),
            ..v.fs.clone()
        }
    );
    assert!(kept.mount_points().is_empty());
}

#[test]
fn an_unknown_field_is_refused_beside_the_file_system_fields() {
    for (name, text) in [
        (
            "partition",
            SAMPLE.replace("label = \"root\"", "colour = \"red\""),
        ),
        (
            "volume",
            LVM_BTRFS.replace("subvol = \"@\"\n", "colour = \"red\"\n"),
        ),
    ] {
        let err = format!("{:#}", Layout::from_toml(&text).unwrap_err());
        assert!(err.contains("unknown field `colour`"), "{name}: {err}");
        assert!(err.contains("LAYOUT_INVALID"), "{name}: {err}");
    }
    let json = r#"{"disk":[{"table":"gpt","partition":[{"size":1048576,"type":"linux","fs":"ext4","colour":1}]}]}"#;
    let err = format!("{:#}", Layout::parse(json).unwrap_err());
    assert!(err.contains("unknown field `colour`"), "{err}");
}
