//! What a session holds open: a disk with its writer (block mode), a tree
//! with its writer and the file-mode targets it writes (file mode). The
//! values only; [`super::disk`] and [`super::tree`] open and close them.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::tree::writer::TreeWork;
use crate::disk::buffers::BufPool;
use crate::job::ledger::DiskRecord;
use crate::pipeline::targets::Mounted;
use crate::serve::streams::Published;
use crate::serve::writer::Work;

/// A disk (block mode) open in a session: its writer's queue and thread.
pub(crate) struct OpenDisk {
    pub(super) record: DiskRecord,
    /// Bytes of the disk in the ledger, for the job's progress.
    pub(super) committed: u64,
    pub(super) work: mpsc::Sender<Work>,
    pub(super) thread: std::thread::JoinHandle<()>,
    /// The writer's chunk buffers.
    pub(super) buffers: Arc<BufPool>,
    /// Open to the sender's data streams while this session holds it.
    pub(super) _published: Published,
}

/// A file-mode session's targets, mounted while it writes them, and the
/// trees it closed.
pub(crate) struct FilesSession {
    /// None for a job that only replicates: its trees are kept beneath
    /// the state directory.
    pub(super) mounted: Option<Mounted>,
    /// Trees of the layout (0 when nothing is laid out).
    pub(super) trees: usize,
    pub(super) closed: BTreeSet<u32>,
}

/// A tree (file mode) open in a session: its writer's queue and thread.
pub(crate) struct OpenTree {
    pub(super) work: mpsc::Sender<Vec<TreeWork>>,
    pub(super) thread: std::thread::JoinHandle<()>,
    /// Work not yet handed to the writer: frames that arrived together go
    /// together (one wake-up of the writer for many small files).
    pub(super) batch: Vec<TreeWork>,
    pub(super) batch_bytes: usize,
}

impl FilesSession {
    /// Every tree of the layout closed (a layout of no trees never is).
    pub(super) fn done(&self) -> bool {
        self.trees > 0 && (0..self.trees as u32).all(|t| self.closed.contains(&t))
    }
}
