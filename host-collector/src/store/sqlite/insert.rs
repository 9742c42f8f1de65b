//! The batch writer's inserts. Each record is one single-row `INSERT` into `records`, its
//! values bound by type (not through `dyn ToSql`), a lean row binding only the columns it
//! fills (the others default to NULL). The batch's keys go into `record_keys` in multi-row
//! `INSERT … VALUES (…),(…)` statements, one per chunk of a power-of-two size (64, 32, …, 1:
//! at most six chunks below 64 for any batch), each prepared once per connection.
//!
//! Measured with `store::sqlite::bench` (batches of 30 lean records, 16 KiB pages, user CPU
//! samples inside `commit_batch`, three runs each): 322 before, 326 with typed binding
//! alone, 288 with the multi-row keys too (-10%).

use std::sync::OnceLock;

use rusqlite::{Statement, Transaction};

use super::super::{Col, NewRecord};

/// The largest chunk of keys: 64 rows × 4 columns = 256 variables.
const MAX_CHUNK: usize = 64;
/// The chunk sizes, largest first.
const CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// The columns a lean row fills, in binding order (see [`bind_record`]).
const LEAN_COLUMNS: &str = "id, boot_id, seq, record_crc, received_at_us, source, schema_major, \
    schema_minor, arch, uptime_us, kind, message, file, line, col, raw, image_id, load_base, \
    step_freeze_us, step_screen_flush_us, step_vmbus_unload_us, step_arch_cleanup_us, \
    step_ship_us, step_crash_registers_us, step_end_us, vm_name, host_name";
const LEAN_COUNT: usize = 27;
/// A full row: the lean columns, then what `show` can render from `raw`.
const FULL_EXTRA: &str = ", build_id, boot_mode, hypervisor, vmbus_version, kind_detail, \
    registers, backtrace, log_tail, steps, ext";
const FULL_COUNT: usize = LEAN_COUNT + 10;

/// `INSERT OR FAIL INTO table (columns) VALUES (?, …), …` for `rows` rows of `n` values each.
///
/// `OR FAIL`, not the default `ABORT`: a statement that may abort halfway through several rows
/// makes SQLite keep a statement journal (a copy of every page it changes, spilled to a
/// temporary file past 64 KiB; measured on `serve`: ~50% more system time in the writer).
/// With `FAIL` a violation still fails the statement, and the caller rolls back the whole
/// transaction.
/// (`records` cannot avoid the journal this way: its CHECK calls `length()`, and a function
/// call in a statement counts as "may abort". Its rows go in one per statement.)
fn values_sql(table: &str, columns: &str, n: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; n].join(","));
    format!(
        "INSERT OR FAIL INTO {table} ({columns}) VALUES {}",
        vec![one; rows].join(",")
    )
}

/// The one-row inserts into `records` (lean, full) and the `record_keys` insert of each chunk size.
struct Sqls {
    lean: String,
    full: String,
    keys: Vec<String>,
}

fn sqls() -> &'static Sqls {
    static S: OnceLock<Sqls> = OnceLock::new();
    S.get_or_init(|| {
        let full_cols = format!("{LEAN_COLUMNS}{FULL_EXTRA}");
        Sqls {
            lean: values_sql("records", LEAN_COLUMNS, LEAN_COUNT, 1),
            full: values_sql("records", &full_cols, FULL_COUNT, 1),
            keys: CHUNKS
                .iter()
                .map(|&rows| values_sql("record_keys", "id, boot_id, seq, record_crc", 4, rows))
                .collect(),
        }
    })
}

/// Splits `n` rows into chunks of the sizes in [`CHUNKS`]: yields (index into CHUNKS, start).
fn chunks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let left = n - start;
        if left == 0 {
            return None;
        }
        let i = CHUNKS
            .iter()
            .position(|&c| c <= left.min(MAX_CHUNK))
            .unwrap_or(CHUNKS.len() - 1);
        let at = start;
        start += CHUNKS[i];
        Some((i, at))
    })
}

/// Binds one record's values from `at` (1-based); returns the next free index.
fn bind_record(
    st: &mut Statement<'_>,
    mut at: usize,
    id: i64,
    r: &NewRecord,
    lean: bool,
) -> rusqlite::Result<usize> {
    let t = &r.text;
    let has_file = t.get(Col::File).is_some();
    macro_rules! bind {
        ($($v:expr),* $(,)?) => {$(
            st.raw_bind_parameter(at, $v)?;
            at += 1;
        )*};
    }
    bind!(
        id,
        &r.key.boot_id[..],
        r.key.seq,
        r.key.record_crc,
        r.received_at_us,
        t.req(Col::Source),
        r.schema_major,
        r.schema_minor,
        t.req(Col::Arch),
        r.uptime_us as i64,
        t.req(Col::Kind),
        t.req(Col::Message),
        t.get(Col::File),
        has_file.then_some(r.line_col.0),
        has_file.then_some(r.line_col.1),
        &r.raw[..],
        t.get(Col::ImageId),
        t.load_base.map(|b| b as i64),
        t.step_us[0],
        t.step_us[1],
        t.step_us[2],
        t.step_us[3],
        t.step_us[4],
        t.step_us[5],
        t.step_us[6],
        t.get(Col::VmName),
        t.get(Col::HostName),
    );
    if !lean {
        bind!(
            t.get(Col::BuildId),
            t.get(Col::BootMode),
            t.get(Col::Hypervisor),
            t.get(Col::VmbusVersion),
            t.get(Col::KindDetail),
            t.get(Col::Registers),
            t.get(Col::Backtrace),
            t.get(Col::LogTail),
            t.get(Col::Steps),
            t.get(Col::Ext),
        );
    }
    Ok(at)
}

/// Inserts `rows` into `records` with the ids `first_id`, `first_id + 1`, … and their keys
/// into `record_keys`, in the open transaction `tx`.
pub(super) fn insert_records(
    tx: &Transaction<'_>,
    rows: &[&NewRecord],
    first_id: i64,
    lean: bool,
) -> rusqlite::Result<()> {
    let s = sqls();
    // One row per statement (see `values_sql`).
    let mut st = tx.prepare_cached(if lean { &s.lean } else { &s.full })?;
    for (k, r) in rows.iter().enumerate() {
        bind_record(&mut st, 1, first_id + k as i64, r, lean)?;
        let n = st.raw_execute()?;
        debug_assert_eq!(n, 1);
    }
    for (class, start) in chunks(rows.len()) {
        let chunk = &rows[start..start + CHUNKS[class]];
        let mut kst = tx.prepare_cached(&s.keys[class])?;
        let mut at = 1;
        for (k, r) in chunk.iter().enumerate() {
            kst.raw_bind_parameter(at, first_id + (start + k) as i64)?;
            kst.raw_bind_parameter(at + 1, &r.key.boot_id[..])?;
            kst.raw_bind_parameter(at + 2, r.key.seq)?;
            kst.raw_bind_parameter(at + 3, r.key.record_crc)?;
            at += 4;
        }
        kst.raw_execute()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_in_at_most_seven_statements_past_the_64s() {
        for n in 0..300 {
            let mut next = 0;
            let mut small = 0;
            for (class, start) in chunks(n) {
                assert_eq!(start, next, "n={n}");
                next += CHUNKS[class];
                if CHUNKS[class] < MAX_CHUNK {
                    small += 1;
                }
            }
            assert_eq!(next, n);
            assert!(small <= 6, "n={n}: {small}");
        }
    }

    #[test]
    fn the_statements_have_one_placeholder_per_value() {
        let s = sqls();
        assert_eq!(s.lean.matches('?').count(), LEAN_COUNT);
        assert_eq!(s.full.matches('?').count(), FULL_COUNT);
        for (i, rows) in CHUNKS.iter().enumerate() {
            assert_eq!(s.keys[i].matches('?').count(), rows * 4);
        }
        assert_eq!(LEAN_COLUMNS.split(',').count(), LEAN_COUNT);
        assert_eq!(FULL_EXTRA.split(',').count() - 1, FULL_COUNT - LEAN_COUNT);
    }
}
