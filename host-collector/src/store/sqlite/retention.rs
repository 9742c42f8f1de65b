//! Deleting records: `prune` and the primitives of the retention limits `serve` applies
//! (the policy itself is `Store::apply_retention`).

use rusqlite::params;

use super::super::Result;
use super::SqliteStore;

impl SqliteStore {
    /// Records stored.
    pub fn count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Records received before `cutoff_us`.
    pub fn count_before(&self, cutoff_us: i64) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM records WHERE received_at_us < ?1",
            params![cutoff_us],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Deletes the oldest `k` records. Returns how many were deleted.
    pub fn delete_oldest(&mut self, k: u64) -> Result<u64> {
        let n = self.conn.execute(
            "DELETE FROM records WHERE id IN
                (SELECT id FROM records ORDER BY id ASC LIMIT ?1)",
            params![k.min(i64::MAX as u64) as i64],
        )?;
        Ok(n as u64)
    }

    /// Adds `n` to the `retention_deleted` counter.
    pub fn count_retention_deleted(&mut self, n: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO counters (name, value) VALUES ('retention_deleted', ?1)
             ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            params![n.min(i64::MAX as u64) as i64],
        )?;
        Ok(())
    }

    /// Bytes of the database's pages in use (not free), committed state.
    pub fn used_bytes(&self) -> Result<u64> {
        let q =
            |p: &str| -> Result<i64> { Ok(self.conn.pragma_query_value(None, p, |r| r.get(0))?) };
        let pages = q("page_count")? - q("freelist_count")?;
        Ok((pages.max(0) as u64) * q("page_size")? as u64)
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
            params![keep.min(i64::MAX as u64) as i64],
        )?;
        Ok(n as u64)
    }
}
