//! What the writer thread does after each commit's acks are handed over: liveness, events,
//! metrics and health. Nothing here can hold back an ack: events go to a bounded queue
//! without waiting, and liveness rows are written between batches, at most once a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::maint::{suppressed, RateLimit};
use crate::events::{Event, EventSink, StateEvent, StoredPath, StoredRecord};
use crate::liveness::{Change, LivenessConfig, State, Tracker};
use crate::metrics::{Health, Metrics};
use crate::store::{Col, HeartbeatSeen, InsertOutcome, NewRecord, Store};
use crate::util::now_us;

use super::drills::DrillBook;

/// How often silence is checked.
const TICK: Duration = Duration::from_millis(250);
/// How often changed liveness rows are written.
const SAVE: Duration = Duration::from_secs(1);

pub(crate) struct Observers {
    tracker: Tracker,
    counters: Arc<super::Counters>,
    events: Option<EventSink>,
    metrics: Option<Metrics>,
    health: Arc<Health>,
    next_tick: Instant,
    next_save: Instant,
    save_warn: RateLimit,
    counts: [i64; 5],
    /// With scheduled drills: what the drill scheduler shares with the writer.
    drills: Option<Arc<DrillBook>>,
    next_live: Instant,
}

impl Observers {
    pub(crate) fn new(
        liveness: LivenessConfig,
        counters: Arc<super::Counters>,
        events: Option<EventSink>,
        metrics: Option<Metrics>,
        health: Arc<Health>,
    ) -> Observers {
        Observers {
            tracker: Tracker::new(liveness),
            counters,
            events,
            metrics,
            health,
            next_tick: Instant::now(),
            next_save: Instant::now() + SAVE,
            save_warn: RateLimit::new(Duration::from_secs(60)),
            counts: [0; 5],
            drills: None,
            next_live: Instant::now(),
        }
    }

    pub(crate) fn with_drills(mut self, book: Option<Arc<DrillBook>>) -> Observers {
        self.drills = book;
        self
    }

    /// Loads the canaries an earlier run stored.
    pub(crate) fn start(&mut self, store: &Store) {
        match store.liveness() {
            Ok(rows) => self.tracker.load(rows),
            Err(e) => warn!("cannot load the canaries' liveness: {e}"),
        }
        for (s, n) in self.tracker.counts() {
            self.counts[idx(s)] = n as i64;
        }
        self.publish_counts();
        self.health.writer_beat();
    }

    fn publish_counts(&self) {
        if let Some(m) = &self.metrics {
            let c: Vec<(State, u64)> = State::ALL
                .into_iter()
                .map(|s| (s, self.counts[idx(s)].max(0) as u64))
                .collect();
            m.set_canaries(&c);
        }
    }

    fn change(&mut self, c: Change) {
        if let Some(f) = c.from {
            self.counts[idx(f)] -= 1;
        }
        self.counts[idx(c.to)] += 1;
        if let Some(ev) = &mut self.events {
            ev.send(Event::CanaryState(StateEvent::from(&c)));
        }
    }

    /// Each round of the writer's loop: silence, liveness rows, gauges.
    pub(crate) fn tick(&mut self, store: &mut Store, queue_bytes: usize) {
        self.health.writer_beat();
        if let Some(m) = &self.metrics {
            m.set_queue_bytes(queue_bytes);
        }
        let now = Instant::now();
        if let Some(ev) = &mut self.events {
            // The summary of the records not logged one by one, once its second is over.
            ev.tick(now);
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            let mut changes = self.tracker.tick(now_us());
            if let Some(book) = &self.drills {
                for a in book.overdue(now) {
                    changes.extend(self.tracker.drill_failed(&a, now_us()));
                }
                if now >= self.next_live {
                    self.next_live = now + Duration::from_secs(1);
                    book.set_live(self.tracker.live_addresses());
                }
            }
            let any = !changes.is_empty();
            for c in changes {
                self.change(c);
            }
            if any {
                self.publish_counts();
            }
        }
        if now >= self.next_save {
            self.next_save = now + SAVE;
            self.save(store);
        }
    }

    fn save(&mut self, store: &mut Store) {
        let rows = self.tracker.take_dirty();
        if let Err(e) = store.save_liveness(&rows) {
            self.tracker.restore_dirty(&rows);
            if let Some(n) = self.save_warn.check() {
                warn!("cannot store the canaries' liveness: {e}{}", suppressed(n));
            }
        }
    }

    /// After a commit and its acks: the step times of the follow-ups attached in it, into the
    /// step metrics (their records, sealed at the panic screen, carry freeze only), and a
    /// `crash_path` event for each (its record's id and source as `Store::put_followup`
    /// found them: nothing is read here).
    pub(crate) fn followups_stored(&mut self, f: &super::followup::Stored) {
        if let (Some(m), false) = (&self.metrics, f.timed.is_empty()) {
            m.observe_steps(&f.timed);
        }
        let Some(ev) = &mut self.events else {
            return;
        };
        let now = Instant::now();
        for p in &f.paths {
            ev.path(
                StoredPath {
                    id: Some(p.record.id),
                    source: p.record.source.clone(),
                    received_at_us: p.received_unix_ms.saturating_mul(1000),
                    replaced: p.replaced,
                    followup: p.followup,
                },
                now,
            );
        }
    }

    pub(crate) fn commit_failed(&self) {
        self.health.committed(false);
    }

    /// After a commit and its acks: events for the stored records, liveness.
    pub(crate) fn committed(
        &mut self,
        took: Duration,
        records: &[NewRecord],
        outcomes: &[InsertOutcome],
        ids: &[i64],
        heartbeats: &[HeartbeatSeen],
    ) {
        self.health.committed(true);
        if let Some(m) = &self.metrics {
            m.observe_commit(took);
        }
        let mut changed = false;
        // The stored records' events go to the dispatcher together (one hand-off), each
        // still before any state change that follows it; only what the dispatcher needs of
        // each (`EventSink::stored`: nothing for a record without a line of its own when
        // neither step metrics nor hooks want it).
        let mut events = Vec::new();
        let now = Instant::now();
        let stored = records
            .iter()
            .zip(outcomes)
            .filter(|(_, o)| **o == InsertOutcome::Stored)
            .map(|(r, _)| r);
        for (r, &id) in stored.zip(ids) {
            let t = &r.text;
            let source = t.get(Col::Source).unwrap_or("");
            let kind = t.get(Col::Kind).unwrap_or("");
            let drill = kind == "drill" && self.drills.as_ref().is_some_and(|b| b.answered(source));
            if let Some(ev) = &mut self.events {
                // Hex, times and addresses are rendered by the dispatcher, off this thread.
                ev.stored(id, r, drill, now, &mut events);
            }
            let arch = arch_code(t.get(Col::Arch).unwrap_or(""));
            if let Some(c) =
                self.tracker
                    .record_stored(source, r.key.boot_id, arch, id, r.received_at_us)
            {
                self.flush_stored(&mut events);
                self.change(c);
                changed = true;
            }
        }
        self.flush_stored(&mut events);
        for h in heartbeats {
            if let Some(c) = self.tracker.heartbeat(h) {
                self.change(c);
                changed = true;
            }
        }
        if changed {
            self.publish_counts();
        }
        let untracked = self.tracker.take_untracked();
        if untracked > 0 {
            super::Counters::add(&self.counters.canaries_untracked, untracked);
        }
    }

    fn flush_stored(&self, events: &mut Vec<StoredRecord>) {
        if let Some(ev) = &self.events {
            if !events.is_empty() {
                ev.send_stored(std::mem::take(events));
            }
        }
    }

    /// At exit: the last liveness rows.
    pub(crate) fn finish(&mut self, store: &mut Store) {
        self.save(store);
        self.health.writer_gone();
    }
}

fn idx(s: State) -> usize {
    State::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

/// The wire code of an architecture name (0 if unknown).
fn arch_code(name: &str) -> u8 {
    use capture::record::Arch;
    match name {
        "x86_64" => Arch::X86_64.into(),
        "aarch64" => Arch::Aarch64.into(),
        _ => 0,
    }
}
