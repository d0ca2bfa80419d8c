//! The migrated system's own tools, run in the sandbox (`crate::sandbox`):
//! its own namespaces over the migrated root, a private /dev holding the
//! migrated disks' nodes with the by-uuid links grub-mkconfig looks for,
//! and none of the appliance's powers.

use std::path::Path;

use anyhow::{Context, Result};

use super::devices::DeviceMap;
use super::engine::{Bounded, GuestRunner};
use crate::cmd::Output;
use crate::job::errors::{coded, ErrorCode};
use crate::layout::dev_nodes::DevNode;
use crate::sandbox::{child, Sandbox};

/// A runner that holds kernel resources until `close`.
pub trait Session: GuestRunner {
    fn close(self: Box<Self>) -> Result<()>;
}

/// The nodes the sandbox shows: every migrated disk and volume.
pub fn dev_nodes(devices: &DeviceMap) -> Vec<DevNode> {
    let mut out = Vec::new();
    for d in &devices.disks {
        out.push(DevNode {
            host_path: d.target.clone(),
            uuid: None,
            label: None,
            partuuid: None,
            aliases: Vec::new(),
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
                aliases: v.aliases.clone(),
            });
        }
    }
    out
}

struct Confined(Sandbox);

impl GuestRunner for Confined {
    fn run(&self, argv: &[String]) -> Result<Output> {
        let (program, args) = argv.split_first().context("an empty command line")?;
        let cmd = self.0.command(program).args(args);
        let (status, out) = cmd.output()?;
        match status.code() {
            Some(0) => Ok(out),
            Some(child::UNAVAILABLE) => Err(coded(
                ErrorCode::SandboxUnavailable,
                format!(
                    "`{}` was not run: {}",
                    argv.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )),
            _ => {
                let tail = crate::cmd::tail(&out.stderr, &out.stdout);
                anyhow::bail!(
                    "`{}` failed in the migrated system ({status}): {tail}",
                    argv.join(" ")
                )
            }
        }
    }

    fn run_bounded(&self, argv: &[String], timeout: std::time::Duration) -> Result<Bounded> {
        let (program, args) = argv.split_first().context("an empty command line")?;
        let sandbox = self.0.clone().with_limits(
            timeout,
            crate::sandbox::OUTPUT_LIMIT,
            crate::sandbox::PIDS_MAX,
        );
        let (status, output) = sandbox.command(program).args(args).output()?;
        let code = status.code();
        if code == Some(child::UNAVAILABLE) {
            return Err(coded(
                ErrorCode::SandboxUnavailable,
                format!(
                    "`{}` was not run: {}",
                    argv.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            ));
        }
        // 124 is also a status a program may choose: the keeper's own line
        // says it was the timeout.
        let timed_out = code == Some(child::TIMED_OUT)
            && String::from_utf8_lossy(&output.stderr)
                .contains("ferry sandbox: the command ran out of its");
        Ok(Bounded {
            code,
            timed_out,
            output,
        })
    }
}

impl Session for Confined {
    fn close(self: Box<Self>) -> Result<()> {
        self.0.close()
    }
}

pub fn enter(root: &Path, devices: &DeviceMap) -> Result<Box<dyn Session>> {
    let s = Sandbox::enter(root, &dev_nodes(devices))?;
    Ok(Box::new(Confined(s)))
}
