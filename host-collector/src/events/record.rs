//! [`StoredRecord`]: what the writer queues per stored record.

use super::host_of;
use super::line::{kv, kv_num, push_hex};
use super::CrashEvent;
use crate::store::{Col, NewRecord, RecordKey, RowText, StepView};
use crate::util::{format_time_us, hex};

/// A stored record as the writer queues it: the few columns its uses need ([`Wanted`]),
/// copied into one buffer. The dispatcher renders the log line (and, for hooks, webhooks and
/// step metrics, the [`CrashEvent`]) from it, so that hex, times and addresses are formatted
/// off the writer.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub id: i64,
    pub key: RecordKey,
    pub received_at_us: i64,
    pub line_col: (u32, u32),
    /// The record answers a scheduled drill.
    pub drill: bool,
    /// The record gets its own log line.
    pub line: bool,
    /// Of [`StoredRecord::COLUMNS`], those `Wanted` of the record's row text.
    text: RowText,
}

/// What the dispatcher does with a stored record, so what the writer copies of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Its own log line (source, arch, kind, message, file).
    pub line: bool,
    /// The step metrics (the steps JSON).
    pub steps: bool,
    /// An event for hooks and webhooks (all of the columns).
    pub event: bool,
}

impl Wanted {
    /// Everything: a line, the step metrics and the event.
    pub const ALL: Wanted = Wanted {
        line: true,
        steps: true,
        event: true,
    };

    /// Nothing of the record is needed: the writer queues nothing for it.
    pub fn none(self) -> bool {
        !(self.line || self.steps || self.event)
    }
}

impl StoredRecord {
    /// The columns kept (in [`Col`] order, as [`RowText::set`] wants them).
    const COLUMNS: [Col; 6] = [
        Col::Source,
        Col::Arch,
        Col::Kind,
        Col::Message,
        Col::File,
        Col::Steps,
    ];

    pub fn new(id: i64, r: &NewRecord, drill: bool, want: Wanted) -> StoredRecord {
        let cols = Self::COLUMNS.map(|c| {
            let wanted = if c == Col::Steps {
                want.steps || want.event
            } else {
                want.line || want.event
            };
            r.text.get(c).filter(|_| wanted)
        });
        let len = cols.iter().flatten().map(|v| v.len()).sum();
        let mut text = RowText::with_capacity(len);
        for (c, v) in Self::COLUMNS.into_iter().zip(cols) {
            if let Some(v) = v {
                text.set(c, |s| s.push_str(v));
            }
        }
        StoredRecord {
            id,
            key: r.key,
            received_at_us: r.received_at_us,
            line_col: r.line_col,
            drill,
            line: want.line,
            text,
        }
    }

    fn col(&self, c: Col) -> &str {
        self.text.get(c).unwrap_or("")
    }

    fn location(&self) -> Option<String> {
        let (l, c) = self.line_col;
        self.text.get(Col::File).map(|f| format!("{f}:{l}:{c}"))
    }

    /// The event sent to hooks and webhooks (`steps` still empty: the dispatcher fills them).
    pub fn event(&self) -> CrashEvent {
        let source = self.col(Col::Source);
        CrashEvent {
            id: self.id,
            boot_id: hex(&self.key.boot_id),
            seq: self.key.seq,
            record_crc: format!("{:08x}", self.key.record_crc),
            host: host_of(source),
            source: source.to_string(),
            received_at: format_time_us(self.received_at_us),
            received_at_us: self.received_at_us,
            arch: self.col(Col::Arch).to_string(),
            kind: self.col(Col::Kind).to_string(),
            message: self.col(Col::Message).to_string(),
            location: self.location(),
            drill: self.drill,
            steps: Vec::new(),
            steps_json: self.text.get(Col::Steps).unwrap_or("[]").to_string(),
        }
    }

    /// The stored JSON of the panic-path steps.
    pub(super) fn steps_json(&self) -> &str {
        self.text.get(Col::Steps).unwrap_or("[]")
    }

    /// The panic-path steps (parsed from the stored JSON).
    pub(super) fn steps(&self) -> Vec<StepView> {
        serde_json::from_str(self.text.get(Col::Steps).unwrap_or("[]")).unwrap_or_default()
    }

    /// The same line as [`super::log_line`] of [`StoredRecord::event`] (a test holds them equal),
    /// without building the event.
    pub fn log_line(&self) -> String {
        let source = self.col(Col::Source);
        let message = self.col(Col::Message);
        let mut o = String::with_capacity(160 + message.len());
        o.push_str("crash stored");
        kv_num(&mut o, "id", self.id);
        o.push_str(" boot=");
        push_hex(&mut o, &self.key.boot_id);
        kv_num(&mut o, "seq", self.key.seq);
        kv(&mut o, "host", &host_of(source));
        kv(&mut o, "source", source);
        kv(&mut o, "arch", self.col(Col::Arch));
        kv(&mut o, "kind", self.col(Col::Kind));
        if self.drill {
            kv(&mut o, "drill", "scheduled");
        }
        if let Some(l) = self.location() {
            kv(&mut o, "location", &l);
        }
        kv(&mut o, "message", message);
        o
    }

    /// Bytes held, roughly (for the queue's byte budget).
    pub(super) fn cost(&self) -> usize {
        256 + self.text.text_len()
    }
}
