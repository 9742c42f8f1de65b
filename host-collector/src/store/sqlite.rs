//! The SQLite backend of the store: one file, one writer process (`serve` holds a lock on
//! the file), WAL. The schema is in [`schema`] and `docs/collector.md`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::*;

#[cfg(test)]
mod bench;
mod checkpoint;
mod insert;
mod liveness;
mod read;
mod retention;
pub(super) mod schema;
mod writer;
mod writer_lock;
#[cfg(test)]
mod writer_tests;
pub use checkpoint::Checkpointer;
pub use schema::{MIGRATIONS, SCHEMA_VERSION};

/// The page size of a new database (see [`SqliteStore::open`]).
pub const PAGE_SIZE: u32 = 8192;

impl Sync {
    /// The value of SQLite's `synchronous` pragma for this level.
    fn pragma(self) -> &'static str {
        match self {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
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

/// The collector's database.
pub struct SqliteStore {
    conn: Connection,
    /// Every stored record key, loaded on the first commit: the dedupe set.
    keys: Option<HashSet<RecordKey>>,
    /// Held by the one process that writes records (`serve`). Declared after `conn`, so
    /// the connection closes first (see [`SqliteStore::lock_writer`]).
    writer_lock: Option<std::fs::File>,
    /// Bytes of rejected records to keep (`raw`); beyond it they are only counted.
    rejected_budget: u64,
    /// Bytes of rejected records kept, loaded on the first commit.
    rejected_bytes: Option<u64>,
    /// Opened `immutable=1` (see [`SqliteStore::open_read`]): sees no later commits.
    immutable: bool,
    /// The ids of the records the last [`SqliteStore::commit_batch`] stored, in order.
    last_ids: Vec<i64>,
    /// Store only the raw record and the columns queries need (see [`SqliteStore::set_lean`]).
    lean: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, sets WAL mode and applies migrations.
    /// The name is a file name, never a URI.
    pub fn open(path: &Path, sync: Sync) -> Result<SqliteStore> {
        Self::open_rw(path, sync, true)
    }

    /// Opens an existing database for writing (`prune`): a missing or empty file is an error,
    /// never turned into a new database.
    pub fn open_existing(path: &Path, sync: Sync) -> Result<SqliteStore> {
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

    fn open_rw(path: &Path, sync: Sync, create: bool) -> Result<SqliteStore> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| StoreError::from(e).at(path))?;
        let setup = || -> Result<SqliteStore> {
            conn.busy_timeout(Duration::from_secs(10))?;
            // Only takes effect on a new (empty) database: an existing one keeps its page size
            // (16 KiB before this was 8 KiB). Lean rows take ~1.2 KiB, and every commit
            // rewrites a few pages besides the new rows (the last leaf and its parent, the
            // index and keys leaves, the counters, page 1): measured with
            // `store::sqlite::bench` (200,000 rows, commits of 30), bytes written per record
            // (WAL and checkpoints) and database bytes per record were 6,020 and 1,225 with
            // 16 KiB pages, 4,385 and 1,225 with 8 KiB, 3,841 and 1,422 with 4 KiB (4 KiB
            // rows waste a sixth of each page, and checkpoints cost 50% more CPU); the
            // writer's CPU per record was the same for all three.
            conn.pragma_update(None, "page_size", PAGE_SIZE)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", sync.pragma())?;
            // Bigger WAL between checkpoints: the WAL is rewritten from its start after each
            // checkpoint, and rewriting pages the kernel is still writing back stalls the
            // writer.
            conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
            conn.pragma_update(None, "cache_size", -65536)?;
            // The writer's multi-row inserts are prepared once per chunk size (store/insert.rs).
            conn.set_prepared_statement_cache_capacity(64);
            Ok(SqliteStore {
                conn,
                keys: None,
                writer_lock: None,
                rejected_budget: u64::MAX,
                rejected_bytes: None,
                immutable: false,
                last_ids: Vec::new(),
                lean: false,
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
    pub fn open_read(path: &Path) -> Result<SqliteStore> {
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
        let store = SqliteStore {
            conn,
            keys: None,
            writer_lock: None,
            rejected_budget: u64::MAX,
            rejected_bytes: None,
            immutable,
            last_ids: Vec::new(),
            lean: false,
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
    /// ends, even by SIGKILL. The dedupe set of [`SqliteStore::commit_batch`] relies on it.
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
    /// The ids of the records the last [`SqliteStore::commit_batch`] stored (its `Stored`
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

    /// Stores records lean: the raw record and the columns queries need (`list`, `--host`,
    /// `stats --steps`, the key); the rest (`build_id`, `boot_mode`, `hypervisor`,
    /// `vmbus_version`, `kind_detail`, `registers`, `backtrace`, `log_tail`, `steps`, `ext`)
    /// is NULL and rendered from `raw` when read. Only for records whose `raw` decodes (what
    /// `serve` stores).
    pub fn set_lean(&mut self, lean: bool) {
        self.lean = lean;
    }
}
