//! GUIDs in VMBus wire order: the first three fields little-endian (ref §4.8).

/// A GUID as its 16 wire bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From the textual fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

impl core::fmt::Debug for Guid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

impl core::fmt::Display for Guid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

/// netvsc, `f8615163-df3e-46c5-913f-f2d2f965ed0e` (ref §4.8).
pub const NET: Guid = Guid::from_fields(
    0xf861_5163,
    0xdf3e,
    0x46c5,
    [0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e],
);
/// synthvid, `da0a7802-e377-4aac-8e77-0558eb1073f8` (ref §4.8, Linux `HV_SYNTHVID_GUID`).
pub const SYNTHVID: Guid = Guid::from_fields(
    0xda0a_7802,
    0xe377,
    0x4aac,
    [0x8e, 0x77, 0x05, 0x58, 0xeb, 0x10, 0x73, 0xf8],
);
/// Shutdown IC, `0e0b6031-5213-4934-818b-38d90ced39db` (ref §4.8).
pub const SHUTDOWN_IC: Guid = Guid::from_fields(
    0x0e0b_6031,
    0x5213,
    0x4934,
    [0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39, 0xdb],
);
/// Heartbeat IC, `57164f39-9115-4e78-ab55-382f3bd5422d` (ref §4.8).
pub const HEARTBEAT_IC: Guid = Guid::from_fields(
    0x5716_4f39,
    0x9115,
    0x4e78,
    [0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d],
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn synthvid_guid_is_little_endian_on_the_wire() {
        // ref §4.8: synthvid is `02 78 0a da 77 e3 ac 4a ...` on the wire.
        assert_eq!(
            &SYNTHVID.0[..8],
            &[0x02, 0x78, 0x0a, 0xda, 0x77, 0xe3, 0xac, 0x4a]
        );
        assert_eq!(
            format!("{SYNTHVID}"),
            "da0a7802-e377-4aac-8e77-0558eb1073f8"
        );
        assert_eq!(format!("{NET}"), "f8615163-df3e-46c5-913f-f2d2f965ed0e");
    }
}
