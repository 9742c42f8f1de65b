//! Per-record throughput of the capture pipeline (a plain `harness = false` bench):
//! encode, chunk frame emit, frame parse, reassembly, decode, with and without a key.
//!
//!     cargo bench -p capture --features std
//!
//! Prints records/s for each stage and the encoded size of a typical record.

use std::hint::black_box;
use std::time::{Duration, Instant};

use capture::chunk::{chunk_count, emit_chunk, Push, Reassembler, ReassemblerConfig, RecordId};
use capture::record::{CrashRecord, MAX_ENCODED_LEN, SCHEMA_MAJOR, SCHEMA_MINOR};
use capture::testutil::{max_record, sample_record};
use capture::wire::{self, Repr, MAX_DATAGRAM};
use capture::Key;

/// Runs `f` repeatedly for about `budget` and returns iterations per second.
fn rate(budget: Duration, mut f: impl FnMut(u32)) -> f64 {
    // Warm up.
    for i in 0..100 {
        f(i);
    }
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f(n);
            n = n.wrapping_add(1);
        }
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn frames(rec: &[u8], key: Option<&Key>) -> Vec<Vec<u8>> {
    let id = RecordId::of([1; 16], 1, rec);
    (0..chunk_count(rec.len()))
        .map(|i| {
            let mut out = [0u8; MAX_DATAGRAM];
            let n = emit_chunk(&id, rec, i as u16, key, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

fn bench_record(name: &str, rec: &CrashRecord, key: Option<&Key>) {
    let budget = Duration::from_millis(400);
    let mut buf = vec![0u8; MAX_ENCODED_LEN];
    let enc = rec.encode(&mut buf).unwrap().to_vec();
    let fr = frames(&enc, key);
    let keyed = if key.is_some() { "keyed" } else { "no key" };
    println!(
        "{name} ({keyed}): {} bytes encoded, {} chunk(s), {} bytes on the wire",
        enc.len(),
        fr.len(),
        fr.iter().map(Vec::len).sum::<usize>()
    );
    let encode = rate(budget, |_| {
        black_box(black_box(rec).encode(&mut buf).unwrap().len());
    });
    let id = RecordId::of([1; 16], 1, &enc);
    let mut out = [0u8; MAX_DATAGRAM];
    let emit = rate(budget, |_| {
        for i in 0..fr.len() {
            black_box(emit_chunk(&id, black_box(&enc), i as u16, key, &mut out).unwrap());
        }
    });
    let parse = rate(budget, |_| {
        for f in &fr {
            black_box(wire::parse(black_box(f), key).unwrap());
        }
    });
    let mut r = Reassembler::new(ReassemblerConfig::default());
    let reassemble = rate(budget, |n| {
        // A distinct source each time, as in a crash storm.
        let mut done = false;
        for f in fr.iter().rev() {
            let Ok(Repr::Chunk(c)) = wire::parse(f, key) else {
                unreachable!()
            };
            if let Push::Complete(c) = r.push(n, &c, 0) {
                done = black_box(c.record.len()) == enc.len();
            }
        }
        assert!(done);
    });
    let decode = rate(budget, |_| {
        black_box(CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, black_box(&enc)).unwrap());
    });
    println!("  encode              {encode:>12.0} records/s");
    println!("  emit chunk frames   {emit:>12.0} records/s");
    println!("  parse frames        {parse:>12.0} records/s");
    println!("  parse + reassemble  {reassemble:>12.0} records/s");
    println!("  decode              {decode:>12.0} records/s");
}

fn main() {
    // `cargo test --benches` passes --bench-less args; run quickly then.
    let key = Key::new([0x42; 32]);
    bench_record("typical record", &sample_record(7), None);
    bench_record("typical record", &sample_record(7), Some(&key));
    bench_record("maximal record", &max_record(), None);
    bench_record("maximal record", &max_record(), Some(&key));
}
