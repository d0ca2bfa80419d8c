//! The engine end to end on a synthetic Debian tree, with a fake runner
//! standing in for the chroot (the real tools run in tests/root/repair.rs).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::cmd::Output;

const KVER: &str = "6.1.0-27-amd64";

struct Fake {
    root: PathBuf,
    disk: PathBuf,
    ran: RefCell<Vec<String>>,
}

impl GuestRunner for Fake {
    fn run(&self, argv: &[String]) -> Result<Output> {
        self.ran.borrow_mut().push(argv.join(" "));
        let w = |p: &str, c: &str| fs::write(self.root.join(p.trim_start_matches('/')), c).unwrap();
        let mut stdout = String::new();
        match argv[0].as_str() {
            "update-grub" => {
                // Like grub-mkconfig: the kernel line from /etc/default/grub.
                let defaults = fs::read_to_string(self.root.join("etc/default/grub")).unwrap();
                let args = defaults
                    .lines()
                    .find_map(|l| l.strip_prefix("GRUB_CMDLINE_LINUX="))
                    .unwrap_or("")
                    .trim_matches('"');
                w(
                    "/boot/grub/grub.cfg",
                    &format!("menuentry 'Debian' {{\n\tlinux\t/boot/vmlinuz-{KVER} root=UUID=22222222-2222-4222-8222-222222222222 ro {args}\n}}\n"),
                )
            }
            "update-initramfs" => {
                let modules =
                    fs::read_to_string(self.root.join("etc/initramfs-tools/modules")).unwrap();
                w(&format!("/boot/initrd.img-{}", argv[3]), &modules)
            }
            "lsinitramfs" => {
                let img =
                    fs::read_to_string(self.root.join(argv[1].trim_start_matches('/'))).unwrap();
                for l in img.lines().filter(|l| !l.starts_with('#')) {
                    stdout.push_str(&format!("usr/lib/modules/{KVER}/kernel/drivers/x/{l}.ko\n"));
                }
            }
            "grub-install" => fs::write(&self.disk, b"GRUB boot code").unwrap(),
            other => panic!("unexpected command {other}"),
        }
        Ok(Output {
            stdout: stdout.into_bytes(),
            stderr: Vec::new(),
        })
    }
}

fn put(root: &Path, files: &[(&str, &str)]) {
    for (p, c) in files {
        let host = root.join(p.trim_start_matches('/'));
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(host, c).unwrap();
    }
}

fn debian_tree(root: &Path, with_virtio: bool) {
    let m = format!("/lib/modules/{KVER}/kernel/drivers");
    put(
        root,
        &[
            ("/etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n"),
            ("/etc/fstab", "/dev/sda2 / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n/dev/sdb1 /data ext4 defaults 0 2\n"),
            ("/etc/default/grub", "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"\"\n"),
            ("/boot/grub/grub.cfg", &format!("\tlinux\t/boot/vmlinuz-{KVER} root=/dev/sda2 ro quiet\n")),
            (&format!("/boot/vmlinuz-{KVER}"), "kernel"),
            (&format!("/boot/initrd.img-{KVER}"), "ext4\n"),
            ("/etc/initramfs-tools/modules", "# List of modules\n"),
            ("/usr/sbin/update-initramfs", ""),
            ("/usr/sbin/update-grub", ""),
            ("/usr/sbin/grub-install", ""),
            ("/usr/lib/grub/i386-pc/boot.img", ""),
            ("/lib/systemd/systemd", ""),
            ("/sbin/ifup", ""),
            ("/etc/network/interfaces", "auto lo\niface lo inet loopback\n\nallow-hotplug ens33\niface ens33 inet static\n    address 192.168.10.5/24\n    gateway 192.168.10.1\n"),
            ("/var/cache/debconf/config.dat", "Name: grub-pc/install_devices\nTemplate: grub-pc/install_devices\nValue: /dev/disk/by-id/ata-VMware_Virtual_S_1\nOwners: grub-pc\nFlags: seen\n\nName: grub-pc/timeout\nTemplate: grub-pc/timeout\nValue: 5\nOwners: grub-pc\n"),
            ("/usr/bin/cloud-init", ""),
            ("/var/lib/cloud/instances/i-vmware/obj.pkl", "state"),
            ("/lib/systemd/system/cloud-init.service", "[Unit]\n[Install]\nWantedBy=cloud-init.target\n"),
            ("/lib/systemd/system/open-vm-tools.service", "[Install]\nWantedBy=multi-user.target\n"),
            ("/etc/udev/rules.d/70-persistent-net.rules", "SUBSYSTEM==\"net\", ATTR{address}==\"00:0c:29:aa:bb:cc\", NAME=\"eth0\"\n"),
            (&format!("{m}/block/virtio_blk.ko"), ""),
            (&format!("{m}/scsi/virtio_scsi.ko"), ""),
            (&format!("{m}/nvme/host/nvme.ko"), ""),
            (&format!("/lib/modules/{KVER}/modules.builtin"), "kernel/drivers/virtio/virtio.ko\n"),
        ],
    );
    if with_virtio {
        put(
            root,
            &[
                (&format!("{m}/net/virtio_net.ko"), ""),
                (&format!("{m}/virtio/virtio_pci.ko"), ""),
            ],
        );
    }
    std::os::unix::fs::symlink(
        "/var/lib/cloud/instances/i-vmware",
        root.join("var/lib/cloud/instance"),
    )
    .unwrap();
}

fn map(disk: &Path) -> DeviceMap {
    let mut m = crate::repair::fstab::tests::map();
    m.disks[0].target = disk.to_owned();
    m
}

/// Every file's content (and every link's target) under a directory.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.insert(
                    p.clone(),
                    format!("-> {}", fs::read_link(&p).unwrap().display()),
                );
            } else if m.is_dir() {
                out.insert(p.clone(), "dir".into());
                stack.push(p);
            } else {
                out.insert(
                    p.clone(),
                    String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned(),
                );
            }
        }
    }
    out
}

#[test]
fn plan_writes_nothing_apply_repairs_second_apply_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let disk = d.path().join("disk.img");
    fs::write(&disk, vec![0u8; 4096]).unwrap();
    debian_tree(&root, true);
    let fake = Fake {
        root: root.clone(),
        disk: disk.clone(),
        ran: RefCell::new(Vec::new()),
    };

    let before = snapshot(d.path());
    let plan = execute(
        &RepairOptions::new(&root, map(&disk), BootMode::Auto, Mode::Plan),
        None,
    )
    .into_result()
    .unwrap();
    assert_eq!(snapshot(d.path()), before, "plan mode wrote something");
    assert!(plan.changed);
    let text = engine::render(&plan.steps, Mode::Plan);
    assert!(text.contains("--- a/etc/fstab\n+++ b/etc/fstab\n@@ -1,3 +1,3 @@\n-/dev/sda2 / ext4 errors=remount-ro 0 1\n"), "{text}");
    assert!(
        text.contains(
            "\n+UUID=22222222-2222-4222-8222-222222222222 / ext4 errors=remount-ro 0 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("would run (in chroot): update-initramfs -u -k 6.1.0-27-amd64"),
        "{text}"
    );
    assert!(
        text.contains("would run (in chroot): update-grub"),
        "{text}"
    );

    let r = execute(
        &RepairOptions::new(&root, map(&disk), BootMode::Auto, Mode::Apply),
        Some(&fake),
    )
    .into_result()
    .unwrap();
    assert!(r.changed);
    assert_eq!(r.recipe.as_deref(), Some("debian"));
    assert_eq!(r.boot, Some(BootMode::Bios { disk: disk.clone() }));
    let status: Vec<(String, Status)> =
        r.steps.iter().map(|s| (s.step.clone(), s.status)).collect();
    let want: Vec<(String, Status)> = [
        ("fstab", Status::Changed),
        ("grub-defaults", Status::Changed),
        ("network", Status::Changed),
        ("net-rules", Status::Changed),
        ("cloud-init", Status::Changed),
        ("selinux", Status::Skipped),
        ("agents", Status::Changed),
        ("initramfs", Status::Changed),
        ("grub-install", Status::Changed),
        ("grub-config", Status::Changed),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b))
    .collect();
    assert_eq!(status, want);
    assert_eq!(
        *fake.ran.borrow(),
        [
            format!("update-initramfs -u -k {KVER}"),
            format!("lsinitramfs /boot/initrd.img-{KVER}"),
            format!("grub-install --target=i386-pc {}", disk.display()),
            "update-grub".to_owned(),
        ]
    );
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(
        read("etc/fstab"),
        "UUID=22222222-2222-4222-8222-222222222222 / ext4 errors=remount-ro 0 1\nUUID=11111111-1111-4111-8111-111111111111 /boot ext4 defaults 0 2\n# ferry: disk not migrated, /dev/sdb1 would name another disk on the cloud: /dev/sdb1 /data ext4 defaults 0 2\n"
    );
    assert_eq!(
        read("var/cache/debconf/config.dat"),
        "Name: grub-pc/install_devices\nTemplate: grub-pc/install_devices\nValue: /dev/vda\nOwners: grub-pc\nFlags: seen\n\nName: grub-pc/timeout\nTemplate: grub-pc/timeout\nValue: 5\nOwners: grub-pc\n",
        "grub-pc installs to the cloud's disk on its next update"
    );
    assert_eq!(
        read("etc/cloud/cloud.cfg.d/99-ferry-datasource.cfg"),
        "# Written by ferry: the datasource of the cloud this system was migrated to.\ndatasource_list: [ AliYun, None ]\n"
    );
    assert!(!root.join("var/lib/cloud/instances").exists());
    assert!(fs::symlink_metadata(root.join("var/lib/cloud/instance")).is_err());
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/cloud-init.target.wants/cloud-init.service"))
            .unwrap(),
        Path::new("/lib/systemd/system/cloud-init.service")
    );
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/open-vm-tools.service")).unwrap(),
        Path::new("/dev/null")
    );
    assert!(
        root.join("lib/systemd/system/open-vm-tools.service")
            .exists(),
        "agents are masked, not deleted"
    );

    fake.ran.borrow_mut().clear();
    let again = execute(
        &RepairOptions::new(&root, map(&disk), BootMode::Auto, Mode::Apply),
        Some(&fake),
    )
    .into_result()
    .unwrap();
    let changed: Vec<&str> = again
        .steps
        .iter()
        .filter(|s| s.status == Status::Changed)
        .map(|s| s.step.as_str())
        .collect();
    assert!(changed.is_empty(), "second run changed {changed:?}");
    assert!(!again.changed);
    // Only queries and the compared grub-install ran.
    assert_eq!(
        *fake.ran.borrow(),
        [
            format!("lsinitramfs /boot/initrd.img-{KVER}"),
            format!("grub-install --target=i386-pc {}", disk.display())
        ]
    );
}

#[test]
fn kernel_without_virtio_fails_with_the_faq_code() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let disk = d.path().join("disk.img");
    fs::write(&disk, vec![0u8; 512]).unwrap();
    debian_tree(&root, false);
    let out = execute(
        &RepairOptions::new(&root, map(&disk), BootMode::Auto, Mode::Plan),
        None,
    );
    let err = out.report.error.unwrap();
    assert_eq!(err.step.as_deref(), Some("initramfs"));
    assert_eq!(err.code, "VIRTIO_CHECK_FAILED");
    assert_eq!(
        err.message,
        "repair step initramfs: VIRTIO_CHECK_FAILED: check virtio failed (kernel 6.1.0-27-amd64 lacks virtio_net, virtio_pci)"
    );
    // Steps before it are reported.
    assert_eq!(out.report.steps.len(), 7);
}

#[test]
fn no_grub_fails_with_the_faq_code() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    debian_tree(&root, true);
    for p in [
        "etc/default/grub",
        "boot/grub/grub.cfg",
        "usr/sbin/grub-install",
    ] {
        fs::remove_file(root.join(p)).unwrap();
    }
    let out = execute(
        &RepairOptions::new(
            &root,
            map(&d.path().join("disk")),
            BootMode::Auto,
            Mode::Plan,
        ),
        None,
    );
    let err = out.error.unwrap();
    assert_eq!(
        format!("{err:#}"),
        "repair step grub-defaults: GRUB_FAILED: Do Grub Failed (no GRUB is installed in the migrated system)"
    );
}

#[test]
fn uefi_loader_goes_to_the_removable_path_once() {
    if !crate::cmd::have("mkfs.vfat") {
        eprintln!("skipping: mkfs.vfat is not installed");
        return;
    }
    struct Mkstandalone(PathBuf, RefCell<usize>);
    impl GuestRunner for Mkstandalone {
        fn run(&self, argv: &[String]) -> Result<Output> {
            assert_eq!(argv[..4], ["grub-mkstandalone", "-O", "x86_64-efi", "-o"]);
            *self.1.borrow_mut() += 1;
            let early = fs::read(self.0.join("tmp/ferry-esp/early.cfg")).unwrap();
            let mut image = b"MZ fake loader with memdisk: ".to_vec();
            image.extend(early);
            fs::write(self.0.join(argv[4].trim_start_matches('/')), image).unwrap();
            Ok(Output {
                stdout: Vec::new(),
                stderr: Vec::new(),
            })
        }
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    debian_tree(&root, true);
    put(
        &root,
        &[
            ("/usr/lib/grub/x86_64-efi/linux.mod", ""),
            ("/boot/grub/x86_64-efi/normal.mod", ""),
        ],
    );
    let img = d.path().join("esp.img");
    fs::File::create(&img).unwrap().set_len(40 << 20).unwrap();
    crate::cmd::Cmd::new("mkfs.vfat")
        .args(["-F", "32"])
        .arg(&img)
        .run()
        .unwrap();
    let runner = Mkstandalone(root.clone(), RefCell::new(0));
    let mut opts = RepairOptions::new(
        &root,
        map(&d.path().join("disk")),
        BootMode::Uefi {
            esp: Some(img.clone()),
        },
        Mode::Apply,
    );
    opts.only = Some(vec![recipe::StepName::GrubInstall]);
    let r = execute(&opts, Some(&runner)).into_result().unwrap();
    assert!(r.changed);
    let loader = esp::Esp::read(&esp::FatPartition::new(&img), grub::REMOVABLE)
        .unwrap()
        .unwrap();
    let want = "# ferry-early-config 11111111-1111-4111-8111-111111111111 /grub\n\
        insmod part_gpt\ninsmod part_msdos\ninsmod ext2\ninsmod xfs\ninsmod btrfs\n\
        search --no-floppy --fs-uuid --set=ferry_boot 11111111-1111-4111-8111-111111111111\n\
        if [ -z \"$ferry_boot\" ]; then\n  echo \"ferry: no file system with UUID 11111111-1111-4111-8111-111111111111\"\n  sleep 30\n  reboot\nfi\n\
        set root=$ferry_boot\nset prefix=($root)/grub\nconfigfile $prefix/grub.cfg\n";
    assert_eq!(
        String::from_utf8_lossy(&loader),
        format!("MZ fake loader with memdisk: {want}")
    );
    assert!(
        !root.join("tmp/ferry-esp").exists(),
        "staging directory left behind"
    );
    let again = execute(&opts, Some(&runner)).into_result().unwrap();
    assert!(!again.changed);
    assert_eq!(
        *runner.1.borrow(),
        1,
        "the loader was rebuilt although the ESP had it"
    );
}

fn fresh_esp(path: &Path) -> esp::FatPartition {
    fs::File::create(path).unwrap().set_len(40 << 20).unwrap();
    crate::cmd::Cmd::new("mkfs.vfat")
        .args(["-F", "32"])
        .arg(path)
        .run()
        .unwrap();
    esp::FatPartition::new(path)
}

/// A system whose only loader is its vendor's prebuilt image: no module
/// directory under /boot/grub, none under /usr/lib/grub either. The image
/// (and the shim that starts it, when there is one) goes to the removable
/// path with its grub.cfg beside it; no GRUB tool runs.
#[test]
fn prebuilt_vendor_loader_is_copied_to_the_removable_path() {
    if !crate::cmd::have("mkfs.vfat") {
        eprintln!("skipping: mkfs.vfat is not installed");
        return;
    }
    struct NoTools;
    impl GuestRunner for NoTools {
        fn run(&self, argv: &[String]) -> Result<Output> {
            panic!("no tool should run: {argv:?}")
        }
    }
    let cfg = b"search.fs_uuid 22222222-2222-4222-8222-222222222222 root\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n";
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a [u8])],
        &'a [(&'a str, &'a [u8])],
    );
    let cases: &[Case] = &[
        (
            "grub only",
            &[
                ("EFI/debian/grubx64.efi", b"MZ prebuilt grub"),
                ("EFI/debian/grub.cfg", cfg),
            ],
            &[
                ("EFI/BOOT/BOOTX64.EFI", b"MZ prebuilt grub"),
                ("EFI/BOOT/grub.cfg", cfg),
            ],
        ),
        (
            "shim and grub, as a Secure Boot system has them",
            &[
                ("EFI/redhat/shimx64.efi", b"MZ shim"),
                ("EFI/redhat/grubx64.efi", b"MZ signed grub"),
                ("EFI/redhat/grub.cfg", cfg),
            ],
            &[
                ("EFI/BOOT/BOOTX64.EFI", b"MZ shim"),
                ("EFI/BOOT/grubx64.efi", b"MZ signed grub"),
                ("EFI/BOOT/grub.cfg", cfg),
            ],
        ),
    ];
    for (name, on_esp, want) in cases {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        debian_tree(&root, true);
        let fat = fresh_esp(&d.path().join("esp.img"));
        for (p, c) in *on_esp {
            esp::Esp::write(&fat, p, c).unwrap();
        }
        let mut opts = RepairOptions::new(
            &root,
            map(&d.path().join("disk")),
            BootMode::Uefi {
                esp: Some(d.path().join("esp.img")),
            },
            Mode::Apply,
        );
        opts.only = Some(vec![recipe::StepName::GrubInstall]);
        let r = execute(&opts, Some(&NoTools)).into_result().unwrap();
        assert!(r.changed, "{name}");
        for (p, c) in *want {
            assert_eq!(
                esp::Esp::read(&fat, p).unwrap().as_deref(),
                Some(*c),
                "{name}: {p}"
            );
        }
        let copied: Vec<String> = r.steps[0]
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::File { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        let want_paths: Vec<String> = want.iter().map(|(p, _)| format!("ESP:/{p}")).collect();
        assert_eq!(copied, want_paths, "{name}");
        let again = execute(&opts, Some(&NoTools)).into_result().unwrap();
        assert!(!again.changed, "{name}: second run");
    }
}

/// No module directory under /boot/grub and no vendor image, but the
/// system has GRUB's EFI modules: the standalone loader keeps its memdisk
/// as the prefix, where every module is.
#[test]
fn standalone_loader_keeps_memdisk_modules_without_a_module_directory() {
    if !crate::cmd::have("mkfs.vfat") {
        eprintln!("skipping: mkfs.vfat is not installed");
        return;
    }
    struct Mkstandalone(PathBuf);
    impl GuestRunner for Mkstandalone {
        fn run(&self, argv: &[String]) -> Result<Output> {
            assert_eq!(argv[0], "grub-mkstandalone");
            let early = fs::read(self.0.join("tmp/ferry-esp/early.cfg")).unwrap();
            fs::write(self.0.join(argv[4].trim_start_matches('/')), early).unwrap();
            Ok(Output {
                stdout: Vec::new(),
                stderr: Vec::new(),
            })
        }
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    debian_tree(&root, true);
    put(&root, &[("/usr/lib/grub/x86_64-efi/linux.mod", "")]);
    let fat = fresh_esp(&d.path().join("esp.img"));
    let mut opts = RepairOptions::new(
        &root,
        map(&d.path().join("disk")),
        BootMode::Uefi {
            esp: Some(d.path().join("esp.img")),
        },
        Mode::Apply,
    );
    opts.only = Some(vec![recipe::StepName::GrubInstall]);
    execute(&opts, Some(&Mkstandalone(root.clone())))
        .into_result()
        .unwrap();
    let loader =
        String::from_utf8(esp::Esp::read(&fat, grub::REMOVABLE).unwrap().unwrap()).unwrap();
    assert!(
        loader.starts_with(
            "# ferry-early-config 11111111-1111-4111-8111-111111111111 /grub memdisk-modules\n"
        ),
        "{loader}"
    );
    assert!(
        loader.ends_with("set root=$ferry_boot\nconfigfile ($root)/grub/grub.cfg\n"),
        "{loader}"
    );
    assert!(!loader.contains("set prefix"), "{loader}");
    // With neither, the FAQ's code and what is missing.
    fs::remove_dir_all(root.join("usr/lib/grub/x86_64-efi")).unwrap();
    let d2 = tempfile::tempdir().unwrap();
    fresh_esp(&d2.path().join("esp.img"));
    opts.boot = BootMode::Uefi {
        esp: Some(d2.path().join("esp.img")),
    };
    let err = execute(&opts, Some(&Mkstandalone(root.clone())))
        .report
        .error
        .unwrap();
    assert_eq!(err.code, "GRUB_FAILED");
    assert!(
        err.message.contains(
            "/usr/lib/grub/x86_64-efi is missing and the ESP holds no EFI/<vendor>/grubx64.efi"
        ),
        "{}",
        err.message
    );
}

/// A Debian whose initramfs generator is dracut (no update-initramfs): the
/// recipe's dracut variant writes the drop-in, rebuilds the image with
/// dracut and checks it with lsinitrd; an image that still lacks a driver
/// after the rebuild is the FAQ's code.
#[test]
fn debian_with_dracut_gets_the_drivers_through_a_drop_in() {
    struct Dracut {
        root: PathBuf,
        ran: RefCell<Vec<String>>,
        /// What lsinitrd leaves out of its listing.
        drop: Option<&'static str>,
    }
    impl GuestRunner for Dracut {
        fn run(&self, argv: &[String]) -> Result<Output> {
            self.ran.borrow_mut().push(argv.join(" "));
            let mut stdout = String::new();
            match argv[0].as_str() {
                "dracut" => {
                    // Like dracut: the drop-in's add_drivers go into the image.
                    let conf = fs::read_to_string(
                        self.root.join("etc/dracut.conf.d/90-ferry-virtio.conf"),
                    )
                    .unwrap();
                    let line = conf
                        .lines()
                        .find_map(|l| l.strip_prefix("add_drivers+=\""))
                        .unwrap();
                    let image = argv.last().unwrap();
                    fs::write(
                        self.root.join(image.trim_start_matches('/')),
                        line.trim_end_matches('"'),
                    )
                    .unwrap();
                }
                "lsinitrd" => {
                    let img = fs::read_to_string(self.root.join(argv[1].trim_start_matches('/')))
                        .unwrap();
                    for m in img.split_whitespace().filter(|m| Some(*m) != self.drop) {
                        stdout.push_str(&format!(
                            "-rw-r--r--   1 root root 1 Jul  2 13:50 usr/lib/modules/{KVER}/kernel/drivers/x/{m}.ko\n"
                        ));
                    }
                }
                other => panic!("unexpected command {other}"),
            }
            Ok(Output {
                stdout: stdout.into_bytes(),
                stderr: Vec::new(),
            })
        }
    }
    for drop in [None, Some("virtio_blk")] {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        debian_tree(&root, true);
        fs::remove_file(root.join("usr/sbin/update-initramfs")).unwrap();
        fs::remove_file(root.join("etc/initramfs-tools/modules")).unwrap();
        put(
            &root,
            &[
                ("/usr/bin/dracut", ""),
                (
                    "/etc/dracut.conf.d/10-old-hardware.conf",
                    "drivers=\" ahci sd_mod ext4 \"\nomit_drivers+=\" virtio.* \"\n",
                ),
            ],
        );
        let fake = Dracut {
            root: root.clone(),
            ran: RefCell::new(Vec::new()),
            drop,
        };
        let mut opts = RepairOptions::new(
            &root,
            map(&d.path().join("disk")),
            BootMode::Auto,
            Mode::Apply,
        );
        opts.only = Some(vec![recipe::StepName::Initramfs]);
        let out = execute(&opts, Some(&fake));
        assert_eq!(
            fake.ran.borrow()[..2],
            [
                format!("dracut --force --no-hostonly --kver {KVER} /boot/initrd.img-{KVER}"),
                format!("lsinitrd /boot/initrd.img-{KVER}"),
            ]
        );
        let conf = fs::read_to_string(root.join("etc/dracut.conf.d/90-ferry-virtio.conf")).unwrap();
        assert!(
            conf.contains("add_drivers+=\" virtio_blk virtio_scsi virtio_net virtio_pci nvme \"\n"),
            "{conf}"
        );
        match drop {
            None => {
                let r = out.into_result().unwrap();
                assert_eq!(r.steps[0].status, Status::Changed);
            }
            Some(_) => {
                let err = out.report.error.unwrap();
                assert_eq!(err.code, "VIRTIO_CHECK_FAILED");
                assert_eq!(
                    err.message,
                    format!("repair step initramfs: VIRTIO_CHECK_FAILED: check virtio failed (/boot/initrd.img-{KVER} still lacks virtio_blk after `dracut --force --no-hostonly --kver {KVER} /boot/initrd.img-{KVER}`)")
                );
            }
        }
    }
}

#[test]
fn hooks_for_a_windows_system_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    put(&root, &[("/Windows/System32/config/SYSTEM", "regf")]);
    let before = snapshot(&root);
    let mut opts = RepairOptions::new(&root, DeviceMap::default(), BootMode::Auto, Mode::Apply);
    opts.hooks = hooks::Hooks::parse(
        "[[hook]]\nname = \"x\"\nphase = \"after-repair\"\nscript = \"true\"\n",
    )
    .unwrap();
    let out = execute(&opts, None);
    let err = out.error.expect("refused");
    assert_eq!(
        find_coded(&err).map(|c| c.code),
        Some(ErrorCode::HookInvalid),
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("the migrated system is Windows"));
    assert_eq!(snapshot(&root), before);
}
