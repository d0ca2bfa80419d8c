//! Device names as a source system writes them, parsed here once for the
//! layout engine (which partition an fstab line mounts), the check and the
//! repair (device names rewritten to UUIDs):
//!
//! - fstab lines ([`parse_fstab`], [`fstab_fields`]), with the octal escapes
//!   of their fields (`\040` for a space);
//! - device specs ([`DeviceSpec`]): `UUID=`, `LABEL=`, `PARTUUID=`,
//!   `PARTLABEL=`, `/dev/disk/by-*` with udev's `\x20` escapes,
//!   `/dev/mapper/*`, and kernel names (`/dev/sda1`, `/dev/nvme0n1p2`,
//!   `/dev/disk/by-id/...-part3`);
//! - `blkid -o export` output ([`parse_blkid_export`]).

/// Split a kernel or udev device name into its disk and partition number:
/// `/dev/sda1` → (`/dev/sda`, 1), `/dev/nvme0n1p2` → (`/dev/nvme0n1`, 2),
/// `/dev/disk/by-id/X-part3` → (`/dev/disk/by-id/X`, 3), `/dev/sdb` → (`/dev/sdb`, None).
/// Names that do not belong to a disk ferry migrates give None.
pub fn split_device(spec: &str) -> Option<(String, Option<u32>)> {
    for by in ["/dev/disk/by-id/", "/dev/disk/by-path/"] {
        if let Some(rest) = spec.strip_prefix(by) {
            if let Some(i) = rest.rfind("-part") {
                if let Ok(n) = rest[i + 5..].parse::<u32>() {
                    return Some((format!("{by}{}", &rest[..i]), Some(n)));
                }
            }
            return Some((spec.to_owned(), None));
        }
    }
    let name = spec.strip_prefix("/dev/")?;
    for p in ["sd", "hd", "xvd", "vd"] {
        if let Some(rest) = name.strip_prefix(p) {
            let letters = rest.chars().take_while(|c| c.is_ascii_lowercase()).count();
            let (l, num) = rest.split_at(letters);
            if l.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let disk = format!("/dev/{p}{l}");
            return Some((
                disk,
                if num.is_empty() {
                    None
                } else {
                    num.parse().ok()
                },
            ));
        }
    }
    for p in ["nvme", "mmcblk", "cciss/c"] {
        if name.starts_with(p) {
            if let Some(i) = name.rfind('p') {
                if i > p.len()
                    && name[i + 1..].chars().all(|c| c.is_ascii_digit())
                    && i + 1 < name.len()
                {
                    return Some((format!("/dev/{}", &name[..i]), name[i + 1..].parse().ok()));
                }
            }
            return Some((spec.to_owned(), None));
        }
    }
    None
}

/// An fstab line's fields, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub spec: String,
    pub mountpoint: String,
    pub fstype: String,
    /// `defaults` when the line has none.
    pub options: String,
}

impl FstabEntry {
    /// Whether the options hold `opt` (`nofail`, `noauto`).
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.split(',').any(|o| o == opt)
    }

    /// The value of `key=value` among the options (`subvol`).
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }

    /// The btrfs subvolume the line mounts (`subvol=@` or `subvol=/@`).
    pub fn subvol(&self) -> Option<String> {
        self.option("subvol")
            .map(|s| s.trim_start_matches('/').to_owned())
            .filter(|s| !s.is_empty())
    }
}

/// Byte ranges of the whitespace-separated fields of an fstab line (a
/// rewrite that keeps the line's spacing edits inside them).
pub fn fstab_fields(line: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, line.len()));
    }
    out
}

/// Whether an fstab line is a comment or blank.
pub(crate) fn fstab_is_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// The entries of an fstab (lines with a spec, mount point and type).
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .filter(|l| !fstab_is_comment(l))
        .filter_map(|l| {
            let f: Vec<&str> = fstab_fields(l).iter().map(|r| &l[r.0..r.1]).collect();
            (f.len() >= 3).then(|| FstabEntry {
                spec: unescape_octal(f[0]),
                mountpoint: unescape_octal(f[1]),
                fstype: f[2].to_owned(),
                options: f.get(3).map_or("defaults", |o| o).to_owned(),
            })
        })
        .collect()
}

/// fstab's and mountinfo's escapes: `\ooo` (`\040` space, `\011` tab,
/// `\012` newline, `\134` backslash).
pub(crate) fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            match u8::try_from(v) {
                Ok(v) => {
                    out.push(v);
                    i += 4;
                    continue;
                }
                Err(_) => out.push(b[i]),
            }
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// udev's escapes in link names under /dev/disk/by-*: `\xNN`.
pub(crate) fn unescape_udev(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// udev's escaping of link names: `/`, whitespace and non-printing bytes
/// become `\xNN`.
pub(crate) fn udev_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"#+-.:=@_".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// What a device spec (an fstab field, a `root=` argument), already
/// unescaped from fstab's octal, names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    Uuid(String),
    Label(String),
    PartUuid(String),
    PartLabel(String),
    /// A kernel or udev name of a disk or one of its partitions
    /// (`/dev/sda1`, `/dev/disk/by-id/X-part3`, `/dev/disk/by-path/...`).
    Device {
        disk: String,
        partition: Option<u32>,
    },
    /// A device-mapper name, `/dev/mapper/<name>` (LVM's `vg-lv`).
    Mapper(String),
    /// Not a name of a disk's contents (pseudo and network file systems,
    /// md arrays, `/dev/<vg>/<lv>`).
    Other,
}

impl DeviceSpec {
    pub fn parse(spec: &str) -> DeviceSpec {
        let unquote = |v: &str| v.trim_matches('"').to_owned();
        for (key, make) in [
            ("UUID=", DeviceSpec::Uuid as fn(String) -> DeviceSpec),
            ("LABEL=", DeviceSpec::Label),
            ("PARTUUID=", DeviceSpec::PartUuid),
            ("PARTLABEL=", DeviceSpec::PartLabel),
        ] {
            if let Some(v) = spec.strip_prefix(key) {
                return make(unquote(v));
            }
        }
        for (dir, make) in [
            (
                "/dev/disk/by-uuid/",
                DeviceSpec::Uuid as fn(String) -> DeviceSpec,
            ),
            ("/dev/disk/by-label/", DeviceSpec::Label),
            ("/dev/disk/by-partuuid/", DeviceSpec::PartUuid),
            ("/dev/disk/by-partlabel/", DeviceSpec::PartLabel),
        ] {
            if let Some(v) = spec.strip_prefix(dir) {
                return make(unescape_udev(v));
            }
        }
        if let Some(name) = spec.strip_prefix("/dev/mapper/") {
            return DeviceSpec::Mapper(name.to_owned());
        }
        match split_device(spec) {
            Some((disk, partition)) => DeviceSpec::Device { disk, partition },
            None => DeviceSpec::Other,
        }
    }

    /// Whether a file system of these identities is the one an identity
    /// spec names; None for a spec that names no identity. UUIDs compare
    /// without case (blkid prints vfat's in upper case), labels exactly.
    pub fn matches(&self, ids: &Ids<'_>) -> Option<bool> {
        let eq_nocase = |a: Option<&str>, b: &str| a.is_some_and(|a| a.eq_ignore_ascii_case(b));
        match self {
            DeviceSpec::Uuid(u) => Some(eq_nocase(ids.uuid, u)),
            DeviceSpec::PartUuid(u) => Some(eq_nocase(ids.partuuid, u)),
            DeviceSpec::Label(l) => Some(ids.label == Some(l.as_str())),
            DeviceSpec::PartLabel(l) => Some(ids.partlabel == Some(l.as_str())),
            _ => None,
        }
    }
}

/// The identities of a file system and its partition.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ids<'a> {
    pub uuid: Option<&'a str>,
    pub label: Option<&'a str>,
    pub partuuid: Option<&'a str>,
    pub partlabel: Option<&'a str>,
}

/// `KEY=value` lines of `blkid -o export` (one device), values unescaped
/// (blkid puts a backslash before each special character).
pub fn parse_blkid_export(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let mut out = String::with_capacity(v.len());
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            (k.to_owned(), out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_device_cases() {
        type Case<'a> = (&'a str, Option<(&'a str, Option<u32>)>);
        let cases: &[Case] = &[
            ("/dev/sda1", Some(("/dev/sda", Some(1)))),
            ("/dev/sdab12", Some(("/dev/sdab", Some(12)))),
            ("/dev/sdb", Some(("/dev/sdb", None))),
            ("/dev/hda2", Some(("/dev/hda", Some(2)))),
            ("/dev/xvda1", Some(("/dev/xvda", Some(1)))),
            ("/dev/vda3", Some(("/dev/vda", Some(3)))),
            ("/dev/nvme0n1p2", Some(("/dev/nvme0n1", Some(2)))),
            ("/dev/nvme0n1", Some(("/dev/nvme0n1", None))),
            ("/dev/mmcblk0p1", Some(("/dev/mmcblk0", Some(1)))),
            ("/dev/cciss/c0d0p1", Some(("/dev/cciss/c0d0", Some(1)))),
            (
                "/dev/disk/by-id/ata-VBOX_HARDDISK_VB1-part1",
                Some(("/dev/disk/by-id/ata-VBOX_HARDDISK_VB1", Some(1))),
            ),
            (
                "/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0-part2",
                Some(("/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0", Some(2))),
            ),
            ("/dev/mapper/vg-root", None),
            ("/dev/md0", None),
            ("/dev/sr0", None),
            ("/dev/shm", None),
            ("tmpfs", None),
        ];
        for (spec, want) in cases {
            let got = split_device(spec);
            let want = want.map(|(d, p)| (d.to_owned(), p));
            assert_eq!(got, want, "{spec}");
        }
    }

    #[test]
    fn device_spec_forms() {
        use DeviceSpec::*;
        let dev = |d: &str, p: Option<u32>| Device {
            disk: d.to_owned(),
            partition: p,
        };
        let cases: Vec<(&str, DeviceSpec)> = vec![
            ("UUID=2222-aaaa", Uuid("2222-aaaa".into())),
            ("UUID=\"2222-aaaa\"", Uuid("2222-aaaa".into())),
            ("LABEL=root", Label("root".into())),
            ("LABEL=\"my root\"", Label("my root".into())),
            ("LABEL=my root", Label("my root".into())),
            ("PARTUUID=0c8f-01", PartUuid("0c8f-01".into())),
            ("PARTLABEL=EFI System", PartLabel("EFI System".into())),
            ("/dev/disk/by-uuid/2222-aaaa", Uuid("2222-aaaa".into())),
            ("/dev/disk/by-label/my\\x20root", Label("my root".into())),
            ("/dev/disk/by-label/a\\x2fb", Label("a/b".into())),
            ("/dev/disk/by-partuuid/0c8f-01", PartUuid("0c8f-01".into())),
            (
                "/dev/disk/by-partlabel/EFI\\x20System",
                PartLabel("EFI System".into()),
            ),
            (
                "/dev/mapper/ferry--vg-root",
                Mapper("ferry--vg-root".into()),
            ),
            ("/dev/sda1", dev("/dev/sda", Some(1))),
            ("/dev/sda", dev("/dev/sda", None)),
            ("/dev/nvme0n1p2", dev("/dev/nvme0n1", Some(2))),
            ("/dev/vdb3", dev("/dev/vdb", Some(3))),
            (
                "/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001-part3",
                dev("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001", Some(3)),
            ),
            (
                "/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0-part2",
                dev("/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0", Some(2)),
            ),
            ("/dev/ferry-vg/root", Other),
            ("/dev/md0", Other),
            ("tmpfs", Other),
            ("nas:/export", Other),
        ];
        for (spec, want) in cases {
            assert_eq!(DeviceSpec::parse(spec), want, "{spec}");
        }
    }

    #[test]
    fn identity_matching() {
        let ids = Ids {
            uuid: Some("aa-bb"),
            label: Some("my root"),
            partuuid: Some("cc-01"),
            partlabel: Some("EFI System"),
        };
        let cases: &[(&str, Option<bool>)] = &[
            ("UUID=AA-BB", Some(true)),
            ("UUID=\"aa-bb\"", Some(true)),
            ("UUID=other", Some(false)),
            ("/dev/disk/by-uuid/aa-bb", Some(true)),
            ("LABEL=my root", Some(true)),
            ("LABEL=My root", Some(false)),
            ("/dev/disk/by-label/my\\x20root", Some(true)),
            ("PARTUUID=CC-01", Some(true)),
            ("/dev/disk/by-partuuid/cc-01", Some(true)),
            ("PARTLABEL=EFI System", Some(true)),
            ("/dev/sda1", None),
            ("/dev/mapper/vg-root", None),
        ];
        for (spec, want) in cases {
            assert_eq!(DeviceSpec::parse(spec).matches(&ids), *want, "{spec}");
        }
        // A label with a space, as fstab writes it, through the fstab parser.
        let e = &parse_fstab("LABEL=my\\040root /srv\\040data ext4 defaults 0 2\n")[0];
        assert_eq!(DeviceSpec::parse(&e.spec).matches(&ids), Some(true));
        assert_eq!(e.mountpoint, "/srv data");
    }

    #[test]
    fn fstab_lines() {
        let text = "# /etc/fstab\n\n  # indented comment\nUUID=x / ext4 errors=remount-ro 0 1\nLABEL=a\\040b\t/srv\\040x xfs defaults,nofail\nproc /proc proc\nUUID=y /home btrfs defaults,subvol=@home 0 0\nbroken-line /only-two\n";
        let f = parse_fstab(text);
        assert_eq!(
            f.iter()
                .map(|e| (
                    e.spec.as_str(),
                    e.mountpoint.as_str(),
                    e.fstype.as_str(),
                    e.options.as_str()
                ))
                .collect::<Vec<_>>(),
            [
                ("UUID=x", "/", "ext4", "errors=remount-ro"),
                ("LABEL=a b", "/srv x", "xfs", "defaults,nofail"),
                ("proc", "/proc", "proc", "defaults"),
                ("UUID=y", "/home", "btrfs", "defaults,subvol=@home"),
            ]
        );
        assert!(f[1].has_option("nofail") && !f[0].has_option("nofail"));
        assert_eq!(f[3].option("subvol"), Some("@home"));
        assert_eq!(f[0].option("subvol"), None);
        assert_eq!(unescape_octal("a\\011b\\134c\\012"), "a\tb\\c\n");
        assert_eq!(unescape_octal("no\\9escape\\04"), "no\\9escape\\04");
        assert_eq!(fstab_fields("  a\tb  c"), [(2, 3), (4, 5), (7, 8)]);
    }

    #[test]
    fn blkid_export() {
        let kv = parse_blkid_export(
            "DEVNAME=/dev/loop0p1\nUUID=ABCD-1234\nLABEL=my\\ disk\nTYPE=vfat\nPART_ENTRY_UUID=0c8f-01\n",
        );
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("LABEL"), Some("my disk"));
        assert_eq!(get("UUID"), Some("ABCD-1234"));
        assert_eq!(get("PART_ENTRY_UUID"), Some("0c8f-01"));
        assert_eq!(get("TYPE"), Some("vfat"));
        assert_eq!(udev_escape("my disk/1"), "my\\x20disk\\x2f1");
        assert_eq!(unescape_udev(&udev_escape("my disk/1")), "my disk/1");
    }
}
