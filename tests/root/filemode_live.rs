//! Root-only test of file mode on a live server: a real GPT disk (BIOS
//! boot, ext4 /boot, swap, ext4 /) on a loop device with its partitions,
//! holding the cached Debian tree, mounted as a running system's tree in
//! a private mount namespace (with proc, sysfs, /dev and a tmpfs on /run),
//! and `ferry send --mode file` without --root run inside it through
//! chroot, against a real `ferry serve` on loopback that lays out its
//! target. The layout the sender found, the target's UUIDs and the trees
//! (compared by rsync, a tool ferry did not write) are checked.

use std::path::Path;
use std::process::Command;

use crate::common::files::*;
use crate::common::serve::*;

const MIB: u64 = 1 << 20;
const DISK_ID: &str = "5A0B1C2D-3E4F-4A5B-8C6D-7E8F90A1B2C3";
const ROOT_PARTUUID: &str = "0F1E2D3C-4B5A-4968-8776-655443322110";
const BOOT_UUID: &str = "3b1f7e2a-5c4d-4e6f-9a8b-0c1d2e3f4a5b";
const SWAP_UUID: &str = "4c2a8f3b-6d5e-4f70-8b9c-1d2e3f4a5b6c";
const ROOT_UUID: &str = "5d3b9a4c-7e6f-4a81-9cad-2e3f4a5b6c7d";
/// What the exclude list beside the sender names.
const EXCLUDED: &str = "usr/share/doc/";

/// The source disk: GPT with a BIOS boot partition, /boot, swap and /,
/// the Debian tree in it, its fstab naming the three by UUID and a
/// fourth file system that is not mounted.
fn source_disk(image: &Path, staging: &Path) -> LoopDisk {
    std::fs::File::create(image)
        .unwrap()
        .set_len(3072 * MIB)
        .unwrap();
    let table = format!(
        "label: gpt\nlabel-id: {DISK_ID}\n\
size=1MiB, type=21686148-6449-6E6F-744E-656564454649\n\
size=256MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot\n\
size=128MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n\
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={ROOT_PARTUUID}, name=root\n"
    );
    let mut child = Command::new("sfdisk")
        .args(["-q"])
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), table.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk");
    let disk = LoopDisk::attach(image);
    run(Command::new("mkfs.ext4").args(["-q", "-U", BOOT_UUID, "-L", "boot", &disk.part(2)]));
    run(Command::new("mkswap").args(["-U", SWAP_UUID, &disk.part(3)]));
    run(Command::new("mkfs.ext4").args(["-q", "-U", ROOT_UUID, "-L", "root", &disk.part(4)]));
    {
        let root = Mounted::new(&disk.part(4), staging, "rw");
        std::fs::create_dir_all(staging.join("boot")).unwrap();
        let boot = Mounted::new(&disk.part(2), &staging.join("boot"), "rw");
        unpack_debian(staging);
        sh(&format!(
            r#"cd '{}'
cat > etc/fstab <<EOF
UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1
UUID={BOOT_UUID} /boot ext4 defaults 0 2
UUID={SWAP_UUID} none swap sw 0 0
LABEL=backup /mnt/backup ext4 noauto 0 0
EOF
mkdir -p boot/notes srv/data
echo 'on the boot file system' > boot/notes/marker
ln boot/notes/marker boot/notes/marker-link
head -c 3000000 /dev/urandom > srv/data/random.bin
ln -s ../data/random.bin srv/data/link
"#,
            staging.display()
        ));
        drop(boot);
        drop(root);
    }
    disk
}

/// What the sender inside the namespace left.
struct LiveRun {
    status: i32,
    dry_layout: String,
    dry_stderr: String,
    stderr: String,
    report: serde_json::Value,
}

/// Mount the source disk as a running system's tree in a private mount
/// namespace, copy the sender onto its tmpfs /run, and run `ferry send
/// --mode file` (a dry run, then the real one) in a chroot of it.
fn send_live(disk: &LoopDisk, tree: &Path, out: &Path, server: &Server) -> LiveRun {
    send_live_by(Path::new(FERRY), false, disk, tree, out, server)
}

/// The same with the sender `ferry` (the released one, say), on a kernel
/// that answers every system call newer than Linux 3.10 with ENOSYS when
/// `old_kernel` (the whole namespace runs under the filter).
fn send_live_by(
    ferry: &Path,
    old_kernel: bool,
    disk: &LoopDisk,
    tree: &Path,
    out: &Path,
    server: &Server,
) -> LiveRun {
    std::fs::create_dir_all(tree).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let script = format!(
        r#"T='{tree}'
mount {root} "$T"
mount {boot} "$T/boot"
mount -t proc proc "$T/proc"
mount -t sysfs sysfs "$T/sys"
mount --bind /dev "$T/dev"
mount -t tmpfs -o mode=0755 tmpfs "$T/run"
cp '{ferry}' "$T/run/ferry"
mkdir "$T/run/Excludes"
printf '{excluded}\n' > "$T/run/Excludes/rsync_excludes_linux.txt"
echo 'only on the tmpfs' > "$T/run/only-on-tmpfs"
: > "$T/run/report.json"
chroot "$T" /run/ferry send --mode file --dry-run --to 127.0.0.1:9 --token x --fingerprint x \
    > '{out}/layout.toml' 2> '{out}/dry.err'
rc=0
chroot "$T" /run/ferry send --mode file --to '{data}' --token '{token}' --fingerprint '{fp}' \
    --no-wait --report /run/report.json 2> '{out}/send.err' || rc=$?
cp "$T/run/report.json" '{out}/report.json'
echo $rc > '{out}/status'
"#,
        tree = tree.display(),
        root = disk.part(4),
        boot = disk.part(2),
        ferry = ferry.display(),
        excluded = EXCLUDED,
        out = out.display(),
        data = server.data,
        token = server.token,
        fp = server.fingerprint,
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-euc", &script])
        .env("RUST_LOG", "warn");
    if old_kernel {
        crate::common::old_kernel::refuse_newer_syscalls(&mut cmd);
    }
    let ran = cmd.output().unwrap();
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    assert!(
        ran.status.success(),
        "the namespace's script: {}\n{}\n{}",
        String::from_utf8_lossy(&ran.stderr),
        read("dry.err"),
        read("send.err")
    );
    LiveRun {
        status: read("status").trim().parse().unwrap(),
        dry_layout: read("layout.toml"),
        dry_stderr: read("dry.err"),
        stderr: read("send.err"),
        report: serde_json::from_str(&read("report.json")).unwrap_or_default(),
    }
}

/// Wait until the appliance has let `image` go: a sender with --no-wait
/// leaves as soon as its trees are committed, and the appliance unmounts
/// them when the session ends.
fn wait_released(image: &Path) {
    wait_for(300, "the appliance to release the target", || {
        run(Command::new("losetup").arg("-j").arg(image))
            .trim()
            .is_empty()
    });
}

/// The target mounted read-only with the mount points the sender found,
/// once the appliance has let it go.
fn mount_target(
    image: &Path,
    found: &ferry::layout::Layout,
    at: &Path,
) -> ferry::layout::MountTree {
    wait_released(image);
    let mut l = ferry::layout::Layout {
        disks: vec![ferry::layout::read(image).expect("reading the target's layout")],
        volumes: Vec::new(),
    };
    for (p, w) in l.disks[0]
        .partitions
        .iter_mut()
        .zip(&found.disks[0].partitions)
    {
        p.fs.mount = w.fs.mount.clone();
    }
    ferry::layout::MountTree::mount(
        &l,
        &[image.to_owned()],
        at,
        ferry::layout::MountOptions { read_only: true },
    )
    .expect("mounting the target")
}

fn is_empty_dir(p: &Path) -> bool {
    p.is_dir() && std::fs::read_dir(p).unwrap().next().is_none()
}

#[test]
fn a_live_servers_disk_is_found_laid_out_and_sent_from_inside_it() {
    need_root!("loop devices, mounts, chroot");
    let fs = Tmpfs::mount("7G");
    let image = fs.path().join("source.img");
    let disk = source_disk(&image, &fs.path().join("staging"));
    let target = fs.path().join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(2048 * MIB)
        .unwrap();
    let token = "filemode-live-token-0123456789ab";
    let cfg = target_config(fs.path(), token, &[&target]);
    let mut server = Server::start_processing(
        &fs.path().join("state"),
        &["--config", cfg.to_str().unwrap(), "--incremental"],
    );
    server.token = token.to_owned();

    let live = send_live(
        &disk,
        &fs.path().join("tree"),
        &fs.path().join("out"),
        &server,
    );

    eprintln!("{}\n{}", live.dry_stderr, live.stderr);
    // The dry run: the disk behind / and /boot, read from the disk itself.
    let found = ferry::layout::Layout::from_toml(&live.dry_layout)
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", live.dry_layout, live.dry_stderr));
    assert_eq!(found.disks.len(), 1, "{}", live.dry_layout);
    let d = &found.disks[0];
    assert_eq!(d.table, ferry::layout::TableType::Gpt);
    assert_eq!(
        d.id.as_deref().map(str::to_uppercase).as_deref(),
        Some(DISK_ID)
    );
    let parts: Vec<(String, Option<&str>, Option<&str>)> = d
        .partitions
        .iter()
        .map(|p| {
            (
                p.fs.kind.to_string(),
                p.fs.uuid.as_deref(),
                p.fs.mount.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("none".to_owned(), None, None),
            ("ext4".to_owned(), Some(BOOT_UUID), Some("/boot")),
            ("swap".to_owned(), Some(SWAP_UUID), None),
            ("ext4".to_owned(), Some(ROOT_UUID), Some("/")),
        ],
        "{}",
        live.dry_layout
    );
    assert_eq!(
        d.partitions[3]
            .partuuid
            .as_deref()
            .map(str::to_uppercase)
            .as_deref(),
        Some(ROOT_PARTUUID)
    );
    assert_eq!(d.partitions[1].fs.label.as_deref(), Some("boot"));
    for (what, text) in [("dry run", &live.dry_stderr), ("send", &live.stderr)] {
        for want in [
            format!("its disks: disk 0 {}\n", disk.dev),
            format!("  /  ext4  {}  ", disk.part(4)),
            format!("  /boot  ext4  {}  256.0 MiB  ", disk.part(2)),
            "/mnt/backup (LABEL=backup) is in fstab but not mounted: it is not sent".to_owned(),
        ] {
            assert!(text.contains(&want), "{what}: want {want:?} in\n{text}");
        }
    }

    // The send: two trees, / and /boot.
    assert_eq!(
        live.status,
        0,
        "{}\n{}",
        live.stderr,
        keep_log(&server.state)
    );
    let trees = live.report["trees"].as_array().expect("the report's trees");
    assert_eq!(trees.len(), 2, "{}", live.report);
    // The root file system is read alone: its one mount point is /boot's.
    assert_eq!(trees[0]["mount_points"], 1, "{}", live.report);
    assert!(
        trees[0]["excluded"].as_u64().unwrap() >= 1,
        "{}",
        live.report
    );
    assert!(
        live.stderr.contains("laid out and made /, /boot on "),
        "{}",
        live.stderr
    );
    let uuids: Vec<Option<String>> = ferry::layout::read(&target)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.fs.uuid.clone())
        .collect();
    assert_eq!(
        uuids,
        [
            None,
            Some(BOOT_UUID.to_owned()),
            Some(SWAP_UUID.to_owned()),
            Some(ROOT_UUID.to_owned())
        ]
    );

    // A change on the server, and the live send again: only it is sent,
    // onto the file systems the first run made.
    {
        let edit = Mounted::new(&disk.part(4), &fs.path().join("edit"), "rw");
        std::fs::write(
            edit.0.join("srv/data/changed.txt"),
            b"written after the first pass\n",
        )
        .unwrap();
        std::fs::remove_file(edit.0.join("srv/data/link")).unwrap();
    }
    let again = send_live(
        &disk,
        &fs.path().join("tree"),
        &fs.path().join("out2"),
        &server,
    );
    assert_eq!(again.status, 0, "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("found, as an earlier run made them: /, /boot"),
        "{}",
        again.stderr
    );
    let trees = again.report["trees"]
        .as_array()
        .expect("the report's trees");
    let counts: Vec<(u64, u64, u64)> = trees
        .iter()
        .map(|t| {
            let n = |f: &str| t[f].as_u64().unwrap();
            (n("sent_entries"), n("sent_files"), n("removed"))
        })
        .collect();
    assert_eq!(counts, [(1, 1, 1), (0, 0, 0)], "{}", again.stderr);

    // The trees: the source mounted again, as it is on its disk.
    let m = mount_target(&target, &found, &fs.path().join("check"));
    let src_dir = fs.path().join("src");
    let src_root = Mounted::new(&disk.part(4), &src_dir, "ro");
    let src_boot = Mounted::new(&disk.part(2), &src_dir.join("boot"), "ro");
    let dst = m.root().to_owned();
    let excluded = format!("/{EXCLUDED}");
    assert_eq!(differences(&src_dir, &dst, &["--exclude", &excluded]), "");
    // Beneath the mount points of proc, sysfs, /dev and the tmpfs the
    // target has what the root file system has there (the Debian tree's
    // static nodes in dev, what debootstrap left in run), not what was
    // mounted on them.
    for p in ["proc", "sys"] {
        assert!(is_empty_dir(&dst.join(p)), "{p} on the target is not empty");
    }
    assert!(dst.join("dev/null").exists());
    assert!(dst.join("run/lock").is_dir());
    assert!(!dst.join("run/only-on-tmpfs").exists());
    assert!(!dst.join("run/ferry").exists());
    // The excluded directory is not on the target, and is on the source.
    assert!(src_dir.join(EXCLUDED).join("dpkg").is_dir());
    assert!(!dst.join(EXCLUDED).exists());
    assert_eq!(
        std::fs::read(dst.join("boot/notes/marker")).unwrap(),
        b"on the boot file system\n"
    );
    assert_eq!(
        file_hash(&dst.join("srv/data/random.bin")),
        file_hash(&src_dir.join("srv/data/random.bin"))
    );
    drop(src_boot);
    drop(src_root);
    m.close().unwrap();
    drop(disk);
}

/// The released sender on a kernel without the system calls newer than
/// Linux 3.10 (no `open_tree` for its private view of a mount, no `statx`,
/// `getrandom`, `clone3`, `rseq`, …) sends the live server's trees as the
/// same binary does on this kernel: both targets hold the source's trees.
#[test]
fn the_released_sender_sends_a_live_server_file_by_file_on_a_linux_3_10_kernel() {
    need_root!("loop devices, mounts, chroot");
    let release = crate::common::release::built();
    let fs = Tmpfs::mount("8G");
    let disk = source_disk(&fs.path().join("source.img"), &fs.path().join("staging"));
    let token = "filemode-old-kernel-token-012345";
    let mut copies = Vec::new();
    for (name, old_kernel) in [("old", true), ("new", false)] {
        let target = fs.path().join(format!("target-{name}.img"));
        std::fs::File::create(&target)
            .unwrap()
            .set_len(2048 * MIB)
            .unwrap();
        let cfg_dir = fs.path().join(format!("cfg-{name}"));
        std::fs::create_dir(&cfg_dir).unwrap();
        let cfg = target_config(&cfg_dir, token, &[&target]);
        let mut server = Server::start_processing(
            &fs.path().join(format!("state-{name}")),
            &["--config", cfg.to_str().unwrap()],
        );
        server.token = token.to_owned();
        let live = send_live_by(
            &release.binary,
            old_kernel,
            &disk,
            &fs.path().join("tree"),
            &fs.path().join(format!("out-{name}")),
            &server,
        );
        assert_eq!(
            live.status,
            0,
            "{name}: {}\n{}",
            live.stderr,
            keep_log(&server.state)
        );
        let trees = live.report["trees"].as_array().expect("the report's trees");
        assert_eq!(trees.len(), 2, "{name}: {}", live.report);
        let found = ferry::layout::Layout::from_toml(&live.dry_layout)
            .unwrap_or_else(|e| panic!("{name}: {e:#}\n{}", live.dry_stderr));
        // Released before the next send: that one's mount namespace is a
        // copy of this one's mounts at the time, and a copy of this
        // target's would hold it until that send ends.
        wait_released(&target);
        copies.push((target, found, server));
    }

    let src_dir = fs.path().join("src");
    let src_root = Mounted::new(&disk.part(4), &src_dir, "ro");
    let src_boot = Mounted::new(&disk.part(2), &src_dir.join("boot"), "ro");
    let excluded = format!("/{EXCLUDED}");
    let mut mounted = Vec::new();
    for (i, (target, found, _server)) in copies.iter().enumerate() {
        let m = mount_target(target, found, &fs.path().join(format!("check-{i}")));
        assert_eq!(
            differences(&src_dir, m.root(), &["--exclude", &excluded]),
            "",
            "copy {i} differs from the source"
        );
        mounted.push(m);
    }
    assert_eq!(
        differences(mounted[0].root(), mounted[1].root(), &[]),
        "",
        "the copies made on 3.10 and on this kernel differ"
    );
    for m in mounted {
        m.close().unwrap();
    }
    drop(src_boot);
    drop(src_root);
    drop(disk);
}
