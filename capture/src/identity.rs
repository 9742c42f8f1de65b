//! Schema 1.2's group: who crashed. The SMBIOS System Information (Type 1) identity and the
//! host-provided items of Hyper-V's KVP data exchange (pool 3, `KVP_POOL_AUTO_EXTERNAL`).
//!
//! Encoded after [`crate::record::Ext1`] as a third postcard value (see
//! [`crate::record::CrashRecord::decode`]). Every string is bounded and truncated at a char
//! boundary ([`crate::record::truncate_to`]); nothing here is required: a guest without SMBIOS
//! tables or without the KVP channel records why ([`SmbiosStatus`], [`KvpStatus`]).

use core::fmt;

use heapless::String;
use serde::{Deserialize, Serialize};

/// Capacity of each SMBIOS string ([`Smbios::manufacturer`], `product`, `serial`) in bytes.
/// Hyper-V writes "Microsoft Corporation", "Virtual Machine" and a 30-character serial
/// ("0000-0002-…"), well within it.
pub const SMBIOS_STR_CAP: usize = 48;
/// Capacity of [`Kvp::vm_name`] and [`Kvp::host_name`] in bytes.
pub const KVP_NAME_CAP: usize = 64;
/// Capacity of [`Kvp::vm_id`] in bytes (a GUID in text form is 36).
pub const KVP_ID_CAP: usize = 40;
/// Capacity of [`Kvp::host_fqdn`] in bytes.
pub const KVP_FQDN_CAP: usize = 96;

/// What the SMBIOS System Information structure (DSP0134 §7.2, Type 1) says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Smbios {
    /// The entry point's SMBIOS version (major, minor).
    pub version: (u8, u8),
    /// The system UUID in RFC 4122 order (the order of its text form): the table's first three
    /// fields are little endian from SMBIOS 2.6 (DSP0134 §7.2.1) and are swapped on reading.
    pub uuid: [u8; 16],
    /// Manufacturer string (Type 1 offset 04h).
    pub manufacturer: String<SMBIOS_STR_CAP>,
    /// Product Name string (offset 05h).
    pub product: String<SMBIOS_STR_CAP>,
    /// Serial Number string (offset 07h).
    pub serial: String<SMBIOS_STR_CAP>,
}

/// The KVP pool 3 (host-provided, "auto external") items the canary keeps. Empty when the
/// host did not send the item.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Kvp {
    /// `VirtualMachineName`.
    pub vm_name: String<KVP_NAME_CAP>,
    /// `VirtualMachineId`.
    pub vm_id: String<KVP_ID_CAP>,
    /// `PhysicalHostName`.
    pub host_name: String<KVP_NAME_CAP>,
    /// `PhysicalHostNameFullyQualified`.
    pub host_fqdn: String<KVP_FQDN_CAP>,
}

/// Where [`Identity::smbios`] came from, or why it is absent (open enum, one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum SmbiosStatus {
    /// Not read (a record older than 1.2, or the appliance did not look) (0).
    #[default]
    NotRead,
    /// Read from a valid table (1).
    Found,
    /// No entry point (no firmware tables: direct boot without a BIOS) (2).
    NoEntryPoint,
    /// An entry point or table failed its checks (checksum, lengths, terminators) (3).
    Invalid,
    /// A valid table without a Type 1 structure (4).
    NoSystemInfo,
    /// A code this build does not know.
    Other(u8),
}

/// How the KVP exchange went (open enum, one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum KvpStatus {
    /// Not tried (a record older than 1.2, or no VMBus) (0).
    #[default]
    NotRead,
    /// The host sent pool 3 items (1).
    Received,
    /// The host offers no KVP channel (2).
    NotOffered,
    /// The channel opened but the host sent no pool 3 item before the deadline (3).
    Silent,
    /// The channel could not be opened or negotiated (4).
    Failed,
    /// A code this build does not know.
    Other(u8),
}

open_u8!(SmbiosStatus { NotRead = 0, Found = 1, NoEntryPoint = 2, Invalid = 3, NoSystemInfo = 4 });
open_u8!(KvpStatus { NotRead = 0, Received = 1, NotOffered = 2, Silent = 3, Failed = 4 });

impl SmbiosStatus {
    /// Lowercase words for people.
    pub fn describe(self) -> &'static str {
        match self {
            SmbiosStatus::NotRead => "not read",
            SmbiosStatus::Found => "found",
            SmbiosStatus::NoEntryPoint => "no SMBIOS entry point",
            SmbiosStatus::Invalid => "invalid SMBIOS table",
            SmbiosStatus::NoSystemInfo => "no System Information structure",
            SmbiosStatus::Other(_) => "unknown status",
        }
    }
}

impl KvpStatus {
    /// Lowercase words for people.
    pub fn describe(self) -> &'static str {
        match self {
            KvpStatus::NotRead => "not read",
            KvpStatus::Received => "received",
            KvpStatus::NotOffered => "no KVP channel",
            KvpStatus::Silent => "host sent nothing",
            KvpStatus::Failed => "KVP channel failed",
            KvpStatus::Other(_) => "unknown status",
        }
    }
}

/// The fields schema 1.2 appends.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Identity {
    /// Whether SMBIOS was read, and how it went.
    pub smbios_status: SmbiosStatus,
    /// The System Information structure, when [`SmbiosStatus::Found`].
    pub smbios: Option<Smbios>,
    /// Whether KVP was read, and how it went.
    pub kvp_status: KvpStatus,
    /// The host-provided items (empty strings for items the host did not send).
    pub kvp: Kvp,
}

impl Identity {
    /// An empty group (usable in a `static`).
    pub const fn empty() -> Self {
        Identity {
            smbios_status: SmbiosStatus::NotRead,
            smbios: None,
            kvp_status: KvpStatus::NotRead,
            kvp: Kvp {
                vm_name: String::new(),
                vm_id: String::new(),
                host_name: String::new(),
                host_fqdn: String::new(),
            },
        }
    }
}

/// Displays 16 bytes in RFC 4122 order as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub struct UuidText<'a>(pub &'a [u8; 16]);

impl fmt::Display for UuidText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

// Maximal postcard size (see record.rs): each string is a varint length (one byte below 128)
// plus its bytes; the UUID is a fixed array; each status and the Option tag one byte.
const fn str_max(cap: usize) -> usize {
    (if cap < 128 { 1 } else { 2 }) + cap
}
/// Upper bound of the encoded [`Identity`].
pub(crate) const IDENTITY_MAX_LEN: usize = 1
    + 1
    + 2
    + 16
    + 3 * str_max(SMBIOS_STR_CAP)
    + 1
    + 2 * str_max(KVP_NAME_CAP)
    + str_max(KVP_ID_CAP)
    + str_max(KVP_FQDN_CAP);
