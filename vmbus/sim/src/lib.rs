//! Host-side model of Hyper-V and VMBus, for testing the `vmbus` crate (test-only, std).
//!
//! - [`Sim`] models guest memory ([`memory::GuestMemory`], real bytes at GPAs that differ from
//!   host addresses), per-VP synthetic registers and SynIC pages, hypercalls, the VMBus server
//!   (with the behaviours of Hyper-V, QEMU and OpenVMM where they differ), ring buffers, and
//!   fault injection.
//! - Both register ABIs go through the same model: [`cpu::SimCpu`] implements
//!   `vmbus::arch::x86_64::X86Instructions` (CPUID, MSRs, the hypercall page) and
//!   `vmbus::arch::aarch64::Smccc` (`HVC #0`), so the guest's real per-arch adapters run.
//! - Time is a fake clock ([`SimClock`]) that advances on every read and delivers scheduled
//!   host messages.

pub mod chaos;
pub mod cpu;
pub mod host;
/// KVP integration-component host model (issue 13).
pub mod kvp;
pub mod memory;
pub mod personality;

use vmbus::arch::aarch64::Arm64Hv;
use vmbus::arch::x86_64::X86Hv;
use vmbus::ring::Ring;
use vmbus::synic::VMBUS_MESSAGE_SINT;
use vmbus::{Clock, GuestOsId, Hypervisor, Synic, SynicMode};

pub use cpu::SimCpu;
pub use host::{Behaviour, CrashNotice, Faults, Personality, Sim, SimArch, SimConfig, SimOffer};

/// The fake clock: every `now()` advances time by the configured step and delivers due
/// messages, so polling loops make progress and always end.
pub struct SimClock<'s>(pub &'s Sim);

impl Clock for SimClock<'_> {
    fn now(&self) -> u64 {
        self.0.advance(self.0.config().clock_step)
    }
}

/// The host's end of an open channel.
#[derive(Clone, Copy)]
pub struct HostChannel {
    pub relid: u32,
    pub gpadl: u32,
    /// The host writes here (the guest's inbound ring).
    pub to_guest: Ring,
    /// The host reads here (the guest's outbound ring).
    pub from_guest: Ring,
}

impl Sim {
    pub fn cpu(&self, vp: u32) -> SimCpu<'_> {
        SimCpu { sim: self, vp }
    }

    /// The host side of an open channel.
    pub fn host_channel(&self, relid: u32) -> Option<HostChannel> {
        let st = self.lock();
        st.bus.channels.get(&relid).map(|c| HostChannel {
            relid,
            gpadl: c.gpadl,
            to_guest: c.to_guest,
            from_guest: c.from_guest,
        })
    }

    /// Host signals the guest for a channel: set bit `relid` in SINT2's event flags of `vp`.
    pub fn signal_guest(&self, vp: u32, relid: u32) {
        let st = self.lock();
        let Some(v) = st.vps.get(vp as usize) else {
            return;
        };
        let siefp = vmbus::regs::PageReg::from_bits(v.siefp);
        if !siefp.enabled() {
            return;
        }
        let gpa = siefp.gpa() + 2 * 256 + (relid as u64 / 64) * 8;
        if let Some(p) = self.mem.ptr(gpa, 8) {
            // SAFETY: inside guest memory (checked), accessed atomically.
            unsafe { vmbus::mem::atomic_u64(p) }
                .fetch_or(1 << (relid % 64), std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Deliver a raw SynIC message (any type and `payload_size` field) into `vp`'s SINT2 slot.
    pub fn inject(&self, vp: u32, message_type: u32, size_field: u8, bytes: &[u8]) {
        let mut st = self.lock();
        self.deliver(
            &mut st,
            vp,
            VMBUS_MESSAGE_SINT,
            message_type,
            size_field,
            bytes,
        );
    }

    /// Every VMBus message the guest posted: (type, bytes).
    pub fn guest_messages(&self) -> Vec<(u32, Vec<u8>)> {
        self.lock().guest_messages.clone()
    }
    /// Guest messages of one type.
    pub fn guest_messages_of(&self, ty: u32) -> Vec<Vec<u8>> {
        self.lock()
            .guest_messages
            .iter()
            .filter(|(t, _)| *t == ty)
            .map(|(_, b)| b.clone())
            .collect()
    }
    /// Every HvPostMessage attempt: (connection id, first payload word).
    pub fn posts(&self) -> Vec<(u32, u32)> {
        self.lock().posts.clone()
    }
    /// HvSignalEvent calls per connection id.
    pub fn signals(&self, connection_id: u32) -> u32 {
        self.lock()
            .signals
            .get(&connection_id)
            .copied()
            .unwrap_or(0)
    }
    /// Raw register writes of a VP, in order: (MSR number or arm64 register id, value).
    pub fn raw_writes(&self, vp: u32) -> Vec<(u32, u64)> {
        self.lock().vps[vp as usize].raw_writes.clone()
    }
    pub fn clear_raw_writes(&self, vp: u32) {
        self.lock().vps[vp as usize].raw_writes.clear();
    }
    pub fn eoms(&self, vp: u32) -> u32 {
        self.lock().vps[vp as usize].eoms
    }
    pub fn crash_notices(&self) -> Vec<CrashNotice> {
        self.lock().crash_notices.clone()
    }
    pub fn relids_released(&self) -> Vec<u32> {
        self.lock().relids_released.clone()
    }
    pub fn is_connected(&self) -> bool {
        self.lock().bus.connected
    }
    pub fn gpadl_ranges(&self, gpadl: u32) -> Option<Vec<(u32, u32, Vec<u64>)>> {
        self.lock().bus.gpadls.get(&gpadl).cloned()
    }
    pub fn direct_timer_fires(&self, vp: u32) -> u32 {
        self.lock().vps[vp as usize].direct_timer_fires
    }
    /// The message type currently in `vp`'s slot for `sint` (0 = empty).
    pub fn slot_type(&self, vp: u32, sint: u8) -> u32 {
        let st = self.lock();
        let simp = vmbus::regs::PageReg::from_bits(st.vps[vp as usize].simp);
        if !simp.enabled() {
            return 0;
        }
        self.mem
            .read_u32(simp.gpa() + sint as u64 * 256)
            .unwrap_or(0)
    }
}

/// A booted guest on the sim: hypercalls enabled (x86: hypercall page; arm64: guest OS id),
/// one `Hypervisor` handle per VP through the configured arch's real adapter, and SynIC
/// enabled on every VP.
pub struct Guest<'s> {
    pub sim: &'s Sim,
    hvs: Vec<Box<dyn Hypervisor + 's>>,
    pub synic: Box<Synic>,
    pub clock: SimClock<'s>,
}

impl<'s> Guest<'s> {
    pub fn boot(sim: &'s Sim, mode: SynicMode) -> Self {
        let os_id = GuestOsId::canary(0, 1, 0);
        let mut hvs: Vec<Box<dyn Hypervisor + 's>> = Vec::new();
        match sim.config().arch {
            SimArch::X86_64 => {
                let hv0 = X86Hv::new(sim.cpu(0));
                hv0.enable_hypercalls(&sim.mem, os_id)
                    .expect("enable hypercalls");
                for vp in 1..sim.config().cpus {
                    hvs.push(Box::new(hv0.with_instructions(sim.cpu(vp))));
                }
                hvs.insert(0, Box::new(hv0));
            }
            SimArch::Aarch64 => {
                for vp in 0..sim.config().cpus {
                    let hv = Arm64Hv::new(sim.cpu(vp));
                    if vp == 0 {
                        hv.enable_hypercalls(&sim.mem, os_id)
                            .expect("enable hypercalls");
                    }
                    hvs.push(Box::new(hv));
                }
            }
        }
        let synic = Box::new(Synic::new());
        for hv in &hvs {
            synic
                .enable_cpu(hv.as_ref(), &sim.mem, mode)
                .expect("enable SynIC");
        }
        Self {
            sim,
            hvs,
            synic,
            clock: SimClock(sim),
        }
    }

    pub fn hv(&self, vp: u32) -> &dyn Hypervisor {
        self.hvs[vp as usize].as_ref()
    }
}

// synthvid/netvsc host models (issue 5; owned by the device-protocol work).
pub mod netvsc;
pub mod netvsc_bridge;
pub mod netvsc_testbed;
pub mod synthvid;
pub mod synthvid_link;
