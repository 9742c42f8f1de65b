//! Storage for crash records, heartbeats and collector counters: one contract ([`Store`]),
//! two backends: embedded SQLite (one collector, a file; `store/sqlite`) and PostgreSQL
//! (`--db postgres://…`: several collectors share one fleet database; `store/pg`).
//!
//! Both keep the same promises: a record is acked only after the transaction holding it
//! committed; the key `(boot id, seq, record crc)` is stored once and the outcome says
//! `Stored` or `Duplicate` truthfully; one transaction per batch; versioned migrations run by
//! one process at a time; counters are incremented, never overwritten. The schemas are in
//! `docs/collector.md`. The rows and views are in [`types`] and [`view`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod lookup;
pub mod pg;
#[cfg(test)]
mod pg_tests;
pub mod sqlite;
mod steps;
#[cfg(test)]
pub(crate) mod tests;
mod types;
mod view;
pub use lookup::{parse_ref, RefError};
pub use pg::{pg_url, set_password, PgTarget};
pub use sqlite::{Checkpointer, MIGRATIONS, SCHEMA_VERSION};
pub use steps::{host_of, StepStat, STEP_COLUMNS};
pub use types::*;

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
    /// A PostgreSQL failure; its text is the server's (or the driver's) message.
    #[error("postgres: {0}")]
    Postgres(String),
    /// The PostgreSQL server cannot be reached or the connection broke: nothing is acked
    /// until it is back (the writer reconnects).
    #[error("postgres {target}: {reason}")]
    Unavailable { target: String, reason: String },
    #[error("{0}")]
    BadUrl(String),
    #[error("stored record {id} does not decode ({reason})")]
    BadRaw { id: i64, reason: String },
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

/// Refuses database names that are not a file on disk: `:memory:`, the empty name (a
/// temporary database) and URIs (`file:...`, which may name an in-memory database). `serve`
/// acks a record only once it is durable, so it must write to a real file.
pub fn check_durable_name(path: &Path) -> Result<(), String> {
    let s = path.to_string_lossy();
    if pg_url(path).is_some() {
        return Ok(());
    }
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

/// The collector's database: SQLite or PostgreSQL behind one interface.
pub struct Store {
    b: Backend,
}

enum Backend {
    Sqlite(Box<sqlite::SqliteStore>),
    Pg(Box<pg::PgStore>),
}

/// Runs `$e` with `$s` bound to whichever backend `$self` holds.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match &$self.b {
            Backend::Sqlite($s) => $e,
            Backend::Pg($s) => $e,
        }
    };
}
macro_rules! each_mut {
    ($self:expr, $s:ident => $e:expr) => {
        match &mut $self.b {
            Backend::Sqlite($s) => $e,
            Backend::Pg($s) => $e,
        }
    };
}

impl Store {
    fn sqlite(s: sqlite::SqliteStore) -> Store {
        Store {
            b: Backend::Sqlite(Box::new(s)),
        }
    }

    fn pg(s: pg::PgStore) -> Store {
        Store {
            b: Backend::Pg(Box::new(s)),
        }
    }

    /// Opens (creating if needed) the database `path` names and applies migrations: a file
    /// name (SQLite, never a URI) or a `postgres://` URL.
    pub fn open(path: &Path, sync: Sync) -> Result<Store> {
        match pg_url(path) {
            Some(url) => Ok(Store::pg(pg::PgStore::open(url, true)?)),
            None => Ok(Store::sqlite(sqlite::SqliteStore::open(path, sync)?)),
        }
    }

    /// Opens an existing database for writing (`prune`): a missing or empty file (or a
    /// PostgreSQL database no collector has written) is an error, never a new database.
    pub fn open_existing(path: &Path, sync: Sync) -> Result<Store> {
        match pg_url(path) {
            Some(url) => Ok(Store::pg(pg::PgStore::open(url, false)?)),
            None => Ok(Store::sqlite(sqlite::SqliteStore::open_existing(
                path, sync,
            )?)),
        }
    }

    /// Opens an existing database for the reading commands (never creates one).
    pub fn open_read(path: &Path) -> Result<Store> {
        match pg_url(path) {
            Some(url) => Ok(Store::pg(pg::PgStore::open(url, false)?)),
            None => Ok(Store::sqlite(sqlite::SqliteStore::open_read(path)?)),
        }
    }

    /// Whether this is the PostgreSQL backend.
    pub fn is_postgres(&self) -> bool {
        matches!(self.b, Backend::Pg(_))
    }

    /// Whether this read-only store reads the file as it was when opened (SQLite without a
    /// WAL index): a reader that polls must open it again to see new records.
    pub fn is_snapshot(&self) -> bool {
        match &self.b {
            Backend::Sqlite(s) => s.is_snapshot(),
            Backend::Pg(_) => false,
        }
    }

    /// Checks the database before `serve` acks anything into it (SQLite: `PRAGMA
    /// quick_check`, or `integrity_check` with `full`; PostgreSQL checks its own pages).
    pub fn check_integrity(&self, path: &Path, full: bool) -> Result<()> {
        match &self.b {
            Backend::Sqlite(s) => s.check_integrity(path, full),
            Backend::Pg(_) => Ok(()),
        }
    }

    /// SQLite: after how many WAL pages a commit checkpoints by itself. No-op on PostgreSQL.
    pub fn set_autocheckpoint(&self, pages: u32) -> Result<()> {
        match &self.b {
            Backend::Sqlite(s) => s.set_autocheckpoint(pages),
            Backend::Pg(_) => Ok(()),
        }
    }

    /// SQLite: makes this the only process writing records to the file (see
    /// `SqliteStore::lock_writer`). PostgreSQL takes any number of writers: no-op.
    pub fn lock_writer(&mut self, path: &Path) -> Result<()> {
        match &mut self.b {
            Backend::Sqlite(s) => s.lock_writer(path),
            Backend::Pg(_) => Ok(()),
        }
    }

    /// Stores records lean: the raw record and the columns queries need; `show` and
    /// `export` render the rest from `raw` when read. Only for records whose `raw` decodes
    /// (`serve` stores only those). PostgreSQL always stores lean.
    pub fn set_lean(&mut self, lean: bool) {
        if let Backend::Sqlite(s) = &mut self.b {
            s.set_lean(lean);
        }
    }

    /// Keeps at most `bytes` of rejected records (their raw bytes); further rejections are
    /// acked and counted (`rejected_not_kept`) but not stored.
    pub fn set_rejected_budget(&mut self, bytes: u64) {
        each_mut!(self, s => s.set_rejected_budget(bytes))
    }

    /// SQLite: caps the WAL file left after a checkpoint. No-op on PostgreSQL.
    pub fn set_journal_size_limit(&self, bytes: u64) -> Result<()> {
        match &self.b {
            Backend::Sqlite(s) => s.set_journal_size_limit(bytes),
            Backend::Pg(_) => Ok(()),
        }
    }

    /// SQLite: loads every stored key into the writer's dedupe set. PostgreSQL dedupes in the
    /// database (the unique key), across collectors: no-op.
    pub fn load_dedupe_keys(&mut self) -> Result<()> {
        match &mut self.b {
            Backend::Sqlite(s) => s.load_dedupe_keys(),
            Backend::Pg(_) => Ok(()),
        }
    }

    /// The schema version of the open database (each backend counts its own migrations).
    pub fn schema_version(&self) -> Result<u32> {
        each!(self, s => s.schema_version())
    }

    /// Stores a batch in one transaction: records (duplicates ignored), rejections, heartbeats,
    /// and counter increments (plus `records_stored`, `duplicates`, `rejected` and
    /// `heartbeats` for what the batch itself holds). Returns the outcome of each record, in
    /// order. An error means nothing of the batch was committed: ack none of it.
    pub fn commit_batch(
        &mut self,
        records: &[NewRecord],
        rejections: &[Rejection],
        heartbeats: &[HeartbeatSeen],
        counters: &[(&str, u64)],
    ) -> Result<Vec<InsertOutcome>> {
        each_mut!(self, s => s.commit_batch(records, rejections, heartbeats, counters))
    }

    /// The ids of the records the last [`Store::commit_batch`] stored (its `Stored`
    /// outcomes, in order); empty if it failed.
    pub fn last_stored_ids(&self) -> &[i64] {
        each!(self, s => s.last_stored_ids())
    }

    /// Stores the follow-up frame of the record `key` (the outcomes of the panic steps that
    /// ran after the record was acked), committed before this returns: `Stored` or `Replaced`
    /// (it reports more steps than the one held) with the record it was attached to (its id
    /// and source, read in the statement that finds the record's row), `Duplicate` (one
    /// reporting as many steps is already stored for the key; it stays) or `NoSuchRecord`
    /// (nothing stored: no record with this key).
    pub fn put_followup(
        &mut self,
        key: &RecordKey,
        raw: &[u8],
        received_unix_ms: i64,
    ) -> Result<FollowupOutcome> {
        each_mut!(self, s => s.put_followup(key, raw, received_unix_ms))
    }

    /// The follow-up frame stored for the record `key`, as received.
    pub fn followup(&self, key: &RecordKey) -> Result<Option<Vec<u8>>> {
        each!(self, s => s.followup(key))
    }

    /// Direct access to the SQLite connection, for tests and maintenance.
    ///
    /// # Panics
    /// On a PostgreSQL store (a programming error: callers know which backend they opened).
    pub fn connection(&self) -> &rusqlite::Connection {
        match &self.b {
            Backend::Sqlite(s) => s.connection(),
            Backend::Pg(_) => panic!("Store::connection() is SQLite only"),
        }
    }

    /// Whether a record with this key is stored.
    pub fn contains(&self, key: &RecordKey) -> Result<bool> {
        each!(self, s => s.contains(key))
    }

    /// Record summaries, oldest first (or newest first with `reverse`).
    pub fn list(&self, filter: &Filter) -> Result<Vec<RecordSummary>> {
        each!(self, s => s.list(filter))
    }

    /// The id of the newest record, if any.
    pub fn max_id(&self) -> Result<Option<i64>> {
        each!(self, s => s.max_id())
    }

    /// Full records matching `filter` (for `export`).
    pub fn records(&self, filter: &Filter, with_raw: bool) -> Result<Vec<RecordView>> {
        each!(self, s => s.records(filter, with_raw))
    }

    /// One full record.
    pub fn get(&self, r: &RecordRef, with_raw: bool) -> Result<Option<RecordView>> {
        each!(self, s => s.get(r, with_raw))
    }

    /// Collector statistics.
    pub fn stats(&self) -> Result<Stats> {
        each!(self, s => s.stats())
    }

    /// Canaries that sent heartbeats, most recently seen first.
    pub fn canaries(&self) -> Result<Vec<CanaryView>> {
        each!(self, s => s.canaries())
    }

    /// Rejected records, newest first.
    pub fn rejections(&self) -> Result<Vec<RejectionView>> {
        each!(self, s => s.rejections())
    }

    /// Every canary's liveness row (see `crate::liveness`).
    pub fn liveness(&self) -> Result<Vec<crate::liveness::Canary>> {
        each!(self, s => s.liveness())
    }

    /// Writes the rows of these canaries in one transaction. PostgreSQL: merged with what
    /// other collectors wrote (crash counts add up; the newest sighting and state win).
    pub fn save_liveness(&mut self, rows: &[crate::liveness::Canary]) -> Result<()> {
        each_mut!(self, s => s.save_liveness(rows))
    }

    /// Boot ids of stored records whose hex starts with `prefix` (lower-case hex), at most
    /// `limit` of them.
    pub fn boots_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<[u8; 16]>> {
        each!(self, s => s.boots_with_prefix(prefix, limit))
    }

    fn count_boots_with_prefix(&self, prefix: &str) -> Result<u64> {
        each!(self, s => s.count_boots_with_prefix(prefix))
    }

    fn newest_id_of_boot(&self, boot: &[u8; 16]) -> Result<Option<i64>> {
        each!(self, s => s.newest_id_of_boot(boot))
    }

    /// Records stored.
    pub fn count(&self) -> Result<u64> {
        each!(self, s => s.count())
    }

    /// Records received before `cutoff_us`.
    pub fn count_before(&self, cutoff_us: i64) -> Result<u64> {
        each!(self, s => s.count_before(cutoff_us))
    }

    /// Applies the retention limits (oldest first): records received longer than `max_age`
    /// ago, records beyond the newest `max_records`, and the oldest records while the stored
    /// data exceeds `max_bytes` (see [`shrink_to`]). Returns how many were deleted (also
    /// counted as `retention_deleted`). One policy for both backends, on their primitives.
    pub fn apply_retention(&mut self, r: &Retention, now_us: i64) -> Result<u64> {
        let mut deleted = 0;
        if let Some(age) = r.max_age {
            let cutoff = i64::try_from(age.as_micros())
                .ok()
                .and_then(|a| now_us.checked_sub(a));
            if let Some(cutoff) = cutoff {
                deleted += self.prune_before(cutoff)?;
            }
        }
        if let Some(n) = r.max_records {
            deleted += self.prune_keep(n)?;
        }
        if let Some(max) = r.max_bytes {
            deleted += shrink_to(self, max)?;
        }
        if deleted > 0 {
            each_mut!(self, s => s.count_retention_deleted(deleted))?;
        }
        Ok(deleted)
    }

    /// Bytes the stored data takes, as `max_bytes` counts them (SQLite: the database's
    /// pages in use; PostgreSQL: the records' raw bytes and text columns plus 144 bytes
    /// each, a running total kept by triggers).
    pub fn used_bytes(&self) -> Result<u64> {
        each!(self, s => s.used_bytes())
    }

    /// Deletes records received before `cutoff_us`. Returns how many were deleted.
    pub fn prune_before(&mut self, cutoff_us: i64) -> Result<u64> {
        each_mut!(self, s => s.prune_before(cutoff_us))
    }

    /// Keeps only the newest `keep` records. Returns how many were deleted.
    pub fn prune_keep(&mut self, keep: u64) -> Result<u64> {
        each_mut!(self, s => s.prune_keep(keep))
    }

    /// p50 / p99 / max of every step's time per host (only `host` if given), hosts sorted,
    /// steps in step order.
    pub fn step_stats(&self, host: Option<&str>) -> Result<Vec<StepStat>> {
        let rows = each!(self, s => s.step_rows())?;
        Ok(steps::aggregate(rows, host))
    }
}

/// What retention by size needs of a store (a trait so that its policy is tested on its own).
trait Shrink {
    fn used_bytes(&self) -> Result<u64>;
    fn count(&self) -> Result<u64>;
    fn delete_oldest(&mut self, k: u64) -> Result<u64>;
}

impl Shrink for Store {
    fn used_bytes(&self) -> Result<u64> {
        Store::used_bytes(self)
    }
    fn count(&self) -> Result<u64> {
        Store::count(self)
    }
    fn delete_oldest(&mut self, k: u64) -> Result<u64> {
        each_mut!(self, s => s.delete_oldest(k))
    }
}

/// Deletes the oldest records while `used_bytes` exceeds `max`, in at most 32 rounds, each
/// deleting the excess at the current bytes per record (`used / count`, rounded up to
/// whole records). A round must be seen to free bytes: when `used_bytes` did not go down
/// (a measure that a delete does not move, or that moves less than a page), it stops
/// rather than deleting again for the same excess; the next retention run goes on from
/// what is measured then. Returns how many records were deleted.
fn shrink_to(s: &mut impl Shrink, max: u64) -> Result<u64> {
    let mut deleted = 0;
    let mut used = s.used_bytes()?;
    for _ in 0..32 {
        let n = s.count()?;
        if used <= max || n == 0 {
            break;
        }
        let per = (used / n).max(1);
        let k = (used - max).div_ceil(per).clamp(1, n);
        let gone = s.delete_oldest(k)?;
        deleted += gone;
        let now = s.used_bytes()?;
        if gone == 0 || now >= used {
            break;
        }
        used = now;
    }
    Ok(deleted)
}

/// The name a store error should give the database: its path, or the URL without a password.
pub fn display_name(path: &Path) -> String {
    match pg_url(path) {
        Some(u) => pg::redact(u),
        None => path.display().to_string(),
    }
}
