//! The store contract, run against each backend: SQLite in a temporary directory and
//! PostgreSQL in a fresh database on `$CANARY_TEST_PG` (see `pg::testing`).

use super::*;
use capture::record::{CrashRecord, MAX_ENCODED_LEN, SCHEMA_MAJOR, SCHEMA_MINOR};

mod followed;
mod retention;

/// A record with the sample fields of `seq` and raw bytes that do not decode (the SQLite
/// backend renders from its columns; for both backends use [`real`]).
pub(crate) fn sample(seq: u32, at: i64) -> NewRecord {
    NewRecord {
        key: RecordKey {
            boot_id: [7; 16],
            seq,
            record_crc: 0xdead_beef,
        },
        received_at_us: at,
        schema_major: 1,
        schema_minor: 0,
        uptime_us: 5,
        line_col: (1, 2),
        text: RowText::from_fields("127.0.0.1:9", &sample_fields(seq)),
        raw: vec![1, 2, 3],
    }
}

pub(crate) fn sample_fields(seq: u32) -> RecordFields {
    RecordFields {
        build_id: "b".into(),
        arch: "x86_64".into(),
        boot_mode: "Pvh".into(),
        hypervisor: serde_json::json!({"vendor": "none"}),
        vmbus_version: None,
        uptime_us: 5,
        kind: "Panic".into(),
        kind_detail: None,
        message: format!("boom {seq}"),
        location: Some(LocationView {
            file: "src/main.rs".into(),
            line: 1,
            column: 2,
        }),
        registers: serde_json::json!({}),
        backtrace: vec!["0x1".into()],
        log_tail: "log".into(),
        steps: vec![StepView {
            step: "Freeze".into(),
            outcome: "Done".into(),
            elapsed_us: 3,
        }],
        vm_name: None,
        host_name: None,
    }
}

/// `rec` sealed at the panic screen (its steps cut to the first, freeze), as `serve` stores
/// it from `peer`, received at `at`.
pub(crate) fn sealed(rec: &mut CrashRecord, peer: &str, at: i64) -> NewRecord {
    rec.steps.truncate(1);
    let mut buf = vec![0u8; MAX_ENCODED_LEN];
    let raw = rec.encode(&mut buf).expect("encodes").to_vec();
    NewRecord {
        key: RecordKey {
            boot_id: rec.boot_id,
            seq: rec.seq,
            record_crc: crc32fast::hash(&raw),
        },
        received_at_us: at,
        schema_major: SCHEMA_MAJOR,
        schema_minor: SCHEMA_MINOR,
        uptime_us: rec.uptime_us,
        line_col: (0, 0),
        text: crate::convert::row_text(peer.parse().unwrap(), rec),
        raw,
    }
}

/// The steps after the seal (screen flush to end), each with the outcome and time `f` gives
/// it (from its index after the seal and the step).
pub(crate) fn after_seal(
    f: impl Fn(usize, capture::panic::Step) -> (capture::panic::Outcome, u32),
) -> Vec<capture::panic::StepRecord> {
    capture::panic::Step::ALL[1..]
        .iter()
        .enumerate()
        .map(|(i, &step)| {
            let (outcome, elapsed_us) = f(i, step);
            capture::panic::StepRecord {
                step,
                outcome,
                elapsed_us,
            }
        })
        .collect()
}

/// The follow-up frame (no key) of record `key` carrying `steps`.
pub(crate) fn followup_frame(key: &RecordKey, steps: &[capture::panic::StepRecord]) -> Vec<u8> {
    let id = capture::RecordId {
        boot_id: key.boot_id,
        seq: key.seq,
        record_crc: key.record_crc,
    };
    let f = capture::followup::FollowupRepr::new(&id, steps);
    let mut out = [0u8; 256];
    let len = capture::wire::Repr::Followup(f)
        .emit(None, &mut out)
        .unwrap();
    out[..len].to_vec()
}

/// A real record (`capture::testutil::sample_record(seq)` on boot `boot`), as the
/// collector would store it, and the fields `show` must give back.
pub(crate) fn real(boot: u8, seq: u32, at: i64) -> (NewRecord, RecordFields) {
    let mut r = capture::testutil::sample_record(seq);
    r.boot_id = [boot; 16];
    let mut buf = vec![0u8; MAX_ENCODED_LEN];
    let raw = r.encode(&mut buf).expect("encodes").to_vec();
    let source: std::net::SocketAddr = "10.0.0.9:4000".parse().unwrap();
    let n = NewRecord {
        key: RecordKey {
            boot_id: r.boot_id,
            seq,
            record_crc: crc32fast::hash(&raw),
        },
        received_at_us: at,
        schema_major: SCHEMA_MAJOR,
        schema_minor: SCHEMA_MINOR,
        uptime_us: r.uptime_us,
        line_col: r.location.as_ref().map_or((0, 0), |l| (l.line, l.column)),
        text: crate::convert::row_text(source, &r),
        raw,
    };
    let f =
        crate::convert::fields(&CrashRecord::decode(SCHEMA_MAJOR, SCHEMA_MINOR, &n.raw).unwrap());
    (n, f)
}

/// What `put_followup` reports of record `n`, stored with id `id`: the record a follow-up
/// was attached to.
pub(crate) fn followed(n: &NewRecord, id: i64) -> FollowedRecord {
    FollowedRecord {
        id,
        source: n.text.get(Col::Source).expect("a source").to_string(),
    }
}

/// One backend to run a contract test on; keeps its database until dropped.
pub(crate) struct Backend {
    pub name: &'static str,
    pub db: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub pg: Option<pg::testing::TestDb>,
}

impl Backend {
    pub fn open(&self) -> Store {
        Store::open(&self.db, Sync::Normal).unwrap_or_else(|e| panic!("{}: open: {e}", self.name))
    }
}

/// SQLite, and PostgreSQL when a server is given (see `pg::testing::server_url`).
pub(crate) fn backends(test: &str) -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let mut v = vec![Backend {
        name: "sqlite",
        db: dir.path().join("db"),
        _dir: Some(dir),
        pg: None,
    }];
    v.extend(pg_backend(test));
    v
}

pub(crate) fn pg_backend(test: &str) -> Option<Backend> {
    let t = pg::testing::TestDb::create(test)?;
    Some(Backend {
        name: "postgres",
        db: t.url.clone().into(),
        _dir: None,
        pg: Some(t),
    })
}

#[test]
fn duplicate_keys_are_ignored_and_reported() {
    for b in backends("duplicate_keys") {
        let mut s = b.open();
        let (a, _) = real(1, 1, 10);
        let out = s
            .commit_batch(&[a.clone(), a.clone()], &[], &[], &[])
            .unwrap();
        assert_eq!(
            out,
            [InsertOutcome::Stored, InsertOutcome::Duplicate],
            "{}",
            b.name
        );
        assert_eq!(s.last_stored_ids().len(), 1, "{}", b.name);
        let out = s.commit_batch(&[a], &[], &[], &[]).unwrap();
        assert_eq!(out, [InsertOutcome::Duplicate], "{}", b.name);
        let st = s.stats().unwrap();
        assert_eq!(st.records, 1, "{}", b.name);
        assert_eq!(st.counters["records_stored"], 1, "{}", b.name);
        assert_eq!(st.counters["duplicates"], 2, "{}", b.name);
    }
}

#[test]
fn stored_record_reads_back_identically() {
    for b in backends("reads_back") {
        let mut s = b.open();
        let (a, fields) = real(2, 4, 10);
        s.commit_batch(std::slice::from_ref(&a), &[], &[], &[])
            .unwrap();
        let v = s
            .get(&RecordRef::BootSeq([2; 16], 4), true)
            .unwrap()
            .unwrap();
        assert_eq!(v.fields, fields, "{}", b.name);
        assert_eq!(
            v.raw_hex.as_deref(),
            Some(&*crate::util::hex(&a.raw)),
            "{}",
            b.name
        );
        assert_eq!(
            v.record_crc,
            format!("{:08x}", a.key.record_crc),
            "{}",
            b.name
        );
        assert_eq!(v.source, "10.0.0.9:4000", "{}", b.name);
        let by_id = s.get(&RecordRef::Id(v.id), false).unwrap().unwrap();
        assert_eq!(by_id.fields, fields, "{}", b.name);
        assert!(s.get(&RecordRef::Id(v.id + 99), false).unwrap().is_none());
        let l = s.list(&Filter::default()).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].message, fields.message, "{}", b.name);
        assert_eq!(
            l[0].location.as_deref(),
            Some("appliance/src/workload.rs:214:17"),
            "{}",
            b.name
        );
        let all = s.records(&Filter::default(), false).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].fields, fields, "{}", b.name);
        // A boot id prefix names the boot's newest record.
        let r = s.resolve_ref("0202:").unwrap().unwrap();
        assert_eq!(r, RecordRef::Id(v.id), "{}", b.name);
        assert!(s.resolve_ref("ffff:").unwrap().is_none(), "{}", b.name);
    }
}

#[test]
fn counters_accumulate_across_batches() {
    for b in backends("counters") {
        let mut s = b.open();
        s.commit_batch(&[], &[], &[], &[("bad_crc", 2), ("evictions", 0)])
            .unwrap();
        s.commit_batch(&[], &[], &[], &[("bad_crc", 3)]).unwrap();
        let st = s.stats().unwrap();
        assert_eq!(st.counters["bad_crc"], 5, "{}", b.name);
        assert_eq!(st.counters["evictions"], 0, "{}", b.name);
    }
}

#[test]
fn prune_keep_keeps_newest_and_a_pruned_record_stays_a_duplicate() {
    for b in backends("prune_keep") {
        let mut s = b.open();
        let recs: Vec<_> = (0..5).map(|i| real(3, i, i as i64 * 100).0).collect();
        s.commit_batch(&recs, &[], &[], &[]).unwrap();
        assert_eq!(s.prune_keep(2).unwrap(), 3, "{}", b.name);
        let left: Vec<u32> = s
            .list(&Filter::default())
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, vec![3, 4], "{}", b.name);
        assert_eq!(s.prune_before(400).unwrap(), 1, "{}", b.name);
        assert_eq!(s.stats().unwrap().records, 1, "{}", b.name);
        drop(s);
        // Reopened (SQLite loads its keys again): the pruned record is a duplicate.
        let mut s = b.open();
        let out = s.commit_batch(&recs[..1], &[], &[], &[]).unwrap();
        assert_eq!(out, [InsertOutcome::Duplicate], "{}", b.name);
        assert_eq!(s.count().unwrap(), 1, "{}", b.name);
    }
}

#[test]
fn the_host_filter_matches_either_name_by_prefix_ignoring_case() {
    for b in backends("host_filter") {
        let mut s = b.open();
        let mut recs = Vec::new();
        for (i, (vm, host)) in [
            (Some("web-01"), Some("HV07.corp.example")),
            (Some("db-01"), Some("hv08.corp.example")),
            (None, None),
            (Some("50%_off"), None),
        ]
        .into_iter()
        .enumerate()
        {
            let (mut n, _) = real(4, i as u32, 10);
            let mut f = sample_fields(i as u32);
            f.vm_name = vm.map(Into::into);
            f.host_name = host.map(Into::into);
            n.text = RowText::from_fields("10.0.0.9:4000", &f);
            recs.push(n);
        }
        s.commit_batch(&recs, &[], &[], &[]).unwrap();
        let seqs = |h: &str| -> Vec<u32> {
            s.list(&Filter {
                host: Some(h.into()),
                ..Filter::default()
            })
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
        };
        assert_eq!(seqs("hv0"), [0, 1], "{}", b.name);
        assert_eq!(seqs("hv07"), [0], "{}", b.name);
        assert_eq!(seqs("HV08.CORP.EXAMPLE"), [1], "{}", b.name);
        assert_eq!(seqs("WEB"), [0], "{}", b.name);
        assert_eq!(seqs("corp"), Vec::<u32>::new(), "{}", b.name);
        // LIKE's own wildcards are plain characters here.
        assert_eq!(seqs("50%"), [3], "{}", b.name);
        assert_eq!(seqs("5_%"), Vec::<u32>::new(), "{}", b.name);
        assert_eq!(seqs("%"), Vec::<u32>::new(), "{}", b.name);
        let v = s
            .get(&RecordRef::BootSeq([4; 16], 0), false)
            .unwrap()
            .unwrap();
        assert_eq!(v.fields.vm_name.as_deref(), Some("web-01"), "{}", b.name);
        assert_eq!(
            v.fields.host_name.as_deref(),
            Some("HV07.corp.example"),
            "{}",
            b.name
        );
    }
}

#[test]
fn followups_attach_to_a_stored_record_once() {
    for b in backends("followups") {
        let mut s = b.open();
        let (a, _) = real(5, 1, 10);
        let (other, _) = real(5, 2, 10);
        assert_eq!(
            s.put_followup(&a.key, b"early", 1).unwrap(),
            FollowupOutcome::NoSuchRecord,
            "{}",
            b.name
        );
        assert_eq!(s.followup(&a.key).unwrap(), None);
        s.commit_batch(std::slice::from_ref(&a), &[], &[], &[])
            .unwrap();
        let record = followed(&a, s.last_stored_ids()[0]);
        assert_eq!(
            s.put_followup(&a.key, b"steps 1", 2).unwrap(),
            FollowupOutcome::Stored { record },
            "{}",
            b.name
        );
        assert_eq!(
            s.put_followup(&a.key, b"steps 2", 3).unwrap(),
            FollowupOutcome::Duplicate,
            "{}",
            b.name
        );
        assert_eq!(
            s.followup(&a.key).unwrap().as_deref(),
            Some(&b"steps 1"[..])
        );
        assert_eq!(s.followup(&other.key).unwrap(), None, "{}", b.name);
        let mut wrong_crc = a.key;
        wrong_crc.record_crc ^= 1;
        assert_eq!(
            s.put_followup(&wrong_crc, b"x", 4).unwrap(),
            FollowupOutcome::NoSuchRecord,
            "{}",
            b.name
        );
    }
}

#[test]
fn heartbeats_count_only_newer_sequences_and_rejections_are_kept() {
    for b in backends("heartbeats") {
        let mut s = b.open();
        let hb = |seq: u32, at: i64| HeartbeatSeen {
            boot_id: [6; 16],
            source: "10.0.0.6:1".into(),
            arch: 1,
            seen_at_us: at,
            uptime_ms: 1000 + seq as u64,
            seq,
        };
        s.commit_batch(&[], &[], &[hb(1, 100), hb(2, 200)], &[])
            .unwrap();
        s.commit_batch(&[], &[], &[hb(2, 300), hb(1, 400)], &[])
            .unwrap();
        let c = s.canaries().unwrap();
        assert_eq!(c.len(), 1, "{}", b.name);
        assert_eq!(
            (c[0].heartbeats, c[0].heartbeat_seq, c[0].last_seen_us),
            (2, 2, 200),
            "{}",
            b.name
        );
        let rej = Rejection {
            key: RecordKey {
                boot_id: [6; 16],
                seq: 9,
                record_crc: 1,
            },
            source: "10.0.0.6:1".into(),
            received_at_us: 5,
            schema_major: 9,
            schema_minor: 0,
            reason: "newer major".into(),
            raw: vec![1; 10],
        };
        s.set_rejected_budget(15);
        s.commit_batch(&[], &[rej.clone(), rej.clone()], &[], &[])
            .unwrap();
        let r = s.rejections().unwrap();
        assert_eq!(r.len(), 1, "{}", b.name);
        assert_eq!(
            (r[0].schema.as_str(), r[0].reason.as_str()),
            ("9.0", "newer major")
        );
        let st = s.stats().unwrap();
        assert_eq!(st.counters["rejected"], 2, "{}", b.name);
        assert_eq!(st.counters["rejected_not_kept"], 1, "{}", b.name);
        assert_eq!(st.counters["heartbeats"], 4, "{}", b.name);
        assert_eq!(st.canaries, 1, "{}", b.name);
    }
}

#[test]
fn retention_and_step_stats_work_on_every_backend() {
    for b in backends("retention") {
        let mut s = b.open();
        let recs: Vec<_> = (0..10)
            .map(|i| real(8, i, i as i64 * 1_000_000).0)
            .collect();
        s.commit_batch(&recs, &[], &[], &[]).unwrap();
        let n = s
            .apply_retention(
                &Retention {
                    max_records: Some(4),
                    ..Retention::default()
                },
                0,
            )
            .unwrap();
        assert_eq!(n, 6, "{}", b.name);
        assert_eq!(s.count().unwrap(), 4, "{}", b.name);
        assert_eq!(s.count_before(8_000_000).unwrap(), 2, "{}", b.name);
        assert_eq!(
            s.stats().unwrap().counters["retention_deleted"],
            6,
            "{}",
            b.name
        );
        assert!(s.used_bytes().unwrap() > 0, "{}", b.name);
        let st = s.step_stats(None).unwrap();
        assert!(
            st.iter().any(|x| x.host == "10.0.0.9" && x.records == 4),
            "{}: {st:?}",
            b.name
        );
        assert_eq!(
            s.max_id().unwrap(),
            s.list(&Filter::default()).unwrap().last().map(|r| r.id)
        );
    }
}

#[test]
fn liveness_rows_round_trip() {
    use crate::liveness::{Canary, State};
    for b in backends("liveness") {
        let mut s = b.open();
        let c = Canary {
            address: "10.0.0.1".into(),
            boot_id: [1; 16],
            arch: 1,
            first_seen_us: 10,
            last_seen_us: 20,
            heartbeat_seq: Some(3),
            uptime_ms: 4,
            interval_ms: 5000,
            silent_after_ms: 15000,
            state: State::Alive,
            state_since_us: 10,
            crashed_boot: None,
            last_record_id: None,
            crashes: 0,
        };
        s.save_liveness(std::slice::from_ref(&c)).unwrap();
        let got = s.liveness().unwrap();
        assert_eq!(got, std::slice::from_ref(&c), "{}", b.name);
    }
}

#[test]
fn checkpointer_copies_the_writers_wal_and_restart_starts_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut s = Store::open(&path, Sync::Normal).unwrap();
    s.set_autocheckpoint(0).unwrap();
    let recs: Vec<_> = (0..50).map(|i| sample(i, i as i64)).collect();
    s.commit_batch(&recs, &[], &[], &[]).unwrap();
    let c = Checkpointer::open(&path, Sync::Normal).unwrap();
    let (log, done) = c.passive().unwrap();
    assert!(log > 0, "the writer's commit is in the WAL");
    assert_eq!(done, log, "an idle writer's WAL is copied completely");
    c.restart().unwrap();
    s.commit_batch(&[sample(100, 1)], &[], &[], &[]).unwrap();
    let (log2, _) = c.passive().unwrap();
    assert!(
        log2 < log,
        "after RESTART the WAL starts over ({log2} >= {log} pages)"
    );
    assert_eq!(s.stats().unwrap().records, 51);
}

#[test]
fn record_ref_parses_id_and_boot_seq() {
    assert_eq!("12".parse::<RecordRef>().unwrap(), RecordRef::Id(12));
    let r: RecordRef = "000102030405060708090a0b0c0d0e0f:7".parse().unwrap();
    let mut b = [0u8; 16];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    assert_eq!(r, RecordRef::BootSeq(b, 7));
    assert!("zz:1".parse::<RecordRef>().is_err());
    assert!("00:1".parse::<RecordRef>().is_err());
}

/// A record sealed at the panic screen has the freeze step's time only; its follow-up frame
/// (the steps after the seal) fills the other step columns `stats --steps` reads, once.
#[test]
fn a_followup_fills_the_step_columns_the_sealed_record_lacks() {
    use capture::panic::{Outcome, Step};
    for b in backends("followup_steps") {
        let mut s = b.open();
        let mut r = capture::testutil::sample_record(3);
        r.boot_id = [9; 16];
        let n = sealed(&mut r, "10.0.0.9:4000", 1);
        let key = n.key;
        s.commit_batch(std::slice::from_ref(&n), &[], &[], &[])
            .unwrap();
        let frame = |us: u32| {
            let steps = after_seal(|_, step| {
                let outcome = if step == Step::End {
                    Outcome::Pending
                } else {
                    Outcome::Done
                };
                (outcome, us)
            });
            followup_frame(&key, &steps)
        };
        let record = followed(&n, s.last_stored_ids()[0]);
        assert_eq!(
            s.put_followup(&key, &frame(40), 2).unwrap(),
            FollowupOutcome::Stored { record }
        );
        // A second one (a retransmit with other times) changes nothing.
        assert_eq!(
            s.put_followup(&key, &frame(99), 3).unwrap(),
            FollowupOutcome::Duplicate
        );
        let st = s.step_stats(None).unwrap();
        let timed: Vec<(&str, u32)> = st.iter().map(|x| (x.step.as_str(), x.max_us)).collect();
        let freeze = r.steps[0].elapsed_us;
        assert_eq!(
            timed,
            [
                ("freeze", freeze),
                ("screen-flush", 40),
                ("vmbus-unload", 40),
                ("arch-cleanup", 40),
                ("ship", 40),
                ("crash-registers", 40)
            ],
            "{}",
            b.name
        );
    }
}

/// The appliance sends a follow-up when its record is acked (crash registers and end
/// pending: a host may stop the VM at the crash registers) and the more complete one from the
/// end step: the more complete replaces the earlier one and fills the step columns it adds;
/// one that reports no more (a retransmit, or the earlier one arriving late) is a duplicate.
#[test]
fn a_more_complete_followup_replaces_the_earlier_one_and_fills_the_columns_it_adds() {
    use capture::panic::{Outcome, Step};
    for b in backends("followup_replace") {
        let mut s = b.open();
        let mut r = capture::testutil::sample_record(4);
        r.boot_id = [7; 16];
        let n = sealed(&mut r, "10.0.0.7:4000", 1);
        let key = n.key;
        s.commit_batch(std::slice::from_ref(&n), &[], &[], &[])
            .unwrap();
        // `done` steps after the seal reported (30 us each; crash registers 55 us), the
        // rest pending.
        let frame = |done: usize| {
            let steps = after_seal(|i, step| match (i < done, step) {
                (false, _) => (Outcome::Pending, 0),
                (true, Step::CrashRegisters) => (Outcome::Done, 55),
                (true, _) => (Outcome::Done, 30),
            });
            followup_frame(&key, &steps)
        };
        let (after_ship, from_end) = (frame(4), frame(5));
        let timed = |s: &Store| -> Vec<(String, u32)> {
            s.step_stats(None)
                .unwrap()
                .into_iter()
                .map(|x| (x.step, x.max_us))
                .collect()
        };
        let freeze = ("freeze".to_string(), r.steps[0].elapsed_us);
        let t = |n: &str, us: u32| (n.to_string(), us);
        let record = followed(&n, s.last_stored_ids()[0]);
        assert_eq!(
            s.put_followup(&key, &after_ship, 2).unwrap(),
            FollowupOutcome::Stored {
                record: record.clone()
            },
            "{}",
            b.name
        );
        assert_eq!(
            timed(&s),
            [
                freeze.clone(),
                t("screen-flush", 30),
                t("vmbus-unload", 30),
                t("arch-cleanup", 30),
                t("ship", 30)
            ],
            "{}",
            b.name
        );
        // The retransmitted first one: nothing changes.
        assert_eq!(
            s.put_followup(&key, &after_ship, 3).unwrap(),
            FollowupOutcome::Duplicate,
            "{}",
            b.name
        );
        // The end step's: it replaces it and adds the crash registers' time.
        assert_eq!(
            s.put_followup(&key, &from_end, 4).unwrap(),
            FollowupOutcome::Replaced {
                record,
                reported_before: 4
            },
            "{}",
            b.name
        );
        assert_eq!(s.followup(&key).unwrap().as_deref(), Some(&from_end[..]));
        let all = [
            freeze,
            t("screen-flush", 30),
            t("vmbus-unload", 30),
            t("arch-cleanup", 30),
            t("ship", 30),
            t("crash-registers", 55),
        ];
        assert_eq!(timed(&s), all, "{}", b.name);
        // The first one arriving late, or the end step's again: duplicates; it stays.
        for (f, at) in [(&after_ship, 5), (&from_end, 6)] {
            assert_eq!(
                s.put_followup(&key, f, at).unwrap(),
                FollowupOutcome::Duplicate,
                "{}",
                b.name
            );
        }
        assert_eq!(s.followup(&key).unwrap().as_deref(), Some(&from_end[..]));
        assert_eq!(timed(&s), all, "{}", b.name);
    }
}

/// A lean row (what `serve` stores) reads back exactly like a full one, from `raw`.
#[test]
fn a_lean_row_reads_back_like_a_full_one() {
    for b in backends("lean_rows") {
        let mut s = b.open();
        let (full, fields) = real(10, 1, 10);
        let (lean, _) = real(11, 1, 10);
        s.commit_batch(std::slice::from_ref(&full), &[], &[], &[])
            .unwrap();
        s.set_lean(true);
        s.commit_batch(std::slice::from_ref(&lean), &[], &[], &[])
            .unwrap();
        let a = s
            .get(&RecordRef::BootSeq([10; 16], 1), true)
            .unwrap()
            .unwrap();
        let l = s
            .get(&RecordRef::BootSeq([11; 16], 1), true)
            .unwrap()
            .unwrap();
        assert_eq!(a.fields, fields, "{}", b.name);
        assert_eq!(l.fields, fields, "{}", b.name);
        assert_eq!(l.raw_hex, Some(crate::util::hex(&lean.raw)), "{}", b.name);
        if b.name == "sqlite" {
            let nulls: i64 = s
                .connection()
                .query_row(
                    "SELECT count(*) FROM records WHERE registers IS NULL AND log_tail IS NULL
                        AND hypervisor IS NULL AND steps IS NULL AND backtrace IS NULL",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(
                nulls, 1,
                "only the lean row leaves its rendered columns NULL"
            );
        }
        let list = s.list(&Filter::default()).unwrap();
        assert_eq!(list[0].message, list[1].message, "{}", b.name);
        assert_eq!(list[0].location, list[1].location, "{}", b.name);
    }
}

/// The rows of `followups` in `b`'s database.
pub(crate) fn followup_rows(b: &Backend, s: &Store) -> i64 {
    let q = "SELECT count(*) FROM followups";
    match &b.pg {
        Some(t) => t.query_i64(q).unwrap(),
        None => s.connection().query_row(q, [], |r| r.get(0)).unwrap(),
    }
}

/// A record's follow-up goes with the record, whichever way it is deleted (`prune` by time
/// or by count, `serve`'s retention by age, count or bytes): nothing keeps it past its
/// record's retention (issue 14). The follow-ups of the records kept stay, the counts say
/// records, and a pruned record's follow-up sent again is not stored.
#[test]
fn a_pruned_records_followup_goes_with_it() {
    use std::time::Duration;
    let retain = |r: Retention| move |s: &mut Store| s.apply_retention(&r, 450).unwrap();
    type Prune = Box<dyn Fn(&mut Store) -> u64>;
    let ways: [(&str, Prune); 5] = [
        ("prune_before", Box::new(|s| s.prune_before(300).unwrap())),
        ("prune_keep", Box::new(|s| s.prune_keep(2).unwrap())),
        (
            "max_age",
            Box::new(retain(Retention {
                max_age: Some(Duration::from_micros(200)),
                ..Retention::default()
            })),
        ),
        (
            "max_records",
            Box::new(retain(Retention {
                max_records: Some(2),
                ..Retention::default()
            })),
        ),
        (
            "max_bytes",
            Box::new(retain(Retention {
                max_bytes: Some(1),
                ..Retention::default()
            })),
        ),
    ];
    for (way, prune) in ways {
        for b in backends(&format!("followup_prune_{way}")) {
            let at = format!("{} {way}", b.name);
            let mut s = b.open();
            // Records at 0, 100, .., 400 us, each with a follow-up.
            let recs: Vec<_> = (0..5).map(|i| real(12, i, i as i64 * 100).0).collect();
            s.commit_batch(&recs, &[], &[], &[]).unwrap();
            let ids = s.last_stored_ids().to_vec();
            let frame = |k: &RecordKey| {
                followup_frame(k, &after_seal(|_, _| (capture::panic::Outcome::Done, 10)))
            };
            for (r, &id) in recs.iter().zip(&ids) {
                assert_eq!(
                    s.put_followup(&r.key, &frame(&r.key), 1).unwrap(),
                    FollowupOutcome::Stored {
                        record: followed(r, id)
                    },
                    "{at}"
                );
            }
            assert_eq!(followup_rows(&b, &s), 5, "{at}");
            // By time and count the three oldest go; by bytes (1 byte) every record.
            let gone = if way == "max_bytes" { 5 } else { 3 };
            assert_eq!(prune(&mut s), gone as u64, "{at}: records deleted");
            assert_eq!(s.count().unwrap(), 5 - gone as u64, "{at}");
            for (i, r) in recs.iter().enumerate() {
                let kept = i >= gone;
                assert_eq!(s.contains(&r.key).unwrap(), kept, "{at}: record {i}");
                assert_eq!(
                    s.followup(&r.key).unwrap().is_some(),
                    kept,
                    "{at}: follow-up of record {i}"
                );
            }
            assert_eq!(
                followup_rows(&b, &s),
                5 - gone as i64,
                "{at}: followups rows left"
            );
            // Sent again after its record was pruned: not stored.
            assert_eq!(
                s.put_followup(&recs[0].key, &frame(&recs[0].key), 2)
                    .unwrap(),
                FollowupOutcome::NoSuchRecord,
                "{at}"
            );
            assert_eq!(followup_rows(&b, &s), 5 - gone as i64, "{at}");
        }
    }
}
