//! Follow-up frames and the panic screen's QR payload: golden bytes (written from the layout
//! tables in `followup.rs` and `screen.rs` with Python's `struct`, `zlib.crc32` and `hmac`),
//! round trips, bad input, and the follow-up sender's ack rules.

use crate::auth::Key;
use crate::chunk::RecordId;
use crate::followup::*;
use crate::panic::{Outcome, Step, StepRecord};
use crate::screen;
use crate::sender::SenderConfig;
use crate::wire::{self, AckRepr, AckStatus, Kind, Repr, WireError};

const GOLDEN_FOLLOWUP: [u8; 64] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x06, 0x00, 0x1c, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
    0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x07, 0x00, 0x00, 0x00, 0xef, 0xbe, 0xad, 0xde,
    0x02, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd2, 0x04, 0x00, 0x00,
    0x05, 0x06, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x49, 0x9f, 0x3e, 0x5b,
];
const GOLDEN_FOLLOWUP_AUTH_TAIL: [u8; 20] = [
    0xb5, 0x3f, 0x71, 0x14, 0x4f, 0x06, 0x33, 0xd5, 0x43, 0x8a, 0xdb, 0xe7, 0xfe, 0x24, 0x95, 0xbf,
    0x53, 0x30, 0x8c, 0xca,
];

fn id() -> RecordId {
    RecordId {
        boot_id: [0x11; 16],
        seq: 7,
        record_crc: 0xdead_beef,
    }
}

fn steps() -> [StepRecord; 2] {
    [
        StepRecord {
            step: Step::ScreenFlush,
            outcome: Outcome::Done,
            elapsed_us: 1234,
        },
        StepRecord {
            step: Step::Ship,
            outcome: Outcome::Failed(3),
            elapsed_us: 5,
        },
    ]
}

#[test]
fn followup_frame_matches_golden_bytes_and_round_trips() {
    let f = FollowupRepr::new(&id(), &steps());
    let mut out = [0u8; 128];
    let n = Repr::Followup(f).emit(None, &mut out).unwrap();
    assert_eq!(&out[..n], &GOLDEN_FOLLOWUP[..]);
    assert_eq!(wire::parse(&GOLDEN_FOLLOWUP, None), Ok(Repr::Followup(f)));
    assert_eq!(Repr::Followup(f).kind(), Kind::Followup);
    assert_eq!(u8::from(Kind::Followup), 6);
    let Ok(Repr::Followup(p)) = wire::parse(&GOLDEN_FOLLOWUP, None) else {
        unreachable!()
    };
    assert_eq!(p.steps(), &steps()[..]);
    assert_eq!(p.id(), id());
}

#[test]
fn authenticated_followup_matches_golden_bytes_and_needs_the_key() {
    let key = Key::new([0x42; 32]);
    let f = FollowupRepr::new(&id(), &steps());
    let mut out = [0u8; 128];
    let n = Repr::Followup(f).emit(Some(&key), &mut out).unwrap();
    assert_eq!(n, 80);
    assert_eq!(out[6], 1, "AUTH flag");
    assert_eq!(&out[..6], &GOLDEN_FOLLOWUP[..6]);
    assert_eq!(&out[7..60], &GOLDEN_FOLLOWUP[7..60]);
    assert_eq!(&out[60..80], &GOLDEN_FOLLOWUP_AUTH_TAIL[..]);
    assert_eq!(wire::parse(&out[..n], Some(&key)), Ok(Repr::Followup(f)));
    assert_eq!(wire::parse(&out[..n], None), Err(WireError::UnexpectedAuth));
    assert_eq!(
        wire::parse(&GOLDEN_FOLLOWUP, Some(&key)),
        Err(WireError::AuthRequired)
    );
}

fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len();
    let crc = crc32fast::hash(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn inconsistent_followups_are_errors_not_panics() {
    // Count 0.
    let mut b = GOLDEN_FOLLOWUP.to_vec();
    b[8 + field::COUNT] = 0;
    assert!(matches!(
        wire::parse(&with_crc(b), None),
        Err(WireError::BadFollowup(_))
    ));
    // Count says 3, payload holds 2.
    let mut b = GOLDEN_FOLLOWUP.to_vec();
    b[8 + field::COUNT] = 3;
    assert!(matches!(
        wire::parse(&with_crc(b), None),
        Err(WireError::BadFollowup(_))
    ));
    // Count above the cap.
    let mut b = GOLDEN_FOLLOWUP.to_vec();
    b[8 + field::COUNT] = 200;
    assert!(matches!(
        wire::parse(&with_crc(b), None),
        Err(WireError::BadFollowup(_))
    ));
    // Header shorter than the kind's.
    let mut b = GOLDEN_FOLLOWUP[..8 + 20].to_vec();
    b[7] = 20;
    b.extend_from_slice(&[0; 4]);
    assert!(matches!(
        wire::parse(&with_crc(b), None),
        Err(WireError::BadHeader { kind: 6, .. })
    ));
    // Every truncation is an error.
    for n in 0..GOLDEN_FOLLOWUP.len() {
        assert!(wire::parse(&GOLDEN_FOLLOWUP[..n], None).is_err());
    }
}

#[test]
fn followup_caps_its_entries() {
    let many = [steps()[0]; FOLLOWUP_CAP + 3];
    let f = FollowupRepr::new(&id(), &many);
    assert_eq!(f.steps().len(), FOLLOWUP_CAP);
    let mut out = [0u8; 256];
    let n = Repr::Followup(f).emit(None, &mut out).unwrap();
    assert_eq!(wire::parse(&out[..n], None), Ok(Repr::Followup(f)));
}

fn ack(status: AckStatus, key: Option<&Key>) -> Vec<u8> {
    let mut out = [0u8; 96];
    let n = Repr::Ack(AckRepr::for_record(&id(), status))
        .emit(key, &mut out)
        .unwrap();
    out[..n].to_vec()
}

#[test]
fn followup_sender_retransmits_until_its_own_ack_and_ignores_the_records_ack() {
    let cfg = SenderConfig {
        initial_rto_ms: 20,
        max_rto_ms: 40,
        deadline_ms: 1000,
    };
    let f = FollowupRepr::new(&id(), &steps());
    let mut s = FollowupSender::new(cfg, &f, None, 0).unwrap();
    let mut frames = 0;
    let mut tx = |d: &[u8]| {
        assert!(matches!(wire::parse(d, None), Ok(Repr::Followup(_))));
        frames += 1;
    };
    assert_eq!(s.poll(0, &mut tx), FollowupState::Waiting { next_ms: 20 });
    assert_eq!(s.poll(10, &mut tx), FollowupState::Waiting { next_ms: 20 });
    assert_eq!(s.poll(20, &mut tx), FollowupState::Waiting { next_ms: 60 });
    // A late ack of the record itself is not the follow-up's.
    assert!(!s.handle(&ack(AckStatus::Duplicate, None)));
    assert!(!s.handle(&ack(AckStatus::Stored, None)));
    assert_eq!(s.poll(60, &mut tx), FollowupState::Waiting { next_ms: 100 });
    assert!(s.handle(&ack(AckStatus::Other(FOLLOWUP_STORED), None)));
    assert_eq!(s.poll(61, &mut tx), FollowupState::Acked);
    assert_eq!(frames, 3);
    assert_eq!(s.sent(), 3);
}

#[test]
fn followup_sender_gives_up_at_the_deadline_or_when_the_collector_has_no_record() {
    let cfg = SenderConfig {
        initial_rto_ms: 20,
        max_rto_ms: 40,
        deadline_ms: 100,
    };
    let f = FollowupRepr::new(&id(), &steps());
    let mut s = FollowupSender::new(cfg, &f, None, 0).unwrap();
    let mut t = 0;
    let st = loop {
        match s.poll(t, &mut |_| {}) {
            FollowupState::Waiting { next_ms } => t = next_ms,
            other => break other,
        }
    };
    assert_eq!(st, FollowupState::TimedOut);
    assert_eq!(t, 100);
    let key = Key::new([7; 32]);
    let mut s = FollowupSender::new(cfg, &f, Some(&key), 0).unwrap();
    s.poll(0, &mut |_| {});
    // Untagged acks do not count with a key.
    assert!(!s.handle(&ack(AckStatus::Other(FOLLOWUP_NO_RECORD), None)));
    assert!(s.handle(&ack(AckStatus::Other(FOLLOWUP_NO_RECORD), Some(&key))));
    assert_eq!(s.poll(1, &mut |_| {}), FollowupState::NoRecord);
}

/// The appliance sends two follow-ups for one record (at the end of the ship step, and the
/// more complete one from the end step): a late ack of the first (the collector holds one
/// reporting fewer steps) is not the second's; an ack from a collector that does not say
/// (0) is.
#[test]
fn followup_sender_does_not_take_a_late_ack_of_a_less_complete_followup() {
    let cfg = SenderConfig {
        initial_rto_ms: 20,
        max_rto_ms: 40,
        deadline_ms: 1000,
    };
    let f = FollowupRepr::new(&id(), &steps());
    assert_eq!(f.reported(), 2);
    let ack_holding = |held: u8| {
        let mut a = AckRepr::for_record(&id(), AckStatus::Other(FOLLOWUP_STORED));
        a.followup_reported = held;
        let mut out = [0u8; 96];
        let n = Repr::Ack(a).emit(None, &mut out).unwrap();
        out[..n].to_vec()
    };
    for (held, ours) in [(1, false), (2, true), (3, true), (0, true)] {
        let mut s = FollowupSender::new(cfg, &f, None, 0).unwrap();
        s.poll(0, &mut |_| {});
        assert_eq!(s.handle(&ack_holding(held)), ours, "held {held}");
        let want = if ours {
            FollowupState::Acked
        } else {
            FollowupState::Waiting { next_ms: 20 }
        };
        assert_eq!(s.poll(1, &mut |_| {}), want, "held {held}");
    }
}

// --- the panic screen's QR payload ---

#[test]
fn screen_payload_matches_golden_bytes() {
    // "hello" stored (compression would not shorten it): magic, version 1, flags 0, schema
    // 1.1, length 5, crc32("hello") = 0x3610a686, body, CRC.
    let golden: [u8; 27] = [
        0x43, 0x4e, 0x51, 0x52, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, 0x86,
        0xa6, 0x10, 0x36, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0xf9, 0x67, 0x6e, 0xf7,
    ];
    let mut scratch = [0u8; 64];
    let mut out = [0u8; 64];
    let n = screen::encode(b"hello", (1, 1), None, &mut scratch, &mut out).unwrap();
    assert_eq!(&out[..n], &golden[..]);
    let mut rec = [0u8; 16];
    let (h, len) = screen::decode(&golden, None, &mut rec).unwrap();
    assert_eq!(&rec[..len], b"hello");
    assert_eq!(h.schema, (1, 1));
    assert!(!h.compressed && !h.authenticated);
}

#[test]
fn screen_payload_of_a_record_compresses_and_round_trips_with_and_without_a_key() {
    let rec = crate::testutil::max_record();
    let mut buf = [0u8; crate::record::MAX_ENCODED_LEN];
    let bytes = rec.encode(&mut buf).unwrap().to_vec();
    let sample = crate::testutil::sample_record(3);
    let mut buf2 = [0u8; crate::record::MAX_ENCODED_LEN];
    let small = sample.encode(&mut buf2).unwrap().to_vec();
    let key = Key::new([9; 32]);
    for record in [&bytes, &small] {
        for k in [None, Some(&key)] {
            let mut scratch = [0u8; screen::MAX_PAYLOAD];
            let mut out = [0u8; screen::MAX_PAYLOAD];
            let n = screen::encode(record, (1, 1), k, &mut scratch, &mut out).unwrap();
            assert!(n <= screen::QR_MAX_BYTES);
            let mut back = vec![0u8; crate::record::MAX_ENCODED_LEN];
            let (h, len) = screen::decode(&out[..n], k, &mut back).unwrap();
            assert_eq!(&back[..len], &record[..]);
            assert_eq!(h.record_crc, crc32fast::hash(record));
            assert_eq!(h.authenticated, k.is_some());
            // The wrong key policy is refused.
            let other = Key::new([1; 32]);
            assert!(matches!(
                screen::decode(&out[..n], Some(&other), &mut back),
                Err(screen::ScreenError::Auth(_))
            ));
        }
    }
}

#[test]
fn lz4_blocks_decode_with_the_independent_lz4_flex_decoder() {
    let rec = crate::testutil::sample_record(5);
    let mut buf = [0u8; crate::record::MAX_ENCODED_LEN];
    let bytes = rec.encode(&mut buf).unwrap().to_vec();
    let inputs: Vec<Vec<u8>> = vec![
        bytes,
        Vec::new(),
        b"a".to_vec(),
        vec![0u8; 3000],
        b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".to_vec(),
        (0..2000u32).map(|i| (i * 7 % 251) as u8).collect(),
    ];
    for input in inputs {
        let mut out = vec![0u8; input.len() + input.len() / 255 + 16];
        let n = screen::compress(&input, &mut out).unwrap();
        let theirs = lz4_flex::block::decompress(&out[..n], input.len()).unwrap();
        assert_eq!(theirs, input);
        let mut ours = vec![0u8; input.len()];
        assert_eq!(screen::decompress(&out[..n], &mut ours), Ok(input.len()));
        assert_eq!(ours, input);
    }
}

#[test]
fn bad_screen_payloads_are_errors_not_panics() {
    let mut scratch = [0u8; 64];
    let mut out = [0u8; 64];
    let n = screen::encode(
        b"hello hello hello hello hello",
        (1, 1),
        None,
        &mut scratch,
        &mut out,
    )
    .unwrap();
    let good = out[..n].to_vec();
    let mut back = [0u8; 64];
    for cut in 0..good.len() {
        assert!(screen::decode(&good[..cut], None, &mut back).is_err());
    }
    let mut b = good.clone();
    b[0] = b'X';
    assert!(screen::decode(&with_crc(b), None, &mut back).is_err());
    let mut b = good.clone();
    b[5] |= 0x80;
    assert_eq!(
        screen::decode(&with_crc(b), None, &mut back),
        Err(screen::ScreenError::BadFlags(0x81))
    );
    let mut b = good.clone();
    b[10] = 200; // declared length wrong
    assert!(screen::decode(&with_crc(b), None, &mut back).is_err());
    let mut b = good;
    b[20] ^= 0x55; // CRC catches it
    assert!(matches!(
        screen::decode(&b, None, &mut back),
        Err(screen::ScreenError::BadCrc { .. })
    ));
}

proptest::proptest! {
    #[test]
    fn decompress_never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let mut out = [0u8; 512];
        let _ = screen::decompress(&input, &mut out);
    }

    #[test]
    fn compress_round_trips(input in proptest::collection::vec(0u8..4, 0..3000)) {
        let mut out = vec![0u8; input.len() + input.len() / 255 + 16];
        let n = screen::compress(&input, &mut out).unwrap();
        let mut back = vec![0u8; input.len()];
        proptest::prop_assert_eq!(screen::decompress(&out[..n], &mut back), Ok(input.len()));
        proptest::prop_assert_eq!(back, input);
    }
}
