use super::*;

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
    }
}

#[test]
fn duplicate_keys_are_ignored_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("db"), Sync::Normal).unwrap();
    let a = sample(1, 10);
    let out = s
        .commit_batch(&[a.clone(), a.clone()], &[], &[], &[])
        .unwrap();
    assert_eq!(out, vec![InsertOutcome::Stored, InsertOutcome::Duplicate]);
    let out = s.commit_batch(&[a], &[], &[], &[]).unwrap();
    assert_eq!(out, vec![InsertOutcome::Duplicate]);
    let st = s.stats().unwrap();
    assert_eq!(st.records, 1);
    assert_eq!(st.counters["records_stored"], 1);
    assert_eq!(st.counters["duplicates"], 2);
}

#[test]
fn stored_record_reads_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("db"), Sync::Normal).unwrap();
    let a = sample(4, 10);
    s.commit_batch(std::slice::from_ref(&a), &[], &[], &[])
        .unwrap();
    let v = s
        .get(&RecordRef::BootSeq([7; 16], 4), true)
        .unwrap()
        .unwrap();
    assert_eq!(v.fields, sample_fields(4));
    assert_eq!(v.raw_hex.as_deref(), Some("010203"));
    assert!(s.get(&RecordRef::Id(99), false).unwrap().is_none());
}

#[test]
fn counters_accumulate_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("db"), Sync::Normal).unwrap();
    s.commit_batch(&[], &[], &[], &[("bad_crc", 2), ("evictions", 0)])
        .unwrap();
    s.commit_batch(&[], &[], &[], &[("bad_crc", 3)]).unwrap();
    let st = s.stats().unwrap();
    assert_eq!(st.counters["bad_crc"], 5);
    assert_eq!(st.counters["evictions"], 0);
}

#[test]
fn prune_keep_keeps_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("db"), Sync::Normal).unwrap();
    let recs: Vec<_> = (0..5).map(|i| sample(i, i as i64 * 100)).collect();
    s.commit_batch(&recs, &[], &[], &[]).unwrap();
    assert_eq!(s.prune_keep(2).unwrap(), 3);
    let left: Vec<u32> = s
        .list(&Filter::default())
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(left, vec![3, 4]);
    assert_eq!(s.prune_before(400).unwrap(), 1);
    assert_eq!(s.stats().unwrap().records, 1);
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
