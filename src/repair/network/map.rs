//! The network map: what the control plane (or the operator of `ferry
//! repair --network MAP`) wants of each source NIC on the new instance.
//!
//! ```toml
//! # The new instance's NICs in their order, by MAC (optional).
//! instance = ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]
//!
//! [[nic]]
//! source = "ens8"              # the source NIC: its name, or its MAC
//! mode = "keep"                # keep its static addresses; "dhcp" is the default
//! target = "52:54:00:aa:00:01" # the new NIC it becomes: a MAC, or "#2" for the second
//! subnet = "10.0.2.0/24"       # the new NIC's subnet: a kept address must lie in it
//! ```
//!
//! The same in JSON (`{"instance": [...], "nic": [{...}]}`). Source NICs
//! the map does not name get DHCP. A NIC without `target` takes the new NIC
//! of its own place among the map's entries.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::job::errors::{coded, ErrorCode};

/// What becomes of one source NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicMode {
    /// An address by DHCP on the new NIC.
    #[default]
    Dhcp,
    /// The source's static addresses, routes, DNS and MTU on the new NIC.
    Keep,
}

/// One entry of the map, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicChoice {
    pub source: String,
    #[serde(default)]
    pub mode: NicMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

/// The map as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkMap {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance: Vec<String>,
    #[serde(default, rename = "nic", skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicChoice>,
}

/// A NIC of the source as its configuration files say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceNic {
    pub name: String,
    /// Where the configuration pins it to a MAC (lowercase), if it does.
    pub mac: Option<String>,
    /// Its static addresses with prefix lengths, IPv4 and IPv6 (none: DHCP
    /// or unset).
    pub addresses: Vec<String>,
}

/// Where a source NIC goes on the new instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicPlan {
    /// The source NIC's name.
    pub source: String,
    pub mode: NicMode,
    /// The new NIC's position (0 is the first).
    pub index: usize,
    /// The new NIC's MAC, where the map gives it.
    pub mac: Option<String>,
}

/// A map checked against the source's NICs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub nics: Vec<NicPlan>,
    /// How many NICs the new instance has (at least 1).
    pub instance_nics: usize,
}

impl NetworkPlan {
    pub fn get(&self, source: &str) -> Option<&NicPlan> {
        self.nics.iter().find(|n| n.source == source)
    }
}

fn invalid(msg: impl Into<String>) -> anyhow::Error {
    coded(ErrorCode::NetworkMapInvalid, msg.into())
}

/// A MAC in its canonical form (six hex pairs, lowercase, colons).
pub fn canonical_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// An IPv4 address with its prefix length (`10.0.2.50/24`).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok()?;
    (p <= 32).then_some(())?;
    Some((a.parse().ok()?, p))
}

fn in_subnet(addr: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(addr) & mask == u32::from(net) & mask
}

impl NetworkMap {
    /// Parse a map from TOML or JSON (a first `{` says JSON).
    pub fn parse(text: &str) -> Result<NetworkMap> {
        crate::repair::toml_or_json(text)
            .map_err(|e| invalid(format!("the network map cannot be read: {e}")))
    }

    pub fn load(path: &std::path::Path) -> Result<NetworkMap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the network map {}", path.display()))?;
        NetworkMap::parse(&text).with_context(|| format!("the network map {}", path.display()))
    }

    /// Check the map against the source's NICs and say where each goes.
    /// Source NICs the map does not name get DHCP, on the new NICs left
    /// over in their order.
    pub fn plan(&self, source: &[SourceNic]) -> Result<NetworkPlan> {
        let instance = self.instance_macs()?;
        let mut plans: Vec<NicPlan> = Vec::new();
        // The new NIC of each plan, by position, and who took it.
        let mut taken: BTreeMap<usize, String> = BTreeMap::new();
        for (pos, choice) in self.nics.iter().enumerate() {
            let nic = find_source(source, &choice.source)?;
            if let Some(p) = plans.iter().find(|p| p.source == nic.name) {
                return Err(invalid(format!(
                    "nic {}: the source NIC {} is named twice in the map (as {:?} and {:?})",
                    pos + 1,
                    nic.name,
                    self.nics
                        .iter()
                        .find(|c| find_source(source, &c.source).is_ok_and(|n| n.name == p.source))
                        .map_or("", |c| c.source.as_str()),
                    choice.source
                )));
            }
            let (index, mac) = target_of(pos, choice, &instance)?;
            if let Some(other) = taken.get(&index) {
                return Err(invalid(format!(
                    "source NICs {other} and {} are both mapped onto the new NIC #{}{}; each new NIC takes one",
                    nic.name,
                    index + 1,
                    mac.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
                )));
            }
            if choice.mode == NicMode::Keep && nic.addresses.is_empty() {
                return Err(invalid(format!(
                    "nic {}: {} has no static address to keep (its configuration asks for DHCP or none); say mode = \"dhcp\"",
                    pos + 1,
                    nic.name
                )));
            }
            if let Some((net, prefix)) = subnet_of(pos, choice)? {
                for a in &nic.addresses {
                    if let Some((addr, _)) = parse_cidr(a) {
                        if !in_subnet(addr, net, prefix) {
                            return Err(invalid(format!(
                                "nic {}: {} keeps {a}, which is outside its new subnet {}",
                                pos + 1,
                                nic.name,
                                choice.subnet.as_deref().unwrap_or_default()
                            )));
                        }
                    }
                }
            }
            taken.insert(index, nic.name.clone());
            plans.push(NicPlan {
                source: nic.name.clone(),
                mode: choice.mode,
                index,
                mac,
            });
        }
        // The source NICs the map does not name: DHCP, on the new NICs left.
        for nic in source {
            if plans.iter().any(|p| p.source == nic.name) {
                continue;
            }
            let index = (0..).find(|i| !taken.contains_key(i)).unwrap_or(0);
            if !instance.is_empty() && index >= instance.len() {
                continue;
            }
            taken.insert(index, nic.name.clone());
            plans.push(NicPlan {
                source: nic.name.clone(),
                mode: NicMode::Dhcp,
                index,
                mac: instance.get(index).cloned(),
            });
        }
        let instance_nics = if instance.is_empty() {
            taken.keys().next_back().map_or(1, |i| i + 1)
        } else {
            instance.len()
        };
        plans.sort_by_key(|p| p.index);
        Ok(NetworkPlan {
            nics: plans,
            instance_nics,
        })
    }
    /// Check what can be checked without the source's NICs: the MACs, the
    /// targets and subnets, and that no two entries name the same source or
    /// the same new NIC. The rest is checked when the repair reads the
    /// migrated system's configuration.
    pub fn check_alone(&self) -> Result<()> {
        let instance = self.instance_macs()?;
        let mut taken: BTreeMap<usize, usize> = BTreeMap::new();
        for (pos, choice) in self.nics.iter().enumerate() {
            if let Some(first) = self.nics[..pos]
                .iter()
                .position(|c| c.source == choice.source)
            {
                return Err(invalid(format!(
                    "nic {}: the source NIC {:?} is named twice in the map (nic {} and nic {})",
                    pos + 1,
                    choice.source,
                    first + 1,
                    pos + 1
                )));
            }
            let (index, _) = target_of(pos, choice, &instance)?;
            if let Some(first) = taken.insert(index, pos) {
                return Err(invalid(format!(
                    "nic {} and nic {} are both mapped onto the new NIC #{}; each new NIC takes one",
                    first + 1,
                    pos + 1,
                    index + 1
                )));
            }
            subnet_of(pos, choice)?;
        }
        Ok(())
    }

    /// The new instance's MACs, canonical and each once.
    fn instance_macs(&self) -> Result<Vec<String>> {
        if self.instance.len() > MAX_NICS || self.nics.len() > MAX_NICS {
            return Err(invalid(format!(
                "the map lists {} new NICs and {} entries; an instance is taken to have at most {MAX_NICS}",
                self.instance.len(),
                self.nics.len()
            )));
        }
        let mut instance = Vec::new();
        for m in &self.instance {
            let c = canonical_mac(m).ok_or_else(|| {
                invalid(format!(
                    "instance: {m:?} is not a MAC address (six hex pairs, as 52:54:00:aa:00:01)"
                ))
            })?;
            if instance.contains(&c) {
                return Err(invalid(format!("instance: the MAC {c} is listed twice")));
            }
            instance.push(c);
        }
        Ok(instance)
    }
}

/// The new NIC of the map's entry at `pos`: its place and, where known,
/// its MAC.
/// Most NICs a new instance is taken to have: a place past it is a
/// mistake (each place up to it gets a DHCP NIC of its own).
pub const MAX_NICS: usize = 64;

fn target_of(
    pos: usize,
    choice: &NicChoice,
    instance: &[String],
) -> Result<(usize, Option<String>)> {
    let (index, mac) = match choice.target.as_deref() {
        None => (pos, instance.get(pos).cloned()),
        Some(t) => match t.strip_prefix('#') {
            Some(n) => {
                let n: usize = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    invalid(format!(
                        "nic {}: target {t:?} is not a NIC's place (#1 is the new instance's first NIC)",
                        pos + 1
                    ))
                })?;
                if n > MAX_NICS {
                    return Err(invalid(format!(
                        "nic {}: target {t:?} is past the {MAX_NICS} NICs an instance is taken to have",
                        pos + 1
                    )));
                }
                (n - 1, instance.get(n - 1).cloned())
            }
            None => {
                let mac = canonical_mac(t).ok_or_else(|| {
                    invalid(format!(
                        "nic {}: target {t:?} is neither a MAC address nor a place such as #2",
                        pos + 1
                    ))
                })?;
                let index = if instance.is_empty() {
                    pos
                } else {
                    instance.iter().position(|m| *m == mac).ok_or_else(|| {
                        invalid(format!(
                            "nic {}: target {mac} is not one of the new instance's NICs ({})",
                            pos + 1,
                            instance.join(", ")
                        ))
                    })?
                };
                (index, Some(mac))
            }
        },
    };
    if !instance.is_empty() && index >= instance.len() {
        let n = instance.len();
        return Err(invalid(format!(
            "nic {}: the new instance has {n} NIC{}, so there is no NIC #{}",
            pos + 1,
            if n == 1 { "" } else { "s" },
            index + 1
        )));
    }
    Ok((index, mac))
}

/// The entry's new subnet, which only a kept NIC may give.
fn subnet_of(pos: usize, choice: &NicChoice) -> Result<Option<(Ipv4Addr, u8)>> {
    let Some(subnet) = &choice.subnet else {
        return Ok(None);
    };
    if choice.mode != NicMode::Keep {
        return Err(invalid(format!(
            "nic {}: subnet is for mode = \"keep\" (a DHCP address is the cloud's to give)",
            pos + 1
        )));
    }
    parse_cidr(subnet).map(Some).ok_or_else(|| {
        invalid(format!(
            "nic {}: subnet {subnet:?} is not an IPv4 network such as 10.0.2.0/24",
            pos + 1
        ))
    })
}

fn find_source<'a>(source: &'a [SourceNic], wanted: &str) -> Result<&'a SourceNic> {
    let by_mac = canonical_mac(wanted);
    source
        .iter()
        .find(|n| n.name == wanted || (by_mac.is_some() && n.mac == by_mac))
        .ok_or_else(|| {
            let known: Vec<String> = source
                .iter()
                .map(|n| match &n.mac {
                    Some(m) => format!("{} ({m})", n.name),
                    None => n.name.clone(),
                })
                .collect();
            invalid(format!(
                "source NIC {wanted:?} is not one of the server's NICs ({})",
                if known.is_empty() {
                    "its configuration names none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Vec<SourceNic> {
        vec![
            SourceNic {
                name: "ens8".into(),
                mac: Some("52:54:00:12:34:08".into()),
                addresses: vec!["10.0.2.50/24".into()],
            },
            SourceNic {
                name: "ens9".into(),
                mac: None,
                addresses: vec!["10.0.3.50/24".into()],
            },
            SourceNic {
                name: "ens10".into(),
                mac: None,
                addresses: vec![],
            },
        ]
    }

    fn refusal(toml: &str) -> String {
        let err = NetworkMap::parse(toml)
            .and_then(|m| m.plan(&source()))
            .expect_err("the map is refused");
        let (code, detail) = crate::job::errors::describe(&err);
        assert_eq!(code, ErrorCode::NetworkMapInvalid, "{err:#}");
        detail
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            (
                "[[nic]]\nsource = \"ens7\"\n",
                "source NIC \"ens7\" is not one of the server's NICs (ens8 (52:54:00:12:34:08), ens9, ens10)",
            ),
            (
                "[[nic]]\nsource = \"52:54:00:12:34:99\"\n",
                "source NIC \"52:54:00:12:34:99\" is not one of the server's NICs (ens8 (52:54:00:12:34:08), ens9, ens10)",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\ntarget = \"#1\"\n[[nic]]\nsource = \"ens9\"\ntarget = \"#1\"\n",
                "source NICs ens8 and ens9 are both mapped onto the new NIC #1; each new NIC takes one",
            ),
            (
                "instance = [\"52:54:00:aa:00:01\", \"52:54:00:aa:00:02\"]\n[[nic]]\nsource = \"ens8\"\ntarget = \"52:54:00:AA:00:02\"\n[[nic]]\nsource = \"ens9\"\ntarget = \"52:54:00:aa:00:02\"\n",
                "source NICs ens8 and ens9 are both mapped onto the new NIC #2 (52:54:00:aa:00:02); each new NIC takes one",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\n[[nic]]\nsource = \"52:54:00:12:34:08\"\n",
                "nic 2: the source NIC ens8 is named twice in the map (as \"ens8\" and \"52:54:00:12:34:08\")",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\nmode = \"keep\"\nsubnet = \"10.0.3.0/24\"\n",
                "nic 1: ens8 keeps 10.0.2.50/24, which is outside its new subnet 10.0.3.0/24",
            ),
            (
                "[[nic]]\nsource = \"ens10\"\nmode = \"keep\"\n",
                "nic 1: ens10 has no static address to keep (its configuration asks for DHCP or none); say mode = \"dhcp\"",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\ntarget = \"52:54:00:aa:00\"\n",
                "nic 1: target \"52:54:00:aa:00\" is neither a MAC address nor a place such as #2",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\ntarget = \"#0\"\n",
                "nic 1: target \"#0\" is not a NIC's place (#1 is the new instance's first NIC)",
            ),
            (
                "instance = [\"52:54:00:aa:00:01\"]\n[[nic]]\nsource = \"ens8\"\ntarget = \"#2\"\n",
                "nic 1: the new instance has 1 NIC, so there is no NIC #2",
            ),
            (
                "instance = [\"52:54:00:aa:00:01\"]\n[[nic]]\nsource = \"ens8\"\ntarget = \"52:54:00:aa:00:02\"\n",
                "nic 1: target 52:54:00:aa:00:02 is not one of the new instance's NICs (52:54:00:aa:00:01)",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\ntarget = \"#1000000\"\n",
                "nic 1: target \"#1000000\" is past the 64 NICs an instance is taken to have",
            ),
            (
                "instance = [\"52:54:00:aa:00:01\", \"52:54:00:aa:00:01\"]\n",
                "instance: the MAC 52:54:00:aa:00:01 is listed twice",
            ),
            (
                "instance = [\"eth0\"]\n",
                "instance: \"eth0\" is not a MAC address (six hex pairs, as 52:54:00:aa:00:01)",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\nsubnet = \"10.0.2.0/24\"\n",
                "nic 1: subnet is for mode = \"keep\" (a DHCP address is the cloud's to give)",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\nmode = \"keep\"\nsubnet = \"10.0.2.0\"\n",
                "nic 1: subnet \"10.0.2.0\" is not an IPv4 network such as 10.0.2.0/24",
            ),
        ];
        for (map, want) in cases {
            assert_eq!(refusal(map), *want, "for the map:\n{map}");
        }
        // Unknown keys and modes are the parser's to refuse.
        let r = refusal("[[nic]]\nsource = \"ens8\"\nmode = \"static\"\n");
        assert!(r.starts_with("the network map cannot be read: "), "{r}");
        assert!(
            r.contains("unknown variant `static`, expected `dhcp` or `keep`"),
            "{r}"
        );
        let r = refusal("[[nic]]\nsrc = \"ens8\"\n");
        assert!(r.contains("unknown field `src`"), "{r}");
    }

    #[test]
    fn a_map_places_every_source_nic() {
        let map = NetworkMap::parse(
            "instance = [\"52:54:00:aa:00:01\", \"52:54:00:aa:00:02\", \"52:54:00:aa:00:03\"]\n\
             [[nic]]\nsource = \"ens9\"\nmode = \"keep\"\ntarget = \"52:54:00:aa:00:01\"\nsubnet = \"10.0.3.0/24\"\n",
        )
        .unwrap();
        let plan = map.plan(&source()).unwrap();
        assert_eq!(plan.instance_nics, 3);
        let got: Vec<(&str, NicMode, usize, Option<&str>)> = plan
            .nics
            .iter()
            .map(|n| (n.source.as_str(), n.mode, n.index, n.mac.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ens9", NicMode::Keep, 0, Some("52:54:00:aa:00:01")),
                ("ens8", NicMode::Dhcp, 1, Some("52:54:00:aa:00:02")),
                ("ens10", NicMode::Dhcp, 2, Some("52:54:00:aa:00:03")),
            ]
        );
        // No map: every source NIC gets DHCP, in order.
        let plan = NetworkMap::default().plan(&source()).unwrap();
        assert_eq!(plan.instance_nics, 3);
        assert!(plan
            .nics
            .iter()
            .all(|n| n.mode == NicMode::Dhcp && n.mac.is_none()));
        // JSON says the same.
        let json = NetworkMap::parse(
            r##"{"nic": [{"source": "52:54:00:12:34:08", "mode": "keep", "target": "#2"}]}"##,
        )
        .unwrap();
        let plan = json.plan(&source()).unwrap();
        assert_eq!(
            plan.get("ens8").map(|n| (n.mode, n.index)),
            Some((NicMode::Keep, 1))
        );
        assert_eq!(plan.get("ens9").map(|n| n.index), Some(0));
    }

    #[test]
    fn a_map_alone_is_checked_for_what_needs_no_source() {
        let alone = |text: &str| {
            NetworkMap::parse(text)
                .and_then(|m| m.check_alone())
                .map_err(|e| crate::job::errors::describe(&e).1)
        };
        assert_eq!(
            alone("[[nic]]\nsource = \"ens8\"\nmode = \"keep\"\n"),
            Ok(())
        );
        assert_eq!(alone("{}"), Ok(()));
        let many = "[[nic]]\nsource = \"e\"\n".repeat(65);
        assert_eq!(
            alone(&many),
            Err(
                "the map lists 0 new NICs and 65 entries; an instance is taken to have at most 64"
                    .to_owned()
            )
        );
        let cases: &[(&str, &str)] = &[
            (
                "[[nic]]\nsource = \"ens8\"\n[[nic]]\nsource = \"ens8\"\n",
                "nic 2: the source NIC \"ens8\" is named twice in the map (nic 1 and nic 2)",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\ntarget = \"#2\"\n[[nic]]\nsource = \"ens9\"\n",
                "nic 1 and nic 2 are both mapped onto the new NIC #2; each new NIC takes one",
            ),
            (
                "instance = [\"52:54:00:aa:00:01\"]\n[[nic]]\nsource = \"ens8\"\ntarget = \"#3\"\n",
                "nic 1: the new instance has 1 NIC, so there is no NIC #3",
            ),
            (
                "[[nic]]\nsource = \"ens8\"\nmode = \"keep\"\nsubnet = \"10.0.2.0/33\"\n",
                "nic 1: subnet \"10.0.2.0/33\" is not an IPv4 network such as 10.0.2.0/24",
            ),
        ];
        for (map, want) in cases {
            assert_eq!(alone(map), Err((*want).to_owned()), "for the map:\n{map}");
        }
    }
}
