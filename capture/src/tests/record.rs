//! Record encoding: bounds, schema rules, open enums, round trips.

use proptest::prelude::*;

use crate::panic::{Outcome, SkipReason, Step, StepRecord};
use crate::record::*;
use crate::testutil::{max_record, sample_record};
use crate::Error;

fn encode_vec(r: &CrashRecord) -> std::vec::Vec<u8> {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    r.encode(&mut buf).unwrap().to_vec()
}

#[test]
fn maximal_record_encodes_to_exactly_max_encoded_len() {
    let r = max_record();
    assert_eq!(encode_vec(&r).len(), MAX_ENCODED_LEN);
    // The value API.md documents (three chunks at most).
    assert_eq!(MAX_ENCODED_LEN, 3949);
    assert_eq!(crate::chunk::chunk_count(MAX_ENCODED_LEN), 3);
    // One byte less is not enough.
    let mut buf = [0u8; MAX_ENCODED_LEN - 1];
    assert_eq!(
        r.encode(&mut buf),
        Err(Error::BufferTooSmall(MAX_ENCODED_LEN - 1))
    );
}

#[test]
fn typical_record_is_small_and_round_trips() {
    let r = sample_record(3);
    let bytes = encode_vec(&r);
    // Reported in API.md; a typical record fits one chunk.
    assert!(
        bytes.len() < 1200,
        "typical record is {} bytes",
        bytes.len()
    );
    std::println!("typical record: {} bytes encoded", bytes.len());
    assert_eq!(
        CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, &bytes).unwrap(),
        r
    );
}

#[test]
fn other_majors_are_rejected_without_reading_the_body() {
    let bytes = encode_vec(&sample_record(1));
    for major in [0, SCHEMA_MAJOR + 1, u16::MAX] {
        assert_eq!(
            CrashRecord::decode(major, 0, &bytes),
            Err(Error::UnsupportedSchema { major, minor: 0 })
        );
    }
}

/// What a 1.3 writer would send: the 1.0 record, the 1.1 and 1.2 groups, then its own group.
#[derive(serde::Serialize)]
struct NextMinor<'a> {
    base: &'a CrashRecord,
    ext1: &'a Ext1,
    ident: &'a Identity,
    appended: (u64, &'a str),
}

#[test]
fn a_newer_minor_decodes_the_known_prefix_and_ignores_appended_fields() {
    let r = sample_record(2);
    let mut buf = [0u8; MAX_ENCODED_LEN + 64];
    let next = NextMinor {
        base: &r,
        ext1: &r.ext,
        ident: &r.ident,
        appended: (0xdead_beef, "a field from schema 1.2"),
    };
    let bytes = postcard::to_slice(&next, &mut buf).unwrap();
    assert_eq!(
        CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR + 1, bytes).unwrap(),
        r
    );
    // The same bytes claiming the current minor are rejected: they are not one 1.0 record.
    let extra = bytes.len() - encode_vec(&r).len();
    assert_eq!(
        CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, bytes),
        Err(Error::TrailingBytes(extra))
    );
}

#[test]
fn truncated_or_garbage_bodies_are_decode_errors() {
    let bytes = encode_vec(&sample_record(5));
    for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
        assert_eq!(
            CrashRecord::decode(1, 2, &bytes[..cut]),
            Err(Error::Decode { major: 1, minor: 2 }),
            "cut at {cut}"
        );
    }
    // A string longer than its bound: build id length varint says 33.
    let mut b = bytes.clone();
    b[0] = 33;
    assert!(CrashRecord::decode(1, 0, &b).is_err());
}

#[test]
fn unknown_enum_codes_decode_as_other() {
    let mut r = sample_record(0);
    r.arch = Arch::Other(7);
    r.boot_mode = BootMode::Other(9);
    r.kind = CrashKind::Other {
        code: 42,
        a: 1,
        b: 2,
    };
    r.steps.clear();
    let _ = r.steps.push(StepRecord {
        step: Step::Other(99),
        outcome: Outcome::Other(77, 5),
        elapsed_us: 1,
    });
    let _ = r.steps.push(StepRecord {
        step: Step::Ship,
        outcome: Outcome::Skipped(SkipReason::Other(200)),
        elapsed_us: 2,
    });
    let back = CrashRecord::decode(1, SCHEMA_MINOR, &encode_vec(&r)).unwrap();
    assert_eq!(back, r);
    // And the codes are the documented ones.
    assert_eq!(u8::from(Arch::X86_64), 1);
    assert_eq!(u8::from(Arch::Aarch64), 2);
    assert_eq!(Arch::from(2), Arch::Aarch64);
    assert_eq!(
        <(u8, u64, u64)>::from(CrashKind::Fault {
            vector: 14,
            addr: 8
        }),
        (1, 14, 8)
    );
    assert_eq!(<(u8, u32)>::from(Outcome::Failed(3)), (6, 3));
    assert_eq!(u8::from(Step::End), 7);
}

#[test]
fn text_setters_truncate_at_char_boundaries() {
    let mut r = CrashRecord::empty();
    // 255 ASCII bytes then a 3-byte char: the char does not fit and is dropped whole.
    let msg = format!("{}€tail", "a".repeat(255));
    r.set_message(&msg);
    assert_eq!(r.message.len(), 255);
    // The log tail keeps the newest bytes and never starts inside a char.
    let log = format!("€{}", "z".repeat(LOG_TAIL_CAP - 1));
    r.set_log_tail(&log);
    assert_eq!(r.log_tail.len(), LOG_TAIL_CAP - 1);
    assert!(r.log_tail.starts_with('z'));
    let short = "hello";
    r.set_log_tail(short);
    assert_eq!(r.log_tail.as_str(), short);
    assert_eq!(tail_of::<4>("ab€"), "b€");
    assert_eq!(tail_of::<2>("ab€"), "");
    assert_eq!(truncate_to::<4>("ab€"), "ab");
}

fn arb_string<const N: usize>() -> impl Strategy<Value = heapless::String<N>> {
    ".{0,80}".prop_map(|s: std::string::String| truncate_to::<N>(&s))
}

fn arb_vec<const N: usize>() -> impl Strategy<Value = heapless::Vec<u64, N>> {
    proptest::collection::vec(any::<u64>(), 0..=N)
        .prop_map(|v| v.into_iter().collect::<heapless::Vec<u64, N>>())
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    (any::<u8>(), any::<u32>()).prop_map(Outcome::from)
}

prop_compose! {
    fn arb_record()(
        build_id in arb_string::<BUILD_ID_CAP>(),
        boot_id in any::<[u8; 16]>(),
        seq in any::<u32>(),
        arch in any::<u8>(),
        boot_mode in any::<u8>(),
        present in any::<bool>(),
        vendor in arb_string::<VENDOR_CAP>(),
        version in any::<[u32; 4]>(),
        privileges in any::<u64>(),
        vmbus_version in any::<Option<(u16, u16)>>(),
        uptime_us in any::<u64>(),
        message in arb_string::<MESSAGE_CAP>(),
        location in proptest::option::of((arb_string::<FILE_CAP>(), any::<u32>(), any::<u32>())),
        kind in any::<(u8, u64, u64)>(),
        gpr in arb_vec::<REGISTERS_CAP>(),
        pc_sp_fp in any::<(u64, u64, u64)>(),
        backtrace in arb_vec::<BACKTRACE_CAP>(),
        log in proptest::collection::vec(".{0,64}", 0..30),
        steps in proptest::collection::vec((any::<u8>(), arb_outcome(), any::<u32>()), 0..=STEPS_CAP),
    ) -> CrashRecord {
        let mut r = CrashRecord::empty();
        r.build_id = build_id;
        r.boot_id = boot_id;
        r.seq = seq;
        r.arch = Arch::from(arch);
        r.boot_mode = BootMode::from(boot_mode);
        r.hypervisor = HypervisorInfo { present, vendor, version, privileges };
        r.vmbus_version = vmbus_version;
        r.uptime_us = uptime_us;
        r.message = message;
        r.location = location.map(|(file, line, column)| Location { file, line, column });
        r.kind = CrashKind::from(kind);
        r.registers = Registers { gpr, pc: pc_sp_fp.0, sp: pc_sp_fp.1, fp: pc_sp_fp.2 };
        r.backtrace = backtrace;
        r.set_log_tail(&log.concat());
        for (step, outcome, elapsed_us) in steps {
            let _ = r.steps.push(StepRecord { step: Step::from(step), outcome, elapsed_us });
        }
        r
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_record_round_trips_within_max_encoded_len(r in arb_record()) {
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let bytes = r.encode(&mut buf).unwrap();
        prop_assert!(bytes.len() <= MAX_ENCODED_LEN);
        prop_assert_eq!(CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, bytes).unwrap(), r);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = CrashRecord::decode(1, 0, &bytes);
        let _ = CrashRecord::decode(1, 9, &bytes);
    }
}

#[test]
fn schema_1_1_carries_the_image_id_load_base_code_and_stack_bytes() {
    let mut r = sample_record(6);
    r.ext.image_id_kind = ImageIdKind::PeCodeView;
    r.ext.image_id.extend_from_slice(&[0xab; 20]).unwrap();
    r.ext.load_base = 0x7e5f_0000;
    r.ext.code_at = 0x7e5f_1000;
    r.ext.code.extend_from_slice(&[0x90; 64]).unwrap();
    r.ext.stack_at = 0x8000_0000;
    r.ext.stack.extend_from_slice(&[0x5a; 512]).unwrap();
    let bytes = encode_vec(&r);
    let got = CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, &bytes).unwrap();
    assert_eq!(got.ext.image_id_kind, ImageIdKind::PeCodeView);
    assert_eq!(&got.ext.image_id[..], &[0xab; 20]);
    assert_eq!(got.ext.load_base, 0x7e5f_0000);
    assert_eq!(got, r);
}

#[test]
fn schema_1_1_appends_stacks_backtrace_end_and_takeovers_and_reads_1_0_bodies() {
    let mut r = sample_record(4);
    r.ext.backtrace_end = BacktraceEnd::OutsideStack;
    r.ext.takeovers = TAKEOVER_HYPERV | TAKEOVER_NET;
    for (name, size, used) in [("boot", 65536u32, 20480u32), ("fault", 32768, 4096)] {
        let mut n = heapless::String::new();
        n.push_str(name).unwrap();
        r.ext
            .stacks
            .push(StackUse {
                name: n,
                size,
                used,
            })
            .unwrap();
    }
    let bytes = encode_vec(&r);
    assert_eq!(
        CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, &bytes).unwrap(),
        r
    );
    // A 1.0 writer's body (no group): the group takes its default.
    let mut old = r.clone();
    old.ext = Ext1::default();
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let body = postcard::to_slice(&old, &mut buf).unwrap();
    let got = CrashRecord::decode(SCHEMA_MAJOR, 0, body).unwrap();
    assert_eq!(got, old);
    assert_eq!(got.ext.backtrace_end, BacktraceEnd::Unknown);
    // The 1.1 bytes claiming 1.0: the group is trailing bytes.
    assert!(matches!(
        CrashRecord::decode(SCHEMA_MAJOR, 0, &bytes),
        Err(Error::TrailingBytes(_))
    ));
    // Unknown backtrace-end and image-id codes survive.
    assert_eq!(ImageIdKind::from(9), ImageIdKind::Other(9));
    assert_eq!(u8::from(ImageIdKind::Other(9)), 9);
    assert_eq!(BacktraceEnd::from(200), BacktraceEnd::Other(200));
    assert_eq!(u8::from(BacktraceEnd::Other(200)), 200);
}

/// The one-byte open enums (`open_u8!` in lib.rs): every code survives a round trip, the
/// documented codes name their variants, and an unknown one is kept in `Other`.
#[test]
fn one_byte_open_enums_keep_every_code() {
    for v in 0..=255u8 {
        assert_eq!(u8::from(Step::from(v)), v);
        assert_eq!(u8::from(SkipReason::from(v)), v);
        assert_eq!(u8::from(Arch::from(v)), v);
        assert_eq!(u8::from(BootMode::from(v)), v);
        assert_eq!(u8::from(BacktraceEnd::from(v)), v);
        assert_eq!(u8::from(ImageIdKind::from(v)), v);
        assert_eq!(u8::from(crate::wire::Kind::from(v)), v);
        assert_eq!(u8::from(crate::wire::AckStatus::from(v)), v);
    }
    // The frame kinds and ack statuses of capture/API.md's wire table.
    use crate::wire::{AckStatus, Kind};
    let kinds = [1, 2, 3, 4, 5, 6].map(Kind::from);
    assert_eq!(
        kinds,
        [
            Kind::Chunk,
            Kind::Ack,
            Kind::Heartbeat,
            Kind::Drill,
            Kind::Challenge,
            Kind::Followup
        ]
    );
    assert_eq!(Kind::from(0), Kind::Unknown(0));
    assert_eq!(Kind::from(7), Kind::Unknown(7));
    assert_eq!(
        [0, 1, 2, 3].map(AckStatus::from),
        [
            AckStatus::Stored,
            AckStatus::Duplicate,
            AckStatus::Rejected,
            AckStatus::Other(3)
        ]
    );
    let steps: Vec<u8> = Step::ALL.iter().map(|&s| u8::from(s)).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(SkipReason::from(3), SkipReason::VersionTooOld);
    assert_eq!(SkipReason::from(5), SkipReason::Nested);
    assert_eq!(BootMode::from(4), BootMode::DirectAarch64);
    assert_eq!(BacktraceEnd::from(7), BacktraceEnd::Scanned);
    assert_eq!(ImageIdKind::from(2), ImageIdKind::PeCodeView);
    assert_eq!(Step::from(8), Step::Other(8));
    assert_eq!(Arch::from(0), Arch::Other(0));
}
