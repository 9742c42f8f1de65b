//! Conversion of capture's decoded records into the stored form ([`RecordFields`]).

use capture::panic::{Outcome, Step};
use capture::record::{Arch, BootMode, CrashKind, CrashRecord, ImageIdKind};
use serde_json::json;

use std::fmt::Write as _;

use crate::store::{Col, LocationView, RecordFields, RowText, StepView};

pub mod lean;
pub use lean::LeanView;

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
        vm_name: crate::identity::vm_name(r),
        host_name: crate::identity::host_name(r),
    }
}

/// Appends `v` as a JSON string literal.
fn push_json_str(s: &mut String, v: &str) {
    s.push('"');
    if !v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        s.push_str(v);
        s.push('"');
        return;
    }
    for ch in v.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Appends `"0x…"` (lower-case hex, no leading zeros) like `format!("\"{v:#x}\"")`, without
/// going through `core::fmt` (this runs for every register of every record).
fn push_hex_quoted(s: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    buf[i - 1] = b'"';
    i -= 1;
    let mut x = v;
    loop {
        i -= 1;
        buf[i] = DIGITS[(x & 15) as usize];
        x >>= 4;
        if x == 0 {
            break;
        }
    }
    buf[i - 3..i].copy_from_slice(b"\"0x");
    i -= 3;
    // Only ASCII was written.
    s.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

fn push_hex_list(s: &mut String, vs: impl Iterator<Item = u64>) {
    s.push('[');
    for (i, v) in vs.enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_hex_quoted(s, v);
    }
    s.push(']');
}

/// Renders the stored text columns of `r` straight from the decoded record: the same JSON as
/// [`fields`] gives (checked by a test), without building it up in `serde_json` values.
pub fn row_text(source: std::net::SocketAddr, r: &CrashRecord) -> RowText {
    render(&source, r)
}

/// [`row_text`] with any source text (`import-screen`'s `screen:FILE`).
pub fn row_text_from(source: &dyn std::fmt::Display, r: &CrashRecord) -> RowText {
    render(source, r)
}

/// The columns a lean store keeps (source, arch, kind, message, file, image id, names, load
/// base, step times) and the steps JSON the stored record's event carries: what `serve`
/// needs. The rest (build id, boot mode, hypervisor, VMBus version, kind detail,
/// registers, backtrace, log tail, ext) is rendered from raw when read, so it is not
/// rendered here.
pub fn row_text_lean(source: std::net::SocketAddr, r: &CrashRecord) -> RowText {
    render_lean(source, &LeanView::of(r))
}

/// [`row_text_lean`] from a [`LeanView`] (what [`lean::decode`] reads straight from a body):
/// the same columns, byte for byte.
pub fn render_lean(source: std::net::SocketAddr, v: &LeanView<'_>) -> RowText {
    let steps = v.steps();
    let mut t = RowText::with_capacity(256 + v.message.len() + 48 * steps.len());
    t.set(Col::Source, |s| push_socket_addr(s, source));
    t.set(Col::Arch, |s| push_arch(s, v.arch));
    t.set(Col::Kind, |s| s.push_str(kind_name(&v.kind)));
    t.set(Col::Message, |s| s.push_str(v.message));
    if let Some(l) = &v.location {
        t.set(Col::File, |s| s.push_str(l.file));
    }
    t.set(Col::Steps, |s| push_steps(s, steps));
    set_image_id(&mut t, v.image_id_kind, v.image_id);
    set_step_columns(&mut t, v.load_base, steps);
    // Schema 1.2's names, as crate::identity::{vm_name, host_name} give them (a test checks).
    let vm = v.kvp_vm_name.trim();
    if !vm.is_empty() {
        t.set(Col::VmName, |s| s.push_str(vm));
    }
    let fqdn = v.kvp_host_fqdn.trim();
    let host = if fqdn.is_empty() {
        v.kvp_host_name.trim()
    } else {
        fqdn
    };
    if !host.is_empty() {
        t.set(Col::HostName, |s| s.push_str(host));
    }
    t
}

fn kind_name(k: &CrashKind) -> &'static str {
    match k {
        CrashKind::Panic => "panic",
        CrashKind::Fault { .. } => "fault",
        CrashKind::SelfCheck => "self-check",
        CrashKind::Drill => "drill",
        CrashKind::Other { .. } => "other",
    }
}

fn push_arch(s: &mut String, a: Arch) {
    match a {
        Arch::X86_64 => s.push_str("x86_64"),
        Arch::Aarch64 => s.push_str("aarch64"),
        Arch::Other(o) => {
            let _ = write!(s, "other({o})");
        }
    }
}

/// Appends `v` in decimal, like `write!(s, "{v}")` without `core::fmt`.
fn push_u64(s: &mut String, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut x = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (x % 10) as u8;
        x /= 10;
        if x == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    s.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Appends `a` as its `Display` does (`1.2.3.4:5`, `[::1]:5`); IPv4 without `core::fmt`.
fn push_socket_addr(s: &mut String, a: std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                push_u64(s, u64::from(*o));
            }
            s.push(':');
            push_u64(s, u64::from(v4.port()));
        }
        a @ std::net::SocketAddr::V6(_) => {
            let _ = write!(s, "{a}");
        }
    }
}

/// The steps JSON: `[{"step":…,"outcome":…,"elapsed_us":…},…]`.
fn push_steps(s: &mut String, steps: &[capture::panic::StepRecord]) {
    s.push('[');
    for (i, st) in steps.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // The fixed names are plain ASCII: no escaping to look for (the tests compare the
        // whole text with push_json_str's).
        s.push_str("{\"step\":");
        match st.step {
            Step::Other(_) => push_json_str(s, &step_name(st.step)),
            k => {
                s.push('"');
                s.push_str(k.name());
                s.push('"');
            }
        }
        s.push_str(",\"outcome\":");
        match outcome_name(st.outcome) {
            Some(n) => {
                s.push('"');
                s.push_str(n);
                s.push('"');
            }
            None => push_json_str(s, &st.outcome.to_string()),
        }
        s.push_str(",\"elapsed_us\":");
        push_u64(s, u64::from(st.elapsed_us));
        s.push('}');
    }
    s.push(']');
}

/// `outcome.to_string()` for the outcomes that have a fixed text (a test checks every code).
fn outcome_name(o: Outcome) -> Option<&'static str> {
    use capture::panic::SkipReason;
    Some(match o {
        Outcome::Pending => "pending",
        Outcome::Done => "done",
        Outcome::SkippedBusy => "skipped (busy)",
        Outcome::NotPresent => "not present",
        Outcome::TimedOut => "timed out",
        Outcome::Skipped(SkipReason::AlreadyDone) => "skipped (AlreadyDone)",
        Outcome::Skipped(SkipReason::Disabled) => "skipped (Disabled)",
        Outcome::Skipped(SkipReason::VersionTooOld) => "skipped (VersionTooOld)",
        Outcome::Skipped(SkipReason::NotNeeded) => "skipped (NotNeeded)",
        Outcome::Skipped(SkipReason::Nested) => "skipped (Nested)",
        _ => return None,
    })
}

fn render(source: &dyn std::fmt::Display, r: &CrashRecord) -> RowText {
    let mut t = RowText::with_capacity(1024 + r.log_tail.len() + r.message.len());
    t.set(Col::Source, |s| {
        let _ = write!(s, "{source}");
    });
    t.set(Col::BuildId, |s| s.push_str(&r.build_id));
    t.set(Col::Arch, |s| push_arch(s, r.arch));
    t.set(Col::BootMode, |s| s.push_str(&boot_mode_name(r.boot_mode)));
    let h = &r.hypervisor;
    t.set(Col::Hypervisor, |s| {
        let _ = write!(
            s,
            "{{\"present\":{},\"privileges\":\"{:#x}\",\"vendor\":",
            h.present, h.privileges
        );
        push_json_str(s, &h.vendor);
        s.push_str(",\"version\":[");
        for (i, v) in h.version.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{v:#010x}\"");
        }
        s.push_str("]}");
    });
    if let Some((a, b)) = r.vmbus_version {
        t.set(Col::VmbusVersion, |s| {
            let _ = write!(s, "{a}.{b}");
        });
    }
    let detail = match r.kind {
        CrashKind::Fault { vector, addr } => Some(format!(
            "{{\"addr\":\"{addr:#x}\",\"vector\":\"{vector:#x}\"}}"
        )),
        CrashKind::Other { code, a, b } => Some(format!(
            "{{\"a\":\"{a:#x}\",\"b\":\"{b:#x}\",\"code\":{code}}}"
        )),
        CrashKind::Panic | CrashKind::SelfCheck | CrashKind::Drill => None,
    };
    t.set(Col::Kind, |s| s.push_str(kind_name(&r.kind)));
    if let Some(d) = detail {
        t.set(Col::KindDetail, |s| s.push_str(&d));
    }
    t.set(Col::Message, |s| s.push_str(&r.message));
    if let Some(l) = &r.location {
        t.set(Col::File, |s| s.push_str(&l.file));
    }
    let g = &r.registers;
    t.set(Col::Registers, |s| {
        s.push_str("{\"fp\":");
        push_hex_quoted(s, g.fp);
        s.push_str(",\"gpr\":");
        push_hex_list(s, g.gpr.iter().copied());
        s.push_str(",\"pc\":");
        push_hex_quoted(s, g.pc);
        s.push_str(",\"sp\":");
        push_hex_quoted(s, g.sp);
        s.push('}');
    });
    t.set(Col::Backtrace, |s| {
        push_hex_list(s, r.backtrace.iter().copied())
    });
    t.set(Col::LogTail, |s| s.push_str(&r.log_tail));
    t.set(Col::Steps, |s| push_steps(s, &r.steps));
    let e = &r.ext;
    set_image_id(&mut t, e.image_id_kind, &e.image_id);
    t.set(Col::Ext, |s| {
        s.push_str("{\"backtrace_end\":");
        push_json_str(s, e.backtrace_end.describe());
        s.push_str(",\"stacks\":[");
        for (i, st) in e.stacks.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("{\"name\":");
            push_json_str(s, &st.name);
            let _ = write!(s, ",\"size\":{},\"used\":{}}}", st.size, st.used);
        }
        let _ = write!(s, "],\"takeovers\":{}}}", e.takeovers);
    });
    set_step_columns(&mut t, e.load_base, &r.steps);
    // Schema 1.2's names (who crashed), for `list --host`.
    if let Some(v) = crate::identity::vm_name(r) {
        t.set(Col::VmName, |s| s.push_str(&v));
    }
    if let Some(h) = crate::identity::host_name(r) {
        t.set(Col::HostName, |s| s.push_str(&h));
    }
    t
}

/// The image id column (schema 1.1): `KIND:ID`, as the symbol store names it.
fn set_image_id(t: &mut RowText, kind: ImageIdKind, bytes: &[u8]) {
    match kind {
        // DebugId's GNU form, lower-case hex, without a String per byte.
        ImageIdKind::GnuBuildId if !bytes.is_empty() => t.set(Col::ImageId, |s| {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            s.push_str("gnu-build-id:");
            for b in bytes {
                s.push(char::from(DIGITS[usize::from(b >> 4)]));
                s.push(char::from(DIGITS[usize::from(b & 15)]));
            }
        }),
        _ => {
            if let Some(id) = crate::symbols::DebugId::from_record(kind, bytes) {
                t.set(Col::ImageId, |s| {
                    s.push_str(id.kind_name());
                    s.push(':');
                    s.push_str(&id.dir_name());
                });
            }
        }
    }
}

/// The load base (schema 1.1) and each step's time (the first record of steps 1-7 that is
/// not pending: a pending step has no time yet).
fn set_step_columns(t: &mut RowText, load_base: u64, steps: &[capture::panic::StepRecord]) {
    t.load_base = (load_base != 0).then_some(load_base);
    for st in steps {
        let code = u8::from(st.step) as usize;
        if (1..=7).contains(&code)
            && t.step_us[code - 1].is_none()
            && !matches!(st.outcome, Outcome::Pending)
        {
            t.step_us[code - 1] = Some(st.elapsed_us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_matches_core_fmt() {
        for v in [0u64, 1, 0xf, 0x10, 0xdead_beef, u64::MAX, 1 << 63] {
            let mut s = String::new();
            push_hex_quoted(&mut s, v);
            assert_eq!(s, format!("\"{v:#x}\""));
        }
    }

    #[test]
    fn lean_row_text_has_the_kept_columns_of_the_full_one_and_no_others() {
        let mut fault = capture::testutil::sample_record(6);
        fault.kind = CrashKind::Fault {
            vector: 14,
            addr: 0xdead,
        };
        let src: std::net::SocketAddr = "10.0.0.2:7".parse().unwrap();
        for r in [capture::testutil::max_record(), fault] {
            let full = row_text(src, &r);
            let lean = row_text_lean(src, &r);
            for c in [
                Col::Source,
                Col::Arch,
                Col::Kind,
                Col::Message,
                Col::File,
                Col::Steps,
                Col::ImageId,
                Col::VmName,
                Col::HostName,
            ] {
                assert_eq!(lean.get(c), full.get(c), "{c:?}");
            }
            assert!(full.get(Col::Message).is_some() && full.get(Col::Steps).is_some());
            for c in [
                Col::BuildId,
                Col::BootMode,
                Col::Hypervisor,
                Col::VmbusVersion,
                Col::KindDetail,
                Col::Registers,
                Col::Backtrace,
                Col::LogTail,
                Col::Ext,
            ] {
                assert_eq!(lean.get(c), None, "{c:?}");
            }
            assert_eq!(lean.load_base, full.load_base);
            assert_eq!(lean.step_us, full.step_us);
            assert!(lean.text_len() < full.text_len());
        }
    }

    #[test]
    fn row_text_renders_the_same_json_as_fields() {
        let mut recs = vec![
            capture::testutil::sample_record(3),
            capture::testutil::max_record(),
        ];
        let mut odd = capture::testutil::sample_record(4);
        odd.hypervisor.vendor = capture::record::truncate_to("a\"b\\c\n\u{1}é");
        odd.kind = CrashKind::Fault {
            vector: 14,
            addr: 0xdead,
        };
        odd.location = None;
        odd.vmbus_version = None;
        recs.push(odd);
        let mut other = capture::testutil::sample_record(5);
        other.kind = CrashKind::Other {
            code: 9,
            a: 1,
            b: 2,
        };
        recs.push(other);
        let src: std::net::SocketAddr = "127.0.0.1:5".parse().unwrap();
        for r in &recs {
            let fast = row_text(src, r);
            let slow = RowText::from_fields("127.0.0.1:5", &fields(r));
            for c in [
                Col::Source,
                Col::BuildId,
                Col::Arch,
                Col::BootMode,
                Col::VmbusVersion,
                Col::Kind,
                Col::Message,
                Col::File,
                Col::LogTail,
            ] {
                assert_eq!(fast.get(c), slow.get(c), "{c:?}");
            }
            for c in [
                Col::Hypervisor,
                Col::KindDetail,
                Col::Registers,
                Col::Backtrace,
                Col::Steps,
            ] {
                let parse = |t: &RowText| {
                    t.get(c)
                        .map(|j| serde_json::from_str::<serde_json::Value>(j).unwrap())
                };
                assert_eq!(parse(&fast), parse(&slow), "{c:?}");
            }
        }
    }

    #[test]
    fn schema_1_1_columns_carry_image_id_load_base_ext_and_step_times() {
        use capture::panic::StepRecord;
        use capture::record::{BacktraceEnd, ImageIdKind, StackUse};
        let mut r = capture::testutil::sample_record(3);
        r.ext.image_id_kind = ImageIdKind::GnuBuildId;
        r.ext.image_id.extend_from_slice(&[0xab, 0x01]).unwrap();
        r.ext.load_base = 0x10_0000;
        r.ext.backtrace_end = BacktraceEnd::Outermost;
        r.ext.takeovers = 2;
        r.ext
            .stacks
            .push(StackUse {
                name: capture::record::truncate_to("boot"),
                size: 4096,
                used: 100,
            })
            .unwrap();
        r.steps.clear();
        for (step, outcome, us) in [
            (Step::Freeze, Outcome::Done, 404),
            (Step::ScreenFlush, Outcome::NotPresent, 54),
            (Step::Ship, Outcome::Pending, 0),
            (Step::Freeze, Outcome::Done, 9),
        ] {
            r.steps
                .push(StepRecord {
                    step,
                    outcome,
                    elapsed_us: us,
                })
                .unwrap();
        }
        let t = row_text("10.0.0.1:9".parse().unwrap(), &r);
        assert_eq!(t.get(Col::ImageId), Some("gnu-build-id:ab01"));
        let ext: serde_json::Value = serde_json::from_str(t.get(Col::Ext).unwrap()).unwrap();
        assert_eq!(
            ext,
            serde_json::json!({"backtrace_end": "outermost frame reached",
                "stacks": [{"name": "boot", "size": 4096, "used": 100}], "takeovers": 2})
        );
        assert_eq!(t.load_base, Some(0x10_0000));
        // The first entry's time per step; a pending step has none.
        assert_eq!(
            t.step_us,
            [Some(404), Some(54), None, None, None, None, None]
        );
        // A 1.0 record: no image id, no load base.
        let old = capture::testutil::sample_record(3);
        let t = row_text("10.0.0.1:9".parse().unwrap(), &old);
        assert_eq!((t.get(Col::ImageId), t.load_base), (None, None));
    }

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
