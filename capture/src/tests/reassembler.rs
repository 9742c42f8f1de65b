//! Reassembly: any order, duplicates, caps and eviction, CRC, consistency.

use proptest::prelude::*;

use crate::chunk::*;
use crate::record::{CrashRecord, SCHEMA_MAJOR, SCHEMA_MINOR};
use crate::testutil::{max_record, sample_record};
use crate::wire::{self, ChunkRepr, Repr, MAX_DATAGRAM};

fn encode(r: &CrashRecord) -> Vec<u8> {
    let mut buf = [0u8; crate::record::MAX_ENCODED_LEN];
    r.encode(&mut buf).unwrap().to_vec()
}

/// Frames for a record, as a sender would put them on the wire.
fn frames(boot: [u8; 16], seq: u32, rec: &[u8]) -> Vec<Vec<u8>> {
    let id = RecordId::of(boot, seq, rec);
    (0..chunk_count(rec.len()))
        .map(|i| {
            let mut out = [0u8; MAX_DATAGRAM];
            let n = emit_chunk(&id, rec, i as u16, None, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

fn chunk_of(frame: &[u8]) -> ChunkRepr<'_> {
    match wire::parse(frame, None) {
        Ok(Repr::Chunk(c)) => c,
        other => panic!("{other:?}"),
    }
}

fn small_cfg(per_source: usize, total: usize) -> ReassemblerConfig {
    ReassemblerConfig {
        max_pending_per_source: per_source,
        max_pending_total: total,
        max_record_len: MAX_RECORD_LEN,
    }
}

#[test]
fn chunks_in_reverse_order_with_duplicates_complete_once() {
    let rec = encode(&max_record());
    let fr = frames([1; 16], 4, &rec);
    assert_eq!(fr.len(), 3);
    let mut r = Reassembler::new(ReassemblerConfig::default());
    assert_eq!(r.push("a", &chunk_of(&fr[2]), 0), Push::Incomplete);
    assert_eq!(r.push("a", &chunk_of(&fr[2]), 1), Push::Duplicate);
    assert_eq!(r.push("a", &chunk_of(&fr[0]), 2), Push::Incomplete);
    assert_eq!(r.pending(), 1);
    let Push::Complete(done) = r.push("a", &chunk_of(&fr[1]), 3) else {
        panic!("not complete")
    };
    assert_eq!(done.record, rec);
    assert_eq!(done.id, RecordId::of([1; 16], 4, &rec));
    assert_eq!(done.schema, (SCHEMA_MAJOR, SCHEMA_MINOR));
    assert_eq!(
        CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, &done.record).unwrap(),
        max_record()
    );
    assert_eq!(r.pending(), 0);
    let s = r.stats();
    assert_eq!((s.completed, s.duplicate_chunks), (1, 1));
}

#[test]
fn a_single_chunk_record_completes_without_pending_state() {
    let rec = encode(&sample_record(1));
    let fr = frames([2; 16], 1, &rec);
    assert_eq!(fr.len(), 1);
    let mut r = Reassembler::new(ReassemblerConfig::default());
    assert!(matches!(r.push(1u32, &chunk_of(&fr[0]), 0), Push::Complete(c) if c.record == rec));
    assert_eq!(r.pending(), 0);
}

#[test]
fn a_wrong_record_crc_is_never_completed() {
    let rec = encode(&max_record());
    let mut id = RecordId::of([3; 16], 1, &rec);
    id.record_crc ^= 0x8000_0000;
    let mut r = Reassembler::new(ReassemblerConfig::default());
    let mut last = Push::Incomplete;
    for i in 0..chunk_count(rec.len()) {
        let c = chunk_repr(&id, &rec, i as u16, (1, 0)).unwrap();
        last = r.push((), &c, 0);
    }
    assert_eq!(last, Push::CrcMismatch(id));
    assert_eq!(r.stats().crc_mismatches, 1);
    assert_eq!(r.pending(), 0);
}

#[test]
fn per_source_cap_evicts_that_sources_oldest_partial() {
    let mut r = Reassembler::new(small_cfg(2, 100));
    let rec = encode(&max_record());
    let firsts: Vec<Vec<u8>> = (0..3)
        .map(|seq| frames([4; 16], seq, &rec)[0].clone())
        .collect();
    let other = frames([5; 16], 0, &rec);
    r.push("b", &chunk_of(&other[0]), 0);
    for (t, f) in firsts.iter().enumerate() {
        r.push("a", &chunk_of(f), t as u64);
    }
    // "a" holds seq 1 and 2; seq 0 was evicted; "b" was untouched.
    assert_eq!(r.pending(), 3);
    assert_eq!(r.stats().evicted, 1);
    // Completing seq 0 now needs all its chunks again (its first chunk was lost).
    let f0 = frames([4; 16], 0, &rec);
    assert_eq!(r.push("a", &chunk_of(&f0[1]), 9), Push::Incomplete);
    // "b"'s partial survived and completes.
    assert_eq!(r.push("b", &chunk_of(&other[1]), 9), Push::Incomplete);
    assert!(matches!(
        r.push("b", &chunk_of(&other[2]), 9),
        Push::Complete(_)
    ));
}

#[test]
fn total_cap_evicts_the_oldest_partial_of_any_source() {
    let mut r = Reassembler::new(small_cfg(8, 3));
    let rec = encode(&max_record());
    let fr: Vec<Vec<Vec<u8>>> = (0..4).map(|s| frames([6; 16], s, &rec)).collect();
    for (src, f) in fr.iter().enumerate() {
        r.push(src, &chunk_of(&f[0]), src as u64);
    }
    assert_eq!(r.pending(), 3);
    assert_eq!(r.stats().evicted, 1);
    // Source 0's record (the oldest) is gone: two more chunks do not complete it.
    assert_eq!(r.push(0, &chunk_of(&fr[0][1]), 10), Push::Incomplete);
    assert_eq!(r.push(0, &chunk_of(&fr[0][2]), 10), Push::Incomplete);
    // Source 3's survives.
    r.push(3, &chunk_of(&fr[3][1]), 10);
    assert!(matches!(
        r.push(3, &chunk_of(&fr[3][2]), 10),
        Push::Complete(_)
    ));
}

#[test]
fn the_same_record_from_two_sources_is_reassembled_separately() {
    let rec = encode(&max_record());
    let fr = frames([7; 16], 1, &rec);
    let mut r = Reassembler::new(ReassemblerConfig::default());
    r.push("x", &chunk_of(&fr[0]), 0);
    r.push("y", &chunk_of(&fr[1]), 0);
    r.push("x", &chunk_of(&fr[1]), 0);
    assert_eq!(r.pending(), 2);
    assert!(matches!(
        r.push("x", &chunk_of(&fr[2]), 0),
        Push::Complete(_)
    ));
    assert_eq!(r.pending(), 1);
}

#[test]
fn contradicting_and_oversized_chunks_are_dropped() {
    let rec = encode(&max_record());
    let id = RecordId::of([8; 16], 1, &rec);
    let mut r = Reassembler::new(ReassemblerConfig {
        max_record_len: 4000,
        ..ReassemblerConfig::default()
    });
    r.push((), &chunk_repr(&id, &rec, 0, (1, 0)).unwrap(), 0);
    // Same id, different schema minor.
    let c = chunk_repr(&id, &rec, 1, (1, 1)).unwrap();
    assert_eq!(r.push((), &c, 0), Push::Inconsistent(id));
    // Same id, different record length.
    let mut c = chunk_repr(&id, &rec, 1, (1, 0)).unwrap();
    c.record_len += 1;
    assert_eq!(r.push((), &c, 0), Push::Inconsistent(id));
    // A hand-built chunk past its record end (wire::parse would refuse it).
    let mut c = chunk_repr(&id, &rec, 1, (1, 0)).unwrap();
    c.offset = c.record_len;
    assert_eq!(r.push((), &c, 0), Push::Inconsistent(id));
    // More chunks than record bytes.
    let mut c = chunk_repr(&id, &rec, 1, (1, 0)).unwrap();
    c.chunk_count = u16::MAX;
    c.record_len = 100;
    c.offset = 0;
    c.data = &rec[..10];
    assert_eq!(r.push((), &c, 0), Push::Inconsistent(id));
    // Over the size cap.
    let big = vec![0u8; 4001];
    let bid = RecordId::of([8; 16], 2, &big);
    let c = chunk_repr(&bid, &big, 0, (1, 0)).unwrap();
    assert_eq!(r.push((), &c, 0), Push::TooLarge(bid));
    assert_eq!(r.stats().inconsistent, 4);
    assert_eq!(r.stats().too_large, 1);
    // The original partial is intact and still completes.
    r.push((), &chunk_repr(&id, &rec, 1, (1, 0)).unwrap(), 0);
    let last = r.push((), &chunk_repr(&id, &rec, 2, (1, 0)).unwrap(), 0);
    assert!(matches!(last, Push::Complete(c) if c.record == rec));
}

#[test]
fn overlapping_chunks_that_leave_a_gap_are_not_completed() {
    let rec = encode(&max_record());
    let id = RecordId::of([9; 16], 1, &rec);
    let mut r = Reassembler::new(ReassemblerConfig::default());
    let c0 = chunk_repr(&id, &rec, 0, (1, 0)).unwrap();
    let c2 = chunk_repr(&id, &rec, 2, (1, 0)).unwrap();
    // Chunk 1 claims offset 0 again: every index arrives, but bytes are missing.
    let mut c1 = chunk_repr(&id, &rec, 1, (1, 0)).unwrap();
    c1.offset = 0;
    r.push((), &c0, 0);
    r.push((), &c2, 0);
    // The byte count matches (same chunk lengths), so the record CRC is what catches it.
    assert_eq!(r.push((), &c1, 0), Push::CrcMismatch(id));
    assert_eq!(r.pending(), 0);
}

#[test]
fn idle_partials_expire() {
    let rec = encode(&max_record());
    let fr = frames([10; 16], 1, &rec);
    let mut r = Reassembler::new(ReassemblerConfig::default());
    r.push((), &chunk_of(&fr[0]), 1_000);
    assert_eq!(r.expire(5_000, 5_000), 0);
    r.push((), &chunk_of(&fr[1]), 4_000);
    assert_eq!(r.expire(9_000, 5_000), 0, "the second chunk refreshed it");
    assert_eq!(r.expire(9_001, 5_000), 1);
    assert_eq!(r.pending(), 0);
    assert_eq!(r.stats().expired, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn shuffled_duplicated_chunks_reassemble_to_the_record(
        len in 1usize..6000,
        seed in any::<u64>(),
        order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
    ) {
        // Bytes derived from the seed.
        let rec: Vec<u8> = (0..len).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 13) as u8).collect();
        let fr = frames([11; 16], seed as u32, &rec);
        // Every chunk once, in shuffled order, plus random duplicates.
        let mut seqv: Vec<usize> = (0..fr.len()).collect();
        for (k, ix) in order.iter().enumerate() {
            let a = k % seqv.len();
            let b = ix.index(seqv.len());
            seqv.swap(a, b);
        }
        for ix in order.iter().take(5) {
            let at = ix.index(seqv.len() + 1);
            seqv.insert(at, ix.index(fr.len()));
        }
        let mut r = Reassembler::new(ReassemblerConfig::default());
        let mut completions = 0;
        let mut seen = std::collections::HashSet::new();
        for &i in &seqv {
            let first_time = seen.insert(i);
            let all_in_now = first_time && seen.len() == fr.len();
            match r.push(0u8, &chunk_of(&fr[i]), 0) {
                Push::Complete(c) => {
                    // The first completion is exactly when the last missing chunk arrives;
                    // later ones are re-deliveries after completion (the collector dedupes).
                    prop_assert!(all_in_now || completions > 0);
                    prop_assert_eq!(&c.record, &rec);
                    prop_assert_eq!(c.id, RecordId::of([11; 16], seed as u32, &rec));
                    completions += 1;
                }
                Push::Duplicate => prop_assert!(!first_time),
                Push::Incomplete => prop_assert!(!all_in_now),
                other => prop_assert!(false, "{:?}", other),
            }
        }
        prop_assert!(completions >= 1);
    }
}
