//! Time: the TSC, calibrated at boot against PIT channel 2 (1.193182 MHz, Intel 8254 data
//! sheet; the gate/OUT bits of port 0x61 as on every PC since the AT).
use super::port::{inb, outb};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC0: AtomicU64 = AtomicU64::new(0);
/// microseconds per TSC tick, as a 32.32 fixed-point number.
static MULT: AtomicU64 = AtomicU64::new(1 << 32 >> 10); // placeholder: 1 GHz-ish until calibrated
static HZ: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;

#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc has no side effects.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

/// Measures the TSC over `ticks` PIT ticks; None if the PIT never fires.
fn pit_measure(ticks: u16) -> Option<u64> {
    // SAFETY: PIT channel 2 with the speaker output disabled; standard programming.
    unsafe {
        let p61 = inb(0x61);
        outb(0x61, (p61 & !0x02) | 0x01); // gate on, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, ticks as u8);
        outb(0x42, (ticks >> 8) as u8);
        let start = rdtsc();
        let mut spins = 0u64;
        while inb(0x61) & 0x20 == 0 {
            spins += 1;
            if spins > 50_000_000 {
                return None;
            }
        }
        let end = rdtsc();
        outb(0x61, p61);
        Some(end - start)
    }
}

/// The TSC frequency from CPUID: leaf 0x15 (TSC/crystal ratio times the crystal clock) or
/// leaf 0x16 (processor base frequency in MHz) (Intel SDM vol. 2A, CPUID).
fn cpuid_hz() -> Option<u64> {
    use core::arch::x86_64::__cpuid;
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(l.ecx as u64 * l.ebx as u64 / l.eax as u64);
        }
    }
    if max >= 0x16 {
        let mhz = __cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return Some(mhz as u64 * 1_000_000);
        }
    }
    None
}

pub fn init() {
    TSC0.store(rdtsc(), Ordering::Relaxed);
    // Three 2 ms windows; the shortest is the one least stretched by the host descheduling
    // us (under TCG on a busy host a single window can overshoot by milliseconds).
    let ticks = 2386u16;
    let plausible = |hz: &u64| (100_000_000..20_000_000_000).contains(hz);
    let pit = (0..3)
        .filter_map(|_| pit_measure(ticks))
        .min()
        .map(|d| d * PIT_HZ / ticks as u64)
        // A missing PIT (Hyper-V Gen2 has none) reads back nonsense.
        .filter(plausible);
    match pit.or_else(|| cpuid_hz().filter(plausible)) {
        Some(hz) => set_hz(hz),
        None => {
            set_hz(1_000_000_000);
            CALIBRATED.store(false, Ordering::Relaxed);
        }
    }
}

/// Whether the frequency came from a measurement, CPUID or the configuration (and not a
/// guess): the timer self-check compares against the reference clock only then.
pub fn calibrated() -> bool {
    CALIBRATED.load(Ordering::Relaxed)
}

static CALIBRATED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// Sets the counter frequency (calibration, `tsc_khz=`, or a hypervisor-reported frequency).
pub fn set_hz(hz: u64) {
    CALIBRATED.store(true, Ordering::Relaxed);
    HZ.store(hz, Ordering::Relaxed);
    MULT.store(
        ((1_000_000u128 << 32) / hz as u128) as u64,
        Ordering::Relaxed,
    );
}

pub fn counter_hz() -> u64 {
    HZ.load(Ordering::Relaxed)
}

/// Microseconds since `init`.
pub fn now_us() -> u64 {
    let d = rdtsc().wrapping_sub(TSC0.load(Ordering::Relaxed));
    ((d as u128 * MULT.load(Ordering::Relaxed) as u128) >> 32) as u64
}
