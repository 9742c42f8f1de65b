//! The `liveness` table (schema version 5): one row per canary address, written by `serve`
//! when a canary's state, boot or heartbeat interval changes (see [`crate::liveness`]).

use rusqlite::params;

use super::super::*;
use super::SqliteStore;
use crate::liveness::{Canary, State};

/// Migration 5: one row per canary, told apart by source address (see `crate::liveness`):
/// its current boot, heartbeat interval and state. Written by `serve` when a state, boot or
/// interval changes (the per-heartbeat `last_seen_us` is in `canaries`). Never edited once
/// released.
pub(super) const MIGRATION: &str = "CREATE TABLE liveness (
        address         TEXT    PRIMARY KEY,
        boot_id         BLOB    NOT NULL,
        arch            INTEGER NOT NULL,
        first_seen_us   INTEGER NOT NULL,
        last_seen_us    INTEGER NOT NULL,
        heartbeat_seq   INTEGER,
        uptime_ms       INTEGER NOT NULL,
        interval_ms     INTEGER NOT NULL,
        silent_after_ms INTEGER NOT NULL,
        state           TEXT    NOT NULL,
        state_since_us  INTEGER NOT NULL,
        crashed_boot    BLOB,
        last_record_id  INTEGER,
        crashes         INTEGER NOT NULL
    ) WITHOUT ROWID;";

impl SqliteStore {
    /// Every canary's liveness row; `last_seen_us`, `heartbeat_seq` and `uptime_ms` are the
    /// newest of the row and the boot's heartbeats in `canaries` (which `serve` updates on
    /// every heartbeat, while the row is written only on changes).
    pub fn liveness(&self) -> Result<Vec<Canary>> {
        let mut st = self.conn.prepare(
            "SELECT l.address, l.boot_id, l.arch, l.first_seen_us, l.last_seen_us,
                l.heartbeat_seq, l.uptime_ms, l.interval_ms, l.silent_after_ms, l.state,
                l.state_since_us, l.crashed_boot, l.last_record_id, l.crashes,
                c.last_seen_us, c.heartbeat_seq, c.uptime_ms
             FROM liveness l LEFT JOIN canaries c ON c.boot_id = l.boot_id
             ORDER BY l.address",
        )?;
        let rows = st.query_map([], |r| {
            let boot: Vec<u8> = r.get(1)?;
            let crashed: Option<Vec<u8>> = r.get(11)?;
            let state: String = r.get(9)?;
            let mut c = Canary {
                address: r.get(0)?,
                boot_id: boot.as_slice().try_into().unwrap_or([0; 16]),
                arch: r.get(2)?,
                first_seen_us: r.get(3)?,
                last_seen_us: r.get(4)?,
                heartbeat_seq: r.get(5)?,
                uptime_ms: r.get::<_, i64>(6)?.max(0) as u64,
                interval_ms: r.get::<_, i64>(7)?.max(0) as u64,
                silent_after_ms: r.get::<_, i64>(8)?.max(0) as u64,
                // An unknown state (a newer collector's) reads as alive: the silence check
                // still applies.
                state: State::parse(&state).unwrap_or(State::Alive),
                state_since_us: r.get(10)?,
                crashed_boot: crashed.and_then(|b| b.as_slice().try_into().ok()),
                last_record_id: r.get(12)?,
                crashes: r.get::<_, i64>(13)?.max(0) as u64,
            };
            let hb_seen: Option<i64> = r.get(14)?;
            if let Some(seen) = hb_seen.filter(|s| *s > c.last_seen_us) {
                c.last_seen_us = seen;
                c.heartbeat_seq = r.get(15)?;
                c.uptime_ms = r.get::<_, Option<i64>>(16)?.unwrap_or(0).max(0) as u64;
            }
            Ok(c)
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Writes (inserts or replaces) the rows of these canaries in one transaction.
    pub fn save_liveness(&mut self, rows: &[Canary]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO liveness (address, boot_id, arch, first_seen_us,
                    last_seen_us, heartbeat_seq, uptime_ms, interval_ms, silent_after_ms, state,
                    state_since_us, crashed_boot, last_record_id, crashes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for c in rows {
                st.execute(params![
                    c.address,
                    &c.boot_id[..],
                    c.arch,
                    c.first_seen_us,
                    c.last_seen_us,
                    c.heartbeat_seq,
                    c.uptime_ms.min(i64::MAX as u64) as i64,
                    c.interval_ms.min(i64::MAX as u64) as i64,
                    c.silent_after_ms.min(i64::MAX as u64) as i64,
                    c.state.as_str(),
                    c.state_since_us,
                    c.crashed_boot.as_ref().map(|b| &b[..]),
                    c.last_record_id,
                    c.crashes.min(i64::MAX as u64) as i64,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
