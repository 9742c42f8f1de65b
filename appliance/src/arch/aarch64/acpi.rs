//! Just enough ACPI for an arm64 UEFI boot without a device tree (QEMU `virt` with AAVMF's
//! default ACPI mode; Hyper-V arm64 Gen2): the console from the SPCR table and the platform's
//! OEM ID (to tell QEMU, whose fixed `virt` map the canary may then assume, from others).
//!
//! Layouts: ACPI 6.5 section 5.2.5.3 (RSDP: "RSD PTR ", revision at 15, XsdtAddress at 24),
//! 5.2.6 (table header: signature, length at 4, OEMID at 10..16), 5.2.8 (XSDT: 64-bit
//! entries after the 36-byte header), 5.2.9 (FADT "FACP": ARM_BOOT_ARCH flags at 129, bit 0
//! PSCI_COMPLIANT, bit 1 PSCI_USE_HVC; Hypervisor Vendor Identity, 8 bytes at 268, FADT 6.0+); Microsoft "Serial Port Console Redirection Table"
//! (SPCR): interface type at 36, base address (Generic Address Structure, ACPI 5.2.3.2) at
//! 40 with the address at 44; PCI Firmware Specification 3.2 section 4.1.2 (MCFG: 16-byte
//! entries from 44: base address u64, segment u16, start bus u8, end bus u8).

/// SPCR interface types (Microsoft SPCR spec, table 3 / DBG2 "Serial Port Subtypes").
pub const SPCR_PL011: u8 = 0x03;
pub const SPCR_SBSA_32BIT: u8 = 0x0d;
pub const SPCR_SBSA: u8 = 0x0e;

/// Tables are refused beyond this size (a real XSDT or SPCR is a few hundred bytes).
const MAX_TABLE: u32 = 64 * 1024;
const HEADER_LEN: u32 = 36;

/// The GIC as the MADT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MadtGic {
    /// GICD structure's GIC version (0: not specified).
    pub version: u8,
    pub gicd: u64,
    /// Redistributor discovery range (base, length; length 0 = walk until GICR_TYPER.Last).
    pub gicr: Option<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct AcpiFacts {
    /// XSDT OEM ID ("BOCHS " on QEMU, "VRTUAL" on Hyper-V).
    pub oem_id: [u8; 6],
    /// SPCR console: interface type and MMIO base.
    pub console: Option<(u8, u64)>,
    /// FADT: PSCI is there, and through HVC (true) or SMC (false).
    pub psci_hvc: Option<bool>,
    /// MCFG: the ECAM base of segment 0 (starting at bus 0).
    pub ecam: Option<u64>,
    /// MADT: GIC version (from the GICD structure; 0 = "detect"), GICD base, and the first
    /// GICR discovery range (or, without one, the GICR base of the first GICC).
    pub gic: Option<MadtGic>,
    /// FADT Hypervisor Vendor Identity ("MsHyperV" on Hyper-V: Linux's primary arm64
    /// Hyper-V check, `arch/arm64/hyperv/mshyperv.c`), when the FADT is long enough.
    pub hypervisor_id: Option<[u8; 8]>,
}

/// Reads a byte range of physical memory (identity-mapped by the firmware).
///
/// # Safety
/// `[addr, addr + len)` must be readable.
unsafe fn bytes<'a>(addr: u64, len: u32) -> &'a [u8] {
    // SAFETY: forwarded from the caller.
    unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len as usize) }
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// A table's bytes if its header has `sig`, a sane length and a zero checksum.
///
/// # Safety
/// `addr` must point to an ACPI table the firmware published.
unsafe fn table<'a>(addr: u64, sig: &[u8; 4]) -> Option<&'a [u8]> {
    if addr == 0 {
        return None;
    }
    // SAFETY: a published table has at least its 36-byte header.
    let head = unsafe { bytes(addr, HEADER_LEN) };
    if &head[..4] != sig {
        return None;
    }
    let len = le32(head, 4)?;
    if !(HEADER_LEN..=MAX_TABLE).contains(&len) {
        return None;
    }
    // SAFETY: the header says the table is `len` bytes.
    let t = unsafe { bytes(addr, len) };
    (t.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0).then_some(t)
}

/// The GIC from the MADT's interrupt controller structures (ACPI 6.5 5.2.12: 2-byte
/// type/length headers from offset 44; GICC 0x0B with the GICR base at 60; GICD 0x0C with
/// the base at 8 and the version at 20; GICR 0x0E with the base at 4 and the length at 12).
fn madt_gic(madt: &[u8]) -> Option<MadtGic> {
    let (mut gicd, mut gicr, mut gicc_rd) = (None, None, None);
    let mut off = 44;
    while let (Some(&ty), Some(&len)) = (madt.get(off), madt.get(off + 1)) {
        let e = madt.get(off..off + len as usize)?;
        match ty {
            0x0b if gicc_rd.is_none() => gicc_rd = le64(e, 60).filter(|&a| a != 0),
            0x0c if gicd.is_none() => gicd = Some((*e.get(20)?, le64(e, 8)?)),
            0x0e if gicr.is_none() => gicr = Some((le64(e, 4)?, u64::from(le32(e, 12)?))),
            _ => {}
        }
        if len < 2 {
            return None;
        }
        off += len as usize;
    }
    let (version, gicd) = gicd?;
    Some(MadtGic {
        version,
        gicd,
        gicr: gicr.or(gicc_rd.map(|a| (a, 0))),
    })
}

/// Walks RSDP -> XSDT -> SPCR.
///
/// # Safety
/// `rsdp` must be the ACPI 2.0 RSDP address from the UEFI configuration table, with the
/// tables it points to identity-mapped.
pub unsafe fn read(rsdp: u64) -> Option<AcpiFacts> {
    if rsdp == 0 {
        return None;
    }
    // SAFETY: the ACPI 2.0 RSDP is 36 bytes.
    let r = unsafe { bytes(rsdp, 36) };
    if &r[..8] != b"RSD PTR " || r[15] < 2 {
        return None;
    }
    // SAFETY: the RSDP names the XSDT.
    let xsdt = unsafe { table(le64(r, 24)?, b"XSDT") }?;
    let mut f = AcpiFacts::default();
    f.oem_id.copy_from_slice(&xsdt[10..16]);
    for e in xsdt[HEADER_LEN as usize..].chunks_exact(8) {
        let addr = le64(e, 0)?;
        // SAFETY: XSDT entries are published tables.
        if let Some(fadt) = unsafe { table(addr, b"FACP") } {
            if let Some(flags) = fadt.get(129..131) {
                let flags = u16::from_le_bytes([flags[0], flags[1]]);
                if flags & 1 != 0 {
                    f.psci_hvc = Some(flags & 2 != 0);
                }
            }
            f.hypervisor_id = fadt.get(268..276).and_then(|b| b.try_into().ok());
        }
        // SAFETY: as above.
        if let Some(madt) = unsafe { table(addr, b"APIC") } {
            f.gic = madt_gic(madt);
        }
        // SAFETY: as above.
        if let Some(mcfg) = unsafe { table(addr, b"MCFG") } {
            f.ecam = mcfg[44.min(mcfg.len())..]
                .chunks_exact(16)
                .find(|e| e[8] == 0 && e[9] == 0 && e[10] == 0)
                .and_then(|e| le64(e, 0));
        }
        // SAFETY: as above.
        if let Some(spcr) = unsafe { table(addr, b"SPCR") } {
            let ty = *spcr.get(36)?;
            // Generic Address Structure: address space 0 = system memory.
            if *spcr.get(40)? == 0 {
                f.console = Some((ty, le64(spcr, 44)?));
            }
        }
    }
    Some(f)
}

/// Host tests: tables built in memory as firmware lays them out, read through their
/// addresses as the canary reads physical memory.
#[cfg(all(test, not(kernel)))]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A table with `sig`, OEM ID `oem` and `body` after the 36-byte header, checksummed.
    fn table_bytes(sig: &[u8; 4], oem: &[u8; 6], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t[8] = 1; // revision
        t[10..16].copy_from_slice(oem);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    fn spcr(ty: u8, space: u8, base: u64) -> Vec<u8> {
        let mut body = vec![0u8; 80 - 36];
        body[0] = ty; // offset 36
        body[4] = space; // GAS address space, offset 40
        body[5] = 32; // register bit width
        body[8..16].copy_from_slice(&base.to_le_bytes()); // offset 44
        table_bytes(b"SPCR", b"BOCHS ", &body)
    }

    fn fadt(arm_boot_flags: u16) -> Vec<u8> {
        let mut body = vec![0u8; 276 - 36];
        body[129 - 36..131 - 36].copy_from_slice(&arm_boot_flags.to_le_bytes());
        table_bytes(b"FACP", b"BOCHS ", &body)
    }

    fn xsdt(oem: &[u8; 6], entries: &[&Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        for e in entries {
            body.extend_from_slice(&(e.as_ptr() as u64).to_le_bytes());
        }
        table_bytes(b"XSDT", oem, &body)
    }

    fn rsdp(xsdt: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[15] = 2;
        r[24..32].copy_from_slice(&(xsdt.as_ptr() as u64).to_le_bytes());
        r
    }

    fn read_at(r: &[u8]) -> Option<AcpiFacts> {
        // SAFETY: `r` and every table it reaches are live vectors of this test.
        unsafe { read(r.as_ptr() as u64) }
    }

    #[test]
    fn finds_the_spcr_console_the_psci_conduit_and_the_oem_id() {
        let s = spcr(SPCR_PL011, 0, 0x0900_0000);
        let f = fadt(0b11); // PSCI compliant, through HVC
        let x = xsdt(b"BOCHS ", &[&f, &s]);
        let a = read_at(&rsdp(&x)).unwrap();
        assert_eq!(&a.oem_id, b"BOCHS ");
        assert_eq!(a.console, Some((SPCR_PL011, 0x0900_0000)));
        assert_eq!(a.psci_hvc, Some(true));
        assert_eq!(a.hypervisor_id, Some([0; 8]));
    }

    #[test]
    fn reads_the_fadt_hypervisor_vendor_identity() {
        let mut f = fadt(0b11);
        f[268..276].copy_from_slice(b"MsHyperV");
        let sum = f.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        f[9] = f[9].wrapping_sub(sum);
        let x = xsdt(b"VRTUAL", &[&f]);
        let a = read_at(&rsdp(&x)).unwrap();
        assert_eq!(a.hypervisor_id, Some(*b"MsHyperV"));
    }

    #[test]
    fn finds_the_ecam_of_segment_0_in_mcfg() {
        let mut body = vec![0u8; 8];
        for (base, seg, bus) in [(0x5000_0000u64, 1u16, 0u8), (0x40_1000_0000, 0, 0)] {
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&seg.to_le_bytes());
            body.extend_from_slice(&[bus, 0xff, 0, 0, 0, 0]);
        }
        let m = table_bytes(b"MCFG", b"BOCHS ", &body);
        let x = xsdt(b"BOCHS ", &[&m]);
        let a = read_at(&rsdp(&x)).unwrap();
        assert_eq!(a.ecam, Some(0x40_1000_0000));
    }

    #[test]
    fn finds_the_gic_in_the_madt() {
        let mut body = vec![0u8; 8]; // local interrupt controller address, flags
        let mut gicc = vec![0u8; 80];
        gicc[0] = 0x0b;
        gicc[1] = 80;
        gicc[60..68].copy_from_slice(&0x080a_0000u64.to_le_bytes());
        body.extend_from_slice(&gicc);
        let mut gicd = vec![0u8; 24];
        gicd[0] = 0x0c;
        gicd[1] = 24;
        gicd[8..16].copy_from_slice(&0x0800_0000u64.to_le_bytes());
        gicd[20] = 3;
        body.extend_from_slice(&gicd);
        let m = table_bytes(b"APIC", b"BOCHS ", &body);
        let x = xsdt(b"BOCHS ", &[&m]);
        let a = read_at(&rsdp(&x)).unwrap();
        let want = |gicr| MadtGic {
            version: 3,
            gicd: 0x0800_0000,
            gicr: Some(gicr),
        };
        assert_eq!(a.gic, Some(want((0x080a_0000, 0))));
        // With a GICR structure, its discovery range wins over the GICC's base.
        let mut gicr = vec![0u8; 16];
        gicr[0] = 0x0e;
        gicr[1] = 16;
        gicr[4..12].copy_from_slice(&0x080a_0000u64.to_le_bytes());
        gicr[12..16].copy_from_slice(&0xf6_0000u32.to_le_bytes());
        body.extend_from_slice(&gicr);
        let m = table_bytes(b"APIC", b"BOCHS ", &body);
        let x = xsdt(b"BOCHS ", &[&m]);
        let a = read_at(&rsdp(&x)).unwrap();
        assert_eq!(a.gic, Some(want((0x080a_0000, 0xf6_0000))));
        // A zero-length structure stops the walk instead of looping.
        body.extend_from_slice(&[0x0c, 0]);
        let m = table_bytes(b"APIC", b"BOCHS ", &body);
        let x = xsdt(b"BOCHS ", &[&m]);
        assert_eq!(read_at(&rsdp(&x)).unwrap().gic, None);
    }

    #[test]
    fn an_smc_conduit_and_an_sbsa_uart_are_told_apart() {
        let s = spcr(SPCR_SBSA, 0, 0xeffe_c000);
        let f = fadt(0b01); // PSCI compliant, SMC
        let x = xsdt(b"VRTUAL", &[&s, &f]);
        let a = read_at(&rsdp(&x)).unwrap();
        assert_eq!(&a.oem_id, b"VRTUAL");
        assert_eq!(a.console, Some((SPCR_SBSA, 0xeffe_c000)));
        assert_eq!(a.psci_hvc, Some(false));
    }

    #[test]
    fn no_psci_flag_and_an_io_port_console_give_nothing() {
        let s = spcr(SPCR_PL011, 1, 0x3f8); // address space 1: I/O ports
        let f = fadt(0);
        let x = xsdt(b"OTHER ", &[&s, &f]);
        let a = read_at(&rsdp(&x)).unwrap();
        assert_eq!(a.console, None);
        assert_eq!(a.psci_hvc, None);
    }

    #[test]
    fn a_table_with_a_bad_checksum_is_ignored() {
        let mut s = spcr(SPCR_PL011, 0, 0x0900_0000);
        s[50] ^= 1;
        let x = xsdt(b"BOCHS ", &[&s]);
        let a = read_at(&rsdp(&x)).unwrap();
        assert_eq!(a.console, None);
    }

    #[test]
    fn an_acpi_1_rsdp_or_a_bad_signature_is_refused() {
        let x = xsdt(b"BOCHS ", &[]);
        let mut r = rsdp(&x);
        r[15] = 0; // ACPI 1.0: no XSDT
        assert!(read_at(&r).is_none());
        let mut r = rsdp(&x);
        r[0] = b'X';
        assert!(read_at(&r).is_none());
        // SAFETY: address 0 is refused before any read.
        assert!(unsafe { read(0) }.is_none());
    }

    #[test]
    fn an_implausible_table_length_is_refused() {
        let mut x = xsdt(b"BOCHS ", &[]);
        x[4..8].copy_from_slice(&(MAX_TABLE + 1).to_le_bytes());
        assert!(read_at(&rsdp(&x)).is_none());
    }
}
