//! VMBus protocol versions (ref §4.1; Linux `include/linux/hyperv.h` `VERSION_*`, OpenVMM
//! `vmbus_core::protocol::Version`).

/// A VMBus version, encoded `major << 16 | minor` (ref §4.1).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct Version(pub u32);

impl Version {
    pub const fn new(major: u16, minor: u16) -> Self {
        Self((major as u32) << 16 | minor as u32)
    }
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub const fn minor(self) -> u16 {
        self.0 as u16
    }

    /// WS2008 (OpenVMM `V1`).
    pub const WS2008: Self = Self::new(0, 13);
    pub const WIN7: Self = Self::new(1, 1);
    pub const WIN8: Self = Self::new(2, 4);
    /// WS2012R2; the minimum for UNLOAD in Linux (`VERSION_WIN8_1`).
    pub const WIN8_1: Self = Self::new(3, 0);
    pub const WIN10: Self = Self::new(4, 0);
    pub const WIN10_V4_1: Self = Self::new(4, 1);
    /// From here INITIATE_CONTACT goes to connection id 4 (ref §4.2).
    pub const WIN10_V5: Self = Self::new(5, 0);
    pub const WIN10_V5_1: Self = Self::new(5, 1);
    pub const WIN10_V5_2: Self = Self::new(5, 2);
    /// WS2022 "Iron".
    pub const WIN10_V5_3: Self = Self::new(5, 3);
    /// "Copper" (Confidential VMBus; needs feature flags and VersionResponse2: not offered).
    pub const COPPER: Self = Self::new(6, 0);

    /// Whether INITIATE_CONTACT uses connection id 4 and `msg_sint` (≥ 5.0), or connection id 1
    /// and the interrupt page (ref §4.2).
    pub const fn uses_message_connection_id_4(self) -> bool {
        self.0 >= Self::WIN10_V5.0
    }
    /// UNLOAD is only sent at ≥ 3.0 (ref §2.4, Linux `vmbus_initiate_unload`).
    pub const fn supports_unload(self) -> bool {
        self.0 >= Self::WIN8_1.0
    }
}

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// The versions this crate negotiates, newest first, down to 3.0 (ref §4.1: Linux tries
/// newest → oldest; canary needs UNLOAD, hence ≥ 3.0).
pub const SUPPORTED: &[Version] = &[
    Version::WIN10_V5_3,
    Version::WIN10_V5_2,
    Version::WIN10_V5_1,
    Version::WIN10_V5,
    Version::WIN10_V4_1,
    Version::WIN10,
    Version::WIN8_1,
];
