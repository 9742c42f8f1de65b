//! `show`: one record with what an engineer acts on — the image id and load base, the pc and
//! every return address resolved to `function+0xoff (file:line)` from the symbol store
//! (falling back to raw addresses with a note), registers by name, the fault spelled out,
//! stack high-water marks and why the backtrace stopped. `show --json` carries the same.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use capture::record::{Ext1, ImageIdKind};

use crate::machine::{self, FaultView, NamedRegister};
use crate::output::{esc, esc_text};
use crate::store::{RecordView, StepView};
use crate::symbols::{self, DebugId, Probe, Resolved, SymbolStore};

/// The running image as the record names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    /// "gnu-build-id", "pe-codeview", "none" or "other(N)".
    pub id_kind: String,
    /// The id as the symbol store names it (`symbols list`), if the record has one.
    pub id: Option<String>,
    pub load_base: Option<String>,
}

/// What symbol resolution found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolsView {
    /// "resolved", "no-image-id", "not-in-store", "error".
    pub status: String,
    /// The debug file used.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub debug_file: Option<String>,
    /// Why addresses are raw, and what to do.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

/// One code address: the pc or a return address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameView {
    pub addr: String,
    /// `function+0xoff (file:line)`, or the raw address when nothing matched.
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub function: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub offset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<u32>,
    /// Functions inlined at this address, innermost first (name, file:line).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub inlined: Vec<symbols::SourceFrame>,
}

/// A stack's high-water mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackView {
    pub name: String,
    pub size: u32,
    pub used: u32,
}

/// The record as `show` presents it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShowView {
    #[serde(flatten)]
    pub record: RecordView,
    pub image: ImageView,
    pub symbols: SymbolsView,
    /// The pc, resolved.
    pub pc: FrameView,
    /// The backtrace, resolved (same order as `backtrace`).
    pub frames: Vec<FrameView>,
    pub backtrace_end: String,
    pub named_registers: Vec<NamedRegister>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fault: Option<FaultView>,
    pub stacks: Vec<StackView>,
    pub lock_takeovers: Vec<String>,
    /// Code bytes around the pc (schema 1.1), if the record has them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<DumpView>,
    /// Stack bytes from the stack pointer up (schema 1.1), if the record has them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stack: Option<DumpView>,
    /// Who crashed: SMBIOS and KVP (schema 1.2); `None` for older records.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub identity: Option<crate::identity::IdentityView>,
    /// Whether the follow-up frame (the steps after the seal) arrived; `steps` holds the
    /// seven steps merged (`crate::followup_view`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub followup: Option<crate::followup_view::FollowupView>,
}

/// Bytes of guest memory the record carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpView {
    /// Address of the first byte.
    pub at: String,
    /// The bytes, lowercase hex.
    pub hex: String,
    /// Code: the pc's offset in `hex`'s bytes, if it is inside them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pc_offset: Option<usize>,
}

fn dump(at: u64, bytes: &[u8], pc: Option<u64>) -> Option<DumpView> {
    if bytes.is_empty() {
        return None;
    }
    Some(DumpView {
        at: format!("{at:#x}"),
        hex: symbols::hex(bytes),
        pc_offset: pc
            .and_then(|pc| pc.checked_sub(at))
            .map(|o| o as usize)
            .filter(|&o| o < bytes.len()),
    })
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

fn id_kind_name(k: ImageIdKind) -> String {
    match k {
        ImageIdKind::None => "none".into(),
        ImageIdKind::GnuBuildId => "gnu-build-id".into(),
        ImageIdKind::PeCodeView => "pe-codeview".into(),
        ImageIdKind::Other(o) => format!("other({o})"),
    }
}

/// Cuts `root` from the front of `r`'s source paths.
fn relative_to(r: &mut Resolved, root: &str) {
    let cut = |p: &mut Option<String>| {
        if let Some(rest) = p.as_deref().and_then(|s| s.strip_prefix(root)) {
            *p = Some(rest.to_string());
        }
    };
    cut(&mut r.file);
    for f in &mut r.frames {
        cut(&mut f.file);
    }
}

fn frame(addr: u64, r: Option<&Resolved>) -> FrameView {
    let a = format!("{addr:#x}");
    match r {
        Some(r) => {
            // The inline chain minus its last element (the real function, already named).
            let mut inlined = r.frames.clone();
            if inlined.len() > 1 {
                inlined.pop();
            } else {
                inlined.clear();
            }
            FrameView {
                text: format!("{a} {}", r.describe()),
                addr: a,
                function: r.function.clone(),
                offset: r.offset.map(|o| format!("{o:#x}")),
                file: r.file.clone(),
                line: r.line,
                inlined,
            }
        }
        None => FrameView {
            text: a.clone(),
            addr: a,
            function: None,
            offset: None,
            file: None,
            line: None,
            inlined: Vec::new(),
        },
    }
}

/// Builds the view: `ext` is the record's 1.1 group (default for a 1.0 record), `store` the
/// symbol store to resolve addresses with.
pub fn build(record: RecordView, ext: &Ext1, store: &SymbolStore) -> ShowView {
    let f = &record.fields;
    let id = DebugId::from_record(ext.image_id_kind, &ext.image_id);
    let image = ImageView {
        id_kind: id_kind_name(ext.image_id_kind),
        id: id.as_ref().map(DebugId::dir_name),
        load_base: (ext.load_base != 0).then(|| format!("{:#x}", ext.load_base)),
    };
    let pc = f.registers["pc"].as_str().and_then(parse_hex).unwrap_or(0);
    let bt: Vec<u64> = f.backtrace.iter().filter_map(|a| parse_hex(a)).collect();
    // A fault's backtrace starts with the faulting pc itself (not a return address).
    let fault_pc_first = f.kind == "fault" && bt.first() == Some(&pc);
    let mut probes = vec![Probe {
        addr: pc,
        is_return: false,
    }];
    probes.extend(bt.iter().enumerate().map(|(i, &a)| Probe {
        addr: a,
        is_return: !(i == 0 && fault_pc_first),
    }));
    let (resolved, symbols) = match &id {
        None => (
            Vec::new(),
            SymbolsView {
                status: "no-image-id".into(),
                debug_file: None,
                note: Some(
                    "the record names no image (schema 1.0, or an image without a build id): \
                     addresses are raw"
                        .into(),
                ),
            },
        ),
        Some(id) => match store.lookup(id) {
            None => (
                Vec::new(),
                SymbolsView {
                    status: "not-in-store".into(),
                    debug_file: None,
                    note: Some(format!(
                        "no symbols for image {} in {}: addresses are raw; add the image's \
                         symbol file with `host-collector symbols add FILE` (the kernel ELF, \
                         or the .efi with its .pdb beside it)",
                        id.dir_name(),
                        store.dir().display()
                    )),
                },
            ),
            Some(path) => match symbols::resolve(&path, id, ext.load_base, &probes) {
                Ok(r) => (
                    r,
                    SymbolsView {
                        status: "resolved".into(),
                        debug_file: Some(path.display().to_string()),
                        note: None,
                    },
                ),
                Err(e) => (
                    Vec::new(),
                    SymbolsView {
                        status: "error".into(),
                        debug_file: Some(path.display().to_string()),
                        note: Some(format!("{e}: addresses are raw")),
                    },
                ),
            },
        },
    };
    // Source paths relative to the build's workspace, like the record's own location: the
    // prefix a resolved path has before the location's file (`/src/canary/` before
    // `appliance/src/canary.rs`) is cut from every path that has it.
    let mut resolved = resolved;
    if let Some(loc) = &f.location {
        let root = resolved
            .iter()
            .flatten()
            .flat_map(|r| r.frames.iter().filter_map(|x| x.file.as_deref()))
            .find_map(|p| {
                p.strip_suffix(loc.file.as_str())
                    .filter(|r| r.ends_with('/'))
            })
            .map(str::to_string);
        if let Some(root) = root {
            for r in resolved.iter_mut().flatten() {
                relative_to(r, &root);
            }
        }
    }
    let at = |i: usize| resolved.get(i).and_then(Option::as_ref);
    let pc_view = frame(pc, at(0));
    let frames = bt
        .iter()
        .enumerate()
        .map(|(i, &a)| frame(a, at(i + 1)))
        .collect();
    let gpr: Vec<String> = f.registers["gpr"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    let named_registers = machine::named_registers(&f.arch, &gpr);
    let fault = match (&f.kind[..], &f.kind_detail) {
        ("fault", Some(d)) => machine::fault_of(&f.arch, d, &named_registers),
        _ => None,
    };
    let mut lock_takeovers = Vec::new();
    if ext.takeovers & capture::record::TAKEOVER_HYPERV != 0 {
        lock_takeovers.push("hyperv".to_string());
    }
    if ext.takeovers & capture::record::TAKEOVER_NET != 0 {
        lock_takeovers.push("net".to_string());
    }
    ShowView {
        image,
        symbols,
        pc: pc_view,
        frames,
        backtrace_end: ext.backtrace_end.describe().into(),
        named_registers,
        fault,
        stacks: ext
            .stacks
            .iter()
            .map(|s| StackView {
                name: s.name.as_str().into(),
                size: s.size,
                used: s.used,
            })
            .collect(),
        lock_takeovers,
        code: dump(ext.code_at, &ext.code, Some(pc)),
        stack: dump(ext.stack_at, &ext.stack, None),
        identity: None,
        followup: None,
        record,
    }
}

/// The human view.
pub fn render(v: &ShowView) -> String {
    let r = &v.record;
    let f = &r.fields;
    let mut o = String::new();
    let pad = "               ";
    let kv = |o: &mut String, k: &str, v: &str| {
        let _ = writeln!(o, "{k:>13}: {}", esc(v));
    };
    kv(&mut o, "ID", &r.id.to_string());
    kv(&mut o, "Boot ID", &r.boot_id);
    kv(&mut o, "Sequence", &r.seq.to_string());
    kv(
        &mut o,
        "Received",
        &format!("{} from {}", r.received_at, r.source),
    );
    kv(
        &mut o,
        "Record",
        &format!(
            "schema {}, {} bytes, CRC {}",
            r.schema, r.raw_len, r.record_crc
        ),
    );
    match &v.identity {
        Some(id) => {
            for (k, line) in id.lines() {
                kv(&mut o, k, &line);
            }
        }
        None => kv(
            &mut o,
            "Identity",
            "(not in this record: schema before 1.2)",
        ),
    }
    kv(&mut o, "Build ID", &f.build_id);
    let image = match (&v.image.id, &v.image.load_base) {
        (Some(id), Some(b)) => format!("{} {id}, loaded at {b}", v.image.id_kind),
        (Some(id), None) => format!("{} {id}", v.image.id_kind),
        (None, _) => "no image id in the record".into(),
    };
    kv(&mut o, "Image", &image);
    match (&v.symbols.debug_file, &v.symbols.note) {
        (_, Some(n)) => kv(&mut o, "Symbols", n),
        (Some(d), None) => kv(&mut o, "Symbols", d),
        (None, None) => {}
    }
    kv(
        &mut o,
        "Arch",
        &format!("{} (boot: {})", f.arch, f.boot_mode),
    );
    kv(
        &mut o,
        "Hypervisor",
        &crate::output::value_inline(&f.hypervisor),
    );
    kv(
        &mut o,
        "VMBus",
        f.vmbus_version.as_deref().unwrap_or("not connected"),
    );
    kv(
        &mut o,
        "Uptime",
        &format!(
            "{}.{:06} s",
            f.uptime_us / 1_000_000,
            f.uptime_us % 1_000_000
        ),
    );
    let kind = match &f.kind_detail {
        Some(d) => format!("{} ({})", f.kind, crate::output::value_inline(d)),
        None => f.kind.clone(),
    };
    kv(&mut o, "Kind", &kind);
    kv(&mut o, "Message", &f.message);
    if let Some(l) = &f.location {
        kv(
            &mut o,
            "Location",
            &format!("{}:{}:{}", l.file, l.line, l.column),
        );
    }
    if let Some(fault) = &v.fault {
        let mut s = format!("{} (code {:#x}", fault.name, fault.code);
        if let Some(e) = fault.error_code {
            let _ = write!(s, ", error code {e:#x}");
        }
        s.push(')');
        if let Some(a) = &fault.address {
            let _ = write!(
                s,
                ", address {a} ({})",
                fault.address_register.as_deref().unwrap_or("")
            );
        }
        kv(&mut o, "Fault", &s);
        for d in &fault.decoded {
            let _ = writeln!(o, "{pad}{}", esc(d));
        }
    }
    let inl = |o: &mut String, fr: &FrameView| {
        for i in &fr.inlined {
            let mut s = format!(
                "{pad}     inlined: {}",
                i.function.as_deref().unwrap_or("??")
            );
            if let (Some(file), Some(line)) = (&i.file, i.line) {
                let _ = write!(s, " ({file}:{line})");
            }
            let _ = writeln!(o, "{}", esc(&s));
        }
    };
    kv(&mut o, "PC", &v.pc.text);
    inl(&mut o, &v.pc);
    let reg = |k: &str| f.registers[k].as_str().unwrap_or("?").to_string();
    kv(
        &mut o,
        "Registers",
        &format!("pc={} sp={} fp={}", reg("pc"), reg("sp"), reg("fp")),
    );
    for row in v.named_registers.chunks(4) {
        let cells: Vec<String> = row
            .iter()
            .map(|r| format!("{:>6}={:<18}", r.name, r.value))
            .collect();
        let _ = writeln!(o, "{pad}{}", esc(cells.join(" ").trim_end()));
    }
    if v.frames.is_empty() {
        kv(&mut o, "Backtrace", "(empty)");
    } else {
        for (i, fr) in v.frames.iter().enumerate() {
            let line = format!("#{i:<2} {}", fr.text);
            if i == 0 {
                kv(&mut o, "Backtrace", &line);
            } else {
                let _ = writeln!(o, "{pad}{}", esc(&line));
            }
            inl(&mut o, fr);
        }
        let _ = writeln!(o, "{pad}({})", esc(&v.backtrace_end));
    }
    if !v.stacks.is_empty() {
        let s: Vec<String> = v
            .stacks
            .iter()
            .map(|s| format!("{} {}/{} bytes", s.name, s.used, s.size))
            .collect();
        kv(&mut o, "Stacks used", &s.join(", "));
    }
    if !v.lock_takeovers.is_empty() {
        kv(&mut o, "Locks taken", &v.lock_takeovers.join(", "));
    }
    if let Some(c) = &v.code {
        // Linux's `Code:` line: the byte at the pc in <>.
        let bytes: Vec<String> = (0..c.hex.len() / 2)
            .map(|i| {
                let b = &c.hex[2 * i..2 * i + 2];
                if Some(i) == c.pc_offset {
                    format!("<{b}>")
                } else {
                    b.to_string()
                }
            })
            .collect();
        kv(&mut o, "Code", &format!("at {}", c.at));
        for row in bytes.chunks(16) {
            let _ = writeln!(o, "{pad}{}", row.join(" "));
        }
    }
    if let Some(st) = &v.stack {
        kv(&mut o, "Stack", &format!("at {} (64-bit words)", st.at));
        let at = parse_hex(&st.at).unwrap_or(0);
        let words: Vec<String> = (0..st.hex.len() / 16)
            .map(|i| {
                let le = &st.hex[16 * i..16 * i + 16];
                // Little-endian bytes to a number.
                let mut w = String::with_capacity(16);
                for k in (0..8).rev() {
                    w.push_str(&le[2 * k..2 * k + 2]);
                }
                w
            })
            .collect();
        for (r, row) in words.chunks(4).enumerate() {
            let _ = writeln!(o, "{pad}{:#x}: {}", at + r as u64 * 32, row.join(" "));
        }
    }
    steps(&mut o, &f.steps, pad);
    if let Some(fu) = &v.followup {
        kv(&mut o, "Follow-up", &fu.note);
    }
    if f.log_tail.is_empty() {
        let _ = writeln!(o, "{:>13}: (empty)", "Log tail");
    } else {
        let _ = writeln!(o, "{:>13}:", "Log tail");
        for l in esc_text(&f.log_tail, true).lines() {
            let _ = writeln!(o, "{pad}{l}");
        }
    }
    o
}

fn steps(o: &mut String, steps: &[StepView], pad: &str) {
    if steps.is_empty() {
        let _ = writeln!(o, "{:>13}: (no steps recorded)", "Panic path");
        return;
    }
    let w = steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
    let wo = steps.iter().map(|s| s.outcome.len()).max().unwrap_or(0);
    for (i, s) in steps.iter().enumerate() {
        // A step nobody reported, or the end step reported from inside itself, has no time.
        let untimed = [
            crate::followup_view::NOT_REPORTED,
            crate::followup_view::STARTED,
        ]
        .contains(&s.outcome.as_str());
        let line = if untimed {
            format!("{:<w$}  {}", s.step, s.outcome)
        } else {
            format!("{:<w$}  {:<wo$}  {} us", s.step, s.outcome, s.elapsed_us)
        };
        let line = esc(&line);
        if i == 0 {
            let _ = writeln!(o, "{:>13}: {line}", "Panic path");
        } else {
            let _ = writeln!(o, "{pad}{line}");
        }
    }
}

/// The record's 1.1 group from its stored bytes (`raw_hex`) and schema ("1.1"); the default
/// for a 1.0 record or bytes that do not decode.
pub fn ext_of(raw: &[u8], schema: &str) -> Ext1 {
    let mut it = schema.split('.').map(|p| p.parse::<u16>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (it.next(), it.next()) else {
        return Ext1::default();
    };
    capture::record::CrashRecord::decode(major, minor, raw)
        .map(|r| r.ext)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::SourceFrame;

    #[test]
    fn source_paths_are_cut_to_the_workspace_the_location_names() {
        let sf = |f: &str, p: &str, l| SourceFrame {
            function: Some(f.into()),
            file: Some(p.into()),
            line: Some(l),
        };
        let mut r = Resolved {
            function: Some("appliance::canary::run".into()),
            offset: Some(4),
            file: Some("/build/ws/appliance/src/canary.rs".into()),
            line: Some(258),
            frames: vec![
                sf(
                    "core::fmt::write",
                    "/rustc/abc/library/core/src/fmt/mod.rs",
                    1,
                ),
                sf(
                    "appliance::canary::run",
                    "/build/ws/appliance/src/canary.rs",
                    258,
                ),
            ],
        };
        relative_to(&mut r, "/build/ws/");
        assert_eq!(r.file.as_deref(), Some("appliance/src/canary.rs"));
        assert_eq!(r.frames[1].file.as_deref(), Some("appliance/src/canary.rs"));
        // Paths outside the workspace stay whole.
        assert_eq!(
            r.frames[0].file.as_deref(),
            Some("/rustc/abc/library/core/src/fmt/mod.rs")
        );
        assert_eq!(
            r.describe(),
            "appliance::canary::run+0x4 (appliance/src/canary.rs:258)"
        );
    }
}
