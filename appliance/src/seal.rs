//! The record sealed at the screen (design.md, "The panic path", step 2).
//!
//! At step 2 the record is encoded once, into a static buffer: those bytes are what the panic
//! screen shows as a QR code (`capture::screen` payload, LZ4-compressed when shorter) and what
//! the ship step sends, so a record read from a screenshot is byte-identical to the one the
//! collector received. Only the steps finished before the seal (freeze) are in it; the rest
//! travel in the follow-up frame.
//!
//! A QR code holds at most 2,953 bytes. When the compressed record does not fit, bulk parts
//! are shed from the record itself, in this order, until it does, and the record says so in
//! a line at the end of its log tail:
//! 1. the stack dump (`ext.stack`);
//! 2. the log tail down to its newest 768 bytes;
//! 3. the log tail down to its newest 256 bytes, and the code bytes around the pc;
//! 4. the whole log tail (but the note).
//!
//! The record that ships is the shed one too: one record, one dedupe key, on both paths.
use capture::chunk::RecordId;
use capture::panic::Outcome;
use capture::record::{CrashRecord, LOG_TAIL_CAP, MAX_ENCODED_LEN, SCHEMA_MAJOR, SCHEMA_MINOR};
use capture::screen::{self, ScreenError, MAX_PAYLOAD};

/// The encoder's buffer length for any version.
pub const QR_BUF_LEN: usize = qrcodegen_no_heap::Version::MAX.buffer_len();

/// The encoder's buffers (about 7.8 KiB): static in the kernel, never on the panic stack.
pub struct QrBuffers {
    /// The encoder's data-and-temporary buffer.
    pub tmp: [u8; QR_BUF_LEN],
    /// The encoder's output buffer.
    pub out: [u8; QR_BUF_LEN],
}

impl QrBuffers {
    /// Zeroed buffers (usable in a `static`).
    pub const fn new() -> Self {
        QrBuffers {
            tmp: [0; QR_BUF_LEN],
            out: [0; QR_BUF_LEN],
        }
    }
}

impl Default for QrBuffers {
    fn default() -> Self {
        Self::new()
    }
}

/// How many shedding levels there are (see the module docs).
pub const SHED_LEVELS: u8 = 4;

/// Why sealing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The record does not encode into the buffer (cannot happen with `MAX_ENCODED_LEN`).
    #[error("encoding the record failed: {0}")]
    Encode(capture::Error),
    /// The screen payload could not be written even after shedding.
    #[error("the record does not fit the screen's QR code: {0}")]
    Screen(ScreenError),
}

/// The sealed record, its screen payload and the QR encoder's buffers (a static in the
/// kernel: about 14 KiB, never on the panic stack).
pub struct Seal {
    record: [u8; MAX_ENCODED_LEN],
    record_len: usize,
    payload: [u8; MAX_PAYLOAD],
    payload_len: usize,
    scratch: [u8; MAX_PAYLOAD],
    /// The QR encoder's buffers (used by the screen step).
    pub qr: QrBuffers,
    steps_in_record: usize,
    id: Option<RecordId>,
    acked: bool,
    followup_reported: usize,
    followup_unanswered: bool,
    /// How long the ship step took to get the record acked, in milliseconds.
    ack_ms: u64,
    shed: u8,
}

/// The least a follow-up is given to be acked, in milliseconds: a few retransmit rounds (the
/// sender's first timeout is 200 ms) for a collector that just acked the record.
pub const FOLLOWUP_MIN_MS: u64 = 2_000;

impl Default for Seal {
    fn default() -> Self {
        Self::new()
    }
}

impl Seal {
    /// Nothing sealed yet (usable in a `static`).
    pub const fn new() -> Self {
        Seal {
            record: [0; MAX_ENCODED_LEN],
            record_len: 0,
            payload: [0; MAX_PAYLOAD],
            payload_len: 0,
            scratch: [0; MAX_PAYLOAD],
            qr: QrBuffers::new(),
            steps_in_record: 0,
            id: None,
            acked: false,
            followup_reported: 0,
            followup_unanswered: false,
            ack_ms: 0,
            shed: 0,
        }
    }

    /// The sealed record's bytes, if sealed.
    pub fn record(&self) -> Option<&[u8]> {
        self.id.map(|_| &self.record[..self.record_len])
    }

    /// The screen's QR payload (empty if none fits).
    #[cfg(test)]
    pub fn payload(&self) -> &[u8] {
        &self.payload[..self.payload_len]
    }

    /// The payload and the QR buffers together (the screen step needs both).
    pub fn payload_and_qr(&mut self) -> (&[u8], &mut QrBuffers) {
        (&self.payload[..self.payload_len], &mut self.qr)
    }

    /// The sealed record's dedupe key.
    pub fn id(&self) -> Option<RecordId> {
        self.id
    }

    /// How many step entries the sealed record holds.
    pub fn steps_in_record(&self) -> usize {
        self.steps_in_record
    }

    /// The shedding level the record needed (0: nothing shed).
    pub fn shed(&self) -> u8 {
        self.shed
    }

    /// Whether the collector acked the sealed record.
    pub fn acked(&self) -> bool {
        self.acked
    }

    /// Records the ship step's result.
    pub fn set_acked(&mut self, acked: bool) {
        self.acked = acked;
    }

    /// Records how long the ship step took to get the record acked.
    pub fn set_ack_ms(&mut self, ms: u64) {
        self.ack_ms = ms;
    }

    /// How long a follow-up waits for its ack: as long as the record took, at least
    /// [`FOLLOWUP_MIN_MS`], at most the ship deadline. The collector has just answered, so a
    /// follow-up that gets no ack in that time is from a collector that never acks one (older
    /// than follow-ups): the crash registers, which come next, must not wait out the whole
    /// ship deadline for it.
    pub fn followup_deadline_ms(&self, ship_ms: u64) -> u64 {
        self.ack_ms.max(FOLLOWUP_MIN_MS).min(ship_ms)
    }

    /// How many steps the most complete follow-up sent so far reports (0: none sent). A
    /// follow-up is sent only when it reports more (a nested entry does not resend one).
    pub fn followup_reported(&self) -> usize {
        self.followup_reported
    }

    /// Whether a follow-up went unanswered (timed out, or the collector has no such record):
    /// no further one is sent (a collector before follow-ups never acks one, and the end
    /// step would wait out the deadline again).
    pub fn followup_unanswered(&self) -> bool {
        self.followup_unanswered
    }

    /// Records that a follow-up went unanswered (see [`Seal::followup_unanswered`]).
    pub fn set_followup_unanswered(&mut self) {
        self.followup_unanswered = true;
    }

    /// Marks `f` as sent (before sending: a panic while sending is not retried).
    pub fn set_followup_sent(&mut self, f: &capture::followup::FollowupRepr) {
        self.followup_reported = self.followup_reported.max(f.reported());
    }

    /// Seals `rec`: a trailing `Pending` step entry (the screen step being run) is left out
    /// of the sealed bytes; bulk parts are shed from `rec` if the payload does not fit a QR
    /// code. On error nothing is sealed unless the record itself encoded (then it ships
    /// without a screen code).
    pub fn seal(
        &mut self,
        rec: &mut CrashRecord,
        key: Option<&capture::Key>,
    ) -> Result<(), SealError> {
        let pending = rec
            .steps
            .last()
            .copied()
            .filter(|s| s.outcome == Outcome::Pending);
        if pending.is_some() {
            rec.steps.pop();
        }
        self.steps_in_record = rec.steps.len();
        let r = self.seal_inner(rec, key);
        if let Some(p) = pending {
            let _ = rec.steps.push(p);
        }
        r
    }

    fn seal_inner(
        &mut self,
        rec: &mut CrashRecord,
        key: Option<&capture::Key>,
    ) -> Result<(), SealError> {
        self.id = None;
        self.acked = false;
        self.ack_ms = 0;
        self.followup_reported = 0;
        self.followup_unanswered = false;
        self.payload_len = 0;
        let mut last = ScreenError::Truncated(0);
        for level in 0..=SHED_LEVELS {
            if level > 0 {
                shed(rec, level);
            }
            let len = rec
                .encode(&mut self.record)
                .map_err(SealError::Encode)?
                .len();
            self.record_len = len;
            self.id = Some(RecordId::of(rec.boot_id, rec.seq, &self.record[..len]));
            self.shed = level;
            match screen::encode(
                &self.record[..len],
                (SCHEMA_MAJOR, SCHEMA_MINOR),
                key,
                &mut self.scratch,
                &mut self.payload,
            ) {
                Ok(n) => {
                    self.payload_len = n;
                    return Ok(());
                }
                Err(e @ ScreenError::TooLarge { .. }) => last = e,
                Err(e) => return Err(SealError::Screen(e)),
            }
        }
        Err(SealError::Screen(last))
    }
}

/// Applies shedding `level` (1..=[`SHED_LEVELS`]) to `rec` and notes it in the log tail.
pub fn shed(rec: &mut CrashRecord, level: u8) {
    const NOTES: [&str; 4] = [
        "\n[sealed for the panic screen's QR code without: the stack dump]\n",
        "\n[sealed for the panic screen's QR code without: the stack dump, older log]\n",
        "\n[sealed for the panic screen's QR code without: the stack dump, older log, code bytes]\n",
        "\n[sealed for the panic screen's QR code without: the stack dump, the log, code bytes]\n",
    ];
    const KEEP: [usize; 4] = [LOG_TAIL_CAP, 768, 256, 0];
    let i = usize::from(level.clamp(1, SHED_LEVELS) - 1);
    rec.ext.stack.clear();
    if i >= 2 {
        rec.ext.code.clear();
    }
    // The previous level's note goes first (it is the newest text).
    let tail = rec.log_tail.as_str();
    let tail = NOTES
        .iter()
        .find_map(|n| tail.strip_suffix(n))
        .unwrap_or(tail);
    let note = NOTES[i];
    let keep = KEEP[i].min(LOG_TAIL_CAP - note.len());
    let mut start = tail.len().saturating_sub(keep);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    let mut out: heapless::String<LOG_TAIL_CAP> = heapless::String::new();
    let _ = out.push_str(&tail[start..]);
    let _ = out.push_str(note);
    rec.log_tail = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture::panic::{Step, StepRecord};

    fn noisy(rec: &mut CrashRecord, seed: u64) {
        // Incompressible bulk: what forces shedding.
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        rec.ext.stack.clear();
        while rec.ext.stack.push(next() as u8).is_ok() {}
        rec.ext.code.clear();
        while rec.ext.code.push(next() as u8).is_ok() {}
        for r in rec.registers.gpr.iter_mut().chain(rec.backtrace.iter_mut()) {
            *r = next();
        }
        rec.message.clear();
        while rec.message.len() < capture::record::MESSAGE_CAP {
            if rec
                .message
                .push(char::from(b'!' + (next() % 90) as u8))
                .is_err()
            {
                break;
            }
        }
        rec.log_tail.clear();
        while rec.log_tail.len() < LOG_TAIL_CAP {
            let c = char::from(b'!' + (next() % 90) as u8);
            if rec.log_tail.push(c).is_err() {
                break;
            }
        }
    }

    #[test]
    fn a_typical_record_seals_whole_and_its_payload_decodes_to_the_sealed_bytes() {
        let mut rec = capture::testutil::sample_record(4);
        let before = rec.clone();
        rec.steps.clear();
        let _ = rec.steps.push(StepRecord {
            step: Step::Freeze,
            outcome: Outcome::Done,
            elapsed_us: 3,
        });
        let _ = rec.steps.push(StepRecord {
            step: Step::ScreenFlush,
            outcome: Outcome::Pending,
            elapsed_us: 0,
        });
        let mut seal = Box::new(Seal::new());
        seal.seal(&mut rec, None).unwrap();
        assert_eq!(seal.shed(), 0);
        assert_eq!(seal.steps_in_record(), 1);
        // The pending screen step is back in the live record, not in the sealed one.
        assert_eq!(rec.steps.len(), 2);
        let sealed = seal.record().unwrap().to_vec();
        let back = CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, &sealed).unwrap();
        assert_eq!(back.steps.len(), 1);
        assert_eq!(back.log_tail, before.log_tail);
        let mut out = vec![0u8; MAX_ENCODED_LEN];
        let (h, n) = screen::decode(seal.payload(), None, &mut out).unwrap();
        assert_eq!(&out[..n], &sealed[..]);
        assert_eq!(seal.id().unwrap().record_crc, h.record_crc);
    }

    #[test]
    fn an_incompressible_maximal_record_sheds_in_order_and_says_so() {
        let mut rec = capture::testutil::max_record();
        noisy(&mut rec, 0x1234_5678);
        let mut seal = Box::new(Seal::new());
        seal.seal(&mut rec, Some(&capture::Key::new([5; 32])))
            .unwrap();
        assert!(seal.shed() >= 1, "a maximal noisy record cannot fit whole");
        assert!(seal.payload().len() <= screen::QR_MAX_BYTES);
        assert!(rec.ext.stack.is_empty(), "the stack dump goes first");
        assert!(rec.log_tail.ends_with("]\n"));
        assert!(rec
            .log_tail
            .contains("sealed for the panic screen's QR code without"));
        let back = CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, seal.record().unwrap()).unwrap();
        assert_eq!(back, {
            let mut r = rec.clone();
            r.steps = back.steps.clone();
            r
        });
        // Every level still decodes and fits.
        for level in 1..=SHED_LEVELS {
            let mut r = capture::testutil::max_record();
            noisy(&mut r, u64::from(level));
            shed(&mut r, level);
            let mut buf = vec![0u8; MAX_ENCODED_LEN];
            assert!(r.encode(&mut buf).is_ok());
            assert_eq!(r.log_tail.matches("sealed for").count(), 1, "one note");
        }
    }
}

#[cfg(test)]
mod followup_tests {
    use super::*;
    use crate::panic_steps::followup_of;
    use capture::panic::{Step, StepRecord};

    fn step(step: Step, outcome: Outcome) -> StepRecord {
        StepRecord {
            step,
            outcome,
            elapsed_us: 5,
        }
    }

    #[test]
    fn a_followup_waits_as_long_as_the_record_took_within_bounds() {
        let mut seal = Seal::new();
        // Acked at once: the floor.
        seal.set_ack_ms(3);
        assert_eq!(seal.followup_deadline_ms(60_000), FOLLOWUP_MIN_MS);
        // A slow host (OpenVMM's console-bound ship took 5.4 s): as long as the record took.
        seal.set_ack_ms(5_429);
        assert_eq!(seal.followup_deadline_ms(60_000), 5_429);
        // Never past the ship deadline, even below the floor.
        seal.set_ack_ms(90_000);
        assert_eq!(seal.followup_deadline_ms(60_000), 60_000);
        assert_eq!(seal.followup_deadline_ms(1_000), 1_000);
    }

    #[test]
    fn the_followup_goes_only_after_an_ack_once_and_carries_the_steps_after_the_seal() {
        let mut rec = capture::testutil::sample_record(2);
        rec.steps.clear();
        let _ = rec.steps.push(step(Step::Freeze, Outcome::Done));
        let _ = rec.steps.push(step(Step::ScreenFlush, Outcome::Pending));
        let mut seal = Box::new(Seal::new());
        // Nothing sealed: nothing to follow up.
        assert!(followup_of(&seal, &rec).is_none());
        seal.seal(&mut rec, None).unwrap();
        rec.steps.pop();
        for s in [
            Step::ScreenFlush,
            Step::VmbusUnload,
            Step::ArchCleanup,
            Step::Ship,
        ] {
            let _ = rec.steps.push(step(s, Outcome::Done));
        }
        // The record was not acked: no follow-up (the collector has nothing to attach it to).
        seal.set_acked(false);
        assert!(followup_of(&seal, &rec).is_none());
        seal.set_acked(true);
        let _ = rec
            .steps
            .push(step(Step::CrashRegisters, Outcome::NotPresent));
        let _ = rec.steps.push(step(Step::End, Outcome::Pending));
        let f = followup_of(&seal, &rec).unwrap();
        assert_eq!(f.id(), seal.id().unwrap());
        assert_eq!(f.steps(), &rec.steps[1..]);
        // Sent once: a nested entry does not send it again.
        seal.set_followup_sent(&f);
        assert!(followup_of(&seal, &rec).is_none());
        // A new seal starts over.
        let mut again = capture::testutil::sample_record(3);
        seal.seal(&mut again, None).unwrap();
        assert!(!seal.acked() && seal.followup_reported() == 0);
    }

    #[test]
    fn the_ship_steps_followup_reports_2_to_5_and_the_end_steps_only_if_it_reports_more() {
        use crate::panic_steps::followup_after_ship;
        let mut rec = capture::testutil::sample_record(2);
        rec.steps.clear();
        let _ = rec.steps.push(step(Step::Freeze, Outcome::Done));
        let _ = rec.steps.push(step(Step::ScreenFlush, Outcome::Pending));
        let mut seal = Box::new(Seal::new());
        seal.seal(&mut rec, None).unwrap();
        rec.steps.pop();
        for s in [Step::ScreenFlush, Step::VmbusUnload, Step::ArchCleanup] {
            let _ = rec.steps.push(step(s, Outcome::Done));
        }
        let _ = rec.steps.push(step(Step::Ship, Outcome::Pending));
        // Not acked: nothing to attach it to.
        assert!(followup_after_ship(&seal, &rec, Outcome::TimedOut, 9).is_none());
        seal.set_acked(true);
        let f = followup_after_ship(&seal, &rec, Outcome::Done, 77).unwrap();
        let got: Vec<(Step, Outcome, u32)> = f
            .steps()
            .iter()
            .map(|s| (s.step, s.outcome, s.elapsed_us))
            .collect();
        assert_eq!(
            got,
            [
                (Step::ScreenFlush, Outcome::Done, 5),
                (Step::VmbusUnload, Outcome::Done, 5),
                (Step::ArchCleanup, Outcome::Done, 5),
                (Step::Ship, Outcome::Done, 77),
                (Step::CrashRegisters, Outcome::Pending, 0),
                (Step::End, Outcome::Pending, 0),
            ]
        );
        assert_eq!(f.reported(), 4);
        seal.set_followup_sent(&f);
        assert_eq!(seal.followup_reported(), 4);
        // A nested entry inside the crash registers step: nothing more to report.
        rec.steps.pop();
        let _ = rec.steps.push(step(Step::Ship, Outcome::Done));
        let _ = rec.steps.push(step(Step::CrashRegisters, Outcome::Pending));
        assert!(followup_of(&seal, &rec).is_none());
        // The end step: crash registers reported too, so it goes.
        rec.steps.pop();
        let _ = rec.steps.push(step(Step::CrashRegisters, Outcome::Done));
        let _ = rec.steps.push(step(Step::End, Outcome::Pending));
        let last = followup_of(&seal, &rec).unwrap();
        assert_eq!(last.reported(), 5);
        assert_eq!(last.steps(), &rec.steps[1..]);
    }
}
