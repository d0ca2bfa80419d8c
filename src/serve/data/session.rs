//! A session of the data port: one authenticated connection of a sender,
//! and what it holds open (disks, trees, data streams of other sessions).
//! The frame loop is [`super::dispatch`]; each frame family's methods are
//! in its room ([`super::disk`], [`super::tree`]), all on this one value.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::auth::Authenticated;
use super::conn::{send_within, Conn};
use super::open::{FilesSession, OpenDisk, OpenTree};
use crate::serve::claims::Link;
use crate::serve::streams::Attached;
use crate::serve::Appliance;
use crate::wire::Frame;

pub(crate) struct Session {
    pub(crate) app: Arc<Appliance>,
    pub(crate) disks: HashMap<u32, OpenDisk>,
    pub(super) probe_bytes: u64,
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
    pub(super) verified: HashSet<u32>,
    /// File mode: the targets laid out from the sender's layout.
    pub(crate) files: Option<FilesSession>,
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
    pub(super) fn progress(&mut self, disk: u32, new_bytes: u64) {
        let Some(d) = self.disks.get_mut(&disk) else {
            return;
        };
        d.committed += new_bytes;
        // Saved to the ledger at most every few seconds; cheap otherwise.
        if let Err(e) = self.app.job.progress(disk, d.committed) {
            tracing::warn!("recording the progress of disk {disk}: {e:#}");
        }
    }
}
