//! `/metrics` in Prometheus text format: request counts and latencies, watches, store sizes.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VerbLabels, Histogram>,
    watches: Gauge,
    db_bytes: Gauge,
    revision: Gauge,
    objects: Family<ResourceLabels, Gauge>,
    lock: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<VerbLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let watches = Gauge::default();
        let db_bytes = Gauge::default();
        let revision = Gauge::default();
        let objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests by verb, resource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency by verb",
            latency.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Number of currently open watches",
            watches.clone(),
        );
        registry.register(
            "kinglet_store_db_size_bytes",
            "Size of the SQLite database and its WAL",
            db_bytes.clone(),
        );
        registry.register(
            "kinglet_store_revision",
            "Current store revision",
            revision.clone(),
        );
        registry.register(
            "apiserver_storage_objects",
            "Number of stored objects by resource",
            objects.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            watches,
            db_bytes,
            revision,
            objects,
            lock: Mutex::new(()),
        }
    }

    pub fn observe(&self, verb: &str, resource: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&VerbLabels { verb: verb.into() })
            .observe(seconds);
    }

    pub fn watch_opened(&self) {
        self.watches.inc();
    }

    pub fn watch_closed(&self) {
        self.watches.dec();
    }

    /// Renders the text exposition after refreshing the store gauges.
    pub fn render(&self, db_bytes: u64, revision: i64, objects: &[(String, i64)]) -> String {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.db_bytes.set(db_bytes as i64);
        self.revision.set(revision);
        for (r, n) in objects {
            self.objects
                .get_or_create(&ResourceLabels {
                    resource: r.clone(),
                })
                .set(*n);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
