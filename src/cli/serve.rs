//! `ferry serve`: its options, each of which overrides the config file.

use std::path::PathBuf;

use anyhow::Result;

use crate::config::Config;

/// Arguments of `ferry serve`. Every option overrides the config file.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --config (or with a config that maps no [[disk]]), ferry runs in its \
embedded mode: target disks are sparse files <state-dir>/disks/disk-<N>.img sized to what the sender \
announces, and a job token is generated into <state-dir>/token (printed only on a terminal). The TLS \
fingerprint the sender must pin is printed and kept in <state-dir>/tls/fingerprint.\n\nAt start, both \
ports are bound before anything is written to the state directory; a second `ferry serve` on the same \
state directory is refused, naming the first one's PID. A configured target that does not exist leaves \
the appliance running but not ready (GET /readyz says why, and so does systemd's STATUS=) until it \
appears.\n\nExample:\n  ferry serve --state-dir /var/lib/ferry\n  \
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
    /// Bearer token of the control API's /v1/job [env FERRY_CONTROL_TOKEN, config: control_token;
    /// without one, generated into <state-dir>/control-token].
    #[arg(long, env = "FERRY_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,
    /// Incremental job: Waiting after each round instead of Finished [config: incremental].
    #[arg(long)]
    pub incremental: bool,
    /// Only replicate the disks: no Processing stage (grow, repair, verify)
    /// after a round, for a migration of data disks [config: build = false].
    #[arg(long)]
    pub no_build: bool,
    /// Do not boot the repaired disks under QEMU before the handoff
    /// [config: boot_test = false]. By default a job that builds boots its
    /// disks through copy-on-write overlays (nothing is written to them) and
    /// hands off only a system that reached its login prompt and asked for
    /// an address by DHCP.
    #[arg(long)]
    pub no_boot_test: bool,
    /// Repair recipes from this directory instead of the built-in ones
    /// [config: recipes_dir].
    #[arg(long, value_name = "DIR")]
    pub recipes: Option<PathBuf>,
    /// Validity of a new job, 7 to 90 days [config: validity_days, default 30].
    #[arg(long, value_name = "DAYS")]
    pub validity_days: Option<u32>,
    /// POST every job state change to this URL [config: webhook_url].
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of the webhook's signature [env FERRY_WEBHOOK_SECRET, config: webhook_secret].
    #[arg(long, env = "FERRY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

impl ServeArgs {
    /// The config file (or the embedded defaults) with these options applied.
    pub fn config(&self) -> Result<Config> {
        let args = self;
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
        if let Some(v) = &args.control_token {
            config.control_token = Some(v.clone());
        }
        if args.incremental {
            config.incremental = true;
        }
        if args.no_build {
            config.build = false;
        }
        if args.no_boot_test {
            config.boot_test = false;
        }
        if let Some(v) = &args.recipes {
            config.recipes_dir = Some(v.clone());
        }
        if let Some(v) = args.validity_days {
            config.validity_days = v;
        }
        if let Some(v) = &args.webhook_url {
            config.webhook_url = Some(v.clone());
        }
        if let Some(v) = &args.webhook_secret {
            config.webhook_secret = Some(v.clone());
        }
        Ok(config)
    }
}
