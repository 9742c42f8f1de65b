//! Byte offsets of the frame's fixed prefix and of each kind header (the layout is in
//! the parent module's documentation).

/// Byte offsets of the fixed prefix.
pub mod field {
    use core::ops::Range;
    /// Magic.
    pub const MAGIC: Range<usize> = 0..4;
    /// Version.
    pub const VERSION: usize = 4;
    /// Kind.
    pub const KIND: usize = 5;
    /// Flags.
    pub const FLAGS: usize = 6;
    /// Kind-header length.
    pub const HEADER_LEN: usize = 7;
    /// Start of the kind header.
    pub const HEADER: usize = 8;
}

/// Byte offsets inside the Chunk header.
pub mod chunk_field {
    use core::ops::Range;
    /// Boot id.
    pub const BOOT_ID: Range<usize> = 0..16;
    /// Per-boot record sequence number.
    pub const SEQ: Range<usize> = 16..20;
    /// CRC-32 of the whole encoded record.
    pub const RECORD_CRC: Range<usize> = 20..24;
    /// Length of the whole encoded record.
    pub const RECORD_LEN: Range<usize> = 24..28;
    /// Offset of this chunk's payload in the record.
    pub const OFFSET: Range<usize> = 28..32;
    /// Record schema major.
    pub const SCHEMA_MAJOR: Range<usize> = 32..34;
    /// Record schema minor.
    pub const SCHEMA_MINOR: Range<usize> = 34..36;
    /// Chunk index.
    pub const CHUNK_INDEX: Range<usize> = 36..38;
    /// Chunk count.
    pub const CHUNK_COUNT: Range<usize> = 38..40;
}

/// Byte offsets inside the Ack header.
pub mod ack_field {
    use core::ops::Range;
    /// Boot id.
    pub const BOOT_ID: Range<usize> = 0..16;
    /// Record sequence number.
    pub const SEQ: Range<usize> = 16..20;
    /// Record CRC.
    pub const RECORD_CRC: Range<usize> = 20..24;
    /// Status (0 stored, 1 duplicate, 2 rejected).
    pub const STATUS: usize = 24;
    /// A follow-up's ack: how many steps the follow-up the collector holds reports, at least
    /// (0 in record acks and from collectors before it).
    pub const FOLLOWUP_REPORTED: usize = 25;
    /// Reserved, zero.
    pub const RESERVED: Range<usize> = 26..28;
}

/// Byte offsets inside the Heartbeat header.
pub mod heartbeat_field {
    use core::ops::Range;
    /// Boot id.
    pub const BOOT_ID: Range<usize> = 0..16;
    /// Heartbeat counter.
    pub const SEQ: Range<usize> = 16..20;
    /// Uptime in milliseconds.
    pub const UPTIME_MS: Range<usize> = 20..28;
    /// Arch code (as in the record).
    pub const ARCH: usize = 28;
    /// Reserved, zero.
    pub const RESERVED: Range<usize> = 29..32;
}

/// Byte offsets inside the Drill header.
pub mod drill_field {
    use core::ops::Range;
    /// Nonce chosen by the collector.
    pub const NONCE: Range<usize> = 0..8;
    /// Delay before the drill panic.
    pub const DELAY_MS: Range<usize> = 8..12;
    /// Reserved, zero.
    pub const RESERVED: Range<usize> = 12..16;
    /// Challenge being answered: the canary's boot id (zero: none).
    pub const BOOT_ID: Range<usize> = 16..32;
    /// Challenge being answered: its counter (0: no challenge).
    pub const COUNTER: Range<usize> = 32..40;
}

/// Byte offsets inside the Challenge header.
pub mod challenge_field {
    use core::ops::Range;
    /// Nonce of the drill request this answers.
    pub const NONCE: Range<usize> = 0..8;
    /// The canary's boot id.
    pub const BOOT_ID: Range<usize> = 8..24;
    /// The challenge counter (from 1, strictly increasing within a boot).
    pub const COUNTER: Range<usize> = 24..32;
}
