//! What the migrated system is: distribution, kernels, bootloader, boot
//! firmware, init system, network stacks, cloud-init, SELinux — read from
//! its files only, nothing is run.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::tree::Tree;
use crate::job::errors::{coded, ErrorCode};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OsInfo {
    /// os-release ID (`debian`, `centos`, `sles`...), lowercase.
    pub id: String,
    /// os-release ID_LIKE, split.
    pub id_like: Vec<String>,
    pub version_id: String,
    pub pretty_name: String,
    /// Where the identity came from (`/etc/os-release`, `/etc/redhat-release`...).
    pub source: String,
    pub kernels: Vec<Kernel>,
    pub bootloader: Bootloader,
    pub firmware: Firmware,
    pub init: InitSystem,
    pub network: Vec<NetStack>,
    pub cloud_init: bool,
    pub selinux: SelinuxMode,
}

/// An installed kernel: its image in /boot and its module tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kernel {
    pub version: String,
    pub image: String,
    pub modules_dir: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Bootloader {
    Grub2,
    GrubLegacy,
    None,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitSystem {
    Systemd,
    Upstart,
    Sysvinit,
    Unknown,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum NetStack {
    Ifupdown,
    Netplan,
    NetworkManager,
    Ifcfg,
    Wicked,
}

impl NetStack {
    /// The stack's name, as its users know it.
    pub fn name(self) -> &'static str {
        match self {
            NetStack::Ifupdown => "ifupdown",
            NetStack::Netplan => "netplan",
            NetStack::NetworkManager => "NetworkManager",
            NetStack::Ifcfg => "ifcfg (network-scripts)",
            NetStack::Wicked => "wicked",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SelinuxMode {
    Enforcing,
    Permissive,
    Disabled,
    Absent,
}

/// Parse `KEY=value` shell-style assignments (os-release, sysconfig).
pub(crate) fn parse_assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let k = k.trim().trim_start_matches("export ").trim();
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            Some((k.to_owned(), unquote(v.trim())))
        })
        .collect()
}

pub(crate) fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_owned();
        }
    }
    v.to_owned()
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Identify the OS of the tree.
pub fn detect(tree: &Tree) -> Result<OsInfo> {
    let Identity {
        id,
        like: id_like,
        version: version_id,
        pretty: pretty_name,
        from: source,
    } = identity(tree)?;
    let kernels = kernels(tree)?;
    let bootloader = if [
        "/boot/grub/grub.cfg",
        "/boot/grub2/grub.cfg",
        "/etc/default/grub",
    ]
    .iter()
    .any(|p| tree.exists(p))
        || has_any(
            tree,
            &[
                "/usr/sbin/grub-install",
                "/usr/sbin/grub2-install",
                "/sbin/grub2-install",
            ],
        ) {
        Bootloader::Grub2
    } else if tree.exists("/boot/grub/menu.lst") || tree.exists("/boot/grub/grub.conf") {
        Bootloader::GrubLegacy
    } else {
        Bootloader::None
    };
    let firmware = firmware(tree)?;
    let init = if tree.exists("/lib/systemd/systemd") || tree.exists("/usr/lib/systemd/systemd") {
        InitSystem::Systemd
    } else if tree.exists("/sbin/initctl") && tree.is_dir("/etc/init") {
        InitSystem::Upstart
    } else if tree.exists("/etc/inittab") {
        InitSystem::Sysvinit
    } else {
        InitSystem::Unknown
    };
    let mut network = Vec::new();
    if has_any(tree, &["/sbin/ifup", "/usr/sbin/ifup"]) && tree.exists("/etc/network/interfaces") {
        network.push(NetStack::Ifupdown);
    }
    if !yaml_files(tree, "/etc/netplan")?.is_empty() || has_any(tree, &["/usr/sbin/netplan"]) {
        network.push(NetStack::Netplan);
    }
    if has_any(tree, &["/usr/sbin/NetworkManager", "/sbin/NetworkManager"]) {
        network.push(NetStack::NetworkManager);
    }
    if tree.is_dir("/etc/sysconfig/network-scripts") {
        network.push(NetStack::Ifcfg);
    }
    if has_any(tree, &["/usr/sbin/wicked", "/sbin/wicked"])
        || (tree.is_dir("/etc/sysconfig/network") && tree.exists("/etc/SuSE-release"))
    {
        network.push(NetStack::Wicked);
    }
    let cloud_init = has_any(tree, &["/usr/bin/cloud-init", "/bin/cloud-init"]);
    let selinux = match tree.read("/etc/selinux/config")? {
        None => SelinuxMode::Absent,
        Some(t) => match get(&parse_assignments(&t), "SELINUX")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("enforcing") => SelinuxMode::Enforcing,
            Some("permissive") => SelinuxMode::Permissive,
            _ => SelinuxMode::Disabled,
        },
    };
    Ok(OsInfo {
        id,
        id_like,
        version_id,
        pretty_name,
        source,
        kernels,
        bootloader,
        firmware,
        init,
        network,
        cloud_init,
        selinux,
    })
}

fn has_any(tree: &Tree, paths: &[&str]) -> bool {
    paths.iter().any(|p| tree.exists(p))
}

pub(crate) fn yaml_files(tree: &Tree, dir: &str) -> Result<Vec<String>> {
    Ok(tree
        .list(dir)?
        .into_iter()
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect())
}

/// Which OS a tree holds, and the file that said so.
struct Identity {
    id: String,
    like: Vec<String>,
    version: String,
    pretty: String,
    /// The file read (`/etc/os-release`), or "none".
    from: String,
}

impl Identity {
    fn new(id: &str, like: &[&str], version: &str, pretty: &str, from: &str) -> Identity {
        Identity {
            id: id.to_owned(),
            like: like.iter().map(|l| (*l).to_owned()).collect(),
            version: version.to_owned(),
            pretty: pretty.to_owned(),
            from: from.to_owned(),
        }
    }
}

/// Reads one release file (the text, whether /etc/debian_version exists).
type ReleaseParser = fn(&str, bool) -> Option<Identity>;

/// The OS of the tree from its release files: os-release where it has
/// one, else the most precise of the older files (an old Ubuntu has both
/// lsb-release and debian_version, and is not a Debian), else a Linux
/// without a name when it has /etc and a shell.
fn identity(tree: &Tree) -> Result<Identity> {
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(found) = tree.read(p)?.and_then(|t| from_os_release(&t, p)) {
            return Ok(found);
        }
    }
    let debian_based = tree.exists("/etc/debian_version");
    let older: [(&str, ReleaseParser); 4] = [
        ("/etc/lsb-release", from_lsb_release),
        ("/etc/redhat-release", |t, _| Some(from_redhat_release(t))),
        ("/etc/SuSE-release", |t, _| Some(from_suse_release(t))),
        ("/etc/debian_version", |t, _| {
            let v = t.trim();
            let pretty = format!("Debian {v}");
            Some(Identity::new(
                "debian",
                &[],
                v,
                &pretty,
                "/etc/debian_version",
            ))
        }),
    ];
    for (p, parse) in older {
        if let Some(found) = tree.read(p)?.and_then(|t| parse(&t, debian_based)) {
            return Ok(found);
        }
    }
    if tree.is_dir("/etc") && (tree.exists("/bin/sh") || tree.exists("/usr/bin/sh")) {
        return Ok(Identity::new(
            "linux",
            &[],
            "",
            "unidentified Linux",
            "none",
        ));
    }
    Err(coded(
        ErrorCode::UnsupportedOs,
        format!(
            "{} holds no /etc/os-release, no release file and no /bin/sh",
            tree.root().display()
        ),
    ))
}

fn from_os_release(text: &str, path: &str) -> Option<Identity> {
    let kv = parse_assignments(text);
    let id = get(&kv, "ID")?;
    let like = get(&kv, "ID_LIKE").unwrap_or("").to_ascii_lowercase();
    let like: Vec<&str> = like.split_whitespace().collect();
    Some(Identity::new(
        &id.to_ascii_lowercase(),
        &like,
        get(&kv, "VERSION_ID").unwrap_or(""),
        get(&kv, "PRETTY_NAME").unwrap_or(id),
        path,
    ))
}

/// RHEL's redhat-lsb writes an lsb-release with LSB_VERSION only: no
/// identity then.
fn from_lsb_release(text: &str, debian_based: bool) -> Option<Identity> {
    let kv = parse_assignments(text);
    let id = get(&kv, "DISTRIB_ID").filter(|i| !i.is_empty())?;
    let id = id.to_ascii_lowercase().replace(' ', "");
    let like: &[&str] = if debian_based && id != "debian" {
        &["debian"]
    } else {
        &[]
    };
    let version = get(&kv, "DISTRIB_RELEASE").unwrap_or("");
    let pretty = get(&kv, "DISTRIB_DESCRIPTION")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{id} {version}"));
    Some(Identity::new(
        &id,
        like,
        version,
        &pretty,
        "/etc/lsb-release",
    ))
}

fn from_redhat_release(text: &str) -> Identity {
    let line = text.lines().next().unwrap_or("").trim();
    let lower = line.to_ascii_lowercase();
    let id = [
        ("centos", "centos"),
        ("red hat", "rhel"),
        ("oracle", "ol"),
        ("fedora", "fedora"),
        ("rocky", "rocky"),
        ("almalinux", "almalinux"),
        ("scientific", "scientific"),
    ]
    .iter()
    .find(|(p, _)| lower.starts_with(p))
    .map(|(_, id)| *id)
    .unwrap_or("rhel");
    let version = line
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("");
    Identity::new(id, &["rhel"], version, line, "/etc/redhat-release")
}

fn from_suse_release(text: &str) -> Identity {
    let line = text.lines().next().unwrap_or("").trim();
    let id = if line.to_ascii_lowercase().contains("opensuse") {
        "opensuse"
    } else {
        "sles"
    };
    let kv = parse_assignments(&text.replace(" = ", "="));
    let version = match (get(&kv, "VERSION"), get(&kv, "PATCHLEVEL")) {
        (Some(v), Some(p)) if p != "0" && !v.contains('.') => format!("{v}.{p}"),
        (Some(v), _) => v.to_owned(),
        (None, _) => String::new(),
    };
    Identity::new(id, &["suse"], &version, line, "/etc/SuSE-release")
}

fn kernels(tree: &Tree) -> Result<Vec<Kernel>> {
    let mut out = Vec::new();
    let moddir = if tree.is_dir("/lib/modules") {
        "/lib/modules"
    } else {
        "/usr/lib/modules"
    };
    for v in tree.list(moddir)? {
        let modules_dir = format!("{moddir}/{v}");
        if !tree.is_dir(&modules_dir) {
            continue;
        }
        // A module tree without its image is left over from a removed kernel.
        let image = [
            format!("/boot/vmlinuz-{v}"),
            format!("/boot/vmlinux-{v}"),
            format!("{modules_dir}/vmlinuz"),
        ]
        .into_iter()
        .find(|p| tree.exists(p));
        if let Some(image) = image {
            out.push(Kernel {
                version: v,
                image,
                modules_dir,
            });
        }
    }
    Ok(out)
}

fn firmware(tree: &Tree) -> Result<Firmware> {
    // An ESP in fstab is what an installer writes on a UEFI system; a BIOS
    // GRUB's module directory is what grub-install writes on BIOS.
    if let Some(f) = tree.read("/etc/fstab")? {
        if crate::devname::parse_fstab(&f)
            .iter()
            .any(|e| e.mountpoint == "/boot/efi" || e.mountpoint == "/efi")
        {
            return Ok(Firmware::Uefi);
        }
    }
    if tree.is_dir("/boot/grub/i386-pc") || tree.is_dir("/boot/grub2/i386-pc") {
        return Ok(Firmware::Bios);
    }
    if tree.is_dir("/boot/efi/EFI") {
        return Ok(Firmware::Uefi);
    }
    Ok(Firmware::Bios)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, Tree) {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let host = d.path().join(p.trim_start_matches('/'));
            if let Some(dir) = p.strip_suffix('/') {
                fs::create_dir_all(d.path().join(dir.trim_start_matches('/'))).unwrap();
                continue;
            }
            fs::create_dir_all(host.parent().unwrap()).unwrap();
            fs::write(host, c).unwrap();
        }
        let t = Tree::new(d.path());
        (d, t)
    }

    #[test]
    fn debian_bookworm() {
        let (_d, t) = tree(&[
            (
                "/etc/os-release",
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
            ),
            ("/boot/vmlinuz-6.1.0-27-amd64", "k"),
            ("/lib/modules/6.1.0-27-amd64/modules.dep", ""),
            ("/lib/modules/5.10.0-old/modules.dep", ""),
            ("/boot/grub/grub.cfg", ""),
            ("/boot/grub/i386-pc/", ""),
            ("/lib/systemd/systemd", ""),
            ("/sbin/ifup", ""),
            ("/etc/network/interfaces", "auto lo\n"),
            ("/etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n"),
        ]);
        let os = detect(&t).unwrap();
        assert_eq!(os.id, "debian");
        assert_eq!(os.version_id, "12");
        assert_eq!(os.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(
            os.kernels.len(),
            1,
            "the module tree without an image is not a kernel"
        );
        assert_eq!(os.kernels[0].version, "6.1.0-27-amd64");
        assert_eq!(os.bootloader, Bootloader::Grub2);
        assert_eq!(os.firmware, Firmware::Bios);
        assert_eq!(os.init, InitSystem::Systemd);
        assert_eq!(os.network, vec![NetStack::Ifupdown]);
        assert!(!os.cloud_init);
        assert_eq!(os.selinux, SelinuxMode::Absent);
    }

    #[test]
    fn old_centos_from_release_file() {
        let (_d, t) = tree(&[
            ("/etc/redhat-release", "CentOS release 6.10 (Final)\n"),
            ("/boot/grub/grub.conf", "default=0\n"),
            ("/etc/sysconfig/network-scripts/ifcfg-eth0", "DEVICE=eth0\n"),
            (
                "/etc/selinux/config",
                "SELINUX=enforcing\nSELINUXTYPE=targeted\n",
            ),
            ("/etc/inittab", ""),
            ("/etc/fstab", "UUID=x /boot/efi vfat umask=0077 0 0\n"),
        ]);
        let os = detect(&t).unwrap();
        assert_eq!((os.id.as_str(), os.version_id.as_str()), ("centos", "6.10"));
        assert_eq!(os.id_like, vec!["rhel"]);
        assert_eq!(os.bootloader, Bootloader::GrubLegacy);
        assert_eq!(os.firmware, Firmware::Uefi);
        assert_eq!(os.init, InitSystem::Sysvinit);
        assert_eq!(os.network, vec![NetStack::Ifcfg]);
        assert_eq!(os.selinux, SelinuxMode::Enforcing);
    }

    /// Systems without os-release, identified from the most precise file
    /// they have.
    #[test]
    fn release_file_fallbacks() {
        type Case<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            (&'a str, &'a [&'a str], &'a str, &'a str, &'a str),
        );
        let ubuntu_lsb = "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=14.04\nDISTRIB_CODENAME=trusty\nDISTRIB_DESCRIPTION=\"Ubuntu 14.04.6 LTS\"\n";
        let cases: &[Case] = &[
            (
                "old Ubuntu: lsb-release before debian_version",
                &[("/etc/lsb-release", ubuntu_lsb), ("/etc/debian_version", "jessie/sid\n")],
                ("ubuntu", &["debian"], "14.04", "Ubuntu 14.04.6 LTS", "/etc/lsb-release"),
            ),
            (
                "Linux Mint",
                &[
                    ("/etc/lsb-release", "DISTRIB_ID=LinuxMint\nDISTRIB_RELEASE=17.3\nDISTRIB_DESCRIPTION=\"Linux Mint 17.3 Rosa\"\n"),
                    ("/etc/debian_version", "jessie/sid\n"),
                ],
                ("linuxmint", &["debian"], "17.3", "Linux Mint 17.3 Rosa", "/etc/lsb-release"),
            ),
            (
                "Debian with lsb-release",
                &[
                    ("/etc/lsb-release", "DISTRIB_ID=Debian\nDISTRIB_RELEASE=7.11\n"),
                    ("/etc/debian_version", "7.11\n"),
                ],
                ("debian", &[], "7.11", "debian 7.11", "/etc/lsb-release"),
            ),
            (
                "RHEL's lsb-release names no distribution",
                &[
                    ("/etc/lsb-release", "LSB_VERSION=base-4.0-amd64:base-4.0-noarch:core-4.0-amd64\n"),
                    ("/etc/redhat-release", "Red Hat Enterprise Linux Server release 6.10 (Santiago)\n"),
                ],
                ("rhel", &["rhel"], "6.10", "Red Hat Enterprise Linux Server release 6.10 (Santiago)", "/etc/redhat-release"),
            ),
            (
                "CentOS 6",
                &[("/etc/redhat-release", "CentOS release 6.10 (Final)\n")],
                ("centos", &["rhel"], "6.10", "CentOS release 6.10 (Final)", "/etc/redhat-release"),
            ),
            (
                "CentOS 7",
                &[("/etc/redhat-release", "CentOS Linux release 7.9.2009 (Core)\n")],
                ("centos", &["rhel"], "7.9.2009", "CentOS Linux release 7.9.2009 (Core)", "/etc/redhat-release"),
            ),
            (
                "Oracle Linux",
                &[("/etc/redhat-release", "Oracle Linux Server release 6.10\n")],
                ("ol", &["rhel"], "6.10", "Oracle Linux Server release 6.10", "/etc/redhat-release"),
            ),
            (
                "Scientific Linux",
                &[("/etc/redhat-release", "Scientific Linux release 6.10 (Carbon)\n")],
                ("scientific", &["rhel"], "6.10", "Scientific Linux release 6.10 (Carbon)", "/etc/redhat-release"),
            ),
            (
                "SLES 11 SP4",
                &[("/etc/SuSE-release", "SUSE Linux Enterprise Server 11 (x86_64)\nVERSION = 11\nPATCHLEVEL = 4\n")],
                ("sles", &["suse"], "11.4", "SUSE Linux Enterprise Server 11 (x86_64)", "/etc/SuSE-release"),
            ),
            (
                "openSUSE 13.2",
                &[("/etc/SuSE-release", "openSUSE 13.2 (x86_64)\nVERSION = 13.2\nCODENAME = Harlequin\n")],
                ("opensuse", &["suse"], "13.2", "openSUSE 13.2 (x86_64)", "/etc/SuSE-release"),
            ),
            (
                "Debian 7 with debian_version only",
                &[("/etc/debian_version", "7.11\n")],
                ("debian", &[], "7.11", "Debian 7.11", "/etc/debian_version"),
            ),
            (
                "os-release wins over everything",
                &[
                    ("/etc/os-release", "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\nPRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\n"),
                    ("/etc/lsb-release", "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=20.04\n"),
                    ("/etc/debian_version", "bookworm/sid\n"),
                ],
                ("ubuntu", &["debian"], "22.04", "Ubuntu 22.04.4 LTS", "/etc/os-release"),
            ),
        ];
        let all = crate::repair::recipe::load(None).unwrap();
        for (name, files, (id, like, version, pretty, source)) in cases {
            let (_d, t) = tree(files);
            let os = detect(&t).unwrap();
            assert_eq!(
                (
                    os.id.as_str(),
                    os.id_like.clone(),
                    os.version_id.as_str(),
                    os.pretty_name.as_str(),
                    os.source.as_str()
                ),
                (
                    *id,
                    like.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    *version,
                    *pretty,
                    *source
                ),
                "{name}"
            );
            let recipe = crate::repair::recipe::select(&all, &os, None).unwrap();
            let want = match *id {
                "ubuntu" | "linuxmint" | "debian" => "debian",
                "sles" | "opensuse" => "suse",
                _ => "rhel",
            };
            assert_eq!(recipe.name, want, "{name}: recipe");
        }
    }

    #[test]
    fn no_os_is_unsupported() {
        let (_d, t) = tree(&[("/Windows/System32/", "")]);
        let err = detect(&t).unwrap_err();
        assert_eq!(
            crate::job::errors::find_coded(&err).map(|c| c.code),
            Some(ErrorCode::UnsupportedOs)
        );
    }
}
