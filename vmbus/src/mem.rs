//! Access to memory shared with the host (SynIC pages, rings, hypercall input pages).
//!
//! The host writes these pages concurrently, so every access is volatile or atomic, never a
//! plain Rust reference.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

/// Copy `dst.len()` bytes from shared memory at `src`.
///
/// # Safety
/// `src..src+dst.len()` must be valid for reads.
pub unsafe fn read_bytes(src: *const u8, dst: &mut [u8]) {
    for (i, d) in dst.iter_mut().enumerate() {
        // SAFETY: in bounds by the caller's contract.
        *d = unsafe { core::ptr::read_volatile(src.add(i)) };
    }
}

/// Copy `src` into shared memory at `dst`.
///
/// # Safety
/// `dst..dst+src.len()` must be valid for writes.
pub unsafe fn write_bytes(dst: *mut u8, src: &[u8]) {
    for (i, s) in src.iter().enumerate() {
        // SAFETY: in bounds by the caller's contract.
        unsafe { core::ptr::write_volatile(dst.add(i), *s) };
    }
}

/// Fill shared memory with zeros.
///
/// # Safety
/// `dst..dst+len` must be valid for writes.
pub unsafe fn zero(dst: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: in bounds by the caller's contract.
        unsafe { core::ptr::write_volatile(dst.add(i), 0) };
    }
}

/// # Safety
/// `p` must be valid, 4-byte aligned, and only accessed atomically by everyone else.
pub unsafe fn atomic_u32<'a>(p: *mut u8) -> &'a AtomicU32 {
    // SAFETY: by the caller's contract.
    unsafe { AtomicU32::from_ptr(p.cast()) }
}

/// # Safety
/// `p` must be valid, 8-byte aligned, and only accessed atomically by everyone else.
pub unsafe fn atomic_u64<'a>(p: *mut u8) -> &'a AtomicU64 {
    // SAFETY: by the caller's contract.
    unsafe { AtomicU64::from_ptr(p.cast()) }
}

/// # Safety
/// `p` must be valid and only accessed atomically by everyone else.
pub unsafe fn atomic_u8<'a>(p: *mut u8) -> &'a AtomicU8 {
    // SAFETY: by the caller's contract.
    unsafe { AtomicU8::from_ptr(p) }
}
