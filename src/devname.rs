//! Device names as a source system writes them (`/dev/sda1`,
//! `/dev/nvme0n1p2`, `/dev/disk/by-id/...-part3`): parsed here once, for the
//! layout engine (fstab lines naming kernel devices) and the repair (device
//! names rewritten to UUIDs).

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
}
