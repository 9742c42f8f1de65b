//! What `list`, `show` and `export` print, made from stored rows: the summary columns as
//! stored, the rest of a record rendered from its raw bytes when read (PostgreSQL stores
//! only the raw record and the columns queries need; SQLite rows written before that keep
//! their rendered columns).

use super::{RecordFields, RecordSummary, RecordView, Result, StoreError};
use crate::util::hex;

/// A `LIKE` pattern matching every text that starts with `prefix`, ASCII case ignored by the
/// backend (SQLite's `LIKE`; PostgreSQL's `ILIKE`), with `\` as the escape character.
pub(super) fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The columns of a stored record every backend keeps.
pub(super) struct Row {
    pub id: i64,
    pub boot_id: Vec<u8>,
    pub seq: u32,
    pub record_crc: u32,
    pub received_at_us: i64,
    pub source: String,
    pub schema_major: u16,
    pub schema_minor: u16,
    pub vm_name: Option<String>,
    pub host_name: Option<String>,
    pub raw: Vec<u8>,
}

/// A location as `list` prints it.
pub(super) fn location(
    file: Option<String>,
    line: Option<u32>,
    col: Option<u32>,
) -> Option<String> {
    file.map(|f| format!("{f}:{}:{}", line.unwrap_or(0), col.unwrap_or(0)))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn summary(
    id: i64,
    received_at_us: i64,
    boot_id: &[u8],
    seq: u32,
    source: String,
    arch: String,
    kind: String,
    message: String,
    location: Option<String>,
) -> RecordSummary {
    RecordSummary {
        id,
        received_at_us,
        received_at: crate::util::format_time_us(received_at_us),
        boot_id: hex(boot_id),
        seq,
        source,
        arch,
        kind,
        message,
        location,
        vm_name: None,
        host_name: None,
    }
}

/// The whole record: its fields rendered from `raw` (the same form the collector stores
/// for SQLite, `convert::fields`), the names from their columns when the record has none.
pub(super) fn from_raw(r: Row, with_raw: bool) -> Result<RecordView> {
    let rec = capture::record::CrashRecord::decode(r.schema_major, r.schema_minor, &r.raw)
        .map_err(|e| StoreError::BadRaw {
            id: r.id,
            reason: format!("{e:?}"),
        })?;
    let mut fields = crate::convert::fields(&rec);
    if fields.vm_name.is_none() {
        fields.vm_name = r.vm_name;
    }
    if fields.host_name.is_none() {
        fields.host_name = r.host_name;
    }
    Ok(view(
        r.id,
        &r.boot_id,
        r.seq,
        r.record_crc,
        r.received_at_us,
        r.source,
        (r.schema_major, r.schema_minor),
        fields,
        &r.raw,
        with_raw,
    ))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn view(
    id: i64,
    boot_id: &[u8],
    seq: u32,
    record_crc: u32,
    received_at_us: i64,
    source: String,
    schema: (u16, u16),
    fields: RecordFields,
    raw: &[u8],
    with_raw: bool,
) -> RecordView {
    RecordView {
        id,
        boot_id: hex(boot_id),
        seq,
        record_crc: format!("{record_crc:08x}"),
        received_at_us,
        received_at: crate::util::format_time_us(received_at_us),
        source,
        schema: format!("{}.{}", schema.0, schema.1),
        fields,
        raw_len: raw.len(),
        raw_hex: with_raw.then(|| hex(raw)),
    }
}
