//! Frame format: golden bytes (expected bytes written independently from the layout table
//! in `capture/API.md`, CRC from Python's `zlib.crc32`, tag from Python's `hmac`), round
//! trips, and every `WireError` from a crafted input.

use crate::auth::Key;
use crate::record::Arch;
use crate::wire::*;

const GOLDEN_CHUNK: [u8; 57] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x01, 0x00, 0x28, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x04, 0x03, 0x02, 0x01, 0xdd, 0xcc, 0xbb, 0xaa,
    0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x0c, 0x7c, 0xd9, 0xf7,
];
const GOLDEN_ACK: [u8; 40] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x02, 0x00, 0x1c, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
    0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x07, 0x00, 0x00, 0x00, 0xef, 0xbe, 0xad, 0xde,
    0x01, 0x00, 0x00, 0x00, 0xc3, 0x38, 0xe7, 0x32,
];
/// A follow-up's ack: status 3, the collector holds a follow-up reporting 5 steps.
const GOLDEN_FOLLOWUP_ACK: [u8; 40] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x02, 0x00, 0x1c, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
    0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x07, 0x00, 0x00, 0x00, 0xef, 0xbe, 0xad, 0xde,
    0x03, 0x05, 0x00, 0x00, 0xa3, 0x32, 0x25, 0x9e,
];
const GOLDEN_HEARTBEAT: [u8; 44] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x03, 0x00, 0x20, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x09, 0x00, 0x00, 0x00, 0x08, 0x07, 0x06, 0x05,
    0x04, 0x03, 0x02, 0x01, 0x02, 0x00, 0x00, 0x00, 0x74, 0xf4, 0xe8, 0x40,
];
const GOLDEN_DRILL: [u8; 52] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x04, 0x00, 0x28, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
    0xf4, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x2d, 0x18, 0xfa, 0x72,
];
const GOLDEN_DRILL_AUTH: [u8; 68] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x04, 0x01, 0x28, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
    0xf4, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
    0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
    0x7e, 0x96, 0x26, 0xd7, 0x66, 0xb6, 0x2a, 0x69, 0xf1, 0x28, 0xd2, 0x20, 0x74, 0x7c, 0x8f, 0xb2,
    0x3d, 0xf5, 0x07, 0x48,
];
const GOLDEN_CHALLENGE_AUTH: [u8; 60] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x05, 0x01, 0x20, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
    0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0xc6, 0x9b, 0x38, 0x13, 0xbc, 0x32, 0xf2, 0x0c,
    0xae, 0xcf, 0x48, 0x83, 0x57, 0x08, 0x89, 0xac, 0xc9, 0x3e, 0x78, 0x93,
];
const GOLDEN_DRILL_V1: [u8; 28] = [
    0x43, 0x4e, 0x52, 0x59, 0x01, 0x04, 0x00, 0x10, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
    0xf4, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x42, 0xb9, 0x81, 0x9b,
];

fn golden_key() -> Key {
    Key::new([0x42; 32])
}

fn chunk_repr() -> ChunkRepr<'static> {
    ChunkRepr {
        boot_id: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        seq: 0x0102_0304,
        record_crc: 0xaabb_ccdd,
        record_len: 5,
        offset: 0,
        schema_major: 1,
        schema_minor: 0,
        chunk_index: 0,
        chunk_count: 1,
        data: b"hello",
    }
}
fn ack_repr() -> AckRepr {
    AckRepr {
        boot_id: [0x11; 16],
        seq: 7,
        record_crc: 0xdead_beef,
        status: AckStatus::Duplicate,
        followup_reported: 0,
    }
}
fn heartbeat_repr() -> HeartbeatRepr {
    HeartbeatRepr {
        boot_id: [0x22; 16],
        seq: 9,
        uptime_ms: 0x0102_0304_0506_0708,
        arch: Arch::Aarch64,
    }
}
fn drill_repr() -> DrillRepr {
    DrillRepr {
        nonce: 0x1122_3344_5566_7788,
        delay_ms: 500,
        challenge: None,
    }
}
fn challenge() -> Challenge {
    Challenge {
        boot_id: [0x33; 16],
        counter: 0x0102_0304_0506_0708,
    }
}
fn drill_answer_repr() -> DrillRepr {
    DrillRepr {
        challenge: Some(challenge()),
        ..drill_repr()
    }
}
fn challenge_repr() -> ChallengeRepr {
    ChallengeRepr {
        nonce: 0x1122_3344_5566_7788,
        challenge: challenge(),
    }
}

fn emit_vec(repr: &Repr<'_>, key: Option<&Key>) -> std::vec::Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = emit(repr, key, &mut buf).unwrap();
    assert_eq!(n, repr.buffer_len(key.is_some()));
    buf[..n].to_vec()
}

#[test]
fn every_kind_emits_its_golden_bytes_and_parses_back() {
    let key = golden_key();
    let cases: [(Repr<'static>, Option<&Key>, &[u8]); 7] = [
        (Repr::Chunk(chunk_repr()), None, &GOLDEN_CHUNK),
        (Repr::Ack(ack_repr()), None, &GOLDEN_ACK),
        (
            Repr::Ack(AckRepr {
                status: AckStatus::Other(3),
                followup_reported: 5,
                ..ack_repr()
            }),
            None,
            &GOLDEN_FOLLOWUP_ACK,
        ),
        (Repr::Heartbeat(heartbeat_repr()), None, &GOLDEN_HEARTBEAT),
        (Repr::Drill(drill_repr()), None, &GOLDEN_DRILL),
        (
            Repr::Drill(drill_answer_repr()),
            Some(&key),
            &GOLDEN_DRILL_AUTH,
        ),
        (
            Repr::Challenge(challenge_repr()),
            Some(&key),
            &GOLDEN_CHALLENGE_AUTH,
        ),
    ];
    for (repr, key, golden) in cases {
        assert_eq!(emit_vec(&repr, key), golden, "{repr:?}");
        assert_eq!(parse(golden, key).unwrap(), repr);
    }
}

#[test]
fn frame_view_exposes_fields_at_the_documented_offsets() {
    let f = Frame::new_checked(&GOLDEN_CHUNK[..]).unwrap();
    assert_eq!(f.kind(), Kind::Chunk);
    assert_eq!(f.header_len(), CHUNK_HEADER_LEN);
    assert_eq!(f.payload(), b"hello");
    assert_eq!(f.tag(), None);
    assert_eq!(f.crc(), 0xf7d9_7c0c);
    let a = Frame::new_checked(&GOLDEN_DRILL_AUTH[..]).unwrap();
    assert!(a.has_auth());
    assert_eq!(a.header_len(), DRILL_HEADER_LEN);
    assert_eq!(a.tag().unwrap(), &GOLDEN_DRILL_AUTH[48..64]);
    assert_eq!(a.authenticated_bytes(), &GOLDEN_DRILL_AUTH[..48]);
    let c = Frame::new_checked(&GOLDEN_CHALLENGE_AUTH[..]).unwrap();
    assert_eq!(c.kind(), Kind::Challenge);
    assert_eq!(c.header_len(), CHALLENGE_HEADER_LEN);
}

/// Rewrites the CRC so a crafted change reaches the checks after the CRC.
fn recrc(buf: &mut [u8]) {
    Frame::new_unchecked(buf).fill_crc();
}

#[test]
fn each_wire_error_comes_from_its_crafted_input() {
    let key = golden_key();
    // Truncated: shorter than prefix + CRC.
    assert_eq!(
        parse(&GOLDEN_ACK[..11], None),
        Err(WireError::Truncated { len: 11, need: 12 })
    );
    // Truncated: header length says more than the frame holds.
    let mut b = GOLDEN_DRILL;
    b[field::HEADER_LEN] = 200;
    recrc(&mut b);
    assert_eq!(
        parse(&b, None),
        Err(WireError::Truncated { len: 52, need: 212 })
    );
    // Oversized.
    let big = [0u8; MAX_DATAGRAM + 1];
    assert_eq!(
        parse(&big, None),
        Err(WireError::Oversized(MAX_DATAGRAM + 1))
    );
    // BadMagic.
    let mut b = GOLDEN_ACK;
    b[0] = b'X';
    assert_eq!(parse(&b, None), Err(WireError::BadMagic(*b"XNRY")));
    // BadVersion (checked before the CRC).
    let mut b = GOLDEN_ACK;
    b[field::VERSION] = 2;
    assert_eq!(parse(&b, None), Err(WireError::BadVersion(2)));
    // BadCrc: one flipped payload bit.
    let mut b = GOLDEN_CHUNK;
    b[50] ^= 0x01;
    assert!(matches!(
        parse(&b, None),
        Err(WireError::BadCrc {
            stored: 0xf7d9_7c0c,
            ..
        })
    ));
    // BadFlags.
    let mut b = GOLDEN_ACK;
    b[field::FLAGS] = 0x81;
    recrc(&mut b);
    assert_eq!(parse(&b, None), Err(WireError::BadFlags(0x80)));
    // AuthRequired: a key is configured, the frame has no tag.
    assert_eq!(
        parse(&GOLDEN_DRILL, Some(&key)),
        Err(WireError::AuthRequired)
    );
    // UnexpectedAuth: a tag but no key.
    assert_eq!(
        parse(&GOLDEN_DRILL_AUTH, None),
        Err(WireError::UnexpectedAuth)
    );
    // BadAuth: wrong key, and a tampered (re-CRC'd) body under the right key.
    assert_eq!(
        parse(&GOLDEN_DRILL_AUTH, Some(&Key::new([0x43; 32]))),
        Err(WireError::BadAuth)
    );
    let mut b = GOLDEN_DRILL_AUTH;
    b[16] = 0xff; // delay_ms
    recrc(&mut b);
    assert_eq!(parse(&b, Some(&key)), Err(WireError::BadAuth));
    // UnknownKind.
    let mut b = GOLDEN_DRILL;
    b[field::KIND] = 9;
    recrc(&mut b);
    assert_eq!(parse(&b, None), Err(WireError::UnknownKind(9)));
    // BadHeader: an Ack whose header is shorter than 28 bytes.
    let mut b = GOLDEN_ACK;
    b[field::HEADER_LEN] = 20;
    recrc(&mut b);
    assert_eq!(
        parse(&b, None),
        Err(WireError::BadHeader {
            kind: 2,
            len: 20,
            need: 28
        })
    );
    // BadChunk: index not below count, count 0, past the record length.
    for (off, val, why) in [
        (8 + 36, 1u8, "chunk index is not below chunk count"),
        (8 + 38, 0u8, "chunk count is 0"),
        (8 + 24, 4u8, "chunk extends past the record length"),
    ] {
        let mut b = GOLDEN_CHUNK;
        b[off] = val;
        recrc(&mut b);
        assert_eq!(parse(&b, None), Err(WireError::BadChunk(why)));
    }
    // BadChunk: empty payload (a chunk frame with nothing after its header).
    let mut empty = ChunkRepr {
        data: b"",
        ..chunk_repr()
    };
    empty.record_len = 5;
    let mut buf = [0u8; 64];
    let n = Repr::Chunk(empty).emit(None, &mut buf).unwrap();
    assert_eq!(
        parse(&buf[..n], None),
        Err(WireError::BadChunk("empty chunk payload"))
    );
    // BufferTooSmall (emit) and Oversized (emit).
    let mut small = [0u8; 20];
    assert_eq!(
        emit(&Repr::Ack(ack_repr()), None, &mut small),
        Err(WireError::BufferTooSmall { need: 40, have: 20 })
    );
    let data = [0u8; MAX_CHUNK_PAYLOAD + 1];
    let c = ChunkRepr {
        data: &data,
        record_len: data.len() as u32,
        ..chunk_repr()
    };
    let mut out = [0u8; 2048];
    assert_eq!(
        emit(&Repr::Chunk(c), Some(&key), &mut out),
        Err(WireError::Oversized(MAX_DATAGRAM + 1))
    );
}

#[test]
fn longer_kind_headers_are_skipped_for_forward_compat() {
    // A future sender appends 4 header bytes to a Drill: this version still parses it.
    let mut b = std::vec::Vec::from(&GOLDEN_DRILL[..8 + DRILL_HEADER_LEN]);
    b[field::HEADER_LEN] = (DRILL_HEADER_LEN + 4) as u8;
    b.extend_from_slice(&[9, 9, 9, 9]);
    b.extend_from_slice(&[0; 4]);
    recrc(&mut b);
    assert_eq!(parse(&b, None), Ok(Repr::Drill(drill_repr())));
}

#[test]
fn a_version_1_drill_without_a_challenge_still_parses() {
    // Collectors before the challenge wrote a 16-byte Drill header (nonce, delay, reserved):
    // it parses as a drill without a challenge (which a keyed canary answers with one).
    assert_eq!(parse(&GOLDEN_DRILL_V1, None), Ok(Repr::Drill(drill_repr())));
    // A header that stops inside the challenge carries none.
    let mut b = std::vec::Vec::from(&GOLDEN_DRILL_AUTH[..8 + 30]);
    b[field::FLAGS] = 0;
    b[field::HEADER_LEN] = 30;
    b.extend_from_slice(&[0; 4]);
    recrc(&mut b);
    assert_eq!(parse(&b, None), Ok(Repr::Drill(drill_repr())));
    // Counter 0 means "no challenge", whatever the boot id says.
    let mut b = GOLDEN_DRILL;
    b[8 + 16..8 + 32].fill(0x33);
    recrc(&mut b);
    assert_eq!(parse(&b, None), Ok(Repr::Drill(drill_repr())));
    // Shorter than the version-1 header: refused.
    let mut b = std::vec::Vec::from(&GOLDEN_DRILL_V1[..8 + 12]);
    b[field::HEADER_LEN] = 12;
    b.extend_from_slice(&[0; 4]);
    recrc(&mut b);
    assert_eq!(
        parse(&b, None),
        Err(WireError::BadHeader {
            kind: 4,
            len: 12,
            need: 16
        })
    );
}

#[test]
fn open_enums_keep_unknown_values() {
    let mut b = GOLDEN_ACK;
    b[8 + ack_field::STATUS] = 7;
    recrc(&mut b);
    let Repr::Ack(a) = parse(&b, None).unwrap() else {
        panic!("not an ack")
    };
    assert_eq!(a.status, AckStatus::Other(7));
    let mut b = GOLDEN_HEARTBEAT;
    b[8 + heartbeat_field::ARCH] = 9;
    recrc(&mut b);
    let Repr::Heartbeat(h) = parse(&b, None).unwrap() else {
        panic!("not a heartbeat")
    };
    assert_eq!(h.arch, Arch::Other(9));
    assert_eq!(u8::from(Kind::from(77)), 77);
}

#[test]
fn a_tagged_frame_survives_parse_only_with_its_key_and_any_bit_flip_is_caught() {
    let key = golden_key();
    let repr = Repr::Chunk(chunk_repr());
    let good = emit_vec(&repr, Some(&key));
    assert_eq!(parse(&good, Some(&key)), Ok(repr));
    for i in 0..good.len() * 8 {
        let mut b = good.clone();
        b[i / 8] ^= 1 << (i % 8);
        assert!(parse(&b, Some(&key)).is_err(), "bit {i} flip accepted");
    }
}
