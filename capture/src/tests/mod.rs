//! Unit tests (run with and without the `std` feature).

#[cfg(feature = "std")]
mod end_to_end;
mod drill;
mod panic;
#[cfg(feature = "std")]
mod reassembler;
mod record;
mod sender;
mod wire;
