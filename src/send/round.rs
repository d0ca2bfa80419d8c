//! The end of a round, as the sender sees it: once its disks or trees are
//! committed, it asks the appliance how the round ends and follows the
//! pipeline's steps (grow, repair, verify, handoff) until the job settles.

use anyhow::{Context, Result};

use super::client::{self, Conn};
use crate::job::state::JobStatus;
use crate::job::step::Step;
use crate::wire::{self, Frame, RoundEvent};

/// Every disk is verified: ask the appliance how the round ends and follow
/// its pipeline (grow, repair, verify, handoff) to the end. A failure there
/// comes back as the appliance's error (code, message, hint). A connection
/// that drops meanwhile is a TRANSFER_INTERRUPTED, which the caller retries:
/// the next attempt has no disk to send and follows the round again.
pub(crate) async fn wait_for_round(conn: &mut Conn, say: &(dyn Fn(&str) + Sync)) -> Result<()> {
    client::send(conn, Frame::EndRound).await?;
    let mut steps: Vec<Step> = Vec::new();
    loop {
        // The appliance tells a step at least every 10 s while it runs.
        let frame = match tokio::time::timeout(2 * wire::LINK_TIMEOUT, client::recv(conn)).await {
            Ok(f) => f.context("following the appliance's pipeline")?,
            Err(_) => return Err(client::silent()),
        };
        let (status, event) = match frame {
            Frame::RoundStatus { status, event } => (status, event),
            // Told as the disks ended; nothing is sent any more.
            Frame::Bandwidth { .. } => continue,
            other => return Err(crate::wire::unexpected("RoundStatus", &other)),
        };
        match event {
            RoundEvent::Step(step) => {
                // The same step again is the appliance's heartbeat.
                if steps.last() != Some(&step) {
                    say(&format!(
                        "ferry send: the appliance runs the round's pipeline: {step}"
                    ));
                    steps.push(step);
                }
            }
            RoundEvent::Done => {
                say(&format!("ferry send: {}", round_outcome(&steps, status)));
                return Ok(());
            }
            RoundEvent::AwaitingDisks => {
                say(&format!(
                    "ferry send: this sender's disks are committed; the job ({status}) waits for its other disks before it ends the round"
                ));
                return Ok(());
            }
        }
    }
}

/// How the round ended, from the steps this sender saw: "processed" only
/// when the appliance ran more than the handoff (a job that only
/// replicates disks has nothing else to run), and nothing about the steps
/// when the round had ended before this sender asked.
fn round_outcome(steps: &[Step], status: JobStatus) -> String {
    let processing: Vec<&str> = steps
        .iter()
        .filter(|s| **s != Step::Handoff)
        .map(|s| s.as_str())
        .collect();
    let round = if !processing.is_empty() {
        format!(
            "the round is processed ({}) and handed off",
            processing.join(", ")
        )
    } else if steps.contains(&Step::Handoff) {
        "the disks are verified and handed off; the job only replicates disks, so nothing was processed".to_owned()
    } else {
        "the round had already ended".to_owned()
    };
    match status {
        JobStatus::Waiting => format!(
            "{round}; the job is Waiting: the next round starts when the control plane has taken its snapshot"
        ),
        other => format!("{round}; the job is {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processed_is_said_only_of_a_round_that_was() {
        let all = [
            Step::Grow,
            Step::Mount,
            Step::Repair,
            Step::Resync,
            Step::Verify,
            Step::Handoff,
        ];
        let cases: [(&str, &[Step], JobStatus, &str); 4] = [
            (
                "a round with its pipeline",
                &all,
                JobStatus::Finished,
                "the round is processed (grow, mount, repair, resync, verify) and handed off; the job is Finished",
            ),
            (
                "a job that only replicates",
                &[Step::Handoff],
                JobStatus::Finished,
                "the disks are verified and handed off; the job only replicates disks, so nothing was processed; the job is Finished",
            ),
            (
                "an incremental round",
                &[Step::Handoff],
                JobStatus::Waiting,
                "the disks are verified and handed off; the job only replicates disks, so nothing was processed; the job is Waiting: the next round starts when the control plane has taken its snapshot",
            ),
            (
                "a round that had ended before",
                &[],
                JobStatus::CLEANING,
                "the round had already ended; the job is Running/Cleaning",
            ),
        ];
        for (name, steps, status, want) in cases {
            assert_eq!(round_outcome(steps, status), want, "{name}");
        }
    }
}
