//! The SQLite batch writer: one transaction per batch (group commit), dedupe against the
//! keys loaded into memory (the one writer holds the file lock), follow-ups.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

use super::super::*;
use super::SqliteStore;

impl SqliteStore {
    /// Loads the key of every stored (and every pruned) record into memory (done by the first
    /// [`SqliteStore::commit_batch`] otherwise). About 40 bytes per stored record.
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
        let SqliteStore {
            conn,
            keys,
            last_ids,
            lean,
            ..
        } = self;
        let lean = *lean;
        last_ids.clear();
        let known = keys.as_mut().expect("loaded above");
        let mut new_keys: Vec<RecordKey> = Vec::with_capacity(records.len());
        let res = Self::write_batch(
            conn,
            lean,
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
        lean: bool,
        known: &mut HashSet<RecordKey>,
        new_keys: &mut Vec<RecordKey>,
        ids: &mut Vec<i64>,
        records: &[NewRecord],
        rejections: &[Rejection],
        heartbeats: &[HeartbeatSeen],
        counters: &[(&str, u64)],
    ) -> Result<Vec<InsertOutcome>> {
        // IMMEDIATE: the write lock from the start, so the ids read below stay the largest
        // (a `prune` in another process waits, instead of failing this commit later).
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(records.len());
        {
            // Dedupe first: the records of this batch to store, in order.
            let mut fresh: Vec<&NewRecord> = Vec::with_capacity(records.len());
            for r in records {
                if known.insert(r.key) {
                    new_keys.push(r.key);
                    fresh.push(r);
                    out.push(InsertOutcome::Stored);
                } else {
                    out.push(InsertOutcome::Duplicate);
                }
            }
            if !fresh.is_empty() {
                // Ids as SQLite would give them one by one (one above the largest), read in
                // this write transaction: nothing else can insert before it commits.
                let first_id: i64 = tx
                    .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM records")?
                    .query_row([], |r| r.get(0))?;
                super::insert::insert_records(&tx, &fresh, first_id, lean)?;
                ids.extend((0..fresh.len() as i64).map(|k| first_id + k));
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

    pub fn put_followup(
        &mut self,
        key: &RecordKey,
        raw: &[u8],
        received_unix_ms: i64,
    ) -> Result<FollowupOutcome> {
        // The dedupe set holds every key ever stored here (live or pruned; this is the one
        // writer): a key not in it has no record, without a look at the database.
        if self.keys.as_ref().is_some_and(|k| !k.contains(key)) {
            return Ok(FollowupOutcome::NoSuchRecord);
        }
        let tx = self.conn.transaction()?;
        // `record_keys` has no index on the key (one would cost every insert a random B-tree
        // write): scanned from the newest row, where a follow-up's record is (its follow-ups
        // come within seconds of it), this stops at once instead of reading every key (12 ms
        // at 200,000 records against 0.06). The record's row, found by its id, gives its
        // source (for the `crash_path` event).
        let record = tx
            .query_row(
                "SELECT k.id, r.source FROM record_keys k JOIN records r ON r.id = k.id
                 WHERE k.boot_id = ?1 AND k.seq = ?2 AND k.record_crc = ?3
                 ORDER BY k.id DESC LIMIT 1",
                params![&key.boot_id[..], key.seq, key.record_crc],
                |r| {
                    Ok(FollowedRecord {
                        id: r.get(0)?,
                        source: r.get(1)?,
                    })
                },
            )
            .optional()?;
        let Some(record) = record else {
            return Ok(FollowupOutcome::NoSuchRecord);
        };
        // The one reporting more steps stays (the appliance sends one when the record is
        // acked and a more complete one from the end step).
        let held: Option<Vec<u8>> = tx
            .query_row(
                "SELECT raw FROM followups WHERE boot_id = ?1 AND seq = ?2 AND record_crc = ?3",
                params![&key.boot_id[..], key.seq, key.record_crc],
                |r| r.get(0),
            )
            .optional()?;
        let outcome = FollowupOutcome::of(&record, held.as_deref(), raw);
        let n = if outcome == FollowupOutcome::Duplicate {
            0
        } else {
            tx.execute(
                "INSERT OR REPLACE INTO followups (boot_id, seq, record_crc, received_at_ms, raw)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    &key.boot_id[..],
                    key.seq,
                    key.record_crc,
                    received_unix_ms,
                    raw
                ],
            )?
        };
        if n == 1 {
            // The steps after the seal: their times into the record's step columns (for
            // `stats --steps`), where neither the record nor a replaced follow-up had one.
            let t = crate::followup_view::step_times(raw);
            tx.execute(
                "UPDATE records SET step_freeze_us = COALESCE(step_freeze_us, ?2),
                    step_screen_flush_us = COALESCE(step_screen_flush_us, ?3),
                    step_vmbus_unload_us = COALESCE(step_vmbus_unload_us, ?4),
                    step_arch_cleanup_us = COALESCE(step_arch_cleanup_us, ?5),
                    step_ship_us = COALESCE(step_ship_us, ?6),
                    step_crash_registers_us = COALESCE(step_crash_registers_us, ?7),
                    step_end_us = COALESCE(step_end_us, ?8)
                 WHERE id = ?1",
                params![record.id, t[0], t[1], t[2], t[3], t[4], t[5], t[6]],
            )?;
        }
        tx.commit()?;
        Ok(outcome)
    }

    pub fn followup(&self, key: &RecordKey) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT raw FROM followups WHERE boot_id = ?1 AND seq = ?2 AND record_crc = ?3",
                params![&key.boot_id[..], key.seq, key.record_crc],
                |r| r.get(0),
            )
            .optional()?)
    }
}
