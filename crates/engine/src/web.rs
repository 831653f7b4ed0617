//! The worker's web server (`web.port`): liveness, readiness and metrics.
//!
//! - `GET /health`: 200 while every assigned partition with records to read
//!   has made progress within `health.stall.ms` (default 60 s); else 503
//!   with a JSON list of the stalled partitions and their lag. The worker
//!   also logs a warning the moment a partition stalls. This is the alarm
//!   Faust never had ("Stream has not started processing TP…").
//! - `GET /ready`: 200 once the worker has its partitions and none is
//!   being restored; 503 before.
//! - `GET /metrics`: Prometheus text format, names prefixed `faustus_`.
//!
//! The worker's loop updates a [`WebState`] shared with the server (which
//! runs on the runtime's other threads); whether a partition stalled is
//! decided by [`stalled`], pure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

/// A partition's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PartitionLabels {
    pub(crate) topic: String,
    pub(crate) partition: i64,
}

/// The worker's metrics.
pub(crate) struct Metrics {
    /// Records handed to agents, per input partition.
    pub(crate) processed: Family<PartitionLabels, Counter>,
    /// Records past the committed position, per input partition, as the
    /// last fetch told.
    pub(crate) lag: Family<PartitionLabels, Gauge>,
    /// Commits (offsets or transactions).
    pub(crate) commits: Counter,
    /// Rebalances this worker took part in (assignments received).
    pub(crate) rebalances: Counter,
    /// Partitions assigned now.
    pub(crate) assigned: Gauge,
    /// Tasks being restored now.
    pub(crate) restoring: Gauge,
    /// Records joins skipped (no key, no value).
    pub(crate) dropped: Gauge,
    /// Records agents' error policies skipped, and dead-lettered.
    pub(crate) skipped: Gauge,
    pub(crate) dead_lettered: Gauge,
    /// Roll-backs (an aborted transaction, a failed flush).
    pub(crate) rollbacks: Counter,
    /// How long commits take (s).
    pub(crate) commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            processed: Family::default(),
            lag: Family::default(),
            commits: Counter::default(),
            rebalances: Counter::default(),
            assigned: Gauge::default(),
            restoring: Gauge::default(),
            dropped: Gauge::default(),
            skipped: Gauge::default(),
            dead_lettered: Gauge::default(),
            rollbacks: Counter::default(),
            // 1 ms to about 16 s.
            commit_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
        }
    }
}

/// What one input partition did last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// Records known to be past what was processed.
    pub(crate) lag: i64,
    /// When the partition last moved on (or was assigned).
    pub(crate) since: Instant,
}

/// What the server answers from, updated by the worker's loop.
pub(crate) struct WebState {
    registry: Registry,
    pub(crate) metrics: Arc<Metrics>,
    progress: Mutex<BTreeMap<(String, i32), Progress>>,
    ready: Mutex<bool>,
    stall: Duration,
}

impl WebState {
    /// A state whose partitions count as stalled after `stall` without
    /// progress while they have records to read.
    pub(crate) fn new(stall: Duration) -> Self {
        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::with_prefix("faustus");
        let m = &metrics;
        registry.register(
            "records_processed",
            "Records handed to agents, per input partition",
            m.processed.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records past the processed position, per input partition, as the last fetch told",
            m.lag.clone(),
        );
        registry.register("commits", "Commits made", m.commits.clone());
        registry.register(
            "rebalances",
            "Assignments this worker received",
            m.rebalances.clone(),
        );
        registry.register(
            "assigned_partitions",
            "Input partitions assigned to this worker",
            m.assigned.clone(),
        );
        registry.register(
            "restoring_tasks",
            "Tasks whose tables are being restored",
            m.restoring.clone(),
        );
        registry.register(
            "skipped_records",
            "Records agents' error policies skipped, since the worker started",
            m.skipped.clone(),
        );
        registry.register(
            "dead_lettered_records",
            "Records agents' error policies dead-lettered, since the worker started",
            m.dead_lettered.clone(),
        );
        registry.register(
            "rollbacks",
            "Roll-backs to the last commit (aborted transactions, failed flushes)",
            m.rollbacks.clone(),
        );
        registry.register(
            "commit_seconds",
            "How long commits take",
            m.commit_seconds.clone(),
        );
        registry.register(
            "dropped_records",
            "Records joins skipped (no key or no value), over this worker's tasks",
            m.dropped.clone(),
        );
        Self {
            registry,
            metrics,
            progress: Mutex::new(BTreeMap::new()),
            ready: Mutex::new(false),
            stall,
        }
    }

    /// Notes a partition's processed position moving on (or its lag).
    pub(crate) fn progressed(&self, topic: &str, partition: i32, records: u64, lag: Option<i64>) {
        let labels = PartitionLabels {
            topic: topic.to_owned(),
            partition: i64::from(partition),
        };
        if records > 0 {
            self.metrics
                .processed
                .get_or_create(&labels)
                .inc_by(records);
        }
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let p = progress
            .entry((topic.to_owned(), partition))
            .or_insert(Progress {
                lag: 0,
                since: Instant::now(),
            });
        if records > 0 {
            p.since = Instant::now();
        }
        if let Some(lag) = lag {
            p.lag = lag;
            self.metrics.lag.get_or_create(&labels).set(lag);
        }
    }

    /// The partitions assigned now: new ones start their clock, gone ones
    /// are forgotten.
    pub(crate) fn assigned(&self, owned: impl IntoIterator<Item = (String, i32)>) {
        let owned: Vec<(String, i32)> = owned.into_iter().collect();
        self.metrics.assigned.set(owned.len() as i64);
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        progress.retain(|k, _| owned.contains(k));
        for k in owned {
            progress.entry(k).or_insert(Progress {
                lag: 0,
                since: Instant::now(),
            });
        }
    }

    /// Whether the worker is ready (has its partitions, restores nothing).
    pub(crate) fn set_ready(&self, ready: bool) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = ready;
    }

    /// The partitions stalled now.
    pub(crate) fn stalled_now(&self) -> Vec<((String, i32), i64)> {
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        stalled(&progress, Instant::now(), self.stall)
    }

    fn metrics_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The partitions with records to read that have not moved on within
/// `stall` of `now`, with their lag.
pub(crate) fn stalled(
    progress: &BTreeMap<(String, i32), Progress>,
    now: Instant,
    stall: Duration,
) -> Vec<((String, i32), i64)> {
    progress
        .iter()
        .filter(|(_, p)| p.lag > 0 && now.saturating_duration_since(p.since) >= stall)
        .map(|(k, p)| (k.clone(), p.lag))
        .collect()
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Starts the server on `bind:port` (port 0: any free one) and returns
/// the address it listens on.
pub(crate) async fn serve(
    state: Arc<WebState>,
    bind: &str,
    port: u16,
) -> Result<std::net::SocketAddr> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let health = state.clone();
    let ready = state.clone();
    let metrics = state;
    let app = axum::Router::new()
        .route(
            "/health",
            get(move || {
                let s = health.clone();
                async move {
                    let stalled = s.stalled_now();
                    if stalled.is_empty() {
                        (StatusCode::OK, "{\"status\":\"ok\"}".to_owned())
                    } else {
                        let parts: Vec<String> = stalled
                            .iter()
                            .map(|((t, p), lag)| {
                                format!(
                                    "{{\"topic\":{},\"partition\":{p},\"lag\":{lag}}}",
                                    json_string(t)
                                )
                            })
                            .collect();
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "{{\"status\":\"stalled\",\"stalled\":[{}]}}",
                                parts.join(",")
                            ),
                        )
                    }
                }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let s = ready.clone();
                async move {
                    if *s.ready.lock().unwrap_or_else(|e| e.into_inner()) {
                        (StatusCode::OK, "{\"status\":\"ready\"}")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"starting\"}")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let s = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        s.metrics_text(),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind((bind, port))
        .await
        .map_err(|e| Error::Config(format!("web server on {bind}:{port}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("web server: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "web server stopped");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_stalls_only_with_records_to_read_and_no_progress_for_the_stall_time() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(60);
        let mut progress = BTreeMap::new();
        progress.insert(("in".to_owned(), 0), Progress { lag: 5, since: t0 });
        progress.insert(("in".to_owned(), 1), Progress { lag: 0, since: t0 });
        let later = t0 + Duration::from_secs(59);
        assert!(stalled(&progress, later, stall).is_empty());
        let late = t0 + Duration::from_secs(60);
        assert_eq!(
            stalled(&progress, late, stall),
            vec![(("in".to_owned(), 0), 5)]
        );
    }

    #[test]
    fn progress_resets_the_clock_and_metrics_count_records() {
        let s = WebState::new(Duration::ZERO);
        s.assigned([("in".to_owned(), 0)]);
        s.progressed("in", 0, 0, Some(3));
        assert_eq!(s.stalled_now(), vec![(("in".to_owned(), 0), 3)]);
        s.progressed("in", 0, 10, Some(0));
        assert!(s.stalled_now().is_empty());
        let text = s.metrics_text();
        assert!(
            text.contains("faustus_records_processed_total{topic=\"in\",partition=\"0\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("faustus_consumer_lag{topic=\"in\",partition=\"0\"} 0"),
            "{text}"
        );
        // Revoked: forgotten.
        s.assigned([]);
        s.progressed("x", 1, 0, Some(0));
        assert!(s.stalled_now().is_empty());
    }
}
