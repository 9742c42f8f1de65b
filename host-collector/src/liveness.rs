//! Liveness: which canaries are alive, which went silent, which crashed and which came back.
//!
//! A canary is told apart by the source address of its frames (a canary sends from a fixed
//! UDP port, `drill_port + 1`; `load` gives each simulated canary a socket of its own). Its
//! boot id changes when it boots again. States:
//!
//! | state | meaning |
//! |---|---|
//! | `alive` | heartbeats arrive |
//! | `silent` | no heartbeat for longer than `silence × interval` (the interval is measured from the heartbeats' uptimes and counters) |
//! | `crashed` | a crash record was stored and no heartbeat came from a new boot since |
//! | `recovered` | heartbeats from a new boot after a crash |
//! | `drill-failed` | a scheduled drill produced no record within its deadline |
//!
//! [`Tracker`] is the state machine; `serve`'s writer thread feeds it heartbeats, stored
//! records and the clock, logs and sends out every [`Change`], and persists the canaries
//! whose state, boot or interval changed in the `liveness` table.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::HeartbeatSeen;

/// A canary's liveness state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Alive,
    Silent,
    Crashed,
    Recovered,
    DrillFailed,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Alive,
        State::Silent,
        State::Crashed,
        State::Recovered,
        State::DrillFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Silent => "silent",
            State::Crashed => "crashed",
            State::Recovered => "recovered",
            State::DrillFailed => "drill-failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// States in which heartbeats are expected (and their absence means `silent`).
    fn expects_heartbeats(self) -> bool {
        matches!(self, State::Alive | State::Recovered)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How liveness is judged.
#[derive(Debug, Clone, Copy)]
pub struct LivenessConfig {
    /// A canary is `silent` after `silence × interval` without a heartbeat.
    pub silence: u32,
    /// The interval assumed until two heartbeats of one boot measured it (the appliance's
    /// default `heartbeat_ms`).
    pub default_interval_ms: u64,
    /// Most canaries tracked (any sender can claim a new address when no key is set):
    /// beyond this, new addresses are not tracked and counted (`canaries_untracked`).
    pub max_canaries: usize,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            silence: 3,
            default_interval_ms: 5000,
            max_canaries: 1 << 18,
        }
    }
}

/// Shortest interval believed from a measurement (a canary's clock could be wrong).
const MIN_INTERVAL_MS: u64 = 50;
/// Longest interval believed (one day).
const MAX_INTERVAL_MS: u64 = 86_400_000;

/// One canary as tracked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub address: String,
    pub boot_id: [u8; 16],
    pub arch: u8,
    pub first_seen_us: i64,
    /// The last heartbeat (or, for a canary only known by a record, that record).
    pub last_seen_us: i64,
    /// The last heartbeat counter of `boot_id`, `None` before its first heartbeat.
    pub heartbeat_seq: Option<u32>,
    pub uptime_ms: u64,
    pub interval_ms: u64,
    pub silent_after_ms: u64,
    pub state: State,
    pub state_since_us: i64,
    /// The boot whose crash record made it `crashed` (the last crash).
    pub crashed_boot: Option<[u8; 16]>,
    pub last_record_id: Option<i64>,
    /// Crash records stored from this address.
    pub crashes: u64,
}

/// A state change: logged, and sent to hooks and webhooks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub address: String,
    pub boot_id: [u8; 16],
    /// `None` for a canary seen for the first time.
    pub from: Option<State>,
    pub to: State,
    pub at_us: i64,
    /// Why, in a few words.
    pub reason: String,
    pub interval_ms: u64,
    pub last_seen_us: i64,
    pub record_id: Option<i64>,
}

/// The liveness state machine (see the module documentation).
#[derive(Debug)]
pub struct Tracker {
    cfg: LivenessConfig,
    canaries: HashMap<String, Canary>,
    /// Addresses whose row must be written.
    dirty: HashSet<String>,
    /// The interval last written for each address (rewritten only on a 10 % change).
    saved_interval: HashMap<String, u64>,
    /// Frames from new addresses not tracked because `max_canaries` were (since the last
    /// [`Tracker::take_untracked`]).
    untracked: u64,
}

impl Tracker {
    pub fn new(cfg: LivenessConfig) -> Tracker {
        Tracker {
            cfg: LivenessConfig {
                silence: cfg.silence.max(1),
                default_interval_ms: cfg.default_interval_ms.max(MIN_INTERVAL_MS),
                max_canaries: cfg.max_canaries.max(1),
            },
            canaries: HashMap::new(),
            dirty: HashSet::new(),
            saved_interval: HashMap::new(),
            untracked: 0,
        }
    }

    /// Frames from new addresses that were not tracked (the table was full), since the last
    /// call.
    pub fn take_untracked(&mut self) -> u64 {
        std::mem::take(&mut self.untracked)
    }

    /// Whether a new address may be tracked; counts it when not.
    fn room(&mut self) -> bool {
        if self.canaries.len() < self.cfg.max_canaries {
            true
        } else {
            self.untracked += 1;
            false
        }
    }

    /// Starts from the canaries stored by an earlier run.
    pub fn load(&mut self, rows: Vec<Canary>) {
        for mut c in rows {
            c.silent_after_ms = self.silent_after(c.interval_ms);
            self.saved_interval.insert(c.address.clone(), c.interval_ms);
            self.canaries.insert(c.address.clone(), c);
        }
    }

    fn silent_after(&self, interval_ms: u64) -> u64 {
        interval_ms.saturating_mul(u64::from(self.cfg.silence))
    }

    pub fn get(&self, address: &str) -> Option<&Canary> {
        self.canaries.get(address)
    }

    pub fn len(&self) -> usize {
        self.canaries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.canaries.is_empty()
    }

    /// The canaries to drill: `alive`, `recovered`, and `drill-failed` (drilled again, so
    /// that a canary whose drill works again comes back by crashing and recovering).
    pub fn live_addresses(&self) -> Vec<String> {
        self.canaries
            .values()
            .filter(|c| c.state.expects_heartbeats() || c.state == State::DrillFailed)
            .map(|c| c.address.clone())
            .collect()
    }

    /// How many canaries are in each state.
    pub fn counts(&self) -> Vec<(State, u64)> {
        let mut n = [0u64; 5];
        for c in self.canaries.values() {
            n[State::ALL.iter().position(|s| *s == c.state).unwrap_or(0)] += 1;
        }
        State::ALL.into_iter().zip(n).collect()
    }

    fn set_state(c: &mut Canary, to: State, at_us: i64, reason: &str) -> Option<Change> {
        let from = c.state;
        if from == to {
            return None;
        }
        c.state = to;
        c.state_since_us = at_us;
        Some(Change {
            address: c.address.clone(),
            boot_id: c.boot_id,
            from: Some(from),
            to,
            at_us,
            reason: reason.into(),
            interval_ms: c.interval_ms,
            last_seen_us: c.last_seen_us,
            record_id: c.last_record_id,
        })
    }

    /// A heartbeat arrived. A heartbeat whose counter is not above the last one of its boot
    /// (a replay or a duplicate) changes nothing.
    pub fn heartbeat(&mut self, h: &HeartbeatSeen) -> Option<Change> {
        if !self.canaries.contains_key(&h.source) && !self.room() {
            return None;
        }
        let default_interval = self.cfg.default_interval_ms;
        let silent_after = |i: u64| i.saturating_mul(u64::from(self.cfg.silence));
        let Some(c) = self.canaries.get_mut(&h.source) else {
            let c = Canary {
                address: h.source.clone(),
                boot_id: h.boot_id,
                arch: h.arch,
                first_seen_us: h.seen_at_us,
                last_seen_us: h.seen_at_us,
                heartbeat_seq: Some(h.seq),
                uptime_ms: h.uptime_ms,
                interval_ms: default_interval,
                silent_after_ms: silent_after(default_interval),
                state: State::Alive,
                state_since_us: h.seen_at_us,
                crashed_boot: None,
                last_record_id: None,
                crashes: 0,
            };
            let change = Change {
                address: c.address.clone(),
                boot_id: c.boot_id,
                from: None,
                to: State::Alive,
                at_us: h.seen_at_us,
                reason: "first heartbeat".into(),
                interval_ms: c.interval_ms,
                last_seen_us: c.last_seen_us,
                record_id: None,
            };
            self.dirty.insert(h.source.clone());
            self.canaries.insert(h.source.clone(), c);
            return Some(change);
        };
        let same_boot = c.boot_id == h.boot_id;
        if same_boot && c.heartbeat_seq.is_some_and(|s| h.seq <= s) {
            return None;
        }
        if same_boot {
            // The interval: uptime advanced over heartbeat counts (robust to lost ones).
            if let Some(prev) = c.heartbeat_seq {
                let n = u64::from(h.seq - prev);
                if let Some(d) = h.uptime_ms.checked_sub(c.uptime_ms) {
                    let i = (d / n).clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS);
                    c.interval_ms = i;
                    c.silent_after_ms = silent_after(i);
                    let saved = self.saved_interval.get(&c.address).copied().unwrap_or(0);
                    if saved.abs_diff(i) * 10 > saved {
                        self.dirty.insert(c.address.clone());
                    }
                }
            }
        } else {
            c.boot_id = h.boot_id;
            self.dirty.insert(c.address.clone());
        }
        c.heartbeat_seq = Some(h.seq);
        c.uptime_ms = h.uptime_ms;
        c.arch = h.arch;
        c.last_seen_us = c.last_seen_us.max(h.seen_at_us);
        let change = match (c.state, same_boot) {
            (State::Silent, _) => Tracker::set_state(c, State::Alive, h.seen_at_us, "heartbeat"),
            (State::Crashed | State::DrillFailed, false) => Tracker::set_state(
                c,
                State::Recovered,
                h.seen_at_us,
                "heartbeat from a new boot",
            ),
            // A heartbeat of the boot that crashed arrived late (reordered): still crashed.
            _ => None,
        };
        if change.is_some() {
            self.dirty.insert(c.address.clone());
        }
        change
    }

    /// Marks `address` for the next save (no allocation when it is marked already: the writer
    /// calls this for every record stored).
    fn mark_dirty(&mut self, address: &str) {
        if !self.dirty.contains(address) {
            self.dirty.insert(address.to_string());
        }
    }

    /// A crash record from `address` was stored: the canary crashed (once per boot).
    pub fn record_stored(
        &mut self,
        address: &str,
        boot_id: [u8; 16],
        arch: u8,
        id: i64,
        at_us: i64,
    ) -> Option<Change> {
        let interval = self.cfg.default_interval_ms;
        let silent_after = self.silent_after(interval);
        if !self.canaries.contains_key(address) && !self.room() {
            return None;
        }
        self.mark_dirty(address);
        let Some(c) = self.canaries.get_mut(address) else {
            let c = Canary {
                address: address.to_string(),
                boot_id,
                arch,
                first_seen_us: at_us,
                last_seen_us: at_us,
                heartbeat_seq: None,
                uptime_ms: 0,
                interval_ms: interval,
                silent_after_ms: silent_after,
                state: State::Crashed,
                state_since_us: at_us,
                crashed_boot: Some(boot_id),
                last_record_id: Some(id),
                crashes: 1,
            };
            let change = Change {
                address: c.address.clone(),
                boot_id,
                from: None,
                to: State::Crashed,
                at_us,
                reason: "crash record (no heartbeat seen)".into(),
                interval_ms: interval,
                last_seen_us: at_us,
                record_id: Some(id),
            };
            self.canaries.insert(address.to_string(), c);
            return Some(change);
        };
        c.crashes += 1;
        c.last_record_id = Some(id);
        if c.state == State::Crashed && c.crashed_boot == Some(boot_id) {
            // Another record of the same crashed boot.
            return None;
        }
        if c.boot_id != boot_id {
            c.boot_id = boot_id;
            c.heartbeat_seq = None;
        }
        c.crashed_boot = Some(boot_id);
        Tracker::set_state(c, State::Crashed, at_us, "crash record stored")
    }

    /// A scheduled drill of `address` produced no record within its deadline.
    pub fn drill_failed(&mut self, address: &str, at_us: i64) -> Option<Change> {
        let c = self.canaries.get_mut(address)?;
        self.dirty.insert(address.to_string());
        Tracker::set_state(c, State::DrillFailed, at_us, "drill produced no record")
    }

    /// Canaries that expect heartbeats and got none for `silent_after_ms` turn `silent`.
    pub fn tick(&mut self, now_us: i64) -> Vec<Change> {
        let mut out = Vec::new();
        for c in self.canaries.values_mut() {
            let quiet_ms = now_us.saturating_sub(c.last_seen_us).max(0) as u64 / 1000;
            if c.state.expects_heartbeats() && quiet_ms > c.silent_after_ms {
                let reason = format!(
                    "no heartbeat for {} ms (silence {} x interval {} ms)",
                    quiet_ms, self.cfg.silence, c.interval_ms
                );
                if let Some(ch) = Tracker::set_state(c, State::Silent, now_us, &reason) {
                    self.dirty.insert(c.address.clone());
                    out.push(ch);
                }
            }
        }
        out
    }

    /// The canaries to write (changed since the last call).
    pub fn take_dirty(&mut self) -> Vec<Canary> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = Vec::with_capacity(dirty.len());
        for a in dirty {
            if let Some(c) = self.canaries.get(&a) {
                self.saved_interval.insert(a, c.interval_ms);
                out.push(c.clone());
            }
        }
        out
    }

    /// Puts rows back whose write failed.
    pub fn restore_dirty(&mut self, rows: &[Canary]) {
        for c in rows {
            self.dirty.insert(c.address.clone());
        }
    }
}

/// The state a reader shows: the stored one, or `silent` when `serve` has not (yet) said so
/// but the canary is quiet for longer than its threshold (also when `serve` is not running).
pub fn effective_state(c: &Canary, now_us: i64) -> State {
    let quiet_ms = now_us.saturating_sub(c.last_seen_us).max(0) as u64 / 1000;
    if c.state.expects_heartbeats() && quiet_ms > c.silent_after_ms {
        State::Silent
    } else {
        c.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(src: &str, boot: u8, seq: u32, uptime_ms: u64, at_ms: i64) -> HeartbeatSeen {
        HeartbeatSeen {
            boot_id: [boot; 16],
            source: src.into(),
            arch: 1,
            seen_at_us: at_ms * 1000,
            uptime_ms,
            seq,
        }
    }

    fn states(ch: &[Change]) -> Vec<(Option<State>, State)> {
        ch.iter().map(|c| (c.from, c.to)).collect()
    }

    #[test]
    fn a_quiet_canary_turns_silent_once_after_silence_times_its_interval() {
        let mut t = Tracker::new(LivenessConfig {
            silence: 3,
            default_interval_ms: 5000,
            ..LivenessConfig::default()
        });
        let first = t.heartbeat(&hb("a:1", 1, 0, 1000, 0)).unwrap();
        assert_eq!((first.from, first.to), (None, State::Alive));
        // Heartbeats every 100 ms: the interval is measured, 100 ms.
        for i in 1..=5 {
            assert_eq!(
                t.heartbeat(&hb(
                    "a:1",
                    1,
                    i,
                    1000 + 100 * u64::from(i),
                    100 * i64::from(i)
                )),
                None
            );
        }
        assert_eq!(t.get("a:1").unwrap().interval_ms, 100);
        // Last heartbeat at 500 ms: silent after 800 ms, not at 790.
        assert!(t.tick(790_000).is_empty());
        let ch = t.tick(801_000);
        assert_eq!(states(&ch), vec![(Some(State::Alive), State::Silent)]);
        assert!(t.tick(5_000_000).is_empty(), "one event, not one per tick");
        // Heartbeats again: alive.
        let ch = t.heartbeat(&hb("a:1", 1, 60, 7000, 6000)).unwrap();
        assert_eq!((ch.from, ch.to), (Some(State::Silent), State::Alive));
    }

    #[test]
    fn crash_then_a_new_boot_is_recovered_and_replays_change_nothing() {
        let mut t = Tracker::new(LivenessConfig::default());
        t.heartbeat(&hb("a:1", 1, 0, 0, 0));
        t.heartbeat(&hb("a:1", 1, 1, 5000, 5000));
        let ch = t.record_stored("a:1", [1; 16], 1, 7, 6_000_000).unwrap();
        assert_eq!((ch.from, ch.to), (Some(State::Alive), State::Crashed));
        assert_eq!(ch.record_id, Some(7));
        // A second record of the same boot, and a late heartbeat of that boot: no change.
        assert_eq!(t.record_stored("a:1", [1; 16], 1, 8, 6_001_000), None);
        assert_eq!(t.heartbeat(&hb("a:1", 1, 2, 10000, 6100)), None);
        // A crashed canary is not reported silent.
        assert!(t.tick(600_000_000).is_empty());
        let ch = t.heartbeat(&hb("a:1", 2, 0, 10, 700_000)).unwrap();
        assert_eq!((ch.from, ch.to), (Some(State::Crashed), State::Recovered));
        // A replayed heartbeat (old seq) of the new boot changes nothing.
        assert_eq!(t.heartbeat(&hb("a:1", 2, 0, 10, 700_001)), None);
        assert_eq!(t.get("a:1").unwrap().crashes, 2);
        let counts = t.counts();
        assert!(counts.contains(&(State::Recovered, 1)));
    }

    #[test]
    fn a_record_from_an_unknown_address_is_a_crashed_canary() {
        let mut t = Tracker::new(LivenessConfig::default());
        let ch = t.record_stored("b:2", [3; 16], 2, 1, 10).unwrap();
        assert_eq!((ch.from, ch.to), (None, State::Crashed));
        assert_eq!(t.take_dirty().len(), 1);
        assert!(t.take_dirty().is_empty());
    }

    #[test]
    fn new_addresses_beyond_the_limit_are_counted_not_tracked() {
        let mut t = Tracker::new(LivenessConfig {
            max_canaries: 2,
            ..LivenessConfig::default()
        });
        assert!(t.heartbeat(&hb("a:1", 1, 0, 0, 0)).is_some());
        assert!(t.record_stored("b:1", [2; 16], 1, 1, 0).is_some());
        assert_eq!(t.heartbeat(&hb("c:1", 3, 0, 0, 0)), None);
        assert_eq!(t.record_stored("d:1", [4; 16], 1, 2, 0), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.take_untracked(), 2);
        assert_eq!(t.take_untracked(), 0);
        // Known addresses still change state.
        assert!(t.record_stored("a:1", [1; 16], 1, 3, 10).is_some());
    }

    #[test]
    fn readers_see_silence_that_serve_did_not_write_yet() {
        let mut t = Tracker::new(LivenessConfig::default());
        t.heartbeat(&hb("a:1", 1, 0, 0, 0));
        let c = t.get("a:1").unwrap().clone();
        assert_eq!(effective_state(&c, 15_000_000), State::Alive);
        assert_eq!(effective_state(&c, 15_001_000), State::Silent);
    }
}
