//! Sender and reassembler together over a lossy, duplicating, reordering channel: the
//! record arrives intact exactly as sent, and the sender stops once acked.

use proptest::prelude::*;

use crate::chunk::{Push, Reassembler, ReassemblerConfig};
use crate::record::{CrashRecord, MAX_ENCODED_LEN};
use crate::sender::{SendState, Sender, SenderConfig};
use crate::testutil::{max_record, sample_record};
use crate::wire::{self, AckRepr, AckStatus, Repr};
use crate::Key;

/// Runs one record through a channel that drops datagram `i` when `drop(i)`, sends
/// datagram `i` twice when `dup[i % len]`, and delivers each round in reverse order when
/// `reverse`. Returns the collector's decoded records and the sender's final state.
fn deliver(
    rec: &CrashRecord,
    key: Option<&Key>,
    drop: &dyn Fn(usize) -> bool,
    dup: &[bool],
    reverse: bool,
) -> (Vec<CrashRecord>, SendState, u32) {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let enc = rec.encode(&mut buf).unwrap().to_vec();
    let cfg = SenderConfig {
        initial_rto_ms: 50,
        max_rto_ms: 200,
        deadline_ms: 5_000,
    };
    let mut s = Sender::new(cfg, rec.boot_id, rec.seq, &enc, key, 0).unwrap();
    let mut collector = Reassembler::new(ReassemblerConfig::default());
    let mut stored: Vec<CrashRecord> = Vec::new();
    let mut now = 0;
    let mut i = 0usize;
    loop {
        let mut round: Vec<Vec<u8>> = Vec::new();
        let st = s.poll(now, &mut |d: &[u8]| {
            if !drop(i) {
                round.push(d.to_vec());
                if dup[i % dup.len()] {
                    round.push(d.to_vec());
                }
            }
            i += 1;
        });
        if reverse {
            round.reverse();
        }
        for d in round {
            let Ok(Repr::Chunk(c)) = wire::parse(&d, key) else {
                panic!("sender emitted a bad frame")
            };
            if let Push::Complete(done) = collector.push("guest", &c, now) {
                let r = CrashRecord::decode(done.schema.0, done.schema.1, &done.record).unwrap();
                let status = if stored.contains(&r) {
                    AckStatus::Duplicate
                } else {
                    stored.push(r);
                    AckStatus::Stored
                };
                let mut ack = [0u8; 64];
                let n = wire::emit(
                    &Repr::Ack(AckRepr::for_record(&done.id, status)),
                    key,
                    &mut ack,
                )
                .unwrap();
                assert!(s.handle(&ack[..n]));
            }
        }
        match st {
            SendState::Waiting { next_ms } => now = next_ms,
            final_state => return (stored, final_state, s.stats().retransmit_rounds),
        }
    }
}

#[test]
fn a_lossless_channel_delivers_in_one_round() {
    let (stored, st, rounds) = deliver(&max_record(), None, &|_| false, &[false], false);
    assert_eq!(stored, [max_record()]);
    assert_eq!(st, SendState::Acked);
    assert_eq!(rounds, 0);
}

#[test]
fn a_channel_that_drops_everything_times_out() {
    let (stored, st, rounds) = deliver(&sample_record(1), None, &|_| true, &[false], false);
    assert!(stored.is_empty());
    assert_eq!(st, SendState::TimedOut);
    assert!(rounds > 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn lossy_duplicating_reordering_channels_deliver_the_record_once(
        seq in any::<u32>(),
        big in any::<bool>(),
        keyed in any::<bool>(),
        // Loss up to 50 %: over ~25 rounds a chunk is lost every time with p < 1e-7.
        loss in 0u64..=50,
        loss_seed in any::<u64>(),
        dup in proptest::collection::vec(any::<bool>(), 1..5),
        reverse in any::<bool>(),
    ) {
        // A fixed pseudo-random loss pattern (splitmix64 of the datagram number).
        let drop = |i: usize| {
            let mut z = loss_seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % 100 < loss
        };
        let mut rec = if big { max_record() } else { sample_record(seq) };
        rec.seq = seq;
        let key = Key::new([3; 32]);
        let (stored, st, _) = deliver(&rec, keyed.then_some(&key), &drop, &dup, reverse);
        prop_assert_eq!(st, SendState::Acked);
        prop_assert_eq!(stored, std::vec![rec]);
    }
}
