//! The dispatcher thread: logs each event and hands it to the hook and the webhook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::log::{LineSink, StoredLines, Tracing};
use super::outside::{post_webhook, run_hook, Work};
use super::steps::StepMetrics;
use super::{log_line, Event, EventConfig, EventSink, Queued, StoredPath, StoredRecord, LINE_ROOM};
use crate::metrics::Metrics;
use crate::server::Counters;

/// The running dispatcher; [`Dispatcher::finish`] waits (boundedly) for what is queued.
pub struct Dispatcher {
    thread: std::thread::JoinHandle<()>,
    pending: Arc<AtomicUsize>,
}

impl Dispatcher {
    /// Starts the dispatcher (and the hook and webhook workers it needs); its log lines go
    /// to `tracing`.
    pub fn start(
        cfg: EventConfig,
        counters: Arc<Counters>,
        metrics: Option<Metrics>,
    ) -> std::io::Result<(EventSink, Dispatcher)> {
        Self::start_with(cfg, counters, metrics, Box::new(Tracing))
    }

    /// [`Dispatcher::start`] with the log lines going to `lines`.
    pub fn start_with(
        cfg: EventConfig,
        counters: Arc<Counters>,
        metrics: Option<Metrics>,
        lines: Box<dyn LineSink>,
    ) -> std::io::Result<(EventSink, Dispatcher)> {
        let (tx, rx) = mpsc::sync_channel(cfg.queue.max(1) + LINE_ROOM);
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
        let (want_steps, want_events) = (metrics.is_some(), hook.is_some() || webhook.is_some());
        let out = Out {
            hook,
            webhook,
            steps: metrics.map(StepMetrics::new),
            counters: counters.clone(),
            lines,
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
            lines: StoredLines::new(cfg.log_rate),
            want_steps,
            want_events,
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

/// Where the dispatcher sends events.
struct Out {
    hook: Option<Work>,
    webhook: Option<Work>,
    /// The step metrics (with `--metrics`).
    steps: Option<StepMetrics>,
    counters: Arc<Counters>,
    lines: Box<dyn LineSink>,
}

impl Out {
    /// Hooks and webhooks want the event as JSON.
    fn outside(&self) -> bool {
        self.hook.is_some() || self.webhook.is_some()
    }

    fn stored(&mut self, r: &StoredRecord) {
        // The steps are parsed only for what uses them: the step metrics (names borrowed from
        // the JSON) and the JSON of hooks and webhooks.
        let steps = if self.outside() {
            let steps = r.steps();
            if let Some(m) = &mut self.steps {
                m.observe(&steps);
            }
            steps
        } else {
            if let Some(m) = &mut self.steps {
                m.observe_json(r.steps_json());
            }
            Vec::new()
        };
        // Rendered only when the line is written.
        if r.line && self.lines.enabled() {
            self.lines.line(&r.log_line());
        }
        if self.outside() {
            let mut c = r.event();
            c.steps = steps;
            self.send(&Event::CrashStored(c));
        }
    }

    /// A stored follow-up: its line (if it gets one), its `crash_path` event to hooks and
    /// webhooks. (Its steps' times went to the step metrics on the writer.)
    fn path(&mut self, p: &StoredPath, line: bool) {
        let line = line && self.lines.enabled();
        if !line && !self.outside() {
            return;
        }
        let e = Event::CrashPath(p.event());
        if line {
            self.lines.line(&log_line(&e));
        }
        self.send(&e);
    }

    /// `line`: the event gets its log line (a stored record's may be summed up instead).
    fn event(&mut self, mut e: Event, line: bool) {
        if let Event::CrashStored(c) = &mut e {
            c.steps = serde_json::from_str(&c.steps_json).unwrap_or_default();
            if let Some(m) = &mut self.steps {
                m.observe(&c.steps);
            }
        }
        if line && self.lines.enabled() {
            self.lines.line(&log_line(&e));
        }
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

fn dispatch(
    rx: Receiver<(Queued, usize)>,
    bytes: &AtomicUsize,
    events: &AtomicUsize,
    mut out: Out,
) {
    while let Ok((q, cost)) = rx.recv() {
        bytes.fetch_sub(cost, Ordering::AcqRel);
        match q {
            Queued::Event(e, line) => {
                events.fetch_sub(1, Ordering::AcqRel);
                out.event(*e, line);
            }
            Queued::Stored(rs) => {
                events.fetch_sub(rs.len(), Ordering::AcqRel);
                for r in &rs {
                    out.stored(r);
                }
            }
            Queued::Path(p, line) => {
                events.fetch_sub(1, Ordering::AcqRel);
                out.path(&p, line);
            }
            Queued::Line(l) => {
                if out.lines.enabled() {
                    out.lines.line(&l);
                }
            }
        }
    }
    for w in [out.hook, out.webhook].into_iter().flatten() {
        w.close();
    }
}
