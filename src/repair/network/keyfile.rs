//! NetworkManager's keyfiles (`/etc/NetworkManager/system-connections/`):
//! the NIC a connection configures, a kept connection rewritten for the
//! new NIC, an old one disabled, ferry's DHCP connection, and the step. One reader of the format, line by line: `[section]` headers and
//! `key=value` lines, everything else (comments, blanks) kept as it is.

use anyhow::Result;

use super::super::engine::StepCtx;
use super::map::{self, canonical_mac, NetworkMap, NicMode, SourceNic};
use super::{kept_names, report, write_links};

/// `(section, key, value)` of every `key=value` line, in order.
fn entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.trim().to_owned();
        } else if t.starts_with('#') || t.starts_with(';') {
            continue;
        } else if let Some((k, v)) = t.split_once('=') {
            out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn get<'a>(entries: &'a [(String, String, String)], section: &str, key: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
}

/// Whether the keyfile is an Ethernet connection.
pub(crate) fn is_ethernet(text: &str) -> bool {
    matches!(
        get(&entries(text), "connection", "type"),
        Some("ethernet" | "802-3-ethernet")
    )
}

/// The NIC an Ethernet connection configures: by its `interface-name`
/// (a connection pinned only to a MAC names no interface, and is left to
/// DHCP), its MAC where it pins one, its static addresses (`address1=`,
/// `addresses=`, the older `addresses1=ADDR;PREFIX;GW;`), IPv4 and IPv6.
pub(crate) fn source_nic(text: &str) -> Option<SourceNic> {
    if !is_ethernet(text) {
        return None;
    }
    let e = entries(text);
    let name = get(&e, "connection", "interface-name").filter(|n| !n.is_empty())?;
    let mac = get(&e, "ethernet", "mac-address")
        .or_else(|| get(&e, "802-3-ethernet", "mac-address"))
        .and_then(canonical_mac);
    let mut addresses = Vec::new();
    for family in ["ipv4", "ipv6"] {
        if get(&e, family, "method") != Some("manual") {
            continue;
        }
        for (s, k, v) in &e {
            let numbered = k
                .strip_prefix("address")
                .map(|n| n.strip_prefix("es").unwrap_or(n))
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            if s != family || !numbered {
                continue;
            }
            addresses.extend(addresses_of(v));
        }
    }
    Some(SourceNic {
        name: name.to_owned(),
        mac,
        addresses,
    })
}

/// `10.0.2.50/24,10.0.2.2` (address and gateway), `10.0.2.50/24;10.0.3.5/24`
/// (a list), or `10.0.2.50;24;10.0.2.2;` (the old form): the addresses
/// with their prefix lengths.
fn addresses_of(value: &str) -> Vec<String> {
    let parts: Vec<&str> = value.split(';').map(str::trim).collect();
    if parts.len() >= 2 && !parts[0].contains('/') && parts[1].parse::<u8>().is_ok() {
        return vec![format!("{}/{}", parts[0], parts[1])];
    }
    parts
        .iter()
        .map(|p| p.split(',').next().unwrap_or("").trim())
        .filter(|a| a.contains('/'))
        .map(str::to_owned)
        .collect()
}

/// The priority of a kept connection: above ferry's DHCP connection
/// (which matches every Ethernet NIC), so that its NIC comes up with it.
pub(crate) const KEPT_PRIORITY: &str = "autoconnect-priority=200";

/// A kept connection on the new NIC: started at boot ahead of ferry's
/// DHCP connection, pinned to the new NIC's MAC where it pinned the old
/// one (`mac` None: no MAC pinned), its interface name, addresses, routes,
/// DNS and MTU as they were.
pub(crate) fn keep(text: &str, mac: Option<&str>) -> String {
    let mut out = String::new();
    let mut section = String::new();
    let mut wrote = false;
    let close = |section: &str, out: &mut String, wrote: &mut bool| {
        if section == "connection" && !*wrote {
            out.push_str(&format!("autoconnect=true\n{KEPT_PRIORITY}\n"));
            *wrote = true;
        }
    };
    for l in text.lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            close(&section, &mut out, &mut wrote);
            section = name.trim().to_owned();
        } else if let Some((k, _)) = t.split_once('=') {
            let k = k.trim();
            if section == "connection" && (k == "autoconnect" || k == "autoconnect-priority") {
                continue;
            }
            if k == "cloned-mac-address" {
                continue;
            }
            if k == "mac-address" {
                if let Some(m) = mac {
                    out.push_str(&format!("mac-address={}\n", m.to_ascii_uppercase()));
                }
                continue;
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    close(&section, &mut out, &mut wrote);
    out
}

pub(crate) const NM_FILE: &str = "/etc/NetworkManager/system-connections/ferry-dhcp.nmconnection";

/// A connection without `interface-name` or `mac-address` matches any
/// Ethernet device, and with `multi-connect=3` (multiple) it is active on
/// every one of them at once: DHCP on every NIC.
pub(crate) const NM_CONNECTION: &str = "# Written by ferry: DHCP on any Ethernet interface.\n[connection]\nid=ferry-dhcp\nuuid=5b0f6d1c-3d7e-4c2a-9a53-4f1e0c8b7a21\ntype=ethernet\nautoconnect=true\nautoconnect-priority=100\nmulti-connect=3\n\n[ethernet]\n\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n";

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

/// NetworkManager: the source's keyfiles no longer start on their own,
/// but those of the NICs the `map` keeps (where NetworkManager alone
/// configures the network), which start first on their new NICs under
/// their old names; ferry's DHCP keyfile for every other NIC when
/// `own_file` (no ifcfg or netplan beside it).
pub(super) fn network_manager_step(
    ctx: &mut StepCtx,
    own_file: bool,
    map: Option<&NetworkMap>,
) -> Result<()> {
    let (files, unreadable) = keyfiles(ctx.tree)?;
    for why in unreadable {
        ctx.note(format!("left as it is: {why}"));
    }
    let source: Vec<map::SourceNic> = files.iter().filter_map(|k| k.nic.clone()).collect();
    // Without NICs in the map every NIC gets DHCP: nothing to plan (the
    // NICs' order is the keyfiles', which says nothing of the new ones).
    let plan = match map.filter(|m| !m.nics.is_empty()) {
        Some(m) => Some(m.plan(&source)?),
        None => None,
    };
    let links = match &plan {
        Some(p) => kept_names(p)?,
        None => Vec::new(),
    };
    for Keyfile { path, text, nic } in &files {
        let kept = plan.as_ref().and_then(|plan| {
            let nic = nic.as_ref()?;
            plan.nics
                .iter()
                .find(|n| n.source == nic.name && n.mode == NicMode::Keep)
        });
        let new = match kept {
            // Pinned to the old NIC's MAC, it is pinned to the new one's.
            Some(k) => {
                let pinned = nic.as_ref().is_some_and(|n| n.mac.is_some());
                Some(keep(text, k.mac.as_deref().filter(|_| pinned)))
            }
            None => disable_nm_keyfile(text),
        };
        if let Some(new) = new {
            ctx.write(path, &new, 0o600)?;
        }
    }
    if own_file {
        ctx.write(NM_FILE, NM_CONNECTION, 0o600)?;
    }
    if map.is_some() {
        // Also without a plan: an earlier map's `.link` files go.
        write_links(ctx, &links)?;
    }
    if let Some(plan) = &plan {
        report(ctx, plan, &source, false);
    }
    Ok(())
}

const NM_DIR: &str = "/etc/NetworkManager/system-connections";

/// NetworkManager's keyfiles (ferry's own aside): (path, text, the NIC an
/// Ethernet connection configures by name), and the files that could not
/// be read as text, with why (NetworkManager reads none of them either:
/// they are left as they are, and said).
pub(crate) fn keyfiles(tree: &super::super::tree::Tree) -> Result<(Vec<Keyfile>, Vec<String>)> {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for n in tree.list(NM_DIR)? {
        let path = format!("{NM_DIR}/{n}");
        if path == NM_FILE {
            continue;
        }
        match tree.read(&path) {
            Ok(Some(text)) => {
                let nic = source_nic(&text);
                out.push(Keyfile { path, text, nic });
            }
            Ok(None) => {}
            Err(e) => unreadable.push(format!("{path}: {e:#}")),
        }
    }
    Ok((out, unreadable))
}

/// One keyfile of the migrated system.
pub(crate) struct Keyfile {
    pub path: String,
    pub text: String,
    /// The NIC an Ethernet connection configures by name.
    pub nic: Option<map::SourceNic>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RHEL9: &str = "[connection]\nid=ens192\nuuid=0d1c5d1e-5f9b-4b8e-9c1e-3a1f0e2d4c5b\ntype=ethernet\nautoconnect-priority=-999\ninterface-name=ens192\ntimestamp=1700000000\n\n[ethernet]\nmac-address=00:50:56:AA:BB:CC\n\n[ipv4]\naddress1=10.0.2.50/24,10.0.2.2\ndns=10.0.2.3;\nmethod=manual\nroute1=10.9.0.0/16,10.0.2.2\n\n[ipv6]\naddr-gen-mode=eui64\nmethod=auto\n\n[proxy]\n";

    #[test]
    fn the_nic_of_a_connection_is_read() {
        let cases: &[(&str, &str, Option<SourceNic>)] = &[
            (
                "RHEL 9, nmcli",
                RHEL9,
                Some(SourceNic {
                    name: "ens192".into(),
                    mac: Some("00:50:56:aa:bb:cc".into()),
                    addresses: vec!["10.0.2.50/24".into()],
                }),
            ),
            (
                "two addresses, IPv6 too, no MAC",
                "[connection]\nid=data\ntype=802-3-ethernet\ninterface-name=ens9\n[ipv4]\nmethod=manual\naddress1=10.0.3.50/24\naddress2=10.0.3.51/24\n[ipv6]\nmethod=manual\naddresses=fd00::50/64;\n",
                Some(SourceNic {
                    name: "ens9".into(),
                    mac: None,
                    addresses: vec!["10.0.3.50/24".into(), "10.0.3.51/24".into(), "fd00::50/64".into()],
                }),
            ),
            (
                "the old form",
                "[connection]\nid=eth0\ntype=802-3-ethernet\ninterface-name=eth0\n[ipv4]\nmethod=manual\naddresses1=192.168.1.5;24;192.168.1.1;\n",
                Some(SourceNic {
                    name: "eth0".into(),
                    mac: None,
                    addresses: vec!["192.168.1.5/24".into()],
                }),
            ),
            (
                "DHCP",
                "[connection]\nid=ens8\ntype=ethernet\ninterface-name=ens8\n[ipv4]\nmethod=auto\n",
                Some(SourceNic { name: "ens8".into(), mac: None, addresses: vec![] }),
            ),
            (
                "a MAC only: no name",
                "[connection]\nid=Wired connection 1\ntype=ethernet\n[ethernet]\nmac-address=00:50:56:AA:BB:CC\n",
                None,
            ),
            ("wifi", "[connection]\nid=home\ntype=wifi\ninterface-name=wlan0\n", None),
        ];
        for (name, text, want) in cases {
            assert_eq!(source_nic(text), *want, "{name}");
        }
    }

    #[test]
    fn a_kept_connection_starts_first_on_the_new_mac() {
        let kept = keep(RHEL9, Some("52:54:00:aa:00:01"));
        assert_eq!(
            kept,
            "[connection]\nid=ens192\nuuid=0d1c5d1e-5f9b-4b8e-9c1e-3a1f0e2d4c5b\ntype=ethernet\ninterface-name=ens192\ntimestamp=1700000000\n\nautoconnect=true\nautoconnect-priority=200\n[ethernet]\nmac-address=52:54:00:AA:00:01\n\n[ipv4]\naddress1=10.0.2.50/24,10.0.2.2\ndns=10.0.2.3;\nmethod=manual\nroute1=10.9.0.0/16,10.0.2.2\n\n[ipv6]\naddr-gen-mode=eui64\nmethod=auto\n\n[proxy]\n"
        );
        // Again: the same file (a second repair changes nothing).
        assert_eq!(keep(&kept, Some("52:54:00:aa:00:01")), kept);
        // The same NIC read back: its name and addresses, the new MAC.
        let nic = source_nic(&kept).unwrap();
        assert_eq!(nic.mac.as_deref(), Some("52:54:00:aa:00:01"));
        assert_eq!(nic.addresses, ["10.0.2.50/24"]);
    }
}
