//! canary's host collector: receives crash records over UDP, stores them (SQLite, or
//! PostgreSQL shared by several collectors), shows them, and drives load tests. The binary (`main.rs`) is the CLI; everything here is
//! library-style and returns `thiserror` errors.
#![forbid(unsafe_code)]

pub mod config;
pub mod convert;
pub mod drill;
pub mod events;
pub mod followup_view;
pub mod identity;
pub mod listing;
pub mod liveness;
pub mod load;
pub mod machine;
pub mod metrics;
pub mod mmsg;
pub mod output;
pub mod screen;
pub mod server;
pub mod show;
pub mod store;
pub mod symbols;
pub mod timefmt;
pub mod util;
