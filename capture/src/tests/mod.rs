//! Unit tests (run with and without the `std` feature).

mod drill;
#[cfg(feature = "std")]
mod end_to_end;
mod followup;
mod identity;
mod panic;
#[cfg(feature = "std")]
mod reassembler;
mod record;
mod sender;
mod wire;
