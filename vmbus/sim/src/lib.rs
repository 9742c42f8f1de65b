//! Host-side model of Hyper-V and VMBus (test-only).
