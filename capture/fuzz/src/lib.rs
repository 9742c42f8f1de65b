//! The fuzz harness bodies, shared by the libFuzzer target and the stable driver.
//!
//! Every parser that reads bytes from the network gets arbitrary input: `wire::parse` with
//! and without a key (every frame kind, the follow-up too), `CrashRecord::decode`, the panic
//! screen's QR payload (`screen::decode`, `screen::decompress`), and the `Reassembler` fed
//! with whatever chunks parse. None may panic, and what parses must re-emit to the same `Repr`.

use capture::chunk::{Push, Reassembler, ReassemblerConfig};
use capture::record::CrashRecord;
use capture::wire::{self, Frame, Repr, MAX_DATAGRAM};
use capture::Key;

/// The key used when the first input byte's low bit is set.
pub const FUZZ_KEY: Key = Key::new([0x5a; 32]);

/// One datagram: parse, and re-emit/re-parse what parses.
pub fn frame_decode(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let key = (sel & 1 == 1).then_some(&FUZZ_KEY);
    check_datagram(rest, key);
    if sel & 4 == 4 {
        // Fix the tag and CRC up so mutations reach the header parsers behind them.
        let mut fixed = rest.to_vec();
        fix_up(&mut fixed, key);
        check_datagram(&fixed, key);
    }
    // The raw bytes as a record body, as 1.0, the current and a newer minor.
    let _ = CrashRecord::decode(1, 0, rest);
    let _ = CrashRecord::decode(1, capture::record::SCHEMA_MINOR, rest);
    let _ = CrashRecord::decode(1, 7, rest);
    // The raw bytes as a panic screen's QR payload and as an LZ4 block (import-screen).
    let mut out = vec![0u8; 8192];
    if let Ok((h, n)) = capture::screen::decode(rest, key, &mut out) {
        let crc = capture::RecordId::of([0; 16], 0, &out[..n]).record_crc;
        assert_eq!(crc, h.record_crc, "screen payload CRC");
    }
    let _ = capture::screen::decompress(rest, &mut out);
    if sel & 2 == 2 {
        feed_reassembler(rest, key);
    }
}

/// Rewrites the tag (if the frame is tagged and a key is given) and the CRC.
pub fn fix_up(buf: &mut [u8], key: Option<&Key>) {
    if buf.len() < wire::MIN_FRAME_LEN || buf.len() > MAX_DATAGRAM {
        return;
    }
    let mut f = Frame::new_unchecked(buf);
    let tag_fits = f.len() >= wire::FIXED_LEN + f.header_len() + 16 + wire::CRC_LEN;
    if let (Some(k), true, true) = (key, f.has_auth(), tag_fits) {
        f.fill_tag(k);
    }
    f.fill_crc();
}

fn check_datagram(buf: &[u8], key: Option<&Key>) {
    if let Ok(repr) = wire::parse(buf, key) {
        let mut out = [0u8; MAX_DATAGRAM];
        let n = repr
            .emit(key, &mut out)
            .expect("a parsed frame must re-emit");
        assert!(n <= buf.len(), "re-emitted frame longer than its source");
        assert_eq!(
            wire::parse(&out[..n], key),
            Ok(repr),
            "emit/parse round trip"
        );
    }
}

/// Splits the input into length-prefixed datagrams (u16 LE) and feeds the chunks among them
/// to a small reassembler, decoding every completed record.
pub fn feed_reassembler(mut data: &[u8], key: Option<&Key>) {
    let mut r = Reassembler::new(ReassemblerConfig {
        max_pending_per_source: 2,
        max_pending_total: 4,
        max_record_len: 8192,
    });
    let mut now = 0u64;
    while data.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])) % (MAX_DATAGRAM + 1);
        let source = data[2] & 3;
        data = &data[3..];
        let take = len.min(data.len());
        let (dgram, rest) = data.split_at(take);
        data = rest;
        now += 1;
        if let Ok(Repr::Chunk(c)) = wire::parse(dgram, key) {
            if let Push::Complete(done) = r.push(source, &c, now) {
                assert_eq!(crc32(&done.record), done.id.record_crc);
                let _ = CrashRecord::decode(done.schema.0, done.schema.1, &done.record);
            }
        }
        if now.is_multiple_of(16) {
            r.expire(now, 8);
        }
        assert!(r.pending() <= 4);
    }
}

fn crc32(b: &[u8]) -> u32 {
    capture::chunk::RecordId::of([0; 16], 0, b).record_crc
}
