//! Stable-toolchain fuzz driver (no libFuzzer, no sanitizers): for a bounded time, feeds
//! `capture_fuzz::frame_decode` random bytes and mutations of valid frames (bit flips,
//! truncation, splices, re-CRC'd header edits), so the CRC does not stop every input at the
//! door. Usage: `stable_driver SECONDS [SEED]`.

use std::time::{Duration, Instant};

use capture::chunk::{chunk_count, emit_chunk, RecordId};
use capture::testutil::{max_record, sample_record};
use capture::wire::{Frame, MAX_DATAGRAM};
use capture_fuzz::{frame_decode, FUZZ_KEY};

/// xorshift64*: a small deterministic PRNG (no dependency needed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, rec) in [sample_record(1), max_record()].iter().enumerate() {
        let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
        let len = rec.encode(&mut buf).unwrap().len();
        let bytes = &buf[..len];
        let id = RecordId::of([i as u8; 16], i as u32, bytes);
        for key in [None, Some(&FUZZ_KEY)] {
            for idx in 0..chunk_count(len) {
                let mut f = [0u8; MAX_DATAGRAM];
                let n = emit_chunk(&id, bytes, idx as u16, key, &mut f).unwrap();
                out.push(f[..n].to_vec());
            }
        }
    }
    out
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let n = rng.below(v.len());
                v.truncate(n);
            }
            2 => {
                let n = rng.below(64);
                v.extend((0..n).map(|_| rng.next() as u8));
            }
            3 if v.len() > 8 => {
                // Edit a header byte, then fix the CRC so the edit reaches the parser.
                let i = rng.below(v.len().min(48));
                v[i] = rng.next() as u8;
                if v.len() >= 12 {
                    Frame::new_unchecked(&mut v[..]).fill_crc();
                }
            }
            _ => {
                if v.len() >= 12 {
                    Frame::new_unchecked(&mut v[..]).fill_crc();
                }
            }
        }
    }
    v
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let seed: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng(seed | 1);
    let corpus = seeds();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1000 {
            let sel = rng.next() as u8;
            let mut input = vec![sel];
            match rng.below(3) {
                0 => {
                    let n = rng.below(MAX_DATAGRAM + 16);
                    input.extend((0..n).map(|_| rng.next() as u8));
                }
                1 => {
                    let base = &corpus[rng.below(corpus.len())];
                    input.extend(mutate(&mut rng, base));
                }
                _ => {
                    // Several length-prefixed datagrams for the reassembler path.
                    input[0] |= 2;
                    for _ in 0..1 + rng.below(8) {
                        let base = &corpus[rng.below(corpus.len())];
                        let d = if rng.below(2) == 0 {
                            base.clone()
                        } else {
                            mutate(&mut rng, base)
                        };
                        input.extend_from_slice(&(d.len() as u16).to_le_bytes());
                        input.push(rng.next() as u8);
                        input.extend(d);
                    }
                }
            }
            frame_decode(&input);
            runs += 1;
        }
    }
    println!("stable_driver: {runs} inputs in {secs} s, no panic (seed {seed:#x})");
}
