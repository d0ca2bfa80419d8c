//! The end of a round on the data port: a sender's EndRound commits the
//! round when every disk (or tree) is done and starts its pipeline, and
//! the sender is told each step as it runs and how the round ended — or,
//! reconnecting later, follows the run in progress or hears how it ended.

use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;

use super::conn::{send_within, Conn};
use crate::job::errors::ErrorCode;
use crate::serve::Appliance;
use crate::wire::{Frame, RoundEvent};

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
pub(crate) async fn end_round(
    app: &Arc<Appliance>,
    conn: &mut Conn,
    admitted: bool,
    wait: bool,
    files_done: bool,
) {
    use crate::job::state::JobStatus;
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
    if matches!(status, JobStatus::PROCESSING | JobStatus::CLEANING) {
        if let Some(phase) = app.pipeline.current() {
            follow(app, conn, phase).await;
            return;
        }
    }
    let frame = match status {
        JobStatus::Finished | JobStatus::Waiting => Frame::RoundStatus {
            status,
            event: RoundEvent::Done,
        },
        JobStatus::InError => match app.job.snapshot().last_error {
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
