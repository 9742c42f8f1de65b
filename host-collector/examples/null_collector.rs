//! A measuring instrument, not a collector: the network half of `serve` with no storage.
//!
//! One thread receives datagrams (`recvmmsg`), checks each frame (length, magic, CRC), checks a
//! single-chunk record's CRC, and acks it `Stored` at once (`sendmmsg`), without reassembly,
//! decoding, dedupe or a database. `scripts/bench-collector --ceiling` loads it with the same
//! `load` as `serve`: what `load` measures against it is what this machine's UDP path and load
//! generator allow before any storage, the ceiling for `serve` in the same run.
//!
//! Never use it to collect anything: every record it acks is thrown away.
//!
//! Usage: cargo run --release -p host-collector --example null_collector -- 127.0.0.1:0
//! (prints "listening on ADDR" on stderr, runs until killed).

use std::net::SocketAddr;

use capture::wire::{self, AckRepr, AckStatus, Repr};
use host_collector::mmsg::{self, RecvBatch};

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let sock = mmsg::bind_udp(addr, 8 << 20)?;
    sock.set_nonblocking(false)?;
    eprintln!("listening on {}", sock.local_addr()?);
    let mut batch = RecvBatch::new();
    let mut acks: Vec<([u8; 64], usize, SocketAddr)> = Vec::with_capacity(mmsg::BATCH);
    loop {
        let n = batch.recv(&sock)?;
        acks.clear();
        for i in 0..n {
            let Some((data, peer)) = batch.get(i) else {
                continue;
            };
            let Ok(Repr::Chunk(c)) = wire::parse(data, None) else {
                continue;
            };
            if c.chunk_count != 1 || crc32fast::hash(c.data) != c.record_crc {
                continue;
            }
            let mut frame = [0u8; 64];
            if let Ok(len) =
                Repr::Ack(AckRepr::for_record(&c.id(), AckStatus::Stored)).emit(None, &mut frame)
            {
                acks.push((frame, len, peer));
            }
        }
        let msgs: Vec<(&[u8], SocketAddr)> = acks.iter().map(|(f, l, p)| (&f[..*l], *p)).collect();
        mmsg::send_all(&sock, &msgs);
    }
}
