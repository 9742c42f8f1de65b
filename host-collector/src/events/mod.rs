//! Events out of `serve`: one per stored crash record (`crash_stored`), one per follow-up
//! frame stored or replacing a less complete one (`crash_path`: the steps after the seal,
//! whether the path reached its end step and the first step that failed; see `path.rs`) and
//! one per canary state change (`canary_state`).
//!
//! The writer thread hands each event (after the acks of its commit) to a bounded queue
//! without waiting ([`EventSink::send`]; the stored records of one commit as one batch,
//! [`EventSink::stored`] then [`EventSink::send_stored`], each counted against the bounds; a
//! full queue drops the event and counts it as `events_dropped`). The sink decides which
//! stored records get a log line of their own (`log.rs`) and copies of each record only what
//! the dispatcher will use (the line's columns, the steps for `--metrics`, everything for
//! hooks and webhooks): a record that needs nothing is not queued at all. A follow-up
//! ([`EventSink::path`]) is its frame and its record's id and source (as `Store::put_followup`
//! reported them), queued when it gets a line or hooks or webhooks want it. The dispatcher
//! thread then, for each event:
//! 1. logs one INFO line (`crash stored id=… boot=… host=… kind=… message=…`, `crash path
//!    id=… boot=… seq=… host=… complete=… reported=… failed=…`; logfmt-style `key=value`,
//!    values with spaces quoted, every control character escaped) under the target
//!    `host_collector::events`, which `serve` logs by default (journald reads stderr); at most
//!    `log_rate` "crash stored" and "crash path" lines a second (one budget), those beyond it
//!    summed up in one line a second for each kind and at exit (state changes always get
//!    their line); the step metrics (`--metrics`) see every record;
//! 2. with `--on-event CMD`, queues it for CMD run by the system shell (`sh -c` on Unix,
//!    `cmd /C` on Windows) with the event as one JSON object on stdin: at most
//!    `hook_concurrency` commands run at once, each killed after `hook_timeout`; a full
//!    queue drops (`hook_dropped`), a failure, non-zero exit or timeout counts
//!    `hook_failures`;
//! 3. with `--webhook URL`, queues the same JSON for an HTTP POST (`Content-Type:
//!    application/json`), retried with exponential backoff; a full queue drops
//!    (`webhook_dropped`), a POST that failed every attempt counts `webhook_failures`.

mod dispatch;
mod line;
mod log;
mod outside;
mod path;
mod record;
mod steps;
#[cfg(test)]
mod tests;

pub use dispatch::Dispatcher;
pub use line::log_line;
use log::StoredLines;
pub use log::{LineSink, Tracing, DEFAULT_LOG_RATE};
pub use path::{PathEvent, StoredPath};
pub use record::{StoredRecord, Wanted};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::liveness::{Change, State};
use crate::server::Counters;
use crate::store::{NewRecord, StepView};
use crate::util::{format_time_us, hex};

/// The tracing target of event lines.
pub const TARGET: &str = "host_collector::events";

/// A stored crash record, as sent out.
#[derive(Debug, Clone, Serialize)]
pub struct CrashEvent {
    pub id: i64,
    pub boot_id: String,
    pub seq: u32,
    pub record_crc: String,
    /// The sending host (its IP address; the record's own host identity once it has one).
    pub host: String,
    pub source: String,
    pub received_at: String,
    pub received_at_us: i64,
    pub arch: String,
    pub kind: String,
    pub message: String,
    pub location: Option<String>,
    /// The record answers a drill `serve --drill-every` sent.
    pub drill: bool,
    /// Panic-path steps (filled by the dispatcher from `steps_json`, off the writer).
    pub steps: Vec<StepView>,
    #[serde(skip)]
    pub steps_json: String,
}

/// A canary's state change, as sent out.
#[derive(Debug, Clone, Serialize)]
pub struct StateEvent {
    pub address: String,
    pub host: String,
    pub boot_id: String,
    pub from: Option<State>,
    pub to: State,
    pub at: String,
    pub at_us: i64,
    pub reason: String,
    pub interval_ms: u64,
    pub last_seen: String,
    pub last_seen_us: i64,
    pub record_id: Option<i64>,
}

impl From<&Change> for StateEvent {
    fn from(c: &Change) -> StateEvent {
        StateEvent {
            address: c.address.clone(),
            host: host_of(&c.address),
            boot_id: hex(&c.boot_id),
            from: c.from,
            to: c.to,
            at: format_time_us(c.at_us),
            at_us: c.at_us,
            reason: c.reason.clone(),
            interval_ms: c.interval_ms,
            last_seen: format_time_us(c.last_seen_us),
            last_seen_us: c.last_seen_us,
            record_id: c.record_id,
        }
    }
}

/// One event: `{"event": "crash_stored", ...}`, `{"event": "crash_path", ...}` or
/// `{"event": "canary_state", ...}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    CrashStored(CrashEvent),
    CrashPath(PathEvent),
    CanaryState(StateEvent),
}

/// The host part of `IP:port` (`[v6]:port` too).
pub fn host_of(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => addr.to_string(),
    }
}

/// Where events go besides the log.
#[derive(Debug, Clone)]
pub struct EventConfig {
    /// CMD run per event by the system shell (`sh -c` on Unix, `cmd /C` on Windows), the
    /// event as JSON on stdin.
    pub hook: Option<String>,
    pub hook_concurrency: usize,
    pub hook_timeout: Duration,
    pub hook_queue: usize,
    /// `http://` URL to POST each event to.
    pub webhook: Option<String>,
    pub webhook_queue: usize,
    pub webhook_timeout: Duration,
    /// Attempts per event (the first included).
    pub webhook_attempts: u32,
    /// Delay before the first retry; doubles each retry, at most 30 s.
    pub webhook_backoff: Duration,
    /// Events waiting for the dispatcher, and their bytes.
    pub queue: usize,
    pub queue_max_bytes: usize,
    /// At most this many "crash stored" lines a second; the records beyond it are summed up
    /// in one line a second. 0: every record gets its line. See [`DEFAULT_LOG_RATE`].
    pub log_rate: u32,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            hook: None,
            hook_concurrency: 4,
            hook_timeout: Duration::from_secs(10),
            hook_queue: 1024,
            webhook: None,
            webhook_queue: 1024,
            webhook_timeout: Duration::from_secs(5),
            webhook_attempts: 5,
            webhook_backoff: Duration::from_millis(500),
            queue: 65536,
            queue_max_bytes: 16 << 20,
            log_rate: DEFAULT_LOG_RATE,
        }
    }
}

/// What waits for the dispatcher (boxed: the queue's slots stay small): one event (and
/// whether it gets its log line), the events of one commit's stored records (one hand-off, one
/// wake-up per commit), a stored follow-up (and whether it gets its log line), or a log line
/// (the summary of the records or follow-ups not logged one by one).
enum Queued {
    Event(Box<Event>, bool),
    Stored(Vec<StoredRecord>),
    Path(Box<StoredPath>, bool),
    Line(String),
}

/// Room in the dispatcher's channel beyond the event budget, for [`Queued::Line`]s (at most one
/// a second).
const LINE_ROOM: usize = 64;

/// The writer's end: never blocks.
pub struct EventSink {
    tx: SyncSender<(Queued, usize)>,
    counters: Arc<Counters>,
    /// Bytes of the events queued (any sender chooses a record's text when no key is set).
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Events queued (a batch counts each of its records), at most `max_events`.
    events: Arc<AtomicUsize>,
    max_events: usize,
    /// Which stored records get their own log line.
    lines: StoredLines,
    /// The dispatcher feeds the step metrics (`--metrics`) / sends every event to hooks and
    /// webhooks: every stored record is wanted, with its steps / with all its columns.
    want_steps: bool,
    want_events: bool,
}

impl Event {
    /// Bytes the event holds, roughly (for the queue's byte budget).
    fn cost(&self) -> usize {
        256 + match self {
            Event::CrashStored(c) => {
                c.message.len()
                    + c.steps_json.len()
                    + c.location.as_ref().map_or(0, String::len)
                    + c.kind.len()
                    + c.source.len()
            }
            Event::CrashPath(p) => {
                p.source.len() + p.steps.iter().map(|s| 48 + s.outcome.len()).sum::<usize>()
            }
            Event::CanaryState(s) => s.reason.len() + s.address.len(),
        }
    }
}

impl EventSink {
    /// Queues `e` without waiting; a full queue (in events or bytes) drops it, counted. A
    /// stored record's line counts against the log rate (a state change's never does).
    pub fn send(&mut self, e: Event) {
        let line = match &e {
            Event::CrashStored(c) => self.admit(c.id, Instant::now()),
            Event::CrashPath(p) => {
                let (line, summary) = self.lines.admit_path(p.id, Instant::now());
                summary.into_iter().for_each(|s| self.send_line(s));
                line
            }
            Event::CanaryState(_) => true,
        };
        let cost = e.cost();
        self.queue(Queued::Event(Box::new(e), line), cost, 1);
    }

    /// Adds stored record `id` (stored at `now`) to `batch`, with what the dispatcher needs of
    /// it (nothing at all for a record without a line of its own, when neither step metrics
    /// nor hooks want it). The summary of the records before it not logged one by one, if
    /// their second is over, is queued first, after what `batch` holds.
    pub fn stored(
        &mut self,
        id: i64,
        r: &NewRecord,
        drill: bool,
        now: Instant,
        batch: &mut Vec<StoredRecord>,
    ) {
        let (line, summary) = self.lines.admit(id, now);
        if !summary.is_empty() {
            self.send_stored(std::mem::take(batch));
            summary.into_iter().for_each(|s| self.send_line(s));
        }
        let want = Wanted {
            line,
            steps: self.want_steps,
            event: self.want_events,
        };
        if !want.none() {
            batch.push(StoredRecord::new(id, r, drill, want));
        }
    }

    /// Whether stored record `id` gets its own line; queues the summary before it if due.
    fn admit(&mut self, id: i64, now: Instant) -> bool {
        let (line, summary) = self.lines.admit(id, now);
        summary.into_iter().for_each(|s| self.send_line(s));
        line
    }

    /// A follow-up stored at `now` (after the commit's acks): its `crash_path` event, with its
    /// own line if the log rate admits it (the line counts against the same budget as the
    /// "crash stored" lines) and whole if hooks or webhooks want it; nothing is queued when
    /// neither.
    pub fn path(&mut self, p: StoredPath, now: Instant) {
        let (line, summary) = self.lines.admit_path(p.id, now);
        summary.into_iter().for_each(|s| self.send_line(s));
        if line || self.want_events {
            let cost = p.cost();
            self.queue(Queued::Path(Box::new(p), line), cost, 1);
        }
    }

    /// Between commits: the summary of the records not logged one by one, once their second
    /// is over.
    pub fn tick(&mut self, now: Instant) {
        for s in self.lines.tick(now) {
            self.send_line(s);
        }
    }

    /// A summary line, outside the event budgets (one a second at most, the channel has
    /// [`LINE_ROOM`] for them); should the channel be full all the same, written from here.
    fn send_line(&self, line: String) {
        match self.tx.try_send((Queued::Line(line), 0)) {
            Ok(()) => {}
            Err(TrySendError::Full((Queued::Line(l), _))) => {
                tracing::info!(target: TARGET, "{l}");
            }
            // The dispatcher is gone (it only goes after the sink).
            Err(_) => {}
        }
    }

    /// Queues the events of one commit's stored records, as [`EventSink::send`] each: those
    /// that fit the budgets (in order) go, the rest are dropped and counted.
    pub fn send_stored(&self, mut rs: Vec<StoredRecord>) {
        if rs.is_empty() {
            return;
        }
        // The writer is the only sender and the dispatcher only releases: what fits now
        // still fits when queued.
        let (mut bytes, mut events) = (
            self.bytes.load(Ordering::Acquire),
            self.events.load(Ordering::Acquire),
        );
        let mut cost = 0;
        let mut fit = 0;
        for r in &rs {
            let c = r.cost();
            if bytes.saturating_add(c) > self.max_bytes || events >= self.max_events {
                break;
            }
            (bytes, events) = (bytes + c, events + 1);
            cost += c;
            fit += 1;
        }
        let dropped = rs.len() - fit;
        rs.truncate(fit);
        if dropped > 0 {
            Counters::add(&self.counters.events_dropped, dropped as u64);
        }
        if fit > 0 {
            self.queue(Queued::Stored(rs), cost, fit);
        }
    }

    fn queue(&self, e: Queued, cost: usize, n: usize) {
        let before = self.bytes.fetch_add(cost, Ordering::AcqRel);
        let queued = self.events.fetch_add(n, Ordering::AcqRel);
        let release = || {
            self.bytes.fetch_sub(cost, Ordering::AcqRel);
            self.events.fetch_sub(n, Ordering::AcqRel);
            Counters::add(&self.counters.events_dropped, n as u64)
        };
        if before.saturating_add(cost) > self.max_bytes
            || queued.saturating_add(n) > self.max_events
        {
            return release();
        }
        match self.tx.try_send((e, cost)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => release(),
        }
    }
}

impl Drop for EventSink {
    /// At exit: the summary still pending (no count of records not logged is lost).
    fn drop(&mut self) {
        for s in self.lines.flush(Instant::now()) {
            self.send_line(s);
        }
    }
}
