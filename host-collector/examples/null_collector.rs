//! A measuring instrument, not a collector: the network half of `serve`, with no storage or
//! with the least storage that still makes an ack durable.
//!
//! One thread receives datagrams (`recvmmsg`), checks each frame (length, magic, CRC), checks a
//! single-chunk record's CRC, and acks it `Stored` (`sendmmsg`), without reassembly, decoding,
//! dedupe, liveness, events or metrics. `scripts/bench-collector` loads it with the same `load`
//! as `serve`:
//! - with no database (the ceiling): what this machine's UDP path and load generator allow
//!   before any storage;
//! - with `--sqlite PATH` (the bare durable collector): each batch it has received (drained
//!   from the socket, up to [`MAX_COMMIT`] records) is inserted as raw rows, the baseline's
//!   row (boot id, seq, receive time, the record's bytes) in the baseline's table, in one
//!   transaction, and acked after its commit. The database is set up as the baseline's
//!   (WAL, `synchronous=NORMAL`, 8 KiB pages, checkpoints on this thread). What any collector
//!   that stores the baseline's row and acks after the commit can reach in the same run: the
//!   bound for `serve`'s ratio to the baseline on this machine. One thread is its fastest
//!   shape here: a receiving thread handing batches to a committing one (`serve`'s shape)
//!   measured 54-59k records/s against 98-107k (100 canaries, 200,000 records, alternating,
//!   2026-12-07), with twice the CPU per record (smaller commits, a hand-off per batch).
//!
//! Never use it to collect anything: it keeps no key, answers no retransmit as a duplicate,
//! and (without `--sqlite`) throws every record it acks away.
//!
//! Usage: cargo run --release -p host-collector --example null_collector -- 127.0.0.1:0
//!        [--sqlite PATH] (prints "listening on ADDR" on stderr, runs until killed).

use std::net::SocketAddr;

use capture::wire::{self, AckRepr, AckStatus, Repr};
use host_collector::mmsg::{self, RecvBatch};

/// Most records in one commit of the bare durable collector.
const MAX_COMMIT: usize = 512;

fn bad(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

/// The baseline's table and settings (`scripts/bench-collector`, `sqlite_baseline`).
fn open(path: &str) -> rusqlite::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path)?;
    c.pragma_update(None, "page_size", 8192)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, boot_id BLOB, seq INTEGER,
         received_at_us INTEGER, raw BLOB)",
    )?;
    Ok(c)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:0".parse().map_err(bad)?;
    let mut db = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sqlite" => db = Some(args.next().ok_or_else(|| bad("--sqlite takes a path"))?),
            _ => addr = a.parse().map_err(bad)?,
        }
    }
    let mut conn = db.as_deref().map(open).transpose().map_err(bad)?;
    let sock = mmsg::bind_udp(addr, 8 << 20)?;
    // Blocking until told otherwise: switched only when it changes (a syscall each time).
    sock.set_nonblocking(false)?;
    let mut nonblocking = false;
    eprintln!("listening on {}", sock.local_addr()?);
    let mut batch = RecvBatch::new();
    let mut acks: Vec<([u8; 64], usize, SocketAddr)> = Vec::with_capacity(MAX_COMMIT);
    let mut rows: Vec<([u8; 16], u32, Vec<u8>)> = Vec::with_capacity(MAX_COMMIT);
    loop {
        acks.clear();
        rows.clear();
        // Blocks for the first datagrams, then drains what is queued (when storing).
        if nonblocking {
            sock.set_nonblocking(false)?;
            nonblocking = false;
        }
        loop {
            let n = match batch.recv(&sock) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
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
                if let Ok(len) = Repr::Ack(AckRepr::for_record(&c.id(), AckStatus::Stored))
                    .emit(None, &mut frame)
                {
                    acks.push((frame, len, peer));
                    if conn.is_some() {
                        rows.push((c.boot_id, c.seq, c.data.to_vec()));
                    }
                }
            }
            if conn.is_none() || n == 0 || acks.len() + mmsg::BATCH > MAX_COMMIT {
                break;
            }
            if !nonblocking {
                sock.set_nonblocking(true)?;
                nonblocking = true;
            }
        }
        if let Some(c) = conn.as_mut() {
            if !rows.is_empty() {
                store(c, &rows).map_err(bad)?;
            }
        }
        let msgs: Vec<(&[u8], SocketAddr)> = acks.iter().map(|(f, l, p)| (&f[..*l], *p)).collect();
        mmsg::send_all(&sock, &msgs);
    }
}

/// Inserts `rows` in one transaction: the acks go out after it returns.
fn store(c: &mut rusqlite::Connection, rows: &[([u8; 16], u32, Vec<u8>)]) -> rusqlite::Result<()> {
    let now = host_collector::util::now_us();
    let tx = c.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO records (boot_id, seq, received_at_us, raw) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (boot, seq, raw) in rows {
            st.execute(rusqlite::params![&boot[..], *seq, now, raw])?;
        }
    }
    tx.commit()
}
