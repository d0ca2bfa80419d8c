//! `ferry layout ...` subcommands: a thin layer over the library.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::layout::desc::Layout;
use crate::layout::safety::Safety;
use crate::layout::tree::{clean_leftovers, fill_mount_points, MountOptions, MountTree};

/// Operate on partition tables and file systems of target disks.
///
/// A layout is a TOML (or JSON) description of disks: partition table
/// (gpt or mbr), partitions in order with size ("512MiB", "rest"), type
/// (bios-boot, esp, linux, swap, lvm, msdata), file system (ext4, ext3,
/// xfs, vfat, swap, none) with uuid, label, mount point and, for ext2/3/4,
/// the features to make it with. `read` prints
/// one for an existing disk; `apply` lays one out.
#[derive(Debug, clap::Subcommand)]
pub enum LayoutCmd {
    /// Lay a layout out on image files or block devices (destroys their content).
    ///
    /// Partitions are aligned to 1 MiB, file systems made with the given
    /// UUIDs and labels, the partition table written last. Prints the
    /// layout with every id it had to choose filled in.
    ///
    /// Example: ferry layout apply --layout server.toml /dev/vdb
    Apply {
        /// The layout (TOML or JSON; "-" reads stdin).
        #[arg(long, short)]
        layout: PathBuf,
        /// One target per disk of the layout, in order.
        #[arg(required = true)]
        targets: Vec<PathBuf>,
        /// Write even to a target that is mounted or in use (never the system disk).
        #[arg(long)]
        force: bool,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Print the layout of existing disks (image files or block devices).
    ///
    /// Partition table, partition sizes and types, and each file system's
    /// type, UUID and label as blkid finds them (and an ext file system's
    /// features as dumpe2fs lists them). With --mounts, mount
    /// points come from the root's /etc/fstab (file systems are mounted
    /// read-only for a moment).
    ///
    /// Example: ferry layout read --mounts disk0.img disk1.img
    Read {
        #[arg(required = true)]
        disks: Vec<PathBuf>,
        /// Fill in mount points from the root file system's /etc/fstab.
        #[arg(long)]
        mounts: bool,
        /// With --mounts: the name the source system knew disk N by (given
        /// once per disk, in order), so that fstab lines naming `/dev/sda2`
        /// find partition 2 of the first disk.
        #[arg(long = "source-name", value_name = "DEV", requires = "mounts")]
        source_names: Vec<String>,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Mount disks as a tree under a staging directory.
    ///
    /// Root first, then by mount-point depth; image files go through loop
    /// devices with their partitions added by BLKPG. FAT partitions (ESP)
    /// are not mounted (the library reaches them in-process). Leftovers of
    /// an interrupted earlier run on the same staging directory and images
    /// are removed first. With a command after `--`, it runs with the tree
    /// mounted (working directory: the tree's root) and everything is
    /// unmounted after it; without, the tree stays until SIGINT/SIGTERM.
    ///
    /// Example: ferry layout mount --staging /mnt/t disk.img -- ls etc
    Mount {
        /// The layout; without it the disks' own layout is read (mount points from fstab).
        #[arg(long, short)]
        layout: Option<PathBuf>,
        /// Where "/" of the layout is mounted (created if missing).
        #[arg(long)]
        staging: PathBuf,
        #[arg(long)]
        read_only: bool,
        /// One target per disk, in order.
        #[arg(required = true)]
        targets: Vec<PathBuf>,
        /// A command to run with the tree mounted.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Unmount and detach what a killed `mount` left on a staging directory and images.
    Umount {
        #[arg(long)]
        staging: PathBuf,
        targets: Vec<PathBuf>,
    },
    /// Grow a disk copied onto a larger one into its full size.
    ///
    /// Moves the GPT backup header to the end, extends the last partition
    /// when it holds ext3/ext4/xfs, and grows that file system (resize2fs;
    /// xfs_growfs while mounted). MBR disks likewise within 2 TiB. Running
    /// it again changes nothing.
    ///
    /// Example: ferry layout grow /dev/vdb
    Grow {
        disk: PathBuf,
        /// Grow even a disk that is mounted or in use (never the system disk).
        #[arg(long)]
        force: bool,
    },
}

fn load(path: &std::path::Path) -> Result<Layout> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the layout from stdin")?;
        Layout::parse(&s)
    } else {
        Layout::load(path)
    }
}

fn print(l: &Layout, json: bool) -> Result<()> {
    if json {
        println!("{}", l.to_json()?);
    } else {
        print!("{}", l.to_toml()?);
    }
    Ok(())
}

pub fn run(cmd: LayoutCmd) -> Result<()> {
    match cmd {
        LayoutCmd::Apply {
            layout,
            targets,
            force,
            json,
        } => {
            let l = load(&layout)?;
            let out = crate::layout::apply_all(&l, &targets, Safety { force })?;
            print(&out, json)
        }
        LayoutCmd::Read {
            disks,
            mounts,
            source_names,
            json,
        } => {
            let mut l = crate::layout::read_all(&disks)?;
            if mounts && source_names.is_empty() {
                fill_mount_points(&mut l, &disks)?;
            } else if mounts {
                let names: Vec<Vec<String>> =
                    source_names.iter().map(|n| vec![n.clone()]).collect();
                crate::layout::tree::fill_mount_points_named(&mut l, &disks, &names)?;
            }
            print(&l, json)
        }
        LayoutCmd::Mount {
            layout,
            staging,
            read_only,
            targets,
            command,
        } => {
            let opts = MountOptions { read_only };
            let tree = match layout {
                Some(p) => MountTree::mount(&load(&p)?, &targets, &staging, opts)?,
                None => MountTree::mount_existing(&targets, &staging, opts)?,
            };
            println!("mounted {}", tree.root().display());
            for n in tree.dev_nodes() {
                println!(
                    "  {} uuid={} label={}",
                    n.host_path.display(),
                    n.uuid.as_deref().unwrap_or("-"),
                    n.label.as_deref().unwrap_or("-")
                );
            }
            let res = if let Some((prog, args)) = command.split_first() {
                crate::cmd::Cmd::new(prog)
                    .args(args)
                    .current_dir(tree.root())
                    .run()
                    .map(|out| print!("{}", out.stdout_text()))
            } else {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                wait_for_signal()
            };
            let closed = tree.close();
            res?;
            closed
        }
        LayoutCmd::Umount { staging, targets } => {
            let l = clean_leftovers(&staging, &targets)?;
            println!(
                "unmounted {}, detached {}",
                l.unmounted.len(),
                l.detached.len()
            );
            Ok(())
        }
        LayoutCmd::Grow { disk, force } => {
            let r = crate::layout::grow(&disk, Safety { force })?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
    }
}

/// Block until SIGINT, SIGTERM or SIGHUP.
fn wait_for_signal() -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .context("blocking signals")?;
    let sig = set.wait().context("waiting for a signal")?;
    tracing::info!(signal = %sig, "unmounting");
    if sig == Signal::SIGHUP {
        bail!("hung up");
    }
    Ok(())
}
