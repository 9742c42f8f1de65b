//! SMBIOS parsing against built and hostile tables (DSP0134 layouts, see smbios.rs).

use super::*;

fn fix_sum(b: &mut [u8], at: usize, range: core::ops::Range<usize>) {
    b[at] = 0;
    let s = b[range].iter().fold(0u8, |a, &x| a.wrapping_add(x));
    b[at] = 0u8.wrapping_sub(s);
}

/// A 2.1 entry point (§5.2.1) for a table at `addr` of `len` bytes, version `v`.
fn ep21(v: (u8, u8), addr: u32, len: u16) -> Vec<u8> {
    let mut b = vec![0u8; 0x1f];
    b[..4].copy_from_slice(b"_SM_");
    b[5] = 0x1f;
    b[6] = v.0;
    b[7] = v.1;
    b[0x10..0x15].copy_from_slice(b"_DMI_");
    b[0x16..0x18].copy_from_slice(&len.to_le_bytes());
    b[0x18..0x1c].copy_from_slice(&addr.to_le_bytes());
    fix_sum(&mut b, 0x15, 0x10..0x1f);
    fix_sum(&mut b, 4, 0..0x1f);
    b
}

/// A 3.0 entry point (§5.2.2).
fn ep30(v: (u8, u8), addr: u64, max: u32) -> Vec<u8> {
    let mut b = vec![0u8; 0x18];
    b[..5].copy_from_slice(b"_SM3_");
    b[6] = 0x18;
    b[7] = v.0;
    b[8] = v.1;
    b[0xa] = 1;
    b[0xc..0x10].copy_from_slice(&max.to_le_bytes());
    b[0x10..0x18].copy_from_slice(&addr.to_le_bytes());
    fix_sum(&mut b, 5, 0..0x18);
    b
}

fn structure(ty: u8, formatted: &[u8], strings: &[&str]) -> Vec<u8> {
    let mut b = vec![ty, (4 + formatted.len()) as u8, 0x34, 0x12];
    b.extend_from_slice(formatted);
    for s in strings {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }
    if strings.is_empty() {
        b.push(0);
    }
    b.push(0);
    b
}

/// QEMU-like: Type 0, Type 1 (manufacturer 1, product 2, version 3, serial 4, UUID), 127.
fn table() -> Vec<u8> {
    let mut t = structure(
        0,
        &[1, 2, 0, 0xe8, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        &["SeaBIOS", "rel-1.16"],
    );
    let mut f = vec![1, 2, 3, 4];
    // UUID 4c4c4544-004a-1038-804b-b4c04f4e4c31 as SMBIOS 2.6+ stores it.
    f.extend_from_slice(&[
        0x44, 0x45, 0x4c, 0x4c, 0x4a, 0x00, 0x38, 0x10, 0x80, 0x4b, 0xb4, 0xc0, 0x4f, 0x4e, 0x4c,
        0x31,
    ]);
    f.extend_from_slice(&[6, 0, 0]); // wake-up, SKU, family
    t.extend(structure(
        1,
        &f,
        &[
            "Microsoft Corporation",
            "Virtual Machine",
            "Hyper-V UEFI Release v4.1",
            "0000-0002-5283-8426",
        ],
    ));
    t.extend(structure(127, &[], &[]));
    t
}

#[test]
fn type_1_of_a_3_0_table_with_the_uuid_in_rfc_4122_order() {
    let t = table();
    let e = parse_entry(&ep30((3, 0), 0x7fff_0000, t.len() as u32)).unwrap();
    assert_eq!(e.version, (3, 0));
    assert!(e.is_64bit);
    let s = from_entry(e, |a, l| (a == 0x7fff_0000).then(|| &t[..l.min(t.len())])).unwrap();
    assert_eq!(s.manufacturer.as_str(), "Microsoft Corporation");
    assert_eq!(s.product.as_str(), "Virtual Machine");
    assert_eq!(s.serial.as_str(), "0000-0002-5283-8426");
    assert_eq!(
        format!("{}", capture::identity::UuidText(&s.uuid)),
        "4c4c4544-004a-1038-804b-b4c04f4e4c31"
    );
    assert_eq!(s.version, (3, 0));
}

#[test]
fn a_2_1_entry_point_is_found_by_the_scan_and_old_uuids_are_taken_as_stored() {
    let mut area = vec![0u8; 0x1_0000];
    // A decoy with the anchor but a bad checksum, then the real one.
    let mut bad = ep21((2, 5), 0x000e_0000, 100);
    bad[4] ^= 1;
    area[0x100..0x100 + bad.len()].copy_from_slice(&bad);
    let good = ep21((2, 5), 0x000e_1000, 200);
    area[0x9f40..0x9f40 + good.len()].copy_from_slice(&good);
    let e = scan(&area).unwrap();
    assert_eq!(
        (e.table_addr, e.table_len, e.version),
        (0xe_1000, 200, (2, 5))
    );
    // 2.5: the UUID bytes are not swapped.
    let raw = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    assert_eq!(uuid_from_table(&raw, (2, 5)), raw);
    assert_eq!(uuid_from_table(&raw, (2, 6))[..8], [4, 3, 2, 1, 6, 5, 8, 7]);
    // A 3.0 entry point wins over a 2.1 one anywhere in the area.
    let e3 = ep30((3, 2), 0x1234_5000, 4096);
    area[0xff00..0xff00 + e3.len()].copy_from_slice(&e3);
    assert!(scan(&area).unwrap().is_64bit);
    // Only the decoy: the error says why.
    let mut only_bad = vec![0u8; 0x400];
    only_bad[0x100..0x100 + bad.len()].copy_from_slice(&bad);
    assert_eq!(scan(&only_bad), Err(SmbiosError::BadChecksum));
    assert_eq!(scan(&[0u8; 64]), Err(SmbiosError::NoEntryPoint));
}

#[test]
fn entry_points_that_lie_are_errors() {
    let mut e = ep30((3, 0), 0x1000, 100);
    e[0x10] ^= 0x40;
    assert_eq!(parse_entry(&e), Err(SmbiosError::BadChecksum));
    let mut e = ep30((3, 0), 0x1000, 100);
    e[6] = 0xff; // length beyond the bytes and the spec
    assert_eq!(parse_entry(&e), Err(SmbiosError::BadEntryLength(0xff)));
    let e = ep30((3, 0), 0x1000, 100);
    assert!(parse_entry(&e[..10]).is_err(), "cut short");
    for cut in 0..e.len() {
        let _ = parse_entry(&e[..cut]);
    }
    let mut e = ep21((2, 8), 0x1000, 100);
    e[0x11] = b'X'; // "_DXI_"
    fix_sum(&mut e, 4, 0..0x1f);
    assert_eq!(parse_entry(&e), Err(SmbiosError::BadChecksum));
    let e = ep21((2, 8), 0x1000, 100);
    assert!(parse_entry(&e[..0x1e]).is_err());
    // Table length 0, or not readable.
    let z = parse_entry(&ep30((3, 0), 0x1000, 0)).unwrap();
    assert!(matches!(
        from_entry(z, |_, _| None),
        Err(SmbiosError::BadTable { .. })
    ));
    let z = parse_entry(&ep30((3, 0), 0x1000, 100)).unwrap();
    assert!(matches!(
        from_entry(z, |_, _| None),
        Err(SmbiosError::BadTable { .. })
    ));
}

#[test]
fn tables_that_lie_are_errors_never_reads_past_the_bytes() {
    let t = table();
    // A structure length below its header.
    let mut x = t.clone();
    x[1] = 3;
    assert_eq!(system_info(&x, (3, 0)), Err(SmbiosError::ShortStructure(0)));
    // A length running past the table.
    let mut x = t.clone();
    x[1] = 0xff;
    assert_eq!(system_info(&x, (3, 0)), Err(SmbiosError::Overrun(0)));
    // A string-set without its double NUL (cut before the end of Type 1's strings).
    let t1 = t.iter().position(|_| true).unwrap();
    let _ = t1;
    let type1_at = structure(
        0,
        &[1, 2, 0, 0xe8, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        &["SeaBIOS", "rel-1.16"],
    )
    .len();
    assert_eq!(
        system_info(&t[..type1_at + 0x1b + 10], (3, 0)),
        Err(SmbiosError::Overrun(type1_at))
    );
    // No Type 1.
    let only0 = [
        structure(0, &[1, 0, 0, 0], &["x"]),
        structure(127, &[], &[]),
    ]
    .concat();
    assert_eq!(system_info(&only0, (3, 0)), Err(SmbiosError::NoSystemInfo));
    // Type 1 after End-of-Table is not read.
    let late = [
        structure(127, &[], &[]),
        structure(1, &[1, 0, 0, 0], &["x"]),
    ]
    .concat();
    assert_eq!(system_info(&late, (3, 0)), Err(SmbiosError::NoSystemInfo));
    // Every prefix and every byte value at the first header: an answer, never a fault.
    for cut in 0..t.len() {
        let _ = system_info(&t[..cut], (3, 0));
    }
    for at in 0..8 {
        for v in [0u8, 1, 3, 4, 0x7f, 0x80, 0xff] {
            let mut x = t.clone();
            x[at] = v;
            let _ = system_info(&x, (3, 0));
        }
    }
}

#[test]
fn strings_that_lie_are_empty_and_text_is_bounded() {
    // String numbers past the set, 0, and a 2.0-sized Type 1 (no UUID); a non-ASCII and a
    // control byte; a 100-character serial.
    let long = "S".repeat(100);
    let t = [
        structure(1, &[9, 0, 0, 2], &["a\u{e9}\x07b", &long]),
        structure(127, &[], &[]),
    ]
    .concat();
    let s = system_info(&t, (2, 0)).unwrap();
    assert_eq!(s.manufacturer.as_str(), "", "string 9 of 2");
    assert_eq!(s.product.as_str(), "", "string 0 = none");
    assert_eq!(s.serial.len(), capture::identity::SMBIOS_STR_CAP);
    assert_eq!(s.uuid, [0; 16], "2.0 has no UUID");
    let t = [
        structure(1, &[1, 0, 0, 0], &["a\u{e9}\x07b  "]),
        structure(127, &[], &[]),
    ]
    .concat();
    assert_eq!(
        system_info(&t, (2, 0)).unwrap().manufacturer.as_str(),
        "a???b"
    );
}
