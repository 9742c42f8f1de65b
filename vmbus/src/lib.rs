//! Hyper-V guest interface and VMBus stack.
//!
//! `no_std`, no allocator. Every routine takes its hypervisor access, clock and page allocator
//! as trait objects ([`platform`]), so the same code runs on hardware ([`arch`]) and against the
//! host model in `vmbus-sim`. See `vmbus/API.md` for how a kernel uses it. Facts and constants
//! cite `shared/reference/hyperv-guest.md` (abbreviated "ref") and the Linux, FreeBSD and OpenVMM
//! sources named there.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(test)]
extern crate std;

pub mod arch;
pub mod channel;
pub mod cleanup;
pub mod connection;
pub mod crash;
pub mod detect;
pub mod device;
pub mod guid;
pub mod hypercall;
/// Integration components: the IC message framework and KVP data exchange.
pub mod ic;
pub mod mem;
pub mod msg;
pub mod platform;
pub mod regs;
pub mod ring;
pub mod status;
pub mod stimer;
pub mod synic;
pub mod time;
pub mod version;

pub use channel::{Channel, OutboundGuard, OutgoingPacket};
pub use connection::{
    ConnectOptions, Connection, Event, GpaRange, GpadlId, OpenOptions, Pfns, UnloadOutcome,
    UnloadSkip, VmbusError,
};
pub use detect::{detect, HvIdentity, Privileges};
pub use guid::Guid;
pub use platform::{Arch, Clock, Hypervisor, InterruptControl, PageAlloc, PhysPages};
pub use regs::{GuestOsId, SynReg};
pub use status::{HvError, HvResult, HvStatus};
pub use synic::{Synic, SynicMode};
pub use version::Version;

/// Size of a hypervisor page (ref §3.2: GPA page numbers are 4 KiB frames).
pub const PAGE_SIZE: usize = 4096;
/// `PAGE_SIZE` as a shift.
pub const PAGE_SHIFT: u32 = 12;
pub mod font;
pub mod netvsc;
pub mod synthvid;
