//! Sample records for tests, benches and the collector's tests (`std` only).

use crate::panic::{Outcome, SkipReason, Step, StepRecord};
use crate::record::*;

/// A typical record: a ~60-character message, a location, 12 backtrace frames, about 600
/// bytes of log tail, a full x86_64 register set and all seven steps. Deterministic in `seq`.
pub fn sample_record(seq: u32) -> CrashRecord {
    let mut r = CrashRecord::empty();
    r.set_build_id("canary-0.1.0-g1a2b3c4");
    r.boot_id = boot_id(seq / 16);
    r.seq = seq;
    r.arch = Arch::X86_64;
    r.boot_mode = BootMode::Uefi;
    r.hypervisor = HypervisorInfo {
        present: true,
        vendor: truncate_to("Microsoft Hv"),
        version: [20348, 0x000a_0000, 0, 0x0100_0b8e],
        privileges: 0x0000_2e7f,
    };
    r.vmbus_version = Some((5, 3));
    r.uptime_us = 12_345_678 + u64::from(seq) * 1_000;
    r.set_message(&format!(
        "self-check: ring buffer write index out of range (seq {seq:>5})"
    ));
    r.location = Some(Location {
        file: truncate_to("appliance/src/workload.rs"),
        line: 214,
        column: 17,
    });
    r.kind = CrashKind::SelfCheck;
    for i in 0..18u64 {
        let _ = r
            .registers
            .gpr
            .push(0x0020_0000 + i * 0x1_0f37 + u64::from(seq));
    }
    r.registers.pc = 0x0020_4a1c;
    r.registers.sp = 0x0030_ff40;
    r.registers.fp = 0x0030_ff90;
    for i in 0..12u64 {
        let _ = r.backtrace.push(0x0020_1000 + i * 0x3a7);
    }
    let mut log = String::new();
    let mut n = 0;
    while log.len() < 600 {
        log.push_str(&format!(
            "[{:>6}.{:03}] vmbus: channel {} offer accepted\n",
            n,
            n * 7 % 1000,
            n % 9
        ));
        n += 1;
    }
    r.set_log_tail(&log[log.len() - 600..]);
    let outcomes = [
        (Step::Freeze, Outcome::Done, 12),
        (Step::ScreenFlush, Outcome::SkippedBusy, 3),
        (Step::VmbusUnload, Outcome::Done, 1_850),
        (Step::ArchCleanup, Outcome::Done, 40),
        (Step::Ship, Outcome::Pending, 0),
        (
            Step::CrashRegisters,
            Outcome::Skipped(SkipReason::NotNeeded),
            1,
        ),
        (Step::End, Outcome::Pending, 0),
    ];
    for (step, outcome, elapsed_us) in outcomes {
        let _ = r.steps.push(StepRecord {
            step,
            outcome,
            elapsed_us,
        });
    }
    r
}

/// A boot id derived from `n` (distinct for distinct `n`).
pub fn boot_id(n: u32) -> [u8; 16] {
    let mut id = [0xb0u8; 16];
    id[..4].copy_from_slice(&n.to_le_bytes());
    id
}

/// A record with every bounded field full and every integer at its largest varint size.
pub fn max_record() -> CrashRecord {
    let mut r = CrashRecord::empty();
    r.build_id = truncate_to(&"b".repeat(BUILD_ID_CAP));
    r.boot_id = [0xff; 16];
    r.seq = u32::MAX;
    r.arch = Arch::Other(0xff);
    r.boot_mode = BootMode::Other(0xff);
    r.hypervisor = HypervisorInfo {
        present: true,
        vendor: truncate_to(&"v".repeat(VENDOR_CAP)),
        version: [u32::MAX; 4],
        privileges: u64::MAX,
    };
    r.vmbus_version = Some((u16::MAX, u16::MAX));
    r.uptime_us = u64::MAX;
    r.message = truncate_to(&"m".repeat(MESSAGE_CAP));
    r.location = Some(Location {
        file: truncate_to(&"f".repeat(FILE_CAP)),
        line: u32::MAX,
        column: u32::MAX,
    });
    r.kind = CrashKind::Other {
        code: 0xff,
        a: u64::MAX,
        b: u64::MAX,
    };
    while r.registers.gpr.push(u64::MAX).is_ok() {}
    r.registers.pc = u64::MAX;
    r.registers.sp = u64::MAX;
    r.registers.fp = u64::MAX;
    while r.backtrace.push(u64::MAX).is_ok() {}
    r.log_tail = tail_of(&"l".repeat(LOG_TAIL_CAP));
    while r
        .steps
        .push(StepRecord {
            step: Step::Other(0xff),
            outcome: Outcome::Other(0xff, u32::MAX),
            elapsed_us: u32::MAX,
        })
        .is_ok()
    {}
    while r
        .ext
        .stacks
        .push(StackUse {
            name: truncate_to(&"s".repeat(STACK_NAME_CAP)),
            size: u32::MAX,
            used: u32::MAX,
        })
        .is_ok()
    {}
    r.ext.backtrace_end = BacktraceEnd::Other(0xff);
    r.ext.takeovers = 0xff;
    r.ext.image_id_kind = ImageIdKind::Other(0xff);
    while r.ext.image_id.push(0xff).is_ok() {}
    r.ext.load_base = u64::MAX;
    r.ext.code_at = u64::MAX;
    while r.ext.code.push(0xff).is_ok() {}
    r.ext.stack_at = u64::MAX;
    while r.ext.stack.push(0xff).is_ok() {}
    r.ident = max_identity();
    r
}

/// An identity group with every string full.
pub fn max_identity() -> crate::identity::Identity {
    use crate::identity::*;
    Identity {
        smbios_status: SmbiosStatus::Other(0xff),
        smbios: Some(Smbios {
            version: (0xff, 0xff),
            uuid: [0xff; 16],
            manufacturer: truncate_to(&"M".repeat(SMBIOS_STR_CAP)),
            product: truncate_to(&"P".repeat(SMBIOS_STR_CAP)),
            serial: truncate_to(&"S".repeat(SMBIOS_STR_CAP)),
        }),
        kvp_status: KvpStatus::Other(0xff),
        kvp: Kvp {
            vm_name: truncate_to(&"n".repeat(KVP_NAME_CAP)),
            vm_id: truncate_to(&"i".repeat(KVP_ID_CAP)),
            host_name: truncate_to(&"h".repeat(KVP_NAME_CAP)),
            host_fqdn: truncate_to(&"q".repeat(KVP_FQDN_CAP)),
        },
    }
}
