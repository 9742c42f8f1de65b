//! Per-arch SynIC/stimer cleanup for the panic path (ref §2.5; design.md step 4).

use crate::platform::{Arch, Hypervisor, InterruptControl};
use crate::status::HvError;
use crate::stimer::Stimer0;
use crate::synic::Synic;

/// The per-CPU interrupts the kernel configured (arm64 PPIs; ignored on x86).
#[derive(Clone, Copy, Debug, Default)]
pub struct CleanupConfig {
    pub vmbus_ppi: Option<u32>,
    pub stimer_ppi: Option<u32>,
}

/// What cleanup did; the first error does not stop later steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CleanupReport {
    pub stimer: Option<HvError>,
    pub synic: Option<HvError>,
    pub ppis_disabled: u8,
}

impl CleanupReport {
    pub fn ok(&self) -> bool {
        self.stimer.is_none() && self.synic.is_none()
    }
}

/// Clean up the calling CPU: STIMER0 COUNT = 0 and CONFIG = 0 (`hv_ce_shutdown`), then mask
/// SINT2, SIMP off, SIEFP off, SCONTROL = 0 (`hv_synic_disable_regs`). On arm64 the same
/// registers go through HvSetVpRegisters, and the VMBus and STIMER0 PPIs are disabled at the
/// GIC through `irq` (Linux does none of this on arm64, ref §1.4).
pub fn cleanup_cpu(
    hv: &dyn Hypervisor,
    synic: &Synic,
    irq: &mut dyn InterruptControl,
    cfg: &CleanupConfig,
) -> CleanupReport {
    let mut r = CleanupReport {
        stimer: Stimer0::stop(hv).err(),
        synic: synic.disable_cpu(hv).err(),
        ppis_disabled: 0,
    };
    if hv.arch() == Arch::Aarch64 {
        for ppi in [cfg.stimer_ppi, cfg.vmbus_ppi].into_iter().flatten() {
            irq.disable_ppi(ppi);
            r.ppis_disabled += 1;
        }
    }
    r
}
