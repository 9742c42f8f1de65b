//! Unit tests (run with and without the `std` feature).

mod record;
mod sender;
mod wire;
