//! `ferry serve`: the appliance.
//!
//! Two listeners: the data port (8703, TLS only) where senders write disks,
//! and the control port (8080, HTTP) with health, metrics and the job API.

pub mod admission;
pub mod auth_limit;
pub mod claims;
pub mod control;
pub mod data;
pub mod job_metrics;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod records;
pub mod reset;
pub mod streams;
pub mod webhook;
pub mod writer;

/// The control API keeps its path (`ferry::serve::api`) for those who
/// serve it alone.
pub use control::api;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::job::errors::{Code, ErrorCode};
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
    pub claims: Arc<claims::Claims>,
    /// Disks open for the data streams of their senders.
    pub streams: Arc<streams::Streams>,
    /// Held while a session ends the round and starts its pipeline, so that
    /// another session of the sender ending at the same moment finds the
    /// pipeline it started.
    pub round_end: tokio::sync::Mutex<()>,
    pub data_bound: AtomicBool,
    /// The job: its state, progress and last error (persisted in the ledger).
    pub job: Arc<JobHandle>,
    /// Given, kept from an earlier start, or generated: never None once
    /// prepared.
    pub control_token: Option<String>,
    /// Control requests refused for a missing or wrong control token.
    pub unauthorized: prometheus::IntCounter,
    pub webhook: Option<webhook::Webhook>,
    /// The data port's budget of connections not yet authenticated.
    pub data_admission: Arc<admission::Admission>,
    /// The round's pipeline (grow, repair, verify, handoff), when one runs.
    pub pipeline: Arc<crate::pipeline::Runner>,
    /// Disk records of the ledger refused at start, with the reason: the
    /// appliance serves, but is not ready until they are dealt with.
    pub refused_records: Vec<String>,
    /// The sender's release served on the control port, when there is one.
    pub sender: Option<Arc<control::sender::SenderFiles>>,
    /// File mode's progress in the current round.
    pub files_progress: Arc<data::tree::progress::FilesProgress>,
    /// This appliance's hold on the state directory.
    _lock: lock::StateLock,
}

pub(crate) fn run_blocking(config: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(config))
}

/// Open the state directory of `config` (creating it, mode 0700), take its
/// lock (or keep `lock`, taken before the ports were bound), and resolve the
/// token, the TLS identity and the job.
pub fn prepare(config: Config, lock: Option<lock::StateLock>) -> Result<Appliance> {
    // Everything the configuration names is checked before anything is
    // written to the state directory.
    let validity = Validity::days(config.validity_days)?;
    let sender = load_sender(&config)?;
    check_webhook(&config)?;
    let pipeline_settings = pipeline_settings(&config)?;
    crate::disk::private_dir(&config.state_dir)
        .with_context(|| format!("preparing state directory {}", config.state_dir.display()))?;
    let lock = match lock {
        Some(mut lock) => {
            lock.write_pid()?;
            lock
        }
        None => lock::StateLock::take(&config.state_dir)?,
    };
    let token = resolve_token(&config)?;
    let ledger_path = config.ledger_path();
    let ledger_existed = ledger_path.exists();
    let ledger = Arc::new(Ledger::open(&ledger_path)?);
    let tls = crate::wire::tls::load_or_create(&config.state_dir.join("tls"))?;
    if tls.created && ledger_existed {
        warn_new_identity(&config, &tls.fingerprint);
    }
    let job = JobHandle::open(
        Arc::clone(&ledger) as Arc<dyn JobStore>,
        Arc::new(SystemClock),
        JobSettings {
            incremental: config.incremental,
            validity,
        },
    )?;
    job.keep_events(crate::job::events::EventLog::open(
        &config.state_dir.join(EVENTS_FILE),
    )?);
    job.set_stall_after(std::time::Duration::from_secs(config.stall_after_secs));
    let refused_records = restore_job_progress(&config, &job, &ledger)?;
    let control_token = resolve_control_token(&config)?;
    let webhook = start_webhook(&config, &job)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let unauthorized = job_metrics::JobCollector::register(
        &metrics.registry,
        Arc::clone(&job),
        webhook.as_ref().map(|w| Arc::clone(w.stats())),
    )?;
    let pipeline = Arc::new(crate::pipeline::Runner::new(
        pipeline_settings,
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
        claims: Arc::default(),
        streams: Arc::default(),
        round_end: tokio::sync::Mutex::new(()),
        files_progress: Arc::default(),
        sender,
        data_bound: AtomicBool::new(false),
        refused_records,
        _lock: lock,
    })
}

/// The job's events, kept for `GET /v1/job/events`.
pub const EVENTS_FILE: &str = "events.jsonl";

/// The control plane's webhook, told of every change of the job, when
/// one is configured (its URL needs the shared secret).
fn start_webhook(config: &Config, job: &Arc<JobHandle>) -> Result<Option<webhook::Webhook>> {
    Ok(match (&config.webhook_url, &config.webhook_secret) {
        (Some(url), Some(secret)) => {
            let (hook, _task) = webhook::Webhook::spawn(webhook::WebhookConfig::new(
                url.clone(),
                secret.as_bytes().to_vec(),
            ))?;
            let h = hook.clone();
            job.on_event(move |e| h.push(e));
            Some(hook)
        }
        _ => None,
    })
}

/// The webhook's URL and its secret, checked before anything is written.
fn check_webhook(config: &Config) -> Result<()> {
    match (&config.webhook_url, &config.webhook_secret) {
        (Some(url), Some(_)) => webhook::parse_url(url).map(|_| ()),
        (Some(_), None) => anyhow::bail!(
            "--webhook-url needs a webhook secret (--webhook-secret-file, FERRY_WEBHOOK_SECRET or webhook_secret in the config): the HMAC key shared with the control plane"
        ),
        _ => Ok(()),
    }
}

/// How the round's pipeline runs, from the configuration (the network
/// map, when one is configured, read now: a damaged one stops the start).
fn pipeline_settings(config: &Config) -> Result<crate::pipeline::PipelineSettings> {
    Ok(crate::pipeline::PipelineSettings {
        build: config.build,
        boot_test: crate::pipeline::boot::BootTestSettings {
            enabled: config.boot_test,
            timeout: std::time::Duration::from_secs(config.boot_test_timeout_secs),
            memory_mib: config.boot_test_memory_mib,
            cpus: config.boot_test_cpus,
            // Config::parse admits only the names from_name knows.
            accel: crate::pipeline::boot::AccelChoice::from_name(&config.boot_test_accel)
                .unwrap_or_default(),
        },
        repair: crate::pipeline::RepairChoices {
            recipes_dir: config.recipes_dir.clone(),
            network: match &config.network_map {
                Some(p) => crate::repair::network::map::NetworkMap::load(p)?,
                None => Default::default(),
            },
            hooks: match &config.hooks {
                Some(_) if !config.build => {
                    return Err(crate::job::errors::coded(
                        crate::job::errors::ErrorCode::HookInvalid,
                        "hooks are given, and this appliance does not build the OS (build = false, --no-build): no repair runs, so no hook would; remove hooks or build",
                    ))
                }
                Some(p) => crate::repair::hooks::Hooks::load(p)?,
                None => Default::default(),
            },
        },
        state_dir: config.state_dir.clone(),
    })
}

/// The data port's TLS identity was made anew beside an existing ledger:
/// the senders that pinned the old one are refused until told the new.
fn warn_new_identity(config: &Config, fingerprint: &str) {
    tracing::warn!(
        fingerprint = %fingerprint,
        "the data port's TLS identity was missing from {} and has been generated anew: senders \
         that pinned the old fingerprint are refused (TLS_FINGERPRINT_MISMATCH); give them the new \
         one (--fingerprint {}, kept in {}, also GET /v1/identity)",
        config.state_dir.join("tls").display(),
        fingerprint,
        config.state_dir.join("tls/fingerprint").display(),
    );
}

/// The sender's release of `sender_dir` (which must hold one), or of the
/// baked image's directory where it exists; read before anything is
/// written, so a damaged release stops the start with nothing changed.
fn load_sender(config: &Config) -> Result<Option<Arc<control::sender::SenderFiles>>> {
    let (dir, required) = match &config.sender_dir {
        Some(dir) => (dir.clone(), true),
        None => (
            std::path::PathBuf::from(control::sender::DEFAULT_DIR),
            false,
        ),
    };
    let files = control::sender::SenderFiles::load(&dir, required)
        .with_context(|| format!("loading the sender's release from {}", dir.display()))?;
    if let Some(f) = &files {
        tracing::info!(file = %f.release.file, sha256 = %f.release.sha256, "serving the sender's release");
    }
    Ok(files.map(Arc::new))
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
    write_secret(&path, &t)?;
    // On a terminal, for the person who started it; never into a log (the
    // journal, a file, a pipe), which others may read.
    if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        println!("token: {t} (generated, kept in {})", path.display());
    } else {
        println!("token: generated, kept in {}", path.display());
    }
    Ok(t)
}

/// After a restart, show each disk's progress as the ledger has it, after
/// checking each disk record ([`records::check`]). A record refused is
/// logged and returned, and a job that was running with it goes InError
/// (LEDGER_FAILED): the appliance starts anyway, never to crash-loop on it.
fn restore_job_progress(config: &Config, job: &JobHandle, ledger: &Ledger) -> Result<Vec<String>> {
    let mut committed = Vec::new();
    let mut refused = Vec::new();
    let disks = ledger
        .disks()
        .with_context(|| {
            format!(
                "reading the disks of the ledger {}",
                config.ledger_path().display()
            )
        })
        .code(ErrorCode::LedgerFailed)?;
    for (index, rec) in disks {
        if let Err(why) = records::check(config, index, &rec) {
            refused.push(refused_record(config, index, &why));
            continue;
        }
        let bytes = ledger
            .committed_bytes(index, &rec)
            .with_context(|| format!("reading the ledger's chunks of disk {index}"))
            .code(ErrorCode::LedgerFailed)?;
        committed.push((index, bytes));
    }
    job.restore_progress(&committed)?;
    for reason in &refused {
        tracing::error!("{reason}");
    }
    if let Some(first) = refused.first() {
        if job.status().state() == crate::job::state::JobState::Running {
            job.fail(ErrorCode::LedgerFailed, first.clone())
                .context("recording the refused disk record in the job")?;
        }
    }
    Ok(refused)
}

/// What to say of a refused record: which, why, and what to do.
pub(crate) fn refused_record(config: &Config, index: u32, why: &str) -> String {
    format!(
        "the ledger's record of disk {index} is refused: {why}; move the ledger {} aside to start \
         the job over (the token and certificate are kept)",
        config.ledger_path().display()
    )
}

/// The control token: given, kept from an earlier start, or generated and
/// kept in the state directory.
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
    // Never a /v1/job that refuses everyone: without a configured token, one
    // is made and kept, and whoever may read the state directory may use it.
    let t = hex::encode(rand::random::<[u8; 24]>());
    write_secret(&path, &t)?;
    if !config.embedded() {
        tracing::warn!(
            "no control token was configured (--control-token-file, FERRY_CONTROL_TOKEN, control_token): \
             generated one, kept in {}",
            path.display()
        );
    }
    println!("control-token: generated, kept in {}", path.display());
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
    crate::disk::set_mode(&f, path, 0o600)?;
    writeln!(f, "{value}").with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("flushing {}", path.display()))
}

async fn run(config: Config) -> Result<()> {
    // Nothing is written to the state directory before both ports are
    // bound: an appliance that cannot serve leaves no state behind. A lock
    // file that exists already is taken first (taking it writes nothing),
    // so that a second appliance on the same state directory is told so
    // rather than that its ports are taken.
    let lock = lock::StateLock::take_existing(&config.state_dir)?;
    let data = bind(&config.data_listen, "data", "data_listen").await?;
    let control = bind(&config.control_listen, "control", "control_listen").await?;
    // What the appliance tells of itself (GET /v1/identity) is the port it
    // bound, also when the config asked for any (`:0`).
    let mut config = config;
    if let Ok(addr) = data.local_addr() {
        config.data_listen = addr.to_string();
    }
    let app = tokio::task::spawn_blocking(move || prepare(config, lock))
        .await
        .context("preparing the appliance")??;
    let app = Arc::new(app);
    resume(&app).await?;
    let data_addr = data
        .local_addr()
        .context("reading the data port's address")?;
    let control_addr = control
        .local_addr()
        .context("reading the control port's address")?;
    app.data_bound.store(true, Ordering::SeqCst);
    let (serving, problems) = announce(&app, data_addr, control_addr).await;
    spawn_readiness_watch(Arc::clone(&app), serving, problems);
    let _watchdog = notify::spawn_watchdog();
    spawn_expiry_watch(Arc::clone(&app.job));
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
    data::serve(
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

/// A job the appliance stopped in the middle of goes on: a deletion is
/// finished, a round's pipeline runs again (every step is idempotent).
async fn resume(app: &Arc<Appliance>) -> Result<()> {
    if app.job.status() == crate::job::state::JobStatus::Deleting {
        // Stopped while it was being deleted: finish the deletion.
        let app2 = Arc::clone(app);
        tokio::task::spawn_blocking(move || reset::Resets::finish_delete(&app2))
            .await
            .context("finishing the job's deletion")?
            .context("finishing the job's deletion")?;
    }
    if matches!(
        app.job.status(),
        crate::job::state::JobStatus::PROCESSING | crate::job::state::JobStatus::CLEANING
    ) {
        // Died in the round's pipeline: every step is idempotent, run it again.
        tracing::info!("the job was in its pipeline when the appliance stopped: running it again");
        app.pipeline.start();
    }
    Ok(())
}

/// Tell whoever started the appliance where it listens and in which mode,
/// and the service manager whether it is ready (and why not). Returns
/// what it serves and what keeps it from being ready.
async fn announce(
    app: &Arc<Appliance>,
    data_addr: std::net::SocketAddr,
    control_addr: std::net::SocketAddr,
) -> (String, Vec<String>) {
    println!("fingerprint: {}", app.fingerprint);
    println!("data-listen: {data_addr}");
    println!("control-listen: {control_addr}");
    // For whoever started it on a terminal, never into a log: the command
    // that sends to it, token included, ready to paste on the source.
    if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        println!(
            "send from the source server (as root; --disk once per disk, the system disk first):\n  {}",
            sender_command(data_addr, &app.fingerprint, &app.token)
        );
    }
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
    let serving = format!("data port {data_addr}, control port {control_addr}");
    let problems = start_problems(app).await;
    for p in &problems {
        tracing::warn!("not ready: {p}");
    }
    if problems.is_empty() {
        tracing::info!(%data_addr, %control_addr, fingerprint = %app.fingerprint, job = %app.job.snapshot().id, status = %app.job.status(), "ferry serve is ready");
    } else {
        tracing::warn!(%data_addr, %control_addr, fingerprint = %app.fingerprint, job = %app.job.snapshot().id, status = %app.job.status(), "ferry serve is serving, but not ready (GET /readyz says why)");
    }
    // READY=1 either way: the appliance is up and /readyz tells the truth;
    // STATUS= says why it is not ready, for `systemctl status`.
    if let Err(err) = notify::ready(&status_line(app, &serving, &problems)) {
        tracing::warn!("{err:#}");
    }
    (serving, problems)
}

/// The sender's command line for this appliance: its data port (a port
/// bound on every address is named by a placeholder for the address the
/// source reaches it at), its fingerprint, the token in the environment
/// (not in the source's process list).
fn sender_command(data: std::net::SocketAddr, fingerprint: &str, token: &str) -> String {
    let to = if data.ip().is_unspecified() {
        format!("APPLIANCE-ADDRESS:{}", data.port())
    } else {
        data.to_string()
    };
    format!("FERRY_TOKEN={token} ferry send --to {to} --fingerprint {fingerprint} --disk /dev/sda")
}

/// Expiry is checked on every read of the job too; this makes it happen
/// (and its webhook go out) when nobody is looking. A stall is looked for
/// every few seconds, so that its event goes out too.
fn spawn_expiry_watch(job: Arc<JobHandle>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            let job = Arc::clone(&job);
            let expiry = n.is_multiple_of(12);
            n += 1;
            let looked = tokio::task::spawn_blocking(move || {
                job.check_stall();
                if expiry {
                    job.tick().map(|_| ())
                } else {
                    Ok(())
                }
            })
            .await;
            if let Ok(Err(err)) = looked {
                tracing::warn!("checking the job's validity: {err:#}");
            }
        }
    });
}

/// Bind one of the two ports; a port that is taken is named, with what to do.
async fn bind(addr: &str, which: &str, key: &str) -> Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let port = addr.rsplit_once(':').map_or(addr, |(_, p)| p);
            Err(anyhow::anyhow!(
                "port {port} is in use by another process; stop it or set {key} (--{})",
                key.replace('_', "-")
            ))
            .with_context(|| format!("binding the {which} port {addr}"))
        }
        Err(e) => Err(e).with_context(|| format!("binding the {which} port {addr}")),
    }
}

/// Why the appliance is not ready, besides what only a request can see:
/// one reason per target that cannot be written, and per refused record.
async fn start_problems(app: &Arc<Appliance>) -> Vec<String> {
    let checker = Arc::clone(app);
    let mut problems =
        tokio::task::spawn_blocking(move || control::targets_writable(&checker.config))
            .await
            .unwrap_or_else(|e| vec![format!("checking the targets failed: {e}")]);
    problems.extend(app.refused_records.iter().cloned());
    problems
}

fn status_line(app: &Appliance, serving: &str, problems: &[String]) -> String {
    if problems.is_empty() {
        format!("job {}: {serving}", app.job.status())
    } else {
        format!(
            "not ready: {} (job {}: {serving})",
            problems.join("; "),
            app.job.status()
        )
    }
}

/// Until every target can be written, look again every few seconds and
/// tell systemd's STATUS= (and the log) when that changes: a disk attached
/// after the start makes the appliance ready without a restart.
fn spawn_readiness_watch(app: Arc<Appliance>, serving: String, mut problems: Vec<String>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.tick().await;
        while !problems.is_empty() {
            tick.tick().await;
            let now = start_problems(&app).await;
            if now == problems {
                continue;
            }
            if now.is_empty() {
                tracing::info!("every target can be written now: ferry serve is ready");
            } else {
                for p in now.iter().filter(|p| !problems.contains(p)) {
                    tracing::warn!("not ready: {p}");
                }
            }
            if let Err(err) = notify::status(&status_line(&app, &serving, &now)) {
                tracing::warn!("{err:#}");
            }
            problems = now;
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_command_names_the_port_the_source_reaches() {
        let fp = "ab12";
        assert_eq!(
            sender_command("0.0.0.0:8703".parse().unwrap(), fp, "t0k"),
            "FERRY_TOKEN=t0k ferry send --to APPLIANCE-ADDRESS:8703 --fingerprint ab12 --disk /dev/sda"
        );
        assert_eq!(
            sender_command("[::]:9000".parse().unwrap(), fp, "t0k"),
            "FERRY_TOKEN=t0k ferry send --to APPLIANCE-ADDRESS:9000 --fingerprint ab12 --disk /dev/sda"
        );
        assert_eq!(
            sender_command("10.0.0.5:8703".parse().unwrap(), fp, "t0k"),
            "FERRY_TOKEN=t0k ferry send --to 10.0.0.5:8703 --fingerprint ab12 --disk /dev/sda"
        );
    }
}
