//! Power off and reset as the firmware's ACPI tables say (`crate::acpi` parses): QEMU
//! (PIIX4/ICH9) and Hyper-V Gen2 differ in ports and sleep type, so nothing is hard-coded
//! except the PC fallbacks. Tables are checked (signature, length, checksum) before use.
use crate::acpi::crs::{self, CrsError, VmbusMmio};
use crate::acpi::{parse_fadt, s5_slp_typ, sum, u32_at, u64_at};
use crate::sync::Once;
use core::fmt::Write as _;

#[derive(Clone, Copy, Debug, Default)]
struct Power {
    pm1a_cnt: u16,
    pm1b_cnt: u16,
    slp_typ: (u8, u8),
    reset: Option<(u8, u64, u8)>,
}

static POWER: Once<Power> = Once::new();
/// The RSDP [`init`] found.
static RSDP: Once<u64> = Once::new();
/// The VMBus device's MMIO windows from the DSDT/SSDTs (synthvid VRAM without a GOP), or why
/// there are none; read once, on first use.
static VMBUS_MMIO: Once<Result<VmbusMmio, CrsError>> = Once::new();

/// The VMBus device's MMIO from ACPI `_CRS`. Read and logged on the first call ([`init`]
/// makes it when the AML names a VMBus device; walking the AML takes milliseconds under TCG,
/// so a host without one does not pay it), kept for later calls.
pub fn vmbus_mmio() -> Result<&'static VmbusMmio, CrsError> {
    if VMBUS_MMIO.get().is_none() {
        VMBUS_MMIO.set(read_vmbus_mmio());
    }
    match VMBUS_MMIO.get() {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(*e),
        None => Err(CrsError::NoTables),
    }
}

/// # Safety
/// `addr..addr + len` must be readable (identity-mapped firmware memory).
unsafe fn bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) }
}

/// A system description table at `addr` with a sane length and a valid checksum.
///
/// # Safety
/// `addr` must point to readable firmware memory.
unsafe fn table(addr: u64) -> Option<&'static [u8]> {
    if addr == 0 || addr >= 1 << 32 {
        return None; // the direct-boot identity map covers 4 GiB; firmware keeps tables low
    }
    // SAFETY: the header (36 bytes) is in firmware memory per the caller.
    let len = u32_at(unsafe { bytes(addr, 36) }, 4)? as usize;
    if !(36..=1 << 20).contains(&len) {
        return None;
    }
    // SAFETY: the table claims `len` bytes.
    let t = unsafe { bytes(addr, len) };
    (sum(t) == 0).then_some(t)
}

/// The RSDP: the boot loader's hint, the UEFI configuration table, or the BIOS area scan.
fn find_rsdp(hint: Option<u64>) -> Option<u64> {
    let valid = |a: u64| {
        // SAFETY: candidate addresses are in the low, identity-mapped firmware area.
        let b = unsafe { bytes(a, 20) };
        &b[..8] == b"RSD PTR " && sum(b) == 0
    };
    if let Some(h) = hint.filter(|&h| h != 0 && h < 1 << 32) {
        if valid(h) {
            return Some(h);
        }
    }
    #[cfg(target_os = "uefi")]
    {
        use uefi::table::cfg::ConfigTableEntry;
        let found = uefi::system::with_config_table(|t| {
            t.iter()
                .find(|e| e.guid == ConfigTableEntry::ACPI2_GUID)
                .or_else(|| t.iter().find(|e| e.guid == ConfigTableEntry::ACPI_GUID))
                .map(|e| e.address as u64)
        });
        if let Some(a) = found.filter(|&a| a < 1 << 32 && valid(a)) {
            return Some(a);
        }
        None
    }
    #[cfg(not(target_os = "uefi"))]
    {
        // ACPI 5.2.5.1: the first KiB of the EBDA, then 0xE0000-0xFFFFF, on 16-byte bounds.
        // SAFETY: BIOS data area word at 0x40E (EBDA segment).
        let ebda = (unsafe { core::ptr::read_unaligned(0x40e as *const u16) } as u64) << 4;
        let ranges = [(ebda, ebda + 1024), (0xe0000, 0x100000)];
        ranges
            .into_iter()
            .filter(|(s, _)| *s >= 0x400)
            .flat_map(|(s, e)| (s..e).step_by(16))
            .find(|&a| valid(a))
    }
}

/// Reads the FADT (and the DSDT's `_S5_`) once at boot; logs what it found.
pub fn init(rsdp_hint: Option<u64>) {
    let rsdp = find_rsdp(rsdp_hint);
    if let Some(r) = rsdp {
        RSDP.set(r);
    }
    match rsdp.and_then(probe) {
        Some(p) => {
            let (space, addr, value) = p.reset.unwrap_or((0xff, 0, 0));
            log::info!(
                "acpi: PM1a_CNT {:#x}, PM1b_CNT {:#x}, S5 SLP_TYP {}/{}, reset register {} {:#x} <- {:#x}",
                p.pm1a_cnt,
                p.pm1b_cnt,
                p.slp_typ.0,
                p.slp_typ.1,
                match space {
                    0 => "memory",
                    1 => "I/O",
                    0xff => "none",
                    _ => "other",
                },
                addr,
                value
            );
            POWER.set(p);
        }
        None => log::info!("acpi: no usable FADT: power off and reset use the PC fallbacks"),
    }
    // Where the AML names a VMBus device, its MMIO is read (and logged) now; elsewhere (QEMU)
    // a byte search is all it costs.
    let named = |t: &&[u8]| t.windows(5).any(|w| w == b"VMBus" || w == b"VMBUS");
    if aml_tables().is_some_and(|ts| ts.iter().any(named)) {
        let _ = vmbus_mmio();
    }
}

/// The VMBus device's MMIO in the DSDT and every SSDT (checked tables below 4 GiB); logs
/// what it found.
fn read_vmbus_mmio() -> Result<VmbusMmio, CrsError> {
    let t0 = super::timer::now_us();
    let mmio = vmbus_mmio_in_tables();
    let us = super::timer::now_us().saturating_sub(t0);
    match &mmio {
        Ok(m) => {
            let mut w: heapless::String<160> = heapless::String::new();
            for (i, r) in m.windows.iter().enumerate() {
                let _ = write!(w, "{}{r}", if i > 0 { ", " } else { "" });
            }
            log::info!(
                "acpi: VMBus device {} has MMIO {w} (from {}._CRS{}), {} ranges claimed by other devices; read in {us} us",
                m.device,
                m.source,
                if m.windows_dropped > 0 { ", some dropped" } else { "" },
                m.claims.len() + m.claims_dropped
            );
        }
        // A fact until synthvid needs the range (then `synthvid:` warns and points here).
        Err(e) => log::info!("acpi: no VMBus MMIO: {e} (read in {us} us)"),
    }
    mmio
}

fn vmbus_mmio_in_tables() -> Result<VmbusMmio, CrsError> {
    crs::vmbus_mmio(&aml_tables().ok_or(CrsError::NoTables)?)
}

/// The DSDT and the SSDTs (checked, below 4 GiB), at most 8.
fn aml_tables() -> Option<heapless::Vec<&'static [u8], 8>> {
    let mut tables = heapless::Vec::new();
    let sdt = root_table(*RSDP.get()?)?;
    let dsdt = sdt_entries(&sdt)
        // SAFETY: addresses from the validated RSDT/XSDT.
        .filter_map(|a| unsafe { table(a) })
        .find_map(parse_fadt)
        // SAFETY: address from the validated FADT.
        .and_then(|f| unsafe { table(f.dsdt) })
        .filter(|t| t.starts_with(b"DSDT"));
    tables.extend(dsdt);
    for t in sdt_entries(&sdt)
        // SAFETY: addresses from the validated RSDT/XSDT.
        .filter_map(|a| unsafe { table(a) })
        .filter(|t| t.starts_with(b"SSDT"))
    {
        if tables.push(t).is_err() {
            log::warn!("acpi: more than 8 DSDT/SSDTs: the rest are not read for VMBus");
            break;
        }
    }
    Some(tables)
}

/// The RSDT or XSDT: (table, entry size).
fn root_table(rsdp: u64) -> Option<(&'static [u8], usize)> {
    // SAFETY: validated RSDP (36 bytes for revision 2, of which 20 are checked).
    let r = unsafe { bytes(rsdp, 36) };
    let (list, entry) = match (r[15], u64_at(r, 24)) {
        (rev, Some(x)) if rev >= 2 && x != 0 => (x, 8usize),
        _ => (u32_at(r, 16)? as u64, 4usize),
    };
    // SAFETY: address from the validated RSDP.
    Some((unsafe { table(list) }?, entry))
}

/// The table addresses an RSDT (4-byte entries) or XSDT (8-byte entries) lists.
fn sdt_entries(&(sdt, entry): &(&'static [u8], usize)) -> impl Iterator<Item = u64> {
    sdt.get(36..)
        .unwrap_or(&[])
        .chunks_exact(entry)
        .filter_map(move |c| match entry {
            8 => u64_at(c, 0),
            _ => u32_at(c, 0).map(u64::from),
        })
}

fn probe(rsdp: u64) -> Option<Power> {
    let sdt = root_table(rsdp)?;
    let fadt = sdt_entries(&sdt)
        // SAFETY: addresses from the validated RSDT/XSDT.
        .filter_map(|a| unsafe { table(a) })
        .find_map(parse_fadt)?;
    // SAFETY: address from the validated FADT.
    let slp_typ = unsafe { table(fadt.dsdt) }
        .and_then(s5_slp_typ)
        .unwrap_or((0, 0));
    Some(Power {
        pm1a_cnt: fadt.pm1a_cnt,
        pm1b_cnt: fadt.pm1b_cnt,
        slp_typ,
        reset: fadt.reset,
    })
}

/// ACPI S5 through the PM1 control registers (SLP_TYP << 10 | SLP_EN). Returns only if there
/// was no FADT, or the write did not stop the machine.
pub fn poweroff() {
    if let Some(p) = POWER.get() {
        // SAFETY: the ports the FADT names for this purpose.
        unsafe {
            super::port::outw(p.pm1a_cnt, (p.slp_typ.0 as u16) << 10 | 1 << 13);
            if p.pm1b_cnt != 0 {
                super::port::outw(p.pm1b_cnt, (p.slp_typ.1 as u16) << 10 | 1 << 13);
            }
        }
    }
}

/// The FADT reset register. Returns only if there is none or it did not reset.
pub fn reset() {
    if let Some((space, addr, value)) = POWER.get().and_then(|p| p.reset) {
        // SAFETY: the register the FADT names for resetting the machine.
        unsafe {
            match space {
                1 if addr <= 0xffff => super::port::outb(addr as u16, value),
                0 if addr < 1 << 32 => core::ptr::write_volatile(addr as usize as *mut u8, value),
                _ => {}
            }
        }
    }
}
