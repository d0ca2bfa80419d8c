//! Network: the migrated server had a static address on an interface named
//! after its old hardware (`ens33` on VMware, `enp3s0f0` on a physical box),
//! often pinned to its MAC. On the cloud the NIC is virtio-net with another
//! MAC and name, and the address comes from DHCP. The kernel arguments
//! `net.ifnames=0 biosdevname=0` (grub-defaults) make the first NIC `eth0`;
//! each stack is configured for DHCP either on any Ethernet interface
//! (netplan, NetworkManager) or on `eth0`.
//!
//! ifupdown follows a network map ([`map`]): each source NIC keeps its
//! static configuration or gets DHCP, on the new NIC the map names, and
//! every new NIC that keeps nothing gets DHCP ([`ifupdown`]). A kept NIC
//! keeps its name: a systemd `.link` file gives the new NIC of that MAC the
//! source's name, so firewall rules and services that name it find it; a
//! source NIC already named `ethN` keeps its name by being the new
//! instance's NIC N+1 (the kernel's name under `net.ifnames=0`).

mod ifcfg;
mod ifupdown;
mod keyfile;
pub mod map;

use anyhow::Result;

use super::detect::{yaml_files, NetStack, OsInfo};
use super::engine::StepCtx;
use crate::job::errors::{coded, ErrorCode};
use map::{NetworkMap, NetworkPlan, NicMode};

use ifcfg::ifcfg_step;
#[cfg(test)]
use ifcfg::{disable_ifcfg, drop_gateway, ifcfg_dhcp};
use keyfile::network_manager_step;
#[cfg(test)]
use keyfile::{disable_nm_keyfile, NM_CONNECTION};
pub(crate) use keyfile::{keyfiles, Keyfile};

const MARK: &str = "# ferry:";

pub(crate) const NETPLAN_FILE: &str = "/etc/netplan/90-ferry-dhcp.yaml";

pub(crate) fn netplan_config(renderer: Option<&str>) -> String {
    let mut s = String::from("# Written by ferry: DHCP on every Ethernet interface, whatever the cloud names it.\nnetwork:\n  version: 2\n");
    if let Some(r) = renderer {
        s.push_str(&format!("  renderer: {r}\n"));
    }
    s.push_str("  ethernets:\n    cloud:\n      match:\n        name: \"e*\"\n      dhcp4: true\n      dhcp6: false\n");
    s
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

/// Check the network map against the migrated system before any step
/// changes it: a map that does not fit is refused with nothing written.
pub fn check(tree: &super::tree::Tree, os: &OsInfo, map: &NetworkMap) -> Result<()> {
    match mapped_stack(os) {
        Some(NetStack::Ifupdown) => {
            let files = ifupdown_files(tree)?;
            let plan = ifupdown_plan(&files, map)?;
            kept_names(&plan.1)?;
            Ok(())
        }
        Some(_) => {
            let source: Vec<_> = keyfiles(tree)?
                .0
                .into_iter()
                .filter_map(|k| k.nic)
                .collect();
            kept_names(&map.plan(&source)?)?;
            Ok(())
        }
        None => keep_elsewhere(os, map),
    }
}

/// The stack whose files the network map is applied to: ifupdown's, or
/// NetworkManager's keyfiles where NetworkManager alone configures the
/// network (with ifcfg-rh or netplan, those files are its configuration).
fn mapped_stack(os: &OsInfo) -> Option<NetStack> {
    let has = |s| os.network.contains(&s);
    if has(NetStack::Ifupdown) {
        Some(NetStack::Ifupdown)
    } else if has(NetStack::NetworkManager) && !has(NetStack::Ifcfg) && !has(NetStack::Netplan) {
        Some(NetStack::NetworkManager)
    } else {
        None
    }
}

/// `keep` is written for ifupdown and NetworkManager's keyfiles only:
/// refused on a system configured otherwise.
fn keep_elsewhere(os: &OsInfo, map: &NetworkMap) -> Result<()> {
    if !map.nics.iter().any(|n| n.mode == NicMode::Keep) {
        return Ok(());
    }
    let stacks: Vec<&str> = os.network.iter().map(|s| s.name()).collect();
    Err(coded(
        ErrorCode::NetworkMapInvalid,
        format!(
            "the network map keeps static addresses, which ferry writes for ifupdown and NetworkManager's keyfiles only so far; this server's network is configured by {}. Map its NICs with mode = \"dhcp\" (or give no map): every NIC then gets DHCP",
            if stacks.is_empty() { "no stack ferry knows".to_owned() } else { stacks.join(", ") }
        ),
    ))
}

/// The network step. The map was checked before the repair began
/// ([`check`]); ifupdown's part plans again from the files it rewrites.
pub fn step(ctx: &mut StepCtx, os: &OsInfo, map: &NetworkMap) -> Result<()> {
    let mapped = mapped_stack(os);
    if mapped.is_none() {
        keep_elsewhere(os, map)?;
        if !map.nics.is_empty() {
            ctx.note("the network map is applied to ifupdown and NetworkManager's keyfiles only; this server's stack configures DHCP on every Ethernet NIC");
        }
    }
    if os.network.is_empty() {
        ctx.skip("no known network stack (ifupdown, netplan, NetworkManager, ifcfg, wicked) found; network left as is");
        return Ok(());
    }
    for stack in &os.network {
        match stack {
            NetStack::Ifupdown => ifupdown_step(ctx, map)?,
            NetStack::Netplan => netplan_step(ctx)?,
            NetStack::NetworkManager => {
                // NetworkManager with ifcfg-rh reads the ifcfg file instead.
                let own_file = !os.network.contains(&NetStack::Ifcfg)
                    && !os.network.contains(&NetStack::Netplan);
                let map = (mapped == Some(NetStack::NetworkManager)).then_some(map);
                network_manager_step(ctx, own_file, map)?
            }
            NetStack::Ifcfg => ifcfg_step(ctx, false)?,
            NetStack::Wicked => ifcfg_step(ctx, true)?,
        }
    }
    Ok(())
}

/// netplan: the source's files renamed out of its reach (netplan reads
/// only *.yaml), ferry's DHCP file in their place, rendered by
/// NetworkManager where the source's was.
fn netplan_step(ctx: &mut StepCtx) -> Result<()> {
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

/// The NICs ifupdown's files configure, file by file: (file, NICs).
pub(crate) fn ifupdown_nics(
    tree: &super::tree::Tree,
) -> Result<Vec<(String, Vec<map::SourceNic>)>> {
    Ok(ifupdown_files(tree)?
        .into_iter()
        .map(|(path, text)| {
            let nics = ifupdown::source_nics(std::slice::from_ref(&text));
            (path, nics)
        })
        .collect())
}

/// The files of ifupdown: the main one and those of interfaces.d.
const INTERFACES: &str = "/etc/network/interfaces";
const INTERFACES_D: &str = "/etc/network/interfaces.d";
/// Where the `.link` files that keep a NIC's name go.
const LINK_DIR: &str = "/etc/systemd/network";

/// ifupdown's files: (path, text), the main one first.
fn ifupdown_files(tree: &super::tree::Tree) -> Result<Vec<(String, String)>> {
    let mut files: Vec<(String, String)> = Vec::new();
    if let Some(t) = tree.read(INTERFACES)? {
        files.push((INTERFACES.to_owned(), t));
    }
    for n in tree.list(INTERFACES_D)? {
        let p = format!("{INTERFACES_D}/{n}");
        if let Some(t) = tree.read(&p)? {
            files.push((p, t));
        }
    }
    Ok(files)
}

/// The source's NICs as ifupdown's files say, and the map's plan for them.
fn ifupdown_plan(
    files: &[(String, String)],
    map: &NetworkMap,
) -> Result<(Vec<map::SourceNic>, NetworkPlan)> {
    let texts: Vec<String> = files.iter().map(|(_, t)| t.clone()).collect();
    let source = ifupdown::source_nics(&texts);
    let plan = map.plan(&source)?;
    Ok((source, plan))
}

fn ifupdown_step(ctx: &mut StepCtx, map: &NetworkMap) -> Result<()> {
    let files = ifupdown_files(ctx.tree)?;
    let (source, plan) = ifupdown_plan(&files, map)?;
    let links = kept_names(&plan)?;
    for (path, text) in &files {
        ctx.write(
            path,
            &ifupdown::rewrite(text, path == INTERFACES, &plan),
            0o644,
        )?;
    }
    write_links(ctx, &links)?;
    report(ctx, &plan, &source, true);
    Ok(())
}

/// The `.link` files that keep the kept NICs' names; those of an earlier
/// map that keeps them no longer are removed.
fn write_links(ctx: &mut StepCtx, links: &[(String, String)]) -> Result<()> {
    for (name, mac) in links {
        ctx.write(&link_path(name), &link_file(name, mac), 0o644)?;
    }
    for n in ctx.tree.list(LINK_DIR)? {
        let p = format!("{LINK_DIR}/{n}");
        if n.starts_with(LINK_PREFIX) && !links.iter().any(|(name, _)| link_path(name) == p) {
            ctx.remove_state(&p)?;
        }
    }
    Ok(())
}

/// The NICs whose names a `.link` file keeps: (source name, new MAC).
/// A kept NIC named `ethN` keeps its name by its place; any other needs the
/// new NIC's MAC.
fn kept_names(plan: &NetworkPlan) -> Result<Vec<(String, String)>> {
    let mut links = Vec::new();
    for n in plan.nics.iter().filter(|n| n.mode == NicMode::Keep) {
        // The name comes from the migrated system's files, and becomes a
        // file name and a udev match here.
        if !valid_ifname(&n.source) {
            return Err(coded(
                ErrorCode::NetworkMapInvalid,
                format!(
                    "{:?} is not a Linux interface name (1 to 15 bytes, no slash or blank), so it cannot be kept; give it DHCP",
                    n.source
                ),
            ));
        }
        if let Some(k) = n
            .source
            .strip_prefix("eth")
            .and_then(|k| k.parse::<usize>().ok())
        {
            if k != n.index {
                return Err(coded(
                    ErrorCode::NetworkMapInvalid,
                    format!(
                        "{} keeps its name only as the new instance's NIC #{} (the kernel names the NICs eth0, eth1... in their order); map it there, or give it DHCP",
                        n.source,
                        k + 1
                    ),
                ));
            }
            continue;
        }
        let Some(mac) = &n.mac else {
            return Err(coded(
                ErrorCode::NetworkMapInvalid,
                format!(
                    "{} keeps its static addresses, and its name only on a NIC ferry can recognise: give the new NIC's MAC (target = \"52:54:00:...\", or the instance list)",
                    n.source
                ),
            ));
        };
        links.push((n.source.clone(), mac.clone()));
    }
    Ok(links)
}

const LINK_PREFIX: &str = "10-ferry-";

/// A name the kernel takes for a network interface.
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

fn link_path(name: &str) -> String {
    format!("{LINK_DIR}/{LINK_PREFIX}{name}.link")
}

/// A systemd `.link` file: the NIC of this MAC is named `name` by udev
/// (`Name=` holds under `net.ifnames=0`, which turns off only the naming
/// policies).
fn link_file(name: &str, mac: &str) -> String {
    format!(
        "# Written by ferry: the new NIC with this MAC keeps the source server's name.\n[Match]\nMACAddress={mac}\n\n[Link]\nName={name}\n"
    )
}

/// Each NIC's outcome in the step's report; `ethn`: DHCP NICs are named
/// ethN (ifupdown), not by whatever the cloud's NIC is called.
fn report(ctx: &mut StepCtx, plan: &NetworkPlan, source: &[map::SourceNic], ethn: bool) {
    for n in &plan.nics {
        let on = match &n.mac {
            Some(m) => format!("the new NIC #{} ({m})", n.index + 1),
            None => format!("the new NIC #{}", n.index + 1),
        };
        let line = match n.mode {
            NicMode::Keep => {
                let addrs = source
                    .iter()
                    .find(|s| s.name == n.source)
                    .map(|s| s.addresses.join(", "))
                    .unwrap_or_default();
                format!("{}: keeps {addrs} and its name on {on}", n.source)
            }
            NicMode::Dhcp if ethn => format!("{}: DHCP on {on} as eth{}", n.source, n.index),
            NicMode::Dhcp => format!("{}: DHCP on {on}", n.source),
        };
        ctx.note(line);
    }
    if !ethn {
        ctx.note("DHCP on every other Ethernet NIC (ferry's connection)");
        return;
    }
    let extra: Vec<String> = ifupdown::dhcp_indices(plan)
        .into_iter()
        .filter(|i| !plan.nics.iter().any(|n| n.index == *i))
        .map(|i| format!("eth{i}"))
        .collect();
    if !extra.is_empty() {
        ctx.note(format!("DHCP also on {}", extra.join(", ")));
    }
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
                "source /etc/network/interfaces.d/*\n\n# The loopback network interface\nauto lo\niface lo inet loopback\n\n# The primary network interface\n# ferry: allow-hotplug ens33\n# ferry: iface ens33 inet static\n# ferry: \taddress 192.168.10.5/24\n# ferry: \tgateway 192.168.10.1\n# ferry: \tdns-nameservers 192.168.10.1\n\n# ferry: DHCP on the new instance's network interfaces (ethN with net.ifnames=0).\nallow-hotplug eth0\niface eth0 inet dhcp\n",
            ),
            (
                "auto line naming lo and a NIC",
                true,
                "auto lo eth0\niface lo inet loopback\niface eth0 inet static\n    address 10.0.0.2\n    netmask 255.255.255.0\n",
                "# ferry: auto lo eth0\nauto lo\niface lo inet loopback\n# ferry: iface eth0 inet static\n# ferry:     address 10.0.0.2\n# ferry:     netmask 255.255.255.0\n\n# ferry: DHCP on the new instance's network interfaces (ethN with net.ifnames=0).\nallow-hotplug eth0\niface eth0 inet dhcp\n",
            ),
            (
                "interfaces.d file",
                false,
                "auto enp3s0f0\niface enp3s0f0 inet static\n  address 10.1.1.1/24\n",
                "# ferry: auto enp3s0f0\n# ferry: iface enp3s0f0 inet static\n# ferry:   address 10.1.1.1/24\n",
            ),
        ];
        for (name, main, input, want) in cases {
            let plan = NetworkMap::default()
                .plan(&ifupdown::source_nics(&[input.to_string()]))
                .unwrap();
            let got = ifupdown::rewrite(input, *main, &plan);
            assert_eq!(got, *want, "case {name}");
            assert_eq!(
                ifupdown::rewrite(&got, *main, &plan),
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
        step(&mut ctx, os, &NetworkMap::default()).unwrap();
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

    /// A hostile source names its NIC so that the `.link` file's path would
    /// be of its choosing: refused, nothing written.
    #[test]
    fn a_kept_nic_whose_name_is_not_an_interface_name_is_refused() {
        let name = "a/x";
        let text = format!("auto {name}\niface {name} inet static\n    address 10.0.2.50/24\n");
        let (d, t) = tree_with(&[("/etc/network/interfaces", &text)]);
        let map = NetworkMap::parse(&format!(
            "[[nic]]\nsource = \"{name}\"\nmode = \"keep\"\ntarget = \"52:54:00:aa:00:01\"\n"
        ))
        .unwrap();
        let mut ctx = StepCtx::new(&t, crate::repair::engine::Mode::Apply, None);
        let err = step(&mut ctx, &os_with(vec![NetStack::Ifupdown]), &map).unwrap_err();
        let (code, detail) = crate::job::errors::describe(&err);
        assert_eq!(code, ErrorCode::NetworkMapInvalid);
        assert_eq!(
            detail,
            "\"a/x\" is not a Linux interface name (1 to 15 bytes, no slash or blank), so it cannot be kept; give it DHCP"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("etc/network/interfaces")).unwrap(),
            text
        );
        assert!(!d.path().join("etc/systemd").exists());
        assert!(
            valid_ifname("ens8") && valid_ifname("enp3s0f0") && !valid_ifname("a234567890123456")
        );
    }

    /// Every ifcfg NIC of the source becomes a DHCP NIC (eth0 with the
    /// default route, eth1...), the source's files are disabled, and a
    /// second run changes nothing.
    #[test]
    fn every_ifcfg_nic_becomes_a_dhcp_nic() {
        use crate::repair::engine::Status;
        let dir = "/etc/sysconfig/network-scripts";
        let (d, t) = tree_with(&[
            (
                "/etc/sysconfig/network-scripts/ifcfg-ens192",
                "DEVICE=ens192\nBOOTPROTO=none\nONBOOT=yes\nIPADDR=10.0.0.5\nPREFIX=24\n",
            ),
            (
                "/etc/sysconfig/network-scripts/ifcfg-eth1",
                "DEVICE=eth1\nBOOTPROTO=dhcp\nONBOOT=yes\n",
            ),
            ("/etc/sysconfig/network-scripts/ifcfg-lo", "DEVICE=lo\n"),
        ]);
        let os = os_with(vec![NetStack::Ifcfg]);
        let r = run_step(&t, &os);
        assert_eq!(r.status, Status::Changed);
        let read = |n: &str| {
            std::fs::read_to_string(d.path().join(dir.trim_start_matches('/')).join(n)).unwrap()
        };
        assert_eq!(read("ifcfg-eth0"), ifcfg_dhcp(false, 0));
        assert!(read("ifcfg-eth0").ends_with("DEFROUTE=yes\n"));
        assert_eq!(
            read("ifcfg-eth1"),
            "# Written by ferry: DHCP on the cloud's network interface eth1.\nDEVICE=eth1\nNAME=eth1\nTYPE=Ethernet\nBOOTPROTO=dhcp\nONBOOT=yes\nDEFROUTE=no\n"
        );
        assert!(read("ifcfg-ens192").contains("ONBOOT=no\n"));
        assert_eq!(read("ifcfg-lo"), "DEVICE=lo\n");
        let again = run_step(&t, &os);
        assert_eq!(again.status, Status::Unchanged, "{:?}", again.changes);
        assert!(!d
            .path()
            .join("etc/sysconfig/network-scripts/ifcfg-eth2")
            .exists());
    }
}
