//! Red Hat's network scripts and SUSE's wicked: `ifcfg-*` files. Each of
//! the source's becomes a DHCP NIC `ethN` of ferry's; the old ones are
//! disabled, the static default gateway dropped.

use anyhow::Result;

use super::super::detect::parse_assignments;
use super::super::engine::StepCtx;

/// How ferry's own ifcfg files begin.
const IFCFG_OURS: &str = "# Written by ferry: DHCP on the cloud's ";

/// ifcfg (RHEL network-scripts, SUSE wicked) of a DHCP `eth{index}`; the
/// default route is the first NIC's.
pub(crate) fn ifcfg_dhcp(wicked: bool, index: usize) -> String {
    let head = if index == 0 {
        format!("{IFCFG_OURS}first network interface.\n")
    } else {
        format!("{IFCFG_OURS}network interface eth{index}.\n")
    };
    if wicked {
        format!("{head}BOOTPROTO='dhcp'\nSTARTMODE='auto'\n")
    } else {
        format!(
            "{head}DEVICE=eth{index}\nNAME=eth{index}\nTYPE=Ethernet\nBOOTPROTO=dhcp\nONBOOT=yes\nDEFROUTE={}\n",
            if index == 0 { "yes" } else { "no" }
        )
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

/// ifcfg (Red Hat) or wicked (SUSE): each of the source's ifcfg files
/// (ferry's own of an earlier run aside) becomes a DHCP NIC eth0, eth1...,
/// the source's own files disabled, and the source's default gateway
/// dropped (DHCP gives the cloud's).
pub(super) fn ifcfg_step(ctx: &mut StepCtx, wicked: bool) -> Result<()> {
    let dir = if wicked {
        "/etc/sysconfig/network"
    } else {
        "/etc/sysconfig/network-scripts"
    };
    let mut source = Vec::new();
    for n in ctx.tree.list(dir)? {
        let Some(name) = n.strip_prefix("ifcfg-") else {
            continue;
        };
        let p = format!("{dir}/{n}");
        if name == "lo" {
            continue;
        }
        if let Some(t) = ctx.tree.read(&p)? {
            if !t.starts_with(IFCFG_OURS) {
                source.push((p, t));
            }
        }
    }
    let ours: Vec<String> = (0..source.len().max(1))
        .map(|i| format!("{dir}/ifcfg-eth{i}"))
        .collect();
    for (p, t) in &source {
        if !ours.contains(p) {
            ctx.write(p, &disable_ifcfg(t, wicked), 0o644)?;
        }
    }
    for (i, p) in ours.iter().enumerate() {
        ctx.write(p, &ifcfg_dhcp(wicked, i), 0o644)?;
    }
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
    Ok(())
}
