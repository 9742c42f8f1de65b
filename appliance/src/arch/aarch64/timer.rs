//! Time from the generic timer (Arm ARM D11): the virtual counter CNTVCT_EL0 at CNTFRQ_EL0 Hz.
//! The virtual counter rather than CNTPCT_EL0: it is what EL1 guests are meant to read (KVM and
//! Hyper-V may trap EL1 physical-counter reads; Linux's arm_arch_timer uses it in guests), and
//! on QEMU `virt` without EL2 the two are equal (CNTVOFF = 0).
use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTVCT_EL0};
use core::sync::atomic::{AtomicU64, Ordering};

static T0: AtomicU64 = AtomicU64::new(0);
/// Microseconds per tick as 32.32 fixed point.
static MULT: AtomicU64 = AtomicU64::new(0);
static HZ: AtomicU64 = AtomicU64::new(0);

/// CNTFRQ_EL0 when firmware left it 0: QEMU's generic-timer default, 1 GHz / GTIMER_SCALE 16
/// (QEMU `target/arm/internals.h`).
const FALLBACK_HZ: u64 = 62_500_000;

#[inline]
pub fn counter() -> u64 {
    // The isb keeps the read from being hoisted above earlier instructions.
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

pub fn init() {
    let hz = CNTFRQ_EL0.get();
    let hz = if hz == 0 {
        FALLBACK_HZ
    } else {
        hz & 0xffff_ffff
    };
    HZ.store(hz, Ordering::Relaxed);
    MULT.store(
        ((1_000_000u128 << 32) / hz as u128) as u64,
        Ordering::Relaxed,
    );
    T0.store(counter(), Ordering::Relaxed);
}

pub fn counter_hz() -> u64 {
    HZ.load(Ordering::Relaxed)
}

/// Microseconds since `init`.
pub fn now_us() -> u64 {
    let d = counter().wrapping_sub(T0.load(Ordering::Relaxed));
    ((d as u128 * MULT.load(Ordering::Relaxed) as u128) >> 32) as u64
}
