//! A canary's records differ only in their sequence number, uptime and message. [`Template`]
//! encodes everything else once per canary and writes each record as those pieces with the
//! three fields between them: the exact bytes [`CrashRecord::encode`] writes, at a fraction
//! of the cost (postcard writes a `u32`/`u64` as a LEB128 varint and a string as its length
//! as a varint, then its bytes).
//!
//! Where the three fields sit is found by encoding the record with each changed in turn, not
//! assumed; and the template is checked against real encodes (field widths at the varint
//! boundaries, long messages) before it is used. A record type that no longer fits this
//! (another encoding, a field that moved) gives no template, and the canary encodes each
//! record in full.

use capture::record::{CrashRecord, MAX_ENCODED_LEN};

/// The encoded record around its sequence number, uptime and message.
#[derive(Debug)]
pub(super) struct Template {
    /// Before the sequence number.
    head: Vec<u8>,
    /// Between the sequence number and the uptime.
    mid: Vec<u8>,
    /// Between the uptime and the message's length.
    before_message: Vec<u8>,
    /// After the message.
    tail: Vec<u8>,
}

fn encode(rec: &CrashRecord, buf: &mut [u8]) -> Option<Vec<u8>> {
    rec.encode(buf).ok().map(|b| b.to_vec())
}

/// The one index where `a` and `b` (same length) differ.
fn single_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return None;
    }
    let mut diffs = a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y);
    let (i, _) = diffs.next()?;
    diffs.next().is_none().then_some(i)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Template {
    /// The template of `rec` (its sequence number, uptime and message do not matter), or
    /// `None` if its encoding does not have the expected shape.
    pub(super) fn new(rec: &CrashRecord) -> Option<Template> {
        let mut buf = vec![0u8; MAX_ENCODED_LEN];
        let mut r = rec.clone();
        r.seq = 0;
        r.uptime_us = 0;
        r.message.clear();
        let base = encode(&r, &mut buf)?;
        r.seq = 1;
        let at_seq = single_difference(&base, &encode(&r, &mut buf)?)?;
        r.seq = 0;
        r.uptime_us = 1;
        let at_uptime = single_difference(&base, &encode(&r, &mut buf)?)?;
        r.uptime_us = 0;
        let _ = r.message.push('m');
        let with_message = encode(&r, &mut buf)?;
        // One byte more: the length 0 became 1 and the 'm' follows it.
        let at_message = base.iter().zip(&with_message).position(|(x, y)| x != y)?;
        if with_message.len() != base.len() + 1
            || with_message[at_message..at_message + 2] != [1, b'm']
            || with_message[at_message + 2..] != base[at_message + 1..]
            || !(at_seq < at_uptime && at_uptime < at_message)
        {
            return None;
        }
        let t = Template {
            head: base[..at_seq].to_vec(),
            mid: base[at_seq + 1..at_uptime].to_vec(),
            before_message: base[at_uptime + 1..at_message].to_vec(),
            tail: base[at_message + 1..].to_vec(),
        };
        t.agrees_with_encode(rec, &mut buf).then_some(t)
    }

    /// Whether rendering gives what encoding gives, at each varint width and for short and
    /// long messages.
    fn agrees_with_encode(&self, rec: &CrashRecord, buf: &mut [u8]) -> bool {
        let mut r = rec.clone();
        let mut out = Vec::new();
        let long = "x".repeat(capture::record::MESSAGE_CAP);
        let cases: [(u32, u64, &str); 5] = [
            (1, 5, "load"),
            (127, 128, ""),
            (128, 16_384, "a message of more than a few bytes"),
            (300_000, 1 << 40, &long),
            (u32::MAX, u64::MAX, "é"),
        ];
        cases.iter().all(|&(seq, up, msg)| {
            r.seq = seq;
            r.uptime_us = up;
            r.set_message(msg);
            self.render(seq, up, &r.message, &mut out);
            r.encode(buf).is_ok_and(|b| *b == out[..])
        })
    }

    /// Writes the record with `seq`, `uptime_us` and `message` to `out` (cleared first).
    pub(super) fn render(&self, seq: u32, uptime_us: u64, message: &str, out: &mut Vec<u8>) {
        self.render_parts(seq, uptime_us, &[message.as_bytes()], out);
    }

    /// [`Template::render`] with the message given as the concatenation of `message`'s
    /// parts (which must be UTF-8 together and fit the record's message).
    pub(super) fn render_parts(
        &self,
        seq: u32,
        uptime_us: u64,
        message: &[&[u8]],
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(&self.head);
        varint(u64::from(seq), out);
        out.extend_from_slice(&self.mid);
        varint(uptime_us, out);
        out.extend_from_slice(&self.before_message);
        let len: usize = message.iter().map(|p| p.len()).sum();
        varint(len as u64, out);
        for p in message {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(&self.tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::canary::Message;
    use crate::load::Rng;

    /// The template's bytes are what `CrashRecord::encode` writes, for the records `load`
    /// sends: every sequence number up to 20,000, then random ones, with random uptimes.
    #[test]
    fn rendered_records_are_byte_for_byte_what_encode_writes() {
        let mut rec = capture::testutil::sample_record(0);
        rec.boot_id = [0x5a; 16];
        let t = Template::new(&rec).expect("the sample record has a template");
        let mut rng = Rng::new(3);
        let mut buf = vec![0u8; MAX_ENCODED_LEN];
        let mut out = Vec::new();
        for (i, index) in [0u32, 17, 999_999].into_iter().enumerate() {
            let message = Message::new(index, [0.0, 0.2, 0.05][i]);
            let random: Vec<u32> = (0..20_000).map(|_| rng.next_u64() as u32).collect();
            for seq in (1..=20_000).chain(random).chain([u32::MAX]) {
                let uptime = rng.next_u64() >> (rng.next_u64() % 64);
                // What a canary sends: the message written straight into the template.
                assert!(message.render(&t, seq, uptime, &mut out));
                message.write(&mut rec, seq);
                rec.seq = seq;
                rec.uptime_us = uptime;
                let want = rec.encode(&mut buf).unwrap();
                assert_eq!(out, *want, "seq {seq} uptime {uptime}");
            }
        }
    }

    /// Other content in the fixed fields (another build id, a longer log tail) changes the
    /// template, not its correctness.
    #[test]
    fn a_template_follows_the_record_it_was_made_from() {
        let mut rec = capture::testutil::sample_record(9);
        rec.set_build_id("another-build-0.2.0");
        rec.set_log_tail(&"log line\n".repeat(100));
        let t = Template::new(&rec).unwrap();
        let mut buf = vec![0u8; MAX_ENCODED_LEN];
        let mut out = Vec::new();
        for seq in [1, 200, 70_000] {
            rec.seq = seq;
            rec.uptime_us = u64::from(seq) * 1_000;
            rec.set_message(&format!("panic {seq}"));
            t.render(seq, rec.uptime_us, &rec.message, &mut out);
            assert_eq!(out, *rec.encode(&mut buf).unwrap());
        }
    }

    #[test]
    fn varints_are_leb128() {
        let mut out = Vec::new();
        for (v, want) in [
            (0u64, &[0u8][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            out.clear();
            varint(v, &mut out);
            assert_eq!(out, want, "{v}");
        }
    }
}
