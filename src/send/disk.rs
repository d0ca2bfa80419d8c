//! One source disk in block mode: what the sender keeps of it across
//! attempts ([`DiskJob`]), and its transfer on one control connection
//! ([`DiskSession`]): open it on the appliance, read the appliance's
//! manifest of committed chunks, run the passes the consistency mode asks
//! for (a live read, a snapshot, or a last pass with the file systems
//! frozen), then compare whole-disk digests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::client::{self, Conn};
use super::lanes::Lanes;
use super::report::DiskReport;
use super::track::{Tracker, Window};
use super::{consistency, progress, SendOptions};
use crate::disk::{chunk_count, disk_digest, Disk};
use crate::job::errors::{coded, ErrorCode};
use crate::wire::{self, Frame};

/// A source disk and what this process learned of it, kept across attempts.
pub(crate) struct DiskJob {
    pub(crate) index: u32,
    pub(crate) disk: Arc<Disk>,
    /// Hashes this process has computed, kept across attempts so a retry
    /// need not re-read what the appliance confirms it has.
    pub(crate) known: Vec<Option<[u8; 32]>>,
    pub(crate) report: DiskReport,
    pub(crate) done: bool,
    /// The names this system knows the disk by (none for an image file).
    pub(crate) names: Vec<String>,
    /// Its mounted file systems, and how its last attempt copied them.
    pub(crate) plan: Option<consistency::DiskPlan>,
    pub(crate) consistency: Option<consistency::DiskConsistency>,
    /// The change tracker, when it follows this disk.
    pub(crate) tracker: Option<Arc<Tracker>>,
}

impl DiskJob {
    /// Open source disk `index` at `path`, to be read in chunks of
    /// `chunk_size` bytes.
    pub(crate) fn open(index: u32, path: &Path, chunk_size: u32) -> Result<DiskJob> {
        let disk = Disk::open_source(path)
            .with_context(|| format!("opening source disk {}", path.display()))?;
        let count = chunk_count(disk.size(), chunk_size);
        Ok(DiskJob {
            index,
            report: DiskReport {
                index,
                source: path.display().to_string(),
                size: disk.size(),
                chunks: count,
                ..Default::default()
            },
            known: vec![None; count as usize],
            names: disk_names(path),
            disk: Arc::new(disk),
            done: false,
            plan: None,
            consistency: None,
            tracker: None,
        })
    }
}

impl DiskJob {
    /// Whether a file system of the disk is mounted read-write.
    pub(crate) fn live(&self) -> bool {
        self.plan
            .as_ref()
            .is_some_and(|p| !p.read_write().is_empty())
    }
}

/// The names this system knows a source block device by, for the
/// appliance's repair of device names: the path given, the kernel's name,
/// and the /dev/disk/by-id and by-path links to it. None for image files.
fn disk_names(path: &Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let is_block = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block {
        return Vec::new();
    }
    let mut names = vec![path.display().to_string()];
    let Ok(real) = std::fs::canonicalize(path) else {
        return names;
    };
    names.push(real.display().to_string());
    for dir in ["/dev/disk/by-id", "/dev/disk/by-path"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if std::fs::canonicalize(&p).is_ok_and(|t| t == real) {
                names.push(p.display().to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names.truncate(wire::MAX_DISK_NAMES);
    names
}

/// One disk's transfer in one attempt: its control connection, and what
/// the attempt lends it.
pub(crate) struct DiskSession<'a> {
    pub(crate) args: &'a SendOptions,
    pub(crate) conn: &'a mut Conn,
    pub(crate) job: &'a mut DiskJob,
    pub(crate) progress: &'a progress::Progress,
    pub(crate) lanes: &'a Lanes<'a>,
}

/// What the appliance has committed of a disk, by chunk (sparse), and
/// whether the target is known to read zeros elsewhere.
pub(crate) struct Committed {
    pub(crate) manifest: HashMap<u64, [u8; 32]>,
    pub(crate) fresh: bool,
}

impl DiskSession<'_> {
    /// The disk from its opening to its verified digest.
    pub(crate) async fn transfer(&mut self) -> Result<()> {
        self.open().await?;
        let committed = self.read_manifest().await?;
        let key = self.read_stream_key().await?;
        let (unchanged, zero_skipped) = self.run_passes(committed, key).await?;
        self.verify(unchanged, zero_skipped).await?;
        self.progress.finish_disk(self.job.index);
        Ok(())
    }

    async fn open(&mut self) -> Result<()> {
        let job = &*self.job;
        client::send(
            self.conn,
            Frame::OpenDisk {
                disk: job.index,
                size: job.disk.size(),
                chunk_size: self.args.chunk_size,
            },
        )
        .await?;
        if !job.names.is_empty() {
            client::send(
                self.conn,
                Frame::DiskNames {
                    disk: job.index,
                    names: job.names.clone(),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The manifest: what the appliance has committed of this disk, sparse
    /// (a fresh disk's is one empty page), in pages that must come in order.
    async fn read_manifest(&mut self) -> Result<Committed> {
        let count = chunk_count(self.job.disk.size(), self.args.chunk_size);
        let mut manifest: HashMap<u64, [u8; 32]> = HashMap::new();
        let mut expected_first = 0u64;
        loop {
            match client::recv_live(self.conn).await? {
                Frame::Manifest {
                    disk,
                    first,
                    end,
                    fresh,
                    last,
                    entries,
                } => {
                    if disk != self.job.index
                        || first != expected_first
                        || end > count
                        || (last && end != count)
                        || (!last && end == first)
                    {
                        return Err(coded(
                            ErrorCode::UnexpectedFrame,
                            format!(
                                "manifest page {first}..{end} out of order (expected it to start at {expected_first}, of {count} chunks)"
                            ),
                        ));
                    }
                    manifest.extend(entries);
                    expected_first = end;
                    if last {
                        return Ok(Committed { manifest, fresh });
                    }
                }
                other => return Err(crate::wire::unexpected("Manifest", &other)),
            }
        }
    }

    /// The key with which the data streams attach to the disk.
    async fn read_stream_key(&mut self) -> Result<[u8; 32]> {
        match client::recv_live(self.conn).await? {
            Frame::StreamKey { disk, key } if disk == self.job.index => Ok(key),
            other => Err(crate::wire::unexpected("StreamKey", &other)),
        }
    }

    /// Every pass the consistency mode asks for, each handed back to it as
    /// it ends (a frozen pass thaws its file systems). Returns the last
    /// pass's chunks left as they were and zero chunks skipped.
    async fn run_passes(&mut self, first: Committed, key: [u8; 32]) -> Result<(u64, u64)> {
        let (args, index) = (self.args, self.job.index);
        let mut passes = consistency::Passes::new(index, self.job.plan.as_ref(), &args.consistency);
        let Committed {
            mut manifest,
            mut fresh,
        } = first;
        let mut skipped = (0u64, 0u64);
        loop {
            let (p, next) = off_runtime(passes, |p| p.next_pass()).await?;
            passes = p;
            let pass = match next {
                Ok(Some(pass)) => pass,
                Ok(None) => return Ok(skipped),
                Err(e) => {
                    self.job.consistency = Some(passes.report.clone());
                    return Err(e);
                }
            };
            let read = self.what_to_read(&pass, &mut manifest, &mut fresh).await;
            if let Some(line) = pass.announce(index) {
                let what = match (&read.whole_disk_because, read.tracked) {
                    (Some(why), _) => format!(" (the whole disk: {why})"),
                    (None, true) => {
                        let unknown = self.job.known.iter().filter(|k| k.is_none()).count() as u64;
                        format!(
                            " ({} written since the pass before began)",
                            crate::disk::human_bytes(unknown * u64::from(args.chunk_size))
                        )
                    }
                    (None, false) => String::new(),
                };
                self.progress.println(&format!("{line}{what}"));
            }
            passes.reads(read);
            let committed = Committed {
                manifest: std::mem::take(&mut manifest),
                fresh,
            };
            let before = self.job.report.clone();
            let sent = self.send_pass(committed, &pass, &mut passes, key).await;
            passes = self
                .end_pass(passes, &pass, &before, sent, &mut skipped)
                .await?;
        }
    }

    /// Which chunks the pass reads, marked by forgetting what this sender
    /// knew of them: after a first pass, what the last one read is
    /// committed (the manifest); the tracker's window says which chunks
    /// were written since (or that it cannot know, and every chunk is read
    /// again). The window is taken after the pass's freeze, if it has one.
    async fn what_to_read(
        &mut self,
        pass: &consistency::Pass,
        manifest: &mut HashMap<u64, [u8; 32]>,
        fresh: &mut bool,
    ) -> consistency::PassRead {
        let count = chunk_count(self.job.disk.size(), self.args.chunk_size) as usize;
        let index = self.job.index as usize;
        let window = self
            .job
            .tracker
            .as_ref()
            .map(|t| tokio::task::block_in_place(|| t.take(index)));
        let first = pass.number() == 1;
        if !first {
            *manifest = self
                .job
                .known
                .iter()
                .zip(0u64..)
                .filter_map(|(h, i)| h.map(|h| (i, h)))
                .collect();
            *fresh = false;
        }
        match window {
            Some(Window::Changed { chunks, bytes }) => {
                if self.job.known.len() != count {
                    self.job.known = vec![None; count];
                }
                for c in chunks.iter() {
                    if let Some(k) = self.job.known.get_mut(c as usize) {
                        *k = None;
                    }
                }
                consistency::PassRead {
                    tracked: !first,
                    written_bytes: (!first).then_some(bytes),
                    whole_disk_because: None,
                }
            }
            Some(Window::Lost(why)) => {
                self.job.known = vec![None; count];
                consistency::PassRead {
                    tracked: false,
                    written_bytes: None,
                    whole_disk_because: (!first).then_some(why),
                }
            }
            None => {
                if !first {
                    // Re-read every chunk, send those that changed since.
                    self.job.known = vec![None; count];
                }
                consistency::PassRead::default()
            }
        }
    }

    /// Hand a pass's end to the consistency mode: what it changed when it
    /// succeeded (a frozen pass that changed too much calls for another),
    /// or its abort (thawing what it froze); then say what was thawed.
    async fn end_pass(
        &mut self,
        passes: consistency::Passes,
        pass: &consistency::Pass,
        before: &DiskReport,
        sent: Result<(u64, u64)>,
        skipped: &mut (u64, u64),
    ) -> Result<consistency::Passes> {
        let report = &self.job.report;
        let zero_sent = report.zero_sent_chunks - before.zero_sent_chunks;
        let changed_chunks = report.sent_chunks - before.sent_chunks + zero_sent;
        let changed_bytes =
            report.sent_bytes - before.sent_bytes + zero_sent * u64::from(self.args.chunk_size);
        let pass_counts = consistency::PassCounts {
            changed_chunks,
            changed_bytes,
            read_bytes: report.read_bytes - before.read_bytes,
        };
        let (passes, ended) = off_runtime(passes, move |p| match sent {
            Ok(counts) => p.done(pass_counts).map(|()| counts),
            Err(e) => {
                if let Err(t) = p.abort() {
                    tracing::error!("{t:#}");
                }
                Err(e)
            }
        })
        .await?;
        self.job.consistency = Some(passes.report.clone());
        if let consistency::Pass::Frozen { .. } = pass {
            for f in &passes.report.frozen {
                self.progress.println(&format!(
                    "ferry send: disk {}: thawed {} (frozen {:.2} s)",
                    self.job.index,
                    f.mount_point.display(),
                    f.frozen_seconds
                ));
            }
        }
        *skipped = ended?;
        Ok(passes)
    }

    /// Every chunk is committed: compare whole-disk digests. The appliance
    /// re-reads the whole disk before it answers: minutes for a large one,
    /// during which it answers pings.
    async fn verify(&mut self, unchanged: u64, zero_skipped: u64) -> Result<()> {
        let (size, cs) = (self.job.disk.size(), self.args.chunk_size);
        let hashes: Vec<[u8; 32]> = self
            .job
            .known
            .iter()
            .enumerate()
            .map(|(i, h)| {
                h.ok_or_else(|| coded(ErrorCode::Internal, format!("chunk {i} was never hashed")))
            })
            .collect::<Result<_>>()?;
        let digest = disk_digest(size, cs, &hashes);
        client::send(
            self.conn,
            Frame::Finish {
                disk: self.job.index,
                digest,
                unchanged,
                zero_skipped,
            },
        )
        .await?;
        let theirs = loop {
            match client::recv_live(self.conn).await? {
                Frame::DiskVerified { disk, digest } if disk == self.job.index => break digest,
                Frame::Ack { .. } => continue,
                Frame::Bandwidth { bytes_per_sec } => {
                    self.lanes.bandwidth(bytes_per_sec, self.progress)
                }
                other => return Err(crate::wire::unexpected("Finished", &other)),
            }
        };
        if theirs != digest {
            return Err(coded(
                ErrorCode::DigestMismatch,
                format!(
                    "source digest {}, appliance digest {}",
                    hex::encode(digest),
                    hex::encode(theirs)
                ),
            ));
        }
        self.job.report.digest = hex::encode(digest);
        self.job.report.verified = true;
        Ok(())
    }
}

/// Run `f` on `value` off the async runtime (it may block: ioctls that
/// flush a file system, processes started), and hand both back.
async fn off_runtime<T: Send + 'static, R: Send + 'static>(
    mut value: T,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<(T, R)> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut value);
        (value, r)
    })
    .await
    .context("joining a blocking task")
}
