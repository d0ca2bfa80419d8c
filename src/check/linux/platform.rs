//! What ties the system to the old platform: static network configuration
//! (ifupdown, ifcfg, netplan, NetworkManager) and the old platform's agents.

use anyhow::Result;
use serde::Serialize;

use super::super::{Finding, Severity};
use crate::job::errors::ErrorCode;
use crate::repair::detect::{self, OsInfo};
use crate::repair::recipe::Recipe;
use crate::repair::tree::Tree;

#[derive(Debug, Clone, Serialize)]
pub struct NetworkReport {
    pub stacks: Vec<detect::NetStack>,
    /// Static configuration found: `file: interface address`.
    pub static_config: Vec<String>,
    /// The NICs ifupdown or NetworkManager configures: name, pinned MAC,
    /// static addresses (what a network map names).
    pub nics: Vec<crate::repair::network::map::SourceNic>,
}

/// The network stacks the system uses and its static configuration,
/// which will not work on the cloud (the repair configures DHCP there).
pub(super) fn network(tree: &Tree, os: &OsInfo, f: &mut Vec<Finding>) -> Result<NetworkReport> {
    let mut found = Vec::new();
    let mut nics = Vec::new();
    ifupdown_static(tree, &mut found, &mut nics)?;
    ifcfg_static(tree, &mut found)?;
    netplan_static(tree, &mut found)?;
    networkmanager_static(tree, &mut found, &mut nics)?;
    if !found.is_empty() {
        f.push(Finding::new(
            Severity::Info,
            ErrorCode::NetworkStatic,
            found.join("; "),
        ));
    }
    Ok(NetworkReport {
        stacks: os.network.clone(),
        static_config: found,
        nics,
    })
}

/// Static addresses of ifupdown (its one parser, the repair's), and its
/// NICs with their pinned MACs.
fn ifupdown_static(
    tree: &Tree,
    found: &mut Vec<String>,
    nics: &mut Vec<crate::repair::network::map::SourceNic>,
) -> Result<()> {
    for (file, in_file) in crate::repair::network::ifupdown_nics(tree)? {
        for nic in in_file {
            for addr in &nic.addresses {
                found.push(format!("{file}: {} {addr}", nic.name));
            }
            match nics.iter_mut().find(|n| n.name == nic.name) {
                Some(n) => {
                    n.addresses.extend(nic.addresses);
                    n.mac = n.mac.take().or(nic.mac);
                }
                None => nics.push(nic),
            }
        }
    }
    Ok(())
}

/// Static addresses of the Red Hat network scripts: an `IPADDR` in an
/// `ifcfg-*` (not the loopback's) whose `BOOTPROTO` is not dhcp.
fn ifcfg_static(tree: &Tree, found: &mut Vec<String>) -> Result<()> {
    for n in tree.list("/etc/sysconfig/network-scripts")? {
        if !n.starts_with("ifcfg-") || n == "ifcfg-lo" {
            continue;
        }
        let file = format!("/etc/sysconfig/network-scripts/{n}");
        let Some(text) = tree.read(&file).ok().flatten() else {
            continue;
        };
        let kv = detect::parse_assignments(&text);
        let get = |k: &str| {
            kv.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let proto = get("BOOTPROTO").unwrap_or_default().to_ascii_lowercase();
        if let Some(addr) = get("IPADDR").or_else(|| get("IPADDR0")) {
            if proto != "dhcp" {
                let dev = get("DEVICE").unwrap_or_else(|| n[6..].to_owned());
                found.push(format!("{file}: {dev} {addr}"));
            }
        }
    }
    Ok(())
}

/// netplan files that give `addresses:`.
fn netplan_static(tree: &Tree, found: &mut Vec<String>) -> Result<()> {
    for n in detect::yaml_files(tree, "/etc/netplan")? {
        let file = format!("/etc/netplan/{n}");
        if let Some(text) = tree.read(&file).ok().flatten() {
            if text
                .lines()
                .any(|l| l.trim_start().starts_with("addresses:"))
            {
                found.push(format!("{file}: static addresses"));
            }
        }
    }
    Ok(())
}

/// NetworkManager's static connections (its keyfiles' one reader, the
/// repair's), and the NICs the keyfiles name.
fn networkmanager_static(
    tree: &Tree,
    found: &mut Vec<String>,
    nics: &mut Vec<crate::repair::network::map::SourceNic>,
) -> Result<()> {
    // A file that is not text is no connection NetworkManager reads either.
    let (files, _unreadable) = crate::repair::network::keyfiles(tree)?;
    for crate::repair::network::Keyfile {
        path: file,
        text,
        nic,
    } in files
    {
        match nic {
            Some(nic) => {
                for addr in &nic.addresses {
                    found.push(format!("{file}: {} {addr}", nic.name));
                }
                if !nics.iter().any(|n| n.name == nic.name) {
                    nics.push(nic);
                }
            }
            // Pinned to a MAC only: no NIC name to show.
            None if text.lines().any(|l| l.trim() == "method=manual") => {
                found.push(format!("{file}: method=manual"));
            }
            None => {}
        }
    }
    Ok(())
}

/// The old platform's agents the recipe masks, present in the system.
pub(super) fn agents(tree: &Tree, recipe: &Recipe) -> Vec<String> {
    let mut out: Vec<String> = recipe
        .agents
        .units
        .iter()
        .filter(|u| crate::repair::system::unit_file_in(tree, u).is_some())
        .cloned()
        .collect();
    for s in [
        "vmware-tools",
        "vmtoolsd",
        "hypervkvpd",
        "xe-linux-distribution",
    ] {
        if tree.exists(&format!("/etc/init.d/{s}")) {
            out.push(format!("/etc/init.d/{s}"));
        }
    }
    out
}
