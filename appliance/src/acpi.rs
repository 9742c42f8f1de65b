//! ACPI table parsing for power off and reset (ACPI 6.5: 5.2.5 RSDP, 5.2.7/5.2.8 RSDT/XSDT,
//! 5.2.9 FADT, 7.4.2 \\_S5, 20.2 AML encoding). Pure functions over byte slices, so the host
//! tests them; `arch::x86_64::acpi` finds the tables in memory and writes the registers.
//! `crs` reads the VMBus device's MMIO ranges from the DSDT/SSDT AML (synthvid VRAM without a
//! GOP framebuffer).

pub mod crs;

/// Sum of all bytes: 0 for a valid RSDP (first 20 bytes) or table.
pub fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

pub fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// What the FADT says about power off and reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FadtPower {
    pub pm1a_cnt: u16,
    pub pm1b_cnt: u16,
    /// RESET_REG: (address space 0 memory / 1 I/O, address, RESET_VALUE), if supported.
    pub reset: Option<(u8, u64, u8)>,
    /// The DSDT (X_DSDT when present).
    pub dsdt: u64,
}

/// FADT fields (ACPI 5.2.9, table 5.9): DSDT at 40, PM1a_CNT_BLK at 64, PM1b_CNT_BLK at 68,
/// Flags at 112 (bit 10 RESET_REG_SUP), RESET_REG (GAS) at 116, RESET_VALUE at 128, X_DSDT
/// at 140, X_PM1a_CNT_BLK (GAS) at 172.
pub fn parse_fadt(fadt: &[u8]) -> Option<FadtPower> {
    if fadt.get(..4)? != b"FACP" {
        return None;
    }
    let mut p = FadtPower {
        pm1a_cnt: u32_at(fadt, 64)? as u16,
        pm1b_cnt: u32_at(fadt, 68).unwrap_or(0) as u16,
        reset: None,
        dsdt: u32_at(fadt, 40)? as u64,
    };
    if fadt.len() >= 184 && fadt[172] == 1 {
        if let Some(a) = u64_at(fadt, 176).filter(|&a| a != 0 && a <= 0xffff) {
            p.pm1a_cnt = a as u16;
        }
    }
    let flags = u32_at(fadt, 112).unwrap_or(0);
    if fadt.len() >= 129 && flags & (1 << 10) != 0 {
        if let Some(addr) = u64_at(fadt, 120).filter(|&a| a != 0) {
            p.reset = Some((fadt[116], addr, fadt[128]));
        }
    }
    if let Some(x) = u64_at(fadt, 140).filter(|&a| a != 0) {
        p.dsdt = x;
    }
    Some(p)
}

/// The SLP_TYP values of the `_S5_` package in AML (DefName/DefPackage; data objects ZeroOp
/// 0x00, OneOp 0x01, BytePrefix 0x0A).
pub fn s5_slp_typ(dsdt: &[u8]) -> Option<(u8, u8)> {
    let at = dsdt.windows(4).position(|w| w == b"_S5_")?;
    let mut p = at + 4;
    if *dsdt.get(p)? != 0x12 {
        return None; // PackageOp
    }
    p += 1;
    let lead = *dsdt.get(p)?;
    p += 1 + (lead >> 6) as usize; // PkgLength: bits 7:6 = number of extra bytes
    p += 1; // NumElements
    let mut elem = || -> Option<u8> {
        let op = *dsdt.get(p)?;
        p += 1;
        match op {
            0x00 => Some(0),
            0x01 => Some(1),
            0x0a => {
                let v = *dsdt.get(p)?;
                p += 1;
                Some(v)
            }
            _ => None,
        }
    };
    let a = elem()?;
    let b = elem().unwrap_or(a);
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_package_forms() {
        // Name(_S5_, Package(4){Zero, Zero, Zero, Zero}) as QEMU writes it.
        assert_eq!(
            s5_slp_typ(b"\x08_S5_\x12\x06\x04\x00\x00\x00\x00"),
            Some((0, 0))
        );
        // BytePrefix values (SLP_TYP 5 and 7, as other firmware has them).
        assert_eq!(
            s5_slp_typ(b"..\x08_S5_\x12\x08\x04\x0a\x05\x0a\x07\x00\x00"),
            Some((5, 7))
        );
        assert_eq!(s5_slp_typ(b"\x08_S5_\x12"), None);
        assert_eq!(s5_slp_typ(b"\x08_S5_\x0a\x05"), None);
        assert_eq!(s5_slp_typ(b"no sleep states here"), None);
    }

    fn fadt(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[..4].copy_from_slice(b"FACP");
        f[40..44].copy_from_slice(&0x7fe_0040u32.to_le_bytes()); // DSDT
        f[64..68].copy_from_slice(&0x604u32.to_le_bytes()); // PM1a_CNT_BLK
        f
    }

    #[test]
    fn fadt_power_fields() {
        let mut f = fadt(244);
        f[112..116].copy_from_slice(&(1u32 << 10).to_le_bytes()); // RESET_REG_SUP
        f[116] = 1; // I/O space
        f[120..128].copy_from_slice(&0xcf9u64.to_le_bytes());
        f[128] = 0x0f;
        f[140..148].copy_from_slice(&0x7fe_1000u64.to_le_bytes()); // X_DSDT
        assert_eq!(
            parse_fadt(&f),
            Some(FadtPower {
                pm1a_cnt: 0x604,
                pm1b_cnt: 0,
                reset: Some((1, 0xcf9, 0x0f)),
                dsdt: 0x7fe_1000
            })
        );
        // X_PM1a_CNT_BLK (I/O GAS) wins over PM1a_CNT_BLK.
        f[172] = 1;
        f[176..184].copy_from_slice(&0x404u64.to_le_bytes());
        assert_eq!(parse_fadt(&f).unwrap().pm1a_cnt, 0x404);
    }

    #[test]
    fn old_short_fadt_and_garbage() {
        let f = fadt(116); // ACPI 1.0 size: no reset register, no X_ fields
        let p = parse_fadt(&f).unwrap();
        assert_eq!((p.pm1a_cnt, p.reset, p.dsdt), (0x604, None, 0x7fe_0040));
        assert_eq!(parse_fadt(b"FACP"), None);
        assert_eq!(parse_fadt(&[0u8; 200]), None);
        for n in 0..116 {
            let _ = parse_fadt(&f[..n]);
        }
    }
}
