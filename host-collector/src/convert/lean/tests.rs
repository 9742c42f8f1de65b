//! `lean::decode` against `CrashRecord::decode` (the authority), and `render_lean` against the
//! plain `core::fmt` rendering it replaced.

use std::fmt::Write as _;
use std::net::SocketAddr;

use capture::identity::{Kvp, Smbios, SmbiosStatus};
use capture::panic::{Outcome, SkipReason, Step, StepRecord};
use capture::record::{
    truncate_to, Arch, CrashKind, CrashRecord, ImageIdKind, Location, MAX_ENCODED_LEN,
};
use capture::testutil::{max_record, sample_record};

use super::{decode, LeanView};
use crate::convert::{push_json_str, render_lean, row_text_lean};
use crate::store::{Col, RowText};

fn encode(r: &CrashRecord) -> Vec<u8> {
    let mut b = vec![0u8; MAX_ENCODED_LEN];
    r.encode(&mut b).unwrap().to_vec()
}

fn set_steps(r: &mut CrashRecord, list: &[(Step, Outcome, u32)]) {
    r.steps.clear();
    for &(step, outcome, elapsed_us) in list {
        r.steps
            .push(StepRecord {
                step,
                outcome,
                elapsed_us,
            })
            .unwrap();
    }
}

/// Sample, maximal and odd records: every optional part present and absent, escapes,
/// non-ASCII text, every outcome kind, both image id kinds, names with blanks.
fn records() -> Vec<CrashRecord> {
    let mut v = vec![sample_record(1), sample_record(4099), max_record()];
    let mut odd = sample_record(9);
    odd.location = None;
    odd.vmbus_version = None;
    odd.arch = Arch::Aarch64;
    odd.kind = CrashKind::Fault {
        vector: 14,
        addr: 0xdead_beef,
    };
    odd.hypervisor.vendor = truncate_to("a\"b\\c\n\u{1}é");
    odd.set_message("quote \" back \\ nl \n tab \t ctl \u{7} é ✓ 🦀");
    set_steps(
        &mut odd,
        &[
            (Step::Freeze, Outcome::Failed(0x2a), 5),
            (Step::Other(9), Outcome::Skipped(SkipReason::Other(77)), 6),
            (Step::Ship, Outcome::Other(42, 7), u32::MAX),
            (Step::End, Outcome::TimedOut, 0),
            (Step::ScreenFlush, Outcome::Skipped(SkipReason::Nested), 1),
        ],
    );
    odd.ext.image_id_kind = ImageIdKind::GnuBuildId;
    odd.ext.image_id = (0u8..20).map(|b| b.wrapping_mul(37)).collect();
    odd.ext.load_base = 0x40_0000;
    odd.ident.smbios_status = SmbiosStatus::Found;
    odd.ident.smbios = Some(Smbios {
        version: (3, 1),
        uuid: [7; 16],
        manufacturer: truncate_to("Microsoft Corporation"),
        product: truncate_to("Virtual Machine"),
        serial: truncate_to("0000-0002-1234"),
    });
    odd.ident.kvp = Kvp {
        vm_name: truncate_to("  web-01 "),
        vm_id: truncate_to("8d3c…"),
        host_name: truncate_to(" hv-07 "),
        host_fqdn: truncate_to("   "),
    };
    v.push(odd);
    let mut pe = sample_record(10);
    pe.arch = Arch::Other(9);
    pe.kind = CrashKind::Other {
        code: 9,
        a: 1,
        b: 2,
    };
    pe.steps.clear();
    pe.ext.image_id_kind = ImageIdKind::PeCodeView;
    pe.ext.image_id = (0u8..20).collect();
    pe.ident.kvp.host_fqdn = truncate_to("hv-07.example.net");
    pe.ident.kvp.host_name = truncate_to("hv-07");
    v.push(pe);
    let mut drill = sample_record(11);
    drill.kind = CrashKind::Drill;
    drill.ext.image_id_kind = ImageIdKind::GnuBuildId; // empty id: no column
    drill.ident.kvp.vm_name = truncate_to("é");
    v.push(drill);
    let mut panic = sample_record(12);
    panic.kind = CrashKind::Panic;
    panic.ext.image_id_kind = ImageIdKind::PeCodeView;
    panic.ext.image_id = (0u8..7).collect(); // not 20 bytes: no column
    v.push(panic);
    v
}

/// `lean::decode` takes `body` iff `CrashRecord::decode` does (for the schemas it reads) and
/// reads the same values; returns whether the body was accepted.
fn agree(major: u16, minor: u16, body: &[u8]) -> bool {
    let full = CrashRecord::decode(major, minor, body);
    match (&full, decode(major, minor, body)) {
        (Ok(r), Some(v)) => assert_eq!(v, LeanView::of(r), "{major}.{minor} {body:02x?}"),
        (Err(_), None) => {}
        (Ok(_), None) => assert!(
            major != 1 || minor > 2,
            "lean refused a {major}.{minor} body decode accepts: {body:02x?}"
        ),
        (Err(e), Some(_)) => {
            panic!("lean took a {major}.{minor} body decode refuses ({e}): {body:02x?}")
        }
    }
    full.is_ok()
}

#[test]
fn reads_what_crash_record_decode_reads_at_every_length_and_minor() {
    for r in records() {
        let body = encode(&r);
        let full = decode(1, 2, &body).expect("a whole 1.2 body");
        assert_eq!(full, LeanView::of(&r));
        // Each minor takes exactly one prefix: its groups, nothing after.
        let mut taken = [0usize; 4];
        for n in 0..=body.len() {
            for minor in 0..=3 {
                if agree(1, minor, &body[..n]) {
                    taken[usize::from(minor)] += 1;
                }
            }
        }
        assert_eq!(&taken[..3], &[1, 1, 1], "prefixes taken per minor");
        // Schemas it was not written for go to CrashRecord::decode.
        for (major, minor) in [(0, 2), (2, 0), (1, 3), (1, u16::MAX)] {
            assert_eq!(decode(major, minor, &body), None);
            agree(major, minor, &body);
        }
    }
}

/// xorshift64*: deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn takes_exactly_the_corrupted_bodies_decode_takes() {
    let bodies: Vec<Vec<u8>> = records().iter().map(encode).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..40_000 {
        let mut b = bodies[rng.below(bodies.len())].clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(b.len());
            match rng.below(8) {
                0 => b[i] = rng.next() as u8,
                1 => b[i] = [0x00, 0x01, 0x02, 0x7f, 0x80, 0x81, 0xc0, 0xff][rng.below(8)],
                2 => b[i] = b[i].wrapping_add(1),
                3 => b[i] = b[i].wrapping_sub(1),
                4 => b[i] ^= 1 << rng.below(8),
                5 => b.insert(i, rng.next() as u8),
                6 => {
                    b.remove(i);
                }
                _ => b.truncate(i),
            }
            if b.is_empty() {
                break;
            }
        }
        let minor = [2, 2, 2, 1, 0][rng.below(5)];
        if agree(1, minor, &b) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // Both outcomes are well represented: the comparison means something.
    assert!(
        accepted > 5_000 && refused > 5_000,
        "{accepted} / {refused}"
    );
}

/// How `row_text_lean` rendered the lean columns before `render_lean`: plain `core::fmt` and
/// the helpers `fields` uses.
fn reference(source: SocketAddr, r: &CrashRecord) -> RowText {
    let mut t = RowText::with_capacity(64);
    t.set(Col::Source, |s| {
        let _ = write!(s, "{source}");
    });
    t.set(Col::Arch, |s| {
        s.push_str(&crate::convert::arch_name(r.arch))
    });
    let f = crate::convert::fields(r);
    t.set(Col::Kind, |s| s.push_str(&f.kind));
    t.set(Col::Message, |s| s.push_str(&r.message));
    if let Some(l) = &r.location {
        t.set(Col::File, |s| s.push_str(&l.file));
    }
    t.set(Col::Steps, |s| {
        s.push('[');
        for (i, st) in r.steps.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("{\"step\":");
            push_json_str(s, &crate::convert::step_name(st.step));
            s.push_str(",\"outcome\":");
            push_json_str(s, &st.outcome.to_string());
            let _ = write!(s, ",\"elapsed_us\":{}}}", st.elapsed_us);
        }
        s.push(']');
    });
    let e = &r.ext;
    if let Some(id) = crate::symbols::DebugId::from_record(e.image_id_kind, &e.image_id) {
        t.set(Col::ImageId, |s| {
            let _ = write!(s, "{}:{}", id.kind_name(), id.dir_name());
        });
    }
    if let Some(v) = crate::identity::vm_name(r) {
        t.set(Col::VmName, |s| s.push_str(&v));
    }
    if let Some(h) = crate::identity::host_name(r) {
        t.set(Col::HostName, |s| s.push_str(&h));
    }
    // Load base and step times are compared through row_text below.
    let full = crate::convert::row_text(source, r);
    t.load_base = full.load_base;
    t.step_us = full.step_us;
    t
}

fn assert_same(a: &RowText, b: &RowText, what: &str) {
    for c in Col::ALL {
        assert_eq!(a.get(c), b.get(c), "{what}: {c:?}");
    }
    assert_eq!(a.load_base, b.load_base, "{what}: load base");
    assert_eq!(a.step_us, b.step_us, "{what}: step times");
}

#[test]
fn lean_rows_from_the_body_match_the_rendering_they_replace() {
    let sources: Vec<SocketAddr> = [
        "127.0.0.1:40000",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "10.20.3.4:7",
        "[::1]:5",
        "[fe80::1%2]:9",
        "[2001:db8::8:800:200c:417a]:65535",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    for r in records() {
        let body = encode(&r);
        let v = decode(1, 2, &body).unwrap();
        for &src in &sources {
            let want = reference(src, &r);
            assert_same(&render_lean(src, &v), &want, "from the body");
            assert_same(&row_text_lean(src, &r), &want, "from the record");
        }
    }
}

#[test]
fn outcome_texts_are_their_display() {
    for code in 0..=255u8 {
        for arg in [0, 1, 2, 3, 4, 5, 6, 7, 0xff, 0x100, u32::MAX] {
            let o = Outcome::from((code, arg));
            if let Some(n) = crate::convert::outcome_name(o) {
                assert_eq!(n, o.to_string(), "{o:?}");
                // Written without escaping: there is nothing to escape.
                let mut j = String::new();
                push_json_str(&mut j, n);
                assert_eq!(j, format!("\"{n}\""));
            }
        }
    }
}

#[test]
fn step_names_need_no_escaping() {
    for code in 0..=255u8 {
        let name = Step::from(code).name();
        let mut j = String::new();
        push_json_str(&mut j, name);
        assert_eq!(j, format!("\"{name}\""));
    }
}

#[test]
fn socket_addresses_render_as_their_display() {
    let mut rng = Rng(7);
    for _ in 0..2_000 {
        let ip = std::net::Ipv4Addr::from(rng.next() as u32);
        let port = [0, 1, 9, 10, 99, 100, 65535, rng.next() as u16][rng.below(8)];
        let a = SocketAddr::from((ip, port));
        let mut s = String::new();
        crate::convert::push_socket_addr(&mut s, a);
        assert_eq!(s, a.to_string());
    }
    let mut s = String::new();
    crate::convert::push_u64(&mut s, u64::MAX);
    assert_eq!(s, u64::MAX.to_string());
}

#[test]
fn a_location_is_read_with_its_line_and_column() {
    let mut r = sample_record(3);
    r.location = Some(Location {
        file: truncate_to("src/x.rs"),
        line: 300,
        column: 70_000,
    });
    let body = encode(&r);
    let v = decode(1, 2, &body).unwrap();
    let l = v.location.unwrap();
    assert_eq!((l.file, l.line, l.column), ("src/x.rs", 300, 70_000));
    assert_eq!((v.seq, v.boot_id, v.uptime_us), (3, r.boot_id, r.uptime_us));
}
