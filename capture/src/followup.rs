//! The follow-up frame (kind 6): the outcomes of the panic-path steps that ran after the
//! record was sealed, sent after the record is acked.
//!
//! The record is sealed at the panic screen (design.md, "The panic path": the screen shows,
//! as a QR code, exactly the bytes that are shipped), so the outcomes of screen-flush, unload,
//! cleanup, ship, crash registers and end cannot be in it. They travel here, keyed by the
//! record's dedupe key; the collector attaches them to the stored record.
//!
//! ```text
//! Followup kind header (H = 28), after the common prefix of `wire`:
//! off len field
//! 0   16  boot id of the record
//! 16  4   seq of the record
//! 20  4   record CRC (the dedupe key's)
//! 24  1   entry count N (1..=FOLLOWUP_CAP)
//! 25  3   reserved, zero
//! payload: N entries of 12 bytes
//! 0   1   step (panic::Step code)
//! 1   1   outcome code (panic::Outcome's)
//! 2   2   reserved, zero
//! 4   4   outcome argument
//! 8   4   elapsed microseconds
//! ```
//!
//! The appliance sends one when the record is acked (at the end of the ship step: crash
//! registers and end pending) and a more complete one from the end step; the collector keeps
//! the one that [reports](FollowupRepr::reported) more steps.
//!
//! The collector answers with an Ack for the record's key whose status is
//! [`FOLLOWUP_STORED`] (attached, or one reporting as many held) or [`FOLLOWUP_NO_RECORD`]
//! (no such record: retrying is pointless), and whose `followup_reported` is how many steps
//! the follow-up it holds reports, so a late ack of the first follow-up is not taken for the
//! second's. Those two codes are never a record's ack status, so a late ack of the record
//! itself (a retransmitted chunk answered "duplicate") is never taken for the follow-up's.
//! This layout is canary's own; the view/`Repr` split follows smoltcp's `src/wire/`.

use crate::auth::Key;
use crate::chunk::RecordId;
use crate::panic::{Outcome, Step, StepRecord};
use crate::sender::SenderConfig;
use crate::wire::{self, AckStatus, Repr, WireError, MAX_DATAGRAM};

/// Kind-header length of a follow-up.
pub const FOLLOWUP_HEADER_LEN: usize = 28;
/// Bytes per step entry in the payload.
pub const FOLLOWUP_ENTRY_LEN: usize = 12;
/// Most entries a follow-up carries (the six steps after the seal, and room).
pub const FOLLOWUP_CAP: usize = 10;
/// Ack status: the collector attached the follow-up to the stored record.
pub const FOLLOWUP_STORED: u8 = 3;
/// Ack status: the collector has no record with this key (the follow-up is dropped).
pub const FOLLOWUP_NO_RECORD: u8 = 4;

/// Byte offsets inside the Followup header.
pub mod field {
    use core::ops::Range;
    /// Boot id of the record.
    pub const BOOT_ID: Range<usize> = 0..16;
    /// Sequence number of the record.
    pub const SEQ: Range<usize> = 16..20;
    /// CRC of the record.
    pub const RECORD_CRC: Range<usize> = 20..24;
    /// Number of entries in the payload.
    pub const COUNT: usize = 24;
    /// Reserved, zero.
    pub const RESERVED: Range<usize> = 25..28;
}

/// Byte offsets inside one payload entry.
pub mod entry_field {
    use core::ops::Range;
    /// Step code.
    pub const STEP: usize = 0;
    /// Outcome code.
    pub const OUTCOME: usize = 1;
    /// Reserved, zero.
    pub const RESERVED: Range<usize> = 2..4;
    /// Outcome argument.
    pub const ARG: Range<usize> = 4..8;
    /// Elapsed microseconds.
    pub const ELAPSED_US: Range<usize> = 8..12;
}

/// The outcomes of the steps after the seal, for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowupRepr {
    /// Boot id of the record.
    pub boot_id: [u8; 16],
    /// Sequence number of the record.
    pub seq: u32,
    /// CRC of the record.
    pub record_crc: u32,
    len: u8,
    steps: [StepRecord; FOLLOWUP_CAP],
}

const NO_STEP: StepRecord = StepRecord {
    step: Step::Other(0),
    outcome: Outcome::Pending,
    elapsed_us: 0,
};

impl FollowupRepr {
    /// A follow-up for `id` carrying the first [`FOLLOWUP_CAP`] of `steps`.
    pub fn new(id: &RecordId, steps: &[StepRecord]) -> FollowupRepr {
        let mut f = FollowupRepr {
            boot_id: id.boot_id,
            seq: id.seq,
            record_crc: id.record_crc,
            len: 0,
            steps: [NO_STEP; FOLLOWUP_CAP],
        };
        for s in steps.iter().take(FOLLOWUP_CAP) {
            f.steps[usize::from(f.len)] = *s;
            f.len += 1;
        }
        f
    }

    /// The record this follow-up belongs to.
    pub fn id(&self) -> RecordId {
        RecordId {
            boot_id: self.boot_id,
            seq: self.seq,
            record_crc: self.record_crc,
        }
    }

    /// The steps' outcomes, in the order they ran.
    pub fn steps(&self) -> &[StepRecord] {
        &self.steps[..usize::from(self.len)]
    }

    /// How many steps it reports: entries whose outcome is not `Pending`. The appliance
    /// sends a follow-up when the record is acked (the ship step's end: crash registers and
    /// end still pending) and again from the end step; the collector keeps the one that
    /// reports more (a host that stops the VM at the crash registers never sends the second).
    pub fn reported(&self) -> usize {
        self.steps()
            .iter()
            .filter(|s| s.outcome != Outcome::Pending)
            .count()
    }

    /// Payload length on the wire.
    pub fn payload_len(&self) -> usize {
        usize::from(self.len) * FOLLOWUP_ENTRY_LEN
    }

    /// Parses a follow-up's kind header (at least [`FOLLOWUP_HEADER_LEN`] bytes: checked by
    /// the caller) and payload.
    pub(crate) fn parse(h: &[u8], payload: &[u8]) -> Result<FollowupRepr, WireError> {
        let count = usize::from(h[field::COUNT]);
        if count == 0 || count > FOLLOWUP_CAP {
            return Err(WireError::BadFollowup("entry count is 0 or above the cap"));
        }
        if payload.len() != count * FOLLOWUP_ENTRY_LEN {
            return Err(WireError::BadFollowup(
                "payload length is not count entries",
            ));
        }
        let mut boot_id = [0u8; 16];
        boot_id.copy_from_slice(&h[field::BOOT_ID]);
        let mut f = FollowupRepr {
            boot_id,
            seq: le32(&h[field::SEQ]),
            record_crc: le32(&h[field::RECORD_CRC]),
            len: 0,
            steps: [NO_STEP; FOLLOWUP_CAP],
        };
        for e in payload.chunks_exact(FOLLOWUP_ENTRY_LEN) {
            use entry_field as ef;
            f.steps[usize::from(f.len)] = StepRecord {
                step: Step::from(e[ef::STEP]),
                outcome: Outcome::from((e[ef::OUTCOME], le32(&e[ef::ARG]))),
                elapsed_us: le32(&e[ef::ELAPSED_US]),
            };
            f.len += 1;
        }
        Ok(f)
    }

    pub(crate) fn emit_header(&self, h: &mut [u8]) {
        h[field::BOOT_ID].copy_from_slice(&self.boot_id);
        h[field::SEQ].copy_from_slice(&self.seq.to_le_bytes());
        h[field::RECORD_CRC].copy_from_slice(&self.record_crc.to_le_bytes());
        h[field::COUNT] = self.len;
    }

    pub(crate) fn emit_payload(&self, p: &mut [u8]) {
        for (s, e) in self
            .steps()
            .iter()
            .zip(p.chunks_exact_mut(FOLLOWUP_ENTRY_LEN))
        {
            use entry_field as ef;
            let (code, arg): (u8, u32) = s.outcome.into();
            e.fill(0);
            e[ef::STEP] = s.step.into();
            e[ef::OUTCOME] = code;
            e[ef::ARG].copy_from_slice(&arg.to_le_bytes());
            e[ef::ELAPSED_US].copy_from_slice(&s.elapsed_us.to_le_bytes());
        }
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// What the follow-up sender should do next (as [`crate::sender::SendState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowupState {
    /// Keep receiving; poll again at `next_ms`.
    Waiting {
        /// When the next round or the deadline is due.
        next_ms: u64,
    },
    /// The collector attached it.
    Acked,
    /// The collector has no such record.
    NoRecord,
    /// The deadline passed without an ack.
    TimedOut,
}

/// Sends one follow-up until the collector acks it or the deadline passes: one frame per
/// round, the same backoff as the record's sender (no jitter: one frame per crash). No heap.
#[derive(Debug)]
pub struct FollowupSender<'k> {
    frame: [u8; MAX_DATAGRAM],
    len: usize,
    id: RecordId,
    reported: u8,
    key: Option<&'k Key>,
    deadline_at: u64,
    next_round_at: u64,
    rto_ms: u64,
    max_rto_ms: u64,
    state: Option<FollowupState>,
    sent: u32,
}

impl<'k> FollowupSender<'k> {
    /// A sender for `f` (tagged with `key` when given, like the record's chunks); the first
    /// round is due at once.
    pub fn new(
        cfg: SenderConfig,
        f: &FollowupRepr,
        key: Option<&'k Key>,
        now_ms: u64,
    ) -> Result<Self, WireError> {
        let mut frame = [0u8; MAX_DATAGRAM];
        let len = Repr::Followup(*f).emit(key, &mut frame)?;
        Ok(FollowupSender {
            frame,
            len,
            id: f.id(),
            reported: u8::try_from(f.reported()).unwrap_or(u8::MAX),
            key,
            deadline_at: now_ms.saturating_add(cfg.deadline_ms),
            next_round_at: now_ms,
            rto_ms: u64::from(cfg.initial_rto_ms.max(1)),
            max_rto_ms: u64::from(cfg.max_rto_ms.max(1)),
            state: None,
            sent: 0,
        })
    }

    /// Sends the frame when a round is due and says what to do next.
    pub fn poll(&mut self, now_ms: u64, tx: &mut dyn FnMut(&[u8])) -> FollowupState {
        if let Some(s) = self.state {
            return s;
        }
        if now_ms >= self.deadline_at {
            return FollowupState::TimedOut;
        }
        if now_ms >= self.next_round_at {
            tx(&self.frame[..self.len]);
            self.sent = self.sent.saturating_add(1);
            self.next_round_at = now_ms.saturating_add(self.rto_ms);
            self.rto_ms = (self.rto_ms * 2).min(self.max_rto_ms);
        }
        FollowupState::Waiting {
            next_ms: self.next_round_at.min(self.deadline_at),
        }
    }

    /// Feeds a datagram from the collector; true if it was this follow-up's ack. An ack
    /// saying the collector holds a follow-up reporting fewer steps than this one answers an
    /// earlier, less complete follow-up (a late ack of the ship step's): not ours. One saying
    /// nothing (0: a collector before the field) is taken.
    pub fn handle(&mut self, datagram: &[u8]) -> bool {
        match wire::parse(datagram, self.key) {
            Ok(Repr::Ack(a))
                if a.id() == self.id
                    && (a.followup_reported == 0 || a.followup_reported >= self.reported) =>
            {
                let st = match a.status {
                    AckStatus::Other(FOLLOWUP_STORED) => FollowupState::Acked,
                    AckStatus::Other(FOLLOWUP_NO_RECORD) => FollowupState::NoRecord,
                    // The record's own ack (a late duplicate): not ours.
                    _ => return false,
                };
                self.state.get_or_insert(st);
                true
            }
            _ => false,
        }
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// The emitted frame (for tests and tools).
    pub fn frame(&self) -> &[u8] {
        &self.frame[..self.len]
    }
}
