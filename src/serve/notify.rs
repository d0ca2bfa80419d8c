//! Telling systemd that the appliance is ready, and pinging its watchdog.
//!
//! Both are no-ops unless systemd set `NOTIFY_SOCKET` (a `Type=notify`
//! unit) and `WATCHDOG_USEC`/`WATCHDOG_PID` (`WatchdogSec=`).

use std::time::Duration;

use anyhow::{Context, Result};
use sd_notify::NotifyState;

/// Send READY=1 with a status line. Call once everything `/readyz` checks
/// is in place, so that `systemctl start` returns only then.
pub fn ready(status: &str) -> Result<()> {
    sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)])
        .context("notifying systemd that ferry is ready")
}

/// Send a new status line (shown by `systemctl status`).
pub fn status(status: &str) -> Result<()> {
    sd_notify::notify(false, &[NotifyState::Status(status)])
        .context("sending the status to systemd")
}

/// Send STOPPING=1 at the start of a graceful shutdown.
pub(crate) fn stopping() -> Result<()> {
    sd_notify::notify(false, &[NotifyState::Stopping])
        .context("notifying systemd that ferry is stopping")
}

/// The watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Ping the watchdog at half its interval from a task on the runtime: if
/// the runtime stalls, the pings stop and systemd restarts the service.
/// Returns None when no watchdog is configured.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = watchdog_interval()?;
    let period = (interval / 2).max(Duration::from_millis(10));
    tracing::info!(?interval, "pinging the systemd watchdog every {period:?}");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = sd_notify::notify(false, &[NotifyState::Watchdog]) {
                tracing::warn!("pinging the systemd watchdog: {err}");
            }
        }
    }))
}
