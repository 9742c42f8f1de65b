//! The sans-IO sender: rounds, backoff, acks, deadline, datagram sizes.

use std::vec::Vec;

use crate::auth::Key;
use crate::chunk::{chunk_count, RecordId};
use crate::record::{CrashRecord, MAX_ENCODED_LEN, SCHEMA_MAJOR, SCHEMA_MINOR};
use crate::sender::*;
use crate::testutil::max_record;
use crate::wire::{self, AckRepr, AckStatus, Repr, MAX_DATAGRAM};
use crate::Error;

const BOOT: [u8; 16] = [7; 16];
const CFG: SenderConfig = SenderConfig {
    initial_rto_ms: 100,
    max_rto_ms: 400,
    deadline_ms: 2_000,
};

fn record_bytes() -> Vec<u8> {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    max_record().encode(&mut buf).unwrap().to_vec()
}

fn ack(id: &RecordId, status: AckStatus, key: Option<&Key>) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = wire::emit(&Repr::Ack(AckRepr::for_record(id, status)), key, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// Polls at `now`, returning the state and the datagrams sent.
fn poll(s: &mut Sender<'_>, now: u64) -> (SendState, Vec<Vec<u8>>) {
    let mut sent = Vec::new();
    let st = s.poll(now, &mut |d: &[u8]| sent.push(d.to_vec()));
    (st, sent)
}

#[test]
fn first_poll_sends_every_chunk_then_waits_one_rto() {
    let rec = record_bytes();
    let n = chunk_count(rec.len());
    assert!(n >= 2, "the maximal record needs several chunks");
    let mut s = Sender::new(CFG, BOOT, 1, &rec, None, 1_000).unwrap();
    let (st, sent) = poll(&mut s, 1_000);
    let SendState::Waiting { next_ms } = st else {
        panic!("{st:?}")
    };
    // One RTO (100 ms) spread by the sender's jitter: [0.75, 1.25) of it.
    assert!((1_075..1_125).contains(&next_ms), "{next_ms}");
    assert_eq!(sent.len(), n);
    // Every datagram is a valid chunk of our record, within the datagram limit.
    let mut covered = 0;
    for d in &sent {
        assert!(d.len() <= MAX_DATAGRAM);
        let Ok(Repr::Chunk(c)) = wire::parse(d, None) else {
            panic!("not a chunk")
        };
        assert_eq!(c.id(), s.id());
        assert_eq!(
            (c.schema_major, c.schema_minor),
            (SCHEMA_MAJOR, SCHEMA_MINOR)
        );
        assert_eq!(
            c.data,
            &rec[c.offset as usize..c.offset as usize + c.data.len()]
        );
        covered += c.data.len();
    }
    assert_eq!(covered, rec.len());
    // Nothing more before the RTO.
    let (_, sent) = poll(&mut s, next_ms - 1);
    assert!(sent.is_empty());
}

#[test]
fn retransmits_with_doubling_rto_capped_at_max() {
    let rec = record_bytes();
    let n = chunk_count(rec.len());
    let mut s = Sender::new(CFG, BOOT, 1, &rec, None, 0).unwrap();
    let mut now = 0;
    let mut gaps = Vec::new();
    for _ in 0..5 {
        let (st, sent) = poll(&mut s, now);
        assert_eq!(sent.len(), n, "every round resends every chunk");
        let SendState::Waiting { next_ms } = st else {
            panic!("{st:?}")
        };
        gaps.push(next_ms - now);
        now = next_ms;
    }
    // Doubling from 100 ms, capped at 400, each spread to [0.75, 1.25) of itself.
    for (gap, rto) in gaps.iter().zip([100u64, 200, 400, 400, 400]) {
        assert!(
            (rto * 3 / 4..rto * 5 / 4).contains(gap),
            "gap {gap} for an RTO of {rto}: {gaps:?}"
        );
    }
    assert_eq!(s.stats().retransmit_rounds, 4);
    assert_eq!(s.stats().datagrams_sent as usize, 5 * n);
}

#[test]
fn our_ack_stops_the_sender_and_foreign_acks_are_ignored() {
    let rec = record_bytes();
    let mut s = Sender::new(CFG, BOOT, 9, &rec, None, 0).unwrap();
    poll(&mut s, 0);
    let id = s.id();
    let others = [
        RecordId { seq: 10, ..id },
        RecordId {
            boot_id: [8; 16],
            ..id
        },
        RecordId {
            record_crc: id.record_crc ^ 1,
            ..id
        },
    ];
    for other in others {
        assert!(!s.handle(&ack(&other, AckStatus::Stored, None)));
    }
    assert!(!s.handle(b"not a frame at all"));
    let (st, sent) = poll(&mut s, 200);
    assert!(matches!(st, SendState::Waiting { .. }));
    assert!(
        !sent.is_empty(),
        "foreign acks must not stop retransmission"
    );
    assert!(s.handle(&ack(&id, AckStatus::Duplicate, None)));
    assert_eq!(s.ack_status(), Some(AckStatus::Duplicate));
    let (st, sent) = poll(&mut s, 10_000);
    assert_eq!(st, SendState::Acked);
    assert!(sent.is_empty());
}

#[test]
fn a_rejecting_ack_ends_the_send_as_rejected() {
    let rec = record_bytes();
    let mut s = Sender::new(CFG, BOOT, 9, &rec, None, 0).unwrap();
    poll(&mut s, 0);
    assert!(s.handle(&ack(&s.id(), AckStatus::Rejected, None)));
    assert_eq!(poll(&mut s, 1).0, SendState::Rejected);
}

#[test]
fn times_out_at_the_deadline_and_then_sends_nothing() {
    let rec = record_bytes();
    let mut s = Sender::new(CFG, BOOT, 1, &rec, None, 500).unwrap();
    let mut now = 500;
    loop {
        let (st, _) = poll(&mut s, now);
        match st {
            SendState::Waiting { next_ms } => {
                assert!(next_ms <= 2_500, "never schedules past the deadline");
                assert!(next_ms > now);
                now = next_ms;
            }
            SendState::TimedOut => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(now, 2_500);
    let (st, sent) = poll(&mut s, 99_999);
    assert_eq!(st, SendState::TimedOut);
    assert!(sent.is_empty());
}

#[test]
fn with_a_key_frames_are_tagged_and_only_tagged_acks_count() {
    let rec = record_bytes();
    let key = Key::new([5; 32]);
    let mut s = Sender::new(CFG, BOOT, 1, &rec, Some(&key), 0).unwrap();
    let (_, sent) = poll(&mut s, 0);
    for d in &sent {
        assert!(d.len() <= MAX_DATAGRAM);
        assert!(matches!(wire::parse(d, Some(&key)), Ok(Repr::Chunk(_))));
        assert_eq!(wire::parse(d, None), Err(wire::WireError::UnexpectedAuth));
    }
    let id = s.id();
    assert!(
        !s.handle(&ack(&id, AckStatus::Stored, None)),
        "unauthenticated ack"
    );
    assert!(!s.handle(&ack(&id, AckStatus::Stored, Some(&Key::new([6; 32])))));
    assert!(s.handle(&ack(&id, AckStatus::Stored, Some(&key))));
    assert_eq!(poll(&mut s, 1).0, SendState::Acked);
}

#[test]
fn an_ack_from_another_endpoint_is_ignored_and_retransmission_goes_on() {
    // The boot id, sequence and CRC travel in clear: anyone who sees a chunk can forge the
    // ack. Only the configured collector's endpoint (address and port) counts.
    let rec = record_bytes();
    let collector: std::net::SocketAddr = "10.0.2.2:7373".parse().unwrap();
    let mut s = Sender::new(CFG, BOOT, 1, &rec, None, 0)
        .unwrap()
        .with_collector(collector);
    let (st, first) = poll(&mut s, 0);
    let SendState::Waiting { next_ms: t1 } = st else {
        panic!("{st:?}")
    };
    let good = ack(&s.id(), AckStatus::Stored, None);
    for from in [
        "10.0.2.2:7374",
        "10.0.2.3:7373",
        "192.0.2.1:7373",
        "[::1]:7373",
    ] {
        assert!(
            !s.handle_from(from.parse().unwrap(), &good),
            "ack from {from} counted"
        );
    }
    assert_eq!(s.ack_status(), None);
    // Retransmission goes on as if nothing had arrived.
    let (st, again) = poll(&mut s, t1);
    assert!(
        matches!(st, SendState::Waiting { next_ms } if (t1 + 150..t1 + 250).contains(&next_ms)),
        "{st:?}"
    );
    assert_eq!(again.len(), first.len());
    assert_eq!(s.stats().acks_ignored, 4);
    // The same ack from the collector (an IPv4-mapped form of its address too) counts.
    let mapped: std::net::SocketAddr = "[::ffff:10.0.2.2]:7373".parse().unwrap();
    assert!(s.handle_from(mapped, &good));
    assert_eq!(poll(&mut s, t1 + 1).0, SendState::Acked);
}

#[test]
fn the_collector_endpoint_rule_is_exact_address_and_port() {
    let c: std::net::SocketAddr = "10.0.2.2:7373".parse().unwrap();
    assert!(from_collector(c, c));
    assert!(!from_collector("10.0.2.2:7372".parse().unwrap(), c));
    assert!(!from_collector("10.0.2.22:7373".parse().unwrap(), c));
    assert!(from_collector("[::ffff:10.0.2.2]:7373".parse().unwrap(), c));
    // A keyed sender that checks the endpoint still needs the tag.
    let rec = record_bytes();
    let key = Key::new([5; 32]);
    let mut s = Sender::new(CFG, BOOT, 1, &rec, Some(&key), 0)
        .unwrap()
        .with_collector(c);
    let id = s.id();
    assert!(!s.handle_from(c, &ack(&id, AckStatus::Stored, None)));
    assert!(!s.handle_from(c, &ack(&id, AckStatus::Stored, Some(&Key::new([6; 32])))));
    // An authenticated ack for another record of the same boot is not ours either.
    let other = RecordId { seq: 2, ..id };
    assert!(!s.handle_from(c, &ack(&other, AckStatus::Stored, Some(&key))));
    assert!(s.handle_from(c, &ack(&id, AckStatus::Stored, Some(&key))));
}

#[test]
fn empty_and_oversized_records_are_refused() {
    assert_eq!(
        Sender::new(CFG, BOOT, 1, &[], None, 0).unwrap_err(),
        Error::EmptyRecord
    );
    let big = std::vec![0u8; crate::chunk::MAX_RECORD_LEN + 1];
    assert_eq!(
        Sender::new(CFG, BOOT, 1, &big, None, 0).unwrap_err(),
        Error::RecordTooLarge(big.len())
    );
}

#[test]
fn a_one_byte_record_is_one_chunk() {
    let mut s = Sender::new(CFG, BOOT, 1, &[0x42], None, 0).unwrap();
    let (_, sent) = poll(&mut s, 0);
    assert_eq!(sent.len(), 1);
    let _ = CrashRecord::empty();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    #[test]
    fn no_datagram_exceeds_max_datagram_for_any_record_length(
        len in 1usize..=crate::chunk::MAX_RECORD_LEN,
        keyed in proptest::prelude::any::<bool>(),
    ) {
        let rec = std::vec![0xa5u8; len];
        let key = Key::new([1; 32]);
        let mut s = Sender::new(CFG, BOOT, 1, &rec, keyed.then_some(&key), 0).unwrap();
        let (_, sent) = poll(&mut s, 0);
        proptest::prop_assert_eq!(sent.len(), chunk_count(len));
        let mut total = 0;
        for d in &sent {
            proptest::prop_assert!(d.len() <= MAX_DATAGRAM);
            let Ok(Repr::Chunk(c)) = wire::parse(d, keyed.then_some(&key)) else {
                return Err(proptest::test_runner::TestCaseError::fail("not a chunk"));
            };
            total += c.data.len();
        }
        proptest::prop_assert_eq!(total, len);
    }
}

#[test]
fn retransmissions_of_a_fleet_are_spread_not_in_step() {
    // 100,000 canaries that panic in the same second must not retransmit in step, round after
    // round: each record's timeouts are spread by its own id.
    let rec = record_bytes();
    let mut firsts = std::collections::BTreeSet::new();
    for b in 0..64u8 {
        let mut s = Sender::new(CFG, [b; 16], 1, &rec, None, 0).unwrap();
        let SendState::Waiting { next_ms } = poll(&mut s, 0).0 else {
            panic!()
        };
        assert!((75..125).contains(&next_ms), "{next_ms}");
        firsts.insert(next_ms);
    }
    assert!(
        firsts.len() > 20,
        "64 boots gave only {} distinct timeouts",
        firsts.len()
    );
    // The same record replays the same schedule (deterministic).
    let times = |b: u8| {
        let mut s = Sender::new(CFG, [b; 16], 1, &rec, None, 0).unwrap();
        let mut now = 0;
        (0..4)
            .map(|_| {
                let SendState::Waiting { next_ms } = poll(&mut s, now).0 else {
                    panic!()
                };
                now = next_ms;
                now
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(times(3), times(3));
}
