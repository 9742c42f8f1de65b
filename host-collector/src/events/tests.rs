//! The events module's tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::log::StoredLines;
use super::*;
use crate::liveness::State;
use crate::metrics::Metrics;
use crate::server::Counters;
use crate::store::{NewRecord, RecordKey};

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

fn ms(t0: std::time::Instant, ms: u64) -> std::time::Instant {
    t0 + Duration::from_millis(ms)
}

#[test]
fn a_burst_beyond_the_rate_gets_n_lines_and_one_summary_when_its_second_is_over() {
    let mut out = Captured::default();
    let mut limit = StoredLines::new(100);
    let t0 = std::time::Instant::now();
    // 1,000 records in 0.9 s, ids 1001..=2000.
    let admitted: Vec<i64> = (0..1000)
        .filter(|&i| {
            limit.admit(
                1001 + i,
                t0 + Duration::from_micros(900 * i as u64),
                &mut out,
            )
        })
        .map(|i| 1001 + i)
        .collect();
    assert_eq!(admitted, (1001..=1100).collect::<Vec<_>>());
    assert!(out.lines().is_empty(), "{:?}", out.lines());
    assert_eq!(limit.due(), Some(ms(t0, 1000)));
    limit.tick(ms(t0, 999), &mut out);
    assert!(out.lines().is_empty(), "{:?}", out.lines());
    limit.tick(ms(t0, 1000), &mut out);
    assert_eq!(
        out.lines(),
        [
            "crash stored: 900 more records in 1.0 s not logged one by one (ids 1101-2000); \
          host-collector list shows them"
        ]
    );
    assert_eq!(limit.due(), None);
    // The next second starts afresh; nothing is written twice.
    assert!(limit.admit(2001, ms(t0, 1500), &mut out));
    limit.flush(ms(t0, 1600), &mut out);
    assert_eq!(out.lines().len(), 1);
}

#[test]
fn a_record_after_the_second_writes_the_summary_before_its_own_line() {
    let mut out = Captured::default();
    let mut limit = StoredLines::new(100);
    let t0 = std::time::Instant::now();
    let n = (1..=150)
        .filter(|&id| limit.admit(id, ms(t0, 3 * id as u64), &mut out))
        .count();
    assert_eq!(n, 100);
    assert!(out.lines().is_empty());
    assert!(limit.admit(151, ms(t0, 1200), &mut out));
    assert_eq!(summaries(&out.lines()), [(50, 101, 150)]);
}

#[test]
fn below_the_rate_every_record_gets_its_line_and_no_summary() {
    let mut out = Captured::default();
    let mut limit = StoredLines::new(100);
    let t0 = std::time::Instant::now();
    // 90 a second for 3 s, then 100 at once (the rate exactly).
    for id in 0..270 {
        assert!(
            limit.admit(id, ms(t0, id as u64 * 1000 / 90), &mut out),
            "{id}"
        );
    }
    for id in 270..370 {
        assert!(limit.admit(id, ms(t0, 5000), &mut out), "{id}");
    }
    assert_eq!(limit.due(), None);
    limit.tick(ms(t0, 9000), &mut out);
    limit.flush(ms(t0, 9000), &mut out);
    assert!(out.lines().is_empty(), "{:?}", out.lines());
}

#[test]
fn event_log_rate_zero_logs_every_record() {
    let mut out = Captured::default();
    let mut limit = StoredLines::new(0);
    let t0 = std::time::Instant::now();
    assert!((0..10_000).all(|id| limit.admit(id, t0, &mut out)));
    assert_eq!(limit.due(), None);
    limit.flush(t0, &mut out);
    assert!(out.lines().is_empty());
}

#[test]
fn through_the_dispatcher_a_burst_logs_n_lines_state_changes_all_and_the_summary_at_exit() {
    let out = Captured::default();
    let (metrics, registry) = Metrics::new();
    let cfg = EventConfig {
        log_rate: 100,
        ..EventConfig::default()
    };
    let counters = Arc::new(Counters::default());
    let started = std::time::Instant::now();
    let (sink, dispatcher) =
        Dispatcher::start_with(cfg, counters, Some(metrics), Box::new(out.clone())).unwrap();
    let records: Vec<StoredRecord> = (1..=1000).map(stored).collect();
    let steps: usize = records.iter().map(|r| r.steps().len()).sum();
    for batch in records.chunks(100) {
        sink.send_stored(batch.to_vec());
    }
    // Twenty state changes after the burst: none is held back.
    for i in 0..20 {
        sink.send(Event::CanaryState(StateEvent {
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
        }));
    }
    drop(sink);
    dispatcher.finish(Duration::ZERO);
    let took = started.elapsed();
    let lines = out.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("canary silent "))
            .count(),
        20
    );
    let ids = logged_ids(&lines);
    let sums = summaries(&lines);
    let more: u64 = sums.iter().map(|s| s.0).sum();
    assert_eq!(ids.len() as u64 + more, 1000, "{sums:?}");
    if took < Duration::from_millis(900) {
        // All in one second: N lines, then the summary written at exit.
        assert_eq!(ids, (1..=100).collect::<Vec<_>>());
        assert_eq!(sums, [(900, 101, 1000)]);
        assert!(
            lines.last().unwrap().starts_with("crash stored: 900 more"),
            "{lines:?}"
        );
    }
    for id in ids {
        assert!(lines.contains(&records[id as usize - 1].log_line()), "{id}");
    }
    // The step metrics still see every record.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let counted: usize = text
        .lines()
        .filter(|l| l.starts_with("canary_collector_panic_step_seconds_count{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(counted, steps);
}

#[test]
fn a_pending_summary_is_written_when_its_second_is_over_without_more_records() {
    let out = Captured::default();
    let cfg = EventConfig {
        log_rate: 10,
        ..EventConfig::default()
    };
    let (sink, dispatcher) = Dispatcher::start_with(
        cfg,
        Arc::new(Counters::default()),
        None,
        Box::new(out.clone()),
    )
    .unwrap();
    sink.send_stored((1..=30).map(stored).collect());
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while summaries(&out.lines()).is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(summaries(&out.lines()), [(20, 11, 30)]);
    assert_eq!(logged_ids(&out.lines()), (1..=10).collect::<Vec<_>>());
    drop(sink);
    dispatcher.finish(Duration::ZERO);
    assert_eq!(out.lines().len(), 11, "nothing more at exit");
}
