//! Root-only tests of the round's pipeline stages on a real disk image
//! (GPT, ext4 made by mke2fs, checked by e2fsck through loop devices): what
//! resync learns, and that verify catches a byte changed where the
//! pipeline did not write, or after it wrote.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::common::layout::*;
use ferry::cmd::Cmd;
use ferry::disk::{hash_chunks, Disk};
use ferry::job::errors::{describe, ErrorCode};
use ferry::job::ledger::{DiskRecord, Ledger};
use ferry::layout::{self, Safety};
use ferry::pipeline::resync::{self, Scope};
use ferry::pipeline::{verify, Target};

const CHUNK: u32 = 1 << 20;

const LAYOUT: &str = r#"
[[disk]]
table = "gpt"
[[disk.partition]]
size = "40MiB"
type = "linux"
fs = "ext4"
mount = "/"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
mount = "/srv/data"
"#;

/// A received disk: laid out, its every chunk in the ledger as sent.
struct Received {
    _dir: tempfile::TempDir,
    img: PathBuf,
    ledger: Ledger,
    targets: Vec<Target>,
    full: layout::Layout,
    /// (start, end) of the root and the data partition.
    root: (u64, u64),
    data: (u64, u64),
}

fn received() -> Received {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "disk.img", 96);
    let l = layout(LAYOUT);
    let applied = layout::apply(&l.disks[0], &img, Safety::default()).unwrap();
    let size = std::fs::metadata(&img).unwrap().len();
    let ext = layout::desc::plan(&applied, size).unwrap();
    let ledger = Ledger::open(&dir.path().join("ledger.redb")).unwrap();
    let record = DiskRecord {
        size,
        chunk_size: CHUNK,
        fresh: false,
        target: img.display().to_string(),
    };
    ledger.put_disk(0, &record).unwrap();
    let disk = Disk::open_source(&img).unwrap();
    let count = ferry::disk::chunk_count(size, CHUNK);
    let hashes = hash_chunks(&disk, size, CHUNK, 0..count).unwrap();
    let entries: Vec<(u64, [u8; 32])> = hashes
        .into_iter()
        .enumerate()
        .map(|(i, h)| (i as u64, h))
        .collect();
    ledger.commit_chunks(0, &entries).unwrap();
    let targets = vec![Target {
        index: 0,
        record,
        path: img.clone(),
        configured: img.clone(),
        names: vec!["/dev/sda".into()],
    }];
    Received {
        _dir: dir,
        img,
        ledger,
        targets,
        full: applied_layout(&l, &applied),
        root: (ext[0].start, ext[0].end()),
        data: (ext[1].start, ext[1].end()),
    }
}

fn applied_layout(l: &layout::Layout, applied: &layout::DiskLayout) -> layout::Layout {
    let mut full = l.clone();
    full.disks[0] = applied.clone();
    full
}

/// What the repair mounted: the root only.
fn mounted(full: &layout::Layout) -> layout::Layout {
    let mut m = full.clone();
    m.disks[0].partitions[1].fs.mount = None;
    m
}

fn poke(img: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    f.sync_all().unwrap();
}

fn verify_error(r: &Received) -> (ErrorCode, String) {
    let err = verify::run(&r.ledger, &r.targets).expect_err("verify must fail");
    describe(&err)
}

#[test]
fn resync_learns_what_the_repair_wrote_and_verify_holds() {
    need_root!("loop devices, mounts");
    let r = received();
    let scope = Scope::of(&r.targets, &r.full, &mounted(&r.full), &[]).unwrap();
    assert_eq!(
        resync::run(&r.ledger, &r.targets, &scope).unwrap(),
        0,
        "nothing changed yet"
    );
    // The repair writes inside the root file system (its free space's last
    // MiB, so e2fsck still finds it clean) and the table region.
    poke(&r.img, r.root.1 - 4096, b"written by the repair");
    poke(&r.img, 512 * 40, b"boot code");
    assert_eq!(resync::run(&r.ledger, &r.targets, &scope).unwrap(), 2);
    let v = verify::run(&r.ledger, &r.targets).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(v.checked.len(), 2, "{:?}", v.checked);
    assert_eq!(v.digests[0].bytes, 96 << 20);
    // The digest is what `ferry verify --manifest` recomputes from the disk.
    let disk = Disk::open_source(&r.img).unwrap();
    let count = ferry::disk::chunk_count(96 << 20, CHUNK);
    let hashes = hash_chunks(&disk, 96 << 20, CHUNK, 0..count).unwrap();
    assert_eq!(
        v.digests[0].digest,
        ferry::disk::disk_digest(96 << 20, CHUNK, &hashes)
    );
    assert_eq!(
        v.digests[0].digest,
        ferry::disk::read_digest(&disk, 96 << 20, CHUNK).unwrap()
    );
}

#[test]
fn a_byte_changed_where_the_pipeline_does_not_write_fails_verification() {
    need_root!("loop devices, mounts");
    let r = received();
    let scope = Scope::of(&r.targets, &r.full, &mounted(&r.full), &[]).unwrap();
    // A byte of the data file system, which was never mounted: resync does
    // not take it for the repair's.
    let at = r.data.1 - (3 << 20) + 17;
    poke(&r.img, at, &[0x5a]);
    assert_eq!(resync::run(&r.ledger, &r.targets, &scope).unwrap(), 0);
    let chunk = at / u64::from(CHUNK);
    let (code, detail) = verify_error(&r);
    assert_eq!(code, ErrorCode::VerifyFailed);
    let want = format!(
        "disk 0 ({}): chunk {chunk} at offset {} differs from the ledger",
        r.img.display(),
        chunk * u64::from(CHUNK)
    );
    assert!(detail.contains(&want), "{detail}");
}

#[test]
fn a_byte_flipped_after_the_repair_fails_verification() {
    need_root!("loop devices, mounts");
    let r = received();
    let scope = Scope::of(&r.targets, &r.full, &mounted(&r.full), &[]).unwrap();
    poke(&r.img, r.root.1 - 4096, b"written by the repair");
    assert_eq!(resync::run(&r.ledger, &r.targets, &scope).unwrap(), 1);
    // After resync, a flipped byte inside the root's extent.
    let at = r.root.1 - 4096 + 3;
    let f = std::fs::File::open(&r.img).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    poke(&r.img, at, &[b[0] ^ 0x01]);
    let (code, detail) = verify_error(&r);
    assert_eq!(code, ErrorCode::VerifyFailed);
    let chunk = at / u64::from(CHUNK);
    assert!(
        detail.contains(&format!(
            "chunk {chunk} at offset {}",
            chunk * u64::from(CHUNK)
        )),
        "{detail}"
    );
}

#[test]
fn a_dirty_file_system_fails_verification_with_its_checker() {
    need_root!("loop devices, mounts");
    let r = received();
    // lost+found's inode cleared behind the kernel's back: the file system
    // is still recognized, but e2fsck -fn finds it damaged.
    run(ferry::cmd::Cmd::new("debugfs").args([
        "-w".to_owned(),
        "-R".to_owned(),
        "clri <11>".to_owned(),
        format!("{}?offset={}", r.img.display(), r.root.0),
    ]));
    let (code, detail) = verify_error(&r);
    assert_eq!(code, ErrorCode::VerifyFailed);
    assert!(
        detail.contains("is not clean") && detail.contains("e2fsck"),
        "{detail}"
    );
}

/// A target configured by a link whose name ends in a digit, as
/// `/dev/disk/by-id/virtio-target0` is: its partitions are the kernel's
/// nodes of the device it names (`/dev/loop3p1`), not the link's name + `p1`.
#[test]
fn a_target_named_by_a_link_ending_in_a_digit_reaches_its_partitions() {
    need_root!("loop devices, mounts");
    let r = received();
    let out = run(ferry::cmd::Cmd::new("losetup")
        .args(["--find", "--show"])
        .arg(&r.img));
    let dev = PathBuf::from(out.trim());
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = ferry::layout::devices::detach(&self.0);
        }
    }
    let _detach = Detach(dev.clone());
    // Loop devices' names end in a digit: a link whose name does not (as
    // `vdc`'s by-id link may) checks the other way round.
    for name in ["virtio-target0", "virtio-target"] {
        let link = r.img.with_file_name(name);
        std::os::unix::fs::symlink(&dev, &link).unwrap();
        let mut t = r.targets.clone();
        t[0].path = link.clone();
        let v = verify::run(&r.ledger, &t).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(v.checked.len(), 2, "{:?}", v.checked);
        assert!(
            v.checked[0].starts_with(&format!("{}p1 of {}", dev.display(), link.display())),
            "{:?}",
            v.checked
        );
    }
}

/// The data partition as a disk sent while it was mounted and written
/// (`ferry send --consistency none`) holds it: a journal to replay, and
/// the ledger has those bytes as sent.
fn crash_copy_of_the_data_partition(r: &Received) {
    let (start, end) = r.data;
    let lo = run(Cmd::new("losetup").args([
        "--find".to_owned(),
        "--show".to_owned(),
        "--offset".to_owned(),
        start.to_string(),
        "--sizelimit".to_owned(),
        (end - start).to_string(),
        r.img.display().to_string(),
    ]));
    let lo = lo.trim().to_owned();
    let mnt = r.img.with_extension("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Cmd::new("mount").arg(&lo).arg(&mnt));
    for i in 0..20 {
        std::fs::write(mnt.join(format!("f{i}")), vec![i as u8; 10_000]).unwrap();
    }
    std::fs::File::open(mnt.join("f19"))
        .unwrap()
        .sync_all()
        .unwrap();
    // The partition as the kernel has it on its device while mounted.
    let mut copy = vec![0u8; (end - start) as usize];
    std::fs::File::open(&lo)
        .unwrap()
        .read_exact_at(&mut copy, 0)
        .unwrap();
    run(Cmd::new("umount").arg(&mnt));
    run(Cmd::new("losetup").args(["-d", &lo]));
    poke(&r.img, start, &copy);
    let disk = Disk::open_source(&r.img).unwrap();
    let size = r.targets[0].record.size;
    let count = ferry::disk::chunk_count(size, CHUNK);
    let hashes = hash_chunks(&disk, size, CHUNK, 0..count).unwrap();
    let entries: Vec<(u64, [u8; 32])> = (0u64..).zip(hashes).collect();
    r.ledger.commit_chunks(0, &entries).unwrap();
}

#[test]
fn a_journal_a_received_file_system_carries_is_replayed_and_learnt() {
    use ferry::pipeline::mount::replay_journals;
    need_root!("loop devices, mounts");
    let r = received();
    crash_copy_of_the_data_partition(&r);
    let features = run(Cmd::new("dumpe2fs").args([
        "-h".to_owned(),
        format!("{}?offset={}", r.img.display(), r.data.0),
    ]));
    assert!(features.contains("needs_recovery"), "{features}");

    let scratch = r.img.with_extension("scratch");
    let replayed = replay_journals(&r.targets, &scratch).unwrap();
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!((replayed[0].disk, replayed[0].partition), (0, 2));
    assert_eq!(replayed[0].range, r.data);
    assert_eq!(replayed[0].recovery.action, "journal replayed (e2fsck -p)");
    let json = serde_json::to_value(&replayed[0]).unwrap();
    assert_eq!(json["fs"], "ext4", "{json}");
    assert!(
        replay_journals(&r.targets, &scratch).unwrap().is_empty(),
        "replayed once"
    );

    // The replay wrote the data partition, which the repair does not: the
    // scope must name it for the ledger to learn it, or verify fails.
    let mut scope = Scope::of(&r.targets, &r.full, &mounted(&r.full), &[]).unwrap();
    let (code, detail) = verify_error(&r);
    assert_eq!(code, ErrorCode::VerifyFailed, "{detail}");
    assert!(detail.contains("differs from the ledger"), "{detail}");
    scope.add(0, replayed[0].range.0, replayed[0].range.1);
    assert!(resync::run(&r.ledger, &r.targets, &scope).unwrap() > 0);
    let v = verify::run(&r.ledger, &r.targets).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(v.checked.len(), 2, "{:?}", v.checked);
}
