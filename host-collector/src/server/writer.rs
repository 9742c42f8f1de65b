//! The writer thread: takes what the receiver queued, commits it in one transaction per
//! batch, hands the acks over, and then (never before the acks) feeds the observers: the
//! liveness tracker, the event dispatcher and the metrics.
//!
//! The writer thread commits each batch itself, with SQLite and with PostgreSQL. Committing
//! PostgreSQL batches on several connections at once (so the next batch is written while the
//! last one commits) was tried and measured: one collector acked 32-45k records/s with two
//! committer connections against 47-55k on the writer thread on a quiet machine (smaller
//! commits, more CPU per record in serve and the backend, a thread hand-off per batch), and it
//! let a retransmit's `duplicate` ack overtake the original's `stored`; it is not kept
//! (docs/collector.md, PostgreSQL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::wire::AckStatus;
use tracing::{debug, error, info, warn};

use super::acker::AckOut;
use super::maint::{self, RateLimit};
use super::observe::Observers;
use super::{Ack, Counters, Msg, Queue};
use crate::store::{
    HeartbeatSeen, InsertOutcome, NewRecord, Rejection, Retention, Store, StoreError,
};
use crate::util::now_us;
use std::net::SocketAddr;

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
}

/// A batch committed (or not), for the observers.
struct Done {
    batch: Batch,
    result: Result<Committed, StoreError>,
}

struct Committed {
    took: Duration,
    outcomes: Vec<InsertOutcome>,
    /// The ids of the records stored ([`Store::last_stored_ids`]).
    ids: Vec<i64>,
    followup_steps: super::followup::Stored,
}

/// What commits a batch and sends its acks.
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
    } = wcfg;
    observers.start(&store);
    let committer = Committer {
        acks_out,
        counters: counters.clone(),
        delay,
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
        // Group commit: take whatever is queued, up to batch_max.
        closed = !queue.take(&mut b, batch_max, tick);
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
        let result = committer.commit(&mut store, &batch, &taken);
        after.done(Done { batch, result });
    }
    after.observers.finish(&mut store);
    Ok(store)
}
