//! The session's frame loop: what the sender says, what the job and the
//! writers say, each to the method of its room ([`super::disk`] for block
//! mode, [`super::tree`] for file mode), until the sender closes the
//! connection, asks how the round ends, or something ends the session.

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::{send_within, Conn};
use super::session::Session;
use super::tree::writer::TreeWork;
use crate::job::errors::{coded, ErrorCode};
use crate::serve::writer::{Event, Work};
use crate::wire::{self, Frame};

impl Session {
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

#[cfg(test)]
mod tests {
    use super::*;

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
