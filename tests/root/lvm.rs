//! Root-only tests of LVM without device-mapper: volume groups made by
//! LVM's own tools (`--driverloaded n`, a private configuration), read by
//! ferry from their on-disk metadata, reached through loop devices, grown
//! onto a larger disk, and a volume group of the same name on another disk
//! of the machine left untouched.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::layout::*;
use ferry::cmd::Cmd;
use ferry::layout::{self, MountTree, Safety};
use ferry::sandbox::Sandbox;

const VG: &str = "ferry-vg";

/// A loop device over a whole image with its partitions added, detached
/// (partitions removed) on drop.
struct DiskLoop(String);

impl DiskLoop {
    fn new(img: &Path) -> DiskLoop {
        let lo = run(Cmd::new("losetup").args(["--find", "--show"]).arg(img))
            .trim()
            .to_owned();
        run(Cmd::new("partx").args(["-a", &lo]));
        DiskLoop(lo)
    }
}

impl Drop for DiskLoop {
    fn drop(&mut self) {
        let _ = Cmd::new("partx").args(["-d", &self.0]).run();
        let _ = Cmd::new("losetup").args(["-d", &self.0]).run();
    }
}

/// LVM's tools with a configuration that sees only `pvs`, without
/// device-mapper.
struct Lvm {
    dir: tempfile::TempDir,
}

impl Lvm {
    fn new(pvs: &[String]) -> Lvm {
        let dir = tempfile::tempdir().unwrap();
        let accept: Vec<String> = pvs.iter().map(|p| format!("\"a|^{p}$|\"")).collect();
        std::fs::write(
            dir.path().join("lvm.conf"),
            format!(
                "devices {{ filter = [ {}, \"r|.*|\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 }}\n\
                 activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}\nbackup {{ backup = 0 archive = 0 }}\n",
                accept.join(", ")
            ),
        )
        .unwrap();
        Lvm { dir }
    }

    fn run(&self, args: &[&str]) -> String {
        run(Cmd::new("lvm")
            .arg(args[0])
            .args(["--driverloaded", "n"])
            .args(&args[1..])
            .env("LVM_SYSTEM_DIR", self.dir.path())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"))
    }

    fn num(&self, args: &[&str]) -> u64 {
        let mut a = args.to_vec();
        a.extend(["--noheadings", "--units", "b", "--nosuffix"]);
        self.run(&a).trim().parse().unwrap()
    }

    /// Bytes (offset in the image, length) of a linear LV on the PV at
    /// `pv_start` of the image.
    fn lv_range(&self, lv: &str, pv: &str, pv_start: u64) -> (u64, u64) {
        let seg = self.run(&[
            "lvs",
            "--noheadings",
            "--segments",
            "-o",
            "seg_pe_ranges",
            &format!("{VG}/{lv}"),
        ]);
        let seg = seg.trim();
        assert!(!seg.contains('\n'), "one segment: {seg}");
        let range = seg.rsplit(':').next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        let pe_start = self.num(&["pvs", "-o", "pe_start", pv]);
        let extent = self.num(&["vgs", "-o", "vg_extent_size", VG]);
        (pv_start + pe_start + a * extent, (b - a + 1) * extent)
    }
}

fn partition_start(img: &Path, n: usize) -> u64 {
    sfdisk(img).2[n - 1].0 * 512
}

/// A disk whose partition 2 is the PV of a VG named ferry-vg with LVs
/// root (ext4 holding `etc/fstab` and `whose`) and swap_1; partition 1 an
/// ext4 /boot.
fn make_disk(dir: &Path, name: &str, whose: &str) -> PathBuf {
    let img = sparse_image(dir, name, 400);
    run(Cmd::new("sfdisk")
        .arg("-q")
        .arg(&img)
        .stdin_bytes(b"label: dos\nstart=2048, size=64MiB, type=83\ntype=8e\n".to_vec()));
    let pv_start = partition_start(&img, 2);
    let boot_uuid;
    {
        let d = DiskLoop::new(&img);
        let pv = format!("{}p2", d.0);
        let lvm = Lvm::new(std::slice::from_ref(&pv));
        lvm.run(&["pvcreate", "-q", "-y", &pv]);
        lvm.run(&["vgcreate", "-q", VG, &pv]);
        lvm.run(&[
            "lvcreate", "-q", "-an", "-Zn", "-y", "-L", "160M", "-n", "root", VG,
        ]);
        lvm.run(&[
            "lvcreate", "-q", "-an", "-Zn", "-y", "-L", "32M", "-n", "swap_1", VG,
        ]);
        let boot = format!("{}p1", d.0);
        run(Cmd::new("mkfs.ext4").args(["-q", "-L", "boot", &boot]));
        boot_uuid = blkid(Path::new(&boot))["UUID"].clone();
        let (off, len) = lvm.lv_range("swap_1", &pv, 0);
        let swap = PartLoop::new(&img, (pv_start + off) / 512, len / 512);
        run(Cmd::new("mkswap").args(["-q", "-L", "swap"]).arg(&swap.0));
        let (off, len) = lvm.lv_range("root", &pv, 0);
        let root = PartLoop::new(&img, (pv_start + off) / 512, len / 512);
        run(Cmd::new("mkfs.ext4")
            .args(["-q", "-L", "root"])
            .arg(&root.0));
        let m = tempfile::tempdir().unwrap();
        run(Cmd::new("mount").arg(&root.0).arg(m.path()));
        std::fs::create_dir_all(m.path().join("etc")).unwrap();
        std::fs::write(
            m.path().join("etc/fstab"),
            format!(
                "/dev/mapper/ferry--vg-root / ext4 errors=remount-ro 0 1\nUUID={boot_uuid} /boot ext4 defaults 0 2\n/dev/mapper/ferry--vg-swap_1 none swap sw 0 0\n"
            ),
        )
        .unwrap();
        std::fs::write(m.path().join("whose"), whose).unwrap();
        run(Cmd::new("umount").arg(m.path()));
    }
    img
}

fn hash(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap())
        .to_hex()
        .to_string()
}

#[test]
fn the_guests_volume_group_is_grown_and_mounted_and_one_of_the_same_name_is_untouched() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().unwrap();
    let guest = make_disk(dir.path(), "guest.img", "guest");
    let other = make_disk(dir.path(), "other.img", "other");
    // The second scratch disk is attached, its PV visible to any scan.
    let other_loop = DiskLoop::new(&other);
    let other_before = hash(&other);

    let target = dir.path().join("target.img");
    copy_to_larger(&guest, &target, 400 + 256);
    let grown = layout::grow(&target, Safety::default()).unwrap();
    let lvm = grown.lvm.as_ref().expect("the PV was grown");
    assert_eq!(lvm.vg, VG);
    assert_eq!(lvm.volume.as_deref(), Some("ferry-vg/root"));
    assert_eq!(lvm.old_bytes, 160 << 20);
    assert_eq!(lvm.moved.len(), 1, "{lvm:?}");
    assert_eq!(lvm.moved[0].0, "swap_1");
    assert!(
        lvm.pv_extents_after >= lvm.pv_extents_before + 63,
        "{lvm:?}"
    );

    // What LVM's own tools read from the grown PV.
    let pv_start = partition_start(&target, 2);
    let pv_len = sfdisk(&target).2[1].1 * 512;
    let part = PartLoop::new(&target, pv_start / 512, pv_len / 512);
    let pv = part.0.to_string_lossy().into_owned();
    let tools = Lvm::new(std::slice::from_ref(&pv));
    let (root_off, root_len) = tools.lv_range("root", &pv, pv_start);
    assert_eq!(root_len, lvm.new_bytes);
    assert_eq!(
        tools.num(&["pvs", "-o", "pv_free", &pv]),
        0,
        "every extent is used"
    );
    let (swap_off, swap_len) = tools.lv_range("swap_1", &pv, pv_start);
    assert_eq!(swap_off, root_off + root_len, "swap follows the root");
    drop(part);
    let swap = PartLoop::new(&target, swap_off / 512, swap_len / 512);
    assert_eq!(
        blkid(&swap.0)["LABEL"],
        "swap",
        "the swap area moved with its volume"
    );
    drop(swap);
    let root = PartLoop::new(&target, root_off / 512, root_len / 512);
    let sb = run(Cmd::new("dumpe2fs").arg("-h").arg(&root.0));
    let field = |k: &str| -> u64 {
        sb.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(field("Block count:") * field("Block size:"), root_len);
    run(Cmd::new("e2fsck").arg("-fn").arg(&root.0));
    drop(root);

    // Mounted by its fstab's names, the chroot sees the names of LVM.
    let staging = dir.path().join("root");
    let tree =
        MountTree::mount_existing(std::slice::from_ref(&target), &staging, Default::default())
            .unwrap();
    assert_eq!(
        std::fs::read_to_string(tree.root().join("whose")).unwrap(),
        "guest"
    );
    let (v, node) = tree
        .volumes()
        .find(|(v, _)| v.name == "root")
        .map(|(v, n)| (v.clone(), n.to_owned()))
        .unwrap();
    assert_eq!(v.fs.mount.as_deref(), Some("/"));
    assert!(
        tree.path_of("/boot").join("lost+found").is_dir(),
        "/boot mounted"
    );
    let rdev = std::fs::metadata(&node).unwrap().rdev();
    // Looked at from inside the sandbox, as the migrated system's tools see it.
    run(Cmd::new("cp")
        .arg("/bin/busybox")
        .arg(tree.root().join("busybox")));
    let session = Sandbox::enter(tree.root(), &tree.dev_nodes()).unwrap();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    for name in ["/dev/mapper/ferry--vg-root", "/dev/ferry-vg/root"] {
        let out = run(session.command("/busybox").args([
            "sh",
            "-c",
            &format!("test -L {name} && stat -L -c '%F %t:%T' {name}"),
        ]));
        assert_eq!(
            out.trim(),
            format!("block special file {major:x}:{minor:x}"),
            "{name} is a link to the root volume's loop"
        );
    }
    run(session
        .command("/busybox")
        .args(["test", "-e", "/dev/mapper/ferry--vg-swap_1"]));
    std::fs::remove_file(tree.root().join("busybox")).unwrap();
    session.close().unwrap();
    tree.close().unwrap();

    drop(other_loop);
    assert_eq!(
        hash(&other),
        other_before,
        "the other disk's VG of the same name is untouched"
    );
    assert!(loops_of(&target).is_empty(), "no loop device is left");
}

#[test]
fn a_striped_system_volume_is_a_blocker_with_its_code() {
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "striped.img", 300);
    run(Cmd::new("sfdisk").arg("-q").arg(&img).stdin_bytes(
        b"label: dos\nstart=2048, size=100MiB, type=8e\nsize=100MiB, type=8e\ntype=83\n".to_vec(),
    ));
    {
        let d = DiskLoop::new(&img);
        let pvs = [format!("{}p1", d.0), format!("{}p2", d.0)];
        let lvm = Lvm::new(&pvs);
        lvm.run(&["pvcreate", "-q", "-y", &pvs[0], &pvs[1]]);
        lvm.run(&["vgcreate", "-q", VG, &pvs[0], &pvs[1]]);
        lvm.run(&[
            "lvcreate", "-q", "-an", "-Zn", "-y", "-i", "2", "-I", "64k", "-L", "64M", "-n", "var",
            VG,
        ]);
        lvm.run(&[
            "lvcreate", "-q", "-an", "-Zn", "-y", "-L", "16M", "-n", "srv", VG,
        ]);
        let root = format!("{}p3", d.0);
        run(Cmd::new("mkfs.ext4").args(["-q", "-L", "root", &root]));
        let m = tempfile::tempdir().unwrap();
        run(Cmd::new("mount").arg(&root).arg(m.path()));
        std::fs::create_dir_all(m.path().join("etc")).unwrap();
        std::fs::write(
            m.path().join("etc/fstab"),
            "LABEL=root / ext4 defaults 0 1\n/dev/ferry-vg/var /var ext4 defaults 0 2\n/dev/mapper/ferry--vg-srv /srv ext4 defaults 0 2\n",
        )
        .unwrap();
        run(Cmd::new("umount").arg(m.path()));
    }
    let described = layout::read_all(std::slice::from_ref(&img)).unwrap();
    let by = |n: &str| {
        described
            .volumes
            .iter()
            .find(|v| v.name == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by("var").refused.as_deref(),
        Some("it is striped over 2 stripes")
    );
    assert!(by("var").place.is_none());
    assert_eq!(by("srv").refused, None);
    assert!(by("srv").place.is_some());

    let report =
        ferry::check::disks(std::slice::from_ref(&img), &[], &dir.path().join("stage")).unwrap();
    let found: Vec<(String, String, String)> = report
        .findings
        .iter()
        .filter(|f| f.code == ferry::job::errors::ErrorCode::LvmUnsupported)
        .map(|f| (f.severity.to_string(), f.code.to_string(), f.detail.clone()))
        .collect();
    assert_eq!(
        found,
        [(
            "blocker".to_owned(),
            "LVM_UNSUPPORTED".to_owned(),
            "logical volume ferry-vg/var (/var): it is striped over 2 stripes".to_owned()
        )]
    );
    assert!(loops_of(&img).is_empty(), "no loop device is left");
}

/// The root LV of `img` as a disk sent while it was mounted and written
/// (`ferry send --consistency none`) holds it: a journal to replay.
/// Returns the LV's bytes in the image.
fn crash_copy_of_the_root_volume(img: &Path) -> (u64, u64) {
    let pv_start = partition_start(img, 2);
    let (off, len) = {
        let d = DiskLoop::new(img);
        let pv = format!("{}p2", d.0);
        Lvm::new(std::slice::from_ref(&pv)).lv_range("root", &pv, 0)
    };
    let at = pv_start + off;
    let lo = PartLoop::new(img, at / 512, len / 512);
    let mnt = img.with_extension("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Cmd::new("mount").arg(&lo.0).arg(&mnt));
    for i in 0..20u8 {
        std::fs::write(mnt.join(format!("f{i}")), vec![i; 10_000]).unwrap();
    }
    std::fs::File::open(mnt.join("f19"))
        .unwrap()
        .sync_all()
        .unwrap();
    // The volume as the kernel has it on its device while mounted.
    let copy = std::fs::read(&lo.0).unwrap();
    run(Cmd::new("umount").arg(&mnt));
    drop(lo);
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .unwrap()
        .write_all_at(&copy, at)
        .unwrap();
    (at, at + len)
}

#[test]
fn a_journal_on_a_logical_volume_is_replayed_before_anything_reads_it() {
    use ferry::job::ledger::DiskRecord;
    use ferry::pipeline::mount::replay_journals;
    use ferry::pipeline::Target;
    need_root!("loop devices, mounts");
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path(), "guest.img", "guest");
    let range = crash_copy_of_the_root_volume(&img);
    let superblock = |img: &Path| {
        run(Cmd::new("dumpe2fs").args([
            "-h".to_owned(),
            format!("{}?offset={}", img.display(), range.0),
        ]))
    };
    assert!(superblock(&img).contains("needs_recovery"));

    let targets = vec![Target {
        index: 0,
        record: DiskRecord {
            size: std::fs::metadata(&img).unwrap().len(),
            chunk_size: 1 << 20,
            fresh: false,
            target: img.display().to_string(),
        },
        path: img.clone(),
        configured: img.clone(),
        names: vec!["/dev/sda".into()],
    }];
    let scratch = dir.path().join("scratch");
    let replayed = replay_journals(&targets, &scratch).unwrap();
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0].volume.as_deref(), Some("ferry-vg/root"));
    assert_eq!((replayed[0].disk, replayed[0].partition), (0, 2));
    assert_eq!(replayed[0].range, range);
    assert_eq!(replayed[0].recovery.action, "journal replayed (e2fsck -p)");
    assert!(!superblock(&img).contains("needs_recovery"));
    assert!(
        replay_journals(&targets, &scratch).unwrap().is_empty(),
        "replayed once"
    );
    // What was fsynced before the copy is there, and the file system is clean.
    let lo = PartLoop::new(&img, range.0 / 512, (range.1 - range.0) / 512);
    run(Cmd::new("e2fsck").arg("-fn").arg(&lo.0));
    let mnt = dir.path().join("check");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Cmd::new("mount").args(["-o", "ro"]).arg(&lo.0).arg(&mnt));
    let f19 = std::fs::read(mnt.join("f19"));
    run(Cmd::new("umount").arg(&mnt));
    assert_eq!(f19.unwrap(), vec![19u8; 10_000]);
}
