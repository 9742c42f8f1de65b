//! arm64: hypercalls are SMCCC `HVC #0` with function id 0x46000001; synthetic registers go
//! through HvSetVpRegisters (fast) and HvGetVpRegisters (SMCCC 1.2, results in x6/x7).
//! Sources: ref §3.3, §3.5 (Linux `arch/arm64/hyperv/hv_core.c`, FreeBSD
//! `sys/dev/hyperv/vmbus/aarch64/hyperv_machdep.c`); detection: ref §3.1 (vendor-hyp UID,
//! Linux `arch/arm64/include/asm/mshyperv.h` `ARM_SMCCC_VENDOR_HYP_UID_HYPERV_REG_*`).

use crate::detect::{HvIdentity, Privileges};
use crate::hypercall::{code, Control};
use crate::platform::{Arch, Hypervisor, PageAlloc};
use crate::regs::{GuestOsId, SynReg};
use crate::status::{HvError, HvResult};

/// `ARM_SMCCC_CALL_VAL(STD_CALL, SMC_64, OWNER_VENDOR_HYP, 1)` (ref §3.5). Not 0xC6000001,
/// which would set the fast-call bit.
pub const HV_FUNC_ID: u64 = 0x4600_0001;
/// `ARM_SMCCC_VENDOR_HYP_CALL_UID_FUNC_ID`: fast call, SMC32, owner vendor-hyp (6), function
/// 0xFF01.
pub const VENDOR_HYP_CALL_UID: u64 = 0x8600_FF01;
/// Hyper-V's vendor-hyp UID as returned in w0..w3 (UUID 58ba324d-6447-24cd-756c-ef8e24705916,
/// ref §3.1; Linux `ARM_SMCCC_VENDOR_HYP_UID_HYPERV_REG_0..3`).
pub const HYPERV_UID: [u32; 4] = [0x4d32_ba58, 0xcd24_4764, 0x8eef_6c75, 0x1659_7024];
/// SMCCC "not supported" (-1).
pub const SMCCC_RET_NOT_SUPPORTED: u64 = u64::MAX;
/// `PSCI_FEATURES` (PSCI 1.0, function 0x8400000A): a PSCI call, so any PSCI conduit
/// answers it; Linux `psci_init_smccc` asks it about SMCCC_VERSION first.
pub const PSCI_FEATURES: u64 = 0x8400_000A;
/// `ARM_SMCCC_VERSION_FUNC_ID`.
pub const SMCCC_VERSION: u64 = 0x8000_0000;
/// SMCCC 1.1, the minimum for vendor calls (Linux `ARM_SMCCC_VERSION_1_1`).
pub const SMCCC_VERSION_1_1: u32 = 0x1_0001;

/// The SMCCC version behind the HVC conduit, asked the way Linux `psci_init_smccc` does:
/// PSCI_FEATURES(SMCCC_VERSION) first, then SMCCC_VERSION. `None` if not implemented. Call
/// only when the firmware says the PSCI conduit is HVC (ACPI FADT `PSCI_USE_HVC`, or DT
/// `method = "hvc"`).
pub fn smccc_version(conduit: &(impl Smccc + ?Sized)) -> Option<u32> {
    let mut r = [0u64; 18];
    r[0] = PSCI_FEATURES;
    r[1] = SMCCC_VERSION;
    conduit.call(&mut r);
    if (r[0] as i32) < 0 {
        return None;
    }
    let mut r = [0u64; 18];
    r[0] = SMCCC_VERSION;
    conduit.call(&mut r);
    let v = r[0] as i32;
    (v > 0).then_some(v as u32)
}
/// `HV_PARTITION_ID_SELF` (ref §3.5).
pub const HV_PARTITION_ID_SELF: u64 = u64::MAX;
/// `HV_VP_INDEX_SELF` (ref §3.5).
pub const HV_VP_INDEX_SELF: u64 = 0xFFFF_FFFE;

/// One SMCCC 1.2 conduit call: x0..x17 in, x0..x17 out. `Native` executes `hvc #0`; the sim
/// models it.
pub trait Smccc: Sync {
    fn call(&self, regs: &mut [u64; 18]);
}

/// [`Hypervisor`] over SMCCC hypercalls.
pub struct Arm64Hv<C> {
    conduit: C,
}

impl<C: Smccc> Arm64Hv<C> {
    pub const fn new(conduit: C) -> Self {
        Self { conduit }
    }
    pub fn conduit(&self) -> &C {
        &self.conduit
    }

    /// HvGetVpRegisters for one register (Linux `hv_get_vpreg_128`): fast, rep count 1,
    /// x2 = partition self, x3 = VP self, x4 = name; value in x6 (low) / x7 (high).
    pub fn get_vp_register(&self, name: u32) -> Result<(u64, u64), HvError> {
        let mut r = [0u64; 18];
        r[0] = HV_FUNC_ID;
        r[1] = Control::new(code::GET_VP_REGISTERS)
            .with_fast(true)
            .with_rep_count(1)
            .0;
        r[2] = HV_PARTITION_ID_SELF;
        r[3] = HV_VP_INDEX_SELF;
        r[4] = name as u64;
        self.conduit.call(&mut r);
        if r[0] == SMCCC_RET_NOT_SUPPORTED {
            return Err(HvError::SmcccNotSupported(r[0]));
        }
        HvResult(r[0]).result()?;
        Ok((r[6], r[7]))
    }

    /// HvSetVpRegisters for one register (Linux `hv_set_vpreg`): fast, rep count 1, x2 =
    /// partition self, x3 = VP self, x4 = name, x5 = 0, x6/x7 = value.
    pub fn set_vp_register(&self, name: u32, value: u64) -> Result<(), HvError> {
        let mut r = [0u64; 18];
        r[0] = HV_FUNC_ID;
        r[1] = Control::new(code::SET_VP_REGISTERS)
            .with_fast(true)
            .with_rep_count(1)
            .0;
        r[2] = HV_PARTITION_ID_SELF;
        r[3] = HV_VP_INDEX_SELF;
        r[4] = name as u64;
        r[5] = 0;
        r[6] = value;
        r[7] = 0;
        self.conduit.call(&mut r);
        if r[0] == SMCCC_RET_NOT_SUPPORTED {
            return Err(HvError::SmcccNotSupported(r[0]));
        }
        HvResult(r[0]).result()
    }
}

/// Whether the SMCCC vendor-hyp UID says Hyper-V (2025+ hosts; ref §3.1).
pub fn has_hyperv_uid(conduit: &(impl Smccc + ?Sized)) -> bool {
    let mut r = [0u64; 18];
    r[0] = VENDOR_HYP_CALL_UID;
    conduit.call(&mut r);
    let uid = [r[0] as u32, r[1] as u32, r[2] as u32, r[3] as u32];
    r[0] != SMCCC_RET_NOT_SUPPORTED && uid == HYPERV_UID
}

/// arm64 detection: SMCCC ≥ 1.1 on the HVC conduit ([`smccc_version`]), then the
/// vendor-hyp UID, then the feature registers (ref §3.1). Vendor calls are only defined from
/// SMCCC 1.1, so like Linux (`psci_init_smccc`, `arm_smccc_hypervisor_has_uuid`) the version
/// is asked through PSCI first. (QEMU virt under TCG answers PSCI 1.1 but not SMCCC_VERSION:
/// `vmbus/hvtest` checks that this returns `None` without a fault.) Older hosts may not
/// answer the UID call; a kernel that found ACPI FADT `hypervisor_id == "MsHyperV"` (Linux's
/// primary arm64 check) calls [`identity`] instead.
pub fn detect(conduit: &(impl Smccc + ?Sized)) -> Option<HvIdentity> {
    if smccc_version(conduit)? < SMCCC_VERSION_1_1 || !has_hyperv_uid(conduit) {
        return None;
    }
    identity(conduit)
}

/// The identity from HvGetVpRegisters 0x200/0x201/0x100, without the UID check; `None` if
/// the hypercalls fail (not Hyper-V).
pub fn identity(conduit: &(impl Smccc + ?Sized)) -> Option<HvIdentity> {
    struct Borrowed<'a, C: ?Sized>(&'a C);
    impl<C: Smccc + ?Sized> Smccc for Borrowed<'_, C> {
        fn call(&self, regs: &mut [u64; 18]) {
            self.0.call(regs)
        }
    }
    let hv = Arm64Hv::new(Borrowed(conduit));
    use crate::regs::arm64_reg;
    // Linux arm64 hyperv_init: features = as32.a, priv_high = as32.b, misc = as32.c of
    // register 0x200; hints = as32.a of 0x201; build = a, version = b of 0x100.
    let (priv_lo, priv_hi) = hv
        .get_vp_register(arm64_reg::PRIVILEGES_AND_FEATURES_INFO)
        .ok()?;
    let (hints, _) = hv.get_vp_register(arm64_reg::FEATURES_INFO).ok()?;
    let (ver, _) = hv.get_vp_register(arm64_reg::HYPERVISOR_VERSION).ok()?;
    Some(HvIdentity {
        vendor: *b"Microsoft Hv",
        max_leaf: 0,
        build: ver as u32,
        version: (ver >> 32) as u32,
        privileges: Privileges(priv_lo),
        features: priv_hi as u32,
        recommendations: hints as u32,
    })
}

impl<C: Smccc> Hypervisor for Arm64Hv<C> {
    fn arch(&self) -> Arch {
        Arch::Aarch64
    }

    fn read_reg(&self, reg: SynReg) -> Result<u64, HvError> {
        let id = reg.arm64_id().ok_or(HvError::NoSuchRegister)?;
        Ok(self.get_vp_register(id)?.0)
    }

    fn write_reg(&self, reg: SynReg, value: u64) -> Result<(), HvError> {
        let id = reg.arm64_id().ok_or(HvError::NoSuchRegister)?;
        self.set_vp_register(id, value)
    }

    fn hypercall(&self, control: Control, input: u64, output: u64) -> Result<HvResult, HvError> {
        // Linux hv_do_hypercall: arm_smccc_1_1_hvc(HV_FUNC_ID, control, in_pa, out_pa).
        let mut r = [0u64; 18];
        r[0] = HV_FUNC_ID;
        r[1] = control.with_fast(false).0;
        r[2] = input;
        r[3] = output;
        self.conduit.call(&mut r);
        if r[0] == SMCCC_RET_NOT_SUPPORTED {
            return Err(HvError::SmcccNotSupported(r[0]));
        }
        Ok(HvResult(r[0]))
    }

    fn fast_hypercall(&self, control: Control, in1: u64, in2: u64) -> Result<HvResult, HvError> {
        let mut r = [0u64; 18];
        r[0] = HV_FUNC_ID;
        r[1] = control.with_fast(true).0;
        r[2] = in1;
        r[3] = in2;
        self.conduit.call(&mut r);
        if r[0] == SMCCC_RET_NOT_SUPPORTED {
            return Err(HvError::SmcccNotSupported(r[0]));
        }
        Ok(HvResult(r[0]))
    }

    fn detect(&self) -> Option<HvIdentity> {
        detect(&self.conduit)
    }

    fn enable_hypercalls(&self, _alloc: &dyn PageAlloc, os_id: GuestOsId) -> Result<(), HvError> {
        // No hypercall page on arm64 (ref §3.3); Linux arm64 hyperv_init writes GUEST_OS_ID.
        self.write_reg(SynReg::GuestOsId, os_id.into_bits())
    }

    fn disable_hypercalls(&self) -> Result<(), HvError> {
        self.write_reg(SynReg::GuestOsId, 0)
    }
}

#[cfg(target_arch = "aarch64")]
mod native {
    use super::Smccc;
    use core::arch::asm;

    /// The real conduit: `hvc #0` with the SMCCC 1.2 register block.
    pub struct Native;

    impl Smccc for Native {
        fn call(&self, r: &mut [u64; 18]) {
            // SAFETY: an SMCCC call to the hypervisor. Hyper-V reads/writes guest memory only
            // at the input/output GPAs passed by this crate (pages it owns). x0-x17 are
            // declared in/out, as SMCCC 1.2 allows the callee to change all of them.
            unsafe {
                asm!("hvc #0",
                     inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
                     inout("x4") r[4], inout("x5") r[5], inout("x6") r[6], inout("x7") r[7],
                     inout("x8") r[8], inout("x9") r[9], inout("x10") r[10],
                     inout("x11") r[11], inout("x12") r[12], inout("x13") r[13],
                     inout("x14") r[14], inout("x15") r[15], inout("x16") r[16],
                     inout("x17") r[17],
                     options(nostack));
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub use native::Native;

/// The hardware handle (registers act on the calling CPU).
#[cfg(target_arch = "aarch64")]
pub fn native() -> &'static Arm64Hv<Native> {
    static HV: Arm64Hv<Native> = Arm64Hv::new(Native);
    &HV
}
