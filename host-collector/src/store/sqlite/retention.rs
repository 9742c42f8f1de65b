//! Deleting records: `prune` and the retention limits `serve` applies.

use rusqlite::params;

use super::super::{Result, Retention};
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

    /// Applies the retention limits (oldest first): records received longer than `max_age`
    /// ago, records beyond the newest `max_records`, and the oldest records while the pages
    /// in use exceed `max_bytes`. Returns how many were deleted (also counted as
    /// `retention_deleted`).
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
            for _ in 0..32 {
                let used = self.used_bytes()?;
                let n = self.count()?;
                if used <= max || n == 0 {
                    break;
                }
                let per = (used / n).max(1);
                let k = (used - max).div_ceil(per).clamp(1, n);
                deleted += self.conn.execute(
                    "DELETE FROM records WHERE id IN
                        (SELECT id FROM records ORDER BY id ASC LIMIT ?1)",
                    params![k as i64],
                )? as u64;
            }
        }
        if deleted > 0 {
            self.conn.execute(
                "INSERT INTO counters (name, value) VALUES ('retention_deleted', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                params![deleted as i64],
            )?;
        }
        Ok(deleted)
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
