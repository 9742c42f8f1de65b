//! Robustness of the netvsc and synthvid parsers against arbitrary bytes from the host:
//! random buffers and single/multi-byte mutations of valid messages must parse or fail with an
//! error, never panic, and whatever parses must describe bytes inside the input.
//! Deterministic (xorshift), bounded, fast.

use vmbus::netvsc::nvsp::Nvsp;
use vmbus::netvsc::rndis::{self, PpiIter, Rndis};
use vmbus::ring::parse_packet;
use vmbus::synthvid::wire::Message;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            break;
        }
        let i = rng.below(b.len());
        match rng.below(4) {
            0 => b[i] = rng.next() as u8,
            1 => b[i] ^= 1 << rng.below(8),
            2 => b.truncate(i),
            _ => {
                // Write a "large" little-endian word, the classic length/offset attack.
                let v = [0u32, 1, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000, 4096][rng.below(6)];
                let end = (i + 4).min(b.len());
                b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
            }
        }
    }
    b
}

fn check_rndis(buf: &[u8]) {
    if let Ok(m) = Rndis::parse(buf) {
        let r = buf.as_ptr_range();
        let inside = |s: &[u8]| s.is_empty() || (r.contains(&s.as_ptr()) && s.len() <= buf.len());
        match m {
            Rndis::Packet { data, ppi } => {
                assert!(inside(data) && inside(ppi));
                for p in PpiIter::new(ppi).flatten() {
                    assert!(inside(p.value));
                }
            }
            Rndis::Query { info, .. }
            | Rndis::Set { info, .. }
            | Rndis::QueryComplete { info, .. } => {
                assert!(inside(info))
            }
            Rndis::Indicate { buf: b, .. } => assert!(inside(b)),
            _ => {}
        }
    }
}

#[test]
fn rndis_parser_survives_random_and_mutated_input() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let frame = [0x5au8; 100];
    let mut ppi = [0u8; 16];
    rndis::emit_ppi(rndis::PPI_TCPIP_CHECKSUM, &[1, 2, 3, 4], &mut ppi).unwrap();
    let seeds: Vec<Vec<u8>> = [
        Rndis::Packet {
            data: &frame,
            ppi: &ppi,
        },
        Rndis::QueryComplete {
            request_id: 1,
            status: 0,
            info: &[1, 2, 3, 4, 5, 6],
        },
        Rndis::Set {
            request_id: 2,
            oid: rndis::OID_GEN_CURRENT_PACKET_FILTER,
            info: &[0xb, 0, 0, 0],
        },
        Rndis::Indicate {
            status: rndis::STATUS_MEDIA_CONNECT,
            buf: &[9; 8],
        },
    ]
    .iter()
    .map(|m| {
        let mut b = vec![0u8; m.emit_len()];
        m.emit(&mut b).unwrap();
        b
    })
    .collect();
    for i in 0..20_000 {
        let b = if i % 4 == 0 {
            let n = rng.below(200);
            rng.bytes(n)
        } else {
            let s = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, s)
        };
        check_rndis(&b);
    }
}

#[test]
fn nvsp_and_packet_parsers_survive_random_input() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..20_000 {
        let n = rng.below(64);
        let mut b = rng.bytes(n);
        if b.len() >= 4 && rng.below(2) == 0 {
            // Bias towards known types so the bodies get exercised.
            let t = [1u32, 2, 100, 101, 102, 104, 105, 107, 108, 125][rng.below(10)];
            b[..4].copy_from_slice(&t.to_le_bytes());
        }
        let _ = Nvsp::parse(&b);
        if let Ok(p) = parse_packet(&b) {
            assert!(16 + p.payload.len() <= b.len());
            assert!(p.kind.xfer_ranges().count() * 8 + 16 <= b.len());
        }
    }
}

#[test]
fn synthvid_parser_survives_random_and_mutated_input() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut seed = [0u8; 64];
    let n = Message::FeatureChange {
        dirt_needed: true,
        ptr_pos_needed: false,
        ptr_shape_needed: false,
        situ_needed: true,
    }
    .emit(&mut seed)
    .unwrap();
    for i in 0..20_000 {
        let b = if i % 2 == 0 {
            let n = rng.below(64);
            rng.bytes(n)
        } else {
            mutate(&mut rng, &seed[..n])
        };
        let _ = Message::parse(&b);
    }
}
