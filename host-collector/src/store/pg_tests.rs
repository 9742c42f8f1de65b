//! What only PostgreSQL promises: several collectors (stores) on one database.

use super::pg::{
    FOLLOWUP_HELD, FOLLOWUP_INSERT, FOLLOWUP_RECORD, FOLLOWUP_REPLACE, FOLLOWUP_STEP_TIMES,
};
use super::tests::{pg_backend, real};
use super::*;

/// Two stores commit the same 400 keys at once, in batches of different sizes and orders:
/// every key is `Stored` by exactly one of them and `Duplicate` for the other, and there is
/// one row per key.
#[test]
fn two_collectors_store_each_key_once_and_say_so_truthfully() {
    let Some(b) = pg_backend("two_collectors") else {
        return;
    };
    let recs: Vec<NewRecord> = (0..400).map(|i| real((i / 50) as u8, i, 1).0).collect();
    let run = |reverse: bool, batch: usize| {
        let mut s = b.open();
        let mut mine: Vec<NewRecord> = recs.clone();
        if reverse {
            mine.reverse();
        }
        let mut out = Vec::new();
        for chunk in mine.chunks(batch) {
            loop {
                match s.commit_batch(chunk, &[], &[], &[("datagrams", 1)]) {
                    Ok(o) => {
                        out.extend(chunk.iter().map(|r| r.key).zip(o));
                        break;
                    }
                    // A deadlock between the two is possible in principle (the other
                    // transaction is rolled back): the writer retries like this.
                    Err(StoreError::Postgres(m)) if m.contains("deadlock") => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        out
    };
    let (a, c) = std::thread::scope(|sc| {
        let a = sc.spawn(|| run(false, 37));
        let c = sc.spawn(|| run(true, 64));
        (a.join().unwrap(), c.join().unwrap())
    });
    let stored = |v: &[(RecordKey, InsertOutcome)]| -> std::collections::HashSet<RecordKey> {
        v.iter()
            .filter(|(_, o)| *o == InsertOutcome::Stored)
            .map(|(k, _)| *k)
            .collect()
    };
    let (sa, sc) = (stored(&a), stored(&c));
    assert_eq!(a.len(), 400);
    assert_eq!(c.len(), 400);
    assert!(sa.is_disjoint(&sc), "a key stored by both");
    assert_eq!(sa.len() + sc.len(), 400, "every key stored by one of them");
    let s = b.open();
    let st = s.stats().unwrap();
    assert_eq!(st.records, 400);
    assert_eq!(st.counters["records_stored"], 400);
    assert_eq!(st.counters["duplicates"], 400);
    assert!(st.counters["datagrams"] >= 400 / 64 + 400 / 37, "{st:?}");
}

/// Collectors starting together on a new database: one migrates, the others wait on the
/// advisory lock and find the schema done.
#[test]
fn collectors_starting_together_migrate_once() {
    let Some(b) = pg_backend("migrate_together") else {
        return;
    };
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4).map(|_| sc.spawn(|| b.open())).collect();
        for h in hs {
            let s = h.join().unwrap();
            assert_eq!(s.schema_version().unwrap(), pg::PG_SCHEMA_VERSION);
        }
    });
    let t = b.pg.as_ref().unwrap();
    assert_eq!(
        t.query_i64("SELECT count(*) FROM canary_schema").unwrap(),
        1
    );
}

/// A store whose database goes away (connections ended and refused) fails every commit,
/// so nothing is acked, and stores again once the database is back.
#[test]
fn a_store_that_loses_its_database_fails_commits_and_resumes() {
    let Some(b) = pg_backend("loses_database") else {
        return;
    };
    let t = b.pg.as_ref().unwrap();
    let mut s = b.open();
    let (r1, _) = real(9, 1, 1);
    let (r2, _) = real(9, 2, 1);
    assert_eq!(
        s.commit_batch(std::slice::from_ref(&r1), &[], &[], &[])
            .unwrap(),
        [InsertOutcome::Stored]
    );
    t.refuse_connections().unwrap();
    for _ in 0..3 {
        let e = s.commit_batch(std::slice::from_ref(&r2), &[], &[], &[]);
        assert!(matches!(e, Err(StoreError::Unavailable { .. })), "{e:?}");
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    t.allow_connections().unwrap();
    let t0 = std::time::Instant::now();
    let out = loop {
        match s.commit_batch(std::slice::from_ref(&r2), &[], &[], &[]) {
            Ok(o) => break o,
            Err(StoreError::Unavailable { .. }) if t0.elapsed().as_secs() < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(out, [InsertOutcome::Stored]);
    assert_eq!(s.count().unwrap(), 2);
    // A connection ended under it (pg_terminate_backend) is opened again at once.
    t.terminate_connections().unwrap();
    let _ = s.count();
    assert_eq!(s.count().unwrap(), 2);
    // The writer's statements are prepared again on the new connection (and once more
    // after this connection is ended too).
    for seq in 3..5 {
        let (r, _) = real(9, seq, 1);
        let batch = [r.clone(), r];
        assert_eq!(
            s.commit_batch(&batch, &[], &[], &[]).unwrap(),
            [InsertOutcome::Stored, InsertOutcome::Duplicate]
        );
        t.terminate_connections().unwrap();
        let _ = s.count();
    }
    assert_eq!(s.count().unwrap(), 4);
}

/// Crash counts and heartbeats add up across collectors; the newest sighting wins.
#[test]
fn liveness_from_two_collectors_adds_crashes_and_keeps_the_newest_sighting() {
    use crate::liveness::{Canary, State};
    let Some(b) = pg_backend("liveness_two") else {
        return;
    };
    let base = Canary {
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
    let mut x = b.open();
    let mut y = b.open();
    x.save_liveness(std::slice::from_ref(&base)).unwrap();
    assert_eq!(x.liveness().unwrap().len(), 1);
    assert_eq!(y.liveness().unwrap().len(), 1);
    // Each saw one crash of its own.
    let mut cx = base.clone();
    cx.crashes = 1;
    cx.last_seen_us = 50;
    cx.state = State::Crashed;
    cx.state_since_us = 50;
    let mut cy = base.clone();
    cy.crashes = 1;
    cy.last_seen_us = 40;
    x.save_liveness(std::slice::from_ref(&cx)).unwrap();
    y.save_liveness(std::slice::from_ref(&cy)).unwrap();
    let got = b.open().liveness().unwrap();
    assert_eq!(got[0].crashes, 2, "{got:?}");
    assert_eq!(got[0].last_seen_us, 50);
    assert_eq!(got[0].state, State::Crashed);
    // Saving again without a new crash adds nothing.
    x.save_liveness(std::slice::from_ref(&cx)).unwrap();
    assert_eq!(b.open().liveness().unwrap()[0].crashes, 2);
}

/// A database of another program is refused; a reader on a database no collector wrote
/// says so.
#[test]
fn foreign_and_empty_databases_are_refused() {
    let Some(b) = pg_backend("foreign") else {
        return;
    };
    let url = b.db.clone();
    let e = Store::open_read(&url)
        .err()
        .expect("empty database refused");
    assert!(e.to_string().contains("no collector has written it"), "{e}");
    b.pg.as_ref()
        .unwrap()
        .exec("CREATE TABLE records (x int)")
        .unwrap();
    let e = Store::open(&url, Sync::Normal)
        .err()
        .expect("foreign refused");
    assert!(e.to_string().contains("another program"), "{e}");
}

/// Two collectors' connections given the same records at once, from two threads, in batches
/// of different sizes: each key stored by exactly one of them, `duplicate` for the other.
#[test]
fn two_connections_given_the_same_records_at_once_store_each_key_once() {
    let Some(b) = pg_backend("two_connections") else {
        return;
    };
    let s = b.open();
    let (mut p, mut q) = (b.open(), b.open());
    let recs: Vec<NewRecord> = (0..300).map(|i| real((i / 30) as u8, i, 1).0).collect();
    let run = |st: &mut Store, chunk: usize| {
        let mut out = Vec::new();
        for c in recs.chunks(chunk) {
            let o = st.commit_batch(c, &[], &[], &[]).unwrap();
            out.extend(c.iter().map(|r| r.key).zip(o));
        }
        out
    };
    let (x, y) = std::thread::scope(|sc| {
        let x = sc.spawn(|| run(&mut p, 23));
        let y = sc.spawn(|| run(&mut q, 41));
        (x.join().unwrap(), y.join().unwrap())
    });
    let stored = |v: &[(RecordKey, InsertOutcome)]| -> std::collections::HashSet<RecordKey> {
        v.iter()
            .filter(|(_, o)| *o == InsertOutcome::Stored)
            .map(|(k, _)| *k)
            .collect()
    };
    let (sx, sy) = (stored(&x), stored(&y));
    assert!(sx.is_disjoint(&sy), "a key stored by both connections");
    assert_eq!(sx.len() + sy.len(), 300, "every key stored by one of them");
    let st = s.stats().unwrap();
    assert_eq!(st.records, 300);
    assert_eq!(st.counters["records_stored"], 300);
    assert_eq!(st.counters["duplicates"], 300);
}

/// A commit does not wait for another collector's transaction that holds the counters it
/// added to (as it does from its counter update until its commit, WAL flush included):
/// each connection adds to counter rows of its own, `stats` sums them. With one row per
/// counter, every commit of the fleet waited for the one before it to flush.
#[test]
fn a_commit_does_not_wait_for_another_collectors_counters() {
    let Some(b) = pg_backend("counters_own_rows") else {
        return;
    };
    let mut other = b.open();
    other
        .commit_batch(&[real(1, 1, 1).0], &[], &[], &[("datagrams", 1)])
        .unwrap();
    // The other collector's transaction in flight: it holds every counter row there is.
    let t = b.pg.as_ref().unwrap();
    let mut raw = postgres::Client::connect(&t.url, postgres::NoTls).unwrap();
    let mut tx = raw.transaction().unwrap();
    tx.batch_execute("SELECT * FROM counters FOR UPDATE")
        .unwrap();
    let mut s = b.open();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let r = s.commit_batch(&[real(2, 1, 1).0], &[], &[], &[("datagrams", 1)]);
        let _ = done_tx.send(r.map(|o| o.len()));
        s
    });
    let waited = done_rx.recv_timeout(std::time::Duration::from_secs(3));
    tx.rollback().unwrap();
    let s = h.join().unwrap();
    assert_eq!(
        waited
            .expect("the commit waited for the other transaction")
            .unwrap(),
        1
    );
    let st = s.stats().unwrap();
    assert_eq!(st.records, 2);
    assert_eq!(st.counters["records_stored"], 2);
    assert_eq!(st.counters["datagrams"], 2);
}

/// A database of schema version 1 (one row per counter) migrates to per-connection counter
/// rows keeping every count; new commits add to it.
#[test]
fn version_1_counters_survive_the_migration_to_shards() {
    let Some(b) = pg_backend("counters_v1") else {
        return;
    };
    let t = b.pg.as_ref().unwrap();
    t.exec(pg::PG_MIGRATIONS[0]).unwrap();
    t.exec(
        "CREATE TABLE canary_schema (version INTEGER NOT NULL);
         INSERT INTO canary_schema (version) VALUES (1);
         INSERT INTO counters (name, value) VALUES ('records_stored', 5), ('datagrams', 7);",
    )
    .unwrap();
    let mut s = b.open();
    assert_eq!(s.schema_version().unwrap(), pg::PG_SCHEMA_VERSION);
    assert_eq!(s.stats().unwrap().counters["records_stored"], 5);
    s.commit_batch(&[real(3, 1, 1).0], &[], &[], &[("datagrams", 1)])
        .unwrap();
    let st = s.stats().unwrap();
    assert_eq!(st.counters["records_stored"], 6);
    assert_eq!(st.counters["datagrams"], 8);
}

/// The follow-up frame of `key` with `done` steps after the seal reported (30 us each; the
/// crash registers 55 us), the rest pending: 4 is the one sent when the record is acked,
/// 5 and 6 the more complete ones from the end step.
fn followup_reporting(key: &RecordKey, done: usize) -> Vec<u8> {
    use capture::panic::{Outcome, Step};
    let steps = super::tests::after_seal(|i, step| match (i < done, step) {
        (false, _) => (Outcome::Pending, 0),
        (true, Step::CrashRegisters) => (Outcome::Done, 55),
        (true, _) => (Outcome::Done, 30),
    });
    super::tests::followup_frame(key, &steps)
}

/// The step columns `stats --steps` reads, as (step, max us).
fn step_columns(s: &Store) -> Vec<(String, u32)> {
    s.step_stats(None)
        .unwrap()
        .into_iter()
        .map(|x| (x.step, x.max_us))
        .collect()
}

/// Another collector's connection, in a transaction that holds record `key`'s row as
/// `put_followup` does (shared: a prune waits for its commit).
pub(crate) fn other_with_record_locked(
    b: &super::tests::Backend,
    key: &RecordKey,
) -> postgres::Client {
    let t = b.pg.as_ref().unwrap();
    let mut other = postgres::Client::connect(&t.url, postgres::NoTls).unwrap();
    other.batch_execute("BEGIN").unwrap();
    let (boot, seq, crc) = (&key.boot_id[..], key.seq as i64, key.record_crc as i64);
    let known = other
        .query_opt(FOLLOWUP_RECORD, &[&boot, &seq, &crc])
        .unwrap();
    assert!(known.is_some(), "the record is stored");
    other
}

/// Another collector storing follow-up `theirs` of `key` (over `held`, the one stored
/// before, if any) with the statements `put_followup` runs, not committed yet, while this
/// store is given `mine` for the same key: `put_followup` must wait for that transaction
/// (checked: it is waiting on a lock and has not answered) and decide after its commit.
/// Returns this store's answer.
fn followup_race(
    b: &super::tests::Backend,
    key: &RecordKey,
    held: Option<&[u8]>,
    theirs: &[u8],
    mine: &[u8],
) -> FollowupOutcome {
    let (boot, seq, crc) = (&key.boot_id[..], key.seq as i64, key.record_crc as i64);
    let mut other = other_with_record_locked(b, key);
    let found: Option<Vec<u8>> = other
        .query_opt(FOLLOWUP_HELD, &[&boot, &seq, &crc])
        .unwrap()
        .map(|r| r.get(0));
    assert_eq!(found.as_deref(), held);
    let write = if held.is_some() {
        FOLLOWUP_REPLACE
    } else {
        FOLLOWUP_INSERT
    };
    let n = other.execute(write, &[&boot, &seq, &crc, &7i64, &theirs]);
    assert_eq!(n.unwrap(), 1);
    let st = crate::followup_view::step_times(theirs).map(|v| v.map(i64::from));
    other
        .execute(
            FOLLOWUP_STEP_TIMES,
            &[
                &boot, &seq, &crc, &st[0], &st[1], &st[2], &st[3], &st[4], &st[5], &st[6],
            ],
        )
        .unwrap();
    let (key, mine) = (*key, mine.to_vec());
    blocked_until_commit(b, other, move |s| s.put_followup(&key, &mine, 8)).unwrap()
}

/// Runs `f` on a store of `b` in a thread, waits until that thread's statement waits on
/// a lock `other` holds (checked: it has not answered), commits `other`, and returns
/// `f`'s answer.
pub(crate) fn blocked_until_commit<T: Send + 'static>(
    b: &super::tests::Backend,
    mut other: postgres::Client,
    f: impl FnOnce(&mut Store) -> T + Send + 'static,
) -> T {
    let t = b.pg.as_ref().unwrap();
    let mut s = b.open();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = done_tx.send(f(&mut s));
    });
    let mut watch = postgres::Client::connect(&t.url, postgres::NoTls).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "never waited"
        );
        assert!(done_rx.try_recv().is_err(), "answered without waiting");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(done_rx.try_recv().is_err(), "answered before the commit");
    other.batch_execute("COMMIT").unwrap();
    let out = done_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("answers once the other transaction committed");
    h.join().unwrap();
    out
}

/// A sealed record stored, for the races below: its key, what `put_followup` reports of it,
/// and the freeze step's time it has.
fn sealed_record(
    b: &super::tests::Backend,
    boot: u8,
) -> (RecordKey, FollowedRecord, (String, u32)) {
    let mut r = capture::testutil::sample_record(5);
    r.boot_id = [boot; 16];
    let n = super::tests::sealed(&mut r, "10.0.0.6:4000", 1);
    let mut s = b.open();
    s.commit_batch(std::slice::from_ref(&n), &[], &[], &[])
        .unwrap();
    let record = super::tests::followed(&n, s.last_stored_ids()[0]);
    (n.key, record, ("freeze".to_string(), r.steps[0].elapsed_us))
}

/// `Replaced` (of a follow-up reporting `before` steps) with `record`, or `Duplicate`.
fn replaced_or_duplicate(record: FollowedRecord, before: Option<usize>) -> FollowupOutcome {
    match before {
        Some(reported_before) => FollowupOutcome::Replaced {
            record,
            reported_before,
        },
        None => FollowupOutcome::Duplicate,
    }
}

/// Two collectors storing the first follow-up of one record at the same instant (this
/// store's INSERT waits for the other's uncommitted row): the one reporting more steps stays
/// whichever came second. Brought second, it replaces the other's and says so (`Replaced`,
/// not `Duplicate`); the poorer one brought second is a `Duplicate`. Either way the step
/// columns have both's times.
#[test]
fn the_richer_first_followup_stored_at_the_same_instant_stays() {
    for (boot, richer_second, before) in [(11, true, Some(4)), (12, false, None)] {
        let Some(b) = pg_backend(&format!("followup_race_first_{boot}")) else {
            return;
        };
        let (key, record, freeze) = sealed_record(&b, boot);
        let want = replaced_or_duplicate(record, before);
        let (acked, from_end) = (followup_reporting(&key, 4), followup_reporting(&key, 5));
        let (theirs, mine) = if richer_second {
            (&acked, &from_end)
        } else {
            (&from_end, &acked)
        };
        let out = followup_race(&b, &key, None, theirs, mine);
        assert_eq!(out, want, "richer second: {richer_second}");
        let s = b.open();
        assert_eq!(s.followup(&key).unwrap().as_deref(), Some(&from_end[..]));
        let t = |n: &str, us: u32| (n.to_string(), us);
        assert_eq!(
            step_columns(&s),
            [
                freeze,
                t("screen-flush", 30),
                t("vmbus-unload", 30),
                t("arch-cleanup", 30),
                t("ship", 30),
                t("crash-registers", 55)
            ],
            "richer second: {richer_second}"
        );
    }
}

/// Two collectors replacing a stored follow-up at the same instant: this store decides
/// against the other's replacement once it is committed (the same one again: `Duplicate`;
/// a richer one: `Replaced` from the other's step count).
#[test]
fn followups_replacing_one_at_the_same_instant_are_decided_against_the_newest() {
    let Some(b) = pg_backend("followup_race_replace") else {
        return;
    };
    for (boot, mine, before) in [(13, 5, None), (14, 6, Some(5))] {
        let (key, record, _) = sealed_record(&b, boot);
        let want = replaced_or_duplicate(record.clone(), before);
        let acked = followup_reporting(&key, 4);
        assert_eq!(
            b.open().put_followup(&key, &acked, 1).unwrap(),
            FollowupOutcome::Stored { record }
        );
        let (theirs, mine) = (followup_reporting(&key, 5), followup_reporting(&key, mine));
        let out = followup_race(&b, &key, Some(&acked), &theirs, &mine);
        assert_eq!(out, want, "boot {boot}");
        let stays = if want == FollowupOutcome::Duplicate {
            &theirs
        } else {
            &mine
        };
        let s = b.open();
        assert_eq!(s.followup(&key).unwrap().as_deref(), Some(&stays[..]));
    }
}
