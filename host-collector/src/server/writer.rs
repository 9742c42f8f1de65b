//! The writer thread: takes what the receiver queued, commits it in one transaction per
//! batch, hands the acks over, and then (never before the acks) feeds the observers: the
//! liveness tracker, the event dispatcher and the metrics.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::wire::AckStatus;
use tracing::{debug, error, info, warn};

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

pub(super) fn writer_loop(
    mut store: Store,
    queue: &Queue,
    acks_out: mpsc::Sender<Vec<Ack>>,
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
    let mut b = Batch::default();
    let mut closed = false;
    let mut last_commit = Instant::now();
    let tick = Duration::from_millis(200);
    let mut commit_warn = RateLimit::new(Duration::from_secs(10));
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
        observers.tick(&mut store, queue.bytes());
        if b.len() == 0 && !closed && last_commit.elapsed() < tick {
            continue;
        }
        if let Some(d) = delay {
            if !b.records.is_empty() || !b.rejections.is_empty() {
                debug!(
                    records = b.records.len(),
                    "test hook: delaying commit by {d:?}"
                );
                std::thread::sleep(d);
            }
        }
        let taken = counters.take();
        if b.len() == 0 && taken.iter().all(|(_, v)| *v == 0) {
            last_commit = Instant::now();
            continue;
        }
        let t_commit = Instant::now();
        let outcomes = match store.commit_batch(&b.records, &b.rejections, &b.heartbeats, &taken) {
            Ok(o) => o,
            Err(e) => {
                observers.commit_failed();
                // Nothing is acked: the senders retransmit, and the next batch tries again.
                if let Some(n) = commit_warn.check() {
                    error!(
                        "commit of {} records failed: {e}{}",
                        b.records.len(),
                        maint::suppressed(n)
                    );
                }
                counters.restore(&taken);
                b.clear();
                queue.release(std::mem::take(&mut b.bytes));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        last_commit = Instant::now();
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
        let followup_steps = super::followup::store_all(&mut store, &b.followups, &mut acks);
        if !acks.is_empty() {
            // Fails only when the receiver is gone, i.e. at exit.
            let _ = acks_out.send(acks);
        }
        // After the acks: nothing here can delay them.
        observers.committed(
            t_commit.elapsed(),
            &b.records,
            &outcomes,
            store.last_stored_ids(),
            &b.heartbeats,
        );
        observers.followups_stored(&followup_steps);
        b.clear();
        queue.release(std::mem::take(&mut b.bytes));
    }
    observers.finish(&mut store);
    Ok(store)
}
