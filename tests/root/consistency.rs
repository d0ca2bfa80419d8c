//! A consistent copy of a running server's file systems: a loop-mounted
//! ext4 and a loop-mounted xfs, written all along by a process that
//! creates, appends to and fsyncs files, sent by a real `ferry send
//! --consistency freeze` to a real `ferry serve`. The copies must check
//! clean (`e2fsck -fn`; `xfs_repair -n` once the log a freeze leaves is
//! replayed) and hold every file the writer had fsynced before the final
//! freeze, with its content. A sender killed
//! (SIGKILL) while the file systems are frozen leaves them thawed, and a
//! freeze longer than --max-freeze is ended and reported. Needs root
//! (loop devices, mounts, FIFREEZE); without it the tests say so and check
//! nothing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::serve::{Server, FERRY};

pub(crate) fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A file system made by its mkfs in an image file, mounted through a loop
/// device; thawed (in case a failed test left it frozen) and unmounted
/// when dropped.
pub(crate) struct LoopFs {
    pub(crate) image: PathBuf,
    pub(crate) mnt: PathBuf,
}

impl LoopFs {
    pub(crate) fn make(dir: &Path, fstype: &str, mib: u64, mount_opts: &str) -> LoopFs {
        let image = dir.join(format!("{fstype}.img"));
        let mnt = dir.join(format!("mnt-{fstype}"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        match fstype {
            "ext4" => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)),
            _ => run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&image)),
        };
        run(Command::new("mount")
            .args(["-o", &format!("loop{mount_opts}")])
            .arg(&image)
            .arg(&mnt));
        LoopFs { image, mnt }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        thaw_and_unmount(&self.mnt);
    }
}

/// Thaw a mount point (in case a failed test left it frozen) and unmount it.
pub(crate) fn thaw_and_unmount(mnt: &Path) {
    let _ = Command::new("fsfreeze")
        .arg("-u")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("umount").arg(mnt).status();
}

/// A received image mounted read-only, unmounted when dropped.
pub(crate) struct ReadOnly(pub(crate) PathBuf);

impl ReadOnly {
    pub(crate) fn mount(image: &Path, at: &Path, opts: &str) -> ReadOnly {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount")
            .args(["-o", &format!("ro,loop{opts}")])
            .arg(image)
            .arg(at));
        ReadOnly(at.to_owned())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A scratch image mounted read-write (nouuid: its source is mounted too)
/// and unmounted at once: the kernel replays its log.
struct ReadWrite(PathBuf);

impl ReadWrite {
    fn mount(image: &Path, at: &Path) -> ReadWrite {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop,nouuid"])
            .arg(image)
            .arg(at));
        ReadWrite(at.to_owned())
    }
}

impl Drop for ReadWrite {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The writer's bytes: byte `offset` of the file named `name`.
pub(crate) fn content(name: &str, offset: u64, len: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31) + u64::from(b));
    (offset..offset + len as u64)
        .map(|o| (o.wrapping_mul(2654435761).wrapping_add(seed) % 251) as u8)
        .collect()
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

const WRITER_DIRS: &str = "FERRY_TEST_WRITER_DIRS";
const WRITER_LOG: &str = "FERRY_TEST_WRITER_LOG";

/// The writer process: this test binary again, running only this test
/// with the variables set (alone, it does nothing). Round the directories
/// it creates a file every fourth write and appends to its latest file
/// otherwise, fsyncs each write (and the directory after a create), and
/// logs `<unix µs after the fsync> <dir index> <file> <length>` for each, until
/// the stop file appears.
#[test]
fn writer_process() {
    let (Ok(dirs), Ok(log)) = (std::env::var(WRITER_DIRS), std::env::var(WRITER_LOG)) else {
        return;
    };
    let dirs: Vec<PathBuf> = dirs.split(':').map(PathBuf::from).collect();
    let stop = PathBuf::from(format!("{log}.stop"));
    let mut log = std::fs::File::create(&log).unwrap();
    let mut latest: Vec<Option<(String, u64)>> = vec![None; dirs.len()];
    let mut k = 0u64;
    while !stop.exists() {
        let d = (k % dirs.len() as u64) as usize;
        let created = k.is_multiple_of(4) || latest[d].is_none();
        if created {
            latest[d] = Some((format!("f{k:06}"), 0));
        }
        let (name, len) = latest[d].clone().unwrap();
        let path = dirs[d].join(&name);
        let add = 3000 + (k % 7) as usize * 700;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&content(&name, len, add)).unwrap();
        f.sync_all().unwrap();
        if created {
            std::fs::File::open(&dirs[d]).unwrap().sync_all().unwrap();
        }
        let len = len + add as u64;
        latest[d] = Some((name.clone(), len));
        writeln!(log, "{} {d} {name} {len}", unix_us()).unwrap();
        k += 1;
    }
}

pub(crate) struct Writer {
    child: std::process::Child,
    log: PathBuf,
}

impl Writer {
    pub(crate) fn start(dirs: &[&Path], log: &Path) -> Writer {
        let joined: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["consistency::writer_process", "--exact", "--test-threads=1"])
            .env(WRITER_DIRS, joined.join(":"))
            .env(WRITER_LOG, log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let w = Writer {
            child,
            log: log.to_owned(),
        };
        crate::common::serve::wait_for(60, "the writer's first fsyncs", || w.records().len() >= 20);
        w
    }

    /// (time, dir, file, length) of every fsync logged so far.
    fn records(&self) -> Vec<(u64, usize, String, u64)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                if f.len() != 4 {
                    return None;
                }
                Some((
                    f[0].parse().ok()?,
                    f[1].parse().ok()?,
                    f[2].to_owned(),
                    f[3].parse().ok()?,
                ))
            })
            .collect()
    }

    pub(crate) fn stop(mut self) -> Vec<(u64, usize, String, u64)> {
        std::fs::write(format!("{}.stop", self.log.display()), b"").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the writer failed: {status}");
        self.records()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("{}.stop", self.log.display()), b"");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write and fsync a file on `dir` on a thread; true when it completed
/// within `limit`.
fn write_completes(dir: &Path, limit: Duration) -> bool {
    let path = dir.join(format!("probe-{}", unix_us()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"written after the freeze").unwrap();
        f.sync_all().unwrap();
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

#[test]
fn a_frozen_copy_checks_clean_and_holds_every_fsynced_file() {
    need_root!("loop devices, mounts and FIFREEZE");
    let dir = tempfile::tempdir().unwrap();
    let ext4 = LoopFs::make(dir.path(), "ext4", 64, "");
    let xfs = LoopFs::make(dir.path(), "xfs", 320, "");
    let writer = Writer::start(&[&ext4.mnt, &xfs.mnt], &dir.path().join("writer.log"));
    let server = Server::start(&dir.path().join("state"), &[]);
    let disks = [ext4.image.as_path(), xfs.image.as_path()];

    // Without a choice: refused before anything is sent, both listed.
    let refused = server.send(&disks, &[]);
    assert_eq!(
        refused.output.status.code(),
        Some(2),
        "{}",
        refused.stderr()
    );
    let err = refused.stderr();
    assert!(err.contains("error: SOURCE_MOUNTED_RW: "), "{err}");
    for (i, fs) in [&ext4, &xfs].iter().enumerate() {
        let want = format!("disk {i} ({}): {} (", fs.image.display(), fs.mnt.display());
        assert!(err.contains(&want), "{want} in {err}");
    }
    assert!(
        err.contains("; choose --consistency freeze, snapshot or none)"),
        "{err}"
    );
    assert!(!server.disk_path(0).exists(), "nothing was sent");

    let sent = server.send(&disks, &["--consistency", "freeze"]);
    assert!(sent.ok(), "{}", sent.stderr());
    let records = writer.stop();

    let report = &sent.report["consistency"];
    assert_eq!(report["mode"], "freeze", "{report}");
    let mut frozen_at = Vec::new();
    for i in 0..2 {
        let d = &report["disks"][i];
        let passes = d["passes"].as_array().unwrap();
        assert!(passes.len() >= 2, "live, then frozen: {d}");
        assert!(
            passes.iter().rev().skip(1).all(|p| p["frozen"] == false),
            "{d}"
        );
        assert_eq!(passes.last().unwrap()["frozen"], true, "{d}");
        let frozen = d["frozen"].as_array().unwrap();
        assert_eq!(frozen.len(), 1, "{d}");
        let seconds = frozen[0]["frozen_seconds"].as_f64().unwrap();
        assert!(seconds > 0.0 && seconds < 60.0, "{d}");
        let fs = [&ext4, &xfs][i];
        assert_eq!(frozen[0]["mount_point"], fs.mnt.display().to_string());
        let line = format!("; {} frozen {seconds:.2} s", fs.mnt.display());
        assert!(sent.stderr().contains(&line), "{line} in {}", sent.stderr());
        frozen_at.push(frozen[0]["frozen_at_unix_us"].as_u64().unwrap());
    }

    // The copies check clean. A frozen xfs has a covered log rather than
    // a clean one (since Linux 5.12 a freeze no longer writes an unmount
    // record), which `xfs_repair -n` reports with the lazy counters of
    // the super block: the first mount replays it, as the appliance's
    // mount step does and the migrated server's first boot would. So the
    // xfs copy is checked after that replay, on a scratch copy of it.
    run(Command::new("e2fsck").arg("-fn").arg(server.disk_path(0)));
    let xfs_copy = dir.path().join("xfs-copy.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(server.disk_path(1))
        .arg(&xfs_copy));
    drop(ReadWrite::mount(&xfs_copy, &dir.path().join("replay-xfs")));
    run(Command::new("xfs_repair").args(["-n", "-f"]).arg(&xfs_copy));
    // ...and hold what was fsynced before their freeze, byte for byte.
    let copies = [
        ReadOnly::mount(&server.disk_path(0), &dir.path().join("copy-ext4"), ""),
        // The source is still mounted: xfs refuses a second file system
        // of the same UUID without nouuid.
        ReadOnly::mount(&xfs_copy, &dir.path().join("copy-xfs"), ",nouuid"),
    ];
    let mut checked = [0usize; 2];
    for (at, d, name, len) in &records {
        if *at >= frozen_at[*d] {
            continue;
        }
        let path = copies[*d].0.join(name);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("{} (fsynced before the freeze): {e}", path.display()))
            .read_to_end(&mut bytes)
            .unwrap();
        assert!(
            bytes.len() as u64 >= *len,
            "{}: {} bytes, {len} were fsynced before the freeze",
            path.display(),
            bytes.len()
        );
        assert!(
            bytes[..*len as usize] == content(name, 0, *len as usize)[..],
            "{}: content differs",
            path.display()
        );
        checked[*d] += 1;
    }
    assert!(
        checked.iter().all(|&n| n >= 10),
        "fsyncs checked per file system: {checked:?}"
    );
    let after = records
        .iter()
        .filter(|(at, d, ..)| *at > frozen_at[*d])
        .count();
    assert!(after > 0, "the writer wrote on after the freeze");
    eprintln!(
        "checked {checked:?} fsynced writes; frozen {} s and {} s",
        report["disks"][0]["frozen"][0]["frozen_seconds"],
        report["disks"][1]["frozen"][0]["frozen_seconds"]
    );
}

/// `ferry send --consistency freeze` of one disk, held frozen by the test
/// hook; returns the sender and its stderr's lines once it says it froze.
fn send_held(
    server: &Server,
    disk: &Path,
    extra: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    spawn_freeze(
        server,
        disk,
        extra,
        &[("FERRY_SEND_HOLD_FROZEN_MS", "120000")],
    )
}

/// `ferry send --consistency freeze` of one disk with `env` set, running;
/// returns it and a channel of its stderr's lines.
pub(crate) fn spawn_freeze(
    server: &Server,
    disk: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(FERRY)
        .args(["send", "--to", &server.data, "--token", &server.token])
        .args([
            "--fingerprint",
            &server.fingerprint,
            "--consistency",
            "freeze",
        ])
        .arg("--disk")
        .arg(disk)
        .args(extra)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines until one contains `what` (or the stream ends, or 120 s pass).
pub(crate) fn lines_until(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
) -> (bool, Vec<String>) {
    let until = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        let hit = line.contains(what);
        seen.push(line);
        if hit {
            return (true, seen);
        }
    }
    (false, seen)
}

#[test]
fn a_sender_killed_while_frozen_leaves_the_file_systems_thawed() {
    need_root!("loop devices, mounts and FIFREEZE");
    let dir = tempfile::tempdir().unwrap();
    for (fstype, mib) in [("ext4", 64), ("xfs", 320)] {
        let server = Server::start(&dir.path().join(format!("state-{fstype}")), &[]);
        let fs = LoopFs::make(dir.path(), fstype, mib, "");
        std::fs::write(fs.mnt.join("before"), b"data").unwrap();
        let (mut sender, rx) = send_held(&server, &fs.image, &["--max-freeze", "300"]);
        let (froze, seen) = lines_until(&rx, "froze");
        assert!(froze, "{fstype}: the sender never froze: {seen:?}");
        // Frozen: a write waits.
        assert!(
            !write_completes(&fs.mnt, Duration::from_secs(1)),
            "{fstype}: a write completed while the sender said it froze"
        );
        sender.kill().unwrap(); // SIGKILL: no thaw of its own
        sender.wait().unwrap();
        // The watchdog thaws: the waiting write and a new one complete.
        assert!(
            write_completes(&fs.mnt, Duration::from_secs(20)),
            "{fstype}: still frozen 20 s after the sender was killed"
        );
        let want = format!(
            "ferry freeze-watchdog: the sender ended without thawing: thawed {}",
            fs.mnt.display()
        );
        let (thawed, seen) = lines_until(&rx, &want);
        assert!(thawed, "{fstype}: {want} not in {seen:?}");
    }
}

#[test]
fn a_freeze_longer_than_max_freeze_is_thawed_and_reported() {
    need_root!("loop devices, mounts and FIFREEZE");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), &[]);
    let fs = LoopFs::make(dir.path(), "ext4", 64, "");
    let report = dir.path().join("report.json");
    let (mut sender, rx) = send_held(
        &server,
        &fs.image,
        &["--max-freeze", "1", "--report", report.to_str().unwrap()],
    );
    let (_, seen) = lines_until(&rx, "\u{0}never");
    let status = sender.wait().unwrap();
    let stderr = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: disk 0 (") && stderr.contains("FREEZE_TOO_LONG: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("the final pass did not end within --max-freeze (1 s)"),
        "{stderr}"
    );
    assert!(
        write_completes(&fs.mnt, Duration::from_secs(20)),
        "still frozen after the sender gave up"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let frozen = &report["consistency"]["disks"][0]["frozen"][0];
    // Held frozen until the limit: the limit's clock starts just before the
    // freeze ioctl, the report's just after it, so a hair under 1 s.
    let seconds = frozen["frozen_seconds"].as_f64().unwrap();
    assert!(seconds >= 0.9, "{report}");
}

/// A loop device on an image file, detached when dropped.
struct Loop(PathBuf);

impl Loop {
    fn attach(image: &Path) -> Loop {
        let out = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image));
        Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn a_copy_sent_as_it_is_has_its_journals_replayed() {
    use ferry::layout::{journal, FsType};
    need_root!("loop devices, mounts and FIFREEZE");
    let dir = tempfile::tempdir().unwrap();
    let ext4 = LoopFs::make(dir.path(), "ext4", 64, "");
    let xfs = LoopFs::make(dir.path(), "xfs", 320, "");
    let writer = Writer::start(&[&ext4.mnt, &xfs.mnt], &dir.path().join("writer.log"));
    let server = Server::start(&dir.path().join("state"), &[]);
    let sent = server.send(
        &[ext4.image.as_path(), xfs.image.as_path()],
        &["--consistency", "none"],
    );
    assert!(sent.ok(), "{}", sent.stderr());
    writer.stop();
    assert!(
        sent.stderr().contains(
            "crash-consistent at best: the appliance replays the journals before it mounts them"
        ),
        "{}",
        sent.stderr()
    );
    let passes = &sent.report["consistency"]["disks"][0]["passes"];
    assert_eq!(passes.as_array().unwrap().len(), 1, "one pass as it is");

    // What the appliance's mount step does to each received file system.
    for (i, fs) in [(0, FsType::Ext4), (1, FsType::Xfs)] {
        let lo = Loop::attach(&server.disk_path(i));
        assert!(
            journal::dirty(&lo.0, &fs).unwrap(),
            "{fs}: a copy of a mounted file system carries a journal"
        );
        let scratch = dir.path().join(format!("scratch-{i}"));
        let done = journal::recover(&lo.0, &fs, &scratch).unwrap().unwrap();
        eprintln!("{fs}: {}", done.action);
        assert!(!journal::dirty(&lo.0, &fs).unwrap(), "{fs}: replayed");
        assert_eq!(journal::recover(&lo.0, &fs, &scratch).unwrap(), None);
        match fs {
            FsType::Ext4 => run(Command::new("e2fsck").arg("-fn").arg(&lo.0)),
            _ => run(Command::new("xfs_repair").arg("-n").arg(&lo.0)),
        };
    }
}
