//! The writer thread: takes what the receiver queued, commits it in one transaction per
//! batch, hands the acks over, and then (never before the acks) feeds the observers: the
//! liveness tracker, the event dispatcher and the metrics.
//!
//! SQLite has one writer: the writer thread commits each batch itself, and so it does with
//! PostgreSQL by default. With `CANARY_PG_COMMITTERS=N` (N > 0) the writer thread hands each
//! batch to one of N committer threads, each with its own connection, so that the next
//! batch is written while the last one commits (the database's unique key and `ON CONFLICT
//! DO NOTHING` dedupe across the connections, as across collectors). A committer sends the
//! acks of its batch right after its own commit; the observers are still fed from the
//! writer thread alone, once per stored record, when it hears the batch is done.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use capture::wire::AckStatus;
use tracing::{debug, error, info, warn};

use super::acker::AckOut;
use super::maint::{self, RateLimit};
use super::observe::Observers;
use super::{Ack, Counters, Msg, Queue};
use crate::store::{
    HeartbeatSeen, InsertOutcome, NewRecord, Rejection, Retention, StepView, Store, StoreError,
};
use crate::util::now_us;
use std::net::SocketAddr;

/// How many PostgreSQL connections commit batches at once in one `serve` (see the module
/// comment), besides the writer thread's own: none. Measured on this 2-core machine
/// (docs/collector.md, session 12), committers helped only while other load saturated the
/// cores; on a quieter machine one collector acked 47-55k records/s committing on the
/// writer thread against 32-45k with two committers (smaller commits, more CPU per record
/// in serve and the backend, a thread hand-off per batch).
pub(super) const PG_COMMITTERS: usize = 0;

/// Overrides [`PG_COMMITTERS`]: for measuring (`scripts/bench-collector`) and tests, not a
/// setting.
const PG_COMMITTERS_ENV: &str = "CANARY_PG_COMMITTERS";

#[derive(Default)]
pub(super) struct Batch {
    records: Vec<NewRecord>,
    record_peers: Vec<SocketAddr>,
    rejections: Vec<Rejection>,
    reject_peers: Vec<SocketAddr>,
    heartbeats: Vec<HeartbeatSeen>,
    /// Follow-ups, stored after the batch's records (`super::followup`).
    followups: Vec<super::followup::Pending>,
    /// Bytes of the messages taken (see [`Msg::cost`]); released to the queue when done.
    bytes: usize,
}

impl Batch {
    pub(super) fn push(&mut self, m: Msg) {
        self.bytes += m.cost();
        match m {
            Msg::Record(r, p) => {
                self.records.push(*r);
                self.record_peers.push(p);
            }
            Msg::Reject(r, p) => {
                self.rejections.push(*r);
                self.reject_peers.push(p);
            }
            Msg::Heartbeat(h) => self.heartbeats.push(h),
            Msg::Followup(f) => self.followups.push(*f),
        }
    }
    pub(super) fn len(&self) -> usize {
        self.records.len() + self.rejections.len() + self.heartbeats.len() + self.followups.len()
    }
    fn clear(&mut self) {
        self.records.clear();
        self.record_peers.clear();
        self.rejections.clear();
        self.reject_peers.clear();
        self.heartbeats.clear();
        self.followups.clear();
    }
}

/// The writer thread's settings.
pub(super) struct WriterCfg {
    pub(super) batch_max: usize,
    pub(super) delay: Option<Duration>,
    pub(super) retention: Retention,
    pub(super) retention_interval: Duration,
    /// Liveness, events and metrics, fed after each commit's acks are handed over.
    pub(super) observers: Observers,
    /// How many more connections commit batches (PostgreSQL, [`Store::writer_siblings`];
    /// SQLite has none): without, the writer thread commits each batch itself.
    pub(super) committers: usize,
}

/// A batch committed (or not), back to the writer thread for the observers.
struct Done {
    batch: Batch,
    result: Result<Committed, StoreError>,
}

struct Committed {
    took: Duration,
    outcomes: Vec<InsertOutcome>,
    /// The ids of the records stored ([`Store::last_stored_ids`]).
    ids: Vec<i64>,
    followup_steps: Vec<StepView>,
}

/// What commits a batch: the same for the writer thread and the committer threads.
struct Committer {
    acks_out: AckOut,
    counters: Arc<Counters>,
    /// Test hook: sleep this long before each commit of records.
    delay: Option<Duration>,
}

impl Committer {
    /// Commits `b` with the counters `taken` (given back on failure), then sends its acks:
    /// an ack never leaves before the commit that holds its record.
    fn commit(
        &self,
        store: &mut Store,
        b: &Batch,
        taken: &[(&'static str, u64)],
    ) -> Result<Committed, StoreError> {
        if let Some(d) = self.delay {
            if !b.records.is_empty() || !b.rejections.is_empty() {
                debug!(
                    records = b.records.len(),
                    "test hook: delaying commit by {d:?}"
                );
                std::thread::sleep(d);
            }
        }
        let t_commit = Instant::now();
        let outcomes = match store.commit_batch(&b.records, &b.rejections, &b.heartbeats, taken) {
            Ok(o) => o,
            Err(e) => {
                // Nothing is acked: the senders retransmit, and a later batch tries again.
                self.counters.restore(taken);
                return Err(e);
            }
        };
        let mut acks = Vec::with_capacity(b.records.len() + b.rejections.len());
        for ((r, peer), outcome) in b.records.iter().zip(&b.record_peers).zip(&outcomes) {
            let status = match outcome {
                InsertOutcome::Stored => AckStatus::Stored,
                InsertOutcome::Duplicate => AckStatus::Duplicate,
            };
            acks.push(Ack {
                key: r.key,
                status,
                peer: *peer,
                followup_reported: 0,
            });
        }
        for (r, peer) in b.rejections.iter().zip(&b.reject_peers) {
            acks.push(Ack {
                key: r.key,
                status: AckStatus::Rejected,
                peer: *peer,
                followup_reported: 0,
            });
        }
        let ids = store.last_stored_ids().to_vec();
        let followup_steps = super::followup::store_all(store, &b.followups, &mut acks);
        if !acks.is_empty() {
            self.acks_out.send(acks);
        }
        Ok(Committed {
            took: t_commit.elapsed(),
            outcomes,
            ids,
            followup_steps,
        })
    }
}

/// A batch for a committer thread, with the counters taken for it.
struct Job {
    batch: Batch,
    taken: Vec<(&'static str, u64)>,
}

/// The committer threads: each takes a job, commits it on its own connection, acks it and
/// reports it done. The writer hands out a job only to an idle one.
struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    busy: usize,
}

impl Pool {
    fn start(stores: Vec<Store>, c: &Committer) -> std::io::Result<Pool> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let mut threads = Vec::with_capacity(stores.len());
        for (i, mut store) in stores.into_iter().enumerate() {
            let (jobs, done) = (job_rx.clone(), done_tx.clone());
            let c = Committer {
                acks_out: c.acks_out.clone(),
                counters: c.counters.clone(),
                delay: c.delay,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("collector-db{}", i + 1))
                    .spawn(move || loop {
                        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(Job { batch, taken }) = job else {
                            return; // the writer is done
                        };
                        let result = c.commit(&mut store, &batch, &taken);
                        if done.send(Done { batch, result }).is_err() {
                            return;
                        }
                    })?,
            );
        }
        Ok(Pool {
            jobs: Some(job_tx),
            done: done_rx,
            threads,
            busy: 0,
        })
    }

    fn idle(&self) -> bool {
        self.busy < self.threads.len()
    }

    /// Hands `batch` to an idle committer (see [`Pool::idle`]).
    fn send(&mut self, batch: Batch, taken: Vec<(&'static str, u64)>) -> Result<(), StoreError> {
        let sent = self
            .jobs
            .as_ref()
            .map(|j| j.send(Job { batch, taken }).is_ok());
        match sent {
            Some(true) => {
                self.busy += 1;
                Ok(())
            }
            // Every committer thread is gone (they panicked).
            _ => Err(StoreError::Postgres("the committer threads stopped".into())),
        }
    }

    /// A batch done, waiting up to `timeout` (none: do not wait). An error when a committer
    /// thread died with a batch (it panicked): its records are never acked.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<Option<Done>, StoreError> {
        if self.busy == 0 {
            return Ok(None);
        }
        let d = match timeout {
            None => self.done.try_recv().ok(),
            Some(t) => self.done.recv_timeout(t).ok(),
        };
        match d {
            Some(d) => {
                self.busy -= 1;
                Ok(Some(d))
            }
            None if self.threads.iter().any(|t| t.is_finished()) => Err(StoreError::Postgres(
                "a committer thread stopped (it panicked)".into(),
            )),
            None => Ok(None),
        }
    }

    /// Waits for every batch handed out, then ends the threads.
    fn finish(mut self, mut each: impl FnMut(Done)) -> Result<(), StoreError> {
        while self.busy > 0 {
            if let Some(d) = self.wait(Some(Duration::from_millis(200)))? {
                each(d);
            }
        }
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        Ok(())
    }
}

/// The writer thread's side of a batch done: its observers, the queue's budget, warnings.
struct After<'a> {
    queue: &'a Queue,
    observers: Observers,
    commit_warn: RateLimit,
    /// Emptied batches, to be filled again.
    spare: Vec<Batch>,
}

impl After<'_> {
    fn done(&mut self, d: Done) {
        let Done { mut batch, result } = d;
        match result {
            Ok(c) => {
                // After the acks: nothing here can delay them.
                self.observers.committed(
                    c.took,
                    &batch.records,
                    &c.outcomes,
                    &c.ids,
                    &batch.heartbeats,
                );
                self.observers.followups_stored(&c.followup_steps);
            }
            Err(e) => {
                self.observers.commit_failed();
                if let Some(n) = self.commit_warn.check() {
                    error!(
                        "commit of {} records failed: {e}{}",
                        batch.records.len(),
                        maint::suppressed(n)
                    );
                }
                // The database is probably away: do not hammer it.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        batch.clear();
        self.queue.release(std::mem::take(&mut batch.bytes));
        self.spare.push(batch);
    }
}

pub(super) fn writer_loop(
    mut store: Store,
    queue: &Queue,
    acks_out: AckOut,
    counters: Arc<Counters>,
    wcfg: WriterCfg,
) -> Result<Store, StoreError> {
    let WriterCfg {
        batch_max,
        delay,
        retention,
        retention_interval,
        mut observers,
        committers,
    } = wcfg;
    observers.start(&store);
    let committer = Committer {
        acks_out,
        counters: counters.clone(),
        delay,
    };
    let committers = std::env::var(PG_COMMITTERS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(committers);
    let committers = store.writer_siblings(committers).unwrap_or_else(|e| {
        warn!("committing on one connection: cannot open more: {e}");
        Vec::new()
    });
    let mut pool = match committers.is_empty() {
        true => None,
        false => Some(Pool::start(committers, &committer).map_err(|e| {
            StoreError::Postgres(format!("cannot start the committer threads: {e}"))
        })?),
    };
    let mut after = After {
        queue,
        observers,
        commit_warn: RateLimit::new(Duration::from_secs(10)),
        spare: Vec::new(),
    };
    let mut b = Batch::default();
    let mut closed = false;
    let mut last_commit = Instant::now();
    let tick = Duration::from_millis(200);
    let mut retention_warn = RateLimit::new(Duration::from_secs(60));
    // Retention runs on the writer's connection (the one writer), at start and then
    // periodically, between batches.
    let mut next_retention = Instant::now();
    while !closed {
        if !retention.is_none() && Instant::now() >= next_retention {
            next_retention = Instant::now() + retention_interval;
            match store.apply_retention(&retention, now_us()) {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "retention: deleted the oldest records"),
                Err(e) => {
                    if let Some(n) = retention_warn.check() {
                        warn!("retention: {e}{}", maint::suppressed(n));
                    }
                }
            }
        }
        // With committers: observe the batches done; with all of them busy, wait for one.
        let mut take_wait = tick;
        if let Some(p) = &mut pool {
            while let Some(d) = p.wait(None)? {
                after.done(d);
            }
            if !p.idle() {
                if let Some(d) = p.wait(Some(tick))? {
                    after.done(d);
                }
                after.observers.tick(&mut store, queue.bytes());
                continue;
            }
            if p.busy > 0 {
                // A batch in flight: look again soon, so its observers are not held back
                // by a quiet queue.
                take_wait = Duration::from_millis(2);
            }
        }
        // Group commit: take whatever is queued, up to batch_max.
        closed = !queue.take(&mut b, batch_max, take_wait);
        after.observers.tick(&mut store, queue.bytes());
        if b.len() == 0 && !closed && last_commit.elapsed() < tick {
            continue;
        }
        let taken = counters.take();
        if b.len() == 0 && taken.iter().all(|(_, v)| *v == 0) {
            last_commit = Instant::now();
            continue;
        }
        last_commit = Instant::now();
        let next = after.spare.pop().unwrap_or_default();
        let batch = std::mem::replace(&mut b, next);
        match &mut pool {
            Some(p) => p.send(batch, taken)?,
            None => {
                let result = committer.commit(&mut store, &batch, &taken);
                after.done(Done { batch, result });
            }
        }
    }
    if let Some(p) = pool {
        p.finish(|d| after.done(d))?;
    }
    after.observers.finish(&mut store);
    Ok(store)
}
