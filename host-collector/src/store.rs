//! Embedded SQLite storage for crash records, heartbeats and collector counters.
//!
//! The schema is documented in `docs/collector.md`; every change is a new entry in
//! [`MIGRATIONS`], applied in order and recorded in `PRAGMA user_version`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod checkpoint;
mod liveness;
mod lookup;
mod read;
mod retention;
mod steps;
pub use checkpoint::Checkpointer;
pub use lookup::{parse_ref, RefError};
pub use steps::{host_of, StepStat, STEP_COLUMNS};
#[cfg(test)]
mod tests;
mod types;
pub use types::*;
mod writer_lock;

/// Errors from the store. Every variant says what was wrong and, where it helps, what to do.
#[derive(Debug, Error)]
pub enum StoreError {
    /// An SQLite failure; its text is the cause (said once: no source chain below it).
    #[error("sqlite: {}", sqlite_text(.0))]
    Sqlite(rusqlite::Error),
    #[error("cannot open database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("database {0} does not exist: give --db PATH (the one `serve` writes)")]
    Missing(PathBuf),
    #[error("database {0} is an empty file, not a canary database: give --db PATH (the one `serve` writes)")]
    Empty(PathBuf),
    #[error("{0} is not a SQLite database (or it is encrypted): give --db PATH (the one `serve` writes)")]
    NotADatabase(PathBuf),
    #[error("{0} is a SQLite database of another program, not a canary database")]
    Foreign(PathBuf),
    #[error(
        "database {path} is corrupt ({detail}); keep a copy, then recover it (`sqlite3 {path} \
         .recover`) or start a new database"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "database {0} has schema version {1}, older than this collector's, and cannot be \
         migrated read-only: run `host-collector serve` on it once"
    )]
    TooOld(PathBuf, u32),
    #[error(
        "database schema version {found} is newer than this collector supports ({supported}); \
         use a newer host-collector"
    )]
    TooNew { found: u32, supported: u32 },
    #[error("stored JSON column {column} of record {id} is malformed: {source}")]
    BadJson {
        column: &'static str,
        id: i64,
        source: serde_json::Error,
    },
    #[error(
        "another `host-collector serve` is writing {0} (it holds a lock on that file, under \
         whatever name it was given); stop it or use another --db"
    )]
    Locked(PathBuf),
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid record reference {0:?}: use a numeric ID or BOOTID:SEQ (boot id in hex)")]
    BadRef(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(e)
    }
}

/// The text of an SQLite error, once: rusqlite's message (which already names the cause),
/// without the error-code text it would add again as a source.
fn sqlite_text(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg)) if !msg.is_empty() => {
            let _ = f;
            msg.clone()
        }
        rusqlite::Error::SqliteFailure(f, _) => sqlite_code_text(f),
        other => other.to_string(),
    }
}

/// "Unable to open the database file" from "Error code 14: Unable to open the database file".
fn sqlite_code_text(f: &rusqlite::ffi::Error) -> String {
    let t = f.to_string();
    match t.split_once(": ") {
        Some((_, rest)) => rest.to_string(),
        None => t,
    }
}

impl StoreError {
    /// Names the database in errors whose SQLite text does not: corruption, a file that is
    /// not a database, a failed open.
    pub fn at(self, path: &Path) -> StoreError {
        use rusqlite::ErrorCode as C;
        let StoreError::Sqlite(e) = self else {
            return self;
        };
        match e.sqlite_error_code() {
            Some(C::NotADatabase) => StoreError::NotADatabase(path.into()),
            Some(C::DatabaseCorrupt) => StoreError::Corrupt {
                path: path.into(),
                detail: sqlite_text(&e),
            },
            Some(C::CannotOpen) => StoreError::Open {
                path: path.into(),
                reason: match &e {
                    rusqlite::Error::SqliteFailure(f, _) => sqlite_code_text(f),
                    o => o.to_string(),
                },
            },
            _ => StoreError::Sqlite(e),
        }
    }
}

/// `PATH-wal`.
fn wal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// `path` for an SQLite URI: absolute, with `%`, `?` and `#` percent-encoded.
fn uri_path(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut o = String::new();
    for c in abs.to_string_lossy().chars() {
        match c {
            '%' => o.push_str("%25"),
            '?' => o.push_str("%3f"),
            '#' => o.push_str("%23"),
            c => o.push(c),
        }
    }
    o
}

/// Refuses database names that are not a file on disk: `:memory:`, the empty name (a
/// temporary database) and URIs (`file:...`, which may name an in-memory database). `serve`
/// acks a record only once it is durable, so it must write to a real file.
pub fn check_durable_name(path: &Path) -> Result<(), String> {
    let s = path.to_string_lossy();
    if s.is_empty() || s == ":memory:" || s.starts_with("file:") {
        return Err(format!(
            "--db {s:?} is not a database file on disk (in-memory, temporary and URI \
             databases are not durable, and serve acks only what it has stored durably): \
             give a file path"
        ));
    }
    Ok(())
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How hard commits are pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// `synchronous=NORMAL` under WAL: a committed record survives a crash of the collector
    /// process; the last commits may be lost on power loss or an OS crash.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced; survives power loss, at a throughput cost.
    Full,
}

/// How long and how much `serve` keeps (`max_age`, `max_records`, `max_bytes` in the
/// configuration); `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_records: Option<u64>,
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// No limit is set.
    pub fn is_none(&self) -> bool {
        self.max_age.is_none() && self.max_records.is_none() && self.max_bytes.is_none()
    }
}

impl Sync {
    /// The value of SQLite's `synchronous` pragma for this level.
    fn pragma(self) -> &'static str {
        match self {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        }
    }
}

/// The collector's database.
pub struct Store {
    conn: Connection,
    /// Every stored record key, loaded on the first commit: the dedupe set.
    keys: Option<HashSet<RecordKey>>,
    /// Held by the one process that writes records (`serve`). Declared after `conn`, so
    /// the connection closes first (see [`Store::lock_writer`]).
    writer_lock: Option<std::fs::File>,
    /// Bytes of rejected records to keep (`raw`); beyond it they are only counted.
    rejected_budget: u64,
    /// Bytes of rejected records kept, loaded on the first commit.
    rejected_bytes: Option<u64>,
    /// Opened `immutable=1` (see [`Store::open_read`]): sees no later commits.
    immutable: bool,
    /// The ids of the records the last [`Store::commit_batch`] stored, in order.
    last_ids: Vec<i64>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, sets WAL mode and applies migrations.
    /// The name is a file name, never a URI.
    pub fn open(path: &Path, sync: Sync) -> Result<Store> {
        Self::open_rw(path, sync, true)
    }

    /// Opens an existing database for writing (`prune`): a missing or empty file is an error,
    /// never turned into a new database.
    pub fn open_existing(path: &Path, sync: Sync) -> Result<Store> {
        Self::check_exists(path)?;
        Self::open_rw(path, sync, false)
    }

    fn check_exists(path: &Path) -> Result<()> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::Missing(path.into()))
            }
            Err(e) => Err(StoreError::Open {
                path: path.into(),
                reason: e.to_string(),
            }),
            Ok(m) if m.is_file() && m.len() == 0 => Err(StoreError::Empty(path.into())),
            Ok(m) if !m.is_file() => Err(StoreError::Open {
                path: path.into(),
                reason: "not a regular file".into(),
            }),
            Ok(_) => Ok(()),
        }
    }

    fn open_rw(path: &Path, sync: Sync, create: bool) -> Result<Store> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| StoreError::from(e).at(path))?;
        let setup = || -> Result<Store> {
            conn.busy_timeout(Duration::from_secs(10))?;
            // A stored record is about 2.5 KiB: with the default 4 KiB pages each one would
            // take a page of its own. Only takes effect on a new (empty) database.
            conn.pragma_update(None, "page_size", 16384)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", sync.pragma())?;
            // Bigger WAL between checkpoints: the WAL is rewritten from its start after each
            // checkpoint, and rewriting pages the kernel is still writing back stalls the
            // writer.
            conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
            conn.pragma_update(None, "cache_size", -65536)?;
            Ok(Store {
                conn,
                keys: None,
                writer_lock: None,
                rejected_budget: u64::MAX,
                rejected_bytes: None,
                immutable: false,
                last_ids: Vec::new(),
            })
        };
        let mut store = setup().map_err(|e| e.at(path))?;
        store.check_ours(path)?;
        store.migrate().map_err(|e| e.at(path))?;
        Ok(store)
    }

    /// Opens an existing database read-only (the reading commands): never creates or
    /// changes a file, works with read access only. An older schema is migrated first if the
    /// file may be written.
    pub fn open_read(path: &Path) -> Result<Store> {
        Self::check_exists(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| StoreError::from(e).at(path))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| StoreError::from(e).at(path))?;
        // A WAL database whose WAL index (`-shm`) does not exist and may not be created (a
        // directory the reader cannot write) cannot be read this way. With no WAL either,
        // nothing is being written: read the file as it is (`immutable=1`).
        let mut immutable = false;
        let conn = match conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())) {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly)
                    && !wal_path(path).exists() =>
            {
                drop(conn);
                immutable = true;
                let uri = format!("file:{}?immutable=1", uri_path(path));
                Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
                    .map_err(|e| StoreError::from(e).at(path))?
            }
            _ => conn,
        };
        let store = Store {
            conn,
            keys: None,
            writer_lock: None,
            rejected_budget: u64::MAX,
            rejected_bytes: None,
            immutable,
            last_ids: Vec::new(),
        };
        store.check_ours(path)?;
        let found = store.schema_version().map_err(|e| e.at(path))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            drop(store);
            Self::open_existing(path, Sync::Normal)
                .map_err(|_| StoreError::TooOld(path.into(), found))?;
            return Self::open_read(path);
        }
        Ok(store)
    }

    /// Whether this read-only store reads the file as it was when opened (no WAL index could
    /// be made): a reader that polls must open it again to see new records.
    pub fn is_snapshot(&self) -> bool {
        self.immutable
    }

    /// Refuses a SQLite database written by another program: schema version 0 (no canary
    /// migration ran) and tables that are not ours.
    fn check_ours(&self, path: &Path) -> Result<()> {
        let version = self.schema_version().map_err(|e| e.at(path))?;
        if version > 0 {
            return Ok(());
        }
        let tables: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::from(e).at(path))?;
        if tables > 0 {
            return Err(StoreError::Foreign(path.into()));
        }
        if self
            .conn
            .is_readonly(rusqlite::DatabaseName::Main)
            .unwrap_or(false)
        {
            // A reader on a database no collector ever wrote.
            return Err(StoreError::Empty(path.into()));
        }
        Ok(())
    }

    /// Checks the database before `serve` acks anything into it: `PRAGMA quick_check`
    /// (seconds per GB), or with `full` `PRAGMA integrity_check` (also every index entry).
    pub fn check_integrity(&self, path: &Path, full: bool) -> Result<()> {
        let pragma = if full {
            "PRAGMA integrity_check(5)"
        } else {
            "PRAGMA quick_check(5)"
        };
        let run = || -> Result<Vec<String>> {
            let mut st = self.conn.prepare(pragma)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        };
        let lines = run().map_err(|e| e.at(path))?;
        if lines.len() == 1 && lines[0] == "ok" {
            return Ok(());
        }
        Err(StoreError::Corrupt {
            path: path.into(),
            detail: lines.join("; "),
        })
    }

    /// Sets after how many WAL pages a commit on this connection checkpoints by itself (0:
    /// never; `serve` checkpoints from a [`Checkpointer`] thread instead).
    pub fn set_autocheckpoint(&self, pages: u32) -> Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", pages)?;
        Ok(())
    }

    /// Makes this the only process that writes records to the database at `path`: an
    /// exclusive `flock` on the database file itself, so every name that reaches the file
    /// (symlinks, hard links, relative paths) meets the same lock; released when the process
    /// ends, even by SIGKILL. The dedupe set of [`Store::commit_batch`] relies on it.
    ///
    /// `flock` locks are independent of the POSIX byte-range locks SQLite takes on the same
    /// file (on local file systems). The descriptor stays open for as long as the store:
    /// closing a descriptor of a file drops the process's POSIX locks on it, so it is closed
    /// only after the connection (field order). Windows: see `store/writer_lock.rs`.
    pub fn lock_writer(&mut self, path: &Path) -> Result<()> {
        let f = writer_lock::open(path).map_err(|source| StoreError::Lock {
            path: path.into(),
            source,
        })?;
        match f.try_lock() {
            Ok(()) => {
                self.writer_lock = Some(f);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(path.into())),
            Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock {
                path: path.into(),
                source,
            }),
        }
    }

    /// Keeps at most `bytes` of rejected records (their raw bytes); further rejections are
    /// acked and counted (`rejected_not_kept`) but not stored.
    pub fn set_rejected_budget(&mut self, bytes: u64) {
        self.rejected_budget = bytes;
    }

    /// Caps the WAL file left after a checkpoint resets it (`PRAGMA journal_size_limit`).
    pub fn set_journal_size_limit(&self, bytes: u64) -> Result<()> {
        self.conn.pragma_update(
            None,
            "journal_size_limit",
            bytes.min(i64::MAX as u64) as i64,
        )?;
        Ok(())
    }

    /// Loads the key of every stored (and every pruned) record into memory (done by the first
    /// [`Store::commit_batch`] otherwise). About 40 bytes per stored record.
    pub fn load_dedupe_keys(&mut self) -> Result<()> {
        if self.keys.is_none() {
            let t = std::time::Instant::now();
            let keys = self.load_keys()?;
            tracing::info!(records = keys.len(), took = ?t.elapsed(), "loaded dedupe keys");
            self.keys = Some(keys);
        }
        Ok(())
    }

    fn load_keys(&self) -> Result<HashSet<RecordKey>> {
        let mut st = self.conn.prepare(
            "SELECT boot_id, seq, record_crc FROM record_keys
                 UNION ALL SELECT boot_id, seq, record_crc FROM pruned_keys",
        )?;
        let mut rows = st.query([])?;
        let mut keys = HashSet::new();
        while let Some(r) = rows.next()? {
            let b: Vec<u8> = r.get(0)?;
            keys.insert(RecordKey {
                boot_id: b.as_slice().try_into().unwrap_or([0; 16]),
                seq: r.get(1)?,
                record_crc: r.get(2)?,
            });
        }
        Ok(keys)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<()> {
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

    /// Stores a batch in one transaction: records (duplicates ignored), rejections, heartbeats,
    /// and counter increments (plus `records_stored`, `duplicates`, `rejected` and
    /// `heartbeats` for what the batch itself holds). Returns the outcome of each record.
    pub fn commit_batch(
        &mut self,
        records: &[NewRecord],
        rejections: &[Rejection],
        heartbeats: &[HeartbeatSeen],
        counters: &[(&str, u64)],
    ) -> Result<Vec<InsertOutcome>> {
        self.load_dedupe_keys()?;
        // Rejected records are kept up to the byte budget, in arrival order; the rest are
        // only counted (as `rejected` and `rejected_not_kept`).
        let mut kept_bytes = match self.rejected_bytes {
            Some(b) => b,
            None if rejections.is_empty() => 0,
            None => self.conn.query_row(
                "SELECT coalesce(sum(length(raw)), 0) FROM rejections",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64,
        };
        let before = kept_bytes;
        let mut keep = 0;
        for r in rejections {
            let after = kept_bytes.saturating_add(r.raw.len() as u64);
            if after > self.rejected_budget {
                break;
            }
            kept_bytes = after;
            keep += 1;
        }
        let not_kept = (rejections.len() - keep) as u64;
        let extra = [("rejected", not_kept), ("rejected_not_kept", not_kept)];
        let all_counters: Vec<(&str, u64)>;
        let counters = if not_kept > 0 {
            all_counters = counters.iter().copied().chain(extra).collect();
            &all_counters[..]
        } else {
            counters
        };
        let Store {
            conn,
            keys,
            last_ids,
            ..
        } = self;
        last_ids.clear();
        let known = keys.as_mut().expect("loaded above");
        let mut new_keys: Vec<RecordKey> = Vec::with_capacity(records.len());
        let res = Self::write_batch(
            conn,
            known,
            &mut new_keys,
            last_ids,
            records,
            &rejections[..keep],
            heartbeats,
            counters,
        );
        if !rejections.is_empty() {
            self.rejected_bytes = Some(if res.is_ok() { kept_bytes } else { before });
        }
        if let (Err(_), Some(known)) = (&res, self.keys.as_mut()) {
            // Not committed: forget the keys this batch claimed.
            for k in &new_keys {
                known.remove(k);
            }
            self.last_ids.clear();
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn write_batch(
        conn: &mut Connection,
        known: &mut HashSet<RecordKey>,
        new_keys: &mut Vec<RecordKey>,
        ids: &mut Vec<i64>,
        records: &[NewRecord],
        rejections: &[Rejection],
        heartbeats: &[HeartbeatSeen],
        counters: &[(&str, u64)],
    ) -> Result<Vec<InsertOutcome>> {
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(records.len());
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO records (boot_id, seq, record_crc, received_at_us, source,
                    schema_major, schema_minor, build_id, arch, boot_mode, hypervisor,
                    vmbus_version, uptime_us, kind, kind_detail, message, file, line, col,
                    registers, backtrace, log_tail, steps, raw, image_id, load_base, ext,
                    step_freeze_us, step_screen_flush_us, step_vmbus_unload_us,
                    step_arch_cleanup_us, step_ship_us, step_crash_registers_us, step_end_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31,
                    ?32, ?33, ?34)",
            )?;
            let mut keys_ins = tx.prepare_cached(
                "INSERT INTO record_keys (id, boot_id, seq, record_crc) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in records {
                if !known.insert(r.key) {
                    out.push(InsertOutcome::Duplicate);
                    continue;
                }
                new_keys.push(r.key);
                let t = &r.text;
                let has_file = t.get(Col::File).is_some();
                let n = ins.execute(params![
                    &r.key.boot_id[..],
                    r.key.seq,
                    r.key.record_crc,
                    r.received_at_us,
                    t.req(Col::Source),
                    r.schema_major,
                    r.schema_minor,
                    t.req(Col::BuildId),
                    t.req(Col::Arch),
                    t.req(Col::BootMode),
                    t.req(Col::Hypervisor),
                    t.get(Col::VmbusVersion),
                    r.uptime_us as i64,
                    t.req(Col::Kind),
                    t.get(Col::KindDetail),
                    t.req(Col::Message),
                    t.get(Col::File),
                    has_file.then_some(r.line_col.0),
                    has_file.then_some(r.line_col.1),
                    t.req(Col::Registers),
                    t.req(Col::Backtrace),
                    t.req(Col::LogTail),
                    t.req(Col::Steps),
                    r.raw,
                    t.get(Col::ImageId),
                    t.load_base.map(|b| b as i64),
                    t.get(Col::Ext),
                    t.step_us[0],
                    t.step_us[1],
                    t.step_us[2],
                    t.step_us[3],
                    t.step_us[4],
                    t.step_us[5],
                    t.step_us[6],
                ])?;
                debug_assert_eq!(n, 1);
                ids.push(tx.last_insert_rowid());
                keys_ins.execute(params![
                    tx.last_insert_rowid(),
                    &r.key.boot_id[..],
                    r.key.seq,
                    r.key.record_crc
                ])?;
                out.push(InsertOutcome::Stored);
            }
            if !rejections.is_empty() {
                let mut rej = tx.prepare_cached(
                    "INSERT OR IGNORE INTO rejections (boot_id, seq, record_crc, received_at_us,
                        source, schema_major, schema_minor, reason, raw)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for r in rejections {
                    rej.execute(params![
                        &r.key.boot_id[..],
                        r.key.seq,
                        r.key.record_crc,
                        r.received_at_us,
                        r.source,
                        r.schema_major,
                        r.schema_minor,
                        r.reason,
                        r.raw
                    ])?;
                }
            }
            if !heartbeats.is_empty() {
                // Only a sequence above the last one seen for the boot counts: a replayed (or
                // duplicated) heartbeat must not make a dead canary look alive.
                let mut hb = tx.prepare_cached(
                    "INSERT INTO canaries (boot_id, source, arch, first_seen_us, last_seen_us,
                        uptime_ms, heartbeat_seq, heartbeats)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, 1)
                     ON CONFLICT (boot_id) DO UPDATE SET source = excluded.source,
                        arch = excluded.arch, last_seen_us = excluded.last_seen_us,
                        uptime_ms = excluded.uptime_ms, heartbeat_seq = excluded.heartbeat_seq,
                        heartbeats = heartbeats + 1
                     WHERE excluded.heartbeat_seq > canaries.heartbeat_seq",
                )?;
                for h in heartbeats {
                    hb.execute(params![
                        &h.boot_id[..],
                        h.source,
                        h.arch,
                        h.seen_at_us,
                        h.uptime_ms as i64,
                        h.seq
                    ])?;
                }
            }
            let mut ctr = tx.prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            )?;
            let stored = out.iter().filter(|o| **o == InsertOutcome::Stored).count() as u64;
            let own = [
                ("records_stored", stored),
                ("duplicates", out.len() as u64 - stored),
                ("rejected", rejections.len() as u64),
                ("heartbeats", heartbeats.len() as u64),
            ];
            for (name, v) in counters.iter().chain(&own).filter(|(_, v)| *v > 0) {
                ctr.execute(params![name, *v as i64])?;
            }
        }
        tx.commit()?;
        Ok(out)
    }

    // (reading queries: store/read.rs)

    /// The ids of the records the last [`Store::commit_batch`] stored (its `Stored`
    /// outcomes, in order); empty if it failed.
    pub fn last_stored_ids(&self) -> &[i64] {
        &self.last_ids
    }

    /// Direct access for tests and maintenance.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Whether a record with this key is stored.
    pub fn contains(&self, key: &RecordKey) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM records WHERE boot_id = ?1 AND seq = ?2 AND record_crc = ?3",
                params![&key.boot_id[..], key.seq, key.record_crc],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}
