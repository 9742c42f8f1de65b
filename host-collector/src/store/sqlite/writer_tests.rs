//! The SQLite writer's own tests (the store contract is in `store/tests.rs`): the ids and
//! keys its chunked inserts give, lean and full rows, and page sizes of old and new files.

use super::super::tests::{followed, real};
use super::super::*;
use super::{SqliteStore, PAGE_SIZE};

fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(path, Sync::Normal).expect("open")
}

fn page_size(s: &SqliteStore) -> i64 {
    s.connection()
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .expect("page_size")
}

/// `(id, boot_id, seq, record_crc)` of every row of `table`, by id.
fn keys_of(s: &SqliteStore, table: &str) -> Vec<(i64, Vec<u8>, u32, u32)> {
    let mut st = s
        .connection()
        .prepare(&format!(
            "SELECT id, boot_id, seq, record_crc FROM {table} ORDER BY id"
        ))
        .expect("prepare");
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

/// Batches of every size around the chunk sizes (1..=70, 127, 129), lean and full, with
/// duplicates inside a batch and of earlier batches: each new record is stored once, the
/// ids the store reports are the rows' ids, consecutive and in order, and `record_keys`
/// holds exactly the stored records' keys and ids.
#[test]
fn batches_of_every_size_store_each_record_once_with_its_id_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("db"));
    let mut seq = 0u32;
    let mut stored: Vec<RecordKey> = Vec::new();
    for (i, n) in (1..=70).chain([127, 129]).enumerate() {
        s.set_lean(i % 2 == 0);
        let mut batch: Vec<NewRecord> = (0..n)
            .map(|_| {
                seq += 1;
                real((seq % 7) as u8, seq, seq as i64).0
            })
            .collect();
        // A duplicate of this batch's first record, and of the first record ever stored.
        batch.insert(n / 2, batch[0].clone());
        if let Some(k) = stored.first() {
            let mut again = real((k.seq % 7) as u8, k.seq, 0).0;
            again.key = *k;
            batch.push(again);
        }
        let before = s.max_id().expect("max_id").unwrap_or(0);
        let out = s.commit_batch(&batch, &[], &[], &[]).expect("commit");
        let fresh: Vec<RecordKey> = batch
            .iter()
            .zip(&out)
            .filter(|(_, o)| **o == InsertOutcome::Stored)
            .map(|(r, _)| r.key)
            .collect();
        assert_eq!(fresh.len(), n, "batch of {n}: {out:?}");
        let ids: Vec<i64> = (before + 1..=before + n as i64).collect();
        assert_eq!(s.last_stored_ids(), &ids[..], "batch of {n}");
        let rows = keys_of(&s, "records");
        let tail = &rows[rows.len() - n..];
        for ((id, k), row) in ids.iter().zip(&fresh).zip(tail) {
            assert_eq!(
                row,
                &(*id, k.boot_id.to_vec(), k.seq, k.record_crc),
                "batch of {n}"
            );
        }
        stored.extend(fresh);
    }
    let recs = keys_of(&s, "records");
    assert_eq!(recs, keys_of(&s, "record_keys"));
    let want: Vec<(Vec<u8>, u32, u32)> = stored
        .iter()
        .map(|k| (k.boot_id.to_vec(), k.seq, k.record_crc))
        .collect();
    let got: Vec<(Vec<u8>, u32, u32)> = recs.into_iter().map(|(_, b, q, c)| (b, q, c)).collect();
    assert_eq!(got, want);
}

/// A batch that fails to commit stores nothing, claims none of its keys (they are stored
/// when sent again), and leaves no ids behind.
#[test]
fn a_failed_batch_claims_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("db"));
    s.set_lean(true);
    let batch: Vec<NewRecord> = (1..=40).map(|q| real(1, q, q as i64).0).collect();
    // Another connection holds the write lock: the commit cannot start.
    let other = rusqlite::Connection::open(dir.path().join("db")).expect("open");
    other.busy_timeout(std::time::Duration::ZERO).expect("busy");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    s.connection()
        .busy_timeout(std::time::Duration::ZERO)
        .expect("busy");
    assert!(s.commit_batch(&batch, &[], &[], &[]).is_err());
    assert!(s.last_stored_ids().is_empty());
    other.execute_batch("ROLLBACK").expect("unlock");
    let out = s.commit_batch(&batch, &[], &[], &[]).expect("commit");
    assert!(out.iter().all(|o| *o == InsertOutcome::Stored), "{out:?}");
    assert_eq!(s.count().expect("count"), 40);
    assert_eq!(keys_of(&s, "record_keys").len(), 40);
}

/// A new database gets [`PAGE_SIZE`]; one made with 16 KiB pages (every database before
/// 8 KiB became the default) keeps them, and stores, dedupes, prunes (tombstones) and
/// reads as before, also after reopening.
#[test]
fn a_new_database_has_8_kib_pages_and_an_old_16_kib_one_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let new = open(&dir.path().join("new"));
    assert_eq!(page_size(&new), PAGE_SIZE as i64);
    assert_eq!(PAGE_SIZE, 8192);

    let path = dir.path().join("old");
    {
        // What an older collector made: a 16 KiB WAL database.
        let c = rusqlite::Connection::open(&path).expect("create");
        c.pragma_update(None, "page_size", 16384)
            .expect("page_size");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.execute_batch("CREATE TABLE t (x); DROP TABLE t;")
            .expect("write");
    }
    let recs: Vec<NewRecord> = (0..50).map(|q| real(2, q, q as i64 * 10).0).collect();
    let mut s = open(&path);
    assert_eq!(page_size(&s), 16384);
    s.commit_batch(&recs[..30], &[], &[], &[])
        .expect("full rows");
    s.set_lean(true);
    s.commit_batch(&recs[30..], &[], &[], &[])
        .expect("lean rows");
    assert_eq!(s.prune_keep(20).expect("prune"), 30);
    drop(s);
    let mut s = open(&path);
    assert_eq!(
        page_size(&s),
        16384,
        "an existing database keeps its page size"
    );
    s.set_lean(true);
    let out = s.commit_batch(&recs, &[], &[], &[]).expect("again");
    assert!(
        out.iter().all(|o| *o == InsertOutcome::Duplicate),
        "pruned and kept records are duplicates after reopening: {out:?}"
    );
    let list = s.list(&Filter::default()).expect("list");
    assert_eq!(list.len(), 20);
    assert_eq!(list[0].seq, 30);
    let shown = s
        .get(&RecordRef::BootSeq([2; 16], 45), false)
        .expect("get")
        .expect("kept");
    assert_eq!(shown.fields, real(2, 45, 0).1);
    s.check_integrity(&path, true).expect("sound");
}

/// SQLite virtual-machine steps (in thousands, rounded up) that `f` takes on `s`'s connection.
fn vm_kilosteps(s: &mut SqliteStore, f: impl FnOnce(&mut SqliteStore)) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    s.connection().progress_handler(
        1000,
        Some(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            false
        }),
    );
    f(s);
    s.connection().progress_handler(1000, None::<fn() -> bool>);
    n.load(Ordering::Relaxed)
}

/// A follow-up comes within seconds of its record, and `record_keys` has no index on the key:
/// deciding whether its record is stored reads from the newest key back, not every key (the
/// writer does this on its own thread, between batches); a key never stored is answered from
/// the dedupe set. 5,000 records: a full scan of `record_keys` is ~30 thousand VM steps.
#[test]
fn a_followup_finds_its_recent_record_without_reading_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(&dir.path().join("db"));
    let batch: Vec<NewRecord> = (1..=5000).map(|seq| real(1, seq, seq as i64).0).collect();
    for b in batch.chunks(500) {
        s.commit_batch(b, &[], &[], &[]).expect("commit");
    }
    let newest = batch.last().expect("records").key;
    let id = *s.last_stored_ids().last().expect("stored");
    let record = followed(batch.last().expect("records"), id);
    let full_scan = vm_kilosteps(&mut s, |s| {
        let n: i64 = s
            .connection()
            .query_row(
                "SELECT count(*) FROM record_keys WHERE seq >= 0 AND record_crc >= 0",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(n, 5000);
    });
    assert!(
        full_scan >= 25,
        "a full scan takes {full_scan} thousand steps"
    );
    let steps = vm_kilosteps(&mut s, |s| {
        let frame = super::super::tests::followup_frame(&newest, &[]);
        assert_eq!(
            s.put_followup(&newest, &frame, 1).expect("put_followup"),
            FollowupOutcome::Stored { record }
        );
    });
    assert!(
        steps * 10 < full_scan,
        "the newest record's follow-up took {steps} thousand VM steps (a full scan {full_scan})"
    );
    // `show BOOT:SEQ` reads the newest record of a boot id and seq the same way.
    let steps = vm_kilosteps(&mut s, |s| {
        let r = RecordRef::BootSeq(newest.boot_id, newest.seq);
        assert!(s.get(&r, false).expect("get").is_some());
    });
    assert!(
        steps * 10 < full_scan,
        "reading the newest record by boot id and seq took {steps} thousand VM steps"
    );
    let mut never = newest;
    never.seq = 999_999;
    let steps = vm_kilosteps(&mut s, |s| {
        assert_eq!(
            s.put_followup(&never, b"x", 2).expect("put_followup"),
            FollowupOutcome::NoSuchRecord
        );
    });
    assert_eq!(
        steps, 0,
        "a key never stored is answered without the database"
    );
}
