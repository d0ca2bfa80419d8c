//! The data port: one task per connection, TLS only, authenticated before
//! anything is read beyond the handshake or written anywhere.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::Ticket;
use super::claims::{Claim, Link};
use super::files::{TreeWork, TreeWriter, TREE_CLAIM};
use super::streams::{Attached, Published};
use super::writer::{Event, Payload, Work, Writer};
use super::Appliance;
use crate::disk::buffers::{Buf, BufPool};
use crate::disk::{chunk_count, Disk};
use crate::job::errors::{coded, describe, Code, ErrorCode, JobEffect};
use crate::job::ledger::DiskRecord;
use crate::wire::{self, auth, Frame, FrameCodec, RoundEvent};

/// Time from accept to authenticated: TLS, hello, challenge and proof, all
/// together (a sender needs milliseconds; a trickling client gets no more).
const PREAUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Chunks queued for one disk's writer beyond the one it is writing.
const WRITER_QUEUE: usize = 4;

/// TLS over a buffered socket: rustls reads its records a few KiB at a
/// time, and a read buffer turns those reads into one system call per
/// [`READ_BUFFER`] rather than one per record.
type Conn = Framed<TlsStream<tokio::io::BufReader<TcpStream>>, FrameCodec>;

/// Bytes read from a data socket at once.
const READ_BUFFER: usize = 256 << 10;

/// Accept connections until `shutdown`. Every connection is accepted; until
/// it is authenticated it holds a place in the port's unauthenticated
/// budget (see [`super::admission`]), and then one of `max_sessions`
/// authenticated places.
pub async fn serve(
    app: Arc<Appliance>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) {
    let sessions = Arc::new(Semaphore::new(app.config.max_sessions.max(1)));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a data connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ticket = app.data_admission.arrive(peer.ip());
        let (app, acceptor, shutdown) = (Arc::clone(&app), acceptor.clone(), shutdown.clone());
        let sessions = Arc::clone(&sessions);
        tracker.spawn(
            async move {
                // Counted down however the connection ends (a panic in it
                // included), so the gauge cannot stay up after a session.
                let _open = OpenGuard::new(&app.metrics.sessions_active);
                connection(&app, tcp, peer, acceptor, shutdown, ticket, sessions).await;
            }
            .instrument(tracing::info_span!("session", %peer)),
        );
    }
    tracker.close();
    tracker.wait().await;
}

/// One open data connection in the `ferry_sessions_active` gauge.
struct OpenGuard(prometheus::IntGauge);

impl OpenGuard {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        OpenGuard(gauge.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn connection(
    app: &Arc<Appliance>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    ticket: Ticket,
    sessions: Arc<Semaphore>,
) {
    if let Err(e) = wire::tune_socket(&tcp) {
        tracing::debug!("setting the socket options of {peer}: {e}");
    }
    let deadline = tokio::time::Instant::now() + PREAUTH_DEADLINE;
    // A TLS connection starts with a handshake record (0x16). Anything else
    // is a plaintext client: tell it, in our own framing, and close.
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        _ = ticket.evicted() => return,
        r = tokio::time::timeout_at(deadline, tcp.peek(&mut first)) => r,
    };
    match peeked {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            count_error(app, ErrorCode::TlsRequired);
            tracing::warn!("refused a plaintext connection");
            let frame = wire::frame::encode(&Frame::error(
                ErrorCode::TlsRequired,
                "port 8703 speaks TLS only",
            ));
            let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&frame)).await;
            let _ = tcp.shutdown().await;
            drain(&mut tcp).await;
            return;
        }
        _ => return,
    }
    let accepted = tokio::select! {
        _ = ticket.evicted() => return,
        r = tokio::time::timeout_at(deadline, acceptor.accept(tokio::io::BufReader::with_capacity(READ_BUFFER, tcp))) => r,
    };
    let tls = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            count_error(app, ErrorCode::TlsHandshakeFailed);
            tracing::warn!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!("TLS handshake timed out");
            return;
        }
    };
    let mut binding = [0u8; 32];
    if tls
        .get_ref()
        .1
        .export_keying_material(&mut binding, auth::TLS_EXPORTER_LABEL, None)
        .is_err()
    {
        tracing::warn!("TLS exporter unavailable");
        return;
    }
    let mut conn = Framed::new(tls, FrameCodec::new(wire::PREAUTH_MAX_FRAME));
    let mut session = Session {
        app: Arc::clone(app),
        disks: HashMap::new(),
        probe_bytes: 0,
        admitted: false,
        end_round: false,
        unproven: Some(ticket),
        _place: None,
        link: Link::new(),
        attached: HashMap::new(),
        bandwidth_told: None,
        trees: HashMap::new(),
        verified: HashSet::new(),
        files: None,
    };
    let result = session
        .run(&mut conn, peer, binding, shutdown, deadline, &sessions)
        .await;
    let clean = result.is_ok();
    if let Err(err) = result {
        let (code, detail) = describe(&err);
        count_error(app, code);
        if session.admitted && puts_job_in_error(code) {
            let (job, detail) = (Arc::clone(&app.job), detail.clone());
            match tokio::task::spawn_blocking(move || job.fail(code, detail)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("recording the job's error: {e:#}"),
                Err(e) => tracing::warn!("recording the job's error: {e}"),
            }
        }
        tracing::warn!(code = %code, error = %format!("{err:#}"), "closing the connection");
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            conn.send(Frame::error(code, &detail)),
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.get_mut().shutdown()).await;
        // Release the disks before lingering, so a sender that reconnects
        // at once finds them free.
        session.close().await;
        drain(conn.get_mut()).await;
        return;
    }
    session.close().await;
    if clean && (session.admitted || session.end_round) {
        // File mode ends the round only when the sender asks: a run with
        // --no-wait is a pass whose trees a later one completes.
        let files_done = session.files_done() && session.end_round;
        end_round(
            app,
            &mut conn,
            session.admitted,
            session.end_round,
            files_done,
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.get_mut().shutdown()).await;
}

/// The sender ended its session with EndRound. If every disk of the job is
/// verified, the round is committed and its pipeline runs (on its own
/// thread, whatever happens to this connection). The sender is told each
/// step as it runs and how the round ended: a RoundStatus, or the Error that
/// put the job InError.
///
/// A sender whose connection dropped while the pipeline ran reconnects and
/// sends EndRound alone (no disk opened): it follows the run in progress, or
/// hears how the last one ended.
///
/// A file-mode session that wrote every tree of the laid-out targets
/// (`files_done`) ends the round the same way.
async fn end_round(
    app: &Arc<Appliance>,
    conn: &mut Conn,
    admitted: bool,
    wait: bool,
    files_done: bool,
) {
    use crate::job::state::Status;
    if admitted {
        let ending = app.round_end.lock().await;
        let app2 = Arc::clone(app);
        let ended = tokio::task::spawn_blocking(move || {
            if files_done {
                return app2.job.trees_committed();
            }
            let expected: Option<Vec<u32>> = (!app2.config.embedded())
                .then(|| app2.config.disks.iter().map(|d| d.index).collect());
            app2.job.end_of_session(expected.as_deref())
        })
        .await;
        match ended {
            Ok(Ok(Some(_))) => {
                tracing::info!("every disk is verified: running the round's pipeline");
                let phase = app.pipeline.start();
                drop(ending);
                if wait {
                    follow(app, conn, phase).await;
                }
                return;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("ending the round: {e:#}"),
            Err(e) => tracing::warn!("ending the round: {e}"),
        }
    }
    if !wait {
        return;
    }
    let status = app.job.status();
    if matches!(status, Status::PROCESSING | Status::CLEANING) {
        if let Some(phase) = app.pipeline.current() {
            follow(app, conn, phase).await;
            return;
        }
    }
    let frame = match status {
        Status::Finished | Status::Waiting => Frame::RoundStatus {
            status,
            event: RoundEvent::Done,
        },
        Status::InError => match app.job.snapshot().last_error {
            Some(e) => Frame::error(e.code, &e.detail),
            None => Frame::error(ErrorCode::JobInError, ""),
        },
        _ => Frame::RoundStatus {
            status,
            event: RoundEvent::AwaitingDisks,
        },
    };
    let _ = send_within(conn, frame).await;
}

/// Tell the sender each step of a pipeline run and how it ended.
async fn follow(
    app: &Arc<Appliance>,
    conn: &mut Conn,
    mut phase: tokio::sync::watch::Receiver<crate::pipeline::Phase>,
) {
    let mut told = 0;
    loop {
        let now = phase.borrow_and_update().clone();
        let status = app.job.status();
        let mut frames: Vec<Frame> = now.steps[told.min(now.steps.len())..]
            .iter()
            .map(|step| Frame::RoundStatus {
                status,
                event: RoundEvent::Step(*step),
            })
            .collect();
        told = now.steps.len();
        match &now.done {
            Some(Ok(end)) => frames.push(Frame::RoundStatus {
                status: *end,
                event: RoundEvent::Done,
            }),
            Some(Err(f)) => frames.push(Frame::error(f.code, &f.detail)),
            None => {}
        }
        for frame in frames {
            if send_within(conn, frame).await.is_err() {
                return;
            }
        }
        if now.done.is_some() {
            return;
        }
        // A heartbeat every 10 s while a step runs, so the sender knows the
        // appliance is alive.
        match tokio::time::timeout(Duration::from_secs(10), phase.changed()).await {
            Ok(Ok(())) => {}
            Err(_) => {
                if let Some(step) = now.steps.last() {
                    let beat = Frame::RoundStatus {
                        status,
                        event: RoundEvent::Step(*step),
                    };
                    if send_within(conn, beat).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Err(_)) => {
                // The pipeline's thread is gone without a word: say so.
                if phase.borrow().done.is_none() {
                    let _ = conn
                        .send(Frame::error(
                            ErrorCode::Internal,
                            "the round's pipeline stopped",
                        ))
                        .await;
                }
                return;
            }
        }
    }
}

/// Failures while writing, which need someone to act on the appliance: the
/// job goes InError with the error until it is started again. Refusals
/// before anything is written (a target too small or missing, a disk not
/// configured) and sender-side problems (a cut connection, a bad frame)
/// leave the job as it is, so that the sender's next attempt succeeds once
/// the cause is fixed on either side.
fn puts_job_in_error(code: ErrorCode) -> bool {
    code.job_effect() == JobEffect::FailsJob
}

/// After a refusal, read and discard what the peer still sends for a moment:
/// closing a socket with unread input resets the connection, and a reset can
/// destroy the refusal in the peer's receive queue before it reads it.
async fn drain<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut total = 0usize;
    while total < (64 << 20) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

fn count_error(app: &Appliance, code: ErrorCode) {
    app.metrics
        .session_errors
        .with_label_values(&[code.as_str()])
        .inc();
}

struct OpenDisk {
    record: DiskRecord,
    /// Bytes of the disk in the ledger, for the job's progress.
    committed: u64,
    work: mpsc::Sender<Work>,
    thread: std::thread::JoinHandle<()>,
    /// The writer's chunk buffers.
    buffers: Arc<BufPool>,
    /// Open to the sender's data streams while this session holds it.
    _published: Published,
}

struct Session {
    app: Arc<Appliance>,
    disks: HashMap<u32, OpenDisk>,
    probe_bytes: u64,
    /// The job let this sender in (at its first OpenDisk; probes need not).
    admitted: bool,
    /// The sender asked how the round ends (EndRound), and waits for it.
    end_round: bool,
    /// The connection's place in the unauthenticated budget, until it is
    /// authenticated.
    unproven: Option<Ticket>,
    /// Its place among the authenticated sessions, after.
    _place: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the sender was last heard from, and whether a newer session
    /// took a disk over.
    link: Arc<Link>,
    /// Disks of other sessions this connection carries chunks for (it is
    /// a data stream of their sender).
    attached: HashMap<u32, Attached>,
    /// The bandwidth limit last told to the sender (bytes per second, 0
    /// for none); None before a disk is opened.
    bandwidth_told: Option<u64>,
    /// File mode: the trees this session writes.
    trees: HashMap<u32, OpenTree>,
    /// Disks of this session whose writer verified them.
    verified: HashSet<u32>,
    /// File mode: the targets laid out from the sender's layout.
    files: Option<FilesSession>,
}

/// A file-mode session's targets, mounted while it writes them, and the
/// trees it closed.
struct FilesSession {
    /// None for a job that only replicates: its trees are kept beneath
    /// the state directory.
    mounted: Option<super::files::targets::Mounted>,
    /// Trees of the layout (0 when nothing is laid out).
    trees: usize,
    closed: std::collections::BTreeSet<u32>,
}

/// A tree (file mode) open in a session: its writer's queue and thread.
struct OpenTree {
    work: mpsc::Sender<Vec<TreeWork>>,
    thread: std::thread::JoinHandle<()>,
    /// Work not yet handed to the writer: frames that arrived together go
    /// together (one wake-up of the writer for many small files).
    batch: Vec<TreeWork>,
    batch_bytes: usize,
}

/// Most work items, and content bytes, handed to a tree's writer at once.
const TREE_BATCH: usize = 256;
const TREE_BATCH_BYTES: usize = 8 << 20;

/// Whether the connection's buffer holds another whole frame.
fn frame_ready(buf: &[u8]) -> bool {
    buf.len() >= 5 && buf.len() - 5 >= u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize
}

impl Session {
    /// Let the sender in at its first disk or tree: the job's state
    /// decides whether data is accepted at all (Stopped, Finished, Expired,
    /// InError, Deleting refuse with their codes; Ready and Waiting move to
    /// Preparing).
    async fn admit(&mut self) -> Result<()> {
        if !self.admitted {
            let job = Arc::clone(&self.app.job);
            tokio::task::spawn_blocking(move || job.admit_sender())
                .await
                .context("admitting the sender")??;
            self.admitted = true;
        }
        Ok(())
    }

    async fn run(
        &mut self,
        conn: &mut Conn,
        peer: SocketAddr,
        binding: [u8; 32],
        shutdown: CancellationToken,
        deadline: tokio::time::Instant,
        sessions: &Arc<Semaphore>,
    ) -> Result<()> {
        let ticket = self.unproven.take();
        let evicted = async {
            match &ticket {
                Some(t) => t.evicted().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, self.authenticate(conn, peer, binding)) => {
                r.map_err(|_| coded(
                    ErrorCode::AuthFailed,
                    format!("not authenticated within {} s of connecting", PREAUTH_DEADLINE.as_secs()),
                ))??;
            }
            _ = evicted => {
                return Err(coded(
                    ErrorCode::TransferInterrupted,
                    "closed to make room for newer connections: too many unauthenticated ones are open",
                ));
            }
        }
        drop(ticket);
        self._place = Some(Arc::clone(sessions).try_acquire_owned().map_err(|_| {
            coded(
                ErrorCode::SessionsFull,
                format!("{} senders are connected", self.app.config.max_sessions),
            )
        })?);
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let mut job_changes = self.app.job.subscribe();
        loop {
            tokio::select! {
                Ok(()) = job_changes.changed() => {
                    // Stopped (or deleted...) by the operator while sending:
                    // refuse further data now, with the state's code.
                    let status = self.app.job.status();
                    // Another session of the sender that verified the job's
                    // last disk starts the round's pipeline: a session whose
                    // own disks are all verified has lost nothing and stays,
                    // to hear the sender's EndRound and follow the pipeline.
                    let done = matches!(status, crate::job::state::Status::PROCESSING | crate::job::state::Status::CLEANING)
                        && self.trees.is_empty()
                        && self.disks.keys().all(|d| self.verified.contains(d));
                    if let (true, false, Some(code)) = (self.admitted, done, status.sender_refusal()) {
                        return Err(coded(code, format!("the job became {status} during the transfer")));
                    }
                    self.tell_bandwidth(conn).await?;
                }
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
                            while let Ok(ev) = events.try_recv() {
                                match ev {
                                    Event::Failed { disk, error } => {
                                        return Err(error.context(format!("disk {disk}")));
                                    }
                                    Event::TreeFailed { tree, error } => {
                                        return Err(error.context(format!("tree {tree}")));
                                    }
                                    _ => {}
                                }
                            }
                            return Err(e);
                        }
                        if self.end_round {
                            return Ok(());
                        }
                    }
                },
                Some(ev) = events.recv() => match ev {
                    Event::Committed { disk, indices, new_bytes } => {
                        self.progress(disk, new_bytes);
                        for part in indices.chunks(wire::MAX_ACK_ENTRIES) {
                            send_within(conn, Frame::Ack { disk, indices: part.to_vec() }).await.context("sending an ack")?;
                        }
                    }
                    Event::Finished { disk, digest } => {
                        tracing::info!(disk, digest = %hex::encode(digest), "disk verified");
                        self.verified.insert(disk);
                        if let Err(e) = self.app.job.disk_verified(disk) {
                            tracing::warn!("recording disk {disk} as verified: {e:#}");
                        }
                        send_within(conn, Frame::Finished { disk, digest }).await.context("sending the disk digest")?;
                    }
                    Event::Failed { disk, error } => {
                        return Err(error.context(format!("disk {disk}")));
                    }
                    Event::TreeFailed { tree, error } => {
                        return Err(error.context(format!("tree {tree}")));
                    }
                },
            }
        }
    }

    async fn authenticate(
        &mut self,
        conn: &mut Conn,
        peer: SocketAddr,
        binding: [u8; 32],
    ) -> Result<()> {
        let app = &self.app;
        let (version, client_nonce) = match next_frame(conn).await? {
            Frame::Hello { version, nonce } => (version, nonce),
            other => {
                return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("expected Hello, got {}", other.name()),
                ))
            }
        };
        if version != wire::PROTOCOL_VERSION {
            return Err(coded(
                ErrorCode::ProtocolVersion,
                format!(
                    "the sender speaks version {version}, the appliance {}",
                    wire::PROTOCOL_VERSION
                ),
            ));
        }
        let server_nonce = auth::new_nonce();
        conn.send(Frame::Challenge {
            version: wire::PROTOCOL_VERSION,
            nonce: server_nonce,
        })
        .await
        .context("sending the challenge")?;
        let proof = match next_frame(conn).await? {
            Frame::Auth { proof } => proof,
            other => {
                return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("expected Auth, got {}", other.name()),
                ))
            }
        };
        // The proof is checked first, in constant time: a correct one is
        // never refused because of anyone's failures (an attacker's from the
        // same address included); only failures are slowed down.
        let expected = auth::client_proof(&app.token, &server_nonce, &client_nonce, &binding);
        if !auth::proofs_equal(&expected, &proof) {
            app.metrics.auth_failures.inc();
            let delay = app.auth.fail(peer.ip());
            let limited = app.auth.blocked(peer.ip());
            tracing::warn!(
                delay_ms = delay.as_millis() as u64,
                limited,
                "authentication failed"
            );
            tokio::time::sleep(delay).await;
            return Err(if limited {
                coded(ErrorCode::AuthRateLimited, peer.ip().to_string())
            } else {
                coded(ErrorCode::AuthFailed, "")
            });
        }
        let mine = auth::server_proof(&app.token, &server_nonce, &client_nonce, &binding);
        conn.send(Frame::AuthOk { proof: mine })
            .await
            .context("sending the authentication result")?;
        // Authenticated: frames may now carry chunks; the bound still depends
        // on the chunk size the sender announces.
        conn.codec_mut()
            .set_max(wire::postauth_max_frame(wire::MIN_CHUNK_SIZE));
        conn.codec_mut().split_chunks(true);
        tracing::info!("sender authenticated");
        Ok(())
    }

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
            } => {
                self.app.metrics.received_bytes.inc_by(payload.len() as u64);
                let work = Work::Chunk {
                    index,
                    hash,
                    payload: self.payload(disk, compressed, payload)?,
                };
                if let Some(a) = self.attached.get(&disk) {
                    return attached_work(a, disk, index, work).await;
                }
                let d = self.disk(disk)?;
                check_index(d, disk, index)?;
                d.work.send(work).await.map_err(|_| writer_gone(disk))
            }
            Frame::ChunkHead {
                disk,
                index,
                hash,
                len,
            } => {
                // Checked before its payload is read.
                let attached = self.attached.get(&disk).cloned();
                if attached.is_none() {
                    check_index(self.disk(disk)?, disk, index)?;
                }
                let buf = self.read_payload(conn, disk, len).await?;
                self.app.metrics.received_bytes.inc_by(len as u64);
                let work = Work::Chunk {
                    index,
                    hash,
                    payload: Payload::Plain(buf),
                };
                match attached {
                    Some(a) => attached_work(&a, disk, index, work).await,
                    None => self
                        .disk(disk)?
                        .work
                        .send(work)
                        .await
                        .map_err(|_| writer_gone(disk)),
                }
            }
            Frame::Attach { disk, key } => self.attach(conn, disk, &key),
            Frame::Zero { disk, index } => {
                if let Some(a) = self.attached.get(&disk) {
                    return attached_work(a, disk, index, Work::Zero { index }).await;
                }
                let d = self.disk(disk)?;
                check_index(d, disk, index)?;
                d.work
                    .send(Work::Zero { index })
                    .await
                    .map_err(|_| writer_gone(disk))
            }
            Frame::Finish {
                disk,
                digest,
                unchanged,
                zero_skipped,
            } => {
                let d = self.disk(disk)?;
                d.work
                    .send(Work::Finish {
                        digest,
                        unchanged,
                        zero_skipped,
                    })
                    .await
                    .map_err(|_| writer_gone(disk))
            }
            Frame::Probe { payload } => {
                // The probe measures the data path; its payload is dropped here.
                self.probe_bytes += payload.len() as u64;
                send_within(
                    conn,
                    Frame::ProbeAck {
                        bytes: self.probe_bytes,
                    },
                )
                .await
                .context("answering a probe")
            }
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
                    .entry(entry.kind == crate::files::Kind::File);
                let more = frame_ready(conn.read_buffer());
                self.tree_work(tree, TreeWork::Entry(entry), more).await
            }
            Frame::FileData {
                tree,
                offset,
                compressed,
                payload,
            } => {
                self.app.metrics.received_bytes.inc_by(payload.len() as u64);
                self.app.files_progress.bytes(payload.len() as u64);
                let more = frame_ready(conn.read_buffer());
                self.tree_work(
                    tree,
                    TreeWork::Data {
                        offset,
                        compressed,
                        payload,
                    },
                    more,
                )
                .await
            }
            Frame::FileEnd { tree, hash } => {
                let more = frame_ready(conn.read_buffer());
                self.tree_work(tree, TreeWork::End { hash }, more).await
            }
            Frame::Remove { tree, path } => {
                self.app.files_progress.removed();
                let more = frame_ready(conn.read_buffer());
                self.tree_work(tree, TreeWork::Remove(path), more).await
            }
            Frame::CloseTree { tree } => {
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
            other => Err(coded(
                ErrorCode::UnexpectedFrame,
                format!("{} after authentication", other.name()),
            )),
        }
    }

    /// A chunk's payload for its writer. An uncompressed one is copied out
    /// of the connection's read buffer now, so that the buffer is free
    /// again for the next frame rather than a fresh allocation (fresh
    /// pages) for every chunk, into a pooled buffer O_DIRECT can write.
    fn payload(&self, disk: u32, compressed: bool, payload: bytes::Bytes) -> Result<Payload> {
        if compressed {
            return Ok(Payload::Packed(payload));
        }
        let pool = self.buffers(disk)?;
        if payload.len() > pool.size() {
            return Err(coded(
                ErrorCode::ChunkOutOfRange,
                format!(
                    "a chunk of disk {disk} holds {} bytes, more than its chunk size {}",
                    payload.len(),
                    pool.size()
                ),
            ));
        }
        let mut buf = pool.get(payload.len());
        buf.copy_from_slice(&payload);
        Ok(Payload::Plain(buf))
    }

    /// The payload of a chunk whose head came alone: what the codec has
    /// of it already, then the rest straight from the connection into a
    /// buffer of the disk's writer (one copy less than through the codec's
    /// buffer). Bounded like a frame's write: a payload that stops coming
    /// is a silent link.
    async fn read_payload(&self, conn: &mut Conn, disk: u32, len: usize) -> Result<Buf> {
        use tokio::io::AsyncReadExt;
        let pool = self.buffers(disk)?;
        if len > pool.size() {
            return Err(coded(
                ErrorCode::ChunkOutOfRange,
                format!(
                    "a chunk of disk {disk} holds {len} bytes, more than its chunk size {}",
                    pool.size()
                ),
            ));
        }
        let mut buf = pool.get(len);
        let have = conn.read_buffer().len().min(len);
        buf[..have].copy_from_slice(&conn.read_buffer()[..have]);
        bytes::Buf::advance(conn.read_buffer_mut(), have);
        match tokio::time::timeout(
            wire::LINK_TIMEOUT,
            conn.get_mut().read_exact(&mut buf[have..]),
        )
        .await
        {
            Ok(Ok(_)) => Ok(buf),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(coded(
                ErrorCode::FrameMalformed,
                format!("connection cut in the middle of a chunk of disk {disk}"),
            )),
            Ok(Err(e)) => Err(coded(
                ErrorCode::TransferInterrupted,
                format!("reading a chunk of disk {disk}: {e}"),
            )),
            Err(_) => Err(coded(
                ErrorCode::TransferInterrupted,
                format!(
                    "a chunk of disk {disk} did not arrive within {} s: the link is silent",
                    wire::LINK_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// The chunk buffers of `disk`'s writer, opened here or attached to.
    fn buffers(&self, disk: u32) -> Result<&Arc<BufPool>> {
        match (self.disks.get(&disk), self.attached.get(&disk)) {
            (Some(d), _) => Ok(&d.buffers),
            (None, Some(a)) => Ok(&a.buffers),
            (None, None) => Err(self.disk(disk).err().unwrap_or_else(|| writer_gone(disk))),
        }
    }

    /// This connection is a data stream of the sender that opened `disk`
    /// in another session: its chunks go to that session's writer.
    fn attach(&mut self, conn: &mut Conn, disk: u32, key: &[u8; 32]) -> Result<()> {
        if self.disks.contains_key(&disk) || self.attached.contains_key(&disk) {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                format!("Attach to disk {disk}, which this connection already carries"),
            ));
        }
        let a = self.app.streams.attach(disk, key).ok_or_else(|| {
            coded(
                ErrorCode::TransferInterrupted,
                format!("a data stream asked for disk {disk}, which no session of the job has open with that key (its session ended)"),
            )
        })?;
        let codec_max = conn
            .codec()
            .max()
            .max(wire::postauth_max_frame(a.chunk_size));
        conn.codec_mut().set_max(codec_max);
        self.attached.insert(disk, a);
        Ok(())
    }

    /// Tell the sender the job's bandwidth limit when it changed (or was
    /// never told), once it sends data.
    async fn tell_bandwidth(&mut self, conn: &mut Conn) -> Result<()> {
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

    /// Keep the names the source knew a disk by, for the repair.
    async fn disk_names(&mut self, disk: u32, names: Vec<String>) -> Result<()> {
        // Only for a disk this sender opened (so admitted and configured).
        self.disk(disk)?;
        let app = Arc::clone(&self.app);
        tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec(&names).context("encoding disk names")?;
            app.ledger
                .put_meta(&crate::job::ledger::names_key(disk), &json)
                .with_context(|| format!("recording the source names of disk {disk}"))
        })
        .await
        .context("recording disk names")?
        .code(ErrorCode::LedgerFailed)
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

    fn disk(&self, disk: u32) -> Result<&OpenDisk> {
        self.disks.get(&disk).ok_or_else(|| {
            coded(
                ErrorCode::UnexpectedFrame,
                format!("disk {disk} was not opened in this connection"),
            )
        })
    }

    async fn open_disk(
        &mut self,
        conn: &mut Conn,
        disk: u32,
        size: u64,
        chunk_size: u32,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        if !wire::valid_chunk_size(chunk_size) {
            return Err(coded(
                ErrorCode::BadChunkSize,
                format!("{chunk_size} bytes"),
            ));
        }
        if self.disks.contains_key(&disk) {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                format!("disk {disk} is already open"),
            ));
        }
        self.admit().await?;
        let guard = self.app.claims.claim(disk, &self.link).await?;
        let app = Arc::clone(&self.app);
        let (target, record) = tokio::task::spawn_blocking(move || {
            let (mut target, record) = open_target(&app, disk, size, chunk_size)?;
            target.use_direct_io();
            Ok::<_, anyhow::Error>((target, record))
        })
        .await
        .context("opening the target disk")??;
        let count = chunk_count(size, chunk_size);
        let codec_max = conn.codec().max().max(wire::postauth_max_frame(chunk_size));
        conn.codec_mut().set_max(codec_max);
        let ledger = Arc::clone(&self.app.ledger);
        let rec = record.clone();
        let committed_bytes =
            tokio::task::spawn_blocking(move || ledger.committed_bytes(disk, &rec))
                .await
                .context("reading the ledger")?
                .code(ErrorCode::LedgerFailed)?;
        {
            let job = Arc::clone(&self.app.job);
            tokio::task::spawn_blocking(move || job.syncing(&[(disk, size, committed_bytes)]))
                .await
                .context("recording the disk in the job")??;
        }
        tracing::info!(disk, size, chunk_size, committed_bytes, target = %record.target, "disk opened");
        // The manifest, page by page from the ledger: memory and wire cost
        // what is committed, whatever the disk's size.
        let mut first = 0u64;
        loop {
            let ledger = Arc::clone(&self.app.ledger);
            let entries = tokio::task::spawn_blocking(move || {
                ledger.committed(disk, first..count, wire::MANIFEST_PAGE)
            })
            .await
            .context("reading the ledger")?
            .code(ErrorCode::LedgerFailed)?;
            let end = match entries.last() {
                Some(&(last, _)) if entries.len() == wire::MANIFEST_PAGE => last + 1,
                _ => count,
            };
            send_within(
                conn,
                Frame::Manifest {
                    disk,
                    first,
                    end,
                    fresh: record.fresh,
                    last: end == count,
                    entries,
                },
            )
            .await
            .context("sending the manifest")?;
            if end == count {
                break;
            }
            first = end;
        }
        let (work_tx, work_rx) = mpsc::channel(WRITER_QUEUE);
        // Enough for the queue, the chunk being written, and one being
        // filled by each connection that feeds the writer.
        let buffers = BufPool::new(chunk_size as usize, 2 * WRITER_QUEUE + 4);
        let (published, key) = self.app.streams.publish(
            disk,
            Attached {
                work: work_tx.clone(),
                closed: CancellationToken::new(),
                link: Arc::clone(&self.link),
                chunks: count,
                chunk_size,
                buffers: Arc::clone(&buffers),
            },
        );
        let writer = Writer {
            disk_index: disk,
            written: HashMap::new(),
            disk: target,
            record: record.clone(),
            ledger: Arc::clone(&self.app.ledger),
            metrics: Arc::clone(&self.app.metrics),
            buffers: Arc::clone(&buffers),
        };
        let events = events.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ferry-writer-{disk}"))
            .spawn(move || {
                // The disk stays claimed until its writer has stopped.
                let _guard: Claim = guard;
                writer.run(work_rx, events);
            })
            .context("starting a writer thread")?;
        self.disks.insert(
            disk,
            OpenDisk {
                record,
                committed: committed_bytes,
                work: work_tx,
                thread,
                buffers,
                _published: published,
            },
        );
        send_within(conn, Frame::StreamKey { disk, key })
            .await
            .context("sending the stream key")?;
        self.tell_bandwidth(conn).await
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

    /// Whether this session wrote every tree of targets it laid out (or
    /// found laid out): the round can end.
    fn files_done(&self) -> bool {
        self.files
            .as_ref()
            .is_some_and(|f| f.trees > 0 && (0..f.trees as u32).all(|t| f.closed.contains(&t)))
    }

    /// File mode: the source's layout. The targets are laid out (or found
    /// laid out) and mounted, and the job is Syncing; a job that only
    /// replicates keeps the trees beneath its state directory.
    async fn source_layout(&mut self, conn: &mut Conn, json: bytes::Bytes) -> Result<()> {
        if self.files.is_some() || !self.trees.is_empty() {
            return Err(coded(
                ErrorCode::UnexpectedFrame,
                "SourceLayout after the session's first tree",
            ));
        }
        let (plan, lvm) = crate::layout::fit::SourcePlan::from_json(&json)?.flattened()?;
        if matches!(
            self.app.job.status(),
            crate::job::state::Status::Ready | crate::job::state::Status::Waiting
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
            let p =
                super::files::targets::prepare(&app.config, &app.ledger, plan, lvm, &mount_root)?;
            app.job.syncing(&[])?;
            Ok(p)
        })
        .await
        .context("laying out the targets")??;
        let detail = super::files::targets::describe(&prepared);
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
    async fn open_tree(
        &mut self,
        conn: &mut Conn,
        tree: u32,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<()> {
        if tree >= crate::files::MAX_TREES {
            return Err(coded(
                ErrorCode::DiskNotConfigured,
                format!(
                    "tree {tree}: a job has at most {} file systems",
                    crate::files::MAX_TREES
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
            .max(crate::files::FILE_CHUNK + 64)
            .max(crate::files::MAX_XATTR_BYTES + 4 * crate::files::MAX_PATH);
        conn.codec_mut().set_max(codec_max);
        let root = match &self.files {
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
            })?,
            _ => self.app.config.tree_root(tree),
        };
        let ledger = Arc::clone(&self.app.ledger);
        let writer = tokio::task::spawn_blocking(move || TreeWriter::open(tree, &root, ledger))
            .await
            .context("opening the tree")??;
        let mut after: Option<Vec<u8>> = None;
        let mut total = 0usize;
        loop {
            let ledger = Arc::clone(&self.app.ledger);
            let from = after.clone();
            let rows = tokio::task::spawn_blocking(move || {
                ledger.entries(
                    tree,
                    from.as_deref(),
                    crate::files::MANIFEST_PAGE_ENTRIES,
                    crate::files::MANIFEST_PAGE_BYTES,
                )
            })
            .await
            .context("reading the ledger")?
            .code(ErrorCode::LedgerFailed)?;
            let last = rows.len() < crate::files::MANIFEST_PAGE_ENTRIES
                && rows.iter().map(|(p, v)| p.len() + v.len()).sum::<usize>()
                    < crate::files::MANIFEST_PAGE_BYTES;
            after = rows.last().map(|(p, _)| p.clone());
            let mut entries = Vec::with_capacity(rows.len());
            for (path, raw) in rows {
                let stamp = crate::files::Stamp::from_bytes(&raw).ok_or_else(|| {
                    coded(
                        ErrorCode::LedgerFailed,
                        format!(
                            "the ledger's entry of `{}` is damaged",
                            crate::files::display(&path)
                        ),
                    )
                })?;
                entries.push((path, stamp));
            }
            total += entries.len();
            send_within(
                conn,
                Frame::TreeManifest {
                    tree,
                    last,
                    entries,
                },
            )
            .await
            .context("sending the tree's manifest")?;
            if last {
                break;
            }
        }
        tracing::info!(tree, committed = total, "tree opened");
        self.app.files_progress.tree_opened();
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

    /// Stop the writers; each commits what it wrote before it returns.
    async fn close(&mut self) {
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
        self.attached.clear();
        for (disk, d) in self.disks.drain() {
            // The sender's data streams hold the queue too: the writer
            // stops when told, not when every handle is gone.
            drop(d._published);
            let _ = d.work.send(Work::Close).await;
            drop(d.work);
            let joined = tokio::task::spawn_blocking(move || d.thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(disk, "writer thread panicked");
            }
        }
    }
}

/// Send a frame within [`wire::LINK_TIMEOUT`]: a write that cannot go out
/// for that long meets a silent link (the kernel's TCP_USER_TIMEOUT says the
/// same a moment later).
async fn send_within(conn: &mut Conn, frame: Frame) -> Result<()> {
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

async fn next_frame(conn: &mut Conn) -> Result<Frame> {
    match conn.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(coded(e.code(), e.to_string())),
        None => Err(coded(
            ErrorCode::TransferInterrupted,
            "the sender closed the connection during authentication",
        )),
    }
}

fn check_index(d: &OpenDisk, disk: u32, index: u64) -> Result<()> {
    let count = d.record.chunks();
    if index >= count {
        return Err(coded(
            ErrorCode::ChunkOutOfRange,
            format!(
                "chunk {index} of disk {disk}, which has {count} chunks of {} bytes",
                d.record.chunk_size
            ),
        ));
    }
    Ok(())
}

/// Chunks of a disk another session of the sender opened.
async fn attached_work(a: &Attached, disk: u32, index: u64, work: Work) -> Result<()> {
    if index >= a.chunks {
        return Err(coded(
            ErrorCode::ChunkOutOfRange,
            format!(
                "chunk {index} of disk {disk}, which has {} chunks of {} bytes",
                a.chunks, a.chunk_size
            ),
        ));
    }
    a.link.heard();
    tokio::select! {
        r = a.work.send(work) => r.map_err(|_| closed_by_owner(disk)),
        _ = a.closed.cancelled() => Err(closed_by_owner(disk)),
    }
}

fn closed_by_owner(disk: u32) -> anyhow::Error {
    coded(
        ErrorCode::TransferInterrupted,
        format!("disk {disk} was closed by the session that opened it"),
    )
}

fn tree_writer_gone(tree: u32) -> anyhow::Error {
    coded(
        ErrorCode::Internal,
        format!("the writer of tree {tree} has stopped"),
    )
}

fn writer_gone(disk: u32) -> anyhow::Error {
    coded(
        ErrorCode::Internal,
        format!("the writer of disk {disk} has stopped"),
    )
}

/// An embedded disk's image lives on the state directory's file system:
/// refuse a disk larger than its free space, with the numbers.
fn room_for_image(path: &std::path::Path, disk: u32, size: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    if size > free {
        return Err(coded(
            ErrorCode::TargetTooSmall,
            format!(
                "disk {disk} of {} ({size} bytes) does not fit in {}: its file system has {} ({free} bytes) free; give the state directory a larger file system, or configure a target device for disk {disk}",
                crate::disk::human_bytes(size),
                dir.display(),
                crate::disk::human_bytes(free)
            ),
        ));
    }
    Ok(())
}

/// Find or create the target of `disk` and its ledger record.
fn open_target(
    app: &Appliance,
    disk: u32,
    size: u64,
    chunk_size: u32,
) -> Result<(Disk, DiskRecord)> {
    let cfg = &app.config;
    let existing = app.ledger.disk(disk).code(ErrorCode::LedgerFailed)?;
    if let Some(rec) = &existing {
        super::records::check(cfg, disk, rec).map_err(|why| {
            coded(
                ErrorCode::LedgerFailed,
                super::refused_record(cfg, disk, &why),
            )
        })?;
        if rec.size != size {
            return Err(coded(
                ErrorCode::DiskSizeChanged,
                format!(
                    "disk {disk} was {} bytes, the sender now announces {size}",
                    rec.size
                ),
            ));
        }
        if rec.chunk_size != chunk_size {
            return Err(coded(
                ErrorCode::BadChunkSize,
                format!(
                    "this job writes disk {disk} in chunks of {} bytes; send with --chunk-size {}",
                    rec.chunk_size, rec.chunk_size
                ),
            ));
        }
    }
    if chunk_count(size, chunk_size) > super::records::MAX_CHUNKS {
        return Err(coded(
            ErrorCode::BadChunkSize,
            format!(
                "disk {disk} of {size} bytes in chunks of {chunk_size} bytes would have more than {} chunks; send with a larger --chunk-size",
                super::records::MAX_CHUNKS
            ),
        ));
    }
    if cfg.embedded() {
        if disk >= cfg.max_embedded_disks {
            return Err(coded(
                ErrorCode::DiskNotConfigured,
                format!(
                    "disk {disk}: embedded mode takes disks 0 to {}",
                    cfg.max_embedded_disks - 1
                ),
            ));
        }
        if size > cfg.max_embedded_disk_bytes {
            return Err(coded(
                ErrorCode::TargetTooSmall,
                format!(
                    "disk {disk} of {size} bytes exceeds the embedded limit of {} bytes",
                    cfg.max_embedded_disk_bytes
                ),
            ));
        }
        let path = cfg.embedded_disk_path(disk);
        if let Some(rec) = existing {
            if path.exists() {
                return Ok((Disk::open_target(&path)?, rec));
            }
            tracing::warn!(disk, path = %path.display(), "target image is gone; starting the disk over");
        }
        // Nothing of this disk is committed (or its image is gone): the image
        // is created anew, so every chunk not yet written reads as zeros.
        // It must fit, or the job would fail half-way: refused now, before
        // the disk is recorded.
        room_for_image(&path, disk, size)?;
        let d = Disk::create_sparse(&path, size).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        let rec = DiskRecord {
            size,
            chunk_size,
            fresh: true,
            target: path.display().to_string(),
        };
        app.ledger
            .put_disk(disk, &rec)
            .code(ErrorCode::LedgerFailed)?;
        return Ok((d, rec));
    }
    let path = cfg.target_for(disk).ok_or_else(|| {
        coded(
            ErrorCode::DiskNotConfigured,
            format!("disk {disk} is not mapped in the config"),
        )
    })?;
    let d = Disk::open_target(path)?;
    if d.size() < size {
        return Err(coded(
            ErrorCode::TargetTooSmall,
            format!(
                "disk {disk}: target {} has {} bytes, the source {size}",
                path.display(),
                d.size()
            ),
        ));
    }
    let rec = match existing {
        Some(rec) => rec,
        None => {
            // What the device held before is unknown: zero chunks must be written.
            let rec = DiskRecord {
                size,
                chunk_size,
                fresh: false,
                target: path.display().to_string(),
            };
            app.ledger
                .put_disk(disk, &rec)
                .code(ErrorCode::LedgerFailed)?;
            rec
        }
    };
    Ok((d, rec))
}
