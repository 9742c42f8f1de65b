//! The store's reading queries (`list`, `show`, `export`, `tail`, `stats`).

use rusqlite::params;
use rusqlite::types::Value;

use super::super::*;
use super::SqliteStore;
use crate::util::hex;

impl SqliteStore {
    fn where_clause(filter: &Filter) -> (String, Vec<Value>) {
        let mut conds = Vec::new();
        let mut args = Vec::new();
        if let Some(s) = filter.since_us {
            args.push(Value::Integer(s));
            conds.push(format!("received_at_us >= ?{}", args.len()));
        }
        if let Some(u) = filter.until_us {
            args.push(Value::Integer(u));
            conds.push(format!("received_at_us <= ?{}", args.len()));
        }
        if let Some(a) = filter.after_id {
            args.push(Value::Integer(a));
            conds.push(format!("id > ?{}", args.len()));
        }
        if let Some(h) = &filter.host {
            // Prefix, ASCII case ignored: LIKE with the pattern's own % and _ escaped.
            args.push(Value::Text(super::super::view::like_prefix(h)));
            let n = args.len();
            conds.push(format!(
                "(vm_name LIKE ?{n} ESCAPE '\\' OR host_name LIKE ?{n} ESCAPE '\\')"
            ));
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
            "SELECT id, received_at_us, boot_id, seq, source, arch, kind, message, file, line, col,
             vm_name, host_name FROM records{wh} ORDER BY id {order}"
        );
        if let Some(l) = filter.limit {
            sql.push_str(&format!(" LIMIT {}", l.min(i64::MAX as u64)));
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
                vm_name: r.get(11)?,
                host_name: r.get(12)?,
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
            sql.push_str(&format!(" LIMIT {}", l.min(i64::MAX as u64)));
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

    pub(in crate::store) fn boots_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<[u8; 16]>> {
        let mut st = self.conn.prepare(
            "SELECT DISTINCT boot_id FROM record_keys WHERE lower(hex(boot_id)) LIKE ?1 || '%'
             LIMIT ?2",
        )?;
        let rows = st.query_map(params![prefix, limit as i64], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for b in rows {
            if let Ok(b) = <[u8; 16]>::try_from(b?.as_slice()) {
                out.push(b);
            }
        }
        Ok(out)
    }

    pub(in crate::store) fn count_boots_with_prefix(&self, prefix: &str) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT count(DISTINCT boot_id) FROM record_keys
             WHERE lower(hex(boot_id)) LIKE ?1 || '%'",
            params![prefix],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    pub(in crate::store) fn newest_id_of_boot(&self, boot: &[u8; 16]) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT max(id) FROM record_keys WHERE boot_id = ?1",
            params![&boot[..]],
            |r| r.get(0),
        )?)
    }

    /// Every record with a step time: its source and step times.
    pub(in crate::store) fn step_rows(&self) -> Result<Vec<super::super::steps::StepRow>> {
        let cols: Vec<&str> = STEP_COLUMNS.iter().map(|c| c.1).collect();
        let sql = format!(
            "SELECT source, {} FROM records WHERE coalesce({}) IS NOT NULL",
            cols.join(", "),
            cols.join(", ")
        );
        let mut st = self.conn.prepare(&sql)?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut t = [None; 7];
            for (i, v) in t.iter_mut().enumerate() {
                *v = r.get::<_, Option<i64>>(i + 1)?;
            }
            out.push((r.get::<_, String>(0)?, t));
        }
        Ok(out)
    }
}

const FULL_COLUMNS: &str = "id, boot_id, seq, record_crc, received_at_us, source, schema_major,
    schema_minor, build_id, arch, boot_mode, hypervisor, vmbus_version, uptime_us, kind,
    kind_detail, message, file, line, col, registers, backtrace, log_tail, steps, raw, vm_name,
    host_name";

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
    if r.get_ref(20)?.data_type() == rusqlite::types::Type::Null {
        // A lean row: render what it does not hold from `raw`.
        return super::super::view::from_raw(
            super::super::view::Row {
                id,
                boot_id: boot,
                seq: r.get(2)?,
                record_crc: r.get(3)?,
                received_at_us: at,
                source: r.get(5)?,
                schema_major: r.get(6)?,
                schema_minor: r.get(7)?,
                vm_name: r.get(25)?,
                host_name: r.get(26)?,
                raw,
            },
            with_raw,
        );
    }
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
            vm_name: r.get(25)?,
            host_name: r.get(26)?,
        },
        raw_len: raw.len(),
        raw_hex: with_raw.then(|| hex(&raw)),
    })
}
