//! The whole inspection on small trees of files: the findings and their order.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::super::{CheckReport, Source};
use super::*;

/// A tree of `(path, content)`; a path ending in `/` is a directory, a
/// content starting with `#!` is an executable script.
fn inspect_files(files: &[(&str, &str)]) -> CheckReport {
    let d = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let host = d.path().join(p.trim_start_matches('/'));
        if p.ends_with('/') {
            fs::create_dir_all(&host).unwrap();
            continue;
        }
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(&host, c).unwrap();
        if c.starts_with("#!") {
            fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let mut r = CheckReport::new(Source::Root, Vec::new());
    inspect(d.path(), None, &mut r).unwrap();
    r.finish()
}

fn codes(r: &CheckReport) -> Vec<(Severity, &str)> {
    r.findings
        .iter()
        .map(|f| (f.severity, f.code.as_str()))
        .collect()
}

fn detail(r: &CheckReport, code: ErrorCode) -> &str {
    &r.findings.iter().find(|f| f.code == code).unwrap().detail
}

#[test]
fn an_old_centos_says_all_that_will_fail() {
    let r = inspect_files(&[
        ("/etc/redhat-release", "CentOS release 6.10 (Final)\n"),
        ("/boot/grub/grub.conf", "default=0\n"),
        (
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            "DEVICE=eth0\nBOOTPROTO=static\nIPADDR=192.168.1.10\n",
        ),
        (
            "/etc/sysconfig/network-scripts/ifcfg-lo",
            "DEVICE=lo\nIPADDR=127.0.0.1\n",
        ),
        ("/etc/selinux/config", "SELINUX=enforcing\n"),
        ("/etc/inittab", ""),
        ("/etc/init.d/vmware-tools", "#!/bin/sh\n"),
        ("/etc/fstab", "/dev/sda1 / ext3 defaults 1 1\n"),
        ("/bin/sh", "#!/bin/sh\n"),
    ]);
    assert_eq!(
        codes(&r),
        [
            (Severity::Blocker, "VIRTIO_CHECK_FAILED"),
            (Severity::Blocker, "REPAIR_TOOL_MISSING"),
            (Severity::Blocker, "GRUB_FAILED"),
            (Severity::Warning, "SELINUX_ENFORCING"),
            (Severity::Info, "NETWORK_STATIC"),
            (Severity::Info, "PLATFORM_AGENTS"),
        ]
    );
    assert_eq!(
        detail(&r, ErrorCode::GrubFailed),
        "the migrated system boots with GRUB legacy (older than 1.9); it needs GRUB 2"
    );
    assert_eq!(
        detail(&r, ErrorCode::NetworkStatic),
        "/etc/sysconfig/network-scripts/ifcfg-eth0: eth0 192.168.1.10"
    );
    assert_eq!(
        detail(&r, ErrorCode::PlatformAgents),
        "the repair masks /etc/init.d/vmware-tools"
    );
    assert_eq!(r.blockers, 3);
    assert!(r.blocker_error().is_err());
}

#[test]
fn a_kernel_without_virtio_a_root_on_lvm_and_a_generator_that_cannot_run() {
    let r = inspect_files(&[
        ("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
        ("/boot/vmlinuz-6.1.0-old", "k"),
        ("/lib/modules/6.1.0-old/kernel/drivers/ata/ahci.ko", ""),
        (
            "/lib/modules/6.1.0-old/modules.builtin",
            "kernel/drivers/virtio/virtio_pci.ko\n",
        ),
        ("/boot/grub/grub.cfg", ""),
        ("/boot/grub/i386-pc/", ""),
        (
            "/usr/lib/grub/i386-pc/modinfo.sh",
            "grub_package_version=\"2.06-13\"\n",
        ),
        ("/usr/sbin/update-grub", "#!/bin/sh\n"),
        ("/usr/sbin/update-initramfs", "#!/bin/bash\n"),
        ("/bin/sh", "#!/bin/sh\n"),
        (
            "/etc/fstab",
            "/dev/mapper/vg0-root / ext4 defaults 0 1\n/dev/vg0/srv /srv xfs defaults 0 2\n",
        ),
    ]);
    assert_eq!(
        codes(&r),
        [
            (Severity::Blocker, "VIRTIO_CHECK_FAILED"),
            (Severity::Blocker, "REPAIR_TOOL_MISSING"),
        ]
    );
    assert_eq!(
        detail(&r, ErrorCode::VirtioCheckFailed),
        "kernel 6.1.0-old lacks virtio_blk, virtio_net"
    );
    assert_eq!(
        detail(&r, ErrorCode::RepairToolMissing),
        "the initramfs generator /usr/sbin/update-initramfs cannot run: its interpreter /bin/bash is missing from the system"
    );
    let System::Linux(l) = &r.systems[0] else {
        panic!("not Linux")
    };
    assert_eq!(l.bootloader.version.as_deref(), Some("2.06-13"));
    assert!(l.kernels[0].drivers["virtio_pci"], "built in");
    assert!(!l.kernels[0].drivers["virtio_blk"]);
    assert_eq!(
        l.lvm.volumes,
        ["/ on /dev/mapper/vg0-root", "/srv on /dev/vg0/srv"]
    );
    // A root on LVM is reached by the appliance; a layout it cannot
    // reach is found on the disks (tests/root/lvm.rs).
    assert!(l.lvm.supported);
    assert!(l
        .lvm
        .why
        .starts_with("the system is on logical volumes (/ on /dev/mapper/vg0-root)"));
}

#[test]
fn a_tree_without_an_os_is_a_blocker_with_the_detection_code() {
    let r = inspect_files(&[("/srv/data/file", "x")]);
    assert_eq!(codes(&r), [(Severity::Blocker, "UNSUPPORTED_OS")]);
    assert!(r.systems.is_empty());
}

#[test]
fn networkmanager_keyfiles_name_their_nics_and_static_addresses() {
    let r = inspect_files(&[
        ("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
        ("/bin/sh", "#!/bin/sh\n"),
        ("/usr/sbin/NetworkManager", "#!/bin/sh\n"),
        (
            "/etc/NetworkManager/system-connections/ens8.nmconnection",
            "[connection]\nid=ens8\ntype=ethernet\ninterface-name=ens8\n[ethernet]\nmac-address=52:54:00:12:34:08\n[ipv4]\nmethod=manual\naddress1=10.0.2.50/24,10.0.2.2\n",
        ),
        (
            "/etc/NetworkManager/system-connections/Wired.nmconnection",
            "[connection]\nid=Wired\ntype=ethernet\n[ethernet]\nmac-address=52:54:00:12:34:09\n[ipv4]\nmethod=manual\naddress1=10.0.3.50/24\n",
        ),
    ]);
    assert_eq!(
        detail(&r, ErrorCode::NetworkStatic),
        "/etc/NetworkManager/system-connections/Wired.nmconnection: method=manual; /etc/NetworkManager/system-connections/ens8.nmconnection: ens8 10.0.2.50/24"
    );
    let System::Linux(linux) = &r.systems[0] else {
        panic!("not a Linux system: {:?}", r.systems[0]);
    };
    assert_eq!(
        &linux.network.nics,
        &[crate::repair::network::map::SourceNic {
            name: "ens8".into(),
            mac: Some("52:54:00:12:34:08".into()),
            addresses: vec!["10.0.2.50/24".into()],
        }]
    );
}

#[test]
fn a_keyfile_that_is_not_text_does_not_stop_the_check() {
    let d = tempfile::tempdir().unwrap();
    for (p, c) in [
        ("etc/os-release", &b"ID=debian\nVERSION_ID=\"12\"\n"[..]),
        ("bin/sh", b"#!/bin/sh\n"),
        ("usr/sbin/NetworkManager", b"#!/bin/sh\n"),
        ("etc/NetworkManager/system-connections/old.nmconnection~", b"\xff\xfe\x00junk"),
        (
            "etc/NetworkManager/system-connections/ens8.nmconnection",
            b"[connection]\nid=ens8\ntype=ethernet\ninterface-name=ens8\n[ipv4]\nmethod=manual\naddress1=10.0.2.50/24\n",
        ),
    ] {
        let host = d.path().join(p);
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(&host, c).unwrap();
    }
    let mut r = CheckReport::new(Source::Root, Vec::new());
    inspect(d.path(), None, &mut r).unwrap();
    let r = r.finish();
    assert_eq!(
        detail(&r, ErrorCode::NetworkStatic),
        "/etc/NetworkManager/system-connections/ens8.nmconnection: ens8 10.0.2.50/24"
    );
}
