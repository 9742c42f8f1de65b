//! The panic-path orchestrator: the seven steps of `design.md` ("The panic path") in order,
//! first entry wins, every outcome recorded, no step able to stop the next.
//!
//! The steps themselves are the appliance's ([`PanicSteps`]); this module owns their order,
//! the run-once entry guard, timing, and writing each outcome into the record *before* the
//! next step starts. Each step is first recorded as [`Outcome::Pending`], so a record shipped
//! or read after a nested panic shows which step was running.

use core::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

use crate::record::CrashRecord;

/// A panic-path step (open enum, encoded as one byte). Codes are the design's step numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum Step {
    /// 1: first entry wins, interrupts off, other CPUs stopped, record built.
    Freeze,
    /// 2: panic screen drawn, one DIRT sent if the synthvid ring lock was free.
    ScreenFlush,
    /// 3: VMBus UNLOAD, once per connection.
    VmbusUnload,
    /// 4: SynIC / stimer cleanup (and GIC PPIs on arm64).
    ArchCleanup,
    /// 5: reconnect and send the record, until acked or the deadline.
    Ship,
    /// 6: Hyper-V crash registers P0-P4 then CRASH_CTL, once.
    CrashRegisters,
    /// 7: hypercall page off, GUEST_OS_ID=0, summary, then halt/reset.
    End,
    /// A step code this build does not know.
    Other(u8),
}

open_u8!(Step {
    Freeze = 1,
    ScreenFlush = 2,
    VmbusUnload = 3,
    ArchCleanup = 4,
    Ship = 5,
    CrashRegisters = 6,
    End = 7,
});

impl Step {
    /// The seven steps of a first entry, in order.
    pub const ALL: [Step; 7] = [
        Step::Freeze,
        Step::ScreenFlush,
        Step::VmbusUnload,
        Step::ArchCleanup,
        Step::Ship,
        Step::CrashRegisters,
        Step::End,
    ];

    /// Short lowercase name for summaries.
    pub fn name(self) -> &'static str {
        match self {
            Step::Freeze => "freeze",
            Step::ScreenFlush => "screen-flush",
            Step::VmbusUnload => "vmbus-unload",
            Step::ArchCleanup => "arch-cleanup",
            Step::Ship => "ship",
            Step::CrashRegisters => "crash-registers",
            Step::End => "end",
            Step::Other(_) => "other",
        }
    }
}

/// Why a step was skipped (open enum, encoded as one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Already done once (run-once guard) (1).
    AlreadyDone,
    /// Turned off in the configuration (2).
    Disabled,
    /// The negotiated VMBus version is too old (UNLOAD needs 3.0 / WIN8_1) (3).
    VersionTooOld,
    /// Not needed on this host (e.g. virtio-net needs no VMBus reconnect) (4).
    NotNeeded,
    /// A nested entry does not run this step (5).
    Nested,
    /// A reason this build does not know.
    Other(u8),
}

open_u8!(SkipReason {
    AlreadyDone = 1,
    Disabled = 2,
    VersionTooOld = 3,
    NotNeeded = 4,
    Nested = 5,
});

/// What happened in a step (open enum, encoded as `(code u8, argument u32)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "(u8, u32)", into = "(u8, u32)")]
pub enum Outcome {
    /// Started, not finished (code 0).
    Pending,
    /// Done (1).
    Done,
    /// Skipped on purpose (2, reason).
    Skipped(SkipReason),
    /// Skipped because a lock was busy (never spin on the panic path) (3).
    SkippedBusy,
    /// The hardware or hypervisor feature is not there (4).
    NotPresent,
    /// Gave up at its deadline (5).
    TimedOut,
    /// Failed with a step-specific code (6, code).
    Failed(u32),
    /// An outcome code this build does not know, with its argument.
    Other(u8, u32),
}

impl From<(u8, u32)> for Outcome {
    fn from((code, arg): (u8, u32)) -> Self {
        match code {
            0 => Outcome::Pending,
            1 => Outcome::Done,
            // Reasons are one byte; a larger argument is not a reason this build wrote.
            2 if arg <= 0xff => Outcome::Skipped(SkipReason::from(arg as u8)),
            3 => Outcome::SkippedBusy,
            4 => Outcome::NotPresent,
            5 => Outcome::TimedOut,
            6 => Outcome::Failed(arg),
            c => Outcome::Other(c, arg),
        }
    }
}

impl From<Outcome> for (u8, u32) {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Pending => (0, 0),
            Outcome::Done => (1, 0),
            Outcome::Skipped(r) => (2, u32::from(u8::from(r))),
            Outcome::SkippedBusy => (3, 0),
            Outcome::NotPresent => (4, 0),
            Outcome::TimedOut => (5, 0),
            Outcome::Failed(c) => (6, c),
            Outcome::Other(c, a) => (c, a),
        }
    }
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Outcome::Pending => f.write_str("pending"),
            Outcome::Done => f.write_str("done"),
            Outcome::Skipped(r) => write!(f, "skipped ({r:?})"),
            Outcome::SkippedBusy => f.write_str("skipped (busy)"),
            Outcome::NotPresent => f.write_str("not present"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Failed(c) => write!(f, "failed ({c:#x})"),
            Outcome::Other(c, a) => write!(f, "outcome {c} ({a:#x})"),
        }
    }
}

/// One step's outcome in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Which step.
    pub step: Step,
    /// What happened.
    pub outcome: Outcome,
    /// How long it took, in microseconds (saturated at u32::MAX, about 71 minutes).
    pub elapsed_us: u32,
}

/// The steps, implemented by the appliance (and by tests). Each returns its outcome and must
/// not panic; a step that cannot finish returns `TimedOut` or `Failed`.
pub trait PanicSteps {
    /// Monotonic microseconds (for step timing).
    fn now_us(&mut self) -> u64;
    /// Step 1: interrupts off, other CPUs stopped, fill in the record.
    fn freeze(&mut self, rec: &mut CrashRecord) -> Outcome;
    /// Step 2: seal the record (the bytes that are shown and shipped; sealing may shed bulk
    /// parts to fit the screen's QR code, hence `&mut`), draw the panic screen; one DIRT if
    /// the synthvid ring `try_lock` succeeds. Outcomes from here on travel in the follow-up
    /// frame (`crate::followup`), not in the sealed record.
    fn flush_screen(&mut self, rec: &mut CrashRecord) -> Outcome;
    /// Step 3: UNLOAD the VMBus connection (run-once per connection).
    fn unload_vmbus(&mut self) -> Outcome;
    /// Step 4: per-arch SynIC/stimer cleanup.
    fn arch_cleanup(&mut self) -> Outcome;
    /// Step 5: reconnect, send the record, wait for the ack or the deadline, clean up again.
    /// Encodes into its own static buffer.
    fn ship(&mut self, rec: &CrashRecord) -> Outcome;
    /// Step 6: crash registers, write-once: a second call reports
    /// `Skipped(SkipReason::AlreadyDone)`.
    fn crash_registers(&mut self, rec: &CrashRecord) -> Outcome;
    /// Step 7: final hypervisor cleanup and the summary on the console. The caller then
    /// halts, resets or powers off.
    fn end(&mut self, rec: &CrashRecord);
}

/// Which entry into the panic path this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The first panic or fault: runs every step.
    First,
    /// A panic or fault while the panic path already runs: crash registers and end only.
    Nested,
    /// A panic or fault inside the nested entry (or later): no step runs and no shared state
    /// is touched; the caller ends the machine at once with the configured action.
    Terminal,
}

/// The panic path's guard (put it in a `static`), three states after "running": the first
/// `enter` is [`Entry::First`], the second [`Entry::Nested`], every later one
/// [`Entry::Terminal`]. The same rule on every architecture: the trap handlers keep no depth
/// counters of their own.
#[derive(Debug)]
pub struct PanicGuard(AtomicU8);

impl Default for PanicGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl PanicGuard {
    /// A guard nobody has entered.
    pub const fn new() -> Self {
        PanicGuard(AtomicU8::new(0))
    }

    /// Enters the panic path (from any CPU, or from a panic inside the panic path on the same
    /// CPU): `First` exactly once, then `Nested` once, then `Terminal`. Saturates: never
    /// wraps back to `First`.
    pub fn enter(&self) -> Entry {
        let prev = match self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(s.saturating_add(1).min(2))
            }) {
            Ok(p) | Err(p) => p,
        };
        match prev {
            0 => Entry::First,
            1 => Entry::Nested,
            _ => Entry::Terminal,
        }
    }

    /// Whether some entry has happened.
    pub fn entered(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }
}

/// Records `outcome` for `step`: overwrites the step's `Pending` entry if it is the newest
/// entry, else appends (a full list drops the entry rather than panicking).
fn record(rec: &mut CrashRecord, step: Step, outcome: Outcome, elapsed_us: u32) {
    let entry = StepRecord {
        step,
        outcome,
        elapsed_us,
    };
    if let Some(last) = rec.steps.last_mut() {
        if last.step == step && last.outcome == Outcome::Pending {
            *last = entry;
            return;
        }
    }
    let _ = rec.steps.push(entry);
}

fn elapsed(start: u64, end: u64) -> u32 {
    u32::try_from(end.saturating_sub(start)).unwrap_or(u32::MAX)
}

/// Runs one step: marks it `Pending`, runs it, records its outcome and duration.
fn step<S: PanicSteps + ?Sized>(
    s: &mut S,
    rec: &mut CrashRecord,
    which: Step,
    f: impl FnOnce(&mut S, &mut CrashRecord) -> Outcome,
) -> Outcome {
    record(rec, which, Outcome::Pending, 0);
    let t0 = s.now_us();
    let outcome = f(s, rec);
    let t1 = s.now_us();
    record(rec, which, outcome, elapsed(t0, t1));
    outcome
}

/// Runs the panic path.
///
/// - [`Entry::First`]: steps 1-7 in order; each outcome is in `rec.steps` before the next
///   step starts; a failed step never stops the next one.
/// - [`Entry::Nested`]: step 6 (crash registers, write-once in the implementation) and step 7
///   only. VMBus is never unloaded a second time from here.
/// - [`Entry::Terminal`]: nothing; the caller ends the machine.
pub fn run(steps: &mut dyn PanicSteps, rec: &mut CrashRecord, entry: Entry) {
    if entry == Entry::Terminal {
        return;
    }
    if entry == Entry::First {
        step(steps, rec, Step::Freeze, |s, r| s.freeze(r));
        step(steps, rec, Step::ScreenFlush, |s, r| s.flush_screen(r));
        step(steps, rec, Step::VmbusUnload, |s, _| s.unload_vmbus());
        step(steps, rec, Step::ArchCleanup, |s, _| s.arch_cleanup());
        step(steps, rec, Step::Ship, |s, r| s.ship(r));
    }
    step(steps, rec, Step::CrashRegisters, |s, r| {
        s.crash_registers(r)
    });
    step(steps, rec, Step::End, |s, r| {
        s.end(r);
        Outcome::Done
    });
}
