//! The sandbox the migrated system's programs run in, on a small root
//! holding busybox: its bounds (time, output, tasks), what it keeps out
//! (the appliance's files, other devices, the network, capabilities), and
//! that it leaves nothing behind. The hostile hooks of a real migration
//! are in the QEMU suite (`hostile.rs`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::common::layout::run;
use ferry::cmd::Cmd;
use ferry::sandbox::Sandbox;

/// A root holding /bin/busybox, on a tmpfs of its own.
struct MiniRoot {
    dir: tempfile::TempDir,
}

impl MiniRoot {
    fn new() -> MiniRoot {
        let dir = tempfile::tempdir().unwrap();
        run(Cmd::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(dir.path()));
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        run(Cmd::new("cp")
            .arg("/bin/busybox")
            .arg(dir.path().join("bin/busybox")));
        // Called by this name, the applet's processes are named `sleep`.
        std::os::unix::fs::symlink("busybox", dir.path().join("bin/sleep")).unwrap();
        MiniRoot { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn sh(&self, sandbox: &Sandbox, script: &str) -> (i32, String, String) {
        // A secret in ferry's environment stays there.
        let (status, out) = sandbox
            .command("/bin/busybox")
            .args(["sh", "-c", script])
            .env("FERRY_SECRET", "leaked")
            .output()
            .unwrap();
        (
            status.code().unwrap_or(-1),
            out.stdout_text(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for MiniRoot {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg(self.dir.path()).run();
    }
}

fn guest_cgroups() -> Vec<String> {
    let mut found = Vec::new();
    for base in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/devices",
    ] {
        if let Ok(rd) = std::fs::read_dir(base) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("ferry-guest-") {
                    found.push(format!("{base}/{n}"));
                }
            }
        }
    }
    found
}

#[test]
fn a_guest_sees_only_its_root_its_processes_and_a_loopback() {
    need_root!("namespaces, mounts, cgroups");
    let root = MiniRoot::new();
    std::fs::write(root.path().join("marker"), "in the guest\n").unwrap();
    let sandbox = Sandbox::enter(root.path(), &[]).unwrap();
    let (code, out, err) = root.sh(
        &sandbox,
        "cat /marker; ls /; echo pids $(ls -d /proc/[0-9]* | wc -l); \
         cat /sys/class/net/*/operstate | tr '\\n' ' '; echo; ls /sys/class/net; \
         grep -E '^Cap(Prm|Eff)' /proc/self/status; echo env $HOME $LANG $FERRY_SECRET",
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "in the guest");
    // Its own root and the mounts the sandbox made, nothing of the host.
    let listed: Vec<&str> = lines[1..]
        .iter()
        .take_while(|l| !l.starts_with("pids "))
        .copied()
        .collect();
    assert_eq!(
        listed,
        ["bin", "dev", "marker", "proc", "run", "sys"],
        "{out}"
    );
    // PID 1 (sh) and the ls: no process of the appliance.
    let pids = lines.iter().find_map(|l| l.strip_prefix("pids ")).unwrap();
    assert!(pids.trim().parse::<u32>().unwrap() <= 5, "{out}");
    assert!(out.contains("\nlo\n"), "only a loopback: {out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("Cap"))
            .collect::<Vec<_>>(),
        ["CapPrm:\t00000000800000ff", "CapEff:\t00000000800000ff"],
        "the file capabilities, SETUID, SETGID and KILL only"
    );
    assert!(out.ends_with("env /root C\n"), "{out}");
    sandbox.close().unwrap();
    assert!(guest_cgroups().is_empty(), "{:?}", guest_cgroups());
}

#[test]
fn a_guest_is_bounded_in_time_output_and_tasks_and_leaves_nothing_running() {
    need_root!("namespaces, mounts, cgroups");
    let root = MiniRoot::new();
    let sandbox =
        Sandbox::enter(root.path(), &[])
            .unwrap()
            .with_limits(Duration::from_secs(3), 1000, 32);
    // Time: the command and the daemon it left are killed.
    let (code, _, err) = root.sh(
        &sandbox,
        "/bin/busybox sleep 3600 </dev/null >/dev/null 2>&1 & /bin/busybox sleep 3600",
    );
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("ran out of its 3 s"), "{err}");
    let left = Cmd::new("pgrep")
        .args(["-f", "sleep 3600"])
        .output()
        .unwrap();
    assert!(!left.0.success(), "left running: {}", left.1.stdout_text());
    // Output: the end is kept, and how much was dropped is said.
    let (code, out, err) = root.sh(
        &sandbox,
        "i=0; while [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 1000, "{out}");
    assert!(out.ends_with("line499\n"), "{out}");
    assert!(err.contains("bytes of stdout were dropped"), "{err}");
    // Tasks: a fork bomb stops at the limit.
    let (_, out, err) = root.sh(
        &sandbox,
        "( i=0; while [ $i -lt 200 ]; do /bin/sleep 30 </dev/null >/dev/null 2>&1 & i=$((i+1)); done ) 2>/dev/null; \
         n=0; for p in /proc/[0-9]*; do read c < $p/comm; [ \"$c\" = sleep ] && n=$((n+1)) && kill -9 ${p#/proc/}; done; echo tasks $n",
    );
    let tasks: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("tasks "))
        .unwrap_or_else(|| panic!("{out}{err}"))
        .trim()
        .parse()
        .unwrap();
    assert!((10..=32).contains(&tasks), "{tasks} tasks: {err}");
    assert!(guest_cgroups().is_empty(), "{:?}", guest_cgroups());
}

#[test]
fn a_guest_opens_only_the_devices_it_was_given() {
    need_root!("loop devices, namespaces, mounts");
    let root = MiniRoot::new();
    let scratch = tempfile::tempdir().unwrap();
    let given = scratch.path().join("given.img");
    let other = scratch.path().join("other.img");
    for p in [&given, &other] {
        std::fs::write(p, vec![0x5au8; 1 << 20]).unwrap();
    }
    let attach = |p: &Path| {
        run(Cmd::new("losetup").args(["-f", "--show"]).arg(p))
            .trim()
            .to_owned()
    };
    let (given_loop, other_loop) = (attach(&given), attach(&other));
    let rdev = std::fs::metadata(&other_loop).unwrap().rdev();
    // A node of the other disk stored on the migrated root itself.
    nix::sys::stat::mknod(
        &root.path().join("stored-node"),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        rdev,
    )
    .unwrap();
    let node = ferry::layout::DevNode {
        host_path: given_loop.clone().into(),
        uuid: Some("0a1b2c3d-0000-4000-8000-000000000001".into()),
        label: None,
        partuuid: None,
        aliases: Vec::new(),
    };
    let sandbox = Sandbox::enter(root.path(), &[node]).unwrap();
    let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let (code, out, err) = root.sh(
        &sandbox,
        &format!(
            "echo given | /bin/busybox dd of=/dev/disk/by-uuid/0a1b2c3d-0000-4000-8000-000000000001 conv=notrunc 2>/dev/null && echo given: yes; \
             echo x | /bin/busybox dd of=/stored-node conv=notrunc 2>/dev/null && echo stored: yes; \
             /bin/busybox mknod /dev/other b {maj} {min} 2>/dev/null && echo mknod: yes; \
             echo x | /bin/busybox dd of={other_loop} conv=notrunc 2>/dev/null; echo done"
        ),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "given: yes\ndone\n", "{err}");
    let head = |p: &Path| std::fs::read(p).unwrap()[..6].to_vec();
    run(Cmd::new("losetup").args(["-d", &given_loop, &other_loop]));
    assert_eq!(head(&given), b"given\n", "the given disk was written");
    assert_eq!(
        std::fs::read(&other).unwrap(),
        vec![0x5au8; 1 << 20],
        "the other disk is untouched"
    );
    assert!(
        !root
            .path()
            .join(other_loop.trim_start_matches('/'))
            .exists(),
        "no file made for the other disk"
    );
}

#[test]
fn without_root_nothing_runs_and_the_error_says_why() {
    need_root!("switching to another user");
    let root = MiniRoot::new();
    std::fs::write(root.path().join("ran"), "").unwrap();
    let spec = ferry::sandbox::Spec {
        root: root.path().to_owned(),
        devices: Vec::new(),
        timeout_secs: 10,
        output_limit: 1000,
        pids_max: 10,
        env: Vec::new(),
    };
    let (status, out) = Cmd::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .args(["sandbox", "--spec", &serde_json::to_string(&spec).unwrap()])
        .args(["--", "/bin/busybox", "rm", "/ran"])
        .output()
        .unwrap();
    assert_eq!(status.code(), Some(ferry::sandbox::child::UNAVAILABLE));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the migrated system's tools cannot be confined: the sandbox runs as root"),
        "{err}"
    );
    assert!(root.path().join("ran").exists(), "the command ran");
}
