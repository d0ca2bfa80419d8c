//! Consistency of a live source: what `ferry send --consistency` does about
//! file systems that are mounted, and written, while their disk is read.
//!
//! Block mode reads whatever the disk holds at the moment it reads it; on a
//! running server that is a torn file system. Before anything connects the
//! sender finds the mounted file systems of each source disk
//! ([`mounts`]) and refuses to start, listing them, when one is mounted
//! read-write and no choice was made. The choices:
//!
//! - `freeze`: the disk is copied live, then re-read in further live passes
//!   that send only the chunks that changed since the pass before, until
//!   the change is small or [`MAX_LIVE_PASSES`] is reached; then every
//!   mounted file system of the disk is frozen (FIFREEZE), the final pass
//!   sends what is left, and they are thawed — at the latest after
//!   `--max-freeze`, and by a watchdog process if the sender dies.
//! - `snapshot`: each file system on LVM is read through a snapshot volume
//!   taken at the start and removed at the end ([`snapshot`]).
//! - `none`: copied as it is, crash-consistent at best; the appliance
//!   replays the journals before it mounts the file systems.

pub mod freeze;
mod ioctl;
pub mod mounts;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::job::errors::{coded, ErrorCode};
pub use freeze::FreezeRecord;
use freeze::Frozen;
pub use mounts::{Host, MountedFs};

/// How a source with file systems mounted read-write is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// LVM snapshots of the file systems, read and removed at the end.
    Snapshot,
    /// Live passes, then the file systems frozen for the final pass.
    Freeze,
    /// As it is: crash-consistent at best.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Snapshot => "snapshot",
            Mode::Freeze => "freeze",
            Mode::None => "none",
        }
    }
}

/// What the command line chose.
#[derive(Debug, Clone)]
pub struct ConsistencySettings {
    pub mode: Option<Mode>,
    /// The longest the file systems may stay frozen.
    pub max_freeze: Duration,
    /// Track the source disks' writes, so that passes after the first
    /// read only what changed (`--no-track`: every pass reads it all).
    pub track: bool,
}

impl Default for ConsistencySettings {
    fn default() -> ConsistencySettings {
        ConsistencySettings {
            mode: None,
            max_freeze: DEFAULT_MAX_FREEZE,
            track: true,
        }
    }
}

pub(crate) const DEFAULT_MAX_FREEZE: Duration = Duration::from_secs(60);

/// Live passes end when one changed no more than this...
pub(crate) const SMALL_CHANGE: u64 = 64 << 20;
/// ...or after this many.
pub const MAX_LIVE_PASSES: u32 = 4;

/// A test hook: hold the file systems frozen this many milliseconds before
/// the final pass reads (within `--max-freeze`), so that a test can catch
/// the sender frozen.
pub const HOLD_FROZEN_ENV: &str = "FERRY_SEND_HOLD_FROZEN_MS";

/// A test hook: wait this many milliseconds before freezing, after the
/// last live pass, saying so first, so that a test can write what must be
/// in the frozen pass (and nothing after it).
pub const HOLD_BEFORE_FREEZE_ENV: &str = "FERRY_SEND_HOLD_BEFORE_FREEZE_MS";

/// A test hook's milliseconds, when it is set.
fn env_millis(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

/// The mounted file systems of one source disk.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    pub disk: u32,
    pub source: PathBuf,
    pub mounted: Vec<MountedFs>,
}

impl DiskPlan {
    pub(crate) fn read_write(&self) -> Vec<MountedFs> {
        self.mounted
            .iter()
            .filter(|m| m.read_write)
            .cloned()
            .collect()
    }
}

/// Find the mounted file systems of every source disk and check the choice
/// against them: none made while one is mounted read-write is refused,
/// listing them and the choices; `snapshot` needs each on LVM.
pub fn plan(
    host: &Host,
    disks: &[PathBuf],
    settings: &ConsistencySettings,
) -> Result<Vec<DiskPlan>> {
    let mut plans = Vec::new();
    for (i, source) in disks.iter().enumerate() {
        let mounted = host.mounted(source).map_err(|e| {
            coded(
                ErrorCode::SourceReadFailed,
                format!(
                    "finding the mounted file systems of disk {i} ({}): {e:#}",
                    source.display()
                ),
            )
        })?;
        plans.push(DiskPlan {
            disk: i as u32,
            source: source.clone(),
            mounted,
        });
    }
    let live: Vec<String> = plans
        .iter()
        .flat_map(|p| {
            p.read_write()
                .into_iter()
                .map(move |m| format!("disk {} ({}): {}", p.disk, p.source.display(), m.describe()))
        })
        .collect();
    match settings.mode {
        None if !live.is_empty() => Err(coded(
            ErrorCode::SourceMountedRw,
            format!(
                "mounted read-write: {}; choose --consistency freeze, snapshot or none",
                live.join("; ")
            ),
        )),
        Some(Mode::Snapshot) => {
            let off_lvm: Vec<String> = plans
                .iter()
                .flat_map(|p| p.read_write())
                .filter(|m| m.lvm.is_none())
                .map(|m| m.describe())
                .collect();
            if off_lvm.is_empty() {
                Ok(plans)
            } else {
                Err(coded(
                    ErrorCode::SnapshotFailed,
                    format!(
                        "not on an LVM logical volume, so no snapshot can be taken: {}",
                        off_lvm.join(", ")
                    ),
                ))
            }
        }
        _ => Ok(plans),
    }
}

/// One pass over a disk.
#[derive(Debug, Clone)]
pub enum Pass {
    /// Read the disk as it is; from the second on, send what changed.
    Live { n: u32 },
    /// Read the disk with its volumes' extents from their snapshots.
    Snapshot {
        n: u32,
        overlay: std::sync::Arc<snapshot::Overlay>,
        what: String,
    },
    /// The file systems are frozen: send what changed, before `deadline`.
    Frozen {
        n: u32,
        deadline: Instant,
        /// The test hook's wait before reading ([`HOLD_FROZEN_ENV`]).
        hold: Duration,
        what: String,
    },
}

impl Pass {
    /// What the sender says as the pass starts (nothing for a plain first one).
    pub fn announce(&self, disk: u32) -> Option<String> {
        match self {
            Pass::Live { n: 1 } => None,
            Pass::Live { n } => Some(format!("ferry send: disk {disk}: live pass {n}")),
            Pass::Frozen { n, what, .. } => Some(format!(
                "ferry send: disk {disk}: froze {what}; final pass {n}"
            )),
            Pass::Snapshot { what, .. } => Some(format!(
                "ferry send: disk {disk}: reading the snapshots {what}"
            )),
        }
    }

    pub fn number(&self) -> u32 {
        match self {
            Pass::Live { n } | Pass::Frozen { n, .. } | Pass::Snapshot { n, .. } => *n,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Serialize)]
pub struct PassRecord {
    pub pass: u32,
    pub frozen: bool,
    /// Chunks sent in this pass (data and zeros) and their bytes.
    pub changed_chunks: u64,
    pub changed_bytes: u64,
    /// Bytes this pass read from the source disk.
    pub read_bytes: u64,
    /// How the pass chose what to read.
    #[serde(flatten)]
    pub read: PassRead,
    pub seconds: f64,
}

/// How a pass chose what to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PassRead {
    /// Only the chunks the change tracker saw written since the pass
    /// before began (and any whose content this sender did not know).
    pub tracked: bool,
    /// Bytes the tracker saw written in that time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_bytes: Option<u64>,
    /// Why a pass after the first read the whole disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whole_disk_because: Option<String>,
}

/// What a pass counted, for its record.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassCounts {
    pub changed_chunks: u64,
    pub changed_bytes: u64,
    pub read_bytes: u64,
}

/// How one disk was copied.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskConsistency {
    pub disk: u32,
    /// Its mounted file systems ("/mnt/data (ext4 on /dev/loop3)"), the
    /// read-write ones that the choice was about.
    pub read_write: Vec<String>,
    pub read_only: Vec<String>,
    pub passes: Vec<PassRecord>,
    /// How long each file system was frozen (`freeze`).
    pub frozen: Vec<FreezeRecord>,
}

/// The consistency part of the sender's report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsistencyReport {
    pub mode: Option<Mode>,
    pub max_freeze_seconds: f64,
    pub disks: Vec<DiskConsistency>,
}

/// The passes over one disk: which comes next, and the freeze around the
/// last one.
pub(crate) struct Passes {
    mode: Option<Mode>,
    source: PathBuf,
    rw: Vec<MountedFs>,
    max_freeze: Duration,
    frozen: Option<Frozen>,
    snapshots: Option<snapshot::Snapshots>,
    /// The pass running is the frozen one (thawed or not yet).
    frozen_pass: bool,
    pass_started: Instant,
    /// How the pass running chose what to read.
    read: PassRead,
    pub report: DiskConsistency,
    finished: bool,
}

impl Passes {
    pub fn new(disk: u32, plan: Option<&DiskPlan>, settings: &ConsistencySettings) -> Passes {
        let rw = plan.map(|p| p.read_write()).unwrap_or_default();
        let read_only = plan
            .map(|p| {
                p.mounted
                    .iter()
                    .filter(|m| !m.read_write)
                    .map(|m| m.describe())
                    .collect()
            })
            .unwrap_or_default();
        Passes {
            mode: settings.mode,
            source: plan.map(|p| p.source.clone()).unwrap_or_default(),
            report: DiskConsistency {
                disk,
                read_write: rw.iter().map(|m| m.describe()).collect(),
                read_only,
                ..Default::default()
            },
            rw,
            max_freeze: settings.max_freeze,
            frozen: None,
            snapshots: None,
            frozen_pass: false,
            pass_started: Instant::now(),
            read: PassRead::default(),
            finished: false,
        }
    }

    /// The next pass, or None when the disk's copy is complete. Blocking:
    /// it may freeze file systems.
    pub(crate) fn next_pass(&mut self) -> Result<Option<Pass>> {
        if self.finished {
            return Ok(None);
        }
        let n = self.report.passes.len() as u32 + 1;
        self.pass_started = Instant::now();
        let Some(last) = self.report.passes.last() else {
            if self.mode == Some(Mode::Snapshot) && !self.rw.is_empty() {
                return self.snapshot(n).map(Some);
            }
            return Ok(Some(Pass::Live { n }));
        };
        if last.frozen || self.mode != Some(Mode::Freeze) || self.rw.is_empty() {
            self.frozen_pass = false;
            self.finished = true;
            return Ok(None);
        }
        let live = n - 1;
        let growing = live >= 2
            && self.report.passes[self.report.passes.len() - 2].changed_bytes <= last.changed_bytes;
        if last.changed_bytes > SMALL_CHANGE && live < MAX_LIVE_PASSES && !growing {
            drop_cache(&self.source);
            return Ok(Some(Pass::Live { n }));
        }
        if let Some(wait) = env_millis(HOLD_BEFORE_FREEZE_ENV) {
            eprintln!(
                "ferry send: disk {}: waiting {} ms before the freeze ({HOLD_BEFORE_FREEZE_ENV})",
                self.report.disk,
                wait.as_millis()
            );
            std::thread::sleep(wait);
        }
        let frozen = Frozen::freeze(&self.rw, self.max_freeze)?;
        let what = frozen.describe();
        self.frozen = Some(frozen);
        // The freeze wrote the file systems out through their own devices:
        // what this process cached of the disk before may be stale.
        drop_cache(&self.source);
        let hold = env_millis(HOLD_FROZEN_ENV).unwrap_or_default();
        Ok(Some(Pass::Frozen {
            n,
            deadline: self.pass_started + self.max_freeze,
            hold,
            what,
        }))
    }

    /// Take the snapshots of the disk's volumes for its one pass.
    fn snapshot(&mut self, n: u32) -> Result<Pass> {
        let volumes: Vec<mounts::Lv> = self.rw.iter().filter_map(|m| m.lvm.clone()).collect();
        let host = Host::default();
        let disk = host
            .disk_blocks(&self.source)
            .ok()
            .and_then(|b| b.into_iter().next())
            .unwrap_or_default();
        let taken =
            snapshot::Snapshots::take(&volumes, &|pv| snapshot::pv_offset(&host, &disk, pv))?;
        let pass = Pass::Snapshot {
            n,
            overlay: std::sync::Arc::clone(&taken.overlay),
            what: snapshot::describe(&taken.devices),
        };
        self.snapshots = Some(taken);
        Ok(pass)
    }

    /// The frozen pass has read everything: thaw now, while its last
    /// chunks travel and commit. Blocking.
    pub(crate) fn read_done(&mut self) -> Result<()> {
        if let Some(f) = self.frozen.take() {
            self.frozen_pass = true;
            let elapsed = f.elapsed();
            self.report.frozen = f.thaw()?;
            if elapsed > self.max_freeze {
                return Err(self.too_long(elapsed));
            }
        }
        Ok(())
    }

    /// How the pass about to run chooses what to read.
    pub(crate) fn reads(&mut self, read: PassRead) {
        self.read = read;
    }

    /// A pass ended with everything it sent committed. After the frozen
    /// one, the file systems are thawed if they were not yet. Blocking.
    pub fn done(&mut self, counts: PassCounts) -> Result<()> {
        if let Some(s) = self.snapshots.take() {
            s.remove()?;
        }
        let frozen = self.frozen.is_some() || self.frozen_pass;
        self.report.passes.push(PassRecord {
            pass: self.report.passes.len() as u32 + 1,
            frozen,
            changed_chunks: counts.changed_chunks,
            changed_bytes: counts.changed_bytes,
            read_bytes: counts.read_bytes,
            read: std::mem::take(&mut self.read),
            seconds: self.pass_started.elapsed().as_secs_f64(),
        });
        self.read_done()
    }

    /// A pass failed: thaw whatever it froze, and say so when the freeze
    /// is what failed it.
    pub fn abort(&mut self) -> Result<()> {
        if let Some(s) = self.snapshots.take() {
            s.remove()?;
        }
        if let Some(f) = self.frozen.take() {
            self.report.frozen = f.thaw()?;
        }
        Ok(())
    }

    /// The error of a freeze that went past `--max-freeze`.
    pub(crate) fn too_long(&self, elapsed: Duration) -> anyhow::Error {
        coded(
            ErrorCode::FreezeTooLong,
            format!(
                "disk {}: frozen {:.1} s, --max-freeze is {} s; thawed",
                self.report.disk,
                elapsed.as_secs_f64(),
                self.max_freeze.as_secs_f64()
            ),
        )
    }
}

/// The lines the sender prints about it at the end, one per disk that
/// had file systems mounted read-write.
pub(crate) fn summary(report: &ConsistencyReport) -> Vec<String> {
    let mode = report.mode.map_or("", Mode::as_str);
    report
        .disks
        .iter()
        .filter(|d| !d.read_write.is_empty())
        .map(|d| {
            let passes: Vec<String> = d
                .passes
                .iter()
                .map(|p| {
                    let read = if p.read.tracked {
                        format!(" of {} read", crate::disk::human_bytes(p.read_bytes))
                    } else {
                        String::new()
                    };
                    format!(
                        "{} {}{read}",
                        if p.frozen { "frozen" } else { "live" },
                        crate::disk::human_bytes(p.changed_bytes)
                    )
                })
                .collect();
            let mut line = format!(
                "disk {}: --consistency {mode}: {} mounted read-write; {} pass{} ({})",
                d.disk,
                d.read_write.join(", "),
                d.passes.len(),
                if d.passes.len() == 1 { "" } else { "es" },
                passes.join(", ")
            );
            for f in &d.frozen {
                line.push_str(&format!(
                    "; {} frozen {:.2} s",
                    f.mount_point.display(),
                    f.frozen_seconds
                ));
            }
            if report.mode == Some(Mode::None) {
                line.push_str(
                    "; crash-consistent at best: the appliance replays the journals before it mounts them",
                );
            }
            line
        })
        .collect()
}

/// Drop what the page cache holds of the source disk, so that the next
/// pass reads the device. A partition's or a volume's writes go through
/// its own device, not the whole disk's: the disk's cached pages do not
/// see them. (An image file behind a loop device shares the file's cache;
/// only clean pages are dropped, so nothing is lost either way.)
fn drop_cache(source: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(source) else {
        return;
    };
    if let Err(e) = nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    ) {
        tracing::warn!(source = %source.display(), "dropping the page cache: {}", e.desc());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::errors::describe;

    fn fs(point: &str, rw: bool, lvm: bool) -> MountedFs {
        MountedFs {
            source: format!("/dev/x{point}"),
            block: "x".into(),
            dev: "1:1".into(),
            fstype: "ext4".into(),
            mount_points: vec![PathBuf::from(point)],
            read_write: rw,
            lvm: lvm.then(|| mounts::Lv {
                vg: "vg".into(),
                lv: "lv".into(),
            }),
        }
    }

    fn passes(mode: Mode, rw: Vec<MountedFs>) -> Passes {
        let plan = DiskPlan {
            disk: 0,
            source: PathBuf::from("/nonexistent"),
            mounted: rw,
        };
        Passes::new(
            0,
            Some(&plan),
            &ConsistencySettings {
                mode: Some(mode),
                max_freeze: DEFAULT_MAX_FREEZE,
                track: true,
            },
        )
    }

    #[test]
    fn a_disk_without_live_file_systems_gets_one_pass() {
        for mode in [Mode::Freeze, Mode::None, Mode::Snapshot] {
            let mut p = passes(mode, vec![fs("/ro", false, false)]);
            assert!(matches!(p.next_pass().unwrap(), Some(Pass::Live { n: 1 })));
            p.done(PassCounts {
                changed_chunks: 10,
                changed_bytes: 10 << 20,
                read_bytes: 0,
            })
            .unwrap();
            assert!(p.next_pass().unwrap().is_none(), "{mode:?}");
            assert!(p.next_pass().unwrap().is_none(), "{mode:?}");
        }
        let mut p = passes(Mode::None, vec![fs("/rw", true, false)]);
        p.next_pass().unwrap();
        p.done(PassCounts {
            changed_chunks: 1,
            changed_bytes: 1,
            read_bytes: 0,
        })
        .unwrap();
        assert!(p.next_pass().unwrap().is_none(), "none: one pass as it is");
    }

    #[test]
    fn live_passes_go_on_while_the_change_is_large_and_shrinking() {
        let mut p = passes(Mode::Freeze, vec![fs("/rw", true, false)]);
        let big = SMALL_CHANGE * 4;
        assert!(matches!(p.next_pass().unwrap(), Some(Pass::Live { n: 1 })));
        p.done(PassCounts {
            changed_chunks: 100,
            changed_bytes: big * 2,
            read_bytes: 0,
        })
        .unwrap();
        assert!(matches!(p.next_pass().unwrap(), Some(Pass::Live { n: 2 })));
        p.done(PassCounts {
            changed_chunks: 50,
            changed_bytes: big,
            read_bytes: 0,
        })
        .unwrap();
        assert!(matches!(p.next_pass().unwrap(), Some(Pass::Live { n: 3 })));
        // Not shrinking any more: the next pass is the frozen one, which
        // fails here (no such mount point) and freezes nothing.
        p.done(PassCounts {
            changed_chunks: 50,
            changed_bytes: big,
            read_bytes: 0,
        })
        .unwrap();
        let err = p.next_pass().unwrap_err();
        let (code, detail) = describe(&err);
        assert_eq!(code, ErrorCode::FreezeFailed);
        assert!(
            detail.starts_with("opening /rw (ext4 on /dev/x/rw): "),
            "{detail}"
        );
    }

    #[test]
    fn refusals_name_the_file_systems_and_the_choices() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("d.img");
        std::fs::write(&image, b"x").unwrap();
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(sys.join("class/block/loop9/loop")).unwrap();
        std::fs::write(sys.join("class/block/loop9/dev"), "7:9\n").unwrap();
        std::fs::write(
            sys.join("class/block/loop9/loop/backing_file"),
            format!("{}\n", image.display()),
        )
        .unwrap();
        let mountinfo = dir.path().join("mountinfo");
        std::fs::write(
            &mountinfo,
            "5 1 7:9 / /mnt/d rw - xfs /dev/loop9 rw,attr2\n",
        )
        .unwrap();
        let host = Host { sys, mountinfo };
        let disks = [image.clone()];
        let settings = |mode| ConsistencySettings {
            mode,
            max_freeze: DEFAULT_MAX_FREEZE,
            track: true,
        };
        let err = plan(&host, &disks, &settings(None)).unwrap_err();
        assert_eq!(
            describe(&err),
            (
                ErrorCode::SourceMountedRw,
                format!(
                    "mounted read-write: disk 0 ({}): /mnt/d (xfs on /dev/loop9); choose --consistency freeze, snapshot or none",
                    image.display()
                )
            )
        );
        let err = plan(&host, &disks, &settings(Some(Mode::Snapshot))).unwrap_err();
        assert_eq!(
            describe(&err),
            (
                ErrorCode::SnapshotFailed,
                "not on an LVM logical volume, so no snapshot can be taken: /mnt/d (xfs on /dev/loop9)"
                    .to_owned()
            )
        );
        for mode in [Mode::Freeze, Mode::None] {
            let plans = plan(&host, &disks, &settings(Some(mode))).unwrap();
            assert_eq!(plans[0].read_write().len(), 1);
        }
    }
}
