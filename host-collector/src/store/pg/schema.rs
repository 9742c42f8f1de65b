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
