//! The two register ABIs, both driving the same model: x86 (CPUID, MSRs, the hypercall page)
//! and arm64 (SMCCC `HVC #0`, Get/SetVpRegisters).

use vmbus::arch::aarch64::{
    Smccc, HV_FUNC_ID, HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF, HYPERV_UID, PSCI_FEATURES,
    SMCCC_RET_NOT_SUPPORTED, SMCCC_VERSION, VENDOR_HYP_CALL_UID,
};
use vmbus::arch::x86_64::X86Instructions;
use vmbus::hypercall::code;
use vmbus::regs::{PageReg, SynReg};
use vmbus::HvStatus;

use crate::host::{Sim, SimArch, HYPERCALL_STUB, TSC_PER_TICK};

/// One virtual processor's instruction layer.
#[derive(Clone, Copy)]
pub struct SimCpu<'s> {
    pub sim: &'s Sim,
    pub vp: u32,
}

impl SimCpu<'_> {
    fn expect_arch(&self, arch: SimArch) {
        assert_eq!(
            self.sim.config().arch,
            arch,
            "guest used the {arch:?} ABI on a sim configured for another arch"
        );
    }
}

impl X86Instructions for SimCpu<'_> {
    fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        self.expect_arch(SimArch::X86_64);
        let c = self.sim.config();
        let w = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap());
        match leaf {
            1 => [0, 0, 1 << 31, 0],
            0x4000_0000 => [0x4000_0005, w(b"Micr"), w(b"osof"), w(b"t Hv")],
            0x4000_0001 => [w(b"Hv#1"), 0, 0, 0],
            // hvhost self-test: build 0x3839, version 0x000a0000.
            0x4000_0002 => [0x3839, 0x000a_0000, 0, 0],
            0x4000_0003 => [
                c.privileges as u32,
                (c.privileges >> 32) as u32,
                0,
                c.features,
            ],
            0x4000_0004 => [0x28, 0, 0, 0],
            _ => [0; 4],
        }
    }

    fn rdmsr(&self, msr: u32) -> u64 {
        self.expect_arch(SimArch::X86_64);
        let reg = SynReg::from_x86_msr(msr)
            .unwrap_or_else(|| panic!("guest #GP: rdmsr of unmodelled MSR {msr:#x}"));
        self.sim
            .read_reg(self.vp, reg)
            .unwrap_or_else(|s| panic!("guest #GP: rdmsr {msr:#x} ({s:?})"))
    }

    fn wrmsr(&self, msr: u32, value: u64) {
        self.expect_arch(SimArch::X86_64);
        let reg = SynReg::from_x86_msr(msr)
            .unwrap_or_else(|| panic!("guest #GP: wrmsr of unmodelled MSR {msr:#x}"));
        self.sim.log_raw_write(self.vp, msr, value);
        self.sim
            .write_reg(self.vp, reg, value)
            .unwrap_or_else(|s| panic!("guest #GP: wrmsr {msr:#x} = {value:#x} ({s:?})"));
    }

    fn rdtsc(&self) -> u64 {
        self.sim.now() * TSC_PER_TICK
    }

    unsafe fn call_hypercall_page(
        &self,
        page: *const u8,
        control: u64,
        input: u64,
        output: u64,
    ) -> u64 {
        self.expect_arch(SimArch::X86_64);
        let hc = PageReg::from_bits(self.sim.read_reg(self.vp, SynReg::Hypercall).unwrap_or(0));
        assert!(
            hc.enabled(),
            "guest called the hypercall page while HYPERCALL.enable = 0"
        );
        assert_eq!(
            self.sim.mem.gpa_of(page),
            Some(hc.gpa()),
            "guest called something other than the hypercall page"
        );
        let mut stub = [0u8; 4];
        self.sim.mem.read(hc.gpa(), &mut stub);
        assert_eq!(
            stub, HYPERCALL_STUB,
            "hypercall page does not hold the hypervisor's stub"
        );
        self.sim.hypercall(self.vp, control, input, output)
    }
}

impl Smccc for SimCpu<'_> {
    fn call(&self, r: &mut [u64; 18]) {
        self.expect_arch(SimArch::Aarch64);
        if r[0] == PSCI_FEATURES {
            // PSCI 1.0: SMCCC_VERSION is implemented (0), anything else not supported.
            r[0] = if r[1] == SMCCC_VERSION && self.sim.config().smccc {
                0
            } else {
                SMCCC_RET_NOT_SUPPORTED
            };
            return;
        }
        if r[0] == SMCCC_VERSION {
            r[0] = if self.sim.config().smccc {
                0x1_0002
            } else {
                SMCCC_RET_NOT_SUPPORTED
            };
            return;
        }
        if r[0] == VENDOR_HYP_CALL_UID {
            for (i, w) in HYPERV_UID.iter().enumerate() {
                r[i] = *w as u64;
            }
            return;
        }
        if r[0] != HV_FUNC_ID {
            r[0] = SMCCC_RET_NOT_SUPPORTED;
            return;
        }
        let control = r[1];
        let code = control as u16;
        let fast = control & (1 << 16) != 0;
        let reps = (control >> 32) & 0xfff;
        let vp_regs = code == code::GET_VP_REGISTERS || code == code::SET_VP_REGISTERS;
        if vp_regs {
            // Linux hv_get_vpreg_128 / hv_set_vpreg: fast, one rep, partition self, VP self.
            if !fast || reps != 1 || r[2] != HV_PARTITION_ID_SELF || r[3] != HV_VP_INDEX_SELF {
                r[0] = HvStatus::INVALID_HYPERCALL_INPUT.0 as u64;
                return;
            }
            let id = r[4] as u32;
            let Some(reg) = SynReg::from_arm64_id(id) else {
                r[0] = HvStatus::INVALID_PARAMETER.0 as u64;
                return;
            };
            if code == code::GET_VP_REGISTERS {
                match self.sim.read_reg(self.vp, reg) {
                    Ok(v) => {
                        r[6] = v;
                        r[7] = self.sim.read_reg_high(reg);
                        r[0] = 0;
                    }
                    Err(s) => r[0] = s.0 as u64,
                }
            } else {
                self.sim.log_raw_write(self.vp, id, r[6]);
                r[0] = match self.sim.write_reg(self.vp, reg, r[6]) {
                    Ok(()) => 0,
                    Err(s) => s.0 as u64,
                };
            }
            return;
        }
        if self.sim.read_reg(self.vp, SynReg::GuestOsId).unwrap_or(0) == 0 {
            r[0] = HvStatus::ACCESS_DENIED.0 as u64;
            return;
        }
        r[0] = self.sim.hypercall(self.vp, control, r[2], r[3]);
    }
}
