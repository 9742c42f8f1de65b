//! `serve --metrics ADDR`: `/metrics` in the Prometheus text format (prometheus-client) and
//! `/healthz`, served by tiny_http on a thread of its own.
//!
//! The counters are read from the database's `counters` table at each scrape (the same
//! numbers `stats` prints; `serve` writes them with every commit, and at least every 200 ms
//! while anything changes). Gauges and histograms are kept in memory by `serve`: queue depth
//! in bytes, canaries by state, commit latency, and the time of each panic-path step of the
//! stored records.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tracing::warn;

use crate::liveness::State;
use crate::store::{StepView, Store, COUNTER_NAMES};

/// Metric names start with this.
pub const PREFIX: &str = "canary_collector";

/// The counters that count something refused, as `rejected_total{reason=...}`.
const REJECT_REASONS: &[&str] = &[
    "bad_crc",
    "auth_failures",
    "truncated",
    "oversized",
    "bad_magic",
    "bad_version",
    "bad_header",
    "unknown_kind",
    "unexpected_kind",
    "reassembly_errors",
    "queue_full_drops",
    "rejected",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

fn step_histogram() -> Histogram {
    // 10 us .. about 2.6 s.
    Histogram::new(exponential_buckets(1e-5, 4.0, 10))
}

/// The handles `serve` updates (cheap to clone: each is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    counters: Vec<(&'static str, Counter)>,
    rejected: Family<ReasonLabel, Counter>,
    queue_bytes: Gauge,
    canaries: Family<StateLabel, Gauge>,
    commit_seconds: Histogram,
    steps: Family<StepLabel, Histogram, fn() -> Histogram>,
    last_commit_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    /// The handles and the registry that holds them.
    pub fn new() -> (Metrics, Registry) {
        let mut reg = Registry::with_prefix(PREFIX);
        let mut counters = Vec::new();
        for name in COUNTER_NAMES {
            let c = Counter::default();
            reg.register(*name, format!("stats counter {name}"), c.clone());
            counters.push((*name, c));
        }
        let m = Metrics {
            counters,
            rejected: Family::default(),
            queue_bytes: Gauge::default(),
            canaries: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            steps: Family::new_with_constructor(step_histogram),
            last_commit_age: Gauge::default(),
        };
        reg.register(
            "rejected_by_reason",
            "datagrams and records refused, by reason (the stats counter of that name)",
            m.rejected.clone(),
        );
        reg.register(
            "queue_bytes",
            "bytes of records queued for (or held by) the writer",
            m.queue_bytes.clone(),
        );
        reg.register("canaries", "canaries by liveness state", m.canaries.clone());
        reg.register(
            "commit_seconds",
            "time of each database commit",
            m.commit_seconds.clone(),
        );
        reg.register(
            "panic_step_seconds",
            "time of each panic-path step, from the stored records",
            m.steps.clone(),
        );
        reg.register(
            "last_commit_age_seconds",
            "time since the last successful commit",
            m.last_commit_age.clone(),
        );
        for s in State::ALL {
            let _ = m.canaries.get_or_create(&StateLabel {
                state: s.as_str().into(),
            });
        }
        (m, reg)
    }

    /// Sets every counter from the `counters` table.
    fn load_counters(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        let st = store.stats()?;
        for (name, c) in &self.counters {
            c.inner().store(
                st.counters.get(*name).copied().unwrap_or(0),
                Ordering::Relaxed,
            );
        }
        for r in REJECT_REASONS {
            self.rejected
                .get_or_create(&ReasonLabel {
                    reason: (*r).into(),
                })
                .inner()
                .store(st.counters.get(*r).copied().unwrap_or(0), Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn set_queue_bytes(&self, b: usize) {
        self.queue_bytes.set(b.try_into().unwrap_or(i64::MAX));
    }

    pub fn observe_commit(&self, d: Duration) {
        self.commit_seconds.observe(d.as_secs_f64());
    }

    pub fn set_canaries(&self, counts: &[(State, u64)]) {
        for (s, n) in counts {
            self.canaries
                .get_or_create(&StateLabel {
                    state: s.as_str().into(),
                })
                .set((*n).try_into().unwrap_or(i64::MAX));
        }
    }

    pub fn observe_steps(&self, steps: &[StepView]) {
        for s in steps {
            self.steps
                .get_or_create(&StepLabel {
                    step: s.step.clone(),
                })
                .observe(f64::from(s.elapsed_us) / 1e6);
        }
    }

    /// The histogram of one step's times (a caller observing many records looks it up once).
    pub fn step_histogram(&self, step: &str) -> Histogram {
        self.steps
            .get_or_create(&StepLabel { step: step.into() })
            .clone()
    }
}

/// What `/healthz` reports, kept by the writer thread.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` when the writer last went round its loop.
    writer_beat_ms: AtomicU64,
    /// Milliseconds since `started` of the last successful commit (-1: none yet).
    last_commit_ms: AtomicI64,
    /// The last commit succeeded (or none was tried).
    commit_ok: AtomicBool,
    writer_gone: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            writer_beat_ms: AtomicU64::new(0),
            last_commit_ms: AtomicI64::new(-1),
            commit_ok: AtomicBool::new(true),
            writer_gone: AtomicBool::new(false),
        }
    }
}

/// A writer that has not gone round its loop for this long is not alive (its loop waits at
/// most 200 ms for records, so this is long commits only).
pub const WRITER_STALL: Duration = Duration::from_secs(10);

/// The body of `/healthz`.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub ok: bool,
    pub writer_alive: bool,
    pub database_writable: bool,
    /// Seconds since the last successful commit (`null` before the first).
    pub last_commit_age_s: Option<f64>,
    pub writer_idle_s: f64,
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
    pub fn writer_beat(&self) {
        self.writer_beat_ms.store(self.now_ms(), Ordering::Relaxed);
    }
    pub fn committed(&self, ok: bool) {
        self.commit_ok.store(ok, Ordering::Relaxed);
        if ok {
            self.last_commit_ms
                .store(self.now_ms() as i64, Ordering::Relaxed);
        }
    }
    pub fn writer_gone(&self) {
        self.writer_gone.store(true, Ordering::Relaxed);
    }
    pub fn report(&self) -> HealthReport {
        let now = self.now_ms();
        let idle = now.saturating_sub(self.writer_beat_ms.load(Ordering::Relaxed));
        let writer_alive =
            !self.writer_gone.load(Ordering::Relaxed) && idle < WRITER_STALL.as_millis() as u64;
        let database_writable = self.commit_ok.load(Ordering::Relaxed);
        let last = self.last_commit_ms.load(Ordering::Relaxed);
        HealthReport {
            ok: writer_alive && database_writable,
            writer_alive,
            database_writable,
            last_commit_age_s: (last >= 0).then(|| now.saturating_sub(last as u64) as f64 / 1e3),
            writer_idle_s: idle as f64 / 1e3,
        }
    }
}

/// The running HTTP listener; stops when dropped... or by [`MetricsServer::stop`].
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and serves `/metrics` and `/healthz` until stopped. `db` is opened
    /// read-only for the counters.
    pub fn start(
        addr: SocketAddr,
        db: PathBuf,
        metrics: Metrics,
        registry: Registry,
        health: Arc<Health>,
    ) -> Result<MetricsServer, String> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("metrics listener on {addr} has no IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("collector-metrics".into())
            .spawn(move || serve_http(server, &s2, db, metrics, registry, health))
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        Ok(MetricsServer {
            stop,
            thread: Some(thread),
            addr,
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_http(
    server: tiny_http::Server,
    stop: &AtomicBool,
    db: PathBuf,
    metrics: Metrics,
    registry: Registry,
    health: Arc<Health>,
) {
    let mut store: Option<Store> = None;
    while !stop.load(Ordering::Relaxed) {
        let req = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                warn!("metrics listener: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let text = |body: String, code: u16, ctype: &str| {
            tiny_http::Response::from_string(body)
                .with_status_code(code)
                .with_header(
                    tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                        .expect("valid header"),
                )
        };
        let resp = match path.as_str() {
            "/metrics" => {
                let r = health.report();
                if let Some(age) = r.last_commit_age_s {
                    metrics.last_commit_age.set(age);
                }
                if store.is_none() {
                    store = Store::open_read(&db)
                        .map_err(|e| warn!("metrics: cannot read the database: {e}"))
                        .ok();
                }
                let loaded = match &store {
                    Some(s) => metrics.load_counters(s).map_err(|e| e.to_string()),
                    None => Err("database not readable".into()),
                };
                match loaded {
                    Ok(()) => {
                        let mut body = String::new();
                        match prometheus_client::encoding::text::encode(&mut body, &registry) {
                            Ok(()) => text(
                                body,
                                200,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                            Err(e) => text(format!("encoding: {e}\n"), 500, "text/plain"),
                        }
                    }
                    Err(e) => {
                        store = None;
                        text(
                            format!("cannot read the counters: {e}\n"),
                            503,
                            "text/plain",
                        )
                    }
                }
            }
            "/healthz" => {
                let r = health.report();
                let code = if r.ok { 200 } else { 503 };
                text(
                    serde_json::to_string(&r).unwrap_or_default() + "\n",
                    code,
                    "application/json",
                )
            }
            _ => text(
                "not found: try /metrics or /healthz\n".into(),
                404,
                "text/plain",
            ),
        };
        let _ = req.respond(resp);
    }
}
