//! The synthetic interrupt controller: per-CPU message page (SIMP), event-flags page (SIEFP),
//! SINT setup, message slots and the EOM protocol (ref §3.2, §3.6).

use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::mem;
use crate::platform::{Hypervisor, PageAlloc, PhysPages};
use crate::regs::{PageReg, ScontrolReg, SintReg, SynReg};
use crate::status::HvError;

/// CPUs the table can hold (VP indexes 0..MAX_CPUS).
pub const MAX_CPUS: usize = 64;
/// VMBus uses SINT2 (ref §3.2, Linux `VMBUS_MESSAGE_SINT`).
pub const VMBUS_MESSAGE_SINT: u8 = 2;
/// Number of SINTs / message slots (ref §3.2: 16 slots × 256 B).
pub const SINT_COUNT: usize = 16;
/// `HVMSG_NONE` (ref §3.6).
pub const HVMSG_NONE: u32 = 0;
/// `HVMSG_TIMER_EXPIRED` (ref §3.6).
pub const HVMSG_TIMER_EXPIRED: u32 = 0x8000_0010;
/// Bytes per message slot (ref §3.6).
pub const MESSAGE_SIZE: usize = 256;
/// `message_flags` bit 0: `msg_pending` (ref §3.6).
pub const MSG_FLAG_PENDING: u8 = 1;
/// Event-flag bytes per SINT in the SIEFP page (2048 bits, ref §3.2).
pub const EVENT_FLAGS_BYTES_PER_SINT: usize = 256;

/// `hv_message_header` (ref §3.6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvMessageHeader {
    pub message_type: u32,
    pub payload_size: u8,
    pub message_flags: u8,
    pub reserved: [u8; 2],
    /// `sender` / `port`.
    pub sender: u64,
}
const _: () = assert!(core::mem::size_of::<HvMessageHeader>() == 16);

/// One SynIC message slot (ref §3.6: 256 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvMessage {
    pub header: HvMessageHeader,
    pub payload: [u8; crate::hypercall::HV_MESSAGE_PAYLOAD_SIZE],
}
const _: () = assert!(core::mem::size_of::<HvMessage>() == MESSAGE_SIZE);

impl HvMessage {
    /// The payload the header claims, or `None` when `payload_size` exceeds 240 (a malformed
    /// host message: Linux `vmbus_on_msg_dpc` rejects it too).
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.get(..self.header.payload_size as usize)
    }
}

/// How SINT2 (VMBus) is configured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SynicMode {
    /// SINT2 masked: no interrupt; the kernel polls (the panic path). KVM still delivers
    /// messages into the slot (hvhost self-test); whether Hyper-V does with the SINT masked
    /// is open (ref §11 item 6), so a panic path that started in `Interrupt` mode can keep it
    /// and poll with interrupts off, as Linux does.
    Polling,
    /// SINT2 unmasked with this vector (x86: IDT vector; arm64: the VMBus PPI INTID).
    /// `auto_eoi` is never set (arm64 does not support it, ref §3.3).
    Interrupt { vector: u8 },
}

struct CpuState {
    enabled: AtomicBool,
    simp: AtomicPtr<u8>,
    simp_gpa: AtomicU64,
    siefp: AtomicPtr<u8>,
    siefp_gpa: AtomicU64,
    post: AtomicPtr<u8>,
    post_gpa: AtomicU64,
}

impl CpuState {
    const fn new() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            simp: AtomicPtr::new(core::ptr::null_mut()),
            simp_gpa: AtomicU64::new(0),
            siefp: AtomicPtr::new(core::ptr::null_mut()),
            siefp_gpa: AtomicU64::new(0),
            post: AtomicPtr::new(core::ptr::null_mut()),
            post_gpa: AtomicU64::new(0),
        }
    }
}

/// The SynIC state of every CPU. Const-constructible, so a kernel keeps it in a `static`.
pub struct Synic {
    cpus: [CpuState; MAX_CPUS],
}

impl Default for Synic {
    fn default() -> Self {
        Self::new()
    }
}

impl Synic {
    pub const fn new() -> Self {
        Self {
            cpus: [const { CpuState::new() }; MAX_CPUS],
        }
    }

    fn cpu(&self, vp: u32) -> Option<&CpuState> {
        self.cpus.get(vp as usize)
    }

    /// Enable the SynIC on the calling CPU (Linux `hv_synic_enable_regs` order: SIMP, SIEFP,
    /// SINT, SCONTROL). Allocates the message, event-flags and hypercall-input pages on first
    /// use and reuses (zeroed) pages afterwards, so a reconnect needs no new pages. Returns
    /// the VP index.
    pub fn enable_cpu(
        &self,
        hv: &dyn Hypervisor,
        alloc: &dyn PageAlloc,
        mode: SynicMode,
    ) -> Result<u32, HvError> {
        let vp = hv.read_reg(SynReg::VpIndex)? as u32;
        let cpu = self.cpu(vp).ok_or(HvError::VpIndexTooLarge(vp))?;
        if cpu.simp.load(Ordering::Acquire).is_null() {
            let pages = alloc.alloc_pages(3).ok_or(HvError::OutOfPages)?;
            let page = |i| pages.slice(i, 1).ok_or(HvError::OutOfPages);
            let (simp, siefp, post) = (page(0)?, page(1)?, page(2)?);
            cpu.simp_gpa.store(simp.gpa(), Ordering::Relaxed);
            cpu.siefp_gpa.store(siefp.gpa(), Ordering::Relaxed);
            cpu.post_gpa.store(post.gpa(), Ordering::Relaxed);
            cpu.siefp.store(siefp.va(), Ordering::Release);
            cpu.post.store(post.va(), Ordering::Release);
            cpu.simp.store(simp.va(), Ordering::Release);
        } else {
            // SAFETY: pages owned by this table; the hypervisor does not write them while
            // SIMP/SIEFP are disabled.
            unsafe {
                mem::zero(cpu.simp.load(Ordering::Acquire), crate::PAGE_SIZE);
                mem::zero(cpu.siefp.load(Ordering::Acquire), crate::PAGE_SIZE);
            }
        }
        let simp = PageReg::from_bits(hv.read_reg(SynReg::Simp)?)
            .with_gpa(cpu.simp_gpa.load(Ordering::Relaxed))
            .with_enabled(true);
        hv.write_reg(SynReg::Simp, simp.into_bits())?;
        let siefp = PageReg::from_bits(hv.read_reg(SynReg::Siefp)?)
            .with_gpa(cpu.siefp_gpa.load(Ordering::Relaxed))
            .with_enabled(true);
        hv.write_reg(SynReg::Siefp, siefp.into_bits())?;
        let sint =
            SintReg::from_bits(hv.read_reg(SynReg::Sint(VMBUS_MESSAGE_SINT))?).with_auto_eoi(false);
        let sint = match mode {
            SynicMode::Polling => sint.with_masked(true),
            SynicMode::Interrupt { vector } => sint.with_vector(vector).with_masked(false),
        };
        hv.write_reg(SynReg::Sint(VMBUS_MESSAGE_SINT), sint.into_bits())?;
        let sc = ScontrolReg::from_bits(hv.read_reg(SynReg::Scontrol)?).with_enabled(true);
        hv.write_reg(SynReg::Scontrol, sc.into_bits())?;
        cpu.enabled.store(true, Ordering::Release);
        Ok(vp)
    }

    /// Linux `hv_synic_disable_regs` for the calling CPU: mask SINT2, SIMP and SIEFP off (GPA
    /// zeroed), SCONTROL = 0. The pages stay allocated for a later `enable_cpu`.
    pub fn disable_cpu(&self, hv: &dyn Hypervisor) -> Result<(), HvError> {
        let vp = hv.read_reg(SynReg::VpIndex)? as u32;
        let sint =
            SintReg::from_bits(hv.read_reg(SynReg::Sint(VMBUS_MESSAGE_SINT))?).with_masked(true);
        hv.write_reg(SynReg::Sint(VMBUS_MESSAGE_SINT), sint.into_bits())?;
        let simp = PageReg::from_bits(hv.read_reg(SynReg::Simp)?)
            .with_enabled(false)
            .with_gpa(0);
        hv.write_reg(SynReg::Simp, simp.into_bits())?;
        let siefp = PageReg::from_bits(hv.read_reg(SynReg::Siefp)?)
            .with_enabled(false)
            .with_gpa(0);
        hv.write_reg(SynReg::Siefp, siefp.into_bits())?;
        hv.write_reg(SynReg::Scontrol, 0)?;
        if let Some(cpu) = self.cpu(vp) {
            cpu.enabled.store(false, Ordering::Release);
        }
        Ok(())
    }

    pub fn is_enabled(&self, vp: u32) -> bool {
        self.cpu(vp)
            .is_some_and(|c| c.enabled.load(Ordering::Acquire))
    }

    /// VP indexes with an enabled message page (the unload poll visits each).
    pub fn enabled_cpus(&self) -> impl Iterator<Item = u32> + '_ {
        (0..MAX_CPUS as u32).filter(|&vp| self.is_enabled(vp))
    }

    /// The hypercall input page of `vp` (used for HvPostMessage from that CPU).
    pub fn post_page(&self, vp: u32) -> Option<PhysPages> {
        let cpu = self.cpu(vp)?;
        let va = cpu.post.load(Ordering::Acquire);
        if va.is_null() {
            return None;
        }
        // SAFETY: a page allocated by enable_cpu and owned by this table.
        Some(unsafe { PhysPages::new(cpu.post_gpa.load(Ordering::Relaxed), va, 1) })
    }

    fn slot(&self, vp: u32, sint: u8) -> Option<*mut u8> {
        if sint as usize >= SINT_COUNT {
            return None;
        }
        let cpu = self.cpu(vp)?;
        let simp = cpu.simp.load(Ordering::Acquire);
        if simp.is_null() {
            return None;
        }
        Some(simp.wrapping_add(sint as usize * MESSAGE_SIZE))
    }

    /// A copy of the message in `vp`'s slot for `sint`, if there is one.
    pub fn read_message(&self, vp: u32, sint: u8) -> Option<HvMessage> {
        let slot = self.slot(vp, sint)?;
        // SAFETY: the slot lies in a SIMP page owned by this table; the hypervisor writes the
        // type last, so an acquire load of a non-NONE type makes the rest visible.
        let ty = unsafe { mem::atomic_u32(slot) }.load(Ordering::Acquire);
        if ty == HVMSG_NONE {
            return None;
        }
        let mut bytes = [0u8; MESSAGE_SIZE];
        // SAFETY: 256 bytes inside the SIMP page.
        unsafe { mem::read_bytes(slot, &mut bytes) };
        let mut msg = HvMessage::read_from_bytes(&bytes).ok()?;
        msg.header.message_type = ty;
        Some(msg)
    }

    /// Linux `vmbus_signal_eom`: `cmpxchg(type, old, NONE)`, barrier, and if `msg_pending`
    /// write EOM (on the calling CPU) so the hypervisor delivers the next queued message.
    /// Returns false when the slot no longer held `old_type`.
    pub fn eom(
        &self,
        hv: &dyn Hypervisor,
        vp: u32,
        sint: u8,
        old_type: u32,
    ) -> Result<bool, HvError> {
        let Some(slot) = self.slot(vp, sint) else {
            return Ok(false);
        };
        // SAFETY: slot inside an owned SIMP page, accessed atomically.
        let ty = unsafe { mem::atomic_u32(slot) };
        if ty
            .compare_exchange(old_type, HVMSG_NONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(false);
        }
        fence(Ordering::SeqCst);
        // SAFETY: byte 5 of the slot is message_flags.
        let flags = unsafe { mem::atomic_u8(slot.wrapping_add(5)) }.load(Ordering::Acquire);
        if flags & MSG_FLAG_PENDING != 0 {
            hv.write_reg(SynReg::Eom, 0)?;
        }
        Ok(true)
    }

    /// Set the slot's type to NONE (Linux does this for every CPU after the unload wait so a
    /// new connection can receive messages).
    pub fn clear_slot(&self, vp: u32, sint: u8) {
        if let Some(slot) = self.slot(vp, sint) {
            // SAFETY: slot inside an owned SIMP page, accessed atomically.
            unsafe { mem::atomic_u32(slot) }.store(HVMSG_NONE, Ordering::Release);
        }
    }

    /// Test and clear bit `bit` of `sint`'s event flags in `vp`'s SIEFP page (channel events
    /// are flagged by relid, ref §4.5).
    pub fn event_flag_test_and_clear(&self, vp: u32, sint: u8, bit: u32) -> bool {
        let Some(cpu) = self.cpu(vp) else {
            return false;
        };
        let page = cpu.siefp.load(Ordering::Acquire);
        if page.is_null() || sint as usize >= SINT_COUNT || bit as usize >= 2048 {
            return false;
        }
        let word = sint as usize * EVENT_FLAGS_BYTES_PER_SINT + (bit as usize / 64) * 8;
        // SAFETY: 8-byte aligned word inside the SIEFP page, accessed atomically.
        let w = unsafe { mem::atomic_u64(page.wrapping_add(word)) };
        let mask = 1u64 << (bit % 64);
        w.fetch_and(!mask, Ordering::AcqRel) & mask != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hv_message_golden_layout() {
        // ref §3.6: type @0, payload_size @4, flags @5, reserved @6, sender @8, payload @16.
        let mut m = HvMessage::new_zeroed_msg();
        m.header.message_type = 1;
        m.header.payload_size = 8;
        m.header.message_flags = MSG_FLAG_PENDING;
        m.header.sender = 0x0102_0304_0506_0708;
        m.payload[0] = 17;
        let b = m.as_bytes();
        assert_eq!(&b[0..16], &[1, 0, 0, 0, 8, 1, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(b[16], 17);
        assert_eq!(m.payload().unwrap().len(), 8);
        m.header.payload_size = 241;
        assert!(m.payload().is_none());
    }

    impl HvMessage {
        fn new_zeroed_msg() -> Self {
            <Self as zerocopy::FromZeros>::new_zeroed()
        }
    }
}
