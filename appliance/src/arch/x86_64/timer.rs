//! Time: the TSC, calibrated at boot against PIT channel 2 (1.193182 MHz, Intel 8254 data
//! sheet; the gate/OUT bits of port 0x61 as on every PC since the AT) when there is a PIT,
//! else CPUID; on Hyper-V the reference time then decides (`crate::clock::arbitrate`, called
//! from `crate::hyperv`).
use super::port::{inb, outb};
use crate::clock::{Choice, Source};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

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

/// Whether a PIT is behind ports 0x42/0x43/0x61: port 0x61 does not read all ones, and OUT2
/// is low right after channel 2 is loaded with the longest count (0xffff ticks, 55 ms: even
/// nested under load, where each port access is a VM exit of 0.1 ms or more, that does not
/// run out between the load and the read) (`clock::pit_present`).
fn pit_probe() -> bool {
    // SAFETY: PIT channel 2 with the speaker output disabled; standard programming. On a
    // machine without a PIT these ports are unclaimed: reads give 0xff, writes go nowhere.
    unsafe {
        let p61 = inb(0x61);
        if p61 == 0xff {
            return false;
        }
        outb(0x61, (p61 & !0x02) | 0x01); // gate on, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, 0xff);
        outb(0x42, 0xff);
        let out2 = inb(0x61) & 0x20 != 0;
        outb(0x61, p61);
        crate::clock::pit_present(p61, out2)
    }
}

/// Measures the TSC over `ticks` PIT ticks; None if the window is unusable (OUT2 already high
/// when first read: the window ran out before we looked, e.g. the vCPU was descheduled) or
/// the PIT never fires.
fn pit_measure(ticks: u16) -> Option<u64> {
    // SAFETY: as in `pit_probe`.
    unsafe {
        let p61 = inb(0x61);
        outb(0x61, (p61 & !0x02) | 0x01); // gate on, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, ticks as u8);
        // Counting starts with the high byte's write: read the TSC just before it (nested,
        // the write itself is a VM exit of 0.1 ms or more).
        let start = rdtsc();
        outb(0x42, (ticks >> 8) as u8);
        if inb(0x61) & 0x20 != 0 {
            outb(0x61, p61);
            return None;
        }
        let mut spins = 0u64;
        while inb(0x61) & 0x20 == 0 {
            spins += 1;
            if spins > 50_000_000 {
                outb(0x61, p61);
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
    // Three 10 ms windows, the median wins. Each poll of port 0x61 is a VM exit under a
    // hypervisor (0.1-1 ms nested under load), so the end of a window is seen late by up to
    // one poll: a 10 ms window keeps that within ~10 %, and the median drops a window in which
    // the vCPU was descheduled. On Hyper-V the reference time then decides anyway.
    let ticks = 11932u16;
    let mut w = [0u64; 3];
    let mut n = 0;
    if pit_probe() {
        for _ in 0..3 {
            if let Some(d) = pit_measure(ticks) {
                w[n] = d;
                n += 1;
            }
        }
    }
    w[..n].sort_unstable();
    let pit = (n > 0).then(|| w[n / 2]);
    let pit_hz = pit.map(|d| d * PIT_HZ / ticks as u64);
    set(crate::clock::at_boot(pit_hz, cpuid_hz()));
}

/// Whether the frequency came from a measurement, CPUID or the configuration (and not a
/// guess): the timer self-check compares against the reference clock only then.
pub fn calibrated() -> bool {
    source() != Source::Guess
}

static SOURCE: AtomicU8 = AtomicU8::new(0);
const SOURCES: [Source; 5] = [
    Source::Guess,
    Source::Cpuid,
    Source::Pit,
    Source::HvReference,
    Source::Configured,
];

/// Where the frequency in use came from.
pub fn source() -> Source {
    SOURCES[SOURCE.load(Ordering::Relaxed) as usize % SOURCES.len()]
}

/// The frequency in use and its source.
pub fn choice() -> Choice {
    Choice {
        hz: counter_hz(),
        source: source(),
    }
}

/// Sets the counter frequency (calibration, `tsc_khz=`, or the hypervisor's reference time).
/// `now_us` stays continuous across the change: time already elapsed is kept.
pub fn set(c: Choice) {
    let t = rdtsc();
    let elapsed = now_us_at(t);
    let hz = c.hz.max(1);
    MULT.store(
        ((1_000_000u128 << 32) / hz as u128) as u64,
        Ordering::Relaxed,
    );
    HZ.store(hz, Ordering::Relaxed);
    // Rebase so that now_us(t) == elapsed with the new rate.
    let ticks_for_elapsed = (elapsed as u128 * hz as u128 / 1_000_000) as u64;
    TSC0.store(t.wrapping_sub(ticks_for_elapsed), Ordering::Relaxed);
    SOURCE.store(
        SOURCES.iter().position(|s| *s == c.source).unwrap_or(0) as u8,
        Ordering::Relaxed,
    );
}

pub fn counter_hz() -> u64 {
    HZ.load(Ordering::Relaxed)
}

/// Microseconds since `init`.
pub fn now_us() -> u64 {
    now_us_at(rdtsc())
}

fn now_us_at(tsc: u64) -> u64 {
    let d = tsc.wrapping_sub(TSC0.load(Ordering::Relaxed));
    ((d as u128 * MULT.load(Ordering::Relaxed) as u128) >> 32) as u64
}
