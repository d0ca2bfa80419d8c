//! fstab: kernel device names do not survive the move to the cloud
//! (`/dev/sda1` becomes `/dev/vda1` or `/dev/nvme0n1p1`), file system UUIDs
//! do. Entries of disks that were not migrated must not stop the boot.

use anyhow::Result;

use super::devices::{DeviceMap, Resolved};
use super::engine::StepCtx;
use crate::devname::{fstab_fields, fstab_is_comment, unescape_octal};
use crate::job::errors::{coded, ErrorCode};

pub const PATH: &str = "/etc/fstab";

pub fn step(ctx: &mut StepCtx, map: &DeviceMap) -> Result<()> {
    let Some(old) = ctx.tree.read(PATH)? else {
        ctx.skip("no /etc/fstab in the migrated root");
        return Ok(());
    };
    let (new, notes) = rewrite(&old, map)?;
    for n in notes {
        ctx.note(n);
    }
    ctx.write(PATH, &new, 0o644)?;
    Ok(())
}

/// The repaired fstab and notes on what was decided and why.
pub fn rewrite(text: &str, map: &DeviceMap) -> Result<(String, Vec<String>)> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut notes = Vec::new();
    for raw in text.split_inclusive('\n') {
        let (line, nl) = match raw.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (raw, ""),
        };
        let f = fstab_fields(line);
        if fstab_is_comment(line) || f.len() < 2 {
            out.push_str(raw);
            continue;
        }
        let spec_owned = unescape_octal(&line[f[0].0..f[0].1]);
        let mp_owned = unescape_octal(&line[f[1].0..f[1].1]);
        let (spec, mp) = (spec_owned.as_str(), mp_owned.as_str());
        let opts = f.get(3).map(|r| &line[r.0..r.1]);
        let essential = mp == "/" || mp == "/usr";
        match map.resolve(spec, Some(mp)) {
            // Device paths (kernel names, by-id, by-path, by-uuid) become
            // UUID=; UUID=/LABEL=/PARTUUID= specs already are stable.
            Resolved::Migrated(v) if spec.starts_with("/dev/") => match &v.uuid {
                Some(u) => {
                    out.push_str(&line[..f[0].0]);
                    out.push_str(&format!("UUID={u}"));
                    out.push_str(&line[f[0].1..]);
                    out.push_str(nl);
                    notes.push(format!("{mp}: {spec} -> UUID={u}"));
                }
                None => {
                    notes.push(format!(
                        "{mp}: {spec} is migrated but its UUID is unknown; left as is"
                    ));
                    out.push_str(raw);
                }
            },
            Resolved::Migrated(_) => out.push_str(raw),
            Resolved::NotMigrated => {
                if essential {
                    return Err(coded(
                        ErrorCode::RepairBadInput,
                        format!("fstab mounts {mp} from {spec}, which is on no migrated disk"),
                    ));
                }
                out.push_str(&format!("# ferry: disk not migrated, {spec} would name another disk on the cloud: {line}{nl}"));
                notes.push(format!(
                    "{mp}: {spec} is on a disk that was not migrated; entry commented out"
                ));
            }
            Resolved::UnknownId => {
                if essential {
                    return Err(coded(
                        ErrorCode::RepairBadInput,
                        format!("fstab mounts {mp} from {spec}, which is on no migrated disk"),
                    ));
                }
                let o = opts.unwrap_or("defaults");
                let has = o.split(',').any(|x| x == "nofail" || x == "noauto");
                if has {
                    out.push_str(raw);
                } else {
                    let new_opts = format!("{o},nofail");
                    match f.get(3) {
                        Some(r) => {
                            out.push_str(&line[..r.0]);
                            out.push_str(&new_opts);
                            out.push_str(&line[r.1..]);
                        }
                        None => {
                            out.push_str(line);
                            out.push_str(&format!(
                                "\t{}\t{new_opts}",
                                if f.len() >= 3 { "" } else { "auto" }
                            ));
                        }
                    }
                    out.push_str(nl);
                    notes.push(format!("{mp}: {spec} is on no migrated disk; nofail added so the boot does not wait for it"));
                }
            }
            Resolved::Other => out.push_str(raw),
        }
    }
    Ok((out, notes))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::repair::devices::{MigratedDisk, Volume};

    pub fn map() -> DeviceMap {
        DeviceMap {
            renamed: Vec::new(),
            disks: vec![MigratedDisk {
                source_names: vec![
                    "/dev/sda".into(),
                    "/dev/disk/by-id/ata-VMware_Virtual_S_1".into(),
                ],
                target: "/dev/vdb".into(),
                volumes: vec![
                    Volume {
                        partition: Some(1),
                        node: "/dev/vdb1".into(),
                        fstype: Some("ext4".into()),
                        uuid: Some("11111111-1111-4111-8111-111111111111".into()),
                        mountpoint: Some("/boot".into()),
                        ..Default::default()
                    },
                    Volume {
                        partition: Some(2),
                        node: "/dev/vdb2".into(),
                        fstype: Some("ext4".into()),
                        uuid: Some("22222222-2222-4222-8222-222222222222".into()),
                        label: Some("root".into()),
                        mountpoint: Some("/".into()),
                        ..Default::default()
                    },
                    Volume {
                        partition: Some(5),
                        node: "/dev/vdb5".into(),
                        fstype: Some("swap".into()),
                        uuid: Some("55555555-5555-4555-8555-555555555555".into()),
                        ..Default::default()
                    },
                ],
            }],
        }
    }

    #[test]
    fn a_flattened_volume_is_named_by_its_uuid() {
        use crate::layout::flatten::Renamed;
        let mut m = map();
        for (from, to) in [
            (
                "/dev/mapper/vg--sys-root",
                "UUID=22222222-2222-4222-8222-222222222222",
            ),
            (
                "/dev/vg-sys/swap_1",
                "UUID=55555555-5555-4555-8555-555555555555",
            ),
        ] {
            m.renamed.push(Renamed {
                from: from.into(),
                to: to.into(),
            });
        }
        let fstab = "/dev/mapper/vg--sys-root / ext4 errors=remount-ro 0 1\n/dev/vg-sys/swap_1 none swap sw 0 0\n/dev/mapper/vg--sys-home /home ext4 defaults 0 2\n";
        let (out, notes) = rewrite(fstab, &m).unwrap();
        assert_eq!(
            out,
            "UUID=22222222-2222-4222-8222-222222222222 / ext4 errors=remount-ro 0 1\nUUID=55555555-5555-4555-8555-555555555555 none swap sw 0 0\n/dev/mapper/vg--sys-home /home ext4 defaults 0 2\n"
        );
        assert!(
            notes.contains(
                &"/: /dev/mapper/vg--sys-root -> UUID=22222222-2222-4222-8222-222222222222"
                    .to_owned()
            ),
            "{notes:?}"
        );
        assert_eq!(rewrite(&out, &m).unwrap().0, out, "idempotent");
    }

    #[test]
    fn cases() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "kernel names become UUIDs, spacing kept",
                "# /etc/fstab\n/dev/sda2  /  ext4  errors=remount-ro 0 1\n/dev/sda1\t/boot\text4\tdefaults\t0\t2\n/dev/sda5 none swap sw 0 0\n",
                "# /etc/fstab\nUUID=22222222-2222-4222-8222-222222222222  /  ext4  errors=remount-ro 0 1\nUUID=11111111-1111-4111-8111-111111111111\t/boot\text4\tdefaults\t0\t2\nUUID=55555555-5555-4555-8555-555555555555 none swap sw 0 0\n",
            ),
            (
                "by-id and by-path names",
                "/dev/disk/by-id/ata-VMware_Virtual_S_1-part2 / ext4 defaults 0 1\n/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0-part1 /boot ext4 defaults 0 2\n",
                "UUID=22222222-2222-4222-8222-222222222222 / ext4 defaults 0 1\nUUID=11111111-1111-4111-8111-111111111111 /boot ext4 defaults 0 2\n",
            ),
            (
                "stable names and pseudo file systems are kept",
                "UUID=22222222-2222-4222-8222-222222222222 / ext4 defaults 0 1\nLABEL=root /mnt/x ext4 defaults 0 0\nproc /proc proc defaults 0 0\ntmpfs /tmp tmpfs size=1G 0 0\n/dev/mapper/vg-home /home xfs defaults 0 0\nnas:/export /srv nfs defaults 0 0\n/dev/sr0 /media/cdrom iso9660 noauto,ro 0 0\n",
                "UUID=22222222-2222-4222-8222-222222222222 / ext4 defaults 0 1\nLABEL=root /mnt/x ext4 defaults 0 0\nproc /proc proc defaults 0 0\ntmpfs /tmp tmpfs size=1G 0 0\n/dev/mapper/vg-home /home xfs defaults 0 0\nnas:/export /srv nfs defaults 0 0\n/dev/sr0 /media/cdrom iso9660 noauto,ro 0 0\n",
            ),
            (
                "disks not migrated: names commented, identities nofail",
                "/dev/sdb1 /data ext4 defaults 0 2\nUUID=99999999-9999-4999-8999-999999999999 /backup xfs defaults 0 0\nUUID=88888888-8888-4888-8888-888888888888 /archive xfs noauto 0 0\n/dev/disk/by-uuid/77777777-7777-4777-8777-777777777777 /scratch ext4 rw,noatime 0 0\n",
                "# ferry: disk not migrated, /dev/sdb1 would name another disk on the cloud: /dev/sdb1 /data ext4 defaults 0 2\nUUID=99999999-9999-4999-8999-999999999999 /backup xfs defaults,nofail 0 0\nUUID=88888888-8888-4888-8888-888888888888 /archive xfs noauto 0 0\n/dev/disk/by-uuid/77777777-7777-4777-8777-777777777777 /scratch ext4 rw,noatime,nofail 0 0\n",
            ),
            (
                "by-uuid of a migrated volume becomes UUID=",
                "/dev/disk/by-uuid/22222222-2222-4222-8222-222222222222 / ext4 defaults 0 1\n",
                "UUID=22222222-2222-4222-8222-222222222222 / ext4 defaults 0 1\n",
            ),
            ("no trailing newline", "/dev/sda2 / ext4 defaults 0 1", "UUID=22222222-2222-4222-8222-222222222222 / ext4 defaults 0 1"),
        ];
        let m = map();
        for (name, input, want) in cases {
            let (got, _) = rewrite(input, &m).unwrap();
            assert_eq!(got, *want, "case {name}");
            let (again, _) = rewrite(&got, &m).unwrap();
            assert_eq!(again, got, "case {name}: second run changes nothing");
        }
    }

    /// A label with a space, as fstab (`\040`) and udev (`\x20`) escape it,
    /// names the migrated volume; the same label in the layout engine's
    /// matcher (src/layout/tree/mount_points.rs) does too, through the same parser.
    #[test]
    fn labels_with_spaces_resolve() {
        let mut m = map();
        m.disks[0].volumes[0].label = Some("boot vol".into());
        let cases: &[(&str, &str, &str)] = &[
            (
                "LABEL= with an octal escape is stable and kept",
                "LABEL=boot\\040vol /boot ext4 defaults 0 2\n",
                "LABEL=boot\\040vol /boot ext4 defaults 0 2\n",
            ),
            (
                "by-label with udev's escape becomes UUID=",
                "/dev/disk/by-label/boot\\x20vol /boot ext4 defaults 0 2\n",
                "UUID=11111111-1111-4111-8111-111111111111 /boot ext4 defaults 0 2\n",
            ),
            (
                "a label of no migrated volume gets nofail",
                "LABEL=boot\\040other /srv ext4 defaults 0 2\n",
                "LABEL=boot\\040other /srv ext4 defaults,nofail 0 2\n",
            ),
            (
                "a mount point with a space, on a kernel name",
                "/dev/sda1 /my\\040boot ext4 defaults 0 2\n",
                "UUID=11111111-1111-4111-8111-111111111111 /my\\040boot ext4 defaults 0 2\n",
            ),
        ];
        for (name, input, want) in cases {
            let (got, _) = rewrite(input, &m).unwrap();
            assert_eq!(got, *want, "case {name}");
        }
        assert!(matches!(
            m.resolve("LABEL=boot vol", Some("/boot")),
            Resolved::Migrated(v) if v.partition == Some(1)
        ));
    }

    #[test]
    fn root_on_a_disk_not_migrated_is_refused() {
        let err = rewrite("/dev/sdc1 / ext4 defaults 0 1\n", &DeviceMap::default()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "REPAIR_BAD_INPUT: The repair was given an invalid root or device map (fstab mounts / from /dev/sdc1, which is on no migrated disk)"
        );
    }
}
