//! Hypervisor detection and identity (ref §3.1).

use crate::platform::Hypervisor;

/// Partition privilege mask (x86 CPUID 0x40000003 EAX | EBX << 32; arm64 register 0x200, low
/// 64 bits). Bit positions: ref §3.1, Linux `hvgdk_mini.h` (`HV_MSR_*_AVAILABLE`,
/// `HV_POST_MESSAGES`, `HV_SIGNAL_EVENTS`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Privileges(pub u64);

impl Privileges {
    pub const TIME_REF_COUNT: u64 = 1 << 1;
    pub const SYNIC: u64 = 1 << 2;
    pub const SYNTIMER: u64 = 1 << 3;
    pub const HYPERCALL: u64 = 1 << 5;
    pub const VP_INDEX: u64 = 1 << 6;
    pub const REFERENCE_TSC: u64 = 1 << 9;
    /// EBX bit 4 (`HV_POST_MESSAGES`).
    pub const POST_MESSAGES: u64 = 1 << (32 + 4);
    /// EBX bit 5 (`HV_SIGNAL_EVENTS`).
    pub const SIGNAL_EVENTS: u64 = 1 << (32 + 5);

    pub fn has(self, bit: u64) -> bool {
        self.0 & bit == bit
    }
}

/// x86 CPUID 0x40000003 EDX (arm64: register 0x200, bits 95:64) feature bits (ref §3.1).
pub mod feature {
    /// `HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE`.
    pub const GUEST_CRASH_MSRS: u32 = 1 << 10;
    /// `HV_STIMER_DIRECT_MODE_AVAILABLE`.
    pub const STIMER_DIRECT_MODE: u32 = 1 << 19;
}

/// What the hypervisor says about itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HvIdentity {
    /// "Microsoft Hv" (x86 CPUID 0x40000000; on arm64 implied by the vendor-hyp UID).
    pub vendor: [u8; 12],
    /// x86: the highest hypervisor CPUID leaf; arm64: 0.
    pub max_leaf: u32,
    /// Host build number (CPUID 0x40000002 EAX / register 0x100 bits 31:0).
    pub build: u32,
    /// `major << 16 | minor` (CPUID 0x40000002 EBX / register 0x100 bits 63:32).
    pub version: u32,
    pub privileges: Privileges,
    /// CPUID 0x40000003 EDX / register 0x200 bits 95:64 (see [`feature`]).
    pub features: u32,
    /// CPUID 0x40000004 EAX / register 0x201 bits 31:0.
    pub recommendations: u32,
}

impl HvIdentity {
    pub fn crash_msrs(&self) -> bool {
        self.features & feature::GUEST_CRASH_MSRS != 0
    }
    pub fn stimer_direct_mode(&self) -> bool {
        self.features & feature::STIMER_DIRECT_MODE != 0
    }
    pub fn version_major(&self) -> u16 {
        (self.version >> 16) as u16
    }
    pub fn version_minor(&self) -> u16 {
        self.version as u16
    }
}

/// The hypervisor identity, or `None` when this is not Hyper-V (e.g. plain QEMU).
pub fn detect(hv: &dyn Hypervisor) -> Option<HvIdentity> {
    hv.detect()
}
