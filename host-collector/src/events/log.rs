//! The event log lines: where they go ([`LineSink`]) and how many "crash stored" lines a
//! second ([`StoredLines`]).

use std::time::{Duration, Instant};

use tracing::info;

use super::TARGET;

/// The default of `--event-log-rate`: "crash stored" lines a second. Far above a fleet's normal
/// rate (a few crashes a day), so every record of a bad hour still gets its line; well below
/// journald's default limit (`RateLimitIntervalSec=30s`, `RateLimitBurst=10000` per service,
/// beyond which it drops lines silently): 3,000 crash lines per 30 s leave room for the state
/// changes and warnings. A load test at 40,000 records a second writes 101 lines a second
/// instead of 40,000 (58 MB for 200,000 records before).
pub const DEFAULT_LOG_RATE: u32 = 100;

/// Where the dispatcher writes event log lines: `tracing` in `serve` ([`Tracing`]), a
/// buffer in tests.
pub trait LineSink: Send {
    /// Lines are wanted at all (with the events target filtered out nothing is rendered).
    fn enabled(&self) -> bool {
        true
    }
    fn line(&mut self, line: &str);
}

/// INFO lines under [`TARGET`] (stderr; journald reads it).
pub struct Tracing;

impl LineSink for Tracing {
    fn enabled(&self) -> bool {
        tracing::enabled!(target: TARGET, tracing::Level::INFO)
    }

    fn line(&mut self, line: &str) {
        info!(target: TARGET, "{line}");
    }
}

/// Which stored records get their own "crash stored" line: at most `per_second` in each
/// second (a window that opens with the first record after the last one closed); the records
/// beyond it are counted, and when the window is over one line sums them up:
/// `crash stored: 38512 more records in 1.0 s not logged one by one (ids 1001-39512);
/// host-collector list shows them`. Nothing is lost: the records are stored (and go to hooks,
/// webhooks and metrics) whether or not their line is written. Kept by the writer's
/// [`super::EventSink`], so that a record without a line costs the writer and the dispatcher
/// nothing when neither metrics nor hooks want it.
pub(super) struct StoredLines {
    /// 0: every record gets its line.
    per_second: u32,
    window: Option<Window>,
}

struct Window {
    start: Instant,
    /// Lines written in this window.
    logged: u32,
    /// Records not logged one by one, and the lowest and highest of their ids.
    more: u64,
    ids: (i64, i64),
}

impl StoredLines {
    pub(super) fn new(per_second: u32) -> StoredLines {
        StoredLines {
            per_second,
            window: None,
        }
    }

    /// Whether record `id`, stored at `now`, gets its own line; and the summary of the window
    /// before if that is over (to be written before the record's line).
    pub(super) fn admit(&mut self, id: i64, now: Instant) -> (bool, Option<String>) {
        if self.per_second == 0 {
            return (true, None);
        }
        let summary = self.tick(now);
        let w = self.window.get_or_insert(Window {
            start: now,
            logged: 0,
            more: 0,
            ids: (id, id),
        });
        if w.logged < self.per_second {
            w.logged += 1;
            return (true, summary);
        }
        w.ids = if w.more == 0 {
            (id, id)
        } else {
            (w.ids.0.min(id), w.ids.1.max(id))
        };
        w.more += 1;
        (false, summary)
    }

    /// When the summary of the records not logged one by one is due (`None`: none pending).
    #[cfg(test)]
    pub(super) fn due(&self) -> Option<Instant> {
        self.window
            .as_ref()
            .filter(|w| w.more > 0)
            .map(|w| w.start + WINDOW)
    }

    /// Closes the window if it is over at `now`; its summary if it has one.
    pub(super) fn tick(&mut self, now: Instant) -> Option<String> {
        if self
            .window
            .as_ref()
            .is_some_and(|w| now.saturating_duration_since(w.start) >= WINDOW)
        {
            self.flush(now)
        } else {
            None
        }
    }

    /// Closes the window now; its summary if it has one (at exit).
    pub(super) fn flush(&mut self, now: Instant) -> Option<String> {
        let w = self.window.take()?;
        if w.more == 0 {
            return None;
        }
        let took = now.saturating_duration_since(w.start).min(WINDOW);
        Some(format!(
            "crash stored: {} more record{} in {:.1} s not logged one by one (ids {}-{}); \
             host-collector list shows them",
            w.more,
            if w.more == 1 { "" } else { "s" },
            took.as_secs_f64(),
            w.ids.0,
            w.ids.1
        ))
    }
}

/// The length of one window of [`StoredLines`].
const WINDOW: Duration = Duration::from_secs(1);
