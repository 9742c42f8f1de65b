//! The appliance's Hyper-V interface: detection, hypercall page, SynIC, VMBus connection, and
//! the Hyper-V steps of the panic path. Implemented on top of the `vmbus` crate by the Hyper-V
//! work; until then this is the "no Hyper-V present" implementation: `init` returns `None`, so
//! the panic path records `NotPresent` for every Hyper-V step.
//!
//! Contract with the rest of the appliance:
//! - `init` runs once at boot, after the console, timers and exceptions are up and before the
//!   NIC is chosen (netvsc when Hyper-V offers one, else virtio-net).
//! - The panic path reaches the `HyperV` through a static with a real try-lock
//!   (`crate::platform::HYPERV`), never a blocking lock: the methods below must not block,
//!   allocate or take locks that normal running may hold, and must honour their deadlines.
#![allow(dead_code)]

use capture::panic::Outcome;
use capture::record::CrashRecord;

/// The Hyper-V guest state of this partition.
pub struct HyperV {
    _private: (),
}

/// Detects Hyper-V, sets up the hypercall page and SynIC, connects to VMBus.
/// `None` when not running on Hyper-V (or when set-up failed: the reason is logged).
pub fn init(_cfg: &crate::config::Config) -> Option<HyperV> {
    None
}

impl HyperV {
    /// The negotiated VMBus protocol version, if connected.
    pub fn vmbus_version(&self) -> Option<(u16, u16)> {
        None
    }

    /// Hypervisor identity into the record.
    pub fn describe(&self, _rec: &mut CrashRecord) {}

    /// Periodic health check (VMBus channels, SynIC); `Err` says what failed.
    pub fn self_check(&mut self) -> Result<(), &'static str> {
        Ok(())
    }

    /// Panic step 2: the synthvid DIRT, on try-lock.
    pub fn flush_screen(&mut self) -> Outcome {
        Outcome::NotPresent
    }

    /// Panic step 3: UNLOAD once per connection, bounded by `deadline_us`.
    pub fn unload_once(&mut self, _deadline_us: u64) -> Outcome {
        Outcome::NotPresent
    }

    /// Panic step 4: stimer/SynIC cleanup (both arches).
    pub fn arch_cleanup(&mut self) -> Outcome {
        Outcome::NotPresent
    }

    /// Panic step 5 (first half): reconnect in polling mode and open the NIC channel.
    pub fn reconnect_for_ship(&mut self) -> Outcome {
        Outcome::NotPresent
    }

    /// Panic step 6: crash registers P0-P4 then CRASH_CTL, once.
    pub fn write_crash_registers(&mut self, _rec: &CrashRecord) -> Outcome {
        Outcome::NotPresent
    }

    /// Panic step 7: hypercall page off, guest OS id 0.
    pub fn end(&mut self) {}
}
