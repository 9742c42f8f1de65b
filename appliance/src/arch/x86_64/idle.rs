//! Idle without burning the CPU: the canary is polled, but between polls it halts until a
//! one-shot local-APIC timer interrupt (Intel SDM vol. 3A 11.5.4) wakes it. Only the wake-up
//! itself runs with interrupts on (`sti; hlt; cli`); every vector from 32 up goes to a stub
//! that sends EOI and returns. The 8259 PICs are masked (firmware leaves the PIT's IRQ 0 on
//! vector 8 in virtual-wire mode, which would look like a double fault).
//!
//! Used only when Hyper-V is not in charge of the interrupt controller (the Hyper-V code
//! programs SynIC/stimer vectors of its own); otherwise the canary keeps spinning.
use super::port::outb;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const APIC_BASE_MSR: u32 = 0x1b;
const X2APIC_ENABLE: u64 = 1 << 10;
const XAPIC_MMIO: u64 = 0xfee0_0000;
// Register offsets (SDM vol. 3A table 11-1); x2APIC MSR = 0x800 + offset / 16.
const EOI: u32 = 0xb0;
const SVR: u32 = 0xf0;
const LVT_TIMER: u32 = 0x320;
const INITIAL_COUNT: u32 = 0x380;
const CURRENT_COUNT: u32 = 0x390;
const DIVIDE: u32 = 0x3e0;

pub const WAKE_VECTOR: u8 = 0x40;
const SPURIOUS_VECTOR: u8 = 0xff;

static READY: AtomicBool = AtomicBool::new(false);
static X2APIC: AtomicBool = AtomicBool::new(false);
/// APIC timer ticks per microsecond, times 1024.
static TICKS_PER_US_1024: AtomicU64 = AtomicU64::new(0);

fn rdmsr(msr: u32) -> u64 {
    // SAFETY: reads an architectural MSR the caller checked exists.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

fn wrmsr(msr: u32, v: u64) {
    // SAFETY: writes an architectural MSR the caller checked exists.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(v) }
}

fn write(reg: u32, v: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        wrmsr(0x800 + reg / 16, v as u64);
    } else {
        // SAFETY: the xAPIC page (identity-mapped) of this CPU.
        unsafe { core::ptr::write_volatile((XAPIC_MMIO + reg as u64) as *mut u32, v) };
    }
}

fn read(reg: u32) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        rdmsr(0x800 + reg / 16) as u32
    } else {
        // SAFETY: the xAPIC page (identity-mapped) of this CPU.
        unsafe { core::ptr::read_volatile((XAPIC_MMIO + reg as u64) as *const u32) }
    }
}

/// Called from the wake stub (interrupts off there): end of interrupt.
pub extern "sysv64" fn eoi() {
    write(EOI, 0);
}

/// Sets the APIC timer up (one-shot, masked until `idle`), calibrated against the TSC.
/// Returns false (and idling stays a spin) when there is no local APIC.
pub fn init() -> bool {
    use core::arch::x86_64::__cpuid;
    if __cpuid(1).edx & (1 << 9) == 0 {
        return false;
    }
    let base = rdmsr(APIC_BASE_MSR);
    if base & (1 << 11) == 0 {
        return false; // globally disabled by firmware
    }
    X2APIC.store(base & X2APIC_ENABLE != 0, Ordering::Relaxed);
    if !X2APIC.load(Ordering::Relaxed) && base & !0xfff & 0xf_ffff_ffff_f000 != XAPIC_MMIO {
        return false; // relocated xAPIC page: not in our identity map's known layout
    }
    // SAFETY: mask both 8259s (OCW1).
    unsafe {
        outb(0x21, 0xff);
        outb(0xa1, 0xff);
    }
    write(SVR, 0x100 | SPURIOUS_VECTOR as u32); // software enable
    write(DIVIDE, 0b1011); // divide by 1
    write(LVT_TIMER, 1 << 16 | WAKE_VECTOR as u32); // masked, one-shot
                                                    // Calibrate: count down from the top for ~1 ms of TSC time.
    write(INITIAL_COUNT, u32::MAX);
    let t0 = super::timer::now_us();
    while super::timer::now_us() - t0 < 1000 {
        core::hint::spin_loop();
    }
    let dt = (super::timer::now_us() - t0).max(1);
    let ticks = u32::MAX - read(CURRENT_COUNT);
    write(INITIAL_COUNT, 0);
    if ticks == 0 {
        return false;
    }
    TICKS_PER_US_1024.store(ticks as u64 * 1024 / dt, Ordering::Relaxed);
    READY.store(true, Ordering::Release);
    log::info!(
        "idle: local APIC timer ({}), {} ticks/us",
        if X2APIC.load(Ordering::Relaxed) {
            "x2APIC"
        } else {
            "xAPIC"
        },
        ticks as u64 / dt
    );
    true
}

/// Halts for about `us` microseconds (or until any interrupt); a spin when the APIC timer
/// is not set up.
pub fn idle(us: u64) {
    if !READY.load(Ordering::Acquire) || us == 0 {
        core::hint::spin_loop();
        return;
    }
    let count = (us * TICKS_PER_US_1024.load(Ordering::Relaxed) / 1024).clamp(1, u32::MAX as u64);
    write(LVT_TIMER, WAKE_VECTOR as u32); // unmasked, one-shot
    write(INITIAL_COUNT, count as u32);
    // Interrupts on only across the halt; every vector >= 32 has the EOI-and-return stub,
    // exceptions keep their panic-path entries. `sti` takes effect after `hlt` starts (the
    // crate's `enable_and_hlt` is `sti; hlt`), so a timer that already expired still wakes us.
    ::x86_64::instructions::interrupts::enable_and_hlt();
    ::x86_64::instructions::interrupts::disable();
    write(LVT_TIMER, 1 << 16 | WAKE_VECTOR as u32);
    write(INITIAL_COUNT, 0);
}
