//! The migrated system's own programs (grub-install, update-grub and every
//! script in its /etc/grub.d, update-initramfs or dracut and their hooks)
//! run here, never with the appliance's powers: the migrated server may be
//! compromised, or simply carry a broken hook, and the appliance holds the
//! job's tokens, the TLS key, the control plane's API and every attached
//! disk.
//!
//! Every guest command is a fresh `ferry sandbox` process ([`child`]), which
//!
//! - on cgroup v1, puts its guest in a pids cgroup (a fork bomb ends at
//!   [`PIDS_MAX`]) and a device cgroup that allows only the migrated disks
//!   and a few character devices (on v2 the service's `TasksMax=` and
//!   device policy hold it, [`cgroup`]);
//! - makes new PID, network, IPC and UTS namespaces; its child is PID 1 of
//!   the new PID namespace (when it ends, the kernel kills whatever it
//!   left running) and sees no process of the appliance;
//! - in the child: a new mount namespace, the migrated root
//!   bound onto itself with its own mounts, every one of them `nodev` and
//!   `nosuid`, a fresh /proc of the new PID namespace, a read-only /sys, a
//!   tmpfs /dev holding only the basic character devices and the migrated
//!   disks' nodes (the only place a device node can be opened), a tmpfs
//!   /run; `pivot_root` into it and the old root detached: nothing of the
//!   appliance's file systems, state directory, tokens or keys is left to
//!   reach; a loopback of its own and no other network;
//! - drops every capability but the few that package scripts need on
//!   files ([`confine::KEPT`]: no `CAP_SYS_ADMIN`, `CAP_SYS_CHROOT`,
//!   `CAP_MKNOD`, `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_SYS_PTRACE`,
//!   `CAP_NET_*`, `CAP_SYS_BOOT`, `CAP_BPF`), sets `no_new_privs` and a
//!   seccomp filter that refuses mounts, new namespaces, kexec, modules,
//!   bpf, perf events, ptrace, `process_vm_*`, `open_by_handle_at` and the
//!   keyrings;
//! - runs the program with a clean environment, bounded in time
//!   ([`TIMEOUT`]) and in what it prints ([`OUTPUT_LIMIT`]).
//!
//! Where the kernel lacks one of these, the command is not run:
//! `SANDBOX_UNAVAILABLE`, naming what is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cmd::Cmd;
use crate::layout::dev_nodes::DevNode;

pub(crate) mod cgroup;
pub mod child;
pub(crate) mod confine;
pub(crate) mod mounts;
mod sys;

/// The hidden subcommand that runs one guest command.
pub const COMMAND: &str = "sandbox";

/// How long one guest command may run: a dracut of a large system on one
/// vCPU takes a few minutes.
pub const TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How much of each of a guest command's stdout and stderr is kept (the
/// end of it); the rest is counted and dropped.
pub const OUTPUT_LIMIT: usize = 4 << 20;

/// The most tasks a guest command and all it starts may have at once.
pub const PIDS_MAX: u32 = 1024;

/// The environment a guest program gets, and nothing of the appliance's.
const ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C"),
    ("LC_ALL", "C"),
    ("HOME", "/root"),
    ("TERM", "dumb"),
    // Package scripts run by update-initramfs must not ask questions.
    ("DEBIAN_FRONTEND", "noninteractive"),
];

/// What the `ferry sandbox` process is told: the root, its devices and
/// its bounds. Passed as JSON on its command line (it holds no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub root: PathBuf,
    pub devices: Vec<DevNode>,
    pub timeout_secs: u64,
    pub output_limit: usize,
    pub pids_max: u32,
    pub env: Vec<(String, String)>,
}

/// A migrated root whose programs are run confined. Holds no kernel
/// resource between commands: each command builds its own namespaces and
/// leaves nothing mounted on the appliance.
#[derive(Debug, Clone)]
pub struct Sandbox {
    spec: Spec,
    exe: PathBuf,
}

impl Sandbox {
    /// A sandbox over the migrated root mounted at `root` (with its own
    /// mounts below it), showing `devices` in its /dev under the same names
    /// as on the host, with the /dev/disk/by-* links udev would make.
    pub fn enter(root: &Path, devices: &[DevNode]) -> Result<Sandbox> {
        let root =
            std::fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))?;
        if root == Path::new("/") {
            bail!("refusing a sandbox over the appliance's own /");
        }
        for d in devices {
            let meta = std::fs::metadata(&d.host_path)
                .with_context(|| format!("reading {}", d.host_path.display()))?;
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_block_device() {
                bail!("{} is not a block device", d.host_path.display());
            }
            d.host_path
                .strip_prefix("/dev")
                .with_context(|| format!("{} is not under /dev", d.host_path.display()))?;
        }
        Ok(Sandbox {
            spec: Spec {
                root,
                devices: devices.to_vec(),
                timeout_secs: TIMEOUT.as_secs(),
                output_limit: OUTPUT_LIMIT,
                pids_max: PIDS_MAX,
                env: ENV
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
            exe: exe()?,
        })
    }

    /// The same sandbox with these bounds (tests make them small).
    pub fn with_limits(mut self, timeout: Duration, output_limit: usize, pids_max: u32) -> Self {
        self.spec.timeout_secs = timeout.as_secs().max(1);
        self.spec.output_limit = output_limit;
        self.spec.pids_max = pids_max;
        self
    }

    /// A guest variable added to (or replacing one of) the clean
    /// environment every guest program gets.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.spec.env.retain(|(k, _)| k != key);
        self.spec.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A Cmd that runs `program` (looked up on the guest's PATH) inside
    /// the sandbox; the caller adds arguments and runs it. Its exit status
    /// is the program's; 124 when it ran out of time.
    pub fn command(&self, program: &str) -> Cmd {
        let spec = serde_json::to_string(&self.spec).expect("a sandbox spec is JSON");
        Cmd::new(&self.exe)
            .arg(COMMAND)
            .arg("--spec")
            .arg(spec)
            .arg("--")
            .arg(program)
    }

    pub fn root(&self) -> &Path {
        &self.spec.root
    }

    /// Nothing to release: kept so that callers read as before.
    pub fn close(self) -> Result<()> {
        Ok(())
    }
}

static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Name the ferry executable that runs `ferry sandbox`, for a program that
/// links the library and is not ferry itself (a test harness); the first
/// call wins.
pub fn use_executable(path: &Path) {
    let _ = EXE.set(path.to_owned());
}

/// The ferry executable that runs `ferry sandbox`: the one named with
/// [`use_executable`], else this process's own.
fn exe() -> Result<PathBuf> {
    if let Some(p) = EXE.get() {
        return Ok(p.clone());
    }
    std::env::current_exe().context("finding ferry's own executable for the sandbox")
}
