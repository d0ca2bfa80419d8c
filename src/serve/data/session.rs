//! An authenticated session: the loop that waits on the sender's frames,
//! the writers' events, the job's changes and the link's silence, and
//! hands each frame to the method of its family (block mode in
//! [`super::disk`], file mode in [`super::tree`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::auth::Authenticated;
use super::disk::OpenDisk;
use super::tree::{FilesSession, OpenTree, TreeWork};
use super::Conn;
use crate::job::errors::{coded, ErrorCode};
use crate::serve::claims::Link;
use crate::serve::streams::Attached;
use crate::serve::writer::{Event, Work};
use crate::serve::Appliance;
use crate::wire::{self, Frame};

pub(crate) struct Session {
    pub(crate) app: Arc<Appliance>,
    pub(crate) disks: HashMap<u32, OpenDisk>,
    probe_bytes: u64,
    /// The job let this sender in (at its first OpenDisk; probes need not).
    pub(crate) admitted: bool,
    /// The sender asked how the round ends (EndRound), and waits for it.
    pub(crate) end_round: bool,
    /// Its place among the authenticated sessions.
    _authenticated: Authenticated,
    /// When the sender was last heard from, and whether a newer session
    /// took a disk over.
    pub(crate) link: Arc<Link>,
    /// Disks of other sessions this connection carries chunks for (it is
    /// a data stream of their sender).
    pub(crate) attached: HashMap<u32, Attached>,
    /// The bandwidth limit last told to the sender (bytes per second, 0
    /// for none); None before a disk is opened.
    bandwidth_told: Option<u64>,
    /// File mode: the trees this session writes.
    pub(crate) trees: HashMap<u32, OpenTree>,
    /// Disks of this session whose writer verified them.
    verified: HashSet<u32>,
    /// File mode: the targets laid out from the sender's layout.
    pub(crate) files: Option<FilesSession>,
}

/// Whether the connection's buffer holds another whole frame.
pub(crate) fn frame_ready(buf: &[u8]) -> bool {
    buf.len() >= 5 && buf.len() - 5 >= u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize
}

impl Session {
    pub(crate) fn new(app: Arc<Appliance>, authenticated: Authenticated) -> Session {
        Session {
            app,
            disks: HashMap::new(),
            probe_bytes: 0,
            admitted: false,
            end_round: false,
            _authenticated: authenticated,
            link: Link::new(),
            attached: HashMap::new(),
            bandwidth_told: None,
            trees: HashMap::new(),
            verified: HashSet::new(),
            files: None,
        }
    }

    /// Let the sender in at its first disk or tree: the job's state
    /// decides whether data is accepted at all (Stopped, Finished, Expired,
    /// InError, Deleting refuse with their codes; Ready and Waiting move to
    /// Preparing).
    pub(crate) async fn admit(&mut self) -> Result<()> {
        if !self.admitted {
            let job = Arc::clone(&self.app.job);
            tokio::task::spawn_blocking(move || job.admit_sender())
                .await
                .context("admitting the sender")??;
            self.admitted = true;
        }
        Ok(())
    }

    /// Serve the sender until it closes the connection or asks how the
    /// round ends (Ok), or until something ends the session (Err).
    pub(crate) async fn run(&mut self, conn: &mut Conn, shutdown: CancellationToken) -> Result<()> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let mut job_changes = self.app.job.subscribe();
        loop {
            tokio::select! {
                Ok(()) = job_changes.changed() => self.job_changed(conn).await?,
                _ = shutdown.cancelled() => {
                    return Err(coded(ErrorCode::TransferInterrupted, "the appliance is shutting down"));
                }
                _ = self.link.taken_over() => {
                    return Err(coded(
                        ErrorCode::TransferInterrupted,
                        "a newer session of the job took this session's disk over: this link was silent",
                    ));
                }
                // The sender pings while it has nothing else to say: a link
                // this quiet is cut, even if no end has closed it.
                _ = tokio::time::sleep_until(self.link.last_heard() + wire::LINK_TIMEOUT) => {
                    return Err(coded(
                        ErrorCode::TransferInterrupted,
                        format!("nothing heard from the sender for {} s: the link is silent", wire::LINK_TIMEOUT.as_secs()),
                    ));
                }
                frame = conn.next() => match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(coded(e.code(), e.to_string())),
                    Some(Ok(f)) => {
                        self.link.heard();
                        if let Err(e) = self.frame(conn, f, &events_tx).await {
                            // A writer that stopped (a full or failing
                            // target) explains a frame it could not take:
                            // report its error, not the symptom.
                            return Err(writer_failure(&mut events).unwrap_or(e));
                        }
                        if self.end_round {
                            return Ok(());
                        }
                    }
                },
                Some(ev) = events.recv() => self.writer_event(conn, ev).await?,
            }
        }
    }

    /// Stopped (or deleted...) by the operator while sending: refuse
    /// further data now, with the state's code; otherwise tell the sender
    /// a new bandwidth limit.
    async fn job_changed(&mut self, conn: &mut Conn) -> Result<()> {
        let status = self.app.job.status();
        // Another session of the sender that verified the job's last disk
        // starts the round's pipeline: a session whose own disks are all
        // verified has lost nothing and stays, to hear the sender's
        // EndRound and follow the pipeline.
        let done = matches!(
            status,
            crate::job::state::JobStatus::PROCESSING | crate::job::state::JobStatus::CLEANING
        ) && self.trees.is_empty()
            && self.disks.keys().all(|d| self.verified.contains(d));
        if let (true, false, Some(code)) = (self.admitted, done, status.sender_refusal()) {
            return Err(coded(
                code,
                format!("the job became {status} during the transfer"),
            ));
        }
        self.tell_bandwidth(conn).await
    }

    /// What a writer reports: acks and digests go to the sender, a
    /// writer's failure ends the session.
    async fn writer_event(&mut self, conn: &mut Conn, ev: Event) -> Result<()> {
        match ev {
            Event::Committed {
                disk,
                indices,
                new_bytes,
            } => {
                self.progress(disk, new_bytes);
                for part in indices.chunks(wire::MAX_ACK_ENTRIES) {
                    send_within(
                        conn,
                        Frame::Ack {
                            disk,
                            indices: part.to_vec(),
                        },
                    )
                    .await
                    .context("sending an ack")?;
                }
                Ok(())
            }
            Event::Finished { disk, digest } => {
                tracing::info!(disk, digest = %hex::encode(digest), "disk verified");
                self.verified.insert(disk);
                if let Err(e) = self.app.job.disk_verified(disk) {
                    tracing::warn!("recording disk {disk} as verified: {e:#}");
                }
                send_within(conn, Frame::DiskVerified { disk, digest })
                    .await
                    .context("sending the disk digest")
            }
            Event::Failed { disk, error } => Err(error.context(format!("disk {disk}"))),
            Event::TreeFailed { tree, error } => Err(error.context(format!("tree {tree}"))),
        }
    }

    /// One frame of the sender, to the method of its family.
    async fn frame(
        &mut self,
        conn: &mut Conn,
        frame: Frame,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        match frame {
            Frame::OpenDisk {
                disk,
                size,
                chunk_size,
            } => self.open_disk(conn, disk, size, chunk_size, events).await,
            Frame::Chunk {
                disk,
                index,
                hash,
                compressed,
                payload,
            } => self.chunk(disk, index, hash, compressed, payload).await,
            Frame::ChunkHead {
                disk,
                index,
                hash,
                len,
            } => self.chunk_head(conn, disk, index, hash, len).await,
            Frame::Attach { disk, key } => self.attach(conn, disk, &key),
            Frame::Zero { disk, index } => self.zero(disk, index).await,
            Frame::Finish {
                disk,
                digest,
                unchanged,
                zero_skipped,
            } => {
                let finish = Work::Finish {
                    digest,
                    unchanged,
                    zero_skipped,
                };
                self.finish(disk, finish).await
            }
            Frame::Probe { payload } => self.probe(conn, payload.len()).await,
            Frame::DiskNames { disk, names } => self.disk_names(disk, names).await,
            Frame::EndRound => {
                self.end_round = true;
                Ok(())
            }
            Frame::Ping => send_within(conn, Frame::Pong)
                .await
                .context("answering a ping"),
            Frame::SourceLayout { json } => self.source_layout(conn, json).await,
            Frame::OpenTree { tree } => self.open_tree(conn, tree, events).await,
            Frame::Entry { tree, entry } => {
                self.app
                    .files_progress
                    .entry(entry.kind == crate::entry::Kind::File);
                self.tree_frame(conn, tree, TreeWork::Entry(entry)).await
            }
            Frame::FileData {
                tree,
                offset,
                compressed,
                payload,
            } => {
                self.app.metrics.received_bytes.inc_by(payload.len() as u64);
                self.app.files_progress.bytes(payload.len() as u64);
                let data = TreeWork::Data {
                    offset,
                    compressed,
                    payload,
                };
                self.tree_frame(conn, tree, data).await
            }
            Frame::FileEnd { tree, hash } => {
                self.tree_frame(conn, tree, TreeWork::End { hash }).await
            }
            Frame::Remove { tree, path } => {
                self.app.files_progress.removed();
                self.tree_frame(conn, tree, TreeWork::Remove(path)).await
            }
            Frame::CloseTree { tree } => self.close_tree(conn, tree).await,
            other => Err(coded(
                ErrorCode::UnexpectedFrame,
                format!("{} after authentication", other.name()),
            )),
        }
    }

    /// The probe measures the data path; its payload is dropped here.
    async fn probe(&mut self, conn: &mut Conn, len: usize) -> Result<()> {
        self.probe_bytes += len as u64;
        send_within(
            conn,
            Frame::ProbeAck {
                bytes: self.probe_bytes,
            },
        )
        .await
        .context("answering a probe")
    }

    /// Tell the sender the job's bandwidth limit when it changed (or was
    /// never told), once it sends data.
    pub(crate) async fn tell_bandwidth(&mut self, conn: &mut Conn) -> Result<()> {
        if self.disks.is_empty() {
            return Ok(());
        }
        let limit = self.app.job.bandwidth_limit().unwrap_or(0);
        if self.bandwidth_told == Some(limit) {
            return Ok(());
        }
        send_within(
            conn,
            Frame::Bandwidth {
                bytes_per_sec: limit,
            },
        )
        .await
        .context("telling the bandwidth limit")?;
        self.bandwidth_told = Some(limit);
        Ok(())
    }

    /// Count newly committed chunks into the job's progress.
    fn progress(&mut self, disk: u32, new_bytes: u64) {
        let Some(d) = self.disks.get_mut(&disk) else {
            return;
        };
        d.committed += new_bytes;
        // Saved to the ledger at most every few seconds; cheap otherwise.
        if let Err(e) = self.app.job.progress(disk, d.committed) {
            tracing::warn!("recording the progress of disk {disk}: {e:#}");
        }
    }

    /// Stop the writers; each commits what it wrote before it returns.
    pub(crate) async fn close(&mut self) {
        self.close_trees().await;
        self.attached.clear();
        self.close_disks().await;
    }
}

/// The first failure a writer reported, if one did.
fn writer_failure(events: &mut mpsc::UnboundedReceiver<Event>) -> Option<anyhow::Error> {
    while let Ok(ev) = events.try_recv() {
        match ev {
            Event::Failed { disk, error } => return Some(error.context(format!("disk {disk}"))),
            Event::TreeFailed { tree, error } => {
                return Some(error.context(format!("tree {tree}")))
            }
            _ => {}
        }
    }
    None
}

/// Send a frame within [`wire::LINK_TIMEOUT`]: a write that cannot go out
/// for that long meets a silent link (the kernel's TCP_USER_TIMEOUT says the
/// same a moment later).
pub(crate) async fn send_within(conn: &mut Conn, frame: Frame) -> Result<()> {
    match tokio::time::timeout(wire::LINK_TIMEOUT, conn.send(frame)).await {
        Ok(r) => r.map_err(|e| {
            coded(
                ErrorCode::TransferInterrupted,
                format!("sending to the sender: {e}"),
            )
        }),
        Err(_) => Err(coded(
            ErrorCode::TransferInterrupted,
            format!(
                "a frame could not be sent for {} s: the link is silent",
                wire::LINK_TIMEOUT.as_secs()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ready_needs_a_whole_frame_in_the_buffer() {
        // A frame: kind (1 byte), body length (u32, big-endian), body.
        let cases: [(&str, &[u8], bool); 6] = [
            ("empty", &[], false),
            ("header cut", &[7, 0, 0, 0], false),
            ("empty body", &[7, 0, 0, 0, 0], true),
            ("body cut", &[7, 0, 0, 0, 3, 1, 2], false),
            ("whole body", &[7, 0, 0, 0, 3, 1, 2, 3], true),
            ("and more", &[7, 0, 0, 0, 1, 1, 9, 0], true),
        ];
        for (name, buf, want) in cases {
            assert_eq!(frame_ready(buf), want, "{name}");
        }
    }

    #[test]
    fn a_length_past_the_buffer_is_not_ready() {
        assert!(!frame_ready(&[7, 0xff, 0xff, 0xff, 0xff, 0]));
        assert!(!frame_ready(&[7, 0, 1, 0, 0]));
    }

    #[test]
    fn a_writer_failure_explains_the_frame_it_could_not_take() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(writer_failure(&mut rx).is_none());
        tx.send(Event::Finished {
            disk: 0,
            digest: [0; 32],
        })
        .unwrap();
        tx.send(Event::Failed {
            disk: 2,
            error: anyhow::anyhow!("no space left on device"),
        })
        .unwrap();
        let err = writer_failure(&mut rx).unwrap();
        assert_eq!(format!("{err:#}"), "disk 2: no space left on device");
    }
}
