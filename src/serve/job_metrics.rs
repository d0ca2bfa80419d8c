//! Job metrics for /metrics, read from the job at scrape time so that they
//! can never disagree with GET /v1/job.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::job::handle::JobHandle;
use crate::job::state::JobStatus;
use crate::serve::webhook::WebhookStats;

pub(crate) struct JobCollector {
    job: Arc<JobHandle>,
    webhook: Option<Arc<WebhookStats>>,
    state: IntGaugeVec,
    disk_committed: IntGaugeVec,
    disk_size: IntGaugeVec,
    disk_rate: GaugeVec,
    sync_rate: GaugeVec,
    disk_last_progress: GaugeVec,
    stalled: IntGauge,
    expires: IntGauge,
    descs: Vec<Desc>,
}

const WEBHOOK_EVENTS: &str = "ferry_webhook_events_total";
const WEBHOOK_EVENTS_HELP: &str =
    "Webhook events by outcome: delivered, failed (given up after retries or a 4xx answer), dropped (queue full)";
const WEBHOOK_ATTEMPTS: &str = "ferry_webhook_attempts_total";
const WEBHOOK_ATTEMPTS_HELP: &str = "Webhook requests made, first attempts and retries";

/// The webhook task's counters as counter families: built at each scrape
/// from the task's own atomics, which only grow.
fn webhook_families(w: &WebhookStats) -> Vec<MetricFamily> {
    let build = || -> prometheus::Result<Vec<MetricFamily>> {
        let events =
            IntCounterVec::new(Opts::new(WEBHOOK_EVENTS, WEBHOOK_EVENTS_HELP), &["outcome"])?;
        for (outcome, n) in [
            ("delivered", &w.delivered),
            ("failed", &w.failed),
            ("dropped", &w.dropped),
        ] {
            events
                .with_label_values(&[outcome])
                .inc_by(n.load(Ordering::Relaxed));
        }
        let attempts = IntCounter::new(WEBHOOK_ATTEMPTS, WEBHOOK_ATTEMPTS_HELP)?;
        attempts.inc_by(w.attempts.load(Ordering::Relaxed));
        let mut out = events.collect();
        out.extend(attempts.collect());
        Ok(out)
    };
    build().unwrap_or_else(|e| {
        tracing::warn!("building the webhook metrics: {e}");
        Vec::new()
    })
}

impl JobCollector {
    pub fn new(job: Arc<JobHandle>, webhook: Option<Arc<WebhookStats>>) -> Result<Self> {
        let state = IntGaugeVec::new(
            Opts::new(
                "ferry_job_state",
                "1 for the job's current state and business status, 0 for the others",
            ),
            &["state", "business_status"],
        )?;
        let disk_committed = IntGaugeVec::new(
            Opts::new(
                "ferry_disk_committed_bytes",
                "Bytes of the disk committed in this round",
            ),
            &["disk"],
        )?;
        let disk_size = IntGaugeVec::new(
            Opts::new("ferry_disk_size_bytes", "Size of the source disk"),
            &["disk"],
        )?;
        let disk_rate = GaugeVec::new(
            Opts::new(
                "ferry_disk_sync_rate_bytes_per_second",
                "Smoothed commit rate of the disk",
            ),
            &["disk"],
        )?;
        // A vector without labels so that every family here is built the same way.
        let sync_rate = GaugeVec::new(
            Opts::new(
                "ferry_sync_rate_bytes_per_second",
                "Smoothed commit rate of all disks",
            ),
            &[],
        )?;
        let disk_last_progress = GaugeVec::new(
            Opts::new(
                "ferry_disk_last_progress_timestamp_seconds",
                "When data of the disk last arrived, or a sender opened it (Unix time)",
            ),
            &["disk"],
        )?;
        let stalled = IntGauge::new(
            "ferry_job_stalled",
            "1 while the job is Syncing and has received no data for stall_after_secs",
        )?;
        let expires = IntGauge::new(
            "ferry_job_expires_timestamp_seconds",
            "When the job's validity ends (Unix time)",
        )?;
        let mut descs = Vec::new();
        for c in [
            &state as &dyn Collector,
            &disk_committed,
            &disk_size,
            &disk_rate,
            &sync_rate,
            &disk_last_progress,
            &stalled,
            &expires,
        ] {
            descs.extend(c.desc().into_iter().cloned());
        }
        if webhook.is_some() {
            descs.push(Desc::new(
                WEBHOOK_EVENTS.into(),
                WEBHOOK_EVENTS_HELP.into(),
                vec!["outcome".into()],
                Default::default(),
            )?);
            descs.push(Desc::new(
                WEBHOOK_ATTEMPTS.into(),
                WEBHOOK_ATTEMPTS_HELP.into(),
                Vec::new(),
                Default::default(),
            )?);
        }
        Ok(JobCollector {
            job,
            webhook,
            state,
            disk_committed,
            disk_size,
            disk_rate,
            sync_rate,
            disk_last_progress,
            stalled,
            expires,
            descs,
        })
    }

    /// Register the job's metrics, and the counter of refused control
    /// requests, in `registry`.
    pub(crate) fn register(
        registry: &Registry,
        job: Arc<JobHandle>,
        webhook: Option<Arc<WebhookStats>>,
    ) -> Result<IntCounter> {
        registry
            .register(Box::new(JobCollector::new(job, webhook)?))
            .context("registering the job metrics")?;
        let unauthorized = IntCounter::new(
            "ferry_control_unauthorized_total",
            "Control API requests refused for a missing or wrong control token",
        )?;
        registry
            .register(Box::new(unauthorized.clone()))
            .context("registering ferry_control_unauthorized_total")?;
        Ok(unauthorized)
    }
}

impl Collector for JobCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let record = self.job.snapshot();
        self.state.reset();
        for s in JobStatus::ALL {
            let business = s.business().map(|b| format!("{b:?}")).unwrap_or_default();
            self.state
                .with_label_values(&[format!("{:?}", s.state()).as_str(), business.as_str()])
                .set(i64::from(s == record.status));
        }
        self.disk_committed.reset();
        self.disk_size.reset();
        self.disk_rate.reset();
        self.disk_last_progress.reset();
        for d in &record.disks {
            let disk = d.index.to_string();
            let label = [disk.as_str()];
            self.disk_committed
                .with_label_values(&label)
                .set(i64::try_from(d.committed).unwrap_or(i64::MAX));
            self.disk_size
                .with_label_values(&label)
                .set(i64::try_from(d.size).unwrap_or(i64::MAX));
            self.disk_rate.with_label_values(&label).set(d.rate_bps);
            if let Some(t) = d.last_progress_at {
                self.disk_last_progress
                    .with_label_values(&label)
                    .set(unix_seconds(t.0));
            }
        }
        self.sync_rate
            .with_label_values(&[] as &[&str])
            .set(record.sync_rate_bps());
        self.stalled.set(i64::from(
            record.stalled(self.job.now(), self.job.stall_after()),
        ));
        let expires = record
            .expires_at
            .0
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.expires.set(i64::try_from(expires).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        for c in [
            &self.state as &dyn Collector,
            &self.disk_committed,
            &self.disk_size,
            &self.disk_rate,
            &self.sync_rate,
            &self.disk_last_progress,
            &self.stalled,
            &self.expires,
        ] {
            out.extend(c.collect());
        }
        if let Some(w) = &self.webhook {
            out.extend(webhook_families(w));
        }
        out
    }
}

/// Seconds since the Unix epoch, with milliseconds.
fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::state::{JobSettings, ManualClock, MemoryStore};
    use std::time::{Duration, SystemTime};

    #[test]
    fn metrics_follow_the_job() {
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        ));
        let job = JobHandle::open(
            Arc::new(MemoryStore::default()),
            clock.clone(),
            JobSettings::default(),
        )
        .unwrap();
        let registry = Registry::new();
        let stats = Arc::new(WebhookStats::default());
        stats.dropped.store(2, Ordering::Relaxed);
        let unauthorized = JobCollector::register(&registry, job.clone(), Some(stats)).unwrap();
        unauthorized.inc();
        job.admit_sender().unwrap();
        job.syncing(&[(0, 1000, 0), (1, 50, 50)]).unwrap();
        job.progress(0, 0).unwrap();
        clock.advance(Duration::from_secs(2));
        job.progress(0, 200).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            "ferry_job_state{business_status=\"Syncing\",state=\"Running\"} 1",
            "ferry_job_state{business_status=\"\",state=\"Ready\"} 0",
            "ferry_disk_committed_bytes{disk=\"0\"} 200",
            "ferry_disk_committed_bytes{disk=\"1\"} 50",
            "ferry_disk_size_bytes{disk=\"0\"} 1000",
            "ferry_disk_sync_rate_bytes_per_second{disk=\"0\"} 100",
            "ferry_sync_rate_bytes_per_second 100",
            "ferry_job_expires_timestamp_seconds 1792592000",
            "ferry_webhook_events_total{outcome=\"dropped\"} 2",
            "ferry_webhook_events_total{outcome=\"delivered\"} 0",
            "# TYPE ferry_webhook_events_total counter",
            "ferry_webhook_attempts_total 0",
            "# TYPE ferry_webhook_attempts_total counter",
            "ferry_control_unauthorized_total 1",
            "ferry_disk_last_progress_timestamp_seconds{disk=\"0\"} 1790000002",
            "ferry_disk_last_progress_timestamp_seconds{disk=\"1\"} 1790000000",
            "ferry_job_stalled 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        let running = text
            .lines()
            .filter(|l| l.starts_with("ferry_job_state{") && l.ends_with(" 1"))
            .count();
        assert_eq!(running, 1);

        // No data for the stall threshold: stalled, and the rate is 0.
        clock.advance(JobHandle::DEFAULT_STALL_AFTER);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            "ferry_job_stalled 1",
            "ferry_disk_sync_rate_bytes_per_second{disk=\"0\"} 0",
            "ferry_sync_rate_bytes_per_second 0",
            "ferry_disk_last_progress_timestamp_seconds{disk=\"0\"} 1790000002",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn without_a_webhook_no_webhook_metrics() {
        let job = JobHandle::open(
            Arc::new(MemoryStore::default()),
            Arc::new(crate::job::state::SystemClock),
            JobSettings::default(),
        )
        .unwrap();
        let registry = Registry::new();
        JobCollector::register(&registry, job, None).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(!text.contains("ferry_webhook"), "{text}");
        assert!(text.contains("ferry_job_stalled 0"), "{text}");
    }
}
