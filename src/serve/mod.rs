//! `ferry serve`: the appliance.
//!
//! Two listeners: the data port (8703, TLS only) where senders write disks,
//! and the control port (8080, HTTP) with health, metrics and the job API.

pub mod admission;
pub mod api;
pub mod auth_limit;
pub mod control;
pub mod job_metrics;
pub mod metrics;
pub mod notify;
pub mod session;
pub mod webhook;
pub mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::job::handle::JobHandle;
use crate::job::ledger::Ledger;
use crate::job::state::{JobSettings, JobStore, SystemClock, Validity};

/// State shared by every connection of the appliance.
pub struct Appliance {
    pub config: Config,
    pub token: String,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<metrics::Metrics>,
    pub fingerprint: String,
    pub tls: Arc<rustls::ServerConfig>,
    pub auth: auth_limit::AuthLimiter,
    /// Disks a session is writing now.
    busy: Mutex<HashSet<u32>>,
    pub data_bound: AtomicBool,
    /// The job: its state, progress and last error (persisted in the ledger).
    pub job: Arc<JobHandle>,
    /// None: no control token, so /v1/job answers 401 to everyone.
    pub control_token: Option<String>,
    /// Control requests refused for a missing or wrong control token.
    pub unauthorized: prometheus::IntCounter,
    pub webhook: Option<webhook::Webhook>,
    /// The data port's budget of connections not yet authenticated.
    pub data_admission: Arc<admission::Admission>,
    /// The round's pipeline (grow, repair, verify, handoff), when one runs.
    pub pipeline: Arc<crate::pipeline::Runner>,
}

/// Holds a disk for one session; released when dropped.
pub struct BusyGuard {
    app: Arc<Appliance>,
    disk: u32,
}

impl Appliance {
    pub fn try_claim(self: &Arc<Self>, disk: u32) -> Option<BusyGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(disk).then(|| BusyGuard {
            app: Arc::clone(self),
            disk,
        })
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut busy = self.app.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.disk);
    }
}

pub fn run_blocking(config: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(config))
}

/// Resolve the state directory, token and TLS identity of `config`.
pub fn prepare(config: Config) -> Result<Appliance> {
    let validity = Validity::days(config.validity_days)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    let token = resolve_token(&config)?;
    let ledger = Arc::new(Ledger::open(&config.ledger_path())?);
    let tls = crate::wire::tls::load_or_create(&config.state_dir.join("tls"))?;
    let job = JobHandle::open(
        Arc::clone(&ledger) as Arc<dyn JobStore>,
        Arc::new(SystemClock),
        JobSettings {
            incremental: config.incremental,
            validity,
        },
    )?;
    job.set_stall_after(std::time::Duration::from_secs(config.stall_after_secs));
    restore_job_progress(&job, &ledger)?;
    let control_token = resolve_control_token(&config)?;
    let webhook = match (&config.webhook_url, &config.webhook_secret) {
        (Some(url), Some(secret)) => {
            let (hook, _task) = webhook::Webhook::spawn(webhook::WebhookConfig::new(
                url.clone(),
                secret.as_bytes().to_vec(),
            ))?;
            let h = hook.clone();
            job.on_change(move |c| h.push(c));
            Some(hook)
        }
        (Some(_), None) => anyhow::bail!(
            "--webhook-url needs --webhook-secret (or FERRY_WEBHOOK_SECRET): the HMAC key shared with the control plane"
        ),
        _ => None,
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let unauthorized = job_metrics::JobCollector::register(
        &metrics.registry,
        Arc::clone(&job),
        webhook.as_ref().map(|w| Arc::clone(w.stats())),
    )?;
    let pipeline = Arc::new(crate::pipeline::Runner::new(
        crate::pipeline::Settings {
            build: config.build,
            state_dir: config.state_dir.clone(),
        },
        Arc::clone(&ledger),
        Arc::clone(&job),
    ));
    let data_admission = admission::Admission::new(
        config.max_unauthenticated,
        config.max_unauthenticated_per_address,
        metrics.register_counter(
            "ferry_data_connections_evicted_total",
            "Unauthenticated data connections cut to make room for newer ones",
        )?,
    );
    Ok(Appliance {
        data_admission,
        pipeline,
        config,
        token,
        ledger,
        metrics,
        job,
        control_token,
        unauthorized,
        webhook,
        fingerprint: tls.fingerprint,
        tls: tls.config,
        auth: auth_limit::AuthLimiter::default(),
        busy: Mutex::new(HashSet::new()),
        data_bound: AtomicBool::new(false),
    })
}

fn resolve_token(config: &Config) -> Result<String> {
    if let Some(t) = &config.token {
        anyhow::ensure!(
            t.len() >= 16,
            "the job token must be at least 16 characters long"
        );
        return Ok(t.clone());
    }
    let path = config.state_dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    anyhow::ensure!(
        config.embedded(),
        "no job token: pass --token, set FERRY_TOKEN, or put `token = \"...\"` in the config"
    );
    let t = hex::encode(rand::random::<[u8; 24]>());
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "{t}").with_context(|| format!("writing {}", path.display()))?;
        f.sync_all()
            .with_context(|| format!("flushing {}", path.display()))?;
    }
    println!("token: {t} (generated, kept in {})", path.display());
    Ok(t)
}

/// After a restart, show each disk's progress as the ledger has it.
fn restore_job_progress(job: &JobHandle, ledger: &Ledger) -> Result<()> {
    let mut committed = Vec::new();
    for (index, rec) in ledger.disks().context("reading the ledger's disks")? {
        let hashes = ledger
            .chunk_hashes(index, rec.chunks())
            .with_context(|| format!("reading the ledger's chunks of disk {index}"))?;
        let bytes: u64 = hashes
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_some())
            .map(|(i, _)| crate::disk::chunk_len(rec.size, rec.chunk_size, i as u64) as u64)
            .sum();
        committed.push((index, bytes));
    }
    job.restore_progress(&committed)
}

/// The control token: given, kept from an earlier start, or (embedded mode)
/// generated; None in production mode without one, which locks /v1/job.
fn resolve_control_token(config: &Config) -> Result<Option<String>> {
    if let Some(t) = &config.control_token {
        anyhow::ensure!(
            t.len() >= 16,
            "the control token must be at least 16 characters long"
        );
        return Ok(Some(t.clone()));
    }
    let path = config.state_dir.join("control-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok(Some(t));
        }
    }
    if !config.embedded() {
        tracing::warn!("no control token (--control-token, FERRY_CONTROL_TOKEN, control_token): /v1/job refuses every request");
        return Ok(None);
    }
    let t = hex::encode(rand::random::<[u8; 24]>());
    write_secret(&path, &t)?;
    println!("control-token: kept in {}", path.display());
    Ok(Some(t))
}

fn write_secret(path: &std::path::Path, value: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{value}").with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("flushing {}", path.display()))
}

async fn run(config: Config) -> Result<()> {
    let app = tokio::task::spawn_blocking(move || prepare(config))
        .await
        .context("preparing the appliance")??;
    let app = Arc::new(app);
    if matches!(
        app.job.status(),
        crate::job::state::Status::PROCESSING | crate::job::state::Status::CLEANING
    ) {
        // Died in the round's pipeline: every step is idempotent, run it again.
        tracing::info!("the job was in its pipeline when the appliance stopped: running it again");
        app.pipeline.start();
    }
    let data = TcpListener::bind(&app.config.data_listen)
        .await
        .with_context(|| format!("binding the data port {}", app.config.data_listen))?;
    let control = TcpListener::bind(&app.config.control_listen)
        .await
        .with_context(|| format!("binding the control port {}", app.config.control_listen))?;
    let data_addr = data
        .local_addr()
        .context("reading the data port's address")?;
    let control_addr = control
        .local_addr()
        .context("reading the control port's address")?;
    app.data_bound.store(true, Ordering::SeqCst);
    println!("fingerprint: {}", app.fingerprint);
    println!("data-listen: {data_addr}");
    println!("control-listen: {control_addr}");
    println!(
        "mode: {}",
        if app.config.embedded() {
            format!(
                "embedded (target disks under {})",
                app.config.state_dir.join("disks").display()
            )
        } else {
            format!("{} configured target disk(s)", app.config.disks.len())
        }
    );
    tracing::info!(%data_addr, %control_addr, fingerprint = %app.fingerprint, job = %app.job.snapshot().id, status = %app.job.status(), "ferry serve is ready");
    if let Err(err) = notify::ready(&format!(
        "job {}: data port {data_addr}, control port {control_addr}",
        app.job.status()
    )) {
        tracing::warn!("{err:#}");
    }
    let _watchdog = notify::spawn_watchdog();
    {
        // Expiry is checked on every read too; this makes it happen (and its
        // webhook go out) when nobody is looking.
        let job = Arc::clone(&app.job);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let job = Arc::clone(&job);
                if let Ok(Err(err)) = tokio::task::spawn_blocking(move || job.tick()).await {
                    tracing::warn!("checking the job's validity: {err:#}");
                }
            }
        });
    }

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        });
    }
    let control_task = tokio::spawn(control::serve(Arc::clone(&app), control, shutdown.clone()));
    session::serve(
        Arc::clone(&app),
        data,
        tokio_rustls::TlsAcceptor::from(Arc::clone(&app.tls)),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = notify::stopping();
    let _ = control_task.await;
    if let Some(w) = &app.webhook {
        w.close();
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
