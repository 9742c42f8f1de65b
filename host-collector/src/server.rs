//! `serve`: the UDP receiver thread and the batching writer thread (and, with PostgreSQL,
//! an acker thread).
//!
//! ```text
//!  UDP ──► receiver thread ──(bounded queue)──► writer thread ──► SQLite (one txn per batch)
//!          recvmmsg; check CRC/auth,            commit, then send the batch's acks
//!          reassemble, decode                   (sendmmsg; PostgreSQL: via the acker thread)
//! ```
//! A record is acked only after the transaction holding it has committed. Duplicates are
//! detected by the database's unique key `(boot_id, seq, record_crc)`, so they are idempotent
//! across restarts too.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use capture::chunk::{Reassembler, ReassemblerConfig};
use capture::Key;
use thiserror::Error;
use tracing::{info, warn};

use crate::mmsg;

mod acker;
mod counters;
pub mod drills;
mod followup;
mod maint;
mod observe;
mod receiver;
mod writer;
use crate::store::{
    Checkpointer, HeartbeatSeen, NewRecord, Rejection, Retention, Store, StoreError, Sync,
};
use acker::{Ack, Acker};
pub use counters::Counters;
use maint::{checkpoint_loop, RateLimit};
pub use receiver::REASSEMBLY_IDLE_MS;
use receiver::{receive_loop, Receiver};
use writer::{writer_loop, Batch, WriterCfg};

/// Hidden test hook: the writer sleeps this many milliseconds before each commit, so a test
/// can kill the collector between receiving a record and committing it.
pub const TEST_COMMIT_DELAY_ENV: &str = "CANARY_COLLECTOR_TEST_COMMIT_DELAY_MS";

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{}", open_text(path, err))]
    Open { path: PathBuf, err: StoreError },
    /// The database is not a file on disk (see [`crate::store::check_durable_name`]).
    #[error("{0}")]
    NotDurable(String),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the writer thread failed: {0}")]
    Writer(String),
    #[error("{0}")]
    Metrics(String),
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub key: Option<Key>,
    pub sync: Sync,
    pub max_pending_per_source: usize,
    pub max_pending_total: usize,
    pub batch_max: usize,
    pub queue_capacity: usize,
    pub recv_buffer_bytes: usize,
    pub commit_delay: Option<Duration>,
    /// Bytes of records waiting for the writer.
    pub queue_max_bytes: u64,
    /// Bytes set aside for partial records, in all and per source address.
    pub reassembly_max_bytes: u64,
    pub reassembly_max_bytes_per_source: u64,
    /// Bytes of rejected records kept.
    pub rejected_max_bytes: u64,
    /// WAL size past which it is checkpointed and cut back (and `journal_size_limit`).
    pub wal_max_bytes: u64,
    /// Retention limits, applied at start and every `retention_interval`.
    pub retention: Retention,
    pub retention_interval: Duration,
    /// `PRAGMA integrity_check` instead of `quick_check` before serving.
    pub integrity_check: bool,
    /// When a canary counts as silent.
    pub liveness: crate::liveness::LivenessConfig,
    /// Hooks and webhooks for events (the log lines are always written).
    pub events: crate::events::EventConfig,
    /// Where to serve `/metrics` and `/healthz` (off when `None`).
    pub metrics: Option<SocketAddr>,
    /// Scheduled drills (off when `None`).
    pub drills: Option<drills::DrillSchedule>,
}

/// "database X: cause", or just the cause when it names the database already.
fn open_text(path: &std::path::Path, e: &StoreError) -> String {
    let t = e.to_string();
    // A PostgreSQL URL is named without its password.
    let name = crate::store::display_name(path);
    if t.contains(&name) {
        t
    } else {
        format!("database {name}: {t}")
    }
}

impl ServeConfig {
    pub fn new(listen: SocketAddr, db: PathBuf) -> ServeConfig {
        ServeConfig {
            listen,
            db,
            key: None,
            sync: Sync::Normal,
            max_pending_per_source: 64,
            max_pending_total: 4096,
            batch_max: 4096,
            queue_capacity: 16384,
            recv_buffer_bytes: 4 << 20,
            commit_delay: None,
            queue_max_bytes: 64 << 20,
            reassembly_max_bytes: 32 << 20,
            reassembly_max_bytes_per_source: 4 << 20,
            rejected_max_bytes: 16 << 20,
            wal_max_bytes: 64 << 20,
            retention: Retention::default(),
            retention_interval: Duration::from_secs(60),
            integrity_check: false,
            liveness: crate::liveness::LivenessConfig::default(),
            events: crate::events::EventConfig::default(),
            metrics: None,
            drills: None,
        }
    }
}

enum Msg {
    Record(Box<NewRecord>, SocketAddr),
    Reject(Box<Rejection>, SocketAddr),
    Heartbeat(HeartbeatSeen),
    Followup(Box<followup::Pending>),
}

impl Msg {
    /// Bytes the message holds (for the queue's byte budget), roughly: its buffers plus a
    /// fixed overhead.
    fn cost(&self) -> usize {
        match self {
            Msg::Record(r, _) => r.raw.len() + r.text.text_len() + 512,
            Msg::Reject(r, _) => r.raw.len() + r.reason.len() + r.source.len() + 256,
            Msg::Heartbeat(h) => h.source.len() + 128,
            Msg::Followup(f) => f.cost(),
        }
    }
}

/// A bound, ready collector. [`Collector::run`] serves until `shutdown` resolves.
pub struct Collector {
    cfg: ServeConfig,
    socket: StdUdpSocket,
    store: Store,
    counters: Arc<Counters>,
    health: Arc<crate::metrics::Health>,
    metrics: Option<(crate::metrics::MetricsServer, crate::metrics::Metrics)>,
}

impl Collector {
    /// Opens the database (migrating it) and binds the socket.
    pub fn bind(cfg: ServeConfig) -> Result<Collector, ServeError> {
        crate::store::check_durable_name(&cfg.db).map_err(ServeError::NotDurable)?;
        let open = || -> Result<Store, StoreError> {
            let mut store = Store::open(&cfg.db, cfg.sync)?;
            store.lock_writer(&cfg.db)?;
            // Nothing is acked into a database that is not sound.
            store.check_integrity(&cfg.db, cfg.integrity_check)?;
            store.set_rejected_budget(cfg.rejected_max_bytes);
            // Every record serve stores decoded: keep its raw bytes and the columns queries
            // need, render the rest when read.
            store.set_lean(true);
            store.set_journal_size_limit(cfg.wal_max_bytes)?;
            store.load_dedupe_keys()?;
            Ok(store)
        };
        let store = open().map_err(|e| ServeError::Open {
            path: cfg.db.clone(),
            err: e.at(&cfg.db),
        })?;
        let socket = mmsg::bind_udp(cfg.listen, cfg.recv_buffer_bytes).map_err(|source| {
            ServeError::Bind {
                addr: cfg.listen,
                source,
            }
        })?;
        let health = Arc::new(crate::metrics::Health::default());
        let metrics = match cfg.metrics {
            Some(addr) => {
                let (m, reg) = crate::metrics::Metrics::new();
                let srv = crate::metrics::MetricsServer::start(
                    addr,
                    cfg.db.clone(),
                    m.clone(),
                    reg,
                    health.clone(),
                )
                .map_err(ServeError::Metrics)?;
                Some((srv, m))
            }
            None => None,
        };
        Ok(Collector {
            cfg,
            socket,
            store,
            counters: Arc::new(Counters::default()),
            health,
            metrics,
        })
    }

    /// The address of `/metrics` and `/healthz`, when serving them.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(s, _)| s.addr)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        Ok(self.socket.local_addr()?)
    }

    /// Receives until `shutdown` completes, then stops receiving, commits and acks everything
    /// queued, persists the counters and returns.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Collector {
            cfg,
            socket,
            store,
            counters,
            health,
            metrics,
        } = self;
        let (metrics_server, metrics) = match metrics {
            Some((s, m)) => (Some(s), Some(m)),
            None => (None, None),
        };
        let (sink, dispatcher) = crate::events::Dispatcher::start(
            cfg.events.clone(),
            counters.clone(),
            metrics.clone(),
        )?;
        let drill_book = cfg.drills.map(|_| Arc::new(drills::DrillBook::default()));
        let observers =
            observe::Observers::new(cfg.liveness, counters.clone(), Some(sink), metrics, health)
                .with_drills(drill_book.clone());
        let drill_stop = Arc::new(AtomicBool::new(false));
        let drill_thread = match (cfg.drills, &drill_book) {
            (Some(sched), Some(book)) => {
                let (key, book, stop) = (cfg.key.clone(), book.clone(), drill_stop.clone());
                Some(
                    std::thread::Builder::new()
                        .name("collector-drills".into())
                        .spawn(move || drills::run(sched, key, book, stop))?,
                )
            }
            _ => None,
        };
        // The receiver thread blocks in recvmmsg; it looks at `stop` at least this often.
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let queue = Arc::new(Queue::new(
            cfg.queue_capacity.max(1),
            cfg.queue_max_bytes.try_into().unwrap_or(usize::MAX),
        ));
        // After each commit its acks go out: from the writer itself with SQLite, through an
        // acker thread with PostgreSQL (acker.rs says why).
        let acker = Acker {
            key: cfg.key.clone(),
            counters: counters.clone(),
            sock: socket.try_clone()?,
        };
        let (ack_tx, acker) = if store.is_postgres() {
            let (tx, rx) = std::sync::mpsc::channel();
            let t = std::thread::Builder::new()
                .name("collector-acker".into())
                .spawn(move || acker.run(rx))?;
            (acker::AckOut::Thread(tx), Some(t))
        } else {
            (acker::AckOut::Inline(Arc::new(acker)), None)
        };
        // WAL checkpoints run on their own thread (below), not in the writer's commits.
        if let Err(e) = store.set_autocheckpoint(0) {
            warn!("cannot turn off automatic checkpoints: {e}");
        }
        let writer = {
            let counters = counters.clone();
            let queue = queue.clone();
            let wcfg = WriterCfg {
                batch_max: cfg.batch_max.max(1),
                delay: cfg.commit_delay,
                retention: cfg.retention,
                retention_interval: cfg.retention_interval,
                observers,
            };
            std::thread::Builder::new()
                .name("collector-writer".into())
                .spawn(move || {
                    let _gone = WriterGone(queue.clone());
                    writer_loop(store, &queue, ack_tx, counters, wcfg)
                })?
        };
        let ckpt_stop = Arc::new(AtomicBool::new(false));
        let checkpointer = match Checkpointer::open(&cfg.db, cfg.sync) {
            Ok(c) => {
                let stop = ckpt_stop.clone();
                if let Err(e) = c.set_journal_size_limit(cfg.wal_max_bytes) {
                    warn!("cannot set journal_size_limit: {e}");
                }
                let wal_max = cfg.wal_max_bytes;
                Some(
                    std::thread::Builder::new()
                        .name("collector-ckpt".into())
                        .spawn(move || checkpoint_loop(c, &stop, wal_max))?,
                )
            }
            Err(e) => {
                // The writer's own automatic checkpoints stay on.
                warn!("cannot open a checkpoint connection: {e}");
                None
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let receiver = {
            let rx = Receiver {
                reasm: Reassembler::new(ReassemblerConfig {
                    max_pending_per_source: cfg.max_pending_per_source.max(1),
                    max_pending_total: cfg.max_pending_total.max(1),
                    ..ReassemblerConfig::default()
                })
                .with_byte_budget(
                    cfg.reassembly_max_bytes.try_into().unwrap_or(usize::MAX),
                    cfg.reassembly_max_bytes_per_source
                        .try_into()
                        .unwrap_or(usize::MAX),
                ),
                reject_warn: RateLimit::new(Duration::from_secs(10)),
                evicted_bytes_seen: 0,
                started: Instant::now(),
                key: cfg.key.clone(),
                counters: counters.clone(),
                queue: queue.clone(),
                out: Vec::with_capacity(mmsg::BATCH),
                evicted_seen: 0,
                expired_seen: 0,
                writer_gone: false,
            };
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("collector-recv".into())
                .spawn(move || {
                    let r = receive_loop(rx, &socket, &stop);
                    let _ = done_tx.send(());
                    r
                })?
        };
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => {}
            // The receiver stopped by itself: the writer died (or the socket failed).
            _ = done_rx => {}
        }
        stop.store(true, Ordering::Relaxed);
        drill_stop.store(true, Ordering::Relaxed);
        info!("stopping: committing queued records");
        let recv_result = receiver
            .join()
            .map_err(|_| ServeError::Writer("the receiver thread panicked".into()))?;
        // The receiver is gone: the queue is closed, the writer drains it, commits, sends the
        // acks and exits.
        queue.close();
        let store = writer
            .join()
            .map_err(|_| ServeError::Writer("panicked".into()))?;
        // With an acker thread: it sends what the writer handed over last, then exits.
        if let Some(a) = acker {
            let _ = a.join();
        }
        if let Some(t) = drill_thread {
            let _ = t.join();
        }
        // The writer (and its event sink) is gone: let the hooks and webhooks finish, for a
        // while, so that their counters below are final.
        dispatcher.finish(Duration::from_secs(5));
        if let Some(m) = metrics_server {
            m.stop();
        }
        ckpt_stop.store(true, Ordering::Relaxed);
        if let Some(c) = checkpointer {
            let _ = c.join();
        }
        let mut store = store.map_err(|e| ServeError::Writer(e.to_string()))?;
        // The last acks_sent (and anything counted since the writer's last commit).
        store
            .commit_batch(&[], &[], &[], &counters.take())
            .map_err(|e| ServeError::Writer(e.to_string()))?;
        recv_result?;
        info!("stopped");
        Ok(())
    }
}

/// The bounded queue from the receiver to the writer: at most `cap` messages. The receiver
/// adds a whole recvmmsg batch under one lock; the writer takes up to a batch at once.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    cap: usize,
    /// Byte budget of the queued messages plus the batch the writer holds.
    max_bytes: usize,
}

#[derive(Default)]
struct QueueState {
    msgs: VecDeque<Msg>,
    /// No more messages will come (the receiver stopped).
    closed: bool,
    /// The writer is gone: nothing will take messages any more.
    writer_gone: bool,
    /// The writer waits for messages.
    waiting: bool,
    /// Bytes of the queued messages and of the batch the writer holds (released by
    /// [`Queue::release`] once the batch is done).
    bytes: usize,
}

impl Queue {
    fn new(cap: usize, max_bytes: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            cap,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves what fits of `msgs` into the queue. Returns how many did not fit (dropped), or
    /// `None` if the writer is gone.
    fn push_all(&self, msgs: &mut Vec<Msg>) -> Option<u64> {
        let mut st = self.lock();
        if st.writer_gone {
            msgs.clear();
            return None;
        }
        let mut dropped = 0;
        for m in msgs.drain(..) {
            let cost = m.cost();
            // Within both budgets; a message bigger than the byte budget still goes into an
            // empty queue, so nothing is refused for good.
            let fits = st.msgs.len() < self.cap
                && (st.bytes.saturating_add(cost) <= self.max_bytes || st.bytes == 0);
            if fits {
                st.bytes += cost;
                st.msgs.push_back(m);
            } else {
                dropped += 1;
            }
        }
        let wake = st.waiting && !st.msgs.is_empty();
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Some(dropped)
    }

    /// Waits up to `timeout` for messages and moves up to `max` of them into `b`. Returns
    /// false once the queue is closed and empty.
    fn take(&self, b: &mut Batch, max: usize, timeout: Duration) -> bool {
        let mut st = self.lock();
        if st.msgs.is_empty() && !st.closed {
            st.waiting = true;
            st = self
                .ready
                .wait_timeout_while(st, timeout, |s| s.msgs.is_empty() && !s.closed)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.waiting = false;
        }
        let n = st.msgs.len().min(max.saturating_sub(b.len()));
        for m in st.msgs.drain(..n) {
            b.push(m);
        }
        !(st.closed && st.msgs.is_empty())
    }

    /// The writer is done with a batch of `bytes`: they leave the byte budget.
    fn release(&self, bytes: usize) {
        if bytes > 0 {
            let mut st = self.lock();
            st.bytes = st.bytes.saturating_sub(bytes);
        }
    }

    /// Bytes queued or held by the writer.
    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Marks the queue's writer gone when the writer thread ends (returns, fails or panics).
struct WriterGone(Arc<Queue>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.writer_gone = true;
        st.msgs.clear();
    }
}
