//! The events module's tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use super::*;
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
