//! Synthetic timer 0 (ref §3.4; Linux `drivers/clocksource/hyperv_timer.c`).

use crate::platform::Hypervisor;
use crate::regs::{StimerConfig, SynReg};
use crate::status::HvError;

/// How STIMER0 signals expiry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StimerMode {
    /// Direct mode: an interrupt on `vector` (x86 IDT vector; arm64 PPI INTID), needs the
    /// direct-mode feature bit (CPUID 0x40000003 EDX bit 19).
    Direct { vector: u8 },
    /// Message mode: `HVMSG_TIMER_EXPIRED` in SINT `sint`'s slot (Linux uses the VMBus SINT).
    Message { sint: u8 },
}

/// STIMER0 of the calling CPU.
pub struct Stimer0;

impl Stimer0 {
    /// The CONFIG value Linux writes (`hv_stimer_init` / `hv_ce_set_oneshot`): enable |
    /// auto_enable, then direct_mode + vector, or sintx.
    pub fn config_value(mode: StimerMode) -> StimerConfig {
        let c = StimerConfig::new()
            .with_enabled(true)
            .with_auto_enable(true);
        match mode {
            StimerMode::Direct { vector } => c.with_direct_mode(true).with_apic_vector(vector),
            StimerMode::Message { sint } => c.with_sintx(sint),
        }
    }

    /// Write CONFIG. With auto_enable, a later COUNT write (re)arms the timer.
    pub fn configure(hv: &dyn Hypervisor, mode: StimerMode) -> Result<(), HvError> {
        hv.write_reg(
            SynReg::StimerConfig(0),
            Self::config_value(mode).into_bits(),
        )
    }

    /// Arm a one-shot expiry at absolute reference time `count` (100 ns units).
    pub fn arm(hv: &dyn Hypervisor, count: u64) -> Result<(), HvError> {
        hv.write_reg(SynReg::StimerCount(0), count)
    }

    /// Linux `hv_ce_shutdown`: COUNT = 0, then CONFIG = 0.
    pub fn stop(hv: &dyn Hypervisor) -> Result<(), HvError> {
        hv.write_reg(SynReg::StimerCount(0), 0)?;
        hv.write_reg(SynReg::StimerConfig(0), 0)
    }
}
