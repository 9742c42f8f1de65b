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
    // 9: a record's follow-up is deleted with it (`prune`, retention), by the delete trigger
    //    (a lookup by `followups`' primary key); the follow-ups of records deleted before
    //    (kept until now) are deleted. A pruned record's tombstone makes it a duplicate,
    //    and a follow-up without a record is not stored (`NoSuchRecord`): none is needed.
    //    `record_keys` has no index on the key: a temporary copy keyed by it makes the
    //    orphans' search one lookup per follow-up (without it, a scan of `record_keys` per
    //    follow-up; with it 0.5 s for 300,000 follow-ups of which 150,000 orphans, measured
    //    with Python's `sqlite3`, SQLite 3.40).
    "DROP TRIGGER records_keys_delete;
    CREATE TRIGGER records_keys_delete AFTER DELETE ON records BEGIN
        INSERT INTO pruned_keys (boot_id, seq, record_crc)
            VALUES (old.boot_id, old.seq, old.record_crc);
        DELETE FROM record_keys WHERE id = old.id;
        DELETE FROM followups
            WHERE boot_id = old.boot_id AND seq = old.seq AND record_crc = old.record_crc;
    END;
    CREATE TEMP TABLE live_keys_v9 (
        boot_id    BLOB,
        seq        INTEGER,
        record_crc INTEGER,
        PRIMARY KEY (boot_id, seq, record_crc)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO live_keys_v9 SELECT boot_id, seq, record_crc FROM record_keys;
    DELETE FROM followups WHERE NOT EXISTS (SELECT 1 FROM live_keys_v9 k
        WHERE k.boot_id = followups.boot_id AND k.seq = followups.seq
          AND k.record_crc = followups.record_crc);
    DROP TABLE live_keys_v9;",
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

#[cfg(test)]
mod tests {
    use super::super::super::{RecordKey, Store, Sync};
    use super::MIGRATIONS;

    fn key(boot: u8, seq: u32) -> RecordKey {
        RecordKey {
            boot_id: [boot; 16],
            seq,
            record_crc: 7,
        }
    }

    /// A version-8 database holding follow-ups of deleted records (nothing deleted them
    /// then): migration 9 deletes those and keeps the others, and from then on a record's
    /// follow-up goes with it.
    #[test]
    fn migration_9_deletes_the_followups_of_deleted_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v8.db");
        let (kept, pruned, never) = (key(1, 1), key(1, 2), key(2, 1));
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..8] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 8).unwrap();
            for (id, k) in [(1, &kept), (2, &pruned)] {
                c.execute(
                    "INSERT INTO records (id, boot_id, seq, record_crc, received_at_us, source,
                        schema_major, schema_minor, arch, uptime_us, kind, message, raw)
                     VALUES (?1, ?2, ?3, ?4, ?1, '10.1.1.1:5', 1, 0, 'x86_64', 4, 'panic', 'm',
                        x'00')",
                    rusqlite::params![id, &k.boot_id[..], k.seq, k.record_crc],
                )
                .unwrap();
                c.execute(
                    "INSERT INTO record_keys (id, boot_id, seq, record_crc)
                     VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![id, &k.boot_id[..], k.seq, k.record_crc],
                )
                .unwrap();
            }
            for k in [&kept, &pruned, &never] {
                c.execute(
                    "INSERT INTO followups (boot_id, seq, record_crc, received_at_ms, raw)
                     VALUES (?1, ?2, ?3, 1, ?4)",
                    rusqlite::params![&k.boot_id[..], k.seq, k.record_crc, &[k.seq as u8][..]],
                )
                .unwrap();
            }
            // `prune` as version 8 did it: the record and its key go, the follow-up stays.
            c.execute("DELETE FROM records WHERE id = 2", []).unwrap();
        }
        let mut s = Store::open(&path, Sync::Normal).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(s.followup(&kept).unwrap().as_deref(), Some(&[1u8][..]));
        assert_eq!(s.followup(&pruned).unwrap(), None, "its record was pruned");
        assert_eq!(s.followup(&never).unwrap(), None, "no such record");
        let rows = |s: &Store| -> i64 {
            s.connection()
                .query_row("SELECT count(*) FROM followups", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(rows(&s), 1);
        // The tombstone of the pruned record stays: replayed, it is a duplicate.
        let n: i64 = s
            .connection()
            .query_row("SELECT count(*) FROM pruned_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(s.prune_keep(0).unwrap(), 1);
        assert_eq!(s.followup(&kept).unwrap(), None);
        assert_eq!(rows(&s), 0);
    }
}
