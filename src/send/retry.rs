//! The sender's one retry loop, for block mode and file mode alike.
//!
//! An attempt that fails with a retryable code is tried again after a
//! backoff (1, 2, 4, 8, then 16 s), up to `--retries` more times; a final
//! code, or the last attempt, ends the loop. When every disk or tree was
//! committed and only the round's end could not be followed, the failure is
//! PROCESSING_UNKNOWN: the data is safe, and the appliance goes on with its
//! pipeline without the sender, so it is not a lost transfer.

use std::time::Duration;

use anyhow::Result;

use super::SendOptions;
use crate::job::errors::{coded, describe, find_coded, ErrorCode, Retry};

/// How a run of attempts is retried and what its failure is called.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Attempts after the first.
    pub(crate) retries: u32,
    /// The sender follows the round's pipeline to its end (not --no-wait).
    pub(crate) follows_round: bool,
    /// What holds once everything is committed, as PROCESSING_UNKNOWN says it.
    pub(crate) committed: &'static str,
}

impl Policy {
    /// Block mode: the disks.
    pub(crate) fn disks(args: &SendOptions) -> Policy {
        Policy {
            retries: args.retries,
            follows_round: !args.no_wait,
            committed: "every disk is committed and verified",
        }
    }

    /// File mode: the trees of the source's file systems.
    pub(crate) fn trees(args: &SendOptions) -> Policy {
        Policy {
            retries: args.retries,
            follows_round: !args.no_wait,
            committed: "every tree is committed",
        }
    }

    /// What comes after attempt number `attempts` (from 1) ended with
    /// `outcome`.
    pub(crate) fn next(&self, attempts: u32, outcome: Outcome) -> Next {
        let e = match outcome.result {
            Ok(()) => return Next::Done(Ok(())),
            Err(e) => e,
        };
        let retry = find_coded(&e)
            .map(|c| c.code)
            .unwrap_or(ErrorCode::Internal)
            .retry();
        if retry == Retry::Retry && attempts <= self.retries {
            return Next::Retry {
                wait: backoff(attempts),
                error: e,
            };
        }
        if outcome.committed && retry == Retry::Retry && self.follows_round {
            // Not data at risk: everything is committed; the outcome is in
            // the job.
            return Next::Done(Err(coded(
                ErrorCode::ProcessingUnknown,
                format!(
                    "{}, but the appliance could not be reached to follow the round to its end ({})",
                    self.committed,
                    describe(&e).1
                ),
            )));
        }
        Next::Done(Err(e))
    }
}

/// What an attempt ended with.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) result: Result<()>,
    /// Every disk or tree is committed: only the round's end is left.
    pub(crate) committed: bool,
}

/// After an attempt: the end of the loop, or another attempt after `wait`.
#[derive(Debug)]
pub(crate) enum Next {
    Done(Result<()>),
    Retry {
        wait: Duration,
        error: anyhow::Error,
    },
}

/// The wait before the attempt after attempt number `attempts`.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << (attempts - 1).min(4))
}

/// Run `attempt` until it succeeds or `policy` gives up; `say` prints each
/// retry. Returns how many attempts ran and how the last one ended.
pub(crate) async fn run(
    policy: &Policy,
    say: &(dyn Fn(&str) + Sync),
    mut attempt: impl AsyncFnMut() -> Outcome,
) -> (u32, Result<()>) {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = attempt().await;
        match policy.next(attempts, outcome) {
            Next::Done(result) => return (attempts, result),
            Next::Retry { wait, error } => {
                say(&format!(
                    "ferry send: {error:#}; retrying in {} s (attempt {} of {})",
                    wait.as_secs(),
                    attempts + 1,
                    policy.retries + 1
                ));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn failed(code: ErrorCode, committed: bool) -> Outcome {
        Outcome {
            result: Err(coded(code, "the link was cut")),
            committed,
        }
    }

    fn succeeded() -> Outcome {
        Outcome {
            result: Ok(()),
            committed: true,
        }
    }

    fn policy(committed: &'static str, follows_round: bool) -> Policy {
        Policy {
            retries: 2,
            follows_round,
            committed,
        }
    }

    /// Runs the loop over scripted outcomes (with tokio's clock paused, so
    /// the backoff takes no time); returns the attempts, the lines said and
    /// the end: Ok, or the error's code and detail.
    async fn script(
        policy: &Policy,
        outcomes: Vec<Outcome>,
    ) -> (u32, Vec<String>, Result<(), (ErrorCode, String)>) {
        let said = Mutex::new(Vec::new());
        let mut outcomes = outcomes.into_iter();
        let (attempts, result) = run(
            policy,
            &|line| said.lock().unwrap().push(line.to_owned()),
            async || outcomes.next().expect("an attempt more than scripted"),
        )
        .await;
        let said = said.into_inner().unwrap();
        (attempts, said, result.map_err(|e| describe(&e)))
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_decision_over_a_sequence_of_outcomes() {
        use ErrorCode::{AuthFailed, ProcessingUnknown, TransferInterrupted};
        let disks = policy("every disk is committed and verified", true);
        // Name, policy, outcomes, attempts run, retries said, the end.
        type Case = (
            &'static str,
            Policy,
            Vec<Outcome>,
            u32,
            usize,
            Result<(), ErrorCode>,
        );
        let cases: Vec<Case> = vec![
            (
                "the first attempt succeeds",
                disks.clone(),
                vec![succeeded()],
                1,
                0,
                Ok(()),
            ),
            (
                "a cut link, then success",
                disks.clone(),
                vec![failed(TransferInterrupted, false), succeeded()],
                2,
                1,
                Ok(()),
            ),
            (
                "a final code is not retried",
                disks.clone(),
                vec![failed(AuthFailed, false)],
                1,
                0,
                Err(AuthFailed),
            ),
            (
                "a final code is not retried even with everything committed",
                disks.clone(),
                vec![failed(AuthFailed, true)],
                1,
                0,
                Err(AuthFailed),
            ),
            (
                "the retries run out before everything is committed",
                disks.clone(),
                vec![
                    failed(TransferInterrupted, false),
                    failed(TransferInterrupted, false),
                    failed(TransferInterrupted, false),
                ],
                3,
                2,
                Err(TransferInterrupted),
            ),
            (
                "the retries run out while following the round",
                disks.clone(),
                vec![
                    failed(TransferInterrupted, false),
                    failed(TransferInterrupted, true),
                    failed(TransferInterrupted, true),
                ],
                3,
                2,
                Err(ProcessingUnknown),
            ),
            (
                "--no-wait: the round is not followed, the error is the link's",
                policy("every disk is committed and verified", false),
                vec![
                    failed(TransferInterrupted, true),
                    failed(TransferInterrupted, true),
                    failed(TransferInterrupted, true),
                ],
                3,
                2,
                Err(TransferInterrupted),
            ),
        ];
        for (name, policy, outcomes, attempts, retried, want) in cases {
            let (n, said, got) = script(&policy, outcomes).await;
            assert_eq!(n, attempts, "{name}");
            assert_eq!(said.len(), retried, "{name}: {said:?}");
            assert_eq!(got.map_err(|(code, _)| code), want, "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_says_what_failed_and_waits_longer_each_time() {
        let (_, said, _) = script(
            &Policy {
                retries: 6,
                ..policy("every disk is committed and verified", true)
            },
            (0..7)
                .map(|_| failed(ErrorCode::TransferInterrupted, false))
                .collect(),
        )
        .await;
        let waits: Vec<&str> = said
            .iter()
            .map(|l| l.split("retrying in ").nth(1).unwrap_or(""))
            .collect();
        assert_eq!(
            waits,
            [
                "1 s (attempt 2 of 7)",
                "2 s (attempt 3 of 7)",
                "4 s (attempt 4 of 7)",
                "8 s (attempt 5 of 7)",
                "16 s (attempt 6 of 7)",
                "16 s (attempt 7 of 7)",
            ]
        );
        assert!(
            said[0].starts_with("ferry send: TRANSFER_INTERRUPTED"),
            "{}",
            said[0]
        );
    }

    /// File mode had a loop of its own, which never said PROCESSING_UNKNOWN:
    /// a sender whose trees were all committed and that lost the appliance
    /// while it followed the round failed as a lost transfer.
    #[tokio::test(start_paused = true)]
    async fn file_mode_reports_processing_unknown_once_every_tree_is_committed() {
        let args = crate::send::SendOptions {
            retries: 1,
            no_wait: false,
            ..options()
        };
        let (attempts, _, got) = script(
            &Policy::trees(&args),
            vec![
                failed(ErrorCode::TransferInterrupted, true),
                failed(ErrorCode::TransferInterrupted, true),
            ],
        )
        .await;
        assert_eq!(attempts, 2);
        let (code, detail) = got.expect_err("the round's end was not followed");
        assert_eq!(code, ErrorCode::ProcessingUnknown);
        assert!(
            detail.starts_with(
                "every tree is committed, but the appliance could not be reached to follow the round to its end ("
            ),
            "{detail}"
        );
        // Block mode says the same of its disks.
        let (_, _, got) = script(
            &Policy::disks(&args),
            vec![
                failed(ErrorCode::TransferInterrupted, true),
                failed(ErrorCode::TransferInterrupted, true),
            ],
        )
        .await;
        let (code, detail) = got.expect_err("the round's end was not followed");
        assert_eq!(code, ErrorCode::ProcessingUnknown);
        assert!(
            detail.starts_with("every disk is committed and verified, but"),
            "{detail}"
        );
    }

    fn options() -> crate::send::SendOptions {
        crate::send::SendOptions {
            to: String::new(),
            token: String::new(),
            fingerprint: String::new(),
            disks: Vec::new(),
            chunk_size: 0,
            window: None,
            streams: None,
            bwlimit: None,
            zstd_level: 0,
            retries: 0,
            report: None,
            probe: false,
            no_wait: false,
            probe_seconds: 0,
            consistency: crate::send::consistency::ConsistencySettings::default(),
            files: None,
        }
    }
}
