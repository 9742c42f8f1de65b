//! Follow-up frames (`capture::followup`): the outcomes of the panic steps that ran after the
//! record was sealed. The receiver queues each one for the writer (which owns the store);
//! the writer attaches it to the stored record (`Store::put_followup`, committed before it
//! returns) and acks it with the follow-up statuses, after the batch's records are committed
//! (a record and its follow-up in one batch: the record goes first).
//!
//! The appliance sends a follow-up when its record is acked (crash registers and end still
//! pending: a host may stop the VM at the crash registers) and the more complete one from
//! the end step; the store keeps the one reporting more steps (`FollowupOutcome::Replaced`).
//!
//! After the acks, each follow-up stored or replacing a less complete one goes to the
//! observers ([`Stored`]): its steps' times to the step metrics, and a `crash_path` event
//! (`events::path`) with the id and source of the record `put_followup` attached it to; a
//! duplicate or one without its record changes nothing and sends none.
//!
//! Acks: `FOLLOWUP_STORED` for a follow-up stored now, replacing a less complete one, or
//! held already (one reporting as many steps stays: a duplicate); `FOLLOWUP_NO_RECORD`
//! when no record with the key is stored. The appliance sends a
//! follow-up only after its record was acked, i.e. committed, so a missing record is pruned
//! or was stored by another fleet: retransmitting will not change that.
use std::net::SocketAddr;

use capture::followup::{FollowupRepr, FOLLOWUP_NO_RECORD, FOLLOWUP_STORED};
use capture::wire::AckStatus;
use tracing::warn;

use super::Ack;
use crate::store::{FollowedRecord, FollowupOutcome, RecordKey, StepView, Store};

/// A follow-up on its way to the writer.
pub(super) struct Pending {
    pub(super) key: RecordKey,
    /// The whole datagram, as received (the store keeps it as is).
    pub(super) raw: Vec<u8>,
    pub(super) peer: SocketAddr,
    pub(super) received_unix_ms: i64,
}

impl Pending {
    /// A checked follow-up frame from `peer`.
    pub(super) fn new(f: &capture::followup::FollowupRepr, raw: &[u8], peer: SocketAddr) -> Self {
        Pending {
            key: RecordKey {
                boot_id: f.boot_id,
                seq: f.seq,
                record_crc: f.record_crc,
            },
            raw: raw.to_vec(),
            peer,
            received_unix_ms: crate::util::now_us() / 1000,
        }
    }

    /// Queue budget bytes.
    pub(super) fn cost(&self) -> usize {
        self.raw.len() + 128
    }
}

/// What the follow-ups of one batch changed, for the observers (after the acks).
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// The timed steps of the follow-ups stored now (for the step metrics: a record sealed at
    /// the panic screen carries freeze only).
    pub(crate) timed: Vec<StepView>,
    /// Each follow-up stored or replacing a less complete one, in order (for `crash_path`).
    pub(crate) paths: Vec<StoredFollowup>,
}

/// A follow-up stored, or replacing a less complete one.
#[derive(Debug, Clone)]
pub(crate) struct StoredFollowup {
    pub(crate) followup: FollowupRepr,
    /// The record it was attached to (its id and source), as the store found it.
    pub(crate) record: FollowedRecord,
    pub(crate) received_unix_ms: i64,
    /// It replaced a less complete one.
    pub(crate) replaced: bool,
}

impl Stored {
    /// Follow-up `p`, attached to `record`, replacing one that reported `replaced` steps
    /// (`None`: the first stored).
    fn push(&mut self, p: &Pending, record: FollowedRecord, replaced: Option<usize>) {
        let Some(f) = crate::followup_view::parse_stored(&p.raw) else {
            return;
        };
        self.paths.push(StoredFollowup {
            followup: f,
            record,
            received_unix_ms: p.received_unix_ms,
            replaced: replaced.is_some(),
        });
        // The steps it reports that the store did not have: all of them, or those past the
        // replaced one's (the steps run in order, so it reported a prefix of them).
        self.timed.extend(
            f.steps()
                .iter()
                .filter(|s| s.outcome != capture::panic::Outcome::Pending)
                .skip(replaced.unwrap_or(0))
                .map(|s| StepView {
                    step: s.step.name().to_string(),
                    outcome: s.outcome.to_string(),
                    elapsed_us: s.elapsed_us,
                }),
        );
    }
}

/// Stores each follow-up and pushes its ack. A store error leaves it unacked (the appliance
/// retransmits until its deadline). Returns what the follow-ups stored now changed.
pub(super) fn store_all(store: &mut Store, pending: &[Pending], acks: &mut Vec<Ack>) -> Stored {
    let mut out = Stored::default();
    for p in pending {
        let status = match store.put_followup(&p.key, &p.raw, p.received_unix_ms) {
            Ok(FollowupOutcome::Stored { record }) => {
                out.push(p, record, None);
                FOLLOWUP_STORED
            }
            Ok(FollowupOutcome::Replaced {
                record,
                reported_before,
            }) => {
                out.push(p, record, Some(reported_before));
                FOLLOWUP_STORED
            }
            // It holds one reporting as much: acked as the follow-up status (the appliance
            // stops resending); nothing changed.
            Ok(FollowupOutcome::Duplicate) => FOLLOWUP_STORED,
            Ok(FollowupOutcome::NoSuchRecord) => FOLLOWUP_NO_RECORD,
            Err(e) => {
                warn!(peer = %p.peer, "storing a follow-up failed: {e}");
                continue;
            }
        };
        // Stored, replaced or a duplicate: the held one reports at least as many steps.
        let held = if status == FOLLOWUP_STORED {
            crate::followup_view::reported(&p.raw)
        } else {
            0
        };
        acks.push(Ack {
            key: p.key,
            status: AckStatus::Other(status),
            peer: p.peer,
            followup_reported: u8::try_from(held).unwrap_or(u8::MAX),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{after_seal, followup_frame, sealed};
    use crate::store::Sync;
    use capture::panic::Outcome;

    /// The two follow-ups of one crash: the ship step's is acked saying 4 steps are held,
    /// the end step's 5 (so the appliance does not take a late ack of the first for the
    /// second's); the step metric gets each step once.
    #[test]
    fn the_acks_say_how_complete_the_held_followup_is_and_the_metric_counts_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), Sync::Normal).unwrap();
        let mut r = capture::testutil::sample_record(5);
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let n = sealed(&mut r, "10.0.0.5:4000", 1);
        let key = n.key;
        store
            .commit_batch(std::slice::from_ref(&n), &[], &[], &[])
            .unwrap();
        let pending = |done: usize| {
            let steps = after_seal(|i, _| {
                let outcome = if i < done {
                    Outcome::Done
                } else {
                    Outcome::Pending
                };
                (outcome, 3)
            });
            let frame = followup_frame(&key, &steps);
            let Ok(capture::wire::Repr::Followup(f)) = capture::wire::parse(&frame, None) else {
                panic!("the frame parses as a follow-up");
            };
            Pending::new(&f, &frame, peer)
        };
        let (first, second) = (pending(4), pending(5));
        let mut acks = Vec::new();
        let t1 = store_all(&mut store, std::slice::from_ref(&first), &mut acks);
        let t2 = store_all(&mut store, std::slice::from_ref(&second), &mut acks);
        // The first again, late: a duplicate, acked as the first (it holds more).
        let t3 = store_all(&mut store, std::slice::from_ref(&first), &mut acks);
        let said: Vec<(AckStatus, u8)> = acks
            .iter()
            .map(|a| (a.status, a.followup_reported))
            .collect();
        let stored = AckStatus::Other(FOLLOWUP_STORED);
        assert_eq!(said, [(stored, 4), (stored, 5), (stored, 4)]);
        let names = |t: &[StepView]| t.iter().map(|s| s.step.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&t1.timed),
            ["screen-flush", "vmbus-unload", "arch-cleanup", "ship"]
        );
        assert_eq!(names(&t2.timed), ["crash-registers"]);
        assert!(t3.timed.is_empty());
        // A crash_path event for the stored one and the one replacing it; none for the
        // duplicate.
        let paths = |s: &Stored| {
            s.paths
                .iter()
                .map(|p| (p.followup.reported(), p.replaced))
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&t1), [(4, false)]);
        assert_eq!(paths(&t2), [(5, true)]);
        assert!(t3.paths.is_empty());
    }
}

#[cfg(test)]
mod crash_path_events {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::events::{Dispatcher, EventConfig, LineSink};
    use crate::metrics::Health;
    use crate::server::observe::Observers;
    use crate::server::Counters;
    use crate::store::tests::{after_seal, followup_frame, sealed};
    use crate::store::Sync;
    use capture::panic::{Outcome, Step};

    /// The event lines the dispatcher wrote.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl LineSink for Lines {
        fn line(&mut self, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }

    /// The follow-up of record `key` from `peer` with the steps after the seal `f` gives.
    fn pending(
        key: &RecordKey,
        peer: SocketAddr,
        f: impl Fn(usize, Step) -> (Outcome, u32),
    ) -> Pending {
        let frame = followup_frame(key, &after_seal(f));
        let Ok(capture::wire::Repr::Followup(fu)) = capture::wire::parse(&frame, None) else {
            panic!("the frame parses as a follow-up");
        };
        Pending::new(&fu, &frame, peer)
    }

    /// The steps of a path whose VMBus unload failed (0x5) up to `upto` (after the seal:
    /// 4 = the ship step's follow-up, crash registers and end pending; 5 = the end step's).
    fn unload_failed(upto: usize) -> impl Fn(usize, Step) -> (Outcome, u32) {
        move |i, step| match step {
            _ if i >= upto => (Outcome::Pending, 0),
            Step::VmbusUnload => (Outcome::Failed(5), 20 + i as u32),
            _ => (Outcome::Done, 10 + i as u32),
        }
    }

    /// `serve`'s path for follow-ups, store to hook: each of `pending` stored in turn
    /// (`store_all`, then the observers, as the writer does after a commit), and what came
    /// out: the `crash_path` events the hook got, the dispatcher's INFO lines and the acks.
    fn path_events(
        dir: &std::path::Path,
        store: &mut Store,
        pending: &[&Pending],
    ) -> (Vec<serde_json::Value>, Vec<String>, Vec<Ack>) {
        let hook = dir.join("events.jsonl");
        let cfg = EventConfig {
            // The system shell appending the events to the file (on Windows `find "}"`: every
            // event line has one; Wine 8's `find` has no `/V ""`).
            hook: Some(if cfg!(windows) {
                format!("find \"}}\" >> \"{}\"", hook.display())
            } else {
                format!("cat >> '{}'", hook.display())
            }),
            hook_concurrency: 1,
            log_rate: 0,
            ..EventConfig::default()
        };
        let counters = Arc::new(Counters::default());
        let lines = Lines::default();
        let (sink, dispatcher) =
            Dispatcher::start_with(cfg, counters.clone(), None, Box::new(lines.clone())).unwrap();
        let mut obs = Observers::new(
            crate::liveness::LivenessConfig::default(),
            counters,
            Some(sink),
            None,
            Arc::new(Health::default()),
        );
        let mut acks = Vec::new();
        for p in pending {
            let s = store_all(store, std::slice::from_ref(*p), &mut acks);
            obs.followups_stored(&s);
        }
        drop(obs);
        dispatcher.finish(Duration::from_secs(10));
        let text = std::fs::read_to_string(&hook).unwrap_or_default();
        let events = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let lines = lines.0.lock().unwrap().clone();
        (events, lines, acks)
    }

    /// One follow-up stored with a failed VMBus unload (the ship step's, sent at the ack) is
    /// a `crash_path` event naming the failed step, not complete; the end step's replacing it
    /// is another, complete; the first again (a duplicate) and one without a record send
    /// none.
    #[test]
    fn a_stored_or_replacing_followup_sends_a_crash_path_event_and_a_duplicate_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), Sync::Normal).unwrap();
        let mut r = capture::testutil::sample_record(5);
        let n = sealed(&mut r, "10.0.0.5:4000", 1);
        let key = n.key;
        store
            .commit_batch(std::slice::from_ref(&n), &[], &[], &[])
            .unwrap();
        let id = store.last_stored_ids()[0];
        // The follow-ups come from another port of the host (the record's source stays).
        let peer: SocketAddr = "10.0.0.5:4001".parse().unwrap();
        let first = pending(&key, peer, unload_failed(4));
        let second = pending(&key, peer, unload_failed(5));
        let mut unknown = key;
        unknown.seq += 1;
        let orphan = pending(&unknown, peer, unload_failed(4));
        let (events, lines, acks) =
            path_events(dir.path(), &mut store, &[&first, &second, &first, &orphan]);
        assert_eq!(acks.len(), 4);
        assert_eq!(events.len(), 2, "{events:?}");
        let steps = |v: &serde_json::Value| -> Vec<String> {
            v["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| format!("{}={}@{}", s["step"], s["outcome"], s["elapsed_us"]))
                .map(|s| s.replace('"', ""))
                .collect()
        };
        let (a, b) = (&events[0], &events[1]);
        for v in [a, b] {
            assert_eq!(v["event"], "crash_path", "{v}");
            assert_eq!(v["id"], id, "{v}");
            assert_eq!(v["boot_id"], crate::util::hex(&key.boot_id));
            assert_eq!(v["seq"], key.seq);
            assert_eq!(v["record_crc"], format!("{:08x}", key.record_crc));
            assert_eq!(v["host"], "10.0.0.5");
            assert_eq!(v["source"], "10.0.0.5:4000");
            assert_eq!(v["failed_step"], "vmbus-unload", "{v}");
        }
        assert_eq!(a["complete"], false, "{a}");
        assert_eq!(a["replaced"], false, "{a}");
        assert_eq!(
            steps(a),
            [
                "screen-flush=done@10",
                "vmbus-unload=failed (0x5)@21",
                "arch-cleanup=done@12",
                "ship=done@13",
                "crash-registers=not reported@0",
                "end=not reported@0"
            ]
        );
        assert_eq!(b["complete"], true, "{b}");
        assert_eq!(b["replaced"], true, "{b}");
        assert_eq!(steps(b)[4], "crash-registers=done@14");
        assert_eq!(steps(b)[5], "end=started@0");
        // Each event's INFO line, with the one field to alert on.
        let boot = crate::util::hex(&key.boot_id);
        assert_eq!(
            lines,
            [
                format!(
                    "crash path id={id} boot={boot} seq={} host=10.0.0.5 complete=false \
                     reported=4 failed=vmbus-unload outcome=\"failed (0x5)\"",
                    key.seq
                ),
                format!(
                    "crash path id={id} boot={boot} seq={} host=10.0.0.5 complete=true \
                     reported=5 failed=vmbus-unload outcome=\"failed (0x5)\"",
                    key.seq
                ),
            ]
        );
    }

    /// Two records of one boot id and seq that differ in their CRC (the older from one port
    /// of the host, the newer from another): the follow-up of each is a `crash_path` event
    /// naming that record (its id and source, as its `crash_stored` did), not the newest of
    /// its boot id and seq, and not the follow-up's sender.
    #[test]
    fn a_crash_path_event_names_the_record_whose_crc_the_followup_carries() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), Sync::Normal).unwrap();
        let mut stored = Vec::new();
        for (uptime, source) in [(0, "10.0.0.5:4000"), (1, "10.0.0.5:4002")] {
            let mut r = capture::testutil::sample_record(5);
            r.uptime_us += uptime;
            let n = sealed(&mut r, source, 1);
            store
                .commit_batch(std::slice::from_ref(&n), &[], &[], &[])
                .unwrap();
            stored.push((n.key, store.last_stored_ids()[0], source));
        }
        let (older, newer) = (stored[0], stored[1]);
        assert_eq!(
            (older.0.boot_id, older.0.seq),
            (newer.0.boot_id, newer.0.seq)
        );
        assert_ne!(older.0.record_crc, newer.0.record_crc);
        let peer: SocketAddr = "10.0.0.5:4001".parse().unwrap();
        let of_older = pending(&older.0, peer, unload_failed(4));
        let of_newer = pending(&newer.0, peer, unload_failed(4));
        let (events, _, _) = path_events(dir.path(), &mut store, &[&of_older, &of_newer]);
        let got: Vec<_> = events
            .iter()
            .map(|v| {
                (
                    v["record_crc"].as_str().unwrap().to_string(),
                    v["id"].clone(),
                    v["source"].clone(),
                )
            })
            .collect();
        let want: Vec<_> = [older, newer]
            .iter()
            .map(|(k, id, source)| {
                (
                    format!("{:08x}", k.record_crc),
                    serde_json::json!(id),
                    serde_json::json!(source),
                )
            })
            .collect();
        assert_eq!(got, want);
    }
}
