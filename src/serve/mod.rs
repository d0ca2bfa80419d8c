//! `ferry serve`: the appliance.
//!
//! Two listeners: the data port (8703, TLS only) where senders write disks,
//! and the control port (8080, HTTP) with health, metrics and the job API.

pub mod auth_limit;
pub mod control;
pub mod metrics;
pub mod session;
pub mod tls;
pub mod writer;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::job::ledger::Ledger;

/// Arguments of `ferry serve`. Every option overrides the config file.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --config (or with a config that maps no [[disk]]), ferry runs in its \
embedded mode: target disks are sparse files <state-dir>/disks/disk-<N>.img sized to what the sender \
announces, a job token is generated and printed, and the TLS fingerprint the sender must pin is printed \
and kept in <state-dir>/tls/fingerprint.\n\nExample:\n  ferry serve --state-dir /var/lib/ferry\n  \
ferry send --to appliance:8703 --token $(cat /var/lib/ferry/token) \\\n      --fingerprint $(cat /var/lib/ferry/tls/fingerprint) --disk /dev/sda"
)]
pub struct ServeArgs {
    /// Config file (TOML); every key has a default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data port address [config: data_listen, default 0.0.0.0:8703].
    #[arg(long, value_name = "ADDR")]
    pub data_listen: Option<String>,
    /// Control port address [config: control_listen, default 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub control_listen: Option<String>,
    /// State directory: ledger, TLS identity, token, embedded disks [default ./ferry-state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Job token senders must prove they hold [env FERRY_TOKEN, config: token; generated in embedded mode].
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

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

pub fn run_blocking(args: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(args))
}

/// Resolve config, state directory, token and TLS identity.
pub fn prepare(args: &ServeArgs) -> Result<Appliance> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = &args.data_listen {
        config.data_listen = v.clone();
    }
    if let Some(v) = &args.control_listen {
        config.control_listen = v.clone();
    }
    if let Some(v) = &args.state_dir {
        config.state_dir = v.clone();
    }
    if let Some(v) = &args.token {
        config.token = Some(v.clone());
    }
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    let token = resolve_token(&config)?;
    let ledger = Arc::new(Ledger::open(&config.ledger_path())?);
    let tls = tls::load_or_create(&config.state_dir.join("tls"))?;
    Ok(Appliance {
        config,
        token,
        ledger,
        metrics: Arc::new(metrics::Metrics::new()),
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

async fn run(args: ServeArgs) -> Result<()> {
    let app = tokio::task::spawn_blocking(move || prepare(&args))
        .await
        .context("preparing the appliance")??;
    let app = Arc::new(app);
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
    tracing::info!(%data_addr, %control_addr, fingerprint = %app.fingerprint, "ferry serve is ready");

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
    let _ = control_task.await;
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
