//! SMBIOS: who the machine says it is (the System Information structure: manufacturer,
//! product, serial, UUID). Hyper-V and Azure put the VM's identity there.
//!
//! References are to DMTF DSP0134 (SMBIOS Reference Specification) 3.x:
//! - §5.2.1 SMBIOS 2.1 (32-bit) entry point (`_SM_`), §5.2.2 SMBIOS 3.0 (64-bit) entry point
//!   (`_SM3_`), and how they are found: on non-UEFI x86 a 16-byte-aligned scan of physical
//!   0xF0000-0xFFFFF; on UEFI the configuration table (`SMBIOS_TABLE_GUID`,
//!   `SMBIOS3_TABLE_GUID`).
//! - §6.1.2 structure header (type, length of the formatted area, handle) and the string-set
//!   that follows (NUL-terminated strings, ended by a second NUL; two NULs when empty).
//! - §6.1.3 text strings: 1-based numbers, 0 = none.
//! - §7.2 System Information (Type 1): 04h manufacturer, 05h product, 06h version, 07h serial,
//!   08h UUID (16 bytes, from 2.1: the formatted area is at least 19h long).
//! - §7.2.1 System UUID: from 2.6 the first three fields (time_low, time_mid,
//!   time_hi_and_version) are little endian; all 00h = not present, all FFh = not set.
//! - §7.46 End-of-Table (Type 127).
//!
//! Every read is bounded and checked: a table that lies (checksum, lengths, a structure
//! running past the table, a string-set without its terminator) is an error, never a read
//! outside the bytes handed in. The parser is portable (host-tested); the kernel part only
//! finds the bytes (`read_*`, kernel builds).
//!
//! No crate: the no_std `dmidecode` crate decodes ~30 structure types the canary never uses
//! (image size), and how it fails on a hostile table would need these same tests; Type 1 and
//! the two entry points are ~200 lines here.

// arm64 direct boot has no firmware tables: only the parser's tests and UEFI use it there.
#![cfg_attr(
    all(kernel, not(target_arch = "x86_64"), not(target_os = "uefi")),
    allow(dead_code)
)]

use capture::identity::{Smbios, SmbiosStatus};
use capture::record::truncate_to;

/// Why the SMBIOS tables could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SmbiosError {
    /// No entry point was found.
    #[error("no SMBIOS entry point")]
    NoEntryPoint,
    /// The entry point is shorter than its length field, or the length is wrong.
    #[error("entry point length {0} is invalid")]
    BadEntryLength(usize),
    /// An entry point checksum does not sum to zero.
    #[error("entry point checksum fails")]
    BadChecksum,
    /// The structure table is not where the entry point says, or too large to read.
    #[error("structure table at {addr:#x} ({len} bytes) cannot be read")]
    BadTable {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A structure's length field is below its 4-byte header.
    #[error("structure at offset {0} has a length below 4")]
    ShortStructure(usize),
    /// A structure (or its string-set) runs past the end of the table.
    #[error("structure at offset {0} runs past the table")]
    Overrun(usize),
    /// No Type 1 structure in the table.
    #[error("no System Information (Type 1) structure")]
    NoSystemInfo,
}

impl SmbiosError {
    /// The record's status for this error.
    pub fn status(self) -> SmbiosStatus {
        match self {
            SmbiosError::NoEntryPoint => SmbiosStatus::NoEntryPoint,
            SmbiosError::NoSystemInfo => SmbiosStatus::NoSystemInfo,
            _ => SmbiosStatus::Invalid,
        }
    }
}

/// What an entry point says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// SMBIOS version (major, minor).
    pub version: (u8, u8),
    /// Physical address of the structure table.
    pub table_addr: u64,
    /// Its length (2.1: exact; 3.0: the maximum size).
    pub table_len: u32,
    /// 3.0 (`_SM3_`) entry point.
    pub is_64bit: bool,
}

/// Largest structure table the canary reads (2.1 tables are at most 64 KiB by their u16
/// length; 3.0 ones only give a maximum).
pub const MAX_TABLE: u32 = 64 * 1024;

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an entry point at the start of `b` (at most 32 bytes are looked at).
pub fn parse_entry(b: &[u8]) -> Result<EntryPoint, SmbiosError> {
    if b.starts_with(b"_SM3_") {
        // §5.2.2: 05h checksum, 06h length (18h), 07h major, 08h minor, 0Ch u32 maximum
        // table size, 10h u64 table address.
        let len = usize::from(*b.get(6).ok_or(SmbiosError::BadEntryLength(b.len()))?);
        if !(0x18..=0x20).contains(&len) || b.len() < len {
            return Err(SmbiosError::BadEntryLength(len));
        }
        if !checksum_ok(&b[..len]) {
            return Err(SmbiosError::BadChecksum);
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[0x10..0x18]);
        return Ok(EntryPoint {
            version: (b[7], b[8]),
            table_addr: u64::from_le_bytes(a),
            table_len: le32(b, 0x0c),
            is_64bit: true,
        });
    }
    if b.starts_with(b"_SM_") {
        // §5.2.1: 04h checksum, 05h length (1Fh; 1Eh in SMBIOS 2.1's erratum), 06h major,
        // 07h minor, 10h "_DMI_", 15h intermediate checksum (over 10h-1Eh), 16h u16 table
        // length, 18h u32 table address.
        let len = usize::from(*b.get(5).ok_or(SmbiosError::BadEntryLength(b.len()))?);
        if !(0x1e..=0x20).contains(&len) || b.len() < len.max(0x1f) {
            return Err(SmbiosError::BadEntryLength(len));
        }
        if !checksum_ok(&b[..len]) || &b[0x10..0x15] != b"_DMI_" || !checksum_ok(&b[0x10..0x1f]) {
            return Err(SmbiosError::BadChecksum);
        }
        return Ok(EntryPoint {
            version: (b[6], b[7]),
            table_addr: u64::from(le32(b, 0x18)),
            table_len: u32::from(le16(b, 0x16)),
            is_64bit: false,
        });
    }
    Err(SmbiosError::NoEntryPoint)
}

/// Scans `area` (the bytes of physical `base..base + area.len()`) on 16-byte boundaries for
/// an entry point, preferring a valid `_SM3_` over a valid `_SM_` (§5.2: a 3.0 table may
/// come with a 2.1 entry point for old software). Invalid candidates are skipped.
#[cfg_attr(target_os = "uefi", allow(dead_code))]
pub fn scan(area: &[u8]) -> Result<EntryPoint, SmbiosError> {
    let mut v2 = None;
    let mut seen_invalid = None;
    for off in (0..area.len()).step_by(16) {
        match parse_entry(&area[off..]) {
            Ok(e) if e.is_64bit => return Ok(e),
            Ok(e) => {
                v2.get_or_insert(e);
            }
            Err(SmbiosError::NoEntryPoint) => {}
            Err(e) => {
                seen_invalid.get_or_insert(e);
            }
        }
    }
    v2.ok_or(seen_invalid.unwrap_or(SmbiosError::NoEntryPoint))
}

/// One structure of the table: its formatted area and its string-set.
struct Structure<'a> {
    ty: u8,
    formatted: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Structure<'a> {
    /// String number `n` (§6.1.3: 1-based; 0 or past the set: none).
    fn string(&self, n: u8) -> Option<&'a [u8]> {
        if n == 0 {
            return None;
        }
        self.strings
            .split(|&c| c == 0)
            .take_while(|s| !s.is_empty())
            .nth(usize::from(n) - 1)
    }
    fn byte(&self, at: usize) -> u8 {
        self.formatted.get(at).copied().unwrap_or(0)
    }
}

/// Walks the structures of `table`: calls `f` on each until it returns true, the
/// End-of-Table structure (§7.46), or the end of the bytes. Returns whether `f` stopped it.
fn walk<'a>(
    table: &'a [u8],
    mut f: impl FnMut(&Structure<'a>) -> bool,
) -> Result<bool, SmbiosError> {
    let mut at = 0;
    // Each structure takes at least 6 bytes (4 header + 2 NULs): the loop is bounded by the
    // table's length.
    while at + 4 <= table.len() {
        let ty = table[at];
        let len = usize::from(table[at + 1]);
        if len < 4 {
            return Err(SmbiosError::ShortStructure(at));
        }
        let fend = at + len;
        if fend > table.len() {
            return Err(SmbiosError::Overrun(at));
        }
        // §6.1.2: the string-set ends at the first double NUL (an empty set is two NULs).
        let rest = &table[fend..];
        let send = rest
            .windows(2)
            .position(|w| w == [0, 0])
            .ok_or(SmbiosError::Overrun(at))?;
        let s = Structure {
            ty,
            formatted: &table[at..fend],
            strings: &rest[..send + 1],
        };
        if f(&s) {
            return Ok(true);
        }
        if ty == 127 {
            return Ok(false);
        }
        at = fend + send + 2;
    }
    Ok(false)
}

/// Bytes of an SMBIOS string as text: printable ASCII kept, anything else (control bytes,
/// non-ASCII: DSP0134 strings are not required to be UTF-8) as '?'; trailing blanks cut.
fn text<const N: usize>(b: Option<&[u8]>) -> heapless::String<N> {
    let mut out = heapless::String::<N>::new();
    for &c in b.unwrap_or(&[]) {
        let ch = if (0x20..0x7f).contains(&c) {
            char::from(c)
        } else {
            '?'
        };
        if out.push(ch).is_err() {
            break;
        }
    }
    truncate_to::<N>(out.trim_end())
}

/// The UUID at Type 1 offset 08h in RFC 4122 byte order (§7.2.1: from 2.6 the first three
/// fields are little endian, so they are swapped; older tables are taken as stored).
pub fn uuid_from_table(raw: &[u8; 16], version: (u8, u8)) -> [u8; 16] {
    let mut u = *raw;
    if version >= (2, 6) {
        u[0..4].reverse();
        u[4..6].reverse();
        u[6..8].reverse();
    }
    u
}

/// The System Information structure of `table` (version from its entry point).
pub fn system_info(table: &[u8], version: (u8, u8)) -> Result<Smbios, SmbiosError> {
    let mut found = None;
    walk(table, |s| {
        if s.ty != 1 {
            return false;
        }
        let mut raw = [0u8; 16];
        // §7.2: the UUID is there when the formatted area reaches 18h (2.1+).
        if s.formatted.len() >= 0x18 {
            raw.copy_from_slice(&s.formatted[0x08..0x18]);
        }
        found = Some(Smbios {
            version,
            uuid: uuid_from_table(&raw, version),
            manufacturer: text(s.string(s.byte(0x04))),
            product: text(s.string(s.byte(0x05))),
            serial: text(s.string(s.byte(0x07))),
        });
        true
    })?;
    found.ok_or(SmbiosError::NoSystemInfo)
}

/// Reads the identity from an entry point and a way to read physical memory
/// (`read(addr, len)` gives the bytes, or `None` when the range is not readable).
pub fn from_entry<'m>(
    e: EntryPoint,
    read: impl FnOnce(u64, usize) -> Option<&'m [u8]>,
) -> Result<Smbios, SmbiosError> {
    let len = e.table_len.min(MAX_TABLE);
    if len == 0 {
        return Err(SmbiosError::BadTable {
            addr: e.table_addr,
            len: u64::from(e.table_len),
        });
    }
    let table = read(e.table_addr, len as usize).ok_or(SmbiosError::BadTable {
        addr: e.table_addr,
        len: u64::from(len),
    })?;
    system_info(table, e.version)
}

/// What boot found, for the record and the console.
pub static FOUND: crate::sync::Once<Result<Smbios, SmbiosError>> = crate::sync::Once::new();

/// Physical memory as bytes, when the whole range is below `limit` (the identity map).
///
/// # Safety
/// `addr..addr+len` must be identity-mapped, readable memory that nothing writes while the
/// slice lives (firmware tables: reserved or ACPI memory the kernel never allocates).
#[cfg(kernel)]
unsafe fn phys<'a>(addr: u64, len: usize, limit: u64) -> Option<&'a [u8]> {
    let end = addr.checked_add(len as u64)?;
    if addr == 0 || end > limit {
        return None;
    }
    // SAFETY: the caller's contract, and the range was checked against the identity map.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// x86_64 direct boot (a BIOS such as SeaBIOS or qboot ran): the §5.2 scan of
/// 0xF0000-0xFFFFF, then the table, which must lie in the low 4 GiB the kernel identity-maps.
#[cfg(all(kernel, target_arch = "x86_64", not(target_os = "uefi")))]
pub fn read_direct() {
    // SAFETY: the BIOS area 0xF0000-0xFFFFF is identity-mapped and read-only firmware memory.
    let r = match unsafe { phys(0xf_0000, 0x1_0000, 1 << 32) } {
        Some(area) => scan(area).and_then(|e| {
            // SAFETY: `phys` checks the range is in the identity map; the table is firmware
            // memory (e820 reserved) the kernel never allocates.
            from_entry(e, |a, l| unsafe { phys(a, l, 1 << 32) })
        }),
        None => Err(SmbiosError::NoEntryPoint),
    };
    FOUND.set(r);
}

/// UEFI (both arches), before ExitBootServices: the configuration table's SMBIOS3 entry,
/// else the SMBIOS one. UEFI identity-maps all memory.
#[cfg(all(kernel, target_os = "uefi"))]
pub fn read_uefi() {
    use uefi::table::cfg::ConfigTableEntry;
    let entry = |g| {
        uefi::system::with_config_table(|t| {
            t.iter().find(|e| e.guid == g).map(|e| e.address as u64)
        })
    };
    let mut r = Err(SmbiosError::NoEntryPoint);
    for g in [
        ConfigTableEntry::SMBIOS3_GUID,
        ConfigTableEntry::SMBIOS_GUID,
    ] {
        let Some(a) = entry(g) else { continue };
        // SAFETY: the firmware published an entry point there; 32 bytes cover both kinds
        // (the parser checks its own length field against them).
        let Some(b) = (unsafe { phys(a, 32, u64::MAX) }) else {
            continue;
        };
        // SAFETY: as in `read_direct`; under UEFI everything is identity-mapped.
        r = parse_entry(b).and_then(|e| from_entry(e, |a, l| unsafe { phys(a, l, u64::MAX) }));
        if r.is_ok() {
            break;
        }
    }
    FOUND.set(r);
}

/// arm64 direct boot: no firmware publishes SMBIOS (QEMU virt `-kernel`).
#[cfg(all(kernel, not(target_arch = "x86_64"), not(target_os = "uefi")))]
pub fn read_direct() {
    FOUND.set(Err(SmbiosError::NoEntryPoint));
}

#[cfg(test)]
#[path = "smbios_tests.rs"]
mod tests;
