//! `ferry send --probe`: the FAQ's "test the data transfer rate". Measures
//! throughput to the appliance over the real data path (TLS, the same
//! framing, authenticated) for a few seconds, writing nothing to any disk,
//! and estimates the time a first full round of the given disks would take.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde::Serialize;

use super::client::{self, Conn};
use super::disk::DiskJob;
use super::lanes::DEFAULT_WINDOW;
use super::progress::{bytes as human_bytes, eta};
use super::report::write_json;
use super::SendOptions;
use crate::wire::Frame;

/// Payload of one probe frame: fits the smallest post-authentication frame
/// bound, random so that no compression on the way can flatter the rate.
pub(crate) const PROBE_PAYLOAD: usize = 256 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Bytes the appliance confirmed it received.
    pub bytes: u64,
    pub seconds: f64,
    /// Bytes per second.
    pub rate_bps: f64,
    pub disks: Vec<ProbeDisk>,
    /// Seconds to send every disk whole at this rate.
    pub eta_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeDisk {
    pub index: u32,
    pub source: String,
    pub size: u64,
    pub eta_secs: u64,
}

/// `--probe`: measure the rate to the appliance instead of sending, and
/// print (and write to `--report`) what it means for these disks.
pub(crate) async fn run(
    args: &SendOptions,
    to: &str,
    fingerprint: &str,
    jobs: &[DiskJob],
) -> Result<()> {
    let mut conn = client::connect(to, &args.token, fingerprint).await?;
    let (bytes, seconds) = measure(
        &mut conn,
        Duration::from_secs(args.probe_seconds.max(1)),
        args.window.unwrap_or(DEFAULT_WINDOW),
    )
    .await
    .context("measuring the transfer rate")?;
    let _ = tokio::io::AsyncWriteExt::shutdown(conn.get_mut()).await;
    let disks: Vec<(u32, String, u64)> = jobs
        .iter()
        .map(|j| (j.index, j.report.source.clone(), j.report.size))
        .collect();
    let probed = report(bytes, seconds, &disks);
    print!("{}", render(&probed));
    if let Some(path) = &args.report {
        write_json(path, &probed, "the probe report")?;
    }
    Ok(())
}

/// Send probe frames for `duration`, keeping at most `window` bytes
/// unacknowledged, and measure what the appliance acknowledges.
pub async fn measure(conn: &mut Conn, duration: Duration, window: u64) -> Result<(u64, f64)> {
    let mut payload = vec![0u8; PROBE_PAYLOAD];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut payload);
    let payload = Bytes::from(payload);
    let window = window.max(PROBE_PAYLOAD as u64);
    let started = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut last_ack = started;
    loop {
        let sending = started.elapsed() < duration;
        if sending && sent - acked < window {
            client::send(
                conn,
                Frame::Probe {
                    payload: payload.clone(),
                },
            )
            .await?;
            sent += PROBE_PAYLOAD as u64;
            continue;
        }
        if !sending && acked >= sent {
            break;
        }
        match client::recv(conn).await? {
            Frame::ProbeAck { bytes } => {
                acked = bytes;
                last_ack = Instant::now();
            }
            other => return Err(crate::wire::unexpected("ProbeAck", &other)),
        }
    }
    let seconds = last_ack.duration_since(started).as_secs_f64();
    Ok((acked, seconds))
}

/// The report for `disks` (index, source, size) at the measured rate.
pub fn report(bytes: u64, seconds: f64, disks: &[(u32, String, u64)]) -> ProbeReport {
    let rate_bps = if seconds > 0.0 {
        bytes as f64 / seconds
    } else {
        0.0
    };
    let eta_of = |size: u64| {
        if rate_bps > 0.0 {
            (size as f64 / rate_bps).ceil() as u64
        } else {
            u64::MAX
        }
    };
    let disks: Vec<ProbeDisk> = disks
        .iter()
        .map(|(index, source, size)| ProbeDisk {
            index: *index,
            source: source.clone(),
            size: *size,
            eta_secs: eta_of(*size),
        })
        .collect();
    // The disks go one after the other over one connection.
    let eta_secs = eta_of(disks.iter().map(|d| d.size).sum());
    ProbeReport {
        bytes,
        seconds,
        rate_bps,
        disks,
        eta_secs,
    }
}

/// The lines `ferry send --probe` prints.
pub(crate) fn render(r: &ProbeReport) -> String {
    let mut out = format!(
        "probe: {:.1} MB/s ({} acknowledged by the appliance in {:.1} s; nothing was written to any disk)\n",
        r.rate_bps / 1e6,
        human_bytes(r.bytes),
        r.seconds
    );
    for d in &r.disks {
        out.push_str(&format!(
            "disk {} ({}): {}, about {} at this rate\n",
            d.index,
            d.source,
            human_bytes(d.size),
            eta(d.eta_secs)
        ));
    }
    out.push_str(&format!(
        "all disks: about {} for a first full round (chunks of zeros are skipped, so usually less; incremental rounds send only changes)\n",
        eta(r.eta_secs)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_and_rendering() {
        let r = report(
            500_000_000,
            5.0,
            &[
                (0, "/dev/sda".into(), 10_000_000_000),
                (1, "/dev/sdb".into(), 1_000_000_000),
            ],
        );
        assert_eq!(r.rate_bps, 100_000_000.0);
        assert_eq!(
            (r.disks[0].eta_secs, r.disks[1].eta_secs, r.eta_secs),
            (100, 10, 110)
        );
        assert_eq!(
            render(&r),
            "probe: 100.0 MB/s (476.8 MiB acknowledged by the appliance in 5.0 s; nothing was written to any disk)\n\
             disk 0 (/dev/sda): 9.3 GiB, about 1m 40s at this rate\n\
             disk 1 (/dev/sdb): 953.7 MiB, about 10s at this rate\n\
             all disks: about 1m 50s for a first full round (chunks of zeros are skipped, so usually less; incremental rounds send only changes)\n"
        );
    }
}
