//! The appliance as a cloud runs it: the image of `scripts/bake-appliance.sh`
//! boots under QEMU with a NoCloud seed carrying the example user-data of
//! `systemd/cloud-init/user-data.yaml` (placeholders filled in as a control
//! plane would) and a blank virtio disk with serial `target0`; cloud-init
//! writes the job's config and starts `ferry.service`, exactly the unit of
//! `systemd/`. The source side fetches the released sender from the
//! appliance (8080, checked against `dist/SHA256SUMS`), and that binary
//! moves the `lvm` stack's server (root and swap on the logical volumes of
//! `ferry-vg`) to it through QEMU's port forwards; the appliance processes the round by itself, reaching the
//! guest's volumes through the device-mapper of its cloud kernel (the VG
//! activated under ferry's private LVM configuration, deactivated after),
//! while a second disk with a volume group of the same name stays
//! untouched; it hands the disk off, and the disk it wrote boots on the
//! cloud's hardware as the source server.
//!
//! Needs root and qemu-system-x86_64: `cargo test --release --test qemu -- appliance::`.
//! Serial logs, QEMU's command line, the sender's log and the job's JSON go to
//! `$FERRY_ARTIFACTS/boot/appliance*`.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::boot::SourceImage;
use ferry::cmd::Cmd;
use sha2::Digest;

const JOB_TOKEN: &str = "appliance-job-token-0123456789";
const CONTROL_TOKEN: &str = "appliance-control-token-0123456789";
/// The cloud disk's serial: the guest's udev links it as
/// /dev/disk/by-id/virtio-target0.
const TARGET_SERIAL: &str = "target0";
/// A disk of the instance that is not a target, with a volume group named
/// like the guest's.
const SCRATCH_SERIAL: &str = "scratch0";
const VG: &str = "ferry-vg";
/// The cloud disk is larger than the server's: the appliance grows the root.
const TARGET_EXTRA: u64 = 512 << 20;
/// First boot of the appliance under TCG with cloud-init: about two minutes
/// on an idle 2-core machine.
const READY_DEADLINE: Duration = Duration::from_secs(600);
const NAME: &str = "appliance";

fn artifact(suffix: &str) -> PathBuf {
    let dir = crate::common::boot::artifacts_dir().join("boot");
    fs::create_dir_all(&dir).expect("creating the artifacts directory");
    dir.join(format!("{NAME}{suffix}"))
}

/// The baked image (cached by the script), with the release of the source
/// this test runs: its binary is the appliance's ferry, its tarball what the
/// appliance serves.
fn bake() -> PathBuf {
    let release = crate::common::release::built();
    let out = Cmd::new("bash")
        .arg(crate::common::boot::repo_root().join("scripts/bake-appliance.sh"))
        .env("FERRY_RELEASE", &release.dir)
        .run()
        .expect("baking the appliance image");
    let text = out.stdout_text();
    let path = PathBuf::from(
        text.lines()
            .last()
            .expect("bake-appliance.sh printed the image"),
    );
    assert!(path.is_file(), "no image at {}", path.display());
    path
}

/// The example user-data with every placeholder of its live lines filled in.
fn user_data() -> String {
    let path = crate::common::boot::repo_root().join("systemd/cloud-init/user-data.yaml");
    let text = fs::read_to_string(&path).expect("reading the example user-data");
    let filled = text
        .replace("@JOB_TOKEN@", JOB_TOKEN)
        .replace("@CONTROL_TOKEN@", CONTROL_TOKEN)
        .replace("@DISK0_SERIAL@", TARGET_SERIAL)
        // The appliance's own boot test would boot a guest under TCG inside
        // this TCG guest; the host suites (qemu_e2e) show it.
        .replace("      # boot_test = false\n", "      boot_test = false\n");
    assert!(
        filled.contains("\n      boot_test = false\n"),
        "no boot_test line"
    );
    assert!(filled.starts_with("#cloud-config\n"), "not a cloud-config");
    for line in filled.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(
            line.matches('@').count() < 2,
            "a placeholder the control plane fills in is left: {line:?}"
        );
    }
    filled
}

/// A NoCloud seed: a FAT file system labelled CIDATA holding user-data and
/// meta-data, made without mounting (mkfs.vfat and mtools).
fn nocloud_seed(dir: &Path, user_data: &str, meta_data: &str) -> PathBuf {
    fs::write(dir.join("user-data"), user_data).expect("writing user-data");
    fs::write(dir.join("meta-data"), meta_data).expect("writing meta-data");
    let seed = dir.join("seed.img");
    fs::File::create(&seed)
        .and_then(|f| f.set_len(2 << 20))
        .expect("creating the seed image");
    Cmd::new("mkfs.vfat")
        .args(["-n", "CIDATA"])
        .arg(&seed)
        .run()
        .expect("mkfs.vfat of the seed");
    Cmd::new("mcopy")
        .arg("-i")
        .arg(&seed)
        .arg(dir.join("user-data"))
        .arg(dir.join("meta-data"))
        .arg("::")
        .env("MTOOLS_SKIP_CHECK", "1")
        .run()
        .expect("copying user-data and meta-data into the seed");
    seed
}

/// The intermediate instance: the image (never written: snapshot=on), the
/// seed, the blank target; control and data ports forwarded to loopback on
/// a user network that reaches nothing else (restrict=on).
struct Appliance {
    child: Child,
    control: String,
    data: String,
    serial_log: PathBuf,
}

impl Appliance {
    fn start(image: &Path, seed: &Path, target: &Path, scratch: &Path) -> Appliance {
        let (control_port, data_port) = (
            crate::common::serve::free_port(),
            crate::common::serve::free_port(),
        );
        let serial_log = artifact(".serial.log");
        let _ = fs::remove_file(&serial_log);
        let path = |p: &Path| {
            let s = p.to_str().expect("utf-8 path").to_owned();
            assert!(!s.contains(','), "QEMU's -drive cannot take a comma: {s}");
            s
        };
        let args: Vec<String> = [
            "-accel", "tcg", "-machine", "pc", "-m", "3072", "-smp", "2", "-nodefaults",
            "-display", "none", "-monitor", "none", "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "-drive".into(),
            format!("file={},format=raw,if=none,id=sys,snapshot=on", path(image)),
            "-device".into(),
            "virtio-blk-pci,drive=sys,addr=0x4,bootindex=0".into(),
            "-drive".into(),
            format!("file={},format=raw,if=none,id=seed,readonly=on", path(seed)),
            "-device".into(),
            "virtio-blk-pci,drive=seed,addr=0x5".into(),
            "-drive".into(),
            format!("file={},format=raw,if=none,id=t0", path(target)),
            "-device".into(),
            format!("virtio-blk-pci,drive=t0,addr=0x6,serial={TARGET_SERIAL}"),
            "-drive".into(),
            format!("file={},format=raw,if=none,id=s0", path(scratch)),
            "-device".into(),
            format!("virtio-blk-pci,drive=s0,addr=0x7,serial={SCRATCH_SERIAL}"),
            "-netdev".into(),
            format!(
                "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{control_port}-:8080,hostfwd=tcp:127.0.0.1:{data_port}-:8703"
            ),
            "-device".into(),
            "virtio-net-pci,netdev=n0,addr=0x3".into(),
            "-serial".into(),
            format!("file:{}", serial_log.display()),
        ])
        .collect();
        fs::write(
            artifact(".cmdline"),
            format!("qemu-system-x86_64 {}\n", args.join(" ")),
        )
        .expect("writing the command line artifact");
        let log = fs::File::create(artifact(".qemu.log")).expect("creating the QEMU log");
        let child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the QEMU log"))
            .stderr(log)
            .spawn()
            .expect("starting qemu-system-x86_64 (is qemu-system-x86 installed?)");
        Appliance {
            child,
            control: format!("127.0.0.1:{control_port}"),
            data: format!("127.0.0.1:{data_port}"),
            serial_log,
        }
    }

    fn serial_tail(&self) -> String {
        let text = crate::common::boot::strip_ansi(&String::from_utf8_lossy(
            &fs::read(&self.serial_log).unwrap_or_default(),
        ));
        let mut start = text.len().saturating_sub(4000);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }

    /// GET on the control port; None while nothing answers behind the
    /// forward (QEMU accepts, the guest does not yet).
    fn get(&self, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        let (status, body) = self.get_bytes(path, token)?;
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The same, with the body's bytes as they came.
    fn get_bytes(&self, path: &str, token: Option<&str>) -> Option<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(&self.control).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\r\n",
            self.control
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&resp[..end]).into_owned();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, resp[end + 4..].to_vec()))
    }

    fn get_json(&self, path: &str, token: Option<&str>) -> serde_json::Value {
        let (status, body) = self
            .get(path, token)
            .unwrap_or_else(|| panic!("GET {path}: no answer"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn job(&self) -> serde_json::Value {
        self.get_json("/v1/job", Some(CONTROL_TOKEN))
    }

    /// Polls /readyz until it answers 200; panics with the serial log's end
    /// when QEMU exits or the deadline passes.
    fn wait_ready(&mut self) -> Duration {
        let start = Instant::now();
        loop {
            if let Some((200, body)) = self.get("/readyz", None) {
                let v: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
                assert_eq!(v["ready"], true, "{v}");
                return start.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the appliance's QEMU exited ({status}) before /readyz; serial log {}:\n{}",
                    self.serial_log.display(),
                    self.serial_tail()
                );
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "no 200 from /readyz within {READY_DEADLINE:?}; serial log {}:\n{}",
                self.serial_log.display(),
                self.serial_tail()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Ends QEMU: SIGTERM first (it closes its images), SIGKILL after 20 s.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The handoff as the control plane takes it: the manifest served by the
/// appliance names the target device of the config with the digest of the
/// whole disk, the job names the manifest by its digest, and `ferry verify`
/// finds the disk QEMU wrote equal to it.
fn fetch_handoff(vm: &Appliance, job: &serde_json::Value, dir: &Path) -> PathBuf {
    let (status, body) = vm
        .get("/v1/job/handoff", Some(CONTROL_TOKEN))
        .expect("GET /v1/job/handoff: no answer");
    assert_eq!(status, 200, "the handoff manifest: {body}");
    let manifest = dir.join("handoff.json");
    fs::write(&manifest, &body).expect("writing the manifest");
    let _ = fs::write(artifact(".handoff.json"), &body);
    assert_eq!(
        job["handoff"]["manifest_digest"],
        blake3::hash(body.as_bytes()).to_hex().as_str(),
        "{job}"
    );
    let m: serde_json::Value = serde_json::from_str(&body).expect("manifest JSON");
    assert_eq!(m["job_id"], job["id"], "{m}");
    assert_eq!(m["disks"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(
        m["disks"][0]["target"],
        format!("/dev/disk/by-id/virtio-{TARGET_SERIAL}"),
        "{m}"
    );
    manifest
}

fn verify_handoff(manifest: &Path, target: &Path) {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(manifest).expect("reading the manifest"))
            .expect("manifest JSON");
    assert_eq!(
        m["disks"][0]["digest_bytes"].as_u64(),
        Some(fs::metadata(target).expect("target").len()),
        "the digest covers the whole cloud disk: {m}"
    );
    let out = Cmd::new(crate::common::serve::FERRY)
        .arg("verify")
        .arg("--manifest")
        .arg(manifest)
        .arg("--disk")
        .arg(format!("0={}", target.display()))
        .run()
        .expect("ferry verify of the disk QEMU wrote against the manifest");
    assert_eq!(
        out.stdout_text().matches("matches the manifest").count(),
        1,
        "{}",
        out.stdout_text()
    );
}

/// A whole disk that is one LVM PV of a volume group named [`VG`] with a
/// logical volume `root`, made by LVM's own tools without device-mapper
/// (a private configuration that sees only it).
fn scratch_disk(path: &Path) {
    fs::File::create(path)
        .and_then(|f| f.set_len(64 << 20))
        .expect("creating the scratch disk");
    let lo = Cmd::new("losetup")
        .args(["--find", "--show"])
        .arg(path)
        .run()
        .expect("attaching the scratch disk")
        .stdout_text()
        .trim()
        .to_owned();
    let conf = tempfile::tempdir().expect("an LVM configuration directory");
    fs::write(
        conf.path().join("lvm.conf"),
        format!(
            "devices {{ filter = [ \"a|^{lo}$|\", \"r|.*|\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 }}\n\
             activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}\nbackup {{ backup = 0 archive = 0 }}\n"
        ),
    )
    .expect("writing lvm.conf");
    let lvm = |args: &[&str]| {
        Cmd::new("lvm")
            .arg(args[0])
            .args(["--driverloaded", "n"])
            .args(&args[1..])
            .env("LVM_SYSTEM_DIR", conf.path())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .run()
            .map(|_| ())
    };
    let made = lvm(&["pvcreate", "-q", "-y", &lo])
        .and_then(|()| lvm(&["vgcreate", "-q", VG, &lo]))
        .and_then(|()| {
            lvm(&[
                "lvcreate", "-q", "-an", "-Zn", "-y", "-L", "16M", "-n", "root", VG,
            ])
        });
    let _ = Cmd::new("losetup").args(["-d", &lo]).run();
    made.expect("making the scratch disk's volume group");
}

fn hash(path: &Path) -> String {
    blake3::hash(&fs::read(path).expect("reading a disk"))
        .to_hex()
        .to_string()
}

#[test]
fn baked_appliance_boots_from_cloud_init_migrates_an_lvm_server_and_the_disk_boots_on_virtio() {
    need_root!("loop devices, mounts and chroot build the source images");
    let src = SourceImage::build_stack("lvm").expect("building the source image");
    assert_eq!(src.disks.len(), 1);
    let t0 = Instant::now();
    let image = bake();
    let baked = t0.elapsed();
    eprintln!("appliance image {} ({baked:.0?})", image.display());

    let dir = tempfile::tempdir().expect("scratch directory");
    let seed = nocloud_seed(
        dir.path(),
        &user_data(),
        "instance-id: ferry-appliance-test-1\nlocal-hostname: ferry-appliance-test\n",
    );
    let target = dir.path().join("target0.img");
    let src_len = fs::metadata(&src.disks[0]).expect("source size").len();
    fs::File::create(&target)
        .and_then(|f| f.set_len(src_len + TARGET_EXTRA))
        .expect("creating the blank target disk");
    let scratch = dir.path().join("scratch0.img");
    scratch_disk(&scratch);
    let scratch_before = hash(&scratch);

    let mut vm = Appliance::start(&image, &seed, &target, &scratch);
    let booted = vm.wait_ready();
    eprintln!("appliance: /readyz 200 after {booted:.0?}");
    let identity = vm.get_json("/v1/identity", None);
    assert_eq!(identity["data_port"], 8703, "{identity}");
    let fingerprint = identity["tls_fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("no fingerprint: {identity}"))
        .to_owned();
    assert_eq!(fingerprint.len(), 64, "{identity}");
    let before = vm.job();
    assert_eq!(before["state"], "Ready", "{before}");
    // Without the control token the job stays closed.
    assert_eq!(vm.get("/v1/job", None).map(|(s, _)| s), Some(401));

    // The source side fetches the sender from the appliance (8080 is all it
    // may reach), checks it against the SHA-256 the control plane has from
    // the release (dist/SHA256SUMS), and runs that binary.
    let release = crate::common::release::built();
    let sender = &identity["sender"];
    assert_eq!(sender["sha256"], release.sha256.as_str(), "{identity}");
    let path = sender["path"].as_str().expect("the sender's path");
    let (status, tarball) = vm
        .get_bytes(path, None)
        .unwrap_or_else(|| panic!("GET {path}: no answer"));
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&tarball)
    );
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&tarball)),
        release.sha256,
        "the sender fetched from the appliance is not the release"
    );
    let fetched = dir.path().join("fetched");
    fs::create_dir(&fetched).expect("making the unpack directory");
    fs::write(fetched.join("sender.tar.gz"), &tarball).expect("writing the tarball");
    Cmd::new("tar")
        .arg("-xzf")
        .arg(fetched.join("sender.tar.gz"))
        .arg("-C")
        .arg(&fetched)
        .run()
        .expect("unpacking the fetched sender");
    let bin = fetched
        .join(release.binary.parent().unwrap().file_name().unwrap())
        .join("ferry");

    let t1 = Instant::now();
    let sent = crate::common::serve::send_by(
        &bin,
        &vm.data,
        JOB_TOKEN,
        &fingerprint,
        &[src.disks[0].as_path()],
        &[],
        Duration::from_secs(1800),
        |_| {},
    );
    let migrated = t1.elapsed();
    let _ = fs::write(artifact(".send.log"), sent.stderr());
    eprintln!("appliance: ferry send and the round's pipeline took {migrated:.0?}");
    let err = sent.stderr();
    assert!(
        sent.ok(),
        "ferry send failed:\n{err}\nserial log:\n{}",
        vm.serial_tail()
    );
    assert_eq!(sent.report["disks"][0]["verified"], true, "{}", sent.report);
    crate::common::serve::assert_followed_the_round(&err);
    let job = vm.job();
    let _ = fs::write(artifact(".job.json"), job.to_string());
    assert_eq!(job["state"], "Finished", "{job}");
    assert!(job["last_error"].is_null(), "{job}");
    let manifest = fetch_handoff(&vm, &job, dir.path());
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest).expect("reading the manifest"))
            .expect("manifest JSON");
    // The cloud kernel has device-mapper: the repair reached the guest's
    // volumes through its VG, activated under ferry's own configuration.
    assert_eq!(
        m["lvm"],
        serde_json::json!({"via": "device-mapper", "volumes": [format!("{VG}/root"), format!("{VG}/swap_1")]}),
        "{m}"
    );
    let serial = crate::common::boot::strip_ansi(&String::from_utf8_lossy(
        &fs::read(&vm.serial_log).expect("reading the serial log"),
    ));
    for line in [
        "volume groups activated under a private LVM configuration",
        "volume groups deactivated",
    ] {
        assert_eq!(
            serial.matches(line).count(),
            1,
            "{line:?} once in the appliance's log:\n{}",
            vm.serial_tail()
        );
    }

    // The appliance flushed the target before it reported the handoff.
    vm.stop();
    verify_handoff(&manifest, &target);
    assert_eq!(
        hash(&scratch),
        scratch_before,
        "the other disk's volume group of the same name is untouched"
    );

    let report = crate::common::boot::boots_on_the_cloud(
        &src,
        vec![target.clone()],
        &format!("{NAME}-migrated-virtio"),
    );
    eprintln!(
        "appliance: image {baked:.0?}, ready {booted:.0?}, migration {migrated:.0?}, migrated boot {:.0?}, total {:.0?}",
        report.elapsed,
        t0.elapsed()
    );
}

/// The unit's exposure as `systemd-analyze security` scores it, offline.
#[test]
fn unit_security_exposure_is_at_most_five() {
    let unit = crate::common::boot::repo_root().join("systemd/ferry.service");
    let out = Cmd::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .run()
        .expect("systemd-analyze security (package systemd)");
    let text = out.stdout_text();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for ferry.service:"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let score: f64 = line
        .rsplit(':')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"));
    assert!(score <= 5.0, "{line}\n{text}");
}
