//! Events out of `serve`: one per stored crash record and one per canary state change.
//!
//! The writer thread hands each event (after the acks of its commit) to a bounded queue
//! without waiting ([`EventSink::send`]; the stored records of one commit as one batch,
//! [`EventSink::send_stored`], each counted against the bounds; a full queue drops the event
//! and counts it as `events_dropped`). The dispatcher thread then, for each event:
//! 1. logs one INFO line (`crash stored id=… boot=… host=… kind=… message=…`, logfmt-style
//!    `key=value`, values with spaces quoted, every control character escaped) under the
//!    target `host_collector::events`, which `serve` logs by default (journald reads stderr);
//! 2. with `--on-event CMD`, queues it for `sh -c CMD` with the event as one JSON object on
//!    stdin: at most `hook_concurrency` commands run at once, each killed after
//!    `hook_timeout`; a full queue drops (`hook_dropped`), a failure, non-zero exit or
//!    timeout counts `hook_failures`;
//! 3. with `--webhook URL`, queues the same JSON for an HTTP POST (`Content-Type:
//!    application/json`), retried with exponential backoff; a full queue drops
//!    (`webhook_dropped`), a POST that failed every attempt counts `webhook_failures`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use crate::liveness::{Change, State};
use crate::metrics::Metrics;
use crate::output::esc;
use crate::server::Counters;
use crate::store::{Col, NewRecord, RecordKey, RowText, StepView};
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

/// A stored record as the writer queues it: the few columns an event needs, copied into one
/// buffer. The dispatcher renders the log line (and, for hooks, webhooks and step metrics, the
/// [`CrashEvent`]) from it, so that hex, times and addresses are formatted off the writer.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub id: i64,
    pub key: RecordKey,
    pub received_at_us: i64,
    pub line_col: (u32, u32),
    /// The record answers a scheduled drill.
    pub drill: bool,
    /// [`StoredRecord::COLUMNS`] of the record's row text.
    text: RowText,
}

impl StoredRecord {
    /// The columns kept (in [`Col`] order, as [`RowText::set`] wants them).
    const COLUMNS: [Col; 6] = [
        Col::Source,
        Col::Arch,
        Col::Kind,
        Col::Message,
        Col::File,
        Col::Steps,
    ];

    pub fn new(id: i64, r: &NewRecord, drill: bool) -> StoredRecord {
        let cols = Self::COLUMNS.map(|c| r.text.get(c));
        let len = cols.iter().flatten().map(|v| v.len()).sum();
        let mut text = RowText::with_capacity(len);
        for (c, v) in Self::COLUMNS.into_iter().zip(cols) {
            if let Some(v) = v {
                text.set(c, |s| s.push_str(v));
            }
        }
        StoredRecord {
            id,
            key: r.key,
            received_at_us: r.received_at_us,
            line_col: r.line_col,
            drill,
            text,
        }
    }

    fn col(&self, c: Col) -> &str {
        self.text.get(c).unwrap_or("")
    }

    fn location(&self) -> Option<String> {
        let (l, c) = self.line_col;
        self.text.get(Col::File).map(|f| format!("{f}:{l}:{c}"))
    }

    /// The event sent to hooks and webhooks (`steps` still empty: see [`StoredRecord::steps`]).
    pub fn event(&self) -> CrashEvent {
        let source = self.col(Col::Source);
        CrashEvent {
            id: self.id,
            boot_id: hex(&self.key.boot_id),
            seq: self.key.seq,
            record_crc: format!("{:08x}", self.key.record_crc),
            host: host_of(source),
            source: source.to_string(),
            received_at: format_time_us(self.received_at_us),
            received_at_us: self.received_at_us,
            arch: self.col(Col::Arch).to_string(),
            kind: self.col(Col::Kind).to_string(),
            message: self.col(Col::Message).to_string(),
            location: self.location(),
            drill: self.drill,
            steps: Vec::new(),
            steps_json: self.text.get(Col::Steps).unwrap_or("[]").to_string(),
        }
    }

    /// The panic-path steps (parsed from the stored JSON).
    fn steps(&self) -> Vec<StepView> {
        serde_json::from_str(self.text.get(Col::Steps).unwrap_or("[]")).unwrap_or_default()
    }

    /// The same line as [`log_line`] of [`StoredRecord::event`] (a test holds them equal),
    /// without building the event.
    pub fn log_line(&self) -> String {
        let source = self.col(Col::Source);
        let message = self.col(Col::Message);
        let mut o = String::with_capacity(160 + message.len());
        o.push_str("crash stored");
        kv_num(&mut o, "id", self.id);
        o.push_str(" boot=");
        push_hex(&mut o, &self.key.boot_id);
        kv_num(&mut o, "seq", self.key.seq);
        kv(&mut o, "host", &host_of(source));
        kv(&mut o, "source", source);
        kv(&mut o, "arch", self.col(Col::Arch));
        kv(&mut o, "kind", self.col(Col::Kind));
        if self.drill {
            kv(&mut o, "drill", "scheduled");
        }
        if let Some(l) = self.location() {
            kv(&mut o, "location", &l);
        }
        kv(&mut o, "message", message);
        o
    }

    /// Bytes held, roughly (for the queue's byte budget).
    fn cost(&self) -> usize {
        256 + self.text.text_len()
    }
}

/// Lower-case hex of `bytes` (as [`hex`]) appended to `o`.
fn push_hex(o: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        o.push(DIGITS[(b >> 4) as usize] as char);
        o.push(DIGITS[(b & 15) as usize] as char);
    }
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

/// One event: `{"event": "crash_stored", ...}` or `{"event": "canary_state", ...}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    CrashStored(CrashEvent),
    CanaryState(StateEvent),
}

/// The host part of `IP:port` (`[v6]:port` too).
pub fn host_of(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => addr.to_string(),
    }
}

/// `key=value`, the value quoted when it is empty or holds a space, `"`, `=` or `\`, and
/// every control character escaped (see [`esc`]).
fn kv(o: &mut String, key: &str, v: &str) {
    let v = esc(v);
    if !o.is_empty() {
        o.push(' ');
    }
    o.push_str(key);
    o.push('=');
    if v.is_empty() || v.contains([' ', '"', '=', '\\']) {
        o.push('"');
        // Whole runs between the characters that need a backslash (this runs for every
        // stored record's message).
        let mut rest: &str = &v;
        while let Some(i) = rest.find(['"', '\\']) {
            o.push_str(&rest[..i]);
            o.push('\\');
            o.push_str(&rest[i..i + 1]);
            rest = &rest[i + 1..];
        }
        o.push_str(rest);
        o.push('"');
    } else {
        o.push_str(&v);
    }
}

/// [`kv`] for a number, without an intermediate `String`.
fn kv_num(o: &mut String, key: &str, v: impl std::fmt::Display) {
    if !o.is_empty() {
        o.push(' ');
    }
    let _ = write!(o, "{key}={v}");
}

/// The log line of an event (one line, no control characters).
pub fn log_line(e: &Event) -> String {
    let mut o = String::new();
    match e {
        Event::CrashStored(c) => {
            o.push_str("crash stored");
            kv_num(&mut o, "id", c.id);
            kv(&mut o, "boot", &c.boot_id);
            kv_num(&mut o, "seq", c.seq);
            kv(&mut o, "host", &c.host);
            kv(&mut o, "source", &c.source);
            kv(&mut o, "arch", &c.arch);
            kv(&mut o, "kind", &c.kind);
            if c.drill {
                kv(&mut o, "drill", "scheduled");
            }
            if let Some(l) = &c.location {
                kv(&mut o, "location", l);
            }
            kv(&mut o, "message", &c.message);
        }
        Event::CanaryState(s) => {
            let _ = write!(o, "canary {}", s.to);
            kv(&mut o, "address", &s.address);
            kv(&mut o, "boot", &s.boot_id);
            kv(&mut o, "from", s.from.map(State::as_str).unwrap_or("new"));
            kv(&mut o, "to", s.to.as_str());
            kv(&mut o, "reason", &s.reason);
            kv(&mut o, "last_seen", &s.last_seen);
            if let Some(id) = s.record_id {
                kv_num(&mut o, "record", id);
            }
        }
    }
    o
}

/// Where events go besides the log.
#[derive(Debug, Clone)]
pub struct EventConfig {
    /// `sh -c CMD` per event, the event as JSON on stdin.
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
        }
    }
}

/// What waits for the dispatcher (boxed: the queue's slots stay small): one event, or the
/// events of one commit's stored records (one hand-off, one wake-up per commit).
enum Queued {
    Event(Box<Event>),
    Stored(Vec<StoredRecord>),
}

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
            Event::CanaryState(s) => s.reason.len() + s.address.len(),
        }
    }
}

impl EventSink {
    /// Queues `e` without waiting; a full queue (in events or bytes) drops it, counted.
    pub fn send(&self, e: Event) {
        let cost = e.cost();
        self.queue(Queued::Event(Box::new(e)), cost, 1);
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

/// The running dispatcher; [`Dispatcher::finish`] waits (boundedly) for what is queued.
pub struct Dispatcher {
    thread: std::thread::JoinHandle<()>,
    pending: Arc<AtomicUsize>,
}

impl Dispatcher {
    /// Starts the dispatcher (and the hook and webhook workers it needs).
    pub fn start(
        cfg: EventConfig,
        counters: Arc<Counters>,
        metrics: Option<Metrics>,
    ) -> std::io::Result<(EventSink, Dispatcher)> {
        let (tx, rx) = mpsc::sync_channel(cfg.queue.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        let hook = match &cfg.hook {
            Some(cmd) => Some(Work::start(
                "collector-hook",
                cfg.hook_concurrency.max(1),
                cfg.hook_queue.max(1),
                pending.clone(),
                {
                    let cmd = cmd.clone();
                    let counters = counters.clone();
                    let timeout = cfg.hook_timeout;
                    move |json: &str| run_hook(&cmd, json, timeout, &counters)
                },
            )?),
            None => None,
        };
        let webhook = match &cfg.webhook {
            Some(url) => Some(Work::start(
                "collector-webhook",
                1,
                cfg.webhook_queue.max(1),
                pending.clone(),
                {
                    let url = url.clone();
                    let counters = counters.clone();
                    let cfg = cfg.clone();
                    let agent = ureq::AgentBuilder::new()
                        .timeout(cfg.webhook_timeout)
                        .build();
                    move |json: &str| post_webhook(&agent, &url, json, &cfg, &counters)
                },
            )?),
            None => None,
        };
        let out = Out {
            hook,
            webhook,
            metrics,
            counters: counters.clone(),
        };
        let bytes = Arc::new(AtomicUsize::new(0));
        let events = Arc::new(AtomicUsize::new(0));
        let (b2, e2) = (bytes.clone(), events.clone());
        let thread = std::thread::Builder::new()
            .name("collector-events".into())
            .spawn(move || dispatch(rx, &b2, &e2, out))?;
        let sink = EventSink {
            tx,
            counters,
            bytes,
            max_bytes: cfg.queue_max_bytes.max(1),
            events,
            max_events: cfg.queue.max(1),
        };
        Ok((sink, Dispatcher { thread, pending }))
    }

    /// After the sink is dropped: waits for the dispatcher, then at most `grace` for hooks
    /// and webhooks still queued or running (what is left then is not sent).
    pub fn finish(self, grace: Duration) {
        let _ = self.thread.join();
        let end = Instant::now() + grace;
        while self.pending.load(Ordering::Acquire) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where the dispatcher sends events besides the log.
struct Out {
    hook: Option<Work>,
    webhook: Option<Work>,
    metrics: Option<Metrics>,
    counters: Arc<Counters>,
}

impl Out {
    /// Hooks and webhooks want the event as JSON.
    fn outside(&self) -> bool {
        self.hook.is_some() || self.webhook.is_some()
    }

    fn stored(&self, r: &StoredRecord) {
        // The steps are parsed only for what uses them: the step metrics and the JSON of
        // hooks and webhooks (most of the dispatcher's time otherwise).
        let steps = if self.metrics.is_some() || self.outside() {
            r.steps()
        } else {
            Vec::new()
        };
        if let Some(m) = &self.metrics {
            m.observe_steps(&steps);
        }
        // Rendered only when the line is logged (`info!` evaluates it then).
        info!(target: TARGET, "{}", r.log_line());
        if self.outside() {
            let mut c = r.event();
            c.steps = steps;
            self.send(&Event::CrashStored(c));
        }
    }

    fn event(&self, mut e: Event) {
        if let Event::CrashStored(c) = &mut e {
            c.steps = serde_json::from_str(&c.steps_json).unwrap_or_default();
            if let Some(m) = &self.metrics {
                m.observe_steps(&c.steps);
            }
        }
        info!(target: TARGET, "{}", log_line(&e));
        self.send(&e);
    }

    /// To the hook and the webhook.
    fn send(&self, e: &Event) {
        if !self.outside() {
            return;
        }
        let json = match serde_json::to_string(e) {
            Ok(j) => j,
            Err(err) => {
                warn!("cannot encode event: {err}");
                return;
            }
        };
        if let Some(h) = &self.hook {
            if !h.push(json.clone()) {
                Counters::add(&self.counters.hook_dropped, 1);
            }
        }
        if let Some(w) = &self.webhook {
            if !w.push(json) {
                Counters::add(&self.counters.webhook_dropped, 1);
            }
        }
    }
}

fn dispatch(rx: Receiver<(Queued, usize)>, bytes: &AtomicUsize, events: &AtomicUsize, out: Out) {
    while let Ok((q, cost)) = rx.recv() {
        bytes.fetch_sub(cost, Ordering::AcqRel);
        match q {
            Queued::Event(e) => {
                events.fetch_sub(1, Ordering::AcqRel);
                out.event(*e);
            }
            Queued::Stored(rs) => {
                events.fetch_sub(rs.len(), Ordering::AcqRel);
                for r in &rs {
                    out.stored(r);
                }
            }
        }
    }
    for w in [out.hook, out.webhook].into_iter().flatten() {
        w.close();
    }
}

/// Jobs and "closed", and the condition workers wait on.
type JobQueue = Arc<(Mutex<(VecDeque<String>, bool)>, Condvar)>;

/// A bounded queue of JSON events and the worker threads that take from it.
struct Work {
    q: JobQueue,
    cap: usize,
    pending: Arc<AtomicUsize>,
}

impl Work {
    fn start(
        name: &str,
        workers: usize,
        cap: usize,
        pending: Arc<AtomicUsize>,
        f: impl Fn(&str) + Send + Sync + 'static,
    ) -> std::io::Result<Work> {
        let q: JobQueue = Arc::default();
        let f = Arc::new(f);
        for i in 0..workers {
            let q = q.clone();
            let f = f.clone();
            let pending = pending.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = {
                        let mut g = q.0.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            if let Some(j) = g.0.pop_front() {
                                break Some(j);
                            }
                            if g.1 {
                                break None;
                            }
                            g = q.1.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    let Some(job) = job else { return };
                    f(&job);
                    pending.fetch_sub(1, Ordering::AcqRel);
                })?;
        }
        Ok(Work { q, cap, pending })
    }

    /// Queues `json`; false (dropped) when the queue is full.
    fn push(&self, json: String) -> bool {
        let mut g = self.q.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() >= self.cap {
            return false;
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        g.0.push_back(json);
        self.q.1.notify_one();
        true
    }

    fn close(&self) {
        self.q.0.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.q.1.notify_all();
    }
}

fn run_hook(cmd: &str, json: &str, timeout: Duration, counters: &Counters) {
    use wait_timeout::ChildExt;
    Counters::add(&counters.hook_runs, 1);
    let fail = |why: String| {
        Counters::add(&counters.hook_failures, 1);
        warn!("--on-event command: {why}");
    };
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start sh: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is not a failure.
        let _ = stdin.write_all(json.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    match child.wait_timeout(timeout) {
        Ok(Some(st)) if st.success() => {}
        Ok(Some(st)) => fail(format!("exited with {st}")),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            fail(format!("killed after {timeout:?}"));
        }
        Err(e) => fail(format!("wait: {e}")),
    }
}

fn post_webhook(agent: &ureq::Agent, url: &str, json: &str, cfg: &EventConfig, c: &Counters) {
    let mut delay = cfg.webhook_backoff;
    let attempts = cfg.webhook_attempts.max(1);
    for attempt in 1..=attempts {
        match agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(json)
        {
            Ok(_) => {
                Counters::add(&c.webhook_sent, 1);
                return;
            }
            Err(e) if attempt == attempts => {
                Counters::add(&c.webhook_failures, 1);
                warn!("--webhook {url}: giving up after {attempts} attempts: {e}");
            }
            Err(_) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(message: String) -> Event {
        Event::CrashStored(CrashEvent {
            id: 1,
            boot_id: String::new(),
            seq: 1,
            record_crc: String::new(),
            host: String::new(),
            source: String::new(),
            received_at: String::new(),
            received_at_us: 0,
            arch: String::new(),
            kind: String::new(),
            message,
            location: None,
            drill: false,
            steps: vec![],
            steps_json: String::new(),
        })
    }

    #[test]
    fn the_event_queue_is_bounded_in_bytes_and_drops_are_counted() {
        let (tx, rx) = mpsc::sync_channel(100);
        let counters = Arc::new(Counters::default());
        let sink = EventSink {
            tx,
            counters: counters.clone(),
            bytes: Arc::new(AtomicUsize::new(0)),
            max_bytes: 3000,
            events: Arc::new(AtomicUsize::new(0)),
            max_events: 100,
        };
        // Nothing takes from the queue: two 1 KiB events fit, the third does not.
        for _ in 0..3 {
            sink.send(crash("x".repeat(1024)));
        }
        assert_eq!(rx.try_iter().count(), 2);
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 1);
        // A small one still fits the bytes left (the two taken above were not released).
        sink.send(crash(String::new()));
        assert_eq!(rx.try_iter().count(), 1);
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 1);
        // Taken from the queue is not released either: only the dispatcher releases bytes.
        sink.send(crash(String::new()));
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 2);
    }

    fn stored(i: i64) -> StoredRecord {
        let rec = capture::testutil::sample_record(i as u32);
        let r = NewRecord {
            key: RecordKey {
                boot_id: rec.boot_id,
                seq: rec.seq,
                record_crc: 1,
            },
            received_at_us: 0,
            schema_major: 1,
            schema_minor: 1,
            uptime_us: 0,
            line_col: (1, 2),
            text: crate::convert::row_text("127.0.0.1:9".parse().unwrap(), &rec),
            raw: Vec::new(),
        };
        StoredRecord::new(i, &r, false)
    }

    #[test]
    fn a_commits_events_go_as_one_batch_and_each_counts_against_the_budgets() {
        let (tx, rx) = mpsc::sync_channel(100);
        let counters = Arc::new(Counters::default());
        let bytes = Arc::new(AtomicUsize::new(0));
        let events = Arc::new(AtomicUsize::new(0));
        let sink = EventSink {
            tx,
            counters: counters.clone(),
            bytes: bytes.clone(),
            max_bytes: 1 << 20,
            events: events.clone(),
            max_events: 5,
        };
        // Seven records, room for five events: one message with the first five, two dropped.
        sink.send_stored((1..=7).map(stored).collect());
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got.len(), 1);
        let Queued::Stored(rs) = &got[0].0 else {
            panic!("a batch of stored records")
        };
        assert_eq!(rs.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(events.load(Ordering::Relaxed), 5);
        assert_eq!(bytes.load(Ordering::Relaxed), got[0].1);
        // Full: a state event is dropped too.
        sink.send(crash(String::new()));
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 3);
        // And the byte budget bounds a batch the same way.
        let one = stored(1).cost();
        let (tx, rx) = mpsc::sync_channel(100);
        let sink = EventSink {
            tx,
            counters: counters.clone(),
            bytes: Arc::new(AtomicUsize::new(0)),
            max_bytes: 2 * one + one / 2,
            events: Arc::new(AtomicUsize::new(0)),
            max_events: 100,
        };
        sink.send_stored((1..=3).map(stored).collect());
        let Some((Queued::Stored(rs), _)) = rx.try_iter().next() else {
            panic!("a batch")
        };
        assert_eq!(rs.len(), 2);
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn log_lines_are_one_escaped_line_of_key_values() {
        let e = Event::CrashStored(CrashEvent {
            id: 12,
            boot_id: "00ff".into(),
            seq: 3,
            record_crc: "0".into(),
            host: "10.0.0.7".into(),
            source: "10.0.0.7:7375".into(),
            received_at: String::new(),
            received_at_us: 0,
            arch: "x86_64".into(),
            kind: "panic".into(),
            message: "bad \"thing\"\n\x1b[2J=x".into(),
            location: Some("src/main.rs:1:2".into()),
            drill: false,
            steps: vec![],
            steps_json: String::new(),
        });
        assert_eq!(
            log_line(&e),
            "crash stored id=12 boot=00ff seq=3 host=10.0.0.7 source=10.0.0.7:7375 \
             arch=x86_64 kind=panic location=src/main.rs:1:2 \
             message=\"bad \\\"thing\\\"\\\\x0a\\\\x1b[2J=x\""
        );
        assert_eq!(host_of("[::1]:7"), "::1");
    }

    #[test]
    fn a_stored_record_logs_the_line_of_its_event() {
        let src: std::net::SocketAddr = "10.0.0.7:7375".parse().unwrap();
        let mut recs = vec![capture::testutil::sample_record(3)];
        let mut odd = capture::testutil::sample_record(4);
        odd.message = capture::record::truncate_to("a \"quoted\" \\ back=slash\n\u{1b}[2J");
        odd.location = None;
        recs.push(odd);
        let mut empty = capture::testutil::sample_record(5);
        empty.message.clear();
        recs.push(empty);
        for (i, rec) in recs.iter().enumerate() {
            let r = NewRecord {
                key: RecordKey {
                    boot_id: rec.boot_id,
                    seq: rec.seq,
                    record_crc: 0xdead_beef,
                },
                received_at_us: 1_700_000_000_000_000,
                schema_major: 1,
                schema_minor: 1,
                uptime_us: rec.uptime_us,
                line_col: rec.location.as_ref().map_or((0, 0), |l| (l.line, l.column)),
                text: crate::convert::row_text(src, rec),
                raw: Vec::new(),
            };
            for drill in [false, true] {
                let s = StoredRecord::new(40 + i as i64, &r, drill);
                let ev = s.event();
                assert_eq!(ev.message, rec.message.as_str());
                assert_eq!(ev.source, "10.0.0.7:7375");
                assert_eq!(ev.host, "10.0.0.7");
                assert_eq!(ev.record_crc, "deadbeef");
                assert_eq!(ev.drill, drill);
                assert_eq!(ev.received_at, "2023-11-14T22:13:20Z");
                assert_eq!(s.steps().len(), rec.steps.len());
                assert_eq!(s.log_line(), log_line(&Event::CrashStored(ev)));
            }
        }
    }
}
