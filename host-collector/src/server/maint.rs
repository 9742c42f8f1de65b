//! Upkeep beside the hot path: WAL checkpoints, and rate-limited warnings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::store::Checkpointer;

/// The checkpoint thread: copies the WAL into the database file every 200 ms (every 50 ms
/// once the WAL holds half its limit) without blocking the writer, catching up in a few
/// quick rounds. When the WAL holds more than three quarters of `wal_max_bytes` in pages
/// (under sustained load the passive checkpoints never catch up with the writer) a `RESTART`
/// checkpoint makes the writer wait for the rest, so the WAL starts over, and
/// `journal_size_limit` cuts the file back when the writer starts it over; the quarter left
/// is room for what the writer commits until the next round. When the writer is idle
/// (nothing new since the last round) and everything is copied, a `TRUNCATE` checkpoint
/// empties the WAL file.
pub(super) fn checkpoint_loop(c: Checkpointer, stop: &AtomicBool, wal_max_bytes: u64) {
    let page = c.page_size().unwrap_or(16384).max(512);
    let max_pages = i64::try_from(wal_max_bytes / page)
        .unwrap_or(i64::MAX)
        .max(16);
    let restart_pages = max_pages / 4 * 3;
    let mut warn_limit = RateLimit::new(Duration::from_secs(10));
    let mut last_log = -1;
    let mut busy = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(if busy { 50 } else { 200 }));
        let mut r = c.passive();
        for _ in 0..8 {
            match r {
                Ok((log, done)) if done < log => r = c.passive(),
                _ => break,
            }
        }
        busy = matches!(r, Ok((log, _)) if log > max_pages / 2);
        let step = match r {
            Ok((log, _)) if log > restart_pages => {
                debug!(pages = log, "WAL past its limit: restart checkpoint");
                c.restart().map(|_| -1)
            }
            Ok((log, done)) if log > 0 && done == log && log == last_log => {
                debug!(pages = log, "writer idle: truncate the WAL");
                c.truncate().map(|_| 0)
            }
            Ok((log, _)) => Ok(log),
            Err(e) => Err(e),
        };
        match step {
            Ok(log) => last_log = log,
            Err(e) => {
                last_log = -1;
                if let Some(n) = warn_limit.check() {
                    warn!("checkpoint: {e}{}", suppressed(n));
                }
            }
        }
    }
}

/// Lets a repeated warning through at most once per period, counting the ones it holds back.
#[derive(Debug)]
pub(super) struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimit {
    pub(super) fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` when the warning may be logged now (`n` were held back since the last one),
    /// `None` when it is held back.
    pub(super) fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// " (N more like it not shown)" for a rate-limited warning, or nothing.
pub(super) fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it since the last one not shown)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through_per_period_and_counts_the_rest() {
        let mut r = RateLimit::new(Duration::from_millis(200));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(r.check(), Some(2));
        assert_eq!(
            suppressed(2),
            " (2 more like it since the last one not shown)"
        );
    }
}
