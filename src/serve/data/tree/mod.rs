//! File mode on the data port: the session's tree frames routed to one
//! writer thread per open tree ([`writer`]), which writes the sender's
//! entries safely beneath the tree's target root ([`beneath`]); the
//! targets laid out from the sender's layout (by
//! [`crate::pipeline::targets`]) and mounted while the session writes
//! them; and the round's progress for `/v1/job` ([`progress`]).
//!
//! Named after the wire's noun (OpenTree, TreeManifest, CloseTree): a tree
//! is one file system of the source, sent entry by entry. (`crate::entry`
//! is the entry format both sides share; `crate::pipeline::files` is the
//! round after the trees.)

pub mod beneath;
pub mod progress;
pub mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::conn::{frame_ready, send_within, Conn};
use super::manifest::{self, TreeManifest};
use super::open::{FilesSession, OpenTree};
use super::session::Session;
use crate::config::Config;
use crate::job::errors::{coded, ErrorCode};
use crate::pipeline::targets::DiskPlaces;
use crate::serve::claims::Claim;
use crate::serve::writer::Event;
use crate::wire::Frame;
pub use writer::{TreeWork, TreeWriter, TREE_CLAIM};

/// Most work items, and content bytes, handed to a tree's writer at once.
const TREE_BATCH: usize = 256;
const TREE_BATCH_BYTES: usize = 8 << 20;

impl Session {
    /// File mode: the source's layout. The targets are laid out (or found
    /// laid out) and mounted, and the job is Syncing; a job that only
    /// replicates keeps the trees beneath its state directory.
    pub(crate) async fn source_layout(
        &mut self,
        conn: &mut Conn,
        json: bytes::Bytes,
    ) -> Result<()> {
        if self.files.is_some() || !self.trees.is_empty() {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                "SourceLayout after the session's first tree",
            ));
        }
        let (plan, lvm) = crate::layout::fit::SourcePlan::from_json(&json)?.flattened()?;
        if matches!(
            self.app.job.status(),
            crate::job::state::JobStatus::Ready | crate::job::state::JobStatus::Waiting
        ) {
            // A new round counts from zero.
            self.app.files_progress.reset();
        }
        self.admit().await?;
        if !self.app.config.build {
            self.files = Some(FilesSession {
                mounted: None,
                closed: Default::default(),
                trees: 0,
            });
            let detail = format!(
                "the job only replicates: the trees are kept beneath {}",
                self.app.config.state_dir.join("trees").display()
            );
            return send_within(
                conn,
                Frame::TargetsReady {
                    built: false,
                    detail,
                },
            )
            .await
            .context("answering the layout");
        }
        let app = Arc::clone(&self.app);
        let prepared = tokio::task::spawn_blocking(move || -> Result<_> {
            let mount_root = app.config.state_dir.join("files").join("mnt");
            let disks = disk_places(&app.config, plan.layout.disks.len());
            let p = crate::pipeline::targets::prepare(&disks, &app.ledger, plan, lvm, &mount_root)?;
            app.job.syncing(&[])?;
            Ok(p)
        })
        .await
        .context("laying out the targets")??;
        let detail = crate::pipeline::targets::describe(&prepared);
        tracing::info!(made = prepared.made, "{detail}");
        self.files = Some(FilesSession {
            trees: prepared.mounted.trees(),
            mounted: Some(prepared.mounted),
            closed: Default::default(),
        });
        send_within(
            conn,
            Frame::TargetsReady {
                built: true,
                detail,
            },
        )
        .await
        .context("answering the layout")
    }

    /// File mode: admit the sender, claim the tree, send the manifest of
    /// its committed entries, and start its writer.
    pub(crate) async fn open_tree(
        &mut self,
        conn: &mut Conn,
        tree: u32,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        if tree >= crate::entry::MAX_TREES {
            return Err(coded(
                ErrorCode::DiskNotConfigured,
                format!(
                    "tree {tree}: a job has at most {} file systems",
                    crate::entry::MAX_TREES
                ),
            ));
        }
        if self.trees.contains_key(&tree) {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                format!("tree {tree} is already open"),
            ));
        }
        self.admit().await?;
        let guard = self.app.claims.claim(TREE_CLAIM | tree, &self.link).await?;
        let codec_max = conn
            .codec()
            .max()
            .max(crate::entry::FILE_CHUNK + 64)
            .max(crate::entry::MAX_XATTR_BYTES + 4 * crate::entry::MAX_PATH);
        conn.codec_mut().set_max(codec_max);
        let root = self.tree_root(tree)?;
        let ledger = Arc::clone(&self.app.ledger);
        let writer = tokio::task::spawn_blocking(move || TreeWriter::open(tree, &root, ledger))
            .await
            .context("opening the tree")??;
        let sent = manifest::send(conn, &self.app.ledger, TreeManifest::new(tree)).await?;
        tracing::info!(tree, committed = sent.sent, "tree opened");
        self.app.files_progress.tree_opened();
        self.start_tree_writer(tree, writer, guard, events)
    }

    /// Where tree `tree` is written: beneath its mounted target, or (a job
    /// that only replicates) beneath the state directory.
    fn tree_root(&self, tree: u32) -> Result<PathBuf> {
        match &self.files {
            Some(FilesSession {
                mounted: Some(m), ..
            }) => m.root_of(tree).ok_or_else(|| {
                coded(
                    ErrorCode::DiskNotConfigured,
                    format!(
                        "tree {tree}: the source's layout names {} file systems",
                        m.trees()
                    ),
                )
            }),
            _ => Ok(self.app.config.tree_root(tree)),
        }
    }

    fn start_tree_writer(
        &mut self,
        tree: u32,
        writer: TreeWriter,
        guard: Claim,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        let (work_tx, work_rx) = mpsc::channel(64);
        let events = events.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ferry-tree-{tree}"))
            // Removing a deep directory recurses once per level.
            .stack_size(16 << 20)
            .spawn(move || {
                let _guard: Claim = guard;
                // The queue stays open until the error is told, so that a
                // session that cannot queue work finds why.
                let mut work_rx = work_rx;
                writer.run(&mut work_rx, |error| {
                    let _ = events.send(Event::TreeFailed { tree, error });
                });
                drop(work_rx);
            })
            .context("starting a tree writer thread")?;
        self.trees.insert(
            tree,
            OpenTree {
                work: work_tx,
                thread,
                batch: Vec::new(),
                batch_bytes: 0,
            },
        );
        Ok(())
    }

    /// An entry, a piece of a file, a file's end or a removal: batched
    /// while the next frame is already in the connection's buffer.
    pub(crate) async fn tree_frame(
        &mut self,
        conn: &Conn,
        tree: u32,
        work: TreeWork,
    ) -> Result<()> {
        let more = frame_ready(conn.read_buffer());
        self.tree_work(tree, work, more).await
    }

    /// Queue work for a tree's writer; hand the batch over unless another
    /// frame is already waiting and the batch is small.
    async fn tree_work(&mut self, tree: u32, work: TreeWork, more: bool) -> Result<()> {
        let t = self.trees.get_mut(&tree).ok_or_else(|| {
            coded(
                ErrorCode::UnexpectedFrame,
                format!("tree {tree} was not opened in this connection"),
            )
        })?;
        if let TreeWork::Data { payload, .. } = &work {
            t.batch_bytes += payload.len();
        }
        t.batch.push(work);
        if more && t.batch.len() < TREE_BATCH && t.batch_bytes < TREE_BATCH_BYTES {
            return Ok(());
        }
        let batch = std::mem::take(&mut t.batch);
        t.batch_bytes = 0;
        t.work.send(batch).await.map_err(|_| tree_writer_gone(tree))
    }

    /// The sender closed a tree: its writer commits it, a vfat tree is
    /// mirrored into its partition, and the sender is told what was written.
    pub(crate) async fn close_tree(&mut self, conn: &mut Conn, tree: u32) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tree_work(tree, TreeWork::Close(tx), false).await?;
        let s = rx.await.map_err(|_| tree_writer_gone(tree))??;
        if let Some(f) = &mut self.files {
            if let Some(m) = f.mounted.take() {
                let (m, done) = tokio::task::spawn_blocking(move || {
                    let r = m.finish_tree(tree);
                    (m, r)
                })
                .await
                .context("finishing the tree")?;
                f.mounted = Some(m);
                done?;
            }
            f.closed.insert(tree);
        }
        tracing::info!(
            tree,
            entries = s.entries,
            removed = s.removed,
            bytes = s.bytes,
            "tree committed"
        );
        send_within(
            conn,
            Frame::TreeClosed {
                tree,
                entries: s.entries,
                removed: s.removed,
                bytes: s.bytes,
            },
        )
        .await
        .context("sending the end of the tree")
    }

    /// Whether this session wrote every tree of targets it laid out (or
    /// found laid out): the round can end.
    pub(crate) fn files_done(&self) -> bool {
        self.files.as_ref().is_some_and(FilesSession::done)
    }

    /// Stop the trees' writers (each commits what it wrote before it
    /// returns), then unmount the targets.
    pub(crate) async fn close_trees(&mut self) {
        for (tree, t) in self.trees.drain() {
            drop(t.work);
            let joined = tokio::task::spawn_blocking(move || t.thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(tree, "tree writer thread panicked");
            }
        }
        // The writers are gone: the targets can be unmounted.
        if let Some(m) = self.files.as_mut().and_then(|f| f.mounted.take()) {
            match tokio::task::spawn_blocking(move || m.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("unmounting the file-mode targets: {e:#}"),
                Err(e) => tracing::error!("unmounting the file-mode targets: {e}"),
            }
        }
    }
}

/// Where the job's disks are, as the layout of targets takes it: the
/// configured targets, or one image per disk of the source's layout.
fn disk_places(config: &Config, disks: usize) -> DiskPlaces {
    if config.embedded() {
        return DiskPlaces::Images(
            (0..disks as u32)
                .map(|i| config.embedded_disk_path(i))
                .collect(),
        );
    }
    DiskPlaces::Configured(
        config
            .disks
            .iter()
            .map(|d| (d.index, d.target.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn tree_writer_gone(tree: u32) -> anyhow::Error {
    coded(
        ErrorCode::Internal,
        format!("the writer of tree {tree} has stopped"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(trees: usize, closed: &[u32]) -> FilesSession {
        FilesSession {
            mounted: None,
            trees,
            closed: closed.iter().copied().collect(),
        }
    }

    #[test]
    fn the_trees_are_done_when_every_one_of_the_layout_is_closed() {
        let cases = [
            ("nothing laid out", files(0, &[]), false),
            ("none closed", files(2, &[]), false),
            ("one of two", files(2, &[1]), false),
            ("both", files(2, &[0, 1]), true),
            ("another tree", files(1, &[1]), false),
        ];
        for (name, f, want) in cases {
            assert_eq!(f.done(), want, "{name}");
        }
    }
}
