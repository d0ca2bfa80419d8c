//! The migrated system's own tools, run in the layout engine's chroot
//! session: /proc, /sys, /run and a private /dev holding the migrated
//! disks' nodes with the by-uuid links grub-mkconfig looks for.

use std::path::Path;

use anyhow::{Context, Result};

use super::devices::DeviceMap;
use super::engine::Runner;
use crate::cmd::Output;
use crate::layout::chroot::{ChrootSession, DevNode};

/// A runner that holds kernel resources until `close`.
pub trait Session: Runner {
    fn close(self: Box<Self>) -> Result<()>;
}

/// The nodes the chroot shows: every migrated disk and volume.
pub fn dev_nodes(devices: &DeviceMap) -> Vec<DevNode> {
    let mut out = Vec::new();
    for d in &devices.disks {
        out.push(DevNode {
            host_path: d.target.clone(),
            uuid: None,
            label: None,
            partuuid: None,
        });
        for v in &d.volumes {
            if v.node == d.target {
                continue;
            }
            out.push(DevNode {
                host_path: v.node.clone(),
                uuid: v.uuid.clone(),
                label: v.label.clone(),
                partuuid: v.partuuid.clone(),
            });
        }
    }
    out
}

struct Chroot(ChrootSession);

impl Runner for Chroot {
    fn run(&self, argv: &[String]) -> Result<Output> {
        let (program, args) = argv.split_first().context("an empty command line")?;
        self.0
            .command(program)
            .args(args)
            // Package scripts run by update-initramfs must not ask questions.
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
    }
}

impl Session for Chroot {
    fn close(self: Box<Self>) -> Result<()> {
        self.0.close()
    }
}

pub fn enter(root: &Path, devices: &DeviceMap) -> Result<Box<dyn Session>> {
    let s = ChrootSession::enter(root, &dev_nodes(devices))?;
    Ok(Box::new(Chroot(s)))
}
