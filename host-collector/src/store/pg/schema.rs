//! The PostgreSQL schema (documented in `docs/collector.md`): versioned migrations, applied
//! in order by whichever collector gets the advisory lock first; the version is the one row
//! of `canary_schema`.
//!
//! A record keeps its raw bytes and the columns queries need (`list`, `list --host`, `stats
//! --steps`, `show BOOT:SEQ`); `show` and `export` render the rest from `raw`.

use postgres::Client;

/// `pg_advisory_lock` key of the migrations: "canary" in ASCII.
const MIGRATION_LOCK: i64 = 0x63_61_6e_61_72_79;

/// Versioned migrations. Entry `i` moves the schema from version `i` to `i + 1`. Never
/// edited once released.
pub const PG_MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite schema holds at its version 7, in PostgreSQL's types.
    "CREATE TABLE records (
        id             BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        boot_id        BYTEA    NOT NULL CHECK (length(boot_id) = 16),
        seq            BIGINT   NOT NULL,
        record_crc     BIGINT   NOT NULL,
        received_at_us BIGINT   NOT NULL,
        source         TEXT     NOT NULL,
        schema_major   INTEGER  NOT NULL,
        schema_minor   INTEGER  NOT NULL,
        arch           TEXT     NOT NULL,
        kind           TEXT     NOT NULL,
        message        TEXT     NOT NULL,
        file           TEXT,
        line           INTEGER,
        col            INTEGER,
        vm_name        TEXT,
        host_name      TEXT,
        image_id       TEXT,
        step_freeze_us          BIGINT,
        step_screen_flush_us    BIGINT,
        step_vmbus_unload_us    BIGINT,
        step_arch_cleanup_us    BIGINT,
        step_ship_us            BIGINT,
        step_crash_registers_us BIGINT,
        step_end_us             BIGINT,
        raw            BYTEA    NOT NULL,
        UNIQUE (boot_id, seq, record_crc)
    );
    CREATE INDEX records_received_at ON records (received_at_us);
    -- Partial: a record without the names costs no index entry.
    CREATE INDEX records_vm_name ON records (lower(vm_name) text_pattern_ops)
        WHERE vm_name IS NOT NULL;
    CREATE INDEX records_host_name ON records (lower(host_name) text_pattern_ops)
        WHERE host_name IS NOT NULL;
    -- The key of every deleted record, so a record replayed after `prune` is a duplicate.
    CREATE TABLE pruned_keys (
        boot_id    BYTEA  NOT NULL,
        seq        BIGINT NOT NULL,
        record_crc BIGINT NOT NULL,
        PRIMARY KEY (boot_id, seq, record_crc)
    );
    CREATE FUNCTION canary_records_pruned() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO pruned_keys (boot_id, seq, record_crc)
            SELECT boot_id, seq, record_crc FROM gone ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$;
    CREATE TRIGGER records_pruned AFTER DELETE ON records
        REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
        EXECUTE FUNCTION canary_records_pruned();
    CREATE TABLE counters (
        name  TEXT   PRIMARY KEY,
        value BIGINT NOT NULL
    );
    CREATE TABLE canaries (
        boot_id       BYTEA    PRIMARY KEY CHECK (length(boot_id) = 16),
        source        TEXT     NOT NULL,
        arch          SMALLINT NOT NULL,
        first_seen_us BIGINT   NOT NULL,
        last_seen_us  BIGINT   NOT NULL,
        uptime_ms     BIGINT   NOT NULL,
        heartbeat_seq BIGINT   NOT NULL,
        heartbeats    BIGINT   NOT NULL
    );
    CREATE TABLE rejections (
        id             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        boot_id        BYTEA   NOT NULL,
        seq            BIGINT  NOT NULL,
        record_crc     BIGINT  NOT NULL,
        received_at_us BIGINT  NOT NULL,
        source         TEXT    NOT NULL,
        schema_major   INTEGER NOT NULL,
        schema_minor   INTEGER NOT NULL,
        reason         TEXT    NOT NULL,
        raw            BYTEA   NOT NULL,
        UNIQUE (boot_id, seq, record_crc)
    );
    CREATE TABLE liveness (
        address         TEXT     PRIMARY KEY,
        boot_id         BYTEA    NOT NULL,
        arch            SMALLINT NOT NULL,
        first_seen_us   BIGINT   NOT NULL,
        last_seen_us    BIGINT   NOT NULL,
        heartbeat_seq   BIGINT,
        uptime_ms       BIGINT   NOT NULL,
        interval_ms     BIGINT   NOT NULL,
        silent_after_ms BIGINT   NOT NULL,
        state           TEXT     NOT NULL,
        state_since_us  BIGINT   NOT NULL,
        crashed_boot    BYTEA,
        last_record_id  BIGINT,
        crashes         BIGINT   NOT NULL
    );
    CREATE TABLE followups (
        boot_id        BYTEA  NOT NULL,
        seq            BIGINT NOT NULL,
        record_crc     BIGINT NOT NULL,
        received_at_ms BIGINT NOT NULL,
        raw            BYTEA  NOT NULL,
        PRIMARY KEY (boot_id, seq, record_crc)
    );",
    // 2: each counter is the sum of rows of its own per writing connection (`shard`): a
    // commit adds to its connection's rows only, so it never waits for another
    // collector's transaction holding one shared row until its commit is flushed.
    "ALTER TABLE counters ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
    ALTER TABLE counters DROP CONSTRAINT counters_pkey;
    ALTER TABLE counters ADD PRIMARY KEY (name, shard);",
    // 3: a record's follow-up is deleted with it (`prune`, retention), by the delete
    // trigger, in the deleting statement's transaction; the follow-ups of records deleted
    // before (kept until now) are deleted. The lock waits for deletes in flight and keeps
    // new ones out until this commits, so none leaves a follow-up behind in between.
    // A follow-up is stored only while its record's row is locked (`put_followup`, FOR KEY
    // SHARE): a delete of that row waits for its commit, and the trigger's statement, run
    // after the rows are deleted, sees it (READ COMMITTED: a new snapshot per statement).
    "LOCK TABLE records IN SHARE MODE;
    CREATE OR REPLACE FUNCTION canary_records_pruned() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO pruned_keys (boot_id, seq, record_crc)
            SELECT boot_id, seq, record_crc FROM gone ON CONFLICT DO NOTHING;
        DELETE FROM followups f USING gone g
            WHERE f.boot_id = g.boot_id AND f.seq = g.seq AND f.record_crc = g.record_crc;
        RETURN NULL;
    END $$;
    DELETE FROM followups f WHERE NOT EXISTS (SELECT 1 FROM records r
        WHERE r.boot_id = f.boot_id AND r.seq = f.seq AND r.record_crc = f.record_crc);",
    // 4: the bytes the records hold, kept as a running total for retention by size
    // (`max_bytes`): the table's size on disk does not shrink when rows are deleted, so
    // it cannot say how much a delete freed. A record counts as its raw bytes and text
    // columns (their lengths uncompressed: the same when it is stored and when it is
    // deleted, however PostgreSQL compressed them) plus 144 bytes for the row header, the
    // boot id and the numbers (set or not). Triggers keep the total for every insert,
    // update and delete, whoever runs it (also collectors of an older version while a
    // fleet is upgraded), in the row of the connection's backend (`slot`, its pid modulo
    // 64: connections rarely wait on each other's row); the total is the sum of the rows.
    // The lock keeps writers out while the total of the rows already stored is counted.
    "LOCK TABLE records IN SHARE MODE;
    CREATE TABLE record_bytes (
        slot  SMALLINT PRIMARY KEY,
        bytes BIGINT   NOT NULL
    );
    CREATE FUNCTION canary_record_bytes(raw BYTEA, source TEXT, arch TEXT, kind TEXT,
        message TEXT, file TEXT, vm_name TEXT, host_name TEXT, image_id TEXT)
        RETURNS BIGINT LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT 144 + octet_length(raw) + octet_length(source) + octet_length(arch)
            + octet_length(kind) + octet_length(message) + coalesce(octet_length(file), 0)
            + coalesce(octet_length(vm_name), 0) + coalesce(octet_length(host_name), 0)
            + coalesce(octet_length(image_id), 0)
    $$;
    CREATE FUNCTION canary_record_bytes_add(delta NUMERIC) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        IF delta <> 0 THEN
            INSERT INTO record_bytes AS b (slot, bytes)
                VALUES (pg_backend_pid() % 64, delta::BIGINT)
                ON CONFLICT (slot) DO UPDATE SET bytes = b.bytes + excluded.bytes;
        END IF;
    END $$;
    CREATE FUNCTION canary_records_stored() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM canary_record_bytes_add((SELECT sum(canary_record_bytes(raw, source, arch,
            kind, message, file, vm_name, host_name, image_id)) FROM added));
        RETURN NULL;
    END $$;
    CREATE TRIGGER records_stored AFTER INSERT ON records
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT
        EXECUTE FUNCTION canary_records_stored();
    CREATE FUNCTION canary_records_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM canary_record_bytes_add((SELECT sum(canary_record_bytes(raw, source, arch,
            kind, message, file, vm_name, host_name, image_id)) FROM after_rows)
            - (SELECT sum(canary_record_bytes(raw, source, arch, kind, message, file,
            vm_name, host_name, image_id)) FROM before_rows));
        RETURN NULL;
    END $$;
    CREATE TRIGGER records_changed AFTER UPDATE ON records
        REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows FOR EACH STATEMENT
        EXECUTE FUNCTION canary_records_changed();
    CREATE OR REPLACE FUNCTION canary_records_pruned() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO pruned_keys (boot_id, seq, record_crc)
            SELECT boot_id, seq, record_crc FROM gone ON CONFLICT DO NOTHING;
        DELETE FROM followups f USING gone g
            WHERE f.boot_id = g.boot_id AND f.seq = g.seq AND f.record_crc = g.record_crc;
        PERFORM canary_record_bytes_add(-(SELECT sum(canary_record_bytes(raw, source, arch,
            kind, message, file, vm_name, host_name, image_id)) FROM gone));
        RETURN NULL;
    END $$;
    CREATE FUNCTION canary_records_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM record_bytes;
        RETURN NULL;
    END $$;
    CREATE TRIGGER records_truncated AFTER TRUNCATE ON records
        FOR EACH STATEMENT EXECUTE FUNCTION canary_records_truncated();
    INSERT INTO record_bytes (slot, bytes)
        SELECT -1, coalesce(sum(canary_record_bytes(raw, source, arch, kind, message, file,
            vm_name, host_name, image_id)), 0) FROM records;",
    // 5: a record pruned by another collector while this one's insert of its key waited for
    //    that delete is not stored again. The insert's tombstone check reads the snapshot
    //    its statement began with, which lacks the tombstone committed meanwhile; this
    //    trigger's query takes a new one (READ COMMITTED, a function's statements each
    //    their own) and fails the statement (`serialization_failure`: nothing of the batch
    //    kept) when a row it added has a tombstone. The writer tries the batch again, and
    //    the insert's own check then answers the key `duplicate`. Each added row costs one
    //    look-up of `pruned_keys`' primary key.
    "CREATE OR REPLACE FUNCTION canary_records_stored() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM canary_record_bytes_add((SELECT sum(canary_record_bytes(raw, source, arch,
            kind, message, file, vm_name, host_name, image_id)) FROM added));
        IF EXISTS (SELECT 1 FROM added a JOIN pruned_keys p ON p.boot_id = a.boot_id
                AND p.seq = a.seq AND p.record_crc = a.record_crc) THEN
            RAISE EXCEPTION 'canary: a record being stored was pruned by another collector meanwhile'
                USING ERRCODE = 'serialization_failure';
        END IF;
        RETURN NULL;
    END $$;",
    // 6: follow-ups count in the running total too (retention by size sees them, as
    //    SQLite's page count does): 72 bytes (row header, key, time) and the frame each,
    //    kept by the same per-backend rows. A follow-up goes with its record (schema 3), so
    //    a record's delete takes its follow-up's bytes as well; TRUNCATE of `records`
    //    deletes the follow-ups first. The lock keeps writers out while those already
    //    stored are counted.
    "LOCK TABLE followups IN SHARE MODE;
    CREATE FUNCTION canary_followup_bytes(raw BYTEA) RETURNS BIGINT
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 72 + octet_length(raw) $$;
    CREATE FUNCTION canary_followups_stored() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM canary_record_bytes_add((SELECT sum(canary_followup_bytes(raw)) FROM added));
        RETURN NULL;
    END $$;
    CREATE TRIGGER followups_stored AFTER INSERT ON followups
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT
        EXECUTE FUNCTION canary_followups_stored();
    CREATE FUNCTION canary_followups_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM canary_record_bytes_add(
            (SELECT sum(canary_followup_bytes(raw)) FROM after_rows)
            - (SELECT sum(canary_followup_bytes(raw)) FROM before_rows));
        RETURN NULL;
    END $$;
    CREATE TRIGGER followups_changed AFTER UPDATE ON followups
        REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows FOR EACH STATEMENT
        EXECUTE FUNCTION canary_followups_changed();
    CREATE FUNCTION canary_followups_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM canary_record_bytes_add(-(SELECT sum(canary_followup_bytes(raw)) FROM gone));
        RETURN NULL;
    END $$;
    CREATE TRIGGER followups_deleted AFTER DELETE ON followups
        REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
        EXECUTE FUNCTION canary_followups_deleted();
    CREATE OR REPLACE FUNCTION canary_records_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM followups;
        DELETE FROM record_bytes;
        RETURN NULL;
    END $$;
    SELECT canary_record_bytes_add(coalesce(
        (SELECT sum(canary_followup_bytes(raw)) FROM followups), 0));",
];

/// The schema version this build writes.
pub const PG_SCHEMA_VERSION: u32 = PG_MIGRATIONS.len() as u32;

/// The schema version: 0 when there is no `canary_schema` table.
pub(super) fn version(c: &mut Client) -> Result<u32, postgres::Error> {
    let has: bool = c
        .query_one("SELECT to_regclass('canary_schema') IS NOT NULL", &[])?
        .get(0);
    if !has {
        return Ok(0);
    }
    let v: Option<i32> = c
        .query_opt("SELECT version FROM canary_schema", &[])?
        .map(|r| r.get(0));
    Ok(v.unwrap_or(0).max(0) as u32)
}

/// Applies the missing migrations, each in its own transaction with its version update,
/// holding the session's advisory lock so that collectors starting together migrate one
/// at a time (the others wait, then find nothing left to do).
pub(super) fn migrate(c: &mut Client) -> Result<Result<(), super::StoreError>, postgres::Error> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let r = migrate_locked(c);
    let unlock = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    let r = r?;
    unlock?;
    Ok(r)
}

fn migrate_locked(c: &mut Client) -> Result<Result<(), super::StoreError>, postgres::Error> {
    let found = version(c)?;
    if found > PG_SCHEMA_VERSION {
        return Ok(Err(super::StoreError::TooNew {
            found,
            supported: PG_SCHEMA_VERSION,
        }));
    }
    if found == 0 {
        let foreign: bool = c
            .query_one(
                "SELECT to_regclass('records') IS NOT NULL OR to_regclass('counters') IS NOT NULL",
                &[],
            )?
            .get(0);
        if foreign {
            return Ok(Err(super::StoreError::Postgres(
                "this database has tables named like canary's (records, counters) but no \
                 canary_schema: it is another program's; give another database"
                    .into(),
            )));
        }
    }
    for (i, sql) in PG_MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(to = i + 1, "migrating PostgreSQL schema");
        let mut tx = c.transaction()?;
        tx.batch_execute(sql)?;
        if i == 0 {
            tx.batch_execute("CREATE TABLE canary_schema (version INTEGER NOT NULL)")?;
            tx.execute("INSERT INTO canary_schema (version) VALUES (1)", &[])?;
        } else {
            tx.execute(
                "UPDATE canary_schema SET version = $1",
                &[&((i + 1) as i32)],
            )?;
        }
        tx.commit()?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::super::super::tests::pg_backend;
    use super::super::super::tests::{
        after_seal, followed, followup_frame, followup_rows, real, Backend,
    };
    use super::super::super::{FollowupOutcome, InsertOutcome, RecordKey, Retention, Store};
    use super::super::writer::FOLLOWUP_INSERT;
    use super::{PG_MIGRATIONS, PG_SCHEMA_VERSION};
    use crate::store::pg_tests::{blocked_until_commit, other_with_record_locked};

    /// The schema of an older build: migrations 1 to `version`, and the version recorded.
    fn at_version(t: &super::super::testing::TestDb, version: usize) {
        for m in &PG_MIGRATIONS[..version] {
            t.exec(m).unwrap();
        }
        t.exec(&format!(
            "CREATE TABLE canary_schema (version INTEGER NOT NULL);
             INSERT INTO canary_schema (version) VALUES ({version});"
        ))
        .unwrap();
    }

    /// A version-2 database holding follow-ups of deleted records (nothing deleted them
    /// then): migration 3 deletes those and keeps the others, and from then on a record's
    /// follow-up goes with it.
    #[test]
    fn migration_3_deletes_the_followups_of_deleted_records() {
        let Some(b) = pg_backend("followups_v2") else {
            return;
        };
        let t = b.pg.as_ref().unwrap();
        at_version(t, 2);
        // Records (1, 1) and (1, 2) with follow-ups, and one for (2, 1), never stored;
        // then `prune` as version 2 did it: the record goes, its follow-up stays.
        t.exec(
            "INSERT INTO records (boot_id, seq, record_crc, received_at_us, source,
                schema_major, schema_minor, arch, kind, message, raw)
             VALUES (decode(repeat('01', 16), 'hex'), 1, 7, 1, '10.1.1.1:5', 1, 0, 'x86_64',
                    'panic', 'm', '\\x00'),
                (decode(repeat('01', 16), 'hex'), 2, 7, 2, '10.1.1.1:5', 1, 0, 'x86_64',
                    'panic', 'm', '\\x00');
             INSERT INTO followups (boot_id, seq, record_crc, received_at_ms, raw)
             VALUES (decode(repeat('01', 16), 'hex'), 1, 7, 1, '\\x01'),
                (decode(repeat('01', 16), 'hex'), 2, 7, 1, '\\x02'),
                (decode(repeat('02', 16), 'hex'), 1, 7, 1, '\\x01');
             DELETE FROM records WHERE seq = 2;",
        )
        .unwrap();
        let key = |boot: u8, seq: u32| RecordKey {
            boot_id: [boot; 16],
            seq,
            record_crc: 7,
        };
        let mut s = b.open();
        assert_eq!(s.schema_version().unwrap(), PG_SCHEMA_VERSION);
        assert_eq!(s.followup(&key(1, 1)).unwrap().as_deref(), Some(&[1u8][..]));
        assert_eq!(
            s.followup(&key(1, 2)).unwrap(),
            None,
            "its record was pruned"
        );
        assert_eq!(s.followup(&key(2, 1)).unwrap(), None, "no such record");
        let rows = || t.query_i64("SELECT count(*) FROM followups").unwrap();
        assert_eq!(rows(), 1);
        // The tombstone of the pruned record stays: replayed, it is a duplicate.
        assert_eq!(t.query_i64("SELECT count(*) FROM pruned_keys").unwrap(), 1);
        assert_eq!(s.prune_keep(0).unwrap(), 1);
        assert_eq!(s.followup(&key(1, 1)).unwrap(), None);
        assert_eq!(rows(), 0);
    }

    /// The bytes of the records and follow-ups stored, counted in full: what `record_bytes`
    /// adds up to (a follow-up: 72 bytes and its raw frame).
    fn recount(t: &super::super::testing::TestDb) -> i64 {
        t.query_i64(
            "SELECT (SELECT coalesce(sum(canary_record_bytes(raw, source, arch, kind, message,
                file, vm_name, host_name, image_id)), 0) FROM records)::BIGINT
                + (SELECT coalesce(sum(72 + octet_length(raw)), 0) FROM followups)::BIGINT",
        )
        .unwrap()
    }

    /// A version-3 database holding records: migration 4 counts their bytes (144 each plus
    /// raw and text), and from then on the running total is what a full count says after
    /// every way records are stored, changed or deleted: a batch with a duplicate, a
    /// follow-up's step times, another connection's update and delete, `prune`, retention
    /// by size, TRUNCATE.
    #[test]
    fn migration_4_counts_the_bytes_and_the_triggers_keep_the_total() {
        let Some(b) = pg_backend("record_bytes_v3") else {
            return;
        };
        let t = b.pg.as_ref().unwrap();
        at_version(t, 3);
        t.exec(
            "INSERT INTO records (boot_id, seq, record_crc, received_at_us, source,
                schema_major, schema_minor, arch, kind, message, vm_name, raw)
             VALUES (decode(repeat('01', 16), 'hex'), 1, 7, 1, '10.1.1.1:5', 1, 0, 'x86_64',
                    'panic', 'm', NULL, '\\x00'),
                (decode(repeat('01', 16), 'hex'), 2, 7, 2, '10.1.1.1:5', 1, 0, 'x86_64',
                    'panic', 'm', 'vm-a', '\\x0001');",
        )
        .unwrap();
        let mut s = b.open();
        assert_eq!(s.schema_version().unwrap(), PG_SCHEMA_VERSION);
        // 144 + raw 1 + source 10 + arch 6 + kind 5 + message 1; the second: raw 2, vm 4.
        assert_eq!(s.used_bytes().unwrap(), 167 + 172);
        let same = |s: &Store, what: &str| {
            assert_eq!(s.used_bytes().unwrap() as i64, recount(t), "after {what}");
        };
        let recs: Vec<_> = (0..6).map(|i| real(14, i, 10 + i as i64).0).collect();
        let mut batch = recs.clone();
        batch.push(recs[0].clone());
        s.commit_batch(&batch, &[], &[], &[]).unwrap();
        let record = followed(&recs[1], s.last_stored_ids()[1]);
        same(&s, "a batch");
        assert!(s.used_bytes().unwrap() > 339 + 6 * recs[0].raw.len() as u64);
        let steps = after_seal(|_, _| (capture::panic::Outcome::Done, 10));
        let frame = followup_frame(&recs[1].key, &steps);
        assert_eq!(
            s.put_followup(&recs[1].key, &frame, 1).unwrap(),
            FollowupOutcome::Stored { record }
        );
        same(&s, "a follow-up");
        t.exec("UPDATE records SET message = message || ' and more' WHERE seq = 2")
            .unwrap();
        same(&s, "an update");
        t.exec("DELETE FROM records WHERE seq = 1 AND record_crc = 7")
            .unwrap();
        same(&s, "another connection's delete");
        assert_eq!(s.prune_keep(5).unwrap(), 2);
        same(&s, "prune");
        let half = s.used_bytes().unwrap() / 2;
        let r = Retention {
            max_bytes: Some(half),
            ..Default::default()
        };
        assert!(s.apply_retention(&r, 0).unwrap() > 0);
        same(&s, "retention");
        assert!(s.used_bytes().unwrap() <= half);
        t.exec("TRUNCATE records").unwrap();
        assert_eq!(s.used_bytes().unwrap(), 0, "after TRUNCATE");
        s.commit_batch(&[real(15, 1, 99).0], &[], &[], &[]).unwrap();
        same(&s, "a batch after TRUNCATE");
        assert!(s.used_bytes().unwrap() > 0);
    }

    /// A version-5 database holding records and follow-ups: migration 6 adds the
    /// follow-ups' bytes to the total, and from then on a follow-up stored, replaced by a
    /// more complete one, deleted with its record or by TRUNCATE keeps it what a full
    /// count says.
    #[test]
    fn migration_6_counts_the_followups_bytes_too() {
        let Some(b) = pg_backend("record_bytes_v5") else {
            return;
        };
        let t = b.pg.as_ref().unwrap();
        at_version(t, 5);
        t.exec(
            "INSERT INTO records (boot_id, seq, record_crc, received_at_us, source,
                schema_major, schema_minor, arch, kind, message, raw)
             VALUES (decode(repeat('02', 16), 'hex'), 1, 7, 1, '10.1.1.1:5', 1, 0, 'x86_64',
                    'panic', 'm', '\\x00');
             INSERT INTO followups (boot_id, seq, record_crc, received_at_ms, raw)
             VALUES (decode(repeat('02', 16), 'hex'), 1, 7, 1, '\\x000102');",
        )
        .unwrap();
        let mut s = b.open();
        assert_eq!(s.schema_version().unwrap(), PG_SCHEMA_VERSION);
        // The record as migration 4 counts it (167), and the follow-up: 72 + 3.
        assert_eq!(s.used_bytes().unwrap(), 167 + 75);
        let same = |s: &Store, what: &str| {
            assert_eq!(s.used_bytes().unwrap() as i64, recount(t), "after {what}");
        };
        let recs: Vec<_> = (0..3).map(|i| real(17, i, 10 + i as i64).0).collect();
        s.commit_batch(&recs, &[], &[], &[]).unwrap();
        let before = s.used_bytes().unwrap();
        // Sealed at the screen flush (the rest pending), then the complete one from the end.
        let first = after_seal(|i, _| match i {
            0 => (capture::panic::Outcome::Done, 10),
            _ => (capture::panic::Outcome::Pending, 0),
        });
        let full = after_seal(|_, _| (capture::panic::Outcome::Done, 10));
        let frame = followup_frame(&recs[1].key, &first);
        assert!(s
            .put_followup(&recs[1].key, &frame, 1)
            .unwrap()
            .stored_with()
            .is_some());
        same(&s, "a follow-up");
        assert_eq!(s.used_bytes().unwrap(), before + 72 + frame.len() as u64);
        let frame = followup_frame(&recs[1].key, &full);
        assert!(matches!(
            s.put_followup(&recs[1].key, &frame, 2).unwrap(),
            FollowupOutcome::Replaced { .. }
        ));
        same(&s, "a more complete follow-up in its place");
        assert_eq!(s.prune_keep(2).unwrap(), 2);
        same(&s, "prune (a record with its follow-up)");
        t.exec("TRUNCATE records").unwrap();
        assert_eq!(s.used_bytes().unwrap(), 0, "after TRUNCATE");
        assert_eq!(t.query_i64("SELECT count(*) FROM followups").unwrap(), 0);
    }

    /// Two collectors storing batches (some keys sent to both) while a third applies
    /// retention by size again and again: the running total stays what a full count says,
    /// and the last retention leaves the records within the limit.
    #[test]
    fn record_bytes_stay_exact_under_concurrent_writers_and_retention() {
        let Some(b) = pg_backend("record_bytes_concurrent") else {
            return;
        };
        let t = b.pg.as_ref().unwrap();
        drop(b.open());
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let mut s = b.open();
                std::thread::spawn(move || {
                    for i in 0..30u32 {
                        // Half of each batch is the other writer's too.
                        let recs: Vec<_> = (0..20u32)
                            .map(|j| {
                                let seq = i * 40 + if j < 10 { j } else { 10 + w * 10 + j };
                                real(16, seq, i64::from(seq)).0
                            })
                            .collect();
                        s.commit_batch(&recs, &[], &[], &[]).unwrap();
                    }
                })
            })
            .collect();
        let limit = 100 * 1300;
        let r = Retention {
            max_bytes: Some(limit),
            ..Default::default()
        };
        let mut s = b.open();
        let mut deleted = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            deleted += s.apply_retention(&r, 0).unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
        deleted += s.apply_retention(&r, 0).unwrap();
        assert_eq!(s.used_bytes().unwrap() as i64, recount(t));
        assert!(s.used_bytes().unwrap() <= limit);
        // 10 shared and 2 x 10 own keys per batch, each stored once: a shared key that
        // retention deletes while the other writer's insert of it waits for that delete is
        // not stored again (see a_record_replayed_while_another_collector_prunes_it_stays_pruned).
        let stored = s.stats().unwrap().counters["records_stored"];
        assert_eq!(stored, 30 * 30);
        assert_eq!(s.count().unwrap() + deleted, stored);
        assert!(s.count().unwrap() > 50, "{} kept", s.count().unwrap());
    }

    /// A record stored in `b` and a follow-up frame for it.
    fn stored_record(b: &Backend) -> (RecordKey, Vec<u8>) {
        let (n, _) = real(13, 1, 1);
        b.open()
            .commit_batch(std::slice::from_ref(&n), &[], &[], &[])
            .unwrap();
        let steps = after_seal(|_, _| (capture::panic::Outcome::Done, 10));
        (n.key, followup_frame(&n.key, &steps))
    }

    /// Another collector storing a follow-up (its record's row locked FOR KEY SHARE, the
    /// row inserted, not committed) while this one prunes the record: the prune waits for
    /// it, then deletes the record and that follow-up.
    #[test]
    fn a_prune_waits_for_a_followup_being_stored_and_deletes_it() {
        let Some(b) = pg_backend("followup_then_prune") else {
            return;
        };
        let (key, frame) = stored_record(&b);
        let (boot, seq, crc) = (&key.boot_id[..], key.seq as i64, key.record_crc as i64);
        let mut other = other_with_record_locked(&b, &key);
        let n = other
            .execute(FOLLOWUP_INSERT, &[&boot, &seq, &crc, &7i64, &frame])
            .unwrap();
        assert_eq!(n, 1);
        let pruned = blocked_until_commit(&b, other, |s| s.prune_keep(0).unwrap());
        assert_eq!(pruned, 1, "records deleted");
        let s = b.open();
        assert_eq!(s.followup(&key).unwrap(), None);
        assert_eq!(followup_rows(&b, &s), 0);
    }

    /// Another collector deleting a stored record K (`prune`, retention: its delete trigger
    /// writes K's tombstone), not committed yet, while this store commits a batch holding K
    /// again (a retransmit) and a new record J: the insert of K waits for the delete, and
    /// once that is committed K is a `Duplicate` and stays deleted, J is `Stored`, and the
    /// counters and the bytes total say so.
    #[test]
    fn a_record_replayed_while_another_collector_prunes_it_stays_pruned() {
        let Some(b) = pg_backend("replay_during_prune") else {
            return;
        };
        let t = b.pg.as_ref().unwrap();
        let (k, j) = (real(17, 1, 1).0, real(17, 2, 2).0);
        b.open()
            .commit_batch(std::slice::from_ref(&k), &[], &[], &[])
            .unwrap();
        let mut other = postgres::Client::connect(&t.url, postgres::NoTls).unwrap();
        other.batch_execute("BEGIN; DELETE FROM records;").unwrap();
        let batch = [k.clone(), j.clone()];
        let out = blocked_until_commit(&b, other, move |s| {
            s.commit_batch(&batch, &[], &[], &[]).unwrap()
        });
        assert_eq!(
            out,
            [InsertOutcome::Duplicate, InsertOutcome::Stored],
            "K replayed while pruned, J new"
        );
        let count = |sql: &str, key: &RecordKey| {
            let mut c = postgres::Client::connect(&t.url, postgres::NoTls).unwrap();
            let r = c.query_one(
                sql,
                &[
                    &&key.boot_id[..],
                    &(key.seq as i64),
                    &(key.record_crc as i64),
                ],
            );
            r.unwrap().get::<_, i64>(0)
        };
        let in_records = "SELECT count(*) FROM records
            WHERE boot_id = $1 AND seq = $2 AND record_crc = $3";
        let tombstones = "SELECT count(*) FROM pruned_keys
            WHERE boot_id = $1 AND seq = $2 AND record_crc = $3";
        assert_eq!(
            count(in_records, &k.key),
            0,
            "K stored again after its prune"
        );
        assert_eq!(count(tombstones, &k.key), 1);
        assert_eq!(count(in_records, &j.key), 1);
        assert_eq!(count(tombstones, &j.key), 0);
        let s = b.open();
        assert_eq!(s.count().unwrap(), 1);
        assert_eq!(s.used_bytes().unwrap() as i64, recount(t));
        let st = s.stats().unwrap();
        assert_eq!(st.counters["records_stored"], 2, "K once, J once");
        assert_eq!(st.counters["duplicates"], 1, "K replayed");
        // Replayed again later: a duplicate, found by the insert's own tombstone check.
        let mut s = b.open();
        assert_eq!(
            s.commit_batch(std::slice::from_ref(&k), &[], &[], &[])
                .unwrap(),
            [InsertOutcome::Duplicate]
        );
        assert_eq!(count(in_records, &k.key), 0);
    }

    /// A follow-up arriving while another collector's prune of its record is not committed
    /// yet: it waits for the prune, then finds no record and stores nothing.
    #[test]
    fn a_followup_arriving_during_its_records_prune_is_not_stored() {
        let Some(b) = pg_backend("prune_then_followup") else {
            return;
        };
        let (key, frame) = stored_record(&b);
        let t = b.pg.as_ref().unwrap();
        let mut other = postgres::Client::connect(&t.url, postgres::NoTls).unwrap();
        other.batch_execute("BEGIN; DELETE FROM records;").unwrap();
        let out =
            blocked_until_commit(&b, other, move |s| s.put_followup(&key, &frame, 8).unwrap());
        assert_eq!(out, FollowupOutcome::NoSuchRecord);
        let s = b.open();
        assert_eq!(s.followup(&key).unwrap(), None);
        assert_eq!(followup_rows(&b, &s), 0);
    }
}
