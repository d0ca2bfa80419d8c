//! The pipeline's runner: one run at a time on its own thread, watched by
//! every caller that asks while it runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::sync::watch;

use super::{boot, handoff_anyway, run, PipelineSettings, Step};
use crate::job::errors::{describe, ErrorCode};
use crate::job::handle::JobHandle;
use crate::job::ledger::Ledger;
use crate::job::state::JobStatus;

/// Where a run is: the steps started so far, in order, and once it is over,
/// the status the job reached or the error that put it InError.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phase {
    pub steps: Vec<Step>,
    pub done: Option<Result<JobStatus, Failure>>,
}

/// Why a run failed: the catalogue code and this occurrence's detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub detail: String,
}

/// Runs the pipeline on its own thread, at most one run at a time; later
/// callers watch the run in progress.
pub struct Runner {
    settings: PipelineSettings,
    ledger: Arc<Ledger>,
    job: Arc<JobHandle>,
    current: Mutex<Option<watch::Receiver<Phase>>>,
}

impl Runner {
    pub fn new(settings: PipelineSettings, ledger: Arc<Ledger>, job: Arc<JobHandle>) -> Runner {
        Runner {
            settings,
            ledger,
            job,
            current: Mutex::new(None),
        }
    }

    /// What a round does after the data: builds the OS (grow, repair,
    /// verify), and boot-tests it.
    pub fn does(&self) -> (bool, bool) {
        (
            self.settings.build,
            self.settings.build && self.settings.boot_test.enabled,
        )
    }

    /// The network map the next repair follows, and where it comes from.
    pub fn network_map(&self) -> Result<(crate::repair::network::map::NetworkMap, super::MapFrom)> {
        self.settings.repair.network_map(&self.settings.state_dir)
    }

    /// The hooks the next repair runs, and where they come from.
    pub fn hooks(&self) -> Result<(crate::repair::hooks::Hooks, super::MapFrom)> {
        self.settings.repair.hooks(&self.settings.state_dir)
    }

    /// Keep the control plane's hooks for the rounds to come (none: the
    /// configuration's again).
    pub fn set_hooks(&self, hooks: &crate::repair::hooks::Hooks) -> Result<()> {
        super::store_hooks(&self.settings.state_dir, hooks)
    }

    /// Keep the control plane's network map for the rounds to come (an
    /// empty one: the configuration's again).
    pub fn set_network_map(&self, map: &crate::repair::network::map::NetworkMap) -> Result<()> {
        super::store_network_map(&self.settings.state_dir, map)
    }

    /// Where the boot test keeps its console, capture and verdict.
    pub(crate) fn boot_test_dir(&self) -> PathBuf {
        self.settings.work_dir().join(boot::DIR)
    }

    /// The run in progress or the last one, if any ran in this process.
    pub fn current(&self) -> Option<watch::Receiver<Phase>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Start the pipeline (or join the run in progress) and watch it.
    pub fn start(self: &Arc<Self>) -> watch::Receiver<Phase> {
        self.start_with(run)
    }

    /// Hand off a round whose boot test failed, as the control plane asked
    /// (or join the run in progress).
    pub(crate) fn start_handoff_anyway(self: &Arc<Self>) -> watch::Receiver<Phase> {
        self.start_with(handoff_anyway)
    }

    fn start_with(self: &Arc<Self>, what: RunFn) -> watch::Receiver<Phase> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = current.as_ref() {
            if rx.borrow().done.is_none() {
                return rx.clone();
            }
        }
        let (tx, rx) = watch::channel(Phase::default());
        *current = Some(rx.clone());
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("ferry-pipeline".into())
            .spawn(move || {
                let result = what(&me.settings, &me.ledger, &me.job, &|step| {
                    tracing::info!(%step, "pipeline step");
                    if let Err(e) = me.job.processing_step(step) {
                        tracing::warn!("recording the pipeline step: {e:#}");
                    }
                    tx.send_modify(|p| p.steps.push(step));
                });
                let done = match result {
                    Ok(status) => {
                        tracing::info!(%status, "the round is handed off");
                        Ok(status)
                    }
                    Err(err) => {
                        let (code, detail) = describe(&err);
                        tracing::error!(%code, error = %format!("{err:#}"), "the round's pipeline failed");
                        if let Err(e) = me.job.fail(code, detail.clone()) {
                            tracing::error!("recording the pipeline's error: {e:#}");
                        }
                        Err(Failure { code, detail })
                    }
                };
                tx.send_modify(|p| p.done = Some(done));
            });
        if let Err(e) = spawned {
            tracing::error!("starting the pipeline thread: {e}");
            let (_, rx) = watch::channel(Phase {
                steps: Vec::new(),
                done: Some(Err(Failure {
                    code: ErrorCode::Internal,
                    detail: format!("starting the pipeline thread: {e}"),
                })),
            });
            *current = Some(rx.clone());
            return rx;
        }
        rx
    }
}

/// A run of the pipeline (or of a part of it).
type RunFn = fn(&PipelineSettings, &Ledger, &JobHandle, &dyn Fn(Step)) -> Result<JobStatus>;
