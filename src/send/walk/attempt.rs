//! One attempt of file mode, on one connection: the source's layout, the
//! appliance's answer (its targets laid out), every tree in turn (its
//! manifest, the frames the producer queues, its close), then the round's
//! end; or, once every tree is committed, only the round's end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::plan::TreeJob;
use super::producer::produce;
use super::report::{print_progress, Counts, TreeReport};
use crate::entry::Stamp;
use crate::job::errors::{coded, ErrorCode};
use crate::send::client::{self, Conn};
use crate::send::{round, SendOptions};
use crate::wire::{self, Frame};

/// Most frames, and content bytes, sent with one flush.
const SEND_BATCH: usize = 256;
const SEND_BATCH_BYTES: usize = 4 << 20;

/// The layout, every tree, and the round's end, on one connection. Once
/// every tree is committed, `sent` holds their reports (and whether the
/// appliance laid out its targets), so that a retry only follows the
/// round.
pub(crate) async fn attempt(
    args: &SendOptions,
    to: &str,
    fingerprint: &str,
    jobs: &[TreeJob],
    plan: &Bytes,
    sent: &mut Option<(Vec<TreeReport>, bool)>,
) -> Result<()> {
    let mut conn = client::connect(to, &args.token, fingerprint).await?;
    client::send(&mut conn, Frame::SourceLayout { json: plan.clone() }).await?;
    let built = loop {
        match client::recv(&mut conn).await? {
            Frame::TargetsReady { built, detail } => {
                eprintln!("ferry send: the appliance's targets: {detail}");
                break built;
            }
            Frame::Bandwidth { .. } => continue,
            other => return Err(crate::wire::unexpected("TargetsReady", &other)),
        }
    };
    let mut reports = Vec::new();
    for j in jobs {
        reports.push(send_tree(&mut conn, args, j).await?);
    }
    *sent = Some((reports, built));
    if built && !args.no_wait {
        round::wait_for_round(&mut conn, &|line| eprintln!("{line}")).await?;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(conn.get_mut()).await;
    Ok(())
}

/// A new connection that only follows the round's end.
pub(crate) async fn follow(args: &SendOptions, to: &str, fingerprint: &str) -> Result<()> {
    if args.no_wait {
        return Ok(());
    }
    let mut conn = client::connect(to, &args.token, fingerprint).await?;
    round::wait_for_round(&mut conn, &|line| eprintln!("{line}")).await?;
    let _ = tokio::io::AsyncWriteExt::shutdown(conn.get_mut()).await;
    Ok(())
}

/// One tree: its manifest, what changed, the removals, its close.
async fn send_tree(conn: &mut Conn, args: &SendOptions, j: &TreeJob) -> Result<TreeReport> {
    let tree = j.tree;
    client::send(conn, Frame::OpenTree { tree }).await?;
    let manifest = read_manifest(conn, tree).await?;
    let counts = Arc::new(Counts::default());
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let producer = {
        let (j, counts) = (j.clone(), Arc::clone(&counts));
        let level = args.zstd_level;
        tokio::task::spawn_blocking(move || produce(&j, manifest, &tx, level, &counts))
    };
    let sent = stream(conn, j, &mut rx, &counts).await;
    // The producer stops when the queue is gone.
    drop(rx);
    let produced = producer.await.context("walking the tree")?;
    sent?;
    let skipped = produced?;
    let closed = close_tree(conn, tree).await?;
    Ok(TreeReport::of(j, &counts, skipped, closed))
}

/// Send what the producer queues, in batches, until it is done; ping the
/// appliance meanwhile and print the progress line every 5 s.
async fn stream(
    conn: &mut Conn,
    j: &TreeJob,
    rx: &mut mpsc::Receiver<Frame>,
    counts: &Counts,
) -> Result<()> {
    let started = Instant::now();
    let mut ping = tokio::time::interval(wire::HEARTBEAT);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => client::send_all(conn, batch(frame, rx)).await?,
                None => return Ok(()),
            },
            incoming = client::recv_any(conn) => match incoming? {
                Frame::Pong | Frame::Bandwidth { .. } => {}
                other => return Err(coded(
                    ErrorCode::UnexpectedFrame,
                    format!("{} while the tree was sent", other.name()),
                )),
            },
            _ = ping.tick() => client::send(conn, Frame::Ping).await?,
            _ = progress.tick() => print_progress(j.tree, &j.mount, j.used, counts, started.elapsed()),
        }
    }
}

/// `first` and what else is queued, to go in one flush.
fn batch(first: Frame, rx: &mut mpsc::Receiver<Frame>) -> Vec<Frame> {
    let mut batch = vec![first];
    let mut bytes = 0usize;
    while batch.len() < SEND_BATCH && bytes < SEND_BATCH_BYTES {
        match rx.try_recv() {
            Ok(f) => {
                if let Frame::FileData { payload, .. } = &f {
                    bytes += payload.len();
                }
                batch.push(f);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Close the tree: the appliance answers what it committed of it
/// (entries, removals, bytes).
async fn close_tree(conn: &mut Conn, tree: u32) -> Result<(u64, u64, u64)> {
    client::send(conn, Frame::CloseTree { tree }).await?;
    loop {
        match client::recv_live(conn).await? {
            Frame::TreeClosed {
                tree: t,
                entries,
                removed,
                bytes,
            } if t == tree => return Ok((entries, removed, bytes)),
            Frame::Bandwidth { .. } => continue,
            other => return Err(crate::wire::unexpected("TreeClosed", &other)),
        }
    }
}

async fn read_manifest(conn: &mut Conn, tree: u32) -> Result<HashMap<Vec<u8>, Stamp>> {
    let mut manifest = HashMap::new();
    loop {
        match client::recv(conn).await? {
            Frame::TreeManifest {
                tree: t,
                last,
                entries,
            } if t == tree => {
                manifest.extend(entries);
                if last {
                    return Ok(manifest);
                }
            }
            Frame::Bandwidth { .. } => continue,
            other => return Err(crate::wire::unexpected("TreeManifest", &other)),
        }
    }
}
