//! The event log lines: where they go ([`LineSink`]) and how many "crash stored" and "crash
//! path" lines a second ([`StoredLines`]).

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

/// Which stored records (and stored follow-ups) get their own "crash stored" ("crash path")
/// line: at most `per_second` lines of both kinds together in each second (a window that
/// opens with the first one after the last one closed); those beyond it are counted, and when
/// the window is over one line for each kind sums them up:
/// `crash stored: 38512 more records in 1.0 s not logged one by one (ids 1001-39512);
/// host-collector list shows them`, `crash path: 3 more follow-ups in 1.0 s not logged one by
/// one (records 17-40); host-collector show ID shows their steps`. Nothing is lost: the
/// records and follow-ups are stored (and go to hooks, webhooks and metrics) whether or not
/// their line is written. Kept by the writer's [`super::EventSink`], so that a record without
/// a line costs the writer and the dispatcher nothing when neither metrics nor hooks want it.
pub(super) struct StoredLines {
    /// 0: every record gets its line.
    per_second: u32,
    window: Option<Window>,
}

struct Window {
    start: Instant,
    /// Lines written in this window (records and follow-ups).
    logged: u32,
    /// Records not logged one by one.
    records: Skipped,
    /// Follow-ups not logged one by one (by their records' ids).
    paths: Skipped,
}

/// How many were not logged one by one, and the lowest and highest of their ids (of those
/// with an id: a follow-up's record may not be known).
#[derive(Default)]
struct Skipped {
    n: u64,
    ids: Option<(i64, i64)>,
}

impl Skipped {
    fn add(&mut self, id: Option<i64>) {
        self.n += 1;
        if let Some(id) = id {
            self.ids = Some(self.ids.map_or((id, id), |(a, b)| (a.min(id), b.max(id))));
        }
    }
}

impl StoredLines {
    pub(super) fn new(per_second: u32) -> StoredLines {
        StoredLines {
            per_second,
            window: None,
        }
    }

    /// Whether record `id`, stored at `now`, gets its own line; and the summaries of the
    /// window before if that is over (to be written before the record's line).
    pub(super) fn admit(&mut self, id: i64, now: Instant) -> (bool, Vec<String>) {
        self.admit_as(false, Some(id), now)
    }

    /// Whether the follow-up of record `id`, stored at `now`, gets its own line (from the same
    /// budget as the records'); and the summaries of the window before if that is over.
    pub(super) fn admit_path(&mut self, id: Option<i64>, now: Instant) -> (bool, Vec<String>) {
        self.admit_as(true, id, now)
    }

    fn admit_as(&mut self, path: bool, id: Option<i64>, now: Instant) -> (bool, Vec<String>) {
        if self.per_second == 0 {
            return (true, Vec::new());
        }
        let summary = self.tick(now);
        let w = self.window.get_or_insert(Window {
            start: now,
            logged: 0,
            records: Skipped::default(),
            paths: Skipped::default(),
        });
        if w.logged < self.per_second {
            w.logged += 1;
            return (true, summary);
        }
        if path {
            w.paths.add(id);
        } else {
            w.records.add(id);
        }
        (false, summary)
    }

    /// When the summary of the records not logged one by one is due (`None`: none pending).
    #[cfg(test)]
    pub(super) fn due(&self) -> Option<Instant> {
        self.window
            .as_ref()
            .filter(|w| w.records.n + w.paths.n > 0)
            .map(|w| w.start + WINDOW)
    }

    /// Closes the window if it is over at `now`; its summaries if it has any.
    pub(super) fn tick(&mut self, now: Instant) -> Vec<String> {
        if self
            .window
            .as_ref()
            .is_some_and(|w| now.saturating_duration_since(w.start) >= WINDOW)
        {
            self.flush(now)
        } else {
            Vec::new()
        }
    }

    /// Closes the window now; its summaries (records first, then follow-ups) if it has any
    /// (at exit).
    pub(super) fn flush(&mut self, now: Instant) -> Vec<String> {
        let Some(w) = self.window.take() else {
            return Vec::new();
        };
        let took = now.saturating_duration_since(w.start).min(WINDOW);
        let mut out = Vec::new();
        let ids = |s: &Skipped, what: &str| match s.ids {
            Some((a, b)) => format!(" ({what} {a}-{b})"),
            None => String::new(),
        };
        if w.records.n > 0 {
            out.push(format!(
                "crash stored: {} more record{} in {:.1} s not logged one by one{}; \
                 host-collector list shows them",
                w.records.n,
                if w.records.n == 1 { "" } else { "s" },
                took.as_secs_f64(),
                ids(&w.records, "ids"),
            ));
        }
        if w.paths.n > 0 {
            out.push(format!(
                "crash path: {} more follow-up{} in {:.1} s not logged one by one{}; \
                 host-collector show ID shows their steps",
                w.paths.n,
                if w.paths.n == 1 { "" } else { "s" },
                took.as_secs_f64(),
                ids(&w.paths, "records"),
            ));
        }
        out
    }
}

/// The length of one window of [`StoredLines`].
const WINDOW: Duration = Duration::from_secs(1);
