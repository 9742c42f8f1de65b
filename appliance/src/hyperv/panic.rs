//! The Hyper-V steps of the panic path (screen flush, UNLOAD, cleanup, the ship step's
//! reconnect, crash registers, end), portable: the kernel runs them on its `HyperV` state and
//! the host tests run the very same code against `vmbus-sim` in both register ABIs
//! (`crate::panic_steps` has the seven steps around them).
//!
//! Deadlines come in as microseconds from now and become reference-time deadlines here
//! (`Clock` counts 100 ns). The reconnect returns the NIC it brought up instead of handing it
//! to the network itself: the panic path hands it on (no `hyperv -> net` edge).
use super::devices::{self, ChannelSlot, ReopenNic, SlotChannel, Vram};
use super::panic_screen;
use super::session::{hv_code, versions_newer_than, Session, REPLY_TIMEOUT};
use crate::seal::Seal;
use capture::panic::{Outcome, SkipReason};
use capture::record::CrashRecord;
use core::fmt::Write as _;
use vmbus::device::DmaMemory;
use vmbus::netvsc::Netvsc;
use vmbus::synthvid::{console, Synthvid};
use vmbus::{Clock, InterruptControl, PageAlloc};

/// The NIC driver object the reconnect brings up, over memory `M`.
pub type PanicNic<'a, M> = Netvsc<SlotChannel<'a>, M>;

/// A clock the end step can turn off (the TSC page; a model clock has nothing to turn off).
pub trait PanicClock: Clock {
    fn disable(&mut self) {}
}

impl PanicClock for vmbus::time::ReferenceTime<'_> {
    fn disable(&mut self) {
        vmbus::time::ReferenceTime::disable(self)
    }
}

/// How long each device bring-up on the reconnect may take (100 ns units): 5 s.
pub const DEVICE_TIMEOUT: u64 = 50_000_000;

/// The Hyper-V state the panic path works on, borrowed from its owner for the duration of
/// one step.
pub struct HvPanic<'s, 'a, C: Clock, M: DmaMemory, I: InterruptControl> {
    pub s: &'s mut Session<'a, C>,
    /// synthvid and its VRAM, when brought up at boot.
    pub fb: Option<&'s (Synthvid<SlotChannel<'a>>, Vram)>,
    /// Why synthvid is not up although offered.
    pub fb_note: &'static str,
    /// The NIC object built at boot for the reconnect, and its channel slot and pages.
    pub spare_nic: &'s mut Option<&'a mut PanicNic<'a, M>>,
    pub ship_slot: &'a ChannelSlot,
    pub pages: &'a dyn PageAlloc,
    /// The record ships over the reconnect's netvsc: that connection is unloaded after it.
    pub ship_over_vmbus: &'s mut bool,
    /// What the arm64 cleanup disables PPIs through (x86_64: nothing).
    pub irq: I,
}

impl<'s, 'a, C: PanicClock, M: DmaMemory, I: InterruptControl> HvPanic<'s, 'a, C, M, I> {
    /// `budget_us` microseconds from now, in reference time.
    fn deadline(&self, budget_us: u64) -> u64 {
        self.s
            .clock
            .now()
            .saturating_add(budget_us.saturating_mul(10))
    }

    /// Hypervisor identity into the record.
    pub fn describe(&self, rec: &mut CrashRecord) {
        let h = &mut rec.hypervisor;
        h.present = true;
        h.vendor.clear();
        let _ = h
            .vendor
            .push_str(core::str::from_utf8(&self.s.id.vendor).unwrap_or("?"));
        h.version = [self.s.id.build, self.s.id.version, 0, 0];
        h.privileges = self.s.id.privileges.0;
        rec.vmbus_version = self.s.vmbus_version();
    }

    /// Step 2: the panic screen into VRAM (the text, and the sealed record as a QR code
    /// when `seal` holds one), then one full-screen DIRT if the synthvid outbound-ring lock
    /// is free right now (a compare-and-swap try-lock; busy: skipped, never waited for).
    pub fn flush_screen(&mut self, rec: &CrashRecord, seal: Option<&mut Seal>) -> Outcome {
        let Some((fb, vram)) = self.fb else {
            let offered = self
                .s
                .conn
                .as_ref()
                .is_some_and(|c| c.find_offer(&vmbus::guid::SYNTHVID).is_some());
            return if offered {
                log::info!(
                    "panic-hv: screen-flush: synthvid offered but not open ({})",
                    self.fb_note
                );
                Outcome::Skipped(SkipReason::Disabled)
            } else {
                log::info!("panic-hv: screen-flush: no synthvid offer");
                Outcome::NotPresent
            };
        };
        let mode = fb.mode();
        let sealed_len = seal.as_ref().and_then(|s| s.record()).map(|r| r.len());
        let shed = seal.as_ref().map_or(0, |s| s.shed());
        // The code first: its place decides how wide the text may be.
        let qr = seal.and_then(|s| {
            let (payload, bufs) = s.payload_and_qr();
            if payload.is_empty() {
                return None;
            }
            panic_screen::encode(payload, bufs)
                .map_err(|e| log::warn!("panic-hv: screen-flush: no QR code: {e}"))
                .ok()
        });
        let place = qr
            .as_ref()
            .and_then(|q| panic_screen::place(mode, q.size() as usize, q.version().value()));
        let mut text: heapless::String<700> = heapless::String::new();
        let _ = write!(text, "{}", rec.message);
        if let Some(l) = &rec.location {
            let _ = write!(text, "\nat {}:{}:{}", l.file, l.line, l.column);
        }
        let _ = write!(text, "\n\nboot ");
        for b in rec.boot_id {
            let _ = write!(text, "{b:02x}");
        }
        let _ = write!(text, " seq {}", rec.seq);
        let _ = write!(text, "\nsteps:");
        for st in rec.steps.iter().filter(|s| s.outcome != Outcome::Pending) {
            let _ = write!(
                text,
                " {} {} ({} us);",
                st.step.name(),
                st.outcome,
                st.elapsed_us
            );
        }
        match (sealed_len, &place) {
            (Some(n), Some(p)) => {
                let _ = write!(
                    text,
                    "\nthe QR code holds the whole crash record ({n} bytes, QR version {}):\nhost-collector import-screen SCREENSHOT.png",
                    p.version
                );
            }
            (Some(n), None) => {
                let _ = write!(text, "\ncrash record {n} bytes (no QR code on this screen)");
            }
            _ => {}
        }
        if shed > 0 {
            let _ = write!(
                text,
                "\n(bulk parts left out to fit the code: level {shed}, see the log tail)"
            );
        }
        let _ = write!(
            text,
            "\n\ndrawn before shipping; the collector's record shows how the panic path ended"
        );
        let mut wrapped: heapless::String<900> = heapless::String::new();
        panic_screen::wrap(
            &text,
            panic_screen::text_cols(place.as_ref(), mode),
            &mut wrapped,
        );
        let drawn = console::draw_panic_screen(vram, mode, &wrapped)
            .map_err(panic_screen::QrDrawError::Vram)
            .and_then(|_| match (&qr, &place) {
                (Some(q), Some(p)) => panic_screen::draw(vram, mode, q, p),
                _ => Ok(()),
            });
        let o = devices::flush_outcome(fb.panic_flush());
        match drawn {
            // A host that never asked for DIRT (no FEATURE_CHANGE: OpenVMM) shows VRAM as it
            // is: the screen is flushed once it is drawn.
            Ok(_) if o == Outcome::Skipped(SkipReason::NotNeeded) => {
                log::info!(
                    "panic-hv: screen-flush: panic screen drawn; the host asked for no DIRT (it shows VRAM as is)"
                );
                Outcome::Done
            }
            Ok(_) => {
                log::info!("panic-hv: screen-flush: panic screen drawn; DIRT {o}");
                o
            }
            Err(e) => {
                log::warn!("panic-hv: screen-flush: drawing failed ({e}); DIRT {o}");
                match o {
                    Outcome::Done | Outcome::Skipped(_) => Outcome::Failed(0x400),
                    other => other,
                }
            }
        }
    }

    /// Step 3: UNLOAD once per connection, within `budget_us`.
    pub fn unload_once(&mut self, budget_us: u64) -> Outcome {
        let deadline = self.deadline(budget_us);
        self.s.unload_once(deadline)
    }

    fn cleanup(&mut self, what: &str) -> Outcome {
        self.s.cleanup(what, &mut self.irq)
    }

    /// Step 4: STIMER0 stopped, SINT2 masked, SIMP/SIEFP off, SCONTROL = 0 (arm64: the same
    /// registers through HvSetVpRegisters, then the STIMER0 and VMBus PPIs disabled at the
    /// GIC).
    pub fn arch_cleanup(&mut self) -> Outcome {
        self.cleanup("cleanup")
    }

    /// Step 5, first half: reconnect from scratch in polling mode (design step 5). When the
    /// network runs on netvsc, only the NIC channel is opened on the new connection, the NIC
    /// built at boot for this is brought up on it and returned (the caller ships over it),
    /// and the connection stays up ([`Self::finish_ship`] unloads it). Otherwise the new
    /// connection is unloaded and cleaned up again at once (`unload_budget_us`).
    pub fn reconnect_for_ship(
        &mut self,
        unload_budget_us: u64,
    ) -> (Outcome, Option<&'a mut PanicNic<'a, M>>) {
        match self.s.reconnect() {
            Ok(()) => {}
            Err(devices::DeviceError::Synic(e)) => {
                log::error!("reconnect: enabling SynIC failed: {e}");
                return (Outcome::Failed(hv_code(e)), None);
            }
            Err(e) => {
                log::error!("reconnect: error: {e}");
                let _ = self.cleanup("cleanup-after-reconnect");
                return (Outcome::Failed(0x200), None);
            }
        }
        if let Some(nic) = self.ship_nic_up() {
            *self.ship_over_vmbus = true;
            return (Outcome::Done, Some(nic));
        }
        let deadline = self.deadline(unload_budget_us);
        let o = self.s.unload_reconnect(deadline);
        let cl = self.cleanup("cleanup-after-reconnect");
        let o = match (o, cl) {
            (Outcome::Done, other) => other,
            (other, _) => other,
        };
        (o, None)
    }

    /// On the reconnect: offers, then (when the network runs on netvsc and the host offers
    /// the NIC again) only the NIC channel, with the NIC built at boot for this.
    #[inline(never)]
    fn ship_nic_up(&mut self) -> Option<&'a mut PanicNic<'a, M>> {
        let (hv, clock) = (self.s.hv, &self.s.clock);
        let c = self.s.reconn.as_mut()?;
        log::info!(
            "reconnect: version {} (refused {})",
            c.version(),
            versions_newer_than(c.version())
        );
        let deadline = clock.now().saturating_add(DEVICE_TIMEOUT);
        let r = devices::reopen_nic(
            c,
            hv,
            clock,
            self.pages,
            self.ship_slot,
            self.spare_nic.as_deref_mut(),
            &mut || clock.now() > deadline,
        );
        let (offers, nic) = match r {
            Ok(r) => r,
            Err(e) => {
                log::error!("reconnect: error: requesting offers failed: {e}");
                return None;
            }
        };
        log::info!(
            "reconnect: offers {offers}; netvsc {}",
            match nic {
                ReopenNic::NotOffered => "not offered",
                ReopenNic::NotUsed => "offered, but the network does not run on netvsc",
                ReopenNic::Up(_) => "offered and reopened (the only channel opened)",
                ReopenNic::Failed(_) => "offered, but it did not come up",
            }
        );
        match nic {
            ReopenNic::Up(relid) => {
                let nic = self.spare_nic.take()?;
                log::info!(
                    "reconnect: netvsc relid {relid} up (NVSP {:#x}, mac {}), polling mode; the record ships over it",
                    nic.nvsp_version(),
                    devices::mac_text(nic.mac())
                );
                Some(nic)
            }
            ReopenNic::Failed(e) => {
                log::error!("reconnect: error: netvsc bring-up failed: {e}");
                None
            }
            ReopenNic::NotOffered | ReopenNic::NotUsed => None,
        }
    }

    /// Step 5, second half, after the ship: when the record went over the reconnect's
    /// netvsc, UNLOAD that connection too and clean up again (design step 5).
    /// `Skipped(NotNeeded)` when the reconnect was already unloaded.
    pub fn finish_ship(&mut self, unload_budget_us: u64) -> Outcome {
        if !core::mem::take(self.ship_over_vmbus) {
            return Outcome::Skipped(SkipReason::NotNeeded);
        }
        let deadline = self.deadline(unload_budget_us);
        let o = self.s.unload_reconnect(deadline);
        let cl = self.cleanup("cleanup-after-reconnect");
        match (o, cl) {
            (Outcome::Done, other) => other,
            (other, _) => other,
        }
    }

    /// Step 6: crash registers P0-P4 then CRASH_CTL, once per boot.
    pub fn write_crash_registers(&mut self, rec: &CrashRecord) -> Outcome {
        self.s.write_crash_registers(rec)
    }

    /// Step 7: any connection still up is unloaded and cleaned up, then the TSC page and the
    /// hypercall page are turned off and the guest OS id cleared (Linux `hyperv_cleanup`).
    pub fn end(&mut self) {
        if self.s.reconn.as_ref().is_some_and(|c| c.is_connected()) {
            let deadline = self.s.clock.now().saturating_add(REPLY_TIMEOUT);
            let _ = self.s.unload_reconnect(deadline);
            let _ = self.cleanup("cleanup-at-end");
        }
        self.s.clock.disable();
        self.s.disable_hypercalls();
    }
}

impl<'a, C: PanicClock, M: DmaMemory, I: InterruptControl> crate::panic_steps::HvSide
    for HvPanic<'_, 'a, C, M, I>
{
    type Nic = &'a mut PanicNic<'a, M>;
    fn describe(&mut self, rec: &mut CrashRecord) {
        HvPanic::describe(self, rec)
    }
    fn flush_screen(&mut self, rec: &CrashRecord, seal: Option<&mut Seal>) -> Outcome {
        HvPanic::flush_screen(self, rec, seal)
    }
    fn unload_once(&mut self, budget_us: u64) -> Outcome {
        HvPanic::unload_once(self, budget_us)
    }
    fn arch_cleanup(&mut self) -> Outcome {
        HvPanic::arch_cleanup(self)
    }
    fn reconnect_for_ship(&mut self, unload_budget_us: u64) -> (Outcome, Option<Self::Nic>) {
        HvPanic::reconnect_for_ship(self, unload_budget_us)
    }
    fn finish_ship(&mut self, unload_budget_us: u64) -> Outcome {
        HvPanic::finish_ship(self, unload_budget_us)
    }
    fn write_crash_registers(&mut self, rec: &CrashRecord) -> Outcome {
        HvPanic::write_crash_registers(self, rec)
    }
    fn end(&mut self) {
        HvPanic::end(self)
    }
}

/// The whole panic path of the appliance (`crate::panic_steps` driven by
/// `capture::panic::run`, the Hyper-V steps above, `Session`) against `vmbus-sim`: both
/// register ABIs, every host personality, and chaos seeds. Only the machine glue is the
/// test's (the ship step's network, the console).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hyperv::session::{arm64_cleanup_ppis, detect_arm64, NoPpis};
    use crate::panic_steps::{Deadlines, HvSide, Machine, PanicContext};
    use capture::followup::FollowupRepr;
    use capture::panic::{Entry, Step};
    use vmbus::arch::aarch64::Arm64Hv;
    use vmbus::arch::x86_64::X86Hv;
    use vmbus::cleanup::CleanupConfig;
    use vmbus::crash::CrashReporter;
    use vmbus::device::PhysRegion;
    use vmbus::synic::VMBUS_MESSAGE_SINT;
    use vmbus::synthvid::Synthvid;
    use vmbus::{GuestOsId, Hypervisor, SynReg, Synic, SynicMode};
    use vmbus_sim::chaos::ChaosConfig;
    use vmbus_sim::{Personality, Sim, SimArch, SimClock, SimConfig};

    impl PanicClock for SimClock<'_> {}

    const UNLOAD: u32 = 16;

    /// The test's framebuffer: synthvid on the boot connection and its VRAM.
    pub(crate) type SimFb<'a> = (Synthvid<SlotChannel<'a>>, Vram);

    struct SimMachine<'a> {
        sim: &'a Sim,
        session: Option<Session<'a, SimClock<'a>>>,
        fb: Option<&'a SimFb<'a>>,
        spare: Option<&'a mut PanicNic<'a, PhysRegion>>,
        ship_slot: &'a ChannelSlot,
        ship_over: bool,
        shipped: u32,
        summaries: u32,
        sealed: Vec<u8>,
        followups: Vec<FollowupRepr>,
        /// The deadline each follow-up was sent with, in milliseconds.
        followup_ms: Vec<u64>,
        /// The host stops the VM when this step starts (OpenVMM, QEMU's default panic
        /// action: at the CRASH_CTL write of the crash registers step): the run ends there.
        stop_at: Option<Step>,
        /// What sending a follow-up gives (the collector's answer).
        followup_outcome: Outcome,
    }

    /// The payload a stopped run unwinds with (the host stopped the VM).
    struct HostStopped;

    /// What one run of the panic path left behind.
    pub(crate) struct PanicRun {
        /// The live record (every step's outcome).
        pub rec: CrashRecord,
        /// The bytes the ship step sent (the sealed record).
        pub sealed: Vec<u8>,
        /// The follow-ups sent.
        pub followups: Vec<FollowupRepr>,
    }

    impl<'a> Machine for SimMachine<'a> {
        type Nic = &'a mut PanicNic<'a, PhysRegion>;
        fn now_us(&mut self) -> u64 {
            self.sim.now() / 10
        }
        fn with_hv<R>(
            &mut self,
            f: impl FnOnce(&mut dyn HvSide<Nic = Self::Nic>) -> R,
        ) -> Option<R> {
            let s = self.session.as_mut()?;
            let mut hp = HvPanic {
                s,
                fb: self.fb,
                fb_note: "no framebuffer in this test",
                spare_nic: &mut self.spare,
                ship_slot: self.ship_slot,
                pages: &self.sim.mem,
                ship_over_vmbus: &mut self.ship_over,
                irq: NoPpis,
            };
            Some(f(&mut hp))
        }
        fn freeze(&mut self, _rec: &mut CrashRecord, _described: bool) {}
        fn ship(
            &mut self,
            _rec: &CrashRecord,
            sealed: &[u8],
            nic: Option<Self::Nic>,
            _ms: u64,
        ) -> Outcome {
            // The network does not run on netvsc here (no spare NIC): nothing comes back
            // from the reconnect, and the record "leaves" over the test's own network.
            assert!(nic.is_none());
            self.shipped += 1;
            self.sealed = sealed.to_vec();
            Outcome::Done
        }
        fn send_followup(&mut self, f: &FollowupRepr, ms: u64) -> Outcome {
            self.followups.push(*f);
            self.followup_ms.push(ms);
            self.followup_outcome
        }
        fn key(&self) -> Option<&capture::Key> {
            None
        }
        fn summary(&mut self, _entry: Entry, _rec: &CrashRecord) {
            self.summaries += 1;
        }
        fn step_hook(&mut self, _entry: Entry, step: Step) {
            if self.stop_at == Some(step) {
                std::panic::resume_unwind(Box::new(HostStopped));
            }
        }
    }

    /// Boots the Hyper-V side on `sim` as `hyperv::init_on` does (polling mode), runs the
    /// panic path's first entry, and returns the record.
    fn panic_on(sim: &Sim, chaos: Option<ChaosConfig>) -> CrashRecord {
        let ses = boot(sim);
        run(sim, ses, None, chaos).rec
    }

    /// Boots the Hyper-V side on `sim` as `hyperv::init_on` does (polling mode): the
    /// session, connected, offers requested.
    pub(crate) fn boot(sim: &Sim) -> Session<'_, SimClock<'_>> {
        let arch = sim.config().arch;
        let hv: Box<dyn Hypervisor + '_> = match arch {
            SimArch::X86_64 => Box::new(X86Hv::new(sim.cpu(0))),
            SimArch::Aarch64 => Box::new(Arm64Hv::new(sim.cpu(0))),
        };
        let hv: &dyn Hypervisor = Box::leak(hv);
        let id = match arch {
            SimArch::X86_64 => vmbus::detect(hv).expect("detect"),
            SimArch::Aarch64 => detect_arm64(&sim.cpu(0), None, true).expect("detect").0,
        };
        let os_id = GuestOsId::canary(0, 1, 0);
        hv.enable_hypercalls(&sim.mem, os_id).expect("hypercalls");
        let ppis: CleanupConfig = match arch {
            SimArch::Aarch64 => {
                arm64_cleanup_ppis(hv.read_reg(SynReg::Sint(VMBUS_MESSAGE_SINT)).ok())
            }
            SimArch::X86_64 => CleanupConfig::default(),
        };
        let synic: &Synic = Box::leak(Box::new(Synic::new()));
        let crash: &CrashReporter = Box::leak(Box::new(CrashReporter::new()));
        let mut ses = Session::new(
            hv,
            id,
            SimClock(sim),
            os_id.into_bits(),
            &sim.mem,
            synic,
            crash,
            ppis,
        );
        ses.prepare_crash_page();
        ses.enable_synic(SynicMode::Polling).expect("synic");
        if let Ok(mut c) = ses.connect() {
            let _ = c.request_offers(hv, &ses.clock);
            ses.conn = Some(c);
        }
        ses
    }

    /// Runs the panic path's first entry on a booted session (and framebuffer, if any).
    pub(crate) fn run<'a>(
        sim: &'a Sim,
        ses: Session<'a, SimClock<'a>>,
        fb: Option<&'a SimFb<'a>>,
        chaos: Option<ChaosConfig>,
    ) -> PanicRun {
        let r = run_stopping_at(sim, ses, fb, chaos, None, Outcome::Done);
        assert_eq!(r.shipped, 1);
        assert_eq!(r.summaries, 1);
        r.run
    }

    /// A run and what the machine counted.
    struct StoppedRun {
        run: PanicRun,
        followup_ms: Vec<u64>,
        shipped: u32,
        summaries: u32,
        stopped: bool,
    }

    /// Runs the panic path's first entry; the host stops the VM when `stop_at` starts.
    fn run_stopping_at<'a>(
        sim: &'a Sim,
        ses: Session<'a, SimClock<'a>>,
        fb: Option<&'a SimFb<'a>>,
        chaos: Option<ChaosConfig>,
        stop_at: Option<Step>,
        followup_outcome: Outcome,
    ) -> StoppedRun {
        // Boot is done: from here the host misbehaves.
        sim.set_chaos(chaos);
        let mut m = SimMachine {
            sim,
            session: Some(ses),
            fb,
            spare: None,
            ship_slot: Box::leak(Box::new(ChannelSlot::new())),
            ship_over: false,
            shipped: 0,
            summaries: 0,
            sealed: Vec::new(),
            followups: Vec::new(),
            followup_ms: Vec::new(),
            stop_at,
            followup_outcome,
        };
        let mut seal = Box::new(crate::seal::Seal::new());
        let mut rec = capture::testutil::sample_record(9);
        rec.steps.clear();
        let mut ctx = PanicContext {
            entry: Entry::First,
            m: &mut m,
            deadlines: Deadlines {
                unload_us: 2_000_000,
                ship_ms: 3_000,
            },
            seal: Some(&mut seal),
            first: None,
        };
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            capture::panic::run(&mut ctx, &mut rec, Entry::First)
        }));
        let stopped = match ran {
            Ok(()) => false,
            Err(p) if p.is::<HostStopped>() => true,
            Err(p) => std::panic::resume_unwind(p),
        };
        StoppedRun {
            followup_ms: m.followup_ms,
            shipped: m.shipped,
            summaries: m.summaries,
            stopped,
            run: PanicRun {
                rec,
                sealed: m.sealed,
                followups: m.followups,
            },
        }
    }

    fn personalities() -> [Personality; 3] {
        [
            Personality::HyperV {
                max_version: vmbus::Version::WIN10_V5_3,
            },
            Personality::Qemu,
            Personality::OpenVmm,
        ]
    }

    fn outcome(rec: &CrashRecord, step: Step) -> Outcome {
        rec.steps
            .iter()
            .find(|s| s.step == step)
            .map(|s| s.outcome)
            .unwrap_or_else(|| panic!("{step:?} not recorded: {:?}", rec.steps))
    }

    #[test]
    fn the_whole_panic_path_runs_against_every_host_personality_in_both_register_abis() {
        for arch in [SimArch::X86_64, SimArch::Aarch64] {
            for p in personalities() {
                let sim = Sim::new(SimConfig::with_default_offers(arch, p));
                let t0 = sim.now();
                let ses = boot(&sim);
                let r = run(&sim, ses, None, None);
                let rec = &r.rec;
                let ctx = format!("{arch:?} {p:?}: {:?}", rec.steps);
                // Sealed at the screen: the shipped bytes hold the freeze step only; the six
                // steps after it went in two follow-ups: at the ship step's end (crash
                // registers and end pending), and from the end step (the end step's as
                // started).
                let sealed = CrashRecord::decode(
                    capture::record::SCHEMA_MAJOR,
                    capture::record::SCHEMA_MINOR,
                    &r.sealed,
                )
                .expect("sealed record decodes");
                let sealed_steps: Vec<Step> = sealed.steps.iter().map(|s| s.step).collect();
                assert_eq!(sealed_steps, [Step::Freeze], "{ctx}");
                assert_eq!(r.followups.len(), 2, "{ctx}");
                let first = &r.followups[0];
                assert_eq!(first.id(), r.followups[1].id(), "{ctx}");
                assert_eq!(first.reported(), 4, "{ctx}");
                assert_eq!(&first.steps()[..3], &rec.steps[1..4], "{ctx}");
                let f = &r.followups[1];
                assert_eq!(f.reported(), 5, "{ctx}");
                assert_eq!(
                    f.id(),
                    capture::RecordId::of(rec.boot_id, rec.seq, &r.sealed)
                );
                let later: Vec<Step> = f.steps().iter().map(|s| s.step).collect();
                assert_eq!(later, Step::ALL[1..], "{ctx}");
                assert_eq!(&f.steps()[..5], &rec.steps[1..6], "{ctx}");
                assert_eq!(f.steps()[5].outcome, Outcome::Pending, "{ctx}");
                let steps: Vec<Step> = rec.steps.iter().map(|s| s.step).collect();
                assert_eq!(steps, Step::ALL, "{ctx}");
                assert_eq!(outcome(rec, Step::Freeze), Outcome::Done, "{ctx}");
                assert_eq!(outcome(rec, Step::VmbusUnload), Outcome::Done, "{ctx}");
                assert_eq!(outcome(rec, Step::ArchCleanup), Outcome::Done, "{ctx}");
                assert_eq!(outcome(rec, Step::Ship), Outcome::Done, "{ctx}");
                let crash = outcome(rec, Step::CrashRegisters);
                if sim.config().crash_registers {
                    assert_eq!(crash, Outcome::Done, "{ctx}");
                    assert_eq!(sim.crash_notices().len(), 1, "{ctx}");
                } else {
                    assert_eq!(crash, Outcome::NotPresent, "{ctx}");
                }
                // UNLOAD once for the boot connection, once for the reconnect.
                assert_eq!(sim.guest_messages_of(UNLOAD).len(), 2, "{ctx}");
                assert!(rec.hypervisor.present, "{ctx}");
                // Well within the sum of the deadlines (2 UNLOADs, the ship).
                let took_us = (sim.now() - t0) / 10;
                assert!(took_us < 2 * 2_000_000 + 3_000_000, "{ctx}: {took_us} us");
            }
        }
    }

    #[test]
    fn under_chaos_the_panic_path_reaches_its_end_with_every_step_recorded() {
        let seeds: u64 = std::env::var("CANARY_PANIC_CHAOS_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let mut runs = 0;
        let mut not_done = 0;
        for arch in [SimArch::X86_64, SimArch::Aarch64] {
            for (i, p) in personalities().into_iter().enumerate() {
                for seed in 0..seeds {
                    let sim = Sim::new(SimConfig::with_default_offers(arch, p));
                    let t0 = sim.now();
                    let cfg = ChaosConfig::new(seed * 7 + i as u64, 200);
                    let rec = panic_on(&sim, Some(cfg));
                    let ctx = format!("{arch:?} {p:?} seed {}: {:?}", cfg.seed, rec.steps);
                    let steps: Vec<Step> = rec.steps.iter().map(|s| s.step).collect();
                    assert_eq!(steps, Step::ALL, "{ctx}");
                    assert!(
                        rec.steps.iter().all(|s| s.outcome != Outcome::Pending),
                        "{ctx}"
                    );
                    let took_us = (sim.now() - t0) / 10;
                    // The sum of the deadlines: 2 UNLOADs, the ship, and the reconnect's
                    // replies (5 s each, `REPLY_TIMEOUT`, for the handshake's messages).
                    assert!(took_us < 60_000_000, "{ctx}: {took_us} us");
                    runs += 1;
                    not_done += rec
                        .steps
                        .iter()
                        .filter(|s| s.outcome != Outcome::Done)
                        .count();
                }
            }
        }
        // Printed past the harness's capture (CI shows the seed count).
        eprintln!(
            "panic path chaos: {runs} runs ({seeds} seeds x 3 personalities x 2 arches), every one reached end; {not_done} steps ended other than done"
        );
    }
    #[test]
    fn a_host_that_stops_the_vm_at_the_crash_registers_still_gets_steps_2_to_5() {
        for arch in [SimArch::X86_64, SimArch::Aarch64] {
            for p in personalities() {
                let sim = Sim::new(SimConfig::with_default_offers(arch, p));
                let ses = boot(&sim);
                let r = run_stopping_at(
                    &sim,
                    ses,
                    None,
                    None,
                    Some(Step::CrashRegisters),
                    Outcome::Done,
                );
                let ctx = format!("{arch:?} {p:?}: {:?}", r.run.rec.steps);
                assert!(r.stopped && r.shipped == 1 && r.summaries == 0, "{ctx}");
                // The follow-up sent at the end of the ship step, once the record was acked.
                assert_eq!(r.run.followups.len(), 1, "{ctx}");
                let f = &r.run.followups[0];
                assert_eq!(
                    f.id(),
                    capture::RecordId::of(r.run.rec.boot_id, r.run.rec.seq, &r.run.sealed)
                );
                let later: Vec<Step> = f.steps().iter().map(|s| s.step).collect();
                assert_eq!(later, Step::ALL[1..], "{ctx}");
                // Screen-flush to ship as the live record has them (the ship's own time is
                // measured inside the step, so it is at most the recorded one).
                for (i, s) in f.steps()[..4].iter().enumerate() {
                    let live = r.run.rec.steps[1 + i];
                    assert_eq!((s.step, s.outcome), (live.step, live.outcome), "{ctx}");
                    assert_ne!(s.outcome, Outcome::Pending, "{ctx}");
                    if s.step != Step::Ship {
                        assert_eq!(s.elapsed_us, live.elapsed_us, "{ctx}");
                    }
                }
                assert_eq!(f.steps()[3].outcome, Outcome::Done, "{ctx}");
                assert!(f.steps()[3].elapsed_us > 0, "{ctx}");
                // Crash registers and end had not run when it went.
                assert_eq!(f.steps()[4].outcome, Outcome::Pending, "{ctx}");
                assert_eq!(f.steps()[5].outcome, Outcome::Pending, "{ctx}");
            }
        }
    }

    #[test]
    fn a_followup_that_goes_unanswered_is_not_followed_by_another() {
        // A collector before follow-ups never acks one: the ship step's waits out the
        // deadline, the end step does not wait again.
        for o in [Outcome::TimedOut, Outcome::Failed(4)] {
            let sim = Sim::new(SimConfig::with_default_offers(
                SimArch::X86_64,
                Personality::OpenVmm,
            ));
            let ses = boot(&sim);
            let r = run_stopping_at(&sim, ses, None, None, None, o);
            assert!(!r.stopped && r.summaries == 1);
            assert_eq!(r.run.followups.len(), 1, "{o}");
            assert_eq!(r.run.followups[0].reported(), 4, "{o}");
            // It waited a few retransmit rounds, not the whole ship deadline (3 s here, 60 s
            // by default) before the crash registers: the record was acked at once.
            assert_eq!(r.followup_ms, [crate::seal::FOLLOWUP_MIN_MS], "{o}");
        }
    }
}
