//! The webhook: every event of the job (status changes, the pipeline's
//! steps, the round's check) is POSTed as JSON to the control plane's URL,
//! signed with HMAC-SHA256 over the body.
//!
//! Events happen on the data path, which must never wait for the control
//! plane: [`Webhook::push`] only puts the event in a bounded queue (the
//! oldest event is dropped when it is full, and counted), and one
//! background task delivers them in order, retrying with exponential
//! backoff. Every event carries its `event_seq` (in the body and the
//! `x-ferry-seq` header), the number `GET /v1/job/events?after=N` knows it
//! by: a control plane that sees a gap, or was away, reads the events
//! after the last it has. A status change also carries the job's own
//! `seq` of status changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::job::events::Event as JobEvent;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-ferry-signature";
/// The header carrying the event's `event_seq`, also in the body.
pub const SEQ_HEADER: &str = "x-ferry-seq";

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// http:// or https:// URL of the control plane's endpoint.
    pub url: String,
    /// The HMAC key shared with the control plane.
    pub secret: Vec<u8>,
    /// Events held while the control plane is slow or away.
    pub queue: usize,
    /// Attempts per event before it is given up.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            queue: 256,
            max_attempts: 8,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }

    /// The wait before attempt `attempt` (the first retry is attempt 2).
    pub(crate) fn backoff_before(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(20);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events the control plane accepted (2xx).
    pub delivered: AtomicU64,
    /// Events dropped from a full queue before any attempt.
    pub dropped: AtomicU64,
    /// Events given up after the last attempt or a 4xx answer.
    pub failed: AtomicU64,
    /// Requests made, first attempts and retries.
    pub attempts: AtomicU64,
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A webhook URL: http:// or https://.
pub fn parse_url(url: &str) -> Result<reqwest::Url> {
    let parsed =
        reqwest::Url::parse(url).with_context(|| format!("parsing the webhook URL {url:?}"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "the webhook URL {url:?} is neither http:// nor https://"
    );
    Ok(parsed)
}

/// Check a signature header in constant time (for receivers, and tests).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

struct Event {
    seq: u64,
    body: Vec<u8>,
}

/// A bounded queue that drops its oldest entry when full.
struct Queue {
    items: Mutex<VecDeque<Event>>,
    capacity: usize,
    notify: Notify,
    closed: AtomicBool,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Queue {
            items: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(1),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Returns how many events were dropped to make room.
    fn push(&self, event: Event) -> u64 {
        let mut dropped = 0;
        {
            let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
            while items.len() >= self.capacity {
                items.pop_front();
                dropped += 1;
            }
            items.push_back(event);
        }
        self.notify.notify_one();
        dropped
    }

    fn pop(&self) -> Option<Event> {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    fn is_empty(&self) -> bool {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Webhook {
    queue: Arc<Queue>,
    stats: Arc<WebhookStats>,
}

impl Webhook {
    /// Start the delivery task on the current tokio runtime.
    pub fn spawn(config: WebhookConfig) -> Result<(Webhook, tokio::task::JoinHandle<()>)> {
        let url = parse_url(&config.url)?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the webhook's HTTP client")?;
        let queue = Arc::new(Queue::new(config.queue));
        let stats = Arc::new(WebhookStats::default());
        let hook = Webhook {
            queue: queue.clone(),
            stats: stats.clone(),
        };
        let task = tokio::spawn(deliver_all(queue, stats, client, url, config));
        Ok((hook, task))
    }

    /// Queue an event for delivery (its body as `GET /v1/job/events`
    /// gives it). Never blocks.
    pub fn push(&self, event: &JobEvent) {
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(err) => {
                tracing::error!("encoding webhook event {}: {err}", event.event_seq);
                return;
            }
        };
        let dropped = self.queue.push(Event {
            seq: event.event_seq,
            body,
        });
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(dropped, "webhook queue full: dropped the oldest events");
        }
    }

    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.stats
    }

    /// Let the task finish what is queued, then end.
    pub fn close(&self) {
        self.queue.closed.store(true, Ordering::SeqCst);
        self.queue.notify.notify_one();
    }
}

async fn deliver_all(
    queue: Arc<Queue>,
    stats: Arc<WebhookStats>,
    client: reqwest::Client,
    url: reqwest::Url,
    config: WebhookConfig,
) {
    loop {
        let Some(event) = queue.pop() else {
            if queue.closed.load(Ordering::SeqCst) && queue.is_empty() {
                return;
            }
            queue.notify.notified().await;
            continue;
        };
        match deliver(&client, &url, &config, &stats, &event).await {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(seq = event.seq, "webhook event given up: {err:#}");
            }
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &reqwest::Url,
    config: &WebhookConfig,
    stats: &WebhookStats,
    event: &Event,
) -> Result<()> {
    let signature = sign(&config.secret, &event.body);
    let mut attempt = 1;
    loop {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let result = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .header(SEQ_HEADER, event.seq.to_string())
            .body(event.body.clone())
            .send()
            .await;
        let retry_reason = match result {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let retryable = status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                if !retryable {
                    anyhow::bail!("POST {url} answered {status}");
                }
                format!("answered {status}")
            }
            Err(err) => format!("{err}"),
        };
        if attempt >= config.max_attempts {
            anyhow::bail!("POST {url} failed {attempt} times, last: {retry_reason}");
        }
        attempt += 1;
        let wait = config.backoff_before(attempt);
        tracing::debug!(
            seq = event.seq,
            attempt,
            ?wait,
            "webhook POST {retry_reason}; retrying"
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let sig = sign(b"k", b"body");
        assert!(verify(b"k", b"body", &sig));
        assert!(!verify(b"k", b"body!", &sig));
        assert!(!verify(b"other", b"body", &sig));
        assert!(!verify(b"k", b"body", "sha1=00"));
        assert!(!verify(b"k", b"body", "sha256=zz"));
    }

    #[test]
    fn full_queue_drops_the_oldest() {
        let q = Queue::new(2);
        let mut dropped = 0;
        for seq in 1..=5 {
            dropped += q.push(Event { seq, body: vec![] });
        }
        assert_eq!(dropped, 3);
        assert_eq!(q.pop().map(|e| e.seq), Some(4));
        assert_eq!(q.pop().map(|e| e.seq), Some(5));
        assert!(q.pop().is_none());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut c = WebhookConfig::new("http://127.0.0.1:1/", "s");
        c.backoff = Duration::from_millis(100);
        c.max_backoff = Duration::from_millis(1000);
        let waits: Vec<u128> = (2..=7).map(|a| c.backoff_before(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }
}
