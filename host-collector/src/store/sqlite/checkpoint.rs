//! The checkpoint connection `serve` runs beside its writer.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::super::{Result, Sync};

/// A second connection to a database that only copies the WAL back into the database file
/// (`PRAGMA wal_checkpoint`), so the writer does not have to.
pub struct Checkpointer {
    /// `None` for a PostgreSQL store: nothing to checkpoint, every call does nothing.
    conn: Option<Connection>,
}

impl Checkpointer {
    /// Opens `path` (already created by [`SqliteStore::open`]) with the same `synchronous` level: a
    /// checkpoint syncs the WAL before and the database after copying (`normal` and `full`).
    pub fn open(path: &Path, sync: Sync) -> Result<Checkpointer> {
        if super::super::pg_url(path).is_some() {
            return Ok(Checkpointer { conn: None });
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Checkpointer { conn: Some(conn) })
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

    /// [`Checkpointer::restart`], then empties the WAL file (`TRUNCATE`).
    pub fn truncate(&self) -> Result<(i64, i64)> {
        self.run("TRUNCATE")
    }

    /// The database's page size in bytes.
    pub fn page_size(&self) -> Result<u64> {
        let Some(conn) = &self.conn else {
            return Ok(16384);
        };
        Ok(conn.pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))? as u64)
    }

    /// Caps the WAL file left after the WAL is reset (`PRAGMA journal_size_limit`).
    pub fn set_journal_size_limit(&self, bytes: u64) -> Result<()> {
        let Some(conn) = &self.conn else {
            return Ok(());
        };
        conn.pragma_update(
            None,
            "journal_size_limit",
            bytes.min(i64::MAX as u64) as i64,
        )?;
        Ok(())
    }

    fn run(&self, mode: &str) -> Result<(i64, i64)> {
        let Some(conn) = &self.conn else {
            return Ok((0, 0));
        };
        Ok(
            conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?,
        )
    }
}
