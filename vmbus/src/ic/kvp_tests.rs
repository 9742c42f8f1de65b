//! KVP message parsing: golden layout, hostile sizes, text decoding.

use super::*;
use std::string::ToString;

const V: Negotiated = Negotiated {
    framework: IcVersion::new(3, 0),
    message: IcVersion::new(4, 0),
};

#[test]
fn a_set_round_trips_and_sits_at_the_documented_offsets() {
    let mut b = [0u8; 4096];
    let n = emit_set(
        &mut b,
        V,
        9,
        Pool::AUTO_EXTERNAL,
        "PhysicalHostName",
        SetValue::Str("HV-HOST-12"),
        MESSAGE_LEN,
    )
    .unwrap();
    assert_eq!(n, ICMSG_HDR + MESSAGE_LEN);
    let m = &b[ICMSG_HDR..n];
    assert_eq!((Op(m[0]), Pool(m[1])), (Op::SET, Pool::AUTO_EXTERNAL));
    assert_eq!(&m[4..8], &1u32.to_le_bytes(), "REG_SZ");
    assert_eq!(&m[8..12], &34u32.to_le_bytes(), "16 UTF-16 units + NUL");
    assert_eq!(&m[12..16], &22u32.to_le_bytes());
    assert_eq!(&m[16..18], &[b'P', 0]);
    assert_eq!(&m[528..530], &[b'H', 0]);
    let s = parse_set(m).unwrap();
    assert_eq!(s.pool, Pool::AUTO_EXTERNAL);
    assert_eq!(s.key.as_str(), "PhysicalHostName");
    assert_eq!(s.value.as_str(), "HV-HOST-12");
}

#[test]
fn integers_become_decimal_text() {
    let mut b = [0u8; 4096];
    for (v, want) in [
        (SetValue::U32(0), "0"),
        (SetValue::U32(u32::MAX), "4294967295"),
        (SetValue::U64(u64::MAX), "18446744073709551615"),
    ] {
        let n = emit_set(
            &mut b,
            V,
            0,
            Pool::AUTO_EXTERNAL,
            "HostingSystemOsMajor",
            v,
            0,
        )
        .unwrap();
        assert_eq!(parse_set(&b[ICMSG_HDR..n]).unwrap().value.as_str(), want);
    }
}

#[test]
fn hostile_sizes_are_errors_never_reads_past_the_message() {
    let mut b = [0u8; 4096];
    let n = emit_set(
        &mut b,
        V,
        0,
        Pool::AUTO_EXTERNAL,
        "VirtualMachineName",
        SetValue::Str("vm"),
        0,
    )
    .unwrap();
    let m = b[ICMSG_HDR..n].to_vec();
    // key_size beyond the maximum, and odd.
    for ks in [514u32, 0xffff_ffff, 3] {
        let mut x = m.clone();
        x[8..12].copy_from_slice(&ks.to_le_bytes());
        assert!(matches!(
            parse_set(&x),
            Err(KvpMsgError::BadSize { what: "key", .. })
        ));
    }
    let mut x = m.clone();
    x[12..16].copy_from_slice(&2050u32.to_le_bytes());
    assert!(matches!(
        parse_set(&x),
        Err(KvpMsgError::BadSize { what: "value", .. })
    ));
    // Cut short: inside the header, the key, the value.
    for cut in [0, 3, 15, 20, 530] {
        assert!(parse_set(&m[..cut]).is_err(), "cut {cut}");
    }
    // Every prefix and every byte value at every header offset: no panic.
    for cut in 0..m.len().min(600) {
        let _ = parse_set(&m[..cut]);
    }
    for at in 0..16 {
        for v in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut x = m.clone();
            x[at] = v;
            let _ = parse_set(&x);
        }
    }
}

#[test]
fn text_decodes_utf16_with_replacement_and_truncates_whole_chars() {
    // "a", an unpaired high surrogate, "€", NUL, then junk that is never read.
    let units: [u16; 5] = [0x61, 0xd800, 0x20ac, 0, 0x62];
    let b: std::vec::Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
    let t: Text<16> = Text::from_utf16le(&b);
    assert_eq!(t.as_str(), "a\u{fffd}€");
    // 4 bytes of room: "a" (1) + U+FFFD (3) fit, "€" does not.
    let t: Text<4> = Text::from_utf16le(&b);
    assert_eq!(t.as_str(), "a\u{fffd}");
    // Odd trailing byte ignored.
    let t: Text<8> = Text::from_utf16le(&[0x61, 0, 0x62]);
    assert_eq!(t.as_str(), "a");
    assert_eq!(format_args!("{:?}", t).to_string(), "\"a\"");
}

/// xorshift64*: reproducible noise without a dependency.
fn noise(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn random_and_mutated_messages_never_panic_and_always_get_a_bounded_answer() {
    struct Null;
    impl DeviceChannel for Null {
        fn send(&self, _: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
            Ok(())
        }
        fn try_send(&self, _: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
            Ok(())
        }
        fn recv<'b>(
            &self,
            _: &'b mut [u8],
        ) -> Result<Option<crate::device::Packet<'b>>, ChannelError> {
            Ok(None)
        }
        fn signal(&self) {}
        fn set_interrupt_mask(&self, _: bool) {}
    }
    let mut dev = KvpDevice::new(Null);
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut good = [0u8; 4096];
    let n = emit_set(
        &mut good,
        V,
        1,
        Pool::AUTO_EXTERNAL,
        "VirtualMachineName",
        SetValue::Str("vm"),
        0,
    )
    .unwrap();
    let mut neg = [0u8; 256];
    let nn = super::super::emit_negotiate_request(
        &mut neg,
        1,
        &[IcVersion::new(3, 0)],
        &[IcVersion::new(4, 0)],
    )
    .unwrap();
    for i in 0..20_000u32 {
        // Half mutated valid messages (a few bytes of the headers and sizes), half noise.
        let mut m: std::vec::Vec<u8> = match i % 3 {
            0 => good[..n].to_vec(),
            1 => neg[..nn].to_vec(),
            _ => (0..(noise(&mut seed) % 700) as usize)
                .map(|_| noise(&mut seed) as u8)
                .collect(),
        };
        for _ in 0..(noise(&mut seed) % 4) {
            if m.is_empty() {
                break;
            }
            let at = (noise(&mut seed) % m.len().min(64) as u64) as usize;
            m[at] = noise(&mut seed) as u8;
        }
        if i % 5 == 0 {
            let cut = (noise(&mut seed) as usize) % (m.len() + 1);
            m.truncate(cut);
        }
        let len = m.len();
        // Room for the negotiate answer's versions.
        m.resize(len + 64, 0);
        if let Some(out) = dev.handle(&mut m[..len]) {
            assert!(out <= len, "answer within the message's bytes");
        }
        let _ = parse_set(&m[ICMSG_HDR.min(len)..len]);
    }
    assert!(dev.stats().messages == 20_000);
    assert!(dev.items().vm_name.as_str().len() <= ITEM_CAP);
}
