//! Root-only tests of file mode on a real debootstrapped Debian tree with
//! every kind of entry added, through a real `ferry serve` and `ferry send
//! --mode file --root --layout` over loopback, compared with a tool ferry
//! did not write: `rsync -aHAXn --checksum --itemize-changes --numeric-ids`
//! lists nothing. Source and target live on a tmpfs the test mounts (the
//! tree is big and the machine's disk is small).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::files::*;
use crate::common::serve::*;

const LAYOUT: &str = r#"
[[disk]]
table = "mbr"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
mount = "/"
"#;

/// Unpack the Debian tree into `dir` and add an entry of every kind.
pub fn debian_tree(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    unpack_debian(dir);
    add_cases(dir);
}

/// A sparse file, hard links, setuid and setgid, a capability, ACLs, user
/// xattrs, a device node, a fifo, a symlink loop, a name with a newline
/// and one with invalid UTF-8.
pub fn add_cases(dir: &Path) {
    sh(&format!(
        r#"cd '{}'
mkdir -p srv/cases/shared srv/cases/sticky
truncate -s 1G srv/cases/sparse.img
printf 'middle' | dd of=srv/cases/sparse.img bs=1 seek=536870912 conv=notrunc status=none
printf 'tail' | dd of=srv/cases/sparse.img bs=1 seek=1073741820 conv=notrunc status=none
echo linked > srv/cases/hl-a
ln srv/cases/hl-a srv/cases/hl-b
ln srv/cases/hl-a srv/hl-c
cp usr/bin/true srv/cases/suid && chmod 4755 srv/cases/suid
cp usr/bin/true srv/cases/sgid && chown 0:50 srv/cases/sgid && chmod 2755 srv/cases/sgid
chmod 1777 srv/cases/sticky
cp usr/bin/true srv/cases/capped && setcap cap_net_raw,cap_net_bind_service+ep srv/cases/capped
echo acl > srv/cases/acl && setfacl -m u:1001:rw,g:1002:r srv/cases/acl
setfacl -d -m g:50:rx srv/cases/shared && setfacl -m u:1001:rwx srv/cases/shared
setfattr -n user.note -v 'kept' srv/cases/hl-a
setfattr -n trusted.mark -v 'also kept' srv/cases/acl
mknod srv/cases/blockdev b 7 200
mknod srv/cases/chardev c 1 3
mkfifo srv/cases/fifo
ln -s loop-b srv/cases/loop-a
ln -s loop-a srv/cases/loop-b
ln -s /nonexistent/target srv/cases/dangling
printf 'newline\n' > "srv/cases/$(printf 'new\nline')"
printf 'bytes\n' > "srv/cases/$(printf 'bad\377name')"
chown -h 1234:4321 srv/cases/loop-a
touch -h -d '2001-02-03 04:05:06.123456789' srv/cases/loop-b
"#,
        dir.display()
    ));
}

pub fn layout_file(dir: &Path) -> PathBuf {
    let p = dir.join("layout.toml");
    std::fs::write(&p, LAYOUT).unwrap();
    p
}

/// `ferry send --mode file` of `src` to the server.
pub fn send_tree(s: &Server, src: &Path, layout: &Path, extra: &[&str]) -> Sent {
    let mut args = vec![
        "--mode".to_owned(),
        "file".to_owned(),
        "--root".to_owned(),
        src.display().to_string(),
        "--layout".to_owned(),
        layout.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    s.send_only(&[], &args)
}

fn tree_root(s: &Server) -> PathBuf {
    s.state.join("trees/tree-0")
}

fn report(sent: &Sent, field: &str) -> u64 {
    sent.report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {}", sent.report))
}

#[test]
fn a_debian_tree_arrives_equal_then_a_rerun_sends_only_what_changed() {
    let fs = Tmpfs::mount("8G");
    let src = fs.path().join("src");
    debian_tree(&src);
    let layout = layout_file(fs.path());
    let server = Server::start(&fs.path().join("state"), &[]);
    let sent = send_tree(&server, &src, &layout, &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    let dst = tree_root(&server);
    assert_eq!(differences(&src, &dst, &[]), "");
    assert_eq!(differences(&src, &dst, &["--delete"]), "");
    // The sparse file is sparse: two pieces of data, not a gigabyte.
    let sparse = std::fs::metadata(dst.join("srv/cases/sparse.img")).unwrap();
    assert_eq!(sparse.len(), 1 << 30);
    assert!(
        sparse.blocks() * 512 <= 64 << 10,
        "{} blocks",
        sparse.blocks()
    );
    let du = run(Command::new("du")
        .args(["-k"])
        .arg(dst.join("srv/cases/sparse.img")));
    let kib: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    assert!(kib <= 64, "du says {kib} KiB");
    // Hard links are links.
    let a = std::fs::metadata(dst.join("srv/cases/hl-a")).unwrap();
    let c = std::fs::metadata(dst.join("srv/hl-c")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (c.ino(), 3));
    let caps = run(Command::new("getcap").arg(dst.join("srv/cases/capped")));
    assert!(
        caps.contains("cap_net_bind_service,cap_net_raw=ep"),
        "{caps}"
    );

    // Nothing changed: nothing but directories is sent.
    let again = send_tree(&server, &src, &layout, &[]);
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(report(&again, "sent_entries"), 0, "{}", again.stderr());
    assert_eq!(report(&again, "removed"), 0);
    assert_eq!(report(&again, "content_bytes"), 0);

    // A few touched, one with new content, one deleted.
    sh(&format!(
        "cd '{}' && touch etc/hostname etc/issue && echo changed >> etc/motd && rm usr/bin/yes",
        src.display()
    ));
    let third = send_tree(&server, &src, &layout, &[]);
    assert!(third.ok(), "{}", third.stderr());
    assert_eq!(report(&third, "sent_entries"), 3, "{}", third.stderr());
    assert_eq!(report(&third, "removed"), 1);
    assert!(
        third.stderr().contains("sent 3 entries"),
        "{}",
        third.stderr()
    );
    assert_eq!(differences(&src, &dst, &["--delete"]), "");
    assert!(!dst.join("usr/bin/yes").exists());

    // A directory becomes a file, a file a directory, a file a symlink;
    // then the new file goes too: each rerun leaves the trees equal.
    sh(&format!(
        "cd '{}' && rm -r usr/share/doc/bash && echo now-a-file > usr/share/doc/bash && rm etc/issue.net && mkdir -p etc/issue.net/d && echo x > etc/issue.net/d/f && rm etc/motd && ln -s issue etc/motd",
        src.display()
    ));
    let fourth = send_tree(&server, &src, &layout, &[]);
    assert!(fourth.ok(), "{}", fourth.stderr());
    assert_eq!(differences(&src, &dst, &["--delete"]), "");
    sh(&format!(
        "cd '{}' && rm usr/share/doc/bash && rm -r etc/issue.net",
        src.display()
    ));
    let fifth = send_tree(&server, &src, &layout, &[]);
    assert!(fifth.ok(), "{}", fifth.stderr());
    assert_eq!(report(&fifth, "removed"), 2, "{}", fifth.stderr());
    assert_eq!(differences(&src, &dst, &["--delete"]), "");
}

#[test]
fn kill_9_of_either_side_then_a_rerun_leaves_the_trees_equal() {
    let fs = Tmpfs::mount("8G");
    let src = fs.path().join("src");
    debian_tree(&src);
    let layout = layout_file(fs.path());
    let state = fs.path().join("state");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Each point: bytes this appliance received before it is killed.
    for (point, bytes) in [(1, 1u64), (2, 40 << 20), (3, 150 << 20)] {
        let mut server = Server::start_on(&state, &addr, &[]);
        let (to, token, fp) = (
            server.data.clone(),
            server.token.clone(),
            server.fingerprint.clone(),
        );
        let (src2, layout2) = (src.clone(), layout.clone());
        let sender = std::thread::spawn(move || {
            send_to(
                &to,
                &token,
                &fp,
                &[],
                &[
                    "--mode",
                    "file",
                    "--root",
                    src2.to_str().unwrap(),
                    "--layout",
                    layout2.to_str().unwrap(),
                    "--retries",
                    "0",
                ],
            )
        });
        wait_for(600, "the appliance to receive data", || {
            sender.is_finished() || server.metric("ferry_received_bytes_total") >= bytes as f64
        });
        server.kill();
        let sent = sender.join().unwrap();
        assert!(
            !sent.ok(),
            "point {point}: the transfer ended before the appliance was killed"
        );
    }
    // And the sender killed in the middle, the appliance left running.
    let server = Server::start_on(&state, &addr, &[]);
    let mut sender = Command::new(FERRY)
        .args(["send", "--mode", "file", "--root"])
        .arg(&src)
        .arg("--layout")
        .arg(&layout)
        .args([
            "--to",
            &server.data,
            "--token",
            &server.token,
            "--fingerprint",
            &server.fingerprint,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(600, "the appliance to receive data", || {
        matches!(sender.try_wait(), Ok(Some(_)))
            || server.metric("ferry_received_bytes_total") >= (60u64 << 20) as f64
    });
    assert!(
        matches!(sender.try_wait(), Ok(None)),
        "the sender ended before it was killed"
    );
    sender.kill().unwrap();
    sender.wait().unwrap();
    let last = send_tree(&server, &src, &layout, &[]);
    assert!(last.ok(), "{}", last.stderr());
    let dst = tree_root(&server);
    assert_eq!(differences(&src, &dst, &["--delete"]), "");
}

#[test]
fn a_deleted_job_forgets_its_tree() {
    let fs = Tmpfs::mount("1G");
    let src = fs.path().join("src");
    sh(&format!(
        "mkdir -p '{0}/etc' && echo a > '{0}/etc/a' && echo b > '{0}/etc/b'",
        src.display()
    ));
    let layout = layout_file(fs.path());
    let server = Server::start(&fs.path().join("state"), &[]);
    let sent = send_tree(&server, &src, &layout, &[]);
    assert!(sent.ok(), "{}", sent.stderr());
    let dst = tree_root(&server);
    assert!(dst.join("etc/a").exists());
    let (status, body) = server.control("POST", "/v1/job/stop");
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.control("POST", "/v1/job/delete");
    assert_eq!(status, 200, "{body}");
    assert!(!dst.exists(), "the tree outlived its job");
    // The fresh job's sender sends the whole tree again.
    let again = send_tree(&server, &src, &layout, &[]);
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(report(&again, "sent_entries"), 2, "{}", again.stderr());
    assert_eq!(differences(&src, &dst, &["--delete"]), "");
}

#[test]
fn excluded_paths_are_neither_sent_nor_removed() {
    let fs = Tmpfs::mount("1G");
    let src = fs.path().join("src");
    sh(&format!(
        "mkdir -p '{0}/var/cache/big/sub' '{0}/etc' '{0}/srv' && echo a > '{0}/var/cache/big/sub/f' && echo b > '{0}/etc/secret' && echo c > '{0}/etc/kept' && echo d > '{0}/srv/data' && mkdir '{0}/srv/secret'",
        src.display()
    ));
    let ex = fs.path().join("Excludes");
    std::fs::create_dir_all(&ex).unwrap();
    // `srv/secret/` excludes the directory only; `/etc/secret` the file.
    std::fs::write(
        ex.join("rsync_excludes_linux.txt"),
        "# system disk\n/var/cache/big/\n/etc/secret\n/srv/secret/\n",
    )
    .unwrap();
    let layout = layout_file(fs.path());
    let server = Server::start(&fs.path().join("state"), &[]);
    let exa = ex.display().to_string();
    let sent = send_tree(&server, &src, &layout, &["--excludes", &exa]);
    assert!(sent.ok(), "{}", sent.stderr());
    assert_eq!(report(&sent, "excluded"), 3, "{}", sent.stderr());
    let dst = tree_root(&server);
    for p in ["var/cache/big", "etc/secret", "srv/secret"] {
        assert!(!dst.join(p).exists(), "{p} was sent");
    }
    assert_eq!(std::fs::read(dst.join("etc/kept")).unwrap(), b"c\n");
    let again = send_tree(&server, &src, &layout, &["--excludes", &exa]);
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(report(&again, "removed"), 0);
    for p in ["var/cache/big", "etc/secret", "srv/secret"] {
        assert!(!dst.join(p).exists(), "{p} was sent by the rerun");
    }
    // The source still has them all.
    for p in ["var/cache/big/sub/f", "etc/secret", "srv/secret"] {
        assert!(src.join(p).exists(), "{p} is gone from the source");
    }
    // Paths sent before they were excluded are not removed by a run that
    // excludes them.
    let other = Server::start(&fs.path().join("state2"), &[]);
    let all = send_tree(&other, &src, &layout, &["--excludes", "/nonexistent"]);
    assert!(all.ok(), "{}", all.stderr());
    let dst2 = tree_root(&other);
    assert!(dst2.join("var/cache/big/sub/f").exists());
    let later = send_tree(&other, &src, &layout, &["--excludes", &exa]);
    assert!(later.ok(), "{}", later.stderr());
    assert_eq!(report(&later, "removed"), 0, "{}", later.stderr());
    for p in ["var/cache/big/sub/f", "etc/secret", "srv/secret"] {
        assert!(dst2.join(p).exists(), "{p} was removed from the target");
    }
    // A malformed list is refused with its file and line.
    std::fs::write(ex.join("rsync_excludes_linux.txt"), "/ok\n/a/../b\n").unwrap();
    let bad = send_tree(&server, &src, &layout, &["--excludes", &exa]);
    assert!(!bad.ok());
    assert!(
        bad.stderr()
            .contains("rsync_excludes_linux.txt line 2: `/a/../b` the path has a `..` component"),
        "{}",
        bad.stderr()
    );
}

/// A job that lays out its target and processes the round: `dir/ferry.toml`
/// with the job token and the target as disk 0.
fn laying_out_server(dir: &Path, target: &Path) -> Server {
    let token = "filemode-layout-token-0123456789";
    let cfg = target_config(dir, token, &[target]);
    let mut server = Server::start_processing(
        &dir.join("state"),
        &["--config", cfg.to_str().unwrap(), "--incremental"],
    );
    server.token = token.to_owned();
    server
}

const MIB: u64 = 1 << 20;

const GPT_LAYOUT: &str = r#"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "1MiB"
type = "bios-boot"
[[disk.partition]]
size = "300MiB"
type = "linux"
fs = "ext4"
uuid = "6d1e5a0c-3c2b-4f7e-8a9d-1b2c3d4e5f60"
label = "boot"
mount = "/boot"
features = ["has_journal", "ext_attr", "resize_inode", "dir_index", "filetype", "needs_recovery", "extent", "flex_bg", "sparse_super", "large_file", "huge_file", "dir_nlink", "extra_isize"]
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
uuid = "7e2f6b1d-4d3c-4a8f-9bae-2c3d4e5f6071"
label = "root"
mount = "/"
"#;

/// The blkid UUID of each partition of an image.
fn uuids(image: &Path) -> Vec<Option<String>> {
    let l = ferry::layout::read(image).expect("reading the target's layout");
    l.partitions.iter().map(|p| p.fs.uuid.clone()).collect()
}

/// The ext features of partition `i` (from 0) of an image, sorted, as
/// dumpe2fs (not ferry) names them.
fn features(image: &Path, i: usize) -> String {
    let start = ferry::layout::table::read(image)
        .expect("the target's table")
        .entries[i]
        .extent
        .start;
    let out = run(Command::new("dumpe2fs")
        .arg("-h")
        .arg(format!("{}?offset={start}", image.display())));
    let mut f: Vec<&str> = out
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .expect("dumpe2fs printed the features")
        .split_whitespace()
        .collect();
    f.sort_unstable();
    f.join(" ")
}

/// The target mounted read-only with the layout's mount points, once the
/// appliance has let it go (a sender with --no-wait leaves as soon as its
/// trees are committed, while the appliance unmounts them).
/// Wait until the appliance has let `image` go (no loop device on it).
fn wait_released(image: &Path) {
    wait_for(60, "the appliance to release the target", || {
        run(Command::new("losetup").arg("-j").arg(image))
            .trim()
            .is_empty()
    });
}

fn mount_target(image: &Path, staging: &Path) -> ferry::layout::MountTree {
    wait_released(image);
    let mut l = ferry::layout::Layout {
        disks: vec![ferry::layout::read(image).expect("reading the target's layout")],
        volumes: Vec::new(),
    };
    let want = ferry::layout::Layout::from_toml(GPT_LAYOUT).unwrap();
    for (p, w) in l.disks[0]
        .partitions
        .iter_mut()
        .zip(&want.disks[0].partitions)
    {
        p.fs.mount = w.fs.mount.clone();
    }
    ferry::layout::MountTree::mount(
        &l,
        &[image.to_owned()],
        staging,
        ferry::layout::MountOptions { read_only: true },
    )
    .expect("mounting the target")
}

#[test]
fn the_target_is_laid_out_with_the_source_uuids_written_and_found_again_by_a_rerun() {
    let fs = Tmpfs::mount("5G");
    let src = fs.path().join("src");
    debian_tree(&src);
    let layout = fs.path().join("layout.toml");
    std::fs::write(&layout, GPT_LAYOUT).unwrap();
    let target = fs.path().join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(2048 * MIB)
        .unwrap();
    let server = laying_out_server(fs.path(), &target);
    // --no-wait: the round is not ended, so nothing repairs the tree and
    // the rerun below writes the same round.
    let sent = send_tree(&server, &src, &layout, &["--no-wait"]);
    assert!(sent.ok(), "{}\n{}", sent.stderr(), keep_log(&server.state));
    assert!(
        sent.stderr().contains("laid out and made /, /boot on "),
        "{}",
        sent.stderr()
    );
    assert_eq!(
        sent.report["trees"].as_array().map(|t| t.len()),
        Some(2),
        "{}",
        sent.report
    );
    // /v1/job shows what the round's trees received.
    let (status, body) = server.control("GET", "/v1/job");
    assert_eq!(status, 200, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    let trees = sent.report["trees"].as_array().unwrap();
    let sum = |field: &str| -> u64 { trees.iter().map(|t| t[field].as_u64().unwrap()).sum() };
    assert_eq!(job["files"]["trees"], 2, "{body}");
    assert_eq!(
        job["files"]["files"].as_u64(),
        Some(sum("sent_files")),
        "{body}"
    );
    assert_eq!(
        job["files"]["bytes"].as_u64(),
        Some(sum("wire_bytes")),
        "{body}"
    );
    // The root tree sent `boot` as an empty mount point, not its content.
    assert_eq!(report(&sent, "mount_points"), 1, "{}", sent.stderr());
    let made = uuids(&target);
    assert_eq!(
        made,
        [
            None,
            Some("6d1e5a0c-3c2b-4f7e-8a9d-1b2c3d4e5f60".to_owned()),
            Some("7e2f6b1d-4d3c-4a8f-9bae-2c3d4e5f6071".to_owned())
        ]
    );
    {
        let staging = fs.path().join("check");
        let m = mount_target(&target, &staging);
        assert_eq!(differences(&src, m.root(), &[]), "");
        m.close().unwrap();
    }
    // /boot is made with the source's features (an ext4 of an older
    // e2fsprogs: neither 64bit nor metadata_csum, which this mke2fs would
    // add by default), the state needs_recovery left out (read once the appliance let
    // the target go); / with mke2fs's.
    assert_eq!(
        features(&target, 1),
        "dir_index dir_nlink ext_attr extent extra_isize filetype flex_bg has_journal huge_file large_file resize_inode sparse_super"
    );
    assert!(
        features(&target, 2).contains("metadata_csum"),
        "{}",
        features(&target, 2)
    );
    let again = send_tree(&server, &src, &layout, &["--no-wait"]);
    assert!(again.ok(), "{}", again.stderr());
    assert!(
        again
            .stderr()
            .contains("found, as an earlier run made them: /, /boot"),
        "{}",
        again.stderr()
    );
    assert_eq!(report(&again, "sent_files"), 0, "{}", again.stderr());
    assert_eq!(uuids(&target), made);
    let staging = fs.path().join("check2");
    let m = mount_target(&target, &staging);
    assert_eq!(differences(&src, m.root(), &[]), "");
    m.close().unwrap();
}

#[test]
fn a_target_too_small_for_the_used_data_is_refused_before_anything_is_written() {
    let fs = Tmpfs::mount("3G");
    let src = fs.path().join("src");
    debian_tree(&src);
    let layout = layout_file(fs.path());
    let target = fs.path().join("target.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&target).unwrap();
        f.set_len(256 * MIB).unwrap();
        // Bytes that a partition table or mkfs would overwrite.
        f.write_all(&[0xa5; 1 << 20]).unwrap();
        f.seek(SeekFrom::End(-(1 << 20))).unwrap();
        f.write_all(&[0x5a; 1 << 20]).unwrap();
    }
    let before = file_hash(&target);
    let server = laying_out_server(fs.path(), &target);
    let sent = send_tree(&server, &src, &layout, &[]);
    assert!(!sent.ok(), "{}", sent.stderr());
    assert_eq!(sent.output.status.code(), Some(3), "{}", sent.stderr());
    let du = run(Command::new("du").args(["-sx", "-B1"]).arg(&src));
    let used: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    let needed = ferry::layout::fit::needed_bytes(&ferry::layout::FsType::Ext4, used);
    let want = format!(
        "FILES_DO_NOT_FIT: The used data of the source's file systems does not fit the target disks with headroom (disk 0: needs {} MiB, the target has 256 MiB (/ (ext4): {} MiB used, {} MiB needed))",
        (needed + 2 * MIB) / MIB,
        used.div_ceil(MIB),
        needed / MIB
    );
    assert!(
        sent.stderr().contains(&want),
        "want {want}\n{}",
        sent.stderr()
    );
    assert_eq!(file_hash(&target), before, "the target was written");
    let (status, body) = server.http("GET", "/livez");
    assert_eq!(status, 200, "the appliance stopped serving: {body}");
}

const UEFI_LAYOUT: &str = r#"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "64MiB"
type = "esp"
fs = "vfat"
uuid = "5A1B-2C3D"
label = "ESP"
mount = "/boot/efi"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
uuid = "8f3a7c2e-5e4d-4b90-8c1f-3d4e5f607182"
mount = "/"
"#;

/// The names under `dir` of the FAT file system at `offset` of `image`,
/// as mtools (not ferry) lists them, one `path` a line, sorted.
fn fat_listing(image: &Path, offset: u64) -> String {
    let out = run(Command::new("mdir")
        .args(["-/", "-b", "-i"])
        .arg(format!("{}@@{offset}", image.display()))
        .arg("::/"));
    let mut lines: Vec<&str> = out.lines().map(|l| l.trim_start_matches(':')).collect();
    lines.sort_unstable();
    lines.join("\n")
}

#[test]
fn a_vfat_tree_reaches_its_fat_partition_and_so_do_its_removals() {
    let fs = Tmpfs::mount("1G");
    let src = fs.path().join("src");
    sh(&format!(
        r#"mkdir -p '{0}/etc' '{0}/boot/efi/EFI/debian' '{0}/boot/efi/EFI/old/fonts'
echo root > '{0}/etc/hostname'
head -c 300000 /dev/urandom > '{0}/boot/efi/EFI/debian/grubx64.efi'
echo 'configfile $prefix/grub.cfg' > '{0}/boot/efi/EFI/debian/grub.cfg'
echo stale > '{0}/boot/efi/EFI/debian/stale.cfg'
echo font > '{0}/boot/efi/EFI/old/fonts/unicode.pf2'
echo note > '{0}/boot/efi/EFI/old/readme.txt'"#,
        src.display()
    ));
    let layout = fs.path().join("layout.toml");
    std::fs::write(&layout, UEFI_LAYOUT).unwrap();
    let target = fs.path().join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    let server = laying_out_server(fs.path(), &target);
    let sent = send_tree(&server, &src, &layout, &["--no-wait"]);
    assert!(sent.ok(), "{}\n{}", sent.stderr(), keep_log(&server.state));
    let esp_extent = ferry::layout::table::read(&target)
        .expect("the target's table")
        .entries[0]
        .extent;
    let esp = esp_extent.start;
    wait_released(&target);
    assert_eq!(
        fat_listing(&target, esp),
        "/EFI/\n/EFI/debian/\n/EFI/debian/grub.cfg\n/EFI/debian/grubx64.efi\n/EFI/debian/stale.cfg\n/EFI/old/\n/EFI/old/fonts/\n/EFI/old/fonts/unicode.pf2\n/EFI/old/readme.txt"
    );
    // A file and a whole directory go from the source; a file changes.
    sh(&format!(
        "rm '{0}/boot/efi/EFI/debian/stale.cfg' && rm -r '{0}/boot/efi/EFI/old' && echo 'set timeout=1' > '{0}/boot/efi/EFI/debian/grub.cfg'",
        src.display()
    ));
    let again = send_tree(&server, &src, &layout, &["--no-wait"]);
    assert!(
        again.ok(),
        "{}\n{}",
        again.stderr(),
        keep_log(&server.state)
    );
    wait_released(&target);
    assert_eq!(
        fat_listing(&target, esp),
        "/EFI/\n/EFI/debian/\n/EFI/debian/grub.cfg\n/EFI/debian/grubx64.efi"
    );
    let cfg = run(Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{esp}", target.display()))
        .arg("::/EFI/debian/grub.cfg"));
    assert_eq!(cfg, "set timeout=1\n");
    let efi = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{esp}", target.display()))
        .arg("::/EFI/debian/grubx64.efi")
        .output()
        .unwrap();
    assert_eq!(
        efi.stdout,
        std::fs::read(src.join("boot/efi/EFI/debian/grubx64.efi")).unwrap()
    );
    // And the FAT file system is sound (checked on a copy of its bytes).
    let copy = fs.path().join("esp.img");
    run(Command::new("dd")
        .arg(format!("if={}", target.display()))
        .arg(format!("of={}", copy.display()))
        .args(["bs=1M", "status=none"])
        .arg(format!("count={}", esp_extent.len / MIB))
        .arg(format!("skip={}", esp / MIB)));
    run(Command::new("fsck.vfat").arg("-n").arg(&copy));
}
