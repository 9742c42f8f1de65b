//! Host-side model of Hyper-V and VMBus (test-only).
pub mod netvsc;
pub mod netvsc_bridge;
pub mod netvsc_testbed;
pub mod synthvid;
pub mod synthvid_link;
