//! The PostgreSQL reading queries (`list`, `show`, `export`, `tail`, `stats`, `canaries`).

use postgres::types::ToSql;
use postgres::Row as PgRow;

use super::super::view::{self, Row};
use super::super::*;
use super::PgStore;
use crate::liveness::{Canary, State};
use crate::util::hex;

fn where_clause(filter: &Filter) -> (String, Vec<Box<dyn ToSql + std::marker::Sync + Send>>) {
    let mut conds = Vec::new();
    let mut args: Vec<Box<dyn ToSql + std::marker::Sync + Send>> = Vec::new();
    if let Some(s) = filter.since_us {
        args.push(Box::new(s));
        conds.push(format!("received_at_us >= ${}", args.len()));
    }
    if let Some(u) = filter.until_us {
        args.push(Box::new(u));
        conds.push(format!("received_at_us <= ${}", args.len()));
    }
    if let Some(a) = filter.after_id {
        args.push(Box::new(a));
        conds.push(format!("id > ${}", args.len()));
    }
    if let Some(h) = &filter.host {
        args.push(Box::new(view::like_prefix(&h.to_ascii_lowercase())));
        let n = args.len();
        conds.push(format!(
            "(lower(vm_name) LIKE ${n} ESCAPE '\\' OR lower(host_name) LIKE ${n} ESCAPE '\\')"
        ));
    }
    let mut sql = String::new();
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    let order = if filter.reverse { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY id {order}"));
    if let Some(l) = filter.limit {
        sql.push_str(&format!(" LIMIT {}", l.min(i64::MAX as u64)));
    }
    (sql, args)
}

const FULL: &str = "id, boot_id, seq, record_crc, received_at_us, source, schema_major,
    schema_minor, vm_name, host_name, raw";

fn full_row(r: &PgRow) -> Row {
    Row {
        id: r.get(0),
        boot_id: r.get(1),
        seq: r.get::<_, i64>(2) as u32,
        record_crc: r.get::<_, i64>(3) as u32,
        received_at_us: r.get(4),
        source: r.get(5),
        schema_major: r.get::<_, i32>(6) as u16,
        schema_minor: r.get::<_, i32>(7) as u16,
        vm_name: r.get(8),
        host_name: r.get(9),
        raw: r.get(10),
    }
}

impl PgStore {
    fn query_rows(
        &self,
        sql: &str,
        args: &[Box<dyn ToSql + std::marker::Sync + Send>],
    ) -> Result<Vec<PgRow>> {
        let params: Vec<&(dyn ToSql + std::marker::Sync)> = args
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + std::marker::Sync))
            .collect();
        self.with(|c| c.query(sql, &params))
    }

    pub fn list(&self, filter: &Filter) -> Result<Vec<RecordSummary>> {
        let (wh, args) = where_clause(filter);
        let rows = self.query_rows(
            &format!(
                "SELECT id, received_at_us, boot_id, seq, source, arch, kind, message, file,
                    line, col, vm_name, host_name FROM records{wh}"
            ),
            &args,
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let boot: Vec<u8> = r.get(2);
                let line: Option<i32> = r.get(9);
                let col: Option<i32> = r.get(10);
                let mut s = view::summary(
                    r.get(0),
                    r.get(1),
                    &boot,
                    r.get::<_, i64>(3) as u32,
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                    view::location(r.get(8), line.map(|v| v as u32), col.map(|v| v as u32)),
                );
                s.vm_name = r.get(11);
                s.host_name = r.get(12);
                s
            })
            .collect())
    }

    pub fn max_id(&self) -> Result<Option<i64>> {
        self.with(|c| Ok(c.query_one("SELECT max(id) FROM records", &[])?.get(0)))
    }

    pub fn records(&self, filter: &Filter, with_raw: bool) -> Result<Vec<RecordView>> {
        let (wh, args) = where_clause(filter);
        let rows = self.query_rows(&format!("SELECT {FULL} FROM records{wh}"), &args)?;
        rows.iter()
            .map(|r| view::from_raw(full_row(r), with_raw))
            .collect()
    }

    pub fn get(&self, r: &RecordRef, with_raw: bool) -> Result<Option<RecordView>> {
        let row = match r {
            RecordRef::Id(id) => self.with(|c| {
                c.query_opt(&format!("SELECT {FULL} FROM records WHERE id = $1"), &[id])
            })?,
            RecordRef::BootSeq(boot, seq) => {
                let (b, s) = (&boot[..], *seq as i64);
                self.with(|c| {
                    c.query_opt(
                        &format!(
                            "SELECT {FULL} FROM records WHERE boot_id = $1 AND seq = $2
                             ORDER BY id DESC LIMIT 1"
                        ),
                        &[&b, &s],
                    )
                })?
            }
        };
        row.map(|r| view::from_raw(full_row(&r), with_raw))
            .transpose()
    }

    pub fn stats(&self) -> Result<Stats> {
        let (records, canaries, rows) = self.with(|c| {
            let records: i64 = c.query_one("SELECT count(*) FROM records", &[])?.get(0);
            let canaries: i64 = c.query_one("SELECT count(*) FROM canaries", &[])?.get(0);
            let rows = c.query(
                "SELECT name, sum(value)::int8 FROM counters GROUP BY name",
                &[],
            )?;
            Ok((records, canaries, rows))
        })?;
        let mut counters: std::collections::BTreeMap<String, u64> =
            COUNTER_NAMES.iter().map(|n| (n.to_string(), 0)).collect();
        for r in rows {
            counters.insert(r.get(0), r.get::<_, i64>(1).max(0) as u64);
        }
        Ok(Stats {
            records: records as u64,
            canaries: canaries as u64,
            schema_version: self.schema_version()?,
            counters,
        })
    }

    pub fn canaries(&self) -> Result<Vec<CanaryView>> {
        let rows = self.with(|c| {
            c.query(
                "SELECT boot_id, source, arch, first_seen_us, last_seen_us, uptime_ms,
                    heartbeat_seq, heartbeats FROM canaries ORDER BY last_seen_us DESC",
                &[],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let boot: Vec<u8> = r.get(0);
                let first: i64 = r.get(3);
                let last: i64 = r.get(4);
                CanaryView {
                    boot_id: hex(&boot),
                    source: r.get(1),
                    arch: crate::convert::arch_code_name(r.get::<_, i16>(2) as u8),
                    first_seen: crate::util::format_time_us(first),
                    last_seen: crate::util::format_time_us(last),
                    last_seen_us: last,
                    uptime_ms: r.get::<_, i64>(5).max(0) as u64,
                    heartbeat_seq: r.get::<_, i64>(6) as u32,
                    heartbeats: r.get::<_, i64>(7).max(0) as u64,
                }
            })
            .collect())
    }

    pub fn rejections(&self) -> Result<Vec<RejectionView>> {
        let rows = self.with(|c| {
            c.query(
                "SELECT id, boot_id, seq, received_at_us, source, schema_major, schema_minor,
                    reason FROM rejections ORDER BY id DESC",
                &[],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let boot: Vec<u8> = r.get(1);
                RejectionView {
                    id: r.get(0),
                    boot_id: hex(&boot),
                    seq: r.get::<_, i64>(2) as u32,
                    received_at: crate::util::format_time_us(r.get(3)),
                    source: r.get(4),
                    schema: format!("{}.{}", r.get::<_, i32>(5), r.get::<_, i32>(6)),
                    reason: r.get(7),
                }
            })
            .collect())
    }

    pub fn liveness(&self) -> Result<Vec<Canary>> {
        let rows = self.with(|c| {
            c.query(
                "SELECT l.address, l.boot_id, l.arch, l.first_seen_us, l.last_seen_us,
                    l.heartbeat_seq, l.uptime_ms, l.interval_ms, l.silent_after_ms, l.state,
                    l.state_since_us, l.crashed_boot, l.last_record_id, l.crashes,
                    c.last_seen_us, c.heartbeat_seq, c.uptime_ms
                 FROM liveness l LEFT JOIN canaries c ON c.boot_id = l.boot_id
                 ORDER BY l.address",
                &[],
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let boot: Vec<u8> = r.get(1);
            let crashed: Option<Vec<u8>> = r.get(11);
            let state: String = r.get(9);
            let mut c = Canary {
                address: r.get(0),
                boot_id: boot.as_slice().try_into().unwrap_or([0; 16]),
                arch: r.get::<_, i16>(2) as u8,
                first_seen_us: r.get(3),
                last_seen_us: r.get(4),
                heartbeat_seq: r.get::<_, Option<i64>>(5).map(|v| v as u32),
                uptime_ms: r.get::<_, i64>(6).max(0) as u64,
                interval_ms: r.get::<_, i64>(7).max(0) as u64,
                silent_after_ms: r.get::<_, i64>(8).max(0) as u64,
                state: State::parse(&state).unwrap_or(State::Alive),
                state_since_us: r.get(10),
                crashed_boot: crashed.and_then(|b| b.as_slice().try_into().ok()),
                last_record_id: r.get(12),
                crashes: r.get::<_, i64>(13).max(0) as u64,
            };
            let hb_seen: Option<i64> = r.get(14);
            if let Some(seen) = hb_seen.filter(|s| *s > c.last_seen_us) {
                c.last_seen_us = seen;
                c.heartbeat_seq = r.get::<_, Option<i64>>(15).map(|v| v as u32);
                c.uptime_ms = r.get::<_, Option<i64>>(16).unwrap_or(0).max(0) as u64;
            }
            out.push(c);
        }
        let mut base = self.crash_base.lock().unwrap_or_else(|e| e.into_inner());
        for c in &out {
            base.insert(c.address.clone(), c.crashes);
        }
        Ok(out)
    }

    pub fn boots_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<[u8; 16]>> {
        let (p, l) = (view::like_prefix(prefix), limit as i64);
        let rows = self.with(|c| {
            c.query(
                "SELECT DISTINCT boot_id FROM records WHERE encode(boot_id, 'hex') LIKE $1
                 ESCAPE '\\' LIMIT $2",
                &[&p, &l],
            )
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| <[u8; 16]>::try_from(r.get::<_, Vec<u8>>(0).as_slice()).ok())
            .collect())
    }

    pub fn count_boots_with_prefix(&self, prefix: &str) -> Result<u64> {
        let p = view::like_prefix(prefix);
        self.with(|c| {
            Ok(c.query_one(
                "SELECT count(DISTINCT boot_id) FROM records
                 WHERE encode(boot_id, 'hex') LIKE $1 ESCAPE '\\'",
                &[&p],
            )?
            .get::<_, i64>(0) as u64)
        })
    }

    pub fn newest_id_of_boot(&self, boot: &[u8; 16]) -> Result<Option<i64>> {
        let b = &boot[..];
        self.with(|c| {
            Ok(
                c.query_one("SELECT max(id) FROM records WHERE boot_id = $1", &[&b])?
                    .get(0),
            )
        })
    }

    pub fn contains(&self, key: &RecordKey) -> Result<bool> {
        let (b, s, k) = (&key.boot_id[..], key.seq as i64, key.record_crc as i64);
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM records WHERE boot_id = $1 AND seq = $2 AND record_crc = $3",
                &[&b, &s, &k],
            )?
            .is_some())
        })
    }

    pub fn count(&self) -> Result<u64> {
        self.with(|c| {
            Ok(c.query_one("SELECT count(*) FROM records", &[])?
                .get::<_, i64>(0) as u64)
        })
    }

    pub fn count_before(&self, cutoff_us: i64) -> Result<u64> {
        self.with(|c| {
            Ok(c.query_one(
                "SELECT count(*) FROM records WHERE received_at_us < $1",
                &[&cutoff_us],
            )?
            .get::<_, i64>(0) as u64)
        })
    }

    /// The bytes the stored records hold (schema 4): each its raw bytes and text columns
    /// plus 144 bytes, the running total the triggers on `records` keep in `record_bytes`
    /// (at most 65 rows to add up, however many records). Not the table's size on disk,
    /// which a delete does not shrink.
    pub fn used_bytes(&self) -> Result<u64> {
        self.with(|c| {
            Ok(c.query_one(
                "SELECT coalesce(sum(bytes), 0)::BIGINT FROM record_bytes",
                &[],
            )?
            .get::<_, i64>(0)
            .max(0) as u64)
        })
    }

    pub fn step_rows(&self) -> Result<Vec<super::super::steps::StepRow>> {
        let cols: Vec<&str> = STEP_COLUMNS.iter().map(|c| c.1).collect();
        let sql = format!(
            "SELECT source, {} FROM records WHERE coalesce({}) IS NOT NULL",
            cols.join(", "),
            cols.join(", ")
        );
        let rows = self.with(|c| c.query(&sql, &[]))?;
        Ok(rows
            .iter()
            .map(|r| {
                let mut t = [None; 7];
                for (i, v) in t.iter_mut().enumerate() {
                    *v = r.get::<_, Option<i64>>(i + 1);
                }
                (r.get::<_, String>(0), t)
            })
            .collect())
    }
}
