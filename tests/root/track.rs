//! The change tracker under a real `ferry send --consistency freeze`, on a
//! partitioned source image read through a loop device: ext4 on its first
//! partition, mounted and written all along by a process that fsyncs; raw
//! O_DIRECT writes to its second partition; a buffered file not yet
//! written back when the freeze starts. While the file system is frozen
//! the test copies the whole source image: the target must equal that
//! copy byte for byte, whether a pass read only the chunks the tracker
//! named or, having lost events, the whole disk.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::common::serve::Server;
use crate::consistency::{content, lines_until, run, spawn_freeze, thaw_and_unmount, Writer};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 192 * MIB;
/// Small chunks, so that what a pass reads follows what was written.
const CHUNK: u64 = 256 << 10;

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The source: an image with two partitions on a loop device, ext4 on
/// the first (mounted, 64 MiB of a file in it), data on the second.
struct Source {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
}

impl Source {
    fn make(dir: &Path) -> Source {
        let image = dir.join("source.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(SIZE)
            .unwrap();
        run(Command::new("sfdisk")
            .args(["-q", "--no-reread"])
            .arg(&image)
            .stdin(std::fs::File::open(write_script(dir)).unwrap()));
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let source = Source { image, dev, mnt };
        add_partitions(&source.dev);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(source.part(1)));
        run(Command::new("mount").arg(source.part(1)).arg(&source.mnt));
        let bulk = std::fs::File::create(source.mnt.join("bulk")).unwrap();
        for i in 0..64 {
            bulk.write_all_at(&content("bulk", i * MIB, MIB as usize), i * MIB)
                .unwrap();
        }
        bulk.sync_all().unwrap();
        let raw = std::fs::OpenOptions::new()
            .write(true)
            .open(source.part(2))
            .unwrap();
        for i in 0..32 {
            raw.write_all_at(&content("raw", i * MIB, MIB as usize), i * MIB)
                .unwrap();
        }
        raw.sync_all().unwrap();
        source
    }

    fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }
}

/// The partitions the script makes, in sectors: 128 MiB and 32 MiB.
const PARTS: [(u64, u64); 2] = [(2048, 262144), (264192, 65536)];

fn write_script(dir: &Path) -> PathBuf {
    let script = dir.join("sfdisk.txt");
    std::fs::write(&script, "label: gpt\nsize=128MiB\nsize=32MiB\n").unwrap();
    script
}

/// Tell the kernel the partitions of a loop device (BLKPG: the build
/// machines' loop driver does not scan them) and make their nodes where
/// nothing does.
fn add_partitions(dev: &str) {
    let name = Path::new(dev)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for (n, (start, len)) in PARTS.iter().enumerate() {
        let n = n + 1;
        run(Command::new("addpart").args([
            dev,
            &n.to_string(),
            &start.to_string(),
            &len.to_string(),
        ]));
        let node = format!("{dev}p{n}");
        if !Path::new(&node).exists() {
            let sys = format!("/sys/class/block/{name}p{n}/dev");
            let numbers = std::fs::read_to_string(&sys).unwrap();
            let (major, minor) = numbers.trim().split_once(':').unwrap();
            run(Command::new("mknod").args([&node, "b", major, minor]));
        }
    }
}

fn remove_partitions(dev: &str) {
    for n in 1..=PARTS.len() {
        let _ = Command::new("delpart")
            .args([dev, &n.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        thaw_and_unmount(&self.mnt);
        remove_partitions(&self.dev);
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Raw O_DIRECT writes of 64 KiB across the start of the second
/// partition, on a thread, until stopped.
struct RawWriter {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawWriter {
    fn start(dev: &str) -> RawWriter {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dev)
            .unwrap();
        let (stop, writes) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = {
            let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
            std::thread::spawn(move || {
                const BLOCK: usize = 64 << 10;
                let mut backing = vec![0u8; 2 * BLOCK];
                let skip = backing.as_ptr().align_offset(4096);
                let buf = &mut backing[skip..skip + BLOCK];
                // 4 MiB of the second partition, 64 KiB at a time.
                let blocks = (4 * MIB) / BLOCK as u64;
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    buf.copy_from_slice(&content(&format!("raw{k}"), 0, BLOCK));
                    let at = (k * 7919 % blocks) * BLOCK as u64;
                    file.write_all_at(buf, at).unwrap();
                    writes.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        };
        RawWriter {
            stop,
            writes,
            thread: Some(thread),
        }
    }

    /// Stop, once every write it made has completed; how many it made.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.writes.load(Ordering::Relaxed)
    }
}

impl Drop for RawWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A read-only loop device with partitions over an image; detached when
/// dropped.
struct Attached(String);

impl Attached {
    fn new(image: &Path) -> Attached {
        let out = run(Command::new("losetup")
            .args(["-r", "-f", "--show"])
            .arg(image));
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        add_partitions(&dev);
        Attached(dev)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(format!("{}p1", self.0))
            .stderr(Stdio::null())
            .status();
        remove_partitions(&self.0);
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The first offset where two images differ, by 4 KiB block.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    assert_eq!(fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    let (mut ba, mut bb) = (vec![0u8; 4096], vec![0u8; 4096]);
    let mut at = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return None;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return Some(at);
        }
        at += n as u64;
    }
}

/// Send the source with writers running; stop them in the wait before
/// the freeze, leave a buffered file, copy the source while frozen; the
/// target must equal the copy and check clean. Returns the report.
fn send_while_written(env: &[(&str, &str)]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::make(dir.path());
    let server = Server::start(&dir.path().join("state"), &[]);
    let writer = Writer::start(&[&source.mnt], &dir.path().join("writer.log"));
    let raw = RawWriter::start(&source.part(2));
    let report = dir.path().join("report.json");
    let chunk = CHUNK.to_string();
    let extra = ["--report", report.to_str().unwrap(), "--chunk-size", &chunk];
    let mut hooks = vec![
        ("FERRY_SEND_HOLD_BEFORE_FREEZE_MS", "3000"),
        ("FERRY_SEND_HOLD_FROZEN_MS", "8000"),
    ];
    hooks.extend_from_slice(env);
    let (mut sender, rx) = spawn_freeze(&server, &source.image, &extra, &hooks);
    let (waiting, seen) = lines_until(&rx, "before the freeze");
    assert!(waiting, "the sender never came to its freeze: {seen:?}");
    let raw_writes = raw.stop();
    let fsyncs = writer.stop().len();
    // Written, not synced: the freeze writes it out.
    std::fs::write(source.mnt.join("late"), content("late", 0, 4 << 20)).unwrap();
    let (froze, seen) = lines_until(&rx, "froze");
    assert!(froze, "the sender never froze: {seen:?}");
    let copy = dir.path().join("frozen-copy.img");
    let copy_from = unix_us();
    std::fs::copy(&source.image, &copy).unwrap();
    let copy_to = unix_us();
    let instance =
        Path::new("/sys/kernel/tracing/instances").join(format!("ferry-track-{}", sender.id()));
    let status = sender.wait().unwrap();
    assert!(
        !instance.exists(),
        "the sender removed its trace instance {}",
        instance.display()
    );
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "the sender failed: {seen:?} {rest:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let disk = &report["consistency"]["disks"][0];
    let frozen_at = disk["frozen"][0]["frozen_at_unix_us"].as_u64().unwrap();
    let frozen_us = (disk["frozen"][0]["frozen_seconds"].as_f64().unwrap() * 1e6) as u64;
    assert!(
        copy_from >= frozen_at && copy_to <= frozen_at + frozen_us,
        "the copy ({copy_from}..{copy_to}) was made while frozen ({frozen_at} + {frozen_us} µs)"
    );
    assert!(
        raw_writes > 0 && fsyncs > 0,
        "the writers wrote: {raw_writes} raw, {fsyncs} fsyncs"
    );

    let target = server.disk_path(0);
    if let Some(at) = first_difference(&target, &copy) {
        panic!(
            "the target differs from the frozen copy at byte {at} (chunk {}): {disk}",
            at / CHUNK
        );
    }
    let attached = Attached::new(&target);
    let p1 = format!("{}p1", attached.0);
    run(Command::new("e2fsck").arg("-fn").arg(&p1));
    let at = dir.path().join("target-mnt");
    std::fs::create_dir_all(&at).unwrap();
    run(Command::new("mount").args(["-o", "ro"]).arg(&p1).arg(&at));
    let late = std::fs::read(at.join("late")).unwrap();
    let _ = Command::new("umount").arg(&at).status();
    assert!(
        late == content("late", 0, 4 << 20),
        "the buffered file is in the target"
    );
    eprintln!(
        "{raw_writes} raw writes, {fsyncs} fsyncs; passes: {}",
        disk["passes"]
    );
    report
}

#[test]
fn a_tracked_freeze_reads_what_changed_and_equals_a_frozen_whole_disk_copy() {
    need_root!("loop devices, mounts, FIFREEZE and the kernel's trace buffers");
    let report = send_while_written(&[]);
    let passes = report["consistency"]["disks"][0]["passes"]
        .as_array()
        .unwrap()
        .clone();
    assert!(passes.len() >= 2, "{passes:?}");
    assert_eq!(
        passes[0]["read_bytes"], SIZE,
        "the first pass reads the disk"
    );
    assert_eq!(passes[0]["tracked"], false);
    for p in &passes[1..] {
        assert_eq!(p["tracked"], true, "{p}");
        assert!(p.get("whole_disk_because").is_none(), "{p}");
        assert!(p["read_bytes"].as_u64().unwrap() < SIZE / 4, "{p}");
    }
    let last = passes.last().unwrap();
    assert_eq!(last["frozen"], true);
    // The late file (4 MiB) and the writers' last writes were read.
    assert!(last["read_bytes"].as_u64().unwrap() >= 4 << 20, "{last}");
}

#[test]
fn lost_trace_events_make_a_whole_disk_pass_that_says_why() {
    need_root!("loop devices, mounts, FIFREEZE and the kernel's trace buffers");
    // A buffer of one page per CPU, drained every 3 s: the writers fill it.
    let report = send_while_written(&[
        ("FERRY_TRACK_BUFFER_KB", "4"),
        ("FERRY_TRACK_DRAIN_MS", "3000"),
    ]);
    let passes = report["consistency"]["disks"][0]["passes"]
        .as_array()
        .unwrap()
        .clone();
    let whole: Vec<&serde_json::Value> = passes[1..]
        .iter()
        .filter(|p| p.get("whole_disk_because").is_some())
        .collect();
    assert!(!whole.is_empty(), "a pass lost its window: {passes:?}");
    for p in whole {
        let why = p["whole_disk_because"].as_str().unwrap();
        assert!(
            why.starts_with("the kernel's trace buffer overflowed: ")
                && why.ends_with(" block events lost"),
            "{why}"
        );
        assert_eq!(p["read_bytes"], SIZE, "{p}");
        assert_eq!(p["tracked"], false, "{p}");
    }
}
