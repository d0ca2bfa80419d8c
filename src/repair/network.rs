//! Network: the migrated server had a static address on an interface named
//! after its old hardware (`ens33` on VMware, `enp3s0f0` on a physical box),
//! often pinned to its MAC. On the cloud the NIC is virtio-net with another
//! MAC and name, and the address comes from DHCP. The kernel arguments
//! `net.ifnames=0 biosdevname=0` (grub-defaults) make the first NIC `eth0`;
//! each stack is configured for DHCP either on any Ethernet interface
//! (netplan, NetworkManager) or on `eth0`.

use anyhow::Result;

use super::detect::{parse_assignments, yaml_files, NetStack, OsInfo};
use super::engine::StepCtx;

const MARK: &str = "# ferry:";

pub(crate) const IFUPDOWN_DHCP: &str = "allow-hotplug eth0\niface eth0 inet dhcp\n";

/// `/etc/network/interfaces` (or a file under interfaces.d): stanzas of
/// interfaces other than `lo` are commented out; the main file gets DHCP on
/// eth0.
pub(crate) fn rewrite_interfaces(text: &str, main: bool) -> String {
    let mut out = String::new();
    let mut in_stanza_off = false;
    let mut have_dhcp = false;
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        let word = t.split_whitespace().next().unwrap_or("");
        let names: Vec<&str> = t.split_whitespace().skip(1).collect();
        // Our own stanza from an earlier run is kept as it is.
        if main && l == "allow-hotplug eth0" && lines.get(i + 1) == Some(&"iface eth0 inet dhcp") {
            out.push_str(IFUPDOWN_DHCP);
            have_dhcp = true;
            in_stanza_off = false;
            i += 2;
            continue;
        }
        match word {
            "auto" | "allow-hotplug" | "allow-auto" if !t.starts_with('#') => {
                in_stanza_off = false;
                let keep: Vec<&str> = names.iter().copied().filter(|n| *n == "lo").collect();
                if keep.len() == names.len() {
                    out.push_str(l);
                } else {
                    out.push_str(&format!("{MARK} {l}"));
                    if !keep.is_empty() {
                        out.push_str(&format!("\n{word} {}", keep.join(" ")));
                    }
                }
            }
            "iface" | "mapping" => {
                in_stanza_off = names.first() != Some(&"lo");
                if in_stanza_off {
                    out.push_str(&format!("{MARK} {l}"));
                } else {
                    out.push_str(l);
                }
            }
            "source" | "source-directory" | "rename" => {
                in_stanza_off = false;
                out.push_str(l);
            }
            _ if in_stanza_off && !t.is_empty() && !t.starts_with('#') => {
                out.push_str(&format!("{MARK} {l}"))
            }
            _ => {
                if t.is_empty() {
                    in_stanza_off = false;
                }
                out.push_str(l);
            }
        }
        out.push('\n');
        i += 1;
    }
    if main && !have_dhcp {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(
            "# ferry: DHCP on the cloud's first network interface (eth0 with net.ifnames=0).\n",
        );
        out.push_str(IFUPDOWN_DHCP);
    }
    out
}

pub(crate) const NETPLAN_FILE: &str = "/etc/netplan/90-ferry-dhcp.yaml";

pub(crate) fn netplan_config(renderer: Option<&str>) -> String {
    let mut s = String::from("# Written by ferry: DHCP on every Ethernet interface, whatever the cloud names it.\nnetwork:\n  version: 2\n");
    if let Some(r) = renderer {
        s.push_str(&format!("  renderer: {r}\n"));
    }
    s.push_str("  ethernets:\n    cloud:\n      match:\n        name: \"e*\"\n      dhcp4: true\n      dhcp6: false\n");
    s
}

pub(crate) const NM_FILE: &str = "/etc/NetworkManager/system-connections/ferry-dhcp.nmconnection";

/// A connection without `interface-name` or `mac-address` matches any
/// Ethernet device.
pub(crate) const NM_CONNECTION: &str = "# Written by ferry: DHCP on any Ethernet interface.\n[connection]\nid=ferry-dhcp\nuuid=5b0f6d1c-3d7e-4c2a-9a53-4f1e0c8b7a21\ntype=ethernet\nautoconnect=true\nautoconnect-priority=100\n\n[ethernet]\n\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n";

/// A NetworkManager keyfile of the old system: no autoconnect, pinned to no
/// interface name or MAC.
pub(crate) fn disable_nm_keyfile(text: &str) -> Option<String> {
    let mut section = String::new();
    let mut is_ethernet = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            section = t.to_owned();
        } else if section == "[connection]" && (t == "type=ethernet" || t == "type=802-3-ethernet")
        {
            is_ethernet = true;
        }
    }
    if !is_ethernet {
        return None;
    }
    let mut out = String::new();
    let mut section = String::new();
    let mut wrote_autoconnect = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            if section == "[connection]" && !wrote_autoconnect {
                out.push_str("autoconnect=false\n");
                wrote_autoconnect = true;
            }
            section = t.to_owned();
        } else if section == "[connection]" && t.starts_with("autoconnect=") {
            if !wrote_autoconnect {
                out.push_str("autoconnect=false\n");
                wrote_autoconnect = true;
            }
            continue;
        } else if t.starts_with("mac-address=")
            || t.starts_with("cloned-mac-address=")
            || (section == "[connection]" && t.starts_with("interface-name="))
        {
            // Pinned to the old NIC: its name and MAC are gone on the cloud.
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if section == "[connection]" && !wrote_autoconnect {
        out.push_str("autoconnect=false\n");
    }
    Some(out)
}

/// ifcfg (RHEL network-scripts, SUSE wicked) of a DHCP eth0.
pub(crate) fn ifcfg_dhcp(wicked: bool) -> String {
    if wicked {
        "# Written by ferry: DHCP on the cloud's first network interface.\nBOOTPROTO='dhcp'\nSTARTMODE='auto'\n".to_owned()
    } else {
        "# Written by ferry: DHCP on the cloud's first network interface.\nDEVICE=eth0\nNAME=eth0\nTYPE=Ethernet\nBOOTPROTO=dhcp\nONBOOT=yes\nDEFROUTE=yes\n".to_owned()
    }
}

/// An old ifcfg file: not started at boot, no MAC pinning.
pub(crate) fn disable_ifcfg(text: &str, wicked: bool) -> String {
    let (key, off) = if wicked {
        ("STARTMODE", "STARTMODE='off'")
    } else {
        ("ONBOOT", "ONBOOT=no")
    };
    let mut out = String::new();
    let mut wrote = false;
    for l in text.lines() {
        let k = l.split('=').next().unwrap_or("").trim();
        if ["HWADDR", "MACADDR", "LLADDR"].contains(&k) {
            continue;
        }
        if k == key {
            if !wrote {
                out.push_str(off);
                out.push('\n');
                wrote = true;
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !wrote {
        out.push_str(off);
        out.push('\n');
    }
    out
}

/// `/etc/sysconfig/network` with a static default gateway dropped.
pub(crate) fn drop_gateway(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let k = l.split('=').next().unwrap_or("").trim();
            k != "GATEWAY" && k != "GATEWAYDEV"
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// udev rules that pin interface names to MAC addresses.
pub(crate) fn disable_mac_rules(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if !t.starts_with('#') && t.contains("ATTR{address}") {
                format!("{MARK} pinned to the source's MAC: {l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

pub fn step(ctx: &mut StepCtx, os: &OsInfo) -> Result<()> {
    if os.network.is_empty() {
        ctx.skip("no known network stack (ifupdown, netplan, NetworkManager, ifcfg, wicked) found; network left as is");
        return Ok(());
    }
    for stack in &os.network {
        match stack {
            NetStack::Ifupdown => {
                if let Some(t) = ctx.tree.read("/etc/network/interfaces")? {
                    ctx.write(
                        "/etc/network/interfaces",
                        &rewrite_interfaces(&t, true),
                        0o644,
                    )?;
                }
                for n in ctx.tree.list("/etc/network/interfaces.d")? {
                    let p = format!("/etc/network/interfaces.d/{n}");
                    if let Some(t) = ctx.tree.read(&p)? {
                        ctx.write(&p, &rewrite_interfaces(&t, false), 0o644)?;
                    }
                }
            }
            NetStack::Netplan => {
                let mut renderer = None;
                for n in yaml_files(ctx.tree, "/etc/netplan")? {
                    let p = format!("/etc/netplan/{n}");
                    if p == NETPLAN_FILE {
                        continue;
                    }
                    if let Some(t) = ctx.tree.read(&p)? {
                        if t.lines().any(|l| l.trim() == "renderer: NetworkManager") {
                            renderer = Some("NetworkManager");
                        }
                    }
                    // netplan reads only *.yaml: renamed, the file is kept but inert.
                    ctx.rename(&p, &format!("{p}.ferry-disabled"))?;
                }
                if renderer.is_none() {
                    if let Some(t) = ctx.tree.read(NETPLAN_FILE)? {
                        if t.contains("renderer: NetworkManager") {
                            renderer = Some("NetworkManager");
                        }
                    }
                }
                ctx.write(NETPLAN_FILE, &netplan_config(renderer), 0o600)?;
            }
            NetStack::NetworkManager => {
                let dir = "/etc/NetworkManager/system-connections";
                for n in ctx.tree.list(dir)? {
                    let p = format!("{dir}/{n}");
                    if p == NM_FILE {
                        continue;
                    }
                    if let Some(t) = ctx.tree.read(&p)? {
                        if let Some(new) = disable_nm_keyfile(&t) {
                            ctx.write(&p, &new, 0o600)?;
                        }
                    }
                }
                // NetworkManager with ifcfg-rh reads the ifcfg file instead.
                if !os.network.contains(&NetStack::Ifcfg)
                    && !os.network.contains(&NetStack::Netplan)
                {
                    ctx.write(NM_FILE, NM_CONNECTION, 0o600)?;
                }
            }
            NetStack::Ifcfg | NetStack::Wicked => {
                let wicked = *stack == NetStack::Wicked;
                let dir = if wicked {
                    "/etc/sysconfig/network"
                } else {
                    "/etc/sysconfig/network-scripts"
                };
                let ours = format!("{dir}/ifcfg-eth0");
                for n in ctx.tree.list(dir)? {
                    let Some(name) = n.strip_prefix("ifcfg-") else {
                        continue;
                    };
                    let p = format!("{dir}/{n}");
                    if name == "lo" || p == ours {
                        continue;
                    }
                    if let Some(t) = ctx.tree.read(&p)? {
                        ctx.write(&p, &disable_ifcfg(&t, wicked), 0o644)?;
                    }
                }
                ctx.write(&ours, &ifcfg_dhcp(wicked), 0o644)?;
                if !wicked {
                    if let Some(t) = ctx.tree.read("/etc/sysconfig/network")? {
                        if parse_assignments(&t)
                            .iter()
                            .any(|(k, _)| k == "GATEWAY" || k == "GATEWAYDEV")
                        {
                            ctx.write("/etc/sysconfig/network", &drop_gateway(&t), 0o644)?;
                        }
                    }
                } else if ctx.tree.exists("/etc/sysconfig/network/routes") {
                    ctx.rename(
                        "/etc/sysconfig/network/routes",
                        "/etc/sysconfig/network/routes.ferry-disabled",
                    )?;
                }
            }
        }
    }
    Ok(())
}

pub(crate) const MAC_RULES: &[&str] = &[
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/udev/rules.d/70-persistent-ipoib.rules",
];

pub(crate) fn rules_step(ctx: &mut StepCtx) -> Result<()> {
    let mut any = false;
    for p in MAC_RULES {
        if let Some(t) = ctx.tree.read(p)? {
            any = true;
            ctx.write(p, &disable_mac_rules(&t), 0o644)?;
        }
    }
    if !any {
        ctx.skip("no persistent net rules");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_cases() {
        let cases: &[(&str, bool, &str, &str)] = &[
            (
                "debian static",
                true,
                "source /etc/network/interfaces.d/*\n\n# The loopback network interface\nauto lo\niface lo inet loopback\n\n# The primary network interface\nallow-hotplug ens33\niface ens33 inet static\n\taddress 192.168.10.5/24\n\tgateway 192.168.10.1\n\tdns-nameservers 192.168.10.1\n",
                "source /etc/network/interfaces.d/*\n\n# The loopback network interface\nauto lo\niface lo inet loopback\n\n# The primary network interface\n# ferry: allow-hotplug ens33\n# ferry: iface ens33 inet static\n# ferry: \taddress 192.168.10.5/24\n# ferry: \tgateway 192.168.10.1\n# ferry: \tdns-nameservers 192.168.10.1\n\n# ferry: DHCP on the cloud's first network interface (eth0 with net.ifnames=0).\nallow-hotplug eth0\niface eth0 inet dhcp\n",
            ),
            (
                "auto line naming lo and a NIC",
                true,
                "auto lo eth0\niface lo inet loopback\niface eth0 inet static\n    address 10.0.0.2\n    netmask 255.255.255.0\n",
                "# ferry: auto lo eth0\nauto lo\niface lo inet loopback\n# ferry: iface eth0 inet static\n# ferry:     address 10.0.0.2\n# ferry:     netmask 255.255.255.0\n\n# ferry: DHCP on the cloud's first network interface (eth0 with net.ifnames=0).\nallow-hotplug eth0\niface eth0 inet dhcp\n",
            ),
            (
                "interfaces.d file",
                false,
                "auto enp3s0f0\niface enp3s0f0 inet static\n  address 10.1.1.1/24\n",
                "# ferry: auto enp3s0f0\n# ferry: iface enp3s0f0 inet static\n# ferry:   address 10.1.1.1/24\n",
            ),
        ];
        for (name, main, input, want) in cases {
            let got = rewrite_interfaces(input, *main);
            assert_eq!(got, *want, "case {name}");
            assert_eq!(
                rewrite_interfaces(&got, *main),
                got,
                "case {name}: idempotent"
            );
        }
    }

    #[test]
    fn nm_keyfile() {
        let input = "[connection]\nid=Wired connection 1\nuuid=0d1c\ntype=ethernet\ninterface-name=ens192\n\n[ethernet]\nmac-address=00:50:56:AA:BB:CC\n\n[ipv4]\naddress1=10.0.0.5/24,10.0.0.1\nmethod=manual\n";
        let want = "[connection]\nid=Wired connection 1\nuuid=0d1c\ntype=ethernet\n\nautoconnect=false\n[ethernet]\n\n[ipv4]\naddress1=10.0.0.5/24,10.0.0.1\nmethod=manual\n";
        let got = disable_nm_keyfile(input).unwrap();
        assert_eq!(got, want);
        assert_eq!(disable_nm_keyfile(&got).unwrap(), got);
        assert_eq!(disable_nm_keyfile("[connection]\ntype=wifi\n"), None);
    }

    fn os_with(network: Vec<NetStack>) -> OsInfo {
        use crate::repair::detect::*;
        OsInfo {
            id: "debian".into(),
            id_like: vec![],
            version_id: "13".into(),
            pretty_name: String::new(),
            source: String::new(),
            kernels: vec![],
            bootloader: Bootloader::Grub2,
            firmware: Firmware::Uefi,
            init: InitSystem::Systemd,
            network,
            cloud_init: false,
            selinux: SelinuxMode::Absent,
        }
    }

    fn tree_with(files: &[(&str, &str)]) -> (tempfile::TempDir, crate::repair::tree::Tree) {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let host = d.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(host, c).unwrap();
        }
        let t = crate::repair::tree::Tree::new(d.path());
        (d, t)
    }

    fn run_step(
        tree: &crate::repair::tree::Tree,
        os: &OsInfo,
    ) -> crate::repair::engine::StepReport {
        let mut ctx = StepCtx::new(tree, crate::repair::engine::Mode::Apply, None);
        step(&mut ctx, os).unwrap();
        ctx.finish("network")
    }

    /// Ubuntu's installer pins the static address to the old NIC by MAC
    /// and renames it with set-name: the file is set aside (netplan reads
    /// only *.yaml), and DHCP on any Ethernet name takes its place.
    #[test]
    fn netplan_pinned_to_the_old_nic_is_replaced_by_dhcp_on_any_ethernet() {
        use crate::repair::engine::{Change, Status};
        let pinned = "network:\n  version: 2\n  renderer: networkd\n  ethernets:\n    ens8:\n      match:\n        macaddress: \"52:54:00:12:34:08\"\n      set-name: ens8\n      addresses:\n        - 10.0.2.50/24\n";
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("networkd", pinned, None),
            (
                "NetworkManager renderer kept",
                "network:\n  version: 2\n  renderer: NetworkManager\n  ethernets:\n    ens192:\n      match:\n        macaddress: 00:50:56:aa:bb:cc\n      set-name: ens192\n      dhcp4: false\n",
                Some("NetworkManager"),
            ),
        ];
        for (name, input, renderer) in cases {
            let (d, t) = tree_with(&[("/etc/netplan/50-cloud-init.yaml", input)]);
            let r = run_step(&t, &os_with(vec![NetStack::Netplan]));
            assert_eq!(r.status, Status::Changed, "{name}");
            assert!(
                r.changes.contains(&Change::Rename {
                    from: "/etc/netplan/50-cloud-init.yaml".into(),
                    to: "/etc/netplan/50-cloud-init.yaml.ferry-disabled".into()
                }),
                "{name}: {:?}",
                r.changes
            );
            assert_eq!(
                yaml_files(&t, "/etc/netplan").unwrap(),
                ["90-ferry-dhcp.yaml"],
                "{name}: the only file netplan reads"
            );
            let ours =
                std::fs::read_to_string(d.path().join("etc/netplan/90-ferry-dhcp.yaml")).unwrap();
            let render = renderer
                .map(|r| format!("  renderer: {r}\n"))
                .unwrap_or_default();
            assert_eq!(
                ours,
                format!("# Written by ferry: DHCP on every Ethernet interface, whatever the cloud names it.\nnetwork:\n  version: 2\n{render}  ethernets:\n    cloud:\n      match:\n        name: \"e*\"\n      dhcp4: true\n      dhcp6: false\n"),
                "{name}"
            );
            assert!(
                !ours.contains("macaddress") && !ours.contains("set-name"),
                "{name}"
            );
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.path().join("etc/netplan/90-ferry-dhcp.yaml"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o777,
                0o600,
                "{name}: netplan warns about readable files"
            );
            assert_eq!(
                std::fs::read_to_string(
                    d.path()
                        .join("etc/netplan/50-cloud-init.yaml.ferry-disabled")
                )
                .unwrap(),
                *input,
                "{name}: the old file is kept as it was"
            );
            let again = run_step(&t, &os_with(vec![NetStack::Netplan]));
            assert_eq!(
                again.status,
                Status::Unchanged,
                "{name}: {:?}",
                again.changes
            );
        }
    }

    /// A static keyfile pinned to the old NIC by name and MAC, and
    /// `no-auto-default=*` (no automatic DHCP profile for a new NIC): the
    /// keyfile is unpinned and no longer autoconnects, and a DHCP keyfile
    /// for any Ethernet device is added.
    #[test]
    fn networkmanager_pinned_keyfile_and_no_auto_default() {
        use crate::repair::engine::Status;
        let keyfile = "[connection]\nid=ens8\nuuid=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\ntype=ethernet\ninterface-name=ens8\nautoconnect=true\n\n[ethernet]\nmac-address=52:54:00:12:34:08\n\n[ipv4]\nmethod=manual\naddress1=10.0.2.50/24,10.0.2.2\n";
        let (d, t) = tree_with(&[
            (
                "/etc/NetworkManager/system-connections/ens8.nmconnection",
                keyfile,
            ),
            (
                "/etc/NetworkManager/conf.d/90-server.conf",
                "[main]\nplugins=keyfile\nno-auto-default=*\n",
            ),
        ]);
        let os = os_with(vec![NetStack::NetworkManager]);
        let r = run_step(&t, &os);
        assert_eq!(r.status, Status::Changed);
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(
            read("etc/NetworkManager/system-connections/ens8.nmconnection"),
            "[connection]\nid=ens8\nuuid=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\ntype=ethernet\nautoconnect=false\n\n[ethernet]\n\n[ipv4]\nmethod=manual\naddress1=10.0.2.50/24,10.0.2.2\n"
        );
        assert_eq!(
            read("etc/NetworkManager/system-connections/ferry-dhcp.nmconnection"),
            NM_CONNECTION
        );
        assert!(
            !NM_CONNECTION.contains("interface-name") && !NM_CONNECTION.contains("mac-address")
        );
        assert!(NM_CONNECTION.contains("[ipv4]\nmethod=auto\n"));
        let again = run_step(&t, &os);
        assert_eq!(again.status, Status::Unchanged, "{:?}", again.changes);
    }

    #[test]
    fn ifcfg() {
        let input = "TYPE=Ethernet\nBOOTPROTO=none\nNAME=ens33\nDEVICE=ens33\nONBOOT=yes\nIPADDR=192.168.1.10\nPREFIX=24\nGATEWAY=192.168.1.1\nHWADDR=00:0c:29:12:34:56\n";
        let want = "TYPE=Ethernet\nBOOTPROTO=none\nNAME=ens33\nDEVICE=ens33\nONBOOT=no\nIPADDR=192.168.1.10\nPREFIX=24\nGATEWAY=192.168.1.1\n";
        assert_eq!(disable_ifcfg(input, false), want);
        assert_eq!(disable_ifcfg(want, false), want);
        let suse = "BOOTPROTO='static'\nSTARTMODE='auto'\nIPADDR='10.0.0.4/24'\nLLADDR='00:16:3e:00:00:01'\n";
        assert_eq!(
            disable_ifcfg(suse, true),
            "BOOTPROTO='static'\nSTARTMODE='off'\nIPADDR='10.0.0.4/24'\n"
        );
        assert_eq!(
            drop_gateway("NETWORKING=yes\nGATEWAY=10.0.0.1\nHOSTNAME=x\n"),
            "NETWORKING=yes\nHOSTNAME=x\n"
        );
    }

    #[test]
    fn mac_rules() {
        let input = "# This file was automatically generated\nSUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"00:0c:29:aa:bb:cc\", ATTR{type}==\"1\", KERNEL==\"eth*\", NAME=\"eth0\"\n";
        let want = "# This file was automatically generated\n# ferry: pinned to the source's MAC: SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"00:0c:29:aa:bb:cc\", ATTR{type}==\"1\", KERNEL==\"eth*\", NAME=\"eth0\"\n";
        assert_eq!(disable_mac_rules(input), want);
        assert_eq!(disable_mac_rules(want), want);
    }
}
