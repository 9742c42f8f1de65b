//! The events module's tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::log::StoredLines;
use super::*;
use crate::liveness::State;
use crate::metrics::Metrics;
use crate::server::Counters;
use crate::store::{NewRecord, RecordKey, StepView};

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

/// A sink sending on `tx`, its queue counters fresh (`sink.bytes`, `sink.events`), at most
/// `log_rate` "crash stored" lines a second.
fn new_sink(
    tx: mpsc::SyncSender<(Queued, usize)>,
    counters: &Arc<Counters>,
    max_bytes: usize,
    max_events: usize,
    log_rate: u32,
    want_steps: bool,
    want_events: bool,
) -> EventSink {
    EventSink {
        tx,
        counters: counters.clone(),
        bytes: Arc::new(AtomicUsize::new(0)),
        max_bytes,
        events: Arc::new(AtomicUsize::new(0)),
        max_events,
        lines: StoredLines::new(log_rate),
        want_steps,
        want_events,
    }
}

#[test]
fn the_event_queue_is_bounded_in_bytes_and_drops_are_counted() {
    let (tx, rx) = mpsc::sync_channel(100);
    let counters = Arc::new(Counters::default());
    let mut sink = new_sink(tx, &counters, 3000, 100, 0, false, false);
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

fn new_record(i: i64) -> NewRecord {
    let rec = capture::testutil::sample_record(i as u32);
    NewRecord {
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
    }
}

fn stored(i: i64) -> StoredRecord {
    StoredRecord::new(i, &new_record(i), false, Wanted::ALL)
}

#[test]
fn a_commits_events_go_as_one_batch_and_each_counts_against_the_budgets() {
    let (tx, rx) = mpsc::sync_channel(100);
    let counters = Arc::new(Counters::default());
    let mut sink = new_sink(tx, &counters, 1 << 20, 5, 0, false, false);
    // Seven records, room for five events: one message with the first five, two dropped.
    sink.send_stored((1..=7).map(stored).collect());
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(got.len(), 1);
    let Queued::Stored(rs) = &got[0].0 else {
        panic!("a batch of stored records")
    };
    assert_eq!(rs.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 2);
    assert_eq!(sink.events.load(Ordering::Relaxed), 5);
    assert_eq!(sink.bytes.load(Ordering::Relaxed), got[0].1);
    // Full: a state event is dropped too.
    sink.send(crash(String::new()));
    assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 3);
    // And the byte budget bounds a batch the same way.
    let one = stored(1).cost();
    let (tx, rx) = mpsc::sync_channel(100);
    let sink = new_sink(tx, &counters, 2 * one + one / 2, 100, 0, false, false);
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
            let s = StoredRecord::new(40 + i as i64, &r, drill, Wanted::ALL);
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

/// Lines a test's dispatcher wrote.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<String>>>);

impl LineSink for Captured {
    fn line(&mut self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The ids of "crash stored id=…" lines.
fn logged_ids(lines: &[String]) -> Vec<i64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("crash stored id="))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// (count, first id, last id) of each summary line, in order.
fn summaries(lines: &[String]) -> Vec<(u64, i64, i64)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("crash stored: "))
        .map(|l| {
            let (n, rest) = l.split_once(" more record").expect("summary format");
            let rest = rest
                .trim_start_matches('s')
                .strip_prefix(" in ")
                .expect("summary");
            let (_, ids) = rest
                .split_once(" s not logged one by one (ids ")
                .expect("summary format");
            let (ids, tail) = ids.split_once(')').expect("summary format");
            assert_eq!(tail, "; host-collector list shows them", "{l}");
            let (a, b) = ids.split_once('-').expect("an id range");
            (n.parse().unwrap(), a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

#[test]
fn a_burst_beyond_the_rate_gets_n_lines_and_one_summary_when_its_second_is_over() {
    let mut limit = StoredLines::new(100);
    let t0 = Instant::now();
    // 1,000 records in 0.9 s, ids 1001..=2000.
    let mut admitted = Vec::new();
    for i in 0..1000 {
        let (line, summary) = limit.admit(1001 + i, t0 + Duration::from_micros(900 * i as u64));
        assert!(summary.is_empty());
        if line {
            admitted.push(1001 + i);
        }
    }
    assert_eq!(admitted, (1001..=1100).collect::<Vec<_>>());
    assert_eq!(limit.due(), Some(ms(t0, 1000)));
    assert!(limit.tick(ms(t0, 999)).is_empty());
    assert_eq!(
        limit.tick(ms(t0, 1000)),
        [
            "crash stored: 900 more records in 1.0 s not logged one by one (ids 1101-2000); \
          host-collector list shows them"
        ]
    );
    assert_eq!(limit.due(), None);
    // The next second starts afresh; nothing is summed up twice.
    assert_eq!(limit.admit(2001, ms(t0, 1500)), (true, vec![]));
    assert!(limit.flush(ms(t0, 1600)).is_empty());
}

#[test]
fn a_record_after_the_second_gets_the_summary_before_its_own_line() {
    let mut limit = StoredLines::new(100);
    let t0 = Instant::now();
    let n = (1..=150)
        .filter(|&id| {
            let (line, summary) = limit.admit(id, ms(t0, 3 * id as u64));
            assert!(summary.is_empty());
            line
        })
        .count();
    assert_eq!(n, 100);
    let (line, summary) = limit.admit(151, ms(t0, 1200));
    assert!(line);
    assert_eq!(summaries(&summary), [(50, 101, 150)]);
}

#[test]
fn below_the_rate_every_record_gets_its_line_and_no_summary() {
    let mut limit = StoredLines::new(100);
    let t0 = Instant::now();
    // 90 a second for 3 s, then 100 at once (the rate exactly).
    for id in 0..270 {
        assert_eq!(
            limit.admit(id, ms(t0, id as u64 * 1000 / 90)),
            (true, vec![]),
            "{id}"
        );
    }
    for id in 270..370 {
        assert_eq!(limit.admit(id, ms(t0, 5000)), (true, vec![]), "{id}");
    }
    assert_eq!(limit.due(), None);
    assert!(limit.tick(ms(t0, 9000)).is_empty());
    assert!(limit.flush(ms(t0, 9000)).is_empty());
}

#[test]
fn event_log_rate_zero_logs_every_record() {
    let mut limit = StoredLines::new(0);
    let t0 = Instant::now();
    assert!((0..10_000).all(|id| limit.admit(id, t0) == (true, vec![])));
    assert_eq!(limit.due(), None);
    assert!(limit.flush(t0).is_empty());
}

/// A dispatcher writing its lines to a [`Captured`].
fn dispatcher(rate: u32, metrics: Option<Metrics>) -> (EventSink, Dispatcher, Captured) {
    let out = Captured::default();
    let cfg = EventConfig {
        log_rate: rate,
        ..EventConfig::default()
    };
    let counters = Arc::new(Counters::default());
    let (sink, d) = Dispatcher::start_with(cfg, counters, metrics, Box::new(out.clone())).unwrap();
    (sink, d, out)
}

/// As the writer does after a commit: each stored record through [`EventSink::stored`], then
/// the batch.
fn commit(sink: &mut EventSink, ids: std::ops::RangeInclusive<i64>, now: Instant) {
    let mut batch = Vec::new();
    for id in ids {
        sink.stored(id, &new_record(id), false, now, &mut batch);
    }
    sink.send_stored(batch);
}

fn silent(i: u8) -> Event {
    Event::CanaryState(StateEvent {
        address: format!("10.0.0.{i}:7375"),
        host: String::new(),
        boot_id: "00".into(),
        from: Some(State::Alive),
        to: State::Silent,
        at: String::new(),
        at_us: 0,
        reason: "no heartbeat".into(),
        interval_ms: 1000,
        last_seen: String::new(),
        last_seen_us: 0,
        record_id: None,
    })
}

#[test]
fn a_burst_logs_n_lines_every_state_change_and_the_summary_at_exit() {
    let (metrics, registry) = Metrics::new();
    let (mut sink, dispatcher, out) = dispatcher(100, Some(metrics));
    let t0 = Instant::now();
    // 1,000 records in ten commits within 0.9 s.
    for c in 0..10 {
        commit(
            &mut sink,
            c * 100 + 1..=c * 100 + 100,
            ms(t0, c as u64 * 90),
        );
    }
    // Twenty state changes after the burst: none is held back.
    for i in 0..20 {
        sink.send(silent(i));
    }
    drop(sink);
    dispatcher.finish(Duration::ZERO);
    let lines = out.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("canary silent "))
            .count(),
        20
    );
    let ids = logged_ids(&lines);
    assert_eq!(ids, (1..=100).collect::<Vec<_>>());
    // The summary, written at exit, is the last line.
    assert_eq!(summaries(&lines), [(900, 101, 1000)]);
    assert!(
        lines.last().unwrap().starts_with("crash stored: 900 more"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 121);
    for id in ids {
        assert!(lines.contains(&stored(id).log_line()), "{id}");
    }
    // The step metrics still see every record.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let counted: usize = text
        .lines()
        .filter(|l| l.starts_with("canary_collector_panic_step_seconds_count{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    let steps: usize = (1..=1000).map(|i| stored(i).steps().len()).sum();
    assert!(steps >= 1000);
    assert_eq!(counted, steps);
}

#[test]
fn the_writers_tick_queues_the_summary_when_its_second_is_over() {
    let (mut sink, dispatcher, out) = dispatcher(10, None);
    let t0 = Instant::now();
    commit(&mut sink, 1..=30, t0);
    sink.tick(ms(t0, 999));
    sink.tick(ms(t0, 1000));
    let end = Instant::now() + Duration::from_secs(5);
    while summaries(&out.lines()).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(summaries(&out.lines()), [(20, 11, 30)]);
    assert_eq!(logged_ids(&out.lines()), (1..=10).collect::<Vec<_>>());
    // The next second: lines again, and its own summary at exit.
    commit(&mut sink, 31..=45, ms(t0, 1500));
    drop(sink);
    dispatcher.finish(Duration::ZERO);
    let lines = out.lines();
    assert_eq!(
        logged_ids(&lines),
        (1..=10).chain(31..=40).collect::<Vec<_>>()
    );
    assert_eq!(summaries(&lines), [(20, 11, 30), (5, 41, 45)]);
    assert_eq!(lines.len(), 22);
}

#[test]
fn a_record_without_a_line_costs_nothing_unless_metrics_or_hooks_want_it() {
    let t0 = Instant::now();
    for (want_steps, want_events) in [(false, false), (true, false), (false, true)] {
        let (tx, rx) = mpsc::sync_channel(100);
        let counters = Arc::new(Counters::default());
        let mut sink = new_sink(tx, &counters, 1 << 20, 100, 10, want_steps, want_events);
        commit(&mut sink, 1..=30, t0);
        let Some((Queued::Stored(rs), _)) = rx.try_iter().next() else {
            panic!("a batch")
        };
        let what = (want_steps, want_events);
        if want_steps || want_events {
            assert_eq!(rs.len(), 30, "{what:?}");
        } else {
            assert_eq!(
                rs.iter().map(|r| r.id).collect::<Vec<_>>(),
                (1..=10).collect::<Vec<_>>()
            );
        }
        for r in &rs {
            assert_eq!(r.line, r.id <= 10, "{what:?}");
            let full = stored(r.id);
            // A line: the columns of the line; steps: the JSON; an event: everything.
            assert_eq!(
                r.steps_json() == full.steps_json(),
                want_steps || want_events
            );
            if r.line || want_events {
                assert_eq!(r.log_line(), full.log_line());
            } else {
                assert!(
                    r.cost() < full.cost(),
                    "{what:?}: nothing of the line copied"
                );
            }
            if want_events {
                assert_eq!(r.cost(), full.cost());
            }
        }
        // A stored record's event sent whole counts against the rate too; a state change never.
        sink.send(crash(String::new()));
        sink.send(silent(1));
        let flags: Vec<bool> = rx
            .try_iter()
            .filter_map(|(q, _)| match q {
                Queued::Event(_, line) => Some(line),
                _ => None,
            })
            .collect();
        assert_eq!(flags, [false, true]);
    }
}

#[test]
fn step_metrics_from_the_json_match_observe_steps() {
    // The step histograms' lines, sorted (the families' order is a hash map's).
    let render = |reg: &prometheus_client::registry::Registry| {
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, reg).unwrap();
        let mut lines: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("canary_collector_panic_step_seconds"))
            .collect();
        lines.sort_unstable();
        lines.join("\n")
    };
    let (old, old_reg) = Metrics::new();
    let (new, new_reg) = Metrics::new();
    let mut from_json = super::steps::StepMetrics::new(new.clone());
    let mut from_views = super::steps::StepMetrics::new(new);
    let mut records: Vec<StoredRecord> = (1..=20).map(stored).collect();
    // A step name the JSON escapes, and JSON that does not parse (no steps, as before).
    let odd = r#"[{"step":"a \"b\"\n","outcome":"ok","elapsed_us":7}]"#;
    let no_outcome = r#"[{"step":"x","elapsed_us":5}]"#;
    for (i, json) in [odd, "not json", no_outcome].into_iter().enumerate() {
        use crate::store::{Col, RowText};
        let mut text = RowText::default();
        text.set(Col::Source, |s| s.push_str("127.0.0.1:9"));
        text.set(Col::Kind, |s| s.push_str("panic"));
        text.set(Col::Steps, |s| s.push_str(json));
        let r = NewRecord {
            key: RecordKey {
                boot_id: [i as u8; 16],
                seq: 1,
                record_crc: 1,
            },
            received_at_us: 0,
            schema_major: 1,
            schema_minor: 1,
            uptime_us: 0,
            line_col: (1, 2),
            text,
            raw: Vec::new(),
        };
        records.push(StoredRecord::new(90 + i as i64, &r, false, Wanted::ALL));
    }
    for (i, r) in records.iter().enumerate() {
        old.observe_steps(&r.steps());
        // Half through each path: both feed the same histograms.
        if i % 2 == 0 {
            from_json.observe_json(r.steps_json());
        } else {
            from_views.observe(&r.steps());
        }
    }
    let want = render(&old_reg);
    // The seven steps of the sample records and the odd one.
    let steps = want
        .lines()
        .filter(|l| l.starts_with("canary_collector_panic_step_seconds_count{"))
        .count();
    assert_eq!(steps, 8, "{want}");
    assert_eq!(render(&new_reg), want);
}

/// What serde makes of steps JSON: (step, elapsed_us) pairs, or none if it does not parse.
fn serde_steps(json: &str) -> Vec<(String, u32)> {
    serde_json::from_str::<Vec<StepView>>(json)
        .map(|v| v.into_iter().map(|s| (s.step, s.elapsed_us)).collect())
        .unwrap_or_default()
}

#[test]
fn the_steps_scanner_agrees_with_serde_or_leaves_it_to_serde() {
    let full = stored(3).steps_json().to_string();
    assert_eq!(serde_steps(&full).len(), 7);
    let mut inputs: Vec<String> = vec![
        full.clone(),
        "[]".into(),
        "[] ".into(),
        " []".into(),
        r#"[{"step":"a","outcome":"ok","elapsed_us":0}]"#.into(),
        r#"[{"step":"a","outcome":"ok","elapsed_us":007}]"#.into(),
        r#"[{"step":"a","outcome":"ok","elapsed_us":4294967296}]"#.into(),
        r#"[{"step":"a","outcome":"ok","elapsed_us":-1}]"#.into(),
        r#"[{"step":"a","outcome":"ok","elapsed_us":1.5}]"#.into(),
        r#"[{"step":"a \"b\"","outcome":"ok","elapsed_us":7}]"#.into(),
        r#"[{"outcome":"ok","step":"a","elapsed_us":7}]"#.into(),
        r#"[{"step":"a","outcome":"o\"k","elapsed_us":7}]"#.into(),
        r#"[{"step":"a","outcome":"ok","elapsed_us":7},]"#.into(),
        r#"[{"step":"a","outcome":"ok","elapsed_us":7}]x"#.into(),
        format!(
            "[{}]",
            vec![r#"{"step":"s","outcome":"ok","elapsed_us":1}"#; 20].join(",")
        ),
    ];
    // Every cut of a real one (none is JSON but the whole).
    inputs.extend((0..full.len()).map(|i| full[..i].to_string()));
    for json in &inputs {
        let mut out = [("", 0); 16];
        let want = serde_steps(json);
        match super::steps::scan(json, &mut out) {
            Some(n) => {
                let got: Vec<(String, u32)> = out[..n]
                    .iter()
                    .map(|(s, us)| (s.to_string(), *us))
                    .collect();
                assert_eq!(got, want, "{json}");
            }
            // Left to serde: fine whatever serde says, but the real JSON must not be.
            None => assert_ne!(json, &full, "the collector's own JSON takes the fast path"),
        }
    }
}

/// The stored follow-up of record `id` (boot `ab…`, seq 7) from 10.0.0.7, its steps after the
/// seal as `f` gives them.
fn path(
    id: Option<i64>,
    replaced: bool,
    f: impl Fn(usize, capture::panic::Step) -> (capture::panic::Outcome, u32),
) -> StoredPath {
    let key = RecordKey {
        boot_id: [0xab; 16],
        seq: 7,
        record_crc: 0xdead_beef,
    };
    let frame = crate::store::tests::followup_frame(&key, &crate::store::tests::after_seal(f));
    StoredPath {
        id,
        source: "10.0.0.7:7375".into(),
        received_at_us: 1_700_000_000_000_000,
        replaced,
        followup: crate::followup_view::parse_stored(&frame).expect("a follow-up"),
    }
}

/// The ship step's follow-up (sent at the ack: crash registers and end pending) of a path
/// whose VMBus unload failed with code 5.
fn unload_failed() -> StoredPath {
    use capture::panic::{Outcome, Step};
    path(Some(40), false, |i, step| match step {
        Step::CrashRegisters | Step::End => (Outcome::Pending, 0),
        Step::VmbusUnload => (Outcome::Failed(5), 900),
        _ => (Outcome::Done, 10 * (i as u32 + 1)),
    })
}

/// `(step, outcome)` of an event's steps.
fn outcomes(v: &serde_json::Value) -> Vec<(String, String)> {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let s = |k: &str| s[k].as_str().unwrap().to_string();
            (s("step"), s("outcome"))
        })
        .collect()
}

#[test]
fn a_followup_with_a_failed_vmbus_unload_is_a_crash_path_event_naming_it() {
    let p = unload_failed();
    let e = Event::CrashPath(p.event());
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v["event"], "crash_path", "{v}");
    assert_eq!(v["id"], 40);
    assert_eq!(v["boot_id"], "ab".repeat(16));
    assert_eq!(v["seq"], 7);
    assert_eq!(v["record_crc"], "deadbeef");
    assert_eq!(v["host"], "10.0.0.7");
    assert_eq!(v["source"], "10.0.0.7:7375");
    assert_eq!(v["received_at"], "2023-11-14T22:13:20Z");
    assert_eq!(v["replaced"], false);
    assert_eq!(
        v["complete"], false,
        "crash registers and end had not run: {v}"
    );
    assert_eq!(v["failed_step"], "vmbus-unload", "{v}");
    let want: Vec<(String, String)> = [
        ("screen-flush", "done"),
        ("vmbus-unload", "failed (0x5)"),
        ("arch-cleanup", "done"),
        ("ship", "done"),
        ("crash-registers", "not reported"),
        ("end", "not reported"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(outcomes(&v), want);
    assert_eq!(v["steps"][1]["elapsed_us"], 900);
    assert_eq!(v["steps"][3]["elapsed_us"], 40);
    let line = format!(
        "crash path id=40 boot={} seq=7 host=10.0.0.7 complete=false reported=4 \
         failed=vmbus-unload outcome=\"failed (0x5)\"",
        "ab".repeat(16)
    );
    assert_eq!(log_line(&e), line);
    assert_eq!(p.log_line(), line);
}

#[test]
fn the_end_steps_followup_is_complete_and_a_timeout_is_a_failure() {
    use capture::panic::{Outcome, Step};
    // The end step's follow-up of a clean path, with no record id.
    let p = path(None, true, |_, step| match step {
        Step::End => (Outcome::Pending, 0),
        Step::CrashRegisters => (Outcome::NotPresent, 1),
        _ => (Outcome::Done, 5),
    });
    let v = serde_json::to_value(Event::CrashPath(p.event())).unwrap();
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["replaced"], true);
    assert_eq!(v["failed_step"], serde_json::Value::Null, "{v}");
    assert_eq!(v["id"], serde_json::Value::Null);
    let o = outcomes(&v);
    assert_eq!(o[4].1, "not present");
    assert_eq!(o[5], ("end".to_string(), "started".to_string()));
    assert_eq!(
        p.log_line(),
        format!(
            "crash path id=- boot={} seq=7 host=10.0.0.7 complete=true reported=5 failed=-",
            "ab".repeat(16)
        )
    );
    // Gave up at the deadline: a failure too; the first in the order the steps ran is named;
    // a skip (a busy lock) is not one.
    let p = path(Some(1), false, |_, step| match step {
        Step::ScreenFlush => (Outcome::SkippedBusy, 1),
        Step::ArchCleanup => (Outcome::TimedOut, 2),
        Step::Ship => (Outcome::Failed(1), 3),
        _ => (Outcome::Done, 4),
    });
    let ev = p.event();
    assert_eq!(ev.failed_step.as_deref(), Some("arch-cleanup"));
    // Every step done, end included: complete, whatever sent it.
    let p = path(Some(1), false, |_, _| (Outcome::Done, 4));
    assert!(p.event().complete);
    assert!(p.log_line().ends_with(" complete=true reported=6 failed=-"));
}

#[test]
fn crash_path_lines_share_the_log_rate_and_are_summed_up_apart() {
    let mut limit = StoredLines::new(3);
    let t0 = Instant::now();
    assert!(limit.admit(1, t0).0);
    assert!(limit.admit_path(Some(1), ms(t0, 1)).0);
    assert!(limit.admit(2, ms(t0, 2)).0);
    // The budget is spent: neither kind gets a line.
    assert!(!limit.admit_path(Some(2), ms(t0, 3)).0);
    assert!(!limit.admit(3, ms(t0, 4)).0);
    assert!(!limit.admit_path(None, ms(t0, 5)).0);
    assert!(!limit.admit_path(Some(9), ms(t0, 6)).0);
    assert_eq!(limit.due(), Some(ms(t0, 1000)));
    assert_eq!(
        limit.tick(ms(t0, 1000)),
        [
            "crash stored: 1 more record in 1.0 s not logged one by one (ids 3-3); \
             host-collector list shows them",
            "crash path: 3 more follow-ups in 1.0 s not logged one by one (records 2-9); \
             host-collector show ID shows their steps"
        ]
    );
    // Only follow-ups without a record id: no range.
    assert!(limit.admit(4, ms(t0, 1100)).0);
    for t in 0..2 {
        assert!(limit.admit_path(Some(5), ms(t0, 1100 + t)).0);
    }
    assert!(!limit.admit_path(None, ms(t0, 1200)).0);
    assert_eq!(
        limit.flush(ms(t0, 1300)),
        [
            "crash path: 1 more follow-up in 0.2 s not logged one by one; \
          host-collector show ID shows their steps"
        ]
    );
}

#[test]
fn a_followup_without_a_line_is_queued_only_for_hooks_and_webhooks() {
    let t0 = Instant::now();
    for want_events in [false, true] {
        let (tx, rx) = mpsc::sync_channel(100);
        let counters = Arc::new(Counters::default());
        let mut sink = new_sink(tx, &counters, 1 << 20, 100, 1, true, want_events);
        sink.path(unload_failed(), t0);
        // Past the rate: no line.
        sink.path(unload_failed(), ms(t0, 10));
        let got: Vec<bool> = rx
            .try_iter()
            .map(|(q, _)| match q {
                Queued::Path(p, line) => {
                    assert_eq!(p.id, Some(40));
                    line
                }
                _ => panic!("a follow-up"),
            })
            .collect();
        if want_events {
            assert_eq!(got, [true, false]);
        } else {
            assert_eq!(got, [true]);
        }
        assert_eq!(sink.events.load(Ordering::Relaxed), got.len());
        assert_eq!(
            sink.bytes.load(Ordering::Relaxed),
            got.len() * unload_failed().cost()
        );
        // The same budgets as the other events: full, it is dropped and counted.
        sink.max_events = got.len();
        sink.lines = StoredLines::new(0);
        sink.path(unload_failed(), t0);
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 1);
        assert!(rx.try_iter().next().is_none());
    }
}

#[test]
fn the_dispatcher_logs_a_crash_path_line() {
    let (mut sink, dispatcher, out) = dispatcher(0, None);
    commit(&mut sink, 40..=40, Instant::now());
    sink.path(unload_failed(), Instant::now());
    drop(sink);
    dispatcher.finish(Duration::ZERO);
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("crash stored id=40 "), "{lines:?}");
    assert_eq!(lines[1], unload_failed().log_line());
}
