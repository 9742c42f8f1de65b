//! The receiver's paths from datagram to queued message: the lean path for whole records,
//! the full decode for everything it does not take, and reassembly of chunked records.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::chunk::{chunk_count, chunk_repr, emit_chunk, Reassembler, ReassemblerConfig};
use capture::record::{CrashRecord, MAX_ENCODED_LEN, SCHEMA_MAJOR, SCHEMA_MINOR};
use capture::testutil::{max_record, sample_record};
use capture::wire::{self, Repr};
use capture::RecordId;

use super::super::maint::RateLimit;
use super::super::{Counters, Msg, Queue};
use super::{Clock, Receiver};
use crate::convert::row_text_lean;
use crate::store::{Col, NewRecord, RecordKey, RowText};

const PEER: &str = "10.1.2.3:4567";

fn receiver() -> Receiver {
    Receiver {
        reasm: Reassembler::new(ReassemblerConfig::default()),
        started: Instant::now(),
        key: None,
        counters: Arc::new(Counters::default()),
        queue: Arc::new(Queue::new(16, 1 << 20)),
        out: Vec::new(),
        evicted_seen: 0,
        expired_seen: 0,
        evicted_bytes_seen: 0,
        writer_gone: false,
        reject_warn: RateLimit::new(Duration::from_secs(10)),
    }
}

const NOW: Clock = Clock {
    us: 1_700_000_000_000_000,
    ms: 5,
};

fn encode(r: &CrashRecord) -> Vec<u8> {
    let mut b = vec![0u8; MAX_ENCODED_LEN];
    r.encode(&mut b).unwrap().to_vec()
}

/// The frames of `body` as record `id` with `schema`.
fn frames(id: &RecordId, body: &[u8], schema: (u16, u16)) -> Vec<Vec<u8>> {
    (0..chunk_count(body.len()) as u16)
        .map(|i| {
            let c = chunk_repr(id, body, i, schema).unwrap();
            let mut out = [0u8; wire::MAX_DATAGRAM];
            let n = Repr::Chunk(c).emit(None, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

fn feed(rx: &mut Receiver, frames: &[Vec<u8>]) {
    for f in frames {
        rx.handle(f, PEER.parse().unwrap(), NOW);
    }
}

/// The record the full decode (`CrashRecord::decode` and `row_text_lean`) makes of `body`:
/// what the receiver queued before the lean path.
fn full_way(id: &RecordId, body: &[u8], schema: (u16, u16)) -> NewRecord {
    let rec = CrashRecord::decode(schema.0, schema.1, body).unwrap();
    NewRecord {
        key: RecordKey {
            boot_id: id.boot_id,
            seq: id.seq,
            record_crc: id.record_crc,
        },
        received_at_us: NOW.us,
        schema_major: schema.0,
        schema_minor: schema.1,
        uptime_us: rec.uptime_us,
        line_col: rec.location.as_ref().map_or((0, 0), |l| (l.line, l.column)),
        text: row_text_lean(PEER.parse().unwrap(), &rec),
        raw: body.to_vec(),
    }
}

fn columns(t: &RowText) -> Vec<Option<String>> {
    Col::ALL
        .iter()
        .map(|&c| t.get(c).map(str::to_string))
        .collect()
}

fn assert_same_record(got: &NewRecord, want: &NewRecord) {
    assert_eq!(got.key, want.key);
    assert_eq!(got.received_at_us, want.received_at_us);
    assert_eq!(
        (got.schema_major, got.schema_minor),
        (want.schema_major, want.schema_minor)
    );
    assert_eq!(got.uptime_us, want.uptime_us);
    assert_eq!(got.line_col, want.line_col);
    assert_eq!(columns(&got.text), columns(&want.text));
    assert_eq!(got.text.load_base, want.text.load_base);
    assert_eq!(got.text.step_us, want.text.step_us);
    assert_eq!(got.raw, want.raw);
}

fn one_record(rx: &mut Receiver) -> NewRecord {
    assert_eq!(rx.out.len(), 1, "one message queued");
    match rx.out.pop() {
        Some(Msg::Record(r, peer)) => {
            assert_eq!(peer, PEER.parse::<SocketAddr>().unwrap());
            *r
        }
        _ => panic!("not a record"),
    }
}

fn one_rejection(rx: &mut Receiver) -> String {
    assert_eq!(rx.out.len(), 1, "one message queued");
    match rx.out.pop() {
        Some(Msg::Reject(r, _)) => r.reason,
        _ => panic!("not a rejection"),
    }
}

#[test]
fn a_whole_record_in_one_datagram_queues_what_the_full_decode_gives() {
    let schema = (SCHEMA_MAJOR, SCHEMA_MINOR);
    for rec in [sample_record(1), sample_record(600)] {
        let body = encode(&rec);
        let id = RecordId::of(rec.boot_id, rec.seq, &body);
        let f = frames(&id, &body, schema);
        assert_eq!(f.len(), 1, "a typical record fits one datagram");
        let mut rx = receiver();
        feed(&mut rx, &f);
        assert_same_record(&one_record(&mut rx), &full_way(&id, &body, schema));
        assert_eq!(rx.counters.datagrams.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn a_record_of_several_datagrams_is_reassembled_in_any_order() {
    let rec = max_record();
    let body = encode(&rec);
    let id = RecordId::of(rec.boot_id, rec.seq, &body);
    let schema = (SCHEMA_MAJOR, SCHEMA_MINOR);
    let mut f = frames(&id, &body, schema);
    assert!(f.len() >= 3, "{} chunks", f.len());
    f.reverse();
    let mut rx = receiver();
    feed(&mut rx, &f[..f.len() - 1]);
    assert!(rx.out.is_empty(), "incomplete: nothing queued");
    feed(&mut rx, &f[f.len() - 1..]);
    assert_same_record(&one_record(&mut rx), &full_way(&id, &body, schema));
    // A retransmitted chunk of the finished record starts a new partial, not a record.
    feed(&mut rx, &f[..1]);
    assert!(rx.out.is_empty());
}

#[test]
fn a_record_whose_crc_does_not_match_is_not_queued() {
    let rec = sample_record(2);
    let body = encode(&rec);
    let mut id = RecordId::of(rec.boot_id, rec.seq, &body);
    id.record_crc ^= 1;
    let mut rx = receiver();
    feed(&mut rx, &frames(&id, &body, (SCHEMA_MAJOR, SCHEMA_MINOR)));
    assert!(rx.out.is_empty());
    assert_eq!(rx.counters.reassembly_errors.load(Ordering::Relaxed), 1);

    // A frame whose own CRC is wrong is dropped before reassembly.
    let id = RecordId::of(rec.boot_id, rec.seq, &body);
    let mut f = frames(&id, &body, (SCHEMA_MAJOR, SCHEMA_MINOR));
    f[0][40] ^= 0x10;
    let mut rx = receiver();
    feed(&mut rx, &f);
    assert!(rx.out.is_empty());
    assert_eq!(rx.counters.bad_crc.load(Ordering::Relaxed), 1);
}

#[test]
fn a_body_that_does_not_decode_is_rejected_with_decodes_reason() {
    let rec = sample_record(3);
    let mut body = encode(&rec);
    body.push(0); // a trailing byte
    let id = RecordId::of(rec.boot_id, rec.seq, &body);
    let mut rx = receiver();
    feed(&mut rx, &frames(&id, &body, (SCHEMA_MAJOR, SCHEMA_MINOR)));
    let want = CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, &body)
        .unwrap_err()
        .to_string();
    assert_eq!(one_rejection(&mut rx), want);

    // A body cut short (its last group incomplete).
    let mut body = encode(&rec);
    body.truncate(body.len() - 1);
    let id = RecordId::of(rec.boot_id, rec.seq, &body);
    feed(&mut rx, &frames(&id, &body, (SCHEMA_MAJOR, SCHEMA_MINOR)));
    let want = CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, &body).unwrap_err();
    assert_eq!(one_rejection(&mut rx), want.to_string());
}

#[test]
fn a_body_naming_another_record_is_rejected() {
    let rec = sample_record(4);
    let body = encode(&rec);
    let id = RecordId::of(rec.boot_id, rec.seq + 1, &body);
    let mut rx = receiver();
    feed(&mut rx, &frames(&id, &body, (SCHEMA_MAJOR, SCHEMA_MINOR)));
    let reason = one_rejection(&mut rx);
    assert!(
        reason.starts_with("record body names boot") && reason.contains("seq 4,"),
        "{reason}"
    );
}

#[test]
fn a_newer_minor_goes_the_full_way_and_is_stored() {
    // A later minor appends a group this build does not know: decode ignores it.
    let rec = sample_record(5);
    let mut body = encode(&rec);
    body.extend_from_slice(&[3, 1, 2, 3]);
    let schema = (SCHEMA_MAJOR, SCHEMA_MINOR + 1);
    assert!(crate::convert::lean::decode(schema.0, schema.1, &body).is_none());
    let id = RecordId::of(rec.boot_id, rec.seq, &body);
    let mut rx = receiver();
    feed(&mut rx, &frames(&id, &body, schema));
    assert_same_record(&one_record(&mut rx), &full_way(&id, &body, schema));
}

#[test]
fn emit_chunk_frames_are_what_the_receiver_reads() {
    // The frames built above by hand equal the sender's for the current schema.
    let rec = sample_record(6);
    let body = encode(&rec);
    let id = RecordId::of(rec.boot_id, rec.seq, &body);
    let mut out = [0u8; wire::MAX_DATAGRAM];
    let n = emit_chunk(&id, &body, 0, None, &mut out).unwrap();
    assert_eq!(
        frames(&id, &body, (SCHEMA_MAJOR, SCHEMA_MINOR))[0],
        out[..n].to_vec()
    );
}
