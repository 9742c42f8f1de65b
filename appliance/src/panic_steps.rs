//! The seven steps of the panic path (design.md "The panic path"), generic over the machine
//! they run on: the kernel's (`crate::panic_path`, the statics and the hardware) and the host
//! tests' (`vmbus-sim`, both register ABIs, host personalities, chaos). `capture::panic::run`
//! owns their order, the run-once entry and the recording of every outcome; this module owns
//! what each step does; the machine supplies what is not portable.
//!
//! Deadlines are parameters ([`Deadlines`]), never read from statics here.
use capture::panic::{Entry, Outcome, PanicSteps, SkipReason, Step};
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
    fn flush_screen(&mut self, rec: &CrashRecord) -> Outcome;
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
    /// Sends the record (over `nic` when the reconnect brought one up) until acked or
    /// `deadline_ms`.
    fn ship(&mut self, rec: &CrashRecord, nic: Option<Self::Nic>, deadline_ms: u64) -> Outcome;
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

    fn flush_screen(&mut self, rec: &CrashRecord) -> Outcome {
        self.hv_step(Step::ScreenFlush, |h| h.flush_screen(rec))
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
        let budget = self.deadlines.unload_us;
        // On Hyper-V the NIC (netvsc) is a VMBus channel: reconnect first; it hands back the
        // NIC when the record can ship over it. With virtio-net no reconnect is needed.
        let nic = self.m.with_hv(|h| {
            let (o, nic) = h.reconnect_for_ship(budget);
            log::info!("panic: vmbus reconnect for ship: {o}");
            nic
        });
        let o = self.m.ship(rec, nic.flatten(), self.deadlines.ship_ms);
        // Shipped over the reconnect's netvsc: UNLOAD that connection too (design step 5).
        self.m.with_hv(|h| {
            let f = h.finish_ship(budget);
            if f != Outcome::Skipped(SkipReason::NotNeeded) {
                log::info!("panic: vmbus unload after ship: {f}");
            }
        });
        o
    }

    fn crash_registers(&mut self, rec: &CrashRecord) -> Outcome {
        // Write-once per boot in the implementation: a nested entry still writes them if the
        // first entry did not get to it.
        self.hv_step(Step::CrashRegisters, |h| h.write_crash_registers(rec))
    }

    fn end(&mut self, rec: &CrashRecord) {
        self.m.step_hook(self.entry, Step::End);
        self.m.with_hv(|h| h.end());
        self.m.summary(self.entry, rec);
    }
}
