//! Embedded SQLite storage for crash records, heartbeats and collector counters.
//!
//! The schema is documented in `docs/collector.md`; every change is a new entry in
//! [`MIGRATIONS`], applied in order and recorded in `PRAGMA user_version`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::util::{hex, parse_hex16};

/// Errors from the store. Every variant says what was wrong and, where it helps, what to do.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
        "another `host-collector serve` is writing {0} (it holds {0}.lock); stop it or use \
         another --db"
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

impl Sync {
    /// The value of SQLite's `synchronous` pragma for this level.
    fn pragma(self) -> &'static str {
        match self {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        }
    }
}

/// The dedupe key of a record: `(boot id, sequence, record CRC)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub boot_id: [u8; 16],
    pub seq: u32,
    pub record_crc: u32,
}

/// A source location in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationView {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

/// The outcome of one panic-path step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub step: String,
    pub outcome: String,
    pub elapsed_us: u32,
}

/// The decoded fields of a crash record, in the form they are stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RecordFields {
    pub build_id: String,
    pub arch: String,
    pub boot_mode: String,
    pub hypervisor: serde_json::Value,
    pub vmbus_version: Option<String>,
    pub uptime_us: u64,
    pub kind: String,
    pub kind_detail: Option<serde_json::Value>,
    pub message: String,
    pub location: Option<LocationView>,
    pub registers: serde_json::Value,
    /// Return addresses, `0x`-prefixed hex.
    pub backtrace: Vec<String>,
    pub log_tail: String,
    pub steps: Vec<StepView>,
}

/// The text columns of a record to store, rendered into one buffer (one allocation per
/// record on the hot path). JSON columns hold the JSON form of the [`RecordFields`] member of
/// the same name.
#[derive(Debug, Clone, Default)]
pub struct RowText {
    text: String,
    ends: [u32; Col::COUNT],
    present: u32,
}

/// The text columns of [`RowText`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Col {
    Source,
    BuildId,
    Arch,
    BootMode,
    Hypervisor,
    VmbusVersion,
    Kind,
    KindDetail,
    Message,
    File,
    Registers,
    Backtrace,
    LogTail,
    Steps,
}

impl Col {
    const COUNT: usize = 14;
}

impl RowText {
    pub fn with_capacity(n: usize) -> RowText {
        RowText {
            text: String::with_capacity(n),
            ..RowText::default()
        }
    }

    /// Sets column `c` (columns must be set in declaration order; skipped ones are NULL).
    pub fn set(&mut self, c: Col, f: impl FnOnce(&mut String)) {
        debug_assert!(self.present >> (c as usize) == 0, "columns set in order");
        let start = self.text.len() as u32;
        let from = self.last_set();
        for e in &mut self.ends[from..c as usize] {
            *e = start;
        }
        f(&mut self.text);
        self.ends[c as usize] = self.text.len() as u32;
        self.present |= 1 << (c as usize);
    }

    fn last_set(&self) -> usize {
        (u32::BITS - self.present.leading_zeros()) as usize
    }

    /// Column `c`, or `None` if it was not set.
    pub fn get(&self, c: Col) -> Option<&str> {
        let i = c as usize;
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.text[start..self.ends[i] as usize])
    }

    fn req(&self, c: Col) -> &str {
        self.get(c).unwrap_or("")
    }

    /// Renders `f` (used by tests and tools; the collector renders straight from the decoded
    /// record in `convert`).
    pub fn from_fields(source: &str, f: &RecordFields) -> RowText {
        let json = |v: &dyn erased::Ser| v.to_json();
        let mut t = RowText::with_capacity(2048);
        t.set(Col::Source, |s| s.push_str(source));
        t.set(Col::BuildId, |s| s.push_str(&f.build_id));
        t.set(Col::Arch, |s| s.push_str(&f.arch));
        t.set(Col::BootMode, |s| s.push_str(&f.boot_mode));
        t.set(Col::Hypervisor, |s| s.push_str(&json(&f.hypervisor)));
        if let Some(v) = &f.vmbus_version {
            t.set(Col::VmbusVersion, |s| s.push_str(v));
        }
        t.set(Col::Kind, |s| s.push_str(&f.kind));
        if let Some(d) = &f.kind_detail {
            t.set(Col::KindDetail, |s| s.push_str(&json(d)));
        }
        t.set(Col::Message, |s| s.push_str(&f.message));
        if let Some(l) = &f.location {
            t.set(Col::File, |s| s.push_str(&l.file));
        }
        t.set(Col::Registers, |s| s.push_str(&json(&f.registers)));
        t.set(Col::Backtrace, |s| s.push_str(&json(&f.backtrace)));
        t.set(Col::LogTail, |s| s.push_str(&f.log_tail));
        t.set(Col::Steps, |s| s.push_str(&json(&f.steps)));
        t
    }
}

mod erased {
    pub trait Ser {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// A record ready to be stored.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub key: RecordKey,
    pub received_at_us: i64,
    pub schema_major: u16,
    pub schema_minor: u16,
    pub uptime_us: u64,
    /// Source line and column (stored only when the `File` column is set).
    pub line_col: (u32, u32),
    pub text: RowText,
    /// The encoded (postcard) record exactly as received.
    pub raw: Vec<u8>,
}

/// A record that was complete and CRC-correct but could not be accepted.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub key: RecordKey,
    pub source: String,
    pub received_at_us: i64,
    pub schema_major: u16,
    pub schema_minor: u16,
    pub reason: String,
    pub raw: Vec<u8>,
}

/// A heartbeat as seen by the collector.
#[derive(Debug, Clone)]
pub struct HeartbeatSeen {
    pub boot_id: [u8; 16],
    pub source: String,
    pub arch: u8,
    pub seen_at_us: i64,
    pub uptime_ms: u64,
    pub seq: u32,
}

/// What happened to a record in [`Store::commit_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Stored,
    Duplicate,
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordSummary {
    pub id: i64,
    pub received_at_us: i64,
    pub received_at: String,
    pub boot_id: String,
    pub seq: u32,
    pub source: String,
    pub arch: String,
    pub kind: String,
    pub message: String,
    pub location: Option<String>,
}

/// A whole record as shown by `show` and `export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordView {
    pub id: i64,
    pub boot_id: String,
    pub seq: u32,
    pub record_crc: String,
    pub received_at_us: i64,
    pub received_at: String,
    pub source: String,
    pub schema: String,
    #[serde(flatten)]
    pub fields: RecordFields,
    pub raw_len: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw_hex: Option<String>,
}

/// A canary's last heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryView {
    pub boot_id: String,
    pub source: String,
    pub arch: String,
    pub first_seen: String,
    pub last_seen: String,
    pub last_seen_us: i64,
    pub uptime_ms: u64,
    pub heartbeat_seq: u32,
    pub heartbeats: u64,
}

/// A stored rejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectionView {
    pub id: i64,
    pub boot_id: String,
    pub seq: u32,
    pub received_at: String,
    pub source: String,
    pub schema: String,
    pub reason: String,
}

/// Which records `list`, `export` and `tail` look at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub after_id: Option<i64>,
    pub limit: Option<u64>,
    /// Newest first.
    pub reverse: bool,
}

/// How to name one record on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRef {
    Id(i64),
    BootSeq([u8; 16], u32),
}

impl std::str::FromStr for RecordRef {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        if let Ok(id) = s.parse::<i64>() {
            return Ok(RecordRef::Id(id));
        }
        let (boot, seq) = s
            .split_once(':')
            .ok_or_else(|| StoreError::BadRef(s.into()))?;
        let boot = parse_hex16(boot).ok_or_else(|| StoreError::BadRef(s.into()))?;
        let seq = seq.parse().map_err(|_| StoreError::BadRef(s.into()))?;
        Ok(RecordRef::BootSeq(boot, seq))
    }
}

/// The counters kept in the `counters` table. Names are part of the `stats --json` output.
pub const COUNTER_NAMES: &[&str] = &[
    "datagrams",
    "records_stored",
    "duplicates",
    "rejected",
    "bad_crc",
    "bad_frames",
    "auth_failures",
    "evictions",
    "expired",
    "heartbeats",
    "queue_full_drops",
    "acks_sent",
    "truncated",
    "oversized",
    "bad_magic",
    "bad_version",
    "bad_header",
    "unknown_kind",
    "unexpected_kind",
    "reassembly_errors",
];

/// Collector statistics, from the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Records currently stored.
    pub records: u64,
    /// Canaries that sent a heartbeat.
    pub canaries: u64,
    pub schema_version: u32,
    /// Every persisted counter, by name (see `COUNTER_NAMES`).
    #[serde(flatten)]
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// The collector's database.
pub struct Store {
    conn: Connection,
    /// Every stored record key, loaded on the first commit: the dedupe set.
    keys: Option<HashSet<RecordKey>>,
    /// Held by the one process that writes records (`serve`).
    writer_lock: Option<std::fs::File>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, sets WAL mode and applies migrations.
    pub fn open(path: &Path, sync: Sync) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // A stored record is about 2.5 KiB: with the default 4 KiB pages each one would take a
        // page of its own. Only takes effect on a new (empty) database.
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        // Bigger WAL between checkpoints: the WAL is rewritten from its start after each
        // checkpoint, and rewriting pages the kernel is still writing back stalls the writer.
        conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
        conn.pragma_update(None, "cache_size", -65536)?;
        let mut store = Store {
            conn,
            keys: None,
            writer_lock: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Sets after how many WAL pages a commit on this connection checkpoints by itself (0:
    /// never; `serve` checkpoints from a [`Checkpointer`] thread instead).
    pub fn set_autocheckpoint(&self, pages: u32) -> Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", pages)?;
        Ok(())
    }

    /// Makes this the only process that writes records to the database at `path` (an
    /// exclusive lock on `PATH.lock`, released when the process ends, even by SIGKILL). The
    /// dedupe set of [`Store::commit_batch`] relies on it.
    pub fn lock_writer(&mut self, path: &Path) -> Result<()> {
        let mut lp = path.as_os_str().to_owned();
        lp.push(".lock");
        let lp = PathBuf::from(lp);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(|source| StoreError::Lock {
                path: lp.clone(),
                source,
            })?;
        match f.try_lock() {
            Ok(()) => {
                self.writer_lock = Some(f);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(path.into())),
            Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock { path: lp, source }),
        }
    }

    /// Loads the key of every stored record into memory (done by the first
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
        let mut st = self
            .conn
            .prepare("SELECT boot_id, seq, record_crc FROM record_keys")?;
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
        let Store { conn, keys, .. } = self;
        let known = keys.as_mut().expect("loaded above");
        let mut new_keys: Vec<RecordKey> = Vec::with_capacity(records.len());
        let res = Self::write_batch(
            conn,
            known,
            &mut new_keys,
            records,
            rejections,
            heartbeats,
            counters,
        );
        if res.is_err() {
            // Not committed: forget the keys this batch claimed.
            for k in &new_keys {
                known.remove(k);
            }
        }
        res
    }

    fn write_batch(
        conn: &mut Connection,
        known: &mut HashSet<RecordKey>,
        new_keys: &mut Vec<RecordKey>,
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
                    registers, backtrace, log_tail, steps, raw)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
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
                ])?;
                debug_assert_eq!(n, 1);
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
                let mut hb = tx.prepare_cached(
                    "INSERT INTO canaries (boot_id, source, arch, first_seen_us, last_seen_us,
                        uptime_ms, heartbeat_seq, heartbeats)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, 1)
                     ON CONFLICT (boot_id) DO UPDATE SET source = excluded.source,
                        arch = excluded.arch, last_seen_us = excluded.last_seen_us,
                        uptime_ms = excluded.uptime_ms, heartbeat_seq = excluded.heartbeat_seq,
                        heartbeats = heartbeats + 1",
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

    fn where_clause(filter: &Filter) -> (String, Vec<i64>) {
        let mut conds = Vec::new();
        let mut args = Vec::new();
        if let Some(s) = filter.since_us {
            args.push(s);
            conds.push(format!("received_at_us >= ?{}", args.len()));
        }
        if let Some(u) = filter.until_us {
            args.push(u);
            conds.push(format!("received_at_us <= ?{}", args.len()));
        }
        if let Some(a) = filter.after_id {
            args.push(a);
            conds.push(format!("id > ?{}", args.len()));
        }
        let mut sql = String::new();
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        (sql, args)
    }

    /// Record summaries, oldest first (or newest first with `reverse`).
    pub fn list(&self, filter: &Filter) -> Result<Vec<RecordSummary>> {
        let (wh, args) = Self::where_clause(filter);
        let order = if filter.reverse { "DESC" } else { "ASC" };
        let mut sql = format!(
            "SELECT id, received_at_us, boot_id, seq, source, arch, kind, message, file, line, col
             FROM records{wh} ORDER BY id {order}"
        );
        if let Some(l) = filter.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
            let boot: Vec<u8> = r.get(2)?;
            let file: Option<String> = r.get(8)?;
            let line: Option<u32> = r.get(9)?;
            let col: Option<u32> = r.get(10)?;
            let at: i64 = r.get(1)?;
            Ok(RecordSummary {
                id: r.get(0)?,
                received_at_us: at,
                received_at: crate::util::format_time_us(at),
                boot_id: hex(&boot),
                seq: r.get(3)?,
                source: r.get(4)?,
                arch: r.get(5)?,
                kind: r.get(6)?,
                message: r.get(7)?,
                location: file.map(|f| format!("{f}:{}:{}", line.unwrap_or(0), col.unwrap_or(0))),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The id of the newest record, if any.
    pub fn max_id(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT max(id) FROM records", [], |r| r.get(0))?)
    }

    /// Full records matching `filter` (for `export`).
    pub fn records(&self, filter: &Filter, with_raw: bool) -> Result<Vec<RecordView>> {
        let (wh, args) = Self::where_clause(filter);
        let order = if filter.reverse { "DESC" } else { "ASC" };
        let mut sql = format!("SELECT {FULL_COLUMNS} FROM records{wh} ORDER BY id {order}");
        if let Some(l) = filter.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let mut st = self.conn.prepare(&sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(row_to_view(r, with_raw)?);
        }
        Ok(out)
    }

    /// One full record.
    pub fn get(&self, r: &RecordRef, with_raw: bool) -> Result<Option<RecordView>> {
        let mut st;
        let mut rows = match r {
            RecordRef::Id(id) => {
                st = self
                    .conn
                    .prepare(&format!("SELECT {FULL_COLUMNS} FROM records WHERE id = ?1"))?;
                st.query(params![id])?
            }
            RecordRef::BootSeq(boot, seq) => {
                st = self.conn.prepare(&format!(
                    "SELECT {FULL_COLUMNS} FROM records WHERE id = (SELECT max(id)
                     FROM record_keys WHERE boot_id = ?1 AND seq = ?2)"
                ))?;
                st.query(params![&boot[..], seq])?
            }
        };
        match rows.next()? {
            Some(row) => Ok(Some(row_to_view(row, with_raw)?)),
            None => Ok(None),
        }
    }

    /// Collector statistics.
    pub fn stats(&self) -> Result<Stats> {
        let records: i64 = self
            .conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
        let canaries: i64 = self
            .conn
            .query_row("SELECT count(*) FROM canaries", [], |r| r.get(0))?;
        let mut counters: std::collections::BTreeMap<String, u64> =
            COUNTER_NAMES.iter().map(|n| (n.to_string(), 0)).collect();
        let mut st = self.conn.prepare("SELECT name, value FROM counters")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (n, v) = row?;
            counters.insert(n, v as u64);
        }
        Ok(Stats {
            records: records as u64,
            canaries: canaries as u64,
            schema_version: self.schema_version()?,
            counters,
        })
    }

    /// Canaries that sent heartbeats, most recently seen first.
    pub fn canaries(&self) -> Result<Vec<CanaryView>> {
        let mut st = self.conn.prepare(
            "SELECT boot_id, source, arch, first_seen_us, last_seen_us, uptime_ms, heartbeat_seq,
                heartbeats FROM canaries ORDER BY last_seen_us DESC",
        )?;
        let rows = st.query_map([], |r| {
            let boot: Vec<u8> = r.get(0)?;
            let arch: u8 = r.get(2)?;
            let first: i64 = r.get(3)?;
            let last: i64 = r.get(4)?;
            Ok(CanaryView {
                boot_id: hex(&boot),
                source: r.get(1)?,
                arch: crate::convert::arch_code_name(arch),
                first_seen: crate::util::format_time_us(first),
                last_seen: crate::util::format_time_us(last),
                last_seen_us: last,
                uptime_ms: r.get::<_, i64>(5)? as u64,
                heartbeat_seq: r.get(6)?,
                heartbeats: r.get::<_, i64>(7)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Rejected records, newest first.
    pub fn rejections(&self) -> Result<Vec<RejectionView>> {
        let mut st = self.conn.prepare(
            "SELECT id, boot_id, seq, received_at_us, source, schema_major, schema_minor, reason
             FROM rejections ORDER BY id DESC",
        )?;
        let rows = st.query_map([], |r| {
            let boot: Vec<u8> = r.get(1)?;
            Ok(RejectionView {
                id: r.get(0)?,
                boot_id: hex(&boot),
                seq: r.get(2)?,
                received_at: crate::util::format_time_us(r.get(3)?),
                source: r.get(4)?,
                schema: format!("{}.{}", r.get::<_, u16>(5)?, r.get::<_, u16>(6)?),
                reason: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Deletes records received before `cutoff_us`. Returns how many were deleted.
    pub fn prune_before(&mut self, cutoff_us: i64) -> Result<u64> {
        let n = self.conn.execute(
            "DELETE FROM records WHERE received_at_us < ?1",
            params![cutoff_us],
        )?;
        Ok(n as u64)
    }

    /// Keeps only the newest `keep` records. Returns how many were deleted.
    pub fn prune_keep(&mut self, keep: u64) -> Result<u64> {
        let n = self.conn.execute(
            "DELETE FROM records WHERE id NOT IN
                (SELECT id FROM records ORDER BY id DESC LIMIT ?1)",
            params![keep as i64],
        )?;
        Ok(n as u64)
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

/// A second connection to a database that only copies the WAL back into the database file
/// (`PRAGMA wal_checkpoint`), so the writer does not have to.
pub struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    /// Opens `path` (already created by [`Store::open`]) with the same `synchronous` level: a
    /// checkpoint syncs the WAL before and the database after copying (`normal` and `full`).
    pub fn open(path: &Path, sync: Sync) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Checkpointer { conn })
    }

    /// Copies what it can without waiting for the writer (`PASSIVE`). Returns the WAL's size
    /// and how much of it is now in the database file, in pages.
    pub fn passive(&self) -> Result<(i64, i64)> {
        self.run("PASSIVE")
    }

    /// Waits for the writer's current transaction, copies the whole WAL and makes the next
    /// commit start the WAL from its beginning again (`RESTART`): bounds the WAL's size.
    pub fn restart(&self) -> Result<(i64, i64)> {
        self.run("RESTART")
    }

    fn run(&self, mode: &str) -> Result<(i64, i64)> {
        Ok(self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?)
    }
}

const FULL_COLUMNS: &str = "id, boot_id, seq, record_crc, received_at_us, source, schema_major,
    schema_minor, build_id, arch, boot_mode, hypervisor, vmbus_version, uptime_us, kind,
    kind_detail, message, file, line, col, registers, backtrace, log_tail, steps, raw";

fn json_col<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    idx: usize,
    column: &'static str,
    id: i64,
) -> Result<T> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|source| StoreError::BadJson { column, id, source })
}

fn row_to_view(r: &rusqlite::Row<'_>, with_raw: bool) -> Result<RecordView> {
    let id: i64 = r.get(0)?;
    let boot: Vec<u8> = r.get(1)?;
    let at: i64 = r.get(4)?;
    let raw: Vec<u8> = r.get(24)?;
    let file: Option<String> = r.get(17)?;
    let kind_detail: Option<String> = r.get(15)?;
    let kind_detail = match kind_detail {
        Some(s) => Some(
            serde_json::from_str(&s).map_err(|source| StoreError::BadJson {
                column: "kind_detail",
                id,
                source,
            })?,
        ),
        None => None,
    };
    Ok(RecordView {
        id,
        boot_id: hex(&boot),
        seq: r.get(2)?,
        record_crc: format!("{:08x}", r.get::<_, u32>(3)?),
        received_at_us: at,
        received_at: crate::util::format_time_us(at),
        source: r.get(5)?,
        schema: format!("{}.{}", r.get::<_, u16>(6)?, r.get::<_, u16>(7)?),
        fields: RecordFields {
            build_id: r.get(8)?,
            arch: r.get(9)?,
            boot_mode: r.get(10)?,
            hypervisor: json_col(r, 11, "hypervisor", id)?,
            vmbus_version: r.get(12)?,
            uptime_us: r.get::<_, i64>(13)? as u64,
            kind: r.get(14)?,
            kind_detail,
            message: r.get(16)?,
            location: file.map(|file| LocationView {
                file,
                line: r.get(18).unwrap_or(0),
                column: r.get(19).unwrap_or(0),
            }),
            registers: json_col(r, 20, "registers", id)?,
            backtrace: json_col(r, 21, "backtrace", id)?,
            log_tail: r.get(22)?,
            steps: json_col(r, 23, "steps", id)?,
        },
        raw_len: raw.len(),
        raw_hex: with_raw.then(|| hex(&raw)),
    })
}

#[cfg(test)]
mod tests {
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
}
