//! A migrated server keeps its network identity: the bios-mbr source with
//! a second NIC (two subnets, static addresses, a static route, an MTU and
//! a resolver), repaired with a network map that keeps both NICs onto two
//! virtio NICs with new MACs, boots with each address on the NIC of its
//! MAC under its old name, the route and the resolver; repaired without a
//! map, it boots with DHCP on both NICs. The same for the server whose
//! NetworkManager keyfiles configure its NICs (the dracut-nm stack).

#![allow(clippy::unwrap_used)] // a test file: a panic is the failure report

use std::path::Path;

use ferry::layout::tree::{MountOptions, MountTree};
use ferry::repair::{self, BootMode, DeviceMap, Mode, RepairOptions};

use crate::common::boot::{self, Hardware, SourceImage};

const INTERFACES: &str = "\
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto ens8
iface ens8 inet static
    address 10.0.2.50/24
    gateway 10.0.2.2

auto ens9
iface ens9 inet static
    address 10.0.3.50
    netmask 255.255.255.0
    mtu 1400
    up ip route add 10.9.0.0/16 via 10.0.3.2 dev ens9
";

const MAP: &str = "\
instance = [\"52:54:00:aa:00:01\", \"52:54:00:aa:00:02\"]

[[nic]]
source = \"ens8\"
mode = \"keep\"
target = \"52:54:00:aa:00:01\"
subnet = \"10.0.2.0/24\"

[[nic]]
source = \"ens9\"
mode = \"keep\"
target = \"52:54:00:aa:00:02\"
subnet = \"10.0.3.0/24\"
";

/// Tells the console every NIC's MAC, IPv4 addresses and MTU, the routes
/// and the resolvers, once two addresses are up (or after 90 s), before the
/// boot marker ends the check.
const NET_MARKER: &str = r#"#!/bin/sh
i=0
while [ $i -lt 90 ]; do
    [ "$(ip -4 -o addr show scope global | wc -l)" -ge 2 ] && break
    sleep 1
    i=$((i + 1))
done
for l in $(ls /sys/class/net | grep -v '^lo$'); do
    a=$(ip -4 -o addr show dev "$l" scope global | awk '{ print $4 }' | paste -sd, -)
    echo "FERRY-NET link=$l mac=$(cat /sys/class/net/$l/address) mtu=$(cat /sys/class/net/$l/mtu) addrs=${a:-none}" >/dev/ttyS0
done
ip -4 route | while read -r r; do echo "FERRY-NET route=$r" >/dev/ttyS0; done
grep '^nameserver' /etc/resolv.conf | while read -r _ ns; do echo "FERRY-NET dns=$ns" >/dev/ttyS0; done
"#;

const NET_UNIT: &str = "\
[Unit]
Description=Network facts for the boot check (test fixture)
Before=ferry-boot-marker.service
After=network.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ferry-net-marker

[Install]
WantedBy=multi-user.target
";

/// The ifupdown server's second NIC and its resolver.
fn ifupdown_nics(root: &Path) {
    std::fs::write(root.join("etc/network/interfaces"), INTERFACES).unwrap();
    // A file, not the symlink a resolver daemon would keep.
    let _ = std::fs::remove_file(root.join("etc/resolv.conf"));
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 10.0.3.3\n").unwrap();
}

/// The NetworkManager server's second NIC, as `nmcli con add` writes it:
/// pinned to its name, a static address, a route, an MTU, a resolver.
const NM_ENS9: &str = "[connection]\nid=data\nuuid=7c1e0a52-4a5b-4c57-9f0e-2b1d3c4e5f60\ntype=ethernet\ninterface-name=ens9\nautoconnect=true\n\n[ethernet]\nmtu=1400\n\n[ipv4]\nmethod=manual\naddress1=10.0.3.50/24\nroute1=10.9.0.0/16,10.0.3.2\ndns=10.0.3.3;\n\n[ipv6]\nmethod=ignore\n";

fn networkmanager_nics(root: &Path) {
    let p = root.join("etc/NetworkManager/system-connections/data.nmconnection");
    std::fs::write(&p, NM_ENS9).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// The source with its second NIC (written by `nics`) and the network
/// marker written in, repaired with `map`; returns the repair's network
/// notes.
fn repaired(disks: &[std::path::PathBuf], dir: &Path, map: &str, nics: fn(&Path)) -> Vec<String> {
    let mut layout = ferry::layout::read_all(disks).unwrap();
    layout.disks[0].partitions[0].fs.mount = Some("/".to_owned());
    let tree = MountTree::mount(&layout, disks, &dir.join("mnt"), MountOptions::default()).unwrap();
    let root = tree.root().to_owned();
    nics(&root);
    let marker = root.join("usr/local/sbin/ferry-net-marker");
    std::fs::write(&marker, NET_MARKER).unwrap();
    std::fs::set_permissions(&marker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        root.join("etc/systemd/system/ferry-net-marker.service"),
        NET_UNIT,
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/ferry-net-marker.service",
        root.join("etc/systemd/system/multi-user.target.wants/ferry-net-marker.service"),
    )
    .unwrap();

    let devices = DeviceMap::from_mount_tree(&tree, &[vec!["/dev/sda".to_owned()]]);
    let mut opts = RepairOptions::new(&root, devices.clone(), BootMode::Auto, Mode::Apply);
    if !map.is_empty() {
        // The command line reads the same map and shows its plan.
        let map_file = dir.join("network.toml");
        std::fs::write(&map_file, map).unwrap();
        let device_file = dir.join("devices.json");
        std::fs::write(&device_file, serde_json::to_string(&devices).unwrap()).unwrap();
        let (ok, out, err) = crate::common::repair::ferry(&[
            "repair",
            "--root",
            root.to_str().unwrap(),
            "--device-map",
            device_file.to_str().unwrap(),
            "--network",
            map_file.to_str().unwrap(),
            "--only",
            "network",
            "--plan",
        ]);
        assert!(ok, "{out}\n{err}");
        assert!(
            out.contains("+[Match]\n+MACAddress=52:54:00:aa:00:02\n"),
            "{out}"
        );
        assert!(
            out.contains("/etc/systemd/network/10-ferry-ens9.link"),
            "{out}"
        );
        opts.network = repair::network::map::NetworkMap::parse(map).unwrap();
    }
    let outcome = repair::run_with_options(&opts);
    tree.close().unwrap();
    if let Some(e) = outcome.error {
        panic!("the repair failed: {e:#}");
    }
    let report = outcome.report;
    let step = report
        .steps
        .iter()
        .find(|s| s.step == "network")
        .expect("a network step");
    step.notes.clone()
}

/// The `FERRY-NET` lines of a boot's console, without the prefix.
fn net_facts(report: &boot::BootReport) -> Vec<String> {
    let log = String::from_utf8_lossy(&std::fs::read(&report.serial_log).unwrap()).into_owned();
    log.lines()
        .filter_map(|l| l.split_once("FERRY-NET ").map(|(_, f)| f.trim().to_owned()))
        .collect()
}

fn two_nic_boot(src: &SourceImage, disks: Vec<std::path::PathBuf>, name: &str) -> Vec<String> {
    let mut spec = src.old_hardware_boot(name);
    spec.disks = disks;
    spec.snapshot = false;
    spec.hardware = Hardware::Cloud;
    spec.cloud_nics = vec![
        ("52:54:00:aa:00:01".into(), "10.0.2.0/24".into()),
        ("52:54:00:aa:00:02".into(), "10.0.3.0/24".into()),
    ];
    let report = boot::boot(&spec).unwrap();
    let m = report.expect_booted();
    assert_eq!(m.root_uuid, src.root_uuid);
    net_facts(&report)
}

/// Repair a private copy of the ifupdown source with `map` and boot it on
/// two new NICs: the network step's notes and the `FERRY-NET` facts of
/// the boot.
fn migrated(map: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let src = SourceImage::build("bios-mbr").unwrap();
    let work = tempfile::tempdir().unwrap();
    let disks = crate::common::repair::source_image("bios-mbr", work.path());
    let notes = repaired(&disks, work.path(), map, ifupdown_nics);
    (notes, two_nic_boot(&src, disks, name))
}

/// [`migrated`] for the NetworkManager server (dracut, keyfiles, no
/// automatic connections).
fn migrated_nm(map: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let src = SourceImage::build_stack("dracut-nm").unwrap();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk0.img");
    std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(src.dir.join("disk0.img"))
        .arg(&disk)
        .status()
        .unwrap();
    let disks = vec![disk];
    let notes = repaired(&disks, work.path(), map, networkmanager_nics);
    (notes, two_nic_boot(&src, disks, name))
}

/// What the boot of a server whose two NICs were kept shows: each address
/// on the NIC of its new MAC under its old name, the MTU, the route, the
/// resolver.
const KEPT_FACTS: &[&str] = &[
    "link=ens8 mac=52:54:00:aa:00:01 mtu=1500 addrs=10.0.2.50/24",
    "link=ens9 mac=52:54:00:aa:00:02 mtu=1400 addrs=10.0.3.50/24",
    "route=default via 10.0.2.2 dev ens8",
    "route=10.9.0.0/16 via 10.0.3.2 dev ens9",
    "dns=10.0.3.3",
];

/// Each wanted fact is a line of the boot's, or the start of one.
fn assert_facts(facts: &[String], wanted: &[&str]) {
    for want in wanted {
        assert!(
            facts
                .iter()
                .any(|f| f == want || f.starts_with(&format!("{want} "))),
            "{want:?} not in {facts:#?}"
        );
    }
}

#[test]
fn kept_static_addresses_come_up_on_the_mapped_nics_under_their_old_names() {
    need_root!("loop devices, mounts and chroot build the source images");
    let (notes, facts) = migrated(MAP, "network-keep");
    assert_eq!(
        notes,
        [
            "ens8: keeps 10.0.2.50/24 and its name on the new NIC #1 (52:54:00:aa:00:01)",
            "ens9: keeps 10.0.3.50/24 and its name on the new NIC #2 (52:54:00:aa:00:02)",
        ]
    );
    assert_facts(&facts, KEPT_FACTS);
    assert!(
        !facts.iter().any(|f| f.starts_with("link=eth")),
        "{facts:#?}"
    );
}

#[test]
fn without_a_map_both_nics_get_dhcp() {
    need_root!("loop devices, mounts and chroot build the source images");
    let (notes, facts) = migrated("", "network-dhcp");
    assert_eq!(
        notes,
        [
            "ens8: DHCP on the new NIC #1 as eth0",
            "ens9: DHCP on the new NIC #2 as eth1",
        ]
    );
    assert_facts(
        &facts,
        &[
            "link=eth0 mac=52:54:00:aa:00:01 mtu=1500 addrs=10.0.2.15/24",
            "link=eth1 mac=52:54:00:aa:00:02 mtu=1500 addrs=10.0.3.15/24",
            // The first NIC's default route is the one in use, whichever
            // NIC DHCP answered first.
            "route=default via 10.0.2.2 dev eth0",
            "route=default via 10.0.3.2 dev eth1 metric 100",
        ],
    );
}

#[test]
fn networkmanager_keeps_its_static_connections_on_the_mapped_nics() {
    need_root!("loop devices, mounts and chroot build the source images");
    let (notes, facts) = migrated_nm(MAP, "network-nm-keep");
    assert_eq!(
        notes,
        [
            "ens8: keeps 10.0.2.50/24 and its name on the new NIC #1 (52:54:00:aa:00:01)",
            "ens9: keeps 10.0.3.50/24 and its name on the new NIC #2 (52:54:00:aa:00:02)",
            "DHCP on every other Ethernet NIC (ferry's connection)",
        ]
    );
    assert_facts(&facts, KEPT_FACTS);
}

#[test]
fn networkmanager_without_a_map_gives_both_nics_dhcp() {
    need_root!("loop devices, mounts and chroot build the source images");
    let (notes, facts) = migrated_nm("", "network-nm-dhcp");
    assert!(notes.is_empty(), "{notes:?}");
    // One connection of ferry's, active on both NICs at once.
    assert_facts(
        &facts,
        &[
            "link=eth0 mac=52:54:00:aa:00:01 mtu=1500 addrs=10.0.2.15/24",
            "link=eth1 mac=52:54:00:aa:00:02 mtu=1500 addrs=10.0.3.15/24",
        ],
    );
}
