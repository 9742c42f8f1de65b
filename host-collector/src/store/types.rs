//! The rows the store writes and reads, and the names of its counters.

use serde::{Deserialize, Serialize};

use super::{Result, StoreError};
use crate::util::parse_hex16;

/// The dedupe key of a record: `(boot id, sequence, record CRC)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub boot_id: [u8; 16],
    pub seq: u32,
    pub record_crc: u32,
}

/// A source location in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationView {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

/// The outcome of one panic-path step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub step: String,
    pub outcome: String,
    pub elapsed_us: u32,
}

/// The decoded fields of a crash record, in the form they are stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RecordFields {
    pub build_id: String,
    pub arch: String,
    pub boot_mode: String,
    pub hypervisor: serde_json::Value,
    pub vmbus_version: Option<String>,
    pub uptime_us: u64,
    pub kind: String,
    pub kind_detail: Option<serde_json::Value>,
    pub message: String,
    pub location: Option<LocationView>,
    pub registers: serde_json::Value,
    /// Return addresses, `0x`-prefixed hex.
    pub backtrace: Vec<String>,
    pub log_tail: String,
    pub steps: Vec<StepView>,
    /// The VM's name as the host knows it (Hyper-V KVP `VirtualMachineName`, or SMBIOS),
    /// when the record carries it. Stored in the `vm_name` column; `list --host` matches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// The name of the physical host the VM ran on (Hyper-V KVP `PhysicalHostNameFullyQualified`
    /// or `PhysicalHostName`), when the record carries it. Stored in `host_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
}

/// The text columns of a record to store, rendered into one buffer (one allocation per
/// record on the hot path). JSON columns hold the JSON form of the [`RecordFields`] member of
/// the same name.
#[derive(Debug, Clone, Default)]
pub struct RowText {
    text: String,
    ends: [u32; Col::COUNT],
    present: u32,
    /// The image's run-time load base (schema 1.1), stored as the `load_base` column.
    pub load_base: Option<u64>,
    /// Microseconds each panic-path step took (steps 1..=7 of the first entry; `None` for a
    /// step not recorded or still pending), stored as the `step_*_us` columns.
    pub step_us: [Option<u32>; 7],
}

/// The text columns of [`RowText`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Col {
    Source,
    BuildId,
    Arch,
    BootMode,
    Hypervisor,
    VmbusVersion,
    Kind,
    KindDetail,
    Message,
    File,
    Registers,
    Backtrace,
    LogTail,
    Steps,
    /// `KIND:ID` of the image (schema 1.1), e.g. `gnu-build-id:e3d7…`.
    ImageId,
    /// JSON of the rest of schema 1.1's group: stacks, backtrace_end, takeovers.
    Ext,
    /// [`RecordFields::vm_name`] (the `vm_name` column).
    VmName,
    /// [`RecordFields::host_name`] (the `host_name` column).
    HostName,
}

impl Col {
    const COUNT: usize = 18;
    /// Every column, in declaration order.
    pub const ALL: [Col; Col::COUNT] = [
        Col::Source,
        Col::BuildId,
        Col::Arch,
        Col::BootMode,
        Col::Hypervisor,
        Col::VmbusVersion,
        Col::Kind,
        Col::KindDetail,
        Col::Message,
        Col::File,
        Col::Registers,
        Col::Backtrace,
        Col::LogTail,
        Col::Steps,
        Col::ImageId,
        Col::Ext,
        Col::VmName,
        Col::HostName,
    ];
}

impl RowText {
    pub fn with_capacity(n: usize) -> RowText {
        RowText {
            text: String::with_capacity(n),
            ..RowText::default()
        }
    }

    /// Sets column `c` (columns must be set in declaration order; skipped ones are NULL).
    pub fn set(&mut self, c: Col, f: impl FnOnce(&mut String)) {
        debug_assert!(self.present >> (c as usize) == 0, "columns set in order");
        let start = self.text.len() as u32;
        let from = self.last_set();
        for e in &mut self.ends[from..c as usize] {
            *e = start;
        }
        f(&mut self.text);
        self.ends[c as usize] = self.text.len() as u32;
        self.present |= 1 << (c as usize);
    }

    fn last_set(&self) -> usize {
        (u32::BITS - self.present.leading_zeros()) as usize
    }

    /// Column `c`, or `None` if it was not set.
    pub fn get(&self, c: Col) -> Option<&str> {
        let i = c as usize;
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.text[start..self.ends[i] as usize])
    }

    /// Bytes of text held (for the queue's byte budget).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    pub(super) fn req(&self, c: Col) -> &str {
        self.get(c).unwrap_or("")
    }

    /// Renders `f` (used by tests and tools; the collector renders straight from the decoded
    /// record in `convert`).
    pub fn from_fields(source: &str, f: &RecordFields) -> RowText {
        let json = |v: &dyn erased::Ser| v.to_json();
        let mut t = RowText::with_capacity(2048);
        t.set(Col::Source, |s| s.push_str(source));
        t.set(Col::BuildId, |s| s.push_str(&f.build_id));
        t.set(Col::Arch, |s| s.push_str(&f.arch));
        t.set(Col::BootMode, |s| s.push_str(&f.boot_mode));
        t.set(Col::Hypervisor, |s| s.push_str(&json(&f.hypervisor)));
        if let Some(v) = &f.vmbus_version {
            t.set(Col::VmbusVersion, |s| s.push_str(v));
        }
        t.set(Col::Kind, |s| s.push_str(&f.kind));
        if let Some(d) = &f.kind_detail {
            t.set(Col::KindDetail, |s| s.push_str(&json(d)));
        }
        t.set(Col::Message, |s| s.push_str(&f.message));
        if let Some(l) = &f.location {
            t.set(Col::File, |s| s.push_str(&l.file));
        }
        t.set(Col::Registers, |s| s.push_str(&json(&f.registers)));
        t.set(Col::Backtrace, |s| s.push_str(&json(&f.backtrace)));
        t.set(Col::LogTail, |s| s.push_str(&f.log_tail));
        t.set(Col::Steps, |s| s.push_str(&json(&f.steps)));
        if let Some(v) = &f.vm_name {
            t.set(Col::VmName, |s| s.push_str(v));
        }
        if let Some(h) = &f.host_name {
            t.set(Col::HostName, |s| s.push_str(h));
        }
        t
    }
}

mod erased {
    pub trait Ser {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// A record ready to be stored.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub key: RecordKey,
    pub received_at_us: i64,
    pub schema_major: u16,
    pub schema_minor: u16,
    pub uptime_us: u64,
    /// Source line and column (stored only when the `File` column is set).
    pub line_col: (u32, u32),
    pub text: RowText,
    /// The encoded (postcard) record exactly as received.
    pub raw: Vec<u8>,
}

/// A record that was complete and CRC-correct but could not be accepted.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub key: RecordKey,
    pub source: String,
    pub received_at_us: i64,
    pub schema_major: u16,
    pub schema_minor: u16,
    pub reason: String,
    pub raw: Vec<u8>,
}

/// A heartbeat as seen by the collector.
#[derive(Debug, Clone)]
pub struct HeartbeatSeen {
    pub boot_id: [u8; 16],
    pub source: String,
    pub arch: u8,
    pub seen_at_us: i64,
    pub uptime_ms: u64,
    pub seq: u32,
}

/// What happened to a record in [`Store::commit_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Stored,
    Duplicate,
}

/// The record a follow-up was attached to, as [`Store::put_followup`] found it (in the
/// statement that finds the record's row: no read of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedRecord {
    /// The record's id (`records.id`).
    pub id: i64,
    /// The address the record came from (`records.source`).
    pub source: String,
}

/// What [`Store::put_followup`] did with a follow-up frame (the outcomes of the panic steps
/// that ran after the record was acked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowupOutcome {
    /// Stored, in the transaction that returned, with its `record`: ack it.
    Stored { record: FollowedRecord },
    /// Stored in place of the one stored earlier with its `record`, which reported fewer
    /// steps (`reported_before`: its steps not pending): the appliance sends one when the
    /// record is acked and the more complete one from the end step. Ack it.
    Replaced {
        record: FollowedRecord,
        /// Steps the replaced follow-up reported.
        reported_before: usize,
    },
    /// A follow-up for this record reporting as many steps or more is already stored (it
    /// stays): ack it as a duplicate; nothing changed.
    Duplicate,
    /// No record with this key is stored (not yet, or pruned): nothing stored; do not ack
    /// (the sender retransmits, and the record may be committed by then).
    NoSuchRecord,
}

impl FollowupOutcome {
    /// What storing follow-up `raw` for `record` does where `held` is stored already: the
    /// one reporting more steps stays (the appliance sends one when the record is acked and
    /// a more complete one from the end step). Both backends decide by this.
    pub fn of(record: &FollowedRecord, held: Option<&[u8]>, raw: &[u8]) -> FollowupOutcome {
        use crate::followup_view::reported;
        match held.map(reported) {
            None => FollowupOutcome::Stored {
                record: record.clone(),
            },
            Some(b) if reported(raw) > b => FollowupOutcome::Replaced {
                record: record.clone(),
                reported_before: b,
            },
            Some(_) => FollowupOutcome::Duplicate,
        }
    }

    /// The record the follow-up was stored with (`Stored`, `Replaced`); `None` when nothing
    /// was stored.
    pub fn stored_with(&self) -> Option<&FollowedRecord> {
        match self {
            FollowupOutcome::Stored { record } | FollowupOutcome::Replaced { record, .. } => {
                Some(record)
            }
            FollowupOutcome::Duplicate | FollowupOutcome::NoSuchRecord => None,
        }
    }
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordSummary {
    pub id: i64,
    pub received_at_us: i64,
    pub received_at: String,
    pub boot_id: String,
    pub seq: u32,
    pub source: String,
    pub arch: String,
    pub kind: String,
    pub message: String,
    pub location: Option<String>,
    /// [`RecordFields::vm_name`] (schema 1.2 records that carry it), for `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// [`RecordFields::host_name`], for `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
}

/// A whole record as shown by `show` and `export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordView {
    pub id: i64,
    pub boot_id: String,
    pub seq: u32,
    pub record_crc: String,
    pub received_at_us: i64,
    pub received_at: String,
    pub source: String,
    pub schema: String,
    #[serde(flatten)]
    pub fields: RecordFields,
    pub raw_len: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw_hex: Option<String>,
}

/// A canary's last heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryView {
    pub boot_id: String,
    pub source: String,
    pub arch: String,
    pub first_seen: String,
    pub last_seen: String,
    pub last_seen_us: i64,
    pub uptime_ms: u64,
    pub heartbeat_seq: u32,
    pub heartbeats: u64,
}

/// A stored rejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectionView {
    pub id: i64,
    pub boot_id: String,
    pub seq: u32,
    pub received_at: String,
    pub source: String,
    pub schema: String,
    pub reason: String,
}

/// Which records `list`, `export` and `tail` look at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub after_id: Option<i64>,
    pub limit: Option<u64>,
    /// Newest first.
    pub reverse: bool,
    /// Only records whose `vm_name` or `host_name` starts with this text, ignoring ASCII
    /// case (an exact name is a prefix of itself): `--host hv0` matches `HV07` and `hv0`.
    pub host: Option<String>,
}

/// How to name one record on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRef {
    Id(i64),
    BootSeq([u8; 16], u32),
}

impl std::str::FromStr for RecordRef {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        if let Ok(id) = s.parse::<i64>() {
            return Ok(RecordRef::Id(id));
        }
        let (boot, seq) = s
            .split_once(':')
            .ok_or_else(|| StoreError::BadRef(s.into()))?;
        let boot = parse_hex16(boot).ok_or_else(|| StoreError::BadRef(s.into()))?;
        let seq = seq.parse().map_err(|_| StoreError::BadRef(s.into()))?;
        Ok(RecordRef::BootSeq(boot, seq))
    }
}

/// The counters kept in the `counters` table. Names are part of the `stats --json` output.
pub const COUNTER_NAMES: &[&str] = &[
    "datagrams",
    "records_stored",
    "duplicates",
    "rejected",
    "bad_crc",
    "bad_frames",
    "auth_failures",
    "evictions",
    "expired",
    "heartbeats",
    "queue_full_drops",
    "acks_sent",
    "truncated",
    "oversized",
    "bad_magic",
    "bad_version",
    "bad_header",
    "unknown_kind",
    "unexpected_kind",
    "reassembly_errors",
    "evicted_bytes",
    "rejected_not_kept",
    "retention_deleted",
    "events_dropped",
    "hook_runs",
    "hook_failures",
    "hook_dropped",
    "webhook_sent",
    "webhook_failures",
    "webhook_dropped",
    "canaries_untracked",
];

/// Collector statistics, from the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Records currently stored.
    pub records: u64,
    /// Canaries that sent a heartbeat.
    pub canaries: u64,
    pub schema_version: u32,
    /// Every persisted counter, by name (see `COUNTER_NAMES`).
    #[serde(flatten)]
    pub counters: std::collections::BTreeMap<String, u64>,
}
