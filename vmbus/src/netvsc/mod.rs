//! netvsc (placeholder)
