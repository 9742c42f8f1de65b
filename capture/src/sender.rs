//! The sans-IO record sender: no allocator, no clock, no socket.
//!
//! The caller owns the socket and the time. It calls [`Sender::poll`] with the current time
//! and a transmit callback, feeds every received datagram to [`Sender::handle`], and sleeps or
//! polls the NIC until the returned `next_ms`. Each round sends every chunk of the record
//! (acks are per record); the retransmission timeout doubles each round from
//! `initial_rto_ms` up to `max_rto_ms`, each wait spread to [0.75, 1.25) of it by a value fixed
//! by the record's id (a fleet that panics in the same second does not retransmit in step),
//! until the collector acks or `deadline_ms` passes (FreeBSD netdump's retry-until-acked,
//! `reference/hyperv-guest.md` §10.2).
//!
//! An ack counts only if it is for the record in flight (boot id, sequence and record CRC),
//! carries a valid tag when a key is set, and, when the receiver knows where a datagram came
//! from ([`Sender::handle_from`]), came from the configured collector's exact endpoint: the
//! ack's fields travel in clear in every chunk, so anyone who sees one can forge the rest.

use crate::auth::Key;
use crate::chunk::{chunk_count, chunk_repr, RecordId, MAX_RECORD_LEN};
use crate::record::{SCHEMA_MAJOR, SCHEMA_MINOR};
use crate::wire::{self, AckStatus, Repr, MAX_DATAGRAM};
use crate::Error;
use core::net::SocketAddr;

/// Sender timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderConfig {
    /// Wait after the first round before resending (at least 1 ms is used).
    pub initial_rto_ms: u32,
    /// Largest wait between rounds.
    pub max_rto_ms: u32,
    /// Give up this long after [`Sender::new`]'s `now_ms`.
    pub deadline_ms: u64,
}

impl Default for SenderConfig {
    /// 250 ms doubling to 2 s, giving up after 10 s.
    fn default() -> Self {
        SenderConfig {
            initial_rto_ms: 250,
            max_rto_ms: 2000,
            deadline_ms: 10_000,
        }
    }
}

/// What the caller should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    /// Keep receiving; call `poll` again at `next_ms` (or when a datagram arrives).
    Waiting {
        /// When the next round or the deadline is due.
        next_ms: u64,
    },
    /// The collector stored the record (or already had it).
    Acked,
    /// The collector refused the record for good (e.g. unsupported schema).
    Rejected,
    /// The deadline passed without an ack.
    TimedOut,
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderStats {
    /// Datagrams handed to `tx`.
    pub datagrams_sent: u32,
    /// Rounds after the first.
    pub retransmit_rounds: u32,
    /// Datagrams ignored because they did not come from the collector's endpoint.
    pub acks_ignored: u32,
}

/// Whether a datagram from `from` may count as the collector's: the same IP address (an
/// IPv4-mapped IPv6 address is its IPv4 address) and the same port.
pub fn from_collector(from: SocketAddr, collector: SocketAddr) -> bool {
    from.port() == collector.port() && from.ip().to_canonical() == collector.ip().to_canonical()
}

/// Sends one encoded record until acked or the deadline. Borrows the record; no allocation.
#[derive(Debug)]
pub struct Sender<'r> {
    cfg: SenderConfig,
    id: RecordId,
    schema: (u16, u16),
    record: &'r [u8],
    key: Option<&'r Key>,
    collector: Option<SocketAddr>,
    chunks: u16,
    deadline_at: u64,
    next_round_at: u64,
    rto_ms: u64,
    rounds: u32,
    ack: Option<AckStatus>,
    stats: SenderStats,
}

impl<'r> Sender<'r> {
    /// A sender for `record` (schema [`SCHEMA_MAJOR`].[`SCHEMA_MINOR`]); the first round is
    /// due at once.
    pub fn new(
        cfg: SenderConfig,
        boot_id: [u8; 16],
        seq: u32,
        record: &'r [u8],
        key: Option<&'r Key>,
        now_ms: u64,
    ) -> Result<Self, Error> {
        if record.is_empty() {
            return Err(Error::EmptyRecord);
        }
        if record.len() > MAX_RECORD_LEN {
            return Err(Error::RecordTooLarge(record.len()));
        }
        Ok(Sender {
            cfg,
            id: RecordId::of(boot_id, seq, record),
            schema: (SCHEMA_MAJOR, SCHEMA_MINOR),
            record,
            key,
            collector: None,
            // At most MAX_RECORD_LEN / MAX_CHUNK_PAYLOAD + 1 = 50 chunks.
            chunks: chunk_count(record.len()) as u16,
            deadline_at: now_ms.saturating_add(cfg.deadline_ms),
            next_round_at: now_ms,
            rto_ms: u64::from(cfg.initial_rto_ms.max(1)),
            rounds: 0,
            ack: None,
            stats: SenderStats::default(),
        })
    }

    /// Sends the record as schema `major.minor` instead (for test tools).
    pub fn with_schema(mut self, major: u16, minor: u16) -> Self {
        self.schema = (major, minor);
        self
    }

    /// Only datagrams from `collector` (see [`from_collector`]) count in
    /// [`Sender::handle_from`].
    pub fn with_collector(mut self, collector: SocketAddr) -> Self {
        self.collector = Some(collector);
        self
    }

    /// Emits due datagrams through `tx` (each at most [`MAX_DATAGRAM`] bytes) and says what
    /// to do next. After `Acked`, `Rejected` or `TimedOut` nothing more is sent.
    pub fn poll(&mut self, now_ms: u64, tx: &mut dyn FnMut(&[u8])) -> SendState {
        match self.ack {
            Some(AckStatus::Rejected) => return SendState::Rejected,
            Some(_) => return SendState::Acked,
            None => {}
        }
        if now_ms >= self.deadline_at {
            return SendState::TimedOut;
        }
        if now_ms >= self.next_round_at {
            self.send_round(tx);
            if self.rounds > 0 {
                self.stats.retransmit_rounds += 1;
            }
            self.rounds += 1;
            self.next_round_at = now_ms.saturating_add(self.jittered(self.rto_ms));
            self.rto_ms = (self.rto_ms * 2).min(u64::from(self.cfg.max_rto_ms.max(1)));
        }
        SendState::Waiting {
            next_ms: self.next_round_at.min(self.deadline_at),
        }
    }

    /// `rto` spread over [0.75 rto, 1.25 rto) by a value fixed by the record's id and the
    /// round: a fleet whose canaries panic in the same second (a host update gone wrong) does
    /// not retransmit in step, round after round. Deterministic, so tests replay exactly.
    fn jittered(&self, rto: u64) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.id.boot_id[..8]);
        let mut x = u64::from_le_bytes(b)
            ^ u64::from(self.id.record_crc) << 32
            ^ u64::from(self.id.seq)
            ^ u64::from(self.rounds).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // splitmix64's finaliser: every input bit moves every output bit.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let span = (rto / 2).max(1);
        rto - rto / 4 + x % span
    }

    fn send_round(&mut self, tx: &mut dyn FnMut(&[u8])) {
        let mut buf = [0u8; MAX_DATAGRAM];
        for index in 0..self.chunks {
            // Cannot fail: the record is non-empty, within MAX_RECORD_LEN, index < count,
            // and a chunk frame is at most MAX_DATAGRAM by construction.
            let Ok(c) = chunk_repr(&self.id, self.record, index, self.schema) else {
                continue;
            };
            if let Ok(n) = Repr::Chunk(c).emit(self.key, &mut buf) {
                tx(&buf[..n]);
                self.stats.datagrams_sent += 1;
            }
        }
    }

    /// Feeds a datagram that arrived from `from`: ignored (and counted in
    /// [`SenderStats::acks_ignored`]) unless it came from the collector set with
    /// [`Sender::with_collector`]; otherwise as [`Sender::handle`].
    pub fn handle_from(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        if let Some(c) = self.collector {
            if !from_collector(from, c) {
                self.stats.acks_ignored = self.stats.acks_ignored.saturating_add(1);
                return false;
            }
        }
        self.handle(datagram)
    }

    /// Feeds a received datagram whose source the caller has already checked (see
    /// [`Sender::handle_from`]). Returns true if it was an ack for this record (checked with
    /// the key, if any: with a key an untagged ack is ignored); anything else is ignored.
    pub fn handle(&mut self, datagram: &[u8]) -> bool {
        match wire::parse(datagram, self.key) {
            Ok(Repr::Ack(a)) if a.id() == self.id => {
                if self.ack.is_none() {
                    self.ack = Some(a.status);
                }
                true
            }
            _ => false,
        }
    }

    /// The record's dedupe key.
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// The ack status received, if any.
    pub fn ack_status(&self) -> Option<AckStatus> {
        self.ack
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }
}
