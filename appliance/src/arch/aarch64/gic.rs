//! The GIC, for one thing only: disabling a private peripheral interrupt (PPI, INTID 16-31)
//! of this CPU, as the Hyper-V cleanup step needs for the VMBus and STIMER PPIs
//! (`vmbus::InterruptControl::disable_ppi`). The canary itself is polled and never takes an
//! interrupt.
//!
//! Located from the device tree (`arm,gic-v3`: reg = GICD, GICR region; `arm,cortex-a15-gic`
//! / `arm,gic-400`: reg = GICD, GICC) or ACPI MADT (GICD structure type 0x0C with the GIC
//! version at 20; GICR structure type 0x0E; GICC type 0x0B with the GICR base at 60 and
//! MPIDR at 68: ACPI 6.5 section 5.2.12.14-5.2.12.17).
//!
//! Registers (Arm GIC architecture specification IHI 0069, chapter 12): GICD_CTLR at 0
//! (ARE_NS bit 4 in the non-secure view), GICD_ISENABLER0 / GICD_ICENABLER0 at 0x100 / 0x180
//! (banked per CPU for INTIDs 0-31: GICv2, and GICv3 without affinity routing);
//! redistributor RD_base frame: GICR_CTLR at 0 (RWP bit 3), GICR_TYPER at 8 (affinity in
//! 63:32, Last bit 4, VLPIS bit 1: 256 KiB per redistributor instead of 128 KiB); SGI_base
//! frame at RD_base + 64 KiB: GICR_ISENABLER0 / GICR_ICENABLER0 at 0x100 / 0x180.
use crate::sync::Once;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gic {
    /// GICv2 (or a GICv3 in legacy mode): the distributor's banked enable registers.
    V2 { gicd: u64 },
    /// GICv3/v4 with the redistributor region(s) starting at `gicr`.
    V3 { gicd: u64, gicr: u64, gicr_len: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GicError {
    #[error("no GIC described by the firmware")]
    NotFound,
    #[error("INTID {0} is not a PPI (16-31)")]
    NotPpi(u32),
    #[error("no redistributor for this CPU (affinity {0:#x})")]
    NoRedistributor(u32),
    #[error("redistributor write still pending after the bound")]
    Timeout,
}

static GIC: Once<Gic> = Once::new();

const GICD_CTLR: u64 = 0x0;
const GICD_CTLR_ARE_NS: u32 = 1 << 4;
const ISENABLER0: u64 = 0x100;
const ICENABLER0: u64 = 0x180;
const GICR_CTLR: u64 = 0x0;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_TYPER: u64 = 0x8;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
const SGI_FRAME: u64 = 0x1_0000;
/// Redistributors walked at most (the canary runs on a handful of CPUs).
const MAX_REDISTRIBUTORS: u64 = 1024;

/// Records the GIC the firmware describes (first one wins).
pub fn set(g: Gic) {
    GIC.set(g);
}

pub fn get() -> Option<Gic> {
    GIC.get().copied()
}

fn rd32(addr: u64) -> u32 {
    // SAFETY: GIC registers named by the firmware, mapped as device memory.
    unsafe { core::ptr::read_volatile(addr as usize as *const u32) }
}

fn wr32(addr: u64, v: u32) {
    // SAFETY: as in `rd32`.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u32, v) }
}

/// This CPU's affinity in GICR_TYPER's layout: Aff3.Aff2.Aff1.Aff0 (MPIDR_EL1 bits 39:32,
/// 23:16, 15:8, 7:0).
fn my_affinity() -> u32 {
    use aarch64_cpu::registers::{Readable, MPIDR_EL1};
    let mpidr = MPIDR_EL1.get();
    (((mpidr >> 32) & 0xff) << 24 | (mpidr & 0xff_ffff)) as u32
}

/// Where this CPU's PPI enable registers are: (set-enable, clear-enable, RWP register).
fn ppi_regs() -> Result<(u64, u64, Option<u64>), GicError> {
    match get().ok_or(GicError::NotFound)? {
        Gic::V2 { gicd } => Ok((gicd + ISENABLER0, gicd + ICENABLER0, None)),
        Gic::V3 {
            gicd,
            gicr,
            gicr_len,
        } => {
            if rd32(gicd + GICD_CTLR) & GICD_CTLR_ARE_NS == 0 {
                // Affinity routing off (QEMU's reset state on a direct boot): the
                // distributor's banked registers act, as on GICv2.
                return Ok((gicd + ISENABLER0, gicd + ICENABLER0, None));
            }
            let me = my_affinity();
            let mut rd = gicr;
            for _ in 0..MAX_REDISTRIBUTORS {
                if gicr_len != 0 && rd >= gicr + gicr_len {
                    break;
                }
                // SAFETY: inside the redistributor region; 64-bit register.
                let typer =
                    unsafe { core::ptr::read_volatile((rd + GICR_TYPER) as usize as *const u64) };
                if (typer >> 32) as u32 == me {
                    let sgi = rd + SGI_FRAME;
                    return Ok((sgi + ISENABLER0, sgi + ICENABLER0, Some(rd + GICR_CTLR)));
                }
                if typer & GICR_TYPER_LAST != 0 {
                    break;
                }
                rd += if typer & GICR_TYPER_VLPIS != 0 {
                    0x4_0000
                } else {
                    0x2_0000
                };
            }
            Err(GicError::NoRedistributor(me))
        }
    }
}

fn check_ppi(intid: u32) -> Result<u32, GicError> {
    if (16..32).contains(&intid) {
        Ok(1 << intid)
    } else {
        Err(GicError::NotPpi(intid))
    }
}

/// Disables PPI `intid` on this CPU and waits (bounded) until the redistributor applied it.
pub fn disable_ppi(intid: u32) -> Result<(), GicError> {
    let bit = check_ppi(intid)?;
    let (_, clear, rwp) = ppi_regs()?;
    wr32(clear, bit);
    if let Some(ctlr) = rwp {
        let mut spins = 0u32;
        while rd32(ctlr) & GICR_CTLR_RWP != 0 {
            spins += 1;
            if spins > 1_000_000 {
                return Err(GicError::Timeout);
            }
            core::hint::spin_loop();
        }
    }
    Ok(())
}

/// Whether PPI `intid` is enabled on this CPU.
pub fn ppi_enabled(intid: u32) -> Result<bool, GicError> {
    let bit = check_ppi(intid)?;
    let (set, _, _) = ppi_regs()?;
    Ok(rd32(set) & bit != 0)
}

/// Which registers control this CPU's PPIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The distributor's banked GICD_[IS|IC]ENABLER0.
    Distributor,
    /// This CPU's redistributor (RD_base address).
    Redistributor(u64),
}

/// Boot check of the path the panic path will take: enable the virtual-timer PPI (27, which
/// the polled canary never uses; interrupts stay masked in PSTATE), then disable it and read
/// both states back. Leaves it disabled.
pub fn self_check() -> Result<Via, &'static str> {
    const VTIMER_PPI: u32 = 27;
    let (set, _, rwp) = ppi_regs().map_err(|_| "gic: no PPI registers for this CPU")?;
    wr32(set, 1 << VTIMER_PPI);
    if ppi_enabled(VTIMER_PPI) != Ok(true) {
        return Err("gic: PPI 27 did not read back enabled");
    }
    disable_ppi(VTIMER_PPI).map_err(|_| "gic: disabling PPI 27 failed")?;
    if ppi_enabled(VTIMER_PPI) != Ok(false) {
        return Err("gic: PPI 27 still enabled after ICENABLER0");
    }
    Ok(match rwp {
        Some(ctlr) => Via::Redistributor(ctlr - GICR_CTLR),
        None => Via::Distributor,
    })
}
