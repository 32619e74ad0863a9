//! Prometheus metrics: names, and where each value comes from.
//!
//! Counters the actors keep as atomics (per source: accepted, rejected by
//! reason, connected; per speed partition: groups; the served snapshot) are
//! read at scrape time by [`Live`]; latencies are histograms observed where
//! they happen. Label values come from closed sets: source names, reject
//! reasons, view names, routes and status codes; never a key or an event id.

use crate::actors::source::{SourceHandle, SourceStats};
use crate::event::Reason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Values the actors publish for scrapes; each has one writer, named per field.
#[derive(Debug, Default)]
pub struct Shared {
    /// Records durable in the master dataset (writer: the recorder).
    pub durable_records: AtomicU64,
    /// Per speed partition, its (key, bucket) groups (writer: that partition).
    pub speed_groups: Vec<AtomicU64>,
    /// Creation time of the served snapshot, epoch ms, 0 for none (writer: serving).
    pub snapshot_created_ms: AtomicI64,
    /// Duration of the last batch run, ms (writer: the supervisor).
    pub recompute_ms: AtomicU64,
    /// Records the last batch run read (writer: the supervisor).
    pub recompute_records: AtomicU64,
    /// Batch runs that failed (writer: the supervisor).
    pub recompute_failures: AtomicU64,
    /// Sealed epochs exported to `master.parquet_dir` (writer: the supervisor).
    pub exported_epochs: AtomicU64,
    /// Exports to `master.parquet_dir` that failed (writer: the supervisor).
    pub export_failures: AtomicU64,
    /// Why the last export failed, until one succeeds (writer: the supervisor).
    pub export_error: ErrorText,
    /// How far the batch run going on (or the last one) has read (writer: the run).
    pub recompute_progress: crate::actors::recompute::Progress,
    /// Rejections before this process started, in `Reason::ALL` order (set once at start).
    pub rejected_before: Vec<u64>,
    /// Why the last group commit failed, while writes fail (writer: the recorder).
    pub store_error: ErrorText,
    /// Group commits that failed (writer: the recorder).
    pub store_write_failures: AtomicU64,
    /// Why the last batch run failed, until one succeeds (writer: the supervisor).
    pub recompute_error: ErrorText,
    /// Batch runs that failed in a row, 0 once one succeeds (writer: the supervisor).
    pub recompute_failing: AtomicU64,
    /// When the first of those failed runs ended, epoch ms, 0 while none fails
    /// (writer: the supervisor).
    pub recompute_failing_since_ms: AtomicI64,
    /// Ids the first-copy check holds in memory: those of the records since the
    /// newest id index (writer: the recorder).
    pub ids_held: AtomicU64,
    /// Distinct ids in the newest id index (writer: the recorder).
    pub ids_indexed: AtomicU64,
}

/// An error text shown while its condition lasts: one writer sets and clears
/// it, status and scrapes read it.
#[derive(Debug, Default)]
pub struct ErrorText(Mutex<Option<String>>);

impl ErrorText {
    /// Sets (`Some`) or clears (`None`) the text.
    pub fn set(&self, error: Option<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// The text, while set.
    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Shared {
    /// Shared values for `partitions` speed partitions, with the rejection
    /// totals persisted by earlier runs.
    pub fn new(partitions: usize, counters: &crate::store::Counters) -> Shared {
        let rejected_before = Reason::ALL
            .iter()
            .map(|reason| counters.rejected.get(reason.as_str()).copied().unwrap_or(0))
            .collect();
        Shared {
            speed_groups: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            rejected_before,
            ..Shared::default()
        }
    }

    /// (key, bucket) groups held by all speed partitions.
    pub fn speed_groups_total(&self) -> u64 {
        self.speed_groups
            .iter()
            .map(|groups| groups.load(Ordering::Relaxed))
            .sum()
    }

    /// Rejections since the data_dir was created, in `Reason::ALL` order.
    pub fn rejected_total(&self, sources: &[SourceHandle]) -> Vec<u64> {
        let mut totals = self.rejected_before.clone();
        totals.resize(Reason::ALL.len(), 0);
        for source in sources {
            for (total, count) in totals.iter_mut().zip(&source.stats.rejected) {
                *total += count.load(Ordering::Relaxed);
            }
        }
        totals
    }

    /// The totals to persist.
    pub fn counters(&self, sources: &[SourceHandle]) -> crate::store::Counters {
        let rejected = Reason::ALL
            .iter()
            .map(|reason| reason.as_str().to_owned())
            .zip(self.rejected_total(sources))
            .collect();
        crate::store::Counters { rejected }
    }
}

/// The registry and the metrics observed in place.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Time from staging a group commit to its fsync.
    pub durable_write: Histogram,
    /// Time from a batch's arrival to its acknowledgement (ack, or the in-process reply).
    pub ack_lag: Histogram,
    /// Query latency, by query kind.
    pub query: Family<Vec<(&'static str, &'static str)>, Histogram>,
    /// HTTP requests, by route and status.
    pub http: Family<Vec<(&'static str, String)>, Counter>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 10 µs .. ~5 s.
    exponential_buckets(1e-5, 2.5, 15)
}

impl Metrics {
    /// The metrics of a system with these sources and shared values.
    pub fn new(sources: Vec<SourceHandle>, shared: Arc<Shared>) -> Metrics {
        let mut registry = Registry::default();
        let durable_write = Histogram::new(latency_buckets());
        registry.register(
            "tandem_durable_write_seconds",
            "Time to make a group commit durable (write and fsync)",
            durable_write.clone(),
        );
        let ack_lag = Histogram::new(latency_buckets());
        registry.register(
            "tandem_ack_lag_seconds",
            "Time from a batch's arrival to its acknowledgement",
            ack_lag.clone(),
        );
        let query =
            Family::<Vec<(&'static str, &'static str)>, Histogram>::new_with_constructor(|| {
                Histogram::new(latency_buckets())
            });
        registry.register(
            "tandem_query_seconds",
            "Query latency, by kind",
            query.clone(),
        );
        let http = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "tandem_http_requests",
            "HTTP requests, by route and status",
            http.clone(),
        );
        registry.register_collector(Box::new(Live { sources, shared }));
        Metrics {
            registry,
            durable_write,
            ack_lag,
            query,
            http,
        }
    }

    /// The exposition in `format`.
    ///
    /// # Errors
    /// Only if formatting fails, which writing to a String does not.
    pub fn render(&self, format: Exposition) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        match format {
            Exposition::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            }
            Exposition::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            }
        }
        Ok(out)
    }
}

/// The text formats `/metrics` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text format 0.0.4: what every scraper and `promtool` reads.
    Prometheus,
    /// OpenMetrics 1.0 text, for scrapers that ask for it in `Accept`.
    OpenMetrics,
}

impl Exposition {
    /// The format a scraper asks for in its `Accept` header: OpenMetrics
    /// when it names it, the Prometheus text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let asks_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let essence = parts.next().unwrap_or("");
                // `q=0` means "not this one".
                let refused = parts.any(|param| {
                    param
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                essence.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if asks_openmetrics {
            Exposition::OpenMetrics
        } else {
            Exposition::Prometheus
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Reads the actors' atomics at scrape time.
#[derive(Debug)]
struct Live {
    sources: Vec<SourceHandle>,
    shared: Arc<Shared>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                "tandem_events",
                "Valid events made durable, by source (redeliveries included)",
                None,
                MetricType::Counter,
            )?;
            for source in self.sources.iter().filter(|source| source.listed()) {
                let labels = [("source", source.name.as_str())];
                ConstCounter::new(source.stats.accepted.load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "tandem_events_rejected",
                "Rejected messages, by source and reason",
                None,
                MetricType::Counter,
            )?;
            for source in self.sources.iter().filter(|source| source.listed()) {
                for (reason, count) in Reason::ALL.iter().zip(&source.stats.rejected) {
                    let labels = [
                        ("source", source.name.as_str()),
                        ("reason", reason.as_str()),
                    ];
                    ConstCounter::new(count.load(Ordering::Relaxed))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "tandem_source_connected",
                "1 when the source is connected to its broker",
                None,
                MetricType::Gauge,
            )?;
            for source in self.sources.iter().filter(|source| source.listed()) {
                let labels = [("source", source.name.as_str())];
                let connected = i64::from(source.stats.connected.load(Ordering::Relaxed));
                ConstGauge::new(connected).encode(family.encode_family(&labels)?)?;
            }
        }
        type Count = fn(&SourceStats) -> &AtomicU64;
        let counts: [(&str, &str, Count); 2] = [
            (
                "tandem_source_disconnects",
                "Times the source lost its broker, or could not reach it, and tried again",
                |stats| &stats.disconnects,
            ),
            (
                "tandem_source_restarts",
                "Times its supervisor restarted the source's actor",
                |stats| &stats.restarts,
            ),
        ];
        for (name, help, count) in counts {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for source in self.sources.iter().filter(|source| source.listed()) {
                let labels = [("source", source.name.as_str())];
                ConstCounter::new(count(&source.stats).load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let shared = &self.shared;
        counter(
            &mut encoder,
            "tandem_master_records",
            "Records in the master dataset",
            shared.durable_records.load(Ordering::Relaxed),
        )?;
        let groups = shared.speed_groups_total();
        gauge(
            &mut encoder,
            "tandem_speed_groups",
            "(key, bucket) groups held by the speed layer",
            groups as f64,
        )?;
        let created = shared.snapshot_created_ms.load(Ordering::Relaxed);
        let age = if created > 0 {
            (crate::now_ms() - created) as f64 / 1e3
        } else {
            -1.0
        };
        gauge(
            &mut encoder,
            "tandem_snapshot_age_seconds",
            "Age of the served snapshot (-1: none yet)",
            age,
        )?;
        let ms = shared.recompute_ms.load(Ordering::Relaxed);
        gauge(
            &mut encoder,
            "tandem_recompute_duration_seconds",
            "Duration of the last batch run",
            ms as f64 / 1e3,
        )?;
        let rate = if ms > 0 {
            shared.recompute_records.load(Ordering::Relaxed) as f64 * 1e3 / ms as f64
        } else {
            0.0
        };
        gauge(
            &mut encoder,
            "tandem_recompute_records_per_second",
            "Rate of the last batch run",
            rate,
        )?;
        let (read, total) = shared.recompute_progress.get();
        gauge(
            &mut encoder,
            "tandem_recompute_records_read",
            "Records of the master dataset the batch run going on (or the last one) has read",
            read as f64,
        )?;
        gauge(
            &mut encoder,
            "tandem_recompute_records_to_read",
            "Records the batch run going on (or the last one) reads: from the end of the batch cache (or the start of the log) to its sealed epoch",
            total as f64,
        )?;
        let (from_cache, from_master) = shared.recompute_progress.views();
        gauge(
            &mut encoder,
            "tandem_recompute_views_from_cache",
            "Views the batch run going on (or the last one) starts from the batch cache",
            from_cache as f64,
        )?;
        gauge(
            &mut encoder,
            "tandem_recompute_views_from_master_dataset",
            "Views the batch run going on (or the last one) computes from the whole master dataset (new, changed, or a cache that could not be used)",
            from_master as f64,
        )?;
        gauge(
            &mut encoder,
            "tandem_store_writable",
            "1 while the master dataset takes writes, 0 while they fail (disk full, say)",
            if shared.store_error.get().is_some() {
                0.0
            } else {
                1.0
            },
        )?;
        counter(
            &mut encoder,
            "tandem_store_write_failures",
            "Group commits that failed (nothing of them was acknowledged)",
            shared.store_write_failures.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "tandem_recompute_failures",
            "Batch runs that failed",
            shared.recompute_failures.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "tandem_export_epochs",
            "Sealed epochs exported as Parquet to master.parquet_dir",
            shared.exported_epochs.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "tandem_export_failures",
            "Exports to master.parquet_dir that failed (each is tried again at the next seal)",
            shared.export_failures.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "tandem_recompute_failing_runs",
            "Batch runs that failed in a row (0 once one succeeds): while above 0, nothing expires the speed layer",
            shared.recompute_failing.load(Ordering::Relaxed) as f64,
        )?;
        gauge(
            &mut encoder,
            "tandem_dedup_ids_held",
            "Event ids held in memory for the first-copy check: those since the last batch run's id index",
            shared.ids_held.load(Ordering::Relaxed) as f64,
        )?;
        gauge(
            &mut encoder,
            "tandem_dedup_ids_indexed",
            "Distinct event ids in the last batch run's id index (on disk in id levels, about 1.15 bytes each in memory)",
            shared.ids_indexed.load(Ordering::Relaxed) as f64,
        )?;
        Ok(())
    }
}
