//! `serve --drill-every PERIOD`: scheduled drills. Every live canary (`alive` or `recovered`)
//! is drilled once per period, one after another, spread evenly over the period; never two
//! drills at once to one host (IP address). A drill is sent to the canary's drill port, which
//! is the port it sends from minus one (the appliance listens on `drill_port` and sends from
//! `drill_port + 1`), with the fleet key when `serve` has one (challenge-response, see
//! `crate::drill`). The canary panics and ships a record of kind `drill`; a drill whose record
//! did not come within `--drill-deadline` makes the canary `drill-failed`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capture::Key;
use tracing::{debug, info, warn};

/// When to drill.
#[derive(Debug, Clone, Copy)]
pub struct DrillSchedule {
    /// Each live canary once per this period.
    pub every: Duration,
    /// A drill without a record after this long failed.
    pub deadline: Duration,
    /// Drill every canary at its source IP and this port, instead of its sending port minus
    /// one (canaries behind a NAT that changes their sending port, e.g. QEMU user networking
    /// with the drill port forwarded).
    pub port: Option<u16>,
}

/// What the scheduler and the writer share.
#[derive(Debug, Default)]
pub(crate) struct DrillBook {
    state: Mutex<BookState>,
}

#[derive(Debug, Default)]
struct BookState {
    /// Canaries to drill (addresses), as the writer last saw them.
    live: Vec<String>,
    /// Drills sent and not answered yet: address -> deadline.
    pending: HashMap<String, Instant>,
}

impl DrillBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BookState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer's view of the canaries that should answer drills.
    pub(crate) fn set_live(&self, live: Vec<String>) {
        self.lock().live = live;
    }

    /// A drill record arrived from `address`: true if a scheduled drill was waiting for it.
    pub(crate) fn answered(&self, address: &str) -> bool {
        self.lock().pending.remove(address).is_some()
    }

    /// Drills whose deadline passed (removed).
    pub(crate) fn overdue(&self, now: Instant) -> Vec<String> {
        let mut st = self.lock();
        let late: Vec<String> = st
            .pending
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(a, _)| a.clone())
            .collect();
        for a in &late {
            st.pending.remove(a);
        }
        late
    }
}

/// The drill address of a canary sending from `source`: its IP and `port`, or its sending
/// port minus one.
pub(crate) fn drill_addr(source: &str, port: Option<u16>) -> Option<SocketAddr> {
    let mut a: SocketAddr = source.parse().ok()?;
    a.set_port(match port {
        Some(p) => p,
        None => a.port().checked_sub(1).filter(|p| *p > 0)?,
    });
    Some(a)
}

/// The scheduler thread: runs until `stop`.
pub(crate) fn run(
    sched: DrillSchedule,
    key: Option<Key>,
    book: Arc<DrillBook>,
    stop: Arc<AtomicBool>,
) {
    let mut nonce = crate::util::now_us() as u64;
    let sleep = |d: Duration| {
        let end = Instant::now() + d;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let round = book.lock().live.clone();
        if round.is_empty() {
            sleep(Duration::from_millis(200).min(sched.every));
            continue;
        }
        let slot = sched.every / round.len() as u32;
        for address in round {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let t = Instant::now();
            let host = crate::events::host_of(&address);
            let busy = {
                let st = book.lock();
                !st.live.contains(&address)
                    || st.pending.keys().any(|a| crate::events::host_of(a) == host)
            };
            match (busy, drill_addr(&address, sched.port)) {
                (true, _) => {
                    debug!(%address, "drill skipped: not live, or its host has one running")
                }
                (false, None) => warn!(%address, "no drill port for this source address"),
                (false, Some(to)) => {
                    nonce = nonce.wrapping_add(1);
                    book.lock()
                        .pending
                        .insert(address.clone(), Instant::now() + sched.deadline);
                    let wait = Duration::from_secs(3).min(sched.deadline);
                    match crate::drill::send(to, key.as_ref(), nonce, 0, wait) {
                        Ok(o) => info!(%address, "scheduled drill sent to {to}: {o:?}"),
                        // Counted as failed when its deadline passes without a record.
                        Err(e) => warn!(%address, "scheduled drill to {to}: {e}"),
                    }
                }
            }
            sleep(slot.saturating_sub(t.elapsed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drill_port_is_the_source_port_minus_one() {
        assert_eq!(
            drill_addr("10.0.0.7:7375", None),
            "10.0.0.7:7374".parse().ok()
        );
        assert_eq!(drill_addr("[::1]:2", None), "[::1]:1".parse().ok());
        assert_eq!(drill_addr("10.0.0.7:1", None), None);
        assert_eq!(drill_addr("nonsense", None), None);
        assert_eq!(
            drill_addr("127.0.0.1:40123", Some(9)),
            "127.0.0.1:9".parse().ok()
        );
        let b = DrillBook::default();
        b.lock().pending.insert("a:2".into(), Instant::now());
        assert!(!b.answered("b:2"));
        assert_eq!(b.overdue(Instant::now()), vec!["a:2".to_string()]);
        assert!(!b.answered("a:2"));
    }
}
