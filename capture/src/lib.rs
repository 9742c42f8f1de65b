//! canary's crash record, frame format, datagram transport and panic-path orchestrator.
//!
//! See `API.md` for the contract with the appliance, the collector and the load generator.
//!
//! - [`record`]: [`record::CrashRecord`] v1 (bounded, heapless) and its postcard encoding;
//! - [`wire`]: the datagram frame format (checked view + `Repr`), CRC-32 and optional auth;
//! - [`chunk`]: splitting an encoded record into chunk frames (and, with `std`, reassembly);
//! - [`sender`]: the sans-IO sender (retransmit with backoff until acked or the deadline);
//! - [`auth`]: HMAC-SHA256 frame tags;
//! - [`followup`]: the follow-up frame (outcomes of the steps after the seal) and its sender;
//! - [`screen`]: the panic screen's QR payload (the sealed record, LZ4-compressed);
//! - [`drill`]: which drill frames the appliance acts on (keyed challenge-response);
//! - [`panic`](mod@panic): the panic-path orchestrator (ordered steps, first entry wins, outcomes).
//!
//! Everything except the `std` feature's additions works without an allocator.
//!
//! The appliance's side, end to end (the collector's is `wire::parse` + `chunk::Reassembler`
//! + `CrashRecord::decode`, then an ack):
//!
//! ```
//! use capture::record::{CrashRecord, MAX_ENCODED_LEN};
//! use capture::sender::{SendState, Sender, SenderConfig};
//! use capture::wire::{self, AckRepr, AckStatus, Repr};
//!
//! let mut rec = CrashRecord::empty();
//! rec.set_message("self-check failed");
//! let mut buf = [0u8; MAX_ENCODED_LEN];
//! let encoded = rec.encode(&mut buf).unwrap();
//! let mut s = Sender::new(SenderConfig::default(), [1; 16], 0, encoded, None, 0).unwrap();
//! let mut sent = 0;
//! let st = s.poll(0, &mut |datagram| {
//!     assert!(matches!(wire::parse(datagram, None), Ok(Repr::Chunk(_))));
//!     sent += 1;
//! });
//! // The next round after one RTO (250 ms), spread by ±25 % per record.
//! assert!(matches!(st, SendState::Waiting { next_ms } if (187..313).contains(&next_ms)));
//! assert_eq!(sent, 1);
//! // The collector stored it and acks (boot id, seq, record CRC).
//! let mut ack = [0u8; 64];
//! let n = Repr::Ack(AckRepr::for_record(&s.id(), AckStatus::Stored)).emit(None, &mut ack).unwrap();
//! assert!(s.handle(&ack[..n]));
//! assert_eq!(s.poll(1, &mut |_| unreachable!()), SendState::Acked);
//! ```
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The one-byte open enums of the record (`Step`, `Arch`, `SmbiosStatus`, ...): a Rust enum whose
/// last variant is `Other(u8)` (a code this build does not know, kept as read), and one table
/// `Variant = code` that generates both conversions, so the codes are written once.
/// `open_u8!(T { A = 1, B = 2 })` gives `From<u8> for T` (unknown codes to `T::Other`) and
/// `From<T> for u8`; `open_u8!(T(Unknown) { ... })` names the catch-all variant (the frame
/// kinds of `wire` call theirs `Unknown`).
macro_rules! open_u8 {
    ($t:ident { $($v:ident = $n:literal),* $(,)? }) => {
        open_u8!($t(Other) { $($v = $n),* });
    };
    ($t:ident ($other:ident) { $($v:ident = $n:literal),* $(,)? }) => {
        impl From<u8> for $t {
            fn from(v: u8) -> Self {
                match v { $($n => $t::$v,)* o => $t::$other(o) }
            }
        }
        impl From<$t> for u8 {
            fn from(v: $t) -> u8 {
                match v { $($t::$v => $n,)* $t::$other(o) => o }
            }
        }
    };
}

pub mod auth;
pub mod chunk;
pub mod drill;
pub mod followup;
pub mod identity;
pub mod panic;
pub mod record;
pub mod screen;
pub mod sender;
#[cfg(test)]
mod tests;
#[cfg(any(feature = "std", test))]
pub mod testutil;
pub mod wire;

pub use auth::Key;
pub use chunk::RecordId;
pub use record::CrashRecord;

/// Errors of record encoding/decoding and of the sender's set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The output buffer is too small for the encoded record.
    #[error("the encoded crash record does not fit the {0}-byte output buffer")]
    BufferTooSmall(usize),
    /// The record body is not a valid postcard encoding of this schema.
    #[error("the record body is not a valid schema {major}.{minor} crash record")]
    Decode {
        /// Schema major of the body.
        major: u16,
        /// Schema minor of the body.
        minor: u16,
    },
    /// The record was written with a schema major this crate does not understand.
    #[error(
        "unsupported record schema {major}.{minor}: this build reads major {}",
        record::SCHEMA_MAJOR
    )]
    UnsupportedSchema {
        /// Schema major of the body.
        major: u16,
        /// Schema minor of the body.
        minor: u16,
    },
    /// A body that claims this crate's own minor has bytes after the last known field.
    #[error("{0} trailing bytes after a complete record of the current schema")]
    TrailingBytes(usize),
    /// The record to send is empty.
    #[error("the record to send is empty")]
    EmptyRecord,
    /// The record to send is larger than [`chunk::MAX_RECORD_LEN`].
    #[error("the record is {0} bytes, more than the {max}-byte limit", max = chunk::MAX_RECORD_LEN)]
    RecordTooLarge(usize),
}
