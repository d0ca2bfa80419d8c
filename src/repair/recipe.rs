//! OS recipes: which steps run for an OS family, and with which tools and
//! files. They are TOML in `image-recipes/` (built into the binary, or read
//! from a directory given at run time), so supporting another distribution
//! whose tools ferry already knows is a recipe, not code.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::detect::OsInfo;
use super::tree::Tree;

/// The recipes shipped with ferry.
const BUILTIN: &[(&str, &str)] = &[
    (
        "debian.toml",
        include_str!("../../image-recipes/debian.toml"),
    ),
    ("rhel.toml", include_str!("../../image-recipes/rhel.toml")),
    ("suse.toml", include_str!("../../image-recipes/suse.toml")),
    (
        "fallback.toml",
        include_str!("../../image-recipes/fallback.toml"),
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[clap(rename_all = "kebab-case")]
pub enum StepName {
    Fstab,
    GrubDefaults,
    Network,
    NetRules,
    CloudInit,
    Selinux,
    Agents,
    Initramfs,
    GrubInstall,
    GrubConfig,
}

impl StepName {
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Fstab => "fstab",
            StepName::GrubDefaults => "grub-defaults",
            StepName::Network => "network",
            StepName::NetRules => "net-rules",
            StepName::CloudInit => "cloud-init",
            StepName::Selinux => "selinux",
            StepName::Agents => "agents",
            StepName::Initramfs => "initramfs",
            StepName::GrubInstall => "grub-install",
            StepName::GrubConfig => "grub-config",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    /// os-release IDs this recipe is for; an ID_LIKE match counts too.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Used when no other recipe matches.
    #[serde(default)]
    pub fallback: bool,
    pub steps: Vec<StepName>,
    #[serde(default)]
    pub kernel_args: KernelArgs,
    /// GRUB variants, first whose tool exists in the tree is used.
    #[serde(default)]
    pub grub: Vec<GrubRecipe>,
    /// initramfs generators, first whose tool exists in the tree is used.
    #[serde(default)]
    pub initramfs: Vec<InitramfsRecipe>,
    #[serde(default)]
    pub cloud_init: CloudInitRecipe,
    #[serde(default)]
    pub agents: AgentsRecipe,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelArgs {
    /// Appended to GRUB_CMDLINE_LINUX (and BLS entries); an argument with the
    /// same key already present is replaced.
    pub add: Vec<String>,
}

impl Default for KernelArgs {
    fn default() -> Self {
        KernelArgs {
            add: [
                "console=tty0",
                "console=ttyS0,115200n8",
                "net.ifnames=0",
                "biosdevname=0",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrubRecipe {
    /// Paths in the tree; the variant applies when one of them exists.
    pub tool: Vec<String>,
    pub defaults: String,
    /// The generated configuration.
    pub config: String,
    pub mkconfig: Vec<String>,
    pub install: String,
    /// Where the GRUB modules of the install live (checked before installing).
    #[serde(default = "default_grub_lib")]
    pub lib: String,
}

fn default_grub_lib() -> String {
    "/usr/lib/grub".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigFormat {
    /// One module name per line (initramfs-tools' `modules`).
    Lines,
    /// A dracut.conf.d drop-in with `add_drivers+=`.
    Dracut,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitramfsRecipe {
    pub tool: Vec<String>,
    /// Where the drivers are named so future kernels get them too.
    pub config: String,
    pub config_format: ConfigFormat,
    /// The image of a kernel; `{kver}` is the kernel version.
    pub image: String,
    /// Regenerates one kernel's image; `{kver}`, `{image}`, `{drivers}`.
    pub regenerate: Vec<String>,
    /// Creates a missing image, when that differs from `regenerate`.
    #[serde(default)]
    pub create: Vec<String>,
    /// Lists an image's files; `{image}`, `{kver}`.
    pub list: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInitRecipe {
    pub datasources: Vec<String>,
}

impl Default for CloudInitRecipe {
    fn default() -> Self {
        CloudInitRecipe {
            datasources: vec!["AliYun".to_owned(), "None".to_owned()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsRecipe {
    /// systemd units of other platforms' guest agents, masked when present.
    pub units: Vec<String>,
}

impl Default for AgentsRecipe {
    fn default() -> Self {
        AgentsRecipe {
            units: [
                "open-vm-tools.service",
                "vmtoolsd.service",
                "vmware-tools.service",
                "vgauth.service",
                "vgauthd.service",
                "vmware-tools-thinprint.service",
                "hv-kvp-daemon.service",
                "hv-vss-daemon.service",
                "hv-fcopy-daemon.service",
                "hv_kvp_daemon.service",
                "hv_vss_daemon.service",
                "hv_fcopy_daemon.service",
                "hypervkvpd.service",
                "hypervvssd.service",
                "hypervfcopyd.service",
                "xe-linux-distribution.service",
                "xe-daemon.service",
                "xenstored.service",
                "xenconsoled.service",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

pub fn parse(name: &str, text: &str) -> Result<Recipe> {
    let r: Recipe = toml::from_str(text).with_context(|| format!("parsing recipe {name}"))?;
    for g in &r.grub {
        if g.mkconfig.is_empty() || g.tool.is_empty() {
            bail!("recipe {name}: a [[grub]] entry needs `tool` and `mkconfig`");
        }
    }
    for i in &r.initramfs {
        if i.regenerate.is_empty() || i.list.is_empty() || i.tool.is_empty() {
            bail!("recipe {name}: an [[initramfs]] entry needs `tool`, `regenerate` and `list`");
        }
    }
    Ok(r)
}

/// The built-in recipes, or those of a directory (`*.toml`).
pub fn load(dir: Option<&Path>) -> Result<Vec<Recipe>> {
    let mut out = Vec::new();
    match dir {
        None => {
            for (n, t) in BUILTIN {
                out.push(parse(n, t)?);
            }
        }
        Some(d) => {
            let mut names: Vec<_> = std::fs::read_dir(d)
                .with_context(|| format!("listing recipes in {}", d.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            names.sort();
            for p in names {
                let t = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                out.push(parse(&p.display().to_string(), &t)?);
            }
        }
    }
    Ok(out)
}

/// The recipe for an OS: its ID first, then its ID_LIKE in order, then the
/// fallback.
pub fn select<'a>(recipes: &'a [Recipe], os: &OsInfo, forced: Option<&str>) -> Result<&'a Recipe> {
    if let Some(name) = forced {
        return recipes.iter().find(|r| r.name == name).with_context(|| {
            let names: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
            format!("no recipe named {name} (there are: {})", names.join(", "))
        });
    }
    for id in std::iter::once(&os.id).chain(os.id_like.iter()) {
        if let Some(r) = recipes.iter().find(|r| r.ids.iter().any(|i| i == id)) {
            return Ok(r);
        }
    }
    recipes
        .iter()
        .find(|r| r.fallback)
        .context("no recipe matches and none is marked as the fallback")
}

/// The first variant whose tool exists in the tree.
pub(crate) fn pick<'a, T>(
    tree: &Tree,
    variants: &'a [T],
    tool: impl Fn(&T) -> &[String],
) -> Option<&'a T> {
    variants
        .iter()
        .find(|v| tool(v).iter().any(|p| tree.exists(p)))
}

/// Fill `{key}` placeholders of a command template.
pub(crate) fn expand(template: &[String], vars: &[(&str, &str)]) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            let mut s = a.clone();
            for (k, v) in vars {
                s = s.replace(&format!("{{{k}}}"), v);
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repair::detect::*;

    fn os(id: &str, like: &[&str]) -> OsInfo {
        OsInfo {
            id: id.into(),
            id_like: like.iter().map(|s| s.to_string()).collect(),
            version_id: String::new(),
            pretty_name: String::new(),
            source: String::new(),
            kernels: vec![],
            bootloader: Bootloader::Grub2,
            firmware: Firmware::Bios,
            init: InitSystem::Systemd,
            network: vec![],
            cloud_init: false,
            selinux: SelinuxMode::Absent,
        }
    }

    #[test]
    fn builtin_recipes_parse_and_select() {
        let all = load(None).unwrap();
        let cases = [
            ("debian", &[][..], "debian"),
            ("ubuntu", &["debian"][..], "debian"),
            ("centos", &["rhel", "fedora"][..], "rhel"),
            ("rocky", &["rhel", "centos", "fedora"][..], "rhel"),
            ("almalinux", &[][..], "rhel"),
            ("ol", &[][..], "rhel"),
            ("anolis", &[][..], "rhel"),
            ("alinux", &[][..], "rhel"),
            ("fedora", &[][..], "rhel"),
            ("sles", &[][..], "suse"),
            ("opensuse-leap", &["suse", "opensuse"][..], "suse"),
            ("some-derivative", &["ubuntu"][..], "debian"),
            ("gentoo", &[][..], "fallback"),
        ];
        for (id, like, want) in cases {
            assert_eq!(
                select(&all, &os(id, like), None).unwrap().name,
                want,
                "{id}"
            );
        }
        let err = select(&all, &os("debian", &[]), Some("nope")).unwrap_err();
        assert_eq!(
            format!("{err}"),
            "no recipe named nope (there are: debian, rhel, suse, fallback)"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse(
            "x.toml",
            "name='x'\ndescription='x'\nsteps=[]\ncolour='red'\n",
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `colour`"),
            "{err:#}"
        );
        let err = parse("x.toml", "name='x'\ndescription='x'\nsteps=['reboot']\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown variant `reboot`"),
            "{err:#}"
        );
    }

    #[test]
    fn a_recipe_directory_adds_a_distribution_without_code() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("debian.toml"), BUILTIN[0].1).unwrap();
        std::fs::write(
            d.path().join("gentoo.toml"),
            "name = \"gentoo\"\ndescription = \"Gentoo with dracut\"\nids = [\"gentoo\"]\nsteps = [\"fstab\", \"initramfs\"]\n\n\
             [[initramfs]]\ntool = [\"/usr/bin/dracut\"]\nconfig = \"/etc/dracut.conf.d/virtio.conf\"\nconfig_format = \"dracut\"\n\
             image = \"/boot/initramfs-{kver}.img\"\nregenerate = [\"dracut\", \"-f\", \"{image}\", \"{kver}\"]\nlist = [\"lsinitrd\", \"{image}\"]\n",
        )
        .unwrap();
        let all = load(Some(d.path())).unwrap();
        let r = select(&all, &os("gentoo", &[]), None).unwrap();
        assert_eq!(r.name, "gentoo");
        assert_eq!(r.steps, [StepName::Fstab, StepName::Initramfs]);
        assert_eq!(r.initramfs[0].config_format, ConfigFormat::Dracut);
        assert_eq!(
            select(&all, &os("ubuntu", &["debian"]), None).unwrap().name,
            "debian"
        );
        let err = select(&all, &os("arch", &[]), None).unwrap_err();
        assert_eq!(
            format!("{err}"),
            "no recipe matches and none is marked as the fallback"
        );
    }

    #[test]
    fn expand_placeholders() {
        let t: Vec<String> = [
            "dracut",
            "-f",
            "--add-drivers",
            "{drivers}",
            "{image}",
            "{kver}",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            expand(
                &t,
                &[
                    ("drivers", "virtio_blk nvme"),
                    ("image", "/boot/initramfs-5.14.img"),
                    ("kver", "5.14")
                ]
            ),
            [
                "dracut",
                "-f",
                "--add-drivers",
                "virtio_blk nvme",
                "/boot/initramfs-5.14.img",
                "5.14"
            ]
        );
    }
}
