//! Conversion of capture's decoded records into the stored form ([`RecordFields`]).

use capture::panic::Step;
use capture::record::{Arch, BootMode, CrashKind, CrashRecord};
use serde_json::json;

use crate::store::{LocationView, RecordFields, StepView};

/// Name of an arch code as carried in heartbeats and records.
pub fn arch_code_name(code: u8) -> String {
    arch_name(Arch::from(code))
}

/// Name of an architecture.
pub fn arch_name(a: Arch) -> String {
    match a {
        Arch::X86_64 => "x86_64".into(),
        Arch::Aarch64 => "aarch64".into(),
        Arch::Other(o) => format!("other({o})"),
    }
}

fn boot_mode_name(b: BootMode) -> String {
    match b {
        BootMode::Uefi => "uefi".into(),
        BootMode::Pvh => "pvh".into(),
        BootMode::LinuxBoot => "linux-boot".into(),
        BootMode::DirectAarch64 => "direct-aarch64".into(),
        BootMode::Other(o) => format!("other({o})"),
    }
}

fn step_name(s: Step) -> String {
    match s {
        Step::Other(o) => format!("step {o}"),
        s => s.name().to_string(),
    }
}

fn hex64(v: u64) -> String {
    format!("{v:#x}")
}

/// The stored form of a decoded record.
pub fn fields(r: &CrashRecord) -> RecordFields {
    let (kind, kind_detail) = match r.kind {
        CrashKind::Panic => ("panic", None),
        CrashKind::Fault { vector, addr } => (
            "fault",
            Some(json!({"vector": hex64(vector), "addr": hex64(addr)})),
        ),
        CrashKind::SelfCheck => ("self-check", None),
        CrashKind::Drill => ("drill", None),
        CrashKind::Other { code, a, b } => (
            "other",
            Some(json!({"code": code, "a": hex64(a), "b": hex64(b)})),
        ),
    };
    let h = &r.hypervisor;
    RecordFields {
        build_id: r.build_id.as_str().into(),
        arch: arch_name(r.arch),
        boot_mode: boot_mode_name(r.boot_mode),
        hypervisor: json!({
            "present": h.present,
            "vendor": h.vendor.as_str(),
            "version": h.version.iter().map(|v| format!("{v:#010x}")).collect::<Vec<_>>(),
            "privileges": hex64(h.privileges),
        }),
        vmbus_version: r.vmbus_version.map(|(a, b)| format!("{a}.{b}")),
        uptime_us: r.uptime_us,
        kind: kind.into(),
        kind_detail,
        message: r.message.as_str().into(),
        location: r.location.as_ref().map(|l| LocationView {
            file: l.file.as_str().into(),
            line: l.line,
            column: l.column,
        }),
        registers: json!({
            "pc": hex64(r.registers.pc),
            "sp": hex64(r.registers.sp),
            "fp": hex64(r.registers.fp),
            "gpr": r.registers.gpr.iter().map(|v| hex64(*v)).collect::<Vec<_>>(),
        }),
        backtrace: r.backtrace.iter().map(|v| hex64(*v)).collect(),
        log_tail: r.log_tail.as_str().into(),
        steps: r
            .steps
            .iter()
            .map(|s| StepView {
                step: step_name(s.step),
                outcome: s.outcome.to_string(),
                elapsed_us: s.elapsed_us,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_record_converts_every_field() {
        let r = capture::testutil::sample_record(3);
        let f = fields(&r);
        assert_eq!(f.arch, "x86_64");
        assert_eq!(f.kind, "self-check");
        assert_eq!(f.message, r.message.as_str());
        assert_eq!(f.location.as_ref().unwrap().line, 214);
        assert_eq!(f.backtrace.len(), r.backtrace.len());
        assert_eq!(f.steps.len(), r.steps.len());
        assert_eq!(f.steps[0].step, Step::Freeze.name());
        assert_eq!(f.vmbus_version.as_deref(), Some("5.3"));
        assert_eq!(f.hypervisor["vendor"], "Microsoft Hv");
    }
}
