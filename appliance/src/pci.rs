//! PCI memory BAR placement, the same on every arch: minimal firmware (qboot, a `-kernel`
//! direct boot without any) leaves BARs unassigned, and the canary gives them addresses in a
//! memory window the arch names (x86_64: a fixed range of the 32-bit PCI hole; arm64: the host
//! bridge's window from the device tree). The arch keeps its window and its configuration
//! access; the placement rule is here, its pure half unit-tested on the host.
/// Largest end address of a BAR that only decodes 32 bits (a 32-bit memory BAR's base
/// register holds address bits 31:4; PCI Local Bus spec 3.0, 6.2.5.1).
const LIMIT_32BIT: u64 = 1 << 32;

/// Where a BAR of `size` bytes (a power of two, as BAR sizing yields) goes when the window's
/// free space starts at `next` and the window ends at `end`: the next multiple of `size`, if
/// the whole BAR fits below `end` and, for a BAR that is not 64-bit, below 4 GiB. `None`
/// means no room (also for a zero size or an address past `u64::MAX`).
pub fn place(next: u64, size: u64, end: u64, width64: bool) -> Option<u64> {
    if size == 0 {
        return None;
    }
    let base = next.checked_next_multiple_of(size)?;
    let top = base.checked_add(size)?;
    let limit = if width64 { end } else { end.min(LIMIT_32BIT) };
    (top <= limit).then_some(base)
}

/// Gives the unassigned memory BARs of `df` an address in `window` (PCI addresses; the
/// caller makes sure they equal CPU addresses there), above every memory BAR already placed
/// in the window on bus 0 (looked up on the first call; later calls continue after the last
/// BAR given out). A BAR that does not fit is left unassigned, with a warning.
#[cfg(kernel)]
pub fn assign_bars<C: virtio_drivers::transport::pci::bus::ConfigurationAccess>(
    root: &mut virtio_drivers::transport::pci::bus::PciRoot<C>,
    df: virtio_drivers::transport::pci::bus::DeviceFunction,
    window: core::ops::Range<u64>,
) {
    use core::sync::atomic::{AtomicU64, Ordering};
    use virtio_drivers::transport::pci::bus::{BarInfo, MemoryBarType};
    // One PCI root per boot (each arch has one window), so one cursor.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // Start above every BAR the firmware already placed in the window.
        let mut top = window.start;
        for (other, _) in root.enumerate_bus(0) {
            let Ok(bars) = root.bars(other) else { continue };
            for (addr, size) in bars
                .iter()
                .flatten()
                .filter_map(|b| b.memory_address_size())
            {
                if window.contains(&addr) {
                    top = top.max(addr.saturating_add(size));
                }
            }
        }
        NEXT.store(top, Ordering::Relaxed);
    }
    let Ok(bars) = root.bars(df) else { return };
    for (i, bar) in bars.iter().enumerate() {
        let Some(BarInfo::Memory {
            address_type,
            address: 0,
            size,
            ..
        }) = bar
        else {
            continue;
        };
        if *size == 0 {
            continue;
        }
        let width64 = *address_type == MemoryBarType::Width64;
        let Some(base) = place(NEXT.load(Ordering::Relaxed), *size, window.end, width64) else {
            log::warn!("PCI {df}: no room for BAR{i} ({size:#x} bytes)");
            continue;
        };
        NEXT.store(base + size, Ordering::Relaxed);
        if width64 {
            root.set_bar_64(df, i as u8, base);
        } else {
            root.set_bar_32(df, i as u8, base as u32);
        }
        log::info!("PCI {df}: BAR{i} assigned at {base:#x} ({size:#x} bytes)");
    }
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn a_bar_goes_to_the_next_multiple_of_its_size() {
        assert_eq!(
            place(0xc000_0000, 0x4000, 0xfec0_0000, false),
            Some(0xc000_0000)
        );
        assert_eq!(
            place(0xc000_0001, 0x4000, 0xfec0_0000, true),
            Some(0xc000_4000)
        );
        assert_eq!(
            place(0x1000_5000, 0x10_0000, 1 << 40, true),
            Some(0x1010_0000)
        );
    }

    #[test]
    fn a_bar_that_would_cross_the_window_end_gets_no_room() {
        // Exactly up to the end fits; one alignment step more does not.
        assert_eq!(
            place(0xfebf_c000, 0x4000, 0xfec0_0000, true),
            Some(0xfebf_c000)
        );
        assert_eq!(place(0xfebf_c001, 0x4000, 0xfec0_0000, true), None);
    }

    #[test]
    fn a_32bit_bar_must_end_below_4gib_even_when_the_window_goes_higher() {
        let end = 0x80_0000_0000; // a window reaching far above 4 GiB (arm64 DT)
        assert_eq!(place(0xffff_c000, 0x4000, end, false), Some(0xffff_c000));
        assert_eq!(place(0xffff_c001, 0x4000, end, false), None);
        assert_eq!(place(0xffff_c001, 0x4000, end, true), Some(0x1_0000_0000));
    }

    #[test]
    fn zero_sizes_and_overflowing_addresses_get_no_room() {
        assert_eq!(place(0x1000, 0, u64::MAX, true), None);
        assert_eq!(place(u64::MAX - 1, 0x1000, u64::MAX, true), None);
        assert_eq!(place(1 << 63, 1 << 63, u64::MAX, true), None);
    }
}
