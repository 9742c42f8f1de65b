//! Per-architecture hypervisor access.
//!
//! Each arch has an adapter that implements [`crate::Hypervisor`] on top of a thin instruction
//! layer trait (`X86Instructions`, `Smccc`). The adapters compile on every target so the host
//! model can drive them in `cargo test`; only the `Native` instruction layers (inline asm) are
//! behind `cfg(target_arch)`.

pub mod aarch64;
pub mod x86_64;
