//! The SQLite schema: versioned migrations, applied in order and recorded in
//! `PRAGMA user_version` (documented in `docs/collector.md`).

use rusqlite::TransactionBehavior;

use super::super::{Result, StoreError};
use super::{liveness, SqliteStore};

/// Versioned migrations. Entry `i` moves the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: records and counters.
    "CREATE TABLE records (
        id             INTEGER PRIMARY KEY,
        boot_id        BLOB    NOT NULL CHECK (length(boot_id) = 16),
        seq            INTEGER NOT NULL,
        record_crc     INTEGER NOT NULL,
        received_at_us INTEGER NOT NULL,
        source         TEXT    NOT NULL,
        schema_major   INTEGER NOT NULL,
        schema_minor   INTEGER NOT NULL,
        build_id       TEXT    NOT NULL,
        arch           TEXT    NOT NULL,
        boot_mode      TEXT    NOT NULL,
        hypervisor     TEXT    NOT NULL,
        vmbus_version  TEXT,
        uptime_us      INTEGER NOT NULL,
        kind           TEXT    NOT NULL,
        kind_detail    TEXT,
        message        TEXT    NOT NULL,
        file           TEXT,
        line           INTEGER,
        col            INTEGER,
        registers      TEXT    NOT NULL,
        backtrace      TEXT    NOT NULL,
        log_tail       TEXT    NOT NULL,
        steps          TEXT    NOT NULL,
        raw            BLOB    NOT NULL
    );
    -- (boot_id, seq, record_crc) is unique, enforced by the collector (see Store::commit_batch):
    -- a unique index on random boot ids would rewrite one index page per record per commit.
    CREATE INDEX records_received_at ON records (received_at_us);
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: canary heartbeats and rejected records.
    "CREATE TABLE canaries (
        boot_id       BLOB PRIMARY KEY CHECK (length(boot_id) = 16),
        source        TEXT    NOT NULL,
        arch          INTEGER NOT NULL,
        first_seen_us INTEGER NOT NULL,
        last_seen_us  INTEGER NOT NULL,
        uptime_ms     INTEGER NOT NULL,
        heartbeat_seq INTEGER NOT NULL,
        heartbeats    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE rejections (
        id             INTEGER PRIMARY KEY,
        boot_id        BLOB    NOT NULL,
        seq            INTEGER NOT NULL,
        record_crc     INTEGER NOT NULL,
        received_at_us INTEGER NOT NULL,
        source         TEXT    NOT NULL,
        schema_major   INTEGER NOT NULL,
        schema_minor   INTEGER NOT NULL,
        reason         TEXT    NOT NULL,
        raw            BLOB    NOT NULL,
        UNIQUE (boot_id, seq, record_crc)
    );",
    // 3: the dedupe keys of `records` in a small append-only table, so `serve` loads them at
    //    start without reading every record. The writer inserts a record's key in the same
    //    transaction (an insert trigger would make SQLite keep a statement journal, writing
    //    three extra pages per record); deletions follow by trigger.
    "CREATE TABLE record_keys (
        id         INTEGER PRIMARY KEY,
        boot_id    BLOB    NOT NULL,
        seq        INTEGER NOT NULL,
        record_crc INTEGER NOT NULL
    );
    INSERT INTO record_keys (id, boot_id, seq, record_crc)
        SELECT id, boot_id, seq, record_crc FROM records;
    CREATE TRIGGER records_keys_delete AFTER DELETE ON records BEGIN
        DELETE FROM record_keys WHERE id = old.id;
    END;",
    // 4: tombstones: the dedupe key of every deleted (pruned) record, so a record replayed
    //    after `prune` and a restart is answered as a duplicate, not stored again. Loaded
    //    with `record_keys` into the dedupe set; never deleted (about 30 bytes a record).
    "CREATE TABLE pruned_keys (
        boot_id    BLOB    NOT NULL,
        seq        INTEGER NOT NULL,
        record_crc INTEGER NOT NULL
    );
    DROP TRIGGER records_keys_delete;
    CREATE TRIGGER records_keys_delete AFTER DELETE ON records BEGIN
        INSERT INTO pruned_keys (boot_id, seq, record_crc)
            VALUES (old.boot_id, old.seq, old.record_crc);
        DELETE FROM record_keys WHERE id = old.id;
    END;",
    // 5: the liveness of each canary (store/liveness.rs).
    liveness::MIGRATION,
    // Schema 1.1's fields as columns: the image id (`KIND:ID`, as `symbols` names it), its
    //    load base, the rest of the 1.1 group as JSON (stacks, backtrace_end, takeovers), and
    //    each panic-path step's time (the first entry's; NULL while pending), so `stats
    //    --steps` can query them. Step times of older rows come from their `steps` JSON;
    //    their 1.1 fields stay NULL (`show` decodes those from `raw`).
    "ALTER TABLE records ADD COLUMN image_id TEXT;
    ALTER TABLE records ADD COLUMN load_base INTEGER;
    ALTER TABLE records ADD COLUMN ext TEXT;
    ALTER TABLE records ADD COLUMN step_freeze_us INTEGER;
    ALTER TABLE records ADD COLUMN step_screen_flush_us INTEGER;
    ALTER TABLE records ADD COLUMN step_vmbus_unload_us INTEGER;
    ALTER TABLE records ADD COLUMN step_arch_cleanup_us INTEGER;
    ALTER TABLE records ADD COLUMN step_ship_us INTEGER;
    ALTER TABLE records ADD COLUMN step_crash_registers_us INTEGER;
    ALTER TABLE records ADD COLUMN step_end_us INTEGER;
    UPDATE records SET
        step_freeze_us = (SELECT json_extract(value, '$.elapsed_us') FROM json_each(records.steps)
            WHERE json_extract(value, '$.step') = 'freeze'
              AND json_extract(value, '$.outcome') <> 'pending' LIMIT 1),
        step_screen_flush_us = (SELECT json_extract(value, '$.elapsed_us') FROM json_each(records.steps)
            WHERE json_extract(value, '$.step') = 'screen-flush'
              AND json_extract(value, '$.outcome') <> 'pending' LIMIT 1),
        step_vmbus_unload_us = (SELECT json_extract(value, '$.elapsed_us') FROM json_each(records.steps)
            WHERE json_extract(value, '$.step') = 'vmbus-unload'
              AND json_extract(value, '$.outcome') <> 'pending' LIMIT 1),
        step_arch_cleanup_us = (SELECT json_extract(value, '$.elapsed_us') FROM json_each(records.steps)
            WHERE json_extract(value, '$.step') = 'arch-cleanup'
              AND json_extract(value, '$.outcome') <> 'pending' LIMIT 1),
        step_ship_us = (SELECT json_extract(value, '$.elapsed_us') FROM json_each(records.steps)
            WHERE json_extract(value, '$.step') = 'ship'
              AND json_extract(value, '$.outcome') <> 'pending' LIMIT 1),
        step_crash_registers_us = (SELECT json_extract(value, '$.elapsed_us') FROM json_each(records.steps)
            WHERE json_extract(value, '$.step') = 'crash-registers'
              AND json_extract(value, '$.outcome') <> 'pending' LIMIT 1),
        step_end_us = (SELECT json_extract(value, '$.elapsed_us') FROM json_each(records.steps)
            WHERE json_extract(value, '$.step') = 'end'
              AND json_extract(value, '$.outcome') <> 'pending' LIMIT 1);",
    // 7: the VM's and its host's names (`list --host`), and the follow-up frames: the
    //    outcomes of the panic steps that ran after a record was acked, one per record key.
    "ALTER TABLE records ADD COLUMN vm_name TEXT;
    ALTER TABLE records ADD COLUMN host_name TEXT;
    CREATE TABLE followups (
        boot_id        BLOB    NOT NULL,
        seq            INTEGER NOT NULL,
        record_crc     INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        raw            BLOB    NOT NULL,
        PRIMARY KEY (boot_id, seq, record_crc)
    ) WITHOUT ROWID;",
    // 8: the columns `show` can render from `raw` may be NULL (lean rows: `serve` stores the
    //    raw record and the columns queries need). SQLite cannot drop NOT NULL in place: the
    //    table is rebuilt with its rows, ids, index and trigger (DROP TABLE fires no delete
    //    trigger: no tombstones are made).
    "CREATE TABLE records_v8 (
        id             INTEGER PRIMARY KEY,
        boot_id        BLOB    NOT NULL CHECK (length(boot_id) = 16),
        seq            INTEGER NOT NULL,
        record_crc     INTEGER NOT NULL,
        received_at_us INTEGER NOT NULL,
        source         TEXT    NOT NULL,
        schema_major   INTEGER NOT NULL,
        schema_minor   INTEGER NOT NULL,
        build_id       TEXT,
        arch           TEXT    NOT NULL,
        boot_mode      TEXT,
        hypervisor     TEXT,
        vmbus_version  TEXT,
        uptime_us      INTEGER NOT NULL,
        kind           TEXT    NOT NULL,
        kind_detail    TEXT,
        message        TEXT    NOT NULL,
        file           TEXT,
        line           INTEGER,
        col            INTEGER,
        registers      TEXT,
        backtrace      TEXT,
        log_tail       TEXT,
        steps          TEXT,
        raw            BLOB    NOT NULL,
        image_id       TEXT,
        load_base      INTEGER,
        ext            TEXT,
        step_freeze_us INTEGER,
        step_screen_flush_us INTEGER,
        step_vmbus_unload_us INTEGER,
        step_arch_cleanup_us INTEGER,
        step_ship_us   INTEGER,
        step_crash_registers_us INTEGER,
        step_end_us    INTEGER,
        vm_name        TEXT,
        host_name      TEXT
    );
    INSERT INTO records_v8 SELECT id, boot_id, seq, record_crc, received_at_us, source,
        schema_major, schema_minor, build_id, arch, boot_mode, hypervisor, vmbus_version,
        uptime_us, kind, kind_detail, message, file, line, col, registers, backtrace,
        log_tail, steps, raw, image_id, load_base, ext, step_freeze_us, step_screen_flush_us,
        step_vmbus_unload_us, step_arch_cleanup_us, step_ship_us, step_crash_registers_us,
        step_end_us, vm_name, host_name FROM records;
    DROP TABLE records;
    ALTER TABLE records_v8 RENAME TO records;
    CREATE INDEX records_received_at ON records (received_at_us);
    CREATE TRIGGER records_keys_delete AFTER DELETE ON records BEGIN
        INSERT INTO pruned_keys (boot_id, seq, record_crc)
            VALUES (old.boot_id, old.seq, old.record_crc);
        DELETE FROM record_keys WHERE id = old.id;
    END;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

impl SqliteStore {
    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub(super) fn migrate(&mut self) -> Result<()> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        // IMMEDIATE: two processes opening a fresh database at once must not both migrate.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tracing::info!(to = i + 1, "migrating database schema");
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        }
        tx.commit()?;
        Ok(())
    }
}
