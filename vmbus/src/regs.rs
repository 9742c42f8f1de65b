//! Synthetic registers: logical names, their x86 MSR numbers and arm64 register ids, and the
//! register layouts as bitfield newtypes.
//!
//! Sources: ref §3.2 (x86 MSRs) and §3.3 (arm64 ids), i.e. Linux `include/hyperv/hvgdk_mini.h`
//! (`HV_X64_MSR_*`, `HV_REGISTER_*`) and FreeBSD `sys/dev/hyperv/vmbus/aarch64/hyperv_reg.h`.

use bitfield_struct::bitfield;

/// A synthetic register by name. Each arch maps it to its own address space.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SynReg {
    GuestOsId,
    /// x86 only: the hypercall page MSR.
    Hypercall,
    VpIndex,
    TimeRefCount,
    ReferenceTsc,
    Scontrol,
    Sversion,
    Siefp,
    Simp,
    Eom,
    /// SINT0..15.
    Sint(u8),
    /// STIMER0..3 CONFIG.
    StimerConfig(u8),
    /// STIMER0..3 COUNT.
    StimerCount(u8),
    /// CRASH_P0..P4.
    CrashP(u8),
    CrashCtl,
    /// arm64 only (x86 uses CPUID 0x40000002).
    HypervisorVersion,
    /// arm64 only (x86 uses CPUID 0x40000003).
    PrivilegesAndFeatures,
    /// arm64 only (x86 uses CPUID 0x40000004).
    FeaturesInfo,
}

/// x86 MSR numbers (ref §3.2, Linux `hvgdk_mini.h` `HV_X64_MSR_*`).
pub mod msr {
    pub const GUEST_OS_ID: u32 = 0x4000_0000;
    pub const HYPERCALL: u32 = 0x4000_0001;
    pub const VP_INDEX: u32 = 0x4000_0002;
    pub const TIME_REF_COUNT: u32 = 0x4000_0020;
    pub const REFERENCE_TSC: u32 = 0x4000_0021;
    pub const SCONTROL: u32 = 0x4000_0080;
    pub const SVERSION: u32 = 0x4000_0081;
    pub const SIEFP: u32 = 0x4000_0082;
    pub const SIMP: u32 = 0x4000_0083;
    pub const EOM: u32 = 0x4000_0084;
    pub const SINT0: u32 = 0x4000_0090;
    pub const STIMER0_CONFIG: u32 = 0x4000_00B0;
    pub const STIMER0_COUNT: u32 = 0x4000_00B1;
    pub const CRASH_P0: u32 = 0x4000_0100;
    pub const CRASH_CTL: u32 = 0x4000_0105;
}

/// arm64 register ids for Get/SetVpRegisters (ref §3.3, Linux `hvgdk_mini.h`
/// `HV_REGISTER_*`, FreeBSD `aarch64/hyperv_reg.h`).
pub mod arm64_reg {
    pub const HYPERVISOR_VERSION: u32 = 0x0000_0100;
    pub const PRIVILEGES_AND_FEATURES_INFO: u32 = 0x0000_0200;
    pub const FEATURES_INFO: u32 = 0x0000_0201;
    pub const CRASH_P0: u32 = 0x0000_0210;
    pub const CRASH_CTL: u32 = 0x0000_0215;
    pub const GUEST_OS_ID: u32 = 0x0009_0002;
    pub const VP_INDEX: u32 = 0x0009_0003;
    pub const TIME_REF_COUNT: u32 = 0x0009_0004;
    pub const REFERENCE_TSC: u32 = 0x0009_0017;
    pub const SINT0: u32 = 0x000A_0000;
    pub const SCONTROL: u32 = 0x000A_0010;
    pub const SVERSION: u32 = 0x000A_0011;
    pub const SIEFP: u32 = 0x000A_0012;
    pub const SIMP: u32 = 0x000A_0013;
    pub const EOM: u32 = 0x000A_0014;
    pub const STIMER0_CONFIG: u32 = 0x000B_0000;
    pub const STIMER0_COUNT: u32 = 0x000B_0001;
}

/// The registers at one fixed address: `(name, x86 MSR, arm64 id)`, `None` where the ABI does
/// not have it. The indexed banks (SINTx, STIMERx, CRASH_Px) are [`SynReg::banked`].
const FIXED: &[(SynReg, Option<u32>, Option<u32>)] = &[
    (
        SynReg::GuestOsId,
        Some(msr::GUEST_OS_ID),
        Some(arm64_reg::GUEST_OS_ID),
    ),
    (SynReg::Hypercall, Some(msr::HYPERCALL), None),
    (
        SynReg::VpIndex,
        Some(msr::VP_INDEX),
        Some(arm64_reg::VP_INDEX),
    ),
    (
        SynReg::TimeRefCount,
        Some(msr::TIME_REF_COUNT),
        Some(arm64_reg::TIME_REF_COUNT),
    ),
    (
        SynReg::ReferenceTsc,
        Some(msr::REFERENCE_TSC),
        Some(arm64_reg::REFERENCE_TSC),
    ),
    (
        SynReg::Scontrol,
        Some(msr::SCONTROL),
        Some(arm64_reg::SCONTROL),
    ),
    (
        SynReg::Sversion,
        Some(msr::SVERSION),
        Some(arm64_reg::SVERSION),
    ),
    (SynReg::Siefp, Some(msr::SIEFP), Some(arm64_reg::SIEFP)),
    (SynReg::Simp, Some(msr::SIMP), Some(arm64_reg::SIMP)),
    (SynReg::Eom, Some(msr::EOM), Some(arm64_reg::EOM)),
    (
        SynReg::CrashCtl,
        Some(msr::CRASH_CTL),
        Some(arm64_reg::CRASH_CTL),
    ),
    (
        SynReg::HypervisorVersion,
        None,
        Some(arm64_reg::HYPERVISOR_VERSION),
    ),
    (
        SynReg::PrivilegesAndFeatures,
        None,
        Some(arm64_reg::PRIVILEGES_AND_FEATURES_INFO),
    ),
    (SynReg::FeaturesInfo, None, Some(arm64_reg::FEATURES_INFO)),
];

impl SynReg {
    /// The address of a register in an indexed bank, given the bank bases of one ABI (both
    /// ABIs use the same strides: SINTs and crash parameters 1 apart, STIMER CONFIG/COUNT
    /// pairs 2 apart). `None` for an index out of range or a fixed register.
    fn banked(
        self,
        sint0: u32,
        stimer0_config: u32,
        stimer0_count: u32,
        crash_p0: u32,
    ) -> Option<u32> {
        Some(match self {
            Self::Sint(n) if n < 16 => sint0 + n as u32,
            Self::StimerConfig(n) if n < 4 => stimer0_config + 2 * n as u32,
            Self::StimerCount(n) if n < 4 => stimer0_count + 2 * n as u32,
            Self::CrashP(n) if n < 5 => crash_p0 + n as u32,
            _ => return None,
        })
    }

    fn fixed(self) -> Option<&'static (SynReg, Option<u32>, Option<u32>)> {
        FIXED.iter().find(|r| r.0 == self)
    }

    /// The x86 MSR, or `None` for a register x86 does not have (or an index out of range).
    pub fn x86_msr(self) -> Option<u32> {
        match self.fixed() {
            Some(r) => r.1,
            None => self.banked(
                msr::SINT0,
                msr::STIMER0_CONFIG,
                msr::STIMER0_COUNT,
                msr::CRASH_P0,
            ),
        }
    }

    /// Every register with every index in range (SINT0..15, STIMER0..3, CRASH_P0..4).
    pub fn all() -> impl Iterator<Item = SynReg> {
        use SynReg::*;
        FIXED
            .iter()
            .map(|r| r.0)
            .chain((0..16).map(Sint))
            .chain((0..4).flat_map(|n| [StimerConfig(n), StimerCount(n)]))
            .chain((0..5).map(CrashP))
    }

    /// The register for an x86 MSR number: the inverse of [`SynReg::x86_msr`], derived from it
    /// so the two cannot drift apart (used by the host model; a linear search over 43 names).
    pub fn from_x86_msr(m: u32) -> Option<Self> {
        Self::all().find(|r| r.x86_msr() == Some(m))
    }

    /// The arm64 register id, or `None` for a register arm64 does not have.
    pub fn arm64_id(self) -> Option<u32> {
        match self.fixed() {
            Some(r) => r.2,
            None => self.banked(
                arm64_reg::SINT0,
                arm64_reg::STIMER0_CONFIG,
                arm64_reg::STIMER0_COUNT,
                arm64_reg::CRASH_P0,
            ),
        }
    }

    /// The register for an arm64 register id: the inverse of [`SynReg::arm64_id`], derived from
    /// it like [`SynReg::from_x86_msr`].
    pub fn from_arm64_id(id: u32) -> Option<Self> {
        Self::all().find(|r| r.arm64_id() == Some(id))
    }
}

// The layouts below are `bitfield-struct` newtypes over the raw `u64`: `from_bits(raw)`,
// `into_bits()`, a getter and a `with_*` builder per field (the builder panics on a value wider
// than its field, which only guest-built constants reach). Reserved bits (`__`) keep whatever
// the register held, so read-modify-write leaves them alone.

/// SINTx (ref §3.2): vector 7:0, masked 16, auto_eoi 17, polling 18.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SintReg {
    pub vector: u8,
    #[bits(8)]
    __: u8,
    pub masked: bool,
    pub auto_eoi: bool,
    pub polling: bool,
    #[bits(45)]
    __: u64,
}

/// SIMP, SIEFP, HYPERCALL and REFERENCE_TSC (ref §3.2): enable bit 0, (HYPERCALL: locked bit
/// 1), GPA page number in 63:12.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PageReg {
    pub enabled: bool,
    pub locked: bool,
    #[bits(10)]
    __: u16,
    /// The page's frame number (GPA >> 12).
    #[bits(52)]
    pub pfn: u64,
}

impl PageReg {
    /// The page's guest physical address.
    pub const fn gpa(self) -> u64 {
        self.pfn() << 12
    }
    /// Sets the page to the one holding `gpa` (the low 12 bits are ignored).
    pub const fn with_gpa(self, gpa: u64) -> Self {
        self.with_pfn(gpa >> 12)
    }
}

/// SCONTROL (ref §3.2): enable bit 0.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ScontrolReg {
    pub enabled: bool,
    #[bits(63)]
    __: u64,
}

/// STIMERn_CONFIG (ref §3.4): enable 0, periodic 1, lazy 2, auto_enable 3, apic_vector 11:4,
/// direct_mode 12, sintx 19:16.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct StimerConfig {
    pub enabled: bool,
    pub periodic: bool,
    pub lazy: bool,
    pub auto_enable: bool,
    pub apic_vector: u8,
    pub direct_mode: bool,
    #[bits(3)]
    __: u8,
    #[bits(4)]
    pub sintx: u8,
    #[bits(44)]
    __: u64,
}

/// CRASH_CTL (ref §3.2 / §3.7, OpenVMM `hvdef::GuestCrashCtl`): crash_notify 63,
/// crash_message 62, no_crash_dump 61, pre_os_id 60:58.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CrashCtl {
    #[bits(58)]
    __: u64,
    #[bits(3)]
    pub pre_os_id: u8,
    pub no_crash_dump: bool,
    pub notify_msg: bool,
    pub notify: bool,
}

/// GUEST_OS_ID, open-source form (ref §3.2; Linux `hvgdk_mini.h` comment on the guest ID:
/// bit 63 open source, 62:56 OS type, 55:48 OS id, 47:16 version, 15:0 build).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct GuestOsId {
    pub build: u16,
    pub version: u32,
    pub os_id: u8,
    #[bits(7)]
    pub os_type: u8,
    pub open_source: bool,
}

impl GuestOsId {
    /// canary's own id: open source, OS type 0x7F (not one of the registered open-source types
    /// Linux 1, FreeBSD 2, Xen 3, illumos 4), version `major << 16 | minor << 8 | patch`.
    pub const CANARY_OS_TYPE: u8 = 0x7f;
    pub const fn canary(major: u8, minor: u8, patch: u8) -> Self {
        Self::new()
            .with_open_source(true)
            .with_os_type(Self::CANARY_OS_TYPE)
            .with_version(((major as u32) << 16) | ((minor as u32) << 8) | patch as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_and_arm64_ids_round_trip_for_every_register() {
        let all = [
            SynReg::GuestOsId,
            SynReg::VpIndex,
            SynReg::TimeRefCount,
            SynReg::ReferenceTsc,
            SynReg::Scontrol,
            SynReg::Sversion,
            SynReg::Siefp,
            SynReg::Simp,
            SynReg::Eom,
            SynReg::Sint(2),
            SynReg::Sint(15),
            SynReg::StimerConfig(0),
            SynReg::StimerCount(0),
            SynReg::StimerConfig(3),
            SynReg::StimerCount(3),
            SynReg::CrashP(0),
            SynReg::CrashP(4),
            SynReg::CrashCtl,
        ];
        for r in all {
            assert_eq!(SynReg::from_x86_msr(r.x86_msr().unwrap()), Some(r));
            assert_eq!(SynReg::from_arm64_id(r.arm64_id().unwrap()), Some(r));
        }
        // Every name round-trips through each ABI that has it, and no two share an address.
        assert_eq!(SynReg::all().count(), 43);
        for r in SynReg::all() {
            if let Some(m) = r.x86_msr() {
                assert_eq!(SynReg::from_x86_msr(m), Some(r), "{r:?}");
            }
            if let Some(id) = r.arm64_id() {
                assert_eq!(SynReg::from_arm64_id(id), Some(r), "{r:?}");
            }
        }
        assert_eq!(SynReg::from_x86_msr(0x4000_0106), None);
        assert_eq!(SynReg::from_arm64_id(0x000B_0008), None);
        // Values from ref §3.2 / §3.3.
        assert_eq!(SynReg::Sint(2).x86_msr(), Some(0x4000_0092));
        assert_eq!(SynReg::StimerCount(0).x86_msr(), Some(0x4000_00B1));
        assert_eq!(SynReg::StimerConfig(1).x86_msr(), Some(0x4000_00B2));
        assert_eq!(SynReg::CrashCtl.x86_msr(), Some(0x4000_0105));
        assert_eq!(SynReg::Sint(2).arm64_id(), Some(0x000A_0002));
        assert_eq!(SynReg::StimerConfig(1).arm64_id(), Some(0x000B_0002));
        assert_eq!(SynReg::CrashP(3).arm64_id(), Some(0x213));
        assert_eq!(SynReg::Hypercall.arm64_id(), None);
        assert_eq!(SynReg::PrivilegesAndFeatures.x86_msr(), None);
        assert_eq!(SynReg::Sint(16).x86_msr(), None);
    }

    #[test]
    fn register_layouts_put_fields_at_documented_bits() {
        let s = SintReg::new().with_vector(0x30).with_masked(true);
        assert_eq!(s.into_bits(), 0x1_0030);
        assert_eq!(SintReg::new().with_polling(true).into_bits(), 1 << 18);
        assert_eq!(SintReg::new().with_auto_eoi(true).into_bits(), 1 << 17);
        let t = StimerConfig::new()
            .with_enabled(true)
            .with_auto_enable(true)
            .with_sintx(2);
        assert_eq!(t.into_bits(), 0x2_0009);
        let d = StimerConfig::new()
            .with_direct_mode(true)
            .with_apic_vector(0xef);
        assert_eq!(d.into_bits(), 0x1000 | 0xef0);
        assert_eq!(
            CrashCtl::new().with_notify(true).into_bits(),
            0x8000_0000_0000_0000
        );
        assert_eq!(
            CrashCtl::new()
                .with_notify(true)
                .with_notify_msg(true)
                .into_bits(),
            0xC000_0000_0000_0000
        );
        assert_eq!(CrashCtl::new().with_pre_os_id(5).into_bits(), 5 << 58);
        let p = PageReg::new().with_gpa(0x1234_5000).with_enabled(true);
        assert_eq!(p.into_bits(), 0x1234_5001);
        assert_eq!(p.gpa(), 0x1234_5000);
        // Linux's id is 0x8100 << 48 (HV_LINUX_VENDOR_ID): open source + OS type 1.
        assert_eq!(
            GuestOsId::new()
                .with_open_source(true)
                .with_os_type(1)
                .into_bits(),
            0x8100 << 48
        );
        let c = GuestOsId::canary(0, 1, 2);
        assert!(c.open_source());
        assert_eq!(c.os_type(), 0x7f);
        assert_eq!(c.version(), 0x0102);
        assert_eq!(c.into_bits() >> 48, 0xFF00);
    }

    #[test]
    fn reserved_bits_survive_read_modify_write() {
        // A host may set bits the guest does not name: changing one field keeps them.
        let raw = 0xdead_0000_0000_0ffe_u64 | (0x5a << 20);
        let p = PageReg::from_bits(raw).with_enabled(true);
        assert_eq!(p.into_bits(), raw | 1);
        let s = SintReg::from_bits(u64::MAX).with_masked(false);
        assert_eq!(s.into_bits(), !(1 << 16));
        let c = StimerConfig::from_bits(0xffff_0000_0000_e000).with_sintx(3);
        assert_eq!(c.into_bits(), 0xffff_0000_0003_e000);
    }
}
