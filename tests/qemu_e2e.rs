//! End-to-end migrations: a source server's disks go through a real
//! `ferry serve` (embedded mode, file-backed targets) and `ferry send` (block
//! mode) over loopback, the received system is repaired by `ferry repair`,
//! and the target boots on the cloud's hardware (virtio-blk, virtio-net with
//! DHCP) with its data disk mounted.
//!
//! The appliance's job runner does not yet run the Processing stage (grow,
//! repair, verify) by itself, so the test runs that stage's repair the way an
//! operator would: the received disk on loop devices, its root mounted, and
//! `ferry repair --root` with the source-to-target device map. When the job
//! runner takes it over, this step becomes a wait for `Finished` in /v1/job.
//!
//! The migrations are `#[ignore]`d until `ferry repair` can enter the
//! layout engine's chroot on this branch; with both merged, all three boot
//! (run them with `-- --include-ignored` meanwhile).
//!
//! Needs root and qemu-system-x86_64: `cargo test --release --test qemu_e2e`.

#[path = "common/boot.rs"]
mod boot;
#[path = "common/serve.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use boot::{Hardware, SourceImage};
use ferry::cmd::Cmd;

/// A loop device on an image with its partition nodes (the kernel here scans
/// no partition tables; BLKPG through `partx -a` adds them).
struct Loop {
    dev: String,
    closed: bool,
}

impl Loop {
    fn attach(image: &Path) -> Result<Loop> {
        let out = Cmd::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .run()
            .with_context(|| format!("attaching {} to a loop device", image.display()))?;
        let lo = Loop {
            dev: out.stdout_text().trim().to_owned(),
            closed: false,
        };
        Cmd::new("partx")
            .args(["-a", &lo.dev])
            .run()
            .with_context(|| format!("adding the partitions of {}", lo.dev))?;
        Ok(lo)
    }

    fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }

    fn close(mut self) -> Result<()> {
        self.closed = true;
        let _ = Cmd::new("partx").args(["-d", &self.dev]).run();
        Cmd::new("losetup")
            .args(["-d", &self.dev])
            .run()
            .with_context(|| format!("detaching {}", self.dev))?;
        Ok(())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if !self.closed {
            let _ = Cmd::new("partx").args(["-d", &self.dev]).run();
            if let Err(e) = Cmd::new("losetup").args(["-d", &self.dev]).run() {
                eprintln!("detaching {}: {e:#}", self.dev);
            }
        }
    }
}

struct Mount {
    at: PathBuf,
    closed: bool,
}

impl Mount {
    fn new(dev: &str, at: &Path) -> Result<Mount> {
        std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
        Cmd::new("mount")
            .arg(dev)
            .arg(at)
            .run()
            .with_context(|| format!("mounting {dev} on {}", at.display()))?;
        Ok(Mount {
            at: at.to_owned(),
            closed: false,
        })
    }

    fn umount(&self) -> Result<()> {
        let mut last = None;
        for _ in 0..10 {
            match Cmd::new("umount").arg(&self.at).run() {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(last.expect("ten attempts"))
            .with_context(|| format!("unmounting {}", self.at.display()))
    }

    fn close(mut self) -> Result<()> {
        self.closed = true;
        self.umount()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.closed {
            if let Err(e) = self.umount() {
                eprintln!("{e:#}");
            }
        }
    }
}

/// The partition of `dev`'s disk that fstab (of the source, naming
/// /dev/sdXN) mounts on `mountpoint`.
fn fstab_partition(fstab: &str, mountpoint: &str) -> Option<u32> {
    fstab
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 2 && f[1] == mountpoint)
                .then(|| f[0].strip_prefix("/dev/sda"))
                .flatten()
                .and_then(|n| n.parse().ok())
        })
}

/// The repair of the Processing stage, on the received disks.
fn repair_received(src: &SourceImage, targets: &[PathBuf], name: &str) -> Result<()> {
    let loops: Vec<Loop> = targets
        .iter()
        .map(|t| Loop::attach(t))
        .collect::<Result<_>>()?;
    let boot_disk = &loops[0];
    let mut root_dev = None;
    for n in 1..=8 {
        let p = boot_disk.part(n);
        if !Path::new(&p).exists() {
            break;
        }
        let uuid = Cmd::new("blkid")
            .args(["-s", "UUID", "-o", "value", &p])
            .output()
            .map(|(_, o)| o.stdout_text().trim().to_owned())
            .unwrap_or_default();
        if uuid == src.root_uuid {
            root_dev = Some(p);
        }
    }
    let Some(root_dev) = root_dev else {
        bail!(
            "no partition of the received disk {} holds the source's root UUID {}",
            boot_disk.dev,
            src.root_uuid
        );
    };
    let scratch = tempfile::tempdir().context("creating a mount point")?;
    let root = scratch.path().join("root");
    let root_mount = Mount::new(&root_dev, &root)?;
    let fstab =
        std::fs::read_to_string(root.join("etc/fstab")).context("reading the received fstab")?;
    let boot_mount = match fstab_partition(&fstab, "/boot") {
        Some(n) => Some(Mount::new(&boot_disk.part(n), &root.join("boot"))?),
        None => None,
    };
    let report = boot::artifacts_dir()
        .join("boot")
        .join(format!("{name}.repair.json"));
    let mut repair = Cmd::new(harness::FERRY)
        .arg("repair")
        .arg("--root")
        .arg(&root)
        .arg("--report")
        .arg(&report);
    for (i, lo) in loops.iter().enumerate() {
        let source_name = format!("/dev/sd{}", (b'a' + i as u8) as char);
        repair = repair
            .arg("--disk")
            .arg(format!("{source_name}={}", lo.dev));
    }
    let result = repair.run().context("ferry repair of the received system");
    if let Some(m) = boot_mount {
        m.close()?;
    }
    root_mount.close()?;
    for lo in loops {
        lo.close()?;
    }
    result.map(|_| ())
}

fn migrate(variant: &str) {
    boot::require_root();
    let src = SourceImage::build(variant).expect("building the source image");
    let dir = tempfile::tempdir().expect("scratch directory");
    let server = harness::Server::start(&dir.path().join("state"), &[]);
    let disks: Vec<&Path> = src.disks.iter().map(PathBuf::as_path).collect();
    let sent = server.send(&disks, &[]);
    assert!(sent.ok(), "ferry send failed: {}", sent.stderr());
    let targets: Vec<PathBuf> = (0..src.disks.len() as u32)
        .map(|i| server.disk_path(i))
        .collect();
    for (i, (s, t)) in src.disks.iter().zip(&targets).enumerate() {
        assert_eq!(
            sent.report["disks"][i]["verified"],
            serde_json::Value::Bool(true),
            "disk {i}: {}",
            sent.report
        );
        assert_eq!(
            harness::file_hash(s),
            harness::file_hash(t),
            "disk {i} arrived bit-exact"
        );
    }
    drop(server);

    let name = format!("e2e-{variant}");
    repair_received(&src, &targets, &name).expect("repairing the received system");

    let report = boot::boot(&boot::BootSpec {
        name: format!("{name}-virtio"),
        disks: targets,
        firmware: src.firmware,
        hardware: Hardware::Cloud,
        snapshot: false,
        timeout: boot::DEFAULT_TIMEOUT,
    })
    .expect("running the boot check");
    let m = report.expect_booted();
    assert_eq!(m.root_uuid, src.root_uuid, "root file system");
    assert_eq!(m.hostname, src.hostname, "hostname");
    assert_eq!(
        m.ipv4_addr(),
        Some(boot::DHCP_IPV4),
        "address from DHCP, not the old static one (links: {:?})",
        m.links
    );
    assert_eq!(m.data_uuid, src.data_uuid, "data disk mounted on /data");
}

#[test]
#[ignore = "needs ferry repair entering the layout engine's chroot (both on their branches, not yet on main)"]
fn bios_mbr_server_with_data_disk_migrates_and_boots_on_virtio() {
    migrate("bios-mbr-data");
}

#[test]
#[ignore = "needs ferry repair entering the layout engine's chroot (both on their branches, not yet on main)"]
fn bios_gpt_server_migrates_and_boots_on_virtio() {
    migrate("bios-gpt");
}

#[test]
#[ignore = "needs ferry repair entering the layout engine's chroot (both on their branches, not yet on main)"]
fn uefi_gpt_server_migrates_and_boots_on_virtio() {
    migrate("uefi-gpt");
}

#[test]
fn fstab_partition_reads_old_device_names() {
    let fstab = "# comment /dev/sda9 /boot\n/dev/sda4 / ext4 defaults 0 1\n/dev/sda2 /boot ext4 defaults 0 2\n/dev/sdb1 /data ext4 defaults 0 2\n";
    assert_eq!(fstab_partition(fstab, "/boot"), Some(2));
    assert_eq!(fstab_partition(fstab, "/"), Some(4));
    assert_eq!(
        fstab_partition(fstab, "/data"),
        None,
        "not on the boot disk"
    );
    assert_eq!(fstab_partition(fstab, "/var"), None);
}
