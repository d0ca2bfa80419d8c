//! Appliance configuration: a TOML file with every key defaulted.
//!
//! Without `[[disk]]` entries ferry runs in its embedded mode: target disks
//! are sparse files under `<state-dir>/disks`, sized to what the sender
//! announces. With them, each source disk index maps to a target device.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the TLS data port (the sender connects here).
    pub data_listen: String,
    /// Address of the HTTP control port (health, metrics, job API).
    pub control_listen: String,
    /// Where the ledger, the TLS identity, the token and (in embedded mode)
    /// the target disk images live.
    pub state_dir: PathBuf,
    /// The job token the sender must prove it holds.
    pub token: Option<String>,
    /// Most authenticated data sessions at once.
    pub max_sessions: usize,
    /// Most data connections not yet authenticated, in all and from one
    /// address; past either, the oldest is cut for the newest.
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_address: usize,
    /// Embedded mode: most disks and largest disk a sender may announce.
    pub max_embedded_disks: u32,
    pub max_embedded_disk_bytes: u64,
    /// Bearer token of the control API's /v1/job (not the sender's token).
    pub control_token: Option<String>,
    /// Incremental job: Waiting after each round, ready for the next.
    pub incremental: bool,
    /// Process each round's disks (grow, repair, verify) so the migrated
    /// system boots on the cloud; false for a job that only replicates disks.
    pub build: bool,
    /// Boot the repaired disks under QEMU before the handoff (a job that
    /// builds only), through copy-on-write overlays: nothing is written to
    /// the targets. A disk that does not boot puts the job InError with
    /// BOOT_TEST_FAILED.
    pub boot_test: bool,
    /// Longest a boot test may take, in seconds.
    pub boot_test_timeout_secs: u64,
    /// Memory of the test machine, in MiB (at most half the appliance's).
    pub boot_test_memory_mib: u64,
    /// CPUs of the test machine (at most the appliance's).
    pub boot_test_cpus: u32,
    /// `auto` (KVM when /dev/kvm works, else TCG), `kvm` or `tcg`.
    pub boot_test_accel: String,
    /// Repair recipes from this directory instead of the built-in ones
    /// (the files of image-recipes/, with changes or added distributions).
    pub recipes_dir: Option<PathBuf>,
    /// The network map (TOML or JSON, as `ferry repair --network` takes):
    /// per source NIC DHCP or its static addresses kept, and which NIC of
    /// the new instance it becomes. Without it every NIC gets DHCP.
    pub network_map: Option<PathBuf>,
    /// The operator's hooks (TOML or JSON, as `ferry repair --hooks`
    /// takes): scripts run in the migrated system after the repair, or
    /// once at its first boot.
    pub hooks: Option<PathBuf>,
    /// Validity of the job in days (7 to 90).
    pub validity_days: u32,
    /// A Syncing job that has received no data for this many seconds is
    /// shown as stalled (GET /v1/job, the status page, ferry_job_stalled).
    pub stall_after_secs: u64,
    /// The control plane's URL for state-change webhooks, and the HMAC key.
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// The sender's release served at `GET /v1/sender/<file>` (a tarball and
    /// the `SHA256SUMS` naming it, as scripts/release.sh writes them).
    /// Unset: `/usr/lib/ferry/sender` when it exists (the baked image's),
    /// else none. Set: it must hold a release that matches its sum.
    pub sender_dir: Option<PathBuf>,
    /// Production mode: source disk index → target device.
    #[serde(rename = "disk")]
    pub disks: Vec<DiskTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskTarget {
    /// Index of the source disk (the order of `--disk` on the sender).
    pub index: u32,
    /// Target block device (or image file): a path or `/dev/disk/by-id/...`.
    pub target: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_listen: "0.0.0.0:8703".into(),
            control_listen: "0.0.0.0:8080".into(),
            state_dir: PathBuf::from("./ferry-state"),
            token: None,
            max_sessions: 64,
            max_unauthenticated: 256,
            max_unauthenticated_per_address: 64,
            max_embedded_disks: 16,
            max_embedded_disk_bytes: 64 << 40,
            control_token: None,
            incremental: false,
            build: true,
            boot_test: true,
            boot_test_timeout_secs: 600,
            boot_test_memory_mib: 1024,
            boot_test_cpus: 2,
            boot_test_accel: "auto".into(),
            recipes_dir: None,
            network_map: None,
            hooks: None,
            validity_days: crate::job::state::Validity::DEFAULT_DAYS,
            stall_after_secs: crate::job::handle::JobHandle::DEFAULT_STALL_AFTER.as_secs(),
            webhook_url: None,
            webhook_secret: None,
            sender_dir: None,
            disks: Vec::new(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        let mut seen = std::collections::HashSet::new();
        for d in &cfg.disks {
            anyhow::ensure!(
                seen.insert(d.index),
                "disk index {} is mapped twice",
                d.index
            );
        }
        crate::job::state::Validity::days(cfg.validity_days)?;
        anyhow::ensure!(
            cfg.stall_after_secs >= 1,
            "stall_after_secs must be at least 1"
        );
        anyhow::ensure!(
            cfg.boot_test_timeout_secs >= 30,
            "boot_test_timeout_secs must be at least 30 (a boot under emulation takes a minute or more)"
        );
        anyhow::ensure!(
            cfg.boot_test_memory_mib >= 256,
            "boot_test_memory_mib must be at least 256"
        );
        anyhow::ensure!(cfg.boot_test_cpus >= 1, "boot_test_cpus must be at least 1");
        anyhow::ensure!(
            ["auto", "kvm", "tcg"].contains(&cfg.boot_test_accel.as_str()),
            "boot_test_accel must be \"auto\", \"kvm\" or \"tcg\", not {:?}",
            cfg.boot_test_accel
        );
        anyhow::ensure!(
            cfg.webhook_url.is_none() || cfg.webhook_secret.is_some(),
            "webhook_url needs webhook_secret (the HMAC key shared with the control plane)"
        );
        Ok(cfg)
    }

    /// Embedded mode: no target devices configured.
    pub fn embedded(&self) -> bool {
        self.disks.is_empty()
    }

    pub fn target_for(&self, index: u32) -> Option<&Path> {
        self.disks
            .iter()
            .find(|d| d.index == index)
            .map(|d| d.target.as_path())
    }

    pub(crate) fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.redb")
    }

    /// File mode: where the entries of file system `tree` are written.
    pub fn tree_root(&self, tree: u32) -> PathBuf {
        self.state_dir.join("trees").join(format!("tree-{tree}"))
    }

    pub(crate) fn embedded_disk_path(&self, index: u32) -> PathBuf {
        self.state_dir
            .join("disks")
            .join(format!("disk-{index}.img"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_embedded_with_defaults() {
        let c = Config::parse("").unwrap();
        assert!(c.embedded());
        assert_eq!(c.data_listen, "0.0.0.0:8703");
        assert_eq!(c.control_listen, "0.0.0.0:8080");
        assert_eq!(c.stall_after_secs, 30);
    }

    #[test]
    fn production_disks_map_indices() {
        let c = Config::parse(
            "state_dir = \"/var/lib/ferry\"\n[[disk]]\nindex = 0\ntarget = \"/dev/vdb\"\n[[disk]]\nindex = 1\ntarget = \"/dev/disk/by-id/virtio-d2\"\n",
        )
        .unwrap();
        assert!(!c.embedded());
        assert_eq!(
            c.target_for(1),
            Some(Path::new("/dev/disk/by-id/virtio-d2"))
        );
        assert_eq!(c.target_for(2), None);
    }

    #[test]
    fn mistakes_are_refused() {
        let e = Config::parse(
            "[[disk]]\nindex = 0\ntarget = \"/a\"\n[[disk]]\nindex = 0\ntarget = \"/b\"\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "disk index 0 is mapped twice");
        let e = Config::parse("data_listn = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `data_listn`"), "{e}");
        let e = Config::parse("stall_after_secs = 0").unwrap_err();
        assert_eq!(e.to_string(), "stall_after_secs must be at least 1");
    }
}
