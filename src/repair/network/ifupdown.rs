//! ifupdown (`/etc/network/interfaces` and `interfaces.d`): the source's
//! NICs read from their stanzas, and the files rewritten for the new
//! instance: a kept NIC's stanza stays as the server had it (addresses,
//! gateway, routes in its `up` lines, DNS, MTU), every other NIC's is
//! commented out, and each new NIC that keeps nothing gets DHCP as `ethN`
//! (the kernel's names under `net.ifnames=0`).

use super::map::{canonical_mac, NetworkPlan, NicMode, SourceNic};
use super::MARK;

/// The header of the DHCP stanzas ferry appends to the main file; a later
/// run drops them (and it) and writes them again.
const DHCP_HEADER: &str =
    "# ferry: DHCP on the new instance's network interfaces (ethN with net.ifnames=0).";

/// A stanza keyword: it ends the options of the stanza before it.
fn is_keyword(word: &str) -> bool {
    word == "iface"
        || word == "mapping"
        || word == "auto"
        || word == "source"
        || word == "source-directory"
        || word == "rename"
        || word.starts_with("allow-")
}

/// A line with ferry's mark taken off (a stanza an earlier run commented
/// out is still the source's).
fn unmarked(line: &str) -> &str {
    line.strip_prefix(MARK)
        .map(|rest| rest.strip_prefix(' ').unwrap_or(rest))
        .unwrap_or(line)
}

/// The NIC an interface of the files is on: an alias (`ens8:1`, an
/// address more on ens8) and a VLAN (`ens8.10`) go with their NIC.
fn nic_of(iface: &str) -> &str {
    iface.split([':', '.']).next().unwrap_or(iface)
}

/// A netmask in dotted form as a prefix length.
fn prefix_of(netmask: &str) -> Option<u8> {
    let m: std::net::Ipv4Addr = netmask.parse().ok()?;
    let bits = u32::from(m);
    (bits.leading_ones() + bits.trailing_zeros() == 32).then_some(bits.leading_ones() as u8)
}

/// The NICs the files configure (every `iface` but `lo`, in the order
/// first seen), with their static addresses and pinned MACs. ferry's
/// own DHCP stanzas are not the source's and are left out.
pub(crate) fn source_nics(files: &[String]) -> Vec<SourceNic> {
    let mut nics: Vec<SourceNic> = Vec::new();
    for text in files {
        let mut current: Option<usize> = None;
        let mut static_v4 = false;
        let mut address: Option<String> = None;
        let mut netmask: Option<String> = None;
        let mut ours = false;
        let flush =
            |nics: &mut Vec<SourceNic>, at: Option<usize>, a: Option<String>, m: Option<String>| {
                let (Some(i), Some(a)) = (at, a) else { return };
                // IPv6 gives its netmask as a prefix length.
                let prefix = m
                    .as_deref()
                    .and_then(|m| prefix_of(m).or_else(|| m.parse::<u8>().ok()));
                let a = match (a.contains('/'), prefix) {
                    (true, _) => a,
                    (false, Some(p)) => format!("{a}/{p}"),
                    (false, None) if a.contains(':') => format!("{a}/128"),
                    (false, None) => format!("{a}/32"),
                };
                if !nics[i].addresses.contains(&a) {
                    nics[i].addresses.push(a);
                }
            };
        for raw in text.lines() {
            if raw == DHCP_HEADER {
                ours = true;
                continue;
            }
            let t = unmarked(raw).trim();
            let mut words = t.split_whitespace();
            let word = words.next().unwrap_or("");
            if word.starts_with('#') || word.is_empty() {
                continue;
            }
            if is_keyword(word) {
                let (a, m) = (address.take(), netmask.take());
                flush(&mut nics, current.filter(|_| static_v4), a, m);
                current = None;
                static_v4 = false;
            }
            if word == "iface" {
                let name = nic_of(words.next().unwrap_or(""));
                let family = words.next().unwrap_or("");
                let method = words.next().unwrap_or("");
                if name.is_empty() || name == "lo" || ours {
                    continue;
                }
                let i = match nics.iter().position(|n| n.name == name) {
                    Some(i) => i,
                    None => {
                        nics.push(SourceNic {
                            name: name.to_owned(),
                            mac: None,
                            addresses: Vec::new(),
                        });
                        nics.len() - 1
                    }
                };
                current = Some(i);
                static_v4 = (family == "inet" || family == "inet6") && method == "static";
                continue;
            }
            let Some(i) = current else { continue };
            let value: Vec<&str> = words.collect();
            match word {
                "address" if static_v4 => address = value.first().map(|s| (*s).to_owned()),
                "netmask" if static_v4 => netmask = value.first().map(|s| (*s).to_owned()),
                "hwaddress" => {
                    let mac = value.last().and_then(|m| canonical_mac(m));
                    if mac.is_some() {
                        nics[i].mac = mac;
                    }
                }
                _ => {}
            }
        }
        flush(
            &mut nics,
            current.filter(|_| static_v4),
            address.take(),
            netmask.take(),
        );
    }
    nics
}

/// A file of the configuration rewritten for the plan. `main` is
/// `/etc/network/interfaces`, which gets the DHCP stanzas.
pub(crate) fn rewrite(text: &str, main: bool, plan: &NetworkPlan) -> String {
    let kept = |name: &str| {
        let nic = nic_of(name);
        nic == "lo" || plan.get(nic).is_some_and(|n| n.mode == NicMode::Keep)
    };
    let mut out = String::new();
    let mut in_stanza_off = false;
    let mut ours = false;
    for l in text.lines() {
        // ferry's DHCP stanzas of an earlier run: dropped, written anew below.
        if l == DHCP_HEADER {
            ours = true;
            continue;
        }
        if ours {
            continue;
        }
        let original = unmarked(l);
        let t = original.trim_start();
        let commented_by_us = original.len() != l.len();
        let word = t.split_whitespace().next().unwrap_or("");
        let names: Vec<&str> = t.split_whitespace().skip(1).collect();
        match word {
            "auto" | "allow-hotplug" | "allow-auto" => {
                in_stanza_off = false;
                let keep: Vec<&str> = names.iter().copied().filter(|n| kept(n)).collect();
                if keep.len() == names.len() {
                    out.push_str(original);
                } else if commented_by_us {
                    out.push_str(l);
                } else {
                    out.push_str(&format!("{MARK} {l}"));
                    if !keep.is_empty() {
                        out.push_str(&format!("\n{word} {}", keep.join(" ")));
                    }
                }
            }
            "iface" | "mapping" => {
                in_stanza_off = !names.first().is_some_and(|n| kept(n));
                if !in_stanza_off {
                    out.push_str(original);
                } else if commented_by_us {
                    out.push_str(l);
                } else {
                    out.push_str(&format!("{MARK} {l}"));
                }
            }
            "source" | "source-directory" | "rename" => {
                in_stanza_off = false;
                out.push_str(l);
            }
            _ if commented_by_us && !in_stanza_off => out.push_str(original),
            _ if in_stanza_off && !t.is_empty() && !t.starts_with('#') && !commented_by_us => {
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
    }
    if main {
        while out.ends_with("\n\n") {
            out.pop();
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(DHCP_HEADER);
        out.push('\n');
        let mut first = true;
        for i in dhcp_indices(plan) {
            out.push_str(&format!("allow-hotplug eth{i}\niface eth{i} inet dhcp\n"));
            // The first DHCP NIC's default route wins; the others' come
            // after it (dhclient), whichever answers first.
            if !first {
                out.push_str(&format!("    metric {}\n", 100 * i));
            }
            first = false;
        }
    }
    out
}

/// The new NICs that get DHCP: every one no kept NIC takes.
pub(crate) fn dhcp_indices(plan: &NetworkPlan) -> Vec<usize> {
    (0..plan.instance_nics.max(1))
        .filter(|i| {
            !plan
                .nics
                .iter()
                .any(|n| n.index == *i && n.mode == NicMode::Keep)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::map::NetworkMap;
    use super::*;

    const SOURCE: &str = "\
auto lo
iface lo inet loopback

allow-hotplug ens8
iface ens8 inet static
    address 10.0.2.50
    netmask 255.255.255.0
    gateway 10.0.2.2
    hwaddress ether 52:54:00:12:34:08

auto ens9
iface ens9 inet static
    address 10.0.3.50/24
    up ip route add 10.9.0.0/16 via 10.0.3.2
    mtu 1400

iface ens9 inet6 auto

auto ens9:1
iface ens9:1 inet static
    address 10.0.3.51/24

allow-hotplug ens10
iface ens10 inet dhcp
";

    #[test]
    fn the_source_nics_are_read_from_the_stanzas() {
        let nics = source_nics(&[SOURCE.to_owned()]);
        assert_eq!(
            nics,
            vec![
                SourceNic {
                    name: "ens8".into(),
                    mac: Some("52:54:00:12:34:08".into()),
                    addresses: vec!["10.0.2.50/24".into()],
                },
                SourceNic {
                    name: "ens9".into(),
                    mac: None,
                    addresses: vec!["10.0.3.50/24".into(), "10.0.3.51/24".into()],
                },
                SourceNic {
                    name: "ens10".into(),
                    mac: None,
                    addresses: vec![],
                },
            ]
        );
    }

    #[test]
    fn kept_nics_keep_their_stanzas_and_the_others_get_dhcp() {
        let nics = source_nics(&[SOURCE.to_owned()]);
        let map = NetworkMap::parse(
            "instance = [\"52:54:00:aa:00:01\", \"52:54:00:aa:00:02\", \"52:54:00:aa:00:03\"]\n\
             [[nic]]\nsource = \"ens9\"\nmode = \"keep\"\ntarget = \"#2\"\n",
        )
        .unwrap();
        let plan = map.plan(&nics).unwrap();
        let out = rewrite(SOURCE, true, &plan);
        assert_eq!(
            out,
            "\
auto lo
iface lo inet loopback

# ferry: allow-hotplug ens8
# ferry: iface ens8 inet static
# ferry:     address 10.0.2.50
# ferry:     netmask 255.255.255.0
# ferry:     gateway 10.0.2.2
# ferry:     hwaddress ether 52:54:00:12:34:08

auto ens9
iface ens9 inet static
    address 10.0.3.50/24
    up ip route add 10.9.0.0/16 via 10.0.3.2
    mtu 1400

iface ens9 inet6 auto

auto ens9:1
iface ens9:1 inet static
    address 10.0.3.51/24

# ferry: allow-hotplug ens10
# ferry: iface ens10 inet dhcp

# ferry: DHCP on the new instance's network interfaces (ethN with net.ifnames=0).
allow-hotplug eth0
iface eth0 inet dhcp
allow-hotplug eth2
iface eth2 inet dhcp
    metric 200
"
        );
        // Idempotent, and the commented stanzas are still the source's.
        assert_eq!(rewrite(&out, true, &plan), out);
        assert_eq!(source_nics(std::slice::from_ref(&out)), nics);
        // Another map over the rewritten file: ens8 kept instead.
        let again = NetworkMap::parse(
            "[[nic]]\nsource = \"ens8\"\nmode = \"keep\"\ntarget = \"52:54:00:aa:00:01\"\n",
        )
        .unwrap()
        .plan(&source_nics(std::slice::from_ref(&out)))
        .unwrap();
        let out2 = rewrite(&out, true, &again);
        assert!(
            out2.contains("\nallow-hotplug ens8\niface ens8 inet static\n    address 10.0.2.50\n"),
            "{out2}"
        );
        assert!(
            out2.contains("# ferry: auto ens9\n# ferry: iface ens9 inet static\n"),
            "{out2}"
        );
        assert!(out2.ends_with("allow-hotplug eth1\niface eth1 inet dhcp\nallow-hotplug eth2\niface eth2 inet dhcp\n    metric 200\n"), "{out2}");
    }

    #[test]
    fn without_a_map_every_source_nic_becomes_a_dhcp_nic() {
        let plan = NetworkMap::default()
            .plan(&source_nics(&[SOURCE.to_owned()]))
            .unwrap();
        let out = rewrite(SOURCE, true, &plan);
        assert!(out.ends_with(
            "allow-hotplug eth0\niface eth0 inet dhcp\nallow-hotplug eth1\niface eth1 inet dhcp\n    metric 100\nallow-hotplug eth2\niface eth2 inet dhcp\n    metric 200\n"
        ), "{out}");
        assert!(!out.contains("\niface ens"), "{out}");
        // A file of interfaces.d gets no DHCP stanza of its own.
        let d = rewrite("auto ens11\niface ens11 inet dhcp\n", false, &plan);
        assert_eq!(d, "# ferry: auto ens11\n# ferry: iface ens11 inet dhcp\n");
        assert_eq!(prefix_of("255.255.240.0"), Some(20));
        assert_eq!(prefix_of("255.0.255.0"), None);
    }
}
