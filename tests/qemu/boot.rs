//! The boot suite's controls: every source image boots on its old hardware
//! (IDE or SATA disk, e1000 NIC, static address), and the same bytes,
//! unrepaired, do not boot on the cloud's virtio hardware. Without these, a
//! migrated disk that boots would prove nothing.
//!
//! Needs root (the source images are built on loop devices with chroots)
//! and qemu-system-x86_64; run as `cargo test --release --test qemu -- boot::`.

use crate::common::boot::{Hardware, Outcome, SourceImage};

fn positive_control(variant: &str) {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build(variant).expect("building the source image");
    let report = crate::common::boot::boot(
        &src.old_hardware_boot(&format!("source-{variant}-old-hardware")),
    )
    .expect("running the boot check");
    let m = report.expect_booted();
    assert_eq!(m.root_uuid, src.root_uuid, "root file system");
    assert_eq!(m.hostname, src.hostname, "hostname");
    assert_eq!(
        m.ipv4.as_deref(),
        Some(src.static_ipv4.as_str()),
        "the static address of the old server (links: {:?})",
        m.links
    );
    assert_eq!(
        m.iface.as_deref(),
        Some(src.old_nic.as_str()),
        "old NIC name"
    );
    assert_eq!(m.data_uuid, src.data_uuid, "data disk on /data");
}

#[test]
fn source_bios_mbr_boots_on_old_hardware() {
    positive_control("bios-mbr");
}

#[test]
fn source_bios_gpt_boots_on_old_hardware() {
    positive_control("bios-gpt");
}

#[test]
fn source_uefi_gpt_boots_on_old_hardware() {
    positive_control("uefi-gpt");
}

#[test]
fn source_with_data_disk_boots_on_old_hardware_with_data_mounted() {
    positive_control("bios-mbr-data");
}

/// The same source, byte for byte and unrepaired, on virtio: the initramfs
/// has no virtio driver and gives up on its root.
#[test]
fn unrepaired_source_does_not_boot_on_virtio() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build("bios-mbr").expect("building the source image");
    let mut spec = src.old_hardware_boot("negative-control-bios-mbr-virtio");
    spec.hardware = Hardware::Cloud;
    let report = crate::common::boot::boot(&spec).expect("running the boot check");
    match &report.outcome {
        Outcome::RootNotFound(line) => assert!(
            line.contains(&format!("UUID={}", src.root_uuid)),
            "the initramfs should name the missing root UUID={}: {line}",
            src.root_uuid
        ),
        other => panic!(
            "the unrepaired source must fail to find its root on virtio, got: {other}; log:\n{}",
            report.log_tail(3000)
        ),
    }
}

/// The other side of the negative control: on the same cloud hardware, a
/// system that has virtio drivers, fstab by UUID and DHCP boots and gets its
/// address from QEMU's DHCP. So a failure to boot there is the disk's fault,
/// not the boot check's.
#[test]
fn cloud_ready_system_boots_on_virtio_with_dhcp() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build("cloud-ready").expect("building the cloud-ready image");
    let mut spec = src.old_hardware_boot("control-cloud-ready-virtio");
    spec.hardware = Hardware::Cloud;
    let report = crate::common::boot::boot(&spec).expect("running the boot check");
    let m = report.expect_booted();
    assert_eq!(m.root_uuid, src.root_uuid, "root file system");
    assert_eq!(m.hostname, src.hostname, "hostname");
    assert_eq!(
        m.ipv4_addr(),
        Some(crate::common::boot::DHCP_IPV4),
        "address from DHCP (links: {:?})",
        m.links
    );
}

// ---- the serial log reader, without QEMU ----------------------------------------

#[test]
fn marker_line_is_parsed() {
    let m = crate::common::boot::parse_marker(
        "FERRY-BOOT-MARKER root_uuid=0a7df173-fab8-4a1a-a10b-1781657f1b42 ipv4=10.0.2.15/24@ens3 hostname=src-bios-mbr data=none links=ens3",
    )
    .expect("parsing");
    assert_eq!(m.root_uuid, "0a7df173-fab8-4a1a-a10b-1781657f1b42");
    assert_eq!(m.ipv4.as_deref(), Some("10.0.2.15/24"));
    assert_eq!(m.ipv4_addr(), Some("10.0.2.15"));
    assert_eq!(m.iface.as_deref(), Some("ens3"));
    assert_eq!(m.hostname, "src-bios-mbr");
    assert_eq!(m.data_uuid, None);
    assert_eq!(m.links, vec!["ens3".to_owned()]);
}

#[test]
fn marker_without_address_or_fields_is_told_apart() {
    let m = crate::common::boot::parse_marker(
        "FERRY-BOOT-MARKER root_uuid=u ipv4=none hostname=h data=d-uuid links=eth0,eth1",
    )
    .expect("parsing");
    assert_eq!(m.ipv4, None);
    assert_eq!(m.iface, None);
    assert_eq!(m.data_uuid.as_deref(), Some("d-uuid"));
    assert_eq!(m.links, vec!["eth0".to_owned(), "eth1".to_owned()]);

    let err =
        crate::common::boot::parse_marker("FERRY-BOOT-MARKER root_uuid=u ipv4=none data=none")
            .expect_err("no hostname");
    assert!(format!("{err:#}").contains("lacks hostname="), "{err:#}");
    let err = crate::common::boot::parse_marker(
        "FERRY-BOOT-MARKER root_uuid=u ipv4=10.0.2.15 hostname=h data=none",
    )
    .expect_err("address without interface");
    assert!(format!("{err:#}").contains("not <addr>@<iface>"), "{err:#}");
}

#[test]
fn serial_scan_finds_the_first_verdict_in_whole_lines_only() {
    let alert = "[  40.1] Gave up waiting for root file system device.  Common problems:\n\
                 \x1b[0;1;31mALERT!  UUID=abc does not exist.  Dropping to a shell!\x1b[0m\r\n";
    assert_eq!(
        crate::common::boot::scan_serial(alert),
        Some(Outcome::RootNotFound(
            "ALERT!  UUID=abc does not exist.  Dropping to a shell!".to_owned()
        ))
    );
    // A marker still being written is no verdict yet.
    assert_eq!(
        crate::common::boot::scan_serial("booting\nFERRY-BOOT-MARKER root_uuid=u ipv4=no"),
        None
    );
    let booted = "\x1b[K[  OK  ] Started x\nFERRY-BOOT-MARKER root_uuid=u ipv4=none hostname=h data=none links=none\n";
    match crate::common::boot::scan_serial(booted) {
        Some(Outcome::Booted(m)) => assert_eq!(m.hostname, "h"),
        other => panic!("expected a boot, got {other:?}"),
    }
    assert_eq!(
        crate::common::boot::scan_serial("You are in emergency mode. After logging in...\n"),
        Some(Outcome::EmergencyMode(
            "You are in emergency mode. After logging in...".to_owned()
        ))
    );
    assert_eq!(
        crate::common::boot::scan_serial("[ 1.0] Kernel panic - not syncing: VFS\n")
            .map(|o| matches!(o, Outcome::KernelPanic(_))),
        Some(true)
    );
    assert_eq!(crate::common::boot::scan_serial("nothing decisive\n"), None);
    let grub = "Welcome to GRUB!\n\nerror: no such device: 0899.\nerror: maximum recursion depth exceeded.\n\n   Minimal BASH-like line editing is supported.\n\n\ngrub> ";
    assert_eq!(
        crate::common::boot::scan_serial(grub),
        Some(Outcome::GrubPrompt(
            "error: maximum recursion depth exceeded.".to_owned()
        ))
    );
}

#[test]
fn qemu_hardware_is_the_one_each_side_has() {
    let spec = crate::common::boot::BootSpec {
        name: "t".into(),
        disks: vec!["/i/disk0.img".into(), "/i/disk1.img".into()],
        firmware: crate::common::boot::Firmware::Bios,
        hardware: Hardware::Old,
        snapshot: true,
        timeout: crate::common::boot::DEFAULT_TIMEOUT,
        ovmf_vars: None,
        cloud_nics: Vec::new(),
    };
    let old = crate::common::boot::qemu_args(&spec, None)
        .expect("args")
        .join(" ");
    assert!(old.contains("-accel tcg"), "{old}");
    assert!(
        old.contains("file=/i/disk0.img,format=raw,if=none,id=d0,snapshot=on"),
        "{old}"
    );
    assert!(
        old.contains("ide-hd,drive=d0,bus=ide.0,unit=0,bootindex=0"),
        "{old}"
    );
    assert!(old.contains("megasas,id=hba"), "{old}");
    assert!(
        old.contains("scsi-hd,drive=d1,bus=hba.0,scsi-id=1"),
        "{old}"
    );
    assert!(old.contains("e1000,netdev=n0,addr=0x8"), "{old}");
    assert!(!old.contains("virtio"), "{old}");

    let cloud = crate::common::boot::BootSpec {
        hardware: Hardware::Cloud,
        firmware: crate::common::boot::Firmware::Uefi,
        snapshot: false,
        ..spec
    };
    assert!(
        crate::common::boot::qemu_args(&cloud, None).is_err(),
        "UEFI without OVMF vars"
    );
    let args = crate::common::boot::qemu_args(&cloud, Some(std::path::Path::new("/v/VARS.fd")))
        .expect("args")
        .join(" ");
    assert!(
        args.contains("virtio-blk-pci,drive=d0,addr=0x4,bootindex=0"),
        "{args}"
    );
    assert!(args.contains("virtio-blk-pci,drive=d1,addr=0x5"), "{args}");
    assert!(args.contains("virtio-net-pci"), "{args}");
    assert!(
        args.contains("if=pflash,format=raw,file=/v/VARS.fd"),
        "{args}"
    );
    assert!(
        !args.contains("snapshot=on") && !args.contains("e1000") && !args.contains("ide-hd"),
        "{args}"
    );
}
