//! The seven steps of the panic path (design.md "The panic path"), generic over the machine
//! they run on: the kernel's (`crate::panic_path`, the statics and the hardware) and the host
//! tests' (`vmbus-sim`, both register ABIs, host personalities, chaos). `capture::panic::run`
//! owns their order, the run-once entry and the recording of every outcome; this module owns
//! what each step does; the machine supplies what is not portable.
//!
//! Deadlines are parameters ([`Deadlines`]), never read from statics here.
//!
//! The record is sealed at the screen (step 2, [`Seal`]): the bytes the panic screen shows
//! as a QR code are the bytes the ship step sends, byte for byte. The outcomes of the steps
//! after the seal (screen-flush, unload, cleanup, ship, crash registers, end) cannot be in
//! those bytes: they go to the collector in follow-up frames (`capture::followup`): one at
//! the end of the ship step once the record is acked (steps 2-5; crash registers and end
//! pending: a host may stop the VM when the crash registers are written), and the more
//! complete one from the end step while the ship's connection is still up (its UNLOAD moved
//! from the ship step to the end step for that). The collector keeps the more complete.
pub use crate::seal::Seal;
use capture::followup::{FollowupRepr, FOLLOWUP_CAP};
use capture::panic::{Entry, Outcome, PanicSteps, SkipReason, Step, StepRecord};
use capture::record::CrashRecord;

/// The panic path's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// Each VMBus UNLOAD's wait for its response, in microseconds.
    pub unload_us: u64,
    /// The ship step's wait for the collector's ack, in milliseconds.
    pub ship_ms: u64,
}

/// The Hyper-V steps (`crate::hyperv::panic::HvPanic` implements them).
pub trait HvSide {
    /// What the reconnect hands back: the NIC the record ships over.
    type Nic;
    /// Hypervisor identity and the VMBus version into the record.
    fn describe(&mut self, rec: &mut CrashRecord);
    /// Step 2: the panic screen (text, and the sealed record's QR code when `seal` has one).
    fn flush_screen(&mut self, rec: &CrashRecord, seal: Option<&mut Seal>) -> Outcome;
    fn unload_once(&mut self, budget_us: u64) -> Outcome;
    fn arch_cleanup(&mut self) -> Outcome;
    fn reconnect_for_ship(&mut self, unload_budget_us: u64) -> (Outcome, Option<Self::Nic>);
    fn finish_ship(&mut self, unload_budget_us: u64) -> Outcome;
    fn write_crash_registers(&mut self, rec: &CrashRecord) -> Outcome;
    fn end(&mut self);
}

/// What the steps need from the machine.
pub trait Machine {
    type Nic;
    fn now_us(&mut self) -> u64;
    /// Runs `f` on the Hyper-V state (taken over if a frozen holder left it locked); `None`
    /// when there is no Hyper-V.
    fn with_hv<R>(&mut self, f: impl FnOnce(&mut dyn HvSide<Nic = Self::Nic>) -> R) -> Option<R>;
    /// The rest of step 1: other CPUs stopped, allocation off, locks taken over, the log tail,
    /// the stacks' high-water marks; the CPU's own identity when `described` is false.
    fn freeze(&mut self, rec: &mut CrashRecord, described: bool);
    /// Sends the sealed record `sealed` (over `nic` when the reconnect brought one up) until
    /// acked or `deadline_ms`. `Done` means acked.
    fn ship(
        &mut self,
        rec: &CrashRecord,
        sealed: &[u8],
        nic: Option<Self::Nic>,
        deadline_ms: u64,
    ) -> Outcome;
    /// Sends the follow-up frame over the network the record went over, until the collector
    /// acks it or `deadline_ms`.
    fn send_followup(&mut self, f: &FollowupRepr, deadline_ms: u64) -> Outcome;
    /// The fleet key records are tagged with (the screen's QR payload is tagged with it too).
    fn key(&self) -> Option<&capture::Key>;
    /// The end of step 7: the summary on the console.
    fn summary(&mut self, entry: Entry, rec: &CrashRecord);
    /// Test hooks at the start of each step (`fault_in=`, `nested_panic=`); nothing by default.
    fn step_hook(&mut self, _entry: Entry, _step: Step) {}
}

/// One entry's run of the steps on machine `M`.
pub struct PanicContext<'m, M: Machine> {
    pub entry: Entry,
    pub m: &'m mut M,
    pub deadlines: Deadlines,
    /// The first entry's seal. A nested entry neither draws nor ships, but it sends the
    /// first entry's follow-up if the first entry's record was acked and the first entry
    /// did not get to send it (`first` then holds the first entry's record).
    pub seal: Option<&'m mut Seal>,
    /// A nested entry: the first entry's record, whose steps the follow-up reports.
    pub first: Option<&'m CrashRecord>,
}

impl<M: Machine> PanicContext<'_, M> {
    fn hv_step(
        &mut self,
        step: Step,
        f: impl FnOnce(&mut dyn HvSide<Nic = M::Nic>) -> Outcome,
    ) -> Outcome {
        self.m.step_hook(self.entry, step);
        self.m.with_hv(f).unwrap_or(Outcome::NotPresent)
    }
}

impl<M: Machine> PanicSteps for PanicContext<'_, M> {
    fn now_us(&mut self) -> u64 {
        self.m.now_us()
    }

    fn freeze(&mut self, rec: &mut CrashRecord) -> Outcome {
        self.m.step_hook(self.entry, Step::Freeze);
        let described = self.m.with_hv(|h| h.describe(rec)).is_some();
        self.m.freeze(rec, described);
        Outcome::Done
    }

    fn flush_screen(&mut self, rec: &mut CrashRecord) -> Outcome {
        self.m.step_hook(self.entry, Step::ScreenFlush);
        if let Some(seal) = self.seal.as_deref_mut() {
            if let Err(e) = seal.seal(rec, self.m.key()) {
                log::error!("panic: sealing the record failed: {e}");
            }
        }
        let seal = self.seal.as_deref_mut();
        let rec = &*rec;
        self.m
            .with_hv(|h| h.flush_screen(rec, seal))
            .unwrap_or(Outcome::NotPresent)
    }

    fn unload_vmbus(&mut self) -> Outcome {
        let budget = self.deadlines.unload_us;
        self.hv_step(Step::VmbusUnload, |h| h.unload_once(budget))
    }

    fn arch_cleanup(&mut self) -> Outcome {
        self.hv_step(Step::ArchCleanup, |h| h.arch_cleanup())
    }

    fn ship(&mut self, rec: &CrashRecord) -> Outcome {
        self.m.step_hook(self.entry, Step::Ship);
        let t0 = self.m.now_us();
        let budget = self.deadlines.unload_us;
        // On Hyper-V the NIC (netvsc) is a VMBus channel: reconnect first; it hands back the
        // NIC when the record can ship over it. With virtio-net no reconnect is needed.
        let nic = self.m.with_hv(|h| {
            let (o, nic) = h.reconnect_for_ship(budget);
            log::info!("panic: vmbus reconnect for ship: {o}");
            nic
        });
        let nic = nic.flatten();
        // The sealed bytes, exactly as the screen shows them.
        let Some(seal) = self.seal.as_deref_mut() else {
            return Outcome::Skipped(SkipReason::Nested);
        };
        let o = match seal.record() {
            Some(sealed) => self.m.ship(rec, sealed, nic, self.deadlines.ship_ms),
            None => Outcome::Failed(1),
        };
        let elapsed_us = self.m.now_us().saturating_sub(t0);
        seal.set_acked(o == Outcome::Done);
        seal.set_ack_ms(elapsed_us / 1000);
        // Acked: steps 2-5 go to the collector now, before the crash registers, which a host
        // may answer by stopping the VM (OpenVMM, QEMU's default panic action); the end step
        // sends the more complete one if it gets there.
        let elapsed = u32::try_from(elapsed_us).unwrap_or(u32::MAX);
        if let Some(f) = followup_after_ship(seal, rec, o, elapsed) {
            seal.set_followup_sent(&f);
            let ms = seal.followup_deadline_ms(self.deadlines.ship_ms);
            let fo = self.m.send_followup(&f, ms);
            log::info!("panic: follow-up after ship ({} steps): {fo}", f.reported());
            if fo != Outcome::Done {
                seal.set_followup_unanswered();
            }
        }
        // The reconnect's netvsc stays up for the follow-ups: the end step unloads it.
        o
    }

    fn crash_registers(&mut self, rec: &CrashRecord) -> Outcome {
        // Write-once per boot in the implementation: a nested entry still writes them if the
        // first entry did not get to it.
        self.hv_step(Step::CrashRegisters, |h| h.write_crash_registers(rec))
    }

    fn end(&mut self, rec: &CrashRecord) {
        self.m.step_hook(self.entry, Step::End);
        let src = self.first.unwrap_or(rec);
        let due = self.seal.as_deref().and_then(|s| followup_of(s, src));
        if let (Some(f), Some(seal)) = (due, self.seal.as_deref_mut()) {
            seal.set_followup_sent(&f);
            let ms = seal.followup_deadline_ms(self.deadlines.ship_ms);
            let o = self.m.send_followup(&f, ms);
            log::info!("panic: follow-up ({} steps): {o}", f.steps().len());
        }
        // Shipped over the reconnect's netvsc: UNLOAD that connection too (design step 5),
        // now that the follow-up is out.
        let budget = self.deadlines.unload_us;
        self.m.with_hv(|h| {
            let f = h.finish_ship(budget);
            if f != Outcome::Skipped(SkipReason::NotNeeded) {
                log::info!("panic: vmbus unload after ship: {f}");
            }
            h.end()
        });
        self.m.summary(self.entry, rec);
    }
}

/// The follow-up for a sealed and acked record: every step outcome recorded after the seal.
/// The end step's own is `Pending`: the follow-up is sent first thing inside it, and what the
/// end step does after that cannot go over the network it tears down. `None` unless it
/// reports more steps than the follow-up already sent (the ship step's, or a first entry's).
pub fn followup_of(seal: &Seal, rec: &CrashRecord) -> Option<FollowupRepr> {
    let id = seal.id()?;
    if !seal.acked() || seal.followup_unanswered() {
        return None;
    }
    let mut steps: heapless::Vec<StepRecord, FOLLOWUP_CAP> = heapless::Vec::new();
    for s in rec.steps.iter().skip(seal.steps_in_record()) {
        let _ = steps.push(*s);
    }
    let f = FollowupRepr::new(&id, &steps);
    (f.reported() > seal.followup_reported()).then_some(f)
}

/// The follow-up sent at the end of the ship step, once the record is acked: the steps after
/// the seal with the ship's own outcome `ship` (its entry in `rec` is still `Pending`) and
/// `elapsed_us`, then the steps not run yet (crash registers, end) as `Pending`.
pub fn followup_after_ship(
    seal: &Seal,
    rec: &CrashRecord,
    ship: Outcome,
    elapsed_us: u32,
) -> Option<FollowupRepr> {
    let id = seal.id()?;
    if !seal.acked() || seal.followup_unanswered() {
        return None;
    }
    let mut steps: heapless::Vec<StepRecord, FOLLOWUP_CAP> = heapless::Vec::new();
    for s in rec.steps.iter().skip(seal.steps_in_record()) {
        let mut s = *s;
        if s.step == Step::Ship && s.outcome == Outcome::Pending {
            s.outcome = ship;
            s.elapsed_us = elapsed_us;
        }
        let _ = steps.push(s);
    }
    if !steps.iter().any(|s| s.step == Step::Ship) {
        let _ = steps.push(StepRecord {
            step: Step::Ship,
            outcome: ship,
            elapsed_us,
        });
    }
    for step in [Step::CrashRegisters, Step::End] {
        let _ = steps.push(StepRecord {
            step,
            outcome: Outcome::Pending,
            elapsed_us: 0,
        });
    }
    let f = FollowupRepr::new(&id, &steps);
    (f.reported() > seal.followup_reported()).then_some(f)
}
