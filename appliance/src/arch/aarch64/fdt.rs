//! A small checked reader for flattened device trees (Devicetree Specification v0.4, chapter 5
//! "Flattened Devicetree (DTB) Format"): header, structure block tokens, strings block.
//!
//! It reads only what the canary needs (`/chosen/bootargs`, `/memory`, the PL011, PL031,
//! PSCI, virtio-mmio and generic-ECAM nodes) in one pass. Every offset and length is checked
//! against the blob; a malformed tree gives an [`FdtError`], never a panic or an
//! out-of-bounds read.

use heapless::Vec;

/// FDT header magic (spec 5.2).
const MAGIC: u32 = 0xd00d_feed;
/// Structure block tokens (spec 5.4.1).
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// The header is 40 bytes (version 17).
const HEADER_LEN: usize = 40;
/// Refuse blobs larger than this (QEMU's are a few KiB, at most 1 MiB).
pub const MAX_SIZE: usize = 2 << 20;
/// Deepest node nesting we follow.
const MAX_DEPTH: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FdtError {
    #[error("no FDT magic (found {0:#x})")]
    BadMagic(u32),
    #[error("FDT total size {0} is out of range")]
    BadSize(usize),
    #[error("FDT block at {off} + {len} lies outside the blob")]
    BadBlock { off: usize, len: usize },
    #[error("FDT structure block truncated at {0}")]
    Truncated(usize),
    #[error("FDT unknown token {token:#x} at {off}")]
    BadToken { token: u32, off: usize },
    #[error("FDT property name offset {0} outside the strings block")]
    BadName(usize),
    #[error("FDT nodes nested deeper than 16")]
    TooDeep,
    #[error("FDT unbalanced END_NODE at {0}")]
    Unbalanced(usize),
}

/// A `reg` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    pub base: u64,
    pub len: u64,
}

/// PSCI conduit (DT binding `arm,psci`: `method = "hvc" | "smc"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    Hvc,
    Smc,
}

/// What the canary takes from the device tree.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub bootargs: Option<&'a str>,
    pub memory: Vec<Reg, 8>,
    pub pl011: Option<Reg>,
    pub pl031: Option<Reg>,
    pub psci: Option<PsciMethod>,
    pub virtio_mmio: Vec<Reg, 32>,
    pub ecam: Option<Reg>,
    /// `reg` entries that did not fit the lists above.
    pub dropped: usize,
}

/// A validated blob.
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn block(data: &[u8], off: u32, len: u32) -> Result<&[u8], FdtError> {
    let (off, len) = (off as usize, len as usize);
    off.checked_add(len)
        .and_then(|end| data.get(off..end))
        .ok_or(FdtError::BadBlock { off, len })
}

/// A NUL-terminated string at the start of `b` (without the NUL), if there is a NUL.
fn cstr(b: &[u8]) -> Option<&[u8]> {
    b.iter().position(|&c| c == 0).map(|n| &b[..n])
}

/// Whether a `compatible` string list contains `want`.
fn compatible_has(list: &[u8], want: &str) -> bool {
    list.split(|&c| c == 0).any(|s| s == want.as_bytes())
}

/// Reads a number of `cells` 32-bit cells (0..=2) from the start of `b`.
fn cells(b: &[u8], n: u32) -> Option<u64> {
    match n {
        0 => Some(0),
        1 => be32(b, 0).map(u64::from),
        2 => Some((u64::from(be32(b, 0)?) << 32) | u64::from(be32(b, 4)?)),
        _ => None,
    }
}

/// The node being read: its parent's cell sizes decode its `reg`; its own `#address-cells` /
/// `#size-cells` apply to its children.
#[derive(Clone, Copy, Default)]
struct Node<'a> {
    name: &'a [u8],
    parent_addr: u32,
    parent_size: u32,
    addr_cells: u32,
    size_cells: u32,
    compatible: &'a [u8],
    reg: &'a [u8],
    device_type: &'a [u8],
    status: &'a [u8],
    method: &'a [u8],
    bootargs: &'a [u8],
}

impl<'a> Fdt<'a> {
    /// Checks the header and the block bounds.
    pub fn new(data: &'a [u8]) -> Result<Self, FdtError> {
        let magic = be32(data, 0).ok_or(FdtError::BadSize(data.len()))?;
        if magic != MAGIC {
            return Err(FdtError::BadMagic(magic));
        }
        let h = |i: usize| be32(data, i * 4).ok_or(FdtError::BadSize(data.len()));
        let total = h(1)? as usize;
        if !(HEADER_LEN..=data.len().min(MAX_SIZE)).contains(&total) {
            return Err(FdtError::BadSize(total));
        }
        let data = &data[..total];
        let structs = block(data, h(2)?, h(9)?)?;
        let strings = block(data, h(3)?, h(8)?)?;
        Ok(Fdt { structs, strings })
    }

    /// A blob in memory, checked.
    ///
    /// # Safety
    /// `addr` must be readable for 8 bytes and, if it holds the FDT magic, for the header's
    /// total size (at most [`MAX_SIZE`]) and stay unchanged for the program's life.
    pub unsafe fn from_addr(addr: usize) -> Result<Fdt<'static>, FdtError> {
        if addr == 0 || addr % 8 != 0 {
            return Err(FdtError::BadMagic(0));
        }
        // SAFETY: the caller promises 8 readable bytes.
        let head = unsafe { core::slice::from_raw_parts(addr as *const u8, 8) };
        let magic = be32(head, 0).unwrap_or(0);
        if magic != MAGIC {
            return Err(FdtError::BadMagic(magic));
        }
        let total = be32(head, 4).unwrap_or(0) as usize;
        if !(HEADER_LEN..=MAX_SIZE).contains(&total) {
            return Err(FdtError::BadSize(total));
        }
        // SAFETY: the caller promises the whole blob is readable and stays.
        Fdt::new(unsafe { core::slice::from_raw_parts(addr as *const u8, total) })
    }

    /// One pass over the structure block.
    pub fn facts(&self) -> Result<Facts<'a>, FdtError> {
        let mut f = Facts::default();
        let mut stack: Vec<Node<'a>, MAX_DEPTH> = Vec::new();
        let s = self.structs;
        let mut off = 0usize;
        loop {
            let token = be32(s, off).ok_or(FdtError::Truncated(off))?;
            let at = off;
            off += 4;
            match token {
                FDT_BEGIN_NODE => {
                    let name = cstr(s.get(off..).unwrap_or(&[])).ok_or(FdtError::Truncated(off))?;
                    off = (off + name.len() + 1 + 3) & !3;
                    // Defaults per spec 2.3.5: 2 address cells, 1 size cell.
                    let (pa, ps) = stack.last().map_or((2, 1), |p| (p.addr_cells, p.size_cells));
                    let node = Node {
                        name,
                        parent_addr: pa,
                        parent_size: ps,
                        addr_cells: 2,
                        size_cells: 1,
                        ..Node::default()
                    };
                    stack.push(node).map_err(|_| FdtError::TooDeep)?;
                }
                FDT_END_NODE => {
                    let node = stack.pop().ok_or(FdtError::Unbalanced(at))?;
                    Self::take(&mut f, &node, stack.len());
                }
                FDT_PROP => {
                    let len = be32(s, off).ok_or(FdtError::Truncated(off))? as usize;
                    let nameoff = be32(s, off + 4).ok_or(FdtError::Truncated(off))? as usize;
                    off += 8;
                    let value = off
                        .checked_add(len)
                        .and_then(|end| s.get(off..end))
                        .ok_or(FdtError::Truncated(off))?;
                    off = (off + len + 3) & !3;
                    let pname = self
                        .strings
                        .get(nameoff..)
                        .and_then(cstr)
                        .ok_or(FdtError::BadName(nameoff))?;
                    let Some(node) = stack.last_mut() else {
                        continue; // a property outside any node: ignore
                    };
                    match pname {
                        b"#address-cells" => node.addr_cells = be32(value, 0).unwrap_or(2),
                        b"#size-cells" => node.size_cells = be32(value, 0).unwrap_or(1),
                        b"compatible" => node.compatible = value,
                        b"reg" => node.reg = value,
                        b"device_type" => node.device_type = value,
                        b"status" => node.status = value,
                        b"method" => node.method = value,
                        b"bootargs" => node.bootargs = value,
                        _ => {}
                    }
                }
                FDT_NOP => {}
                FDT_END => return Ok(f),
                token => return Err(FdtError::BadToken { token, off: at }),
            }
        }
    }

    /// Files a finished node's facts; `depth` is its depth (root = 0).
    fn take(f: &mut Facts<'a>, n: &Node<'a>, depth: usize) {
        if cstr(n.status).is_some_and(|s| s != b"okay" && s != b"ok") {
            return;
        }
        if depth == 1 && n.name == b"chosen" {
            f.bootargs = cstr(n.bootargs).and_then(|b| core::str::from_utf8(b).ok());
        }
        let regs = || {
            let step = ((n.parent_addr + n.parent_size) * 4) as usize;
            let (pa, ps) = (n.parent_addr, n.parent_size);
            let ok = step > 0 && pa <= 2 && ps <= 2;
            n.reg
                .chunks_exact(if ok { step } else { 1 })
                .filter(move |_| ok)
                .filter_map(move |c| {
                    Some(Reg {
                        base: cells(c, pa)?,
                        len: cells(c.get(pa as usize * 4..)?, ps)?,
                    })
                })
        };
        let is_memory = cstr(n.device_type) == Some(b"memory".as_slice())
            || (depth == 1 && (n.name == b"memory" || n.name.starts_with(b"memory@")));
        if is_memory {
            for r in regs() {
                if f.memory.push(r).is_err() {
                    f.dropped += 1;
                }
            }
        }
        let c = n.compatible;
        if compatible_has(c, "arm,pl011") && f.pl011.is_none() {
            f.pl011 = regs().next();
        }
        if compatible_has(c, "arm,pl031") && f.pl031.is_none() {
            f.pl031 = regs().next();
        }
        if compatible_has(c, "arm,psci") || compatible_has(c, "arm,psci-0.2") || compatible_has(c, "arm,psci-1.0") {
            f.psci = match cstr(n.method) {
                Some(b"smc") => Some(PsciMethod::Smc),
                Some(b"hvc") => Some(PsciMethod::Hvc),
                _ => f.psci,
            };
        }
        if compatible_has(c, "virtio,mmio") {
            if let Some(r) = regs().next() {
                if f.virtio_mmio.push(r).is_err() {
                    f.dropped += 1;
                }
            }
        }
        if compatible_has(c, "pci-host-ecam-generic") && f.ecam.is_none() {
            f.ecam = regs().next();
        }
    }
}
