//! x86 port I/O: the `x86_64` crate's `in`/`out` instructions under the short names the
//! drivers here use.
#![allow(dead_code)]

use x86_64::instructions::port::{PortRead, PortWrite};

/// # Safety
/// Port writes can have any hardware effect: the caller names a port whose effect it wants.
pub unsafe fn outb(port: u16, v: u8) {
    // SAFETY: forwarded to the caller.
    unsafe { u8::write_to_port(port, v) }
}
/// # Safety
/// As [`outb`].
pub unsafe fn outw(port: u16, v: u16) {
    // SAFETY: forwarded to the caller.
    unsafe { u16::write_to_port(port, v) }
}
/// # Safety
/// As [`outb`].
pub unsafe fn outl(port: u16, v: u32) {
    // SAFETY: forwarded to the caller.
    unsafe { u32::write_to_port(port, v) }
}
/// # Safety
/// Port reads can have side effects on the device.
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: forwarded to the caller.
    unsafe { u8::read_from_port(port) }
}
/// # Safety
/// As [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    // SAFETY: forwarded to the caller.
    unsafe { u32::read_from_port(port) }
}
