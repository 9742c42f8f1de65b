//! The PostgreSQL batch writer: one transaction per batch, each table written by one
//! statement over arrays (`unnest`), rows in key order so that collectors writing the same
//! keys take their locks in the same order.

use std::collections::HashMap;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{GenericClient, Transaction};

use super::super::*;
use super::{PgStore, Stmts};
use crate::liveness::Canary;

/// How often a batch is tried when the insert trigger finds one of its records pruned by
/// another collector meanwhile (each retry sees the new tombstones: a second try is enough
/// unless prunes keep racing the same keys).
const PRUNED_RACE_TRIES: u32 = 4;
/// What the insert trigger raises then (schema 5).
const SERIALIZATION: SqlState = SqlState::T_R_SERIALIZATION_FAILURE;

/// `put_followup`'s statements, each over the record's key (`$1` boot id, `$2` seq, `$3`
/// CRC); the race tests run them as the other collector. The record's row, locked shared
/// (a concurrent prune waits for the commit): its id and source (for the `crash_path` event).
pub(in crate::store) const FOLLOWUP_RECORD: &str = "SELECT id, source FROM records
    WHERE boot_id = $1 AND seq = $2 AND record_crc = $3 FOR KEY SHARE";
/// The follow-up held, locked.
pub(in crate::store) const FOLLOWUP_HELD: &str = "SELECT raw FROM followups
    WHERE boot_id = $1 AND seq = $2 AND record_crc = $3 FOR UPDATE";
/// The first follow-up (`$4` received at, ms; `$5` the frame).
pub(in crate::store) const FOLLOWUP_INSERT: &str = "INSERT INTO followups
    (boot_id, seq, record_crc, received_at_ms, raw)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
/// A more complete one replacing it (`$4`, `$5` as above).
pub(in crate::store) const FOLLOWUP_REPLACE: &str =
    "UPDATE followups SET received_at_ms = $4, raw = $5
    WHERE boot_id = $1 AND seq = $2 AND record_crc = $3";
/// The step times after the seal (`$4`..`$10`, freeze to end) into the record's step
/// columns, where it had none.
pub(in crate::store) const FOLLOWUP_STEP_TIMES: &str = "UPDATE records
    SET step_freeze_us = COALESCE(step_freeze_us, $4),
        step_screen_flush_us = COALESCE(step_screen_flush_us, $5),
        step_vmbus_unload_us = COALESCE(step_vmbus_unload_us, $6),
        step_arch_cleanup_us = COALESCE(step_arch_cleanup_us, $7),
        step_ship_us = COALESCE(step_ship_us, $8),
        step_crash_registers_us = COALESCE(step_crash_registers_us, $9),
        step_end_us = COALESCE(step_end_us, $10)
    WHERE boot_id = $1 AND seq = $2 AND record_crc = $3";

fn i64_of(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl PgStore {
    pub fn commit_batch(
        &mut self,
        records: &[NewRecord],
        rejections: &[Rejection],
        heartbeats: &[HeartbeatSeen],
        counters: &[(&str, u64)],
    ) -> Result<Vec<InsertOutcome>> {
        self.last_ids.clear();
        let mut kept_bytes = match self.rejected_bytes {
            Some(b) => b,
            None if rejections.is_empty() => 0,
            None => self.with(|c| {
                c.query_one(
                    "SELECT coalesce(sum(length(raw)), 0)::BIGINT FROM rejections",
                    &[],
                )
                .map(|r| r.get::<_, i64>(0).max(0) as u64)
            })?,
        };
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
        // The first record of each key in the batch is written; a later one with the same
        // key is a duplicate of it.
        let mut first: HashMap<RecordKey, usize> = HashMap::with_capacity(records.len());
        let mut order: Vec<usize> = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(e) = first.entry(r.key) {
                e.insert(i);
                order.push(i);
            }
        }
        order.sort_by(|&a, &b| {
            let (x, y) = (&records[a].key, &records[b].key);
            (x.boot_id, x.seq, x.record_crc).cmp(&(y.boot_id, y.seq, y.record_crc))
        });
        let own = [
            ("rejected", keep as u64 + not_kept),
            ("rejected_not_kept", not_kept),
            ("heartbeats", heartbeats.len() as u64),
        ];
        let counters = sum_counters(counters.iter().chain(&own));
        let shard = self.shard;
        let stored_ids: HashMap<RecordKey, i64> = self.with_stmts(|c, stmts| {
            // A record another collector pruned while this insert waited for that delete is
            // refused by the insert trigger (schema 5: `serialization_failure`, nothing of the
            // batch kept); tried again, the insert's own tombstone check sees it: duplicate.
            let mut tries = 0;
            loop {
                tries += 1;
                let r = (|| {
                    if keep == 0 && heartbeats.is_empty() {
                        // One statement, committed on its own: one round trip for the batch.
                        return insert_records(c, stmts, shard, records, &order, &counters);
                    }
                    let mut tx = c.transaction()?;
                    insert_rejections(&mut tx, stmts, &rejections[..keep])?;
                    upsert_heartbeats(&mut tx, stmts, heartbeats)?;
                    let ids = insert_records(&mut tx, stmts, shard, records, &order, &counters)?;
                    tx.commit()?;
                    Ok(ids)
                })();
                match r {
                    Err(e) if tries < PRUNED_RACE_TRIES && e.code() == Some(&SERIALIZATION) => {}
                    r => return r,
                }
            }
        })?;
        if !rejections.is_empty() {
            self.rejected_bytes = Some(kept_bytes);
        }
        let mut out = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            match stored_ids.get(&r.key) {
                Some(id) if first.get(&r.key) == Some(&i) => {
                    out.push(InsertOutcome::Stored);
                    self.last_ids.push(*id);
                }
                _ => out.push(InsertOutcome::Duplicate),
            }
        }
        Ok(out)
    }

    pub fn put_followup(
        &mut self,
        key: &RecordKey,
        raw: &[u8],
        received_unix_ms: i64,
    ) -> Result<FollowupOutcome> {
        let (boot, seq, crc) = (&key.boot_id[..], key.seq as i64, key.record_crc as i64);
        let decided = self.with(|c| {
            let mut tx = c.transaction()?;
            // A shared lock: it keeps a concurrent prune from deleting the record's row
            // until this commits (its delete trigger then deletes the follow-up stored
            // here, schema 3); a record pruned first is not found here. It does not keep
            // out another collector storing a follow-up for the same key (decided below).
            let Some(row) = tx.query_opt(FOLLOWUP_RECORD, &[&boot, &seq, &crc])? else {
                return Ok(Some(FollowupOutcome::NoSuchRecord));
            };
            let record = FollowedRecord {
                id: row.try_get(0)?,
                source: row.try_get(1)?,
            };
            // The one reporting more steps stays (the appliance sends one when the record is
            // acked and a more complete one from the end step). A held row is locked until
            // this commits, and read as another collector's replacement left it.
            // No row: another collector's first follow-up, not committed yet when the SELECT
            // ran, makes the INSERT wait for it and insert nothing; then the committed row is
            // read (a new statement sees it) and decided against: once, as a follow-up row
            // is deleted only with its record (`prune`, schema 3), whose row is locked here.
            let mut outcome = None;
            for _ in 0..2 {
                let held: Option<Vec<u8>> = tx
                    .query_opt(FOLLOWUP_HELD, &[&boot, &seq, &crc])?
                    .map(|r| r.get(0));
                let o = FollowupOutcome::of(&record, held.as_deref(), raw);
                let n = match o {
                    FollowupOutcome::Stored { .. } => tx.execute(
                        FOLLOWUP_INSERT,
                        &[&boot, &seq, &crc, &received_unix_ms, &raw],
                    )?,
                    FollowupOutcome::Replaced { .. } => tx.execute(
                        FOLLOWUP_REPLACE,
                        &[&boot, &seq, &crc, &received_unix_ms, &raw],
                    )?,
                    _ => {
                        outcome = Some(o);
                        break;
                    }
                };
                if n == 1 {
                    outcome = Some(o);
                    break;
                }
            }
            let Some(outcome) = outcome else {
                // The transaction, dropped here, is rolled back.
                return Ok(None);
            };
            if outcome.stored_with().is_some() {
                // The steps after the seal: their times into the record's step columns (for
                // `stats --steps`), where neither the record nor a replaced follow-up had one.
                let t = crate::followup_view::step_times(raw).map(|v| v.map(i64::from));
                tx.execute(
                    FOLLOWUP_STEP_TIMES,
                    &[
                        &boot, &seq, &crc, &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6],
                    ],
                )?;
            }
            tx.commit()?;
            Ok(Some(outcome))
        })?;
        decided.ok_or_else(|| {
            StoreError::Postgres(format!(
                "follow-up of record {}:{} (crc {:08x}): its followups row was neither inserted \
                 (another collector's row conflicted) nor found when read again; nothing stored",
                crate::util::hex(&key.boot_id),
                key.seq,
                key.record_crc
            ))
        })
    }

    pub fn followup(&self, key: &RecordKey) -> Result<Option<Vec<u8>>> {
        let (boot, seq, crc) = (&key.boot_id[..], key.seq as i64, key.record_crc as i64);
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT raw FROM followups WHERE boot_id = $1 AND seq = $2 AND record_crc = $3",
                &[&boot, &seq, &crc],
            )?
            .map(|r| r.get(0)))
        })
    }

    /// Merges these canaries' rows with what other collectors wrote: the newest sighting
    /// (`last_seen_us`) wins the sighting columns, the newest state change
    /// (`state_since_us`) the state columns, and `crashes` grows by the crashes this
    /// collector counted since it last read or wrote the row.
    pub fn save_liveness(&mut self, rows: &[Canary]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut sorted: Vec<&Canary> = rows.iter().collect();
        sorted.sort_by(|a, b| a.address.cmp(&b.address));
        let base = self
            .crash_base
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let deltas: Vec<i64> = sorted
            .iter()
            .map(|c| {
                i64_of(
                    c.crashes
                        .saturating_sub(*base.get(&c.address).unwrap_or(&0)),
                )
            })
            .collect();
        self.with(|cl| {
            let mut tx = cl.transaction()?;
            let st = tx.prepare(
                "INSERT INTO liveness AS l (address, boot_id, arch, first_seen_us, last_seen_us,
                    heartbeat_seq, uptime_ms, interval_ms, silent_after_ms, state,
                    state_since_us, crashed_boot, last_record_id, crashes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT (address) DO UPDATE SET
                    first_seen_us = least(l.first_seen_us, excluded.first_seen_us),
                    boot_id = CASE WHEN excluded.last_seen_us >= l.last_seen_us
                        THEN excluded.boot_id ELSE l.boot_id END,
                    arch = CASE WHEN excluded.last_seen_us >= l.last_seen_us
                        THEN excluded.arch ELSE l.arch END,
                    heartbeat_seq = CASE WHEN excluded.last_seen_us >= l.last_seen_us
                        THEN excluded.heartbeat_seq ELSE l.heartbeat_seq END,
                    uptime_ms = CASE WHEN excluded.last_seen_us >= l.last_seen_us
                        THEN excluded.uptime_ms ELSE l.uptime_ms END,
                    interval_ms = CASE WHEN excluded.last_seen_us >= l.last_seen_us
                        THEN excluded.interval_ms ELSE l.interval_ms END,
                    silent_after_ms = CASE WHEN excluded.last_seen_us >= l.last_seen_us
                        THEN excluded.silent_after_ms ELSE l.silent_after_ms END,
                    last_seen_us = greatest(l.last_seen_us, excluded.last_seen_us),
                    state = CASE WHEN excluded.state_since_us >= l.state_since_us
                        THEN excluded.state ELSE l.state END,
                    crashed_boot = CASE WHEN excluded.state_since_us >= l.state_since_us
                        THEN excluded.crashed_boot ELSE l.crashed_boot END,
                    last_record_id = greatest(l.last_record_id, excluded.last_record_id),
                    state_since_us = greatest(l.state_since_us, excluded.state_since_us),
                    crashes = l.crashes + $15
                 RETURNING crashes",
            )?;
            let mut now = Vec::with_capacity(sorted.len());
            for (c, delta) in sorted.iter().zip(&deltas) {
                let hb = c.heartbeat_seq.map(i64::from);
                let r = tx.query_one(
                    &st,
                    &[
                        &c.address,
                        &&c.boot_id[..],
                        &(c.arch as i16),
                        &c.first_seen_us,
                        &c.last_seen_us,
                        &hb,
                        &i64_of(c.uptime_ms),
                        &i64_of(c.interval_ms),
                        &i64_of(c.silent_after_ms),
                        &c.state.as_str(),
                        &c.state_since_us,
                        &c.crashed_boot.as_ref().map(|b| &b[..]),
                        &c.last_record_id,
                        &i64_of(c.crashes),
                        delta,
                    ],
                )?;
                now.push(r.get::<_, i64>(0));
            }
            tx.commit()?;
            Ok(now)
        })?;
        let base = self.crash_base.get_mut().unwrap_or_else(|e| e.into_inner());
        for c in sorted {
            base.insert(c.address.clone(), c.crashes);
        }
        Ok(())
    }

    pub fn delete_oldest(&mut self, k: u64) -> Result<u64> {
        let k = i64_of(k);
        self.with(|c| {
            c.execute(
                "DELETE FROM records WHERE id IN
                    (SELECT id FROM records ORDER BY id ASC LIMIT $1)",
                &[&k],
            )
        })
    }

    pub fn count_retention_deleted(&mut self, n: u64) -> Result<()> {
        let shard = self.shard;
        self.with(|c| {
            let mut tx = c.transaction()?;
            add_counters(&mut tx, shard, [("retention_deleted", n)].iter())?;
            tx.commit()
        })
    }

    pub fn prune_before(&mut self, cutoff_us: i64) -> Result<u64> {
        self.with(|c| {
            c.execute(
                "DELETE FROM records WHERE received_at_us < $1",
                &[&cutoff_us],
            )
        })
    }

    pub fn prune_keep(&mut self, keep: u64) -> Result<u64> {
        let keep = i64_of(keep);
        self.with(|c| {
            c.execute(
                "DELETE FROM records WHERE id NOT IN
                    (SELECT id FROM records ORDER BY id DESC LIMIT $1)",
                &[&keep],
            )
        })
    }
}

/// The records insert and the counters it adds to, one statement: the records stored
/// (`ins`) count as `records_stored`, the others of the batch (`$27`) as `duplicates`;
/// the counter rows are this connection's (`$28`, its shard).
const INSERT_RECORDS: &str = "WITH ins AS (
    INSERT INTO records (boot_id, seq, record_crc, received_at_us, schema_major,
        schema_minor, source, arch, kind, message, file, line, col, vm_name, host_name,
        image_id, step_freeze_us, step_screen_flush_us, step_vmbus_unload_us,
        step_arch_cleanup_us, step_ship_us, step_crash_registers_us, step_end_us, raw)
    SELECT v.* FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int8[], $5::int4[],
        $6::int4[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
        $12::int4[], $13::int4[], $14::text[], $15::text[], $16::text[], $17::int8[],
        $18::int8[], $19::int8[], $20::int8[], $21::int8[], $22::int8[], $23::int8[],
        $24::bytea[])
        AS v (boot_id, seq, record_crc, received_at_us, schema_major, schema_minor, source,
            arch, kind, message, file, line, col, vm_name, host_name, image_id, s1, s2, s3,
            s4, s5, s6, s7, raw)
    WHERE NOT EXISTS (SELECT 1 FROM pruned_keys p WHERE p.boot_id = v.boot_id
        AND p.seq = v.seq AND p.record_crc = v.record_crc)
    ON CONFLICT (boot_id, seq, record_crc) DO NOTHING
    RETURNING id, boot_id, seq, record_crc
), cnt AS (
    INSERT INTO counters AS c (name, shard, value)
    SELECT name, $28::int2, sum(value)::int8 FROM (
        SELECT * FROM unnest($25::text[], $26::int8[]) AS u (name, value)
        UNION ALL SELECT 'records_stored', count(*) FROM ins
        UNION ALL SELECT 'duplicates', $27::int8 - count(*) FROM ins
    ) s GROUP BY name HAVING sum(value) > 0 ORDER BY name
    ON CONFLICT (name, shard) DO UPDATE SET value = c.value + excluded.value
)
SELECT id, boot_id, seq, record_crc FROM ins";

/// Inserts `records[order[..]]` (distinct keys, in key order), skipping keys already stored
/// (by anyone) or pruned, and adds `counters` (names in order) with the records stored and
/// the duplicates. Returns the id of each key this statement stored.
fn insert_records(
    c: &mut impl GenericClient,
    stmts: &mut Stmts,
    shard: i16,
    records: &[NewRecord],
    order: &[usize],
    counters: &(Vec<&str>, Vec<i64>),
) -> Result<HashMap<RecordKey, i64>, postgres::Error> {
    let mut out = HashMap::with_capacity(order.len());
    if records.is_empty() && counters.0.is_empty() {
        return Ok(out);
    }
    let n = order.len();
    let mut boot: Vec<&[u8]> = Vec::with_capacity(n);
    let mut seq: Vec<i64> = Vec::with_capacity(n);
    let mut crc: Vec<i64> = Vec::with_capacity(n);
    let mut at: Vec<i64> = Vec::with_capacity(n);
    let mut major: Vec<i32> = Vec::with_capacity(n);
    let mut minor: Vec<i32> = Vec::with_capacity(n);
    let mut text: [Vec<Option<&str>>; 8] = Default::default();
    let text_cols = [
        Col::Source,
        Col::Arch,
        Col::Kind,
        Col::Message,
        Col::File,
        Col::VmName,
        Col::HostName,
        Col::ImageId,
    ];
    let mut line: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut col: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut steps: [Vec<Option<i64>>; 7] = Default::default();
    let mut raw: Vec<&[u8]> = Vec::with_capacity(n);
    for &i in order {
        let r = &records[i];
        boot.push(&r.key.boot_id[..]);
        seq.push(r.key.seq as i64);
        crc.push(r.key.record_crc as i64);
        at.push(r.received_at_us);
        major.push(r.schema_major as i32);
        minor.push(r.schema_minor as i32);
        for (v, c) in text.iter_mut().zip(text_cols) {
            let t = r.text.get(c);
            // The columns `list` needs are NOT NULL: an unset one is empty.
            let required = matches!(c, Col::Source | Col::Arch | Col::Kind | Col::Message);
            v.push(if required { Some(t.unwrap_or("")) } else { t });
        }
        let has_file = r.text.get(Col::File).is_some();
        line.push(has_file.then_some(r.line_col.0.min(i32::MAX as u32) as i32));
        col.push(has_file.then_some(r.line_col.1.min(i32::MAX as u32) as i32));
        for (v, us) in steps.iter_mut().zip(r.text.step_us) {
            v.push(us.map(i64::from));
        }
        raw.push(&r.raw);
    }
    let mut params: Vec<&(dyn ToSql + std::marker::Sync)> = vec![
        &boot, &seq, &crc, &at, &major, &minor, &text[0], &text[1], &text[2], &text[3], &text[4],
        &line, &col, &text[5], &text[6], &text[7], &steps[0], &steps[1], &steps[2], &steps[3],
        &steps[4], &steps[5], &steps[6], &raw,
    ];
    let total = i64_of(records.len() as u64);
    params.extend([
        &counters.0 as &(dyn ToSql + std::marker::Sync),
        &counters.1,
        &total,
        &shard,
    ]);
    let st = stmts.get(c, INSERT_RECORDS)?;
    let rows = c.query(&st, &params)?;
    for r in rows {
        let b: Vec<u8> = r.get(1);
        let Ok(boot_id) = <[u8; 16]>::try_from(b.as_slice()) else {
            continue;
        };
        let key = RecordKey {
            boot_id,
            seq: r.get::<_, i64>(2) as u32,
            record_crc: r.get::<_, i64>(3) as u32,
        };
        out.insert(key, r.get(0));
    }
    Ok(out)
}

fn insert_rejections(
    tx: &mut Transaction<'_>,
    stmts: &mut Stmts,
    rej: &[Rejection],
) -> Result<(), postgres::Error> {
    if rej.is_empty() {
        return Ok(());
    }
    let st = stmts.get(
        tx,
        "INSERT INTO rejections (boot_id, seq, record_crc, received_at_us, source,
            schema_major, schema_minor, reason, raw)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
    )?;
    for r in rej {
        tx.execute(
            &st,
            &[
                &&r.key.boot_id[..],
                &(r.key.seq as i64),
                &(r.key.record_crc as i64),
                &r.received_at_us,
                &r.source,
                &(r.schema_major as i32),
                &(r.schema_minor as i32),
                &r.reason,
                &r.raw,
            ],
        )?;
    }
    Ok(())
}

fn upsert_heartbeats(
    tx: &mut Transaction<'_>,
    stmts: &mut Stmts,
    hbs: &[HeartbeatSeen],
) -> Result<(), postgres::Error> {
    if hbs.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&HeartbeatSeen> = hbs.iter().collect();
    sorted.sort_by_key(|h| (h.boot_id, h.seq));
    // Only a sequence above the last one seen for the boot counts, whichever collector saw
    // it: a replayed heartbeat must not make a dead canary look alive.
    let st = stmts.get(
        tx,
        "INSERT INTO canaries AS c (boot_id, source, arch, first_seen_us, last_seen_us,
            uptime_ms, heartbeat_seq, heartbeats)
         VALUES ($1, $2, $3, $4, $4, $5, $6, 1)
         ON CONFLICT (boot_id) DO UPDATE SET source = excluded.source, arch = excluded.arch,
            last_seen_us = excluded.last_seen_us, uptime_ms = excluded.uptime_ms,
            heartbeat_seq = excluded.heartbeat_seq, heartbeats = c.heartbeats + 1
         WHERE excluded.heartbeat_seq > c.heartbeat_seq",
    )?;
    for h in sorted {
        tx.execute(
            &st,
            &[
                &&h.boot_id[..],
                &h.source,
                &(h.arch as i16),
                &h.seen_at_us,
                &i64_of(h.uptime_ms),
                &(h.seq as i64),
            ],
        )?;
    }
    Ok(())
}

/// The counters that are not 0, summed by name, in name order.
fn sum_counters<'a>(
    counters: impl Iterator<Item = &'a (&'a str, u64)>,
) -> (Vec<&'a str>, Vec<i64>) {
    let mut sum: std::collections::BTreeMap<&str, u64> = Default::default();
    for (n, v) in counters {
        if *v > 0 {
            *sum.entry(n).or_default() += v;
        }
    }
    (
        sum.keys().copied().collect(),
        sum.values().map(|v| i64_of(*v)).collect(),
    )
}

/// Adds to the counters (increments: collectors sharing the database add up), in name
/// order, in the rows of `shard`.
fn add_counters<'a>(
    tx: &mut Transaction<'_>,
    shard: i16,
    counters: impl Iterator<Item = &'a (&'a str, u64)>,
) -> Result<(), postgres::Error> {
    let mut sum: std::collections::BTreeMap<&str, u64> = Default::default();
    for (n, v) in counters {
        if *v > 0 {
            *sum.entry(n).or_default() += v;
        }
    }
    if sum.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = sum.keys().copied().collect();
    let values: Vec<i64> = sum.values().map(|v| i64_of(*v)).collect();
    tx.execute(
        "INSERT INTO counters AS c (name, shard, value)
         SELECT name, $3::int2, value FROM unnest($1::text[], $2::int8[]) AS u (name, value)
         ON CONFLICT (name, shard) DO UPDATE SET value = c.value + excluded.value",
        &[&names, &values, &shard],
    )?;
    Ok(())
}
