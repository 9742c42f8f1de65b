//! The counters `serve` keeps in memory between commits.

use std::sync::atomic::{AtomicU64, Ordering};

use capture::wire::WireError;

/// Counters shared by the receiver and the writer; the writer moves them into the database
/// with each commit (so `stats` from another process sees them).
#[derive(Debug, Default)]
pub struct Counters {
    pub datagrams: AtomicU64,
    pub bad_crc: AtomicU64,
    pub bad_frames: AtomicU64,
    pub auth_failures: AtomicU64,
    pub evictions: AtomicU64,
    pub expired: AtomicU64,
    pub queue_full_drops: AtomicU64,
    pub acks_sent: AtomicU64,
    pub truncated: AtomicU64,
    pub oversized: AtomicU64,
    pub bad_magic: AtomicU64,
    pub bad_version: AtomicU64,
    pub bad_header: AtomicU64,
    pub unknown_kind: AtomicU64,
    pub unexpected_kind: AtomicU64,
    pub reassembly_errors: AtomicU64,
    /// Bytes set aside for the partial records that were evicted.
    pub evicted_bytes: AtomicU64,
    /// Events (see `crate::events`) dropped because the dispatcher's queue was full.
    pub events_dropped: AtomicU64,
    pub hook_runs: AtomicU64,
    pub hook_failures: AtomicU64,
    pub hook_dropped: AtomicU64,
    pub webhook_sent: AtomicU64,
    pub webhook_failures: AtomicU64,
    pub webhook_dropped: AtomicU64,
    /// Frames from new canary addresses not tracked (`liveness` full).
    pub canaries_untracked: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes (and zeroes) every counter.
    pub(crate) fn take(&self) -> Vec<(&'static str, u64)> {
        let t = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        vec![
            ("datagrams", t(&self.datagrams)),
            ("bad_crc", t(&self.bad_crc)),
            ("bad_frames", t(&self.bad_frames)),
            ("auth_failures", t(&self.auth_failures)),
            ("evictions", t(&self.evictions)),
            ("expired", t(&self.expired)),
            ("queue_full_drops", t(&self.queue_full_drops)),
            ("acks_sent", t(&self.acks_sent)),
            ("truncated", t(&self.truncated)),
            ("oversized", t(&self.oversized)),
            ("bad_magic", t(&self.bad_magic)),
            ("bad_version", t(&self.bad_version)),
            ("bad_header", t(&self.bad_header)),
            ("unknown_kind", t(&self.unknown_kind)),
            ("unexpected_kind", t(&self.unexpected_kind)),
            ("reassembly_errors", t(&self.reassembly_errors)),
            ("evicted_bytes", t(&self.evicted_bytes)),
            ("events_dropped", t(&self.events_dropped)),
            ("hook_runs", t(&self.hook_runs)),
            ("hook_failures", t(&self.hook_failures)),
            ("hook_dropped", t(&self.hook_dropped)),
            ("webhook_sent", t(&self.webhook_sent)),
            ("webhook_failures", t(&self.webhook_failures)),
            ("webhook_dropped", t(&self.webhook_dropped)),
            ("canaries_untracked", t(&self.canaries_untracked)),
        ]
    }

    /// Puts counters back after a failed commit.
    pub(crate) fn restore(&self, taken: &[(&'static str, u64)]) {
        for (name, v) in taken {
            let c = match *name {
                "datagrams" => &self.datagrams,
                "bad_crc" => &self.bad_crc,
                "bad_frames" => &self.bad_frames,
                "auth_failures" => &self.auth_failures,
                "evictions" => &self.evictions,
                "expired" => &self.expired,
                "queue_full_drops" => &self.queue_full_drops,
                "acks_sent" => &self.acks_sent,
                "truncated" => &self.truncated,
                "oversized" => &self.oversized,
                "bad_magic" => &self.bad_magic,
                "bad_version" => &self.bad_version,
                "bad_header" => &self.bad_header,
                "unknown_kind" => &self.unknown_kind,
                "unexpected_kind" => &self.unexpected_kind,
                "evicted_bytes" => &self.evicted_bytes,
                "events_dropped" => &self.events_dropped,
                "hook_runs" => &self.hook_runs,
                "hook_failures" => &self.hook_failures,
                "hook_dropped" => &self.hook_dropped,
                "webhook_sent" => &self.webhook_sent,
                "webhook_failures" => &self.webhook_failures,
                "webhook_dropped" => &self.webhook_dropped,
                "canaries_untracked" => &self.canaries_untracked,
                _ => &self.reassembly_errors,
            };
            Self::add(c, *v);
        }
    }

    /// Counts a datagram that failed to parse. Every failure is a `bad_frames`, `bad_crc` or
    /// `auth_failures`, plus a finer-grained counter for bad frames.
    pub(crate) fn count_wire_error(&self, e: &WireError) {
        let fine = match e {
            WireError::BadCrc { .. } => return Self::add(&self.bad_crc, 1),
            WireError::AuthRequired | WireError::BadAuth | WireError::UnexpectedAuth => {
                return Self::add(&self.auth_failures, 1)
            }
            WireError::Truncated { .. } => &self.truncated,
            WireError::Oversized(_) => &self.oversized,
            WireError::BadMagic(_) => &self.bad_magic,
            WireError::BadVersion(_) => &self.bad_version,
            WireError::UnknownKind(_) => &self.unknown_kind,
            _ => &self.bad_header,
        };
        Self::add(fine, 1);
        Self::add(&self.bad_frames, 1);
    }
}
