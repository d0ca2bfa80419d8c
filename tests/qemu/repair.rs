//! A repaired source server boots on the cloud's hardware: the bios-mbr and
//! uefi-gpt sources (static address on `ens8`, fstab on /dev/sda*, no
//! virtio in the initramfs), repaired through the library as the job runner
//! calls it, boot under QEMU on virtio-blk and virtio-net, find their root
//! by UUID and get their address by DHCP on eth0. The unrepaired negative
//! control is in tests/qemu/boot.rs.

#![allow(clippy::unwrap_used)] // a test file: a panic is the failure report

use ferry::layout::tree::{MountOptions, MountTree};
use ferry::repair::{self, BootMode, DeviceMap, Mode};

fn repaired_boots_on_virtio(variant: &str, root_partition: usize) {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = crate::common::boot::SourceImage::build(variant).unwrap();
    let work = tempfile::tempdir().unwrap();
    let disks = crate::common::repair::source_image(variant, work.path());
    let mut layout = ferry::layout::read_all(&disks).unwrap();
    layout.disks[0].partitions[root_partition].fs.mount = Some("/".to_owned());
    let tree = MountTree::mount(
        &layout,
        &disks,
        &work.path().join("mnt"),
        MountOptions::default(),
    )
    .unwrap();
    let devices = DeviceMap::from_mount_tree(&tree, &[vec!["/dev/sda".to_owned()]]);
    let result = repair::run(tree.root(), &devices, BootMode::Auto, Mode::Apply);
    tree.close().unwrap();
    let report = result.unwrap();
    assert!(report.changed);

    let mut spec = src.old_hardware_boot(&format!("repaired-{variant}-virtio"));
    spec.disks = disks;
    spec.hardware = crate::common::boot::Hardware::Cloud;
    let booted = crate::common::boot::boot(&spec).unwrap();
    let m = booted.expect_booted();
    assert_eq!(m.root_uuid, src.root_uuid);
    assert_eq!(m.hostname, src.hostname);
    assert_eq!(
        m.iface.as_deref(),
        Some("eth0"),
        "the NIC is not eth0: {m:?}"
    );
    // QEMU's user network hands out 10.0.2.15 by DHCP; the source's static
    // address would be 10.0.2.50.
    assert_eq!(m.ipv4_addr(), Some("10.0.2.15"), "{m:?}");
}

#[test]
fn repaired_bios_mbr_boots_on_virtio_with_dhcp() {
    repaired_boots_on_virtio("bios-mbr", 0);
}

#[test]
fn repaired_uefi_gpt_boots_on_virtio_with_dhcp() {
    repaired_boots_on_virtio("uefi-gpt", 1);
}
