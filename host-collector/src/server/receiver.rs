//! The receiver thread: recvmmsg, check and decode each datagram, reassemble records and
//! queue each batch's messages for the writer.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::chunk::{Push, Reassembler};
use capture::record::CrashRecord;
use capture::wire::{self, Repr};
use capture::{Key, RecordId};
use tracing::{debug, error, warn};

use super::maint::{self, RateLimit};
use super::{followup, Counters, Msg, Queue, ServeError};
use crate::convert::{self, lean, LeanView};
use crate::mmsg;
use crate::store::{HeartbeatSeen, NewRecord, RecordKey, Rejection};
use crate::util::now_us;

/// The time a recvmmsg batch arrived: wall clock (stored) and the reassembler's milliseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    us: i64,
    ms: u64,
}

/// Partial records that received no chunk for this long are dropped (and counted as
/// `expired`): far longer than a sender retransmits (capture's default deadline is 10 s).
pub const REASSEMBLY_IDLE_MS: u64 = 30_000;

/// After a `recvmmsg` that brought fewer than [`COALESCE_BELOW`] datagrams, the receiver
/// sleeps this long before it receives again, so the next call finds a batch instead of one
/// datagram, and a sender's datagram lands in the socket's queue instead of waking a
/// blocked thread (a wake-up each, on the sender's CPU time). Linux only: elsewhere a
/// receive returns one datagram (`mmsg/portable.rs`). `scripts/bench-collector`, serve
/// without and with it alternating (`AB=`, 200,000 records): 100 canaries 84,098 / 92,045 /
/// 79,003 / 86,892 against 87,317 / 88,215 / 89,217 / 89,860 records/s, 1,000 canaries
/// 77,890 / 82,295 against 92,680 / 93,321; CPU per record (one run each): receiver 2.6 →
/// 1.9 µs, `load` 5.9 → 5.0. A datagram waits at most this long longer when traffic is
/// light; the socket's buffer holds far more than arrives meanwhile.
#[cfg(target_os = "linux")]
const COALESCE: Duration = Duration::from_micros(150);
/// Batches at least this large are followed by the next receive at once.
#[cfg(target_os = "linux")]
const COALESCE_BELOW: usize = 8;

pub(super) struct Receiver {
    pub(super) reasm: Reassembler<SocketAddr>,
    pub(super) started: Instant,
    pub(super) key: Option<Key>,
    pub(super) counters: Arc<Counters>,
    pub(super) queue: Arc<Queue>,
    /// Messages of the current recvmmsg batch, queued together by [`Receiver::flush`].
    pub(super) out: Vec<Msg>,
    pub(super) evicted_seen: u64,
    pub(super) expired_seen: u64,
    pub(super) evicted_bytes_seen: u64,
    pub(super) writer_gone: bool,
    /// "rejected record" warnings: any sender can cause them.
    pub(super) reject_warn: RateLimit,
}

impl Receiver {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Moves the reassembler's eviction and expiry counts into the shared counters.
    fn sync_reasm_stats(&mut self) {
        let st = self.reasm.stats();
        let c = &*self.counters;
        if st.evicted > self.evicted_seen {
            Counters::add(&c.evictions, st.evicted - self.evicted_seen);
            self.evicted_seen = st.evicted;
        }
        if st.expired > self.expired_seen {
            Counters::add(&c.expired, st.expired - self.expired_seen);
            self.expired_seen = st.expired;
        }
        if st.evicted_bytes > self.evicted_bytes_seen {
            Counters::add(&c.evicted_bytes, st.evicted_bytes - self.evicted_bytes_seen);
            self.evicted_bytes_seen = st.evicted_bytes;
        }
    }

    pub(super) fn expire(&mut self) {
        let now = self.now_ms();
        if self.reasm.expire(now, REASSEMBLY_IDLE_MS) > 0 {
            self.sync_reasm_stats();
        }
    }

    /// The clocks for a recvmmsg batch: read once, used for all its datagrams.
    fn clock(&self) -> Clock {
        Clock {
            us: now_us(),
            ms: self.now_ms(),
        }
    }

    pub(super) fn handle(&mut self, dgram: &[u8], peer: SocketAddr, now: Clock) {
        let c = &*self.counters;
        Counters::add(&c.datagrams, 1);
        let repr = match wire::parse(dgram, self.key.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                debug!(%peer, len = dgram.len(), "dropped datagram: {e}");
                c.count_wire_error(&e);
                return;
            }
        };
        match repr {
            Repr::Chunk(chunk) => match self.reasm.push(peer, &chunk, now.ms) {
                Push::Complete(done) => {
                    self.sync_reasm_stats();
                    self.complete(done.id, done.schema, done.record, peer, now.us)
                }
                Push::Incomplete => self.sync_reasm_stats(),
                Push::Duplicate => {}
                Push::CrcMismatch(id) | Push::Inconsistent(id) | Push::TooLarge(id) => {
                    debug!(%peer, seq = id.seq, "chunk not reassembled");
                    Counters::add(&c.reassembly_errors, 1);
                }
            },
            Repr::Heartbeat(h) => {
                let hb = HeartbeatSeen {
                    boot_id: h.boot_id,
                    source: peer.to_string(),
                    arch: h.arch.into(),
                    seen_at_us: now.us,
                    uptime_ms: h.uptime_ms,
                    seq: h.seq,
                };
                self.send(Msg::Heartbeat(hb));
            }
            Repr::Followup(f) => self.send(Msg::Followup(Box::new(followup::Pending::new(
                &f, dgram, peer,
            )))),
            Repr::Ack(_) | Repr::Drill(_) | Repr::Challenge(_) => {
                debug!(%peer, "unexpected {:?} frame", repr.kind());
                Counters::add(&c.unexpected_kind, 1);
            }
        }
    }

    fn complete(
        &mut self,
        id: RecordId,
        schema: (u16, u16),
        bytes: Vec<u8>,
        peer: SocketAddr,
        now_us: i64,
    ) {
        let key = RecordKey {
            boot_id: id.boot_id,
            seq: id.seq,
            record_crc: id.record_crc,
        };
        let (major, minor) = schema;
        // What the row needs of the body: its text columns, location and uptime.
        let row = |v: &LeanView<'_>| {
            let line_col = v.location.map_or((0, 0), |l| (l.line, l.column));
            (convert::render_lean(peer, v), line_col, v.uptime_us)
        };
        // The lean reader checks the body as CrashRecord::decode does without building the
        // whole record; what it does not take (a bad body, another schema, a body naming
        // another record) goes the full way below, which decides and says why.
        let lean = lean::decode(major, minor, &bytes)
            .filter(|v| v.boot_id == id.boot_id && v.seq == id.seq)
            .map(|v| row(&v));
        let reject = |reason: String| Rejection {
            key,
            source: peer.to_string(),
            received_at_us: now_us,
            schema_major: major,
            schema_minor: minor,
            reason,
            raw: bytes.clone(),
        };
        let (text, line_col, uptime_us) = match lean {
            Some(r) => r,
            None => match CrashRecord::decode(major, minor, &bytes) {
                Ok(rec) if rec.boot_id != id.boot_id || rec.seq != id.seq => {
                    let r = reject(format!(
                        "record body names boot {} seq {}, its frames boot {} seq {}",
                        crate::util::hex(&rec.boot_id),
                        rec.seq,
                        crate::util::hex(&id.boot_id),
                        id.seq
                    ));
                    if let Some(n) = self.reject_warn.check() {
                        warn!(%peer, "rejected record: {}{}", r.reason, maint::suppressed(n));
                    }
                    return self.send(Msg::Reject(Box::new(r), peer));
                }
                Ok(rec) => row(&LeanView::of(&rec)),
                Err(e) => {
                    let r = reject(e.to_string());
                    if let Some(n) = self.reject_warn.check() {
                        warn!(%peer, seq = id.seq, "rejected record: {e}{}", maint::suppressed(n));
                    }
                    return self.send(Msg::Reject(Box::new(r), peer));
                }
            },
        };
        // Lean: the store (set_lean in `Collector::bind`) keeps only these columns.
        let msg = Msg::Record(
            Box::new(NewRecord {
                key,
                received_at_us: now_us,
                schema_major: major,
                schema_minor: minor,
                uptime_us,
                line_col,
                text,
                raw: bytes,
            }),
            peer,
        );
        self.send(msg);
    }

    fn send(&mut self, msg: Msg) {
        self.out.push(msg);
    }

    /// Queues the messages of the batch for the writer; what does not fit is dropped unacked
    /// and counted (`queue_full_drops`): its sender retransmits.
    pub(super) fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        match self.queue.push_all(&mut self.out) {
            Some(0) => {}
            Some(dropped) => Counters::add(&self.counters.queue_full_drops, dropped),
            // The writer died: `run` stops and reports why when it joins it.
            None => self.writer_gone = true,
        }
    }
}

/// The receiver thread: recvmmsg, check and decode each datagram, queue the batch's records.
pub(super) fn receive_loop(
    mut rx: Receiver,
    sock: &StdUdpSocket,
    stop: &AtomicBool,
) -> Result<(), ServeError> {
    let mut batch = mmsg::RecvBatch::new();
    let mut last_expiry = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match batch.recv(sock) {
            Ok(n) => {
                let now = rx.clock();
                for i in 0..n {
                    if let Some((d, peer)) = batch.get(i) {
                        rx.handle(d, peer, now);
                    }
                }
                rx.flush();
                #[cfg(target_os = "linux")]
                if n < COALESCE_BELOW {
                    std::thread::sleep(COALESCE);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            // ICMP errors surface here on Linux; they are not fatal.
            Err(e) => debug!("recv: {e}"),
        }
        if last_expiry.elapsed() >= Duration::from_secs(1) {
            last_expiry = Instant::now();
            rx.expire();
        }
        if rx.writer_gone {
            error!("the writer thread stopped; shutting down");
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
