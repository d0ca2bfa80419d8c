//! Helpers for the layout engine's root tests: sparse images, the four
//! reference layouts, and checks by tools ferry did not write.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ferry::cmd::Cmd;
use ferry::layout::Layout;

/// A sparse image file of `mib` MiB in a fresh temp dir.
pub fn sparse_image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("creating image");
    f.set_len(mib * 1024 * 1024).expect("sizing image");
    p
}

pub fn run(c: Cmd) -> String {
    c.run().unwrap_or_else(|e| panic!("{e:#}")).stdout_text()
}

/// `blkid -p -o export` of one partition node, as key/value pairs.
pub fn blkid(dev: &Path) -> std::collections::BTreeMap<String, String> {
    // blkid exits 2 when it finds no signature at all.
    let (status, out) = Cmd::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .expect("running blkid");
    assert!(
        status.success() || status.code() == Some(2),
        "blkid {}: {status}",
        dev.display()
    );
    out.stdout_text()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `sfdisk -J` of a disk: (label, id, [(start sector, sectors, type)]).
pub fn sfdisk(disk: &Path) -> (String, String, Vec<(u64, u64, String)>) {
    let v: serde_json::Value = Cmd::new("sfdisk")
        .arg("-J")
        .arg(disk)
        .json()
        .expect("sfdisk -J");
    let t = &v["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["start"].as_u64().unwrap_or(0),
                        p["size"].as_u64().unwrap_or(0),
                        p["type"].as_str().unwrap_or("").to_ascii_lowercase(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (
        t["label"].as_str().unwrap_or("").to_owned(),
        t["id"].as_str().unwrap_or("").to_ascii_lowercase(),
        parts,
    )
}

pub const BIOS_MBR: &str = r#"
[[disk]]
table = "mbr"
id = "1a2b3c4d"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
uuid = "0e4a0f5c-6a3b-4d7e-8f10-2b3c4d5e6f70"
label = "rootfs"
mount = "/"
partuuid = "1a2b3c4d-01"
bootable = true
"#;

pub const BIOS_GPT: &str = r#"
[[disk]]
table = "gpt"
id = "5b1c7e2a-0d4f-4b6a-9c8e-1f2a3b4c5d6e"
[[disk.partition]]
size = "1MiB"
type = "bios-boot"
partuuid = "6c2d8f3b-1e5a-4c7b-8d9f-2a3b4c5d6e7f"
name = "bios"
[[disk.partition]]
size = "48MiB"
type = "linux"
fs = "ext3"
uuid = "7d3e9a4c-2f6b-4d8c-9eaf-3b4c5d6e7f80"
label = "boot"
mount = "/boot"
partuuid = "8e4fab5d-3a7c-4e9d-afb0-4c5d6e7f8091"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
uuid = "9f50bc6e-4b8d-4fae-b0c1-5d6e7f8091a2"
label = "root"
mount = "/"
partuuid = "a061cd7f-5c9e-4abf-81d2-6e7f8091a2b3"
"#;

pub const UEFI_GPT: &str = r#"
[[disk]]
table = "gpt"
id = "b172de80-6daf-4bc0-92e3-7f8091a2b3c4"
[[disk.partition]]
size = "64MiB"
type = "esp"
fs = "vfat"
uuid = "1234-ABCD"
label = "EFI"
mount = "/boot/efi"
partuuid = "c283ef91-7eb0-4cd1-a3f4-8091a2b3c4d5"
name = "EFI System"
[[disk.partition]]
size = "320MiB"
type = "linux"
fs = "xfs"
uuid = "d394f0a2-8fc1-4de2-b405-91a2b3c4d5e6"
label = "root"
mount = "/"
partuuid = "e4a501b3-90d2-4ef3-8516-a2b3c4d5e6f7"
[[disk.partition]]
size = "rest"
type = "swap"
fs = "swap"
uuid = "f5b612c4-a1e3-4f04-9627-b3c4d5e6f708"
label = "swap"
partuuid = "06c723d5-b2f4-4015-a738-c4d5e6f70819"
"#;

pub const DATA_DISK: &str = r#"
[[disk]]
table = "gpt"
id = "17d834e6-c305-4126-b849-d5e6f708192a"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "ext4"
uuid = "28e945f7-d416-4237-895a-e6f708192a3b"
label = "data"
mount = "/srv/data"
partuuid = "39fa5608-e527-4348-9a6b-f708192a3b4c"
"#;

pub fn layout(text: &str) -> Layout {
    let l = Layout::from_toml(text).expect("parsing a reference layout");
    l.validate().expect("reference layout is valid");
    l
}

/// A loop device over one partition's byte range, made with losetup alone
/// (independent of ferry's own loop handling), detached on drop.
pub struct PartLoop(pub PathBuf);

impl PartLoop {
    pub fn new(img: &Path, start_sector: u64, sectors: u64) -> PartLoop {
        let out = run(Cmd::new("losetup")
            .args(["--find", "--show", "--offset"])
            .arg((start_sector * 512).to_string())
            .arg("--sizelimit")
            .arg((sectors * 512).to_string())
            .arg(img));
        PartLoop(PathBuf::from(out.trim()))
    }
}

impl Drop for PartLoop {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").arg("-d").arg(&self.0).run();
    }
}

/// Loop devices (by name) whose backing file is `img`, after waiting a
/// little for detaches still in flight (the kernel finishes a detach when
/// the last opener, possibly a parallel test's scan, closes the device).
pub fn loops_of(img: &Path) -> Vec<String> {
    for _ in 0..40 {
        if loops_of_now(img).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    loops_of_now(img)
}

pub fn loops_of_now(img: &Path) -> Vec<String> {
    let want = std::fs::canonicalize(img).expect("canonical image path");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .expect("listing /sys/block")
        .flatten()
    {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim_end()) == want {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

pub const XFS_ONLY: &str = r#"
[[disk]]
table = "gpt"
id = "4a0b6719-f638-4459-ab7c-08192a3b4c5d"
[[disk.partition]]
size = "rest"
type = "linux"
fs = "xfs"
uuid = "5b1c782a-0749-456a-bc8d-192a3b4c5d6e"
label = "xroot"
mount = "/"
partuuid = "6c2d893b-185a-467b-8d9e-2a3b4c5d6e7f"
"#;

/// Copy `src` sparsely to `dst` and make `dst` `mib` MiB large: a block
/// copy onto a larger disk.
pub fn copy_to_larger(src: &Path, dst: &Path, mib: u64) {
    run(Cmd::new("cp").arg("--sparse=always").arg(src).arg(dst));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .expect("opening copy");
    f.set_len(mib * 1024 * 1024).expect("growing copy");
}
