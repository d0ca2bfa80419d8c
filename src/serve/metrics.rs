//! Prometheus metrics of the appliance, named `ferry_<noun>_<unit>`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub received_bytes: IntCounter,
    pub written_bytes: IntCounter,
    pub chunks: IntCounterVec,
    pub auth_failures: IntCounter,
    pub sessions_active: IntGauge,
    pub session_errors: IntCounterVec,
    pub chunk_write_seconds: Histogram,
}

impl Metrics {
    /// A counter of this registry, registered.
    pub(crate) fn register_counter(&self, name: &str, help: &str) -> anyhow::Result<IntCounter> {
        use anyhow::Context;
        let c = IntCounter::new(name, help).with_context(|| format!("metric {name}"))?;
        self.registry
            .register(Box::new(c.clone()))
            .with_context(|| format!("registering metric {name}"))?;
        Ok(c)
    }

    pub fn new() -> Metrics {
        let registry = Registry::new();
        let received_bytes = IntCounter::new(
            "ferry_received_bytes_total",
            "Chunk payload bytes received on the data port",
        )
        .expect("valid metric");
        let written_bytes =
            IntCounter::new("ferry_written_bytes_total", "Bytes written to target disks")
                .expect("valid metric");
        let chunks = IntCounterVec::new(
            Opts::new(
                "ferry_chunks_total",
                "Chunks by outcome: written, zeroed, zero_skipped, unchanged, rejected",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let auth_failures =
            IntCounter::new("ferry_auth_failures_total", "Failed sender authentications")
                .expect("valid metric");
        let sessions_active = IntGauge::new("ferry_sessions_active", "Data connections open now")
            .expect("valid metric");
        let session_errors = IntCounterVec::new(
            Opts::new(
                "ferry_session_errors_total",
                "Data connections closed with an error, by code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let chunk_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ferry_chunk_write_seconds",
                "Time to verify and write one chunk",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        for c in [&received_bytes, &written_bytes, &auth_failures] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        registry
            .register(Box::new(chunks.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(sessions_active.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(session_errors.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(chunk_write_seconds.clone()))
            .expect("unique metric");
        // Constant per process: which build answers, for dashboards and
        // alerts that join on it (the Prometheus `_info` convention).
        let build_info = IntGaugeVec::new(
            Opts::new(
                "ferry_build_info",
                "Always 1; the labels tell the version of ferry and of its data protocol",
            ),
            &["version", "protocol_version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                crate::wire::PROTOCOL_VERSION.to_string().as_str(),
            ])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");
        for outcome in ["written", "zeroed", "zero_skipped", "unchanged", "rejected"] {
            chunks.with_label_values(&[outcome]);
        }
        Metrics {
            registry,
            received_bytes,
            written_bytes,
            chunks,
            auth_failures,
            sessions_active,
            session_errors,
            chunk_write_seconds,
        }
    }

    pub fn chunk(&self, outcome: &str, n: u64) {
        self.chunks.with_label_values(&[outcome]).inc_by(n);
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
