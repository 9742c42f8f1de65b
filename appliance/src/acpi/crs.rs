//! The MMIO ranges ACPI gives the VMBus device, read from the DSDT/SSDT AML without an AML
//! interpreter, and where synthvid's VRAM goes in them when there is no GOP framebuffer.
//!
//! What Linux does (`drivers/hv/vmbus_drv.c`, read for facts): the VMBus device is the ACPI
//! device with `_HID` "VMBus" or "VMBUS"; `vmbus_acpi_add` walks its own `_CRS`, then its
//! ancestors' until one yields ranges (the VMOD module device `ACPI0004` on Gen2/OpenVMM, the
//! root bridge `PCI0` on Gen1 or OpenVMM with PCI); `vmbus_walk_resources` keeps only the
//! Address32/Address64 descriptors ("memory" descriptors are device registers), skips ranges
//! that end below 1 MiB, cuts a range that straddles the vTPM at 0xfed40000, and keeps them
//! ascending with adjacent ones merged. `hyperv_drm` then takes `mmio_megabytes` MiB at the
//! lowest 1 MiB-aligned place that fits (`vmbus_allocate_mmio(.., 0, -1, size, 0x100000, ..)`).
//!
//! The reader knows the AML that declares things (ACPI 6.5 §20.2: DefScope, DefDevice,
//! DefName, and enough of the rest to step over it) and the resource descriptors (§6.4.3:
//! DWord 0x87 and QWord 0x8A address space, 32-bit fixed memory 0x86, end tag 0x79). Every
//! read is bounds-checked; nothing panics on any input. A term it cannot step over ends the
//! body it is in (the body's PkgLength says where that ends) and is kept as a note for the
//! error message. Objects declared inside `If`/`Method` bodies are not seen (nothing runs).
//!
//! Why not the `acpi`/`aml` crates (measured 2026-12-07, rustc 1.95 stable): `aml` 0.16.4, `acpi` 6.1.1 and `acpi` 7.0.0-pre1 with its
//! interpreter all use `#![feature(..)]` and do not build on stable (E0554); forced to build
//! only to measure, `aml` 0.16.4 alone adds 150 KB of text to a no_std x86_64 binary, about
//! half of the appliance's 311,784-byte ELF of that day (the goal is <= 512 KiB). This reader
//! and its kernel glue added 25,008 bytes to the ELF and 16,384 to the x86_64 EFI image.

use core::fmt;
use heapless::Vec;

/// Name segments in a path the reader follows (`\_SB.VMOD.VMBS` is 3).
pub const MAX_DEPTH: usize = 8;
/// Scope/Device nesting the walker follows.
const MAX_NESTING: usize = 16;
/// Windows kept (after merging adjacent ones).
pub const MAX_WINDOWS: usize = 16;
/// Memory claimed by other devices, kept to place VRAM around it.
pub const MAX_CLAIMS: usize = 64;
/// Linux `VTPM_BASE_ADDRESS` (`drivers/hv/vmbus_drv.c`): a window that straddles it is cut.
pub const VTPM_BASE: u64 = 0xfed4_0000;
/// Ranges that end below this are skipped (as Linux does).
const LOW_LIMIT: u64 = 0x10_0000;
/// Size of a system description table header (ACPI 5.2.6).
const SDT_HEADER: usize = 36;

/// An absolute namespace path, e.g. `\_SB_.VMOD.VMBS`.
#[derive(Clone, Copy, Default)]
pub struct AmlPath {
    segs: [[u8; 4]; MAX_DEPTH],
    len: u8,
}

impl AmlPath {
    /// The root, `\`.
    pub const ROOT: AmlPath = AmlPath {
        segs: [[0; 4]; MAX_DEPTH],
        len: 0,
    };

    fn segs(&self) -> &[[u8; 4]] {
        &self.segs[..self.len as usize]
    }

    fn push(&mut self, seg: [u8; 4]) -> bool {
        match self.segs.get_mut(self.len as usize) {
            Some(s) => {
                *s = seg;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The enclosing path (the root's parent is `None`).
    pub fn parent(&self) -> Option<AmlPath> {
        let mut p = *self;
        p.len = p.len.checked_sub(1)?;
        p.segs[p.len as usize] = [0; 4];
        Some(p)
    }

    fn last(&self) -> Option<[u8; 4]> {
        self.segs().last().copied()
    }

    /// The first `n` segments.
    fn prefix(&self, n: usize) -> AmlPath {
        let mut p = AmlPath::ROOT;
        for &s in self.segs().iter().take(n) {
            p.push(s);
        }
        p
    }

    /// Whether `self` is `other` or encloses it.
    pub fn is_prefix_of(&self, other: &AmlPath) -> bool {
        self.len <= other.len && other.segs().starts_with(self.segs())
    }
}

impl PartialEq for AmlPath {
    fn eq(&self, other: &Self) -> bool {
        self.segs() == other.segs()
    }
}

impl Eq for AmlPath {}

impl fmt::Display for AmlPath {
    /// `\_SB.VMOD.VMBS`: trailing `_` padding dropped as ASL writes names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\\")?;
        for (i, s) in self.segs().iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            let n = s.iter().rposition(|&c| c != b'_').map_or(1, |p| p + 1);
            for &c in &s[..n] {
                fmt::Write::write_char(f, c as char)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for AmlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An inclusive physical address range, as ACPI writes `_MIN`/`_MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRange {
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
}

impl fmt::Display for MmioRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end)
    }
}

/// Where the walk gave up on a body, for the error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    /// Index of the table in the list given to [`vmbus_mmio`].
    pub table: usize,
    pub error: AmlError,
}

/// " (..)" after a message when the walk skipped something, else nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StopNote(pub Option<Stop>);

impl fmt::Display for StopNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(
                f,
                " (the walk skipped the rest of a body in table {}: {})",
                s.table, s.error
            ),
            None => Ok(()),
        }
    }
}

/// What was wrong with the AML bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmlError {
    #[error("AML ends at offset {at:#x} while reading {what}")]
    Truncated { at: usize, what: &'static str },
    #[error("PkgLength at offset {at:#x} is malformed or runs past its enclosing body")]
    BadPkgLength { at: usize },
    #[error("malformed name at offset {at:#x}")]
    BadName { at: usize },
    #[error("name at offset {at:#x} is deeper than {MAX_DEPTH} segments or above the root")]
    NameDepth { at: usize },
    #[error("scopes nested deeper than {MAX_NESTING} at offset {at:#x}")]
    TooNested { at: usize },
    #[error("opcode {op:#x} at offset {at:#x} is not one the reader steps over")]
    UnknownOpcode { op: u16, at: usize },
}

/// What was wrong with a resource template (`_CRS` buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("descriptor at byte {at} runs past the end of the {len}-byte template")]
    Truncated { at: usize, len: usize },
    #[error("descriptor {tag:#04x} at byte {at} has length {have}, needs {need}")]
    Short {
        tag: u8,
        at: usize,
        have: usize,
        need: usize,
    },
    #[error("template of {len} bytes has no end tag")]
    NoEndTag { len: usize },
}

/// Why there are no VMBus MMIO ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrsError {
    #[error("no ACPI tables to read")]
    NoTables,
    #[error("table {table} is not a DSDT/SSDT or its length is wrong")]
    BadTable { table: usize },
    #[error("no device with _HID \"VMBus\" or \"VMBUS\" in the DSDT/SSDTs{stop}")]
    NoVmbusDevice { stop: StopNote },
    #[error("_CRS of {dev} is a method, which this reader does not run")]
    CrsIsMethod { dev: AmlPath },
    #[error("_CRS of {dev}: {error}")]
    BadTemplate { dev: AmlPath, error: ResourceError },
    #[error("neither the VMBus device {vmbus} nor a parent has an address-space memory range above 1 MiB in _CRS{stop}")]
    NoRanges { vmbus: AmlPath, stop: StopNote },
}

/// The VMBus device and the MMIO it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmbusMmio {
    /// The device with `_HID` "VMBus"/"VMBUS".
    pub device: AmlPath,
    /// The device whose `_CRS` gave the windows (the VMBus device itself or an ancestor).
    pub source: AmlPath,
    /// Ascending, adjacent ones merged, Linux's rules applied.
    pub windows: Vec<MmioRange, MAX_WINDOWS>,
    /// Windows that did not fit `windows`.
    pub windows_dropped: usize,
    /// Memory the `_CRS` of every other device names (registers, other windows): VRAM avoids it.
    pub claims: Vec<MmioRange, MAX_CLAIMS>,
    /// Claims that did not fit: placement refuses then, as it cannot see all of them.
    pub claims_dropped: usize,
}

/// Reads the VMBus device's MMIO from `tables`: whole DSDT/SSDT images (header included),
/// already checked (length, checksum) by the caller.
pub fn vmbus_mmio(tables: &[&[u8]]) -> Result<VmbusMmio, CrsError> {
    if tables.is_empty() {
        return Err(CrsError::NoTables);
    }
    let mut bodies: Vec<&[u8], 16> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let len = t
            .get(4..8)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let sig_ok = matches!(t.get(..4), Some(b"DSDT") | Some(b"SSDT"));
        match len {
            Some(len) if sig_ok && (SDT_HEADER..=t.len()).contains(&len) => {
                let _ = bodies.push(&t[SDT_HEADER..len]);
            }
            _ => return Err(CrsError::BadTable { table: i }),
        }
    }

    // Pass 1: the VMBus device.
    let mut device = None;
    let mut stop = None;
    for (i, b) in bodies.iter().enumerate() {
        walk(b, i, &mut stop, &mut |ev| {
            if let Event::Name { path, value } = ev {
                let hid = path.last() == Some(*b"_HID");
                if hid && matches!(value, Value::Str(b"VMBus") | Value::Str(b"VMBUS")) {
                    device = device.or(path.parent());
                }
            }
        });
    }
    let Some(device) = device else {
        return Err(CrsError::NoVmbusDevice {
            stop: StopNote(stop),
        });
    };

    // Pass 2: the _CRS of the device and each ancestor (by depth), and every other claim.
    let mut own: [Option<Crs>; MAX_DEPTH + 1] = [None; MAX_DEPTH + 1];
    let mut claims: Vec<MmioRange, MAX_CLAIMS> = Vec::new();
    let mut claims_dropped = 0;
    let mut stop2 = None;
    for (i, b) in bodies.iter().enumerate() {
        walk(b, i, &mut stop2, &mut |ev| {
            let (path, crs) = match ev {
                Event::Name { path, value } if path.last() == Some(*b"_CRS") => match value {
                    Value::Buffer(b) => (path, Crs::Buffer(b)),
                    _ => (path, Crs::Other),
                },
                Event::Method { path } if path.last() == Some(*b"_CRS") => (path, Crs::Method),
                _ => return,
            };
            let Some(dev) = path.parent() else { return };
            if dev.is_prefix_of(&device) {
                if let Some(slot) = own.get_mut(dev.len as usize) {
                    slot.get_or_insert(crs);
                }
            } else if let Crs::Buffer(b) = crs {
                // A template that does not parse claims nothing we can see.
                let _ = resources(b, &mut |_, r| {
                    if claims.push(r).is_err() {
                        claims_dropped += 1;
                    }
                });
            }
        });
    }

    // The device's own _CRS, then the nearest ancestor with windows (vmbus_acpi_add).
    let mut windows = Windows::default();
    let mut first_error = None;
    for depth in (1..=device.len as usize).rev() {
        let Some(crs) = own.get(depth).copied().flatten() else {
            continue;
        };
        let dev = device.prefix(depth);
        let before = windows.count();
        match crs {
            Crs::Buffer(b) => {
                // A template that does not parse gives nothing (ACPICA checks it whole).
                let mut found: Vec<MmioRange, MAX_WINDOWS> = Vec::new();
                let mut lost = 0;
                match resources(b, &mut |window, r| {
                    if window && found.push(r).is_err() {
                        lost += 1;
                    }
                }) {
                    Ok(()) => {
                        found.iter().for_each(|&r| windows.add(r));
                        windows.dropped += lost;
                    }
                    Err(error) => {
                        first_error.get_or_insert(CrsError::BadTemplate { dev, error });
                    }
                }
            }
            Crs::Method => {
                first_error.get_or_insert(CrsError::CrsIsMethod { dev });
            }
            Crs::Other => {}
        }
        if depth < device.len as usize && windows.count() > before {
            return Ok(VmbusMmio {
                device,
                source: dev,
                windows: windows.list,
                windows_dropped: windows.dropped,
                claims,
                claims_dropped,
            });
        }
    }
    if windows.count() > 0 {
        // Only the device's own _CRS had windows.
        return Ok(VmbusMmio {
            device,
            source: device,
            windows: windows.list,
            windows_dropped: windows.dropped,
            claims,
            claims_dropped,
        });
    }
    Err(first_error.unwrap_or(CrsError::NoRanges {
        vmbus: device,
        stop: StopNote(stop2),
    }))
}

/// Why VRAM could not be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("the synthvid offer asks for 0 MiB of VRAM (mmio_megabytes 0)")]
    ZeroSize,
    #[error("more than {MAX_CLAIMS} memory claims in ACPI: cannot see them all to avoid them")]
    TooManyClaims,
    #[error("no {mib} MiB at 1 MiB alignment below {below:#x} in the {windows} VMBus MMIO range(s) ({claims} claimed by other devices)")]
    NoRoom {
        mib: u64,
        below: u64,
        windows: usize,
        claims: usize,
    },
}

/// Where `mmio_megabytes` MiB of VRAM go: the lowest 1 MiB-aligned start in the windows
/// (ascending) whose whole range lies below `below` and overlaps no claim, as Linux's
/// `vmbus_allocate_mmio(.., 0, -1, size, 0x100000, ..)` picks.
pub fn place_vram(m: &VmbusMmio, mmio_megabytes: u16, below: u64) -> Result<u64, PlaceError> {
    const ALIGN: u64 = 0x10_0000;
    let size = u64::from(mmio_megabytes) * ALIGN;
    if size == 0 {
        return Err(PlaceError::ZeroSize);
    }
    if m.claims_dropped > 0 {
        return Err(PlaceError::TooManyClaims);
    }
    for w in &m.windows {
        let mut next = w.start.checked_next_multiple_of(ALIGN);
        while let Some(start) = next {
            let Some(last) = start.checked_add(size - 1) else {
                break;
            };
            if last > w.end || last >= below {
                break;
            }
            // The claims in the way, if any: go on after the last of them.
            let blocked = m
                .claims
                .iter()
                .filter(|c| c.start <= last && c.end >= start)
                .map(|c| c.end)
                .max();
            match blocked {
                None => return Ok(start),
                Some(end) => {
                    next = end
                        .checked_add(1)
                        .and_then(|e| e.checked_next_multiple_of(ALIGN))
                }
            }
        }
    }
    Err(PlaceError::NoRoom {
        mib: u64::from(mmio_megabytes),
        below,
        windows: m.windows.len(),
        claims: m.claims.len(),
    })
}

/// Windows as Linux keeps them: ascending, adjacent merged, below-1-MiB skipped, vTPM cut.
#[derive(Default)]
struct Windows {
    list: Vec<MmioRange, MAX_WINDOWS>,
    dropped: usize,
}

impl Windows {
    fn count(&self) -> usize {
        self.list.len() + self.dropped
    }

    fn add(&mut self, mut r: MmioRange) {
        if r.end < LOW_LIMIT {
            return;
        }
        if r.start < VTPM_BASE && r.end > VTPM_BASE {
            r.end = VTPM_BASE - 1;
        }
        for w in self.list.iter_mut() {
            if w.end.checked_add(1) == Some(r.start) {
                w.end = r.end;
                return;
            }
            if r.end.checked_add(1) == Some(w.start) {
                w.start = r.start;
                return;
            }
        }
        let at = self
            .list
            .iter()
            .position(|w| w.start > r.start)
            .unwrap_or(self.list.len());
        if self.list.insert(at, r).is_err() {
            self.dropped += 1;
        }
    }
}

/// A `_CRS` object as declared.
#[derive(Clone, Copy)]
enum Crs<'a> {
    Buffer(&'a [u8]),
    Method,
    Other,
}

/// Walks a resource template (ACPI 6.5 §6.4): calls `f(window, range)` for each memory
/// range, `window` true for DWord/QWord address space descriptors of the memory type (bus
/// windows), false for 32-bit fixed memory (registers). Other descriptors are stepped over.
pub fn resources(b: &[u8], f: &mut dyn FnMut(bool, MmioRange)) -> Result<(), ResourceError> {
    let len = b.len();
    let mut p = 0;
    while p < len {
        let tag = b[p];
        if tag & 0x80 == 0 {
            // Small item: bits 6:3 name, 2:0 length. End tag is name 0xF (0x79).
            if (tag >> 3) & 0x0f == 0x0f {
                return Ok(());
            }
            p += 1 + (tag & 7) as usize;
            continue;
        }
        let Some(l) = b.get(p + 1..p + 3) else {
            return Err(ResourceError::Truncated { at: p, len });
        };
        let dlen = u16::from_le_bytes([l[0], l[1]]) as usize;
        let Some(d) = b.get(p + 3..p + 3 + dlen) else {
            return Err(ResourceError::Truncated { at: p, len });
        };
        let need = |n: usize| {
            if dlen < n {
                Err(ResourceError::Short {
                    tag,
                    at: p,
                    have: dlen,
                    need: n,
                })
            } else {
                Ok(())
            }
        };
        let u32_at = |o: usize| u64::from(u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]));
        let u64_at = |o: usize| u32_at(o) | u32_at(o + 4) << 32;
        match tag {
            // 32-bit fixed memory: info, base, length (§6.4.3.4).
            0x86 => {
                need(9)?;
                let (base, size) = (u32_at(1), u32_at(5));
                if size > 0 {
                    f(
                        false,
                        MmioRange {
                            start: base,
                            end: base + size - 1,
                        },
                    );
                }
            }
            // DWord address space: type, flags, flags, _GRA, _MIN, _MAX, _TRA, _LEN (§6.4.3.5.2).
            0x87 => {
                need(23)?;
                if d[0] == 0 && u32_at(7) <= u32_at(11) {
                    f(
                        true,
                        MmioRange {
                            start: u32_at(7),
                            end: u32_at(11),
                        },
                    );
                }
            }
            // QWord address space: as DWord with 8-byte fields (§6.4.3.5.1).
            0x8a => {
                need(43)?;
                if d[0] == 0 && u64_at(11) <= u64_at(19) {
                    f(
                        true,
                        MmioRange {
                            start: u64_at(11),
                            end: u64_at(19),
                        },
                    );
                }
            }
            _ => {}
        }
        p += 3 + dlen;
    }
    Err(ResourceError::NoEndTag { len })
}

/// A named object's value, as far as the reader needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value<'a> {
    Int(u64),
    Str(&'a [u8]),
    /// The bytes of a DefBuffer's initializer.
    Buffer(&'a [u8]),
    /// A package or a name reference: stepped over.
    Other,
}

/// What the walker reports.
enum Event<'a> {
    Name { path: AmlPath, value: Value<'a> },
    Method { path: AmlPath },
}

/// Walks one table body; the first body it had to give up on goes into `stop`.
fn walk<'a>(aml: &'a [u8], table: usize, stop: &mut Option<Stop>, f: &mut dyn FnMut(Event<'a>)) {
    let mut w = Walker {
        aml,
        table,
        stop,
        f,
    };
    w.body(0, aml.len(), &AmlPath::ROOT, 0);
}

struct Walker<'a, 's, 'f> {
    aml: &'a [u8],
    table: usize,
    stop: &'s mut Option<Stop>,
    f: &'f mut dyn FnMut(Event<'a>),
}

impl<'a> Walker<'a, '_, '_> {
    /// A TermList in `[p, end)`; on a term it cannot read, notes it and returns.
    fn body(&mut self, p: usize, end: usize, scope: &AmlPath, nest: usize) {
        if let Err(error) = self.terms(p, end, scope, nest) {
            self.stop.get_or_insert(Stop {
                table: self.table,
                error,
            });
        }
    }

    fn terms(
        &mut self,
        mut p: usize,
        end: usize,
        scope: &AmlPath,
        nest: usize,
    ) -> Result<(), AmlError> {
        while p < end {
            let op = self.byte(p, end, "an opcode")?;
            p = match op {
                // DefScope := ScopeOp PkgLength NameString TermList
                0x10 => self.scoped(p + 1, end, scope, nest)?,
                // DefName := NameOp NameString DataRefObject
                0x08 => {
                    let (path, q) = self.name(p + 1, end, scope)?;
                    let (value, q) = self.data(q, end)?;
                    (self.f)(Event::Name { path, value });
                    q
                }
                // DefMethod := MethodOp PkgLength NameString MethodFlags TermList (not run)
                0x14 => {
                    let (pkg_end, q) = self.pkg(p + 1, end)?;
                    let (path, _) = self.name(q, pkg_end, scope)?;
                    (self.f)(Event::Method { path });
                    pkg_end
                }
                // If, Else, While: PkgLength-delimited, stepped over.
                0xa0..=0xa2 => self.pkg(p + 1, end)?.0,
                // DefExternal := ExternalOp NameString ObjectType ArgumentCount
                0x15 => self.name(p + 1, end, scope)?.1 + 2,
                // DefAlias := AliasOp NameString NameString
                0x06 => {
                    let q = self.name(p + 1, end, scope)?.1;
                    self.name(q, end, scope)?.1
                }
                // CreateBit/Byte/Word/DWord/QWordField := op TermArg TermArg NameString
                0x8a..=0x8d | 0x8f => {
                    let q = self.data(p + 1, end)?.1;
                    let q = self.data(q, end)?.1;
                    self.name(q, end, scope)?.1
                }
                0x5b => {
                    let ext = self.byte(p + 1, end, "an extended opcode")?;
                    let q = p + 2;
                    match ext {
                        // DefDevice := DeviceOp PkgLength NameString TermList
                        0x82 => self.scoped(q, end, scope, nest)?,
                        // Field, Processor, PowerRes, ThermalZone, IndexField, BankField.
                        0x81 | 0x83..=0x87 => self.pkg(q, end)?.0,
                        // DefMutex := MutexOp NameString SyncFlags
                        0x01 => self.name(q, end, scope)?.1 + 1,
                        // DefEvent := EventOp NameString
                        0x02 => self.name(q, end, scope)?.1,
                        // DefOpRegion := OpRegionOp NameString RegionSpace TermArg TermArg
                        0x80 => {
                            let q = self.name(q, end, scope)?.1 + 1;
                            let q = self.data(q, end)?.1;
                            self.data(q, end)?.1
                        }
                        // DefDataRegion := DataRegionOp NameString TermArg TermArg TermArg
                        0x88 => {
                            let mut q = self.name(q, end, scope)?.1;
                            for _ in 0..3 {
                                q = self.data(q, end)?.1;
                            }
                            q
                        }
                        _ => {
                            return Err(AmlError::UnknownOpcode {
                                op: 0x5b00 | u16::from(ext),
                                at: p,
                            })
                        }
                    }
                }
                _ => {
                    return Err(AmlError::UnknownOpcode {
                        op: op.into(),
                        at: p,
                    })
                }
            };
        }
        if p > end {
            return Err(AmlError::Truncated {
                at: end,
                what: "a term",
            });
        }
        Ok(())
    }

    /// PkgLength NameString TermList (Scope, Device): walks the body; returns its end.
    fn scoped(
        &mut self,
        p: usize,
        end: usize,
        scope: &AmlPath,
        nest: usize,
    ) -> Result<usize, AmlError> {
        let (pkg_end, q) = self.pkg(p, end)?;
        let (path, q) = self.name(q, pkg_end, scope)?;
        if nest >= MAX_NESTING {
            return Err(AmlError::TooNested { at: p });
        }
        self.body(q, pkg_end, &path, nest + 1);
        Ok(pkg_end)
    }

    fn byte(&self, p: usize, end: usize, what: &'static str) -> Result<u8, AmlError> {
        if p >= end {
            return Err(AmlError::Truncated { at: p, what });
        }
        self.aml
            .get(p)
            .copied()
            .ok_or(AmlError::Truncated { at: p, what })
    }

    /// PkgLength (§20.2.4) at `p`: (end of the package, offset after the PkgLength). The
    /// length counts the PkgLength bytes themselves.
    fn pkg(&self, p: usize, end: usize) -> Result<(usize, usize), AmlError> {
        let lead = self.byte(p, end, "a PkgLength")?;
        let extra = (lead >> 6) as usize;
        let mut len = if extra == 0 {
            usize::from(lead & 0x3f)
        } else {
            if lead & 0x30 != 0 {
                return Err(AmlError::BadPkgLength { at: p });
            }
            usize::from(lead & 0x0f)
        };
        for i in 0..extra {
            len |= usize::from(self.byte(p + 1 + i, end, "a PkgLength")?) << (4 + 8 * i);
        }
        let pkg_end = p + len;
        if len < 1 + extra || pkg_end > end {
            return Err(AmlError::BadPkgLength { at: p });
        }
        Ok((pkg_end, p + 1 + extra))
    }

    /// NameString (§20.2.2) at `p`, resolved against `scope`: (absolute path, offset after).
    fn name(
        &self,
        mut p: usize,
        end: usize,
        scope: &AmlPath,
    ) -> Result<(AmlPath, usize), AmlError> {
        let at = p;
        let mut path = *scope;
        match self.byte(p, end, "a name")? {
            b'\\' => {
                path = AmlPath::ROOT;
                p += 1;
            }
            b'^' => {
                while self.byte(p, end, "a name")? == b'^' {
                    path = path.parent().ok_or(AmlError::NameDepth { at })?;
                    p += 1;
                }
            }
            _ => {}
        }
        let count = match self.byte(p, end, "a name")? {
            0x00 => return Ok((path, p + 1)),
            0x2e => {
                p += 1;
                2
            }
            0x2f => {
                p += 2;
                usize::from(self.byte(p - 1, end, "a name")?)
            }
            _ => 1,
        };
        for _ in 0..count {
            let seg =
                self.aml
                    .get(p..p + 4)
                    .filter(|_| p + 4 <= end)
                    .ok_or(AmlError::Truncated {
                        at: p,
                        what: "a name segment",
                    })?;
            let lead_ok = seg[0].is_ascii_uppercase() || seg[0] == b'_';
            let rest_ok = seg[1..]
                .iter()
                .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
            if !(lead_ok && rest_ok) {
                return Err(AmlError::BadName { at: p });
            }
            if !path.push([seg[0], seg[1], seg[2], seg[3]]) {
                return Err(AmlError::NameDepth { at });
            }
            p += 4;
        }
        Ok((path, p))
    }

    /// Steps over a NameString used as a reference (not resolved).
    fn skip_name(&self, mut p: usize, end: usize) -> Result<usize, AmlError> {
        while matches!(self.byte(p, end, "a name")?, b'\\' | b'^') {
            p += 1;
        }
        let (count, q) = match self.byte(p, end, "a name")? {
            0x00 => return Ok(p + 1),
            0x2e => (2, p + 1),
            0x2f => (usize::from(self.byte(p + 1, end, "a name")?), p + 2),
            _ => (1, p),
        };
        let e = q + 4 * count;
        if e > end {
            return Err(AmlError::Truncated {
                at: q,
                what: "a name segment",
            });
        }
        Ok(e)
    }

    /// A DataRefObject or a simple TermArg (constant or name reference) at `p`.
    fn data(&self, p: usize, end: usize) -> Result<(Value<'a>, usize), AmlError> {
        let op = self.byte(p, end, "a data object")?;
        let int = |n: usize| -> Result<(Value<'a>, usize), AmlError> {
            let b = self
                .aml
                .get(p + 1..p + 1 + n)
                .filter(|_| p + 1 + n <= end)
                .ok_or(AmlError::Truncated {
                    at: p,
                    what: "an integer",
                })?;
            let v = b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x));
            Ok((Value::Int(v), p + 1 + n))
        };
        match op {
            0x00 => Ok((Value::Int(0), p + 1)),
            0x01 => Ok((Value::Int(1), p + 1)),
            0xff => Ok((Value::Int(u64::MAX), p + 1)),
            0x0a => int(1),
            0x0b => int(2),
            0x0c => int(4),
            0x0e => int(8),
            // String := StringPrefix AsciiCharList NullChar
            0x0d => {
                let s = self.aml.get(p + 1..end).unwrap_or(&[]);
                let n = s.iter().position(|&c| c == 0).ok_or(AmlError::Truncated {
                    at: p,
                    what: "a string",
                })?;
                Ok((Value::Str(&s[..n]), p + 2 + n))
            }
            // DefBuffer := BufferOp PkgLength BufferSize ByteList
            0x11 => {
                let (pkg_end, q) = self.pkg(p + 1, end)?;
                let (size, q) = self.data(q, pkg_end)?;
                let bytes = self.aml.get(q..pkg_end).unwrap_or(&[]);
                let n = match size {
                    Value::Int(n) => (n as usize).min(bytes.len()),
                    _ => bytes.len(),
                };
                Ok((Value::Buffer(&bytes[..n]), pkg_end))
            }
            // DefPackage, DefVarPackage: stepped over.
            0x12 | 0x13 => Ok((Value::Other, self.pkg(p + 1, end)?.0)),
            // RevisionOp
            0x5b if self.byte(p + 1, end, "an extended opcode")? == 0x30 => {
                Ok((Value::Int(0), p + 2))
            }
            b'\\' | b'^' | b'_' | b'A'..=b'Z' | 0x2e | 0x2f => {
                Ok((Value::Other, self.skip_name(p, end)?))
            }
            _ => Err(AmlError::UnknownOpcode {
                op: op.into(),
                at: p,
            }),
        }
    }
}

/// Host tests; `tests::aml` builds AML for other modules' tests too.
#[cfg(test)]
#[path = "crs_tests.rs"]
pub(crate) mod tests;
