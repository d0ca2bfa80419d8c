//! The catalogue of stable error codes.
//!
//! Every error the appliance or the sender reports to a person or to the
//! control plane carries one of these codes, a message (the FAQ's wording
//! where it has one) and a hint of what to do. Codes are stable: the control
//! plane branches on them, so they are never renamed or reused.

use serde::{Deserialize, Serialize};

/// Whether `ferry send` tries again by itself after an error with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retry {
    /// A passing cause (a cut link, a busy disk): the sender retries with backoff.
    Retry,
    /// Someone must act first: the sender stops and prints the hint.
    Final,
}

/// What an error with this code does to the job when it happens while the
/// appliance writes (a failure of the round's pipeline always does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobEffect {
    /// The job goes InError until the operator starts it again.
    FailsJob,
    /// A refusal or a sender-side problem: the job stays as it is, so the
    /// sender's next attempt succeeds once the cause is fixed.
    KeepsJob,
}

/// What kind of failure an error is, as the exit status of `ferry send`
/// when it stops with it: a script tells a mistake on the command line from
/// a refusal, a network failure or data that did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// 1: anything else (a source disk that cannot be read, an internal error).
    Other,
    /// 2: the command line is not valid, like clap's own usage errors.
    Usage,
    /// 3: the appliance refused the sender or failed the round.
    Refused,
    /// 4: the appliance could not be reached, the link was lost, or TLS failed.
    Network,
    /// 5: the data did not verify.
    Verification,
}

impl Exit {
    pub const ALL: [Exit; 5] = [
        Exit::Other,
        Exit::Usage,
        Exit::Refused,
        Exit::Network,
        Exit::Verification,
    ];

    /// The process's exit status.
    pub fn status(self) -> u8 {
        match self {
            Exit::Other => 1,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::Network => 4,
            Exit::Verification => 5,
        }
    }

    /// What the status says, for `ferry send --help` and the README.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Other => "another failure: a source disk that cannot be read, an internal error",
            Exit::Usage => "the command line is not valid, or --to names a port that is not the appliance's data port; nothing was sent",
            Exit::Refused => "the appliance refused the sender or failed the round: a wrong token, a job state that takes no data, a disk too large for its target, a failure writing or processing the disks (the code and its hint say which)",
            Exit::Network => "the appliance could not be reached or the connection was lost, after the retries, or TLS failed (a certificate that does not match --fingerprint too)",
            Exit::Verification => "the data did not verify: a chunk or a whole disk on the appliance differs from the source, or the appliance's verification before the handoff failed",
        }
    }
}

/// `ferry send`'s exit statuses with what each says, 0 first.
pub fn exit_statuses() -> Vec<(u8, &'static str)> {
    let ok = (
        0,
        "every disk is committed and verified, and the round was followed to its end (unless --no-wait)",
    );
    std::iter::once(ok)
        .chain(Exit::ALL.iter().map(|e| (e.status(), e.meaning())))
        .collect()
}

/// The exit statuses as a Markdown list, as docs/errors.md and the README
/// show them.
pub fn exit_statuses_markdown() -> String {
    exit_statuses()
        .iter()
        .map(|(status, meaning)| format!("- `{status}`: {meaning}\n"))
        .collect()
}

macro_rules! catalogue {
    ($( $variant:ident => $code:literal [$retry:ident, $effect:ident, $exit:ident], $msg:literal, $hint:literal; )*) => {
        /// A stable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum ErrorCode { $( #[serde(rename = $code)] $variant, )* }

        impl ErrorCode {
            /// Every code, in catalogue order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The stable code string, e.g. `AUTH_FAILED`.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// What went wrong, in the FAQ's words where it has them.
            pub fn message(self) -> &'static str {
                match self { $( ErrorCode::$variant => $msg, )* }
            }

            /// The message of one occurrence: the FAQ's "Do Rsync Disk x
            /// Failed" names the disk that `detail` is about ("disk 1: ...").
            pub(crate) fn message_for(self, detail: &str) -> String {
                let msg = self.message();
                match (msg.contains("Disk x"), disk_named_in(detail)) {
                    (true, Some(n)) => msg.replacen("Disk x", &format!("Disk {n}"), 1),
                    _ => msg.to_owned(),
                }
            }

            /// What to do about it.
            pub fn hint(self) -> &'static str {
                match self { $( ErrorCode::$variant => $hint, )* }
            }

            /// Whether the sender retries by itself.
            pub fn retry(self) -> Retry {
                match self { $( ErrorCode::$variant => catalogue!(@retry $retry), )* }
            }

            /// What the error does to the job when it happens while writing.
            pub(crate) fn job_effect(self) -> JobEffect {
                match self { $( ErrorCode::$variant => catalogue!(@effect $effect), )* }
            }

            /// How `ferry send` exits when it stops with this code.
            pub fn exit(self) -> Exit {
                match self { $( ErrorCode::$variant => catalogue!(@exit $exit), )* }
            }

            /// Look a code string up; unknown codes (from a newer peer) give None.
            pub fn parse(s: &str) -> Option<ErrorCode> {
                match s { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
    (@retry retry) => { Retry::Retry };
    (@retry final) => { Retry::Final };
    (@effect fails_job) => { JobEffect::FailsJob };
    (@effect keeps_job) => { JobEffect::KeepsJob };
    (@exit other) => { Exit::Other };
    (@exit usage) => { Exit::Usage };
    (@exit refused) => { Exit::Refused };
    (@exit network) => { Exit::Network };
    (@exit verification) => { Exit::Verification };
}

catalogue! {
    Usage => "USAGE" [final, keeps_job, usage], "The command line is not valid",
        "Fix the option the message names (`ferry <command> --help` lists them); nothing was sent or written. The command exits with status 2.";
    ConnectFailed => "CONNECT_FAILED" [retry, keeps_job, network], "Connect to Server Failed",
        "Check that the intermediate instance is running and that the data port the message names (8703 unless --to gives another) is open to this server in the instance's security group and firewall; the sender retries by itself, then run it again.";
    TlsFingerprintMismatch => "TLS_FINGERPRINT_MISMATCH" [final, keeps_job, network], "The appliance's TLS certificate does not match the pinned fingerprint",
        "Read the fingerprint from the appliance (`<state-dir>/tls/fingerprint`, its start-up log, or GET /v1/identity on port 8080) and pass it with --fingerprint. If it changed unexpectedly, you may not be talking to your appliance.";
    TlsRequired => "TLS_REQUIRED" [final, keeps_job, network], "The data port accepts only TLS connections",
        "Use `ferry send` (which speaks TLS) to reach port 8703; plain TCP clients are refused.";
    TlsHandshakeFailed => "TLS_HANDSHAKE_FAILED" [final, keeps_job, network], "The TLS handshake on the data port failed",
        "The client does not trust the appliance's certificate (wrong --fingerprint) or does not speak TLS 1.2/1.3. Check the fingerprint and use `ferry send`.";
    WrongService => "WRONG_SERVICE" [final, keeps_job, usage], "The address is not an appliance's data port",
        "Point `ferry send --to` at the appliance's data port (8703 unless its data_listen says otherwise); the message says what answered instead. Port 8080 is the appliance's control port (HTTP: health, metrics, the job API), which the sender does not use. Nothing was sent.";
    AuthFailed => "AUTH_FAILED" [final, keeps_job, refused], "Authentication failed: the job token is not valid for this appliance",
        "Pass the job's token with --token or FERRY_TOKEN (embedded mode prints it at start and keeps it in `<state-dir>/token`). Repeated failures are slowed down.";
    AuthRateLimited => "AUTH_RATE_LIMITED" [retry, keeps_job, refused], "Too many failed authentication attempts",
        "The token was not accepted, and this address failed often in the last minute, so answers are slowed down (a correct token is always accepted). Check the job token (--token or FERRY_TOKEN); the sender retries by itself.";
    ProtocolVersion => "PROTOCOL_VERSION" [final, keeps_job, refused], "The sender and the appliance speak different protocol versions",
        "Use a `ferry send` of the same version as the appliance (GET /v1/identity on port 8080 shows its version).";
    FrameMalformed => "FRAME_MALFORMED" [retry, keeps_job, network], "A malformed or truncated frame was received",
        "The connection was corrupted or cut. Run the sender again; committed data is kept and the transfer resumes.";
    FrameTooLarge => "FRAME_TOO_LARGE" [final, keeps_job, refused], "A frame longer than the protocol allows was received",
        "Use a `ferry send` of the same version as the appliance; the frame was refused before anything was allocated for it.";
    UnexpectedFrame => "UNEXPECTED_FRAME" [final, keeps_job, refused], "A frame arrived that is not valid at this point of the protocol",
        "Use a `ferry send` of the same version as the appliance and run it again.";
    ChunkHashMismatch => "CHUNK_HASH_MISMATCH" [final, keeps_job, verification], "A chunk's content does not match its hash",
        "The data was corrupted in transit or the source changed while it was read. Run the sender again; the chunk was not written.";
    ChunkDecompress => "CHUNK_DECOMPRESS" [final, keeps_job, verification], "A chunk could not be decompressed within the chunk size",
        "The data was corrupted in transit. Run the sender again; the chunk was not written.";
    ChunkOutOfRange => "CHUNK_OUT_OF_RANGE" [final, keeps_job, refused], "A chunk's offset or length lies outside the announced disk",
        "Use a `ferry send` of the same version as the appliance; nothing was written.";
    BadChunkSize => "BAD_CHUNK_SIZE" [final, keeps_job, usage], "The chunk size is outside the allowed range",
        "Use a chunk size between 64 KiB and 16 MiB, a power of two (the default is 4 MiB).";
    DiskNotConfigured => "DISK_NOT_CONFIGURED" [final, keeps_job, refused], "The source disk has no target disk on the appliance",
        "Map the disk index to a target device in the appliance's config ([[disk]] index = N, target = \"/dev/...\"), or send only the configured disks.";
    SessionsFull => "SESSIONS_FULL" [retry, keeps_job, refused], "Too many senders are connected to the appliance",
        "The appliance serves at most max_sessions authenticated senders at once (64 by default; a sender uses one per disk and one per data stream); the sender retries by itself. Stop stray senders of this job, or raise max_sessions in the appliance's config.";
    DiskBusy => "DISK_BUSY" [retry, keeps_job, refused], "Another sender is already writing this disk",
        "Only one sender may write a disk at a time. Stop the other `ferry send`, or wait for it to finish.";
    DiskSizeChanged => "DISK_SIZE_CHANGED" [final, keeps_job, refused], "The source disk's size differs from the one this job started with",
        "An incremental round must send a disk of the same size. Start a new job (a fresh state directory) to migrate a resized disk.";
    TargetTooSmall => "TARGET_TOO_SMALL" [final, keeps_job, refused], "The target disk is smaller than the source disk",
        "Attach a target disk at least as large as the source disk and map it in the config; nothing was written.";
    TargetUnavailable => "TARGET_UNAVAILABLE" [final, keeps_job, refused], "The target disk cannot be opened for writing",
        "Check that the target device exists, is attached to the intermediate instance, is not mounted or in use, and is not the appliance's own system disk.";
    TargetWriteFailed => "TARGET_WRITE_FAILED" [final, fails_job, refused], "Do Rsync Disk x Failed",
        "Writing to the target disk failed. Check the appliance's log and the target disk, then run the sender again; committed data is kept.";
    TargetFull => "TARGET_FULL" [final, fails_job, refused], "Do Rsync Disk x Failed: no space left on the appliance",
        "The file system holding the target disks or the job state is full. Free space or attach larger storage, then run the sender again; committed data is kept.";
    LedgerFailed => "LEDGER_FAILED" [final, fails_job, refused], "The job's ledger could not be read or written",
        "Check the state directory's file system (space, permissions) and the appliance's log, then restart `ferry serve`. A ledger the message calls damaged, or a disk record it refuses, cannot be repaired: move the ledger (`<state-dir>/ledger.redb`) aside and the job starts over, with the same token and certificate.";
    UnsafePath => "UNSAFE_PATH" [final, keeps_job, refused], "The sender sent a file path that could reach outside the target file system",
        "File mode accepts only relative paths without `..`, `.` or empty components and without NUL bytes, and never writes through a symlink; the entry was refused and nothing outside the target was touched. Use `ferry send --mode file` of the same version as the appliance; if it sent this path, report it.";
    ExcludesInvalid => "EXCLUDES_INVALID" [final, keeps_job, usage], "An exclude list is not valid",
        "Fix the line the message names: one path a line, relative to the file system's root (a leading `/` is allowed), a trailing `/` for a directory, no `..` components; blank lines and lines starting with `#` are ignored. Nothing was sent.";
    SourceTreeUnreadable => "SOURCE_TREE_UNREADABLE" [final, keeps_job, other], "A file or directory of the source tree could not be read",
        "The message names the path and the system's answer. Run the sender as root, or exclude the path (rsync_excludes_linux.txt, see `ferry send --help`), then run it again; what was committed is kept.";
    SourceDeviceUnsupported => "SOURCE_DEVICE_UNSUPPORTED" [final, keeps_job, refused], "A file system of the live server is on a device file mode cannot lay out",
        "File mode migrates file systems on partitions of a disk, or on LVM logical volumes whose physical volumes are partitions; the message names the mount point and what it is on (a whole disk without a partition table, an md array, a loop device backed by a file, nbd, a device-mapper target other than LVM). Move the data onto such a file system, or unmount it and add it to fstab with noauto (an fstab file system that is not mounted is reported and not sent), or migrate the server in block mode (--disk). Nothing was sent.";
    RootFsUnsupported => "ROOT_FS_UNSUPPORTED" [final, keeps_job, refused], "The live server's / is not on a file system file mode can write",
        "File mode makes ext4, ext3 and xfs file systems (and vfat for the EFI system partition) on the target; the message names the type of /. Migrate this server in block mode (--disk). Nothing was sent.";
    DigestMismatch => "DIGEST_MISMATCH" [retry, keeps_job, verification], "The disk on the appliance does not match the source after the transfer",
        "Run the sender again: it re-sends every chunk that differs. If this repeats, the target disk may be faulty.";
    SourceReadFailed => "SOURCE_READ_FAILED" [final, keeps_job, other], "Reading the source disk failed",
        "Check that the source disk or image exists and is readable (run the sender as root for block devices).";
    SourceMountedRw => "SOURCE_MOUNTED_RW" [final, keeps_job, usage], "A file system of a source disk is mounted read-write: choose how to copy it consistently",
        "A running server changes its file systems while they are read, and the copy would be torn. Run the sender again with --consistency freeze (live passes, then each mounted file system frozen for the last short one, at most --max-freeze), --consistency snapshot (an LVM snapshot of each file system; it must be on LVM with free extents in its volume group), or --consistency none (crash-consistent at best: the appliance replays the journals). Nothing was sent.";
    FreezeFailed => "FREEZE_FAILED" [final, keeps_job, other], "Freezing or thawing a file system of the source failed",
        "The message names the file system and the kernel's answer. Run the sender as root; a file system that does not support freezing (or is frozen by someone else) cannot be copied with --consistency freeze: use --consistency snapshot where it is on LVM, or stop what writes it and unmount it or remount it read-only. Every file system this run froze was thawed.";
    FreezeTooLong => "FREEZE_TOO_LONG" [final, keeps_job, other], "The source's file systems stayed frozen longer than --max-freeze, and were thawed",
        "The final pass did not end within --max-freeze: the changes left to send were too many for the link, or reading stalled. Nothing was verified; the file systems are thawed. Run the sender again (it resumes), at a quieter time or with a larger --max-freeze.";
    SnapshotFailed => "SNAPSHOT_FAILED" [final, keeps_job, other], "An LVM snapshot of a source file system could not be taken, read or removed",
        "The message names the logical volume and the LVM command. A snapshot needs the file system on an LVM logical volume whose volume group has free extents (vgs shows VFree); extend the volume group or use --consistency freeze. A snapshot left by an earlier run (named ferry-snap-*) is removed by the next run.";
    TransferInterrupted => "TRANSFER_INTERRUPTED" [retry, keeps_job, network], "Do Rsync Disk x Failed: the data transfer was interrupted",
        "Check the network between this server and the intermediate instance and that the instance is running, then run the sender again; it resumes where it stopped.";
    LayoutInvalid => "LAYOUT_INVALID" [final, keeps_job, refused], "The disk layout description is not valid",
        "Fix the layout description as the message says (sizes, partition types, UUIDs, labels, mount points), then run again; nothing was written.";
    NetworkMapInvalid => "NETWORK_MAP_INVALID" [final, keeps_job, refused], "The network map does not fit the migrated server's network",
        "The message names the map's entry and what is wrong: a source NIC the server's configuration does not have, two NICs onto one new NIC, a kept address outside the new subnet, a kept NIC without the new NIC's MAC. Fix the map (docs/repair.md describes it) and run the repair again; nothing was changed.";
    HookInvalid => "HOOK_INVALID" [final, keeps_job, refused], "The operator's hooks are not valid",
        "The message names the hook and what is wrong: a name (1 to 64 letters, digits, `-`, `_`, `.`) given twice or malformed, an empty script or one over 64 KiB, a timeout outside 1 to 3600 s, an unknown phase (after-repair, first-boot) or field, more than 32 hooks, or first-boot hooks for a system without systemd. Fix the hooks (docs/repair.md describes them) and give them again (POST /v1/job/hooks, the configuration's `hooks`, or `ferry repair --hooks`); nothing was run.";
    HookFailed => "HOOK_FAILED" [final, keeps_job, refused], "An operator's hook that must succeed failed",
        "The message names the hook, how it ended (its exit status, or its timeout) and the end of what it printed; the round's report and handoff.json have all of it. The repair's own steps are done and nothing was handed off. Fix the script (or the migrated system it expects), give the hooks again (POST /v1/job/hooks) and start the job again (POST /v1/job/start); an after-repair hook runs again with every repair, so it must be safe to run twice.";
    LayoutTooLarge => "LAYOUT_TOO_LARGE" [final, keeps_job, refused], "The layout does not fit the target disk",
        "Attach a larger target disk or shrink the partitions of the layout (the message gives the numbers); nothing was written.";
    FilesDoNotFit => "FILES_DO_NOT_FIT" [final, keeps_job, refused], "The used data of the source's file systems does not fit the target disks with headroom",
        "File mode lays out the targets for what the source's file systems hold: each needs its used bytes × 1.1 + 64 MiB plus its own overhead (the message gives per file system the used and needed MiB, per disk what it needs and what the target has). Attach larger target disks, or exclude what need not move (rsync_excludes_linux.txt), then run the sender again; nothing was written.";
    TargetInUse => "TARGET_IN_USE" [final, keeps_job, refused], "The target disk is mounted, in use, or the appliance's own system disk",
        "Unmount the disk and stop what uses it (swap, loop devices, LVM), or name another disk. Only if you are sure, pass --force to override; the appliance's own disk is never a valid target.";
    Internal => "INTERNAL" [final, keeps_job, other], "An internal error occurred in the appliance",
        "Check the appliance's log for details and report the problem; committed data is kept.";
    GrubFailed => "GRUB_FAILED" [final, keeps_job, refused], "Do Grub Failed",
        "The migrated system has no usable GRUB 2 (none installed, GRUB legacy older than 1.9, or grub-install/grub-mkconfig failed in it). Install GRUB 2 on the source server (Debian/Ubuntu: grub-pc or grub-efi-amd64; RHEL family and SUSE: grub2-pc or grub2-efi-x64), then run the migration again.";
    VirtioCheckFailed => "VIRTIO_CHECK_FAILED" [final, keeps_job, refused], "check virtio failed",
        "An installed kernel of the migrated system lacks the VirtIO drivers (virtio_blk, virtio_net, virtio_pci) it needs to boot on the cloud. Install a kernel with VirtIO drivers on the source server (or remove the old kernel), then run the migration again. Windows: install the VirtIO drivers on the source server (the virtio-win package: a storage driver, viostor or vioscsi, started at boot, and netkvm for the network), then run `ferry check` and the migration again.";
    RepairToolMissing => "REPAIR_TOOL_MISSING" [final, keeps_job, refused], "A tool the repair needs is missing from the migrated system",
        "Install the named package on the source server (update-initramfs: initramfs-tools; dracut: dracut; grub-install: grub-pc / grub2-pc), or pick the right recipe with --recipe, then run the migration again.";
    SandboxUnavailable => "SANDBOX_UNAVAILABLE" [final, keeps_job, refused], "The appliance cannot confine the migrated system's own tools, so it does not run them",
        "The repair runs the migrated system's programs (grub-install, update-initramfs, dracut and their hooks) only in a sandbox: new PID, mount, network, IPC and UTS namespaces, a pids cgroup, seccomp and a reduced capability set. The message names what the kernel or the service refused. Run the appliance from its own image (its kernel and ferry.service, which delegates the pids controller and allows these namespaces), then start the job again (POST /v1/job/start). Nothing of the migrated system was run.";
    UnsupportedOs => "UNSUPPORTED_OS" [final, keeps_job, refused], "The migrated operating system is not supported",
        "ferry repairs Linux systems: check that the root given is the migrated system's root file system (it must hold /etc), or add a recipe for this distribution under image-recipes/.";
    RepairFailed => "REPAIR_FAILED" [final, keeps_job, refused], "Repairing the migrated system failed",
        "A repair step failed; the report names the step and the command. Fix the cause in the migrated system (or on the source server) and run the repair again: steps already done are not repeated.";
    RepairBadInput => "REPAIR_BAD_INPUT" [final, keeps_job, refused], "The repair was given an invalid root or device map",
        "Give the directory where the migrated root file system is mounted and the disks it was migrated to (`--disk SOURCE=TARGET`, e.g. --disk /dev/sda=/dev/vdb); the root file system must be among them.";
    ToolMissing => "TOOL_MISSING" [final, keeps_job, refused], "A tool the appliance needs is not installed",
        "Install the Debian package named in the message on the appliance (`apt-get install -y <package>`; the appliance image has them all, see scripts/packages.txt), then start the job again (POST /v1/job/start).";
    SystemNotFound => "SYSTEM_NOT_FOUND" [final, keeps_job, refused], "No migrated operating system was found on the received disks",
        "Disk 0 must be the source server's system disk, with a Linux root file system holding /etc/fstab, or an NTFS partition holding Windows/System32/config/SYSTEM. For a migration of data disks only, run the appliance with --no-build (config: build = false); otherwise send the system disk first (`ferry send --disk /dev/sda --disk ...`) and start the job again.";
    VerifyFailed => "VERIFY_FAILED" [final, keeps_job, verification], "The disks failed verification before the handoff",
        "A file system of the migrated disks is not clean after the repair, or a disk re-read differs from what was committed and repaired (the message names the file system and its check, or the disk, chunk and offset). Check the target disk and the source server's file systems (fsck), then start the job again (POST /v1/job/start) and run the sender again: it re-sends what differs. Nothing was handed off.";
    BootTestFailed => "BOOT_TEST_FAILED" [final, keeps_job, refused], "The repaired disks did not boot in the appliance's boot test",
        "The message names the stage the boot reached (firmware, bootloader, kernel, initramfs, root, target, login) and why it stopped (GRUB prompt, no kernel, root not found, emergency mode, kernel panic, no DHCP request, timeout), with the console's last lines; GET /v1/job/boot-test/console on port 8080 has the whole console. Nothing was written to the disks and nothing was handed off. Fix the cause on the source server and start the job again (POST /v1/job/start), or hand the disks off as they are with POST /v1/job/handoff and {\"despite_failed_boot_test\": true}, which the manifest records.";
    BootTestNotFound => "BOOT_TEST_NOT_FOUND" [final, keeps_job, refused], "No boot test has run in this job yet",
        "The boot test runs after verify in a job that builds (unless boot_test = false); watch GET /v1/job for the step `boot`, then read it again.";
    ProcessingUnknown => "PROCESSING_UNKNOWN" [final, keeps_job, network], "The disks are committed, but how the appliance's pipeline ended is unknown",
        "The appliance could not be reached while it ran the round's pipeline (grow, repair, verify, handoff); it goes on without the sender. Run the sender again to follow the round to its end (nothing is re-sent), or read the outcome in GET /v1/job on port 8080 (Finished or Waiting, or InError with the code and hint).";
    FsUnsupported => "FS_UNSUPPORTED" [final, keeps_job, refused], "A file system of the migrated system cannot be mounted or checked by the appliance",
        "The message names the file system and why (XFS V4, which the appliance's kernel and current kernels no longer mount; an ext4 feature the appliance's kernel does not know; a system file system ferry does not repair, such as btrfs). Move the system onto a supported file system on the source server (ext4, or XFS made by a current mkfs.xfs, which is V5), then run `ferry check` and the migration again.";
    LvmUnsupported => "LVM_UNSUPPORTED" [final, keeps_job, refused], "A logical volume of the migrated system has a layout the appliance cannot reach",
        "The message names the logical volume and its layout. The appliance reaches linear logical volumes (one run of extents on one physical volume of the migrated disks) through loop devices; striped, mirrored, raid, thin, cache and multi-segment volumes, and volumes on a physical volume that was not migrated, are copied block for block but not mounted or grown. Move the system's file systems (/, /boot, /usr, /var) onto linear volumes on the source server (`lvconvert -m0`, `pvmove` to one PV), or migrate every disk of the volume group, then run `ferry check` and the migration again.";
    LvmMetadataInvalid => "LVM_METADATA_INVALID" [final, keeps_job, refused], "The LVM metadata of a migrated physical volume cannot be read",
        "The message names the partition and what is wrong (label, metadata area header, checksum, text). Check the volume group on the source server (`vgck`, `pvck`; `vgcfgrestore` from /etc/lvm/backup repairs damaged metadata), then run `ferry check` and the migration again.";
    SpaceLow => "SPACE_LOW" [final, keeps_job, refused], "Not enough free space or inodes on / or /boot for the repair",
        "The repair writes a new initramfs per kernel into /boot and new configuration files into /. Free the space or inodes the message names on the source server (remove old kernels: `apt autoremove`, `dnf remove --oldinstallonly`; clear /var/cache), then run `ferry check` and the migration again.";
    SelinuxEnforcing => "SELINUX_ENFORCING" [final, keeps_job, refused], "check selinux failed: SELinux is enforcing on the migrated system",
        "Nothing to do for ferry: the files the repair writes get the labels the system's own policy gives them (its file_contexts), so the first boot is not slowed by a relabel. Only where the migrated file systems carry no labels at all (a file copy that did not keep security.selinux) or the policy's file_contexts is missing does the repair schedule a full relabel on the first boot (`/.autorelabel`), which makes that boot longer; the report says which.";
    NetworkStatic => "NETWORK_STATIC" [final, keeps_job, refused], "The network has a static configuration that will not work on the cloud",
        "Nothing to do by default: the repair configures every network interface by DHCP on the cloud and keeps the old files aside; the cloud assigns the addresses. To keep a static address (ifupdown), give the appliance a network map (network_map, docs/repair.md) that keeps the NIC onto the new NIC of its subnet.";
    MountPointMissing => "MOUNT_POINT_MISSING" [final, keeps_job, refused], "A mount point the fstab names is missing from the file system above it",
        "Nothing to do for the migration: the repair mounts the system read-write and makes the directory. A read-only look (`ferry check`, the pipeline's check) cannot make it, so the file system the message names was not mounted there and what lies on it was not inspected. To have it inspected, create the directory on the source server (`mkdir` the mount point in the file system above it, with the file system unmounted), then run `ferry check` again.";
    PlatformAgents => "PLATFORM_AGENTS" [final, keeps_job, refused], "Guest agents of the old platform are installed",
        "Nothing to do: the repair masks the agents the message names (VMware tools, Hyper-V daemons, Xen tools) so they do not fail on the cloud. Uninstall them on the source server after the migration if you no longer need them.";
    LiveConsistency => "LIVE_CONSISTENCY" [final, keeps_job, refused], "The disks are read while the server runs",
        "Block mode reads each disk as it is while it is being read: data that changes meanwhile may be inconsistent on the target. Stop the services that write (databases, mail) during the transfer, or run an incremental job (--incremental) and make the last round with them stopped.";
    WindowsSanPolicy => "WINDOWS_SAN_POLICY" [final, keeps_job, refused], "Windows would bring the data disks up offline, without their drive letters",
        "Nothing to do: the appliance sets the SAN policy of the migrated Windows to bring every disk online (partmgr SanPolicy = 1) before the handoff, so data disks keep their drive letters (the FAQ's \"drive letters of data disks are missing\"). The job's report records the value it replaced.";
    JobStopped => "JOB_STOPPED" [final, keeps_job, refused], "The migration task is stopped",
        "Start the job again (POST /v1/job/start on port 8080, or from the control plane), then run the sender again; committed data is kept and the transfer resumes.";
    JobFinished => "JOB_FINISHED" [final, keeps_job, refused], "The migration task is completed",
        "This job accepts no more data. To migrate the source server again, create a new migration task for it and start that task.";
    JobExpired => "JOB_EXPIRED" [final, keeps_job, refused], "The migration task has expired",
        "A task is valid for its validity period (7 to 90 days, 30 by default) from its creation. Delete the task and create a new migration task for the source server.";
    JobInError => "JOB_IN_ERROR" [final, keeps_job, refused], "The migration task fails",
        "Read the job's last error (GET /v1/job on port 8080: code, message and hint), fix its cause, then start the job again (POST /v1/job/start) and run the sender again.";
    JobDeleting => "JOB_DELETING" [final, keeps_job, refused], "The migration task is being deleted",
        "Wait until the task is deleted, or create another new migration task for the source server.";
    JobBusy => "JOB_BUSY" [final, keeps_job, refused], "The migration task is processing the received data and accepts no data now",
        "Wait until the job is Finished or Waiting (GET /v1/job on port 8080); an incremental job accepts the next round when it is Waiting.";
    JobHandedOff => "JOB_HANDED_OFF" [final, keeps_job, refused], "The round's disks are handed off to the control plane for their snapshot",
        "The appliance writes nothing to the disks until the control plane has taken the round's image and starts the next round (POST /v1/job/start on port 8080). Run the sender again after that; it sends only what changed.";
    DiskHandedOff => "DISK_HANDED_OFF" [final, keeps_job, refused], "The disk is handed off: it must not change until the next round starts",
        "The round's disks are what the handoff manifest (GET /v1/job/handoff) names, for the control plane's snapshot; a reset would delete what it is about to take. On a Waiting job, take the snapshot, start the next round (POST /v1/job/start), then reset the disk. A Finished job's disks are final: delete the job (POST /v1/job/delete) to start over.";
    SenderNotFound => "SENDER_NOT_FOUND" [final, keeps_job, refused], "The appliance serves no sender release of that name",
        "GET /v1/identity names the release this appliance serves (sender.file, fetched at sender.path) and its SHA-256. An appliance without one (sender: null) was built without scripts/release.sh; copy the release to the source server another way, or set sender_dir in the config to a directory holding the tarball and its SHA256SUMS.";
    HandoffNotFound => "HANDOFF_NOT_FOUND" [final, keeps_job, refused], "No round of this job has been handed off yet",
        "The handoff manifest is written when a round's pipeline ends, the job then Finished or Waiting; watch GET /v1/job or the webhook's event with a `handoff` field, then read it again.";
    JobTransitionRefused => "JOB_TRANSITION_REFUSED" [final, keeps_job, refused], "The operation is not allowed in the job's current state",
        "Ready: start or delete. Running: stop it while Preparing or Syncing; a running job cannot be deleted. Stopped and InError: start or delete. Waiting: stop, delete, or run the sender for the next round. Finished and Expired: delete.";
    BadBandwidth => "BAD_BANDWIDTH" [final, keeps_job, usage], "The bandwidth limit is not valid",
        "POST /v1/job/bandwidth takes the JSON body {\"bytes_per_sec\": N} with N from 65536 (64 KiB/s) to 2^50 (1 PiB/s), or 0 or null to lift the limit (the field is required); `ferry send --bwlimit` takes a rate such as 50M (bytes per second, K/M/G are binary) or 400mbit (bits per second). The lower of the two applies.";
    BadRequest => "BAD_REQUEST" [final, keeps_job, usage], "The control API request is not valid",
        "The detail says what was wrong: a path parameter (a disk index is a whole number) or a body that is not what the endpoint takes. docs/control-api.md lists each endpoint with its method, path and body.";
    NotFound => "NOT_FOUND" [final, keeps_job, usage], "The control API has no such endpoint",
        "docs/control-api.md lists the endpoints; the job's are under /v1/job and need the control token.";
    MethodNotAllowed => "METHOD_NOT_ALLOWED" [final, keeps_job, usage], "The endpoint does not take this method",
        "The Allow header lists the methods it takes; actions on the job are POST, reads are GET (docs/control-api.md).";
    RequestTooLarge => "REQUEST_TOO_LARGE" [final, keeps_job, usage], "The request body is larger than the control API takes",
        "Bodies of the control API are small JSON objects (at most 16 KiB; the hooks of POST /v1/job/hooks at most 512 KiB); send only the fields the endpoint takes.";
    RequestTimeout => "REQUEST_TIMEOUT" [final, keeps_job, usage], "The request was not received and answered in time",
        "Send the whole request at once and try again; a request that takes longer than the control API's timeout is cut.";
    BadValidity => "BAD_VALIDITY" [final, keeps_job, refused], "The validity period of a migration task must be between 7 and 90 days",
        "Set validity_days in the appliance's config (or --validity-days) to a whole number of days from 7 to 90; the default is 30.";
    ControlUnauthorized => "CONTROL_UNAUTHORIZED" [final, keeps_job, refused], "The control token is missing or not valid",
        "Send `Authorization: Bearer <control token>`. The control token is set with --control-token-file, FERRY_CONTROL_TOKEN or control_token in the config (embedded mode keeps it in `<state-dir>/control-token`); it is not the sender's job token.";
    ControlRateLimited => "CONTROL_RATE_LIMITED" [final, keeps_job, refused], "Too many wrong control tokens from this address",
        "Wrong control tokens from this address are answered slowly and then refused for a while; a correct one is always accepted. Wait the seconds of the Retry-After header, then send the right control token (see CONTROL_UNAUTHORIZED).";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that carries a stable code, for callers that branch on it.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
pub struct CodedError {
    pub code: ErrorCode,
    /// The message: the code's own, or the peer's wording when it came over the wire.
    pub message: String,
    /// Specifics of this occurrence (which disk, which offset).
    pub detail: String,
    /// The error this code was added to ([`Code::code`]), with its chain.
    #[source]
    pub cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl CodedError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        CodedError {
            code,
            message: code.message().to_owned(),
            detail: detail.into(),
            cause: None,
        }
    }
}

/// Build an `anyhow::Error` carrying a code.
pub fn coded(code: ErrorCode, detail: impl Into<String>) -> anyhow::Error {
    CodedError::new(code, detail).into()
}

/// Add a code to an error as context: the cause and its own code (a
/// `TOOL_MISSING` inside a `GRUB_FAILED`) stay in the chain, and
/// [`find_coded`] finds the innermost one.
pub trait Code<T> {
    fn code(self, code: ErrorCode) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Code<T> for Result<T, E> {
    fn code(self, code: ErrorCode) -> anyhow::Result<T> {
        self.map_err(|e| {
            let e = e.into();
            // Already this code (a step's own error, coded again by its
            // caller): said once, not "CODE: message: CODE: message".
            if find_coded(&e).is_some_and(|c| c.code == code) {
                return e;
            }
            anyhow::Error::new(CodedError {
                cause: Some(e.into()),
                ..CodedError::new(code, "")
            })
        })
    }
}

/// The innermost coded error of an error's chain: the most specific cause
/// (`TOOL_MISSING` with its package rather than the `GRUB_FAILED` around
/// it), which is what the operator must act on.
pub fn find_coded(err: &anyhow::Error) -> Option<&CodedError> {
    err.chain()
        .filter_map(|e| e.downcast_ref::<CodedError>())
        .last()
}

/// The code of an error ([`find_coded`], or `INTERNAL` for an error nobody
/// coded) and its detail: the whole chain, each coded link as its code and
/// detail, for the peer and the job's last error, which show the code's
/// message and hint beside it.
/// The first disk index a detail names: "disk 3" in "disk 3: writing ...".
fn disk_named_in(detail: &str) -> Option<u32> {
    detail.match_indices("disk ").find_map(|(at, word)| {
        let rest = &detail[at + word.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

pub fn describe(err: &anyhow::Error) -> (ErrorCode, String) {
    let code = find_coded(err)
        .map(|c| c.code)
        .unwrap_or(ErrorCode::Internal);
    let parts: Vec<String> = err
        .chain()
        .filter_map(|e| match e.downcast_ref::<CodedError>() {
            Some(c) if c.code == code && c.detail.is_empty() => None,
            Some(c) if c.code == code => Some(c.detail.clone()),
            Some(c) if c.detail.is_empty() => Some(c.code.to_string()),
            Some(c) => Some(format!("{}: {}", c.code, c.detail)),
            None => Some(e.to_string()),
        })
        .collect();
    (code, parts.join(": "))
}

/// The catalogue as a Markdown page (docs/errors.md is this, verbatim).
pub fn catalogue_markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\n\
         Generated by `ferry errors --markdown`; do not edit by hand.\n\n\
         Every error that ferry reports to a person or to the control plane carries one of\n\
         these stable codes, with its message and a hint of what to do. The sender prints\n\
         all three when the appliance refuses or fails; `GET /v1/job` shows the job's last\n\
         error the same way.\n\n\
         `Retry`: whether `ferry send` tries again by itself. `Job`: whether the error puts\n\
         the job InError when it happens while the appliance writes (a failure of the round's\n\
         pipeline always does). `Exit`: the exit status of `ferry send` when it stops with the\n\
         error:\n\n",
    );
    out.push_str(&exit_statuses_markdown());
    out.push_str(
        "\n| Code | Message | What to do | Retry | Job | Exit |\n|---|---|---|---|---|---|\n",
    );
    for c in ErrorCode::ALL {
        let cell = |s: &str| s.replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            c.as_str(),
            cell(c.message()),
            cell(c.hint()),
            match c.retry() {
                Retry::Retry => "retries",
                Retry::Final => "stops",
            },
            match c.job_effect() {
                JobEffect::FailsJob => "InError",
                JobEffect::KeepsJob => "kept",
            },
            c.exit().status(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
            assert!(!c.hint().is_empty());
        }
        assert_eq!(ErrorCode::parse("NO_SUCH_CODE"), None);
    }

    #[test]
    fn faq_wordings_are_kept() {
        assert_eq!(
            ErrorCode::ConnectFailed.message(),
            "Connect to Server Failed"
        );
        assert_eq!(
            ErrorCode::TargetWriteFailed.message(),
            "Do Rsync Disk x Failed"
        );
        assert_eq!(ErrorCode::GrubFailed.message(), "Do Grub Failed");
        assert_eq!(
            ErrorCode::VirtioCheckFailed.message(),
            "check virtio failed"
        );
    }

    #[test]
    fn a_code_added_around_a_coded_cause_keeps_the_cause() {
        use anyhow::Context;
        let err = Err::<(), _>(coded(
            ErrorCode::ToolMissing,
            "grub-install (package grub-pc)",
        ))
        .context("running grub-install in /mnt/root")
        .code(ErrorCode::GrubFailed)
        .context("repairing the system")
        .unwrap_err();
        assert_eq!(
            find_coded(&err).map(|c| c.code),
            Some(ErrorCode::ToolMissing)
        );
        assert_eq!(
            describe(&err),
            (
                ErrorCode::ToolMissing,
                "repairing the system: GRUB_FAILED: running grub-install in /mnt/root: grub-install (package grub-pc)"
                    .to_owned()
            )
        );
        // Without a coded cause, the added code is the one.
        let err = Err::<(), _>(std::io::Error::other("boom"))
            .code(ErrorCode::GrubFailed)
            .unwrap_err();
        assert_eq!(describe(&err), (ErrorCode::GrubFailed, "boom".to_owned()));
        // Nobody coded it: INTERNAL with the whole chain.
        let err = anyhow::anyhow!("boom").context("doing x");
        assert_eq!(
            describe(&err),
            (ErrorCode::Internal, "doing x: boom".to_owned())
        );
    }

    #[test]
    fn the_catalogue_says_which_codes_retry_and_which_fail_the_job() {
        let retried: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.retry() == Retry::Retry)
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            retried,
            [
                "CONNECT_FAILED",
                "AUTH_RATE_LIMITED",
                "FRAME_MALFORMED",
                "SESSIONS_FULL",
                "DISK_BUSY",
                "DIGEST_MISMATCH",
                "TRANSFER_INTERRUPTED"
            ]
        );
        let failing: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.job_effect() == JobEffect::FailsJob)
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            failing,
            ["TARGET_WRITE_FAILED", "TARGET_FULL", "LEDGER_FAILED"]
        );
    }

    #[test]
    fn the_exit_status_tells_the_kind_of_failure() {
        let cases = [
            (ErrorCode::Internal, 1),
            (ErrorCode::SourceReadFailed, 1),
            (ErrorCode::Usage, 2),
            (ErrorCode::BadChunkSize, 2),
            (ErrorCode::WrongService, 2),
            (ErrorCode::AuthFailed, 3),
            (ErrorCode::TargetTooSmall, 3),
            (ErrorCode::JobStopped, 3),
            (ErrorCode::GrubFailed, 3),
            (ErrorCode::ConnectFailed, 4),
            (ErrorCode::TransferInterrupted, 4),
            (ErrorCode::TlsFingerprintMismatch, 4),
            (ErrorCode::ProcessingUnknown, 4),
            (ErrorCode::DigestMismatch, 5),
            (ErrorCode::ChunkHashMismatch, 5),
            (ErrorCode::VerifyFailed, 5),
        ];
        for (code, status) in cases {
            assert_eq!(code.exit().status(), status, "{code}");
        }
        let statuses: Vec<u8> = exit_statuses().iter().map(|(s, _)| *s).collect();
        assert_eq!(statuses, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn coded_error_is_found_through_context() {
        use anyhow::Context;
        let err = Err::<(), _>(coded(ErrorCode::DiskBusy, "disk 0"))
            .context("opening disk 0")
            .unwrap_err();
        assert_eq!(find_coded(&err).map(|c| c.code), Some(ErrorCode::DiskBusy));
        assert_eq!(
            format!("{err:#}"),
            "opening disk 0: DISK_BUSY: Another sender is already writing this disk (disk 0)"
        );
    }

    #[test]
    fn do_rsync_disk_names_the_disk_of_the_detail() {
        let cases = [
            ("disk 1: writing chunk 3", "Do Rsync Disk 1 Failed"),
            ("writing disk 12 at offset 0", "Do Rsync Disk 12 Failed"),
            ("the target is gone", "Do Rsync Disk x Failed"),
            ("disk of the source", "Do Rsync Disk x Failed"),
        ];
        for (detail, want) in cases {
            assert_eq!(
                ErrorCode::TargetWriteFailed.message_for(detail),
                want,
                "{detail}"
            );
        }
        assert_eq!(
            ErrorCode::AuthFailed.message_for("disk 1"),
            ErrorCode::AuthFailed.message()
        );
    }

    #[test]
    fn a_code_added_to_an_error_of_the_same_code_is_said_once() {
        let err = anyhow::Context::context(
            Err::<(), _>(coded(ErrorCode::SystemNotFound, "no /etc/os-release")),
            "reading the received disks",
        )
        .code(ErrorCode::SystemNotFound)
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "reading the received disks: SYSTEM_NOT_FOUND: No migrated operating system was found on the received disks (no /etc/os-release)"
        );
        assert_eq!(
            describe(&err),
            (
                ErrorCode::SystemNotFound,
                "reading the received disks: no /etc/os-release".to_owned()
            )
        );
    }
}
