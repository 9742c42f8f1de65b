//! Machine state for `show`: the record's registers by name, and fault codes spelled out.
//!
//! Register order is the record's (`capture::record::Registers::gpr`, filled by the appliance's
//! trap handlers: `appliance/src/arch/x86_64/exceptions.rs` and `arch/aarch64/exceptions.rs`).
//! Bit meanings: Intel SDM Vol. 3A §4.7 (page-fault error code) and §6.13 (error code of
//! other exceptions); Arm ARM (DDI 0487) ESR_EL1 and its ISS encodings for instruction and
//! data aborts (D17.2.37), and the fault status codes (IFSC/DFSC).

use serde::{Deserialize, Serialize};

/// x86_64 `gpr` order.
pub const X86_64_NAMES: [&str; 23] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rflags", "cs", "ss", "cr0", "cr2", "cr3", "cr4",
];

/// arm64 `gpr` names after x0..x30.
pub const AARCH64_TAIL: [&str; 3] = ["pstate", "esr", "far"];

/// One register by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedRegister {
    pub name: String,
    pub value: String,
}

/// The names of `n` registers of `arch` ("x86_64" / "aarch64"); `None` for other arches.
pub fn register_names(arch: &str, n: usize) -> Option<Vec<String>> {
    let names: Vec<String> = match arch {
        "x86_64" => X86_64_NAMES.iter().map(|s| s.to_string()).collect(),
        "aarch64" => (0..31)
            .map(|i| format!("x{i}"))
            .chain(AARCH64_TAIL.iter().map(|s| s.to_string()))
            .collect(),
        _ => return None,
    };
    Some(
        (0..n)
            .map(|i| names.get(i).cloned().unwrap_or_else(|| format!("gpr{i}")))
            .collect(),
    )
}

/// The record's `gpr` values by name (values as stored, `0x…`).
pub fn named_registers(arch: &str, gpr: &[String]) -> Vec<NamedRegister> {
    let names = register_names(arch, gpr.len())
        .unwrap_or_else(|| (0..gpr.len()).map(|i| format!("gpr{i}")).collect());
    names
        .into_iter()
        .zip(gpr)
        .map(|(name, v)| NamedRegister {
            name,
            value: v.clone(),
        })
        .collect()
}

/// A CPU fault spelled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultView {
    /// "page fault", "data abort from the same EL", ...
    pub name: String,
    /// x86_64: the vector; arm64: the exception class (ESR.EC).
    pub code: u64,
    /// x86_64: the error code, if the exception has one; arm64: the ISS.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_code: Option<u64>,
    /// The error code / ISS fields, as words ("write", "user mode", "translation fault,
    /// level 3", ...).
    pub decoded: Vec<String>,
    /// The faulting address: CR2 for #PF, FAR for aborts whose FAR is valid.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
    /// The register the address came from ("cr2", "far").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address_register: Option<String>,
}

const X86_NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "NMI",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "BOUND range exceeded (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack-segment fault (#SS)",
    "general protection (#GP)",
    "page fault (#PF)",
    "reserved 15",
    "x87 floating-point error (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating-point (#XM)",
    "virtualization exception (#VE)",
    "control protection (#CP)",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "hypervisor injection (#HV)",
    "VMM communication (#VC)",
    "security exception (#SX)",
    "reserved 31",
];

/// Vectors that push an error code (SDM Vol. 3A, Table 6-1).
fn x86_has_error_code(v: u64) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The #PF error code bits (SDM Vol. 3A §4.7).
pub fn x86_pf_bits(e: u64) -> Vec<String> {
    let mut d = vec![
        if e & 1 != 0 {
            "protection violation (P=1)"
        } else {
            "page not present (P=0)"
        }
        .to_string(),
        if e & 2 != 0 {
            "write (W/R=1)"
        } else {
            "read (W/R=0)"
        }
        .to_string(),
        if e & 4 != 0 {
            "user mode (U/S=1)"
        } else {
            "supervisor mode (U/S=0)"
        }
        .to_string(),
    ];
    for (bit, what) in [
        (3, "reserved bit set in a paging entry (RSVD)"),
        (4, "instruction fetch (I/D)"),
        (5, "protection key (PK)"),
        (6, "shadow stack (SS)"),
        (15, "SGX"),
    ] {
        if e >> bit & 1 != 0 {
            d.push(what.to_string());
        }
    }
    d
}

/// The selector error code of #TS/#NP/#SS/#GP/#AC... (SDM Vol. 3A §6.13).
fn x86_selector_bits(e: u64) -> Vec<String> {
    if e == 0 {
        return vec!["no selector (error code 0)".into()];
    }
    let table = match (e >> 1) & 3 {
        0 => "GDT",
        2 => "LDT",
        _ => "IDT",
    };
    let mut d = vec![format!("{table} index {}", (e >> 3) & 0x1fff)];
    if e & 1 != 0 {
        d.push("external event (EXT)".into());
    }
    d
}

/// The arm64 exception class names (ESR_ELx.EC), for the classes a kernel meets.
fn arm64_ec_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "WFI/WFE trapped",
        0x07 => "SVE/SIMD/FP access trapped",
        0x0e => "illegal execution state",
        0x15 => "SVC (AArch64)",
        0x16 => "HVC (AArch64)",
        0x17 => "SMC (AArch64)",
        0x18 => "MSR/MRS/system instruction trapped",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort from the same EL",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort from the same EL",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "other exception class",
    }
}

/// IFSC/DFSC (ISS[5:0] of instruction and data aborts).
fn arm64_fsc(fsc: u64) -> String {
    let lvl = fsc & 3;
    match fsc {
        0x00..=0x03 => format!("address size fault, level {lvl}"),
        0x04..=0x07 => format!("translation fault, level {lvl}"),
        0x09..=0x0b => format!("access flag fault, level {lvl}"),
        0x0d..=0x0f => format!("permission fault, level {lvl}"),
        0x10 => "synchronous external abort".into(),
        0x11 => "synchronous tag check fault".into(),
        0x14..=0x17 => format!("synchronous external abort on a table walk, level {lvl}"),
        0x18 => "synchronous parity/ECC error".into(),
        0x21 => "alignment fault".into(),
        0x30 => "TLB conflict abort".into(),
        0x31 => "unsupported atomic hardware update".into(),
        o => format!("fault status code {o:#04x}"),
    }
}

/// Spells out an ESR (and FAR when it is valid for the class).
pub fn arm64_fault(esr: u64, far: Option<u64>) -> FaultView {
    let ec = (esr >> 26) & 0x3f;
    let iss = esr & 0x1ff_ffff;
    let mut d = Vec::new();
    let abort = matches!(ec, 0x20 | 0x21 | 0x24 | 0x25);
    if abort {
        d.push(arm64_fsc(iss & 0x3f));
        let data = matches!(ec, 0x24 | 0x25);
        if data {
            d.push(
                if iss >> 6 & 1 != 0 {
                    "write (WnR=1)"
                } else {
                    "read (WnR=0)"
                }
                .into(),
            );
            if iss >> 8 & 1 != 0 {
                d.push("cache maintenance (CM)".into());
            }
            if iss >> 24 & 1 != 0 {
                d.push(format!(
                    "access size {} bytes, register x{} (ISV)",
                    1u32 << ((iss >> 22) & 3),
                    (iss >> 16) & 0x1f
                ));
            }
        }
        if iss >> 7 & 1 != 0 {
            d.push("on a stage 2 walk of stage 1 tables (S1PTW)".into());
        }
        if iss >> 9 & 1 != 0 {
            d.push("external abort (EA)".into());
        }
        if iss >> 10 & 1 != 0 {
            d.push("FAR not valid (FnV)".into());
        }
    }
    if esr >> 25 & 1 == 0 {
        d.push("16-bit instruction (IL=0)".into());
    }
    let far_valid = matches!(ec, 0x20 | 0x21 | 0x22 | 0x24 | 0x25 | 0x34 | 0x35)
        && !(abort && iss >> 10 & 1 != 0);
    let address = far.filter(|_| far_valid);
    FaultView {
        name: arm64_ec_name(ec).into(),
        code: ec,
        error_code: Some(iss),
        decoded: d,
        address: address.map(|a| format!("{a:#x}")),
        address_register: address.map(|_| "far".into()),
    }
}

/// Spells out an x86_64 fault: `code` is the record's `vector | error_code << 8`, `cr2` the
/// record's CR2 (used for #PF).
pub fn x86_fault(code: u64, cr2: Option<u64>) -> FaultView {
    let vector = code & 0xff;
    let error = code >> 8;
    let has = x86_has_error_code(vector);
    let decoded = match vector {
        14 => x86_pf_bits(error),
        10..=13 | 17 | 21 if has => x86_selector_bits(error),
        _ => Vec::new(),
    };
    let address = if vector == 14 { cr2 } else { None };
    FaultView {
        name: X86_NAMES[(vector & 31) as usize].into(),
        code: vector,
        error_code: has.then_some(error),
        decoded,
        address: address.map(|a| format!("{a:#x}")),
        address_register: address.map(|_| "cr2".into()),
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The fault of a record of kind "fault": from its `kind_detail` (`vector`, `addr`) and its
/// registers (CR2 on x86_64, FAR on arm64).
pub fn fault_of(
    arch: &str,
    kind_detail: &serde_json::Value,
    regs: &[NamedRegister],
) -> Option<FaultView> {
    let vector = parse_hex(kind_detail["vector"].as_str()?)?;
    let addr = kind_detail["addr"].as_str().and_then(parse_hex);
    let reg = |n: &str| {
        regs.iter()
            .find(|r| r.name == n)
            .and_then(|r| parse_hex(&r.value))
    };
    match arch {
        "x86_64" => Some(x86_fault(vector, reg("cr2").or(addr))),
        "aarch64" => Some(arm64_fault(vector, reg("far").or(addr))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_registers_are_named_in_the_trap_frame_order() {
        let gpr: Vec<String> = (0..23).map(|i| format!("{i:#x}")).collect();
        let r = named_registers("x86_64", &gpr);
        assert_eq!(r[0].name, "rax");
        assert_eq!(r[7].name, "rsp");
        assert_eq!(r[15].name, "r15");
        assert_eq!(r[16].name, "rflags");
        assert_eq!((r[20].name.as_str(), r[20].value.as_str()), ("cr2", "0x14"));
        assert_eq!(r[22].name, "cr4");
    }

    #[test]
    fn arm64_registers_are_x0_to_x30_then_pstate_esr_far() {
        let gpr: Vec<String> = (0..34).map(|i| format!("{i:#x}")).collect();
        let r = named_registers("aarch64", &gpr);
        assert_eq!(r[0].name, "x0");
        assert_eq!(r[30].name, "x30");
        assert_eq!(r[31].name, "pstate");
        assert_eq!(r[32].name, "esr");
        assert_eq!(r[33].name, "far");
        // Unknown arches and extra values keep positional names.
        assert_eq!(named_registers("riscv", &gpr[..1])[0].name, "gpr0");
    }

    #[test]
    fn a_supervisor_write_to_a_missing_page_is_spelled_out_with_cr2() {
        // vector 14, error code 2 (W/R=1, P=0, U/S=0).
        let f = x86_fault(14 | 2 << 8, Some(0xdead_0000));
        assert_eq!(f.name, "page fault (#PF)");
        assert_eq!(f.error_code, Some(2));
        assert_eq!(
            f.decoded,
            [
                "page not present (P=0)",
                "write (W/R=1)",
                "supervisor mode (U/S=0)"
            ]
        );
        assert_eq!(f.address.as_deref(), Some("0xdead0000"));
        assert_eq!(f.address_register.as_deref(), Some("cr2"));
        let f = x86_fault(14 | 0x11 << 8, Some(0x1000));
        assert!(f.decoded.contains(&"instruction fetch (I/D)".to_string()));
        assert!(f
            .decoded
            .contains(&"protection violation (P=1)".to_string()));
        // #GP with a selector, #UD without an error code.
        let gp = x86_fault(13 | (0x28 << 8), None);
        assert_eq!(gp.decoded, ["GDT index 5"]);
        assert_eq!(gp.address, None);
        let ud = x86_fault(6, None);
        assert_eq!(
            (ud.name.as_str(), ud.error_code),
            ("invalid opcode (#UD)", None)
        );
    }

    #[test]
    fn an_el1_data_abort_is_spelled_out_with_far() {
        // EC 0x25, IL=1, ISS: WnR=1, DFSC 0x07 (translation fault level 3).
        let esr = 0x25 << 26 | 1 << 25 | 1 << 6 | 0x07;
        let f = arm64_fault(esr, Some(0xffff_0000_dead_0000));
        assert_eq!(f.name, "data abort from the same EL");
        assert_eq!(f.code, 0x25);
        assert_eq!(f.decoded, ["translation fault, level 3", "write (WnR=1)"]);
        assert_eq!(f.address.as_deref(), Some("0xffff0000dead0000"));
        // An instruction abort, permission fault level 2.
        let f = arm64_fault(0x21 << 26 | 1 << 25 | 0x0e, Some(0x4000));
        assert_eq!(f.decoded, ["permission fault, level 2"]);
        // FnV: FAR is not valid.
        let f = arm64_fault(0x25 << 26 | 1 << 25 | 1 << 10 | 0x10, Some(0x4000));
        assert_eq!(f.address, None);
        // BRK: no FAR.
        let f = arm64_fault(0x3c << 26 | 1 << 25, Some(0x4000));
        assert_eq!((f.name.as_str(), f.address), ("BRK instruction", None));
    }

    #[test]
    fn a_stored_fault_record_finds_its_address_register() {
        let gpr: Vec<String> = (0..34).map(|i| format!("{:#x}", 0x100 + i)).collect();
        let regs = named_registers("aarch64", &gpr);
        let detail = serde_json::json!({"vector": format!("{:#x}", 0x96000045u64), "addr": "0x0"});
        let f = fault_of("aarch64", &detail, &regs).unwrap();
        assert_eq!(f.address.as_deref(), Some("0x121"));
        assert_eq!(f.decoded[0], "translation fault, level 1");
        assert!(fault_of("x86_64", &serde_json::json!({}), &regs).is_none());
    }
}
