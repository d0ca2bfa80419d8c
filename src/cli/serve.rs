//! `ferry serve`: its options, each of which overrides the config file.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::job::errors::{coded, Code, ErrorCode};

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
    /// Refused: a secret on the command line is readable by every local
    /// user in /proc/<pid>/cmdline. Use --token-file, FERRY_TOKEN or the
    /// config file's `token`.
    #[arg(long, hide = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the job token senders must prove they hold [env
    /// FERRY_TOKEN, config: token; generated in embedded mode].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Refused, as --token is: use --control-token-file,
    /// FERRY_CONTROL_TOKEN or the config file's `control_token`.
    #[arg(long, hide = true, value_name = "TOKEN")]
    pub control_token: Option<String>,
    /// File holding the bearer token of the control API's /v1/job and
    /// /metrics [env FERRY_CONTROL_TOKEN, config: control_token; without
    /// one, generated into <state-dir>/control-token].
    #[arg(long, value_name = "FILE")]
    pub control_token_file: Option<PathBuf>,
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
    /// The network map the repair follows: per source NIC, DHCP or keep
    /// its static addresses, and which new NIC it becomes (`ferry repair
    /// --help` shows the format) [config: network_map]. Checked at start.
    #[arg(long, value_name = "MAP")]
    pub network_map: Option<PathBuf>,
    /// The operator's hooks: scripts run in the migrated system after the
    /// repair or once at its first boot (`ferry repair --help` shows the
    /// format) [config: hooks]. Checked at start; POST /v1/job/hooks
    /// replaces them.
    #[arg(long, value_name = "FILE")]
    pub hooks: Option<PathBuf>,
    /// Serve the sender's release from this directory at GET
    /// /v1/sender/<file> (its tarball and SHA256SUMS, as scripts/release.sh
    /// writes them) [config: sender_dir; default /usr/lib/ferry/sender
    /// where it exists, the baked image's].
    #[arg(long, value_name = "DIR")]
    pub sender_dir: Option<PathBuf>,
    /// Validity of a new job, 7 to 90 days [config: validity_days, default 30].
    #[arg(long, value_name = "DAYS")]
    pub validity_days: Option<u32>,
    /// POST every job state change to this URL [config: webhook_url].
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Refused, as --token is: use --webhook-secret-file,
    /// FERRY_WEBHOOK_SECRET or the config file's `webhook_secret`.
    #[arg(long, hide = true, value_name = "SECRET")]
    pub webhook_secret: Option<String>,
    /// File holding the HMAC-SHA256 key of the webhook's signature [env
    /// FERRY_WEBHOOK_SECRET, config: webhook_secret].
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
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
        let secrets = [
            (
                &args.token,
                &args.token_file,
                "FERRY_TOKEN",
                "token",
                &mut config.token,
            ),
            (
                &args.control_token,
                &args.control_token_file,
                "FERRY_CONTROL_TOKEN",
                "control-token",
                &mut config.control_token,
            ),
            (
                &args.webhook_secret,
                &args.webhook_secret_file,
                "FERRY_WEBHOOK_SECRET",
                "webhook-secret",
                &mut config.webhook_secret,
            ),
        ];
        for (plain, file, env, option, value) in secrets {
            if let Some(v) = secret(plain.is_some(), file.as_deref(), env, option)? {
                *value = Some(v);
            }
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
        if let Some(v) = &args.network_map {
            config.network_map = Some(v.clone());
        }
        if let Some(v) = &args.hooks {
            config.hooks = Some(v.clone());
        }
        if let Some(v) = &args.sender_dir {
            config.sender_dir = Some(v.clone());
        }
        if let Some(v) = args.validity_days {
            config.validity_days = v;
        }
        if let Some(v) = &args.webhook_url {
            config.webhook_url = Some(v.clone());
        }
        Ok(config)
    }
}

/// A secret of `ferry serve` from its file (`--<option>-file`) or the
/// environment (`env`), in that order; None leaves the config file's.
/// Given as a plain argument (`--<option> VALUE`, `on_command_line`) it is
/// refused: every local user can read a process's command line in
/// `/proc/<pid>/cmdline`, for as long as the appliance runs.
fn secret(
    on_command_line: bool,
    file: Option<&std::path::Path>,
    env: &str,
    option: &str,
) -> Result<Option<String>> {
    let key = option.replace('-', "_");
    if on_command_line {
        return Err(coded(
            ErrorCode::Usage,
            format!(
                "--{option} puts a secret on the command line, which every local user can read in \
                 /proc/<pid>/cmdline: give it with --{option}-file FILE, in the environment as {env}, \
                 or as `{key}` in the config file"
            ),
        ));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --{option}-file {}", path.display()))
            .code(ErrorCode::Usage)?;
        // One line, as `echo secret > file` writes it: its end is not part
        // of the secret.
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(coded(
                ErrorCode::Usage,
                format!("--{option}-file {}: the file is empty", path.display()),
            ));
        }
        return Ok(Some(value.to_owned()));
    }
    Ok(std::env::var(env).ok().filter(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_as_an_argument_is_refused_with_the_alternatives() {
        let err = secret(true, None, "FERRY_CONTROL_TOKEN", "control-token").unwrap_err();
        let coded = crate::job::errors::find_coded(&err).unwrap();
        assert_eq!(coded.code, ErrorCode::Usage);
        assert_eq!(
            coded.detail,
            "--control-token puts a secret on the command line, which every local user can read \
             in /proc/<pid>/cmdline: give it with --control-token-file FILE, in the environment as \
             FERRY_CONTROL_TOKEN, or as `control_token` in the config file"
        );
    }

    #[test]
    fn a_secret_file_is_read_without_its_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("plain", "s3cret-token", Some("s3cret-token")),
            ("newline", "s3cret-token\n", Some("s3cret-token")),
            ("crlf", "s3cret-token\r\n", Some("s3cret-token")),
            ("inner space kept", " s3cret token\n", Some(" s3cret token")),
            ("empty", "\n", None),
        ];
        for (name, text, want) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let got = secret(false, Some(&path), "FERRY_TEST_UNSET_SECRET", "token");
            match want {
                Some(w) => assert_eq!(got.unwrap().as_deref(), Some(w), "{name}"),
                None => assert_eq!(
                    find_coded_code(&got.unwrap_err()),
                    Some(ErrorCode::Usage),
                    "{name}"
                ),
            }
        }
        let missing = secret(false, Some(&dir.path().join("none")), "X", "token").unwrap_err();
        assert_eq!(find_coded_code(&missing), Some(ErrorCode::Usage));
    }

    fn find_coded_code(err: &anyhow::Error) -> Option<ErrorCode> {
        crate::job::errors::find_coded(err).map(|c| c.code)
    }
}
