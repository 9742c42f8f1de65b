//! Unit tests (run with and without the `std` feature).

mod panic;
#[cfg(feature = "std")]
mod reassembler;
mod record;
mod sender;
mod wire;
