//! Which counter frequency the deadlines run on: the rules, kept apart from the hardware so
//! they run as unit tests on the host.
//!
//! Sources, from most to least trusted:
//! - `tsc_khz=` from the configuration: the operator said so; a reference that disagrees is
//!   logged, not obeyed.
//! - the hypervisor's reference time (Hyper-V: the TSC page, else TIME_REF_COUNT, 100 ns
//!   units, ref §3.4): real time by definition. The design makes it the authority on Hyper-V
//!   (design.md, "Time in the panic path is real time").
//! - the PIT (Intel 8254, 1.193182 MHz): only when it is present. Hyper-V Gen2 has none and
//!   OpenVMM's Hyper-V chipset has none; there port 0x61 reads 0xff (an unclaimed port), and
//!   a "measurement" against it produced 228 MHz on a 2.27 GHz machine (issue 17).
//! - CPUID 0x15/0x16: what the CPU says; leaf 0x16 is the base frequency, not always the TSC's.
//! - a guess (1 GHz): deadlines are then wrong by an unknown factor; the self-check is off.

/// Where the counter frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Guess,
    Cpuid,
    Pit,
    HvReference,
    Configured,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Guess => "guess",
            Source::Cpuid => "cpuid",
            Source::Pit => "pit",
            Source::HvReference => "hyper-v reference time",
            Source::Configured => "tsc_khz",
        }
    }
}

/// The frequency in use and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub hz: u64,
    pub source: Source,
}

/// Frequencies outside this window are not a TSC (100 MHz .. 20 GHz).
pub fn plausible(hz: u64) -> bool {
    (100_000_000..20_000_000_000).contains(&hz)
}

/// Port 0x61 (system control port B) as read before the PIT is programmed, and bit 5 (OUT2)
/// read right after loading channel 2's count in mode 0, when OUT2 must be low (8254 data
/// sheet, mode 0: "OUT goes low when the count is written"). An unclaimed port reads all
/// ones, so either reading says there is no PIT behind it.
pub fn pit_present(port61_before: u8, out2_right_after_load: bool) -> bool {
    port61_before != 0xff && !out2_right_after_load
}

/// The boot-time choice without a hypervisor reference: the PIT if present and plausible,
/// else CPUID, else a guess.
pub fn at_boot(pit_hz: Option<u64>, cpuid_hz: Option<u64>) -> Choice {
    if let Some(hz) = pit_hz.filter(|h| plausible(*h)) {
        return Choice {
            hz,
            source: Source::Pit,
        };
    }
    if let Some(hz) = cpuid_hz.filter(|h| plausible(*h)) {
        return Choice {
            hz,
            source: Source::Cpuid,
        };
    }
    Choice {
        hz: 1_000_000_000,
        source: Source::Guess,
    }
}

/// What to do with a frequency measured against the hypervisor's reference time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the current frequency: it agrees with the reference within the tolerance.
    Keep,
    /// Take the reference measurement: the current one was a guess or disagrees.
    Adopt(Choice),
    /// Keep the configured frequency although the reference disagrees (logged).
    KeepConfigured,
    /// The measurement itself is implausible: ignore it.
    Ignore,
}

/// The reference clock decides: a boot-time frequency that disagrees with `measured_hz` by
/// more than `tolerance_ppm` loses; only `tsc_khz=` outranks it.
pub fn arbitrate(current: Choice, measured_hz: u64, tolerance_ppm: u64) -> Verdict {
    if !plausible(measured_hz) {
        return Verdict::Ignore;
    }
    let diff = current.hz.abs_diff(measured_hz) as u128;
    let agrees = diff * 1_000_000 <= measured_hz as u128 * tolerance_ppm as u128;
    match current.source {
        Source::Configured if agrees => Verdict::Keep,
        Source::Configured => Verdict::KeepConfigured,
        Source::Guess => Verdict::Adopt(Choice {
            hz: measured_hz,
            source: Source::HvReference,
        }),
        _ if agrees => Verdict::Keep,
        _ => Verdict::Adopt(Choice {
            hz: measured_hz,
            source: Source::HvReference,
        }),
    }
}

/// Tolerance between a boot-time calibration and the reference: 2 %. A 10 ms window against
/// a 100 ns clock is good to far better than that; the PIT against a real TSC agrees to well
/// under 1 % (measured on the nested host, docs/hyperv-real-host.md), so 2 % separates a
/// calibration from a wrong one (issue 17's was off by 90 %).
pub const TOLERANCE_PPM: u64 = 20_000;

#[cfg(test)]
mod tests {
    use super::*;

    const REF: u64 = 2_270_000_000;

    #[test]
    fn a_pit_port_reading_all_ones_is_absent_not_slow() {
        assert!(!pit_present(0xff, false));
        assert!(!pit_present(0x20, true), "OUT2 high right after the load");
        assert!(pit_present(0x20, false));
        assert!(pit_present(0x00, false));
    }

    #[test]
    fn no_pit_and_no_cpuid_is_a_guess_and_the_reference_is_adopted() {
        let boot = at_boot(None, None);
        assert_eq!(boot.source, Source::Guess);
        assert_eq!(
            arbitrate(boot, REF, TOLERANCE_PPM),
            Verdict::Adopt(Choice {
                hz: REF,
                source: Source::HvReference
            })
        );
    }

    #[test]
    fn a_calibration_ten_times_off_inside_the_plausible_window_loses_to_the_reference() {
        // Issue 17 on OpenVMM: 228 MHz measured against a PIT that is not there.
        let boot = at_boot(Some(228_000_000), None);
        assert_eq!(boot.source, Source::Pit);
        assert_eq!(
            arbitrate(boot, REF, TOLERANCE_PPM),
            Verdict::Adopt(Choice {
                hz: REF,
                source: Source::HvReference
            })
        );
        let cpuid = at_boot(None, Some(3_000_000_000));
        assert!(matches!(
            arbitrate(cpuid, REF, TOLERANCE_PPM),
            Verdict::Adopt(_)
        ));
    }

    #[test]
    fn a_calibration_within_the_tolerance_is_kept() {
        let boot = at_boot(Some(REF + REF / 100), None); // 1 % off
        assert_eq!(arbitrate(boot, REF, TOLERANCE_PPM), Verdict::Keep);
        let boot = at_boot(Some(REF + REF / 40), None); // 2.5 % off
        assert!(matches!(
            arbitrate(boot, REF, TOLERANCE_PPM),
            Verdict::Adopt(_)
        ));
    }

    #[test]
    fn the_configuration_outranks_the_reference_and_an_implausible_measurement_is_ignored() {
        let cfg = Choice {
            hz: 1_000_000_000,
            source: Source::Configured,
        };
        assert_eq!(arbitrate(cfg, REF, TOLERANCE_PPM), Verdict::KeepConfigured);
        assert_eq!(arbitrate(cfg, 1_000_000_000, TOLERANCE_PPM), Verdict::Keep);
        let pit = at_boot(Some(REF), None);
        assert_eq!(arbitrate(pit, 12_345, TOLERANCE_PPM), Verdict::Ignore);
        assert_eq!(arbitrate(pit, u64::MAX, TOLERANCE_PPM), Verdict::Ignore);
    }

    #[test]
    fn implausible_boot_measurements_fall_through() {
        assert_eq!(at_boot(Some(5), Some(REF)).source, Source::Cpuid);
        assert_eq!(at_boot(Some(u64::MAX), Some(1)).source, Source::Guess);
    }
}
