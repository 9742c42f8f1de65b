//! The local APIC's software-enable bit, which SynIC interrupts need (x86_64 only).
//!
//! The canary runs with interrupts off and polls, but KVM still delivers a SynIC interrupt
//! (a SINT with a vector) through the local APIC, and counts the delivery as failed when the
//! APIC is software-disabled: Linux `arch/x86/kvm/hyperv.c` `synic_deliver_msg` returns
//! -EFAULT when `synic_set_irq` reaches no APIC (`__apic_accept_irq` in `lapic.c` accepts
//! nothing while `!apic_enabled`). A synthetic timer in message mode then stays "pending"
//! and never re-arms, so after the first expiry it goes quiet. With the APIC enabled the
//! vector only sets an IRR bit, which is never taken (IF stays 0), and the timer keeps going.
use vmbus::arch::x86_64::X86Instructions;

/// IA32_APIC_BASE (Intel SDM vol. 3A, 10.4.4): bit 11 global enable, bit 10 x2APIC mode,
/// bits 12.. the xAPIC MMIO base.
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
/// Spurious-interrupt vector register: xAPIC MMIO offset 0xF0, x2APIC MSR 0x80F; bit 8 is
/// the software enable (Intel SDM vol. 3A, 10.9).
const SVR_MMIO_OFFSET: u64 = 0xf0;
const X2APIC_SVR_MSR: u32 = 0x80f;
const SVR_ENABLE: u32 = 1 << 8;

/// What [`software_enable`] found and did.
#[derive(Clone, Copy, Debug)]
pub struct ApicState {
    pub x2apic: bool,
    pub svr_before: u32,
    pub svr_after: u32,
}

/// Sets the SVR software-enable bit (keeping the spurious vector), unless the APIC is
/// globally disabled; returns the register before and after.
pub fn software_enable(insn: &impl X86Instructions) -> Option<ApicState> {
    let base = insn.rdmsr(IA32_APIC_BASE);
    if base & APIC_BASE_ENABLE == 0 {
        return None;
    }
    if base & APIC_BASE_X2APIC != 0 {
        let before = insn.rdmsr(X2APIC_SVR_MSR) as u32;
        insn.wrmsr(X2APIC_SVR_MSR, (before | SVR_ENABLE) as u64);
        let after = insn.rdmsr(X2APIC_SVR_MSR) as u32;
        return Some(ApicState {
            x2apic: true,
            svr_before: before,
            svr_after: after,
        });
    }
    // The xAPIC page lies below 4 GiB (architectural default 0xFEE00000), inside the identity
    // map the boot code builds.
    let svr = ((base & 0x000f_ffff_ffff_f000) + SVR_MMIO_OFFSET) as usize as *mut u32;
    // SAFETY: `svr` is the SVR register of this CPU's local APIC (from IA32_APIC_BASE),
    // identity-mapped; a 32-bit aligned volatile access is how the SDM says to access it.
    let (before, after) = unsafe {
        let before = core::ptr::read_volatile(svr);
        core::ptr::write_volatile(svr, before | SVR_ENABLE);
        (before, core::ptr::read_volatile(svr))
    };
    Some(ApicState {
        x2apic: false,
        svr_before: before,
        svr_after: after,
    })
}
